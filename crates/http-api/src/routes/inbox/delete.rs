//! Deleting messages from a thread. Which messages a delete removes, and whether the caller
//! may remove them, is the inbox's rule (`intentd_lifecycle::inbox::messages_to_delete`);
//! this is the request's typing and the answer.

use axum::extract::State;
use axum::Json;
use intentd_lifecycle::inbox::{messages_to_delete, DeleteRefusal, MessageSelection};
use intentd_lifecycle::{Command, InboxThread};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{reread, thread_or_404};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, NamedOwner, PathParam};
use crate::openapi::schemas::{DeleteMessagesAnswer, DeleteMessagesRequest};
use crate::routes::{now, write};
use crate::validate::{path_uuid, Body};
use crate::AppState;

/// Which messages a delete names (the inbox's own type, named for the tests and parsing).
type Selection = MessageSelection;

#[derive(Debug, Clone, PartialEq, Eq)]
struct DeleteRequest {
    /// `both` may delete anyone's messages; `self` only the caller's own.
    both: bool,
    selection: Selection,
}

fn parse_delete(body: &Value) -> Result<DeleteRequest, ApiError> {
    let b = Body::strict(body)?;
    b.deny_unknown(&["mode", "message_ids", "limit"])?;
    let both = match b.required_str("mode")? {
        "self" => false,
        "both" => true,
        other => {
            return Err(ApiError::SchemaInvalid(format!(
                "mode {other:?} is not one of self, both"
            )))
        }
    };
    let limit = b.uint("limit", 1)?;
    if limit.is_some_and(|l| l > 100) {
        return Err(ApiError::SchemaInvalid("limit must be at most 100".into()));
    }
    let selection = match b.map().get("message_ids") {
        None => Selection::Newest(limit.unwrap_or(1) as usize),
        Some(Value::Array(ids)) => {
            if ids.is_empty() || ids.len() > 100 {
                return Err(ApiError::SchemaInvalid(
                    "message_ids must list 1 to 100 ids".into(),
                ));
            }
            let ids = ids
                .iter()
                .map(|v| match v {
                    Value::String(s) => path_uuid("message_ids[]", s),
                    _ => Err(ApiError::InvalidRequest(
                        "message_ids must be strings".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Selection::Ids(ids)
        }
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "message_ids must be an array".into(),
            ))
        }
    };
    Ok(DeleteRequest { both, selection })
}

/// The messages a delete removes now, or why it may not, as the API's errors.
fn select_messages(
    thread: &InboxThread,
    request: &DeleteRequest,
    actor: &str,
) -> Result<Vec<Uuid>, ApiError> {
    messages_to_delete(thread, &request.selection, request.both, actor).map_err(|refusal| {
        match refusal {
            DeleteRefusal::NotInThread(_) => ApiError::NotFound(refusal.to_string()),
            DeleteRefusal::NotYours(_) => ApiError::Forbidden(refusal.to_string()),
        }
    })
}

/// `POST /v1/inbox/{thread_id}/messages/delete`.
#[utoipa::path(
    post,
    path = "/v1/inbox/{thread_id}/messages/delete",
    tag = "inbox",
    params(("thread_id" = Uuid, Path, description = "The thread (the intent's id)"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    request_body = DeleteMessagesRequest,
    responses((status = 200, description = "The thread after the delete", body = DeleteMessagesAnswer))
)]
pub(super) async fn delete_messages(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("thread_id", &id)?;
    let request = parse_delete(&body)?;
    let thread = thread_or_404(&state, &caller, named.as_deref(), id).await?;
    let actor = caller.key.acting_as(named.as_deref());
    let chosen = select_messages(&thread, &request, &actor)?;
    if !chosen.is_empty() {
        let command = Command::InboxDeleteMessages {
            thread_id: id,
            message_ids: chosen.clone(),
            actor,
            at: now(),
        };
        write(&state, command).await?;
    }
    Ok(Json(json!({
        "ok": true,
        "thread": reread(&state, id)?,
        "mode": if request.both { "both" } else { "self" },
        "deleted_count": chosen.len(),
        "message_ids": chosen,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::inbox::fixtures::thread;

    #[test]
    fn deletes_select_messages() {
        let t = thread();
        let alice = "agent://ops/alice";
        let req = parse_delete(&json!({"mode": "self"})).unwrap();
        assert_eq!(req.selection, Selection::Newest(1));
        assert_eq!(
            select_messages(&t, &req, alice).unwrap(),
            [Uuid::from_u128(12)]
        );
        let req = parse_delete(&json!({"mode": "both", "limit": 5})).unwrap();
        assert_eq!(
            select_messages(&t, &req, alice).unwrap(),
            [Uuid::from_u128(12), Uuid::from_u128(10)]
        );
        let req = parse_delete(&json!({
            "mode": "self", "message_ids": [Uuid::from_u128(10).to_string()]
        }))
        .unwrap();
        assert_eq!(
            select_messages(&t, &req, alice).unwrap_err().code(),
            "forbidden"
        );
        let req = parse_delete(&json!({
            "mode": "self", "message_ids": [Uuid::from_u128(11).to_string()]
        }))
        .unwrap();
        assert!(
            select_messages(&t, &req, alice).unwrap().is_empty(),
            "already deleted"
        );
        let req = parse_delete(&json!({
            "mode": "both", "message_ids": [Uuid::from_u128(99).to_string()]
        }))
        .unwrap();
        assert_eq!(
            select_messages(&t, &req, alice).unwrap_err().code(),
            "not_found"
        );
        for bad in [
            json!({}),
            json!({"mode": "all"}),
            json!({"mode": "self", "message_ids": []}),
            json!({"mode": "self", "message_ids": ["nope"]}),
            json!({"mode": "self", "limit": 0}),
            json!({"mode": "self", "limit": 101}),
        ] {
            assert_eq!(
                parse_delete(&bad).unwrap_err().code(),
                "schema_invalid",
                "{bad}"
            );
        }
    }
}
