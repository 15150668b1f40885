//! Racing resolve/cancel against the consumers and deadlines, and status
//! reads (`GET /v1/intents/{id}`, linearizable).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{self, Outcome};
use super::consumers::key_of;
use super::Shared;

/// Reads one intent's status from a random node and records it.
pub async fn read_once(sh: &Shared, process: &str, id: &str) -> Option<String> {
    let h = sh.history();
    let (node, base) = sh.node();
    h.invoke(process, "read", json!({"intent_id": id}), Some(&node));
    let out = sh
        .api
        .call(
            Method::GET,
            &format!("{base}/v1/intents/{id}"),
            None,
            &[],
            Duration::from_secs(5),
        )
        .await;
    match &out {
        Outcome::Ok(v) => {
            let i = v.get("intent").cloned().unwrap_or(Value::Null);
            let status = i.get("status").and_then(Value::as_str).map(str::to_string);
            sh.saw_status(id, status.as_deref());
            h.ok(
                process,
                "read",
                json!({"intent_id": id, "found": true, "status": status,
                       "delivery_attempt": i.get("delivery_attempt"), "key": key_of(&i)}),
                Some(&node),
            );
            status
        }
        Outcome::Fail(v) if out.http() == Some(404) => {
            let _ = v;
            h.ok(
                process,
                "read",
                json!({"intent_id": id, "found": false}),
                Some(&node),
            );
            None
        }
        // A read changes nothing: any other answer is a plain failure.
        Outcome::Fail(v) | Outcome::Info(v) => {
            h.fail(
                process,
                "read",
                client::merge(json!({"intent_id": id}), v),
                Some(&node),
            );
            None
        }
    }
}

/// A reader process: random known intents, until the fault phase ends.
pub async fn reader(sh: Arc<Shared>) {
    let process = sh.process("reader");
    while !sh.stopping() {
        let id = {
            let ids = sh.known_ids();
            if ids.is_empty() {
                None
            } else {
                Some(ids[sh.rand(|r| r.gen_range(0..ids.len()))].clone())
            }
        };
        match id {
            Some(id) => {
                read_once(&sh, &process, &id).await;
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        let pause = sh.rand(|r| r.gen_range(10..80));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A racer: resolves or cancels open intents while consumers work on them.
pub async fn racer(sh: Arc<Shared>) {
    let h = sh.history().clone();
    while !sh.stopping() {
        let pause = sh.rand(|r| r.gen_range(200..800));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let Some(id) = sh.random_open_intent() else {
            continue;
        };
        let process = sh.process("racer");
        let roll: f64 = sh.rand(|r| r.gen());
        let body = if roll < 0.6 {
            json!({"status": "CANCELED", "reason": "jepsen racer"})
        } else if roll < 0.85 {
            json!({"status": "COMPLETED", "result": {"by": "racer"}})
        } else {
            json!({"status": "FAILED", "error": {"code": "jepsen", "message": "racer"}})
        };
        // Sometimes two resolves race each other too.
        let twice = sh.chance(0.2);
        let mut tasks = Vec::new();
        for k in 0..if twice { 2 } else { 1 } {
            let sh2 = sh.clone();
            let (id2, body2) = (id.clone(), body.clone());
            let p = if k == 0 {
                process.clone()
            } else {
                sh.process("racer")
            };
            let h2 = h.clone();
            tasks.push(tokio::spawn(async move {
                let (node, base) = sh2.node();
                h2.invoke(
                    &p,
                    "resolve",
                    json!({"intent_id": id2, "status": body2["status"]}),
                    Some(&node),
                );
                let out = sh2
                    .api
                    .call(
                        Method::POST,
                        &format!("{base}/v1/intents/{id2}/resolve"),
                        Some(&body2),
                        &[],
                        Duration::from_secs(5),
                    )
                    .await;
                let status = match &out {
                    Outcome::Ok(v) => v.pointer("/intent/status").cloned().unwrap_or(Value::Null),
                    _ => Value::Null,
                };
                sh2.saw_status(&id2, status.as_str());
                client::record(
                    &h2,
                    &p,
                    "resolve",
                    &node,
                    &out,
                    json!({"intent_id": id2, "status": status, "http": out.http()}),
                );
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
