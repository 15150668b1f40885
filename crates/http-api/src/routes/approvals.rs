//! `POST /v1/approvals/{approval_id}/decision` `{"decision": "approve"|"reject",
//! "comment"?}`: the approvals view of the inbox. An approval id is a thread id, which is
//! the intent id; the decision resumes the intent exactly as the inbox's approve and reject
//! do (see [`super::inbox::decide`]; the outcome rule is `intentd_lifecycle::inbox::outcome_for`), so the `human_task` rules apply the same way.
//! Answers `api.approvals.decision.response.v1.json`.

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::inbox::decide;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, JsonBody, NamedOwner, PathParam};
use crate::openapi::schemas::{ApprovalAnswer, ApprovalDecisionRequest};
use crate::validate::{check_len, path_uuid, Body};
use crate::{views, ApiConfig, AppState};
use intentd_lifecycle::inbox::Decision;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(decision))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/approvals/{approval_id}/decision", post(decision))
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

/// The approvals schema allows shorter comments than the inbox's.
const MAX_COMMENT_LEN: usize = 1000;

fn parse_decision(body: &Value) -> Result<(Decision, Option<String>), ApiError> {
    let b = Body::lenient(body)?;
    b.deny_unknown(&["decision", "comment"])?;
    let decision = match b.required_str("decision")? {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        other => {
            return Err(ApiError::SchemaInvalid(format!(
                "decision {other:?} is not one of approve, reject"
            )))
        }
    };
    let comment = b.str("comment")?;
    if let Some(c) = comment {
        check_len("comment", c, 0, MAX_COMMENT_LEN)?;
    }
    Ok((decision, comment.map(str::to_string)))
}

#[utoipa::path(
    post,
    path = "/v1/approvals/{approval_id}/decision",
    tag = "inbox",
    params(("approval_id" = Uuid, Path, description = "The approval (the intent's id)"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, crate::openapi::IdempotencyKeyHeader),
    request_body = ApprovalDecisionRequest,
    responses((status = 200, description = "The recorded decision", body = ApprovalAnswer))
)]
async fn decision(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("approval_id", &id)?;
    let (decision, comment) = parse_decision(&body)?;
    let decided = decide(
        &state,
        &caller,
        named.as_deref(),
        id,
        decision,
        comment.clone(),
        key,
        &body,
    )
    .await?;
    Ok(Json(approval_answer(id, decision, comment, &decided.at)))
}

fn approval_answer(
    id: uuid::Uuid,
    decision: Decision,
    comment: Option<String>,
    at: &intentd_lifecycle::Timestamp,
) -> Value {
    json!({
        "ok": true,
        "approval": {
            "approval_id": id,
            "decision": decision.as_str(),
            "comment": comment,
            "decided_at": views::timestamp(at),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_bodies() {
        assert_eq!(
            parse_decision(&json!({"decision": "approve"})).unwrap(),
            (Decision::Approve, None)
        );
        assert_eq!(
            parse_decision(&json!({"decision": "reject", "comment": "no budget"})).unwrap(),
            (Decision::Reject, Some("no budget".into()))
        );
        for bad in [
            json!({}),
            json!({"decision": "maybe"}),
            json!({"decision": "approve", "comment": "x".repeat(1001)}),
            json!({"decision": "approve", "extra": true}),
        ] {
            assert_eq!(
                parse_decision(&bad).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
        assert_eq!(
            parse_decision(&json!({"decision": true}))
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    /// `additionalProperties: false` at both levels of the response schema.
    #[test]
    fn the_answer_has_exactly_the_schema_fields() {
        let v = approval_answer(
            uuid::Uuid::from_u128(1),
            Decision::Approve,
            None,
            &chrono::DateTime::UNIX_EPOCH,
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["ok", "approval"]);
        let keys: Vec<&str> = v["approval"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["approval_id", "decision", "comment", "decided_at"]);
        assert_eq!(v["approval"]["decided_at"], "1970-01-01T00:00:00.000000Z");
    }
}
