//! The deliveries family, which in intentd is the dead-letter queue: intents that failed
//! because their deliveries were used up (or an HTTP push gave up), and their replay.
//!
//! - `GET /v1/deliveries?status=dead_lettered&limit=N&after=ID`: dead letters, oldest
//!   first, paged by `next_cursor` (pass it back as `after`).
//! - `GET /v1/deliveries/{intent_id}`: any intent's delivery record: the intent, its
//!   delivery attempts (the `intent.delivered` / `intent.lease_expired` events), the last
//!   error and the dead letter, if any.
//! - `POST /v1/deliveries/{intent_id}/replay`: `IntentCommand::Replay`, a NEW intent with the
//!   same type, payload and addresses and fresh attempts (a terminal intent never changes);
//!   answers the new intent's id. Honours `Idempotency-Key`.
//!
//! Deviations from `api.deliveries.*.response.v1.json`, whose hosted platform routes
//! deliveries between organizations: a delivery is an intent, so `delivery_id` is the intent
//! id; `org_id` and `workspace_id` are the nil UUID (intentd has neither); `principal_id` and
//! `route_id` are the receiving agent; `alias` and `idempotency_key` are null;
//! `transport_type` is `http` for HTTP-bound agents and `queue` otherwise. Besides the
//! schema's fields (which says `additionalProperties: false`) a delivery carries
//! `intent_id`, `intent_status`, `delivery_attempt`, `max_delivery_attempts` and
//! `dead_letter`; `get` adds `intent`, `attempts` and `last_error`; `replay` adds
//! `intent_id` and `replayed_from` at the top level. `list` takes only
//! `status=dead_lettered` (the default); the SDK's `org_id`/`workspace_id` are ignored and
//! `principal_id` filters by receiving agent.

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use intentd_lifecycle::agent::is_http;
use intentd_lifecycle::{
    same_address, ApiKey, DeadLetter, Event, Intent, IntentCommand, Status, Timestamp,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{begin_change, load_intent, now, propose_change, read_barrier};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, PathParam, QueryParams};
use crate::openapi::schemas::{DeadLetterAnswer, DeadLettersAnswer, ReplayAnswer};
use crate::validate::path_uuid;
use crate::{views, ApiConfig, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_deliveries, get_delivery, replay_delivery))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/replay", post(replay_delivery))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    principal_id: Option<String>,
}

/// The event types that record a delivery attempt and its end.
const ATTEMPT_EVENTS: &[&str] = &[
    "intent.delivered",
    "intent.lease_expired",
    "intent.acknowledged",
];

/// The delivery status of the schema's enum that describes the intent.
fn delivery_status(intent: &Intent, dead: Option<&DeadLetter>, now: Timestamp) -> &'static str {
    if dead.is_some() || intent.dead_lettered {
        return "dead_lettered";
    }
    match intent.status {
        Status::Created | Status::Submitted if intent.not_before.is_some_and(|t| t > now) => {
            "pending"
        }
        Status::Created | Status::Submitted => "submitted",
        Status::Failed => "failed",
        Status::Canceled | Status::TimedOut if intent.delivery_attempt == 0 => "failed",
        _ => "delivered",
    }
}

/// The last thing that went wrong with the intent's delivery, as text.
fn last_error(intent: &Intent, dead: Option<&DeadLetter>, events: &[Event]) -> Option<String> {
    let from_events = events.iter().rev().find_map(|e| {
        e.details
            .get("error")
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
    });
    from_events
        .or_else(|| intent.error.as_ref().map(Value::to_string))
        .or_else(|| dead.map(|d| d.reason.clone()))
}

fn dead_letter_view(dead: &DeadLetter) -> Value {
    json!({
        "intent_id": dead.intent_id,
        "at": views::timestamp(&dead.at),
        "reason": dead.reason,
        "replayed_as": dead.replayed_as,
    })
}

/// One delivery in the schema's shape plus our fields (see the module docs).
fn delivery_view(
    intent: &Intent,
    dead: Option<&DeadLetter>,
    http: bool,
    error: Option<String>,
    now: Timestamp,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("delivery_id".into(), json!(intent.id));
    m.insert("replay_of_delivery_id".into(), json!(intent.replayed_from));
    m.insert("org_id".into(), json!(Uuid::nil()));
    m.insert("workspace_id".into(), json!(Uuid::nil()));
    m.insert("principal_id".into(), json!(intent.to_agent));
    m.insert("alias".into(), Value::Null);
    m.insert(
        "transport_type".into(),
        json!(if http { "http" } else { "queue" }),
    );
    m.insert("route_id".into(), json!(intent.to_agent));
    m.insert("status".into(), json!(delivery_status(intent, dead, now)));
    m.insert("correlation_id".into(), json!(intent.correlation_id));
    m.insert("idempotency_key".into(), Value::Null);
    m.insert("payload".into(), intent.payload.clone());
    m.insert("error_detail".into(), json!(error));
    m.insert(
        "created_at".into(),
        json!(views::timestamp(&intent.created_at)),
    );
    m.insert(
        "updated_at".into(),
        json!(views::timestamp(&intent.updated_at)),
    );
    m.insert("intent_id".into(), json!(intent.id));
    m.insert("intent_status".into(), json!(intent.status.as_str()));
    m.insert("delivery_attempt".into(), json!(intent.delivery_attempt));
    m.insert(
        "max_delivery_attempts".into(),
        json!(intent.max_delivery_attempts),
    );
    m.insert(
        "dead_letter".into(),
        dead.map_or(Value::Null, dead_letter_view),
    );
    m
}

fn is_http_agent(state: &AppState, to_agent: &str) -> Result<bool, ApiError> {
    let config = state.cluster.reader().agent_config(to_agent)?;
    Ok(is_http(config.as_ref()))
}

/// `GET /v1/deliveries`: the dead letters the caller may see (those of intents it may
/// observe: addressed to it or sent by it), oldest first.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    params(ListQuery),
    responses((status = 200, description = "Dead letters the caller may read", body = DeadLettersAnswer))
)]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    match query.status.as_deref() {
        None | Some("dead_lettered") => {}
        Some(other) => {
            return Err(ApiError::SchemaInvalid(format!(
                "status {other:?}: intentd lists dead letters only (status=dead_lettered)"
            )))
        }
    }
    let after = query
        .after
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(|a| path_uuid("after", a))
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    read_barrier(&state).await?;
    let reader = state.cluster.reader();
    let at = now();
    // The page is filled with what the caller may see, scanning past what it may not, and the
    // cursor is the last delivery on the page: a cursor taken from the raw scan would name
    // the intent id of another agent's dead letter.
    let mut deliveries = Vec::with_capacity(limit);
    let mut next_cursor = None;
    let mut scan_from = after;
    'scan: loop {
        let batch = reader.dead_letters(scan_from, limit)?;
        let exhausted = batch.len() < limit;
        for dead in &batch {
            scan_from = Some(dead.intent_id);
            let Some(intent) = reader.intent(&dead.intent_id)? else {
                continue;
            };
            if caller.key.require_observer_of(&intent).is_err() {
                continue;
            }
            if let Some(p) = &query.principal_id {
                if !same_address(p, &intent.to_agent) {
                    continue;
                }
            }
            let http = is_http_agent(&state, &intent.to_agent)?;
            let error = last_error(&intent, Some(dead), &[]);
            deliveries.push(Value::Object(delivery_view(
                &intent,
                Some(dead),
                http,
                error,
                at,
            )));
            if deliveries.len() == limit {
                next_cursor = Some(intent.id);
                break 'scan;
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(Json(json!({
        "ok": true,
        "deliveries": deliveries,
        "next_cursor": next_cursor,
    })))
}

/// `GET /v1/deliveries/{intent_id}`.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{delivery_id}",
    tag = "deliveries",
    params(("delivery_id" = Uuid, Path, description = "The dead-lettered intent's id")),
    responses((status = 200, description = "An intent's delivery record", body = DeadLetterAnswer))
)]
async fn get_delivery(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("delivery_id", &id)?;
    let intent = load_intent(&state, id, true).await?;
    caller.require_observer_of(&intent)?;
    let reader = state.cluster.reader();
    let dead = reader.dead_letter(&id)?;
    let events = reader.events(&id, 0, state.config.max_events_per_page)?;
    let attempts: Vec<Value> = events
        .iter()
        .filter(|e| ATTEMPT_EVENTS.contains(&e.event_type.as_str()))
        .map(views::event)
        .collect();
    let error = last_error(&intent, dead.as_ref(), &events);
    let http = is_http_agent(&state, &intent.to_agent)?;
    let mut delivery = delivery_view(&intent, dead.as_ref(), http, error.clone(), now());
    delivery.insert("intent".into(), views::intent(&intent));
    delivery.insert("attempts".into(), Value::Array(attempts));
    delivery.insert("last_error".into(), json!(error));
    Ok(Json(json!({ "ok": true, "delivery": delivery })))
}

/// `POST /v1/deliveries/{intent_id}/replay`. The body, if any, is ignored (the SDK sends
/// none). The new intent's id is read back from the dead letter's `replayed_as`, which is
/// right both for a fresh replay and for an idempotent repeat.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{delivery_id}/replay",
    tag = "deliveries",
    params(("delivery_id" = Uuid, Path, description = "The dead-lettered intent's id"), crate::openapi::IdempotencyKeyHeader),
    responses((status = 200, description = "The new intent made from the dead letter", body = ReplayAnswer))
)]
async fn replay_delivery(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("delivery_id", &id)?;
    let change = begin_change(&state, &caller, "replay", id, ApiKey::require_observer_of).await?;
    let at = change.at;
    let command = IntentCommand::Replay {
        intent_id: id,
        new_intent_id: intentd_lifecycle::new_intent_id(),
        at,
    };
    let body = json!({ "replay": id });
    let written = propose_change(&state, change, command, key, &body).await?;
    // The replay was answered by the leader; the dead letter's new state is read here.
    state.cluster.settled().await;
    let reader = state.cluster.reader();
    let dead = reader.dead_letter(&id)?;
    let new_id = dead
        .as_ref()
        .and_then(|d| d.replayed_as)
        .ok_or_else(|| ApiError::Internal(format!("replay of {id} recorded no new intent")))?;
    let new = load_intent(&state, new_id, false).await?;
    tracing::info!(intent_id = %id, new_intent_id = %new_id, replayed = written.replayed, "dead letter replayed");
    let http = is_http_agent(&state, &new.to_agent)?;
    Ok(Json(json!({
        "ok": true,
        "intent_id": new_id,
        "replayed_from": id,
        "applied": !written.replayed,
        "delivery": delivery_view(&new, None, http, None, at),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use intentd_lifecycle::EventType;

    fn dead(intent: &Intent) -> DeadLetter {
        DeadLetter {
            intent_id: intent.id,
            at: intent.updated_at,
            reason: "delivery attempts used up".into(),
            replayed_as: None,
        }
    }

    #[test]
    fn statuses_map_to_the_schema_enum() {
        let now = chrono::Utc::now();
        let mut i = views::tests::sample_intent();
        i.status = Status::Submitted;
        assert_eq!(delivery_status(&i, None, now), "submitted");
        i.not_before = Some(now + chrono::Duration::seconds(9));
        assert_eq!(delivery_status(&i, None, now), "pending");
        i.status = Status::Delivered;
        assert_eq!(delivery_status(&i, None, now), "delivered");
        i.status = Status::Failed;
        assert_eq!(delivery_status(&i, None, now), "failed");
        assert_eq!(delivery_status(&i, Some(&dead(&i)), now), "dead_lettered");
        i.status = Status::TimedOut;
        i.delivery_attempt = 0;
        assert_eq!(delivery_status(&i, None, now), "failed");
    }

    /// Every field the schema requires is there, with the nil org and workspace.
    #[test]
    fn the_view_has_the_schema_fields() {
        let mut i = views::tests::sample_intent();
        i.status = Status::Failed;
        i.replayed_from = Some(Uuid::from_u128(9));
        let d = dead(&i);
        let v = delivery_view(
            &i,
            Some(&d),
            true,
            Some("HTTP 500".into()),
            chrono::Utc::now(),
        );
        for field in [
            "delivery_id",
            "replay_of_delivery_id",
            "org_id",
            "workspace_id",
            "principal_id",
            "alias",
            "transport_type",
            "route_id",
            "status",
            "correlation_id",
            "idempotency_key",
            "payload",
            "error_detail",
            "created_at",
            "updated_at",
        ] {
            assert!(v.contains_key(field), "{field}");
        }
        assert_eq!(v["transport_type"], "http");
        assert_eq!(v["status"], "dead_lettered");
        assert_eq!(v["org_id"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(v["replay_of_delivery_id"], json!(Uuid::from_u128(9)));
        assert_eq!(v["error_detail"], "HTTP 500");
        assert_eq!(v["dead_letter"]["reason"], "delivery attempts used up");
    }

    #[test]
    fn the_last_error_prefers_the_newest_event() {
        let mut i = views::tests::sample_intent();
        let event = |seq, error: Option<&str>| Event {
            intent_id: i.id,
            seq,
            event_type: EventType::LeaseExpired,
            status: Status::Delivered,
            at: i.created_at,
            actor: "system".into(),
            waiting_reason: None,
            handler: None,
            details: error
                .map(|e| {
                    let mut m = Map::new();
                    m.insert("error".into(), json!(e));
                    m
                })
                .unwrap_or_default(),
        };
        let events = vec![
            event(1, Some("timeout")),
            event(2, Some("HTTP 503")),
            event(3, None),
        ];
        assert_eq!(last_error(&i, None, &events).as_deref(), Some("HTTP 503"));
        assert_eq!(last_error(&i, None, &[]), None);
        let d = dead(&i);
        assert_eq!(
            last_error(&i, Some(&d), &[]).as_deref(),
            Some("delivery attempts used up")
        );
        i.error = Some(json!({"code": "x"}));
        assert_eq!(
            last_error(&i, None, &[]).as_deref(),
            Some("{\"code\":\"x\"}")
        );
    }
}
