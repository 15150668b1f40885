//! The cluster-wide view of intents, for operators (admin keys) and the console:
//!
//! - `GET /v1/admin/intents?status&intent_type&agent&created_after&created_before&limit&before`:
//!   intents newest first, filtered, with `cursor`, the log index to follow the feed from.
//! - `GET /v1/admin/intents/{id}`: one intent with what its timeline needs beyond the public
//!   view (the lease, the next delivery time, every event, the dead letter).
//! - `GET /v1/admin/intents/stream?since&wait_seconds`: SSE of every intent event applied
//!   after log index `since` (or `Last-Event-ID`), with the intent's new summary.
//!
//! The public API has no "every intent" read: a client key sees its own, an agent its queue.
//! An operator's screen needs the whole cluster, live, so these routes are admin-only and
//! bounded: a listing reads at most [`MAX_SCAN`] intents per call and says where to go on
//! (`next_before`), and the feed is the node's in-memory ring (`intentd_storage::feed`), which
//! answers `feed.reset` when it cannot prove it holds everything after the cursor (the client
//! reloads the list and follows from its `cursor`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use intentd_lifecycle::{same_address, Intent, Status, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};

use super::events::resume_cursor;
use super::load_intent;
use crate::auth::AdminCaller;
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::openapi::schemas::{AdminIntentAnswer, AdminIntentsAnswer};
use crate::validate::path_uuid;
use crate::{sse, views, AppState};

/// Intents one listing reads at most, whatever its filters: a filter that matches little
/// must not make one request walk millions of records.
pub(crate) const MAX_SCAN: usize = 20_000;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 500;
/// Feed events read per step (whole log entries, so a step may carry more).
const FEED_BATCH: usize = 256;
/// Events a detail answer carries at most (an intent's log is short; a looping workflow's
/// is cut to its newest).
const DETAIL_EVENTS: usize = 1000;

/// The name of the frame that tells a feed client its cursor is too old for this node.
const RESET_EVENT: &str = "feed.reset";

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, detail, stream))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/intents", get(list))
        .route("/v1/admin/intents/stream", get(stream))
        .route("/v1/admin/intents/{id}", get(detail))
}

/// An intent as a row of the operator's list: the public view's headline fields plus what
/// delivery is doing with it right now.
pub(crate) fn summary(i: &Intent) -> Value {
    let ts = |t: &Option<Timestamp>| t.as_ref().map(views::timestamp);
    json!({
        "intent_id": i.id,
        "intent_type": i.intent_type,
        "status": i.status.as_str(),
        "from_agent": i.from_agent,
        "to_agent": i.to_agent,
        "created_at": views::timestamp(&i.created_at),
        "updated_at": views::timestamp(&i.updated_at),
        "delivery_attempt": i.delivery_attempt,
        "max_delivery_attempts": i.max_delivery_attempts,
        "waiting_reason": i.waiting_reason.map(|r| r.as_str()),
        "dead_lettered": i.dead_lettered,
        "last_seq": i.last_seq,
        "lease": i.lease.as_ref().map(|l| json!({
            "consumer": l.consumer,
            "attempt": l.attempt,
            "expires_at": views::timestamp(&l.expires_at),
        })),
        // The next delivery try: a push's backoff (`deliver_at`) or a delayed release.
        "next_delivery_at": ts(&i.deliver_at),
        "not_before": ts(&i.not_before),
        "deadline_at": ts(&i.deadline_at),
        "replayed_from": i.replayed_from,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    status: Option<String>,
    intent_type: Option<String>,
    agent: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

/// The parsed filters of a listing.
struct Filter {
    statuses: Vec<Status>,
    intent_type: Option<String>,
    agent: Option<String>,
    after: Option<Timestamp>,
    before: Option<Timestamp>,
}

impl Filter {
    fn parse(q: &ListQuery) -> Result<Filter, ApiError> {
        fn non_empty(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        let statuses = match non_empty(&q.status) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| {
                    Status::parse(&s.trim().to_ascii_uppercase()).ok_or_else(|| {
                        ApiError::InvalidRequest(format!("status: unknown status {s:?}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let time = |name: &str, v: &Option<String>| -> Result<Option<Timestamp>, ApiError> {
            non_empty(v)
                .map(|s| {
                    chrono::DateTime::parse_from_rfc3339(s)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|_| {
                            ApiError::InvalidRequest(format!(
                                "{name} must be an RFC 3339 time, got {s:?}"
                            ))
                        })
                })
                .transpose()
        };
        Ok(Filter {
            statuses,
            intent_type: non_empty(&q.intent_type).map(str::to_string),
            agent: non_empty(&q.agent).map(str::to_string),
            after: time("created_after", &q.created_after)?,
            before: time("created_before", &q.created_before)?,
        })
    }

    fn matches(&self, i: &Intent) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&i.status))
            && self
                .intent_type
                .as_deref()
                .is_none_or(|t| i.intent_type == t)
            && self
                .agent
                .as_deref()
                .is_none_or(|a| same_address(&i.to_agent, a) || same_address(&i.from_agent, a))
            && self.after.is_none_or(|t| i.created_at >= t)
            && self.before.is_none_or(|t| i.created_at < t)
    }
}

#[utoipa::path(
    get,
    path = "/v1/admin/intents",
    tag = "admin",
    params(ListQuery),
    responses((status = 200, description = "Intents newest first, filtered", body = AdminIntentsAnswer)),
    operation_id = "admin_list_intents"
)]
async fn list(
    State(state): State<AppState>,
    _admin: AdminCaller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = Filter::parse(&q)?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "limit must be an integer from 1 to {MAX_LIMIT}, got {s:?}"
                ))
            })?,
    };
    let before = q
        .before
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| path_uuid("before", s))
        .transpose()?;
    // Read before the scan: a change applied while it runs is then seen again by a feed
    // that follows from here, never missed.
    let cursor = state.cluster.reader().applied_index();
    let mut intents = Vec::new();
    let mut last = None;
    let read = state
        .cluster
        .reader()
        .intents_newest_first(before, MAX_SCAN, |intent| {
            last = Some(intent.id);
            if filter.matches(&intent) {
                intents.push(summary(&intent));
            }
            intents.len() < limit
        })?;
    // More may follow unless the tree ran out before the limit and the scan bound.
    let exhausted = intents.len() < limit && read < MAX_SCAN;
    Ok(Json(json!({
        "ok": true,
        "intents": intents,
        "cursor": cursor,
        "next_before": if exhausted { None } else { last },
    })))
}

#[utoipa::path(
    get,
    path = "/v1/admin/intents/{intent_id}",
    tag = "admin",
    params(("intent_id" = Uuid, Path, description = "The intent's id")),
    responses((status = 200, description = "One intent with its timeline", body = AdminIntentAnswer)),
    operation_id = "admin_intent_detail"
)]
async fn detail(
    State(state): State<AppState>,
    _admin: AdminCaller,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let intent = load_intent(&state, id, true).await?;
    let reader = state.cluster.reader();
    let first = intent.last_seq.saturating_sub(DETAIL_EVENTS as u64);
    let events: Vec<Value> = reader
        .events(&id, first, DETAIL_EVENTS)?
        .iter()
        .map(views::event)
        .collect();
    let dead_letter = reader.dead_letter(&id)?.map(|d| {
        json!({
            "at": views::timestamp(&d.at),
            "reason": d.reason,
            "replayed_as": d.replayed_as,
        })
    });
    Ok(Json(json!({
        "ok": true,
        "summary": summary(&intent),
        "intent": views::intent(&intent),
        "events": events,
        "events_from_seq": first + 1,
        "dead_letter": dead_letter,
    })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    since: Option<u64>,
    wait_seconds: Option<u64>,
}

/// The feed as SSE. Each intent event is an `intent.changed` frame carrying the event and
/// the intent's summary; the last frame of each log entry carries the entry's index as its
/// `id`, so a reconnect (`Last-Event-ID` or `since`) resumes after a whole entry. After
/// `wait_seconds` (default 30, 1 to 300) without news it sends `stream.timeout` with the
/// cursor and closes; when the node cannot serve the cursor it sends `feed.reset` with the
/// horizon and closes.
#[utoipa::path(
    get,
    path = "/v1/admin/intents/stream",
    tag = "admin",
    params(StreamQuery),
    responses((status = 200, description = "SSE: `intent.changed` per intent event applied after since (or Last-Event-ID), `feed.reset` when the node cannot prove it holds everything after it, `stream.timeout` after wait_seconds", content_type = "text/event-stream", body = String)),
    operation_id = "admin_intents_stream"
)]
async fn stream(
    State(state): State<AppState>,
    _admin: AdminCaller,
    headers: HeaderMap,
    QueryParams(q): QueryParams<StreamQuery>,
) -> Result<Response, ApiError> {
    let mut since = resume_cursor(&headers, q.since)?;
    let wait = Duration::from_secs(q.wait_seconds.unwrap_or(30).clamp(1, 300));
    let reader = state.cluster.reader().clone();
    let frames = async_stream::stream! {
        let mut waiter = reader.watch_feed();
        let mut deadline = tokio::time::Instant::now() + wait;
        loop {
            waiter.mark_seen();
            let entries = match reader.intent_feed(since, FEED_BATCH) {
                Ok(entries) => entries,
                Err(gone) => {
                    yield Ok::<_, Infallible>(sse::frame(
                        RESET_EVENT,
                        None,
                        &json!({ "horizon": gone.horizon, "since": since }),
                    ));
                    break;
                }
            };
            if entries.is_empty() {
                match tokio::time::timeout_at(deadline, waiter.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => break,
                    Err(_) => {
                        yield Ok(sse::timeout_frame(since));
                        break;
                    }
                }
            }
            for (n, entry) in entries.iter().enumerate() {
                let last_of_entry = entries.get(n + 1).is_none_or(|next| next.index != entry.index);
                let found = reader
                    .intent(&entry.intent_id)
                    .and_then(|i| Ok((i, reader.events(&entry.intent_id, entry.seq - 1, 1)?)));
                let data = match found {
                    Ok((Some(intent), events)) => events.first().map(|event| json!({
                        "cursor": entry.index,
                        "event": views::event(event),
                        "intent": summary(&intent),
                    })),
                    // Purged since: nothing left to show.
                    Ok((None, _)) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "intent feed read failed; closing it");
                        return;
                    }
                };
                let id = last_of_entry.then_some(entry.index);
                match data {
                    Some(data) => yield Ok(sse::frame("intent.changed", id, &data)),
                    // The cursor still moves past what was skipped.
                    None if last_of_entry => yield Ok(sse::frame("feed.cursor", id, &json!({ "cursor": entry.index }))),
                    None => {}
                }
                since = entry.index.max(since);
            }
            deadline = tokio::time::Instant::now() + wait;
        }
    };
    Ok(sse::response(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::sample_intent;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        ListQuery {
            status: get("status"),
            intent_type: get("intent_type"),
            agent: get("agent"),
            created_after: get("created_after"),
            created_before: get("created_before"),
            limit: None,
            before: None,
        }
    }

    #[test]
    fn filters_match_status_type_agent_and_time() {
        let intent = sample_intent();
        let created = views::timestamp(&intent.created_at);
        assert!(Filter::parse(&query(&[])).unwrap().matches(&intent));
        let status = intent.status.as_str().to_ascii_lowercase();
        let f = Filter::parse(&query(&[("status", &format!("completed,{status}"))])).unwrap();
        assert!(f.matches(&intent));
        let f = Filter::parse(&query(&[("intent_type", "nope")])).unwrap();
        assert!(!f.matches(&intent));
        let f = Filter::parse(&query(&[(
            "agent",
            &intent.to_agent.replace("agent://", ""),
        )]));
        assert!(
            f.unwrap().matches(&intent),
            "agent matches without the scheme"
        );
        let f = Filter::parse(&query(&[("created_after", &created)])).unwrap();
        assert!(f.matches(&intent), "the lower bound is inclusive");
        let f = Filter::parse(&query(&[("created_before", &created)])).unwrap();
        assert!(!f.matches(&intent), "the upper bound is exclusive");
        let bad = Filter::parse(&query(&[("status", "LOST")]));
        assert_eq!(bad.err().unwrap().code(), "invalid_request");
        let bad = Filter::parse(&query(&[("created_after", "yesterday")]));
        assert_eq!(bad.err().unwrap().code(), "invalid_request");
    }
}
