//! Outbound webhooks, as `api.webhooks.*.json` describe them:
//!
//! - `POST /v1/webhooks/subscriptions`: create, or update the owner's subscription with the
//!   same `callback_url` (it keeps its id); `GET` lists them (`include_inactive=true` adds
//!   paused and revoked ones); `DELETE /v1/webhooks/subscriptions/{id}` revokes.
//! - `POST /v1/webhooks/events` `{"event_type", "source", "payload"}`: publishes an event to
//!   the owner's matching subscriptions; `POST /v1/webhooks/events/{event_id}/replay` sends
//!   every delivery of it again. Both answer the delivery counters.
//!
//! Event types are the schemas' enum plus intentd's intent lifecycle types (`intent.completed`
//! ...); a subscription may also name a prefix ending in `*` (`intent.*`). The subscription's
//! `callback_url` passes the same SSRF check as an HTTP agent's URL. Its secret must be one
//! pushes can be signed with (`intentd_delivery::signing::check_secret`); a subscription
//! that names none gets a generated `whsec_` secret, shown once as `subscription.secret` in
//! that upsert's answer (a subscription without a secret could never be pushed to). A
//! secret is kept for signing and never shown again: answers carry `secret_hint` (the last
//! 4 characters).
//!
//! The owner is `owner_agent` (or `x-owner-agent`), else the key's own address; agent keys
//! act only for themselves. `Idempotency-Key` on publish derives the event id from the owner
//! and the key, so a retried publish finds its event instead of sending it twice (a
//! different body under the same key is a 409).

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{delete, post};
use axum::{Json, Router};
use intentd_lifecycle::webhook::derived_id;
use intentd_lifecycle::{Command, Subscription, Timestamp, WebhookCounters, WebhookEvent};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{checked_url, now, read_barrier, write};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, JsonBody, NamedOwner, PathParam, QueryParams};
use crate::openapi::schemas::{
    RevokedSubscriptionAnswer, SubscriptionAnswer, SubscriptionsAnswer, WebhookEventAnswer,
    WebhookEventRequest,
};
use crate::validate::{check_len, path_uuid, Body};
use crate::{views, ApiConfig, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    upsert_subscription,
    list_subscriptions,
    revoke_subscription,
    publish_event,
    replay_event
))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/webhooks/subscriptions",
            post(upsert_subscription).get(list_subscriptions),
        )
        .route(
            "/v1/webhooks/subscriptions/{id}",
            delete(revoke_subscription),
        )
        .route("/v1/webhooks/events", post(publish_event))
        .route("/v1/webhooks/events/{event_id}/replay", post(replay_event))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

/// The event types of the webhooks schemas.
const SCHEMA_EVENT_TYPES: &[&str] = &[
    "inbox.thread_created",
    "inbox.thread_updated",
    "inbox.reply_received",
    "invite.accepted",
    "auth.session_revoked",
];

/// intentd's intent lifecycle event types (`EventType::as_str`), which the engine publishes
/// to the sender's subscriptions.
const INTENT_EVENT_TYPES: &[&str] = &[
    "intent.created",
    "intent.submitted",
    "intent.delivered",
    "intent.acknowledged",
    "intent.in_progress",
    "intent.progress",
    "intent.waiting",
    "intent.resumed",
    "intent.completed",
    "intent.failed",
    "intent.canceled",
    "intent.timed_out",
    "intent.controls_updated",
    "intent.policy_updated",
    "intent.lease_expired",
    "intent.reminder_sent",
    "intent.escalated",
    "intent.step_approved",
    "workflow.step_started",
    "workflow.step_succeeded",
    "workflow.step_failed",
    "workflow.step_retried",
    "intent.delivery_held",
    "intent.delivery_released",
];

/// The mesh's event types (`mesh::MeshEventType`), published to the agent's and the
/// actor's subscriptions.
const MESH_EVENT_TYPES: &[&str] = &["agent.killed", "agent.resumed", "agent.health_changed"];

fn known_event_type(t: &str) -> bool {
    SCHEMA_EVENT_TYPES.contains(&t)
        || INTENT_EVENT_TYPES.contains(&t)
        || MESH_EVENT_TYPES.contains(&t)
}

/// A subscription pattern: a known type, or a prefix ending in `*` that some known type has.
fn check_pattern(pattern: &str) -> Result<(), ApiError> {
    let ok = match pattern.strip_suffix('*') {
        Some(prefix) => SCHEMA_EVENT_TYPES
            .iter()
            .chain(INTENT_EVENT_TYPES)
            .chain(MESH_EVENT_TYPES)
            .any(|t| t.starts_with(prefix)),
        None => known_event_type(pattern),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::SchemaInvalid(format!(
            "event type {pattern:?} is not one of {}, an intent.* lifecycle type, an agent.* mesh type, or a prefix \
             of them ending in *",
            SCHEMA_EVENT_TYPES.join(", ")
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// `api.webhooks.subscriptions.upsert.request.v1.json`, read.
#[derive(Debug, Clone, PartialEq)]
struct SubscriptionRequest {
    callback_url: String,
    event_types: Vec<String>,
    secret: Option<String>,
    active: bool,
    description: Option<String>,
}

fn parse_subscription(body: &Value) -> Result<SubscriptionRequest, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&[
        "callback_url",
        "event_types",
        "secret",
        "active",
        "description",
    ])?;
    let callback_url = b.required_str("callback_url")?;
    check_len("callback_url", callback_url, 8, 2048)?;
    let types = match b.map().get("event_types") {
        None => return Err(ApiError::SchemaInvalid("event_types is required".into())),
        Some(Value::Array(types)) => types,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "event_types must be an array".into(),
            ))
        }
    };
    if types.is_empty() || types.len() > 32 {
        return Err(ApiError::SchemaInvalid(
            "event_types must list 1 to 32 types".into(),
        ));
    }
    let mut event_types: Vec<String> = Vec::with_capacity(types.len());
    for t in types {
        let t = t
            .as_str()
            .ok_or_else(|| ApiError::InvalidRequest("event_types must be strings".into()))?;
        check_pattern(t)?;
        if !event_types.iter().any(|e| e == t) {
            event_types.push(t.to_string());
        }
    }
    let secret = b.str("secret")?;
    if let Some(s) = secret {
        check_len("secret", s, 16, 128)?;
        intentd_delivery::signing::check_secret(s)
            .map_err(|e| ApiError::SchemaInvalid(format!("secret is refused: {e}")))?;
    }
    let description = b.str("description")?;
    if let Some(d) = description {
        check_len("description", d, 0, 255)?;
    }
    Ok(SubscriptionRequest {
        callback_url: callback_url.to_string(),
        event_types,
        secret: secret.map(str::to_string),
        active: b.bool("active")?.unwrap_or(true),
        description: description.map(str::to_string),
    })
}

/// The last 4 characters of a secret; none when the subscription has no secret.
fn secret_hint(secret: &str) -> Option<String> {
    let n = secret.chars().count();
    (n > 0).then(|| secret.chars().skip(n.saturating_sub(4)).collect())
}

/// A subscription as the schemas show it (`additionalProperties: false`): never the secret.
pub(crate) fn subscription_view(s: &Subscription) -> Value {
    json!({
        "subscription_id": s.id,
        "owner_agent": format!("agent://{}", s.owner),
        "callback_url": s.callback_url,
        "event_types": s.event_types,
        "active": s.active && s.revoked_at.is_none(),
        "description": s.description,
        "created_at": views::timestamp(&s.created_at),
        "updated_at": views::timestamp(&s.updated_at),
        "revoked_at": s.revoked_at.as_ref().map(views::timestamp),
        "secret_hint": secret_hint(&s.secret),
    })
}

/// The subscription an upsert proposes: the existing one of the same (owner, URL) keeps its
/// id, `created_at` and (unless a new one is given) its secret; a revoked one comes back.
/// Without a secret from either, one is generated: the second value, to be shown once.
fn upserted(
    request: SubscriptionRequest,
    owner: String,
    existing: Option<&Subscription>,
    at: Timestamp,
) -> (Subscription, Option<String>) {
    let kept = existing.map(|e| e.secret.clone()).filter(|s| !s.is_empty());
    let (secret, generated) = match request.secret.or(kept) {
        Some(secret) => (secret, None),
        None => {
            let secret = intentd_delivery::signing::generate_secret();
            (secret.clone(), Some(secret))
        }
    };
    let subscription = Subscription {
        id: existing.map_or_else(Uuid::new_v4, |e| e.id),
        owner,
        callback_url: request.callback_url,
        event_types: request.event_types,
        secret,
        active: request.active,
        description: request.description,
        created_at: existing.map_or(at, |e| e.created_at),
        updated_at: at,
        revoked_at: None,
    };
    (subscription, generated)
}

/// `POST /v1/webhooks/subscriptions`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/subscriptions",
    tag = "webhooks",
    params(crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    request_body = crate::openapi::schemas::SubscriptionRequest,
    responses((status = 200, description = "The subscription (with `secret` once when it was generated)", body = SubscriptionAnswer))
)]
async fn upsert_subscription(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let owner = caller.owner(named.as_deref())?;
    let request = parse_subscription(&body)?;
    checked_url(&state, "callback_url", &request.callback_url)?;
    read_barrier(&state).await?;
    let reader = state.cluster.reader();
    let same_url = |s: &Subscription| s.callback_url == request.callback_url;
    let existing = reader.subscriptions(&owner)?.into_iter().find(same_url);
    let url = request.callback_url.clone();
    let (subscription, generated) = upserted(request, owner.clone(), existing.as_ref(), now());
    write(&state, Command::UpsertSubscription { subscription }).await?;
    // Read back by (owner, URL): a concurrent upsert of the same URL may have won the id.
    let stored = reader
        .subscriptions(&owner)?
        .into_iter()
        .find(|s| s.callback_url == url)
        .ok_or_else(|| ApiError::Internal("an upserted subscription is missing".into()))?;
    tracing::info!(subscription_id = %stored.id, owner = %owner, "webhook subscription upserted");
    let mut view = subscription_view(&stored);
    // Shown only if it is the secret stored: a concurrent upsert may have won with another.
    if let Some(secret) = generated.filter(|g| *g == stored.secret) {
        view["secret"] = json!(secret);
    }
    Ok(Json(json!({ "ok": true, "subscription": view })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    include_inactive: Option<bool>,
}

/// `GET /v1/webhooks/subscriptions`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/subscriptions",
    tag = "webhooks",
    params(crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, ListQuery),
    responses((status = 200, description = "The owner's subscriptions", body = SubscriptionsAnswer))
)]
async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let owner = caller.owner(named.as_deref())?;
    let all = query.include_inactive.unwrap_or(false);
    read_barrier(&state).await?;
    let subscriptions: Vec<Value> = state
        .cluster
        .reader()
        .subscriptions(&owner)?
        .iter()
        .filter(|s| all || (s.active && s.revoked_at.is_none()))
        .map(subscription_view)
        .collect();
    Ok(Json(json!({ "ok": true, "subscriptions": subscriptions })))
}

/// Whether the caller may reach what `owner` owns, given the owner it named: a mismatch with
/// the named owner is "not found" (other owners' ids are not disclosed), an agent key
/// reaching past its own address is forbidden.
fn reachable(caller: &Caller, named: Option<&str>, owner: &str) -> Result<bool, ApiError> {
    if let Some(named) = named {
        if caller.owner(Some(named))? != owner {
            return Ok(false);
        }
    }
    if !caller.may_act_as(owner) {
        return Err(ApiError::Forbidden(format!(
            "this key may not act for agent://{owner}"
        )));
    }
    Ok(true)
}

/// `DELETE /v1/webhooks/subscriptions/{id}`: revokes; revoking again answers the first
/// revocation's time.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/subscriptions/{subscription_id}",
    tag = "webhooks",
    params(("subscription_id" = Uuid, Path, description = "The subscription"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    responses((status = 200, description = "Revoked", body = RevokedSubscriptionAnswer))
)]
async fn revoke_subscription(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("subscription_id", &id)?;
    read_barrier(&state).await?;
    let reader = state.cluster.reader();
    let not_found = || ApiError::NotFound(format!("webhook subscription {id} not found"));
    let subscription = reader.subscription(&id)?.ok_or_else(not_found)?;
    if !reachable(&caller, named.as_deref(), &subscription.owner)? {
        return Err(not_found());
    }
    let revoked_at = match subscription.revoked_at {
        Some(at) => at,
        None => {
            let at = now();
            write(&state, Command::RevokeSubscription { id, at }).await?;
            reader
                .subscription(&id)?
                .and_then(|s| s.revoked_at)
                .unwrap_or(at)
        }
    };
    Ok(Json(json!({
        "ok": true,
        "subscription_id": id,
        "revoked_at": views::timestamp(&revoked_at),
    })))
}

// ---------------------------------------------------------------------------------------------
// Events

/// `api.webhooks.events.request.v1.json`, read: (event_type, source, payload).
fn parse_event(body: &Value) -> Result<(String, String, Map<String, Value>), ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&["event_type", "source", "payload"])?;
    let event_type = b.required_str("event_type")?;
    if !known_event_type(event_type) {
        return Err(ApiError::SchemaInvalid(format!(
            "event_type {event_type:?} is not one of {} or an intent.* lifecycle type",
            SCHEMA_EVENT_TYPES.join(", ")
        )));
    }
    let source = b.required_str("source")?;
    check_len("source", source, 2, 100)?;
    let payload = b.required_object("payload")?;
    Ok((event_type.to_string(), source.to_string(), payload.clone()))
}

/// Ids of events published with an `Idempotency-Key` are derived from (owner, key) under
/// this namespace, so a retry names the same event.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_7b0e_9d55_4d4b_8f0c_2f1e_a4c3_6b21);

fn event_id_for(owner: &str, key: Option<&str>) -> Uuid {
    match key {
        Some(key) => derived_id(&EVENT_ID_NAMESPACE, format!("{owner}\u{0}{key}").as_bytes()),
        None => Uuid::new_v4(),
    }
}

fn counters(state: &AppState, event_id: &Uuid) -> Result<WebhookCounters, ApiError> {
    let deliveries = state.cluster.reader().webhook_deliveries(event_id)?;
    Ok(WebhookCounters::of(&deliveries))
}

fn put_counters(m: &mut Map<String, Value>, c: &WebhookCounters) {
    m.insert("queued_deliveries".into(), json!(c.queued_deliveries));
    m.insert("processed_deliveries".into(), json!(c.processed_deliveries));
    m.insert("delivered".into(), json!(c.delivered));
    m.insert("pending".into(), json!(c.pending));
    m.insert("dead_lettered".into(), json!(c.dead_lettered));
}

/// `api.webhooks.events.response.v1.json`.
fn event_answer(event: &WebhookEvent, c: &WebhookCounters) -> Value {
    let mut m = Map::new();
    m.insert("ok".into(), json!(true));
    m.insert("accepted_at".into(), json!(views::timestamp(&event.at)));
    m.insert("event_type".into(), json!(event.event_type));
    m.insert("source".into(), json!(event.source));
    m.insert(
        "owner_agent".into(),
        json!(format!("agent://{}", event.owner)),
    );
    m.insert("event_id".into(), json!(event.event_id));
    put_counters(&mut m, c);
    Value::Object(m)
}

/// `POST /v1/webhooks/events`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/events",
    tag = "webhooks",
    params(crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, crate::openapi::IdempotencyKeyHeader),
    request_body = WebhookEventRequest,
    responses((status = 200, description = "The event and its delivery counters", body = WebhookEventAnswer))
)]
async fn publish_event(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let owner = caller.owner(named.as_deref())?;
    let (event_type, source, payload) = parse_event(&body)?;
    let event_id = event_id_for(&owner, key.as_deref());
    let reader = state.cluster.reader();
    if key.is_some() {
        read_barrier(&state).await?;
        if let Some(previous) = reader.webhook_event(&event_id)? {
            let same = previous.event_type == event_type
                && previous.source == source
                && previous.payload == Value::Object(payload);
            if !same {
                return Err(ApiError::Conflict {
                    code: "idempotency_conflict",
                    message: "idempotency key reused with a different request".into(),
                });
            }
            return Ok(Json(event_answer(&previous, &counters(&state, &event_id)?)));
        }
    }
    let event = WebhookEvent {
        event_id,
        event_type,
        source,
        owner,
        payload: Value::Object(payload),
        at: now(),
    };
    let command = Command::PublishEvent {
        event: event.clone(),
    };
    match write(&state, command).await {
        Ok(_) => {}
        // A concurrent retry with the same key published it first: answer that event.
        Err(ApiError::Conflict {
            code: "already_exists",
            ..
        }) if key.is_some() => {
            if let Some(previous) = reader.webhook_event(&event_id)? {
                if previous.payload == event.payload && previous.event_type == event.event_type {
                    return Ok(Json(event_answer(&previous, &counters(&state, &event_id)?)));
                }
            }
            return Err(ApiError::Conflict {
                code: "idempotency_conflict",
                message: "idempotency key reused with a different request".into(),
            });
        }
        Err(e) => return Err(e),
    }
    let c = counters(&state, &event_id)?;
    tracing::info!(%event_id, event_type = %event.event_type, queued = c.queued_deliveries, "webhook event published");
    Ok(Json(event_answer(&event, &c)))
}

/// `POST /v1/webhooks/events/{event_id}/replay`: every delivery of the event back to
/// pending, attempts reset, due now. Answers `api.webhooks.events.replay.response.v1.json`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/events/{event_id}/replay",
    tag = "webhooks",
    params(("event_id" = Uuid, Path, description = "The event"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    responses((status = 200, description = "Every delivery of the event pending again", body = WebhookEventAnswer))
)]
async fn replay_event(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let event_id = path_uuid("event_id", &id)?;
    read_barrier(&state).await?;
    let not_found = || ApiError::NotFound(format!("webhook event {event_id} not found"));
    let event = state
        .cluster
        .reader()
        .webhook_event(&event_id)?
        .ok_or_else(not_found)?;
    if !reachable(&caller, named.as_deref(), &event.owner)? {
        return Err(not_found());
    }
    let at = now();
    write(&state, Command::ReplayWebhookEvent { event_id, at }).await?;
    let c = counters(&state, &event_id)?;
    let mut m = Map::new();
    m.insert("ok".into(), json!(true));
    m.insert("event_id".into(), json!(event_id));
    m.insert(
        "owner_agent".into(),
        json!(format!("agent://{}", event.owner)),
    );
    m.insert("event_type".into(), json!(event.event_type));
    put_counters(&mut m, &c);
    m.insert("replayed_at".into(), json!(views::timestamp(&at)));
    Ok(Json(Value::Object(m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use intentd_lifecycle::EventType;

    fn valid() -> Value {
        json!({
            "callback_url": "https://hooks.example.com/axme",
            "event_types": ["inbox.thread_created", "intent.*", "intent.completed"],
        })
    }

    #[test]
    fn subscription_bodies() {
        let r = parse_subscription(&valid()).unwrap();
        assert_eq!(r.event_types.len(), 3);
        assert!(r.active && r.secret.is_none());
        let mut with_dupes = valid();
        with_dupes["event_types"] = json!(["intent.failed", "intent.failed"]);
        assert_eq!(
            parse_subscription(&with_dupes).unwrap().event_types.len(),
            1
        );
        let cases: Vec<(&str, Value, &str)> = vec![
            ("event_types", json!([]), "schema_invalid"),
            ("event_types", json!(["intent.exploded"]), "schema_invalid"),
            ("event_types", json!(["billing.*"]), "schema_invalid"),
            ("event_types", json!("intent.*"), "invalid_request"),
            ("event_types", json!([1]), "invalid_request"),
            ("callback_url", json!("http:/"), "schema_invalid"),
            ("secret", json!("short"), "schema_invalid"),
            (
                "secret",
                json!("whsec_not base64, not at all"),
                "schema_invalid",
            ),
            (
                "secret",
                json!("whsec_AAAAAAAAAAAAAAAAAAAA"),
                "schema_invalid",
            ),
            ("secret", json!("0123456789abcdef\u{0}"), "schema_invalid"),
            ("secret", json!(7), "invalid_request"),
            ("active", json!("yes"), "invalid_request"),
            ("description", json!("d".repeat(256)), "schema_invalid"),
            ("owner", json!("x"), "schema_invalid"),
        ];
        for (field, value, code) in cases {
            let mut body = valid();
            body[field] = value.clone();
            assert_eq!(
                parse_subscription(&body).unwrap_err().code(),
                code,
                "{field}: {value}"
            );
        }
    }

    #[test]
    fn views_never_show_the_secret() {
        let at = chrono::DateTime::UNIX_EPOCH;
        let mut request = parse_subscription(&valid()).unwrap();
        request.secret = Some("whsec_abcdefghijklmnop1234".into());
        let (s, generated) = upserted(request, "acme/prod/billing".into(), None, at);
        assert_eq!(generated, None);
        let v = subscription_view(&s);
        assert_eq!(v["secret_hint"], "1234");
        assert!(!v.to_string().contains("abcdefgh"));
        assert_eq!(v["owner_agent"], "agent://acme/prod/billing");
        assert_eq!(v["revoked_at"], Value::Null);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "subscription_id",
                "owner_agent",
                "callback_url",
                "event_types",
                "active",
                "description",
                "created_at",
                "updated_at",
                "revoked_at",
                "secret_hint"
            ]
        );
        let mut no_secret = s.clone();
        no_secret.secret = String::new();
        assert_eq!(subscription_view(&no_secret)["secret_hint"], Value::Null);
    }

    #[test]
    fn an_upsert_keeps_the_existing_identity_and_secret() {
        let t0 = chrono::DateTime::UNIX_EPOCH;
        let t1 = t0 + chrono::Duration::seconds(60);
        let mut first = parse_subscription(&valid()).unwrap();
        first.secret = Some("0123456789abcdef".into());
        let (mut old, _) = upserted(first, "o/w/a".into(), None, t0);
        old.revoked_at = Some(t0);
        let (new, generated) = upserted(
            parse_subscription(&valid()).unwrap(),
            "o/w/a".into(),
            Some(&old),
            t1,
        );
        assert_eq!((new.id, new.created_at, new.updated_at), (old.id, t0, t1));
        assert_eq!(new.secret, "0123456789abcdef");
        assert_eq!(generated, None);
        assert_eq!(new.revoked_at, None);
    }

    #[test]
    fn a_subscription_without_a_secret_gets_a_generated_one() {
        let at = chrono::DateTime::UNIX_EPOCH;
        let (s, generated) = upserted(
            parse_subscription(&valid()).unwrap(),
            "o/w/a".into(),
            None,
            at,
        );
        let generated = generated.expect("a generated secret");
        assert_eq!(s.secret, generated);
        assert!(generated.starts_with("whsec_"), "{generated}");
        assert_eq!(intentd_delivery::signing::check_secret(&generated), Ok(()));
        // One stored before secrets were required, with none, gets one on its next upsert.
        let mut legacy = s.clone();
        legacy.secret = String::new();
        let (again, fresh) = upserted(
            parse_subscription(&valid()).unwrap(),
            "o/w/a".into(),
            Some(&legacy),
            at,
        );
        assert_eq!(Some(again.secret), fresh);
    }

    #[test]
    fn event_bodies_and_ids() {
        let (t, s, p) = parse_event(&json!({
            "event_type": "intent.completed", "source": "ci", "payload": {"a": 1}
        }))
        .unwrap();
        assert_eq!(
            (t.as_str(), s.as_str(), p["a"].clone()),
            ("intent.completed", "ci", json!(1))
        );
        for bad in [
            json!({"event_type": "intent.*", "source": "ci", "payload": {}}),
            json!({"event_type": "nope", "source": "ci", "payload": {}}),
            json!({"event_type": "invite.accepted", "source": "c", "payload": {}}),
            json!({"event_type": "invite.accepted", "source": "ci"}),
        ] {
            assert_eq!(
                parse_event(&bad).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
        assert_eq!(
            parse_event(&json!({"event_type": "invite.accepted", "source": "ci", "payload": []}))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            event_id_for("a/b/c", Some("k")),
            event_id_for("a/b/c", Some("k"))
        );
        assert_ne!(
            event_id_for("a/b/c", Some("k")),
            event_id_for("a/b/d", Some("k"))
        );
        assert_ne!(event_id_for("a/b/c", None), event_id_for("a/b/c", None));
    }

    /// Fails to compile when an event type is added, so the list here is revisited.
    #[test]
    fn every_lifecycle_event_type_is_subscribable() {
        let name = |e: EventType| match e {
            EventType::Created
            | EventType::Submitted
            | EventType::Delivered
            | EventType::Acknowledged
            | EventType::InProgress
            | EventType::Progress
            | EventType::Waiting
            | EventType::Resumed
            | EventType::Completed
            | EventType::Failed
            | EventType::Canceled
            | EventType::TimedOut
            | EventType::ControlsUpdated
            | EventType::PolicyUpdated
            | EventType::LeaseExpired
            | EventType::ReminderSent
            | EventType::Escalated
            | EventType::StepApproved
            | EventType::WorkflowStepStarted
            | EventType::WorkflowStepSucceeded
            | EventType::WorkflowStepFailed
            | EventType::WorkflowStepRetried => e.as_str(),
            EventType::DeliveryHeld | EventType::DeliveryReleased => e.as_str(),
        };
        for e in [
            EventType::Created,
            EventType::Submitted,
            EventType::Delivered,
            EventType::Acknowledged,
            EventType::InProgress,
            EventType::Progress,
            EventType::Waiting,
            EventType::Resumed,
            EventType::Completed,
            EventType::Failed,
            EventType::Canceled,
            EventType::TimedOut,
            EventType::ControlsUpdated,
            EventType::PolicyUpdated,
            EventType::LeaseExpired,
            EventType::ReminderSent,
            EventType::Escalated,
            EventType::StepApproved,
            EventType::WorkflowStepStarted,
            EventType::WorkflowStepSucceeded,
            EventType::WorkflowStepFailed,
            EventType::WorkflowStepRetried,
            EventType::DeliveryHeld,
            EventType::DeliveryReleased,
        ] {
            assert!(INTENT_EVENT_TYPES.contains(&name(e)), "{}", e.as_str());
        }
        assert_eq!(INTENT_EVENT_TYPES.len(), 24);
    }
}
