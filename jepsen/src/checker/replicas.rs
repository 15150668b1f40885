//! Replica convergence: after the heal and drain, every node's final read of
//! an intent (the intent and its whole event log) is identical.

use serde_json::{json, Value};

use super::{ex, Analysis, CheckerConfig, Prop, PropertyResult};

/// The parts of a final read that must agree between replicas.
fn normalized(v: &Value) -> Value {
    json!({
        "found": v.get("found"),
        "intent": v.get("intent"),
        "events": v.get("events"),
    })
}

pub(crate) fn check(a: &Analysis<'_>, cfg: &CheckerConfig) -> PropertyResult {
    let mut prop = Prop::new("replicas-identical-after-heal", cfg);
    for (id, by_node) in &a.finals {
        if by_node.len() < 2 {
            continue;
        }
        prop.checked(1);
        let mut it = by_node.iter();
        let Some((n0, v0)) = it.next() else { continue };
        let base = normalized(v0);
        for (n, v) in it {
            let other = normalized(v);
            if other != base {
                let diff: Vec<&str> = ["found", "intent", "events"]
                    .into_iter()
                    .filter(|k| base.get(k) != other.get(k))
                    .collect();
                prop.violation(ex(&[
                    ("intent_id", json!(id)),
                    ("node_a", json!(n0)),
                    ("node_b", json!(n)),
                    ("differs_in", json!(diff)),
                    ("a", base.clone()),
                    ("b", other),
                ]));
                break;
            }
        }
    }
    prop.finish()
}
