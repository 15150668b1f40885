//! An intent's event log: the list (`?since=N`) and the SSE stream that `observe()` and
//! `wait_for()` use.
//!
//! Streams are served from the local replica: applied state only ever moves forward, so a
//! stream never goes backwards, and it wakes on [`StateReader::watch_intent`] (only when its
//! intent is written) rather than polling.
//!
//! [`StateReader::watch_intent`]: intentd_storage::StateReader::watch_intent

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use intentd_operations::{intent_events, StreamOptions, Watch};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::StreamExt as _;

use super::load_intent;
use crate::auth::Caller;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extract::{PathParam, QueryParams};
use crate::openapi::schemas::EventsAnswer;
use crate::validate::path_uuid;
use crate::{sse, views, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_events, stream_events))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/intents/{id}/events", get(list_events))
        .route("/v1/intents/{id}/events/stream", get(stream_events))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/intents/{id}/events?since=N`: events with `seq > N`, in order.
#[utoipa::path(
    get,
    path = "/v1/intents/{intent_id}/events",
    tag = "intents",
    params(("intent_id" = Uuid, Path, description = "The intent's id"), ListQuery),
    responses((status = 200, description = "The events with seq > since, in order", body = EventsAnswer))
)]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    // Linearizable like GET of the intent, so the log is never behind a status already seen.
    let intent = load_intent(&state, id, true).await?;
    caller.require_observer_of(&intent)?;
    let max = state.config.max_events_per_page;
    let limit = query.limit.unwrap_or(max).clamp(1, max);
    let events = state
        .cluster
        .reader()
        .events(&id, query.since.unwrap_or(0), limit)?;
    let events: Vec<Value> = events.iter().map(views::event).collect();
    Ok(Json(json!({ "ok": true, "events": events })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    since: Option<u64>,
    wait_seconds: Option<u64>,
}

/// The contract's bounds on `wait_seconds`. Out-of-range values are clamped rather than
/// refused: the SDK computes them from the caller's own timeout.
pub(crate) const DEFAULT_WAIT_SECONDS: u64 = 15;
pub(crate) const MAX_WAIT_SECONDS: u64 = 60;

pub(crate) fn wait_duration(wait_seconds: Option<u64>) -> Duration {
    Duration::from_secs(
        wait_seconds
            .unwrap_or(DEFAULT_WAIT_SECONDS)
            .clamp(1, MAX_WAIT_SECONDS),
    )
}

/// Where a stream resumes: `Last-Event-ID` (what a reconnecting browser sends) wins over the
/// `since` parameter.
pub(crate) fn resume_cursor(headers: &HeaderMap, since: Option<u64>) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(since.unwrap_or(0)),
        Some(raw) => raw
            .to_str()
            .ok()
            .and_then(sse::parse_cursor)
            .ok_or_else(|| {
                ApiError::InvalidRequest("Last-Event-ID must be a non-negative integer".into())
            }),
    }
}

/// `GET /v1/intents/{id}/events/stream?since=N&wait_seconds=W`.
///
/// Frames `intentd_operations::intent_events` as SSE: every event after `since` as
/// `event: <event_type>`, `id: <seq>`; the stream closes right after a terminal event; when it
/// goes quiet (`W` seconds without a new event, or a terminal intent with nothing left) it
/// sends `stream.timeout` and closes, so the client reconnects from the highest `seq` it saw.
#[utoipa::path(
    get,
    path = "/v1/intents/{intent_id}/events/stream",
    tag = "intents",
    params(("intent_id" = Uuid, Path, description = "The intent's id"), StreamQuery),
    responses((status = 200, description = "SSE: one event per lifecycle event (named by its event_type, id = seq), `stream.timeout` after wait_seconds of quiet; closes after the terminal event. `Last-Event-ID` works like since.", content_type = "text/event-stream", body = String))
)]
async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    ctx: RequestContext,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
    QueryParams(query): QueryParams<StreamQuery>,
) -> Result<Response, ApiError> {
    let id = path_uuid("intent_id", &id)?;
    let since = resume_cursor(&headers, query.since)?;
    let options = StreamOptions {
        idle: Some(wait_duration(query.wait_seconds)),
        batch: state.config.stream_batch,
        default_ack_timeout_secs: state.config.default_ack_timeout_secs,
    };
    let intent = load_intent(&state, id, false).await?;
    caller.require_observer_of(&intent)?;
    let events = intent_events(state.cluster.clone(), id, since, options);
    let span = ctx.span;
    let frames = events.map_while(move |item| match item {
        Ok(Watch::Next(event)) => Some(Ok::<Bytes, Infallible>(sse::frame(
            event.event_type.as_str(),
            Some(event.seq),
            &views::event(&event),
        ))),
        Ok(Watch::Quiet { cursor }) => Some(Ok(sse::timeout_frame(cursor))),
        // No frame: the client reconnects (elsewhere, if this node is going away).
        Err(error) => {
            span.in_scope(|| tracing::warn!(%error, "intent event stream ended"));
            None
        }
    });
    Ok(sse::response(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn wait_seconds_are_clamped_to_the_contract() {
        assert_eq!(wait_duration(None), Duration::from_secs(15));
        assert_eq!(wait_duration(Some(0)), Duration::from_secs(1));
        assert_eq!(wait_duration(Some(600)), Duration::from_secs(60));
        assert_eq!(wait_duration(Some(7)), Duration::from_secs(7));
    }

    #[test]
    fn last_event_id_overrides_since() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_cursor(&headers, Some(3)).unwrap(), 3);
        assert_eq!(resume_cursor(&headers, None).unwrap(), 0);
        headers.insert("last-event-id", HeaderValue::from_static("9"));
        assert_eq!(resume_cursor(&headers, Some(3)).unwrap(), 9);
        headers.insert("last-event-id", HeaderValue::from_static("nine"));
        assert_eq!(
            resume_cursor(&headers, Some(3)).unwrap_err().code(),
            "invalid_request"
        );
    }

    /// A reconnecting client's `Last-Event-ID` is whatever bytes it sends: a cursor is read
    /// only from a plain decimal number, anything else is a 400, never a panic.
    #[test]
    fn fuzz_resume_cursor() {
        let seeds = vec![
            b"42".to_vec(),
            b" 18446744073709551615 ".to_vec(),
            b"-1".to_vec(),
        ];
        intentd_fuzz::fuzz("sse_cursor", seeds, |bytes| {
            let Ok(value) = HeaderValue::from_bytes(bytes) else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert("last-event-id", value);
            if let Ok(cursor) = resume_cursor(&headers, None) {
                let text = std::str::from_utf8(bytes).unwrap().trim();
                let digits = text.strip_prefix('+').unwrap_or(text);
                assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
                let significant = digits.trim_start_matches('0');
                let expected = if significant.is_empty() {
                    "0"
                } else {
                    significant
                };
                assert_eq!(cursor.to_string(), expected);
            }
        });
    }
}
