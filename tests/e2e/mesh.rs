//! The mesh API end to end: every route, its role checks and bad input on one node, and a
//! kill during delivery on three nodes across a leader change (nothing delivered while
//! killed, nothing lost or failed, everything delivered after the resume); the leader's
//! health sweep commits health changes that a new leader keeps and continues.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::cluster::{Cluster, ClusterOptions};
use crate::support::receiver::{new_secret, Mode, Receiver};
use crate::support::{address_path, eventually, intent_body, within, Api, Server, PAYMENTS};

fn agent_path(address: &str) -> String {
    format!("/v1/mesh/agents/{}", address_path(address))
}

/// Receives with the poll binding; the delivered intent ids.
async fn receive(api: &Api, address: &str, max: u64, wait: u64) -> Vec<String> {
    let resp = api
        .post(
            &format!("/v1/agents/{}/intents/receive", address_path(address)),
            &json!({"max": max, "wait_seconds": wait}),
        )
        .await;
    let body = resp.assert_ok(200);
    body["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["intent_id"].as_str().expect("intent_id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mesh_routes_answer_with_role_checks_and_clear_errors() {
    within(Duration::from_secs(60), async {
        let server = Server::start().await;
        let admin = server.admin();
        let (agent_key, _) = admin.create_key("payments", "agent", Some(PAYMENTS)).await;
        let agent = admin.with_key(&agent_key);
        let (client_key, _) = admin.create_key("client", "client", None).await;
        let client = admin.with_key(&client_key);

        // Heartbeat: agent keys only; metrics folded.
        client
            .post("/v1/mesh/heartbeat", &json!({}))
            .await
            .assert_error(403, "forbidden");
        let metrics = json!({"metrics": {"intents_total": 4, "intents_succeeded": 3,
                              "intents_failed": 1, "avg_latency_ms": 20.0, "cost_usd": 0.5}});
        let beat = agent.post("/v1/mesh/heartbeat", &metrics).await;
        let body = beat.assert_ok(200);
        assert_eq!(body["replicated"], json!(true), "{body}");
        assert_eq!(body["health"], json!("healthy"), "{body}");
        let again = agent.post("/v1/mesh/heartbeat", &metrics).await;
        assert_eq!(
            again.assert_ok(200)["agent"]["metrics"]["intents_total"],
            json!(8)
        );
        // Without metrics, a beat right after a replicated one is coalesced.
        let coalesced = agent.post_raw("/v1/mesh/heartbeat", "").await;
        assert_eq!(coalesced.assert_ok(200)["replicated"], json!(false));
        agent
            .post(
                "/v1/mesh/heartbeat",
                &json!({"metrics": {"intents_total": -1}}),
            )
            .await
            .assert_error(422, "schema_invalid");
        agent
            .post("/v1/mesh/heartbeat", &json!({"bogus": 1}))
            .await
            .assert_error(422, "schema_invalid");

        // Listing and detail.
        let list = admin.get("/v1/mesh/agents?limit=10").await;
        let agents = list.assert_ok(200)["agents"].as_array().unwrap().clone();
        let row = agents
            .iter()
            .find(|a| a["address"] == json!(PAYMENTS))
            .expect("the agent is listed");
        assert_eq!(row["health"], json!("healthy"));
        assert_eq!(row["metrics"]["avg_latency_ms"], json!(20.0));
        assert_eq!(row["binding"]["delivery_mode"], json!("stream"));
        admin
            .get("/v1/mesh/agents?limit=0")
            .await
            .assert_error(400, "invalid_request");
        admin
            .get("/v1/mesh/agents?health=sleepy")
            .await
            .assert_error(400, "invalid_request");
        let killed_list = admin.get("/v1/mesh/agents?health=killed").await;
        assert_eq!(killed_list.assert_ok(200)["agents"], json!([]));
        admin
            .get(&agent_path("agent://acme/prod/nobody"))
            .await
            .assert_error(404, "not_found");
        client
            .get(&agent_path(PAYMENTS))
            .await
            .assert_error(403, "forbidden");
        agent.get(&agent_path(PAYMENTS)).await.assert_ok(200);

        // Kill and resume: admin only; the agent cannot send while killed.
        for key in [&agent, &client] {
            key.post(&format!("{}/kill", agent_path(PAYMENTS)), &json!({}))
                .await
                .assert_error(403, "forbidden");
        }
        let kill = admin
            .post(
                &format!("{}/kill", agent_path(PAYMENTS)),
                &json!({"reason": "runaway costs"}),
            )
            .await;
        let body = kill.assert_ok(200);
        assert_eq!(body["agent"]["health"], json!("killed"), "{body}");
        assert_eq!(body["agent"]["kill_reason"], json!("runaway costs"));
        let refused = agent
            .create(&intent_body("agent://acme/prod/other"), None)
            .await;
        let message = refused.assert_error(403, "forbidden");
        assert!(message.contains("killed"), "{message}");
        let detail = admin.get(&agent_path(PAYMENTS)).await;
        let body = detail.assert_ok(200);
        assert_eq!(body["agent"]["killed"], json!(true));
        assert_eq!(
            body["events"][0]["event_type"],
            json!("agent.killed"),
            "{body}"
        );
        admin
            .post(&format!("{}/resume", agent_path(PAYMENTS)), &json!({}))
            .await
            .assert_ok(200);
        agent
            .create_ok(&intent_body("agent://acme/prod/other"))
            .await;
        admin
            .post(&format!("{}/explode", agent_path(PAYMENTS)), &json!({}))
            .await
            .assert_error(404, "not_found");

        // The event log, filtered.
        let events = admin.get("/v1/mesh/events?limit=10").await;
        let types: Vec<Value> = events.assert_ok(200)["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_type"].clone())
            .collect();
        assert_eq!(types, [json!("agent.killed"), json!("agent.resumed")]);
        let resumes = admin.get("/v1/mesh/events?event_type=agent.resumed").await;
        assert_eq!(
            resumes.assert_ok(200)["events"].as_array().unwrap().len(),
            1
        );
        // The live feed: every event from `since`, then `stream.timeout` with where to resume.
        let feed = admin
            .builder(
                reqwest::Method::GET,
                "/v1/mesh/events/stream?since=0&wait_seconds=0",
            )
            .send()
            .await
            .expect("mesh feed");
        assert_eq!(feed.status(), 200);
        let text = feed.text().await.expect("feed body");
        let killed_at = text
            .find("event: agent.killed\nid: 1\n")
            .expect("kill in feed");
        let resumed_at = text
            .find("event: agent.resumed\nid: 2\n")
            .expect("resume in feed");
        assert!(killed_at < resumed_at, "{text}");
        assert!(
            text.ends_with("event: stream.timeout\ndata: {\"since\":2}\n\n"),
            "{text}"
        );
        admin
            .get("/v1/mesh/events?event_type=agent.exploded")
            .await
            .assert_error(400, "invalid_request");
    })
    .await;
}

/// A kill while intents are being delivered, then a leader change while killed: the kill is
/// replicated state, so the new leader's cluster still delivers nothing; the resume (through
/// another node) releases every intent, and each is delivered and completed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_survives_a_leader_change_and_the_resume_delivers_everything() {
    within(Duration::from_secs(180), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let follower = [1u64, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        let admin = cluster.api(follower);
        admin
            .put(
                &format!("/v1/agents/{}/binding", address_path(PAYMENTS)),
                &json!({"delivery_mode": "poll", "ack_timeout_seconds": 60,
                        "max_delivery_attempts": 1}),
            )
            .await
            .assert_ok(200);
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(admin.create_ok(&intent_body(PAYMENTS)).await);
        }
        // Two are in flight (leased, on their only attempt) when the kill comes.
        let leased = receive(&admin, PAYMENTS, 2, 5).await;
        assert_eq!(leased.len(), 2);
        admin
            .post(&format!("{}/kill", agent_path(PAYMENTS)), &json!({}))
            .await
            .assert_ok(200);
        for id in &leased {
            let intent = admin.intent(id).await;
            assert_eq!(intent["status"], json!("DELIVERED"), "{intent}");
            let events = admin.events(id).await;
            assert_eq!(
                events.last().unwrap()["event_type"],
                json!("intent.delivery_held"),
                "the kill took the lease away"
            );
        }
        // The killed agent cannot settle what was taken away.
        let (agent_key, _) = admin.create_key("payments", "agent", Some(PAYMENTS)).await;
        admin
            .with_key(&agent_key)
            .post(
                &format!("/v1/intents/{}/resume", leased[0]),
                &json!({"action": "complete"}),
            )
            .await
            .assert_error(403, "forbidden");

        // Leader change while killed.
        cluster.node_mut(leader).kill();
        let others: Vec<u64> = [1u64, 2, 3].into_iter().filter(|&n| n != leader).collect();
        cluster
            .wait_leader_among(&others, Duration::from_secs(60))
            .await;
        let api = cluster.api(others[1]);
        assert!(
            receive(&api, PAYMENTS, 10, 1).await.is_empty(),
            "delivered while killed"
        );
        let detail = api.get(&agent_path(PAYMENTS)).await;
        let body = detail.assert_ok(200);
        assert_eq!(body["agent"]["health"], json!("killed"), "{body}");
        // The two leases taken away, and the four the receive above offered while killed.
        assert_eq!(body["agent"]["held"], json!(ids.len()), "{body}");

        api.post(&format!("{}/resume", agent_path(PAYMENTS)), &json!({}))
            .await
            .assert_ok(200);
        let mut delivered = Vec::new();
        while delivered.len() < ids.len() {
            let got = receive(&api, PAYMENTS, 10, 10).await;
            assert!(!got.is_empty(), "not everything came back: {delivered:?}");
            for id in got {
                api.post(
                    &format!("/v1/intents/{id}/resume"),
                    &json!({"action": "complete"}),
                )
                .await
                .assert_ok(200);
                delivered.push(id);
            }
        }
        delivered.sort();
        let mut all = ids.clone();
        all.sort();
        assert_eq!(
            delivered, all,
            "each intent delivered once after the resume"
        );
        for id in &ids {
            assert_eq!(api.intent(id).await["status"], json!("COMPLETED"));
        }
    })
    .await;
}

/// The health changes the mesh event log lists for `address` (`agent://...`), as (from, to)
/// pairs.
async fn health_changes(api: &Api, address: &str) -> Vec<(Value, Value)> {
    let resp = api
        .get("/v1/mesh/events?event_type=agent.health_changed&limit=1000")
        .await;
    resp.assert_ok(200)["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["address"] == json!(address))
        .map(|e| (e["from_health"].clone(), e["to_health"].clone()))
        .collect()
}

/// The leader's sweep turns reported failures into a committed `degraded`, listed by every
/// node; after the leader dies the new one neither repeats that change nor misses the next
/// (the agent recovers: `healthy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_health_sweep_commits_changes_that_survive_a_leader_change() {
    within(Duration::from_secs(120), async {
        let mut cluster = Cluster::start(3, ClusterOptions::default()).await;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let follower = [1u64, 2, 3].into_iter().find(|&n| n != leader).unwrap();
        let admin = cluster.api(follower);
        let (agent_key, _) = admin.create_key("payments", "agent", Some(PAYMENTS)).await;
        let agent = admin.with_key(&agent_key);
        agent
            .post(
                "/v1/mesh/heartbeat",
                &json!({"metrics": {"intents_total": 10, "intents_failed": 8}}),
            )
            .await
            .assert_ok(200);
        let degraded = eventually(Duration::from_secs(20), "the degraded change", || async {
            let changes = health_changes(&admin, PAYMENTS).await;
            (!changes.is_empty()).then_some(changes)
        })
        .await;
        assert_eq!(degraded, vec![(Value::Null, json!("degraded"))]);
        let listed = admin
            .get("/v1/mesh/events?event_type=agent.health_changed")
            .await;
        let event = listed.assert_ok(200)["events"][0].clone();
        assert_eq!(event["actor"], json!("system"), "{event}");
        assert_eq!(
            event["reason"],
            json!("8 of 10 reported intents failed"),
            "{event}"
        );

        cluster.node_mut(leader).kill();
        let others: Vec<u64> = [1u64, 2, 3].into_iter().filter(|&n| n != leader).collect();
        let new_leader = cluster
            .wait_leader_among(&others, Duration::from_secs(60))
            .await;
        let api = cluster.api(new_leader);
        let agent = api.with_key(&agent_key);
        assert_eq!(
            health_changes(&api, PAYMENTS).await,
            degraded,
            "the change survived and the new leader did not repeat it"
        );
        let detail = api.get(&agent_path(PAYMENTS)).await;
        assert_eq!(detail.assert_ok(200)["agent"]["health"], json!("degraded"));

        // Most reported intents now succeed: the new leader's sweep commits the recovery.
        agent
            .post(
                "/v1/mesh/heartbeat",
                &json!({"metrics": {"intents_total": 30, "intents_succeeded": 30}}),
            )
            .await
            .assert_ok(200);
        let changes = eventually(Duration::from_secs(20), "the recovery", || async {
            let changes = health_changes(&api, PAYMENTS).await;
            (changes.len() == 2).then_some(changes)
        })
        .await;
        assert_eq!(changes[1], (json!("degraded"), json!("healthy")));
        let detail = api.get(&agent_path(PAYMENTS)).await;
        assert_eq!(detail.assert_ok(200)["agent"]["health"], json!("healthy"));
    })
    .await;
}

/// An HTTP-bound agent is judged by its pushes: three failures in a row make it `degraded`,
/// five (the circuit breaker's default) `unreachable`, and the leader commits the change;
/// once its endpoint answers again, the delivery it settles resets the count and the sweep
/// commits `healthy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_pushes_make_an_http_agent_degraded_then_unreachable_then_healthy() {
    within(Duration::from_secs(120), async {
        let server = Server::start_with(&[
            "--delivery-allow-hosts",
            "127.0.0.1",
            "--delivery-base-backoff-ms",
            "100",
            "--delivery-max-backoff-ms",
            "400",
        ])
        .await;
        let admin = server.admin();
        let secret = new_secret();
        let rx = Receiver::start(
            &secret,
            Mode::Fail {
                status: 503,
                retry_after: None,
            },
        )
        .await;
        let hooks = "agent://acme/prod/hooks";
        admin
            .put(
                &format!("/v1/agents/{}/binding", address_path(hooks)),
                &json!({"delivery_mode": "http", "url": rx.url(), "secret": secret,
                        "max_delivery_attempts": 50}),
            )
            .await
            .assert_ok(200);
        let fresh = admin.get(&agent_path(hooks)).await;
        assert_eq!(
            fresh.assert_ok(200)["agent"]["health"],
            json!("healthy"),
            "an HTTP agent is alive until its pushes fail"
        );
        admin.create_ok(&intent_body(hooks)).await;
        // The sweep looks at most once a second, so failures that come faster may take the
        // agent from healthy to unreachable in one change.
        let down = eventually(Duration::from_secs(60), "unreachable", || async {
            let changes = health_changes(&admin, hooks).await;
            (changes.last().map(|c| &c.1) == Some(&json!("unreachable"))).then_some(changes)
        })
        .await;
        let direct = [(Value::Null, json!("unreachable"))];
        let stepped = [
            (Value::Null, json!("degraded")),
            (json!("degraded"), json!("unreachable")),
        ];
        assert!(down == direct || down == stepped, "{down:?}");
        let detail = admin.get(&agent_path(hooks)).await;
        let agent = detail.assert_ok(200)["agent"].clone();
        assert_eq!(agent["health"], json!("unreachable"), "{agent}");
        assert!(agent["push_failures"].as_u64() >= Some(5), "{agent}");
        assert!(
            agent["last_push_error"]
                .as_str()
                .is_some_and(|e| e.contains("503")),
            "{agent}"
        );

        // The endpoint answers again: after the breaker's cool-down the push goes through.
        rx.set_mode(Mode::Succeed { body: None });
        let healed = eventually(Duration::from_secs(60), "healthy again", || async {
            let changes = health_changes(&admin, hooks).await;
            (changes.last() == Some(&(json!("unreachable"), json!("healthy")))).then_some(changes)
        })
        .await;
        assert_eq!(healed.len(), down.len() + 1, "{healed:?}");
        let detail = admin.get(&agent_path(hooks)).await;
        let agent = detail.assert_ok(200)["agent"].clone();
        assert_eq!(agent["health"], json!("healthy"), "{agent}");
        assert_eq!(agent["push_failures"], json!(0), "{agent}");
    })
    .await;
}
