//! Key layout of the state machine tree. One tree, one leading byte per kind of record, and
//! big-endian integers so that sled's byte order is numeric order:
//!
//! | key                                             | value                         |
//! |-------------------------------------------------|-------------------------------|
//! | `i` intent id (16)                              | Intent (JSON)                 |
//! | `e` intent id (16) seq (u64 BE)                 | Event (JSON)                  |
//! | `d` idempotency storage key                     | IdempotencyRecord (JSON)      |
//! | `q` agent len (u32 BE) agent cursor (u64 BE)    | intent id (16)                |
//! | `c` agent                                       | last cursor (u64 BE)          |
//! | `k` key hash                                    | ApiKey (JSON)                 |
//! | `x` api key id (16)                             | key hash                      |
//! | `n` `intents`                                   | number of intents (u64 BE)    |
//! | `m` `last_applied` / `membership`               | JSON; never in a snapshot     |
//!
//! Agents are stored normalized (without `agent://`), as `intentd_lifecycle` hands them over.

use uuid::Uuid;

pub(crate) const INTENT: u8 = b'i';
pub(crate) const EVENT: u8 = b'e';
pub(crate) const IDEMPOTENCY: u8 = b'd';
pub(crate) const QUEUE: u8 = b'q';
pub(crate) const CURSOR: u8 = b'c';
pub(crate) const API_KEY: u8 = b'k';
pub(crate) const API_KEY_ID: u8 = b'x';
pub(crate) const META: u8 = b'm';

pub(crate) const INTENT_COUNT: &[u8] = b"nintents";
pub(crate) const LAST_APPLIED: &[u8] = b"mlast_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"mmembership";

fn with(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(crate) fn intent(id: &Uuid) -> Vec<u8> {
    with(INTENT, &[id.as_bytes()])
}

pub(crate) fn events_of(id: &Uuid) -> Vec<u8> {
    with(EVENT, &[id.as_bytes()])
}

pub(crate) fn event(id: &Uuid, seq: u64) -> Vec<u8> {
    with(EVENT, &[id.as_bytes(), &seq.to_be_bytes()])
}

pub(crate) fn idempotency(storage_key: &str) -> Vec<u8> {
    with(IDEMPOTENCY, &[storage_key.as_bytes()])
}

/// The length prefix keeps one agent's queue from being a prefix of another's.
pub(crate) fn queue_of(agent: &str) -> Vec<u8> {
    with(
        QUEUE,
        &[&(agent.len() as u32).to_be_bytes(), agent.as_bytes()],
    )
}

pub(crate) fn queue(agent: &str, cursor: u64) -> Vec<u8> {
    let mut k = queue_of(agent);
    k.extend_from_slice(&cursor.to_be_bytes());
    k
}

pub(crate) fn cursor(agent: &str) -> Vec<u8> {
    with(CURSOR, &[agent.as_bytes()])
}

pub(crate) fn api_key(hash: &str) -> Vec<u8> {
    with(API_KEY, &[hash.as_bytes()])
}

pub(crate) fn api_key_id(id: &Uuid) -> Vec<u8> {
    with(API_KEY_ID, &[id.as_bytes()])
}

pub(crate) fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

pub(crate) fn trailing_u64(key: &[u8]) -> Option<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|start| u64_value(&key[start..]))
}

pub(crate) fn uuid_value(v: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(v).ok()
}
