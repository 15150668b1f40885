//! The state machine's shared state: what [`crate::StateMachine`] writes (apply, snapshot
//! builds and installs) and [`crate::StateReader`] reads, in one place of its own so that both
//! import it and neither imports the other's internals.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::LogId;
use tokio::sync::watch;

use crate::capture::Capture;
use crate::feed::Feed;
use crate::fsutil::DirLock;
use crate::hot::Hot;
use crate::records::Records;
use crate::snapshot::{self, Meta};
use crate::wake::Notifier;

/// One node's state machine, shared by the `StateMachine` handle (and its clones) and every
/// `StateReader`.
pub(crate) struct SmShared {
    pub(crate) db: sled::Db,
    /// The live state: its sled tree and its record store, swapped together by an install.
    pub(crate) live: RwLock<Live>,
    /// Where each generation's record store has its directory.
    pub(crate) records_root: PathBuf,
    pub(crate) record_segment_bytes: u64,
    /// The live tree's small, hot record families, in memory (see [`crate::hot`]).
    pub(crate) hot: Hot,
    /// Serialises everything that writes the live tree or must see it still: apply, the
    /// iteration of a snapshot build, the switch of an install.
    pub(crate) apply_lock: Mutex<()>,
    /// Held by a snapshot build for its whole scan and by an install's switch of trees, so
    /// the tree being scanned is never dropped under the scan. Taken before `apply_lock`.
    pub(crate) scan_lock: Mutex<()>,
    /// While a build scans: the values its keys had when it started, for those that applies
    /// changed since (see [`SmShared::build_blocking`]).
    pub(crate) capture: Mutex<Option<Capture>>,
    /// Index of the last applied entry, for readers that must not touch sled.
    pub(crate) applied: AtomicU64,
    /// Bumped after each applied batch is visible.
    pub(crate) watch: watch::Sender<u64>,
    /// Wakes the waiters of the keys each applied batch wrote, after it is visible.
    pub(crate) wakes: Arc<Notifier>,
    /// The newest intent events across all intents, for the admin-wide live view.
    pub(crate) feed: Feed,
    pub(crate) snap_dir: PathBuf,
    /// Local counter that makes snapshot file names and ids unique.
    pub(crate) snap_seq: AtomicU64,
    /// The newest complete snapshot. Its lock also orders renames and deletions of snapshot
    /// files.
    pub(crate) current: Mutex<Option<(Meta, snapshot::SnapFile)>>,
    pub(crate) _lock: Arc<DirLock>,
}

/// One generation of the state: a sled tree and the record store beside it.
pub(crate) struct Live {
    pub(crate) name: String,
    pub(crate) tree: sled::Tree,
    pub(crate) records: Arc<Records>,
}

impl SmShared {
    pub(crate) fn tree(&self) -> sled::Tree {
        self.live().tree.clone()
    }

    pub(crate) fn records(&self) -> Arc<Records> {
        Arc::clone(&self.live().records)
    }

    /// The tree and the record store of one generation, read together.
    pub(crate) fn both(&self) -> (sled::Tree, Arc<Records>) {
        let live = self.live();
        (live.tree.clone(), Arc::clone(&live.records))
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub(crate) fn hot(&self) -> &Hot {
        &self.hot
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.watch.subscribe()
    }

    pub(crate) fn wakes(&self) -> &Arc<Notifier> {
        &self.wakes
    }

    pub(crate) fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Announces `last` on the applied-index watch. Called only after the batch (or the
    /// installed tree) is visible to readers, so a waiter that saw the announcement and then
    /// reads finds everything up to it. The per-key wake-ups keep the same order.
    pub(crate) fn publish(&self, last: Option<LogId<u64>>) {
        let index = last.map_or(0, |l| l.index);
        self.applied.store(index, Ordering::Release);
        self.watch.send_replace(index);
    }
}
