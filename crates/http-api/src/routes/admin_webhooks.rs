//! `GET /v1/admin/webhooks?limit`: every owner's webhook subscriptions with their delivery
//! counters, and the most recent push attempts of all of them, for operators (admin keys)
//! and the console's webhooks view. Replaying an attempt's event is the public
//! `POST /v1/webhooks/events/{event_id}/replay` (admins act for any owner).
//!
//! Delivery records are keyed by a derived id, not by time, so the answer reads at most
//! [`MAX_SCAN`] of them and says when it stopped there (`truncated`): the counters are then
//! of those records only.

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use intentd_lifecycle::WebhookDeliveryStatus;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::read_barrier;
use super::webhooks::subscription_view;
use crate::auth::AdminCaller;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::openapi::schemas::AdminWebhooksAnswer;
use crate::{views, AppState};

/// Delivery records one answer reads at most.
pub(crate) const MAX_SCAN: usize = 10_000;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(overview))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/webhooks", get(overview))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Query {
    limit: Option<usize>,
}

#[derive(Default)]
struct Counts {
    delivered: u64,
    pending: u64,
    dead_lettered: u64,
}

#[utoipa::path(
    get,
    path = "/v1/admin/webhooks",
    tag = "admin",
    params(Query),
    responses((status = 200, description = "Delivery counts per subscription and the latest attempts", body = AdminWebhooksAnswer)),
    operation_id = "admin_webhooks"
)]
async fn overview(
    State(state): State<AppState>,
    _admin: AdminCaller,
    QueryParams(q): QueryParams<Query>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    read_barrier(&state).await?;
    let reader = state.cluster.reader();
    let records = reader.webhook_delivery_records(MAX_SCAN + 1)?;
    let truncated = records.len() > MAX_SCAN;
    let mut counts: HashMap<Uuid, Counts> = HashMap::new();
    let mut attempts = Vec::new();
    for d in records.iter().take(MAX_SCAN) {
        let c = counts.entry(d.subscription_id).or_default();
        match d.status {
            WebhookDeliveryStatus::Delivered => c.delivered += 1,
            WebhookDeliveryStatus::Pending => c.pending += 1,
            WebhookDeliveryStatus::DeadLettered => c.dead_lettered += 1,
        }
        if let Some(event) = reader.webhook_event(&d.event_id)? {
            attempts.push((event.at, d, event.event_type));
        }
    }
    attempts.sort_by_key(|a| std::cmp::Reverse(a.0));
    let recent: Vec<Value> = attempts
        .iter()
        .take(limit)
        .map(|(at, d, event_type)| {
            json!({
                "delivery_id": d.delivery_id,
                "event_id": d.event_id,
                "event_type": event_type,
                "event_at": views::timestamp(at),
                "subscription_id": d.subscription_id,
                "status": status_name(d.status),
                "attempts": d.attempts,
                "replays": d.replays,
                "next_attempt_at": d.next_attempt_at.as_ref().map(views::timestamp),
                "last_error": d.last_error,
            })
        })
        .collect();
    let subscriptions: Vec<Value> = reader
        .all_subscriptions()?
        .iter()
        .map(|s| {
            let mut view = subscription_view(s);
            let c = counts.remove(&s.id).unwrap_or_default();
            view["counters"] = json!({
                "delivered": c.delivered,
                "pending": c.pending,
                "dead_lettered": c.dead_lettered,
            });
            view
        })
        .collect();
    Ok(Json(json!({
        "ok": true,
        "subscriptions": subscriptions,
        "recent_attempts": recent,
        "truncated": truncated,
    })))
}

fn status_name(s: WebhookDeliveryStatus) -> &'static str {
    match s {
        WebhookDeliveryStatus::Delivered => "delivered",
        WebhookDeliveryStatus::Pending => "pending",
        WebhookDeliveryStatus::DeadLettered => "dead_lettered",
    }
}
