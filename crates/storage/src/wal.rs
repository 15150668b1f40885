//! The Raft log: a write-ahead log of our own, plus the vote file.
//!
//! # On disk (`<data>/raft/`)
//! - `wal-<segment:020>.log`: segments numbered 1, 2, 3...; only the highest is written to.
//!   Each is a sequence of frames (`[len u32 LE][crc32 u32 LE][serde_json WalRecord]`), the first
//!   of which is always a [`WalRecord::Header`].
//! - `vote.json`: the vote, replaced atomically.
//!
//! # Preallocation
//! Appending to a file changes its size, so each fdatasync of an append also writes the inode:
//! on this project's reference machine (ext4) that is three times the cost of flushing the
//! data alone. So the writer keeps zero-filled, fdatasynced room ahead of the write position
//! ([`PREPARE_CHUNK`] at a time, between batches) and appends overwrite it. Where a segment's
//! records end, an all-zero frame header follows (no record is empty, so no real frame looks
//! like that), and everything after it is zero. Replay stops there; a newest segment whose
//! zero tail holds anything else is cut there like any torn tail, so bytes of a write that
//! never completed can never be read back as a record once later appends reach them.
//!
//! # Replay
//! Records are replayed in segment order: `Entry` puts an entry (dropping any entry at or after
//! its index, exactly as `append` does in memory), `Truncate` and `Purge` repeat those calls,
//! `Header` re-applies the purge point carried forward. So replaying the files reproduces the
//! log that openraft last saw acknowledged. A bad frame in the newest segment is a torn write
//! from a crash and the file is cut there (nothing after it was acknowledged, because nothing is
//! acknowledged before its fdatasync and writes are sequential); a bad frame in any older
//! segment was fsynced intact once, so it is reported as [`StorageError::Corrupt`].
//!
//! # Memory
//! Unpurged entries are kept in memory, in a `BTreeMap` by index. That is bounded because
//! openraft purges the log behind each snapshot, and it makes reads (replication, re-apply)
//! free of IO.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError as RaftError, StorageIOError,
    Vote,
};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, frame, DirLock};
use crate::{StorageError, StorageOptions, TypeConfig};

/// How much zero-filled room the writer prepares at a time (see "Preallocation").
const PREPARE_CHUNK: u64 = 4 << 20;

/// One record of a WAL segment.
#[derive(Debug, Serialize, Deserialize)]
enum WalRecord {
    /// First record of every segment. It carries the purge point forward, so that deleting the
    /// segments before it cannot lose the purge records they held.
    Header {
        segment: u64,
        last_purged: Option<LogId<u64>>,
    },
    Entry(Box<Entry<TypeConfig>>),
    /// Entries with index >= `since` are gone.
    Truncate {
        since: u64,
    },
    /// Entries with index <= `upto.index` are gone and `upto` is the last purged log id.
    Purge {
        upto: LogId<u64>,
    },
}

fn encode(record: &WalRecord, out: &mut Vec<u8>) -> Result<(), StorageError> {
    let payload = serde_json::to_vec(record)?;
    frame::encode_into(out, &payload);
    Ok(())
}

/// The log as openraft sees it.
#[derive(Debug, Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<u64>>,
}

impl LogMem {
    fn put(&mut self, entry: Entry<TypeConfig>) {
        self.entries.split_off(&entry.log_id.index);
        self.entries.insert(entry.log_id.index, entry);
    }

    fn truncate(&mut self, since: u64) {
        self.entries.split_off(&since);
    }

    fn purge(&mut self, upto: LogId<u64>) {
        if self
            .last_purged
            .as_ref()
            .is_some_and(|p| p.index >= upto.index)
        {
            return;
        }
        // A purge up to the last possible index leaves nothing (found by `fuzz_wal_record`).
        self.entries = match upto.index.checked_add(1) {
            Some(next) => self.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        self.last_purged = Some(upto);
    }

    fn replay(&mut self, record: WalRecord) {
        match record {
            WalRecord::Header { last_purged, .. } => {
                if let Some(p) = last_purged {
                    self.purge(p);
                }
            }
            WalRecord::Entry(e) => self.put(*e),
            WalRecord::Truncate { since } => self.truncate(since),
            WalRecord::Purge { upto } => self.purge(upto),
        }
    }

    fn state(&self) -> LogState<TypeConfig> {
        let last = self.entries.values().next_back().map(|e| e.log_id);
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last.or(self.last_purged),
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    path: PathBuf,
    size: u64,
    /// Length of the file: the zero-filled room from `size` up to here is durable, so
    /// overwriting it needs no inode update.
    prepared: u64,
    /// Highest entry index ever written to this segment, truncated or not. A segment may be
    /// deleted only once this is purged: that is conservative (a truncated tail keeps it a
    /// little longer) but can never drop a live entry.
    max_index: Option<u64>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, ent.path()));
    }
    out.sort();
    Ok(out)
}

/// Reads every segment into `mem`. Cuts a torn tail off the newest segment (and deletes it if
/// nothing valid is left of it); returns the surviving segments, oldest first.
fn replay(dir: &Path, mem: &mut LogMem) -> Result<Vec<Segment>, StorageError> {
    let files = list_segments(dir)?;
    let mut segments = Vec::with_capacity(files.len());
    let count = files.len();
    for (i, (seq, path)) in files.into_iter().enumerate() {
        let newest = i + 1 == count;
        let bytes = fs::read(&path)?;
        let mut off = 0usize;
        let mut max_index = None;
        let mut bad: Option<String> = None;
        let mut zero_tail = false;
        while off < bytes.len() {
            if off > 0 && bytes[off..].starts_with(&[0; frame::HEADER]) {
                // Preallocated room: nothing was written from here on, unless a torn write
                // left bytes further in.
                if bytes[off..].iter().all(|b| *b == 0) {
                    zero_tail = true;
                } else {
                    bad = Some("bytes after the end of the records".into());
                }
                break;
            }
            let (payload, len) = match frame::decode(&bytes[off..]) {
                Ok(x) => x,
                Err(e) => {
                    bad = Some(e.to_string());
                    break;
                }
            };
            let record: WalRecord = match serde_json::from_slice(payload) {
                Ok(r) => r,
                Err(e) => {
                    bad = Some(format!("undecodable record: {e}"));
                    break;
                }
            };
            match (&record, off) {
                (WalRecord::Header { segment, .. }, 0) if *segment == seq => {}
                (_, 0) => {
                    bad = Some("segment does not start with its header".into());
                    break;
                }
                (WalRecord::Header { .. }, _) => {
                    bad = Some("header record in the middle of a segment".into());
                    break;
                }
                (WalRecord::Entry(e), _) => {
                    max_index = max_index.max(Some(e.log_id.index));
                }
                _ => {}
            }
            mem.replay(record);
            off += len;
        }
        if let Some(reason) = bad {
            if !newest {
                return Err(StorageError::Corrupt {
                    path,
                    offset: off as u64,
                    reason,
                });
            }
            tracing::warn!(
                path = %path.display(),
                offset = off,
                dropped_bytes = bytes.len() - off,
                %reason,
                "cutting torn tail off the newest wal segment"
            );
            if off == 0 {
                fs::remove_file(&path)?;
                fsutil::fsync_dir(dir)?;
                continue;
            }
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(off as u64)?;
            f.sync_all()?;
        }
        let prepared = if zero_tail { bytes.len() } else { off };
        segments.push(Segment {
            seq,
            path,
            size: off as u64,
            prepared: prepared as u64,
            max_index,
        });
    }
    Ok(segments)
}

/// Counters for metrics and for tests that must see group commit happen.
#[derive(Debug, Default)]
struct Counters {
    /// Requests handed to the writer (appends, truncates, purges).
    queued: AtomicU64,
    syncs: AtomicU64,
    /// Zero-filled room made ahead of the write position (each with its own fdatasync).
    preallocations: AtomicU64,
    appends: AtomicU64,
    rotations: AtomicU64,
}

/// A snapshot of the WAL writer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    /// `fdatasync` calls that covered appended records (group commits, segment seals).
    pub syncs: u64,
    /// Zero-filled room prepared ahead of appends (one `fdatasync` each).
    pub preallocations: u64,
    /// `append` calls that reached the writer.
    pub appends: u64,
    /// Segments started because the active one was full.
    pub rotations: u64,
}

type Done = tokio::sync::oneshot::Sender<Result<(), String>>;

enum Request {
    Append {
        bytes: Vec<u8>,
        max_index: Option<u64>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        bytes: Vec<u8>,
        done: Done,
    },
    Purge {
        bytes: Vec<u8>,
        upto: LogId<u64>,
        done: Done,
    },
}

enum Completion {
    Flushed(LogFlushed<TypeConfig>),
    Done(Done),
}

/// The only code that writes segment files. Runs on its own OS thread so that fdatasync never
/// blocks a tokio worker.
struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    /// `StorageOptions::unsafe_skip_log_fsync` (test-only).
    skip_fsync: bool,
    segments: VecDeque<Segment>,
    file: File,
    last_purged: Option<LogId<u64>>,
    counters: Arc<Counters>,
    /// Set by the first IO error: the file's content is then unknown, so every later request
    /// fails instead of writing after a hole.
    failed: Option<String>,
    #[cfg(test)]
    gate: Arc<Mutex<()>>,
}

impl Writer {
    /// Group commit: block for one request, take everything else already queued, write it all,
    /// fdatasync once, then complete every request of the batch.
    ///
    /// # Correctness
    /// A callback fires (and `truncate`/`purge` return) only after the fdatasync that covers
    /// its record succeeded. Requests are written in the order they were queued, which is the
    /// order `LogStore` applied them to memory.
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            #[cfg(test)]
            let gate = Arc::clone(&self.gate);
            #[cfg(test)]
            let _gate = gate.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let mut completions = Vec::with_capacity(batch.len());
            let result = self.write_batch(batch, &mut completions);
            if let Err(e) = &result {
                tracing::error!(error = %e, "wal write failed; the log refuses further writes");
                self.failed.get_or_insert_with(|| e.to_string());
            }

            for c in completions {
                let res = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
                match c {
                    Completion::Flushed(cb) => {
                        cb.log_io_completed(res.map_err(io::Error::other));
                    }
                    Completion::Done(tx) => {
                        let _ = tx.send(res);
                    }
                }
            }
            // Room for the batches to come is made once this one is acknowledged, off its
            // callers' path. A failure here costs only speed: appends then grow the file.
            if self.failed.is_none() {
                if let Err(e) = self.prepare_room() {
                    tracing::warn!(error = %e, "could not preallocate wal room");
                }
            }
        }
    }

    /// Keeps at least half a [`PREPARE_CHUNK`] of durable zeros ahead of the write position of
    /// the active segment (up to its size limit), so that appends overwrite instead of grow.
    fn prepare_room(&mut self) -> Result<(), StorageError> {
        let limit = self.segment_bytes;
        let active = self.segments.back_mut().expect("an active segment");
        let from = active.prepared.max(active.size);
        if from >= limit || from - active.size >= PREPARE_CHUNK / 2 {
            return Ok(());
        }
        let upto = (from + PREPARE_CHUNK).min(limit);
        let zeros = [0u8; 64 * 1024];
        let mut at = from;
        while at < upto {
            let n = (upto - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_data()?;
        self.counters.preallocations.fetch_add(1, Ordering::Relaxed);
        active.prepared = upto;
        Ok(())
    }

    fn write_batch(
        &mut self,
        batch: Vec<Request>,
        completions: &mut Vec<Completion>,
    ) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        let mut purge_to = None;
        for req in batch {
            match req {
                Request::Append {
                    bytes,
                    max_index,
                    callback,
                } => {
                    completions.push(Completion::Flushed(callback));
                    if self.failed.is_some() {
                        continue;
                    }
                    self.counters.appends.fetch_add(1, Ordering::Relaxed);
                    let active = self.segments.back().expect("an active segment");
                    let has_entries = active.max_index.is_some() || !buf.is_empty();
                    if has_entries
                        && max_index.is_some()
                        && active.size + buf.len() as u64 >= self.segment_bytes
                    {
                        self.write_out(&mut buf)?;
                        self.rotate()?;
                    }
                    buf.extend_from_slice(&bytes);
                    let active = self.segments.back_mut().expect("an active segment");
                    active.max_index = active.max_index.max(max_index);
                }
                Request::Truncate { bytes, done } => {
                    completions.push(Completion::Done(done));
                    buf.extend_from_slice(&bytes);
                }
                Request::Purge { bytes, upto, done } => {
                    completions.push(Completion::Done(done));
                    buf.extend_from_slice(&bytes);
                    self.last_purged = self.last_purged.max(Some(upto));
                    purge_to = purge_to.max(Some(upto.index));
                }
            }
        }
        if let Some(e) = &self.failed {
            return Err(StorageError::WriterStopped(e.clone()));
        }
        self.write_out(&mut buf)?;
        // TEST-ONLY (jepsen): `--unsafe-skip-log-fsync` acknowledges appends unflushed.
        if !self.skip_fsync {
            self.file.sync_data()?;
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if let Some(upto) = purge_to {
            // Only after the purge record is durable: until then the old segments are what
            // a restart replays.
            if let Err(e) = self.delete_purged_segments(upto) {
                tracing::warn!(error = %e, "could not delete purged wal segments; will retry on the next purge");
            }
        }
        Ok(())
    }

    fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<(), StorageError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(buf)?;
        let active = self.segments.back_mut().expect("an active segment");
        active.size += buf.len() as u64;
        active.prepared = active.prepared.max(active.size);
        buf.clear();
        Ok(())
    }

    /// Seals the active segment (fdatasync) and starts the next, whose header and directory
    /// entry are durable before any entry is written to it.
    fn rotate(&mut self) -> Result<(), StorageError> {
        self.file.sync_data()?;
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        let seq = self.segments.back().expect("an active segment").seq + 1;
        let (file, segment) = create_segment(&self.dir, seq, self.last_purged)?;
        self.file = file;
        self.segments.push_back(segment);
        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(segment = seq, "wal rotated");
        Ok(())
    }

    fn delete_purged_segments(&mut self, upto: u64) -> Result<(), StorageError> {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if oldest.max_index.is_some_and(|m| m > upto) {
                break;
            }
            fs::remove_file(&oldest.path)?;
            tracing::debug!(segment = oldest.seq, "wal segment purged");
            self.segments.pop_front();
            deleted = true;
        }
        if deleted {
            fsutil::fsync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn create_segment(
    dir: &Path,
    seq: u64,
    last_purged: Option<LogId<u64>>,
) -> Result<(File, Segment), StorageError> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let mut buf = Vec::new();
    encode(
        &WalRecord::Header {
            segment: seq,
            last_purged,
        },
        &mut buf,
    )?;
    file.write_all(&buf)?;
    file.sync_data()?;
    fsutil::fsync_dir(dir)?;
    Ok((
        file,
        Segment {
            seq,
            path,
            size: buf.len() as u64,
            prepared: buf.len() as u64,
            max_index: None,
        },
    ))
}

struct Shared {
    /// The log as openraft sees it, and the queue to the writer. Both live under one lock so
    /// that the order of changes in memory is the order of records on disk.
    mem: Mutex<(LogMem, Option<mpsc::Sender<Request>>)>,
    /// Serialises vote writes (one temp file name) and caches the durable vote.
    vote: Arc<Mutex<Option<Vote<u64>>>>,
    dir: PathBuf,
    counters: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
    #[cfg(test)]
    gate: Arc<Mutex<()>>,
    _lock: Arc<DirLock>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it has and exit; joining means a
        // reopen in this process never races a writer of the previous incarnation.
        let mem = self.mem.get_mut().unwrap_or_else(|p| p.into_inner());
        mem.1.take();
        if let Some(handle) = self.writer.get_mut().ok().and_then(|h| h.take()) {
            let _ = handle.join();
        }
    }
}

/// The durable Raft log and vote. Cheap to clone; every clone is the same log.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

const VOTE_FILE: &str = "vote.json";

impl LogStore {
    /// Replays `dir` (creating it if absent) and starts the writer thread.
    pub(crate) fn open(
        dir: &Path,
        opts: &StorageOptions,
        lock: Arc<DirLock>,
    ) -> Result<LogStore, StorageError> {
        fs::create_dir_all(dir)?;
        let vote_path = dir.join(VOTE_FILE);
        let _ = fs::remove_file(fsutil::tmp_path(&vote_path));
        let vote = match fs::read(&vote_path) {
            Ok(bytes) => Some(serde_json::from_slice::<Vote<u64>>(&bytes).map_err(|e| {
                StorageError::Corrupt {
                    path: vote_path.clone(),
                    offset: 0,
                    reason: e.to_string(),
                }
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };

        let mut mem = LogMem::default();
        let mut segments: VecDeque<Segment> = replay(dir, &mut mem)?.into();
        let file = match segments.back() {
            Some(active) => {
                let mut f = OpenOptions::new().write(true).open(&active.path)?;
                f.seek(SeekFrom::Start(active.size))?;
                f
            }
            None => {
                let seq = list_segments(dir)?.last().map_or(1, |(s, _)| s + 1);
                let (f, seg) = create_segment(dir, seq, mem.last_purged)?;
                segments.push_back(seg);
                f
            }
        };
        let state = mem.state();
        tracing::info!(
            dir = %dir.display(),
            segments = segments.len(),
            entries = mem.entries.len(),
            last_purged = ?state.last_purged_log_id,
            last_log = ?state.last_log_id,
            "wal opened"
        );

        let counters = Arc::new(Counters::default());
        #[cfg(test)]
        let gate = Arc::new(Mutex::new(()));
        let writer = Writer {
            dir: dir.to_path_buf(),
            segment_bytes: opts.wal_segment_bytes.max(1),
            skip_fsync: opts.unsafe_skip_log_fsync,
            segments,
            file,
            last_purged: mem.last_purged,
            counters: Arc::clone(&counters),
            failed: None,
            #[cfg(test)]
            gate: Arc::clone(&gate),
        };
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("intentd-wal".into())
            .spawn(move || writer.run(rx))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                mem: Mutex::new((mem, Some(tx))),
                vote: Arc::new(Mutex::new(vote)),
                dir: dir.to_path_buf(),
                counters,
                writer: Mutex::new(Some(handle)),
                #[cfg(test)]
                gate,
                _lock: lock,
            }),
        })
    }

    /// The writer's counters (fsyncs, appends, rotations) for metrics.
    pub fn wal_stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            syncs: c.syncs.load(Ordering::Relaxed),
            preallocations: c.preallocations.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
        }
    }

    /// The id of the newest entry handed to the log (written or queued), as openraft sees it.
    pub fn last_log_id(&self) -> Option<LogId<u64>> {
        self.lock().0.state().last_log_id
    }

    pub(crate) fn log_state(&self) -> LogState<TypeConfig> {
        self.lock().0.state()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (LogMem, Option<mpsc::Sender<Request>>)> {
        self.shared.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a request for the writer. Called with the memory lock held, which is what makes
    /// the order on disk the order in memory.
    fn send(&self, tx: &Option<mpsc::Sender<Request>>, req: Request) -> Result<(), StorageError> {
        tx.as_ref()
            .and_then(|tx| tx.send(req).ok())
            .ok_or_else(|| StorageError::WriterStopped("the wal is closed".into()))?;
        self.shared.counters.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes one truncate or purge record and waits for its fdatasync.
    async fn durable_marker(
        &self,
        record: WalRecord,
        apply: impl FnOnce(&mut LogMem),
    ) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        let upto = match &record {
            WalRecord::Purge { upto } => Some(*upto),
            _ => None,
        };
        encode(&record, &mut bytes)?;
        let (done, wait) = tokio::sync::oneshot::channel();
        {
            let mut guard = self.lock();
            let (mem, tx) = &mut *guard;
            let req = match upto {
                Some(upto) => Request::Purge { bytes, upto, done },
                None => Request::Truncate { bytes, done },
            };
            self.send(tx, req)?;
            apply(mem);
        }
        wait.await
            .map_err(|_| StorageError::WriterStopped("the wal writer exited".into()))?
            .map_err(StorageError::WriterStopped)
    }

    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry<TypeConfig>> {
        self.lock()
            .0
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftError<u64>> {
        Ok(self.entries(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftError<u64>> {
        Ok(self.log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// # Correctness
    /// The vote is in `vote.json` (temp file, fsync, rename, fsync of the directory) before
    /// this returns: a node must never vote twice in one term, even across a power loss.
    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), RaftError<u64>> {
        let slot = Arc::clone(&self.shared.vote);
        let path = self.shared.dir.join(VOTE_FILE);
        let vote = *vote;
        let res = tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let mut current = slot.lock().unwrap_or_else(|p| p.into_inner());
            fsutil::write_atomic(&path, &serde_json::to_vec(&vote)?)?;
            *current = Some(vote);
            Ok(())
        })
        .await
        .map_err(StorageError::from)
        .and_then(|r| r);
        res.map_err(|e| e.into_raft(StorageIOError::write_vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, RaftError<u64>> {
        Ok(*self.shared.vote.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// # Correctness
    /// The entries are readable when this returns; `callback` fires only after their bytes are
    /// written and fdatasynced (see [`Writer::run`]), which is what openraft counts as
    /// accepted by this node.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut bytes = Vec::new();
        let mut max_index = None;
        let mut encoded = Vec::new();
        for e in entries {
            max_index = max_index.max(Some(e.log_id.index));
            let record = WalRecord::Entry(Box::new(e));
            encode(&record, &mut bytes).map_err(|e| e.into_raft(StorageIOError::write_logs))?;
            let WalRecord::Entry(e) = record else {
                unreachable!("built as an entry above")
            };
            encoded.push(*e);
        }
        // Memory first is fine: one lock orders it with the queue to the writer, and openraft
        // relies on durability only through the callback.
        let mut guard = self.lock();
        let (mem, tx) = &mut *guard;
        for e in encoded {
            mem.put(e);
        }
        self.send(
            tx,
            Request::Append {
                bytes,
                max_index,
                callback,
            },
        )
        .map_err(|e| e.into_raft(StorageIOError::write_logs))
    }

    /// # Correctness
    /// The truncate record is fdatasynced before this returns, so a restart cannot resurrect
    /// entries that a new leader overwrote.
    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), RaftError<u64>> {
        tracing::debug!(%log_id, "wal truncate");
        self.durable_marker(
            WalRecord::Truncate {
                since: log_id.index,
            },
            |m| m.truncate(log_id.index),
        )
        .await
        .map_err(|e| e.into_raft(StorageIOError::write_logs))
    }

    /// # Correctness
    /// The purge record is fdatasynced before this returns; segments are deleted only after
    /// that, and only whole segments whose every entry is purged.
    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), RaftError<u64>> {
        tracing::debug!(%log_id, "wal purge");
        self.durable_marker(WalRecord::Purge { upto: log_id }, |m| m.purge(log_id))
            .await
            .map_err(|e| e.into_raft(StorageIOError::write_logs))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    /// A normal entry, so the command encoding goes through the WAL too.
    fn normal(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(
                crate::Proposal::single(&intentd_lifecycle::Command::RevokeApiKey {
                    id: uuid::Uuid::from_u128(index as u128),
                })
                .unwrap(),
            ),
        }
    }

    fn open(dir: &Path, segment_bytes: u64) -> Result<LogStore, StorageError> {
        let lock = Arc::new(DirLock::acquire(dir)?);
        let opts = StorageOptions {
            wal_segment_bytes: segment_bytes,
            ..StorageOptions::default()
        };
        LogStore::open(&dir.join("raft"), &opts, lock)
    }

    async fn ids(log: &mut LogStore) -> Vec<LogId<u64>> {
        log.try_get_log_entries(..)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.log_id)
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(&dir.join("raft"))
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// Where the records of a segment end: its preallocated zero room starts there.
    fn records_end(seg: &Path) -> u64 {
        let bytes = fs::read(seg).unwrap();
        let mut off = 0;
        while off < bytes.len() && !bytes[off..].starts_with(&[0; frame::HEADER]) {
            off += frame::decode(&bytes[off..]).unwrap().1;
        }
        off as u64
    }

    async fn append_each(log: &mut LogStore, term: u64, indexes: std::ops::RangeInclusive<u64>) {
        for i in indexes {
            log.blocking_append([normal(term, i)]).await.unwrap();
        }
    }

    #[tokio::test]
    async fn reopen_reproduces_entries_vote_truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let expected_vote = Vote::new(3, 7);
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            log.blocking_append([blank(1, 1)]).await.unwrap();
            append_each(&mut log, 1, 2..=10).await;
            log.save_vote(&expected_vote).await.unwrap();
            log.truncate(log_id(1, 8)).await.unwrap();
            log.blocking_append([normal(2, 8), normal(2, 9)])
                .await
                .unwrap();
            log.purge(log_id(1, 3)).await.unwrap();
        }
        let mut log = open(dir.path(), 1 << 20).unwrap();
        let mut want: Vec<_> = (4..=7).map(|i| log_id(1, i)).collect();
        want.extend([log_id(2, 8), log_id(2, 9)]);
        assert_eq!(ids(&mut log).await, want);
        assert_eq!(log.read_vote().await.unwrap(), Some(expected_vote));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 9)));
        let entries = log.try_get_log_entries(8..9).await.unwrap();
        assert!(matches!(entries[0].payload, EntryPayload::Normal(_)));
    }

    #[tokio::test]
    async fn purge_past_the_last_entry_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            append_each(&mut log, 1, 1..=3).await;
            log.purge(log_id(2, 20)).await.unwrap();
        }
        let mut log = open(dir.path(), 1 << 20).unwrap();
        assert!(ids(&mut log).await.is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 20)));
        assert_eq!(state.last_log_id, Some(log_id(2, 20)));
    }

    /// Simulates a crash in the middle of writing the last record.
    #[tokio::test]
    async fn torn_tail_is_cut_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            append_each(&mut log, 1, 1..=5).await;
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let full = records_end(&seg);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(full - 3)
            .unwrap();
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            assert_eq!(
                ids(&mut log).await,
                (1..=4).map(|i| log_id(1, i)).collect::<Vec<_>>()
            );
            let cut = fs::metadata(&seg).unwrap().len();
            assert!(
                cut < full - 3,
                "the partial record is removed from the file"
            );
            // Writing after the cut must give a log that replays cleanly.
            append_each(&mut log, 1, 5..=6).await;
        }
        let mut log = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            ids(&mut log).await,
            (1..=6).map(|i| log_id(1, i)).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn flipped_byte_in_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            append_each(&mut log, 1, 1..=5).await;
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let n = records_end(&seg) as usize;
        bytes[n - 2] ^= 0x5a;
        fs::write(&seg, &bytes).unwrap();
        let mut log = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            ids(&mut log).await,
            (1..=4).map(|i| log_id(1, i)).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn appends_overwrite_durable_zero_room() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            append_each(&mut log, 1, 1..=5).await;
            // The room is made after a batch is acknowledged; one more append waits for it.
            append_each(&mut log, 1, 6..=6).await;
            assert!(log.wal_stats().preallocations > 0);
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        assert!(fs::metadata(&seg).unwrap().len() > records_end(&seg));
        let mut log = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            ids(&mut log).await,
            (1..=6).map(|i| log_id(1, i)).collect::<Vec<_>>()
        );
    }

    /// A write torn so that a later part of it reached the disk and an earlier part did not:
    /// the bytes beyond the end of the records must go, or a later append that ends right
    /// where they start would make them replay as records.
    #[tokio::test]
    async fn bytes_beyond_the_records_end_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            append_each(&mut log, 1, 1..=3).await;
        }
        let seg = segment_files(dir.path()).pop().unwrap();
        let end = records_end(&seg) as usize;
        let mut bytes = fs::read(&seg).unwrap();
        bytes[end + 100..end + 104].copy_from_slice(b"torn");
        fs::write(&seg, &bytes).unwrap();
        {
            let mut log = open(dir.path(), 1 << 20).unwrap();
            assert_eq!(
                ids(&mut log).await,
                (1..=3).map(|i| log_id(1, i)).collect::<Vec<_>>()
            );
            assert_eq!(fs::metadata(&seg).unwrap().len(), end as u64);
            append_each(&mut log, 1, 4..=5).await;
        }
        let mut log = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            ids(&mut log).await,
            (1..=5).map(|i| log_id(1, i)).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn bytes_beyond_the_records_of_an_older_segment_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 300).unwrap();
            append_each(&mut log, 1, 1..=20).await;
        }
        let segs = segment_files(dir.path());
        let mut bytes = fs::read(&segs[0]).unwrap();
        bytes.extend_from_slice(&[0; 64]);
        fs::write(&segs[0], &bytes).unwrap();
        assert!(
            open(dir.path(), 300).is_ok(),
            "zero room after the records is no damage"
        );
        bytes.push(1);
        fs::write(&segs[0], &bytes).unwrap();
        match open(dir.path(), 300) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, segs[0]),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn damage_in_an_older_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 300).unwrap();
            append_each(&mut log, 1, 1..=20).await;
        }
        let segs = segment_files(dir.path());
        assert!(segs.len() > 2, "expected rotation, got {segs:?}");
        let mut bytes = fs::read(&segs[0]).unwrap();
        let n = records_end(&segs[0]) as usize;
        bytes[n - 2] ^= 0x5a;
        fs::write(&segs[0], &bytes).unwrap();
        match open(dir.path(), 300) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, segs[0]),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rotation_and_purge_delete_old_segments_and_reopen_is_right() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 300).unwrap();
            append_each(&mut log, 1, 1..=50).await;
            assert!(log.wal_stats().rotations > 3);
            let before = segment_files(dir.path());
            log.purge(log_id(1, 30)).await.unwrap();
            let after = segment_files(dir.path());
            assert!(after.len() < before.len(), "{before:?} -> {after:?}");
            // Only a prefix is deleted, and what is left still holds entry 31.
            assert_eq!(after, before[before.len() - after.len()..]);
            append_each(&mut log, 1, 51..=60).await;
        }
        let mut log = open(dir.path(), 300).unwrap();
        assert_eq!(
            ids(&mut log).await,
            (31..=60).map(|i| log_id(1, i)).collect::<Vec<_>>()
        );
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 30))
        );
    }

    /// A truncated tail in an old segment must not let purge delete the segment that still
    /// holds live entries below the truncation point.
    #[tokio::test]
    async fn purge_after_truncate_keeps_live_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path(), 400).unwrap();
            append_each(&mut log, 1, 1..=10).await;
            log.truncate(log_id(1, 5)).await.unwrap();
            append_each(&mut log, 2, 5..=12).await;
            log.purge(log_id(2, 6)).await.unwrap();
        }
        let mut log = open(dir.path(), 400).unwrap();
        let mut want = vec![];
        want.extend((7..=12).map(|i| log_id(2, i)));
        assert_eq!(ids(&mut log).await, want);
    }

    /// While the writer is held, many appends queue up; released, they are written with one
    /// fdatasync and every callback fires.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // Holding the std lock across awaits is the point: only the writer thread blocks on it.
    #[allow(clippy::await_holding_lock)]
    async fn group_commit_one_fsync_for_a_burst() {
        const N: u64 = 16;
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1 << 20).unwrap();
        log.blocking_append([blank(1, 1)]).await.unwrap();
        let before = log.wal_stats();
        let queued = |log: &LogStore| log.shared.counters.queued.load(Ordering::Relaxed);
        let queued_before = queued(&log);

        let gate = Arc::clone(&log.shared.gate);
        let held = gate.lock().unwrap();
        let mut tasks = Vec::new();
        for i in 0..N {
            let mut log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.blocking_append([normal(1, 2 + i)]).await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while queued(&log) - queued_before < N {
            assert!(Instant::now() < deadline, "appends were not queued");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            log.wal_stats().syncs,
            before.syncs,
            "nothing is synced while held"
        );
        drop(held);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let after = log.wal_stats();
        assert_eq!(after.appends - before.appends, N);
        assert_eq!(
            after.syncs - before.syncs,
            1,
            "one fdatasync for the whole burst"
        );
    }

    #[tokio::test]
    async fn second_open_of_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _log = open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            open(dir.path(), 1 << 20),
            Err(StorageError::Locked(_))
        ));
    }

    /// A segment built from valid records, the seed the WAL fuzz targets mutate.
    fn valid_segment() -> Vec<u8> {
        let mut out = Vec::new();
        let records = [
            WalRecord::Header {
                segment: 1,
                last_purged: Some(log_id(1, 2)),
            },
            WalRecord::Entry(Box::new(blank(1, 3))),
            WalRecord::Entry(Box::new(normal(1, 4))),
            WalRecord::Truncate { since: 4 },
            WalRecord::Entry(Box::new(normal(2, 4))),
            WalRecord::Purge { upto: log_id(1, 3) },
        ];
        for r in &records {
            encode(r, &mut out).unwrap();
        }
        out
    }

    /// Whatever bytes a segment holds (a torn write, a damaged disk), opening the log
    /// refuses them or cuts them off; it never panics.
    #[test]
    fn fuzz_wal_segment() {
        let seed = valid_segment();
        let dir = tempfile::tempdir().unwrap();
        intentd_fuzz::fuzz("wal_segment", vec![seed], |bytes| {
            // Replay may cut or delete the file; each round writes it afresh.
            fs::write(segment_path(dir.path(), 1), bytes).unwrap();
            let mut mem = LogMem::default();
            if replay(dir.path(), &mut mem).is_ok() {
                let _ = mem.state();
            }
        });
    }

    /// The records inside frames with valid checksums: what the JSON decoder and the replay
    /// of the in-memory log see once a frame passed its checksum.
    #[test]
    fn fuzz_wal_record() {
        let seeds = frame_payloads(&valid_segment());
        intentd_fuzz::fuzz("wal_record", seeds, |bytes| {
            let mut mem = LogMem::default();
            for payload in bytes.split(|b| *b == b'\n') {
                if let Ok(record) = serde_json::from_slice::<WalRecord>(payload) {
                    mem.replay(record);
                }
            }
            let _ = mem.state();
        });
    }

    /// The payloads of a segment's frames, one per line: records are JSON without newlines.
    fn frame_payloads(segment: &[u8]) -> Vec<Vec<u8>> {
        let mut off = 0;
        let mut lines = Vec::new();
        while off < segment.len() {
            let (payload, len) = frame::decode(&segment[off..]).unwrap();
            lines.push(payload.to_vec());
            off += len;
        }
        vec![lines.join(&b'\n')]
    }
}
