//! intentd's durable storage: the Raft log and vote, snapshots, and the sled state machine.
//!
//! ```text
//! <data>/LOCK                 exclusive lock: one process per data directory
//! <data>/raft/wal-*.log       Raft log segments (own WAL: checksummed frames, fdatasync)
//! <data>/raft/vote.json       the vote, replaced atomically
//! <data>/snapshots/*.snap     the newest snapshot (streamed, checksummed records)
//! <data>/sm/                  sled: the state machine, rebuildable from snapshot + log
//! <data>/records/<tree>/*.seg intents and events of the state machine (append-only segments)
//! ```
//!
//! What openraft is told is durable is durable: log entries before the `append` callback,
//! the vote before `save_vote` returns, truncate and purge before they return, snapshots
//! before they are handed out. sled is never trusted with anything that cannot be rebuilt
//! (the `sm` module docs give the reasoning). Business rules live only in
//! `intentd_lifecycle::apply`; this crate stores what it decides.

mod capture;
mod error;
mod feed;
mod fsutil;
mod hot;
mod keys;
mod live;
mod proposal;
mod reader;
mod records;
mod sm;
mod snapshot;
mod wake;
mod wal;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::StorageError;
pub use feed::{FeedEntry, FeedGone, CAPACITY as FEED_CAPACITY};
pub use proposal::Proposal;
pub use reader::{AgentSummary, RecordCounts, StateReader};
pub use sm::StateMachine;
pub use wake::{Closed, Waiter};
pub use wal::{LogStore, WalStats};

openraft::declare_raft_types!(
    /// The openraft type configuration of intentd.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What applying one log entry gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// One outcome per command of the entry's [`Proposal`], in its order.
    Commands(Vec<Outcome>),
    /// Blank and membership entries.
    Empty,
}

/// What applying one command gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Applied(intentd_lifecycle::Reply),
    /// The command was refused and changed nothing.
    Rejected(intentd_lifecycle::Rejection),
}

/// Tuning of the storage layer; the defaults suit a single node.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// A WAL segment is sealed and a new one started once it holds this many bytes. Purge
    /// frees space a whole segment at a time.
    pub wal_segment_bytes: u64,
    /// sled's page cache.
    pub sled_cache_bytes: u64,
    /// A segment of the intent and event record store is sealed once it holds this many
    /// bytes; compaction reclaims space a whole segment at a time.
    pub record_segment_bytes: u64,
    /// TEST-ONLY (jepsen): the WAL writer skips the fdatasync that covers appended entries, so
    /// a power loss can lose acknowledged entries. Only the chaos harness sets it (through the
    /// hidden `intentd serve --unsafe-skip-log-fsync`), to prove its checker sees the loss.
    /// Never set on a node that holds real data.
    pub unsafe_skip_log_fsync: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            wal_segment_bytes: 64 << 20,
            sled_cache_bytes: 256 << 20,
            record_segment_bytes: 16 << 20,
            unsafe_skip_log_fsync: false,
        }
    }
}

/// Opens (creating if absent) everything under `dir`: `dir/raft/` (WAL segments + vote file),
/// `dir/snapshots/`, `dir/sm/` (sled).
///
/// Replays the WAL (cutting a torn tail), and rebuilds sled from the newest snapshot if sled
/// is damaged or behind it. Fails if the state machine is behind the purged part of the log
/// with no snapshot to cover the gap, since the node could then never catch up by itself.
pub fn open(dir: &Path, opts: StorageOptions) -> Result<(LogStore, StateMachine), StorageError> {
    std::fs::create_dir_all(dir)?;
    let lock = Arc::new(fsutil::DirLock::acquire(dir)?);
    let log = LogStore::open(&dir.join("raft"), &opts, Arc::clone(&lock))?;
    let sm = StateMachine::open(
        &dir.join("sm"),
        &dir.join("records"),
        &dir.join("snapshots"),
        &opts,
        lock,
    )?;
    let purged = log.log_state().last_purged_log_id;
    let applied = sm.last_applied()?;
    if purged.is_some() && applied < purged {
        return Err(StorageError::Inconsistent(format!(
            "state machine applied up to {applied:?} but the log is purged up to {purged:?} \
             and no snapshot covers the gap"
        )));
    }
    Ok((log, sm))
}
