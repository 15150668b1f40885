//! The reads: the caller's threads, one thread, and the owner's change feed.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use intentd_lifecycle::InboxChange;

use super::thread_or_404;
use super::view::{change_kind, format_cursor, parse_cursor, view_of};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{NamedOwner, PathParam, QueryParams};
use crate::openapi::schemas::{ChangesAnswer, ThreadAnswer, ThreadsAnswer};
use crate::routes::read_barrier;
use crate::validate::path_uuid;
use crate::{views, AppState};

const DEFAULT_CHANGES: usize = 50;
const MAX_CHANGES: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
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
pub(super) async fn list_threads(
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
pub(super) async fn get_thread(
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
pub(super) struct ChangesQuery {
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
pub(super) async fn list_changes(
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
