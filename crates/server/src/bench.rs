//! `intentd bench`: a closed-loop load generator against one node or a whole cluster,
//! printing throughput and latency percentiles. Figures come from here, never from timed tests.
//!
//! Two workloads:
//! - `create`: each worker sends `POST /v1/intents` and waits for the answer (a majority has
//!   the intent on disk), then sends the next.
//! - `roundtrip`: the whole life of an intent as users see it: the sender creates it, the
//!   receiving agent gets it on its delivery stream (SSE), resumes it with a result, and the
//!   sender observes `intent.completed` on the intent's event stream.
//!
//! Around the create workload:
//! - `--idle-streams N` first opens N agent delivery streams (SSE), each on its own address
//!   that nothing is sent to, and keeps them open while the load runs: what many connected
//!   but idle agents cost everyone else's writes.
//! - `--listen` sends every create to one address with one more stream listening on it, and
//!   reports how long each create took to reach that listener (from the moment its request
//!   was sent), so the wake-up path is measured under the same load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Mutex, Semaphore};

use crate::sse::FrameReader;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Workload {
    Create,
    Roundtrip,
}

#[derive(Debug, clap::Args)]
pub struct BenchCmd {
    /// Base URL of a node; repeat to spread workers over several nodes.
    #[arg(
        long = "server",
        env = "INTENTD_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// PEM certificates to trust for `https://` servers (the cluster CA of `certs init`).
    #[arg(long, env = "INTENTD_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[arg(long, env = "INTENTD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long, value_enum, default_value_t = Workload::Create)]
    workload: Workload,
    /// Operations in flight at once (each worker waits for its answer before the next).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to drive load, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload size in bytes (a string field of that length).
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Agent delivery streams to open (one address each, nothing sent to them) and keep open
    /// while the load runs. Each is one HTTP/1.1 connection, so the process raises its
    /// open-file limit as far as the hard limit allows.
    #[arg(long, default_value_t = 0)]
    idle_streams: usize,
    /// `create` only: send every create to one address that one more stream (on the first
    /// `--server`) listens on, and report create-to-listener latency.
    #[arg(long)]
    listen: bool,
    /// The listener's `status` filter. The default observes SUBMITTED intents without leasing
    /// them, which measures the wake-up path alone; `DELIVERED` makes it lease each one (a
    /// Raft write per intent, one at a time on the stream), as a consuming agent would.
    #[arg(long, default_value = "SUBMITTED")]
    listen_status: String,
}

/// Streams opened at once while setting up: the server's accept queue stays short.
const OPEN_AT_ONCE: usize = 256;
/// Idle streams share one HTTP client per this many (each stream is its own connection).
const STREAMS_PER_CLIENT: usize = 1000;
/// How long the listener may lag behind the last create before it is counted as missing.
const LISTEN_DRAIN: Duration = Duration::from_secs(5);

struct Ctx {
    client: reqwest::Client,
    /// Trusted besides the public roots by every client the bench makes.
    ca_file: Option<std::path::PathBuf>,
    key: String,
    filler: String,
    /// Where the create workload sends: its own address per worker, or the listened one.
    target: Option<String>,
    /// Payload times are microseconds since this instant.
    start: Instant,
}

impl Ctx {
    async fn post(&self, url: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .client
            .post(url)
            .header("x-api-key", &self.key)
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{status}: {body}");
        }
        Ok(body)
    }

    fn new_intent(&self, agent: &str) -> Value {
        json!({
            "intent_type": "bench.roundtrip.v1",
            "correlation_id": uuid::Uuid::new_v4(),
            "to_agent": agent,
            "payload": {
                "data": self.filler,
                "sent_us": self.start.elapsed().as_micros() as u64,
            },
        })
    }
}

/// Latency percentiles of sorted samples, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

impl BenchCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.servers.is_empty() {
            bail!("at least one --server is needed");
        }
        let key = match &self.api_key {
            Some(k) => k.clone(),
            None => std::fs::read_to_string("./data/admin.key")
                .context("no --api-key and no ./data/admin.key")?
                .trim()
                .to_string(),
        };
        if self.listen && !matches!(self.workload, Workload::Create) {
            bail!("--listen goes with --workload create");
        }
        if self.idle_streams > 0 {
            raise_open_file_limit(self.idle_streams + self.concurrency + 256)?;
        }
        let first = self.servers[0].trim_end_matches('/').to_string();
        let listen_address = format!("bench/listen/{}", uuid::Uuid::new_v4().simple());
        let ctx = Arc::new(Ctx {
            client: crate::client::http_client(
                self.ca_file.as_deref(),
                reqwest::Client::builder().pool_max_idle_per_host(self.concurrency * 2),
            )?,
            ca_file: self.ca_file.clone(),
            key,
            filler: "x".repeat(self.payload_bytes),
            target: self.listen.then(|| format!("agent://{listen_address}")),
            start: Instant::now(),
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let idle = if self.idle_streams > 0 {
            Some(IdleStreams::open(&ctx, &self.servers, self.idle_streams, stop_rx.clone()).await?)
        } else {
            None
        };
        let listener = if self.listen {
            let url = format!(
                "{first}/v1/agents/{listen_address}/intents/stream?wait_seconds=60&status={}",
                self.listen_status
            );
            Some(Listener::start(&ctx, url, stop_rx.clone()).await?)
        } else {
            None
        };

        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let until = start + Duration::from_secs(self.seconds);
        let mut workers = Vec::new();
        for w in 0..self.concurrency {
            let base = self.servers[w % self.servers.len()]
                .trim_end_matches('/')
                .to_string();
            let (ctx, errors) = (ctx.clone(), errors.clone());
            let workload = self.workload;
            workers.push(tokio::spawn(async move {
                match workload {
                    Workload::Create => create_loop(ctx, base, w, until, errors).await,
                    Workload::Roundtrip => roundtrip_loop(ctx, base, w, until, errors).await,
                }
            }));
        }
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await?);
        }
        let elapsed = start.elapsed().as_secs_f64();
        all.sort();
        let pct = |p: f64| percentile(&all, p);
        let name = match self.workload {
            Workload::Create => "creates",
            Workload::Roundtrip => "roundtrips",
        };
        println!(
            "{name} c={} nodes={} ok={} errors={} ops/s={:.0} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2}",
            self.concurrency,
            self.servers.len(),
            all.len(),
            errors.load(Ordering::Relaxed),
            all.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99),
            pct(0.999),
        );
        if let Some(idle) = &idle {
            println!(
                "idle_streams wanted={} open_at_end={} reopened={} failed={} opened_in_s={:.1}",
                self.idle_streams,
                idle.open.load(Ordering::Relaxed),
                idle.reopened.load(Ordering::Relaxed),
                idle.failed.load(Ordering::Relaxed),
                idle.opened_in.as_secs_f64(),
            );
        }
        if let Some(listener) = listener {
            let (mut seen, reconnects) = listener.finish(all.len()).await;
            seen.sort();
            println!(
                "listen status={} created={} reached_listener={} reconnects={} p50_ms={:.2} \
                 p99_ms={:.2} p999_ms={:.2} max_ms={:.2}",
                self.listen_status,
                all.len(),
                seen.len(),
                reconnects,
                percentile(&seen, 0.50),
                percentile(&seen, 0.99),
                percentile(&seen, 0.999),
                seen.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            );
        }
        let _ = stop_tx.send(true);
        if let Some(idle) = idle {
            idle.close().await;
        }
        Ok(())
    }
}

/// Raises the soft limit on open files towards `wanted` (up to the hard limit): each open
/// stream is a socket.
fn raise_open_file_limit(wanted: usize) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let wanted = wanted as libc::rlim_t;
    if limit.rlim_cur < wanted && limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = wanted.min(limit.rlim_max);
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    if limit.rlim_cur < wanted {
        eprintln!(
            "warning: the open-file limit is {} (hard limit); {wanted} streams and connections \
             may not fit",
            limit.rlim_cur
        );
    }
    Ok(())
}

/// Sends a GET for an SSE stream and returns the response once its headers are in.
async fn open_stream(
    client: &reqwest::Client,
    key: &str,
    url: &str,
) -> anyhow::Result<reqwest::Response> {
    let resp = client.get(url).header("x-api-key", key).send().await?;
    if !resp.status().is_success() {
        bail!("stream answered {}", resp.status());
    }
    Ok(resp)
}

/// Agent streams that stay connected and hear nothing.
struct IdleStreams {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Streams connected right now.
    open: Arc<AtomicI64>,
    /// Reconnects after the server ended a stream (its idle limit).
    reopened: Arc<AtomicU64>,
    /// Streams given up on: they could not be opened.
    failed: Arc<AtomicU64>,
    opened_in: Duration,
}

impl IdleStreams {
    /// Opens `n` streams, at most [`OPEN_AT_ONCE`] at a time, and returns when every one is
    /// connected (or failed). Each reconnects if the server ends it, until `stop`.
    async fn open(
        ctx: &Arc<Ctx>,
        servers: &[String],
        n: usize,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<IdleStreams> {
        let started = Instant::now();
        let clients = (0..n.div_ceil(STREAMS_PER_CLIENT))
            .map(|_| {
                crate::client::http_client(
                    ctx.ca_file.as_deref(),
                    reqwest::Client::builder()
                        .http1_only()
                        .pool_max_idle_per_host(0),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let open = Arc::new(AtomicI64::new(0));
        let reopened = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(OPEN_AT_ONCE));
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<()>();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let client = clients[i / STREAMS_PER_CLIENT].clone();
            let base = servers[i % servers.len()].trim_end_matches('/').to_string();
            let url = format!("{base}/v1/agents/bench/idle-{i}/intents/stream?wait_seconds=60");
            let key = ctx.key.clone();
            let (open, reopened, failed) = (open.clone(), reopened.clone(), failed.clone());
            let (gate, settled_tx, mut stop) = (gate.clone(), settled_tx.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut first = true;
                loop {
                    let opened = {
                        let _permit = gate.acquire().await;
                        open_stream(&client, &key, &url).await
                    };
                    let resp = match opened {
                        Ok(resp) => resp,
                        Err(e) => {
                            tracing::debug!(error = %e, %url, "idle stream did not open");
                            failed.fetch_add(1, Ordering::Relaxed);
                            if first {
                                let _ = settled_tx.send(());
                            }
                            return;
                        }
                    };
                    open.fetch_add(1, Ordering::Relaxed);
                    if first {
                        let _ = settled_tx.send(());
                        first = false;
                    } else {
                        reopened.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut body = resp.bytes_stream();
                    let ended = tokio::select! {
                        _ = stop.wait_for(|s| *s) => true,
                        _ = async { while let Some(Ok(_)) = body.next().await {} } => false,
                    };
                    open.fetch_sub(1, Ordering::Relaxed);
                    if ended {
                        return;
                    }
                }
            }));
        }
        drop(settled_tx);
        let mut settled = 0;
        while settled < n && settled_rx.recv().await.is_some() {
            settled += 1;
        }
        let opened_in = started.elapsed();
        let failed_now = failed.load(Ordering::Relaxed);
        if failed_now > 0 {
            eprintln!("warning: {failed_now} of {n} idle streams could not be opened");
        }
        Ok(IdleStreams {
            tasks,
            open,
            reopened,
            failed,
            opened_in,
        })
    }

    async fn close(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The one stream on the address every create goes to, timing each arrival.
struct Listener {
    task: tokio::task::JoinHandle<()>,
    /// Create-to-arrival latency of each intent, by intent id (the first arrival counts).
    seen: Arc<std::sync::Mutex<HashMap<String, Duration>>>,
    reconnects: Arc<AtomicU64>,
}

impl Listener {
    /// Returns once the stream is connected, so no create is sent before it listens.
    async fn start(
        ctx: &Arc<Ctx>,
        url: String,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Listener> {
        let seen: Arc<std::sync::Mutex<HashMap<String, Duration>>> = Arc::default();
        let reconnects = Arc::new(AtomicU64::new(0));
        let first = open_stream(&ctx.client, &ctx.key, &url).await?;
        let task = {
            let (ctx, seen, reconnects) = (ctx.clone(), seen.clone(), reconnects.clone());
            tokio::spawn(async move {
                let mut resp = Some(first);
                let mut since = 0u64;
                loop {
                    let r = match resp.take() {
                        Some(r) => r,
                        None => {
                            reconnects.fetch_add(1, Ordering::Relaxed);
                            let url = format!("{url}&since={since}");
                            match open_stream(&ctx.client, &ctx.key, &url).await {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::warn!(error = %e, "listener could not reconnect");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    continue;
                                }
                            }
                        }
                    };
                    let mut body = r.bytes_stream();
                    let mut reader = FrameReader::default();
                    let read = async {
                        while let Some(Ok(chunk)) = body.next().await {
                            let arrived = ctx.start.elapsed();
                            for frame in reader.feed(&chunk) {
                                if !frame.name.starts_with("intent.") {
                                    continue;
                                }
                                since = since.max(frame.id.unwrap_or(0));
                                let Ok(v) = serde_json::from_str::<Value>(&frame.data) else {
                                    continue;
                                };
                                let (Some(id), Some(sent)) =
                                    (v["intent_id"].as_str(), v["payload"]["sent_us"].as_u64())
                                else {
                                    continue;
                                };
                                let took = arrived.saturating_sub(Duration::from_micros(sent));
                                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                                seen.entry(id.to_string()).or_insert(took);
                            }
                        }
                    };
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = read => {}
                    }
                }
            })
        };
        Ok(Listener {
            task,
            seen,
            reconnects,
        })
    }

    /// Waits (a bounded time) until `created` intents arrived, then stops listening.
    async fn finish(self, created: usize) -> (Vec<Duration>, u64) {
        let deadline = Instant::now() + LISTEN_DRAIN;
        while Instant::now() < deadline {
            if self.seen.lock().unwrap_or_else(|p| p.into_inner()).len() >= created {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.task.abort();
        let _ = self.task.await;
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        (
            seen.into_values().collect(),
            self.reconnects.load(Ordering::Relaxed),
        )
    }
}

async fn create_loop(
    ctx: Arc<Ctx>,
    base: String,
    worker: usize,
    until: Instant,
    errors: Arc<AtomicU64>,
) -> Vec<Duration> {
    let url = format!("{base}/v1/intents");
    let agent = ctx
        .target
        .clone()
        .unwrap_or_else(|| format!("agent://bench/load/worker-{worker}"));
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        match ctx.post(&url, &ctx.new_intent(&agent)).await {
            Ok(_) => latencies.push(t.elapsed()),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    latencies
}

/// Meets deliveries and the worker that waits for them, whichever comes first: a delivery can
/// arrive on the stream before the create's answer reaches the worker.
#[derive(Default)]
struct Rendezvous {
    waiters: HashMap<String, oneshot::Sender<Value>>,
    arrived: HashMap<String, Value>,
}

type Waiting = Arc<Mutex<Rendezvous>>;

async fn roundtrip_loop(
    ctx: Arc<Ctx>,
    base: String,
    worker: usize,
    until: Instant,
    errors: Arc<AtomicU64>,
) -> Vec<Duration> {
    // Each worker is its own agent, listening on its own delivery stream for the whole run.
    let address = format!("bench/roundtrip/{}-{worker}", uuid::Uuid::new_v4().simple());
    let waiting: Waiting = Arc::default();
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    let listener = {
        let (ctx, base, address, waiting) =
            (ctx.clone(), base.clone(), address.clone(), waiting.clone());
        tokio::spawn(async move {
            let mut since = 0u64;
            loop {
                let url = format!(
                    "{base}/v1/agents/{address}/intents/stream?since={since}&wait_seconds=30"
                );
                let stream = follow_sse(&ctx, &url, |id, delivery| {
                    since = since.max(id.unwrap_or(0));
                    let waiting = waiting.clone();
                    async move {
                        let intent_id = delivery["intent_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let mut r = waiting.lock().await;
                        match r.waiters.remove(&intent_id) {
                            Some(tx) => {
                                let _ = tx.send(delivery);
                            }
                            None => {
                                r.arrived.insert(intent_id, delivery);
                            }
                        }
                        false
                    }
                });
                tokio::select! {
                    _ = stream => {}
                    _ = stop_rx.recv() => return,
                }
            }
        })
    };

    let mut latencies = Vec::new();
    let agent = format!("agent://{address}");
    while Instant::now() < until {
        let t = Instant::now();
        match one_roundtrip(&ctx, &base, &agent, &waiting).await {
            Ok(()) => latencies.push(t.elapsed()),
            Err(e) => {
                tracing::debug!(error = %e, "roundtrip failed");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = stop_tx.send(()).await;
    let _ = listener.await;
    latencies
}

async fn one_roundtrip(
    ctx: &Ctx,
    base: &str,
    agent: &str,
    waiting: &Waiting,
) -> anyhow::Result<()> {
    let created = ctx
        .post(&format!("{base}/v1/intents"), &ctx.new_intent(agent))
        .await?;
    let intent_id = created["intent_id"]
        .as_str()
        .context("no intent_id")?
        .to_string();
    let early = {
        let mut r = waiting.lock().await;
        match r.arrived.remove(&intent_id) {
            Some(delivery) => Ok(delivery),
            None => {
                let (tx, rx) = oneshot::channel();
                r.waiters.insert(intent_id.clone(), tx);
                Err(rx)
            }
        }
    };
    let delivery = match early {
        Ok(delivery) => delivery,
        Err(rx) => match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(delivery)) => delivery,
            outcome => {
                waiting.lock().await.waiters.remove(&intent_id);
                bail!("no delivery for {intent_id}: {outcome:?}");
            }
        },
    };
    anyhow::ensure!(
        delivery["intent_id"] == intent_id.as_str(),
        "wrong delivery"
    );
    ctx.post(
        &format!("{base}/v1/intents/{intent_id}/resume"),
        &json!({ "action": "complete", "done": true }),
    )
    .await?;
    let url = format!("{base}/v1/intents/{intent_id}/events/stream?since=0&wait_seconds=30");
    let mut completed = false;
    follow_sse(ctx, &url, |_, event| {
        let done = event["event_type"] == "intent.completed";
        completed |= done;
        async move { done }
    })
    .await?;
    anyhow::ensure!(completed, "the event stream ended without intent.completed");
    Ok(())
}

/// Reads an SSE stream, calling `on_event(id, data)` per event until it returns true or the
/// server closes the stream.
async fn follow_sse<F, Fut>(ctx: &Ctx, url: &str, mut on_event: F) -> anyhow::Result<()>
where
    F: FnMut(Option<u64>, Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let resp = ctx
        .client
        .get(url)
        .header("x-api-key", &ctx.key)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("stream answered {}", resp.status());
    }
    let mut stream = resp.bytes_stream();
    let mut reader = FrameReader::default();
    while let Some(chunk) = stream.next().await {
        for frame in reader.feed(&chunk?) {
            if frame.data.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&frame.data)?;
            if on_event(frame.id, value).await {
                return Ok(());
            }
        }
    }
    Ok(())
}
