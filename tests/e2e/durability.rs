//! An acknowledged write survives the process: SIGKILL right after the last ack, SIGKILL in
//! the middle of a load, and clean SIGTERM/SIGINT shutdowns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_gapless, intent_body, within, Api, Server, PAYMENTS};

/// Checks that every acknowledged `(intent_id, create body)` is there after the restart, with
/// its fields and its first two events.
async fn assert_all_survived(api: &Api, acked: &[(String, Value)]) {
    for (id, body) in acked {
        let resp = api.get(&format!("/v1/intents/{id}")).await;
        assert_eq!(
            resp.status,
            200,
            "acknowledged intent {id} lost after SIGKILL ({} acked): {}",
            acked.len(),
            resp.text
        );
        let intent = &resp.body["intent"];
        assert_eq!(intent["payload"], body["payload"], "{id}");
        assert_eq!(intent["correlation_id"], body["correlation_id"], "{id}");
        let events = api.events(id).await;
        let types = assert_gapless(id, &events);
        assert_eq!(types[..2], ["intent.created", "intent.submitted"], "{id}");
    }
}

fn numbered_body(worker: usize, n: usize) -> Value {
    let mut body = intent_body(PAYMENTS);
    body["payload"] = json!({ "worker": worker, "n": n });
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_creates_survive_sigkill() {
    within(Duration::from_secs(240), async {
        const WORKERS: usize = 8;
        const PER_WORKER: usize = 50;
        let mut server = Server::start().await;
        let api = server.admin();

        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..PER_WORKER {
                    let body = numbered_body(w, n);
                    let id = api.create_ok(&body).await;
                    acked.push((id, body));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.expect("create worker"));
        }
        // Immediately after the last acknowledgement: no graceful anything.
        server.kill();
        assert_eq!(acked.len(), WORKERS * PER_WORKER);

        server.restart().await;
        assert_all_survived(&server.admin(), &acked).await;

        // The restarted node keeps taking writes.
        let id = server.admin().create_ok(&intent_body(PAYMENTS)).await;
        assert_eq!(server.admin().events(&id).await.len(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_continuous_load_loses_no_acknowledged_intent() {
    within(Duration::from_secs(240), async {
        const WORKERS: usize = 6;
        const KILL_AFTER: usize = 300;
        const MAX_PER_WORKER: usize = 500;
        let mut server = Server::start().await;
        let api = server.admin();

        let acked: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let dead = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let (api, acked, count, dead) =
                (api.clone(), acked.clone(), count.clone(), dead.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..MAX_PER_WORKER {
                    if dead.load(Ordering::SeqCst) {
                        break;
                    }
                    let body = numbered_body(w, n);
                    let sent = api
                        .builder(reqwest::Method::POST, "/v1/intents")
                        .json(&body)
                        .send()
                        .await;
                    // Errors and cut connections after the kill are expected: only a complete
                    // 200 with an intent id is an acknowledgement.
                    let Ok(resp) = sent else { break };
                    if resp.status().as_u16() != 200 {
                        break;
                    }
                    let Ok(v) = resp.json::<Value>().await else {
                        break;
                    };
                    let Some(id) = v["intent_id"].as_str() else {
                        break;
                    };
                    acked.lock().expect("lock").push((id.to_string(), body));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }

        crate::support::eventually(
            Duration::from_secs(120),
            "acknowledged creates under load",
            || {
                let n = count.load(Ordering::SeqCst);
                async move { (n >= KILL_AFTER).then_some(()) }
            },
        )
        .await;
        // Writes are in flight right now.
        server.kill();
        dead.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("load worker");
        }
        let acked = acked.lock().expect("lock").clone();
        assert!(acked.len() >= KILL_AFTER);

        server.restart().await;
        assert_all_survived(&server.admin(), &acked).await;
    })
    .await
}

#[tokio::test]
async fn sigterm_and_sigint_shut_down_cleanly_and_keep_state() {
    within(Duration::from_secs(180), async {
        let mut server = Server::start().await;
        let admin = server.admin();
        let (agent_key, _) = admin.create_key("payments", "agent", Some(PAYMENTS)).await;
        let id = admin.create_ok(&intent_body(PAYMENTS)).await;
        admin
            .post(
                &format!("/v1/intents/{id}/resume"),
                &json!({"action": "progress"}),
            )
            .await
            .assert_ok(200);
        let before = admin.events(&id).await;

        let status = server.stop().await;
        assert!(
            status.success(),
            "SIGTERM exit: {status:?}\n{}",
            server.log_tail(40)
        );
        server.restart().await;
        assert_eq!(server.admin().events(&id).await, before);

        let status = server.stop_with(libc::SIGINT).await;
        assert!(
            status.success(),
            "SIGINT exit: {status:?}\n{}",
            server.log_tail(40)
        );
        server.restart().await;

        // Keys are replicated state too: the agent key still works after two restarts.
        let agent = server.admin().with_key(&agent_key);
        agent
            .post(
                &format!("/v1/intents/{id}/resolve"),
                &json!({"status": "COMPLETED", "result": {"ok": 1}}),
            )
            .await
            .assert_ok(200);
        assert_eq!(
            server.admin().intent(&id).await["status"],
            json!("COMPLETED")
        );
    })
    .await
}

#[tokio::test]
async fn idempotency_records_and_agent_cursors_survive_sigkill() {
    within(Duration::from_secs(180), async {
        let mut server = Server::start().await;
        let api = server.admin();
        let body = intent_body(PAYMENTS);
        let first = api.create(&body, Some("order-after-crash")).await;
        first.assert_ok(200);
        let id = first.body["intent_id"].clone();

        // Deliver it, and remember the agent cursor the listener reached.
        let listen = |since: u64| {
            format!(
                "/v1/agents/{}/intents/stream?since={since}&wait_seconds=1",
                crate::support::address_path(PAYMENTS)
            )
        };
        let frames = crate::support::SseStream::open_ok(&api, &listen(0), &[])
            .await
            .rest(Duration::from_secs(10))
            .await;
        let delivered: Vec<_> = frames
            .iter()
            .filter(|f| f.event() == "intent.delivered")
            .map(|f| f.json())
            .collect();
        assert_eq!(delivered.len(), 1, "{frames:?}");
        let cursor = delivered[0]["seq"].as_u64().expect("seq");

        server.kill();
        server.restart().await;
        let api = server.admin();

        // The dedup record is replicated state: the retry after the crash is a replay.
        let again = api.create(&body, Some("order-after-crash")).await;
        again.assert_ok(200);
        assert_eq!(
            again.body["intent_id"], id,
            "retry after restart made a new intent"
        );
        let mut changed = body.clone();
        changed["payload"]["amount_cents"] = json!(1);
        api.create(&changed, Some("order-after-crash"))
            .await
            .assert_error(409, "idempotency_conflict");

        let id = id.as_str().expect("id");
        let intent = api.intent(id).await;
        assert_eq!(intent["status"], json!("DELIVERED"));
        assert_eq!(intent["delivery_attempt"], json!(1));

        // The agent cursor only grows across the restart: a resumed listen sees only the new
        // intent, under a larger cursor.
        let newer = api.create_ok(&intent_body(PAYMENTS)).await;
        let frames = crate::support::SseStream::open_ok(&api, &listen(cursor), &[])
            .await
            .rest(Duration::from_secs(10))
            .await;
        let delivered: Vec<_> = frames
            .iter()
            .filter(|f| f.event() == "intent.delivered")
            .map(|f| f.json())
            .collect();
        assert_eq!(delivered.len(), 1, "{frames:?}");
        assert_eq!(delivered[0]["intent_id"], json!(newer));
        assert!(delivered[0]["seq"].as_u64().expect("seq") > cursor);
    })
    .await
}
