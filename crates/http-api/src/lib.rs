//! The HTTP edge of intentd: the AXME/AXP v1 REST and SSE API.
//!
//! ```text
//!  request -> context middleware (trace id, request id, span)
//!          -> extractors (Caller: API key -> 401/403; JsonBody: 400/413; ids: 422)
//!          -> handler: validate -> build a lifecycle Command -> Cluster::write (Raft)
//!                      or read_barrier + StateReader for reads; streams wait on the
//!                      per-key wake-ups of what they read (watch_queue, watch_intent)
//!          -> views (domain -> contract JSON) | ApiError (the one error shape)
//! ```
//!
//! Each resource lives in its own module under `routes` with its own `router()`; [`app`]
//! merges them. The edge owns no domain types: it translates JSON to the lifecycle crate's
//! commands and the replies back to JSON.

pub mod auth;
mod conn;
mod context;
mod error;
mod extract;
pub mod openapi;
mod routes;
mod sse;
mod validate;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use intentd_consensus::Cluster;
use intentd_delivery::{AllowList, Metrics};
use intentd_operations::StreamConsumers;

pub use conn::{serve, ConnLimits};
pub use error::ApiError;

/// Limits and defaults of the edge. The server fills it from its layered config.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest `POST /v1/intents` body; bigger is a 413 (the contract's default is 128 KiB).
    pub max_intent_body_bytes: usize,
    /// Largest body of the other write routes (resolve results can be bigger than payloads).
    pub max_request_body_bytes: usize,
    /// Used when a create request does not set `max_delivery_attempts`.
    pub default_max_delivery_attempts: u32,
    /// How long an `Idempotency-Key` is remembered; the contract promises at least 24 h.
    pub idempotency_ttl: Duration,
    /// How many events or queue entries a stream reads from storage per step.
    pub stream_batch: usize,
    /// How many events `GET /v1/intents/{id}/events` returns at most per call.
    pub max_events_per_page: usize,
    /// Lease length for agents that did not register one (`--ack-timeout-secs`).
    pub default_ack_timeout_secs: u64,
    /// Hosts or CIDRs that agent and webhook callback URLs may name even though they are
    /// private or loopback (`--delivery-allow-hosts`); everything else of that kind is
    /// refused at registration so the cluster cannot be aimed at its own network.
    pub delivery_allow_hosts: AllowList,
    /// The node's open agent streams, so that competing consumers of one address take turns.
    /// Shared with the gRPC edge by the server: it is the node's, not the edge's.
    pub stream_consumers: StreamConsumers,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_intent_body_bytes: 128 * 1024,
            max_request_body_bytes: 1024 * 1024,
            default_max_delivery_attempts: 5,
            idempotency_ttl: intentd_operations::DEFAULT_IDEMPOTENCY_TTL,
            stream_batch: 100,
            max_events_per_page: 1000,
            default_ack_timeout_secs: intentd_lifecycle::agent::DEFAULT_ACK_TIMEOUT_SECS,
            delivery_allow_hosts: AllowList::default(),
            stream_consumers: StreamConsumers::default(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Writes go through Raft; reads come from the local replica of the state machine.
    pub(crate) cluster: Cluster,
    pub(crate) config: Arc<ApiConfig>,
    /// The node's delivery metrics, rendered by `GET /metrics` (the engine counts into it).
    pub(crate) metrics: Metrics,
    /// Requests answered, by route and status: counted here because only the edge knows them.
    pub(crate) http_counts: Arc<routes::metrics::HttpCounts>,
    /// Per agent, a queue cursor below which no entry can ever be leased again, so a
    /// long-poll receive does not rescan an agent's whole history (see `routes::agents::receive`).
    pub(crate) receive_marks: Arc<routes::agents::receive::Marks>,
}

/// The whole API as a router, apart from any listener so tests can drive it in process.
pub fn app(cluster: Cluster, config: ApiConfig, metrics: Metrics) -> Router {
    let state = AppState {
        cluster,
        config: Arc::new(config),
        metrics,
        http_counts: Arc::default(),
        receive_marks: Arc::default(),
    };
    routes::router(&state.config)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::settle_reads,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::metrics::count_requests,
        ))
        .layer(axum::middleware::from_fn(context::middleware))
        .with_state(state)
}
