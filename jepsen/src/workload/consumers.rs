//! Consumers: the agent stream (SSE) and poll receivers, which act on each
//! delivery (ack, complete, ignore, ack a stale attempt, fail), and the
//! intent event-stream followers. Streams are dropped at random and resumed
//! from the last seq / cursor seen.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{self, read_sse, Frame, Outcome};
use super::{nap, Shared};

/// The `jepsen_key` of a delivery or intent JSON.
pub fn key_of(v: &Value) -> Option<&str> {
    v.pointer("/payload/jepsen_key").and_then(Value::as_str)
}

/// One agent-stream consumer: follows the stream agent's SSE deliveries.
pub async fn agent_stream(sh: Arc<Shared>) {
    let process = sh.process("sse-agent");
    let agent = sh.agents.stream.clone();
    let mut cursor = 0u64;
    let mut conn_no = 0u64;
    while !sh.is_done() {
        let (node, base) = sh.node();
        conn_no += 1;
        let conn = format!("{process}#{conn_no}");
        let since = cursor;
        let url = format!("{base}/v1/agents/{agent}/intents/stream?since={since}&wait_seconds=5");
        let resp = sh
            .api
            .http()
            .get(&url)
            .bearer_auth(sh.api.key())
            .send()
            .await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            _ => {
                nap(&sh, Duration::from_millis(300)).await;
                continue;
            }
        };
        // Drop the connection at random after a few deliveries.
        let drop_after: u64 = if sh.is_draining() {
            u64::MAX
        } else {
            sh.rand(|r| r.gen_range(1..15))
        };
        let mut seen = 0u64;
        let sh2 = sh.clone();
        let h = sh.history().clone();
        read_sse(resp, Duration::from_secs(15), |f: Frame| {
            if !f.event.starts_with("intent.") {
                return false; // stream.timeout
            }
            let id = f
                .data
                .get("intent_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let attempt = f.data.get("delivery_attempt").and_then(Value::as_u64);
            let pos = f.id.or_else(|| f.data.get("seq").and_then(Value::as_u64));
            let key = key_of(&f.data).map(str::to_string);
            h.ok(
                &process,
                "agent-delivery",
                json!({"agent": agent, "conn": conn, "since": since, "cursor": pos, "intent_id": id,
                       "delivery_attempt": attempt, "status": f.data.get("status"), "key": key}),
                Some(&node),
            );
            if let Some(p) = pos {
                cursor = cursor.max(p);
            }
            if !id.is_empty() {
                sh2.learn(&id, key.as_deref(), Some(&agent));
                let status = f.data.get("status").and_then(Value::as_str).unwrap_or("");
                if matches!(
                    status,
                    "DELIVERED" | "CREATED" | "IN_PROGRESS" | "SUBMITTED" | "ACKNOWLEDGED"
                ) {
                    if let Some(a) = attempt {
                        let sh3 = sh2.clone();
                        tokio::spawn(async move { act(sh3, id, a).await });
                    }
                }
            }
            seen += 1;
            seen < drop_after && !sh2.is_done()
        })
        .await;
    }
}

/// One poll consumer: long-polls the poll agent's receive endpoint.
pub async fn poller(sh: Arc<Shared>) {
    let Some(agent) = sh.agents.poll.clone() else {
        return;
    };
    let process = sh.process("poller");
    let h = sh.history().clone();
    let mut missing = 0;
    while !sh.is_done() {
        let (node, base) = sh.node();
        let body = json!({"max": 10, "wait_seconds": 3});
        h.invoke(
            &process,
            "receive",
            json!({"agent": agent, "max": 10}),
            Some(&node),
        );
        let out = sh
            .api
            .call(
                Method::POST,
                &format!("{base}/v1/agents/{agent}/intents/receive"),
                Some(&body),
                &[],
                Duration::from_secs(10),
            )
            .await;
        match &out {
            Outcome::Ok(v) => {
                missing = 0;
                let ds: Vec<Value> = v
                    .get("deliveries")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let rec: Vec<Value> = ds
                    .iter()
                    .map(|d| {
                        json!({"intent_id": d.get("intent_id"), "delivery_attempt": d.get("delivery_attempt"),
                               "status": d.get("status"), "key": key_of(d)})
                    })
                    .collect();
                h.ok(
                    &process,
                    "receive",
                    json!({"agent": agent, "deliveries": rec}),
                    Some(&node),
                );
                for d in ds {
                    let id = d
                        .get("intent_id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if id.is_empty() {
                        continue;
                    }
                    sh.learn(&id, key_of(&d), Some(&agent));
                    if let Some(a) = d.get("delivery_attempt").and_then(Value::as_u64) {
                        let sh2 = sh.clone();
                        tokio::spawn(async move { act(sh2, id, a).await });
                    }
                }
            }
            other => {
                client::record(
                    &h,
                    &process,
                    "receive",
                    &node,
                    other,
                    json!({"agent": agent, "http": other.http()}),
                );
                if matches!(other.http(), Some(404 | 405)) {
                    missing += 1;
                }
                nap(
                    &sh,
                    Duration::from_millis(if missing > 3 { 5000 } else { 300 }),
                )
                .await;
            }
        }
    }
}

/// What a consumer does with delivery `attempt` of `id`.
pub async fn act(sh: Arc<Shared>, id: String, attempt: u64) {
    let process = sh.process("actor");
    let roll: f64 = if sh.is_draining() {
        0.0
    } else {
        sh.rand(|r| r.gen())
    };
    if roll < 0.45 {
        if ack(&sh, &process, &id, attempt).await {
            complete(&sh, &process, &id, "complete").await;
        }
    } else if roll < 0.65 {
        complete(&sh, &process, &id, "complete").await;
    } else if roll < 0.8 {
        // Ignore it: the lease expires and it is delivered again.
    } else if roll < 0.92 {
        // Late: ack after the lease may have expired, or a stale attempt.
        let delay = sh.rand(|r| r.gen_range(1000..8000));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let a = if attempt > 1 && sh.chance(0.5) {
            attempt - 1
        } else {
            attempt
        };
        ack(&sh, &process, &id, a).await;
    } else {
        complete(&sh, &process, &id, "fail").await;
    }
}

/// `POST /v1/intents/{id}/ack`; whether it was applied.
async fn ack(sh: &Shared, process: &str, id: &str, attempt: u64) -> bool {
    let h = sh.history();
    let (node, base) = sh.node();
    h.invoke(
        process,
        "ack",
        json!({"intent_id": id, "attempt": attempt}),
        Some(&node),
    );
    let out = sh
        .api
        .call(
            Method::POST,
            &format!("{base}/v1/intents/{id}/ack"),
            Some(&json!({"delivery_attempt": attempt})),
            &[],
            Duration::from_secs(5),
        )
        .await;
    let (status, applied) = match &out {
        Outcome::Ok(v) => (
            v.pointer("/intent/status").cloned().unwrap_or(Value::Null),
            v.get("applied").cloned().unwrap_or(Value::Null),
        ),
        _ => (Value::Null, Value::Null),
    };
    sh.saw_status(id, status.as_str());
    client::record(
        h,
        process,
        "ack",
        &node,
        &out,
        json!({"intent_id": id, "attempt": attempt, "status": status, "applied": applied, "http": out.http()}),
    );
    matches!(out, Outcome::Ok(_))
}

/// `POST /v1/intents/{id}/resume` with `action` complete or fail.
pub async fn complete(sh: &Shared, process: &str, id: &str, action: &str) {
    let h = sh.history();
    let (node, base) = sh.node();
    h.invoke(
        process,
        "resume",
        json!({"intent_id": id, "action": action}),
        Some(&node),
    );
    let body = if action == "fail" {
        json!({"action": "fail", "code": "jepsen_fail", "message": "chosen by the workload"})
    } else {
        json!({"action": "complete", "done_by": process})
    };
    let out = sh
        .api
        .call(
            Method::POST,
            &format!("{base}/v1/intents/{id}/resume"),
            Some(&body),
            &[],
            Duration::from_secs(5),
        )
        .await;
    let (status, applied) = match &out {
        Outcome::Ok(v) => (
            v.pointer("/intent/status").cloned().unwrap_or(Value::Null),
            v.get("applied").cloned().unwrap_or(Value::Null),
        ),
        _ => (Value::Null, Value::Null),
    };
    sh.saw_status(id, status.as_str());
    client::record(
        h,
        process,
        "resume",
        &node,
        &out,
        json!({"intent_id": id, "action": action, "status": status, "applied": applied, "http": out.http()}),
    );
}

/// Follows one intent's event stream from seq 0 to its terminal event,
/// dropping the connection at random and resuming from the last seq.
pub async fn follow_events(sh: Arc<Shared>, id: String) {
    let Ok(_permit) = sh.followers.clone().try_acquire_owned() else {
        return;
    };
    let process = sh.process("events");
    let h = sh.history().clone();
    let mut last = 0u64;
    let mut conn_no = 0u64;
    let mut finished = false;
    // Give up on an intent that stays open for long, to follow others.
    let give_up = std::time::Instant::now() + Duration::from_secs(45);
    while !finished && !sh.is_done() && std::time::Instant::now() < give_up {
        let (node, base) = sh.node();
        conn_no += 1;
        let conn = format!("{process}#{conn_no}");
        let since = last;
        let url = format!("{base}/v1/intents/{id}/events/stream?since={since}&wait_seconds=5");
        let resp = sh
            .api
            .http()
            .get(&url)
            .bearer_auth(sh.api.key())
            .send()
            .await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            _ => {
                nap(&sh, Duration::from_millis(300)).await;
                continue;
            }
        };
        let drop_after: u64 = if sh.is_draining() {
            u64::MAX
        } else {
            sh.rand(|r| r.gen_range(1..6))
        };
        let mut seen = 0u64;
        read_sse(resp, Duration::from_secs(15), |f: Frame| {
            if !f.event.starts_with("intent.") {
                return false;
            }
            let seq = f.data.get("seq").and_then(Value::as_u64).or(f.id);
            h.ok(
                &process,
                "event",
                client::merge(
                    f.data.clone(),
                    &json!({"intent_id": id, "conn": conn, "since": since}),
                ),
                Some(&node),
            );
            if let Some(s) = seq {
                last = last.max(s);
            }
            let status = f.data.get("status").and_then(Value::as_str);
            sh.saw_status(&id, status);
            if status
                .is_some_and(|s| matches!(s, "COMPLETED" | "FAILED" | "CANCELED" | "TIMED_OUT"))
            {
                finished = true;
                return false;
            }
            seen += 1;
            seen < drop_after
        })
        .await;
    }
}
