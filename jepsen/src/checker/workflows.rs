//! Workflows: every step tick happens once, along the graph.
//!
//! A workflow's steps change by replicated commands that the leader of the moment proposes
//! (timers, deadlines) or that answers carry (agent results). A leader change in the middle
//! could lose a tick (the intent stays open: `terminal-after-drain` sees that) or repeat one
//! (two leaders both proposing the same timer): this check reads each workflow intent's final
//! log and replays its `workflow.step_*` events against the graph its apply sent (recorded in
//! the `create` invoke), so a step started twice for one attempt, a step started that no edge
//! leads to, or a step ended that was not the active one is a violation.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use super::{ex, Analysis, CheckerConfig, Prop, PropertyResult};

/// The graph of one workflow as its apply sent it: the first step and each step's edges.
struct Graph<'a> {
    first: &'a str,
    edges: &'a serde_json::Map<String, Value>,
}

impl<'a> Graph<'a> {
    fn from(v: &'a Value) -> Option<Graph<'a>> {
        Some(Graph {
            first: v.get("first")?.as_str()?,
            edges: v.get("edges")?.as_object()?,
        })
    }

    fn next(&self, step: &str, edge: &str) -> Option<&'a str> {
        self.edges.get(step)?.get(edge)?.as_str()
    }
}

pub(crate) fn check(a: &Analysis<'_>, cfg: &CheckerConfig) -> PropertyResult {
    let mut prop = Prop::new("workflow-steps-once", cfg);
    let mut graphs: BTreeMap<&str, Graph<'_>> = BTreeMap::new();
    for p in a.with_f("create") {
        let v = p.invoke_value();
        if let (Some(key), Some(graph)) = (
            v.get("key").and_then(Value::as_str),
            v.get("workflow").and_then(Graph::from),
        ) {
            graphs.entry(key).or_insert(graph);
        }
    }
    if graphs.is_empty() {
        return prop.finish();
    }
    for (id, by_node) in &a.finals {
        // The longest log any node returned: replicas agreeing is another property's.
        let Some(read) = by_node
            .values()
            .filter(|v| v.get("found") == Some(&Value::Bool(true)))
            .max_by_key(|v| {
                v.get("events")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            })
        else {
            continue;
        };
        let Some(graph) = read
            .pointer("/intent/payload/jepsen_key")
            .and_then(Value::as_str)
            .and_then(|k| graphs.get(k))
        else {
            continue;
        };
        prop.checked(1);
        let events = read
            .get("events")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if let Some(why) = replay(graph, events) {
            prop.violation(ex(&[("intent_id", json!(id)), ("why", why)]));
        }
    }
    prop.finish()
}

/// Replays the step events of one log against `graph`; the first wrong one, described.
fn replay(graph: &Graph<'_>, events: &[Value]) -> Option<Value> {
    let mut started: HashSet<(String, u64)> = HashSet::new();
    let mut expect: Option<(String, u64)> = Some((graph.first.to_string(), 1));
    let mut active: Option<(String, u64)> = None;
    for e in events {
        let Some(kind) = e
            .get("event_type")
            .and_then(Value::as_str)
            .and_then(|t| t.strip_prefix("workflow.step_"))
        else {
            continue;
        };
        let details = e.get("details").unwrap_or(&Value::Null);
        let step = details
            .get("step_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let attempt = details.get("attempt").and_then(Value::as_u64).unwrap_or(0);
        let this = (step.clone(), attempt);
        let problem = match kind {
            "started" if started.contains(&this) => Some("this step attempt was started before"),
            "started" if expect.as_ref() != Some(&this) => {
                Some("no edge of the graph leads to this step attempt now")
            }
            "started" => None,
            "succeeded" | "failed" | "retried" if active.as_ref() != Some(&this) => {
                Some("ends a step attempt that is not the active one")
            }
            "succeeded" | "failed" | "retried" => None,
            _ => Some("an unknown workflow event"),
        };
        if let Some(problem) = problem {
            return Some(json!({
                "seq": e.get("seq"), "event": kind, "step_id": step, "attempt": attempt,
                "problem": problem, "active": active, "expected_next": expect,
            }));
        }
        match kind {
            "started" => {
                started.insert(this.clone());
                active = Some(this);
                expect = None;
            }
            _ => {
                active = None;
                expect = match kind {
                    "succeeded" => graph.next(&step, "on_success").map(|s| (s.to_string(), 1)),
                    "failed" => graph.next(&step, "on_failure").map(|s| (s.to_string(), 1)),
                    _ => Some((step.clone(), attempt + 1)),
                };
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_json() -> Value {
        json!({"first": "a", "edges": {
            "a": {"on_success": "b", "on_failure": "c"},
            "b": {"on_success": "c", "on_failure": null},
            "c": {"on_success": null, "on_failure": null},
        }})
    }

    fn ev(seq: u64, kind: &str, step: &str, attempt: u64) -> Value {
        json!({"seq": seq, "event_type": format!("workflow.step_{kind}"),
               "details": {"step_id": step, "attempt": attempt}})
    }

    #[test]
    fn a_run_along_the_graph_with_a_retry_passes() {
        let g = graph_json();
        let g = Graph::from(&g).unwrap();
        let log = [
            json!({"seq": 1, "event_type": "intent.created"}),
            ev(2, "started", "a", 1),
            ev(3, "retried", "a", 1),
            ev(4, "started", "a", 2),
            ev(5, "failed", "a", 2),
            ev(6, "started", "c", 1),
            ev(7, "succeeded", "c", 1),
        ];
        assert_eq!(replay(&g, &log), None);
    }

    #[test]
    fn a_repeated_tick_or_a_jump_off_the_graph_is_caught() {
        let g = graph_json();
        let g = Graph::from(&g).unwrap();
        let twice = [
            ev(1, "started", "a", 1),
            ev(2, "succeeded", "a", 1),
            ev(3, "started", "b", 1),
            ev(4, "started", "b", 1),
        ];
        assert!(replay(&g, &twice).is_some());
        let jump = [
            ev(1, "started", "a", 1),
            ev(2, "succeeded", "a", 1),
            ev(3, "started", "c", 1),
        ];
        assert!(replay(&g, &jump).is_some());
        let stray_end = [ev(1, "started", "a", 1), ev(2, "succeeded", "b", 1)];
        assert!(replay(&g, &stray_end).is_some());
        let after_end = [
            ev(1, "started", "a", 1),
            ev(2, "succeeded", "a", 1),
            ev(3, "failed", "a", 1),
        ];
        assert!(replay(&g, &after_end).is_some());
    }
}
