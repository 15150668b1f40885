//! The checker: reads a history and reports, for each property, whether it
//! held, how many violations were found and a few examples.
//!
//! The history vocabulary it understands (written by [`crate::workload`]):
//!
//! | f | shape |
//! | --- | --- |
//! | `create` | invoke `{key, agent, payload, workflow?}` (`workflow`: the graph a scenario apply sent); ok `{key, intent_id, status}`; fail/info `{key, error}` |
//! | `read` | invoke `{intent_id}`; ok `{intent_id, found, status, delivery_attempt, key}` |
//! | `ack` / `resolve` / `resume` | invoke `{intent_id, attempt?, status?}`; ok `{intent_id, status, applied?}` |
//! | `receive` | ok `{agent, deliveries: [{intent_id, delivery_attempt, status, key}]}` |
//! | `agent-delivery` | observation ok `{agent, conn, since, cursor, intent_id, delivery_attempt, status, key}` |
//! | `push` | observation ok `{agent, intent_id, delivery_attempt, key, reply}` |
//! | `event` | observation ok `{intent_id, conn, since, seq, event_type, status, at}` |
//! | `final-read` | observation ok (node set) `{intent_id, found, intent, events}` |
//! | `agent-binding` | observation ok `{agent, mode}`: the agent has a live receiver |
//! | `final-heal` | nemesis-free marker of the final heal (else: the last nemesis op) |
//! | `leadership` | observation ok (node set) `{term, leader_id, role}`: a change of that node's `/health` view |
//!
//! An op with kind Ok/Fail/Info completes the pending invoke of the same
//! process and `f`; without one it is a standalone observation. An invoke
//! that never completes is indeterminate, like Info.

mod creates;
mod delivery;
mod events;
pub mod leadership;
mod linear;
mod replicas;
#[cfg(test)]
mod tests;
mod workflows;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{Op, OpKind};
use leadership::Leadership;

/// Tunables of the checker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckerConfig {
    /// Every intent to an agent with a live receiver must be delivered within
    /// this many nanoseconds after the final heal (or its creation, if later).
    pub delivery_bound_ns: u64,
    /// Examples kept per property.
    pub max_examples: usize,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            delivery_bound_ns: 60_000_000_000,
            max_examples: 8,
        }
    }
}

/// The verdict on one property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyResult {
    /// Short stable name ("no-lost-acked-creates", ...).
    pub name: String,
    /// Whether the property held.
    pub ok: bool,
    /// Number of violations found.
    pub count: u64,
    /// Number of things checked (intents, reads, connections, ...).
    pub checked: u64,
    /// Up to `max_examples` violations, as JSON.
    pub examples: Vec<Value>,
}

/// All verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// One entry per property, in a fixed order.
    pub properties: Vec<PropertyResult>,
    /// Whether every property held.
    pub valid: bool,
    /// The leader changes of the run (judged by the `no-leader-change` property).
    #[serde(default)]
    pub leadership: Leadership,
}

impl CheckReport {
    /// The result of property `name`, if checked.
    pub fn property(&self, name: &str) -> Option<&PropertyResult> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// A human summary, one line per property plus examples of violations.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "intentd jepsen check: {}",
            if self.valid { "VALID" } else { "INVALID" }
        );
        for p in &self.properties {
            let _ = writeln!(
                s,
                "  [{}] {:<32} violations {:>5} / checked {:>7}",
                if p.ok { " ok " } else { "FAIL" },
                p.name,
                p.count,
                p.checked
            );
            for e in &p.examples {
                let _ = writeln!(s, "         e.g. {e}");
            }
        }
        let _ = writeln!(s, "  {}", self.leadership.summary_line());
        s
    }
}

/// Accumulates one property's verdict.
pub(crate) struct Prop {
    name: &'static str,
    count: u64,
    checked: u64,
    examples: Vec<Value>,
    max: usize,
}

impl Prop {
    pub(crate) fn new(name: &'static str, cfg: &CheckerConfig) -> Self {
        Prop {
            name,
            count: 0,
            checked: 0,
            examples: Vec::new(),
            max: cfg.max_examples,
        }
    }

    pub(crate) fn checked(&mut self, n: u64) {
        self.checked += n;
    }

    pub(crate) fn violation(&mut self, example: Value) {
        self.count += 1;
        if self.examples.len() < self.max {
            self.examples.push(example);
        }
    }

    pub(crate) fn finish(self) -> PropertyResult {
        PropertyResult {
            name: self.name.to_string(),
            ok: self.count == 0,
            count: self.count,
            checked: self.checked,
            examples: self.examples,
        }
    }
}

/// A client operation: its invocation and completion, either of which may
/// be missing (a standalone observation has no invoke; an invoke cut off by
/// the end of the run has no completion).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair<'a> {
    pub invoke: Option<&'a Op>,
    pub complete: Option<&'a Op>,
}

impl<'a> Pair<'a> {
    /// The completion kind; a missing completion is indeterminate.
    pub fn kind(&self) -> OpKind {
        self.complete.map_or(OpKind::Info, |c| c.kind)
    }
    pub fn f(&self) -> &'a str {
        self.complete.or(self.invoke).map_or("", |o| o.f.as_str())
    }
    pub fn is_ok(&self) -> bool {
        self.kind() == OpKind::Ok
    }
    /// Invocation time (the completion's for a standalone observation).
    pub fn start_ns(&self) -> u64 {
        self.invoke.or(self.complete).map_or(0, |o| o.time_ns)
    }
    /// Completion time; `u64::MAX` when it never completed.
    pub fn end_ns(&self) -> u64 {
        self.complete.map_or(u64::MAX, |o| o.time_ns)
    }
    pub fn invoke_value(&self) -> &'a Value {
        self.invoke.map_or(&Value::Null, |o| &o.value)
    }
    pub fn value(&self) -> &'a Value {
        self.complete.map_or(&Value::Null, |o| &o.value)
    }
    /// A field from the completion, falling back to the invocation.
    pub fn field(&self, name: &str) -> &'a Value {
        match self.value().get(name) {
            Some(v) if !v.is_null() => v,
            _ => self.invoke_value().get(name).unwrap_or(&Value::Null),
        }
    }
    pub fn intent_id(&self) -> Option<&'a str> {
        self.field("intent_id").as_str()
    }
    pub fn node(&self) -> Option<&'a str> {
        self.complete
            .and_then(|o| o.node.as_deref())
            .or_else(|| self.invoke.and_then(|o| o.node.as_deref()))
    }
    pub fn process(&self) -> &'a str {
        self.complete
            .or(self.invoke)
            .map_or("", |o| o.process.as_str())
    }
    pub fn index(&self) -> u64 {
        self.invoke.or(self.complete).map_or(0, |o| o.index)
    }
}

/// One delivery of an intent observed by a consumer.
#[derive(Debug, Clone)]
pub(crate) struct Delivery<'a> {
    pub attempt: Option<u64>,
    pub key: Option<&'a str>,
    pub time_ns: u64,
}

/// An event as an observer saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ev {
    pub seq: u64,
    pub event_type: String,
    pub status: String,
    pub at: Value,
    pub attempt: Option<u64>,
    /// A later workflow agent step started: the intent is back on its agent's queue with
    /// `delivery_attempt` 0 (the lifecycle table has no way back to DELIVERED, see the
    /// workflow section of the README).
    pub resets_attempt: bool,
}

impl Ev {
    pub(crate) fn from_json(v: &Value) -> Option<Ev> {
        Some(Ev {
            seq: v.get("seq")?.as_u64()?,
            event_type: v.get("event_type")?.as_str()?.to_string(),
            status: v.get("status")?.as_str()?.to_string(),
            at: v.get("at").cloned().unwrap_or(Value::Null),
            attempt: v
                .get("details")
                .and_then(|d| d.get("delivery_attempt"))
                .and_then(Value::as_u64)
                .or_else(|| v.get("delivery_attempt").and_then(Value::as_u64)),
            resets_attempt: v.get("event_type").and_then(Value::as_str)
                == Some("workflow.step_started")
                && v.pointer("/details/step_kind").and_then(Value::as_str) == Some("agent")
                && v.get("status").and_then(Value::as_str) != Some("SUBMITTED"),
        })
    }
    /// Same event (the delivery attempt is not compared: streams may omit it).
    pub(crate) fn same(&self, other: &Ev) -> bool {
        self.seq == other.seq
            && self.event_type == other.event_type
            && self.status == other.status
            && (self.at.is_null() || other.at.is_null() || self.at == other.at)
    }
}

/// One observer's view of an intent's event log, in the order it saw it.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// "final-read@n1", "event-stream:proc", ...
    pub observer: String,
    pub events: Vec<Ev>,
}

/// Indexes over a history shared by the property checks.
pub(crate) struct Analysis<'a> {
    pub pairs: Vec<Pair<'a>>,
    /// Per intent: the views of its log (final reads, event streams).
    pub views: BTreeMap<String, Vec<View>>,
    /// Per intent: the deliveries observed.
    pub deliveries: HashMap<&'a str, Vec<Delivery<'a>>>,
    /// Per intent: the last final read from each node that answered.
    pub finals: BTreeMap<String, BTreeMap<String, &'a Value>>,
    /// The canonical log per intent: the longest final-read view (else the
    /// longest stream view).
    pub canonical: BTreeMap<String, Vec<Ev>>,
    /// Time of the final heal.
    pub heal_ns: u64,
}

impl<'a> Analysis<'a> {
    pub(crate) fn new(ops: &'a [Op]) -> Self {
        let pairs = pair_ops(ops);
        let mut views: BTreeMap<String, Vec<View>> = BTreeMap::new();
        let mut deliveries: HashMap<&'a str, Vec<Delivery<'a>>> = HashMap::new();
        let mut finals: BTreeMap<String, BTreeMap<String, &'a Value>> = BTreeMap::new();
        // event streams: (intent, process) -> view index
        let mut stream_views: HashMap<(String, String), Vec<Ev>> = HashMap::new();
        let mut stream_order: Vec<(String, String)> = Vec::new();

        for p in &pairs {
            if !p.is_ok() {
                continue;
            }
            let v = p.value();
            match p.f() {
                "agent-delivery" | "push" => {
                    if let Some(id) = p.intent_id() {
                        deliveries.entry(id).or_default().push(Delivery {
                            attempt: v.get("delivery_attempt").and_then(Value::as_u64),
                            key: v.get("key").and_then(Value::as_str),
                            time_ns: p.end_ns(),
                        });
                    }
                }
                "receive" => {
                    for d in v
                        .get("deliveries")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(id) = d.get("intent_id").and_then(Value::as_str) {
                            deliveries.entry(id).or_default().push(Delivery {
                                attempt: d.get("delivery_attempt").and_then(Value::as_u64),
                                key: d.get("key").and_then(Value::as_str),
                                time_ns: p.end_ns(),
                            });
                        }
                    }
                }
                "event" => {
                    if let (Some(id), Some(ev)) = (p.intent_id(), Ev::from_json(v)) {
                        let k = (id.to_string(), p.process().to_string());
                        if !stream_views.contains_key(&k) {
                            stream_order.push(k.clone());
                        }
                        stream_views.entry(k).or_default().push(ev);
                    }
                }
                "final-read" => {
                    if let Some(id) = p.intent_id() {
                        let node = p.node().unwrap_or("?").to_string();
                        finals.entry(id.to_string()).or_default().insert(node, v);
                    }
                }
                _ => {}
            }
        }
        for (id, by_node) in &finals {
            for (node, v) in by_node {
                if let Some(evs) = v.get("events").and_then(Value::as_array) {
                    views.entry(id.clone()).or_default().push(View {
                        observer: format!("final-read@{node}"),
                        events: evs.iter().filter_map(Ev::from_json).collect(),
                    });
                }
            }
        }
        for k in stream_order {
            let evs = stream_views.remove(&k).unwrap_or_default();
            views.entry(k.0).or_default().push(View {
                observer: format!("event-stream:{}", k.1),
                events: evs,
            });
        }
        let mut canonical = BTreeMap::new();
        for (id, vs) in &views {
            let best = vs
                .iter()
                .filter(|v| v.observer.starts_with("final-read"))
                .max_by_key(|v| v.events.len())
                .or_else(|| vs.iter().max_by_key(|v| v.events.len()));
            if let Some(b) = best {
                canonical.insert(id.clone(), b.events.clone());
            }
        }
        // The final heal: the later of the workload's marker and the last
        // nemesis op (a restart may follow the heal).
        let heal_ns = ops
            .iter()
            .filter(|o| o.f == "final-heal" || o.is_nemesis())
            .map(|o| o.time_ns)
            .max()
            .unwrap_or(0);
        Analysis {
            pairs,
            views,
            deliveries,
            finals,
            canonical,
            heal_ns,
        }
    }

    /// Pairs with function `f`.
    pub(crate) fn with_f<'s>(&'s self, f: &'s str) -> impl Iterator<Item = &'s Pair<'a>> + 's {
        self.pairs.iter().filter(move |p| p.f() == f)
    }

    /// Whether the final reads of `id` say it exists somewhere.
    pub(crate) fn exists_finally(&self, id: &str) -> bool {
        self.finals.get(id).is_some_and(|m| {
            m.values()
                .any(|v| v.get("found") == Some(&Value::Bool(true)))
        })
    }

    /// The intent JSON of `id` from any final read.
    pub(crate) fn final_intent(&self, id: &str) -> Option<&'a Value> {
        self.finals.get(id).and_then(|m| {
            m.values()
                .filter_map(|v| v.get("intent"))
                .find(|i| i.is_object())
        })
    }
}

/// Pairs invocations with completions (per process and f).
pub(crate) fn pair_ops(ops: &[Op]) -> Vec<Pair<'_>> {
    let mut out: Vec<Pair<'_>> = Vec::new();
    let mut pending: HashMap<&str, usize> = HashMap::new();
    for op in ops {
        if op.is_nemesis() {
            continue;
        }
        match op.kind {
            OpKind::Invoke => {
                // A second invoke on a busy process: the first never completed.
                out.push(Pair {
                    invoke: Some(op),
                    complete: None,
                });
                pending.insert(op.process.as_str(), out.len() - 1);
            }
            _ => {
                let slot = pending
                    .get(op.process.as_str())
                    .copied()
                    .filter(|&i| out[i].invoke.is_some_and(|inv| inv.f == op.f));
                match slot {
                    Some(i) => {
                        out[i].complete = Some(op);
                        pending.remove(op.process.as_str());
                    }
                    None => out.push(Pair {
                        invoke: None,
                        complete: Some(op),
                    }),
                }
            }
        }
    }
    out
}

/// Checks every property over `ops`.
pub fn check(ops: &[Op], cfg: &CheckerConfig) -> CheckReport {
    let a = Analysis::new(ops);
    let mut properties = Vec::new();
    properties.extend(creates::check(&a, cfg));
    properties.extend(events::check(&a, cfg));
    properties.extend(delivery::check(&a, cfg));
    properties.push(linear::check(&a, cfg));
    properties.push(replicas::check(&a, cfg));
    properties.push(workflows::check(&a, cfg));
    let (kept, leadership) = leadership::check(ops, cfg);
    properties.push(kept);
    let valid = properties.iter().all(|p| p.ok);
    CheckReport {
        properties,
        valid,
        leadership,
    }
}

/// Short JSON example helper.
pub(crate) fn ex(pairs: &[(&str, Value)]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in pairs {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}

/// Checks a JSONL history file and writes `check.json`, `summary.txt` and
/// `plot.png` into `out_dir`. Returns the report.
pub fn check_file(
    history: &std::path::Path,
    out_dir: &std::path::Path,
    cfg: &CheckerConfig,
) -> anyhow::Result<CheckReport> {
    let ops = crate::history::read_jsonl(history)?;
    let report = check(&ops, cfg);
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("check.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("summary.txt"), report.summary())?;
    crate::plot::render(&ops, &out_dir.join("plot.png"))?;
    Ok(report)
}
