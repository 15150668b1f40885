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

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use intentd_delivery::intents::{change_scope, Written};
use intentd_lifecycle::inbox::{outcome_for, Decision};
use intentd_lifecycle::webhook::derived_id;
use intentd_lifecycle::{
    same_address, Command, Event, InboxChange, InboxChangeKind, InboxThread, Intent, IntentCommand,
    ResumeAction, Status, ThreadStatus, Timestamp, WaitingReason,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::agents::agent_address;
use super::{claim, load_intent, now, read_barrier, write, write_intent};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, JsonBody, NamedOwner, PathParam, QueryParams};
use crate::openapi::schemas::{
    ChangesAnswer, DelegateRequest, DeleteMessagesAnswer, DeleteMessagesRequest,
    InboxDecisionAnswer, InboxDecisionRequest, ReplyAnswer, ReplyRequest, ThreadAnswer,
    ThreadsAnswer,
};
use crate::validate::{check_len, path_uuid, Body};
use crate::{views, ApiConfig, AppState};

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_threads,
    list_changes,
    get_thread,
    reply,
    delegate,
    approve,
    reject,
    delete_messages
))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/inbox", get(list_threads))
        .route("/v1/inbox/changes", get(list_changes))
        .route("/v1/inbox/{thread_id}", get(get_thread))
        .route("/v1/inbox/{thread_id}/reply", post(reply))
        .route("/v1/inbox/{thread_id}/delegate", post(delegate))
        .route("/v1/inbox/{thread_id}/approve", post(approve))
        .route("/v1/inbox/{thread_id}/reject", post(reject))
        .route(
            "/v1/inbox/{thread_id}/messages/delete",
            post(delete_messages),
        )
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

const MAX_MESSAGE_LEN: usize = 5000;
const MAX_NOTE_LEN: usize = 2000;
const MAX_COMMENT_LEN: usize = 2000;
const DEFAULT_CHANGES: usize = 50;
const MAX_CHANGES: usize = 500;
/// Change cursors are opaque to clients; the prefix keeps them at the schema's 3 characters
/// minimum and makes a cursor from another API obvious.
const CURSOR_PREFIX: &str = "ic_";

// ---------------------------------------------------------------------------------------------
// Views

/// The thread status of the schemas' enum.
fn thread_status(thread: &InboxThread, intent: Option<&Intent>) -> &'static str {
    let terminal = intent.is_some_and(|i| i.status.is_terminal());
    if thread.status == ThreadStatus::Resolved || terminal {
        return "done";
    }
    let waits_for_person = intent.is_some_and(|i| {
        i.status == Status::Waiting && i.waiting_reason == Some(WaitingReason::WaitingForHuman)
    });
    if waits_for_person {
        "pending"
    } else {
        "active"
    }
}

/// Timeline actors are 2..=120 characters in the schemas.
fn actor_label(actor: &str) -> String {
    if actor.chars().count() < 2 {
        return "system".into();
    }
    actor.chars().take(120).collect()
}

fn timeline(thread: &InboxThread, events: &[Event]) -> Vec<Value> {
    let mut entries: Vec<(Timestamp, Value)> = Vec::new();
    entries.push((
        thread.created_at,
        json!({
            "event_id": derived_id(&thread.thread_id, b"inbox.thread_created"),
            "event_type": "inbox.thread_created",
            "actor": "system",
            "at": views::timestamp(&thread.created_at),
            "details": { "title": thread.title },
        }),
    ));
    for e in events {
        entries.push((
            e.at,
            json!({
                "event_id": derived_id(&e.intent_id, &e.seq.to_be_bytes()),
                "event_type": e.event_type.as_str(),
                "actor": actor_label(&e.actor),
                "at": views::timestamp(&e.at),
                "details": e.details,
                "seq": e.seq,
                "status": e.status.as_str(),
            }),
        ));
    }
    for m in &thread.messages {
        let (event_type, details) = if m.deleted {
            (
                "inbox.message_deleted",
                json!({ "message_id": m.message_id }),
            )
        } else {
            (
                "inbox.message",
                json!({ "message_id": m.message_id, "text": m.text }),
            )
        };
        entries.push((
            m.at,
            json!({
                "event_id": m.message_id,
                "event_type": event_type,
                "actor": actor_label(&m.author),
                "at": views::timestamp(&m.at),
                "details": details,
            }),
        ));
    }
    // Stable: equal times keep thread creation, events, messages in that order.
    entries.sort_by_key(|(at, _)| *at);
    entries.into_iter().map(|(_, v)| v).collect()
}

/// A thread as the inbox schemas show it (see the module docs for the extra fields).
pub(crate) fn thread_view(
    thread: &InboxThread,
    intent: Option<&Intent>,
    events: &[Event],
) -> Value {
    let mut m = Map::new();
    m.insert("thread_id".into(), json!(thread.thread_id));
    m.insert("intent_id".into(), json!(thread.intent_id));
    m.insert("status".into(), json!(thread_status(thread, intent)));
    m.insert(
        "owner_agent".into(),
        json!(format!("agent://{}", thread.owner)),
    );
    let (from, to) = intent.map_or_else(
        || (thread.owner.clone(), thread.owner.clone()),
        |i| (i.from_agent.clone(), i.to_agent.clone()),
    );
    m.insert("from_agent".into(), json!(from));
    m.insert("to_agent".into(), json!(to));
    m.insert(
        "created_at".into(),
        json!(views::timestamp(&thread.created_at)),
    );
    m.insert(
        "updated_at".into(),
        json!(views::timestamp(&thread.updated_at)),
    );
    m.insert("timeline".into(), Value::Array(timeline(thread, events)));
    m.insert("title".into(), json!(thread.title));
    let messages: Vec<Value> = thread
        .messages
        .iter()
        .map(|msg| {
            json!({
                "message_id": msg.message_id,
                "author": msg.author,
                "text": (!msg.deleted).then_some(&msg.text),
                "at": views::timestamp(&msg.at),
                "deleted": msg.deleted,
            })
        })
        .collect();
    m.insert("messages".into(), Value::Array(messages));
    if let Some(i) = intent {
        m.insert("intent_status".into(), json!(i.status.as_str()));
        m.insert(
            "waiting_reason".into(),
            json!(i.waiting_reason.map(|r| r.as_str())),
        );
        let full = views::intent(i);
        for field in ["pending_with", "human_task"] {
            if let Some(v) = full.get(field) {
                m.insert(field.into(), v.clone());
            }
        }
    }
    Value::Object(m)
}

/// Loads what a thread view needs besides the thread: its intent and the intent's events.
fn view_of(state: &AppState, thread: &InboxThread) -> Result<Value, ApiError> {
    let reader = state.cluster.reader();
    let intent = reader.intent(&thread.intent_id)?;
    let events = match &intent {
        Some(_) => reader.events(&thread.intent_id, 0, state.config.max_events_per_page)?,
        None => Vec::new(),
    };
    Ok(thread_view(thread, intent.as_ref(), &events))
}

fn format_cursor(seq: u64) -> String {
    format!("{CURSOR_PREFIX}{seq}")
}

/// A change cursor from the query: ours, or a bare number. Anything else is a malformed
/// parameter (400).
fn parse_cursor(raw: Option<&str>) -> Result<u64, ApiError> {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(0);
    };
    raw.strip_prefix(CURSOR_PREFIX)
        .unwrap_or(raw)
        .parse()
        .map_err(|_| ApiError::InvalidRequest(format!("cursor {raw:?} is not an inbox cursor")))
}

fn change_kind(kind: InboxChangeKind) -> &'static str {
    match kind {
        InboxChangeKind::Added => "added",
        InboxChangeKind::Messages => "messages",
        InboxChangeKind::Resolved => "resolved",
        InboxChangeKind::Removed => "removed",
    }
}

// ---------------------------------------------------------------------------------------------
// Access

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

fn no_thread(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("inbox thread {id} not found"))
}

async fn thread_or_404(
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
fn reread(state: &AppState, id: Uuid) -> Result<Value, ApiError> {
    let thread = state
        .cluster
        .reader()
        .inbox_thread(&id)?
        .ok_or_else(|| no_thread(id))?;
    view_of(state, &thread)
}

// ---------------------------------------------------------------------------------------------
// Reads

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    status: Option<String>,
}

/// `GET /v1/inbox`.
#[utoipa::path(
    get,
    path = "/v1/inbox",
    tag = "inbox",
    params(crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, ListQuery),
    responses((status = 200, description = "The owner's threads", body = ThreadsAnswer))
)]
async fn list_threads(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let owner = caller.owner(named.as_deref())?;
    let wanted = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s @ ("pending" | "active" | "done")) => Some(s),
        Some(other) => {
            return Err(ApiError::SchemaInvalid(format!(
                "status {other:?} is not one of pending, active, done"
            )))
        }
    };
    read_barrier(&state).await?;
    let mut threads = Vec::new();
    for thread in state.cluster.reader().inbox_threads(&owner)? {
        let view = view_of(&state, &thread)?;
        if wanted.is_none_or(|w| view["status"] == w) {
            threads.push(view);
        }
    }
    Ok(Json(json!({ "ok": true, "threads": threads })))
}

/// `GET /v1/inbox/{thread_id}`.
#[utoipa::path(
    get,
    path = "/v1/inbox/{thread_id}",
    tag = "inbox",
    params(("thread_id" = Uuid, Path, description = "The thread (the intent's id)"), crate::openapi::OwnerQuery, crate::openapi::OwnerHeader),
    responses((status = 200, description = "The thread", body = ThreadAnswer))
)]
async fn get_thread(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid("thread_id", &id)?;
    let thread = thread_or_404(&state, &caller, named.as_deref(), id).await?;
    Ok(Json(
        json!({ "ok": true, "thread": view_of(&state, &thread)? }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ChangesQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/inbox/changes?cursor=&limit=`: changes after `cursor`, each with the thread as
/// it is now (a thread delegated away shows its new owner; `change` says what happened).
#[utoipa::path(
    get,
    path = "/v1/inbox/changes",
    tag = "inbox",
    params(crate::openapi::OwnerQuery, crate::openapi::OwnerHeader, ChangesQuery),
    responses((status = 200, description = "Changes after cursor", body = ChangesAnswer))
)]
async fn list_changes(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    QueryParams(query): QueryParams<ChangesQuery>,
) -> Result<Json<Value>, ApiError> {
    let owner = caller.owner(named.as_deref())?;
    let since = parse_cursor(query.cursor.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_CHANGES).clamp(1, MAX_CHANGES);
    read_barrier(&state).await?;
    let reader = state.cluster.reader();
    let mut page: Vec<InboxChange> = reader.inbox_changes(&owner, since, limit + 1)?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    let mut changes = Vec::with_capacity(page.len());
    for change in &page {
        let Some(thread) = reader.inbox_thread(&change.thread_id)? else {
            continue;
        };
        let mut view = view_of(&state, &thread)?;
        view["change"] = json!(change_kind(change.kind));
        view["change_at"] = json!(views::timestamp(&change.at));
        changes.push(json!({ "cursor": format_cursor(change.seq), "thread": view }));
    }
    let next_cursor = match page.last() {
        Some(last) => Some(format_cursor(last.seq)),
        None => query.cursor.filter(|c| !c.trim().is_empty()),
    };
    Ok(Json(json!({
        "ok": true,
        "changes": changes,
        "next_cursor": next_cursor,
        "has_more": has_more,
    })))
}

// ---------------------------------------------------------------------------------------------
// Writes

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
async fn reply(
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
async fn delegate(
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
async fn approve(
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
async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    NamedOwner(named): NamedOwner,
    PathParam(id): PathParam<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    decide_thread(state, caller, named, id, key, body, Decision::Reject).await
}

/// Which messages a delete names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selection {
    Ids(Vec<Uuid>),
    Newest(usize),
}

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

/// The messages a delete removes now (already deleted ones are not counted again), or why
/// it may not.
fn select_messages(
    thread: &InboxThread,
    request: &DeleteRequest,
    actor: &str,
) -> Result<Vec<Uuid>, ApiError> {
    let mine = |author: &str| same_address(author, actor);
    match &request.selection {
        Selection::Ids(ids) => {
            let mut chosen = Vec::new();
            for id in ids {
                let message = thread
                    .messages
                    .iter()
                    .find(|m| m.message_id == *id)
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("message {id} is not in this thread"))
                    })?;
                if !request.both && !mine(&message.author) {
                    return Err(ApiError::Forbidden(format!(
                        "message {id} is not yours; mode both deletes others' messages"
                    )));
                }
                if !message.deleted && !chosen.contains(id) {
                    chosen.push(*id);
                }
            }
            Ok(chosen)
        }
        Selection::Newest(n) => Ok(thread
            .messages
            .iter()
            .rev()
            .filter(|m| !m.deleted && (request.both || mine(&m.author)))
            .take(*n)
            .map(|m| m.message_id)
            .collect()),
    }
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
async fn delete_messages(
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
    use chrono::TimeZone;
    use intentd_lifecycle::InboxMessage;

    fn at(s: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, s).unwrap()
    }

    fn thread() -> InboxThread {
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

    fn event(seq: u64, s: u32) -> Event {
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

    /// The schemas' required thread fields, and a time-ordered timeline with unique ids.
    #[test]
    fn thread_view_follows_the_schema() {
        let intent = views::tests::sample_intent();
        let v = thread_view(&thread(), Some(&intent), &[event(1, 5), event(2, 22)]);
        for field in [
            "thread_id",
            "intent_id",
            "status",
            "owner_agent",
            "from_agent",
            "to_agent",
            "created_at",
            "updated_at",
            "timeline",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(v["status"], "pending");
        assert_eq!(v["owner_agent"], "agent://acme/prod/billing");
        let timeline = v["timeline"].as_array().unwrap();
        let types: Vec<&str> = timeline
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "inbox.thread_created",
                "intent.created",
                "inbox.message",
                "intent.created",
                "inbox.message_deleted",
                "inbox.message"
            ]
        );
        let mut ids: Vec<&str> = timeline
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), timeline.len());
        for e in timeline {
            let actor = e["actor"].as_str().unwrap();
            assert!((2..=120).contains(&actor.chars().count()), "{actor}");
            assert!(e["details"].is_object());
        }
        // The deleted message's text is gone from both lists.
        assert!(!v.to_string().contains("\"text\":\"\""));
        assert_eq!(v["messages"][1]["text"], Value::Null);
    }

    #[test]
    fn thread_statuses() {
        let mut intent = views::tests::sample_intent();
        let mut t = thread();
        assert_eq!(thread_status(&t, Some(&intent)), "pending");
        intent.status = Status::InProgress;
        assert_eq!(thread_status(&t, Some(&intent)), "active");
        intent.status = Status::Completed;
        assert_eq!(thread_status(&t, Some(&intent)), "done");
        t.status = ThreadStatus::Resolved;
        assert_eq!(thread_status(&t, None), "done");
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(parse_cursor(None).unwrap(), 0);
        assert_eq!(parse_cursor(Some(&format_cursor(42))).unwrap(), 42);
        assert_eq!(parse_cursor(Some("7")).unwrap(), 7);
        assert_eq!(
            parse_cursor(Some("x")).unwrap_err().code(),
            "invalid_request"
        );
        assert!(format_cursor(0).len() >= 3);
    }

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
