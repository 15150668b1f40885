//! The Raft network over tonic: one lazily connected channel per peer, over mutual TLS when
//! the node has a cluster certificate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use intentd_tls::tokio_rustls::client::TlsStream;
use intentd_tls::tokio_rustls::rustls::pki_types::ServerName;
use intentd_tls::TlsConnector;

use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::Backoff;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

use intentd_storage::TypeConfig;

use crate::error::ForwardError;
use crate::proto::raft_internal_client::RaftInternalClient;
use crate::proto::{RaftPayload, SnapshotChunk};

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

/// Why a channel to a peer could not even be built (reported on every call to it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("peer address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error("peer address: {0}")]
    Name(#[from] intentd_tls::TlsError),
}

/// Builds a channel that connects on first use, so a peer that is down at start-up costs
/// nothing until Raft talks to it. With `tls` the peer must present a certificate of the
/// cluster CA that names `addr`'s host, and this node presents its own.
pub(crate) fn channel(addr: &str, tls: Option<&TlsConnector>) -> Result<Channel, DialError> {
    // The connect timeout covers the TLS handshake too: tonic times the whole connector.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(TlsDial {
            tls: tls.clone(),
            name: intentd_tls::server_name(addr)?,
            addr: addr.to_owned(),
        }),
    })
}

/// Dials a peer over TCP (TCP_NODELAY, like the plain channel) and completes the client side
/// of the mutual TLS handshake. A failure here is wrapped by tonic as a connect error, so the
/// call counts as never sent (`never_sent`).
#[derive(Clone)]
struct TlsDial {
    tls: TlsConnector,
    name: ServerName<'static>,
    addr: String,
}

impl Service<Uri> for TlsDial {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let dial = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&dial.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = dial.tls.connect(dial.name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Largest internal-plane message: a batch of entries of up to 128 KiB each, JSON-encoded.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

pub(crate) struct NetworkFactory {
    /// The internal plane's client TLS (mutual), if the node has a cluster certificate.
    pub(crate) tls: Option<TlsConnector>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            client: channel(&node.addr, self.tls.as_ref())
                .map(|c| RaftInternalClient::new(c).max_decoding_message_size(MAX_MESSAGE_BYTES)),
        }
    }
}

pub(crate) struct PeerClient {
    target: u64,
    /// An address that does not even parse stays an error, reported on every call.
    client: Result<RaftInternalClient<Channel>, DialError>,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Network(NetworkError::new(e))),
        };
        let payload = encode(req)?;
        let mut request = tonic::Request::new(RaftPayload { payload });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
        }
        .map_err(|status| rpc_failure(&status))?;
        let decoded: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&reply.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
}

// The error type is the one openraft's `RaftNetwork` trait returns; its size is not ours.
#[allow(clippy::result_large_err)]
fn encode<T: Serialize, E: std::error::Error>(
    value: &T,
) -> Result<Vec<u8>, RPCError<u64, BasicNode, RaftError<u64, E>>> {
    serde_json::to_vec(value).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// A peer we cannot connect to is `Unreachable`, so openraft backs off instead of spinning.
fn rpc_failure<E: std::error::Error>(
    status: &tonic::Status,
) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    if never_sent(status) {
        RPCError::Unreachable(Unreachable::new(status))
    } else {
        RPCError::Network(NetworkError::new(status))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, Infallible> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Network(NetworkError::new(e))),
        };
        let mut rpc = rpc;
        let data = std::mem::take(&mut rpc.data);
        let chunk = SnapshotChunk {
            request: encode(&rpc)?,
            data,
        };
        let mut request = tonic::Request::new(chunk);
        request.set_timeout(option.hard_ttl());
        let reply = client
            .install_snapshot(request)
            .await
            .map_err(|status| rpc_failure(&status))?;
        let decoded: Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> =
            serde_json::from_slice(&reply.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, Infallible> {
        self.call(Rpc::Vote, &rpc, &option).await
    }

    /// A peer that refuses connections is retried after 50 ms, doubling up to 500 ms: quick
    /// enough that a restarted node rejoins at once, slow enough not to spin on a dead one.
    fn backoff(&self) -> Backoff {
        let steps = (0..4).map(|i| Duration::from_millis(50 << i));
        Backoff::new(steps.chain(std::iter::repeat(Duration::from_millis(500))))
    }
}

/// Classifies a failed call to the leader. A failed connection means the request never
/// left, so the caller may look for the new leader and try again; any other failure may have
/// happened after the leader received it, so its fate is unknown (a caller with an
/// idempotency key can retry safely).
pub(crate) fn forward_failure(status: &tonic::Status) -> ForwardError {
    if never_sent(status) {
        ForwardError::Unavailable
    } else {
        ForwardError::Ambiguous
    }
}

/// Whether a call failed while connecting (refused, unreachable, connect timeout), so that
/// nothing was sent and the request can safely go elsewhere.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}
