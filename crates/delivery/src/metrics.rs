//! The node's delivery and consensus metrics, rendered as Prometheus text.
//!
//! Counters are plain atomics (and small maps for labelled series) updated by the engine;
//! everything that openraft already tracks (term, leader, log and applied index) and the
//! retry queue depth are read at render time, so they can never drift from the truth. The
//! handle is cheap to clone: every clone counts into the same numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use intentd_consensus::Cluster;
use intentd_lifecycle::DueKind;

use intentd_operations::StreamConsumers;

/// Bucket bounds (seconds) of the latency histograms: a commit is a round trip plus an
/// fdatasync, from below a millisecond on one node to seconds under an election.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The retry queue depth is counted from the due index at scrape time; beyond this many due
/// entries the gauge says "at least" rather than walking an unbounded backlog per scrape.
const DUE_SCAN_LIMIT: usize = 100_000;

#[derive(Debug, Default)]
struct Histogram {
    /// Cumulative counts are computed at render; each slot counts its own bucket only.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, slot) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += slot.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let plain = labels.trim_end_matches(',');
        let selector = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(out, "{name}_sum{selector} {sum}");
        let _ = writeln!(out, "{name}_count{selector} {count}");
    }
}

#[derive(Default)]
struct Inner {
    /// Set once the node's cluster is running; before that only counters render.
    cluster: OnceLock<Cluster>,
    /// (binding, outcome) -> count.
    deliveries: Mutex<BTreeMap<(String, String), u64>>,
    /// outcome -> count.
    webhook_pushes: Mutex<BTreeMap<String, u64>>,
    lease_expiries: AtomicU64,
    dead_letters: AtomicU64,
    /// Times a push was held back because its endpoint's breaker was open.
    breaker_rejections: AtomicU64,
    commit_latency: Histogram,
    push_latency: Histogram,
    /// 1 while this node's engine runs (it leads), else 0.
    engine_active: AtomicU64,
    /// The node's open agent streams, counted at render time.
    streams: OnceLock<StreamConsumers>,
    /// The node's data directory, measured at render time (retention is meant to bound it).
    data_dir: OnceLock<PathBuf>,
    /// Intents this node's engine purged (retention).
    purged: AtomicU64,
}

/// What the node counts, shared by the engine (writer) and `GET /metrics` (reader).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("bound", &self.inner.cluster.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `render` read the Raft position and the due index of `cluster`. Only the first
    /// call has an effect: a node has one cluster.
    pub fn bind(&self, cluster: &Cluster) {
        let _ = self.inner.cluster.set(cluster.clone());
    }

    /// Lets `render` count the node's open consuming agent streams. Only the first call has
    /// an effect.
    pub fn bind_streams(&self, consumers: &StreamConsumers) {
        let _ = self.inner.streams.set(consumers.clone());
    }

    /// Lets `render` report the size of `dir` (the node's data directory). Only the first
    /// call has an effect.
    pub fn bind_data_dir(&self, dir: PathBuf) {
        let _ = self.inner.data_dir.set(dir);
    }

    pub(crate) fn purged(&self) {
        self.inner.purged.fetch_add(1, Ordering::Relaxed);
    }

    /// One delivery outcome: `binding` as `Binding::mode` names it (`http`, `stream`...),
    /// `outcome` one of `delivered`, `completed`, `failed`, `retry`, `dead_lettered`.
    pub fn delivery(&self, binding: &str, outcome: &str) {
        let mut map = self
            .inner
            .deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *map.entry((binding.to_string(), outcome.to_string()))
            .or_default() += 1;
    }

    pub fn webhook_push(&self, outcome: &str) {
        let mut map = self
            .inner
            .webhook_pushes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *map.entry(outcome.to_string()).or_default() += 1;
    }

    pub fn lease_expired(&self) {
        self.inner.lease_expiries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead_lettered(&self) {
        self.inner.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    pub fn breaker_rejected(&self) {
        self.inner
            .breaker_rejections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How long one `Cluster::write` took, from proposal to applied here.
    pub fn commit(&self, took: Duration) {
        self.inner.commit_latency.observe(took);
    }

    /// How long one HTTP push took, from request to response (or failure).
    pub fn push(&self, took: Duration) {
        self.inner.push_latency.observe(took);
    }

    pub(crate) fn set_engine_active(&self, active: bool) {
        self.inner
            .engine_active
            .store(u64::from(active), Ordering::Relaxed);
    }

    /// Value of a delivery counter, for tests and diagnostics.
    pub fn deliveries(&self, binding: &str, outcome: &str) -> u64 {
        let map = self
            .inner
            .deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(&(binding.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn lease_expiries(&self) -> u64 {
        self.inner.lease_expiries.load(Ordering::Relaxed)
    }

    /// Every series in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let i = &*self.inner;
        let mut out = String::with_capacity(4096);

        header(
            &mut out,
            "intentd_deliveries_total",
            "counter",
            "Delivery outcomes seen by the engine, by binding and outcome.",
        );
        for ((binding, outcome), n) in i
            .deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "intentd_deliveries_total{{binding=\"{}\",outcome=\"{}\"}} {n}",
                escape(binding),
                escape(outcome)
            );
        }
        header(
            &mut out,
            "intentd_webhook_pushes_total",
            "counter",
            "Webhook subscription pushes, by outcome.",
        );
        for (outcome, n) in i
            .webhook_pushes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "intentd_webhook_pushes_total{{outcome=\"{}\"}} {n}",
                escape(outcome)
            );
        }
        counter(
            &mut out,
            "intentd_lease_expiries_total",
            "Leases that ran out unacknowledged (ExpireLease committed by this node's engine).",
            i.lease_expiries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "intentd_dead_letters_total",
            "Intents this node's engine saw dead-lettered.",
            i.dead_letters.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "intentd_breaker_rejections_total",
            "Pushes held back because the endpoint's circuit breaker was open.",
            i.breaker_rejections.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "intentd_commit_latency_seconds",
            "histogram",
            "Time from proposing a command to it being applied on this node (engine writes).",
        );
        i.commit_latency.render(
            &mut out,
            "intentd_commit_latency_seconds",
            "source=\"engine\",",
        );
        header(
            &mut out,
            "intentd_push_latency_seconds",
            "histogram",
            "Time of one outbound HTTP push, until the response or the failure.",
        );
        i.push_latency
            .render(&mut out, "intentd_push_latency_seconds", "");
        counter(
            &mut out,
            "intentd_purged_intents_total",
            "Ended intents this node's engine purged once their retention ran out.",
            i.purged.load(Ordering::Relaxed),
        );
        if let Some(dir) = i.data_dir.get() {
            gauge(
                &mut out,
                "intentd_data_dir_bytes",
                "Bytes of the files in the node's data directory (WAL, snapshots, state machine).",
                dir_bytes(dir),
            );
        }
        gauge(
            &mut out,
            "intentd_engine_active",
            "1 while this node leads and its delivery engine runs.",
            i.engine_active.load(Ordering::Relaxed),
        );
        if let Some(streams) = i.streams.get() {
            gauge(
                &mut out,
                "intentd_agent_streams_open",
                "Agent streams open on this node that consume deliveries (competing workers).",
                streams.open_total() as u64,
            );
        }

        if let Some(cluster) = i.cluster.get() {
            render_cluster(&mut out, cluster);
        }
        out
    }
}

/// The bytes of every file under `dir`, following no symlinks; what cannot be read (a file
/// removed during the walk) counts as 0.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn render_cluster(out: &mut String, cluster: &Cluster) {
    if let Ok(counts) = cluster.reader().record_counts() {
        header(
            out,
            "intentd_records",
            "gauge",
            "Records in this node's state machine, by kind.",
        );
        for (kind, n) in [
            ("intents", counts.intents),
            ("events", counts.events),
            ("idempotency_records", counts.idempotency_records),
            ("dead_letters", counts.dead_letters),
        ] {
            let _ = writeln!(out, "intentd_records{{kind=\"{kind}\"}} {n}");
        }
    }
    let m = cluster.raft().metrics().borrow().clone();
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last_log = m.last_log_index.unwrap_or(0);
    gauge(
        out,
        "intentd_raft_term",
        "Current Raft term.",
        m.current_term,
    );
    gauge(
        out,
        "intentd_raft_leader_id",
        "Node id of the known leader (0 when none is known).",
        m.current_leader.unwrap_or(0),
    );
    gauge(
        out,
        "intentd_raft_is_leader",
        "1 when this node is the leader.",
        u64::from(m.current_leader == Some(m.id)),
    );
    gauge(
        out,
        "intentd_raft_last_log_index",
        "Index of the last entry in this node's Raft log.",
        last_log,
    );
    gauge(
        out,
        "intentd_raft_applied_index",
        "Index of the last entry applied to this node's state machine.",
        applied,
    );
    gauge(
        out,
        "intentd_apply_lag_entries",
        "Log entries this node holds but has not applied yet.",
        last_log.saturating_sub(applied),
    );
    // Only the leader acts on the due index, but every node holds it; counting it anywhere
    // gives the same answer up to apply lag.
    let far = chrono::Utc::now() + chrono::Duration::days(365 * 100);
    if let Ok(entries) = cluster.reader().due_before(far, DUE_SCAN_LIMIT) {
        let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
        for e in &entries {
            *by_kind.entry(kind_name(e.kind)).or_default() += 1;
        }
        gauge(
            out,
            "intentd_retry_queue_depth",
            "HTTP pushes waiting in the due index (first pushes and retries).",
            by_kind
                .get(kind_name(DueKind::Deliver))
                .copied()
                .unwrap_or(0),
        );
        header(
            out,
            "intentd_due_entries",
            "gauge",
            "Entries of the due-time index, by kind.",
        );
        for kind in DueKind::ALL {
            let n = by_kind.get(kind_name(kind)).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "intentd_due_entries{{kind=\"{}\"}} {n}",
                kind_name(kind)
            );
        }
    }
}

pub(crate) fn kind_name(kind: DueKind) -> &'static str {
    match kind {
        DueKind::LeaseExpiry => "lease_expiry",
        DueKind::Deliver => "deliver",
        DueKind::Release => "release",
        DueKind::Deadline => "deadline",
        DueKind::Reminder => "reminder",
        DueKind::WebhookDelivery => "webhook_delivery",
        DueKind::Purge => "purge",
        DueKind::WorkflowStep => "workflow_step",
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Escapes a label value (backslash, quote, newline), as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let m = Metrics::new();
        let clone = m.clone();
        clone.delivery("http", "delivered");
        m.delivery("http", "delivered");
        m.delivery("http", "re\"try");
        m.lease_expired();
        m.dead_lettered();
        m.webhook_push("delivered");
        m.commit(Duration::from_millis(3));
        m.commit(Duration::from_secs(60));
        let text = m.render();
        assert!(text.contains("# TYPE intentd_deliveries_total counter\n"));
        assert!(
            text.contains("intentd_deliveries_total{binding=\"http\",outcome=\"delivered\"} 2\n")
        );
        assert!(text.contains("outcome=\"re\\\"try\""));
        assert!(text.contains("intentd_lease_expiries_total 1\n"));
        assert!(text.contains("intentd_dead_letters_total 1\n"));
        assert!(text.contains("intentd_webhook_pushes_total{outcome=\"delivered\"} 1\n"));
        assert!(text.contains(
            "intentd_commit_latency_seconds_bucket{source=\"engine\",le=\"0.0025\"} 0\n"
        ));
        assert!(text
            .contains("intentd_commit_latency_seconds_bucket{source=\"engine\",le=\"0.005\"} 1\n"));
        assert!(text
            .contains("intentd_commit_latency_seconds_bucket{source=\"engine\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("intentd_commit_latency_seconds_count{source=\"engine\"} 2\n"));
        assert!(text.contains("intentd_push_latency_seconds_count 0\n"));
        assert_eq!(m.deliveries("http", "delivered"), 2);
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "undeclared {name}"
            );
        }
    }
}
