//! The mesh (fleet governance), what the SDK's `client.mesh` calls:
//! `POST /v1/mesh/heartbeat`, `GET /v1/mesh/agents?limit&health`,
//! `GET /v1/mesh/agents/{address}`, `POST /v1/mesh/agents/{address}/kill` and `/resume`
//! (admin), `GET /v1/mesh/events?limit&event_type&since`, and for consoles
//! `GET /v1/mesh/events/stream?since` (SSE, woken only by mesh writes).
//!
//! Heartbeats: a heartbeat without metrics is proposed only when the agent's last
//! replicated one is older than `mesh::HEARTBEAT_COALESCE_SECS`; one with metrics always is
//! (metrics are data, and a heartbeat is answered only once what it carries is committed).
//! Health is derived when read, from replicated facts (kill, last heartbeat, folded metrics,
//! dead letters, the last committed health) and this node's open streams of the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use intentd_lifecycle::mesh::{
    Health, HeartbeatMetrics, MeshAgent, MeshEvent, MeshEventType, HEARTBEAT_COALESCE_SECS,
    UNREACHABLE_AFTER_SECS,
};
use intentd_lifecycle::{Command, IntentCommand, Reply, Role, Status, Timestamp};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::{AdminCaller, Caller};
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::openapi::schemas::{
    HeartbeatAnswer, HeartbeatRequest, KillRequest, MeshAgentAnswer, MeshAgentsAnswer,
    MeshEventsAnswer,
};
use crate::routes::agents::{agent_address, binding_view, known_agents};
use crate::routes::{now, write};
use crate::{sse, views, ApiConfig, AppState};

/// How many of an agent's newest queue entries the counts of leases and backlog look at, so
/// that a listing costs the same for an agent with a long history.
const QUEUE_WINDOW: u64 = 10_000;
/// Mesh events a detail answer carries.
const RECENT_EVENTS: usize = 20;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    heartbeat,
    list_agents,
    get_agent,
    kill,
    resume,
    list_events,
    stream_events
))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/mesh/heartbeat", post(heartbeat))
        .route("/v1/mesh/agents", get(list_agents))
        .route("/v1/mesh/agents/{*rest}", get(get_agent).post(agent_post))
        .route("/v1/mesh/events", get(list_events))
        .route("/v1/mesh/events/stream", get(stream_events))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

/// An optional JSON object body: the SDK sends none when it has nothing to say.
fn optional_body(bytes: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::SchemaInvalid(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::InvalidRequest(format!("malformed JSON: {e}"))),
    }
}

fn only_fields(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::SchemaInvalid(format!(
            "unknown field {k:?}; allowed: {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn parse_metrics(v: &Value) -> Result<HeartbeatMetrics, ApiError> {
    let m = v
        .as_object()
        .ok_or_else(|| ApiError::SchemaInvalid("metrics must be an object".into()))?;
    only_fields(
        m,
        &[
            "intents_total",
            "intents_succeeded",
            "intents_failed",
            "avg_latency_ms",
            "cost_usd",
        ],
    )?;
    let count = |k: &str| -> Result<u64, ApiError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| {
                ApiError::SchemaInvalid(format!("metrics.{k} must be a non-negative integer"))
            }),
        }
    };
    let number = |k: &str| -> Result<Option<f64>, ApiError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::SchemaInvalid(format!("metrics.{k} must be a non-negative number"))
                }),
        }
    };
    Ok(HeartbeatMetrics {
        intents_total: count("intents_total")?,
        intents_succeeded: count("intents_succeeded")?,
        intents_failed: count("intents_failed")?,
        avg_latency_ms: number("avg_latency_ms")?,
        cost_usd: number("cost_usd")?,
    })
}

#[utoipa::path(
    post,
    path = "/v1/mesh/heartbeat",
    tag = "mesh",
    request_body = Option<HeartbeatRequest>,
    responses((status = 200, description = "Recorded (`replicated` false when coalesced)", body = HeartbeatAnswer))
)]
async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Role::Agent { address } = &caller.key.role else {
        return Err(ApiError::Forbidden(
            "a heartbeat needs an agent key: it reports the liveness of the key's agent".into(),
        ));
    };
    let address = address.path().to_string();
    let body = optional_body(&body)?;
    only_fields(&body, &["metrics"])?;
    let metrics = match body.get("metrics") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_metrics(v)?),
    };
    let at = now();
    let known = state.cluster.reader().mesh_agent(&address)?;
    let recent = known
        .as_ref()
        .and_then(|a| a.last_heartbeat_at)
        .is_some_and(|t| at - t < chrono::Duration::seconds(HEARTBEAT_COALESCE_SECS));
    let (agent, replicated) = if metrics.is_none() && recent {
        (known.unwrap_or_default(), false)
    } else {
        let command = Command::MeshHeartbeat {
            address: address.clone(),
            metrics,
            event_id: Uuid::now_v7(),
            at,
        };
        (mesh_reply(write(&state, command).await?)?, true)
    };
    let view = agent_view(&state, &caller, &address, Some(&agent))?;
    Ok(Json(json!({
        "ok": true,
        "address": format!("agent://{address}"),
        "received_at": views::timestamp(&at),
        "replicated": replicated,
        "health": view["health"],
        "agent": view,
    })))
}

fn mesh_reply(reply: Reply) -> Result<MeshAgent, ApiError> {
    match reply {
        Reply::Mesh(agent) => Ok(*agent),
        _ => Err(ApiError::Internal(
            "a mesh command was answered without the agent".into(),
        )),
    }
}

/// What one node knows of an agent's deliveries: leases in flight, intents waiting, dead
/// letters, from the newest `QUEUE_WINDOW` entries of its queue.
#[derive(Default)]
struct Deliveries {
    in_flight: u64,
    backlog: u64,
    dead_letters: u64,
    leased: Vec<(Uuid, u32, String)>,
}

fn deliveries_of(state: &AppState, address: &str) -> Result<Deliveries, ApiError> {
    let reader = state.cluster.reader();
    let last = reader
        .agents()?
        .into_iter()
        .find(|a| a.address == address)
        .map_or(0, |a| a.last_cursor);
    let mut seen = BTreeSet::new();
    let mut out = Deliveries::default();
    let entries = reader.agent_queue(address, last.saturating_sub(QUEUE_WINDOW), usize::MAX)?;
    for (_, id) in entries {
        if !seen.insert(id) {
            continue;
        }
        let Some(intent) = reader.intent(&id)? else {
            continue;
        };
        if intent.dead_lettered {
            out.dead_letters += 1;
        }
        if intent.status.is_terminal() {
            continue;
        }
        match &intent.lease {
            Some(lease) => {
                out.in_flight += 1;
                out.leased
                    .push((intent.id, lease.attempt, lease.consumer.clone()));
            }
            None if matches!(intent.status, Status::Submitted | Status::Delivered) => {
                out.backlog += 1
            }
            None => {}
        }
    }
    Ok(out)
}

/// The health the API reports: killed wins; then failed pushes in a row (the binding is how
/// intents reach an HTTP agent: enough of them make it degraded, then unreachable); then an
/// agent with no sign of life (no heartbeat within `UNREACHABLE_AFTER_SECS`, no stream open
/// on this node, and not reached by pushes) is unreachable; a live one is degraded if the
/// cluster last judged it so or most of the intents it reported failed, else healthy.
fn health_of(
    agent: Option<&MeshAgent>,
    open_streams: usize,
    pushed: bool,
    now: Timestamp,
) -> (Health, Option<Timestamp>) {
    let last_seen = agent.and_then(|a| a.last_heartbeat_at);
    let Some(agent) = agent else {
        let h = if open_streams > 0 || pushed {
            Health::Healthy
        } else {
            Health::Unreachable
        };
        return (h, None);
    };
    if agent.killed {
        return (Health::Killed, last_seen);
    }
    if let Some((health, _)) = agent.push_health() {
        return (health, last_seen);
    }
    let alive = open_streams > 0
        || pushed
        || last_seen.is_some_and(|t| now - t < chrono::Duration::seconds(UNREACHABLE_AFTER_SECS));
    if !alive {
        return (Health::Unreachable, last_seen);
    }
    if agent.health == Some(Health::Degraded) || agent.metrics.failing() {
        (Health::Degraded, last_seen)
    } else {
        (Health::Healthy, last_seen)
    }
}

fn agent_view(
    state: &AppState,
    caller: &Caller,
    address: &str,
    agent: Option<&MeshAgent>,
) -> Result<Value, ApiError> {
    let reader = state.cluster.reader();
    let config = reader.agent_config(address)?;
    let open_streams = state.config.stream_consumers.open_streams(address);
    let pushed = intentd_lifecycle::agent::is_http(config.as_ref());
    let (health, last_seen) = health_of(agent, open_streams, pushed, now());
    let d = deliveries_of(state, address)?;
    let ts = |t: Option<Timestamp>| t.map(|t| views::timestamp(&t));
    let metrics = agent.map(|a| &a.metrics);
    Ok(json!({
        "address": format!("agent://{address}"),
        "address_id": address,
        "health": health.as_str(),
        "killed": agent.is_some_and(|a| a.killed),
        "killed_at": ts(agent.and_then(|a| a.killed_at)),
        "killed_by": agent.and_then(|a| a.killed_by.clone()),
        "kill_reason": agent.and_then(|a| a.kill_reason.clone()),
        "resumed_at": ts(agent.and_then(|a| a.resumed_at)),
        "last_seen_at": ts(last_seen),
        "last_heartbeat_at": ts(agent.and_then(|a| a.last_heartbeat_at)),
        "heartbeats": agent.map_or(0, |a| a.heartbeats),
        "binding": binding_view(config.as_ref(), caller.may_act_as(address)),
        "open_streams": open_streams,
        "in_flight_leases": d.in_flight,
        "backlog": d.backlog,
        "held": reader.mesh_held(address),
        "dead_letters": d.dead_letters,
        "push_failures": agent.map_or(0, |a| a.push_failures),
        "last_push_error": agent.and_then(|a| a.last_push_error.clone()),
        "metrics": {
            "intents_total": metrics.map_or(0, |m| m.intents_total),
            "intents_succeeded": metrics.map_or(0, |m| m.intents_succeeded),
            "intents_failed": metrics.map_or(0, |m| m.intents_failed),
            "avg_latency_ms": metrics.and_then(|m| m.avg_latency_ms),
            "cost_usd": metrics.map_or(0.0, |m| m.cost_usd),
            "reports": metrics.map_or(0, |m| m.reports),
        },
    }))
}

fn event_view(e: &MeshEvent) -> Value {
    json!({
        "event_id": e.event_id,
        "seq": e.seq,
        "event_type": e.event_type.as_str(),
        "address": format!("agent://{}", e.address),
        "actor": e.actor,
        "at": views::timestamp(&e.at),
        "from_health": e.from_health.map(Health::as_str),
        "to_health": e.to_health.map(Health::as_str),
        "reason": e.reason,
        "released": e.released,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    limit: Option<String>,
    health: Option<String>,
}

fn limit_param(raw: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(ApiError::InvalidRequest(format!(
                "limit must be an integer from 1 to 1000, got {s:?}"
            ))),
        },
    }
}

/// Every agent the cluster knows (the directory's agents and any with a mesh record) that
/// the caller may see: admin keys see all, other keys their own agent.
#[utoipa::path(
    get,
    operation_id = "mesh_list_agents",
    path = "/v1/mesh/agents",
    tag = "mesh",
    params(ListParams),
    responses((status = 200, description = "The fleet", body = MeshAgentsAnswer))
)]
async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_param(params.limit.as_deref(), 100)?;
    let wanted = match params.health.as_deref() {
        None | Some("") => None,
        Some(h) => Some(Health::parse(h).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "health must be one of healthy, degraded, unreachable, killed; got {h:?}"
            ))
        })?),
    };
    let reader = state.cluster.reader();
    let mut records: BTreeMap<String, Option<MeshAgent>> = known_agents(&state)?
        .into_iter()
        .map(|a| (a.address, None))
        .collect();
    for m in reader.mesh_agents()? {
        records.insert(m.address.clone(), Some(m));
    }
    let mut agents = Vec::new();
    for (address, record) in &records {
        if !caller.may_act_as(address) {
            continue;
        }
        let view = agent_view(&state, &caller, address, record.as_ref())?;
        if wanted.is_some_and(|h| view["health"] != h.as_str()) {
            continue;
        }
        agents.push(view);
        if agents.len() == limit {
            break;
        }
    }
    Ok(Json(
        json!({ "ok": true, "agents": agents, "count": agents.len() }),
    ))
}

fn visible_address(caller: &Caller, raw: &str) -> Result<String, ApiError> {
    let address = agent_address(raw)?;
    if !caller.may_act_as(&address) {
        return Err(ApiError::Forbidden(format!(
            "this key may not see agent://{address}"
        )));
    }
    Ok(address)
}

#[utoipa::path(
    get,
    operation_id = "mesh_get_agent",
    path = "/v1/mesh/agents/{address}",
    tag = "mesh",
    params(("address" = String, Path, description = "An agent address (`acme/prod/billing` or `agent://acme/prod/billing`; slashes may be sent as `%2F`)")),
    responses((status = 200, description = "One agent with its recent mesh events", body = MeshAgentAnswer))
)]
async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(rest): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let address = visible_address(&caller, &rest)?;
    let reader = state.cluster.reader();
    let record = reader.mesh_agent(&address)?;
    let known = record.is_some() || known_agents(&state)?.iter().any(|a| a.address == address);
    if !known {
        return Err(ApiError::NotFound(format!(
            "agent agent://{address} not found"
        )));
    }
    let mut events: Vec<Value> = reader
        .mesh_events(0, usize::MAX)?
        .iter()
        .rev()
        .filter(|e| e.address == address)
        .take(RECENT_EVENTS)
        .map(event_view)
        .collect();
    events.reverse();
    let view = agent_view(&state, &caller, &address, record.as_ref())?;
    Ok(Json(json!({ "ok": true, "agent": view, "events": events })))
}

/// `.../kill` and `.../resume`: the wildcard takes the address, the suffix the action.
async fn agent_post(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    PathParam(rest): PathParam<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if let Some(raw) = rest.strip_suffix("/kill") {
        kill(&state, &caller, raw, &body).await
    } else if let Some(raw) = rest.strip_suffix("/resume") {
        resume(&state, &caller, raw, &body).await
    } else {
        Err(ApiError::NotFound("no such route".into()))
    }
}

/// `POST /v1/mesh/agents/{address}/kill`: nothing is delivered to the agent until resumed.
#[utoipa::path(
    post,
    operation_id = "mesh_kill",
    path = "/v1/mesh/agents/{address}/kill",
    tag = "mesh",
    params(("address" = String, Path, description = "An agent address (`acme/prod/billing` or `agent://acme/prod/billing`; slashes may be sent as `%2F`)")),
    request_body = Option<KillRequest>,
    responses((status = 200, description = "The agent, killed", body = MeshAgentAnswer))
)]
async fn kill(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    body: &Bytes,
) -> Result<Json<Value>, ApiError> {
    set_killed(state, caller, raw, body, true).await
}

/// `POST /v1/mesh/agents/{address}/resume`: every parked delivery goes back on the queue.
#[utoipa::path(
    post,
    operation_id = "mesh_resume",
    path = "/v1/mesh/agents/{address}/resume",
    tag = "mesh",
    params(("address" = String, Path, description = "An agent address (`acme/prod/billing` or `agent://acme/prod/billing`; slashes may be sent as `%2F`)")),
    responses((status = 200, description = "The agent, resumed", body = MeshAgentAnswer))
)]
async fn resume(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    body: &Bytes,
) -> Result<Json<Value>, ApiError> {
    set_killed(state, caller, raw, body, false).await
}

/// The kill switch, either way, replicated so that it survives failover.
async fn set_killed(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    body: &Bytes,
    kill: bool,
) -> Result<Json<Value>, ApiError> {
    let address = agent_address(raw)?;
    let body = optional_body(body)?;
    only_fields(&body, &["reason"])?;
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 1000 => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::SchemaInvalid(
                "reason must be a string of at most 1000 characters".into(),
            ))
        }
    };
    let actor = caller.principal();
    let at = now();
    let command = if kill {
        Command::MeshKill {
            address: address.clone(),
            actor,
            reason,
            event_id: Uuid::now_v7(),
            at,
        }
    } else {
        Command::MeshResume {
            address: address.clone(),
            actor,
            event_id: Uuid::now_v7(),
            at,
        }
    };
    let agent = mesh_reply(write(state, command).await?)?;
    if kill {
        revoke_leases(state, &address).await?;
    }
    let view = agent_view(state, caller, &address, Some(&agent))?;
    Ok(Json(json!({ "ok": true, "agent": view })))
}

/// Takes the killed agent's running leases away. Once the kill is applied no new lease can
/// be given (apply holds every `Deliver`), so the leases seen now are all there are; each
/// release is parked by apply without counting its attempt. A release that lost a race
/// (the agent settled it, the lease ran out) changes nothing. Should this node fail
/// half-way, the leases left end at their expiry and are parked then, as the kill's holds
/// are enforced by apply either way.
async fn revoke_leases(state: &AppState, address: &str) -> Result<(), ApiError> {
    for (intent_id, attempt, consumer) in deliveries_of(state, address)?.leased {
        let command = Command::Intent {
            command: IntentCommand::ReleaseLease {
                intent_id,
                attempt,
                consumer,
                at: now(),
            },
            idempotency: None,
        };
        match state.cluster.write(command).await {
            Ok(_) | Err(intentd_consensus::ConsensusError::Rejected(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventParams {
    limit: Option<String>,
    event_type: Option<String>,
    since: Option<String>,
}

fn event_filter(raw: Option<&str>) -> Result<Option<MeshEventType>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(t) => MeshEventType::parse(t).map(Some).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "event_type must be one of agent.killed, agent.resumed, agent.health_changed; \
                 got {t:?}"
            ))
        }),
    }
}

fn since_param(raw: Option<&str>) -> Result<u64, ApiError> {
    match raw {
        None => Ok(0),
        Some(s) => s.parse().map_err(|_| {
            ApiError::InvalidRequest(format!("since must be a non-negative integer, got {s:?}"))
        }),
    }
}

/// The newest `limit` mesh events (after `since`), oldest first, and `next_since` for a
/// client that follows the log.
#[utoipa::path(
    get,
    operation_id = "mesh_list_events",
    path = "/v1/mesh/events",
    tag = "mesh",
    params(EventParams),
    responses((status = 200, description = "Mesh events after since, oldest first", body = MeshEventsAnswer))
)]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<EventParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_param(params.limit.as_deref(), 50)?;
    let wanted = event_filter(params.event_type.as_deref())?;
    let since = since_param(params.since.as_deref())?;
    let reader = state.cluster.reader();
    let all = reader.mesh_events(since, usize::MAX)?;
    let next_since = all.last().map_or(since, |e| e.seq);
    let mut events: Vec<Value> = all
        .iter()
        .rev()
        .filter(|e| wanted.is_none_or(|t| e.event_type == t))
        .filter(|e| caller.may_act_as(&e.address))
        .take(limit)
        .map(event_view)
        .collect();
    events.reverse();
    Ok(Json(
        json!({ "ok": true, "events": events, "next_since": next_since }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamParams {
    since: Option<String>,
    wait_seconds: Option<String>,
}

/// SSE of mesh events after `since` (or `Last-Event-ID`), each named by its type with its
/// `seq` as id; `stream.timeout` after `wait_seconds` (default 30, at most 300) without one.
/// The wait is on the mesh's own wake-up key, so idle feeds cost nothing per write.
#[utoipa::path(
    get,
    operation_id = "mesh_stream_events",
    path = "/v1/mesh/events/stream",
    tag = "mesh",
    params(StreamParams),
    responses((status = 200, description = "SSE of mesh events after since (or Last-Event-ID); `stream.timeout` after wait_seconds without one", content_type = "text/event-stream", body = String))
)]
async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    QueryParams(params): QueryParams<StreamParams>,
) -> Result<Response, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(sse::parse_cursor);
    let mut since = match last_event_id {
        Some(id) => id,
        None => since_param(params.since.as_deref())?,
    };
    let wait = match params.wait_seconds.as_deref() {
        None => 30,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n <= 300 => n,
            _ => {
                return Err(ApiError::InvalidRequest(format!(
                    "wait_seconds must be an integer from 0 to 300, got {s:?}"
                )))
            }
        },
    };
    let reader = state.cluster.reader().clone();
    let frames = async_stream::stream! {
        let mut waiter = reader.watch_mesh();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        loop {
            waiter.mark_seen();
            let events = match reader.mesh_events(since, 1000) {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh feed read failed; closing it");
                    break;
                }
            };
            let mut sent = false;
            for e in &events {
                since = e.seq;
                if caller.may_act_as(&e.address) {
                    sent = true;
                    yield Ok::<_, Infallible>(sse::frame(e.event_type.as_str(), Some(e.seq), &event_view(e)));
                }
            }
            if sent || !events.is_empty() {
                continue;
            }
            match tokio::time::timeout_at(deadline, waiter.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    yield Ok(sse::timeout_frame(since));
                    break;
                }
            }
        }
    };
    Ok(sse::response(frames).into_response())
}
