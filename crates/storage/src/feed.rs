//! The node's feed of recent intent events across all intents, for the admin-wide live view
//! (the console's intent list).
//!
//! Events are stored per intent (`e` keys), so nothing in the state says "what changed
//! since log index N" for the whole cluster without a scan. Apply knows it for free: each
//! batch writes its events, and the entry index of each is at hand. This module keeps the
//! newest [`CAPACITY`] of them in memory as `(log index, intent, seq)`, about forty bytes
//! each, never written to disk and never replicated.
//!
//! The cursor is the Raft log index of the entry that wrote an event, the same on every
//! node, so a client can resume a feed on another node. What the memory cannot answer it
//! says so: events of entries at or below the *horizon* (the newest index dropped from the
//! ring, or the index the state stood at when the node started or installed a snapshot)
//! may be missing, and a reader asking from before it gets [`FeedGone`] and reloads.

use std::collections::VecDeque;
use std::sync::Mutex;

use uuid::Uuid;

/// Events remembered. A console that reconnects after a few seconds of a busy cluster
/// still resumes; one gone longer reloads its list.
pub const CAPACITY: usize = 16_384;

/// One event of the feed: written by the entry at `index`, the `seq`-th of its intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedEntry {
    pub index: u64,
    pub intent_id: Uuid,
    pub seq: u64,
}

/// The feed no longer holds (or never held) every event after the cursor asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the feed holds events after log index {horizon} only")]
pub struct FeedGone {
    /// Reload, then follow from an index at or above this one.
    pub horizon: u64,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<FeedEntry>,
    horizon: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Feed {
    ring: Mutex<Ring>,
}

impl Feed {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything: the state now stands at `index` by other means than applying
    /// entries here (an open, a snapshot install).
    pub(crate) fn reset(&self, index: u64) {
        let mut ring = self.ring();
        ring.entries.clear();
        ring.horizon = index;
    }

    /// Adds one applied batch's events, in apply order. Called after the batch is visible,
    /// before its waiters are woken.
    pub(crate) fn record(&self, batch: Vec<FeedEntry>) {
        if batch.is_empty() {
            return;
        }
        let mut ring = self.ring();
        ring.entries.extend(batch);
        while ring.entries.len() > CAPACITY {
            if let Some(dropped) = ring.entries.pop_front() {
                ring.horizon = ring.horizon.max(dropped.index);
            }
        }
    }

    /// The events of entries after `since`, oldest first: whole entries only, stopping at the
    /// first entry boundary once `limit` events are collected (so one large entry, a
    /// coalesced batch of many commands, comes whole even beyond `limit`). The last index
    /// returned is therefore always a complete cursor.
    pub(crate) fn after(&self, since: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedGone> {
        let ring = self.ring();
        if since < ring.horizon {
            return Err(FeedGone {
                horizon: ring.horizon,
            });
        }
        let start = ring.entries.partition_point(|e| e.index <= since);
        let mut out: Vec<FeedEntry> = Vec::new();
        for e in ring.entries.range(start..) {
            if out.len() >= limit && out.last().is_some_and(|last| last.index != e.index) {
                break;
            }
            out.push(*e);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, seq: u64) -> FeedEntry {
        FeedEntry {
            index,
            intent_id: Uuid::from_u128(u128::from(index)),
            seq,
        }
    }

    #[test]
    fn reads_whole_entries_after_a_cursor() {
        let feed = Feed::default();
        feed.reset(10);
        feed.record(vec![entry(11, 1), entry(11, 2), entry(12, 1), entry(13, 1)]);
        assert_eq!(feed.after(10, 100).unwrap().len(), 4);
        assert_eq!(
            feed.after(11, 100).unwrap(),
            vec![entry(12, 1), entry(13, 1)]
        );
        assert_eq!(feed.after(13, 100).unwrap(), vec![]);
        assert_eq!(
            feed.after(50, 100).unwrap(),
            vec![],
            "a cursor from a node ahead"
        );
        assert_eq!(
            feed.after(10, 3).unwrap(),
            vec![entry(11, 1), entry(11, 2), entry(12, 1)]
        );
        // A limit that falls inside an entry still ends at its last event.
        assert_eq!(feed.after(10, 1).unwrap(), vec![entry(11, 1), entry(11, 2)]);
        assert_eq!(feed.after(10, 2).unwrap(), vec![entry(11, 1), entry(11, 2)]);
        assert_eq!(feed.after(11, 1).unwrap(), vec![entry(12, 1)]);
        assert_eq!(feed.after(9, 10), Err(FeedGone { horizon: 10 }));
    }

    #[test]
    fn dropping_old_events_raises_the_horizon() {
        let feed = Feed::default();
        for i in 1..=(CAPACITY as u64 + 2) {
            feed.record(vec![entry(i, 1)]);
        }
        assert_eq!(feed.after(1, 1), Err(FeedGone { horizon: 2 }));
        assert_eq!(feed.after(2, 1).unwrap(), vec![entry(3, 1)]);
        feed.reset(500);
        assert_eq!(feed.after(499, 1), Err(FeedGone { horizon: 500 }));
        assert_eq!(feed.after(500, 1).unwrap(), vec![]);
    }
}
