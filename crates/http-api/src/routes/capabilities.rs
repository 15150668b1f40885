//! `GET /v1/capabilities`: what this server really serves, so clients can degrade instead of
//! calling routes that would 404. Claims only routes this crate implements.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::openapi::schemas::CapabilitiesAnswer;
use crate::AppState;

/// Each entry is 3..=120 characters (the response schema's bounds).
const CAPABILITIES: &[&str] = &[
    "health",
    "intents.create",
    "intents.idempotency",
    "intents.get",
    "intents.events.list",
    "intents.events.stream",
    "intents.resolve",
    "intents.resume",
    "intents.controls",
    "intents.policy",
    "intents.ack",
    "agents.list",
    "agents.get",
    "agents.intents.stream",
    "agents.binding",
    "agents.intents.receive",
    "deliveries.list",
    "deliveries.get",
    "deliveries.replay",
    "inbox.list",
    "inbox.get",
    "inbox.changes",
    "inbox.reply",
    "inbox.delegate",
    "inbox.approve",
    "inbox.reject",
    "inbox.messages.delete",
    "approvals.decision",
    "webhooks.subscriptions",
    "webhooks.events",
    "webhooks.events.replay",
    "scenarios.apply",
    "scenarios.validate",
    "metrics",
    "admin.api_keys",
];

/// Every `intent_type` matching the create pattern is accepted; these are the generic types
/// the server has no special handling for, named in the `intent.*.v1` form the schema wants.
const SUPPORTED_INTENT_TYPES: &[&str] = &["intent.generic.v1"];

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(capabilities))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/v1/capabilities", get(capabilities))
}

#[utoipa::path(
    get,
    path = "/v1/capabilities",
    tag = "capabilities",
    responses((status = 200, description = "What this server supports", body = CapabilitiesAnswer))
)]
async fn capabilities(_caller: Caller) -> Json<Value> {
    Json(body())
}

fn body() -> Value {
    json!({
        "ok": true,
        "capabilities": CAPABILITIES,
        "supported_intent_types": SUPPORTED_INTENT_TYPES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response schema has `additionalProperties: false`, string bounds and a pattern.
    #[test]
    fn body_matches_the_schema() {
        let v = body();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["ok", "capabilities", "supported_intent_types"]);
        assert!(!CAPABILITIES.is_empty());
        for c in CAPABILITIES {
            assert!((3..=120).contains(&c.chars().count()), "{c}");
        }
        for t in SUPPORTED_INTENT_TYPES {
            let middle = t
                .strip_prefix("intent.")
                .and_then(|r| r.strip_suffix(".v1"))
                .unwrap();
            assert!(!middle.is_empty());
            assert!(middle
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
    }
}
