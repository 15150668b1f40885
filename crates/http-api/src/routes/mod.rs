//! The API's resources, one module each, merged into one router here; plus the few steps
//! every intent route shares (loading an intent, proposing a change, idempotency claims).

mod agents;
mod capabilities;
mod cluster;
mod events;
mod health;
mod intents;
mod keys;

use axum::Router;
use intentd_delivery::intents::{self as ops, Written};
use intentd_lifecycle::{IdempotencyClaim, Intent, IntentCommand, Timestamp};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::{ApiConfig, AppState};

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(capabilities::router())
        .merge(intents::router(config))
        .merge(events::router())
        .merge(agents::router())
        .merge(keys::router())
        .merge(cluster::router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this route does not accept that method".into())
}

/// Reads an intent (see `intentd_delivery::intents::load_intent` for the read-your-writes
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

/// The claim an `Idempotency-Key` makes, over the request body as the client sent it.
pub(crate) fn claim(
    state: &AppState,
    scope: String,
    key: Option<String>,
    body: &Value,
    now: Timestamp,
) -> Option<IdempotencyClaim> {
    let ttl = chrono::Duration::from_std(state.config.idempotency_ttl)
        .unwrap_or_else(|_| chrono::Duration::days(1));
    key.map(|key| IdempotencyClaim::new(scope, key, body, now, ttl))
}

pub(crate) use ops::now;
