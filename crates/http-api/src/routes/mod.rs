//! The API's resources, one module each, merged into one router here; plus the few steps
//! every intent route shares (loading an intent, proposing a change, idempotency claims).

mod admin_intents;
mod admin_webhooks;
pub(crate) mod agents;
mod approvals;
mod capabilities;
mod cluster;
mod console;
mod deliveries;
mod events;
mod health;
mod inbox;
mod intents;
mod keys;
mod mesh;
pub(crate) mod metrics;
mod scenarios;
mod webhooks;

use axum::Router;
use intentd_lifecycle::{
    AccessError, ApiKey, Command, IdempotencyClaim, Intent, IntentCommand, Reply, Timestamp,
};
use intentd_operations::intents::{self as ops, Written};
use intentd_operations::Change;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{ApiConfig, AppState};

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(capabilities::router())
        .merge(intents::router(config))
        .merge(events::router())
        .merge(agents::router(config))
        .merge(agents::receive::router(config))
        .merge(deliveries::router(config))
        .merge(inbox::router(config))
        .merge(approvals::router(config))
        .merge(webhooks::router(config))
        .merge(scenarios::router(config))
        .merge(metrics::router())
        .merge(keys::router())
        .merge(cluster::router())
        .merge(mesh::router(config))
        .merge(admin_intents::router())
        .merge(admin_webhooks::router())
        .merge(console::router())
        .merge(crate::openapi::router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Every module's operations (their `Doc`, beside their `router()`), merged as the routers
/// are; `crate::openapi` adds what all of them share.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = health::Doc::openapi();
    for part in [
        capabilities::Doc::openapi(),
        intents::Doc::openapi(),
        events::Doc::openapi(),
        agents::Doc::openapi(),
        agents::receive::Doc::openapi(),
        deliveries::Doc::openapi(),
        inbox::Doc::openapi(),
        approvals::Doc::openapi(),
        webhooks::Doc::openapi(),
        scenarios::Doc::openapi(),
        metrics::Doc::openapi(),
        keys::Doc::openapi(),
        cluster::Doc::openapi(),
        mesh::Doc::openapi(),
        admin_intents::Doc::openapi(),
        admin_webhooks::Doc::openapi(),
        console::Doc::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this route does not accept that method".into())
}

/// Reads an intent (see `intentd_operations::intents::load_intent` for the read-your-writes
/// rules the gRPC edge shares).
pub(crate) async fn load_intent(
    state: &AppState,
    id: Uuid,
    linearizable: bool,
) -> Result<Intent, ApiError> {
    Ok(ops::load_intent(&state.cluster, id, linearizable).await?)
}

/// Proposes one intent command through Raft and waits until it is committed and applied.
pub(crate) async fn write_intent(
    state: &AppState,
    command: IntentCommand,
    idempotency: Option<IdempotencyClaim>,
) -> Result<Written, ApiError> {
    Ok(ops::write_intent(&state.cluster, command, idempotency).await?)
}

/// Proposes a command that is not an intent command (agents, inbox, webhooks) and waits
/// until it is committed and applied here.
pub(crate) async fn write(state: &AppState, command: Command) -> Result<Reply, ApiError> {
    Ok(state.cluster.write(command).await?)
}

/// Before a request reads this node's state, waits until the node applied every write it
/// has already answered (`Cluster::settled`): intent commands answer once the leader has
/// applied them, not this node, and a client's next request must still see its write.
/// Creating an intent reads nothing but the caller's key, so it goes straight on: through a
/// follower, a client's creates do not queue behind the follower's apply.
pub(crate) async fn settle_reads(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let creates = request.method() == axum::http::Method::POST
        && request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .is_some_and(|path| path.as_str() == "/v1/intents");
    if !creates {
        state.cluster.settled().await;
    }
    next.run(request).await
}

/// Waits until this replica has applied everything committed before the call, so a read
/// that follows is never older than a write already acknowledged anywhere.
pub(crate) async fn read_barrier(state: &AppState) -> Result<(), ApiError> {
    Ok(state.cluster.read_barrier().await?)
}

/// Refuses a callback URL (an HTTP agent's, a webhook subscription's) that is not http(s),
/// or whose host is a literal loopback, private, link-local or otherwise internal address
/// not on the operator's allow-list. A host name is not resolved here: whether it resolves
/// from the cluster now says nothing about the pushes to come, so the engine's resolver
/// judges the addresses it will dial at every push (`intentd_delivery::ssrf`). A refusal is
/// a 422 naming `field`.
pub(crate) fn checked_url(state: &AppState, field: &str, url: &str) -> Result<(), ApiError> {
    intentd_delivery::check_url(url, &state.config.delivery_allow_hosts)
        .map_err(|e| ApiError::SchemaInvalid(format!("{field} is refused: {e}")))
}

/// The claim an `Idempotency-Key` makes, over the request body as the client sent it, for
/// this node's configured time (`intentd_operations::claim`).
pub(crate) fn claim(
    state: &AppState,
    scope: String,
    key: Option<String>,
    body: &Value,
    now: Timestamp,
) -> Option<IdempotencyClaim> {
    intentd_operations::claim(scope, key, body, now, state.config.idempotency_ttl)
}

/// Loads and checks the intent a change targets, the first step every change shares
/// (`intentd_operations::Change`).
pub(crate) async fn begin_change<'s>(
    state: &'s AppState,
    caller: &Caller,
    operation: &str,
    id: Uuid,
    authorize: impl FnOnce(&ApiKey, &Intent) -> Result<(), AccessError>,
) -> Result<Change<'s>, ApiError> {
    Ok(
        Change::begin(&state.cluster, &caller.key, operation, id, |intent| {
            authorize(&caller.key, intent)
        })
        .await?,
    )
}

/// Proposes a change's command, with the claim of the request's `Idempotency-Key`.
pub(crate) async fn propose_change(
    state: &AppState,
    change: Change<'_>,
    command: IntentCommand,
    key: Option<String>,
    body: &Value,
) -> Result<Written, ApiError> {
    let claim = change.claim(key, body, state.config.idempotency_ttl);
    Ok(change.propose(command, claim).await?)
}

pub(crate) use ops::now;
