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
//! | `a` agent address                               | AgentConfig (JSON)            |
//! | `u` at (ms, u64 BE) kind (u8) id (16)           | empty: the due-time index     |
//! | `l` intent id (16)                              | DeadLetter (JSON)             |
//! | `t` thread id (16)                              | InboxThread (JSON)            |
//! | `o` owner len (u32 BE) owner thread id (16)     | empty: threads by owner       |
//! | `h` owner len (u32 BE) owner seq (u64 BE)       | InboxChange (JSON)            |
//! | `g` owner                                       | last inbox change seq (u64 BE)|
//! | `s` subscription id (16)                        | Subscription (JSON)           |
//! | `p` owner len (u32 BE) owner subscription id    | empty: subscriptions by owner |
//! | `w` webhook event id (16)                       | WebhookEvent (JSON)           |
//! | `v` webhook delivery id (16)                    | WebhookDelivery (JSON)        |
//! | `r` event id (16) delivery id (16)              | empty: deliveries by event    |
//! | `n` `events` / `idempotency` / `dead_letters`   | number of records (u64 BE)    |
//! | `y` `retention`                                 | Retention (JSON)              |
//! | `j` intent id (16) idempotency storage key      | empty: claims by intent       |
//! | `f` thread id (16) owner len (u32 BE) owner seq | empty: feed entries by thread |
//! | `z` agent address                               | MeshAgent (JSON)              |
//! | `b` agent len (u32 BE) agent intent id (16)     | empty: intents a kill holds   |
//! | `M` seq (u64 BE)                                | MeshEvent (JSON)              |
//! | `n` `mesh_events`                               | last mesh event seq (u64 BE)  |
//! | `m` `last_applied` / `membership`               | JSON; never in a snapshot     |
//!
//! Agents and owners are stored normalized (without `agent://`), as `intentd_lifecycle` hands
//! them over. Every prefix but `m` is part of a snapshot: the snapshot copies the whole tree
//! except `m`, so a new prefix is covered without touching the snapshot code.
//!
//! The due index sorts by time first, so the engine reads what is due with one range scan
//! from the start of `u` and the next due time from its first key. Times are stored in
//! milliseconds rounded *up*, so an entry never looks due before its exact time; times before
//! 1970 count as 0.

use intentd_lifecycle::{DueEntry, DueKind, Timestamp};
use uuid::Uuid;

pub(crate) const INTENT: u8 = b'i';
pub(crate) const EVENT: u8 = b'e';
pub(crate) const IDEMPOTENCY: u8 = b'd';
pub(crate) const QUEUE: u8 = b'q';
pub(crate) const CURSOR: u8 = b'c';
pub(crate) const API_KEY: u8 = b'k';
pub(crate) const API_KEY_ID: u8 = b'x';
pub(crate) const META: u8 = b'm';
pub(crate) const AGENT: u8 = b'a';
pub(crate) const DUE: u8 = b'u';
pub(crate) const DEAD_LETTER: u8 = b'l';
pub(crate) const THREAD: u8 = b't';
pub(crate) const OWNER_THREAD: u8 = b'o';
pub(crate) const INBOX_CHANGE: u8 = b'h';
pub(crate) const INBOX_CURSOR: u8 = b'g';
pub(crate) const SUBSCRIPTION: u8 = b's';
pub(crate) const OWNER_SUBSCRIPTION: u8 = b'p';
pub(crate) const WEBHOOK_EVENT: u8 = b'w';
pub(crate) const WEBHOOK_DELIVERY: u8 = b'v';
pub(crate) const EVENT_DELIVERY: u8 = b'r';
pub(crate) const INTENT_CLAIM: u8 = b'j';
pub(crate) const THREAD_CHANGE: u8 = b'f';

pub(crate) const INTENT_COUNT: &[u8] = b"nintents";
pub(crate) const EVENT_COUNT: &[u8] = b"nevents";
pub(crate) const IDEMPOTENCY_COUNT: &[u8] = b"nidempotency";
pub(crate) const DEAD_LETTER_COUNT: &[u8] = b"ndead_letters";
pub(crate) const RETENTION: &[u8] = b"yretention";
pub(crate) const MESH_AGENT: u8 = b'z';
pub(crate) const MESH_HOLD: u8 = b'b';
pub(crate) const MESH_EVENT: u8 = b'M';
pub(crate) const MESH_EVENT_CURSOR: &[u8] = b"nmesh_events";
pub(crate) const LAST_APPLIED: &[u8] = b"mlast_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"mmembership";
/// How far the record store's segments belong to the applied batches (`records::Mark`).
pub(crate) const RECORDS_MARK: &[u8] = b"mrecords";

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

/// The idempotency claims whose record points to `intent_id`, for its purge.
pub(crate) fn intent_claims(intent_id: &Uuid) -> Vec<u8> {
    with(INTENT_CLAIM, &[intent_id.as_bytes()])
}

pub(crate) fn intent_claim(intent_id: &Uuid, storage_key: &str) -> Vec<u8> {
    with(
        INTENT_CLAIM,
        &[intent_id.as_bytes(), storage_key.as_bytes()],
    )
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

pub(crate) fn agent(address: &str) -> Vec<u8> {
    with(AGENT, &[address.as_bytes()])
}

pub(crate) fn mesh_agent(address: &str) -> Vec<u8> {
    with(MESH_AGENT, &[address.as_bytes()])
}

pub(crate) fn mesh_holds_of(agent: &str) -> Vec<u8> {
    with(
        MESH_HOLD,
        &[&(agent.len() as u32).to_be_bytes(), agent.as_bytes()],
    )
}

pub(crate) fn mesh_hold(agent: &str, intent_id: &Uuid) -> Vec<u8> {
    let mut k = mesh_holds_of(agent);
    k.extend_from_slice(intent_id.as_bytes());
    k
}

pub(crate) fn mesh_event(seq: u64) -> Vec<u8> {
    with(MESH_EVENT, &[&seq.to_be_bytes()])
}

/// Milliseconds since the epoch, rounded up, 0 before the epoch.
pub(crate) fn due_millis(at: &Timestamp) -> u64 {
    let ms = at.timestamp_millis();
    let ms = if at.timestamp_subsec_millis() * 1_000_000 != at.timestamp_subsec_nanos() {
        ms.saturating_add(1)
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(0)
}

pub(crate) fn due(at: &Timestamp, kind: DueKind, id: &Uuid) -> Vec<u8> {
    with(
        DUE,
        &[&due_millis(at).to_be_bytes(), &[kind.code()], id.as_bytes()],
    )
}

/// Milliseconds since the epoch, rounded down (for "due by now"), 0 before the epoch.
pub(crate) fn due_millis_floor(at: &Timestamp) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// The first key of the due index after every entry due at or before `ms`.
pub(crate) fn due_after_millis(ms: u64) -> Vec<u8> {
    match ms.checked_add(1) {
        Some(next) => with(DUE, &[&next.to_be_bytes()]),
        None => vec![DUE + 1],
    }
}

pub(crate) fn parse_due(key: &[u8]) -> Option<DueEntry> {
    if key.len() != 1 + 8 + 1 + 16 || key[0] != DUE {
        return None;
    }
    let ms = u64_value(&key[1..9])?;
    let kind = DueKind::from_code(key[9])?;
    let id = uuid_value(&key[10..])?;
    let at = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    Some(DueEntry { at, kind, id })
}

pub(crate) fn dead_letter(intent_id: &Uuid) -> Vec<u8> {
    with(DEAD_LETTER, &[intent_id.as_bytes()])
}

pub(crate) fn thread(id: &Uuid) -> Vec<u8> {
    with(THREAD, &[id.as_bytes()])
}

/// `prefix` + owner length + owner: no owner's keys are a prefix of another's.
fn of_owner(prefix: u8, owner: &str) -> Vec<u8> {
    with(
        prefix,
        &[&(owner.len() as u32).to_be_bytes(), owner.as_bytes()],
    )
}

pub(crate) fn owner_threads(owner: &str) -> Vec<u8> {
    of_owner(OWNER_THREAD, owner)
}

pub(crate) fn owner_thread(owner: &str, thread_id: &Uuid) -> Vec<u8> {
    let mut k = owner_threads(owner);
    k.extend_from_slice(thread_id.as_bytes());
    k
}

pub(crate) fn inbox_changes_of(owner: &str) -> Vec<u8> {
    of_owner(INBOX_CHANGE, owner)
}

pub(crate) fn inbox_change(owner: &str, seq: u64) -> Vec<u8> {
    let mut k = inbox_changes_of(owner);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The feed entries that name `thread_id`, in any owner's feed, for the thread's purge.
pub(crate) fn thread_changes(thread_id: &Uuid) -> Vec<u8> {
    with(THREAD_CHANGE, &[thread_id.as_bytes()])
}

pub(crate) fn thread_change(thread_id: &Uuid, owner: &str, seq: u64) -> Vec<u8> {
    let mut k = thread_changes(thread_id);
    k.extend_from_slice(&inbox_change(owner, seq)[1..]);
    k
}

/// The owner's feed key that a `thread_change` key points to.
pub(crate) fn inbox_change_of_thread_change(key: &[u8]) -> Option<Vec<u8>> {
    let rest = key.get(1 + 16..)?;
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(INBOX_CHANGE);
    k.extend_from_slice(rest);
    Some(k)
}

pub(crate) fn inbox_cursor(owner: &str) -> Vec<u8> {
    with(INBOX_CURSOR, &[owner.as_bytes()])
}

pub(crate) fn subscription(id: &Uuid) -> Vec<u8> {
    with(SUBSCRIPTION, &[id.as_bytes()])
}

pub(crate) fn owner_subscriptions(owner: &str) -> Vec<u8> {
    of_owner(OWNER_SUBSCRIPTION, owner)
}

pub(crate) fn owner_subscription(owner: &str, id: &Uuid) -> Vec<u8> {
    let mut k = owner_subscriptions(owner);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn webhook_event(id: &Uuid) -> Vec<u8> {
    with(WEBHOOK_EVENT, &[id.as_bytes()])
}

pub(crate) fn webhook_delivery(id: &Uuid) -> Vec<u8> {
    with(WEBHOOK_DELIVERY, &[id.as_bytes()])
}

pub(crate) fn event_deliveries(event_id: &Uuid) -> Vec<u8> {
    with(EVENT_DELIVERY, &[event_id.as_bytes()])
}

pub(crate) fn event_delivery(event_id: &Uuid, delivery_id: &Uuid) -> Vec<u8> {
    with(
        EVENT_DELIVERY,
        &[event_id.as_bytes(), delivery_id.as_bytes()],
    )
}

/// The UUID at the end of an index key.
pub(crate) fn trailing_uuid(key: &[u8]) -> Option<Uuid> {
    key.len()
        .checked_sub(16)
        .and_then(|start| uuid_value(&key[start..]))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record family has a leading byte of its own. Two features added on separate
    /// branches once picked the same letters; a collision would mix their records silently.
    #[test]
    fn every_family_has_its_own_leading_byte() {
        let families = [
            INTENT,
            EVENT,
            IDEMPOTENCY,
            QUEUE,
            CURSOR,
            API_KEY,
            API_KEY_ID,
            META,
            AGENT,
            DUE,
            DEAD_LETTER,
            THREAD,
            OWNER_THREAD,
            INBOX_CHANGE,
            INBOX_CURSOR,
            SUBSCRIPTION,
            OWNER_SUBSCRIPTION,
            WEBHOOK_EVENT,
            WEBHOOK_DELIVERY,
            EVENT_DELIVERY,
            INTENT_CLAIM,
            THREAD_CHANGE,
            MESH_AGENT,
            MESH_HOLD,
            MESH_EVENT,
            // The single keys: counters under `n`, settings under `y`, metadata under `m`.
            INTENT_COUNT[0],
            RETENTION[0],
        ];
        let distinct: std::collections::BTreeSet<u8> = families.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            families.len(),
            "a leading byte is used twice"
        );
        for key in [
            INTENT_COUNT,
            EVENT_COUNT,
            IDEMPOTENCY_COUNT,
            DEAD_LETTER_COUNT,
            MESH_EVENT_CURSOR,
        ] {
            assert_eq!(key[0], b'n', "{key:?}");
        }
        assert_eq!(
            [LAST_APPLIED[0], MEMBERSHIP[0], RECORDS_MARK[0]],
            [META, META, META]
        );
    }

    #[test]
    fn due_keys_sort_by_time_and_round_up() {
        let t = |ms: i64, extra_ns: u32| {
            chrono::DateTime::from_timestamp_millis(ms).unwrap()
                + chrono::Duration::nanoseconds(i64::from(extra_ns))
        };
        let id = Uuid::from_u128(1);
        let a = due(&t(1_000, 0), DueKind::Reminder, &id);
        let b = due(&t(1_000, 1), DueKind::LeaseExpiry, &id);
        let c = due(&t(2_000, 0), DueKind::LeaseExpiry, &id);
        assert!(a < b && b < c);
        assert_eq!(parse_due(&b).unwrap().at, t(1_001, 0));
        assert_eq!(parse_due(&a).unwrap().kind, DueKind::Reminder);
        assert!(due_after_millis(1_000) > a && due_after_millis(1_000) < b);
        assert_eq!(due_millis(&t(-5_000, 0)), 0);
    }
}
