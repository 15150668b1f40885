//! A one-node cluster of the real `intentd` binary: a [`Node`] (the harness's one process
//! starter) on loopback ports of its own and a temporary data directory, started alone, and
//! stopped the ways a machine can: SIGKILL, SIGTERM, SIGINT.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use tokio::time::Instant;

use super::cluster::{ClusterOptions, Node, PORT_ATTEMPTS};
use super::ports::free_ports;

/// How long a (debug, possibly contended) server may take to elect itself and serve writes.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A running (or stopped) `intentd serve` with everything needed to start it again on the
/// same data directory and the same addresses. Everything a node does, it does (`Deref`).
pub struct Server {
    /// The node's addresses and key, which never change across restarts: fields of the
    /// server's own, so a test's closure can copy one without taking the whole server.
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_key: String,
    node: Node,
}

impl Deref for Server {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl Server {
    /// Starts a one-node cluster and waits until it serves writes.
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// [`Server::start`] with more `serve` arguments, given at every start. A start that
    /// lost a port is made again on fresh ones (see `super::ports`).
    pub async fn start_with(extra_args: &[&str]) -> Server {
        let admin_key = format!("e2e-admin-{}", uuid::Uuid::new_v4().simple());
        // No --peers (the node forms a cluster of itself) and the server's own request
        // timeout: a single server runs as an operator would start one.
        let opts = ClusterOptions {
            request_timeout_ms: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            ..ClusterOptions::default()
        };
        for attempt in 1..=PORT_ATTEMPTS {
            let addrs = free_ports(3);
            let mut node = Node::new(
                1,
                [addrs[0], addrs[1], addrs[2]],
                None,
                admin_key.clone(),
                opts.clone(),
            );
            node.spawn();
            if node.wait_bound(READY_DEADLINE).await.is_ok() {
                let mut server = Server {
                    http_addr: node.http_addr,
                    grpc_addr: node.grpc_addr,
                    admin_key: node.admin_key.clone(),
                    node,
                };
                server.wait_ready().await;
                return server;
            }
            eprintln!("e2e harness: the server lost a port to another process (attempt {attempt}); starting it again on fresh ports");
        }
        panic!("no server start kept its ports in {PORT_ATTEMPTS} attempts");
    }

    /// Polls `GET /health` until it answers 200 with `role: leader`, failing the test if the
    /// process exits first or the deadline passes.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.node.assert_alive();
            let last = match self.node.health().await {
                Ok((200, body)) if body["role"] == "leader" => return,
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "intentd not ready after {READY_DEADLINE:?}; last /health: {last}\n{}",
                    self.node.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the binary again on the same data directory and addresses.
    pub async fn restart(&mut self) {
        self.node.spawn();
        self.wait_ready().await;
    }
}
