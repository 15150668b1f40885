//! `intentd bench`: a closed-loop load generator against one node or a whole cluster,
//! printing throughput and latency percentiles. Figures come from here, never from timed tests.
//!
//! Two workloads:
//! - `create`: each worker sends `POST /v1/intents` and waits for the answer (a majority has
//!   the intent on disk), then sends the next.
//! - `roundtrip`: the whole life of an intent as users see it: the sender creates it, the
//!   receiving agent gets it on its delivery stream (SSE), resumes it with a result, and the
//!   sender observes `intent.completed` on the intent's event stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex};

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
}

struct Ctx {
    client: reqwest::Client,
    key: String,
    filler: String,
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
            "payload": { "data": self.filler },
        })
    }
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
        let ctx = Arc::new(Ctx {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(self.concurrency * 2)
                .build()?,
            key,
            filler: "x".repeat(self.payload_bytes),
        });
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
        let pct = |p: f64| -> f64 {
            if all.is_empty() {
                return 0.0;
            }
            let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
            all[i].as_secs_f64() * 1000.0
        };
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
        Ok(())
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
    let agent = format!("agent://bench/load/worker-{worker}");
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
