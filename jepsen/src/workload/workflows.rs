//! Workflows: scenario bundles whose `workflow` the cluster runs step by step, applied with
//! idempotency keys and retried with the same key, like [`super::create`].
//!
//! Every bundle has the same four-step graph: an agent step for the stream agent (the
//! stream consumers answer it, or fail it, or let its deadline pass), a delay, a timeout
//! nobody approves (so it fails into its `on_failure` edge), and a notification. Each step
//! change is a replicated command proposed by whichever node leads at the time, so a fault in
//! the middle of a workflow must neither lose a tick (the intent would stay open: the drain
//! judges that) nor repeat one (a step started twice for the same attempt, or started by an
//! edge the graph does not have: [`crate::checker`]'s `workflow-steps-once` judges that).
//!
//! The applies are recorded as `create` ops carrying `workflow`, the graph as the invoke
//! sent it, so the create checks (no lost, no phantom, one intent per key) cover them too and
//! the workflow check reads the graph from the history rather than knowing it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};

use super::create::send_with_retries;
use super::Shared;

/// The graph every bundle runs: its first step and each step's `on_success`/`on_failure`
/// target (`null`: the workflow ends there). Recorded with each apply.
pub fn graph() -> Value {
    json!({"first": "work", "edges": {
        "work": {"on_success": "pause", "on_failure": "note"},
        "pause": {"on_success": "gate", "on_failure": null},
        "gate": {"on_success": "note", "on_failure": "note"},
        "note": {"on_success": null, "on_failure": null},
    }})
}

fn bundle(stream_agent: &str, key: &str, n: u64) -> Value {
    json!({
        "scenario_id": "jepsen.workflow.v1",
        "agents": [{"role": "worker", "address": format!("agent://{stream_agent}")}],
        "workflow": {"steps": [
            {"step_id": "work", "assigned_to": "worker", "step_deadline_seconds": 8,
             "retry": {"max_retries": 1}, "on_success": "pause", "on_failure": "note"},
            {"step_id": "pause", "runtime_type": "delay", "runtime_config": {"seconds": 1},
             "on_success": "gate"},
            {"step_id": "gate", "runtime_type": "timeout", "runtime_config": {"seconds": 1},
             "on_success": "note", "on_failure": "note"},
            {"step_id": "note", "runtime_type": "notification",
             "runtime_config": {"message": "jepsen workflow done"}},
        ]},
        "intent": {"type": "jepsen.workflow.v1", "payload": {"jepsen_key": key, "n": n}},
    })
}

/// One workflow process: applies bundles until the fault phase ends, a few per second.
pub async fn applier(sh: Arc<Shared>) {
    let process = sh.process("workflow");
    let mut n = 0u64;
    while !sh.stopping() {
        n += 1;
        let key = format!("{}-w{n}", sh.tag);
        let body = bundle(&sh.agents.stream, &key, n);
        apply_with_retries(&sh, &process, &key, &body).await;
        let pause = sh.rand(|r| r.gen_range(200..600));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Applies one bundle with one key until an answer is definite (or tries run out), recorded
/// as `create` ops that carry the graph.
async fn apply_with_retries(sh: &Arc<Shared>, process: &str, key: &str, body: &Value) {
    send_with_retries(
        sh,
        process,
        key,
        &sh.agents.stream,
        "/v1/scenarios/apply",
        body,
        &body["intent"]["payload"],
        &json!({"workflow": graph()}),
    )
    .await;
}
