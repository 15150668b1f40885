//! The human inbox: one thread per intent that waits for a person (`thread_id` =
//! `intent_id`), owned by one address at a time, as `api.inbox.*.json` describe it.
//!
//! - `GET /v1/inbox[?owner_agent=&status=pending|active|done]`, `GET /v1/inbox/{thread_id}`
//! - `GET /v1/inbox/changes?cursor=&limit=`: the owner's change feed, oldest first
//! - `POST /v1/inbox/{thread_id}/reply` `{"message"}`, `/delegate` `{"delegate_to", "note"?}`,
//!   `/approve` and `/reject` `{"comment"?}`, `/messages/delete` `{"mode", "message_ids"? |
//!   "limit"?}`
//!
//! The owner is the `owner_agent` parameter (or the gateway's `x-owner-agent` header), else
//! the key's own principal; only admin keys act for other owners (README, "Roles").
//!
//! Approve and reject are not inbox-only state: they resume the intent
//! (`ResumeAction::Complete` with `{"outcome", "comment"}`), so the `human_task` rules
//! (`allowed_outcomes`, `required_comment`) are checked by apply like any other resume and a
//! violation is a 422. `approve` sends the first of `approved`, `approve`, `yes`, `accept`
//! that the task allows (`approved` when it lists none), `reject` likewise with `rejected`,
//! `reject`, `no`, `deny`.
//!
//! Views follow the schemas' required thread fields; `status` is `done` once the intent is
//! terminal, `pending` while it waits for a person, `active` otherwise. The `timeline` has
//! the thread's creation, the intent's events (ids derived from intent id and `seq`) and
//! the messages (`inbox.message`, id = message id; deleted ones as
//! `inbox.message_deleted` without text), in time order. Extra thread fields: `title`,
//! `messages`, `intent_status`, `waiting_reason`, `pending_with`, `human_task`.
//!
//! Deviations: a delegation `note` is added to the thread as a message by the delegating
//! owner, after the delegation (two commits, not one). `messages/delete` marks messages
//! deleted for every reader in both modes (there is one copy of a thread); `mode: self`
//! may delete only the caller's own messages, `both` any; without `message_ids` it deletes
//! the newest `limit` (default 1) such messages.

mod decide;
mod delete;
mod messages;
mod read;
mod view;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use intentd_lifecycle::InboxThread;
use serde_json::Value;
use uuid::Uuid;

use super::read_barrier;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::{ApiConfig, AppState};

pub(crate) use decide::decide;
use view::view_of;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    read::list_threads,
    read::list_changes,
    read::get_thread,
    messages::reply,
    messages::delegate,
    decide::approve,
    decide::reject,
    delete::delete_messages
))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/inbox", get(read::list_threads))
        .route("/v1/inbox/changes", get(read::list_changes))
        .route("/v1/inbox/{thread_id}", get(read::get_thread))
        .route("/v1/inbox/{thread_id}/reply", post(messages::reply))
        .route("/v1/inbox/{thread_id}/delegate", post(messages::delegate))
        .route("/v1/inbox/{thread_id}/approve", post(decide::approve))
        .route("/v1/inbox/{thread_id}/reject", post(decide::reject))
        .route(
            "/v1/inbox/{thread_id}/messages/delete",
            post(delete::delete_messages),
        )
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

/// The thread `id`, if the caller may see it: a miss is confirmed with a read barrier (the
/// thread may have been created through another node a moment ago). With a named owner the
/// thread must be in that owner's inbox (a 404 otherwise: other inboxes are not disclosed);
/// agent keys only reach their own threads.
pub(crate) async fn find_thread(
    state: &AppState,
    caller: &Caller,
    named: Option<&str>,
    id: Uuid,
) -> Result<Option<InboxThread>, ApiError> {
    let reader = state.cluster.reader();
    let mut thread = reader.inbox_thread(&id)?;
    if thread.is_none() {
        read_barrier(state).await?;
        thread = reader.inbox_thread(&id)?;
    }
    let Some(thread) = thread else {
        return Ok(None);
    };
    if let Some(named) = named {
        let owner = caller.owner(Some(named))?;
        if owner != thread.owner {
            return Ok(None);
        }
    }
    if !caller.may_act_as(&thread.owner) {
        return Err(ApiError::Forbidden(format!(
            "this key may not act on threads of agent://{}",
            thread.owner
        )));
    }
    Ok(Some(thread))
}

pub(super) fn no_thread(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("inbox thread {id} not found"))
}

pub(super) async fn thread_or_404(
    state: &AppState,
    caller: &Caller,
    named: Option<&str>,
    id: Uuid,
) -> Result<InboxThread, ApiError> {
    find_thread(state, caller, named, id)
        .await?
        .ok_or_else(|| no_thread(id))
}

/// The thread again after a write to it, for the answer.
pub(super) fn reread(state: &AppState, id: Uuid) -> Result<Value, ApiError> {
    let thread = state
        .cluster
        .reader()
        .inbox_thread(&id)?
        .ok_or_else(|| no_thread(id))?;
    view_of(state, &thread)
}

#[cfg(test)]
mod fixtures {
    use chrono::TimeZone;
    use intentd_lifecycle::{Event, InboxMessage, InboxThread, Status, ThreadStatus, Timestamp};
    use serde_json::Map;
    use uuid::Uuid;

    pub(super) fn at(s: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, s).unwrap()
    }
    pub(super) fn thread() -> InboxThread {
        InboxThread {
            thread_id: Uuid::from_u128(1),
            intent_id: Uuid::from_u128(1),
            owner: "acme/prod/billing".into(),
            title: "Approve the refund".into(),
            status: ThreadStatus::Open,
            created_at: at(5),
            updated_at: at(30),
            messages: vec![
                InboxMessage {
                    message_id: Uuid::from_u128(10),
                    author: "agent://acme/prod/billing".into(),
                    text: "looking".into(),
                    at: at(20),
                    deleted: false,
                },
                InboxMessage {
                    message_id: Uuid::from_u128(11),
                    author: "agent://ops/alice".into(),
                    text: String::new(),
                    at: at(25),
                    deleted: true,
                },
                InboxMessage {
                    message_id: Uuid::from_u128(12),
                    author: "agent://ops/alice".into(),
                    text: "please hurry".into(),
                    at: at(30),
                    deleted: false,
                },
            ],
            change_seq: 3,
        }
    }
    pub(super) fn event(seq: u64, s: u32) -> Event {
        Event {
            intent_id: Uuid::from_u128(1),
            seq,
            event_type: intentd_lifecycle::EventType::Created,
            status: Status::Created,
            at: at(s),
            actor: "x".into(),
            waiting_reason: None,
            handler: None,
            details: Map::new(),
        }
    }
}
