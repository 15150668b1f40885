//! `intentd bench`: a closed-loop load generator against any node, printing throughput and
//! latency percentiles. Figures come from here, never from timed tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct BenchCmd {
    /// Base URL of the node to drive.
    #[arg(long, env = "INTENTD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[arg(long, env = "INTENTD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests in flight at once (each worker waits for its answer before the next).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to drive load, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload size in bytes (a string field of that length).
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
}

impl BenchCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let key = match &self.api_key {
            Some(k) => k.clone(),
            None => std::fs::read_to_string("./data/admin.key")
                .context("no --api-key and no ./data/admin.key")?
                .trim()
                .to_string(),
        };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(self.concurrency)
            .build()?;
        let url = format!("{}/v1/intents", self.server.trim_end_matches('/'));
        let filler = "x".repeat(self.payload_bytes);
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let until = start + Duration::from_secs(self.seconds);
        let mut workers = Vec::new();
        for w in 0..self.concurrency {
            let (client, url, key, filler, errors) = (
                client.clone(),
                url.clone(),
                key.clone(),
                filler.clone(),
                errors.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let body = json!({
                        "intent_type": "bench.create.v1",
                        "correlation_id": uuid::Uuid::new_v4(),
                        "to_agent": format!("agent://bench/load/worker-{w}"),
                        "payload": { "data": filler },
                    });
                    let t = Instant::now();
                    let ok = client
                        .post(&url)
                        .header("x-api-key", &key)
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
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
        println!(
            "creates c={} ok={} errors={} req/s={:.0} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2}",
            self.concurrency,
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
