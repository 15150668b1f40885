//! Creates: nothing acknowledged is lost, nothing appears that was never
//! sent, one intent per idempotency key.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use super::{ex, Analysis, CheckerConfig, Prop, PropertyResult};

pub(crate) fn check(a: &Analysis<'_>, cfg: &CheckerConfig) -> Vec<PropertyResult> {
    // key -> payload as sent; key -> acknowledged ids
    let mut sent: HashMap<&str, &Value> = HashMap::new();
    let mut acked: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in a.with_f("create") {
        if let Some(k) = p.invoke_value().get("key").and_then(Value::as_str) {
            sent.entry(k)
                .or_insert_with(|| p.invoke_value().get("payload").unwrap_or(&Value::Null));
            if p.is_ok() {
                if let Some(id) = p.intent_id() {
                    acked.entry(k).or_default().insert(id);
                }
            }
        }
    }
    let acked_ids: BTreeSet<&str> = acked.values().flatten().copied().collect();

    // Lost acknowledged creates.
    let mut lost = Prop::new("no-lost-acked-creates", cfg);
    for (key, ids) in &acked {
        for id in ids {
            lost.checked(1);
            match a.finals.get(*id) {
                None => lost.violation(ex(&[
                    ("key", json!(key)),
                    ("intent_id", json!(id)),
                    (
                        "why",
                        json!("acknowledged but never read back after the heal"),
                    ),
                ])),
                Some(by_node) => {
                    let missing: Vec<&String> = by_node
                        .iter()
                        .filter(|(_, v)| v.get("found") == Some(&Value::Bool(false)))
                        .map(|(n, _)| n)
                        .collect();
                    if !missing.is_empty() {
                        lost.violation(ex(&[
                            ("key", json!(key)),
                            ("intent_id", json!(id)),
                            ("why", json!("acknowledged, then not found")),
                            ("nodes", json!(missing)),
                        ]));
                    }
                }
            }
        }
    }

    // Observed intents: id -> keys seen with it (payload.jepsen_key).
    let mut observed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut observed_payload: BTreeMap<&str, &Value> = BTreeMap::new();
    for (id, ds) in &a.deliveries {
        let e = observed.entry(*id).or_default();
        for d in ds {
            if let Some(k) = d.key {
                e.insert(k);
            }
        }
    }
    for p in a.with_f("read") {
        if p.is_ok() && p.value().get("found") == Some(&Value::Bool(true)) {
            if let Some(id) = p.intent_id() {
                let e = observed.entry(id).or_default();
                if let Some(k) = p.value().get("key").and_then(Value::as_str) {
                    e.insert(k);
                }
            }
        }
    }
    for (id, by_node) in &a.finals {
        for v in by_node.values() {
            if let Some(intent) = v.get("intent").filter(|i| i.is_object()) {
                let e = observed.entry(id.as_str()).or_default();
                if let Some(payload) = intent.get("payload") {
                    observed_payload.insert(id.as_str(), payload);
                    if let Some(k) = payload.get("jepsen_key").and_then(Value::as_str) {
                        e.insert(k);
                    }
                }
            }
        }
    }

    let mut phantom = Prop::new("no-phantom-intents", cfg);
    for (id, keys) in &observed {
        phantom.checked(1);
        if keys.is_empty() {
            if !acked_ids.contains(id) {
                phantom.violation(ex(&[
                    ("intent_id", json!(id)),
                    (
                        "why",
                        json!("observed, carries no key and no create returned it"),
                    ),
                ]));
            }
            continue;
        }
        for k in keys {
            match sent.get(k) {
                None => phantom.violation(ex(&[
                    ("intent_id", json!(id)),
                    ("key", json!(k)),
                    ("why", json!("no create was ever invoked with this key")),
                ])),
                Some(payload) => {
                    if let Some(seen) = observed_payload.get(id) {
                        if !payload.is_null() && seen != payload {
                            phantom.violation(ex(&[
                                ("intent_id", json!(id)),
                                ("key", json!(k)),
                                ("why", json!("payload differs from the one sent")),
                                ("sent", (*payload).clone()),
                                ("seen", (*seen).clone()),
                            ]));
                        }
                    }
                }
            }
        }
    }

    // One intent per key: acknowledged ids plus ids observed carrying the key.
    let mut per_key: BTreeMap<&str, BTreeSet<&str>> = acked.clone();
    for (id, keys) in &observed {
        for k in keys {
            per_key.entry(k).or_default().insert(id);
        }
    }
    let mut dup = Prop::new("one-intent-per-key", cfg);
    for (k, ids) in &per_key {
        dup.checked(1);
        if ids.len() > 1 {
            dup.violation(ex(&[("key", json!(k)), ("intent_ids", json!(ids))]));
        }
    }

    vec![lost.finish(), phantom.finish(), dup.finish()]
}
