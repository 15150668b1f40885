//! The state machine: sled, fed only by [`intentd_lifecycle::apply`].
//!
//! # Why sled may lose writes and that is fine
//! sled 0.34 syncs with `sync_file_range`, which does not survive power loss, and abrupt kills
//! have been reported to damage it. So nothing that openraft relies on for safety lives only in
//! sled: the log is in the WAL (fdatasynced before acknowledgement) and snapshots are fsynced
//! files. sled holds a *cache* of "snapshot + log applied up to `last_applied`". At open, if
//! sled does not open, or its `last_applied` is behind the newest snapshot, it is rebuilt from
//! that snapshot, and openraft re-applies the log after `last_applied`. Because every apply
//! writes its entries and `last_applied` in one atomic batch, whatever prefix of batches sled
//! recovers is a consistent state at a known log position.
//!
//! # Trees
//! The live state is one tree (`state-<generation>`) with the key layout of [`crate::keys`].
//! The default tree holds only `current_tree`, the name of the live one. Installing a snapshot
//! fills a fresh tree and then switches the pointer, so readers never see a half-installed
//! state and a crash mid-install leaves the old tree live (and the durable snapshot file newer
//! than it, so the next open redoes the install from that file).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use intentd_lifecycle::mesh::MeshAgent;
use intentd_lifecycle::webhook::derived_id;
use intentd_lifecycle::{
    state_key, AgentConfig, ApiKey, DeadLetter, DueKind, IdempotencyRecord, InboxThread, Intent,
    Retention, StateView, Subscription, WebhookDelivery, WebhookEvent, Write,
};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, Entry};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageError as RaftError,
    StorageIOError, StoredMembership,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use uuid::Uuid;

use crate::capture::Capture;
use crate::feed::{Feed, FeedEntry};
use crate::fsutil::{self, DirLock};
use crate::hot::Hot;
use crate::live::{Live, SmShared};
use crate::reader::StateReader;
use crate::records::{self, Records};
use crate::snapshot::{self, Meta};
use crate::wake::WakeKey;
use crate::{keys, Outcome, Response, StorageError, StorageOptions, TypeConfig};

const CURRENT_TREE: &[u8] = b"current_tree";
const TREE_PREFIX: &str = "state-";
/// Records per sled batch while loading a snapshot: bounds memory, not atomicity (the tree
/// being filled is not live until the pointer switches).
const LOAD_BATCH: usize = 4096;

type Membership = StoredMembership<u64, BasicNode>;

/// Clears the capture when the build that set it up ends, however it ends.
struct CaptureEnd<'a>(&'a Mutex<Option<Capture>>);

impl CaptureEnd<'_> {
    /// Ends the capture now and hands over the pre-images of keys the scan never reached.
    fn take(self) -> HashMap<Vec<u8>, Option<sled::IVec>> {
        lock(self.0).take().map(|c| c.before).unwrap_or_default()
    }
}

impl Drop for CaptureEnd<'_> {
    fn drop(&mut self) {
        lock(self.0).take();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn decode<T: DeserializeOwned>(v: Option<impl AsRef<[u8]>>) -> Result<Option<T>, StorageError> {
    v.map(|v| serde_json::from_slice(v.as_ref()))
        .transpose()
        .map_err(Into::into)
}

fn read_applied(tree: &sled::Tree) -> Result<(Option<LogId<u64>>, Membership), StorageError> {
    let last = decode::<LogId<u64>>(tree.get(keys::LAST_APPLIED)?)?;
    let membership = decode::<Membership>(tree.get(keys::MEMBERSHIP)?)?.unwrap_or_default();
    Ok((last, membership))
}

impl SmShared {
    /// Applies one batch of committed entries.
    ///
    /// # Correctness
    /// All writes of all entries and `last_applied` (and the membership, if one changed) go to
    /// sled in one atomic `Batch`: after a crash sled holds all of this call or none of it.
    /// Entries, and the commands within an entry, see the writes of earlier ones of the same
    /// call through the overlay of [`BatchView`]. A rejected command writes nothing but still advances `last_applied`.
    fn apply_blocking(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, StorageError> {
        let _guard = lock(&self.apply_lock);
        let (tree, records) = self.both();
        let view = BatchView::new(&tree, &self.hot, &records);
        let mut responses = Vec::with_capacity(entries.len());
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            last = Some(entry.log_id);
            view.entry_index.set(entry.log_id.index);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Response::Empty
                }
                EntryPayload::Normal(proposal) => {
                    let commands = proposal.commands()?;
                    let mut outcomes = Vec::with_capacity(commands.len());
                    for command in &commands {
                        let result = intentd_lifecycle::apply(&view, command);
                        if let Some(e) = view.error.take() {
                            return Err(e);
                        }
                        outcomes.push(match result {
                            Ok(applied) => {
                                view.store(applied.writes)?;
                                Outcome::Applied(applied.reply)
                            }
                            Err(rejection) => {
                                tracing::debug!(log_id = %entry.log_id, %rejection, "command rejected");
                                Outcome::Rejected(rejection)
                            }
                        });
                    }
                    Response::Commands(outcomes)
                }
            };
            responses.push(response);
        }
        let Some(last) = last else {
            return Ok(responses);
        };
        let overlay = view.overlay.into_inner();
        if let Some(capture) = lock(&self.capture).as_mut() {
            capture.preserve(|k| state_get(&tree, &records, k), overlay.keys())?;
        }
        let hot_writes: Vec<_> = overlay
            .iter()
            .filter(|(k, _)| Hot::holds(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The records first: the mark sled stores with the batch must not point past them.
        let mark = records.append(
            overlay
                .iter()
                .filter(|(k, _)| records::holds(k))
                .map(|(k, v)| (k.as_slice(), v.as_deref())),
        )?;
        let mut batch = sled::Batch::default();
        for (k, v) in overlay.into_iter().filter(|(k, _)| !records::holds(k)) {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch.insert(keys::RECORDS_MARK, mark.encode());
        batch.insert(keys::LAST_APPLIED, serde_json::to_vec(&last)?);
        if let Some(m) = membership {
            batch.insert(keys::MEMBERSHIP, serde_json::to_vec(&m)?);
        }
        tree.apply_batch(batch)?;
        records.retire(|| Ok(self.db.flush().map(drop)?))?;
        self.hot.apply(hot_writes.iter().map(|(k, v)| (k, v)));
        self.feed.record(view.feed.into_inner());
        self.wakes.wake(&view.touched.into_inner());
        self.publish(Some(last));
        Ok(responses)
    }

    /// Builds a snapshot file of the live tree.
    ///
    /// # Correctness
    /// The file is exactly the state at the `last_applied` read when the build starts, although
    /// applies go on during the scan (holding them for the scan stalled every write for as long
    /// as it took). Starting under the apply lock, the build reads `last_applied` and sets up a
    /// [`Capture`]; from then on every apply, before it changes the tree, records the value each
    /// key it writes had at the start, if the scan has not passed that key yet. The scan writes,
    /// for each key it reads, that recorded value if there is one, else what it read (the key is
    /// unchanged since the start, or changed only after the scan passed it), and it skips keys
    /// born since the start; keys removed before the scan reached them are written last from
    /// their recorded values. The scan lock keeps an install from switching trees meanwhile.
    /// The file is fsynced, renamed and the directory fsynced before this returns, because
    /// openraft purges the log behind the snapshot it is given.
    /// Returns the file opened before it is promoted, so that a newer snapshot installed
    /// meanwhile (which deletes this one) cannot pull it away from the caller.
    fn build_blocking(&self) -> Result<(Meta, File), StorageError> {
        let seq = self.snap_seq.fetch_add(1, Ordering::Relaxed);
        let _scan = lock(&self.scan_lock);
        let (meta, tree, records) = {
            let _guard = lock(&self.apply_lock);
            let (tree, records) = self.both();
            let (last, membership) = read_applied(&tree)?;
            let (term, index) = last.map_or((0, 0), |l| (l.leader_id.term, l.index));
            *lock(&self.capture) = Some(Capture::default());
            let meta = Meta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id: format!("{term}-{index}-{seq}"),
            };
            (meta, tree, records)
        };
        let path = self.snap_dir.join(snapshot::file_name(&meta, seq));
        let tmp = fsutil::tmp_path(&path);
        let scanned = {
            // Ends the capture whatever the scan's outcome, a panic included: applies must not
            // go on recording pre-images for a build that is gone.
            let capture = CaptureEnd(&self.capture);
            let scanned = self.scan_as_of_start(&tree, &records, &meta, &tmp);
            scanned.map(|(w, count)| (w, count, capture.take()))
        };
        let (mut w, count, removed_ahead) = scanned?;
        let mut buf = Vec::new();
        let mut extra = 0;
        for (k, v) in removed_ahead {
            if let Some(v) = v {
                snapshot::write_record(&mut w, &mut buf, &k, &v)?;
                extra += 1;
            }
        }
        snapshot::finish(&mut w, &mut buf, count + extra)?;
        drop(_scan);
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        tracing::info!(snapshot = %meta.snapshot_id, records = count + extra, "snapshot built");
        fs::rename(&tmp, &path)?;
        fsutil::fsync_dir(&self.snap_dir)?;
        // Not needed for safety (see the module doc), but it makes the rebuild at open rare.
        self.db.flush()?;
        let file = snapshot::SnapFile {
            index: meta.last_log_id.map_or(0, |l| l.index),
            seq,
            path,
        };
        let handle = File::open(&file.path)?;
        self.promote(&meta, &file)?;
        Ok((meta, handle))
    }

    /// Writes the header and every record the scan reaches, each as of the build's start;
    /// the caller adds the records removed ahead of the scan and the trailer. sled's keys and
    /// the record store's are walked merged, in one key order, as the capture requires.
    fn scan_as_of_start(
        &self,
        tree: &sled::Tree,
        records: &Records,
        meta: &Meta,
        tmp: &Path,
    ) -> Result<(BufWriter<File>, u64), StorageError> {
        let mut w = BufWriter::new(File::create(tmp)?);
        snapshot::write_header(&mut w, meta)?;
        let mut buf = Vec::new();
        let mut count = 0;
        for r in merged(tree, records) {
            let (k, now) = r?;
            if k.first() == Some(&keys::META) {
                continue;
            }
            let value = lock(&self.capture)
                .as_mut()
                .and_then(|c| c.at_start(&k, now));
            if let Some(v) = value {
                snapshot::write_record(&mut w, &mut buf, &k, &v)?;
                count += 1;
            }
        }
        Ok((w, count))
    }

    /// Makes `file` the current snapshot if it is the newest, and deletes every other one.
    fn promote(&self, meta: &Meta, file: &snapshot::SnapFile) -> Result<(), StorageError> {
        let mut current = lock(&self.current);
        let newer = current
            .as_ref()
            .is_none_or(|(_, c)| (file.index, file.seq) > (c.index, c.seq));
        if newer {
            *current = Some((meta.clone(), file.clone()));
        }
        let keep = current.as_ref().map(|(_, c)| c.path.clone());
        let mut removed = false;
        for old in snapshot::list(&self.snap_dir, false)? {
            if Some(&old.path) != keep.as_ref() {
                // An open handle (a transfer in progress) keeps reading the unlinked file.
                fs::remove_file(&old.path)?;
                removed = true;
            }
        }
        if removed {
            fsutil::fsync_dir(&self.snap_dir)?;
        }
        Ok(())
    }

    /// Fills a fresh tree from a snapshot and makes it the live state.
    fn load_and_switch(&self, path: &Path, expected: Option<&Meta>) -> Result<Meta, StorageError> {
        let (meta, reader) = snapshot::Reader::new(BufReader::new(File::open(path)?), path)?;
        if let Some(expected) = expected {
            if &meta != expected {
                return Err(StorageError::Corrupt {
                    path: path.to_path_buf(),
                    offset: 0,
                    reason: format!("snapshot holds {meta}, expected {expected}"),
                });
            }
        }
        let generation = tree_generation(&self.live.read().unwrap_or_else(|p| p.into_inner()).name)
            .unwrap_or(0)
            + 1;
        let name = format!("{TREE_PREFIX}{generation:020}");
        let fresh = self.db.open_tree(&name)?;
        fresh.clear()?;
        let records_dir = records::dir_for(&self.records_root, &name);
        if records_dir.exists() {
            fs::remove_dir_all(&records_dir)?;
        }
        let filled = (|| -> Result<(Hot, Records), StorageError> {
            let fresh_records = Records::open(&records_dir, None, self.record_segment_bytes)?;
            let mut batch = sled::Batch::default();
            let mut kept: KeyValues = Vec::new();
            let mut n = 0;
            for rec in reader {
                let (k, v) = rec?;
                if records::holds(&k) {
                    kept.push((k, v));
                    if kept.len() == LOAD_BATCH {
                        append_all(&fresh_records, &std::mem::take(&mut kept))?;
                    }
                    continue;
                }
                batch.insert(k, v);
                n += 1;
                if n % LOAD_BATCH == 0 {
                    fresh.apply_batch(std::mem::take(&mut batch))?;
                }
            }
            let mark = append_all(&fresh_records, &kept)?;
            // On disk before the pointer names this generation (as `db.flush` below does for
            // the tree), so an installed state survives what the old one would have.
            fresh_records.sync()?;
            batch.insert(keys::RECORDS_MARK, mark.encode());
            batch.insert(keys::LAST_APPLIED, serde_json::to_vec(&meta.last_log_id)?);
            batch.insert(keys::MEMBERSHIP, serde_json::to_vec(&meta.last_membership)?);
            fresh.apply_batch(batch)?;
            Ok((Hot::load(&fresh)?, fresh_records))
        })();
        let (hot, fresh_records) = match filled {
            Ok(x) => x,
            Err(e) => {
                drop(fresh);
                let _ = self.db.drop_tree(&name);
                let _ = fs::remove_dir_all(&records_dir);
                return Err(e);
            }
        };

        let _scan = lock(&self.scan_lock);
        let _guard = lock(&self.apply_lock);
        self.db.insert(CURRENT_TREE, name.as_bytes())?;
        let old = std::mem::replace(
            &mut *self.live.write().unwrap_or_else(|p| p.into_inner()),
            Live {
                name,
                tree: fresh,
                records: Arc::new(fresh_records),
            },
        );
        self.hot.replace(hot);
        self.db.drop_tree(&old.name)?;
        self.db.flush()?;
        // Readers holding the old store keep reading it: its files are open.
        fs::remove_dir_all(records::dir_for(&self.records_root, &old.name))?;
        self.publish(meta.last_log_id);
        self.feed.reset(meta.last_log_id.map_or(0, |l| l.index));
        // Any key may have changed, and the install says nothing about which.
        self.wakes.wake_all();
        tracing::info!(snapshot = %meta.snapshot_id, "state machine loaded from snapshot");
        Ok(meta)
    }

    /// # Correctness
    /// The received bytes are copied into the snapshot directory and fsynced, and the copy is
    /// fully checked (every checksum, the record count); only then is it renamed into place
    /// (durable), loaded into a fresh tree and that tree made live. A crash before the switch
    /// leaves a durable snapshot newer than sled, which the next open installs. The copy is
    /// needed because openraft may hand over any file, not only the one from
    /// `begin_receiving_snapshot`.
    fn install_blocking(&self, meta: &Meta, mut received: File) -> Result<(), StorageError> {
        let seq = self.snap_seq.fetch_add(1, Ordering::Relaxed);
        let file = snapshot::SnapFile {
            index: meta.last_log_id.map_or(0, |l| l.index),
            seq,
            path: self.snap_dir.join(snapshot::file_name(meta, seq)),
        };
        let tmp = fsutil::tmp_path(&file.path);
        received.seek(SeekFrom::Start(0))?;
        {
            let mut out = File::create(&tmp)?;
            std::io::copy(&mut BufReader::new(received), &mut out)?;
            out.sync_all()?;
        }
        if let Err(e) = self.load_and_switch_from_tmp(&tmp, &file.path, meta) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.promote(meta, &file)
    }

    fn load_and_switch_from_tmp(
        &self,
        tmp: &Path,
        path: &Path,
        meta: &Meta,
    ) -> Result<(), StorageError> {
        // Check the whole file before it becomes the durable newest snapshot: a bad snapshot
        // under a `.snap` name would be loaded again at every open.
        snapshot::verify(tmp)?;
        fs::rename(tmp, path)?;
        fsutil::fsync_dir(&self.snap_dir)?;
        self.load_and_switch(path, Some(meta))?;
        Ok(())
    }
}

fn tree_generation(name: &str) -> Option<u64> {
    name.strip_prefix(TREE_PREFIX)?.parse().ok()
}

type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// The value under `key` in one generation of the state, wherever its family is kept.
fn state_get(
    tree: &sled::Tree,
    records: &Records,
    key: &[u8],
) -> Result<Option<sled::IVec>, StorageError> {
    if records::holds(key) {
        return Ok(records.get(key)?.map(sled::IVec::from));
    }
    Ok(tree.get(key)?)
}

fn append_all(records: &Records, kvs: &KeyValues) -> Result<records::Mark, StorageError> {
    records.append(kvs.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))))
}

/// Records per page of the record store while walking it whole.
const PAGE: usize = 256;

/// Every key and value of one generation, sled's and the record store's, in key order.
/// The record store is read a page at a time, each page as it is when read: like sled's
/// iterator, the walk is not a point-in-time view (a snapshot build's capture makes it one).
fn merged<'a>(
    tree: &sled::Tree,
    records: &'a Records,
) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StorageError>> + 'a {
    let mut sled_iter = tree
        .iter()
        .map(|r| r.map_err(StorageError::from))
        .peekable();
    let mut page: std::collections::VecDeque<(Vec<u8>, Vec<u8>)> = Default::default();
    let mut last: Option<Vec<u8>> = None;
    let mut exhausted = false;
    std::iter::from_fn(move || {
        if page.is_empty() && !exhausted {
            match records.page_after(last.as_deref(), PAGE) {
                Ok(p) => {
                    exhausted = p.len() < PAGE;
                    last = p.last().map(|(k, _)| k.clone()).or(last.take());
                    page.extend(p);
                }
                Err(e) => {
                    exhausted = true;
                    return Some(Err(e));
                }
            }
        }
        let take_record = match (page.front(), sled_iter.peek()) {
            (Some(_), Some(Err(_))) | (None, _) => false,
            (Some(_), None) => true,
            (Some((rk, _)), Some(Ok((sk, _)))) => rk.as_slice() < sk.as_ref(),
        };
        if take_record {
            let (k, v) = page.pop_front()?;
            return Some(Ok((k.into(), v.into())));
        }
        sled_iter.next()
    })
}

/// The state as seen by one entry of a batch: sled plus the writes of the entries before it.
struct BatchView<'a> {
    tree: &'a sled::Tree,
    hot: &'a Hot,
    records: &'a Records,
    /// Writes of this batch so far; `None` is a removal.
    overlay: RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// `StateView` cannot return errors; the first one is kept here and fails the batch.
    error: RefCell<Option<StorageError>>,
    /// The keys waiters watch that this batch wrote, woken once it is visible.
    touched: RefCell<HashSet<WakeKey>>,
    /// The log index of the entry being applied, which the feed records with its events.
    entry_index: Cell<u64>,
    /// The events this batch wrote, for the node's feed.
    feed: RefCell<Vec<FeedEntry>>,
}

impl<'a> BatchView<'a> {
    fn new(tree: &'a sled::Tree, hot: &'a Hot, records: &'a Records) -> Self {
        BatchView {
            tree,
            hot,
            records,
            overlay: RefCell::new(BTreeMap::new()),
            error: RefCell::new(None),
            touched: RefCell::new(HashSet::new()),
            entry_index: Cell::new(0),
            feed: RefCell::new(Vec::new()),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(v) = self.overlay.borrow().get(key) {
            return Ok(v.clone());
        }
        if Hot::holds(key) {
            return Ok(self.hot.get(key).map(|v| v.to_vec()));
        }
        if records::holds(key) {
            return self.records.get(key);
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Every key/value under `prefix`, sled and overlay merged, in key order. Only for the
    /// small per-owner and per-event indexes.
    fn scan(&self, prefix: &[u8]) -> Result<KeyValues, StorageError> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        if Hot::holds(prefix) {
            for (k, v) in self.hot.scan(prefix) {
                merged.insert(k, Some(v.to_vec()));
            }
        } else if records::holds(prefix) {
            for (k, v) in self.records.scan(prefix)? {
                merged.insert(k, Some(v));
            }
        } else {
            for r in self.tree.scan_prefix(prefix) {
                let (k, v) = r?;
                merged.insert(k.to_vec(), Some(v.to_vec()));
            }
        }
        let overlay = self.overlay.borrow();
        for (k, v) in overlay
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// The records an index under `prefix` points to (by the UUID ending each index key).
    fn indexed<T: DeserializeOwned>(&self, prefix: &[u8], record: fn(&Uuid) -> Vec<u8>) -> Vec<T> {
        let keys = match self.scan(prefix) {
            Ok(keys) => keys,
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                return Vec::new();
            }
        };
        keys.into_iter()
            .filter_map(|(k, _)| keys::trailing_uuid(&k))
            .filter_map(|id| self.decode_or_fail(&record(&id)))
            .collect()
    }

    fn get_or_fail(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.get(key) {
            Ok(v) => v,
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        }
    }

    fn decode_or_fail<T: DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        match decode(self.get_or_fail(key)) {
            Ok(v) => v,
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        }
    }

    fn put(&self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.borrow_mut().insert(key, Some(value));
    }

    fn remove(&self, key: Vec<u8>) {
        self.overlay.borrow_mut().insert(key, None);
    }

    fn read<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        decode(self.get(key)?)
    }

    /// Adds `delta` to the record counter under `key` (saturating at 0).
    fn count(&self, key: &[u8], delta: i64) -> Result<(), StorageError> {
        let n = self
            .get(key)?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0);
        let n = n.saturating_add_signed(delta);
        self.put(key.to_vec(), n.to_be_bytes().to_vec());
        Ok(())
    }

    /// Removes `intent` and everything kept for it (see `Write::Purge`). Every key is found
    /// from the intent itself or from a small per-intent index, never by scanning a queue,
    /// an inbox or the events of other intents.
    fn purge(&self, intent: &Intent) -> Result<(), StorageError> {
        let id = intent.id;
        self.touch(WakeKey::Intent(id));
        self.touch(WakeKey::Addressed(state_key(&intent.to_agent).to_string()));
        if self.get(&keys::intent(&id))?.is_some() {
            self.count(keys::INTENT_COUNT, -1)?;
        }
        self.remove(keys::intent(&id));
        for (k, _) in self.scan(&keys::events_of(&id))? {
            self.remove(k);
            self.count(keys::EVENT_COUNT, -1)?;
        }
        for seq in 1..=intent.last_seq {
            let event_id = derived_id(&id, &seq.to_be_bytes());
            self.remove(keys::webhook_event(&event_id));
            for (k, _) in self.scan(&keys::event_deliveries(&event_id))? {
                if let Some(delivery_id) = keys::trailing_uuid(&k) {
                    let key = keys::webhook_delivery(&delivery_id);
                    if let Some(d) = self.read::<WebhookDelivery>(&key)? {
                        if let Some(at) = d.next_attempt_at {
                            self.remove(keys::due(&at, DueKind::WebhookDelivery, &delivery_id));
                        }
                    }
                    self.remove(key);
                }
                self.remove(k);
            }
        }
        for (k, _) in self.scan(&keys::intent_claims(&id))? {
            let prefix = keys::intent_claims(&id).len();
            let storage_key = std::str::from_utf8(&k[prefix..]).map_err(|_| {
                StorageError::Inconsistent(format!("claim index key of intent {id} is not UTF-8"))
            })?;
            let claim = keys::idempotency(storage_key);
            // A claim that expired may have been taken again for another intent since.
            if let Some(record) = self.read::<IdempotencyRecord>(&claim)? {
                if record.intent_id == id {
                    self.remove(claim);
                    self.count(keys::IDEMPOTENCY_COUNT, -1)?;
                }
            }
            self.remove(k);
        }
        let agent = state_key(&intent.to_agent);
        let cursors = intent.earlier_cursors.iter().chain([&intent.agent_cursor]);
        for cursor in cursors.filter(|c| **c != 0) {
            self.remove(keys::queue(agent, *cursor));
        }
        if self.get(&keys::dead_letter(&id))?.is_some() {
            self.remove(keys::dead_letter(&id));
            self.count(keys::DEAD_LETTER_COUNT, -1)?;
        }
        if let Some(thread) = self.read::<InboxThread>(&keys::thread(&id))? {
            self.remove(keys::owner_thread(&thread.owner, &thread.thread_id));
            self.remove(keys::thread(&id));
        }
        // The thread's entries in its owners' change feeds leave gaps in their `seq`s;
        // a feed reader pages by `seq` and never relied on them being dense.
        for (k, _) in self.scan(&keys::thread_changes(&id))? {
            if let Some(change) = keys::inbox_change_of_thread_change(&k) {
                self.remove(change);
            }
            self.remove(k);
        }
        Ok(())
    }

    fn touch(&self, key: WakeKey) {
        self.touched.borrow_mut().insert(key);
    }

    /// Translates the lifecycle's writes into keys; the only place that knows both.
    fn store(&self, writes: Vec<Write>) -> Result<(), StorageError> {
        for write in writes {
            match write {
                Write::Intent(intent) => {
                    self.touch(WakeKey::Intent(intent.id));
                    self.touch(WakeKey::Addressed(state_key(&intent.to_agent).to_string()));
                    let key = keys::intent(&intent.id);
                    if self.get(&key)?.is_none() {
                        let n = self
                            .get(keys::INTENT_COUNT)?
                            .and_then(|v| keys::u64_value(&v))
                            .unwrap_or(0);
                        self.put(keys::INTENT_COUNT.to_vec(), (n + 1).to_be_bytes().to_vec());
                    }
                    self.put(key, serde_json::to_vec(&intent)?);
                }
                Write::Event(event) => {
                    self.touch(WakeKey::Intent(event.intent_id));
                    self.touch(WakeKey::Feed);
                    self.feed.borrow_mut().push(FeedEntry {
                        index: self.entry_index.get(),
                        intent_id: event.intent_id,
                        seq: event.seq,
                    });
                    // `seq` is assigned once per intent (`Change::record`): every event is new.
                    self.count(keys::EVENT_COUNT, 1)?;
                    self.put(
                        keys::event(&event.intent_id, event.seq),
                        serde_json::to_vec(&event)?,
                    );
                }
                Write::Idempotency { key, record } => {
                    let claim = keys::idempotency(&key);
                    match self.read::<IdempotencyRecord>(&claim)? {
                        Some(old) => self.remove(keys::intent_claim(&old.intent_id, &key)),
                        None => self.count(keys::IDEMPOTENCY_COUNT, 1)?,
                    }
                    self.put(keys::intent_claim(&record.intent_id, &key), Vec::new());
                    self.put(claim, serde_json::to_vec(&record)?);
                }
                Write::AgentQueue {
                    agent,
                    cursor,
                    intent_id,
                } => {
                    self.touch(WakeKey::Queue(state_key(&agent).to_string()));
                    self.put(keys::queue(&agent, cursor), intent_id.as_bytes().to_vec());
                    let last = self
                        .get(&keys::cursor(&agent))?
                        .and_then(|v| keys::u64_value(&v))
                        .unwrap_or(0);
                    self.put(
                        keys::cursor(&agent),
                        last.max(cursor).to_be_bytes().to_vec(),
                    );
                }
                Write::ApiKey { key_hash, key } => {
                    self.put(keys::api_key_id(&key.id), key_hash.as_bytes().to_vec());
                    self.put(keys::api_key(&key_hash), serde_json::to_vec(&key)?);
                }
                Write::AgentConfig(config) => {
                    self.put(
                        keys::agent(config.address.path()),
                        serde_json::to_vec(&config)?,
                    );
                }
                Write::RemoveAgent { address } => self.remove(keys::agent(&address)),
                Write::Due { at, kind, id } => self.put(keys::due(&at, kind, &id), Vec::new()),
                Write::Undue { at, kind, id } => self.remove(keys::due(&at, kind, &id)),
                Write::DeadLetter(letter) => {
                    if self.get(&keys::dead_letter(&letter.intent_id))?.is_none() {
                        self.count(keys::DEAD_LETTER_COUNT, 1)?;
                    }
                    self.put(
                        keys::dead_letter(&letter.intent_id),
                        serde_json::to_vec(&letter)?,
                    );
                }
                Write::InboxThread(thread) => {
                    let key = keys::thread(&thread.thread_id);
                    if let Some(old) = self.read::<InboxThread>(&key)? {
                        if old.owner != thread.owner {
                            self.remove(keys::owner_thread(&old.owner, &old.thread_id));
                        }
                    }
                    self.put(
                        keys::owner_thread(&thread.owner, &thread.thread_id),
                        Vec::new(),
                    );
                    self.put(key, serde_json::to_vec(&thread)?);
                }
                Write::InboxChange { owner, change } => {
                    self.put(
                        keys::thread_change(&change.thread_id, &owner, change.seq),
                        Vec::new(),
                    );
                    self.put(
                        keys::inbox_change(&owner, change.seq),
                        serde_json::to_vec(&change)?,
                    );
                    let last = self
                        .get(&keys::inbox_cursor(&owner))?
                        .and_then(|v| keys::u64_value(&v))
                        .unwrap_or(0);
                    self.put(
                        keys::inbox_cursor(&owner),
                        last.max(change.seq).to_be_bytes().to_vec(),
                    );
                }
                Write::Subscription(sub) => {
                    let key = keys::subscription(&sub.id);
                    if let Some(old) = self.read::<Subscription>(&key)? {
                        if old.owner != sub.owner {
                            self.remove(keys::owner_subscription(&old.owner, &old.id));
                        }
                    }
                    self.put(keys::owner_subscription(&sub.owner, &sub.id), Vec::new());
                    self.put(key, serde_json::to_vec(&sub)?);
                }
                Write::WebhookEvent(event) => {
                    self.put(
                        keys::webhook_event(&event.event_id),
                        serde_json::to_vec(&event)?,
                    );
                }
                Write::WebhookDelivery(d) => {
                    self.put(
                        keys::event_delivery(&d.event_id, &d.delivery_id),
                        Vec::new(),
                    );
                    self.put(
                        keys::webhook_delivery(&d.delivery_id),
                        serde_json::to_vec(&d)?,
                    );
                }
                Write::Retention(retention) => {
                    self.put(keys::RETENTION.to_vec(), serde_json::to_vec(&retention)?);
                }
                Write::Purge(intent) => self.purge(&intent)?,
                Write::MeshAgent(agent) => {
                    self.touch(WakeKey::Mesh);
                    // A resume changes what the agent's consumers may lease.
                    self.touch(WakeKey::Addressed(agent.address.clone()));
                    self.put(
                        keys::mesh_agent(&agent.address),
                        serde_json::to_vec(&agent)?,
                    );
                }
                Write::MeshHold { agent, intent_id } => {
                    self.put(keys::mesh_hold(&agent, &intent_id), Vec::new());
                }
                Write::MeshUnhold { agent, intent_id } => {
                    self.remove(keys::mesh_hold(&agent, &intent_id));
                }
                Write::MeshEvent(event) => {
                    self.touch(WakeKey::Mesh);
                    let last = self
                        .get(keys::MESH_EVENT_CURSOR)?
                        .and_then(|v| keys::u64_value(&v))
                        .unwrap_or(0);
                    self.put(
                        keys::MESH_EVENT_CURSOR.to_vec(),
                        last.max(event.seq).to_be_bytes().to_vec(),
                    );
                    self.put(keys::mesh_event(event.seq), serde_json::to_vec(&event)?);
                }
            }
        }
        Ok(())
    }
}

impl StateView for BatchView<'_> {
    fn intent(&self, id: &Uuid) -> Option<Intent> {
        self.decode_or_fail(&keys::intent(id))
    }

    fn idempotency(&self, storage_key: &str) -> Option<IdempotencyRecord> {
        self.decode_or_fail(&keys::idempotency(storage_key))
    }

    fn agent_cursor(&self, agent: &str) -> u64 {
        self.get_or_fail(&keys::cursor(agent))
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0)
    }

    fn api_key_by_id(&self, id: &Uuid) -> Option<(String, ApiKey)> {
        let hash = String::from_utf8(self.get_or_fail(&keys::api_key_id(id))?).ok()?;
        let key = self.decode_or_fail(&keys::api_key(&hash))?;
        Some((hash, key))
    }

    fn agent_config(&self, address: &str) -> Option<AgentConfig> {
        self.decode_or_fail(&keys::agent(address))
    }

    fn subscriptions_of(&self, owner: &str) -> Vec<Subscription> {
        self.indexed(&keys::owner_subscriptions(owner), keys::subscription)
    }

    fn subscription(&self, id: &Uuid) -> Option<Subscription> {
        self.decode_or_fail(&keys::subscription(id))
    }

    fn inbox_thread(&self, thread_id: &Uuid) -> Option<InboxThread> {
        self.decode_or_fail(&keys::thread(thread_id))
    }

    fn inbox_cursor(&self, owner: &str) -> u64 {
        self.get_or_fail(&keys::inbox_cursor(owner))
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0)
    }

    fn webhook_event(&self, event_id: &Uuid) -> Option<WebhookEvent> {
        self.decode_or_fail(&keys::webhook_event(event_id))
    }

    fn webhook_delivery(&self, delivery_id: &Uuid) -> Option<WebhookDelivery> {
        self.decode_or_fail(&keys::webhook_delivery(delivery_id))
    }

    fn webhook_deliveries(&self, event_id: &Uuid) -> Vec<WebhookDelivery> {
        self.indexed(&keys::event_deliveries(event_id), keys::webhook_delivery)
    }

    fn dead_letter(&self, intent_id: &Uuid) -> Option<DeadLetter> {
        self.decode_or_fail(&keys::dead_letter(intent_id))
    }

    fn retention(&self) -> Retention {
        self.decode_or_fail(keys::RETENTION).unwrap_or_default()
    }

    fn mesh_agent(&self, address: &str) -> Option<MeshAgent> {
        self.decode_or_fail(&keys::mesh_agent(address))
    }

    fn mesh_holds(&self, agent: &str) -> Vec<Uuid> {
        match self.scan(&keys::mesh_holds_of(agent)) {
            Ok(keys) => keys
                .into_iter()
                .filter_map(|(k, _)| keys::trailing_uuid(&k))
                .collect(),
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                Vec::new()
            }
        }
    }

    fn mesh_event_cursor(&self) -> u64 {
        self.get_or_fail(keys::MESH_EVENT_CURSOR)
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0)
    }
}

/// The replicated state machine. Cheap to clone; every clone is the same state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<SmShared>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied_index", &self.shared.applied_index())
            .finish_non_exhaustive()
    }
}

fn open_sled(dir: &Path, opts: &StorageOptions) -> Result<sled::Db, StorageError> {
    Ok(sled::Config::new()
        .path(dir)
        .cache_capacity(opts.sled_cache_bytes)
        // Appends instead of rewriting fragmented pages eagerly: the Raft log is what makes
        // applies durable, so sled's own space reclamation can wait.
        .mode(sled::Mode::HighThroughput)
        .open()?)
}

/// Opens the live tree named by the pointer (creating the first one) and its record store,
/// and drops every other generation (an install that never switched, or an old one not yet
/// dropped).
///
/// Fails, so that the caller rebuilds from snapshot + log, when the record store lacks
/// records the tree's batches rely on, or when the tree still holds intents or events itself
/// (written before the record store existed: the rebuild moves them).
fn open_live(
    db: &sled::Db,
    records_root: &Path,
    segment_bytes: u64,
) -> Result<(Live, Option<LogId<u64>>), StorageError> {
    let (name, tree, last) = open_live_tree(db)?;
    records::remove_others(records_root, &name)?;
    for family in [keys::INTENT, keys::EVENT] {
        if tree.scan_prefix([family]).next().is_some() {
            return Err(StorageError::Inconsistent(
                "the state tree holds intents or events from before the record store".into(),
            ));
        }
    }
    let mark = tree
        .get(keys::RECORDS_MARK)?
        .map(|v| records::Mark::decode(&v))
        .transpose()?;
    let records = Records::open(&records::dir_for(records_root, &name), mark, segment_bytes)?;
    let live = Live {
        name,
        tree,
        records: Arc::new(records),
    };
    Ok((live, last))
}

fn open_live_tree(db: &sled::Db) -> Result<(String, sled::Tree, Option<LogId<u64>>), StorageError> {
    let name = match db.get(CURRENT_TREE)? {
        Some(v) => String::from_utf8(v.to_vec())
            .ok()
            .filter(|n| tree_generation(n).is_some())
            .ok_or_else(|| StorageError::Inconsistent("bad current_tree pointer".into()))?,
        None => {
            let name = format!("{TREE_PREFIX}{:020}", 1);
            db.insert(CURRENT_TREE, name.as_bytes())?;
            name
        }
    };
    for other in db.tree_names() {
        let other = String::from_utf8_lossy(&other).into_owned();
        if other != name && other.starts_with(TREE_PREFIX) {
            db.drop_tree(other.as_bytes())?;
        }
    }
    let tree = db.open_tree(&name)?;
    let (last, _) = read_applied(&tree)?;
    Ok((name, tree, last))
}

impl StateMachine {
    /// Opens sled under `sm_dir` and the record store under `records_root`, rebuilding both
    /// from the newest snapshot in `snap_dir` when either is damaged, or sled is behind that
    /// snapshot (see the module doc for why that is sound).
    pub(crate) fn open(
        sm_dir: &Path,
        records_root: &Path,
        snap_dir: &Path,
        opts: &StorageOptions,
        lock: Arc<DirLock>,
    ) -> Result<StateMachine, StorageError> {
        fs::create_dir_all(snap_dir)?;
        let snaps = snapshot::list(snap_dir, true)?;
        let newest = match snaps.last() {
            Some(f) => {
                let (meta, _) =
                    snapshot::Reader::new(BufReader::new(File::open(&f.path)?), &f.path)?;
                Some((meta, f.clone()))
            }
            None => None,
        };
        let snap_seq = snaps.iter().map(|s| s.seq + 1).max().unwrap_or(1);

        let opened = open_sled(sm_dir, opts).and_then(|db| {
            let live = open_live(&db, records_root, opts.record_segment_bytes)?;
            Ok((db, live))
        });
        let (db, (live, last)) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, dir = %sm_dir.display(), "state machine unreadable; rebuilding it from snapshot and log");
                for dir in [sm_dir, records_root] {
                    if dir.exists() {
                        fs::remove_dir_all(dir)?;
                    }
                }
                let db = open_sled(sm_dir, opts)?;
                let live = open_live(&db, records_root, opts.record_segment_bytes)?;
                (db, live)
            }
        };
        let (watch, _) = watch::channel(last.map_or(0, |l| l.index));
        let hot = Hot::load(&live.tree)?;
        let feed = Feed::default();
        feed.reset(last.map_or(0, |l| l.index));
        let shared = SmShared {
            db,
            live: RwLock::new(live),
            records_root: records_root.to_path_buf(),
            record_segment_bytes: opts.record_segment_bytes,
            hot,
            apply_lock: Mutex::new(()),
            scan_lock: Mutex::new(()),
            capture: Mutex::new(None),
            applied: AtomicU64::new(last.map_or(0, |l| l.index)),
            watch,
            wakes: Arc::default(),
            feed,
            snap_dir: snap_dir.to_path_buf(),
            snap_seq: AtomicU64::new(snap_seq),
            current: Mutex::new(newest.clone()),
            _lock: lock,
        };
        if let Some((meta, file)) = newest {
            if last < meta.last_log_id {
                tracing::warn!(
                    sled_last_applied = ?last,
                    snapshot = %meta.snapshot_id,
                    "state machine is behind the newest snapshot; rebuilding it from the snapshot"
                );
                shared.load_and_switch(&file.path, Some(&meta))?;
            }
        }
        tracing::info!(applied = shared.applied_index(), "state machine opened");
        Ok(StateMachine {
            shared: Arc::new(shared),
        })
    }

    /// A read-only view of the local state, for any task.
    pub fn reader(&self) -> StateReader {
        StateReader::new(Arc::clone(&self.shared))
    }

    /// Ends every per-key wait ([`StateReader::watch_queue`] and its siblings), now and
    /// later, with [`crate::Closed`]. At shutdown, so that streams end and their clients
    /// reconnect to another node instead of holding the server's graceful shutdown open. The
    /// applied-index watch is untouched: Raft and the engine stop by their own signals.
    pub fn close_waits(&self) {
        self.shared.wakes.close();
    }

    /// Asks sled to write out what it holds. Never needed for correctness (the state machine
    /// is rebuilt from snapshot + log), but a clean shutdown that flushes restarts without
    /// re-applying the log tail.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.blocking(|shared| {
            shared.db.flush()?;
            Ok(())
        })
        .await
    }

    pub(crate) fn last_applied(&self) -> Result<Option<LogId<u64>>, StorageError> {
        Ok(read_applied(&self.shared.tree())?.0)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&SmShared) -> Result<T, StorageError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared)).await?
    }

    fn open_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = lock(&self.shared.current);
        let Some((meta, file)) = current.as_ref() else {
            return Ok(None);
        };
        let f = File::open(&file.path)?;
        Ok(Some(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftError<u64>> {
        let res = self.blocking(|s| s.build_blocking()).await;
        let (meta, f) =
            res.map_err(|e| e.into_raft(|a| StorageIOError::write_snapshot(None, a)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), RaftError<u64>> {
        read_applied(&self.shared.tree())
            .map_err(|e| e.into_raft(StorageIOError::read_state_machine))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Applied on openraft's state-machine task itself: a batch costs tens to hundreds of
        // microseconds of CPU in sled's memory (its IO threads write it out), less than the
        // two thread hand-offs of the blocking pool cost every batch.
        self.shared
            .apply_blocking(entries)
            .map_err(|e| e.into_raft(StorageIOError::write_state_machine))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// An anonymous file in the snapshot directory: unlinked at once, so an interrupted
    /// transfer leaves nothing behind.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftError<u64>> {
        let res = self
            .blocking(|s| {
                let seq = s.snap_seq.fetch_add(1, Ordering::Relaxed);
                let path = s.snap_dir.join(format!("recv-{seq:020}.tmp"));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                fs::remove_file(&path)?;
                Ok(f)
            })
            .await;
        let f = res.map_err(|e| e.into_raft(|a| StorageIOError::write_snapshot(None, a)))?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftError<u64>> {
        let received = snapshot.into_std().await;
        let meta = meta.clone();
        let signature = meta.signature();
        self.blocking(move |s| s.install_blocking(&meta, received))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "snapshot install failed");
                RaftError::from(StorageIOError::write_snapshot(
                    Some(signature),
                    openraft::AnyError::new(&e),
                ))
            })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftError<u64>> {
        self.open_snapshot()
            .map_err(|e| e.into_raft(|a| StorageIOError::read_snapshot(None, a)))
    }
}
