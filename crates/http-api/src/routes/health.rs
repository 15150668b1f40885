//! `GET /health`: unauthenticated, so load balancers and operators can ask any node who it is
//! and whether it can take writes: it must know a leader and its clock must agree with the
//! cluster's (otherwise writes would fail with 503).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openapi::schemas::HealthAnswer;
use crate::AppState;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(health))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "meta",
    responses((status = 200, description = "The node knows a leader and its clock agrees (503 otherwise, with the same fields)", body = HealthAnswer)),
    security(())
)]
async fn health(State(state): State<AppState>) -> Response {
    let status = state.cluster.status();
    let has_leader = status.leader_id.is_some();
    let clock_ok = status.clock.synchronized;
    let body = json!({
        "ok": has_leader && clock_ok,
        "node_id": status.node_id,
        "role": status.role,
        "leader_id": status.leader_id,
        "term": status.term,
        "applied_index": state.cluster.reader().applied_index(),
        "commit_index": status.commit_index,
        "last_log_index": status.last_log_index,
        "members": status.members,
        "clock": status.clock,
    });
    if has_leader && clock_ok {
        return Json(body).into_response();
    }
    let message = if has_leader {
        "this node's clock does not agree with the cluster's; it refuses writes until it does"
    } else {
        "this node knows no leader right now"
    };
    let Value::Object(fields) = body else {
        unreachable!("json! of an object literal is an object")
    };
    ApiError::Unavailable {
        message: message.into(),
        retry_after_secs: 1,
    }
    .into_response_with(fields)
}
