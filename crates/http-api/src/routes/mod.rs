//! The API's resources, one module each, merged into one router here; plus the few steps
//! every intent route shares (loading an intent, proposing a change, idempotency claims).

mod agents;
mod capabilities;
mod events;
mod health;
mod intents;
mod keys;

use axum::Router;
use chrono::Utc;
use intentd_lifecycle::{
    Command, Event, IdempotencyClaim, Intent, IntentCommand, Reply, Timestamp,
};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::validate::request_hash;
use crate::{ApiConfig, AppState};

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(capabilities::router())
        .merge(intents::router(config))
        .merge(events::router())
        .merge(agents::router())
        .merge(keys::router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this route does not accept that method".into())
}

/// Reads an intent from the local replica. A miss is confirmed with a read barrier before it
/// becomes a 404, so an intent created through another node moments ago is still found.
/// With `linearizable`, the barrier comes first and the answer reflects every acknowledged
/// write (`GET /v1/intents/{id}` must never show a state older than one already returned).
pub(crate) async fn load_intent(
    state: &AppState,
    id: Uuid,
    linearizable: bool,
) -> Result<Intent, ApiError> {
    let reader = state.cluster.reader();
    if linearizable {
        state.cluster.read_barrier().await?;
    } else if let Some(intent) = reader.intent(&id)? {
        return Ok(intent);
    } else {
        state.cluster.read_barrier().await?;
    }
    reader
        .intent(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("intent {id} not found")))
}

/// What an accepted intent command returned.
pub(crate) struct Written {
    pub(crate) intent: Intent,
    pub(crate) events: Vec<Event>,
    /// The command was an idempotent repeat and changed nothing.
    pub(crate) replayed: bool,
}

/// Proposes one intent command through Raft and waits until it is committed and applied.
pub(crate) async fn write_intent(
    state: &AppState,
    command: IntentCommand,
    idempotency: Option<IdempotencyClaim>,
) -> Result<Written, ApiError> {
    let reply = state
        .cluster
        .write(Command::Intent {
            command,
            idempotency,
        })
        .await?;
    match reply {
        Reply::Intent {
            intent,
            events,
            replayed,
        } => Ok(Written {
            intent: *intent,
            events,
            replayed,
        }),
        Reply::Done => Err(ApiError::Internal(
            "an intent command was answered without an intent".into(),
        )),
    }
}

/// The claim an `Idempotency-Key` makes. The proposer decides `expires_at` (apply never reads
/// a clock), and the hash is over the canonical body so a reformatted retry still matches.
pub(crate) fn claim(
    state: &AppState,
    scope: String,
    key: Option<String>,
    body: &Value,
    now: Timestamp,
) -> Option<IdempotencyClaim> {
    let ttl = chrono::Duration::from_std(state.config.idempotency_ttl)
        .unwrap_or_else(|_| chrono::Duration::days(1));
    key.map(|key| IdempotencyClaim {
        scope,
        key,
        request_hash: request_hash(body),
        expires_at: now + ttl,
    })
}

/// The clock reading a command carries; read once per request at the edge.
pub(crate) fn now() -> Timestamp {
    Utc::now()
}
