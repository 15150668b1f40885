//! Scenario workflows (issue 11) run whole in the cluster: an agent step, a person's approval
//! through the inbox, a timeout that fails into `on_failure`, and a notification, on one node
//! and across a leader kill in a three-node cluster.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::cluster::{Cluster, ClusterOptions};
use crate::support::{eventually, within, Api, Server};

const LIMIT: Duration = Duration::from_secs(120);
const WORKER: &str = "agent://acme/prod/charger";
const LEAD: &str = "acme/people/lead";

/// charge (agent) -> approve (person) -> settle (timeout, fails) -> notify (notification).
fn bundle(timeout_seconds: u64, key: &str) -> Value {
    json!({
        "scenario_id": "wf.e2e.v1",
        "title": "A charge, approved, settled",
        "idempotency_key": key,
        "agents": [{"role": "charger", "address": WORKER, "delivery_mode": "poll"}],
        "humans": [{"role": "lead", "contact": LEAD}],
        "workflow": {"steps": [
            {"step_id": "charge", "assigned_to": "charger", "on_success": "approve"},
            {"step_id": "approve", "assigned_to": "lead", "requires_approval": true,
             "human_task": {"title": "Approve the charge?", "task_type": "approval",
                            "allowed_outcomes": ["approved", "rejected"], "required_comment": true},
             "on_success": "settle"},
            {"step_id": "settle", "runtime_type": "timeout",
             "runtime_config": {"seconds": timeout_seconds}, "on_failure": "notify"},
            {"step_id": "notify", "runtime_type": "notification",
             "runtime_config": {"message": "settlement timed out"}},
        ]},
        "intent": {"type": "payment.charge.v1", "payload": {"amount_cents": 1999}},
    })
}

fn step<'a>(intent: &'a Value, id: &str) -> &'a Value {
    intent["workflow"]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == json!(id)))
        .unwrap_or_else(|| panic!("no step {id} in {intent}"))
}

async fn current_step(api: &Api, id: &str) -> Value {
    api.intent(id).await["workflow"]["current_step"].clone()
}

async fn wait_step(api: &Api, id: &str, step_id: &str) {
    eventually(LIMIT, &format!("step {step_id} active"), || async {
        (current_step(api, id).await == json!(step_id)).then_some(())
    })
    .await;
}

/// Applies the bundle and walks it through its agent and human steps.
async fn start_and_answer(api: &Api, timeout_seconds: u64, key: &str) -> String {
    let applied = api
        .post("/v1/scenarios/apply", &bundle(timeout_seconds, key))
        .await;
    let body = applied.assert_ok(200).clone();
    assert_eq!(body["warnings"], json!([]), "{body}");
    assert_eq!(body["workflow"]["current_step"], json!("charge"), "{body}");
    let id = body["intent_id"].as_str().expect("intent_id").to_string();

    // The agent step: the worker leases it and completes it.
    let resp = api
        .post(
            "/v1/agents/acme/prod/charger/intents/receive",
            &json!({"max": 1, "wait_seconds": 10}),
        )
        .await;
    let got = resp.assert_ok(200);
    assert_eq!(got["deliveries"][0]["intent_id"], json!(id), "{got}");
    api.post(
        &format!("/v1/intents/{id}/resume"),
        &json!({"charged": true}),
    )
    .await
    .assert_ok(200);

    // The person's step: the task is in the lead's inbox, and its rules hold.
    let intent = api.intent(&id).await;
    assert_eq!(intent["status"], json!("WAITING"), "{intent}");
    assert_eq!(intent["waiting_reason"], json!("WAITING_FOR_HUMAN"));
    assert_eq!(intent["workflow"]["current_step"], json!("approve"));
    assert_eq!(step(&intent, "charge")["state"], json!("succeeded"));
    assert_eq!(step(&intent, "charge")["outcome"], json!({"charged": true}));
    let inbox = format!("/v1/inbox/{id}/approve?owner_agent={LEAD}");
    api.post(&inbox, &json!({}))
        .await
        .assert_error(422, "schema_invalid");
    api.post(&inbox, &json!({"comment": "fine"}))
        .await
        .assert_ok(200);
    let intent = api.intent(&id).await;
    assert_eq!(
        intent["workflow"]["current_step"],
        json!("settle"),
        "{intent}"
    );
    assert_eq!(intent["waiting_reason"], json!("WAITING_FOR_TIME"));
    id
}

/// The end: the timeout failed its step, `on_failure` ran the notification, the workflow
/// completed; each step started exactly once.
async fn assert_finished(api: &Api, id: &str) {
    let done = eventually(LIMIT, "the workflow to end", || async {
        let intent = api.intent(id).await;
        (intent["status"] == json!("COMPLETED")).then_some(intent)
    })
    .await;
    let states: Vec<(Value, Value)> = done["workflow"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step_id"].clone(), s["state"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (json!("charge"), json!("succeeded")),
            (json!("approve"), json!("succeeded")),
            (json!("settle"), json!("failed")),
            (json!("notify"), json!("succeeded")),
        ],
        "{done}"
    );
    assert_eq!(
        step(&done, "settle")["outcome"]["code"],
        json!("step_timeout")
    );
    assert_eq!(done["workflow"]["current_step"], Value::Null);
    let events = api.events(id).await;
    crate::support::assert_gapless(id, &events);
    for s in ["charge", "approve", "settle", "notify"] {
        let started = events
            .iter()
            .filter(|e| {
                e["event_type"] == json!("workflow.step_started")
                    && e["details"]["step_id"] == json!(s)
            })
            .count();
        assert_eq!(started, 1, "step {s} started {started} times");
    }
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == json!("workflow.step_failed"))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["details"]["step_id"], json!("settle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_runs_whole_on_one_node() {
    within(LIMIT, async {
        let server = Server::start().await;
        let api = server.admin();
        let id = start_and_answer(&api, 1, "wf-one-node").await;
        assert_finished(&api, &id).await;
        // Applying the same bundle again answers the same intent.
        let again = api
            .post("/v1/scenarios/apply", &bundle(1, "wf-one-node"))
            .await;
        assert_eq!(again.assert_ok(200)["intent_id"], json!(id));

        // A cycle is refused before anything is registered or created.
        let mut cyclic = bundle(1, "wf-cycle");
        cyclic["workflow"]["steps"][3]["on_success"] = json!("charge");
        let message = api
            .post("/v1/scenarios/apply", &cyclic)
            .await
            .assert_error(422, "schema_invalid")
            .to_string();
        assert!(message.contains("cycle"), "{message}");
    })
    .await
}

/// The leader is killed while the workflow waits on its timeout: the new leader's engine
/// ticks the step, and nothing is lost or run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workflow_survives_a_leader_kill() {
    within(Duration::from_secs(200), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let follower = cluster
            .running()
            .into_iter()
            .find(|&n| n != leader)
            .unwrap();
        let api = cluster.api(follower);
        let id = start_and_answer(&api, 3, "wf-cluster").await;
        wait_step(&api, &id, "settle").await;

        cluster.node_mut(leader).kill();
        cluster.note(&format!(
            "SIGKILLed leader node {leader} during the timeout step"
        ));
        let survivors = cluster.running();
        let new_leader = cluster
            .wait_leader_among(&survivors, Duration::from_secs(60))
            .await;
        assert_ne!(new_leader, leader);
        assert_finished(&api, &id).await;
        for s in survivors {
            let intent = cluster.api(s).intent(&id).await;
            assert_eq!(intent["status"], json!("COMPLETED"), "node {s}");
        }
    })
    .await
}
