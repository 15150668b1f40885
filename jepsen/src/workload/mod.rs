//! Client workloads. [`run`] drives the cluster until `ctx.stop` is set,
//! waits for `ctx.healed`, drains (consumers keep running until every known
//! intent is terminal or `ctx.drain_timeout` passes), then reads every intent
//! and its events from every node. Everything is recorded into
//! `ctx.history` in the vocabulary of [`crate::checker`].
//!
//! Pieces:
//! * [`create`]: creators with idempotency keys, retried with the same key on
//!   errors and timeouts, some sent twice concurrently;
//! * [`consumers`]: agent-stream (SSE) and poll consumers that drop and
//!   resume, ack / complete / ignore / ack stale attempts; event-stream
//!   followers that drop and resume from their last seq;
//! * [`receiver`]: the HTTP-push receiver (down, slow or 5xx at times);
//! * [`chaos`]: racing resolve/cancel, and linearizable status reads;
//! * [`workflows`]: scenario bundles whose workflow the cluster runs step by step;
//! * [`finals`]: drain and the final per-node reads.

pub mod chaos;
pub mod client;
pub mod consumers;
pub mod create;
pub mod finals;
pub mod receiver;
pub mod workflows;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::history::History;
use client::{Api, Outcome};

/// Everything a workload needs from the orchestration.
#[derive(Clone)]
pub struct WorkloadCtx {
    /// Node name and HTTP base URL ("n1", "http://10.77.0.1:8080").
    pub nodes: Vec<(String, String)>,
    /// Admin API key (Bearer) with every scope.
    pub admin_key: String,
    /// How long the fault phase lasts (informational: `stop` ends it).
    pub time_limit: Duration,
    /// Becomes `true` when the workloads must stop generating load.
    pub stop: watch::Receiver<bool>,
    /// Becomes `true` after the final heal (and restart): workloads drain.
    pub healed: watch::Receiver<bool>,
    /// Where the harness' HTTP-push receiver listens: an address of the root
    /// namespace that the nodes' namespaces can reach (the bridge address).
    /// The nodes must allow it for delivery (`--delivery-allow-hosts`), as
    /// it is a private address.
    pub receiver_addr: SocketAddr,
    /// The URL the nodes use to reach that receiver (`http://{receiver_addr}`).
    pub receiver_url: String,
    /// Upper bound on the drain phase after the heal.
    pub drain_timeout: Duration,
    /// Set by the workload when its drain is over (bounded by `drain_timeout`) and
    /// its final reads begin, so that the orchestration can give the drain and the
    /// final reads separate budgets.
    pub drained: Arc<watch::Sender<bool>>,
    /// Concurrent creators.
    pub clients: usize,
    /// The recorder.
    pub history: History,
    /// Seed for the workload's random choices.
    pub seed: u64,
}

/// The agents the workload uses, one per binding that could be registered.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    pub stream: String,
    pub poll: Option<String>,
    pub http: Option<String>,
}

impl Agents {
    /// Every usable agent address (bare, no `agent://`).
    pub fn all(&self) -> Vec<String> {
        let mut v = vec![self.stream.clone()];
        v.extend(self.poll.clone());
        v.extend(self.http.clone());
        v
    }
}

/// What the workload knows about one intent.
#[derive(Debug, Clone)]
pub struct Known {
    pub key: String,
    pub agent: String,
}

/// State shared by every workload task.
pub struct Shared {
    pub ctx: WorkloadCtx,
    pub api: Api,
    pub agents: Agents,
    rng: Mutex<StdRng>,
    next: AtomicU64,
    /// Intents by id.
    pub known: Mutex<BTreeMap<String, Known>>,
    /// Ids seen terminal.
    pub terminal: Mutex<HashSet<String>>,
    /// Set once the drain began: consumers complete everything.
    pub draining: AtomicBool,
    /// Set when consumers must stop.
    pub done: watch::Sender<bool>,
    /// Bounds the event-stream followers.
    pub followers: Arc<Semaphore>,
    /// Run tag, unique per run (keys and agent names).
    pub tag: String,
}

impl Shared {
    /// A random value from the shared seeded generator.
    pub fn rand<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut r = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r)
    }

    /// Probability test.
    pub fn chance(&self, p: f64) -> bool {
        self.rand(|r| r.gen_bool(p.clamp(0.0, 1.0)))
    }

    /// A fresh process name with a prefix.
    pub fn process(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A random node (name, base URL).
    pub fn node(&self) -> (String, String) {
        let n = self.ctx.nodes.len();
        let i = self.rand(|r| r.gen_range(0..n));
        self.ctx.nodes[i].clone()
    }

    pub fn history(&self) -> &History {
        &self.ctx.history
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Whether new load must stop (fault phase over).
    pub fn stopping(&self) -> bool {
        *self.ctx.stop.borrow()
    }

    /// Remembers an intent (from a create reply or an observation).
    pub fn learn(&self, id: &str, key: Option<&str>, agent: Option<&str>) {
        let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
        k.entry(id.to_string()).or_insert_with(|| Known {
            key: key.unwrap_or("").to_string(),
            agent: agent.unwrap_or("").to_string(),
        });
    }

    /// Notes an observed status.
    pub fn saw_status(&self, id: &str, status: Option<&str>) {
        if status.is_some_and(|s| matches!(s, "COMPLETED" | "FAILED" | "CANCELED" | "TIMED_OUT")) {
            self.terminal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string());
        }
    }

    /// A random known intent that was not seen terminal.
    pub fn random_open_intent(&self) -> Option<String> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let term = self.terminal.lock().unwrap_or_else(|e| e.into_inner());
        let open: Vec<&String> = known.keys().filter(|k| !term.contains(*k)).collect();
        if open.is_empty() {
            return None;
        }
        let i = self.rand(|r| r.gen_range(0..open.len()));
        Some(open[i].clone())
    }

    /// Known ids not seen terminal.
    pub fn open_intents(&self) -> Vec<String> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let term = self.terminal.lock().unwrap_or_else(|e| e.into_inner());
        known
            .keys()
            .filter(|k| !term.contains(*k))
            .cloned()
            .collect()
    }

    /// Every known id.
    pub fn known_ids(&self) -> Vec<String> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// Sleeps `d`, or less if consumers are told to stop.
pub async fn nap(sh: &Shared, d: Duration) {
    let mut done = sh.done.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = done.wait_for(|v| *v) => {}
    }
}

/// Registers the agents' bindings (`PUT /v1/agents/{address}/binding`).
/// The stream agent works unregistered (the default binding); the poll and
/// HTTP agents are used only if their registration succeeded.
async fn setup_agents(api: &Api, ctx: &WorkloadCtx, tag: &str) -> Agents {
    let h = &ctx.history;
    let base = format!("jepsen/{tag}");
    let mut agents = Agents {
        stream: format!("{base}/stream"),
        ..Agents::default()
    };
    let specs: Vec<(String, Value)> = vec![
        (
            agents.stream.clone(),
            json!({"delivery_mode": "stream", "ack_timeout_seconds": 5, "max_delivery_attempts": 25}),
        ),
        (
            format!("{base}/poll"),
            json!({"delivery_mode": "poll", "ack_timeout_seconds": 5, "max_delivery_attempts": 25}),
        ),
        (
            format!("{base}/http"),
            json!({"delivery_mode": "http", "url": format!("{}/push", ctx.receiver_url.trim_end_matches('/')),
                   "secret": "jepsen-push-secret-0123456789", "max_concurrency": 8, "ack_timeout_seconds": 10,
                   "max_delivery_attempts": 25}),
        ),
    ];
    for (address, body) in specs {
        let mode = body["delivery_mode"].as_str().unwrap_or("").to_string();
        let mut registered = false;
        for _ in 0..10 {
            let (node, url) = ctx.nodes[0].clone();
            h.invoke(
                "setup",
                "register-agent",
                json!({"agent": address, "mode": mode}),
                Some(&node),
            );
            let out = api
                .call(
                    Method::PUT,
                    &format!("{url}/v1/agents/{address}/binding"),
                    Some(&body),
                    &[],
                    Duration::from_secs(10),
                )
                .await;
            client::record(
                h,
                "setup",
                "register-agent",
                &node,
                &out,
                json!({"agent": address, "http": out.http()}),
            );
            match out {
                Outcome::Ok(_) => {
                    registered = true;
                    break;
                }
                Outcome::Fail(_) if matches!(out.http(), Some(404 | 405 | 400 | 422)) => break,
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        let usable = registered || mode == "stream";
        if usable {
            h.ok(
                "setup",
                "agent-binding",
                json!({"agent": address, "mode": mode, "registered": registered}),
                None,
            );
            match mode.as_str() {
                "poll" => agents.poll = Some(address),
                "http" => agents.http = Some(address),
                _ => {}
            }
        }
    }
    agents
}

/// Runs the whole workload; returns the number of final reads made.
pub async fn run(ctx: WorkloadCtx) -> anyhow::Result<usize> {
    anyhow::ensure!(!ctx.nodes.is_empty(), "no nodes");
    let api = Api::new(&ctx.admin_key)?;
    let tag =
        format!("r{:x}", ctx.seed & 0xffff_ffff) + &uuid::Uuid::new_v4().simple().to_string()[..6];
    let agents = setup_agents(&api, &ctx, &tag).await;
    let (done, _) = watch::channel(false);
    let sh = Arc::new(Shared {
        rng: Mutex::new(StdRng::seed_from_u64(ctx.seed)),
        ctx,
        api,
        agents,
        next: AtomicU64::new(0),
        known: Mutex::new(BTreeMap::new()),
        terminal: Mutex::new(HashSet::new()),
        draining: AtomicBool::new(false),
        done,
        followers: Arc::new(Semaphore::new(10)),
        tag,
    });

    let mut load = Vec::new();
    let mut consumers = Vec::new();
    for i in 0..sh.ctx.clients.max(1) {
        load.push(tokio::spawn(create::creator(sh.clone(), i)));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(chaos::reader(sh.clone())));
    }
    load.push(tokio::spawn(chaos::racer(sh.clone())));
    load.push(tokio::spawn(workflows::applier(sh.clone())));
    for _ in 0..2 {
        consumers.push(tokio::spawn(consumers::agent_stream(sh.clone())));
    }
    if sh.agents.poll.is_some() {
        for _ in 0..2 {
            consumers.push(tokio::spawn(consumers::poller(sh.clone())));
        }
    }
    if sh.agents.http.is_some() {
        consumers.push(tokio::spawn(receiver::serve(sh.clone())));
    }

    // Fault phase.
    let mut stop = sh.ctx.stop.clone();
    let _ = stop.wait_for(|v| *v).await;
    for t in load {
        let _ = t.await;
    }
    // Heal, then drain.
    let mut healed = sh.ctx.healed.clone();
    let _ = healed.wait_for(|v| *v).await;
    sh.draining.store(true, Ordering::Relaxed);
    finals::drain(&sh).await;
    // `send_replace`, not `send`: `send` does nothing while no receiver exists, and the
    // consumers poll the flag with `borrow` (that left them running for ever).
    sh.done.send_replace(true);
    sh.ctx.drained.send_replace(true);
    // The consumers notice within one long-poll or stream timeout; one bound for all.
    let stop_by = tokio::time::Instant::now() + Duration::from_secs(15);
    for t in consumers {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(stop_by, t).await.is_err() {
            abort.abort();
        }
    }
    let n = finals::final_reads(&sh).await;
    sh.ctx.history.flush()?;
    Ok(n)
}
