//! Clusters of real `intentd` processes on loopback: every node has its own ports, data
//! directory and log file; nodes are killed, stopped, wiped and restarted individually.
//! [`Node`] is the harness's one process starter: a one-node [`super::Server`] is a `Node`
//! too. A start that lost its ports to another process is started again on fresh ones (see
//! [`super::ports`]). Plus a
//! continuous create load that counts an intent as acknowledged exactly as a correct client
//! does (a 200 with an `intent_id`, retrying ambiguous failures with the same
//! `Idempotency-Key`), and the checks that every acknowledged intent is readable.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;

use super::api::{assert_gapless, intent_body, Api, PAYMENTS};
use super::ports::{free_ports, LOST_PORT};

/// How long a (debug, contended) cluster may take to elect a leader and replicate the admin key.
pub const FORM_DEADLINE: Duration = Duration::from_secs(60);
/// How long a clean shutdown may take after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Settings shared by every node of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--request-timeout-ms`: the longest a write may wait for the cluster before a 503
    /// (`None`: the server's own default).
    pub request_timeout_ms: Option<u64>,
    /// `--snapshot-after-logs`, when set.
    pub snapshot_after_logs: Option<u64>,
    /// `--snapshot-logs-to-keep`, when set.
    pub snapshot_logs_to_keep: Option<u64>,
    /// More `serve` arguments, appended as given (e.g. the delivery engine's settings).
    pub extra_args: Vec<String>,
    /// TLS everywhere, from the files `intentd certs init` wrote here (`ca.pem`,
    /// `node<ID>.pem`, `node<ID>.key`): HTTPS, gRPC over TLS and the mutual TLS plane.
    pub tls_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            request_timeout_ms: Some(2_000),
            snapshot_after_logs: None,
            snapshot_logs_to_keep: None,
            extra_args: Vec::new(),
            tls_dir: None,
        }
    }
}

/// One `intentd serve` of a cluster, running or not, with everything needed to start it again
/// on the same data directory and addresses.
pub struct Node {
    pub id: u64,
    /// Owns the data directory and the log file. Kept on disk (and its path printed) when the
    /// test fails, or always with `INTENTD_E2E_KEEP=1`.
    dir: Option<TempDir>,
    root: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub admin_key: String,
    /// The `--peers` argument (`None`: a one-node cluster of its own, formed at first start).
    peers: Option<String>,
    /// Start with `--join` (never form a cluster, wait to be added).
    pub join: bool,
    opts: ClusterOptions,
    child: Option<Child>,
    log_path: PathBuf,
    starts: u32,
    health_http: reqwest::Client,
    /// The cluster CA (PEM) when the cluster runs TLS: clients trust it.
    pub ca: Option<Vec<u8>>,
}

impl Node {
    /// A node not started yet, on `addrs` (HTTP, gRPC, Raft) and a fresh data directory.
    /// `peers`: the `--peers` argument; `None` forms a one-node cluster of its own.
    pub fn new(
        id: u64,
        addrs: [SocketAddr; 3],
        peers: Option<String>,
        admin_key: String,
        opts: ClusterOptions,
    ) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("intentd-e2e-node{id}-"))
            .tempdir()
            .expect("create temp dir");
        let root = dir.path().to_path_buf();
        let ca = opts
            .tls_dir
            .as_ref()
            .map(|dir| std::fs::read(dir.join("ca.pem")).expect("read ca.pem"));
        Node {
            id,
            log_path: root.join("server.log"),
            root,
            dir: Some(dir),
            http_addr: addrs[0],
            grpc_addr: addrs[1],
            raft_addr: addrs[2],
            admin_key,
            peers,
            join: false,
            opts,
            child: None,
            starts: 0,
            // No connection kept between probes: an idle one would hold one of the server's
            // connection places (`--max-connections`) for as long as the node lives.
            health_http: super::api::client_trusting(ca.as_deref())
                .timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
            ca,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }

    /// A client of this node that authenticates with the cluster's admin key.
    pub fn admin(&self) -> Api {
        Api::trusting(&self.base_url(), Some(&self.admin_key), self.ca.as_deref())
    }

    /// A client of this node that sends no key at all.
    pub fn anonymous(&self) -> Api {
        Api::trusting(&self.base_url(), None, self.ca.as_deref())
    }

    /// The process id of the running node (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process; does not wait for anything.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        writeln!(
            log,
            "===== e2e harness: node {} start #{}{} =====",
            self.id,
            self.starts,
            if self.join { " (--join)" } else { "" }
        )
        .expect("write log");
        let stderr: File = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_intentd"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("INTENTD_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("serve")
            .arg("--node-id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--http-addr")
            .arg(self.http_addr.to_string())
            .arg("--grpc-addr")
            .arg(self.grpc_addr.to_string())
            .arg("--raft-addr")
            .arg(self.raft_addr.to_string())
            .arg("--admin-key")
            .arg(&self.admin_key);
        if let Some(peers) = &self.peers {
            cmd.arg("--peers").arg(peers);
        }
        if let Some(ms) = self.opts.request_timeout_ms {
            cmd.arg("--request-timeout-ms").arg(ms.to_string());
        }
        if let Some(n) = self.opts.snapshot_after_logs {
            cmd.arg("--snapshot-after-logs").arg(n.to_string());
        }
        if let Some(n) = self.opts.snapshot_logs_to_keep {
            cmd.arg("--snapshot-logs-to-keep").arg(n.to_string());
        }
        cmd.args(&self.opts.extra_args);
        if let Some(dir) = &self.opts.tls_dir {
            let cert = dir.join(format!("node{}.pem", self.id));
            let key = dir.join(format!("node{}.key", self.id));
            cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
            cmd.arg("--cluster-ca").arg(dir.join("ca.pem"));
            cmd.arg("--cluster-cert")
                .arg(&cert)
                .arg("--cluster-key")
                .arg(&key);
        }
        if self.join {
            cmd.arg("--join");
        }
        let child = cmd
            .env("INTENTD_LOG", "info")
            // Plain text logs, so tests can search them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("spawn intentd");
        self.child = Some(child);
    }

    /// Fails the test if the process has exited on its own.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "node {} exited on its own with {status}\n{}",
                self.id,
                self.log_tail(80)
            );
        }
    }

    /// Waits until the node listens (its `/health` answers at all: every port is bound
    /// before any is served), or reports that its start lost a port to another process.
    /// Any other exit fails the test.
    pub async fn wait_bound(&mut self, limit: Duration) -> Result<(), LostPort> {
        let deadline = Instant::now() + limit;
        loop {
            if self.exited() && self.log_since_last_start().contains(LOST_PORT) {
                self.child = None;
                return Err(LostPort);
            }
            self.assert_alive();
            if self.health().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "node {} did not listen within {limit:?}\n{}",
                    self.id,
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process has exited on its own.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// `GET /health`: status and body, or the transport error.
    pub async fn health(&self) -> Result<(u16, Value), String> {
        let resp = self
            .health_http
            .get(format!("{}/health", self.base_url()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// The `applied_index` of a 200 `/health`, if the node answers one.
    pub async fn applied_index(&self) -> Option<u64> {
        match self.health().await {
            Ok((200, body)) => body["applied_index"].as_u64(),
            _ => None,
        }
    }

    /// Polls `/health` until it answers 200 (the node knows a leader), failing the test if the
    /// process exits first or `limit` passes.
    pub async fn wait_healthy(&mut self, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            self.assert_alive();
            let last = match self.health().await {
                Ok((200, body)) => return body,
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "node {} not healthy after {limit:?}; last /health: {last}\n{}",
                    self.id,
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", self.id));
        child.kill().expect("SIGKILL intentd");
        child.wait().expect("reap intentd");
    }

    /// SIGTERM and wait for the process to exit on its own.
    pub async fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM).await
    }

    /// Sends `signal` and waits for the process to exit on its own.
    pub async fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", self.id));
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, not yet reaped, so the pid cannot be reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {} did not exit within {STOP_DEADLINE:?} of signal {signal}\n{}",
                    self.id,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deletes the data directory of a stopped node: a disk replaced.
    pub fn wipe_data(&mut self) {
        assert!(!self.is_running(), "wipe a running node");
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("wipe the data directory");
        }
    }

    /// The complete snapshot files under `data/snapshots/`, as `(last log index, path)`, from
    /// their names `<term>-<index>-<seq>.snap`.
    pub fn snapshot_files(&self) -> Vec<(u64, PathBuf)> {
        let dir = self.data_dir().join("snapshots");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".snap")?;
                let index = stem.split('-').nth(1)?.parse().ok()?;
                Some((index, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Everything the node wrote since its most recent start.
    pub fn log_since_last_start(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let marker = format!("===== e2e harness: node {} start #{}", self.id, self.starts);
        match text.find(&marker) {
            Some(at) => text[at..].to_string(),
            None => text,
        }
    }

    /// The last `lines` lines of the node's output, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- node {}: last {} lines of {} ---\n{}",
            self.id,
            all.len() - from,
            self.log_path.display(),
            all[from..].join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let keep = std::thread::panicking() || std::env::var_os("INTENTD_E2E_KEEP").is_some();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(40));
        }
        if keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("node {} kept its directory: {}", self.id, path.display());
            }
        }
    }
}

/// A start of a node that lost one of its ports to another process before it bound it.
#[derive(Debug)]
pub struct LostPort;

/// How many fresh sets of ports a start may try before the test fails.
pub const PORT_ATTEMPTS: u32 = 5;

/// A cluster of nodes with ids 1..=n that share an admin key and options.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    pub admin_key: String,
    opts: ClusterOptions,
    /// Raft addresses of the nodes named in `--peers` at formation.
    peers: BTreeMap<u64, SocketAddr>,
}

fn peers_arg(peers: &BTreeMap<u64, SocketAddr>) -> String {
    peers
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n, the lowest forms the cluster) and waits until every node
    /// knows the same leader and accepts the admin key. A start that lost a port to another
    /// process is thrown away whole and made again on fresh ports: the peers must know each
    /// other's Raft addresses before any of them starts.
    pub async fn start(n: u64, opts: ClusterOptions) -> Cluster {
        let admin_key = format!("e2e-admin-{}", uuid::Uuid::new_v4().simple());
        for attempt in 1..=PORT_ATTEMPTS {
            let mut cluster = Cluster::spawn(n, &opts, &admin_key);
            let mut lost = None;
            for node in cluster.nodes.values_mut() {
                if node.wait_bound(FORM_DEADLINE).await.is_err() {
                    lost = Some(node.id);
                    break;
                }
            }
            match lost {
                None => {
                    cluster.wait_formed(FORM_DEADLINE).await;
                    return cluster;
                }
                Some(id) => eprintln!(
                    "e2e harness: node {id} lost a port to another process (attempt {attempt}); starting the cluster again on fresh ports"
                ),
            }
        }
        panic!("no cluster start kept its ports in {PORT_ATTEMPTS} attempts");
    }

    /// Reserves ports for `n` nodes and spawns them, waiting for nothing.
    fn spawn(n: u64, opts: &ClusterOptions, admin_key: &str) -> Cluster {
        let addrs = free_ports(3 * n as usize);
        let mut peers = BTreeMap::new();
        for id in 1..=n {
            peers.insert(id, addrs[(id as usize - 1) * 3 + 2]);
        }
        let arg = peers_arg(&peers);
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let i = (id as usize - 1) * 3;
            let node = Node::new(
                id,
                [addrs[i], addrs[i + 1], addrs[i + 2]],
                Some(arg.clone()),
                admin_key.to_string(),
                opts.clone(),
            );
            nodes.insert(id, node);
        }
        for node in nodes.values_mut() {
            node.spawn();
        }
        Cluster {
            nodes,
            admin_key: admin_key.to_string(),
            opts: opts.clone(),
            peers,
        }
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Admin client of node `id`.
    pub fn api(&self, id: u64) -> Api {
        self.node(id).admin()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until every running node answers `/health` 200 naming the same leader, that
    /// leader says it is the leader, and every running node accepts the admin key.
    pub async fn wait_formed(&mut self, limit: Duration) -> u64 {
        let leader = self.wait_leader(limit).await;
        let deadline = Instant::now() + limit;
        for id in self.running() {
            let api = self.api(id);
            loop {
                self.node_mut(id).assert_alive();
                let resp = api
                    .builder(reqwest::Method::GET, "/v1/cluster/status")
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let last = match resp {
                    Ok(r) if r.status().as_u16() == 200 => break,
                    Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                if Instant::now() > deadline {
                    panic!(
                        "node {id} never accepted the admin key on /v1/cluster/status: {last}\n{}",
                        self.node(id).log_tail(60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        leader
    }

    /// The leader all running nodes agree on, waiting up to `limit` for such agreement.
    pub async fn wait_leader(&mut self, limit: Duration) -> u64 {
        self.wait_leader_among(&self.running(), limit).await
    }

    /// Waits until every node in `ids` answers `/health` 200 with the same `leader_id`, and
    /// that leader (which must be among `ids`) reports `role: leader`.
    pub async fn wait_leader_among(&mut self, ids: &[u64], limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let mut seen = BTreeMap::new();
            for &id in ids {
                self.node_mut(id).assert_alive();
                seen.insert(id, self.node(id).health().await);
            }
            let leaders: Vec<Option<u64>> = seen
                .values()
                .map(|h| match h {
                    Ok((200, b)) => b["leader_id"].as_u64(),
                    _ => None,
                })
                .collect();
            if let Some(Some(l)) = leaders.first() {
                let agreed = leaders.iter().all(|x| *x == Some(*l));
                let is_leader = matches!(seen.get(l), Some(Ok((200, b))) if b["role"] == "leader");
                if agreed && is_leader {
                    return *l;
                }
            }
            if Instant::now() > deadline {
                let mut tails = String::new();
                for &id in ids {
                    tails.push_str(&self.node(id).log_tail(30));
                    tails.push('\n');
                }
                panic!("no agreed leader among {ids:?} after {limit:?}: {seen:?}\n{tails}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates node `max id + 1` with its own addresses, started with `--join` (never forms a
    /// cluster), and waits until it listens (on fresh ports again if it lost one). Returns its
    /// id; does not wait for more (it knows no leader until it is added).
    pub async fn spawn_joining_node(&mut self) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        for attempt in 1..=PORT_ATTEMPTS {
            let addrs = free_ports(3);
            let mut peers = self.peers.clone();
            peers.insert(id, addrs[2]);
            let mut node = Node::new(
                id,
                [addrs[0], addrs[1], addrs[2]],
                Some(peers_arg(&peers)),
                self.admin_key.clone(),
                self.opts.clone(),
            );
            node.join = true;
            node.spawn();
            if node.wait_bound(FORM_DEADLINE).await.is_ok() {
                self.nodes.insert(id, node);
                return id;
            }
            eprintln!("e2e harness: node {id} lost a port to another process (attempt {attempt}); starting it again on fresh ports");
        }
        panic!("node {id} kept no ports in {PORT_ATTEMPTS} attempts");
    }

    /// Waits until each node of `ids` has applied everything `leader` had applied when called.
    pub async fn wait_caught_up(&mut self, ids: &[u64], leader: u64, limit: Duration) {
        let target = self
            .node(leader)
            .applied_index()
            .await
            .expect("leader health");
        self.wait_applied(ids, target, limit).await;
    }

    /// Waits until each node of `ids` has applied at least `index` (its `/health`).
    pub async fn wait_applied(&mut self, ids: &[u64], index: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        for &id in ids {
            loop {
                self.node_mut(id).assert_alive();
                let applied = self.node(id).applied_index().await;
                if applied.is_some_and(|a| a >= index) {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "node {id} applied {applied:?}, not {index}, after {limit:?}\n{}",
                        self.node(id).log_tail(60)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Writes `what` with a timestamp into every node's log (running or not), so that what
    /// the test did lines up with what the nodes logged.
    pub fn note(&self, what: &str) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for node in self.nodes.values() {
            if let Ok(mut log) = OpenOptions::new().append(true).open(&node.log_path) {
                let _ = writeln!(log, "===== e2e harness: {now} {what} =====");
            }
        }
    }

    /// `GET /v1/cluster/status` through node `id`, asserting success.
    pub async fn status(&self, id: u64) -> Value {
        let resp = self.api(id).get("/v1/cluster/status").await;
        resp.assert_ok(200).clone()
    }
}

/// `membership.voters` / `membership.learners` of a cluster status, sorted.
pub fn member_ids(status: &Value, which: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = status["membership"][which]
        .as_array()
        .unwrap_or_else(|| panic!("membership.{which} is not an array: {status}"))
        .iter()
        .map(|v| v.as_u64().expect("member id is a number"))
        .collect();
    ids.sort_unstable();
    ids
}

/// One acknowledged create.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub intent_id: String,
    pub body: Value,
    /// When the successful attempt was sent, and when its reply arrived.
    pub sent: Instant,
    pub acked: Instant,
    pub attempts: u32,
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub acks: Vec<Ack>,
    /// Creates that were never acknowledged within the per-create deadline: (key, last error).
    pub unacked: Vec<(String, String)>,
    /// Attempts answered with something else than 200 or a retryable 503: (status, body).
    pub unexpected: Vec<(u16, String)>,
    /// Attempts by outcome (`200`, `503`, `transport`, ...).
    pub outcomes: BTreeMap<String, usize>,
}

impl LoadReport {
    /// The time from `t0` to the first acknowledgement of an attempt sent at or after `t0`:
    /// how long a client starting at `t0` could not write.
    pub fn first_ack_sent_after(&self, t0: Instant) -> Option<Duration> {
        self.acks
            .iter()
            .filter(|a| a.sent >= t0)
            .map(|a| a.acked - t0)
            .min()
    }

    /// The longest stretch without any acknowledgement, among acks at or after `from`
    /// (`from` counts as an acknowledgement instant).
    pub fn longest_gap_after(&self, from: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .acks
            .iter()
            .map(|a| a.acked)
            .filter(|t| *t >= from)
            .collect();
        times.push(from);
        times.sort();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// Asserts every create was acknowledged and no attempt got an unexpected answer.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(
            self.unacked.is_empty(),
            "{} creates never acknowledged within their deadline (of {} acked), e.g. {:?}",
            self.unacked.len(),
            self.acks.len(),
            &self.unacked[..self.unacked.len().min(5)]
        );
        assert!(
            self.unexpected.is_empty(),
            "{} attempts got an unexpected answer (outcomes {:?}), e.g. {:?}",
            self.unexpected.len(),
            self.outcomes,
            &self.unexpected[..self.unexpected.len().min(5)]
        );
    }
}

/// The nodes a load sends to; tests may change it while the load runs.
pub type Targets = Arc<RwLock<Vec<String>>>;

pub fn targets(urls: Vec<String>) -> Targets {
    Arc::new(RwLock::new(urls))
}

/// A continuous create load: `workers` clients, each creating one intent after another with
/// its own `Idempotency-Key`, retrying 503s and transport errors with the same key and body
/// (moving on to the next target node) until acknowledged or the per-create deadline passes.
pub struct CreateLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

/// How long one create may keep retrying before the load reports it as never acknowledged.
const CREATE_DEADLINE: Duration = Duration::from_secs(30);

impl CreateLoad {
    pub fn start(targets: Targets, admin_key: &str, workers: usize, tag: &str) -> CreateLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let tasks = (0..workers)
            .map(|w| {
                let (stop, acked, http, targets) =
                    (stop.clone(), acked.clone(), http.clone(), targets.clone());
                let key = admin_key.to_string();
                let tag = tag.to_string();
                tokio::spawn(async move {
                    let mut report = LoadReport::default();
                    let mut next_target = w;
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let idem = format!("{tag}-w{w}-n{n}-{}", uuid::Uuid::new_v4().simple());
                        let mut body = intent_body(PAYMENTS);
                        body["payload"] = json!({ "load": tag, "worker": w, "n": n });
                        let started = Instant::now();
                        let mut attempts = 0u32;
                        let mut last_err = String::new();
                        loop {
                            if started.elapsed() > CREATE_DEADLINE {
                                report.unacked.push((idem.clone(), last_err.clone()));
                                break;
                            }
                            attempts += 1;
                            let url = {
                                let t = targets.read().expect("targets lock");
                                format!("{}/v1/intents", t[next_target % t.len()])
                            };
                            let sent = Instant::now();
                            let res = http
                                .post(&url)
                                .header("x-api-key", &key)
                                .header("Idempotency-Key", &idem)
                                .json(&body)
                                .send()
                                .await;
                            let (status, text) = match res {
                                Ok(r) => {
                                    let s = r.status().as_u16();
                                    match r.text().await {
                                        Ok(t) => (Some(s), t),
                                        Err(e) => (None, format!("reading body: {e}")),
                                    }
                                }
                                Err(e) => (None, e.to_string()),
                            };
                            let outcome = status.map_or("transport".to_string(), |s| s.to_string());
                            *report.outcomes.entry(outcome.clone()).or_default() += 1;
                            if status == Some(200) {
                                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                                if let Some(id) = v["intent_id"].as_str() {
                                    report.acks.push(Ack {
                                        key: idem.clone(),
                                        intent_id: id.to_string(),
                                        body: body.clone(),
                                        sent,
                                        acked: Instant::now(),
                                        attempts,
                                    });
                                    acked.fetch_add(1, Ordering::SeqCst);
                                    break;
                                }
                                report.unexpected.push((200, text.clone()));
                            } else if let Some(s) = status {
                                if s != 503 {
                                    report.unexpected.push((s, format!("via {url}: {text}")));
                                }
                            }
                            last_err = format!("{outcome} via {url}: {text}");
                            // Another node may do better; retry soon with the same key and body.
                            next_target += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    report
                })
            })
            .collect();
        CreateLoad { stop, acked, tasks }
    }

    /// Creates acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` creates are acknowledged in total.
    pub async fn wait_acked(&self, n: usize, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        while self.acked() < n {
            if Instant::now() > deadline {
                panic!(
                    "load acknowledged only {} of {n} creates after {limit:?} ({what})",
                    self.acked()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load: every worker finishes (acknowledges or gives up on) its current create.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadReport::default();
        for t in self.tasks {
            let r = t.await.expect("load worker panicked");
            all.acks.extend(r.acks);
            all.unacked.extend(r.unacked);
            all.unexpected.extend(r.unexpected);
            for (k, v) in r.outcomes {
                *all.outcomes.entry(k).or_default() += v;
            }
        }
        all.acks.sort_by_key(|a| a.acked);
        all
    }
}

/// Asserts that every acknowledged create is readable through `api`: `GET` answers it with
/// its payload and correlation id, and its events start gapless with created, submitted.
pub async fn assert_acks_readable(api: &Api, acks: &[Ack], via: &str) {
    let checks = futures::stream::iter(acks.iter().cloned())
        .map(|ack| {
            let api = api.clone();
            async move {
                let resp = api.get(&format!("/v1/intents/{}", ack.intent_id)).await;
                if resp.status != 200 {
                    return Err(format!(
                        "acknowledged intent {} (key {}) unreadable: {} {}",
                        ack.intent_id, ack.key, resp.status, resp.text
                    ));
                }
                let intent = &resp.body["intent"];
                if intent["payload"] != ack.body["payload"]
                    || intent["correlation_id"] != ack.body["correlation_id"]
                {
                    return Err(format!(
                        "intent {} holds {intent}, acknowledged body was {}",
                        ack.intent_id, ack.body
                    ));
                }
                let events = api.events(&ack.intent_id).await;
                let types = assert_gapless(&ack.intent_id, &events);
                if types.len() < 2 || types[..2] != ["intent.created", "intent.submitted"] {
                    return Err(format!("intent {} events {types:?}", ack.intent_id));
                }
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let failures: Vec<String> = checks.into_iter().filter_map(|r| r.err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} acknowledged intents not readable through {via}:\n{}",
        failures.len(),
        acks.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

/// Asserts that retrying every acknowledged create (same key, same body) through `api`
/// replays the same intent: an acknowledged create was exactly one intent. A 503 is what the
/// API tells a client to retry (a node that just rejoined may trigger an election), so it is
/// retried with the same key, as a client would, for a bounded time; any other answer counts.
pub async fn assert_acks_replay(api: &Api, acks: &[Ack], via: &str) {
    const RETRY_503_FOR: Duration = Duration::from_secs(20);
    let checks = futures::stream::iter(acks.iter().cloned())
        .map(|ack| {
            let api = api.clone();
            async move {
                let give_up = Instant::now() + RETRY_503_FOR;
                let mut resp = api.create(&ack.body, Some(&ack.key)).await;
                while resp.status == 503 && Instant::now() < give_up {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    resp = api.create(&ack.body, Some(&ack.key)).await;
                }
                if resp.status != 200 || resp.body["intent_id"] != json!(ack.intent_id) {
                    return Err(format!(
                        "retry of key {} (acked as {}) answered {} {}",
                        ack.key, ack.intent_id, resp.status, resp.text
                    ));
                }
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let failures: Vec<String> = checks.into_iter().filter_map(|r| r.err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} idempotent retries through {via} did not replay:\n{}",
        failures.len(),
        acks.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

/// Asserts no two acknowledgements (different keys) share an intent id.
#[track_caller]
pub fn assert_distinct_ids(acks: &[Ack]) {
    let mut seen = BTreeMap::new();
    for a in acks {
        if let Some(other) = seen.insert(a.intent_id.clone(), a.key.clone()) {
            panic!(
                "keys {other} and {} were both acknowledged as intent {}",
                a.key, a.intent_id
            );
        }
    }
}
