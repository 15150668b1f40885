//! After the heal: drain until every known intent is terminal (or the bound
//! passes), then read every intent and its events from every node.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::chaos::read_once;
use super::client::{Api, Outcome};
use super::consumers::complete;
use super::{nap, Shared};
use crate::history::History;

/// Concurrent readers of the drain and of the final reads (2-core CI machines: enough to
/// read a few thousand intents from three nodes in seconds without starving the nodes).
pub const READ_CONCURRENCY: usize = 16;

/// Waits until every known intent was seen terminal or `drain_timeout` passes. Every
/// round re-reads (recorded) each open intent, concurrently with a bound. An intent read
/// as ACKNOWLEDGED or IN_PROGRESS is completed here, as its agent would: nothing else will
/// ever move it (a lease ends with the ack, so it is never delivered again), and a
/// consumer of the fault phase may have acked it on purpose without completing it (late
/// acks), or crashed between its ack and its resume.
pub async fn drain(sh: &Arc<Shared>) {
    let h = sh.history();
    let started = Instant::now();
    h.ok(
        "drain",
        "drain-start",
        json!({"open": sh.open_intents().len()}),
        None,
    );
    let mut rounds = 0u64;
    let mut completed = 0u64;
    loop {
        let open = sh.open_intents();
        if open.is_empty() || started.elapsed() >= sh.ctx.drain_timeout {
            h.ok(
                "drain",
                "drain-end",
                json!({"open": open.len(), "secs": started.elapsed().as_secs_f64(),
                       "rounds": rounds, "completed_by_drain": completed,
                       "open_ids": open.iter().take(20).collect::<Vec<_>>()}),
                None,
            );
            return;
        }
        if rounds > 0 {
            nap(sh, Duration::from_secs(1)).await;
        }
        rounds += 1;
        let queue = Arc::new(Mutex::new(open));
        let mut workers = Vec::new();
        for _ in 0..READ_CONCURRENCY {
            let (sh2, queue2) = (sh.clone(), queue.clone());
            workers.push(tokio::spawn(async move {
                // One process per worker: a process runs one operation at a time.
                let process = sh2.process("drain-reader");
                let mut completed = 0u64;
                loop {
                    let next = queue2.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some(id) = next else { break };
                    let status = read_once(&sh2, &process, &id).await;
                    if matches!(status.as_deref(), Some("ACKNOWLEDGED" | "IN_PROGRESS")) {
                        complete(&sh2, &process, &id, "complete").await;
                        completed += 1;
                    }
                }
                completed
            }));
        }
        for w in workers {
            completed += w.await.unwrap_or(0);
        }
    }
}

/// All events of `id` from one node (`?since=` paging).
async fn events_of(api: &Api, base: &str, id: &str) -> Result<Vec<Value>, Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let since = out
            .last()
            .and_then(|e| e.get("seq"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let r = api
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
async fn final_read(api: &Api, h: &History, node: &str, base: &str, id: &str) -> bool {
    for attempt in 0..5 {
        let got = api
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
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let events = if found {
            match events_of(api, base, id).await {
                Ok(e) => e,
                Err(v) => {
                    if attempt == 4 {
                        h.fail(
                            "final",
                            "final-read",
                            json!({"intent_id": id, "error": v}),
                            Some(node),
                        );
                        return false;
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
        return true;
    }
    false
}

/// Reads every known intent from every node; returns the number of reads.
pub async fn final_reads(sh: &Arc<Shared>) -> usize {
    let ids = sh.known_ids();
    read_back(&sh.api, sh.history(), &sh.ctx.nodes, &ids).await
}

/// Reads each of `ids` with its events from each of `nodes` (name, base URL), recorded as
/// `final-read` (ok, or fail after retries), [`READ_CONCURRENCY`] at a time. Returns the
/// number of successful reads.
pub async fn read_back(
    api: &Api,
    h: &History,
    nodes: &[(String, String)],
    ids: &[String],
) -> usize {
    let pairs: Vec<(String, String, String)> = ids
        .iter()
        .flat_map(|id| {
            nodes
                .iter()
                .map(move |(node, base)| (id.clone(), node.clone(), base.clone()))
        })
        .collect();
    read_pairs(api, h, pairs).await
}

/// Reads each (intent id, node name, node base URL), [`READ_CONCURRENCY`] at a time.
pub async fn read_pairs(api: &Api, h: &History, pairs: Vec<(String, String, String)>) -> usize {
    let queue = Arc::new(Mutex::new(pairs));
    let mut workers = Vec::new();
    for _ in 0..READ_CONCURRENCY {
        let (api, h, queue) = (api.clone(), h.clone(), queue.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0usize;
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((id, node, base)) = next else { break };
                if final_read(&api, &h, &node, &base, &id).await {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut n = 0;
    for w in workers {
        n += w.await.unwrap_or(0);
    }
    n
}
