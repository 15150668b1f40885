//! Intent records and their events: append-only segment files with an in-memory index.
//!
//! # Why not sled
//! sled wrote each stored byte five to seven times (leaf deltas, whole-leaf rewrites every few
//! inserts, splits), and intents and events are nearly all the bytes a create stores: a build
//! that kept the state machine's writes in memory did twice the creates
//! (`docs/performance.md`, round 6; `docs/record-store-design.md`). Here a record is written
//! once, plus once more if it is still live when compaction reclaims its segment.
//!
//! # Layout
//! `records/<tree name>/<n>.seg`: one directory per generation of the live sled tree (an
//! install fills a new tree and a new directory, and drops both old ones together). A
//! segment is a sequence of frames `[len u32 LE][crc32 u32 LE][op u8][key len u8][key][value]`
//! (`len` and the checksum cover what follows them); `op` is a put or a removal. The index
//! maps each intent to where its newest record and each of its events are.
//!
//! # Correctness
//! - Like sled, the segments are never fsynced on the apply path: the Raft log and the
//!   snapshots are the durability, and this is a cache of "snapshot + log up to
//!   `last_applied`".
//! - Apply appends a batch's records before sled takes the batch, and the batch stores the
//!   [`Mark`] after them next to `last_applied`: whatever prefix of batches sled recovers
//!   names exactly how much of the segments belongs to it.
//! - At open, frames past the mark (appended for a batch sled then lost) are cut. Fewer bytes
//!   than the mark, a missing segment or a bad checksum mean records sled relies on are gone:
//!   the open fails and the state machine is rebuilt from snapshot + log, as for a damaged
//!   sled.
//! - Compaction copies the live records of the oldest segment forward while the segments hold
//!   more dead bytes than live ones, a bounded slice per batch and inside the batch (so the
//!   copies are ordered with applies like any write). The batch that copies its last live
//!   record moves the mark's `first` past it, and the file is deleted only after sled has
//!   flushed that batch. Only the oldest segment is ever reclaimed, so a removal's frame is
//!   never needed once its segment goes: every older put it could hide went before it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use uuid::Uuid;

use crate::{fsutil, keys, StorageError};

/// How many bytes of the segment being reclaimed one batch reads (and copies the live part
/// of): enough to outpace the appends of a busy node, small enough not to stall a batch.
const COMPACT_STEP: u64 = 128 << 10;
const PUT: u8 = 0;
const REMOVE: u8 = 1;
const SUFFIX: &str = ".seg";

/// How far the segments hold a consistent state: sled stores it with every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The oldest segment still needed.
    first: u32,
    /// The segment appended to, and how many of its bytes belong to applied batches.
    head: u32,
    len: u64,
}

impl Mark {
    const EMPTY: Mark = Mark {
        first: 1,
        head: 1,
        len: 0,
    };

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.first.to_be_bytes());
        v.extend_from_slice(&self.head.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Mark, StorageError> {
        let bad = || StorageError::Inconsistent(format!("malformed record-store mark {v:?}"));
        let v: &[u8; 16] = v.try_into().map_err(|_| bad())?;
        let u32_at = |i: usize| u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        let mark = Mark {
            first: u32_at(0),
            head: u32_at(4),
            len: u64::from_be_bytes(v[8..16].try_into().map_err(|_| bad())?),
        };
        if mark.first == 0 || mark.first > mark.head {
            return Err(bad());
        }
        Ok(mark)
    }
}

/// Keys and values, in key order.
pub(crate) type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Where one frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    seg: u32,
    offset: u32,
    len: u32,
}

/// An intent's newest record and its events, by `seq`.
#[derive(Debug, Default)]
struct Slot {
    intent: Option<Loc>,
    events: Vec<(u64, Loc)>,
}

#[derive(Debug)]
struct Segment {
    file: File,
    len: u64,
    /// Bytes of frames the index points to.
    live: u64,
}

enum Key {
    Intent(Uuid),
    Event(Uuid, u64),
}

impl Key {
    fn parse(key: &[u8]) -> Result<Key, StorageError> {
        let id = || Uuid::from_slice(&key[1..17]).expect("16 bytes");
        match (key.first().copied(), key.len()) {
            (Some(keys::INTENT), 17) => Ok(Key::Intent(id())),
            (Some(keys::EVENT), 25) => {
                let seq = u64::from_be_bytes(key[17..25].try_into().expect("8 bytes"));
                Ok(Key::Event(id(), seq))
            }
            _ => Err(StorageError::Inconsistent(format!(
                "malformed record key {key:?}"
            ))),
        }
    }
}

#[derive(Debug)]
struct State {
    slots: BTreeMap<Uuid, Slot>,
    segments: BTreeMap<u32, Segment>,
    head: u32,
    /// How far the oldest segment has been copied forward, once its reclaim began.
    reclaiming: Option<u64>,
    /// Segments every live record has left, to delete once sled has flushed.
    drained: Vec<u32>,
}

/// The record store of one state tree generation.
#[derive(Debug)]
pub(crate) struct Records {
    dir: PathBuf,
    /// A segment is sealed once it holds this many bytes.
    segment_bytes: u64,
    state: RwLock<State>,
}

/// Whether `key` (or every key under the prefix `key`) is kept here rather than in sled.
pub(crate) fn holds(key: &[u8]) -> bool {
    matches!(key.first(), Some(&keys::INTENT | &keys::EVENT))
}

/// The directory of the generation whose sled tree is `tree`.
pub(crate) fn dir_for(root: &Path, tree: &str) -> PathBuf {
    root.join(tree)
}

/// Deletes every generation's directory under `root` but `keep`'s.
pub(crate) fn remove_others(root: &Path, keep: &str) -> Result<(), StorageError> {
    if !root.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name() != keep {
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

fn seg_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:010}{SUFFIX}"))
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Appends one frame to `buf` and answers its length.
fn encode(buf: &mut Vec<u8>, op: u8, key: &[u8], value: &[u8]) -> u32 {
    let start = buf.len();
    let body = 2 + key.len() + value.len();
    buf.extend_from_slice(&(body as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(op);
    buf.push(key.len() as u8);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    (buf.len() - start) as u32
}

/// A checked frame: its op, key and value.
struct Frame<'a> {
    op: u8,
    key: &'a [u8],
    value: &'a [u8],
    len: usize,
}

/// Reads the frame at the start of `bytes`; `None` if it is cut short or fails its checksum.
fn decode(bytes: &[u8]) -> Option<Frame<'_>> {
    let head = bytes.get(..8)?;
    let body = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let rest = bytes.get(8..8 + body)?;
    if body < 2 || crc32fast::hash(rest) != crc {
        return None;
    }
    let (op, key_len) = (rest[0], rest[1] as usize);
    let key = rest.get(2..2 + key_len)?;
    Some(Frame {
        op,
        key,
        value: &rest[2 + key_len..],
        len: 8 + body,
    })
}

impl State {
    fn empty(head: u32) -> State {
        State {
            slots: BTreeMap::new(),
            segments: BTreeMap::new(),
            head,
            reclaiming: None,
            drained: Vec::new(),
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            first: self.segments.keys().next().copied().unwrap_or(self.head),
            head: self.head,
            len: self.segments.get(&self.head).map_or(0, |s| s.len),
        }
    }

    fn loc(&self, key: &Key) -> Option<Loc> {
        match key {
            Key::Intent(id) => self.slots.get(id)?.intent,
            Key::Event(id, seq) => {
                let events = &self.slots.get(id)?.events;
                let i = events.binary_search_by_key(seq, |e| e.0).ok()?;
                Some(events[i].1)
            }
        }
    }

    /// Points `key` at `loc` (a put) or at nothing (`None`, a removal), keeping each
    /// segment's live bytes.
    fn index(&mut self, key: Key, loc: Option<Loc>) {
        let (id, old) = match key {
            Key::Intent(id) => {
                let slot = self.slots.entry(id).or_default();
                (id, std::mem::replace(&mut slot.intent, loc))
            }
            Key::Event(id, seq) => {
                let events = &mut self.slots.entry(id).or_default().events;
                let old = match (events.binary_search_by_key(&seq, |e| e.0), loc) {
                    (Ok(i), Some(loc)) => Some(std::mem::replace(&mut events[i].1, loc)),
                    (Ok(i), None) => Some(events.remove(i).1),
                    (Err(i), Some(loc)) => {
                        events.insert(i, (seq, loc));
                        None
                    }
                    (Err(_), None) => None,
                };
                (id, old)
            }
        };
        if let Some(old) = old {
            if let Some(s) = self.segments.get_mut(&old.seg) {
                s.live -= u64::from(old.len);
            }
        }
        if let Some(loc) = loc {
            if let Some(s) = self.segments.get_mut(&loc.seg) {
                s.live += u64::from(loc.len);
            }
        }
        let slot = &self.slots[&id];
        if slot.intent.is_none() && slot.events.is_empty() {
            self.slots.remove(&id);
        }
    }

    fn read(&self, loc: Loc) -> Result<Vec<u8>, StorageError> {
        let seg = self.segments.get(&loc.seg).ok_or_else(|| {
            StorageError::Inconsistent(format!("record in segment {} which is gone", loc.seg))
        })?;
        let mut buf = vec![0; loc.len as usize];
        seg.file.read_exact_at(&mut buf, u64::from(loc.offset))?;
        let frame = decode(&buf).filter(|f| f.op == PUT && f.len == buf.len());
        match frame {
            Some(f) => Ok(f.value.to_vec()),
            None => Err(StorageError::Inconsistent(format!(
                "record at {}:{} fails its checksum",
                loc.seg, loc.offset
            ))),
        }
    }

    /// Whether the segments hold more dead bytes than live ones.
    fn mostly_dead(&self) -> bool {
        let (live, len) = self
            .segments
            .values()
            .fold((0, 0), |(l, n), s| (l + s.live, n + s.len));
        live * 2 < len
    }

    /// Copies forward the live frames of the next slice of the oldest sealed segment, into
    /// `buf` (whose frames `frames` lists), while the segments are mostly dead or once that
    /// segment's reclaim began.
    ///
    /// Always the oldest, whatever its own share of live records: a removal's frame can be
    /// dropped with its segment only when no older segment is left that could hold a put it
    /// hides. So the store turns like a ring: the oldest records move to the head, the dead
    /// ones are left behind, and the space held stays within twice the live bytes (plus a
    /// segment), at a cost of at most one copy per written byte.
    fn reclaim_step(
        &mut self,
        dir: &Path,
        buf: &mut Vec<u8>,
        frames: &mut Vec<(Key, u8, usize, u32)>,
    ) -> Result<(), StorageError> {
        let Some((&n, seg)) = self.segments.iter().next() else {
            return Ok(());
        };
        if n == self.head {
            return Ok(());
        }
        let from = match self.reclaiming {
            Some(from) => from,
            None if self.mostly_dead() => 0,
            None => return Ok(()),
        };
        let mut slice = vec![0; (seg.len - from).min(COMPACT_STEP) as usize];
        seg.file.read_exact_at(&mut slice, from)?;
        if decode(&slice).is_none() {
            // One frame longer than a step: read it whole.
            let mut head = [0; 4];
            seg.file.read_exact_at(&mut head, from)?;
            let len = 8 + u32::from_le_bytes(head) as u64;
            if from + len > seg.len {
                return Err(corrupt(
                    &seg_path(dir, n),
                    from,
                    "bad frame in a sealed segment",
                ));
            }
            slice = vec![0; len as usize];
            seg.file.read_exact_at(&mut slice, from)?;
        }
        let mut at = 0;
        while let Some(frame) = slice.get(at..).and_then(decode) {
            let here = Loc {
                seg: n,
                offset: (from + at as u64) as u32,
                len: frame.len as u32,
            };
            if frame.op == PUT {
                let key = Key::parse(frame.key)?;
                if self.loc(&key) == Some(here) {
                    let start = buf.len();
                    buf.extend_from_slice(&slice[at..at + frame.len]);
                    frames.push((key, PUT, start, frame.len as u32));
                }
            }
            at += frame.len;
        }
        if at == 0 {
            return Err(corrupt(
                &seg_path(dir, n),
                from,
                "bad frame in a sealed segment",
            ));
        }
        let reached = from + at as u64;
        if reached >= seg.len {
            self.reclaiming = None;
            self.drained.push(n);
        } else {
            self.reclaiming = Some(reached);
        }
        Ok(())
    }
}

impl Records {
    /// Opens the generation in `dir` as the sled batch that wrote `mark` left it (`None`: a
    /// tree with no batch yet, so an empty store).
    pub(crate) fn open(
        dir: &Path,
        mark: Option<Mark>,
        segment_bytes: u64,
    ) -> Result<Records, StorageError> {
        fs::create_dir_all(dir)?;
        let mark = mark.unwrap_or(Mark::EMPTY);
        for (n, path) in list(dir)? {
            if n < mark.first || n > mark.head {
                fs::remove_file(path)?;
            }
        }
        let mut state = State::empty(mark.head);
        for n in mark.first..=mark.head {
            let path = seg_path(dir, n);
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && mark.len == 0 => {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::Inconsistent(format!(
                        "record segment {} is missing",
                        path.display()
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            let on_disk = file.metadata()?.len();
            let len = if n == mark.head { mark.len } else { on_disk };
            if on_disk < len {
                return Err(StorageError::Inconsistent(format!(
                    "record segment {} holds {on_disk} bytes, the state machine needs {len}",
                    path.display()
                )));
            }
            if on_disk > len {
                tracing::info!(segment = %path.display(), cut = on_disk - len, "cutting records of batches the state machine lost");
                file.set_len(len)?;
            }
            let mut bytes = vec![0; len as usize];
            file.read_exact_at(&mut bytes, 0)?;
            state.segments.insert(n, Segment { file, len, live: 0 });
            let mut at = 0;
            while at < bytes.len() {
                let frame = decode(&bytes[at..])
                    .ok_or_else(|| corrupt(&path, at as u64, "bad record frame"))?;
                let loc = Loc {
                    seg: n,
                    offset: at as u32,
                    len: frame.len as u32,
                };
                let key = Key::parse(frame.key)?;
                state.index(key, (frame.op == PUT).then_some(loc));
                at += frame.len;
            }
        }
        Ok(Records {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: RwLock::new(state),
        })
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the puts (`Some`) and removals (`None`) of one batch, with one write, and
    /// answers the mark sled must store with the batch.
    pub(crate) fn append<'a>(
        &self,
        writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<Mark, StorageError> {
        let mut st = self.write_state();
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let drained_before = st.drained.len();
        // Copies first: a write of the same key later in this batch must win.
        st.reclaim_step(&self.dir, &mut buf, &mut frames)?;
        for (key, value) in writes {
            let parsed = Key::parse(key)?;
            let start = buf.len();
            let len = match value {
                Some(v) => encode(&mut buf, PUT, key, v),
                None => encode(&mut buf, REMOVE, key, &[]),
            };
            frames.push((parsed, value.map_or(REMOVE, |_| PUT), start, len));
        }
        if !buf.is_empty() {
            self.write_frames(&mut st, &buf, frames)?;
        }
        // Out of the index's reach now (and out of the mark this batch stores); the files go in
        // `retire`, after sled has this batch on disk.
        for i in drained_before..st.drained.len() {
            let n = st.drained[i];
            let gone = st.segments.remove(&n).expect("drained segment");
            debug_assert_eq!(gone.live, 0, "a drained segment holds no live record");
        }
        Ok(st.mark())
    }

    /// Writes `buf` (the frames `frames` lists) at the end of the head segment, rolling to a
    /// new one first if it would overflow, and points the index at them.
    fn write_frames(
        &self,
        st: &mut State,
        buf: &[u8],
        frames: Vec<(Key, u8, usize, u32)>,
    ) -> Result<(), StorageError> {
        let head_len = st.segments.get(&st.head).map_or(0, |s| s.len);
        if head_len > 0 && head_len + buf.len() as u64 > self.segment_bytes {
            // Sealed: never written again. Not fsynced, like every append (see the module doc).
            st.head += 1;
        }
        if !st.segments.contains_key(&st.head) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(seg_path(&self.dir, st.head))?;
            let head = st.head;
            st.segments.insert(
                head,
                Segment {
                    file,
                    len: 0,
                    live: 0,
                },
            );
        }
        let seg = st.head;
        let base = st.segments[&seg].len;
        if base + buf.len() as u64 > u64::from(u32::MAX) {
            return Err(StorageError::Inconsistent(format!(
                "a batch of {} bytes of records does not fit a segment",
                buf.len()
            )));
        }
        st.segments[&seg].file.write_all_at(buf, base)?;
        st.segments.get_mut(&seg).expect("head").len += buf.len() as u64;
        for (key, op, start, len) in frames {
            let loc = Loc {
                seg,
                offset: (base + start as u64) as u32,
                len,
            };
            st.index(key, (op == PUT).then_some(loc));
        }
        Ok(())
    }

    /// Deletes the segments compaction drained, once sled has on disk the batches that moved
    /// the mark past them (`flush` makes it so). A no-op on most batches.
    pub(crate) fn retire(
        &self,
        flush: impl FnOnce() -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let drained = std::mem::take(&mut self.write_state().drained);
        if drained.is_empty() {
            return Ok(());
        }
        // The copies first, then the batches pointing at them: after that no recovered
        // state needs the drained files.
        self.sync()?;
        flush()?;
        for n in drained {
            fs::remove_file(seg_path(&self.dir, n))?;
        }
        fsutil::fsync_dir(&self.dir)?;
        Ok(())
    }

    /// Writes every segment out, for an install that is about to make this generation live.
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        for seg in self.read_state().segments.values() {
            seg.file.sync_data()?;
        }
        fsutil::fsync_dir(&self.dir)?;
        Ok(())
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let key = Key::parse(key)?;
        let st = self.read_state();
        st.loc(&key).map(|loc| st.read(loc)).transpose()
    }

    /// Events of `id` with `seq >= from`, ascending, at most `limit`.
    pub(crate) fn events(
        &self,
        id: &Uuid,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let st = self.read_state();
        let Some(slot) = st.slots.get(id) else {
            return Ok(Vec::new());
        };
        let start = slot.events.partition_point(|e| e.0 < from);
        slot.events[start..]
            .iter()
            .take(limit)
            .map(|(_, loc)| st.read(*loc))
            .collect()
    }

    /// Every key and value under `prefix` (an intent's events: `e` and its id), in key order.
    pub(crate) fn scan(&self, prefix: &[u8]) -> Result<KeyValues, StorageError> {
        let bad = || StorageError::Inconsistent(format!("unsupported record prefix {prefix:?}"));
        if prefix.len() != 17 || prefix[0] != keys::EVENT {
            return Err(bad());
        }
        let id = Uuid::from_slice(&prefix[1..]).map_err(|_| bad())?;
        let st = self.read_state();
        let Some(slot) = st.slots.get(&id) else {
            return Ok(Vec::new());
        };
        slot.events
            .iter()
            .map(|(seq, loc)| Ok((keys::event(&id, *seq), st.read(*loc)?)))
            .collect()
    }

    /// Intent records newest first (ids are UUIDv7) below `before`, at most `limit`.
    pub(crate) fn intents_before(
        &self,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StorageError> {
        let st = self.read_state();
        let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
        st.slots
            .range((Bound::Unbounded, upper))
            .rev()
            .filter_map(|(id, slot)| Some((*id, slot.intent?)))
            .take(limit)
            .map(|(id, loc)| Ok((id, st.read(loc)?)))
            .collect()
    }

    /// Up to `limit` records in key order (every event, then every intent) after the key
    /// `after`: the pages a full scan (a snapshot build, a diagnosis) walks through.
    pub(crate) fn page_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        let st = self.read_state();
        let mut out = Vec::new();
        let after = after.map(Key::parse).transpose()?;
        // Events first: `e` sorts before `i`.
        if !matches!(after, Some(Key::Intent(_))) {
            let (from_id, from_seq) = match &after {
                Some(Key::Event(id, seq)) => (Bound::Included(*id), Some((*id, *seq))),
                _ => (Bound::Unbounded, None),
            };
            'slots: for (id, slot) in st.slots.range((from_id, Bound::Unbounded)) {
                for (seq, loc) in &slot.events {
                    if from_seq.is_some_and(|(fid, fseq)| fid == *id && *seq <= fseq) {
                        continue;
                    }
                    if out.len() == limit {
                        break 'slots;
                    }
                    out.push((keys::event(id, *seq), st.read(*loc)?));
                }
            }
        }
        let from_id = match &after {
            Some(Key::Intent(id)) => Bound::Excluded(*id),
            _ => Bound::Unbounded,
        };
        for (id, slot) in st.slots.range((from_id, Bound::Unbounded)) {
            if out.len() == limit {
                break;
            }
            if let Some(loc) = slot.intent {
                out.push((keys::intent(id), st.read(loc)?));
            }
        }
        Ok(out)
    }
}

/// The segment files in `dir`, by number.
fn list(dir: &Path) -> Result<BTreeMap<u32, PathBuf>, StorageError> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse().ok());
        match n {
            Some(n) => {
                out.insert(n, path);
            }
            None => fs::remove_file(&path)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(n: u128) -> Vec<u8> {
        keys::intent(&Uuid::from_u128(n))
    }

    fn event(n: u128, seq: u64) -> Vec<u8> {
        keys::event(&Uuid::from_u128(n), seq)
    }

    fn put<'a>(k: &'a [u8], v: &'a [u8]) -> (&'a [u8], Option<&'a [u8]>) {
        (k, Some(v))
    }

    fn segments(dir: &Path) -> Vec<u32> {
        list(dir).unwrap().into_keys().collect()
    }

    #[test]
    fn reads_back_puts_and_removals_and_reopens_at_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path(), None, 1 << 20).unwrap();
        let (a, b, e1, e2) = (intent(1), intent(2), event(1, 1), event(1, 2));
        r.append([put(&a, b"a1"), put(&e1, b"e1"), put(&e2, b"e2")].into_iter())
            .unwrap();
        let mark = r
            .append([put(&a, b"a2"), put(&b, b"b1"), (e1.as_slice(), None)].into_iter())
            .unwrap();
        let check = |r: &Records| {
            assert_eq!(r.get(&a).unwrap().as_deref(), Some(&b"a2"[..]));
            assert_eq!(r.get(&b).unwrap().as_deref(), Some(&b"b1"[..]));
            assert_eq!(r.get(&e1).unwrap(), None);
            assert_eq!(
                r.events(&Uuid::from_u128(1), 0, 10).unwrap(),
                vec![b"e2".to_vec()]
            );
            assert_eq!(
                r.scan(&keys::events_of(&Uuid::from_u128(1))).unwrap().len(),
                1
            );
        };
        check(&r);
        drop(r);
        check(&Records::open(dir.path(), Some(mark), 1 << 20).unwrap());
    }

    #[test]
    fn records_of_a_batch_sled_lost_are_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path(), None, 1 << 20).unwrap();
        let a = intent(1);
        let kept = r.append([put(&a, b"kept")].into_iter()).unwrap();
        r.append([put(&a, b"lost"), put(&intent(2), b"lost")].into_iter())
            .unwrap();
        drop(r);
        let r = Records::open(dir.path(), Some(kept), 1 << 20).unwrap();
        assert_eq!(r.get(&a).unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(r.get(&intent(2)).unwrap(), None);
        // The cut bytes are gone from the file, so the next append follows the kept ones.
        let next = r.append([put(&intent(3), b"c")].into_iter()).unwrap();
        drop(r);
        let r = Records::open(dir.path(), Some(next), 1 << 20).unwrap();
        assert_eq!(r.get(&intent(3)).unwrap().as_deref(), Some(&b"c"[..]));
        assert_eq!(r.get(&intent(2)).unwrap(), None);
    }

    #[test]
    fn records_missing_under_the_mark_or_damaged_fail_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path(), None, 1 << 20).unwrap();
        let mark = r.append([put(&intent(1), b"value")].into_iter()).unwrap();
        drop(r);
        let path = seg_path(dir.path(), mark.head);
        let bytes = fs::read(&path).unwrap();

        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let short = Records::open(dir.path(), Some(mark), 1 << 20).unwrap_err();
        assert!(matches!(short, StorageError::Inconsistent(_)), "{short}");

        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(&path, &flipped).unwrap();
        let bad = Records::open(dir.path(), Some(mark), 1 << 20).unwrap_err();
        assert!(matches!(bad, StorageError::Corrupt { .. }), "{bad}");

        fs::remove_file(&path).unwrap();
        let gone = Records::open(dir.path(), Some(mark), 1 << 20).unwrap_err();
        assert!(matches!(gone, StorageError::Inconsistent(_)), "{gone}");
    }

    #[test]
    fn compaction_reclaims_dead_segments_and_keeps_every_live_record() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path(), None, 256).unwrap();
        let value = |n: u128, round: u32| format!("intent {n} round {round}").into_bytes();
        // Ten intents rewritten many times, one removed: nearly every frame dies.
        let mut mark = Mark::EMPTY;
        for round in 0..200 {
            for n in (0..10).filter(|n| *n != 3 || round <= 5) {
                let v = value(n, round);
                mark = r.append([put(&intent(n), &v)].into_iter()).unwrap();
            }
            if round == 5 {
                r.append([(intent(3).as_slice(), None)].into_iter())
                    .unwrap();
            }
            r.retire(|| Ok(())).unwrap();
        }
        let on_disk = segments(dir.path());
        assert!(
            on_disk.len() < 20,
            "dead segments are deleted: {} left",
            on_disk.len()
        );
        assert_eq!(on_disk.first().copied(), Some(mark.first));
        let check = |r: &Records| {
            for n in (0..10).filter(|n| *n != 3) {
                assert_eq!(r.get(&intent(n)).unwrap(), Some(value(n, 199)));
            }
            assert_eq!(r.get(&intent(3)).unwrap(), None, "a removal stays removed");
            assert_eq!(r.intents_before(None, 100).unwrap().len(), 9);
        };
        check(&r);
        drop(r);
        check(&Records::open(dir.path(), Some(mark), 256).unwrap());
    }

    #[test]
    fn pages_walk_every_event_then_every_intent_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path(), None, 1 << 20).unwrap();
        let mut want = Vec::new();
        for n in 1..=5u128 {
            for seq in 1..=3 {
                r.append([put(&event(n, seq), b"e")].into_iter()).unwrap();
                want.push(event(n, seq));
            }
        }
        for n in (1..=5u128).rev() {
            r.append([put(&intent(n), b"i")].into_iter()).unwrap();
        }
        want.extend((1..=5u128).map(intent));
        let mut walked = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = r.page_after(after.as_deref(), 4).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(k, _)| k.clone());
            walked.extend(page.into_iter().map(|(k, _)| k));
        }
        assert_eq!(walked, want);
        let newest: Vec<_> = r.intents_before(Some(Uuid::from_u128(4)), 2).unwrap();
        let ids: Vec<_> = newest.iter().map(|(id, _)| id.as_u128()).collect();
        assert_eq!(ids, vec![3, 2]);
    }

    #[test]
    fn a_mark_reads_back_and_a_bad_one_is_refused() {
        let mark = Mark {
            first: 2,
            head: 7,
            len: 12345,
        };
        assert_eq!(Mark::decode(&mark.encode()).unwrap(), mark);
        assert!(Mark::decode(&[0; 15]).is_err());
        let backwards = Mark {
            first: 8,
            head: 7,
            len: 0,
        };
        assert!(Mark::decode(&backwards.encode()).is_err());
    }
}
