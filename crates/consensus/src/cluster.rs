use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;

use intentd_tls::tokio_rustls::server::TlsStream;
use intentd_tls::{TlsAcceptor, TlsConnector};

use intentd_lifecycle::{Command, Reply};
use intentd_storage::{LogStore, Outcome, Proposal, StateMachine, StateReader};

use crate::clock::{clock_status, wall_micros, ClockPolicy, ClockStatus, ClockWatch};
use crate::error::{ConsensusError, ForwardError, MembershipChange};
use crate::leader::{change_as_leader, leader_read_index};
use crate::network::{channel, forward_failure, NetworkFactory};
use crate::proposer::{self, Proposer};
use crate::proto::raft_internal_client::RaftInternalClient;
use crate::proto::raft_internal_server::RaftInternalServer;
use crate::proto::{ClockProbe, RaftPayload, ReadIndexRequest};
use crate::service::InternalService;
use crate::Raft;

/// Raft timing knobs. The defaults aim at writes resuming within 2 s after the leader dies.
/// In openraft 0.9 a follower that knows a leader first waits out the leader lease (the
/// maximum election timeout) and then its own randomised election timeout, so the first
/// election starts 0.5-1 s after the death; a split vote costs one more timeout. Shorter
/// timeouts would risk spurious elections on a loaded two-core machine.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many entries since the last one; logs behind it are purged.
    pub snapshot_after_logs: u64,
    /// Entries kept behind a snapshot so a briefly lagging follower needs no snapshot.
    pub logs_to_keep: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 50,
            election_min_ms: 250,
            election_max_ms: 500,
            snapshot_after_logs: 20_000,
            logs_to_keep: 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Raft (internal plane) addresses of every voter at first formation, this node included.
    pub peers: BTreeMap<u64, String>,
    pub timings: RaftTimings,
    /// How long a write or read barrier may take before the caller gets 503.
    pub request_timeout: Duration,
    /// Never form a cluster: wait to be added by one (a new node, or one whose data was lost).
    pub join: bool,
    /// How far this node's wall clock may stray from the others' before it is fenced.
    pub clock: ClockPolicy,
    /// Mutual TLS of the internal plane: served connections must present a certificate of
    /// the cluster CA, and peers are dialled the same way. `None`: plain TCP.
    pub tls: Option<intentd_tls::MutualTls>,
}

/// What a node says about itself on `/health` and the cluster status calls.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: u64,
    pub role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_applied: u64,
    /// openraft 0.9 does not publish the commit index; applied entries are committed, so this
    /// is the applied index: a lower bound of the real commit index.
    pub commit_index: u64,
    pub last_log_index: u64,
    pub members: Vec<u64>,
    pub clock: ClockStatus,
}

/// The cluster's membership as this node last saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MembershipView {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Raft address of every member, voters and learners.
    pub nodes: BTreeMap<u64, String>,
}

/// A running node: the Raft instance, its local state machine and the internal plane.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    node_id: u64,
    raft: Raft,
    /// The same log openraft writes: the elector reads its last log id for pre-votes.
    pub(crate) log: LogStore,
    /// Set while the clock fence holds: the elector then never stands for election.
    pub(crate) fenced: AtomicBool,
    reader: StateReader,
    request_timeout: Duration,
    election_timeout: Duration,
    clock: Arc<ClockWatch>,
    /// Channels to peers for forwarding, keyed by node id and address so an address change
    /// after a membership change gets a fresh channel.
    peers: Mutex<HashMap<(u64, String), RaftInternalClient<Channel>>>,
    /// The internal plane's client TLS for those channels, if the plane has TLS.
    tls: Option<TlsConnector>,
    /// Every write of this node goes through it, to be coalesced with concurrent ones.
    proposer: Proposer,
    /// The highest log index this node has answered a client's write with. A write answered
    /// before this node applied it (`write_committed`) raises it, and `settled` makes the reads
    /// that follow on this node wait for it: read-your-writes without the write waiting.
    acknowledged: AtomicU64,
}

/// Snapshot chunk size: small enough to keep memory bounded on both ends and each RPC short.
const SNAPSHOT_CHUNK_BYTES: u64 = 256 * 1024;

/// How long a request waits before trying the same leader again.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Bounds a membership change, which includes a learner catching up with the whole log.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts Raft on the given stores, serves the internal plane on `raft_listener` until
/// `shutdown` resolves, and forms the cluster if it was never formed.
///
/// Formation happens exactly once: only the lowest configured node id initialises, and only
/// when its own log and vote are empty. A restarted node finds its membership in the log.
pub async fn start(
    config: NodeConfig,
    log_store: LogStore,
    state_machine: StateMachine,
    raft_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Cluster, ConsensusError> {
    let t = &config.timings;
    let raft_config = Config {
        cluster_name: "intentd".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_min_ms,
        election_timeout_max: t.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_after_logs),
        max_in_snapshot_log_to_keep: t.logs_to_keep,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // One chunk RPC also loads the whole snapshot into sled when it is the last one, so
        // its deadline must cover that, not just the transfer.
        install_snapshot_timeout: 60_000,
        max_payload_entries: 256,
        // Elections are started by `election::run`, after a pre-vote.
        enable_elect: false,
        ..Default::default()
    }
    .validate()
    .map_err(ConsensusError::internal)?;
    let reader = state_machine.reader();
    let log = log_store.clone();
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        NetworkFactory {
            tls: config
                .tls
                .as_ref()
                .map(|tls| TlsConnector::from(Arc::clone(&tls.client))),
        },
        log_store,
        state_machine,
    )
    .await
    .map_err(ConsensusError::internal)?;

    let clock = Arc::new(ClockWatch::new(config.clock));
    // openraft's leader lease is the maximum election timeout; pre-votes honour the same one.
    let lease = Duration::from_millis(t.election_max_ms);
    let node = Arc::new(OnceLock::new());
    let service = InternalService {
        node_id: config.node_id,
        raft: raft.clone(),
        clock: clock.clone(),
        log: log.clone(),
        leader_lease: lease,
        write_timeout: config.request_timeout,
        membership_timeout: MEMBERSHIP_TIMEOUT,
        node: Arc::clone(&node),
    };
    let routes = tonic::service::Routes::new(
        RaftInternalServer::new(service)
            .max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES),
    );
    match &config.tls {
        None => {
            // Answers go out as several HTTP/2 frames; with Nagle on, the later ones wait for
            // the peer's delayed ACK (40 ms), and every forwarded write and Raft round trip
            // pays for it.
            let incoming = TcpIncoming::from(raft_listener).with_nodelay(Some(true));
            tokio::spawn(serve_plane(routes, incoming, shutdown));
        }
        Some(tls) => {
            let acceptor = TlsAcceptor::from(Arc::clone(&tls.server));
            let incoming = mutual_tls_incoming(raft_listener, acceptor);
            tokio::spawn(serve_plane(routes, incoming, shutdown));
        }
    }

    let first = config.peers.keys().next().copied();
    let initialized = raft
        .is_initialized()
        .await
        .map_err(ConsensusError::internal)?;
    if !initialized && !config.join && first == Some(config.node_id) {
        let members: BTreeMap<u64, BasicNode> = config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        tracing::info!(?members, "forming a new cluster");
        raft.initialize(members)
            .await
            .map_err(ConsensusError::internal)?;
    }

    let (proposer, queue) = Proposer::new();
    let cluster = Cluster {
        inner: Arc::new(Inner {
            node_id: config.node_id,
            raft,
            log,
            fenced: AtomicBool::new(false),
            reader,
            request_timeout: config.request_timeout,
            election_timeout: Duration::from_millis(t.election_max_ms),
            clock,
            peers: Mutex::new(HashMap::new()),
            tls: config
                .tls
                .as_ref()
                .map(|tls| TlsConnector::from(Arc::clone(&tls.client))),
            proposer,
            acknowledged: AtomicU64::new(0),
        }),
    };
    let _ = node.set(Arc::downgrade(&cluster.inner));
    tokio::spawn(proposer::run(Arc::downgrade(&cluster.inner), queue));
    tokio::spawn(watch_clocks(Arc::downgrade(&cluster.inner)));
    tokio::spawn(crate::election::run(
        Arc::downgrade(&cluster.inner),
        lease,
        Duration::from_millis(t.election_min_ms),
        Duration::from_millis(t.election_max_ms),
    ));
    Ok(cluster)
}

/// Serves the internal plane on `incoming` until `shutdown`.
async fn serve_plane<S, IO>(
    routes: tonic::service::Routes,
    incoming: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: futures::Stream<Item = Result<IO, std::io::Error>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "internal plane stopped");
    }
}

/// The internal plane's connections that completed the mutual TLS handshake: the client
/// presented a certificate signed by the cluster CA. Handshakes run on their own tasks
/// (bounded by [`intentd_tls::HANDSHAKE_TIMEOUT`]) so a slow or hostile client never holds
/// up the next accept; a refused one is logged with its address and closed, before any
/// Raft message of it is read.
fn mutual_tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl futures::Stream<Item = Result<TlsStream<tokio::net::TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                // The server dropped the stream: it has stopped.
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an internal-plane connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // See the plain branch in `start`: every Raft round trip would wait on Nagle.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on an internal-plane connection");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp);
                match tokio::time::timeout(intentd_tls::HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "refused an internal-plane connection: no valid cluster certificate");
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "refused an internal-plane connection: TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Probes every member's clock each interval and keeps the fence in step with the verdict:
/// out of agreement, the node neither campaigns nor (as leader) heartbeats, so followers
/// elect a node whose clock is good. Ends when the node shuts down.
async fn watch_clocks(inner: Weak<Inner>) {
    let Some(policy) = inner.upgrade().map(|i| i.clock.policy()) else {
        return;
    };
    let mut tick = tokio::time::interval(policy.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fenced: Option<bool> = None;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let cluster = Cluster { inner };
        if cluster.inner.raft.metrics().borrow().state == ServerState::Shutdown {
            return;
        }
        let members: Vec<u64> = cluster.membership().nodes.keys().copied().collect();
        cluster.inner.clock.retain(&members);
        let probes = members
            .iter()
            .filter(|id| **id != cluster.inner.node_id)
            .map(|id| cluster.probe_clock(*id, policy.stale_after));
        futures::future::join_all(probes).await;

        let status = cluster.clock_status();
        let fence = !status.synchronized;
        if fenced != Some(fence) {
            if fence {
                tracing::warn!(
                    ?status,
                    "clock out of agreement with the cluster: refusing writes and leadership"
                );
            } else if fenced.is_some() {
                tracing::info!(?status, "clock agrees with the cluster again");
            }
            cluster.inner.fenced.store(fence, Ordering::Relaxed);
            cluster.inner.raft.runtime_config().heartbeat(!fence);
            fenced = Some(fence);
        }
    }
}

impl Cluster {
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn reader(&self) -> &StateReader {
        &self.inner.reader
    }

    pub(crate) fn proposer(&self) -> &Proposer {
        &self.inner.proposer
    }

    /// Replicates `command` and returns the state machine's reply. `Ok` means a majority has
    /// the entry on disk and this node applied it (or, if this node lags behind by more than
    /// the request timeout, that the leader did), so a read on this node right after sees it.
    pub async fn write(&self, command: Command) -> Result<Reply, ConsensusError> {
        let (outcome, index) = self.replicate(command).await?;
        self.await_applied(index).await;
        answer(outcome)
    }

    /// Replicates `command` and returns the leader's reply as soon as it has it: a majority
    /// has the entry on disk and the leader applied it, but this node may not have yet. For
    /// writes whose reply is the whole answer (an intent command answers with the intent and
    /// its new events): a follower then answers without waiting for the next commit notice
    /// from the leader and its own apply, and a follower that lags does not hold its clients'
    /// writes back. Read-your-writes on this node is kept by `settled`, which reads wait on.
    pub async fn write_committed(&self, command: Command) -> Result<Reply, ConsensusError> {
        let (outcome, index) = self.replicate(command).await?;
        self.inner.acknowledged.fetch_max(index, Ordering::AcqRel);
        answer(outcome)
    }

    /// Waits until this node applied every write it has answered (see `write_committed`), so
    /// a read here never misses a write acknowledged here before the read began. Free when
    /// nothing is outstanding (every write through the leader, and followers at rest). Bounded
    /// by the request timeout like `write`'s own wait: a node that cannot catch up serves what
    /// it has rather than a 503 for a read.
    pub async fn settled(&self) {
        let index = self.inner.acknowledged.load(Ordering::Acquire);
        if self.inner.reader.applied_index() < index {
            self.await_applied(index).await;
        }
    }

    /// Sends `command` to the leader (this node or another) and returns its outcome and the
    /// entry's index, without waiting for this node to apply it.
    async fn replicate(&self, command: Command) -> Result<(Outcome, u64), ConsensusError> {
        self.check_clock()?;
        // Encoded here, on the caller's task, once: the proposal carries this text verbatim
        // to the WAL, the followers and every state machine.
        let encoded = Proposal::encode(&command).map_err(ConsensusError::internal)?;
        self.on_leader(self.inner.request_timeout, |leader, remaining| {
            let encoded = encoded.clone();
            async move {
                if leader == self.inner.node_id {
                    self.check_quorum(remaining)
                        .await
                        .map_err(|_| ForwardError::NoQuorum)?;
                }
                self.inner
                    .proposer
                    .submit(self, leader, encoded, remaining)
                    .await
            }
        })
        .await
    }

    /// Waits until this node applied the entry at `index`, so that a caller reading here right
    /// after a forwarded write sees it. The entry is committed and the reply is the leader's,
    /// so a node still catching up (just restarted, say) answers with it after the request
    /// timeout anyway: a late read-your-write beats a 503 for a write that happened.
    async fn await_applied(&self, index: u64) {
        if !self
            .applied_at_least(index, self.inner.request_timeout)
            .await
        {
            tracing::warn!(index, "answering a committed write before applying it here");
        }
    }

    /// Waits until this node's state machine shows `index` to readers, at most `timeout`;
    /// false if it did not in time.
    ///
    /// Watches the state machine's own applied index rather than openraft's metrics: every
    /// change of those (each append, commit, heartbeat) would wake every waiting request and
    /// clone the whole metrics struct for it, which a busy follower paid per forwarded write.
    async fn applied_at_least(&self, index: u64, timeout: Duration) -> bool {
        let mut applied = self.inner.reader.subscribe();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|a| *a >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Runs `attempt` against the leader (this node or another) until it gives a definite
    /// answer or `timeout` passes. "Not the leader" and "unreachable" are definite refusals
    /// (nothing was appended), so they wait for the leadership to change and try again.
    async fn on_leader<T, F, Fut>(&self, timeout: Duration, attempt: F) -> Result<T, ConsensusError>
    where
        F: Fn(u64, Duration) -> Fut,
        Fut: Future<Output = Result<T, ForwardError>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.wait_for_leader(deadline).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match attempt(leader, remaining).await {
                Ok(value) => return Ok(value),
                Err(ForwardError::NotLeader { .. }) | Err(ForwardError::Unavailable) => {
                    self.wait_for_change(leader, deadline).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// This node's clock as the fence sees it right now.
    pub fn clock_status(&self) -> ClockStatus {
        clock_status(&self.inner.raft, &self.inner.clock, self.inner.node_id)
    }

    /// Refuses to stamp commands with a clock the cluster does not agree with.
    fn check_clock(&self) -> Result<(), ConsensusError> {
        let status = self.clock_status();
        if status.synchronized {
            Ok(())
        } else {
            Err(ConsensusError::ClockUnsynchronized(format!(
                "node {}'s clock is more than {} ms off from {} of {} voters",
                self.inner.node_id, status.max_offset_ms, status.disagreeing_voters, status.voters
            )))
        }
    }

    /// One probe of `peer`'s wall clock; a peer that does not answer simply ages out.
    async fn probe_clock(&self, peer: u64, timeout: Duration) {
        let Ok(mut client) = self.peer(peer) else {
            return;
        };
        let mut request = tonic::Request::new(ClockProbe {});
        request.set_timeout(timeout);
        let sent_wall = wall_micros();
        let sent_mono = std::time::Instant::now();
        if let Ok(reply) = client.clock(request).await {
            let recv_mono = std::time::Instant::now();
            let peer_wall = reply.into_inner().wall_micros;
            self.inner
                .clock
                .record(peer, sent_wall, sent_mono, peer_wall, recv_mono);
        }
    }

    /// Linearizable read barrier (read index): once it returns, the local state machine holds
    /// every write acknowledged before the call started, wherever it was acknowledged.
    pub async fn read_barrier(&self) -> Result<(), ConsensusError> {
        let deadline = Instant::now() + self.inner.request_timeout;
        loop {
            let leader = self.wait_for_leader(deadline).await?;
            match self.read_index_from(leader, deadline).await {
                Ok(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return if self.applied_at_least(index, remaining).await {
                        Ok(())
                    } else {
                        Err(ConsensusError::Unavailable {
                            retry_after_secs: 1,
                        })
                    };
                }
                // A new leader may not have committed in its term yet, or the leader just
                // died: look again until the deadline.
                Err(_) if Instant::now() < deadline => {
                    self.wait_for_change(leader, deadline).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Asks `leader` (possibly this node) for the index a linearizable read must wait for.
    async fn read_index_from(&self, leader: u64, deadline: Instant) -> Result<u64, ConsensusError> {
        let unavailable = || ConsensusError::Unavailable {
            retry_after_secs: 1,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if leader == self.inner.node_id {
            self.check_quorum(remaining).await?;
            return match tokio::time::timeout(remaining, leader_read_index(&self.inner.raft)).await
            {
                Ok(Some(index)) => Ok(index),
                Ok(None) | Err(_) => Err(unavailable()),
            };
        }
        let mut client = self.peer(leader)?;
        let mut request = tonic::Request::new(ReadIndexRequest {});
        request.set_timeout(remaining);
        let reply = client
            .read_index(request)
            .await
            .map_err(|_| unavailable())?;
        Ok(reply.into_inner().read_index)
    }

    pub fn membership(&self) -> MembershipView {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        MembershipView {
            voters,
            learners,
            nodes,
        }
    }

    /// Changes the membership through the leader, wherever this node is.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipView, ConsensusError> {
        let index = self
            .on_leader(MEMBERSHIP_TIMEOUT, |leader, remaining| {
                let change = change.clone();
                async move {
                    if leader == self.inner.node_id {
                        change_as_leader(&self.inner.raft, change, remaining).await
                    } else {
                        self.forward_membership(leader, &change, remaining).await
                    }
                }
            })
            .await?;
        // A node that was just removed may never hear of the commit; its view is as good as
        // it gets. Any other node shows the change it made.
        let removed_self =
            matches!(change, MembershipChange::Remove { node_id } if node_id == self.inner.node_id);
        if !removed_self {
            self.await_applied(index).await;
        }
        Ok(self.membership())
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        NodeStatus {
            node_id: m.id,
            role: role.into(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_applied: applied,
            commit_index: applied,
            last_log_index: m.last_log_index.unwrap_or(0),
            members: m.membership_config.membership().voter_ids().collect(),
            clock: self.clock_status(),
        }
    }

    /// Stops Raft; the state machine and log stay as they are on disk.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    async fn wait_for_leader(&self, deadline: Instant) -> Result<u64, ConsensusError> {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Ok(leader);
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Err(ConsensusError::Unavailable {
                    retry_after_secs: 1,
                });
            }
        }
    }

    /// Waits before another try at `stale`: until the known leader or term changes, or for
    /// a short retry interval (a new leader may simply not have committed in its term yet).
    /// Past the deadline the caller gets 503.
    async fn wait_for_change(&self, stale: u64, deadline: Instant) -> Result<(), ConsensusError> {
        let mut metrics = self.inner.raft.metrics();
        let term = metrics.borrow().current_term;
        let retry_at = deadline.min(Instant::now() + RETRY_INTERVAL);
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader != Some(stale) || m.current_term != term {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(retry_at, metrics.changed())
                .await
                .is_err()
            {
                return if Instant::now() < deadline {
                    Ok(())
                } else {
                    Err(ConsensusError::Unavailable {
                        retry_after_secs: 1,
                    })
                };
            }
        }
    }

    /// A leader that has not heard from a quorum for two election timeouts is cut off; saying
    /// so at once beats letting the caller wait for a proposal that cannot commit. A leader
    /// elected moments ago has heard no acknowledgement yet (openraft reports none rather than
    /// an old one): it is given up to that same bound, within `remaining`, to hear its first,
    /// so the first writes after a failover wait for it instead of failing.
    async fn check_quorum(&self, remaining: Duration) -> Result<(), ConsensusError> {
        let limit = 2 * self.inner.election_timeout;
        let mut metrics = self.inner.raft.metrics();
        let wait = remaining.min(limit);
        let heard = tokio::time::timeout(wait, async {
            loop {
                let since_ack = {
                    let m = metrics.borrow_and_update();
                    if m.membership_config.membership().voter_ids().count() <= 1 {
                        return Some(0);
                    }
                    if m.state != ServerState::Leader {
                        return None;
                    }
                    m.millis_since_quorum_ack
                };
                if since_ack.is_some() {
                    return since_ack;
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match heard {
            Ok(Some(ms)) if ms <= limit.as_millis() as u64 => Ok(()),
            _ => Err(ConsensusError::Unavailable {
                retry_after_secs: 1,
            }),
        }
    }

    async fn forward_membership(
        &self,
        leader: u64,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<u64, ForwardError> {
        let payload = encode(change)?;
        self.ask_leader(
            leader,
            timeout,
            RaftPayload { payload },
            |mut c, r| async move {
                c.change_membership(r)
                    .await
                    .map(|reply| reply.into_inner().payload)
            },
        )
        .await
    }

    /// One call to the leader over the internal plane whose answer is a JSON
    /// `Result<T, ForwardError>`; transport failures are classified by [`forward_failure`].
    pub(crate) async fn ask_leader<M, T, F, Fut>(
        &self,
        leader: u64,
        timeout: Duration,
        message: M,
        call: F,
    ) -> Result<T, ForwardError>
    where
        T: serde::de::DeserializeOwned,
        F: FnOnce(RaftInternalClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, tonic::Status>>,
    {
        let client = self.peer(leader).map_err(|_| ForwardError::Unavailable)?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let bytes = call(client, request)
            .await
            .map_err(|status| forward_failure(&status))?;
        serde_json::from_slice::<Result<T, ForwardError>>(&bytes)
            .map_err(|e| ForwardError::Internal(e.to_string()))?
    }

    pub(crate) fn peer(&self, node_id: u64) -> Result<RaftInternalClient<Channel>, ConsensusError> {
        let metrics = self.inner.raft.metrics();
        let addr = metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&node_id)
            .map(|n| n.addr.clone())
            .ok_or(ConsensusError::Unavailable {
                retry_after_secs: 1,
            })?;
        let mut peers = self.inner.peers.lock().expect("peer map lock poisoned");
        if let Some(client) = peers.get(&(node_id, addr.clone())) {
            return Ok(client.clone());
        }
        let channel = channel(&addr, self.inner.tls.as_ref()).map_err(ConsensusError::internal)?;
        let client = RaftInternalClient::new(channel)
            .max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES);
        peers.insert((node_id, addr), client.clone());
        Ok(client)
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ForwardError> {
    serde_json::to_vec(value).map_err(|e| ForwardError::Internal(e.to_string()))
}

/// The state machine's verdict on a command, as the caller of a write sees it.
fn answer(outcome: Outcome) -> Result<Reply, ConsensusError> {
    match outcome {
        Outcome::Applied(reply) => Ok(reply),
        Outcome::Rejected(rejection) => Err(ConsensusError::Rejected(rejection)),
    }
}
