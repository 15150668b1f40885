//! Admin: cluster status and membership changes. Any node accepts them; changes run on the
//! leader (the consensus layer forwards them).

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use intentd_consensus::{MembershipChange, MembershipView};
use serde_json::{json, Value};

use crate::auth::AdminCaller;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::openapi::schemas::{AddLearnerRequest, ClusterStatusAnswer, MembershipAnswer};
use crate::validate::Body;
use crate::AppState;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(status, add_learner, promote, remove))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/members/{id}/promote", post(promote))
        .route("/v1/cluster/members/{id}", delete(remove))
}

pub(crate) fn membership_view(m: &MembershipView) -> Value {
    let nodes: serde_json::Map<String, Value> = m
        .nodes
        .iter()
        .map(|(id, addr)| (id.to_string(), json!(addr)))
        .collect();
    json!({ "voters": m.voters, "learners": m.learners, "nodes": nodes })
}

/// `GET /v1/cluster/status`: this node's view; no read barrier, so it answers without a quorum.
#[utoipa::path(
    get,
    path = "/v1/cluster/status",
    tag = "admin",
    responses((status = 200, description = "This node and the membership", body = ClusterStatusAnswer))
)]
async fn status(
    State(state): State<AppState>,
    AdminCaller(_): AdminCaller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({
        "ok": true,
        "node": state.cluster.status(),
        "membership": membership_view(&state.cluster.membership()),
    })))
}

fn node_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::SchemaInvalid(format!("{raw:?} is not a node id")))
}

/// `POST /v1/cluster/learners` `{"node_id": 4, "raft_addr": "host:port"}`: answers once the
/// learner has caught up with the log.
#[utoipa::path(
    post,
    path = "/v1/cluster/learners",
    tag = "admin",
    request_body = AddLearnerRequest,
    responses((status = 200, description = "The membership, once the learner caught up", body = MembershipAnswer))
)]
async fn add_learner(
    State(state): State<AppState>,
    AdminCaller(_): AdminCaller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let b = Body::strict(&body)?;
    b.deny_unknown(&["node_id", "raft_addr"])?;
    let node_id = b
        .uint("node_id", 1)?
        .ok_or_else(|| ApiError::SchemaInvalid("node_id is required".into()))?;
    let raft_addr = b.required_str("raft_addr")?;
    let valid_addr = raft_addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid_addr {
        return Err(ApiError::SchemaInvalid(
            "raft_addr must be HOST:PORT".into(),
        ));
    }
    let membership = state
        .cluster
        .change_membership(MembershipChange::AddLearner {
            node_id,
            raft_addr: raft_addr.to_string(),
        })
        .await?;
    tracing::info!(node_id, raft_addr, "learner added");
    Ok(Json(
        json!({ "ok": true, "membership": membership_view(&membership) }),
    ))
}

/// `POST /v1/cluster/members/{id}/promote`: a learner becomes a voter.
#[utoipa::path(
    post,
    path = "/v1/cluster/members/{node_id}/promote",
    tag = "admin",
    params(("node_id" = u64, Path, description = "A node id")),
    responses((status = 200, description = "The membership with the learner a voter", body = MembershipAnswer))
)]
async fn promote(
    State(state): State<AppState>,
    AdminCaller(_): AdminCaller,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let node_id = node_id(&id)?;
    if !state.cluster.membership().learners.contains(&node_id) {
        return Err(ApiError::NotFound(format!(
            "node {node_id} is not a learner"
        )));
    }
    let membership = state
        .cluster
        .change_membership(MembershipChange::Promote { node_id })
        .await?;
    tracing::info!(node_id, "learner promoted to voter");
    Ok(Json(
        json!({ "ok": true, "membership": membership_view(&membership) }),
    ))
}

/// `DELETE /v1/cluster/members/{id}`: removes a voter or a learner.
#[utoipa::path(
    delete,
    path = "/v1/cluster/members/{node_id}",
    tag = "admin",
    params(("node_id" = u64, Path, description = "A node id")),
    responses((status = 200, description = "The membership without the node", body = MembershipAnswer))
)]
async fn remove(
    State(state): State<AppState>,
    AdminCaller(_): AdminCaller,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let node_id = node_id(&id)?;
    if !state.cluster.membership().nodes.contains_key(&node_id) {
        return Err(ApiError::NotFound(format!(
            "node {node_id} is not a member"
        )));
    }
    let membership = state
        .cluster
        .change_membership(MembershipChange::Remove { node_id })
        .await?;
    tracing::info!(node_id, "member removed");
    Ok(Json(
        json!({ "ok": true, "membership": membership_view(&membership) }),
    ))
}
