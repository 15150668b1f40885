//! The delivery stream of an agent, framed as SSE: what `client.listen()` reads.

use super::*;
use crate::routes::events::{resume_cursor, wait_duration};

/// `GET /v1/agents/{address}/intents/stream?since=N&wait_seconds=W&status=A,B`.
///
/// Frames `intentd_operations::agent_deliveries` as SSE: each wanted intent, delivered first
/// if it was fresh, as `event: intent.<status>`, `id: <cursor>`; after `W` seconds with
/// nothing sent, `stream.timeout` and close. A failed delivery (no quorum) ends the stream
/// without a timeout frame: the client reconnects from the last cursor it saw, which retries
/// the entry.
#[utoipa::path(
    get,
    path = "/v1/agents/{address}/intents/stream",
    tag = "agents",
    params(("address" = String, Path, description = "An agent address (`acme/prod/billing` or `agent://acme/prod/billing`; slashes may be sent as `%2F`)"), super::AgentQuery),
    responses((status = 200, description = "SSE: one delivery per event (its data a DeliveryView, id = the agent cursor), `stream.timeout` after wait_seconds of quiet. `Last-Event-ID` works like since.", content_type = "text/event-stream", body = String))
)]
pub(super) async fn stream(
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
