//! Leadership: how often the cluster's leader changed, from the `leadership` samples that
//! [`crate::monitor`] records from the end of setup to the end of the final heal, and, for a
//! run whose every fault leaves the leader alone, the property that it never changed.
//!
//! A leader change is every rise of the highest term seen on any node after the first
//! sample. Raft's term only rises when some node campaigns, and a leader that hears of a
//! higher term steps down, so a rise means the leader was deposed or will be as soon as it
//! hears of it, even when the old leader wins the new term again or nobody wins it: writes
//! stall either way. A node cut off alone without pre-vote raises the term on every election
//! timeout, and each rise counts although the leader only falls once, when the node is back:
//! the count is of rises, and [`Leadership::won_terms`] says how many new terms got a leader.
//! Samples of a lower term (a restarted node that has not caught up) are stale and ignored;
//! a leader first learnt for the current term (a node that reported the term before it knew
//! the winner) is the same epoch, not a change. Two different leaders reported for one term
//! cannot happen in Raft; it is counted as a change too, so that it cannot hide.
//!
//! Several rises between two samples count once: the count is a lower bound, and
//! [`Leadership::term_rise`] says by how much the term rose in all.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ex, CheckerConfig, Prop, PropertyResult};
use crate::history::{Op, OpKind, LEADERSHIP_F};
use crate::nemesis::{preserves_leader, FOLLOWER_UP};

/// Nemesis ops that the harness itself records around the final heal; they are no faults.
const HARNESS_STEPS: &[&str] = &["final-heal", "restart-all"];

/// A term and the leader a node reported for it (`None`: it knew none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    pub term: u64,
    pub leader: Option<u64>,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.leader {
            Some(l) => write!(f, "term {} (leader n{l})", self.term),
            None => write!(f, "term {} (no leader)", self.term),
        }
    }
}

/// One leader change: the epoch the cluster was in and the newer one a node reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderChange {
    /// Time of the sample that showed it (ns since the start of the history).
    pub at_ns: u64,
    /// The node whose `/health` reported the new epoch.
    pub observer: String,
    pub from: Epoch,
    pub to: Epoch,
}

/// What the samples say about the leadership of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Leadership {
    /// Number of samples in the history: the monitor records one whenever a node's view of
    /// the term or the leader changed, not every poll.
    pub samples: u64,
    /// The epoch of the first sample, and the last one the cluster was seen in.
    pub first: Option<Epoch>,
    pub last: Option<Epoch>,
    pub changes: Vec<LeaderChange>,
    /// By how much the highest term rose between the first sample and the last.
    pub term_rise: u64,
    /// Terms after the first one for which some node reported a leader: elections won.
    pub won_terms: u64,
    /// Whether a change is a violation: every fault of the run leaves the leader alone.
    pub judged: bool,
    /// The faults the run started.
    pub nemeses: Vec<String>,
    /// `follower-restart` rounds that brought their follower back to a healthy cluster.
    pub follower_rounds: u64,
}

impl Leadership {
    /// One line for the run's summary.
    pub fn summary_line(&self) -> String {
        let terms = match (self.first, self.last) {
            (Some(a), Some(b)) => format!("{a} -> {b}"),
            _ => "no sample".to_string(),
        };
        let verdict = if self.judged {
            "judged: every fault leaves the leader alone".to_string()
        } else if self.nemeses.is_empty() {
            "not judged: no fault".to_string()
        } else {
            format!(
                "not judged: faults that may move the leader ({})",
                self.nemeses
                    .iter()
                    .filter(|n| !preserves_leader(n))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "leader changes: {} ({terms}, term rose by {}, {} later terms with a leader, {} leadership samples, {} follower rounds; {verdict})",
            self.changes.len(),
            self.term_rise,
            self.won_terms,
            self.samples,
            self.follower_rounds
        )
    }
}

/// The leadership sample an op carries, with the node that reported it.
fn sample(op: &Op) -> Option<(Epoch, &str)> {
    if op.f != LEADERSHIP_F || op.kind != OpKind::Ok || op.is_nemesis() {
        return None;
    }
    let term = op.value.get("term")?.as_u64()?;
    let leader = op.value.get("leader_id").and_then(Value::as_u64);
    Some((Epoch { term, leader }, op.node.as_deref().unwrap_or("?")))
}

/// The leader changes in `ops`, by the definition in the module doc.
pub fn leader_changes(ops: &[Op]) -> Leadership {
    let mut out = Leadership::default();
    let mut current: Option<Epoch> = None;
    for op in ops {
        let Some((seen, observer)) = sample(op) else {
            continue;
        };
        out.samples += 1;
        let Some(cur) = current.as_mut() else {
            current = Some(seen);
            out.first = Some(seen);
            continue;
        };
        let rival_leader = seen.term == cur.term
            && matches!((cur.leader, seen.leader), (Some(a), Some(b)) if a != b);
        if seen.term > cur.term || rival_leader {
            out.changes.push(LeaderChange {
                at_ns: op.time_ns,
                observer: observer.to_string(),
                from: *cur,
                to: seen,
            });
            *cur = seen;
            out.won_terms += u64::from(seen.leader.is_some());
        } else if seen.term == cur.term && cur.leader.is_none() && seen.leader.is_some() {
            cur.leader = seen.leader;
            // The first epoch's leader learnt late is no election seen.
            out.won_terms += u64::from(!out.changes.is_empty());
        }
    }
    out.last = current;
    out.term_rise = match (out.first, out.last) {
        (Some(a), Some(b)) => b.term.saturating_sub(a.term),
        _ => 0,
    };
    out
}

/// The faults started in `ops`, in order of first start, without the harness's own steps.
pub fn started_nemeses(ops: &[Op]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for op in ops.iter().filter(|o| o.is_nemesis()) {
        if let Some(name) = op.f.strip_prefix("start-") {
            if !HARNESS_STEPS.contains(&name) && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// The `follower-restart` rounds in `ops` that ended with their follower back and every node
/// healthy behind one leader.
fn completed_follower_rounds(ops: &[Op]) -> u64 {
    ops.iter()
        .filter(|o| o.is_nemesis() && o.f == FOLLOWER_UP)
        .filter(|o| {
            o.value["leader_after"].is_string()
                && ["done", "back"]
                    .iter()
                    .all(|k| o.value[*k].is_object() && o.value[*k].get("error").is_none())
        })
        .count() as u64
}

/// The last nemesis op at or before `at_ns`: the fault action that preceded a change.
fn last_fault_before(ops: &[Op], at_ns: u64) -> Option<&Op> {
    ops.iter()
        .filter(|o| o.is_nemesis() && o.time_ns <= at_ns)
        .max_by_key(|o| o.index)
}

fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e6).round() / 1e3
}

/// The `no-leader-change` property and the leadership report. A run is judged when it
/// started at least one fault and every fault it started leaves the leader alone; then every
/// change is a violation, and so is a run that cannot show the leader stayed through
/// something: one without a single sample, or without a completed `follower-restart` round.
/// Other runs only report the count.
pub(crate) fn check(ops: &[Op], cfg: &CheckerConfig) -> (PropertyResult, Leadership) {
    let mut leadership = leader_changes(ops);
    leadership.nemeses = started_nemeses(ops);
    leadership.follower_rounds = completed_follower_rounds(ops);
    leadership.judged =
        !leadership.nemeses.is_empty() && leadership.nemeses.iter().all(|n| preserves_leader(n));
    let mut prop = Prop::new("no-leader-change", cfg);
    if !leadership.judged {
        return (prop.finish(), leadership);
    }
    prop.checked(leadership.samples);
    if leadership.samples == 0 {
        prop.violation(json!({
            "message": "no leadership sample in the history: the run cannot show that the leader stayed"
        }));
    }
    if leadership.nemeses.iter().any(|n| n == "follower-restart") && leadership.follower_rounds == 0
    {
        prop.violation(json!({
            "message": "no follower-restart round brought its follower back to a healthy cluster: the run put the leader to no test"
        }));
    }
    for c in &leadership.changes {
        let fault = last_fault_before(ops, c.at_ns);
        let after = fault.map_or_else(
            || "before any fault".to_string(),
            |f| {
                format!(
                    "{:.1} s after {} {}",
                    secs(c.at_ns.saturating_sub(f.time_ns)),
                    f.f,
                    f.value
                )
            },
        );
        prop.violation(ex(&[
            (
                "message",
                json!(format!(
                    "leader changed at {:.3} s: {} -> {}, seen on {}, {after}",
                    secs(c.at_ns),
                    c.from,
                    c.to,
                    c.observer
                )),
            ),
            ("at_s", json!(secs(c.at_ns))),
            ("observer", json!(c.observer)),
            ("from", json!(c.from)),
            ("to", json!(c.to)),
            (
                "last_fault",
                fault.map_or(
                    Value::Null,
                    |f| json!({ "f": f.f, "at_s": secs(f.time_ns), "value": f.value }),
                ),
            ),
        ]));
    }
    (prop.finish(), leadership)
}
