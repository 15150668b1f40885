//! The public gRPC edge of intentd (`proto/intentd/v1/intentd.proto`).
//!
//! ```text
//!  call -> auth (x-api-key | authorization: Bearer -> the same key lookup as HTTP)
//!       -> convert (protobuf -> lifecycle request types; JSON text fields parsed)
//!       -> lifecycle::validate (the rules HTTP applies too) -> intentd_delivery operations
//!       -> convert back | GrpcError -> tonic::Status (the one mapping, in `error`)
//! ```
//!
//! Nothing here decides what an operation means: authentication, reads with read-your-writes,
//! proposals and the two watching streams are `intentd_delivery`'s, the rules are
//! `intentd_lifecycle`'s, so a request gets the same answer on both edges.

mod auth;
mod cluster;
mod convert;
mod error;
mod intents;
mod limits;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use intentd_consensus::Cluster;
use intentd_operations::StreamConsumers;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use error::GrpcError;

/// Generated types of `proto/intentd/v1/intentd.proto`, clients included, so tests and tools
/// can call the API with the same types the server uses.
pub mod proto {
    tonic::include_proto!("intentd.v1");

    /// The encoded descriptor set of the API (and its imports), served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("intentd_v1_descriptor");
}

/// Limits and defaults of the gRPC edge; the server fills it from the same configuration as
/// the HTTP edge's, so both answer alike.
#[derive(Clone)]
pub struct GrpcConfig {
    /// Largest encoded SendIntent request; bigger is RESOURCE_EXHAUSTED (HTTP: 413).
    pub max_intent_bytes: usize,
    /// Largest encoded message of any other call.
    pub max_request_bytes: usize,
    /// Used when a SendIntent does not set `max_delivery_attempts`.
    pub default_max_delivery_attempts: u32,
    /// How long an idempotency key is remembered; the contract promises at least 24 h.
    pub idempotency_ttl: Duration,
    /// How many events or queue entries a stream reads from storage per step.
    pub stream_batch: usize,
    /// How many events ListEvents returns at most per call.
    pub max_events_per_page: usize,
    /// Lease length for agents that did not register one (`--ack-timeout-secs`).
    pub default_ack_timeout_secs: u64,
    /// The node's open agent streams, so that competing consumers of one address take turns.
    /// Shared with the HTTP edge by the server: it is the node's, not the edge's.
    pub stream_consumers: StreamConsumers,
    /// How long a new connection may take to send the HTTP/2 preface before it is closed
    /// (`--header-timeout-ms`): a socket that never speaks holds nothing for long.
    pub preface_timeout: Duration,
    /// Open connections on the port (`--max-connections`); more are closed at once, which
    /// a client sees as UNAVAILABLE and retries.
    pub max_connections: usize,
    /// TLS of the port (the same certificate as HTTPS); `None`: plain HTTP/2.
    pub tls: Option<intentd_tls::TlsAcceptor>,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_intent_bytes: 128 * 1024,
            max_request_bytes: 1024 * 1024,
            default_max_delivery_attempts: 5,
            idempotency_ttl: intentd_operations::DEFAULT_IDEMPOTENCY_TTL,
            stream_batch: 100,
            max_events_per_page: 1000,
            default_ack_timeout_secs: intentd_lifecycle::agent::DEFAULT_ACK_TIMEOUT_SECS,
            stream_consumers: StreamConsumers::default(),
            preface_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            tls: None,
            handshake_timeout: intentd_tls::HANDSHAKE_TIMEOUT,
        }
    }
}

/// How often an open connection is pinged, and how long its answer may take before the
/// connection is dropped: a peer that vanished (a half-open socket) stops holding a
/// connection and its streams within about a minute, while a live client that keeps a
/// channel open without calls is left alone.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams one connection may have open at once; `Listen` and `WatchEvents` are long, so
/// this is generous, but a single connection cannot open unbounded work.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest header block of a call (metadata); grpc-go's default is 16 KiB.
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Every service of the public gRPC port: `intentd.v1.IntentService`,
/// `intentd.v1.ClusterService`, the standard health service and server reflection.
///
/// Health says SERVING while this node knows a leader (without one, writes would fail with
/// UNAVAILABLE); a task spawned here follows the Raft metrics for as long as the node runs,
/// so this must be called inside a tokio runtime.
pub fn services(cluster: Cluster, config: GrpcConfig) -> Result<Routes, GrpcError> {
    let config = Arc::new(config);
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut metrics = cluster.raft().metrics();
    tokio::spawn(async move {
        loop {
            let serving = metrics.borrow_and_update().current_leader.is_some();
            let status = if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for service in ["", intents::SERVICE_NAME] {
                reporter.set_service_status(service, status).await;
            }
            if metrics.changed().await.is_err() {
                break;
            }
        }
    });
    // Both reflection versions: grpcurl and grpcui ask v1, but Postman, older grpcurl and
    // Python's grpcio-reflection client ask v1alpha and would get UNIMPLEMENTED.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| GrpcError::Setup(e.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| GrpcError::Setup(e.to_string()))?;
    let max_request = config.max_request_bytes;
    let intent_service = proto::intent_service_server::IntentServiceServer::new(
        intents::IntentApi::new(cluster.clone(), Arc::clone(&config)),
    )
    .max_decoding_message_size(max_request);
    let cluster_service =
        proto::cluster_service_server::ClusterServiceServer::new(cluster::ClusterApi::new(cluster));
    Ok(Routes::new(intent_service)
        .add_service(cluster_service)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha))
}

/// How long open calls (mostly streams, which may have no idle limit) get to finish after
/// shutdown is requested before `serve` returns anyway. tonic's graceful shutdown waits for
/// every in-flight call, so without a bound one idle `Listen` would hold SIGTERM forever.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves [`services`] on an already bound listener until `shutdown` completes (plus at most
/// [`SHUTDOWN_GRACE`] for open calls). Taking a bound listener lets tests bind port 0 and
/// read the port before serving.
pub async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    config: GrpcConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    let limits = limits::Limits {
        preface_timeout: config.preface_timeout,
        max_connections: config.max_connections,
        tls: config.tls.clone(),
        handshake_timeout: config.handshake_timeout,
    };
    let routes = services(cluster, config)?;
    let (fired_tx, mut fired_rx) = tokio::sync::watch::channel(false);
    let graceful = async move {
        shutdown.await;
        let _ = fired_tx.send(true);
    };
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .add_routes(routes)
        .serve_with_incoming_shutdown(limits::incoming(listener, limits), graceful);
    let grace_expired = async move {
        // If the sender is dropped without firing, the server is already gone.
        if fired_rx.wait_for(|fired| *fired).await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served.map_err(|e| GrpcError::Setup(e.to_string())),
        () = grace_expired => {
            tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "grpc calls still open after the shutdown grace period; closing"
            );
            Ok(())
        }
    }
}
