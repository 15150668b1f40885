//! Outbound webhooks: subscriptions, events and one delivery per (event, subscription).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: Uuid,
    /// Normalized address of the subscriber: only its own events are sent to it.
    pub owner: String,
    pub callback_url: String,
    /// Exact types, or a prefix ending in `*` (`intent.*`).
    pub event_types: Vec<String>,
    pub secret: String,
    pub active: bool,
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl Subscription {
    /// Whether an event of `event_type` goes to this subscription (if it is active).
    pub fn matches(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => pattern == event_type,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub source: String,
    /// Normalized address whose subscriptions receive the event.
    pub owner: String,
    pub payload: Value,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookDeliveryStatus {
    Pending,
    Delivered,
    DeadLettered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Derived from (event, subscription), so the fan-out is deterministic.
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub subscription_id: Uuid,
    /// Push attempts whose outcome was recorded; the CAS token of
    /// `Command::WebhookDeliveryOutcome`.
    pub attempts: u32,
    /// How many times the event was replayed: part of the CAS token beside `attempts`, which a
    /// replay resets to 0. Without it, the outcome of a push still in flight when the replay
    /// applied (attempt 0 of the previous round) would match the reset delivery and settle it
    /// unsent. Absent in records written before it existed: 0.
    #[serde(default)]
    pub replays: u32,
    pub status: WebhookDeliveryStatus,
    /// When the next push is due; set only while pending.
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// How one push of a webhook delivery ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookOutcome {
    Delivered,
    /// `retry_at: None` gives up: the delivery is dead-lettered.
    Failed {
        error: String,
        retry_at: Option<Timestamp>,
    },
}

/// The delivery counters of one event, as the webhooks API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCounters {
    /// Deliveries created by the fan-out.
    pub queued_deliveries: u64,
    /// Delivered plus dead-lettered.
    pub processed_deliveries: u64,
    pub delivered: u64,
    pub pending: u64,
    pub dead_lettered: u64,
}

impl WebhookCounters {
    /// Counted from the deliveries themselves rather than stored, so they can never drift.
    pub fn of<'a>(deliveries: impl IntoIterator<Item = &'a WebhookDelivery>) -> Self {
        let mut c = WebhookCounters::default();
        for d in deliveries {
            c.queued_deliveries += 1;
            match d.status {
                WebhookDeliveryStatus::Pending => c.pending += 1,
                WebhookDeliveryStatus::Delivered => c.delivered += 1,
                WebhookDeliveryStatus::DeadLettered => c.dead_lettered += 1,
            }
        }
        c.processed_deliveries = c.delivered + c.dead_lettered;
        c
    }
}

/// A UUID derived from two others (SHA-256, marked as a version 8 UUID): the id of the
/// delivery of an event to a subscription, or of the webhook event of an intent event. Apply
/// cannot draw random ids, and deriving them makes a replayed apply give the same ids.
pub fn derived_id(a: &Uuid, b: &[u8]) -> Uuid {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(a.as_bytes());
    h.update(b);
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}
