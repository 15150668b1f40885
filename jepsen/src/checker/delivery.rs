//! Delivery: a stale attempt's ack or resolve never changes state, and every
//! intent with a live receiver is delivered within a bound after the heal.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::events::is_terminal;
use super::{ex, Analysis, CheckerConfig, Prop, PropertyResult};

pub(crate) fn check(a: &Analysis<'_>, cfg: &CheckerConfig) -> Vec<PropertyResult> {
    vec![
        stale(a, cfg),
        delivered(a, cfg),
        terminal_after_drain(a, cfg),
    ]
}

/// When the workload drained (a `drain-end` marker: its consumers completed every delivery
/// after the heal, for as long as the drain's bound allowed), every intent the final reads
/// found is terminal on every node. An intent left non-terminal is stuck: a lease that was
/// never expired, a delivery never retried, a deadline never fired. Histories without a
/// drain (the create-only workload) are not judged.
fn terminal_after_drain(a: &Analysis<'_>, cfg: &CheckerConfig) -> PropertyResult {
    let mut prop = Prop::new("terminal-after-drain", cfg);
    let ends: Vec<_> = a.with_f("drain-end").filter(|p| p.is_ok()).collect();
    if ends.is_empty() {
        return prop.finish();
    }
    // The drain itself gave up with intents it never saw terminal.
    for p in ends {
        prop.checked(1);
        let open = p.field("open").as_u64().unwrap_or(0);
        if open > 0 {
            prop.violation(ex(&[
                (
                    "why",
                    json!("the drain ended at its bound with open intents"),
                ),
                ("open", json!(open)),
                ("open_ids", p.field("open_ids").clone()),
            ]));
        }
    }
    for (id, by_node) in &a.finals {
        for (node, v) in by_node {
            if v.get("found") != Some(&Value::Bool(true)) {
                continue;
            }
            prop.checked(1);
            let intent = v.get("intent").unwrap_or(&Value::Null);
            let status = intent.get("status").and_then(Value::as_str).unwrap_or("");
            if is_terminal(status) {
                continue;
            }
            prop.violation(ex(&[
                ("intent_id", json!(id)),
                ("node", json!(node)),
                ("status", json!(status)),
                (
                    "to_agent",
                    intent.get("to_agent").cloned().unwrap_or(Value::Null),
                ),
                (
                    "delivery_attempt",
                    intent
                        .get("delivery_attempt")
                        .cloned()
                        .unwrap_or(Value::Null),
                ),
                ("lease", intent.get("lease").cloned().unwrap_or(Value::Null)),
            ]));
        }
    }
    prop.finish()
}

/// An `ack`/`resolve`/`resume` naming attempt `n`, invoked after a delivery
/// of a later attempt had been observed, must not be applied. An applied ack
/// must also name an attempt that the log shows was delivered.
fn stale(a: &Analysis<'_>, cfg: &CheckerConfig) -> PropertyResult {
    let mut prop = Prop::new("stale-attempt-changes-nothing", cfg);
    for p in &a.pairs {
        if !matches!(p.f(), "ack" | "resolve" | "resume") {
            continue;
        }
        let Some(attempt) = p.invoke_value().get("attempt").and_then(Value::as_u64) else {
            continue;
        };
        let Some(id) = p.intent_id() else { continue };
        prop.checked(1);
        if !p.is_ok() || p.value().get("applied") == Some(&Value::Bool(false)) {
            continue;
        }
        let newer = a
            .deliveries
            .get(id)
            .into_iter()
            .flatten()
            .filter(|d| d.time_ns < p.start_ns())
            .filter_map(|d| d.attempt)
            .max();
        if let Some(newer) = newer.filter(|n| *n > attempt) {
            prop.violation(ex(&[
                ("intent_id", json!(id)),
                ("f", json!(p.f())),
                ("attempt", json!(attempt)),
                ("newer_attempt_seen_before", json!(newer)),
                ("index", json!(p.index())),
                ("reply", p.value().clone()),
            ]));
            continue;
        }
        if p.f() == "ack" {
            if let Some(log) = a.canonical.get(id) {
                let delivered: BTreeSet<u64> = log
                    .iter()
                    .filter(|e| e.event_type == "intent.delivered")
                    .filter_map(|e| e.attempt)
                    .collect();
                if !delivered.is_empty() && !delivered.contains(&attempt) {
                    prop.violation(ex(&[
                        ("intent_id", json!(id)),
                        ("f", json!("ack")),
                        ("attempt", json!(attempt)),
                        (
                            "why",
                            json!("an ack of an attempt the log never delivered was applied"),
                        ),
                        ("delivered_attempts", json!(delivered)),
                    ]));
                }
            }
        }
    }
    prop.finish()
}

/// Every intent that exists after the heal, addressed to an agent with a live
/// receiver, was observed delivered by `heal + bound` (or `create + bound` if
/// it was created later), unless it is terminal (it is not stuck).
fn delivered(a: &Analysis<'_>, cfg: &CheckerConfig) -> PropertyResult {
    let mut prop = Prop::new("delivered-after-heal", cfg);
    let live: BTreeSet<String> = a
        .with_f("agent-binding")
        .filter(|p| p.is_ok())
        .filter_map(|p| p.field("agent").as_str())
        .map(normalize)
        .collect();
    for id in a.finals.keys() {
        if !a.exists_finally(id) {
            continue;
        }
        let Some(intent) = a.final_intent(id) else {
            continue;
        };
        let agent = intent
            .get("to_agent")
            .and_then(Value::as_str)
            .map(normalize);
        if !live.is_empty() && !agent.as_ref().is_some_and(|x| live.contains(x)) {
            continue;
        }
        prop.checked(1);
        let created = a
            .with_f("create")
            .filter(|p| p.is_ok() && p.intent_id() == Some(id.as_str()))
            .map(|p| p.end_ns())
            .min()
            .unwrap_or(0);
        let deadline = a.heal_ns.max(created).saturating_add(cfg.delivery_bound_ns);
        let first = a
            .deliveries
            .get(id.as_str())
            .into_iter()
            .flatten()
            .map(|d| d.time_ns)
            .min();
        if first.is_some_and(|t| t <= deadline) {
            continue;
        }
        // An intent that reached a terminal status is not stuck: a sender's
        // cancel, a deadline or a resolve ended it (a lost observation of a
        // delivery must not count against the cluster).
        let status = intent.get("status").and_then(Value::as_str).unwrap_or("");
        if is_terminal(status) {
            continue;
        }
        prop.violation(ex(&[
            ("intent_id", json!(id)),
            ("to_agent", json!(agent)),
            ("status", json!(status)),
            ("first_delivery_ns", json!(first)),
            ("deadline_ns", json!(deadline)),
        ]));
    }
    prop.finish()
}

fn normalize(s: &str) -> String {
    s.strip_prefix("agent://")
        .unwrap_or(s)
        .trim_matches('/')
        .to_string()
}
