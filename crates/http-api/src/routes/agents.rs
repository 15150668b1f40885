//! Agents: the directory (`GET /v1/agents`, `GET /v1/agents/{address}`), the delivery
//! stream `GET /v1/agents/{address}/intents/stream` that `client.listen()` reads, and our
//! extensions `PUT /v1/agents/{address}/binding` ([`super::agents_binding`]) and
//! `POST /v1/agents/{address}/intents/receive` ([`super::receive`]).
//!
//! Addresses contain slashes (`acme/prod/billing`) and axum's wildcard must end a route, so
//! one wildcard route takes everything under `/v1/agents/` and dispatches on the suffix.
//!
//! Directory entries follow `api.agents.*.response.v1.json` and add one field the schema
//! does not list (it says `additionalProperties: false`): `binding`, how the agent receives
//! (mode, lease length, and for HTTP the URL and `secret_hint`, never the secret).

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::DateTime;
use intentd_delivery::{agent_deliveries, Delivery, StatusFilter, StreamOptions, Watch};
use intentd_lifecycle::{AgentConfig, Role, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::StreamExt as _;

use super::agents_binding::{binding_view, put_binding};
use super::events::{resume_cursor, wait_duration};
use super::receive::receive;
use crate::auth::{bare as bare_address, Caller};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::{sse, views, ApiConfig, AppState};

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/agents", get(list_agents))
        .route(
            "/v1/agents/{*rest}",
            get(agent_route).put(agent_put).post(agent_post),
        )
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

const STREAM_SUFFIX: &str = "/intents/stream";
const BINDING_SUFFIX: &str = "/binding";
const RECEIVE_SUFFIX: &str = "/intents/receive";

fn no_such_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// `PUT /v1/agents/{address}/binding`.
async fn agent_put(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(rest): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let address = rest
        .strip_suffix(BINDING_SUFFIX)
        .ok_or_else(no_such_route)?;
    put_binding(&state, &caller, address, &body).await
}

/// `POST /v1/agents/{address}/intents/receive`.
async fn agent_post(
    State(state): State<AppState>,
    caller: Caller,
    ctx: RequestContext,
    PathParam(rest): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let address = rest
        .strip_suffix(RECEIVE_SUFFIX)
        .ok_or_else(no_such_route)?;
    receive(&state, &caller, &ctx, address, &body).await
}

#[derive(Debug, Deserialize)]
struct AgentQuery {
    since: Option<u64>,
    wait_seconds: Option<u64>,
    status: Option<String>,
}

async fn agent_route(
    State(state): State<AppState>,
    caller: Caller,
    ctx: RequestContext,
    headers: HeaderMap,
    PathParam(rest): PathParam<String>,
    QueryParams(query): QueryParams<AgentQuery>,
) -> Result<Response, ApiError> {
    match rest.strip_suffix(STREAM_SUFFIX) {
        Some(address) => stream(state, caller, ctx, headers, address, query).await,
        None => get_agent(&state, &caller, &rest).map(IntoResponse::into_response),
    }
}

// ---------------------------------------------------------------------------------------------
// Directory

/// One known agent: an address with a registration, a queue, an agent key, or several.
#[derive(Debug, Clone, PartialEq)]
struct AgentInfo {
    address: String,
    created_at: Timestamp,
    config: Option<AgentConfig>,
}

/// An agent exists once it registered a binding, an agent key names it or an intent was sent
/// to it. Its `created_at` is the earliest of its registration, the key's creation and its
/// first queued intent.
fn known_agents(state: &AppState) -> Result<Vec<AgentInfo>, ApiError> {
    let reader = state.cluster.reader();
    let mut agents: BTreeMap<String, Option<Timestamp>> = BTreeMap::new();
    let mut configs: BTreeMap<String, AgentConfig> = BTreeMap::new();
    for config in reader.agent_configs()? {
        let address = config.address.path().to_string();
        agents.insert(address.clone(), Some(config.created_at));
        configs.insert(address, config);
    }
    for (_, key) in reader.api_keys()? {
        if let (Role::Agent { address }, false) = (&key.role, key.revoked) {
            let entry = agents.entry(address.path().to_string()).or_default();
            *entry = Some(entry.map_or(key.created_at, |t| t.min(key.created_at)));
        }
    }
    for summary in reader.agents()? {
        let address = bare_address(&summary.address).to_string();
        let first = match reader.agent_queue(&address, 0, 1)?.first() {
            Some((_, id)) => reader.intent(id)?.map(|i| i.created_at),
            None => None,
        };
        let entry = agents.entry(address).or_default();
        *entry = match (*entry, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(agents
        .into_iter()
        .map(|(address, created_at)| AgentInfo {
            config: configs.remove(&address),
            address,
            created_at: created_at.unwrap_or(DateTime::UNIX_EPOCH),
        })
        .collect())
}

/// An entry of `api.agents.*.response.v1.json` (`additionalProperties: false`). There are no
/// service accounts in intentd; the address stands in for the id and its last segment for
/// the name, which is what the hosted platform derives the address from.
fn agent_view(agent: &AgentInfo, caller: &Caller) -> Value {
    let name = agent
        .address
        .rsplit('/')
        .next()
        .filter(|n| n.chars().count() >= 2)
        .unwrap_or(&agent.address);
    let config = agent.config.as_ref();
    json!({
        "address": format!("agent://{}", agent.address),
        "service_account_id": agent.address,
        "service_account_name": name.chars().take(120).collect::<String>(),
        "display_name": config.and_then(|c| c.display_name.clone()),
        "status": "active",
        "created_at": views::timestamp(&agent.created_at),
        "binding": binding_view(config, caller.may_act_as(&agent.address)),
    })
}

async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let agents: Vec<Value> = known_agents(&state)?
        .iter()
        .map(|a| agent_view(a, &caller))
        .collect();
    Ok(Json(json!({ "ok": true, "agents": agents })))
}

fn get_agent(state: &AppState, caller: &Caller, raw: &str) -> Result<Json<Value>, ApiError> {
    let address = intentd_lifecycle::validate::listen_address(raw)?;
    agent_answer(state, caller, address.path())
}

/// `{"ok": true, "agent": ...}` for the agent at the normalized `address`.
pub(crate) fn agent_answer(
    state: &AppState,
    caller: &Caller,
    address: &str,
) -> Result<Json<Value>, ApiError> {
    let agent = known_agents(state)?
        .into_iter()
        .find(|a| a.address == address)
        .ok_or_else(|| ApiError::NotFound(format!("agent agent://{address} not found")))?;
    Ok(Json(
        json!({ "ok": true, "agent": agent_view(&agent, caller) }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Delivery stream

/// `GET /v1/agents/{address}/intents/stream?since=N&wait_seconds=W&status=A,B`.
///
/// Frames `intentd_delivery::agent_deliveries` as SSE: each wanted intent, delivered first
/// if it was fresh, as `event: intent.<status>`, `id: <cursor>`; after `W` seconds with
/// nothing sent, `stream.timeout` and close. A failed delivery (no quorum) ends the stream
/// without a timeout frame: the client reconnects from the last cursor it saw, which retries
/// the entry.
async fn stream(
    state: AppState,
    caller: Caller,
    ctx: RequestContext,
    headers: HeaderMap,
    raw_address: &str,
    query: AgentQuery,
) -> Result<Response, ApiError> {
    let address = intentd_lifecycle::validate::listen_address(raw_address)?
        .path()
        .to_string();
    caller.require_listener_on(&address)?;
    let filter = StatusFilter::parse(query.status.as_deref())
        .map_err(|s| ApiError::InvalidRequest(format!("unknown status {s:?} in status")))?;
    let since = resume_cursor(&headers, query.since)?;
    let options = StreamOptions {
        idle: Some(wait_duration(query.wait_seconds)),
        batch: state.config.stream_batch,
        default_ack_timeout_secs: state.config.default_ack_timeout_secs,
    };
    let consumer = format!("sse:{}", ctx.request_id);
    let span = ctx.span;
    span.in_scope(|| tracing::info!(agent = %address, since, "agent stream opened"));
    let deliveries = agent_deliveries(
        state.cluster.clone(),
        state.config.stream_consumers.clone(),
        address,
        since,
        filter,
        consumer,
        options,
    );
    let frames = deliveries.map_while(move |item| match item {
        Ok(Watch::Next(Delivery { cursor, intent })) => Some(Ok::<Bytes, Infallible>(sse::frame(
            &views::delivery_event_name(intent.status),
            Some(cursor),
            &views::delivery(&intent, cursor),
        ))),
        Ok(Watch::Quiet { cursor }) => Some(Ok(sse::timeout_frame(cursor))),
        Err(error) => {
            span.in_scope(|| tracing::warn!(%error, "agent stream ended"));
            None
        }
    });
    Ok(sse::response(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn addresses_lose_scheme_and_slashes() {
        assert_eq!(
            bare_address("agent://acme/prod/billing"),
            "acme/prod/billing"
        );
        assert_eq!(
            "acme/prod/billing/intents/stream".strip_suffix(STREAM_SUFFIX),
            Some("acme/prod/billing")
        );
    }

    #[test]
    fn agent_view_matches_the_schema_fields() {
        let agent = AgentInfo {
            address: "acme/prod/billing".into(),
            created_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
            config: None,
        };
        let v = agent_view(
            &agent,
            &crate::auth::tests::caller(intentd_lifecycle::Role::Admin),
        );
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "address",
                "binding",
                "created_at",
                "display_name",
                "service_account_id",
                "service_account_name",
                "status"
            ]
        );
        assert_eq!(v["binding"]["delivery_mode"], "stream");
        assert_eq!(v["address"], "agent://acme/prod/billing");
        assert_eq!(v["service_account_name"], "billing");
        assert_eq!(v["status"], "active");
    }
}
