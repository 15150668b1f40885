//! The agent streams open on this node, per address, and whose turn it is to take the next
//! delivery: the node-local half of "one consumer per delivery".
//!
//! Which stream holds a delivery is decided by the replicated `Deliver` compare-and-set,
//! never here: two streams (on one node or two) that both propose a lease for one attempt
//! cannot both win, and the loser sends nothing. This registry only keeps the streams of one
//! node from racing each other for every entry, which would hand the work to whichever
//! happens to be scheduled first: a stream takes an entry only when no other stream of its
//! address that will still reach that entry is less loaded (fewer leases held, then fewer
//! taken since it opened, then opened earlier). Streams on other nodes are not known here;
//! they compete through the compare-and-set alone.
//!
//! No turn can wait forever: the stream whose cursor is furthest behind has nobody ahead of
//! it in the order for its next entry except streams at the same cursor, one of which is
//! first; and a stream's held leases always end (settled, released, or expired by the
//! engine), which changes the order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// The node's open consuming streams. Cheap to clone; the HTTP and gRPC edges of one node
/// share one, so their streams take turns with each other too.
#[derive(Debug, Clone, Default)]
pub struct StreamConsumers {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    addresses: Mutex<HashMap<String, Address>>,
    /// Orders streams that are otherwise equal: the one opened first goes first.
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Address {
    streams: HashMap<u64, Slot>,
    /// Bumped whenever a stream of the address joins, leaves, moves or changes load, so a
    /// stream waiting for its turn looks again.
    changed: watch::Sender<u64>,
}

/// What the other streams need to know about one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// The last queue entry the stream is done with; it competes only for entries after it.
    cursor: u64,
    /// Leases it holds now.
    held: usize,
    /// Leases it took since it opened.
    served: u64,
}

impl Slot {
    fn rank(&self, id: u64) -> (usize, u64, u64) {
        (self.held, self.served, id)
    }
}

impl StreamConsumers {
    /// Registers a stream of `address` that starts after queue cursor `since`.
    pub(crate) fn join(&self, address: &str, since: u64) -> Seat {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut addresses = self.lock();
        let entry = addresses
            .entry(address.to_string())
            .or_insert_with(|| Address {
                streams: HashMap::new(),
                changed: watch::channel(0).0,
            });
        entry.streams.insert(
            id,
            Slot {
                cursor: since,
                ..Slot::default()
            },
        );
        let changes = entry.changed.subscribe();
        entry.changed.send_modify(|v| *v += 1);
        Seat {
            consumers: self.clone(),
            address: address.to_string(),
            id,
            changes,
        }
    }

    /// How many consuming streams of `address` are open on this node.
    pub fn open_streams(&self, address: &str) -> usize {
        self.lock().get(address).map_or(0, |a| a.streams.len())
    }

    /// How many consuming streams are open on this node, over all addresses.
    pub fn open_total(&self) -> usize {
        self.lock().values().map(|a| a.streams.len()).sum()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Address>> {
        self.inner
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// One stream's place among its address's streams; leaving is dropping it.
#[derive(Debug)]
pub(crate) struct Seat {
    consumers: StreamConsumers,
    address: String,
    id: u64,
    changes: watch::Receiver<u64>,
}

impl Seat {
    fn update(&self, change: impl FnOnce(&mut Slot)) {
        let mut addresses = self.consumers.lock();
        let Some(address) = addresses.get_mut(&self.address) else {
            return;
        };
        let Some(slot) = address.streams.get_mut(&self.id) else {
            return;
        };
        let before = *slot;
        change(slot);
        if *slot != before {
            address.changed.send_modify(|v| *v += 1);
        }
    }

    pub(crate) fn moved_to(&self, cursor: u64) {
        self.update(|s| s.cursor = cursor);
    }

    pub(crate) fn holds(&self, held: usize) {
        self.update(|s| s.held = held);
    }

    pub(crate) fn took_one(&self) {
        self.update(|s| {
            s.served += 1;
            s.held += 1;
        });
    }

    /// Whether no other stream of the address is open on this node.
    pub(crate) fn alone(&self) -> bool {
        let addresses = self.consumers.lock();
        addresses
            .get(&self.address)
            .is_none_or(|a| a.streams.len() <= 1)
    }

    /// Whether this stream goes first for the queue entry at `entry`: no other stream that
    /// will still reach it ranks before this one.
    pub(crate) fn my_turn(&self, entry: u64) -> bool {
        let addresses = self.consumers.lock();
        let Some(address) = addresses.get(&self.address) else {
            return true;
        };
        let Some(me) = address.streams.get(&self.id) else {
            return true;
        };
        let mine = me.rank(self.id);
        address
            .streams
            .iter()
            .filter(|(id, other)| **id != self.id && other.cursor < entry)
            .all(|(id, other)| other.rank(*id) > mine)
    }

    /// Forgets the changes seen so far; call before reading what they describe.
    pub(crate) fn mark_seen(&mut self) {
        self.changes.borrow_and_update();
    }

    /// Resolves when another stream of the address joined, left, moved or changed load
    /// after the last [`Seat::mark_seen`].
    pub(crate) async fn changed(&mut self) {
        // The sender lives as long as this seat's slot, so it cannot close while we wait;
        // if it ever did, there would be nobody left to wait for.
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut addresses = self.consumers.lock();
        let Some(address) = addresses.get_mut(&self.address) else {
            return;
        };
        address.streams.remove(&self.id);
        if address.streams.is_empty() {
            addresses.remove(&self.address);
        } else {
            address.changed.send_modify(|v| *v += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_stream_that_will_reach_an_entry_goes_first() {
        let consumers = StreamConsumers::default();
        let a = consumers.join("x", 0);
        let b = consumers.join("x", 0);
        let other = consumers.join("y", 0);
        assert_eq!(consumers.open_total(), 3);
        assert!(other.my_turn(1) && other.alone(), "alone on its address");
        assert!(!a.alone());
        assert!(a.my_turn(1) && !b.my_turn(1), "equal: the older one first");
        a.took_one();
        assert!(!a.my_turn(2) && b.my_turn(2), "a holds a lease, b none");
        b.took_one();
        a.holds(0);
        assert!(a.my_turn(3) && !b.my_turn(3), "a settled its lease");
        a.took_one();
        a.holds(0);
        b.holds(0);
        assert!(
            !a.my_turn(4) && b.my_turn(4),
            "equal load: fewer taken first"
        );
        b.moved_to(10);
        assert!(a.my_turn(4), "b is past entry 4 and will not take it");
        assert!(!a.my_turn(11) && b.my_turn(11));
        drop(b);
        assert!(a.my_turn(11), "b left");
        assert_eq!(consumers.open_streams("x"), 1);
        drop(a);
        assert_eq!(consumers.open_streams("x"), 0);
    }

    #[tokio::test]
    async fn a_waiting_stream_hears_of_changes_made_after_it_looked() {
        let consumers = StreamConsumers::default();
        let mut a = consumers.join("x", 0);
        let b = consumers.join("x", 0);
        a.mark_seen();
        b.took_one();
        tokio::time::timeout(std::time::Duration::from_secs(5), a.changed())
            .await
            .expect("woken by b's lease");
        a.mark_seen();
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), a.changed())
            .await
            .expect("woken by b leaving");
    }
}
