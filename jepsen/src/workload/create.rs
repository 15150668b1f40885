//! Creators: intents with idempotency keys, retried with the same key after
//! errors and timeouts, some sent twice at once.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{self, Outcome};
use super::{consumers, Shared};

/// How many times one key is tried.
const MAX_TRIES: u32 = 6;

/// One creator process: creates until the fault phase ends.
pub async fn creator(sh: Arc<Shared>, i: usize) {
    let mut n = 0u64;
    while !sh.stopping() {
        n += 1;
        let key = format!("{}-c{i}-{n}", sh.tag);
        let agents = sh.agents.all();
        let agent = agents[sh.rand(|r| r.gen_range(0..agents.len()))].clone();
        let mut body = json!({
            "intent_type": "jepsen.test.v1",
            "correlation_id": uuid::Uuid::new_v4().to_string(),
            "to_agent": format!("agent://{agent}"),
            "payload": {"jepsen_key": key, "n": n},
        });
        if sh.chance(0.15) {
            let secs = sh.rand(|r| r.gen_range(2..12));
            let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
            body["deadline_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        let process = format!("create-{i}");
        if sh.chance(0.1) {
            // The same key, sent concurrently by a second process.
            let (sh2, key2, agent2, body2) = (sh.clone(), key.clone(), agent.clone(), body.clone());
            let dup = sh.process("create-dup");
            tokio::spawn(
                async move { create_with_retries(&sh2, &dup, &key2, &agent2, &body2).await },
            );
        }
        create_with_retries(&sh, &process, &key, &agent, &body).await;
        let pause = sh.rand(|r| r.gen_range(20..150));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Creates with one key until an answer is definite (or tries run out).
/// Returns the intent id on success.
pub async fn create_with_retries(
    sh: &Arc<Shared>,
    process: &str,
    key: &str,
    agent: &str,
    body: &Value,
) -> Option<String> {
    let id = send_with_retries(
        sh,
        process,
        key,
        agent,
        "/v1/intents",
        body,
        &body["payload"],
        &json!({}),
    )
    .await;
    if let Some(id) = &id {
        if sh.chance(0.3) {
            let (sh2, id2) = (sh.clone(), id.clone());
            tokio::spawn(async move { consumers::follow_events(sh2, id2).await });
        }
    }
    id
}

/// Posts `body` to `path` of a random node with the `Idempotency-Key` `key` until an answer
/// is definite (or tries run out), recording each try as a `create` op whose invoke and
/// completion also carry `extra`. Returns the intent id on success.
#[allow(clippy::too_many_arguments)]
pub async fn send_with_retries(
    sh: &Arc<Shared>,
    process: &str,
    key: &str,
    agent: &str,
    path: &str,
    body: &Value,
    payload: &Value,
    extra: &Value,
) -> Option<String> {
    let h = sh.history();
    for attempt in 1..=MAX_TRIES {
        let (node, url) = sh.node();
        h.invoke(
            process,
            "create",
            client::merge(
                json!({"key": key, "agent": agent, "payload": payload, "try": attempt}),
                extra,
            ),
            Some(&node),
        );
        let out = sh
            .api
            .call(
                Method::POST,
                &format!("{url}{path}"),
                Some(body),
                &[("Idempotency-Key", key.to_string())],
                Duration::from_secs(5),
            )
            .await;
        match &out {
            Outcome::Ok(v) => {
                let id = v
                    .get("intent_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let status = v.get("status").cloned().unwrap_or(Value::Null);
                h.ok(
                    process,
                    "create",
                    client::merge(
                        json!({"key": key, "intent_id": id, "status": status}),
                        extra,
                    ),
                    Some(&node),
                );
                if let Some(id) = &id {
                    sh.learn(id, Some(key), Some(agent));
                }
                return id;
            }
            Outcome::Fail(v) => {
                h.fail(
                    process,
                    "create",
                    client::merge(json!({"key": key}), v),
                    Some(&node),
                );
                // A 4xx other than rate limiting is final; a refused connection
                // or 429 is retried.
                let retry = v.get("error").is_some() || out.http() == Some(429);
                if !retry {
                    return None;
                }
            }
            Outcome::Info(v) => {
                h.info(
                    process,
                    "create",
                    client::merge(json!({"key": key}), v),
                    Some(&node),
                );
            }
        }
        if sh.stopping() && attempt >= 2 {
            return None;
        }
        let backoff = sh.rand(|r| r.gen_range(100..400)) * u64::from(attempt);
        tokio::time::sleep(Duration::from_millis(backoff)).await;
    }
    None
}
