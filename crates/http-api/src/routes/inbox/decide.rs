//! Approve and reject: a decision resumes the intent (see the module doc of `inbox`), so the
//! `human_task` rules are apply's, like any other resume's.

use axum::extract::State;
use axum::Json;
use intentd_lifecycle::inbox::{outcome_for, Decision};
use intentd_lifecycle::{IntentCommand, ResumeAction, Timestamp};
use intentd_operations::change::change_scope;
use intentd_operations::intents::Written;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::find_thread;
use super::view::view_of;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, JsonBody, NamedOwner, PathParam};
use crate::openapi::schemas::{InboxDecisionAnswer, InboxDecisionRequest};
use crate::routes::{claim, load_intent, now, write_intent};
use crate::validate::{check_len, path_uuid, Body};
use crate::{views, AppState};

const MAX_COMMENT_LEN: usize = 2000;

/// `{"comment"?}` of approve and reject (`null` allowed, as the gateway does).
pub(crate) fn parse_comment(body: &Value, max: usize) -> Result<Option<String>, ApiError> {
    let b = Body::lenient(body)?;
    b.deny_unknown(&["comment"])?;
    let comment = b.str("comment")?;
    if let Some(c) = comment {
        check_len("comment", c, 0, max)?;
    }
    Ok(comment.map(str::to_string))
}

/// What a decision did.
pub(crate) struct Decided {
    pub(crate) written: Written,
    pub(crate) at: Timestamp,
}

/// Decides the approval `id` (thread id = intent id): resumes the intent with `Complete` and
/// `{"outcome", "comment"}`. Without a thread (an intent with a `human_task` whose thread
/// is gone, or addressed elsewhere) the caller must be the intent's receiver.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decide(
    state: &AppState,
    caller: &Caller,
    named: Option<&str>,
    id: Uuid,
    decision: Decision,
    comment: Option<String>,
    key: Option<String>,
    body: &Value,
) -> Result<Decided, ApiError> {
    let intent = match find_thread(state, caller, named, id).await? {
        Some(thread) => load_intent(state, thread.intent_id, false).await?,
        // The thread exists but is in another inbox than the one named.
        None if state.cluster.reader().inbox_thread(&id)?.is_some() => {
            return Err(ApiError::NotFound(format!("approval {id} not found")))
        }
        None => {
            let intent = load_intent(state, id, false).await.map_err(|e| match e {
                ApiError::NotFound(_) => ApiError::NotFound(format!("approval {id} not found")),
                other => other,
            })?;
            if intent.human_task.is_none() {
                return Err(ApiError::NotFound(format!("approval {id} not found")));
            }
            caller.require_receiver_of(&intent)?;
            intent
        }
    };
    let mut result = Map::new();
    result.insert(
        "outcome".into(),
        json!(outcome_for(decision, intent.human_task.as_ref())),
    );
    if let Some(c) = &comment {
        result.insert("comment".into(), json!(c));
    }
    result.insert("decision".into(), json!(decision.as_str()));
    let at = now();
    let claim = claim(
        state,
        change_scope(&caller.key, decision.as_str(), intent.id),
        key,
        body,
        at,
    );
    let command = IntentCommand::Resume {
        intent_id: intent.id,
        action: ResumeAction::Complete {
            result: Value::Object(result),
        },
        actor: caller.key.acting_as(named),
        at,
    };
    let written = write_intent(state, command, claim).await?;
    tracing::info!(intent_id = %intent.id, decision = decision.as_str(), replayed = written.replayed, "approval decided");
    Ok(Decided { written, at })
}

async fn decide_thread(
    state: AppState,
    caller: Caller,
    named: Option<String>,
    id: String,
    key: Option<String>,
    body: Value,
    decision: Decision,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("thread_id", &id)?;
    let comment = parse_comment(&body, MAX_COMMENT_LEN)?;
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
    let thread = match state.cluster.reader().inbox_thread(&id)? {
        Some(thread) => view_of(&state, &thread)?,
        None => Value::Null,
    };
    Ok(Json(json!({
        "ok": true,
        "thread": thread,
        "decision": decision.as_str(),
        "comment": comment,
        "decided_at": views::timestamp(&decided.at),
        "intent": views::intent(&decided.written.intent),
    })))
}

/// `POST /v1/inbox/{thread_id}/approve`.
#[utoipa::path(
    post,
    path = "/v1/inbox/{thread_id}/approve",
    tag = "inbox",
    params(("thread_id" = Uuid, Path, description = "The thread (the intent's id)"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, crate::openapi::IdempotencyKeyHeader),
    request_body = InboxDecisionRequest,
    responses((status = 200, description = "The decision and the intent it moved", body = InboxDecisionAnswer))
)]
pub(super) async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    decide_thread(state, caller, named, id, key, body, Decision::Approve).await
}

/// `POST /v1/inbox/{thread_id}/reject`.
#[utoipa::path(
    post,
    path = "/v1/inbox/{thread_id}/reject",
    tag = "inbox",
    params(("thread_id" = Uuid, Path, description = "The thread (the intent's id)"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, crate::openapi::IdempotencyKeyHeader),
    request_body = InboxDecisionRequest,
    responses((status = 200, description = "The decision and the intent it moved", body = InboxDecisionAnswer))
)]
pub(super) async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    decide_thread(state, caller, named, id, key, body, Decision::Reject).await
}
