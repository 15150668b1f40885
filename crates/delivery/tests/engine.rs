//! The delivery engine against a real one-node cluster (Raft, WAL, sled) and a real HTTP
//! receiver on 127.0.0.1: retries with backoff until the receiver recovers, signed pushes,
//! and a fresh engine picking up a lease expiry that its predecessor left in the index.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use intentd_consensus::Cluster;
use intentd_delivery::backoff::Backoff;
use intentd_delivery::{signing, AllowList, Engine, EngineConfig, Metrics};
use intentd_lifecycle::{
    AgentConfig, Binding, Command, EventType, Intent, IntentCommand, Status, Subscription,
    WebhookDeliveryStatus, WebhookEvent,
};
use intentd_operations::intents::{now, write_intent};
use intentd_test_support::new_intent;
use intentd_test_support::node::single as node;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Bounds every wait: a stuck engine fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(20);
const SECRET: &str = "whsec_c2VjcmV0LWZvci10aGUtZW5naW5lLXRlc3Q=";

fn engine_config() -> EngineConfig {
    EngineConfig {
        allow: AllowList::parse("127.0.0.1").unwrap(),
        // Short so the two retries come quickly; the jitter keeps them within 40 ms.
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
        },
        request_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

/// Starts an engine; dropping the returned sender stops it.
fn start_engine(
    cluster: &Cluster,
    metrics: Metrics,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let engine = Engine::new(cluster.clone(), engine_config(), metrics).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn create(cluster: &Cluster, to_agent: &str) -> Uuid {
    let intent = new_intent(to_agent);
    let id = intent.id;
    write_intent(cluster, IntentCommand::Create { intent, at: now() }, None)
        .await
        .unwrap();
    id
}

/// Waits, on the applied-index watch (no polling), until the intent satisfies `done`.
async fn wait_for(cluster: &Cluster, id: Uuid, done: impl Fn(&Intent) -> bool) -> Intent {
    let reader = cluster.reader().clone();
    let mut applied = reader.subscribe();
    tokio::time::timeout(LIMIT, async {
        loop {
            applied.borrow_and_update();
            if let Some(intent) = reader.intent(&id).unwrap() {
                if done(&intent) {
                    return intent;
                }
            }
            applied.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("intent {id} did not get there: {:?}", reader.intent(&id)))
}

#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
}

/// Fails the first two pushes with 500, then completes the intent in the 2xx answer.
async fn flaky(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let n = {
        let mut seen = r.seen.lock().unwrap();
        seen.push(Received {
            headers,
            body: body.to_vec(),
        });
        seen.len()
    };
    if n <= 2 {
        (StatusCode::INTERNAL_SERVER_ERROR, "warming up".into())
    } else {
        (
            StatusCode::OK,
            json!({"status": "COMPLETED", "result": {"charged": true}}).to_string(),
        )
    }
}

async fn receiver() -> (String, Receiver) {
    let state = Receiver::default();
    let app = Router::new()
        .route("/hook", post(flaky))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

async fn register(cluster: &Cluster, address: &str, binding: Binding) {
    let at = now();
    cluster
        .write(Command::RegisterAgent {
            config: AgentConfig {
                address: intentd_lifecycle::AgentAddress::parse("address", address).unwrap(),
                binding,
                ack_timeout_secs: 30,
                max_delivery_attempts: None,
                display_name: None,
                created_at: at,
                updated_at: at,
            },
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_until_it_answers_2xx() {
    let (_dir, cluster) = node().await;
    let (url, seen) = receiver().await;
    register(
        &cluster,
        "acme/billing",
        Binding::Http {
            url,
            secret: SECRET.into(),
            max_concurrency: 2,
        },
    )
    .await;
    let metrics = Metrics::new();
    let (_stop, _engine) = start_engine(&cluster, metrics.clone());

    let id = create(&cluster, "agent://acme/billing").await;
    let done = wait_for(&cluster, id, |i| i.status.is_terminal()).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.delivery_attempt, 3);
    assert_eq!(done.result, Some(json!({"charged": true})));
    assert!(done.lease.is_none());

    // Three signed pushes, one per attempt, each verifiable with the shared secret.
    let pushes = seen.seen.lock().unwrap().clone();
    assert_eq!(pushes.len(), 3);
    for (n, push) in pushes.iter().enumerate() {
        let header = |name: &str| push.headers[name].to_str().unwrap().to_string();
        let webhook_id = header("webhook-id");
        assert_eq!(webhook_id, format!("{id}:{}", n + 1));
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
        let expected = signing::sign(SECRET, &webhook_id, timestamp, &push.body).unwrap();
        assert_eq!(header("webhook-signature"), expected);
        let body: Value = serde_json::from_slice(&push.body).unwrap();
        assert_eq!(body["intent_id"], json!(id));
        assert_eq!(body["delivery_attempt"], json!(n + 1));
    }

    // The failures are in the history with their errors: two lost leases, then completion.
    let events = cluster.reader().events(&id, 0, 100).unwrap();
    let lost: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == EventType::LeaseExpired)
        .collect();
    assert_eq!(lost.len(), 2, "{events:?}");
    assert!(lost.iter().all(|e| e
        .details
        .values()
        .any(|v| v.to_string().contains("HTTP 500"))));
    assert_eq!(events.last().unwrap().event_type, EventType::Completed);
    assert_eq!(metrics.deliveries("http", "failed"), 2);
    assert_eq!(metrics.deliveries("http", "settled"), 1);
    assert!(metrics.render().contains("intentd_raft_is_leader 1\n"));
}

#[tokio::test]
async fn a_fresh_engine_expires_a_lease_its_predecessor_left_behind() {
    let (_dir, cluster) = node().await;
    // The first engine leads, then stops (as when its node loses leadership or restarts).
    let (stop, first) = start_engine(&cluster, Metrics::new());

    // A stream consumer takes the intent under a short lease and never acknowledges it.
    let id = create(&cluster, "agent://acme/stream-consumer").await;
    let at = now();
    write_intent(
        &cluster,
        IntentCommand::Deliver {
            intent_id: id,
            expected_attempt: 0,
            consumer: "gone".into(),
            lease_until: at + chrono::Duration::seconds(1),
            at,
        },
        None,
    )
    .await
    .unwrap();
    drop(stop);
    tokio::time::timeout(LIMIT, first)
        .await
        .expect("the first engine stopped promptly")
        .unwrap();
    let held = cluster.reader().intent(&id).unwrap().unwrap();
    assert!(held.lease.is_some(), "the lease outlived the first engine");

    // Nothing remembers the lease but the replicated due index; a new engine finds it there.
    let (_stop, _second) = start_engine(&cluster, Metrics::new());
    let expired = wait_for(&cluster, id, |i| i.lease.is_none()).await;
    assert_eq!(expired.status, Status::Delivered);
    assert_eq!(expired.delivery_attempt, 1);
    let events = cluster.reader().events(&id, 0, 100).unwrap();
    assert!(events
        .iter()
        .any(|e| e.event_type == EventType::LeaseExpired));
    let left = cluster.reader().due_before(now(), 10).unwrap();
    assert!(left.is_empty(), "{left:?} {expired:?}");
}

#[tokio::test]
async fn webhook_pushes_retry_the_same_way() {
    let (_dir, cluster) = node().await;
    let (url, seen) = receiver().await;
    let at = now();
    let subscription = Subscription {
        id: Uuid::new_v4(),
        owner: "acme/ops".into(),
        callback_url: url,
        event_types: vec!["billing.*".into()],
        secret: "plain-secret".into(),
        active: true,
        description: None,
        created_at: at,
        updated_at: at,
        revoked_at: None,
    };
    cluster
        .write(Command::UpsertSubscription { subscription })
        .await
        .unwrap();
    let metrics = Metrics::new();
    let (_stop, _engine) = start_engine(&cluster, metrics.clone());

    let event_id = Uuid::new_v4();
    cluster
        .write(Command::PublishEvent {
            event: WebhookEvent {
                event_id,
                event_type: "billing.invoice_paid".into(),
                source: "test".into(),
                owner: "acme/ops".into(),
                payload: json!({"invoice": 7}),
                at: now(),
            },
        })
        .await
        .unwrap();

    let reader = cluster.reader().clone();
    let mut applied = reader.subscribe();
    let delivery = tokio::time::timeout(LIMIT, async {
        loop {
            applied.borrow_and_update();
            let deliveries = reader.webhook_deliveries(&event_id).unwrap();
            if let Some(d) = deliveries
                .into_iter()
                .find(|d| d.status != WebhookDeliveryStatus::Pending)
            {
                return d;
            }
            applied.changed().await.unwrap();
        }
    })
    .await
    .expect("the webhook delivery settled in time");
    assert_eq!(delivery.status, WebhookDeliveryStatus::Delivered);
    assert_eq!(delivery.attempts, 3);

    let pushes = seen.seen.lock().unwrap().clone();
    assert_eq!(pushes.len(), 3);
    for push in &pushes {
        let header = |name: &str| push.headers[name].to_str().unwrap().to_string();
        // One message id for every retry, so the receiver can dedupe.
        assert_eq!(header("webhook-id"), event_id.to_string());
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
        let expected =
            signing::sign("plain-secret", &event_id.to_string(), timestamp, &push.body).unwrap();
        assert_eq!(header("webhook-signature"), expected);
        let body: Value = serde_json::from_slice(&push.body).unwrap();
        assert_eq!(body["type"], json!("billing.invoice_paid"));
        assert_eq!(body["data"], json!({"invoice": 7}));
    }
}
