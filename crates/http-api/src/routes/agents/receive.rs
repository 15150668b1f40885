//! The poll binding's long-poll receive and the explicit acknowledgement (our extensions):
//!
//! - `POST /v1/agents/{address}/intents/receive` `{"max": N (1..=100), "wait_seconds": W
//!   (0..=60)}`: leases up to N deliverable intents of the agent's queue and answers at once
//!   when it got any, else waits up to W seconds for one: `{"ok": true, "deliveries": [...]}`.
//! - `POST /v1/intents/{id}/ack` `{"delivery_attempt": N}`: `Acknowledge` of that attempt.
//!
//! Each lease is a replicated `IntentCommand::Deliver`, a compare-and-set on the delivery
//! attempt, so two receivers racing (on one node or two) can never both lease an intent: the
//! loser's write is rejected and it moves on. The lease lasts the agent's ack timeout; when
//! it runs out the leader's engine expires it and the intent is offered again.
//!
//! The wait is on per-key wake-ups of the state machine, never a sleep loop: a receiver wakes
//! as soon as a batch applied here adds to the agent's queue or changes an intent addressed to
//! it (a lease it could not take may have gone), and writes about other agents never wake it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use intentd_consensus::ConsensusError;
use intentd_lifecycle::agent::ack_timeout_secs;
use intentd_lifecycle::{
    ApiKey, Binding, Command, Intent, IntentCommand, Reply, Status, Timestamp,
};
use intentd_operations::view::Handed;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::directory::agent_address;
use crate::auth::Caller;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::openapi::schemas::{AckRequest, IntentAnswer, ReceiveAnswer};
use crate::routes::{begin_change, now, propose_change};
use crate::validate::{path_uuid, Body};
use crate::{views, ApiConfig, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(receive, ack))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/intents/{id}/ack", post(ack))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

/// The contract's bounds of a receive.
const MAX_BATCH: u64 = 100;
const DEFAULT_BATCH: u64 = 10;
const MAX_WAIT_SECONDS: u64 = 60;

/// A parsed receive body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReceiveRequest {
    max: usize,
    wait: Duration,
}

fn parse_receive(body: &Value) -> Result<ReceiveRequest, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&["max", "wait_seconds"])?;
    let max = b.uint("max", 1)?.unwrap_or(DEFAULT_BATCH);
    if max > MAX_BATCH {
        return Err(ApiError::SchemaInvalid(format!(
            "max must be at most {MAX_BATCH}"
        )));
    }
    let wait = b.uint("wait_seconds", 0)?.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(ApiError::SchemaInvalid(format!(
            "wait_seconds must be at most {MAX_WAIT_SECONDS}"
        )));
    }
    Ok(ReceiveRequest {
        max: max as usize,
        wait: Duration::from_secs(wait),
    })
}

/// Per agent, the queue cursor up to which every entry is known to be dead for good: its
/// intent is gone, past DELIVERED, or offered again at a later cursor. None of these can
/// become deliverable again (statuses never go back to SUBMITTED or DELIVERED, and a
/// re-offer always takes a new cursor), so this node's receives start after the mark
/// instead of rescanning the agent's whole history. Leased entries stop the mark: their
/// lease may run out. The marks are only a hint kept in memory; losing them costs a rescan.
#[derive(Debug, Default)]
pub(crate) struct Marks(Mutex<HashMap<String, u64>>);

impl Marks {
    fn get(&self, agent: &str) -> u64 {
        let marks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        marks.get(agent).copied().unwrap_or(0)
    }

    fn raise(&self, agent: &str, to: u64) {
        let mut marks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mark = marks.entry(agent.to_string()).or_default();
        *mark = (*mark).max(to);
    }
}

/// What a queue entry means for a receiver right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// May be leased now.
    Deliverable,
    /// Not now, perhaps later (leased, or delayed until `not_before`).
    NotYet,
    /// Never again (see [`Marks`]).
    Dead,
}

fn classify(intent: Option<&Intent>, cursor: u64, now: Timestamp) -> Entry {
    let Some(intent) = intent else {
        return Entry::Dead;
    };
    if intent.agent_cursor > cursor {
        return Entry::Dead;
    }
    match intent.status {
        Status::Submitted | Status::Delivered if intent.lease.is_some() => Entry::NotYet,
        Status::Submitted | Status::Delivered => {
            if intent.not_before.is_some_and(|t| t > now) {
                Entry::NotYet
            } else {
                Entry::Deliverable
            }
        }
        _ => Entry::Dead,
    }
}

/// `POST /v1/agents/{address}/intents/receive`.
#[utoipa::path(
    post,
    path = "/v1/agents/{address}/intents/receive",
    tag = "agents",
    params(("address" = String, Path, description = "An agent address (`acme/prod/billing` or `agent://acme/prod/billing`; slashes may be sent as `%2F`)")),
    request_body = crate::openapi::schemas::ReceiveRequest,
    responses((status = 200, description = "What this poll leased, possibly nothing", body = ReceiveAnswer))
)]
pub(crate) async fn receive(
    state: &AppState,
    caller: &Caller,
    ctx: &RequestContext,
    raw_address: &str,
    body: &Value,
) -> Result<Json<Value>, ApiError> {
    let address = agent_address(raw_address)?;
    caller.require_listener_on(&address)?;
    let request = parse_receive(body)?;
    let reader = state.cluster.reader();
    let config = reader.agent_config(&address)?;
    if let Some(binding @ (Binding::Http { .. } | Binding::Inbox | Binding::Internal)) =
        config.as_ref().map(|c| &c.binding)
    {
        // Polling such an agent would race the engine's pushes or take a person's task.
        return Err(ApiError::Conflict {
            code: "binding_mismatch",
            message: format!(
                "agent://{address} receives by {}; receive serves poll and stream agents",
                binding.mode()
            ),
        });
    }
    let lease_secs = ack_timeout_secs(config.as_ref(), state.config.default_ack_timeout_secs);
    let consumer = format!("poll:{}", ctx.request_id);
    let deadline = Instant::now() + request.wait;
    let mut queue = reader.watch_queue(&address);
    let mut addressed = reader.watch_addressed_to(&address);
    loop {
        // Marked seen before the scan, so an entry applied during the scan still wakes us.
        queue.mark_seen();
        addressed.mark_seen();
        let leased = lease_some(state, &address, &consumer, lease_secs, request.max).await?;
        if !leased.is_empty() {
            let deliveries: Vec<Value> = leased.iter().map(|(c, i)| delivery_view(i, *c)).collect();
            tracing::info!(agent = %address, count = deliveries.len(), "intents leased by receive");
            return Ok(Json(json!({ "ok": true, "deliveries": deliveries })));
        }
        let changed = async {
            tokio::select! {
                changed = queue.changed() => changed,
                changed = addressed.changed() => changed,
            }
        };
        let woke = match tokio::time::timeout_at(deadline, changed).await {
            Err(_elapsed) => false,
            Ok(Ok(())) => true,
            Ok(Err(_closed)) => {
                return Err(ApiError::Unavailable {
                    message: "this node is shutting down".into(),
                    retry_after_secs: 1,
                })
            }
        };
        if !woke {
            return Ok(Json(json!({ "ok": true, "deliveries": [] })));
        }
    }
}

/// One scan of the agent's queue: leases up to `max` deliverable intents, in queue order.
/// A write that fails after some leases succeeded ends the scan with what it has, so those
/// leases are not lost to the caller (a failed one is simply offered again later).
async fn lease_some(
    state: &AppState,
    address: &str,
    consumer: &str,
    lease_secs: u64,
    max: usize,
) -> Result<Vec<(u64, Intent)>, ApiError> {
    let reader = state.cluster.reader();
    let mut cursor = state.receive_marks.get(address);
    let mut dead_until = Some(cursor);
    let mut leased: Vec<(u64, Intent)> = Vec::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    'scan: loop {
        let entries = reader.agent_queue(address, cursor, state.config.stream_batch)?;
        if entries.is_empty() {
            break;
        }
        for (entry_cursor, id) in entries {
            cursor = entry_cursor;
            let at = now();
            let intent = reader.intent(&id)?;
            let entry = classify(intent.as_ref(), entry_cursor, at);
            match (entry, dead_until) {
                (Entry::Dead, Some(_)) => dead_until = Some(entry_cursor),
                (Entry::Dead, None) => {}
                _ => dead_until = None,
            }
            let Some(intent) = intent.filter(|_| entry == Entry::Deliverable) else {
                continue;
            };
            if !seen.insert(id) {
                continue;
            }
            match lease(state, &intent, consumer, lease_secs, at).await {
                Ok(Some(after)) => {
                    state.metrics.delivery("poll", "delivered");
                    leased.push((entry_cursor, after));
                }
                Ok(None) => {}
                Err(e) if leased.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, intent_id = %id, "lease failed; answering with the leases so far");
                    break 'scan;
                }
            }
            if leased.len() >= max {
                break 'scan;
            }
        }
    }
    if let Some(mark) = dead_until {
        state.receive_marks.raise(address, mark);
    }
    Ok(leased)
}

/// Proposes the lease of one intent. `None`: another consumer won the race, or the attempts
/// were used up and the delivery failed the intent instead.
async fn lease(
    state: &AppState,
    intent: &Intent,
    consumer: &str,
    lease_secs: u64,
    at: Timestamp,
) -> Result<Option<Intent>, ApiError> {
    let lease_until =
        at + chrono::Duration::seconds(i64::try_from(lease_secs).unwrap_or(i64::MAX / 1000));
    let command = IntentCommand::Deliver {
        intent_id: intent.id,
        expected_attempt: intent.delivery_attempt,
        consumer: consumer.to_string(),
        lease_until,
        at,
    };
    let written = state
        .cluster
        .write(Command::Intent {
            command,
            idempotency: None,
        })
        .await;
    match written {
        Ok(Reply::Intent { intent, .. }) => Ok((intent.status == Status::Delivered
            && intent
                .lease
                .as_ref()
                .is_some_and(|l| l.consumer == consumer))
        .then_some(*intent)),
        Ok(_) => Err(ApiError::Internal(
            "Deliver was answered without an intent".into(),
        )),
        Err(ConsensusError::Rejected(rejection)) => {
            tracing::debug!(intent_id = %intent.id, %rejection, "lease lost a race");
            Ok(None)
        }
        Err(other) => Err(other.into()),
    }
}

/// A leased delivery: the agent-stream shape plus when the lease runs out.
fn delivery_view(intent: &Intent, cursor: u64) -> Value {
    intentd_operations::view::delivery(intent, Handed::Leased { cursor })
}

/// `POST /v1/intents/{id}/ack` `{"delivery_attempt": N}`: the receiver has the intent. A
/// stale attempt (the lease ran out and the intent went to someone else) is a 409.
#[utoipa::path(
    post,
    path = "/v1/intents/{intent_id}/ack",
    tag = "agents",
    params(("intent_id" = Uuid, Path, description = "The intent's id")),
    request_body = Option<AckRequest>,
    responses((status = 200, description = "The acknowledged intent", body = IntentAnswer))
)]
async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let attempt = parse_ack(&body)?;
    let change = begin_change(&state, &caller, "ack", id, ApiKey::require_receiver_of).await?;
    let command = IntentCommand::Acknowledge {
        intent_id: id,
        attempt,
        actor: caller.principal(),
        at: change.at,
    };
    let written = propose_change(&state, change, command, None, &body).await?;
    Ok(Json(json!({
        "ok": true,
        "intent": views::intent(&written.intent),
    })))
}

fn parse_ack(body: &Value) -> Result<u32, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&["delivery_attempt"])?;
    let attempt = b
        .uint("delivery_attempt", 1)?
        .ok_or_else(|| ApiError::SchemaInvalid("delivery_attempt is required".into()))?;
    u32::try_from(attempt)
        .map_err(|_| ApiError::SchemaInvalid("delivery_attempt is too large".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use intentd_lifecycle::Lease;

    #[test]
    fn receive_bodies() {
        assert_eq!(
            parse_receive(&json!({})).unwrap(),
            ReceiveRequest {
                max: 10,
                wait: Duration::ZERO
            }
        );
        assert_eq!(
            parse_receive(&json!({"max": 100, "wait_seconds": 60})).unwrap(),
            ReceiveRequest {
                max: 100,
                wait: Duration::from_secs(60)
            }
        );
        for bad in [
            json!({"max": 0}),
            json!({"max": 101}),
            json!({"wait_seconds": 61}),
            json!({"wait_seconds": -1}),
            json!({"other": 1}),
        ] {
            assert_eq!(
                parse_receive(&bad).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
        assert_eq!(
            parse_receive(&json!({"max": "3"})).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn ack_bodies() {
        assert_eq!(parse_ack(&json!({"delivery_attempt": 2})).unwrap(), 2);
        for bad in [
            json!({}),
            json!({"delivery_attempt": 0}),
            json!({"attempt": 1}),
        ] {
            assert_eq!(
                parse_ack(&bad).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
        assert_eq!(
            parse_ack(&json!({"delivery_attempt": "1"}))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[test]
    fn entries_are_classified() {
        let now = chrono::Utc::now();
        let mut i = views::tests::sample_intent();
        i.agent_cursor = 7;
        i.status = Status::Submitted;
        assert_eq!(classify(Some(&i), 7, now), Entry::Deliverable);
        assert_eq!(
            classify(Some(&i), 3, now),
            Entry::Dead,
            "offered again later"
        );
        assert_eq!(classify(None, 7, now), Entry::Dead);
        i.not_before = Some(now + chrono::Duration::seconds(5));
        assert_eq!(classify(Some(&i), 7, now), Entry::NotYet);
        i.not_before = None;
        i.status = Status::Delivered;
        assert_eq!(
            classify(Some(&i), 7, now),
            Entry::Deliverable,
            "lease expired"
        );
        i.lease = Some(Lease {
            consumer: "poll:x".into(),
            attempt: 1,
            expires_at: now,
        });
        assert_eq!(classify(Some(&i), 7, now), Entry::NotYet);
        for status in [Status::Acknowledged, Status::InProgress, Status::Completed] {
            i.status = status;
            assert_eq!(classify(Some(&i), 7, now), Entry::Dead, "{status}");
        }
    }

    #[test]
    fn marks_only_rise() {
        let marks = Marks::default();
        assert_eq!(marks.get("a"), 0);
        marks.raise("a", 5);
        marks.raise("a", 3);
        assert_eq!(marks.get("a"), 5);
    }
}
