//! The owner's writes to a thread: a reply, and a delegation to another owner.

use axum::extract::State;
use axum::Json;
use intentd_lifecycle::Command;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{reread, thread_or_404};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, NamedOwner, PathParam};
use crate::openapi::schemas::{DelegateRequest, ReplyAnswer, ReplyRequest, ThreadAnswer};
use crate::routes::agents::agent_address;
use crate::routes::{now, write};
use crate::validate::{check_len, path_uuid, Body};
use crate::AppState;

const MAX_MESSAGE_LEN: usize = 5000;
const MAX_NOTE_LEN: usize = 2000;

fn parse_reply(body: &Value) -> Result<String, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&["message"])?;
    let message = b.required_str("message")?;
    check_len("message", message, 1, MAX_MESSAGE_LEN)?;
    Ok(message.to_string())
}

/// `POST /v1/inbox/{thread_id}/reply`.
#[utoipa::path(
    post,
    path = "/v1/inbox/{thread_id}/reply",
    tag = "inbox",
    params(("thread_id" = Uuid, Path, description = "The thread (the intent's id)"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, crate::openapi::IdempotencyKeyHeader),
    request_body = ReplyRequest,
    responses((status = 200, description = "The new message and the thread", body = ReplyAnswer))
)]
pub(super) async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("thread_id", &id)?;
    let text = parse_reply(&body)?;
    thread_or_404(&state, &caller, named.as_deref(), id).await?;
    let message_id = Uuid::new_v4();
    let command = Command::InboxReply {
        thread_id: id,
        message_id,
        author: caller.key.acting_as(named.as_deref()),
        text,
        at: now(),
    };
    write(&state, command).await?;
    Ok(Json(json!({
        "ok": true,
        "message_id": message_id,
        "thread": reread(&state, id)?,
    })))
}

fn parse_delegate(body: &Value) -> Result<(String, Option<String>), ApiError> {
    let b = Body::lenient(body)?;
    b.deny_unknown(&["delegate_to", "note"])?;
    let to = b.required_str("delegate_to")?;
    check_len("delegate_to", to, 3, 255)?;
    let note = b.str("note")?;
    if let Some(n) = note {
        check_len("note", n, 0, MAX_NOTE_LEN)?;
    }
    Ok((
        agent_address(to)?,
        note.filter(|n| !n.trim().is_empty()).map(str::to_string),
    ))
}

/// `POST /v1/inbox/{thread_id}/delegate`: the thread (and the intent's `pending_with`) goes
/// to another owner.
#[utoipa::path(
    post,
    path = "/v1/inbox/{thread_id}/delegate",
    tag = "inbox",
    params(("thread_id" = Uuid, Path, description = "The thread (the intent's id)"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, crate::openapi::IdempotencyKeyHeader),
    request_body = DelegateRequest,
    responses((status = 200, description = "The thread, now the delegate's", body = ThreadAnswer))
)]
pub(super) async fn delegate(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("thread_id", &id)?;
    let (to, note) = parse_delegate(&body)?;
    thread_or_404(&state, &caller, named.as_deref(), id).await?;
    let actor = caller.key.acting_as(named.as_deref());
    let at = now();
    let command = Command::InboxDelegate {
        thread_id: id,
        to: to.clone(),
        actor: actor.clone(),
        at,
    };
    write(&state, command).await?;
    if let Some(text) = note {
        let command = Command::InboxReply {
            thread_id: id,
            message_id: Uuid::new_v4(),
            author: actor,
            text,
            at,
        };
        write(&state, command).await?;
    }
    tracing::info!(thread_id = %id, to = %to, "inbox thread delegated");
    Ok(Json(json!({ "ok": true, "thread": reread(&state, id)? })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::inbox::decide::parse_comment;

    #[test]
    fn write_bodies() {
        assert_eq!(parse_reply(&json!({"message": "ok"})).unwrap(), "ok");
        for bad in [
            json!({}),
            json!({"message": ""}),
            json!({"message": "x".repeat(5001)}),
        ] {
            assert_eq!(parse_reply(&bad).unwrap_err().code(), "schema_invalid");
        }
        assert_eq!(
            parse_reply(&json!({"message": 1})).unwrap_err().code(),
            "invalid_request"
        );
        assert_eq!(
            parse_delegate(&json!({"delegate_to": "agent://ops/bob", "note": "yours"})).unwrap(),
            ("ops/bob".to_string(), Some("yours".to_string()))
        );
        assert_eq!(
            parse_delegate(&json!({"note": "x"})).unwrap_err().code(),
            "schema_invalid"
        );
        assert_eq!(parse_comment(&json!({"comment": null}), 10).unwrap(), None);
        assert_eq!(
            parse_comment(&json!({"comment": "x".repeat(11)}), 10)
                .unwrap_err()
                .code(),
            "schema_invalid"
        );
    }
}
