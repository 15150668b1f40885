//! Agents: the directory (`GET /v1/agents`, `GET /v1/agents/{address}`) and the delivery
//! stream `GET /v1/agents/{address}/intents/stream` that `client.listen()` reads.
//!
//! Addresses contain slashes (`acme/prod/billing`) and axum's wildcard must end a route, so
//! one wildcard route takes everything under `/v1/agents/` and dispatches on the
//! `/intents/stream` suffix.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::DateTime;
use intentd_consensus::ConsensusError;
use intentd_lifecycle::{Command, Intent, IntentCommand, Reply, Role, Status, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::events::{resume_cursor, wait_duration};
use super::now;
use crate::auth::Caller;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::{sse, views, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{*rest}", get(agent_route))
}

const STREAM_SUFFIX: &str = "/intents/stream";

/// The address without its `agent://` scheme or stray slashes: the form queues are keyed by.
fn bare_address(raw: &str) -> &str {
    raw.strip_prefix("agent://")
        .unwrap_or(raw)
        .trim_matches('/')
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
        None => get_agent(&state, &rest).map(IntoResponse::into_response),
    }
}

// ---------------------------------------------------------------------------------------------
// Directory

/// One known agent: an address with a queue, an agent key, or both.
#[derive(Debug, Clone, PartialEq)]
struct AgentInfo {
    address: String,
    created_at: Timestamp,
}

/// Agents are not registered separately (yet): an agent exists once an agent key names it or
/// an intent was sent to it. Its `created_at` is the earlier of the key's creation and its
/// first queued intent.
fn known_agents(state: &AppState) -> Result<Vec<AgentInfo>, ApiError> {
    let reader = state.cluster.reader();
    let mut agents: BTreeMap<String, Option<Timestamp>> = BTreeMap::new();
    for (_, key) in reader.api_keys()? {
        if let (Role::Agent { address }, false) = (&key.role, key.revoked) {
            let entry = agents.entry(bare_address(address).to_string()).or_default();
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
            address,
            created_at: created_at.unwrap_or(DateTime::UNIX_EPOCH),
        })
        .collect())
}

/// An entry of `api.agents.*.response.v1.json` (`additionalProperties: false`). There are no
/// service accounts in intentd; the address stands in for the id and its last segment for
/// the name, which is what the hosted platform derives the address from.
fn agent_view(agent: &AgentInfo) -> Value {
    let name = agent
        .address
        .rsplit('/')
        .next()
        .filter(|n| n.chars().count() >= 2)
        .unwrap_or(&agent.address);
    json!({
        "address": format!("agent://{}", agent.address),
        "service_account_id": agent.address,
        "service_account_name": name.chars().take(120).collect::<String>(),
        "display_name": Value::Null,
        "status": "active",
        "created_at": views::timestamp(&agent.created_at),
    })
}

async fn list_agents(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let agents: Vec<Value> = known_agents(&state)?.iter().map(agent_view).collect();
    Ok(Json(json!({ "ok": true, "agents": agents })))
}

fn get_agent(state: &AppState, raw: &str) -> Result<Json<Value>, ApiError> {
    let address = bare_address(raw);
    let agent = known_agents(state)?
        .into_iter()
        .find(|a| a.address == address)
        .ok_or_else(|| ApiError::NotFound(format!("agent agent://{address} not found")))?;
    Ok(Json(json!({ "ok": true, "agent": agent_view(&agent) })))
}

// ---------------------------------------------------------------------------------------------
// Delivery stream

/// Which statuses a listener wants. By default only actionable (non-terminal) intents; an
/// explicit comma-separated list replaces the default.
fn status_filter(raw: Option<&str>) -> Result<Vec<Status>, ApiError> {
    let Some(list) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Status::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect());
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Status::parse(&s.to_ascii_uppercase())
                .ok_or_else(|| ApiError::InvalidRequest(format!("unknown status {s:?} in status")))
        })
        .collect()
}

/// Offers one queued intent to this consumer and returns what to send, if anything.
///
/// A SUBMITTED intent is delivered first (when the listener wants DELIVERED ones), so the
/// delivery itself is a committed lifecycle step: `Deliver` is a compare-and-set on the
/// attempt, and when another consumer won the race the current state is sent instead.
async fn offer(
    state: &AppState,
    id: Uuid,
    consumer: &str,
    filter: &[Status],
) -> Result<Option<Intent>, ApiError> {
    let reader = state.cluster.reader();
    let Some(mut intent) = reader.intent(&id)? else {
        return Ok(None);
    };
    if intent.status == Status::Submitted && filter.contains(&Status::Delivered) {
        let deliver = IntentCommand::Deliver {
            intent_id: id,
            expected_attempt: intent.delivery_attempt,
            consumer: consumer.to_string(),
            at: now(),
        };
        let command = Command::Intent {
            command: deliver,
            idempotency: None,
        };
        match state.cluster.write(command).await {
            Ok(Reply::Intent { intent: after, .. }) => intent = *after,
            Ok(Reply::Done) => {
                return Err(ApiError::Internal(
                    "Deliver answered without an intent".into(),
                ))
            }
            Err(ConsensusError::Rejected(rejection)) => {
                tracing::debug!(intent_id = %id, %rejection, "delivery lost a race; sending the current state");
                // The winner's write may not be applied here yet.
                state.cluster.read_barrier().await?;
                match reader.intent(&id)? {
                    Some(current) => intent = current,
                    None => return Ok(None),
                }
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(filter.contains(&intent.status).then_some(intent))
}

/// `GET /v1/agents/{address}/intents/stream?since=N&wait_seconds=W&status=A,B`.
///
/// Walks the agent's queue after cursor `since`, delivering and sending each wanted intent as
/// `event: intent.<status>`, `id: <cursor>`; waits for new queue entries; after `W` seconds
/// with nothing sent, sends `stream.timeout` and closes. A failed delivery (no quorum) ends
/// the stream without a timeout frame: the client reconnects from the last cursor it saw,
/// which retries the entry.
async fn stream(
    state: AppState,
    caller: Caller,
    ctx: RequestContext,
    headers: HeaderMap,
    raw_address: &str,
    query: AgentQuery,
) -> Result<Response, ApiError> {
    let address = bare_address(raw_address).to_string();
    if address.is_empty() {
        return Err(ApiError::SchemaInvalid("the agent address is empty".into()));
    }
    caller.require_listener_on(&address)?;
    let filter = status_filter(query.status.as_deref())?;
    let since = resume_cursor(&headers, query.since)?;
    let wait = wait_duration(query.wait_seconds);
    let consumer = format!("sse:{}", ctx.request_id);
    let batch = state.config.stream_batch;
    let span = ctx.span;
    span.in_scope(|| tracing::info!(agent = %address, since, "agent stream opened"));

    let frames = async_stream::stream! {
        let reader = state.cluster.reader().clone();
        let mut applied = reader.subscribe();
        let mut cursor = since;
        let mut deadline = Instant::now() + wait;
        'stream: loop {
            applied.borrow_and_update();
            let entries = match reader.agent_queue(&address, cursor, batch) {
                Ok(entries) => entries,
                Err(error) => {
                    span.in_scope(|| tracing::error!(%error, "reading an agent queue failed"));
                    break 'stream;
                }
            };
            if entries.is_empty() {
                match tokio::time::timeout_at(deadline, applied.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => break 'stream,
                    Err(_elapsed) => {
                        yield Ok::<Bytes, Infallible>(sse::timeout_frame(cursor));
                        break 'stream;
                    }
                }
            }
            for (entry_cursor, id) in entries {
                match offer(&state, id, &consumer, &filter).await {
                    Ok(Some(intent)) => {
                        yield Ok(sse::frame(
                            &views::delivery_event_name(intent.status),
                            Some(entry_cursor),
                            &views::delivery(&intent, entry_cursor),
                        ));
                        deadline = Instant::now() + wait;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        span.in_scope(|| tracing::warn!(%error, intent_id = %id, "delivery failed; ending the stream"));
                        break 'stream;
                    }
                }
                cursor = entry_cursor;
            }
        }
    };
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
        assert_eq!(bare_address("acme/prod/billing/"), "acme/prod/billing");
        assert_eq!(
            "acme/prod/billing/intents/stream".strip_suffix(STREAM_SUFFIX),
            Some("acme/prod/billing")
        );
    }

    #[test]
    fn default_filter_is_non_terminal() {
        let f = status_filter(None).unwrap();
        assert!(f.contains(&Status::Submitted) && f.contains(&Status::Delivered));
        assert!(!f.iter().any(|s| s.is_terminal()));
        assert_eq!(status_filter(Some(" ")).unwrap(), f);
        assert_eq!(
            status_filter(Some("completed, DELIVERED")).unwrap(),
            vec![Status::Completed, Status::Delivered]
        );
        assert_eq!(
            status_filter(Some("DONE")).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn agent_view_matches_the_schema_fields() {
        let agent = AgentInfo {
            address: "acme/prod/billing".into(),
            created_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
        };
        let v = agent_view(&agent);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "address",
                "created_at",
                "display_name",
                "service_account_id",
                "service_account_name",
                "status"
            ]
        );
        assert_eq!(v["address"], "agent://acme/prod/billing");
        assert_eq!(v["service_account_name"], "billing");
        assert_eq!(v["status"], "active");
    }
}
