//! Agents, one file per concern: the directory (`GET /v1/agents`, `GET /v1/agents/{address}`,
//! [`directory`]), the delivery stream `GET /v1/agents/{address}/intents/stream` that
//! `client.listen()` reads ([`stream`]), and our extensions `PUT /v1/agents/{address}/binding`
//! ([`binding`]) and the poll binding's receive and ack ([`receive`]). This module only routes;
//! the address rule they share is `directory::agent_address`.
//!
//! Addresses contain slashes (`acme/prod/billing`) and axum's wildcard must end a route, so
//! one wildcard route takes everything under `/v1/agents/` and dispatches on the suffix.
//!
//! Directory entries follow `api.agents.*.response.v1.json` and add one field the schema
//! does not list (it says `additionalProperties: false`): `binding`, how the agent receives
//! (mode, lease length, and for HTTP the URL and `secret_hint`, never the secret).

mod binding;
mod directory;
pub(crate) mod receive;
mod stream;

pub(crate) use binding::{binding_view, parse_binding_fields, BindingRequest, BINDING_FIELDS};
pub(crate) use directory::{agent_address, known_agents};

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::DateTime;
use intentd_lifecycle::{AgentConfig, Role, Timestamp};
use intentd_operations::{agent_deliveries, Delivery, StatusFilter, StreamOptions, Watch};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::StreamExt as _;

use crate::auth::{bare as bare_address, Caller};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::{sse, views, ApiConfig, AppState};
use binding::put_binding;
use directory::{get_agent, list_agents};
use receive::receive;
use stream::stream;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    directory::list_agents,
    directory::get_agent,
    binding::put_binding,
    stream::stream
))]
pub(crate) struct Doc;

pub(crate) fn router(config: &ApiConfig) -> Router<AppState> {
    Router::new()
        .route("/v1/agents", get(list_agents))
        .route(
            "/v1/agents/{*rest}",
            get(agent_route).put(agent_put).post(agent_post),
        )
        .layer(DefaultBodyLimit::max(config.max_request_body_bytes))
}

const STREAM_SUFFIX: &str = "/intents/stream";
const BINDING_SUFFIX: &str = "/binding";
const RECEIVE_SUFFIX: &str = "/intents/receive";

fn no_such_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// `PUT /v1/agents/{address}/binding`.
async fn agent_put(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(rest): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let address = rest
        .strip_suffix(BINDING_SUFFIX)
        .ok_or_else(no_such_route)?;
    put_binding(&state, &caller, address, &body).await
}

/// `POST /v1/agents/{address}/intents/receive`.
async fn agent_post(
    State(state): State<AppState>,
    caller: Caller,
    ctx: RequestContext,
    PathParam(rest): PathParam<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let address = rest
        .strip_suffix(RECEIVE_SUFFIX)
        .ok_or_else(no_such_route)?;
    receive(&state, &caller, &ctx, address, &body).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AgentQuery {
    since: Option<u64>,
    wait_seconds: Option<u64>,
    status: Option<String>,
}

async fn agent_route(
    State(state): State<AppState>,
    caller: Caller,
    ctx: RequestContext,
    headers: HeaderMap,
    PathParam(rest): PathParam<String>,
    QueryParams(query): QueryParams<AgentQuery>,
) -> Result<Response, ApiError> {
    match rest.strip_suffix(STREAM_SUFFIX) {
        Some(address) => stream(state, caller, ctx, headers, address, query).await,
        None => get_agent(&state, &caller, &rest).map(IntoResponse::into_response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_scheme_and_slashes() {
        assert_eq!(
            bare_address("agent://acme/prod/billing"),
            "acme/prod/billing"
        );
        assert_eq!(
            "acme/prod/billing/intents/stream".strip_suffix(STREAM_SUFFIX),
            Some("acme/prod/billing")
        );
    }
}
