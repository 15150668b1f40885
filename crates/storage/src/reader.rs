use std::sync::Arc;

use intentd_lifecycle::mesh::{MeshAgent, MeshEvent};
use intentd_lifecycle::{
    state_key as normalize, AgentConfig, ApiKey, DeadLetter, DueEntry, Event, InboxChange,
    InboxThread, Intent, Retention, Subscription, Timestamp, WebhookDelivery, WebhookEvent,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use uuid::Uuid;

use crate::hot::Hot;
use crate::keys;

/// Record counts of the state, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub intents: u64,
    pub events: u64,
    pub idempotency_records: u64,
    pub dead_letters: u64,
}
use crate::live::SmShared;
use crate::records;
use crate::wake::{Waiter, WakeKey};
use crate::{FeedEntry, FeedGone, StorageError};

/// One agent that has a delivery queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSummary {
    /// Normalized: without the `agent://` scheme.
    pub address: String,
    /// The newest cursor handed out in its queue.
    pub last_cursor: u64,
}

/// A read-only view of the local state machine. Cheap to clone, usable from any task.
///
/// Reads go straight to sled (or to its in-memory mirror of the small families,
/// [`crate::hot`]) and never wait for an apply. Each single-key read sees an applied
/// batch entirely or not at all; a range read (events, queue) racing an apply may see part of
/// it. [`StateReader::subscribe`] announces an index only once its whole batch is visible, so
/// code that waits for index N and then reads sees everything up to N; the per-key waits
/// ([`StateReader::watch_queue`] and its siblings) wake only after the batch is visible too.
#[derive(Clone)]
pub struct StateReader {
    shared: Arc<SmShared>,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader")
            .field("applied_index", &self.applied_index())
            .finish()
    }
}

fn decode<T: DeserializeOwned>(v: &[u8]) -> Result<T, StorageError> {
    Ok(serde_json::from_slice(v)?)
}

/// Records per page of the record store while walking it.
const PAGE: usize = 256;

fn bad_key(key: &[u8]) -> StorageError {
    StorageError::Inconsistent(format!("malformed state key {key:?}"))
}

impl StateReader {
    pub(crate) fn new(shared: Arc<SmShared>) -> Self {
        StateReader { shared }
    }

    /// The raw value under `key`: from the in-memory mirror or the record store for their
    /// families, else sled.
    fn raw(&self, key: &[u8]) -> Result<Option<sled::IVec>, StorageError> {
        if Hot::holds(key) {
            return Ok(self.shared.hot().get(key));
        }
        if records::holds(key) {
            return Ok(self.shared.records().get(key)?.map(sled::IVec::from));
        }
        Ok(self.shared.tree().get(key)?)
    }

    /// Every key and value under `prefix`, in key order, at most `limit`.
    fn scan(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(sled::IVec, sled::IVec)>, StorageError> {
        if Hot::holds(prefix) {
            let mut found = self.shared.hot().scan(prefix);
            found.truncate(limit);
            return Ok(found.into_iter().map(|(k, v)| (k.into(), v)).collect());
        }
        Ok(self
            .shared
            .tree()
            .scan_prefix(prefix)
            .take(limit)
            .collect::<Result<_, _>>()?)
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        self.raw(key)?.map(|v| decode(&v)).transpose()
    }

    pub fn intent(&self, id: &Uuid) -> Result<Option<Intent>, StorageError> {
        self.get(&keys::intent(id))
    }

    /// Events of `id` with `seq > since`, ascending, at most `limit`.
    pub fn events(&self, id: &Uuid, since: u64, limit: usize) -> Result<Vec<Event>, StorageError> {
        let Some(from) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.shared
            .records()
            .events(id, from, limit)?
            .iter()
            .map(|v| decode(v))
            .collect()
    }

    /// `(cursor, intent_id)` of `agent`'s queue with `cursor > since`, ascending, at most
    /// `limit`. `agent` may carry the `agent://` scheme or not.
    pub fn agent_queue(
        &self,
        agent: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Uuid)>, StorageError> {
        let Some(from) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        let agent = normalize(agent);
        let prefix = keys::queue_of(agent);
        self.shared
            .tree()
            .range(keys::queue(agent, from)..)
            .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                let cursor = keys::trailing_u64(&k).ok_or_else(|| bad_key(&k))?;
                let id = keys::uuid_value(&v).ok_or_else(|| bad_key(&k))?;
                Ok((cursor, id))
            })
            .collect()
    }

    /// Every agent address that has a queue, in byte order of the address.
    pub fn agents(&self) -> Result<Vec<AgentSummary>, StorageError> {
        self.scan(&[keys::CURSOR], usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let address = std::str::from_utf8(&k[1..]).map_err(|_| bad_key(&k))?;
                let last_cursor = keys::u64_value(&v).ok_or_else(|| bad_key(&k))?;
                Ok(AgentSummary {
                    address: address.to_string(),
                    last_cursor,
                })
            })
            .collect()
    }

    pub fn api_key(&self, key_hash: &str) -> Result<Option<ApiKey>, StorageError> {
        self.get(&keys::api_key(key_hash))
    }

    /// `(hash, key)` of every API key, revoked ones included.
    pub fn api_keys(&self) -> Result<Vec<(String, ApiKey)>, StorageError> {
        self.scan(&[keys::API_KEY], usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let hash = std::str::from_utf8(&k[1..]).map_err(|_| bad_key(&k))?;
                Ok((hash.to_string(), decode(&v)?))
            })
            .collect()
    }

    /// Index of the last applied log entry, 0 if none.
    pub fn applied_index(&self) -> u64 {
        self.shared.applied_index()
    }

    /// The applied index, sent after every applied batch (or installed snapshot) is visible
    /// to readers.
    ///
    /// Every batch wakes every receiver: for those that care about any write (the delivery
    /// engine). A wait for news about one agent or intent uses [`StateReader::watch_queue`]
    /// and its siblings instead, so that it costs nothing when others are written.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    /// Registers for entries added to `agent`'s queue (with or without `agent://`): what
    /// [`StateReader::agent_queue`] reads. Register before the first read; see [`Waiter`].
    pub fn watch_queue(&self, agent: &str) -> Waiter {
        self.watch(WakeKey::Queue(normalize(agent).to_string()))
    }

    /// Registers for changes of any intent addressed to `agent` (with or without
    /// `agent://`): a lease taken or lost, a release, a status. What a receiver waits for
    /// when the queue holds entries it could not lease yet.
    pub fn watch_addressed_to(&self, agent: &str) -> Waiter {
        self.watch(WakeKey::Addressed(normalize(agent).to_string()))
    }

    /// Registers for mesh news: an agent's mesh record or a new mesh event.
    pub fn watch_mesh(&self) -> Waiter {
        self.watch(WakeKey::Mesh)
    }

    /// The mesh record of `address` (with or without `agent://`).
    pub fn mesh_agent(&self, address: &str) -> Result<Option<MeshAgent>, StorageError> {
        self.get(&keys::mesh_agent(normalize(address)))
    }

    /// Every mesh record, in byte order of the address.
    pub fn mesh_agents(&self) -> Result<Vec<MeshAgent>, StorageError> {
        self.values(&[keys::MESH_AGENT], usize::MAX)
    }

    /// How many intents a kill of `agent` holds now.
    pub fn mesh_held(&self, agent: &str) -> usize {
        self.shared
            .tree()
            .scan_prefix(keys::mesh_holds_of(normalize(agent)))
            .count()
    }

    /// Mesh events with `seq > since`, oldest first, at most `limit`.
    pub fn mesh_events(&self, since: u64, limit: usize) -> Result<Vec<MeshEvent>, StorageError> {
        self.shared
            .tree()
            .range(keys::mesh_event(since.saturating_add(1))..)
            .take_while(|r| {
                r.as_ref()
                    .map_or(true, |(k, _)| k.first() == Some(&keys::MESH_EVENT))
            })
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }

    /// The newest mesh event's `seq` (0 if none).
    pub fn mesh_event_cursor(&self) -> Result<u64, StorageError> {
        Ok(self
            .shared
            .tree()
            .get(keys::MESH_EVENT_CURSOR)?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }

    /// Registers for new events of any intent: what [`StateReader::intent_feed`] reads.
    pub fn watch_feed(&self) -> Waiter {
        self.watch(WakeKey::Feed)
    }

    /// The node's recent intent events of entries after log index `since`, oldest first:
    /// whole entries, about `limit` events (an entry is never split, so the last index is a
    /// complete cursor; see `crate::feed`). [`FeedGone`] when this node cannot prove it has
    /// them all.
    pub fn intent_feed(&self, since: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedGone> {
        self.shared.feed().after(since, limit)
    }

    /// Intents newest first (ids are UUIDv7, so key order is creation order), starting
    /// below `before` if given. `visit` sees each until it returns `false` or `scan` intents
    /// were read; answers how many were read, so a caller can tell an exhausted tree
    /// (fewer than `scan`) from a bounded stop.
    pub fn intents_newest_first(
        &self,
        before: Option<Uuid>,
        scan: usize,
        mut visit: impl FnMut(Intent) -> bool,
    ) -> Result<usize, StorageError> {
        let records = self.shared.records();
        let mut before = before;
        let mut read = 0;
        while read < scan {
            let page = records.intents_before(before, (scan - read).min(PAGE))?;
            let full = page.len() == (scan - read).min(PAGE);
            for (id, v) in page {
                read += 1;
                before = Some(id);
                if !visit(decode(&v)?) {
                    return Ok(read);
                }
            }
            if !full {
                break;
            }
        }
        Ok(read)
    }

    /// Registers for changes of intent `id`: its record or new events.
    pub fn watch_intent(&self, id: &Uuid) -> Waiter {
        self.watch(WakeKey::Intent(*id))
    }

    fn watch(&self, key: WakeKey) -> Waiter {
        self.shared.wakes().subscribe(key)
    }

    /// How many keys have waiters now (every one of them is freed with its last waiter).
    pub fn watched_keys(&self) -> usize {
        self.shared.wakes().len()
    }

    /// The registration of `address` (with or without `agent://`); `None`: unregistered,
    /// which behaves as a `Stream` binding with the default ack timeout.
    pub fn agent_config(&self, address: &str) -> Result<Option<AgentConfig>, StorageError> {
        self.get(&keys::agent(normalize(address)))
    }

    /// Every registered agent, in byte order of the address.
    pub fn agent_configs(&self) -> Result<Vec<AgentConfig>, StorageError> {
        self.values(&[keys::AGENT], usize::MAX)
    }

    /// Due entries with `at <= now`, earliest first, at most `limit`. Entry times are whole
    /// milliseconds rounded up, so an entry is never due before its exact time.
    pub fn due_before(&self, now: Timestamp, limit: usize) -> Result<Vec<DueEntry>, StorageError> {
        let end = keys::due_after_millis(keys::due_millis_floor(&now));
        self.shared
            .tree()
            .range(vec![keys::DUE]..end)
            .take(limit)
            .map(|r| {
                let (k, _) = r?;
                keys::parse_due(&k).ok_or_else(|| bad_key(&k))
            })
            .collect()
    }

    /// The time of the earliest due entry, if any: what the engine sleeps until.
    pub fn next_due(&self) -> Result<Option<Timestamp>, StorageError> {
        match self.shared.tree().scan_prefix([keys::DUE]).next() {
            Some(r) => {
                let (k, _) = r?;
                Ok(Some(keys::parse_due(&k).ok_or_else(|| bad_key(&k))?.at))
            }
            None => Ok(None),
        }
    }

    /// Dead letters in intent-id order, after `after` (exclusive), at most `limit`.
    pub fn dead_letters(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StorageError> {
        let start = match after {
            Some(id) => {
                let mut k = keys::dead_letter(&id);
                k.push(0);
                k
            }
            None => vec![keys::DEAD_LETTER],
        };
        self.shared
            .tree()
            .range(start..)
            .take_while(|r| {
                r.as_ref()
                    .map_or(true, |(k, _)| k.first() == Some(&keys::DEAD_LETTER))
            })
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }

    pub fn dead_letter(&self, intent_id: &Uuid) -> Result<Option<DeadLetter>, StorageError> {
        self.get(&keys::dead_letter(intent_id))
    }

    /// The threads in `owner`'s inbox (with or without `agent://`), in thread-id order.
    pub fn inbox_threads(&self, owner: &str) -> Result<Vec<InboxThread>, StorageError> {
        self.indexed(&keys::owner_threads(normalize(owner)), keys::thread)
    }

    pub fn inbox_thread(&self, thread_id: &Uuid) -> Result<Option<InboxThread>, StorageError> {
        self.get(&keys::thread(thread_id))
    }

    /// `owner`'s inbox changes with `seq > since`, ascending, at most `limit`.
    pub fn inbox_changes(
        &self,
        owner: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<InboxChange>, StorageError> {
        let Some(from) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        let owner = normalize(owner);
        let prefix = keys::inbox_changes_of(owner);
        self.shared
            .tree()
            .range(keys::inbox_change(owner, from)..)
            .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .take(limit)
            .map(|r| decode(&r?.1))
            .collect()
    }

    /// The newest `seq` of `owner`'s inbox change feed, 0 if none.
    pub fn inbox_cursor(&self, owner: &str) -> Result<u64, StorageError> {
        Ok(self
            .raw(&keys::inbox_cursor(normalize(owner)))?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }

    /// `owner`'s subscriptions, revoked ones included, in id order.
    pub fn subscriptions(&self, owner: &str) -> Result<Vec<Subscription>, StorageError> {
        self.indexed(
            &keys::owner_subscriptions(normalize(owner)),
            keys::subscription,
        )
    }

    /// Every owner's subscriptions, revoked ones included, in id order.
    pub fn all_subscriptions(&self) -> Result<Vec<Subscription>, StorageError> {
        self.values(&[keys::SUBSCRIPTION], usize::MAX)
    }

    /// Webhook deliveries of every event in delivery-id order (not time order), at most
    /// `limit`.
    pub fn webhook_delivery_records(
        &self,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StorageError> {
        self.values(&[keys::WEBHOOK_DELIVERY], limit)
    }

    pub fn subscription(&self, id: &Uuid) -> Result<Option<Subscription>, StorageError> {
        self.get(&keys::subscription(id))
    }

    pub fn webhook_event(&self, event_id: &Uuid) -> Result<Option<WebhookEvent>, StorageError> {
        self.get(&keys::webhook_event(event_id))
    }

    /// Every delivery of `event_id`, in delivery-id order.
    pub fn webhook_deliveries(
        &self,
        event_id: &Uuid,
    ) -> Result<Vec<WebhookDelivery>, StorageError> {
        self.indexed(&keys::event_deliveries(event_id), keys::webhook_delivery)
    }

    pub fn webhook_delivery(
        &self,
        delivery_id: &Uuid,
    ) -> Result<Option<WebhookDelivery>, StorageError> {
        self.get(&keys::webhook_delivery(delivery_id))
    }

    /// The values under `prefix`, in key order, at most `limit`.
    fn values<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<T>, StorageError> {
        self.scan(prefix, limit)?
            .iter()
            .map(|(_, v)| decode(v))
            .collect()
    }

    /// The records an index under `prefix` points to by the UUID ending each index key. A
    /// record missing behind its index entry (a read racing an apply) is skipped.
    fn indexed<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        record: fn(&Uuid) -> Vec<u8>,
    ) -> Result<Vec<T>, StorageError> {
        let mut out = Vec::new();
        for (k, _) in self.scan(prefix, usize::MAX)? {
            let id = keys::trailing_uuid(&k).ok_or_else(|| bad_key(&k))?;
            if let Some(v) = self.raw(&record(&id))? {
                out.push(decode(&v)?);
            }
        }
        Ok(out)
    }

    pub fn intent_count(&self) -> Result<u64, StorageError> {
        self.counter(keys::INTENT_COUNT)
    }

    /// How many records of each kind the state holds, from counters apply keeps in step
    /// (reading them costs four lookups, whatever the size of the state). Records written
    /// by a version that kept no counter for their kind are not counted.
    pub fn record_counts(&self) -> Result<RecordCounts, StorageError> {
        Ok(RecordCounts {
            intents: self.counter(keys::INTENT_COUNT)?,
            events: self.counter(keys::EVENT_COUNT)?,
            idempotency_records: self.counter(keys::IDEMPOTENCY_COUNT)?,
            dead_letters: self.counter(keys::DEAD_LETTER_COUNT)?,
        })
    }

    /// The retention the cluster last agreed on (keep forever if never set).
    pub fn retention(&self) -> Result<Retention, StorageError> {
        Ok(self.get(keys::RETENTION)?.unwrap_or_default())
    }

    /// Every key of the state (the `m` metadata aside) whose key or value names `id`, as raw
    /// bytes or as text. It scans the whole state: for tests and diagnosis (does anything of
    /// a purged intent remain?), never for serving.
    #[doc(hidden)]
    pub fn keys_mentioning(&self, id: &Uuid) -> Result<Vec<Vec<u8>>, StorageError> {
        let raw = id.as_bytes().as_slice();
        let text = id.to_string();
        let names = |b: &[u8]| {
            b.windows(raw.len()).any(|w| w == raw)
                || b.windows(text.len()).any(|w| w == text.as_bytes())
        };
        let mut out = Vec::new();
        let (tree, records) = self.shared.both();
        let mut page = records.page_after(None, PAGE)?;
        while let Some((last, _)) = page.last() {
            let next = records.page_after(Some(last), PAGE)?;
            for (k, v) in std::mem::replace(&mut page, next) {
                if names(&k) || names(&v) {
                    out.push(k);
                }
            }
        }
        for r in tree.iter() {
            let (k, v) = r?;
            if k.first() != Some(&keys::META) && (names(&k) || names(&v)) {
                out.push(k.to_vec());
            }
        }
        Ok(out)
    }

    fn counter(&self, key: &[u8]) -> Result<u64, StorageError> {
        Ok(self
            .raw(key)?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }
}
