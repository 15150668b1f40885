use std::sync::Arc;

use intentd_lifecycle::{ApiKey, Event, Intent};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use uuid::Uuid;

use crate::keys;
use crate::sm::SmShared;
use crate::StorageError;

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
/// Reads go straight to sled and never wait for an apply. Each single-key read sees an applied
/// batch entirely or not at all; a range read (events, queue) racing an apply may see part of
/// it. [`StateReader::subscribe`] announces an index only once its whole batch is visible, so
/// code that waits for index N and then reads sees everything up to N.
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

fn bad_key(key: &[u8]) -> StorageError {
    StorageError::Inconsistent(format!("malformed state key {key:?}"))
}

fn normalize(agent: &str) -> &str {
    agent.strip_prefix("agent://").unwrap_or(agent)
}

impl StateReader {
    pub(crate) fn new(shared: Arc<SmShared>) -> Self {
        StateReader { shared }
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        self.shared.tree().get(key)?.map(|v| decode(&v)).transpose()
    }

    pub fn intent(&self, id: &Uuid) -> Result<Option<Intent>, StorageError> {
        self.get(&keys::intent(id))
    }

    /// Events of `id` with `seq > since`, ascending, at most `limit`.
    pub fn events(&self, id: &Uuid, since: u64, limit: usize) -> Result<Vec<Event>, StorageError> {
        let Some(from) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        let prefix = keys::events_of(id);
        self.shared
            .tree()
            .range(keys::event(id, from)..)
            .take_while(|r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .take(limit)
            .map(|r| decode(&r?.1))
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
        self.shared
            .tree()
            .scan_prefix([keys::CURSOR])
            .map(|r| {
                let (k, v) = r?;
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
        self.shared
            .tree()
            .scan_prefix([keys::API_KEY])
            .map(|r| {
                let (k, v) = r?;
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
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    pub fn intent_count(&self) -> Result<u64, StorageError> {
        Ok(self
            .shared
            .tree()
            .get(keys::INTENT_COUNT)?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }
}
