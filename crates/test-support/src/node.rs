//! A node of a test cluster: storage in a temporary directory, Raft, and the internal plane
//! on a loopback listener the caller bound (port 0), so no test depends on a port staying
//! free between picking it and binding it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use intentd_consensus::{Cluster, NodeConfig, RaftTimings};
use intentd_tls::MutualTls;
use tempfile::TempDir;
use tokio::net::TcpListener;

/// How a test node differs from the defaults.
pub struct NodeSpec {
    pub node_id: u64,
    /// Raft addresses of every voter at formation, this node's included.
    pub peers: BTreeMap<u64, String>,
    /// How long a write or read barrier may take before it fails.
    pub request_timeout: Duration,
    /// Mutual TLS of the internal plane; `None`: plain TCP.
    pub tls: Option<MutualTls>,
}

/// Starts node `spec.node_id` on `listener`; it runs until `shutdown` resolves. The
/// directory holds its data: keep it as long as the node.
pub async fn start(
    spec: NodeSpec,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (TempDir, Cluster) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (log, sm) = intentd_storage::open(dir.path(), Default::default()).expect("open storage");
    let config = NodeConfig {
        node_id: spec.node_id,
        peers: spec.peers,
        timings: RaftTimings::default(),
        request_timeout: spec.request_timeout,
        join: false,
        clock: Default::default(),
        tls: spec.tls,
    };
    let cluster = intentd_consensus::start(config, log, sm, listener, shutdown)
        .await
        .expect("start the node");
    (dir, cluster)
}

/// A one-node cluster that runs until the test ends, with a five-second request timeout.
pub async fn single() -> (TempDir, Cluster) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address").to_string();
    let spec = NodeSpec {
        node_id: 1,
        peers: BTreeMap::from([(1, addr)]),
        request_timeout: Duration::from_secs(5),
        tls: None,
    };
    start(spec, listener, std::future::pending()).await
}
