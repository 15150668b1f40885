//! One run: hosts, cluster, workload, nemesis schedule, final heal, restart of every node,
//! drain, final reads, checker, results.
//!
//! ```text
//! <results>/<stamp>-<nemeses>/
//!   history.jsonl      every op (workload and nemesis), one JSON object per line
//!   check.json         the checker's report;  summary.txt: its human form + run facts
//!   nodes/n<i>/        intentd.log, data/ (the node's data dir; over disk/ when lossy)
//! ```
//!
//! Cleanup is unconditional: [`Guard`] kills nodes, unmounts and removes namespaces on drop
//! (also while unwinding from a panic); `main` adds a panic hook and a Ctrl-C handler that
//! do the same without waiting for anything.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::checker::{self, CheckerConfig};
use crate::db::{self, Admin, Db, DbOptions};
use crate::history::{self, History};
use crate::monitor::Monitor;
use crate::nemesis::{self, Nemesis};
use crate::net::{self, Net};

pub const ADMIN_KEY: &str = "jepsen-admin-key-0123456789abcdef";

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Length of the fault phase.
    pub time_limit: Duration,
    /// Nemeses to schedule (empty: none, a fault-free baseline).
    pub nemeses: Vec<String>,
    pub nodes: usize,
    /// Parent of the run directory.
    pub results: PathBuf,
    pub unsafe_skip_log_fsync: bool,
    pub binary: PathBuf,
    pub seed: u64,
    /// Quiet time between faults and fault duration, in seconds (min, max).
    pub quiet_s: (f64, f64),
    pub fault_s: (f64, f64),
    /// Concurrent create clients.
    pub clients: usize,
    pub workload: WorkloadKind,
}

/// Which client workload drives the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// [`crate::workload`]: creates, consumers on every binding, races, reads, drain.
    Full,
    /// The built-in create-only workload of this module (fast; for smoke tests).
    Creates,
}

/// Bound of the workload's drain after the heal (every known intent terminal). A correct
/// cluster drains in seconds: leases are 5-10 s and push retries are capped (see
/// `PUSH_MAX_BACKOFF_MS`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Budget of the final reads (the workload's, then separately the harness's top-up reads).
const FINAL_READS_BUDGET: Duration = Duration::from_secs(150);

/// Cap of the nodes' push retry backoff (`--delivery-max-backoff-ms`; default 5 min): the
/// receiver is down or failing for seconds at a time, and after the heal a retry must not
/// be scheduled minutes ahead of a drain that waits for it.
const PUSH_MAX_BACKOFF_MS: u64 = 3000;

/// Port of the workload's HTTP-push receiver on the bridge address.
const RECEIVER_PORT: u16 = 18_777;

#[derive(Debug)]
pub struct Outcome {
    pub dir: PathBuf,
    pub valid: bool,
    pub summary: String,
}

/// Removes everything the run made, in order, on drop.
struct Guard {
    db: Option<Arc<Db>>,
    net: Option<Arc<Net>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            db.teardown();
        }
        if let Some(net) = self.net.take() {
            drop(net);
        }
        net::cleanup();
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Outcome> {
    nemesis::validate(&opts.nemeses)?;
    if !opts.binary.exists() {
        anyhow::bail!(
            "{} not found: build it with `cargo build --release -p intentd-server`",
            opts.binary.display()
        );
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let label = if opts.nemeses.is_empty() {
        "none".to_string()
    } else if opts.nemeses.len() > 3 {
        "mixed".to_string()
    } else {
        opts.nemeses.join("+")
    };
    let unsafe_tag = if opts.unsafe_skip_log_fsync {
        "-UNSAFE"
    } else {
        ""
    };
    let dir = opts.results.join(format!("{stamp}-{label}{unsafe_tag}"));
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let needs = nemesis::needs(&opts.nemeses);
    if needs.faketime && !std::path::Path::new(db::FAKETIME_LIB).exists() {
        anyhow::bail!("the clock nemesis needs libfaketime (apt-get install faketime)");
    }

    let mut guard = Guard {
        db: None,
        net: None,
    };
    let net = Arc::new(net::Net::setup(opts.nodes).context("setting up namespaces")?);
    guard.net = Some(Arc::clone(&net));
    let db = Arc::new(Db::new(DbOptions {
        binary: opts.binary.clone(),
        dir: dir.clone(),
        admin_key: ADMIN_KEY.to_string(),
        unsafe_skip_log_fsync: opts.unsafe_skip_log_fsync,
        faketime: needs.faketime,
        lossy_fs: needs.lossy_fs,
        nodes: opts.nodes,
        extra_args: {
            let mut a = Vec::new();
            if db::serve_supports(&opts.binary, "--delivery-allow-hosts") {
                a.extend([
                    "--delivery-allow-hosts".into(),
                    format!("{}/32", net::bridge_ip()),
                ]);
            }
            if db::serve_supports(&opts.binary, "--delivery-max-backoff-ms") {
                a.extend([
                    "--delivery-max-backoff-ms".into(),
                    PUSH_MAX_BACKOFF_MS.to_string(),
                ]);
            }
            a
        },
    })?);
    guard.db = Some(Arc::clone(&db));
    let all: Vec<usize> = (1..=opts.nodes).collect();
    for &i in &all {
        db.start(i)?;
    }
    let admin = Admin::new(ADMIN_KEY);
    let leader = admin
        .wait_healthy(&all, Duration::from_secs(90))
        .await
        .context("waiting for the cluster to form")?;
    tracing::info!(leader, dir = %dir.display(), "cluster formed");

    let history = History::to_file(dir.join("history.jsonl"))?;
    // Leader changes are counted from here to the end of the final heal; the restart of every
    // node after it moves the leader on purpose.
    let monitor = Monitor::start(&all, ADMIN_KEY, &history);
    let ctx = nemesis::Ctx {
        db: Arc::clone(&db),
        net: Arc::clone(&net),
        admin: admin.clone(),
        history: history.clone(),
        rng: Mutex::new(StdRng::seed_from_u64(opts.seed)),
    };

    // Workload.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drained_tx, mut drained_rx) = watch::channel(false);
    let drained_tx = Arc::new(drained_tx);
    let (healed_tx, healed_rx) = watch::channel(false);
    let workload = match opts.workload {
        WorkloadKind::Creates => tokio::spawn(workload::run(
            workload::Ctx {
                nodes: all.clone(),
                history: history.clone(),
                clients: opts.clients,
                key: ADMIN_KEY.to_string(),
            },
            stop_rx,
            healed_rx,
        )),
        WorkloadKind::Full => {
            let receiver_addr = std::net::SocketAddr::from((net::bridge_ip(), RECEIVER_PORT));
            tokio::spawn(crate::workload::run(crate::workload::WorkloadCtx {
                nodes: all
                    .iter()
                    .map(|&i| (db::node_name(i), db::http_url(i)))
                    .collect(),
                admin_key: ADMIN_KEY.to_string(),
                time_limit: opts.time_limit,
                stop: stop_rx,
                healed: healed_rx,
                receiver_addr,
                receiver_url: format!("http://{receiver_addr}"),
                drain_timeout: DRAIN_TIMEOUT,
                drained: Arc::clone(&drained_tx),
                clients: opts.clients,
                history: history.clone(),
                seed: opts.seed,
            }))
        }
    };

    // Nemesis schedule, bounded by the time limit.
    let started = Instant::now();
    let deadline = started + opts.time_limit;
    let mut schedule: Vec<Nemesis> = opts.nemeses.iter().map(|n| Nemesis::new(n)).collect();
    let mut cycles = 0u32;
    if !schedule.is_empty() {
        let mut order: Vec<usize> = Vec::new();
        while Instant::now() < deadline {
            let quiet = nemesis::secs_between(&ctx, opts.quiet_s.0, opts.quiet_s.1);
            sleep_until_or(deadline, quiet).await;
            if Instant::now() >= deadline {
                break;
            }
            if order.is_empty() {
                order = (0..schedule.len()).collect();
                order.shuffle(&mut *ctx.rng());
            }
            let k = order.pop().expect("refilled above");
            schedule[k].start(&ctx).await;
            let hold = nemesis::secs_between(&ctx, opts.fault_s.0, opts.fault_s.1);
            // A fault always ends, even past the deadline (bounded by its own duration).
            schedule[k].hold(&ctx, hold).await;
            schedule[k].stop(&ctx).await;
            cycles += 1;
        }
    } else {
        tokio::time::sleep(opts.time_limit).await;
    }
    for n in schedule.iter_mut().filter(|n| n.is_active()) {
        n.stop(&ctx).await;
    }
    let _ = stop_tx.send(true);

    // Final heal, then a restart of every node, then drain.
    history.nemesis_start("final-heal", json!({}));
    let healed = nemesis::heal_everything(&ctx).await;
    history.nemesis_stop("final-heal", healed.clone());
    history.ok("final-heal", "final-heal", healed.clone(), None);
    let polls = monitor.stop().await;
    let restart = restart_all(&ctx).await;
    history.nemesis_start("restart-all", json!({}));
    history.nemesis_stop("restart-all", restart.clone());
    let health = admin.wait_healthy(&all, Duration::from_secs(120)).await;
    let health_note = match &health {
        Ok(l) => format!("all {} nodes healthy, leader n{l}", all.len()),
        Err(e) => format!("NOT HEALTHY after the final heal: {e:#}"),
    };
    tracing::info!("{health_note}");
    let _ = healed_tx.send(true);
    // Separate budgets: the drain (the workload's own bound plus the consumers' stop), then
    // the workload's final reads, then the harness's top-up reads. A slow drain can no
    // longer eat the time of the reads the checker's verdict depends on.
    let drain_budget = DRAIN_TIMEOUT + Duration::from_secs(30);
    let abort = workload.abort_handle();
    let mut workload = workload;
    let drain_started = Instant::now();
    let first = tokio::time::timeout(drain_budget, async {
        tokio::select! {
            r = &mut workload => Some(r),
            _ = drained_rx.wait_for(|d| *d) => None,
        }
    })
    .await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let joined = match first {
        Ok(Some(r)) => Ok(r),
        Ok(None) => tokio::time::timeout(FINAL_READS_BUDGET, &mut workload)
            .await
            .map_err(|_| "its final reads did not finish in their budget"),
        Err(_) => Err("it did not drain in its budget"),
    };
    abort.abort();
    let mut workload_note = match joined {
        Ok(Ok(Ok(n))) => format!("workload drained in {drain_secs:.0} s ({n} final reads)"),
        Ok(Ok(Err(e))) => format!("workload failed: {e:#}"),
        Ok(Err(e)) => format!("workload panicked: {e}"),
        Err(why) => format!("workload stopped: {why}"),
    };
    // Every acknowledged create must be read back from every node, whatever happened to
    // the workload: read here each (intent, node) pair that has no successful final read.
    let ops = history.snapshot();
    let mut have: HashSet<(&str, &str)> = HashSet::new();
    for o in ops
        .iter()
        .filter(|o| o.f == "final-read" && o.kind == history::OpKind::Ok)
    {
        if let (Some(id), Some(node)) = (
            o.value.get("intent_id").and_then(Value::as_str),
            o.node.as_deref(),
        ) {
            have.insert((id, node));
        }
    }
    let acked: BTreeSet<&str> = ops
        .iter()
        .filter(|o| o.f == "create" && o.kind == history::OpKind::Ok)
        .filter_map(|o| o.value.get("intent_id").and_then(Value::as_str))
        .filter(|id| !id.is_empty())
        .collect();
    let mut missing: Vec<(String, String, String)> = Vec::new();
    for id in &acked {
        for &i in &all {
            let node = db::node_name(i);
            if !have.contains(&(*id, node.as_str())) {
                missing.push((id.to_string(), node, db::http_url(i)));
            }
        }
    }
    drop(have);
    if !missing.is_empty() {
        let wanted = missing.len();
        let api = crate::workload::client::Api::new(ADMIN_KEY)?;
        let n = tokio::time::timeout(
            FINAL_READS_BUDGET,
            crate::workload::finals::read_pairs(&api, &history, missing),
        )
        .await;
        match n {
            Ok(n) => workload_note.push_str(&format!("; harness final reads: {n} of {wanted}")),
            Err(_) => workload_note.push_str(&format!(
                "; harness final reads of {wanted} did not finish in {FINAL_READS_BUDGET:?}"
            )),
        }
    }
    history.flush()?;

    // Check.
    let ops = history.snapshot();
    let report = checker::check(&ops, &CheckerConfig::default());
    std::fs::write(dir.join("check.json"), serde_json::to_vec_pretty(&report)?)?;
    let dropped: u64 = ops
        .iter()
        .filter(|o| o.is_nemesis())
        .filter_map(|o| o.value.get("dropped_unsynced_bytes"))
        .filter_map(Value::as_object)
        .flat_map(|m| m.values().filter_map(Value::as_u64))
        .sum();
    let creates_ok = ops
        .iter()
        .filter(|o| o.f == "create" && o.kind == history::OpKind::Ok)
        .count();
    // The full workload must reach the end of its drain: without that marker the checker
    // cannot judge whether everything became terminal after the heal.
    let drain_ended = opts.workload != WorkloadKind::Full || ops.iter().any(|o| o.f == "drain-end");
    if !drain_ended {
        workload_note.push_str("; INVALID: the workload never reached the end of its drain");
    }
    let valid = report.valid && health.is_ok() && drain_ended;
    let mut summary = report.summary();
    summary.push_str(&format!(
        "run: {} nodes, {:?} fault phase, nemeses [{}], {cycles} fault cycles, {} ops, {creates_ok} acknowledged creates, {dropped} unsynced bytes dropped{}\n{health_note}\n{workload_note}\nleadership: {} leader changes, {polls} /health polls answered up to the end of the final heal\nresults: {}\n",
        opts.nodes,
        opts.time_limit,
        opts.nemeses.join(","),
        ops.len(),
        if opts.unsafe_skip_log_fsync { ", UNSAFE: log fsync disabled" } else { "" },
        report.leadership.changes.len(),
        dir.display(),
    ));
    std::fs::write(dir.join("summary.txt"), &summary)?;
    drop(guard);
    Ok(Outcome {
        dir,
        valid,
        summary,
    })
}

async fn sleep_until_or(deadline: Instant, d: Duration) {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(d.min(left)).await;
}

/// Stops every node (SIGTERM, then SIGKILL after 10 s) and starts it again, all at once.
async fn restart_all(c: &nemesis::Ctx) -> Value {
    let db = Arc::clone(&c.db);
    let all = c.all();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for &i in &all {
            db.stop(i, Duration::from_secs(10))?;
        }
        for &i in &all {
            db.start(i)?;
        }
        Ok(())
    })
    .await;
    match result {
        Ok(Ok(())) => json!({ "restarted": "all" }),
        Ok(Err(e)) => json!({ "error": format!("{e:#}") }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// A built-in create workload in the checker's vocabulary, used until the workload module
/// provides its own `run`: concurrent clients create intents (each with a unique
/// idempotency key) round-robin over the nodes; after the heal every acknowledged or
/// indeterminate intent is read back from every node (`final-read`).
pub mod workload {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use serde_json::{json, Value};
    use tokio::sync::watch;

    use crate::db::http_url;
    use crate::history::History;

    pub struct Ctx {
        pub nodes: Vec<usize>,
        pub history: History,
        pub clients: usize,
        pub key: String,
    }

    const AGENT: &str = "agent://jepsen/smoke/sink";

    fn client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1))
            .no_proxy()
            .build()
            .expect("reqwest client")
    }

    pub async fn run(
        ctx: Ctx,
        stop: watch::Receiver<bool>,
        mut healed: watch::Receiver<bool>,
    ) -> anyhow::Result<usize> {
        let mut tasks = Vec::new();
        for p in 0..ctx.clients.max(1) {
            let (h, nodes, key, stop) = (
                ctx.history.clone(),
                ctx.nodes.clone(),
                ctx.key.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(creator(p, h, nodes, key, stop)));
        }
        let mut ids = BTreeSet::new();
        for t in tasks {
            ids.extend(t.await.unwrap_or_default());
        }
        // Drain: wait for the heal (bounded), then read everything back from every node.
        let _ = tokio::time::timeout(Duration::from_secs(300), healed.wait_for(|h| *h)).await;
        let ids: Vec<String> = ids.into_iter().collect();
        Ok(final_reads(&ctx.history, &ctx.key, &ctx.nodes, &ids).await)
    }

    /// Reads each intent (and its events) from every node, recorded as `final-read`.
    pub async fn final_reads(h: &History, key: &str, nodes: &[usize], ids: &[String]) -> usize {
        let http = client(Duration::from_secs(5));
        let mut reads = 0;
        for id in ids {
            for &n in nodes {
                let node = format!("n{n}");
                if let Some(v) = final_read(&http, key, n, id).await {
                    h.ok("final-reader", "final-read", v, Some(&node));
                    reads += 1;
                }
            }
        }
        reads
    }

    /// One node's view of an intent, retried a few times while the node settles.
    async fn final_read(http: &reqwest::Client, key: &str, n: usize, id: &str) -> Option<Value> {
        for _ in 0..3 {
            let r = http
                .get(format!("{}/v1/intents/{id}", http_url(n)))
                .header("x-api-key", key)
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 404 => {
                    return Some(json!({ "intent_id": id, "found": false }));
                }
                Ok(r) if r.status().is_success() => {
                    let body: Value = r.json().await.ok()?;
                    let events = http
                        .get(format!("{}/v1/intents/{id}/events?since=0", http_url(n)))
                        .header("x-api-key", key)
                        .send()
                        .await
                        .ok()?
                        .json::<Value>()
                        .await
                        .ok()?;
                    return Some(json!({
                        "intent_id": id,
                        "found": true,
                        "intent": body.get("intent"),
                        "events": events.get("events"),
                    }));
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        None
    }

    async fn creator(
        p: usize,
        h: History,
        nodes: Vec<usize>,
        key: String,
        stop: watch::Receiver<bool>,
    ) -> Vec<String> {
        let process = format!("create-{p}");
        let http = client(Duration::from_secs(6));
        let mut ids = Vec::new();
        let mut seq = 0u64;
        while !*stop.borrow() {
            seq += 1;
            let n = nodes[(p + seq as usize) % nodes.len()];
            let node = format!("n{n}");
            let k = format!("smoke-{p}-{seq}");
            let payload = json!({ "jepsen_key": k, "n": seq });
            h.invoke(
                &process,
                "create",
                json!({ "key": k, "agent": AGENT, "payload": payload }),
                Some(&node),
            );
            let r = http
                .post(format!("{}/v1/intents", http_url(n)))
                .header("x-api-key", &key)
                .header("Idempotency-Key", &k)
                .json(&json!({
                    "intent_type": "jepsen.smoke.v1",
                    "correlation_id": uuid::Uuid::new_v4().to_string(),
                    "to_agent": AGENT,
                    "payload": payload,
                }))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    let id = v.get("intent_id").and_then(Value::as_str).unwrap_or("");
                    ids.push(id.to_string());
                    h.ok(
                        &process,
                        "create",
                        json!({ "key": k, "intent_id": id, "status": v.get("status") }),
                        Some(&node),
                    );
                }
                Ok(r) if r.status().is_client_error() => {
                    let s = r.status().as_u16();
                    h.fail(
                        &process,
                        "create",
                        json!({ "key": k, "error": s }),
                        Some(&node),
                    );
                }
                Ok(r) => {
                    // 5xx: may or may not have been committed.
                    let s = r.status().as_u16();
                    h.info(
                        &process,
                        "create",
                        json!({ "key": k, "error": s }),
                        Some(&node),
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) if e.is_connect() => {
                    h.fail(
                        &process,
                        "create",
                        json!({ "key": k, "error": "connect" }),
                        Some(&node),
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    h.info(
                        &process,
                        "create",
                        json!({ "key": k, "error": e.to_string() }),
                        Some(&node),
                    );
                }
            }
        }
        ids
    }
}
