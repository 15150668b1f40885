//! What a receiver is shown of an intent handed to it, on every path it can come by: the
//! agent stream (SSE), a long-poll receive, and the engine's HTTP push. One shape, so an
//! agent that changes its binding reads the same fields, and a field added for one path is
//! added for all.

use chrono::SecondsFormat;
use intentd_lifecycle::{Intent, Status, Timestamp};
use serde_json::{json, Map, Value};

/// Times as the API writes them: RFC 3339, microseconds, `Z`.
pub fn timestamp(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The type of a delivery (the SSE event name, a push's `type`): `intent.` and the status in
/// lower case.
pub fn delivery_type(status: Status) -> String {
    format!("intent.{}", status.as_str().to_ascii_lowercase())
}

/// How a delivery reached the receiver, which decides the few fields the paths differ in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// From the agent's queue (a stream): `seq` is the queue cursor, not the intent's event
    /// seq, since the SDK resumes `listen()` with the highest `seq` it saw.
    Queued { cursor: u64 },
    /// From the queue, leased to a poller: the cursor and when the lease runs out.
    Leased { cursor: u64 },
    /// Pushed to an HTTP binding: the `type` (the body stands alone, without an SSE event
    /// name) and when the lease runs out. Receivers dedupe on (`intent_id`,
    /// `delivery_attempt`).
    Pushed,
}

/// The delivery of `intent` as the receiver sees it.
pub fn delivery(intent: &Intent, handed: Handed) -> Value {
    let mut v = Map::new();
    if handed == Handed::Pushed {
        v.insert("type".into(), json!(delivery_type(intent.status)));
    }
    v.insert("intent_id".into(), json!(intent.id));
    if let Handed::Queued { cursor } | Handed::Leased { cursor } = handed {
        v.insert("seq".into(), json!(cursor));
    }
    v.insert("status".into(), json!(intent.status.as_str()));
    v.insert("intent_type".into(), json!(intent.intent_type));
    v.insert("correlation_id".into(), json!(intent.correlation_id));
    v.insert("from_agent".into(), json!(intent.from_agent));
    v.insert("to_agent".into(), json!(intent.to_agent));
    v.insert("reply_to".into(), json!(intent.reply_to));
    v.insert("payload".into(), intent.payload.clone());
    v.insert("delivery_attempt".into(), json!(intent.delivery_attempt));
    v.insert(
        "max_delivery_attempts".into(),
        json!(intent.max_delivery_attempts),
    );
    v.insert("created_at".into(), json!(timestamp(&intent.created_at)));
    v.insert(
        "deadline_at".into(),
        json!(intent.deadline_at.as_ref().map(timestamp)),
    );
    if !matches!(handed, Handed::Queued { .. }) {
        v.insert(
            "lease_expires_at".into(),
            json!(intent.lease.as_ref().map(|l| timestamp(&l.expires_at))),
        );
    }
    Value::Object(v)
}
