//! Per-key wake-ups, driven by apply.
//!
//! A stream waits for news about one thing: an agent's queue, an intent's events. Waking it on
//! every applied batch (the applied-index watch) makes every write cost every open stream a
//! task wake-up and a range read that finds nothing, so a few thousand idle listeners slowed
//! all writes several-fold. Apply knows which keys each batch touched, so it wakes only the
//! waiters of those keys: a batch costs O(keys it wrote), whatever the number of waiters.
//!
//! # No lost wake-up
//! Each key with waiters has a `tokio::sync::watch` channel whose version apply bumps *after*
//! the batch is visible to readers (the rule of the applied-index watch, see
//! [`crate::StateReader::subscribe`]). A waiter registers before its first read and calls
//! [`Waiter::mark_seen`] before each later one, so a batch that lands after the mark either
//! is seen by the read or bumps a version the waiter has not seen yet, and
//! [`Waiter::changed`] returns at once. A batch that lands before the key was registered
//! found no entry to bump, but it was visible before the registration, hence before the read.
//!
//! # Bounded memory
//! An entry exists only while a waiter holds a receiver of it. Registration and the drop of
//! a waiter both happen under the key's shard lock, so the waiter that drops the last
//! receiver removes the entry and no registration can slip in between.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use uuid::Uuid;

/// Enough shards that registrations of many streams and applies rarely meet on one lock.
const SHARDS: usize = 16;

/// What a waiter waits for news about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum WakeKey {
    /// New entries on the queue of an agent (normalized address): what a delivery stream
    /// reads.
    Queue(String),
    /// An intent addressed to the agent (normalized) changed: a queue entry a receive could
    /// not lease (leased elsewhere, held back) may have become leasable at the same cursor.
    Addressed(String),
    /// An intent's record or its event log.
    Intent(Uuid),
    /// The mesh: an agent's mesh record or the mesh event log (what the mesh feed reads).
    Mesh,
    /// Any intent's event log: what the node's feed of recent events reads.
    Feed,
}

type Shard = HashMap<WakeKey, watch::Sender<()>>;

/// The registry of waited-on keys. One per state machine, shared by its readers.
#[derive(Debug)]
pub(crate) struct Notifier {
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
    /// Set once at shutdown; no key is registered after it.
    closed: AtomicBool,
}

/// The state machine stopped serving waits (the node is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the state machine is shutting down")]
pub struct Closed;

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            closed: AtomicBool::new(false),
        }
    }
}

impl Notifier {
    fn shard(&self, key: &WakeKey) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter on `key`. Anything applied after this call wakes it.
    pub(crate) fn subscribe(self: &Arc<Self>, key: WakeKey) -> Waiter {
        let rx = {
            let mut shard = self.shard(&key);
            if self.closed.load(Ordering::SeqCst) {
                // A channel without a sender: the first wait reports the shutdown.
                watch::channel(()).1
            } else {
                match shard.get(&key) {
                    Some(tx) => tx.subscribe(),
                    None => {
                        let (tx, rx) = watch::channel(());
                        shard.insert(key.clone(), tx);
                        rx
                    }
                }
            }
        };
        Waiter {
            notifier: Arc::clone(self),
            key,
            rx: Some(rx),
        }
    }

    /// Wakes the waiters of `keys`. Call only once the batch that wrote them is visible.
    pub(crate) fn wake<'a>(&self, keys: impl IntoIterator<Item = &'a WakeKey>) {
        for key in keys {
            if let Some(tx) = self.shard(key).get(key) {
                tx.send_replace(());
            }
        }
    }

    /// Wakes every waiter: the state changed wholesale (a snapshot was installed). Each
    /// shard is visited after the switch, so a waiter registered after its shard was visited
    /// reads the new state anyway.
    pub(crate) fn wake_all(&self) {
        for shard in &self.shards {
            for tx in shard.lock().unwrap_or_else(|p| p.into_inner()).values() {
                tx.send_replace(());
            }
        }
    }

    /// Ends every wait, now and later, with [`Closed`]: dropping the senders is what tells
    /// the receivers. The flag is set before any shard is visited, so a registration after
    /// its shard was drained sees it.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for shard in &self.shards {
            let drained = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            drop(drained);
        }
    }

    /// How many keys have waiters.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// A registration on one key of the state machine, from
/// [`crate::StateReader::watch_queue`] and its siblings. Dropping it unregisters the key
/// once no other waiter needs it.
#[derive(Debug)]
pub struct Waiter {
    notifier: Arc<Notifier>,
    key: WakeKey,
    /// Always `Some` until dropped: taken out under the shard lock on drop.
    rx: Option<watch::Receiver<()>>,
}

impl Waiter {
    fn rx(&mut self) -> &mut watch::Receiver<()> {
        self.rx.as_mut().expect("present until dropped")
    }

    /// Forgets the wake-ups so far. Call it right before reading what the key guards: a
    /// batch applied after it is either seen by that read or makes the next
    /// [`Waiter::changed`] return at once.
    pub fn mark_seen(&mut self) {
        self.rx().borrow_and_update();
    }

    /// Returns once a batch that touched the key (or a snapshot install) was applied since
    /// the registration or the last [`Waiter::mark_seen`], at once if one already was.
    /// Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        self.rx().changed().await.map_err(|_| Closed)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut shard = self.notifier.shard(&self.key);
        drop(self.rx.take());
        if shard
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            shard.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn queue(agent: &str) -> WakeKey {
        WakeKey::Queue(agent.to_string())
    }

    /// Whether the wait is over right now, without waiting.
    fn ready(w: &mut Waiter) -> Option<Result<(), Closed>> {
        let fut = pin!(w.changed());
        match fut.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    #[test]
    fn wakes_only_the_waiters_of_a_written_key() {
        let n = Arc::new(Notifier::default());
        let mut a = n.subscribe(queue("a"));
        let mut a2 = n.subscribe(queue("a"));
        let mut b = n.subscribe(queue("b"));
        let mut i = n.subscribe(WakeKey::Intent(Uuid::from_u128(1)));
        assert_eq!(ready(&mut a), None);
        n.wake(&[queue("a"), WakeKey::Addressed("b".into()), queue("c")]);
        assert_eq!(ready(&mut a), Some(Ok(())));
        assert_eq!(ready(&mut a2), Some(Ok(())));
        assert_eq!(ready(&mut b), None, "another agent's key");
        assert_eq!(ready(&mut i), None);
        // Seen once, the wake-up is spent.
        assert_eq!(ready(&mut a), None);
        assert_eq!(n.len(), 3, "waking registers nothing");
    }

    #[test]
    fn a_write_between_the_read_and_the_wait_is_not_lost() {
        let n = Arc::new(Notifier::default());
        // Registered, then a write lands before the first read even started.
        let mut w = n.subscribe(queue("a"));
        n.wake(&[queue("a")]);
        assert_eq!(ready(&mut w), Some(Ok(())));
        // mark_seen, read (finds nothing), a write lands, then the wait: it returns at once.
        w.mark_seen();
        n.wake(&[queue("a")]);
        assert_eq!(ready(&mut w), Some(Ok(())));
        // A write before the mark is covered by the read that follows it instead.
        n.wake(&[queue("a")]);
        w.mark_seen();
        assert_eq!(ready(&mut w), None);
    }

    #[tokio::test]
    async fn a_parked_waiter_is_woken() {
        let n = Arc::new(Notifier::default());
        let mut w = n.subscribe(WakeKey::Intent(Uuid::from_u128(7)));
        let waiting = tokio::spawn(async move { w.changed().await });
        tokio::task::yield_now().await;
        n.wake(&[WakeKey::Intent(Uuid::from_u128(7))]);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(woke, Ok(()));
    }

    #[test]
    fn entries_go_with_their_last_waiter() {
        let n = Arc::new(Notifier::default());
        let mut waiters: Vec<Waiter> = (0..1000)
            .map(|i| n.subscribe(queue(&format!("idle-{}", i % 500))))
            .collect();
        assert_eq!(n.len(), 500);
        // Each key keeps one waiter of its two.
        let rest = waiters.split_off(500);
        drop(waiters);
        assert_eq!(n.len(), 500);
        drop(rest);
        assert_eq!(n.len(), 0);

        let mut a = n.subscribe(queue("a"));
        let b = n.subscribe(queue("a"));
        drop(b);
        assert_eq!(n.len(), 1, "one waiter left");
        n.wake(&[queue("a")]);
        assert_eq!(ready(&mut a), Some(Ok(())));
        drop(a);
        assert_eq!(n.len(), 0);
        // A key registered again starts afresh.
        let mut again = n.subscribe(queue("a"));
        assert_eq!(ready(&mut again), None);
    }

    #[test]
    fn wake_all_wakes_every_key() {
        let n = Arc::new(Notifier::default());
        let mut ws: Vec<Waiter> = (0..100)
            .map(|i| n.subscribe(WakeKey::Intent(Uuid::from_u128(i))))
            .chain([
                n.subscribe(queue("a")),
                n.subscribe(WakeKey::Addressed("a".into())),
            ])
            .collect();
        n.wake_all();
        for w in &mut ws {
            assert_eq!(ready(w), Some(Ok(())));
        }
    }

    #[test]
    fn close_ends_every_wait_and_every_later_one() {
        let n = Arc::new(Notifier::default());
        let mut w = n.subscribe(queue("a"));
        w.mark_seen();
        n.close();
        assert_eq!(ready(&mut w), Some(Err(Closed)));
        assert_eq!(n.len(), 0);
        let mut late = n.subscribe(queue("a"));
        assert_eq!(ready(&mut late), Some(Err(Closed)));
        assert_eq!(n.len(), 0, "nothing registered after close");
        drop((w, late));
        assert_eq!(n.len(), 0);
    }

    #[test]
    fn a_pending_wake_is_reported_before_the_close() {
        let n = Arc::new(Notifier::default());
        let mut w = n.subscribe(queue("a"));
        n.wake(&[queue("a")]);
        n.close();
        assert_eq!(ready(&mut w), Some(Ok(())), "read what was written first");
        assert_eq!(ready(&mut w), Some(Err(Closed)));
    }
}
