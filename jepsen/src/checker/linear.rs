//! Linearizable status reads.
//!
//! Model: per intent, a register whose successive values are the states after
//! each event of its (canonical, replicated) log, preceded by "absent". The
//! order of writes is known (it is the Raft log order the events record), so
//! checking the reads reduces to assigning each read a log position such
//! that:
//! * the state at that position is what the read returned (found or not,
//!   status, delivery attempt);
//! * a read invoked after another read completed sits at the same or a later
//!   position (real-time order);
//! * a read invoked after a client write completed (create ok, resolve ok)
//!   sits at or after that write's position, and a read that completed before
//!   a write was invoked sits before it.
//!
//! Processing reads in invocation order and giving each the smallest feasible
//! position is exact: constraints between reads are lower bounds only, so a
//! smaller choice never hurts a later read (the usual WGL search collapses to
//! this greedy pass once the write order is fixed).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde_json::{json, Value};

use super::events::is_terminal;
use super::{ex, Analysis, CheckerConfig, Pair, Prop, PropertyResult};

#[derive(Debug, Clone, PartialEq)]
struct State {
    found: bool,
    status: String,
    attempt: Option<u64>,
}

fn states(log: &[super::Ev]) -> Vec<State> {
    let mut out = vec![State {
        found: false,
        status: String::new(),
        attempt: Some(0),
    }];
    let mut attempt = Some(0);
    for e in log {
        if e.event_type == "intent.delivered" {
            attempt = e.attempt;
        } else if e.resets_attempt {
            attempt = Some(0);
        }
        out.push(State {
            found: true,
            status: e.status.clone(),
            attempt,
        });
    }
    out
}

fn matches(s: &State, read: &Value) -> bool {
    let found = read.get("found").and_then(Value::as_bool).unwrap_or(true);
    if found != s.found {
        return false;
    }
    if !found {
        return true;
    }
    if read.get("status").and_then(Value::as_str) != Some(s.status.as_str()) {
        return false;
    }
    match (
        s.attempt,
        read.get("delivery_attempt").and_then(Value::as_u64),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

pub(crate) fn check(a: &Analysis<'_>, cfg: &CheckerConfig) -> PropertyResult {
    let mut prop = Prop::new("linearizable-status-reads", cfg);
    let mut reads: BTreeMap<&str, Vec<&Pair<'_>>> = BTreeMap::new();
    for p in a.with_f("read") {
        if p.is_ok() {
            if let Some(id) = p.intent_id() {
                reads.entry(id).or_default().push(p);
            }
        }
    }
    // Writes per intent: (invoke_ns, complete_ns, position, ok).
    let mut creates: BTreeMap<&str, (u64, Option<u64>)> = BTreeMap::new();
    let mut create_keys: BTreeMap<&str, u64> = BTreeMap::new();
    for p in a.with_f("create") {
        if let Some(k) = p.invoke_value().get("key").and_then(Value::as_str) {
            let t = create_keys.entry(k).or_insert(u64::MAX);
            *t = (*t).min(p.start_ns());
        }
    }
    for p in a.with_f("create") {
        if !p.is_ok() {
            continue;
        }
        let (Some(id), Some(k)) = (
            p.intent_id(),
            p.invoke_value().get("key").and_then(Value::as_str),
        ) else {
            continue;
        };
        let e = creates.entry(id).or_insert((u64::MAX, None));
        e.0 = e.0.min(create_keys[k]);
        e.1 = Some(e.1.map_or(p.end_ns(), |t: u64| t.min(p.end_ns())));
    }
    let mut resolves: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for p in &a.pairs {
        if !matches!(p.f(), "resolve" | "resume") || !p.is_ok() {
            continue;
        }
        if p.value().get("applied") == Some(&Value::Bool(false)) {
            continue;
        }
        let st = p
            .value()
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let (Some(id), true) = (p.intent_id(), is_terminal(st)) {
            resolves
                .entry(id)
                .or_default()
                .push((p.start_ns(), p.end_ns()));
        }
    }

    for (id, rs) in reads {
        let Some(log) = a.canonical.get(id) else {
            // No log to check against: only "found after an acknowledged
            // create" can be judged, and the lost-create check covers it.
            continue;
        };
        let st = states(log);
        let terminal_pos = log
            .iter()
            .position(|e| is_terminal(&e.status))
            .map(|i| i + 1);
        // Bounds from writes: (time, lower position) for completed writes,
        // (time, upper position) for invoked writes.
        let mut lows: Vec<(u64, usize)> = Vec::new();
        let mut highs: Vec<(u64, usize)> = Vec::new();
        if let Some((inv, done)) = creates.get(id) {
            highs.push((*inv, 0));
            if let Some(done) = done {
                lows.push((*done, 1));
            }
        }
        if let (Some(tp), Some(rv)) = (terminal_pos, resolves.get(id)) {
            for (inv, done) in rv {
                lows.push((*done, tp));
                highs.push((*inv, tp - 1));
            }
        }
        let mut rs = rs;
        rs.sort_by_key(|p| (p.start_ns(), p.index()));
        let mut done_heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let mut floor = 0usize;
        for r in rs {
            prop.checked(1);
            while let Some(Reverse((end, pos))) = done_heap.peek().copied() {
                if end < r.start_ns() {
                    floor = floor.max(pos);
                    done_heap.pop();
                } else {
                    break;
                }
            }
            let lo = lows
                .iter()
                .filter(|(t, _)| *t < r.start_ns())
                .map(|(_, p)| *p)
                .max()
                .unwrap_or(0)
                .max(floor);
            let hi = highs
                .iter()
                .filter(|(t, _)| *t > r.end_ns())
                .map(|(_, p)| *p)
                .min()
                .unwrap_or(st.len() - 1)
                .min(st.len() - 1);
            let pick = (lo..=hi).find(|&i| matches(&st[i], r.value()));
            match pick {
                Some(pos) => done_heap.push(Reverse((r.end_ns(), pos))),
                None => {
                    prop.violation(ex(&[
                        ("intent_id", json!(id)),
                        ("read_index", json!(r.index())),
                        ("node", json!(r.node())),
                        ("returned", r.value().clone()),
                        ("earliest_allowed_position", json!(lo)),
                        ("latest_allowed_position", json!(hi)),
                        (
                            "log_statuses",
                            json!(log.iter().map(|e| e.status.as_str()).collect::<Vec<_>>()),
                        ),
                    ]));
                    // Keep going from the floor we had: report each bad read once.
                    done_heap.push(Reverse((r.end_ns(), lo.min(st.len() - 1))));
                }
            }
        }
    }
    prop.finish()
}
