//! After the heal: drain until every known intent is terminal (or the bound
//! passes), then read every intent and its events from every node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::chaos::read_once;
use super::client::Outcome;
use super::Shared;

/// Waits until every known intent was seen terminal or `drain_timeout`
/// passes; open intents are re-read (recorded) every couple of seconds.
pub async fn drain(sh: &Arc<Shared>) {
    let h = sh.history();
    let started = Instant::now();
    h.ok(
        "drain",
        "drain-start",
        json!({"open": sh.open_intents().len()}),
        None,
    );
    let process = sh.process("drain-reader");
    loop {
        let open = sh.open_intents();
        if open.is_empty() || started.elapsed() >= sh.ctx.drain_timeout {
            h.ok(
                "drain",
                "drain-end",
                json!({"open": open.len(), "secs": started.elapsed().as_secs_f64()}),
                None,
            );
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for id in open.iter().take(50) {
            read_once(sh, &process, id).await;
        }
    }
}

/// All events of `id` from one node (`?since=` paging).
async fn events_of(sh: &Shared, base: &str, id: &str) -> Result<Vec<Value>, Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let since = out
            .last()
            .and_then(|e| e.get("seq"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let r = sh
            .api
            .call(
                Method::GET,
                &format!("{base}/v1/intents/{id}/events?since={since}"),
                None,
                &[],
                Duration::from_secs(10),
            )
            .await;
        match r {
            Outcome::Ok(v) => {
                let page: Vec<Value> = v
                    .get("events")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if page.is_empty() {
                    return Ok(out);
                }
                let before = out.len();
                out.extend(page);
                let last = out
                    .last()
                    .and_then(|e| e.get("seq"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if last <= since || out.len() == before || out.len() > 100_000 {
                    return Ok(out);
                }
            }
            Outcome::Fail(v) | Outcome::Info(v) => return Err(v),
        }
    }
}

/// One node's final view of one intent, recorded as `final-read`.
async fn final_read(sh: &Shared, node: &str, base: &str, id: &str) {
    let h = sh.history();
    for attempt in 0..5 {
        let got = sh
            .api
            .call(
                Method::GET,
                &format!("{base}/v1/intents/{id}"),
                None,
                &[],
                Duration::from_secs(10),
            )
            .await;
        let (found, intent) = match got {
            Outcome::Ok(v) => (true, v.get("intent").cloned().unwrap_or(Value::Null)),
            Outcome::Fail(ref v) if v.get("http").and_then(Value::as_u64) == Some(404) => {
                (false, Value::Null)
            }
            Outcome::Fail(v) | Outcome::Info(v) => {
                if attempt == 4 {
                    h.fail(
                        "final",
                        "final-read",
                        json!({"intent_id": id, "error": v}),
                        Some(node),
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let events = if found {
            match events_of(sh, base, id).await {
                Ok(e) => e,
                Err(v) => {
                    if attempt == 4 {
                        h.fail(
                            "final",
                            "final-read",
                            json!({"intent_id": id, "error": v}),
                            Some(node),
                        );
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        h.ok(
            "final",
            "final-read",
            json!({"intent_id": id, "found": found, "intent": intent, "events": events}),
            Some(node),
        );
        return;
    }
}

/// Reads every known intent from every node; returns the number of reads.
pub async fn final_reads(sh: &Arc<Shared>) -> usize {
    let ids = sh.known_ids();
    let sem = Arc::new(Semaphore::new(8));
    let mut tasks = Vec::new();
    for id in &ids {
        for (node, base) in sh.ctx.nodes.clone() {
            let (sh2, id2, sem2) = (sh.clone(), id.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _p = sem2.acquire_owned().await;
                final_read(&sh2, &node, &base, &id2).await;
            }));
        }
    }
    let n = tasks.len();
    for t in tasks {
        let _ = t.await;
    }
    n
}
