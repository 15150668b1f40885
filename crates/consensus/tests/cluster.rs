//! Three nodes in one process over the real internal plane (tonic on loopback, WAL and sled
//! on disk): forwarding from followers, read-your-writes on the node that answered, leader
//! loss under load, and what an ambiguous write may and may not mean.
//!
//! Every listener is bound before the nodes are configured, so no test depends on a port
//! staying free between picking it and binding it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use intentd_consensus::{Cluster, ConsensusError};
use intentd_lifecycle::{Command, IntentCommand, NewIntent, Rejection, Reply};
use intentd_test_support::new_intent;
use intentd_test_support::node::NodeSpec;
use intentd_tls::MutualTls;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

/// Bounds every wait on the cluster: a hung election fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    cluster: Cluster,
    /// Stops this node's internal plane when fired (or dropped).
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Stops Raft and the internal plane: to its peers the node is gone.
    async fn stop(&mut self) {
        self.stop.take();
        tokio::time::timeout(WAIT, self.cluster.shutdown())
            .await
            .expect("raft shut down in time");
    }
}

async fn three_nodes() -> Vec<Node> {
    three_nodes_with(|_| None).await
}

/// Three nodes whose internal plane uses `tls(id)` (mutual TLS, or plain when `None`).
async fn three_nodes_with(tls: impl Fn(u64) -> Option<MutualTls>) -> Vec<Node> {
    // Logs show when a test fails (`RUST_LOG=debug` for more); each test initialises once.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, listener.local_addr().unwrap().to_string());
        listeners.push((id, listener));
    }
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let spec = NodeSpec {
            node_id: id,
            peers: peers.clone(),
            request_timeout: Duration::from_secs(10),
            tls: tls(id),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let (dir, cluster) = intentd_test_support::node::start(spec, listener, shutdown).await;
        nodes.push(Node {
            cluster,
            stop: Some(stop),
            _dir: dir,
        });
    }
    nodes
}

/// The leader every node in `nodes` agrees on (stopped nodes excluded).
async fn leader(nodes: &[&Node]) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen: Vec<Option<u64>> = nodes
            .iter()
            .map(|n| n.cluster.raft().metrics().borrow().current_leader)
            .collect();
        if let Some(Some(id)) = seen.first() {
            if seen.iter().all(|s| *s == Some(*id))
                && nodes.iter().any(|n| n.cluster.node_id() == *id)
            {
                return *id;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed leader: {seen:?}"
        );
        let mut metrics = nodes[0].cluster.raft().metrics();
        let _ = tokio::time::timeout(Duration::from_millis(200), metrics.changed()).await;
    }
}

fn create(id: Uuid) -> Command {
    Command::Intent {
        command: IntentCommand::Create {
            intent: NewIntent {
                id,
                intent_type: "test.forwarded.v1".into(),
                to_agent: "agent://acme/prod/worker".into(),
                payload: json!({"n": 1}),
                ..new_intent("agent://acme/prod/worker")
            },
            at: chrono::Utc::now(),
        },
        idempotency: None,
    }
}

/// The cluster TLS of node `id` from the certificates `certs init` wrote into `dir`.
fn mutual_tls(dir: &std::path::Path, id: u64) -> MutualTls {
    let cert = intentd_tls::ReloadableCert::load(
        &dir.join(format!("node{id}.pem")),
        &dir.join(format!("node{id}.key")),
    )
    .unwrap();
    MutualTls::new(&dir.join("ca.pem"), cert).unwrap()
}

/// Writes a fresh CA and certificates for nodes `ids` (reached at 127.0.0.1) into a new
/// directory.
fn certificates(ids: &[u64]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    intentd_tls::init_certs(&intentd_tls::CertsPlan {
        dir: dir.path().to_owned(),
        nodes: ids
            .iter()
            .map(|id| intentd_tls::NodeNames {
                id: *id,
                names: vec!["localhost".into(), "127.0.0.1".into()],
            })
            .collect(),
        days: 30,
        force: false,
        reuse_ca: false,
    })
    .unwrap();
    dir
}

/// Every node of `nodes` but the one with id `id`.
fn others(nodes: &[Node], id: u64) -> Vec<&Node> {
    nodes.iter().filter(|n| n.cluster.node_id() != id).collect()
}

/// Where the node with id `id` stands in `nodes`.
fn index_of(nodes: &[Node], id: u64) -> usize {
    nodes
        .iter()
        .position(|n| n.cluster.node_id() == id)
        .unwrap()
}

fn created_id(reply: &Reply) -> Uuid {
    match reply {
        Reply::Intent { intent, .. } => intent.id,
        other => panic!("a create answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_is_forwarded_and_read_back_there() {
    let nodes = three_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = leader(&all).await;
    let follower = others(&nodes, leader_id)[0];

    // `write` answers once this node applied the entry: the read right after sees it.
    let id = Uuid::now_v7();
    let reply = follower.cluster.write(create(id)).await.unwrap();
    assert_eq!(created_id(&reply), id);
    assert!(follower.cluster.reader().intent(&id).unwrap().is_some());

    // `write_committed` answers with the leader's reply; `settled` then brings this node
    // up to every write it answered, so a read here sees it too.
    for _ in 0..20 {
        let id = Uuid::now_v7();
        let reply = follower.cluster.write_committed(create(id)).await.unwrap();
        assert_eq!(created_id(&reply), id);
        follower.cluster.settled().await;
        let stored = follower.cluster.reader().intent(&id).unwrap();
        assert_eq!(
            stored.map(|i| i.id),
            Some(id),
            "read-your-writes on the follower"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_through_a_follower_comes_back_as_the_same_rejection() {
    let nodes = three_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = leader(&all).await;
    let follower = others(&nodes, leader_id)[0];
    let id = Uuid::now_v7();
    follower.cluster.write_committed(create(id)).await.unwrap();
    match follower.cluster.write_committed(create(id)).await {
        Err(ConsensusError::Rejected(Rejection::AlreadyExists(dup))) => assert_eq!(dup, id),
        other => panic!("a second create of {id} answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_through_the_survivors_after_the_leader_stops() {
    let mut nodes = three_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    let old_leader = leader(&all).await;

    let mut acknowledged = Vec::new();
    for node in &nodes {
        let id = Uuid::now_v7();
        node.cluster.write(create(id)).await.unwrap();
        acknowledged.push(id);
    }

    let index = index_of(&nodes, old_leader);
    nodes[index].stop().await;
    let survivors = others(&nodes, old_leader);
    let new_leader = leader(&survivors).await;
    assert_ne!(new_leader, old_leader);

    // Through each survivor, the follower among them included; `write` rides out the
    // election by itself when it starts before the survivors agree.
    for node in &survivors {
        let id = Uuid::now_v7();
        node.cluster.write(create(id)).await.unwrap();
        acknowledged.push(id);
    }
    for node in &survivors {
        node.cluster.read_barrier().await.unwrap();
        for id in &acknowledged {
            assert!(
                node.cluster.reader().intent(id).unwrap().is_some(),
                "node {} lost acknowledged intent {id}",
                node.cluster.node_id()
            );
        }
    }
}

/// Writes race a leader's loss: each answer is either a success that every survivor keeps,
/// a definite refusal (`Unavailable`: nothing was appended) or `Ambiguous`, which may go
/// either way. Nothing else is a correct answer, and no success may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_a_leader_loss_are_kept_refused_or_ambiguous() {
    let mut nodes = three_nodes().await;
    let all: Vec<&Node> = nodes.iter().collect();
    let old_leader = leader(&all).await;
    let survivors: Vec<Cluster> = others(&nodes, old_leader)
        .into_iter()
        .map(|n| n.cluster.clone())
        .collect();

    // Four writers per surviving node, each writing until told to stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for cluster in &survivors {
        for _ in 0..4 {
            let cluster = cluster.clone();
            let stop = stop_rx.clone();
            writers.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                while !*stop.borrow() {
                    let id = Uuid::now_v7();
                    let answer = cluster.write_committed(create(id)).await;
                    // As a client would after a refusal: wait a little before trying again
                    // (a refusal can come back at once, and a loop that never waits would
                    // keep this runtime's threads from the nodes).
                    if answer.is_err() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    answers.push((id, answer));
                }
                answers
            }));
        }
    }

    // Let some writes land on the old leader's watch, then stop it mid-stream.
    let first = survivors[0].reader().applied_index();
    let mut applied = survivors[0].reader().subscribe();
    tokio::time::timeout(WAIT, applied.wait_for(|a| *a >= first + 20))
        .await
        .expect("writes flowed before the leader stopped")
        .unwrap();
    let index = index_of(&nodes, old_leader);
    nodes[index].stop().await;

    // ... and go on until the survivors have a leader and took more writes.
    leader(&others(&nodes, old_leader)).await;
    let after = survivors[0].reader().applied_index();
    tokio::time::timeout(WAIT, applied.wait_for(|a| *a >= after + 20))
        .await
        .expect("writes flowed after the new election")
        .unwrap();
    stop_tx.send(true).unwrap();

    let mut kept = Vec::new();
    let mut refused = 0;
    let mut ambiguous = 0;
    for writer in writers {
        for (id, answer) in tokio::time::timeout(WAIT, writer).await.unwrap().unwrap() {
            match answer {
                Ok(reply) => {
                    assert_eq!(created_id(&reply), id);
                    kept.push(id);
                }
                Err(ConsensusError::Unavailable { .. }) => refused += 1,
                Err(ConsensusError::Ambiguous) => ambiguous += 1,
                Err(other) => panic!("write of {id} answered {other:?}"),
            }
        }
    }
    assert!(!kept.is_empty());
    eprintln!(
        "{} kept, {refused} refused, {ambiguous} ambiguous",
        kept.len()
    );
    for cluster in &survivors {
        cluster.read_barrier().await.unwrap();
        for id in &kept {
            assert!(
                cluster.reader().intent(id).unwrap().is_some(),
                "node {} lost acknowledged intent {id} ({} kept, {refused} refused, {ambiguous} ambiguous)",
                cluster.node_id(),
                kept.len()
            );
        }
    }
}

/// Dials one internal-plane address over TLS with `config`, as a host that tries to talk to
/// the cluster would.
mod dial {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use hyper_util::rt::TokioIo;
    use intentd_consensus::proto::raft_internal_client::RaftInternalClient;
    use intentd_tls::tokio_rustls::client::TlsStream;
    use intentd_tls::tokio_rustls::rustls::ClientConfig;
    use tokio::net::TcpStream;
    use tonic::codegen::http::Uri;
    use tonic::codegen::Service;
    use tonic::transport::{Channel, Endpoint};

    #[derive(Clone)]
    struct Dial {
        addr: String,
        config: Arc<ClientConfig>,
    }

    impl Service<Uri> for Dial {
        type Response = TokioIo<TlsStream<TcpStream>>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let dial = self.clone();
            Box::pin(async move {
                let tcp = TcpStream::connect(&dial.addr).await?;
                let name = intentd_tls::server_name(&dial.addr).unwrap();
                let tls = intentd_tls::TlsConnector::from(dial.config)
                    .connect(name, tcp)
                    .await?;
                Ok(TokioIo::new(tls))
            })
        }
    }

    pub fn client(addr: &str, config: Arc<ClientConfig>) -> RaftInternalClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector_lazy(Dial {
                addr: addr.to_owned(),
                config,
            });
        RaftInternalClient::new(channel)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_members_replicate_and_strangers_cannot_append_or_vote() {
    use intentd_consensus::proto::{ClockProbe, RaftPayload};
    use intentd_tls::tokio_rustls::rustls;

    let certs = certificates(&[1, 2, 3]);
    let foreign = certificates(&[9]);
    let nodes = three_nodes_with(|id| Some(mutual_tls(certs.path(), id))).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = leader(&all).await;

    // A write through a follower is forwarded to the leader over the mutual TLS plane.
    let follower = others(&nodes, leader_id)[0];
    let id = Uuid::now_v7();
    let reply = follower.cluster.write(create(id)).await.unwrap();
    assert_eq!(created_id(&reply), id);
    for node in &nodes {
        node.cluster.write(create(Uuid::now_v7())).await.unwrap();
    }
    let term = nodes[0].cluster.status().term;
    let addrs: Vec<String> = nodes[0].cluster.membership().nodes.into_values().collect();

    // A member's certificate opens the plane: this is what the strangers below lack.
    let member = mutual_tls(certs.path(), 2).client;
    dial::client(&addrs[0], member)
        .clock(ClockProbe {})
        .await
        .expect("a member's certificate is accepted");

    // A stranger trusts the cluster's CA (so the refusal is the server's), but presents a
    // certificate of another CA, or none.
    let another_ca = MutualTls::new(
        &certs.path().join("ca.pem"),
        intentd_tls::ReloadableCert::load(
            &foreign.path().join("node9.pem"),
            &foreign.path().join("node9.key"),
        )
        .unwrap(),
    )
    .unwrap()
    .client;
    let mut roots = rustls::RootCertStore::empty();
    for ca in intentd_tls::load_certs(&certs.path().join("ca.pem")).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut anonymous = rustls::ClientConfig::builder_with_provider(intentd_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    // A heartbeat of a leader in a far later term: accepted, it would depose the leader.
    let append = openraft::raft::AppendEntriesRequest::<intentd_storage::TypeConfig> {
        vote: openraft::Vote::new_committed(term + 100, 9),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let vote = openraft::raft::VoteRequest::<u64> {
        vote: openraft::Vote::new(term + 100, 9),
        last_log_id: None,
    };
    for (who, config) in [
        ("another CA", another_ca),
        ("no certificate", Arc::new(anonymous)),
    ] {
        for addr in &addrs {
            let mut client = dial::client(addr, Arc::clone(&config));
            let appended = client
                .append_entries(RaftPayload {
                    payload: serde_json::to_vec(&append).unwrap(),
                })
                .await;
            assert!(
                appended.is_err(),
                "{who}: append on {addr} answered {appended:?}"
            );
            let voted = client
                .vote(RaftPayload {
                    payload: serde_json::to_vec(&vote).unwrap(),
                })
                .await;
            assert!(voted.is_err(), "{who}: vote on {addr} answered {voted:?}");
            let probed = client.clock(ClockProbe {}).await;
            assert!(
                probed.is_err(),
                "{who}: clock on {addr} answered {probed:?}"
            );
        }
    }
    for node in &nodes {
        assert_eq!(
            node.cluster.status().term,
            term,
            "a stranger moved the term"
        );
    }
    assert_eq!(leader(&all).await, leader_id);
    nodes[0]
        .cluster
        .write(create(Uuid::now_v7()))
        .await
        .unwrap();
}
