//! Drives the whole router in process against a real one-node cluster (Raft, WAL, sled), to
//! check routing, extractors and the SSE loops together. The end-to-end suite against the
//! binary and the official SDK lives in the workspace's `tests/`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use intentd_consensus::Cluster;
use intentd_http_api::{app, auth, ApiConfig};
use intentd_lifecycle::{ApiKey, Command, Role};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Node {
    _dir: tempfile::TempDir,
    cluster: Cluster,
    app: Router,
    admin: String,
}

async fn node(config: ApiConfig) -> Node {
    let (dir, cluster) = intentd_test_support::node::single().await;
    let admin = auth::generate_key();
    cluster
        .write(Command::PutApiKey {
            key_hash: auth::hash_key(&admin),
            key: ApiKey {
                id: uuid::Uuid::new_v4(),
                name: "root".into(),
                role: Role::Admin,
                created_at: chrono::Utc::now(),
                revoked: false,
            },
        })
        .await
        .unwrap();
    Node {
        _dir: dir,
        app: app(cluster.clone(), config, intentd_delivery::Metrics::new()),
        cluster,
        admin,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(v) => Body::from(v.to_string()),
        None => Body::empty(),
    };
    let response = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn create_body() -> Value {
    json!({
        "intent_type": "intent.generic.v1",
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "to_agent": "agent://acme/prod/billing",
        "payload": {"amount": 3},
    })
}

/// `event:` names and parsed data of an SSE body.
fn frames(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in f.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap();
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_flow_end_to_end_in_process() {
    let n = node(ApiConfig {
        max_intent_body_bytes: 2048,
        ..Default::default()
    })
    .await;
    let app = &n.app;
    let admin = n.admin.as_str();

    // health, unauthenticated, with ids echoed
    let a = call(
        app,
        "GET",
        "/health",
        None,
        None,
        &[("x-trace-id", "trace-123")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["ok"], true);
    assert_eq!(a.json()["role"], "leader");
    assert_eq!(a.headers["x-trace-id"], "trace-123");
    assert!(a.headers.contains_key("x-request-id"));

    // auth, unknown routes, capabilities
    let a = call(app, "GET", "/v1/capabilities", None, None, &[]).await;
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("auth_failed"))
    );
    let a = call(app, "GET", "/v1/capabilities", Some("ik_nope"), None, &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(
        app,
        "GET",
        "/v1/capabilities",
        None,
        None,
        &[("authorization", &format!("Bearer {admin}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(app, "GET", "/v1/nothing", Some(admin), None, &[]).await;
    assert_eq!(
        (a.status, a.json()["ok"].clone()),
        (StatusCode::NOT_FOUND, json!(false))
    );
    let a = call(app, "DELETE", "/v1/intents", Some(admin), None, &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.json()["ok"], false);

    // an agent key for the receiver
    let a = call(
        app,
        "POST",
        "/v1/admin/keys",
        Some(admin),
        Some(json!({"name": "billing", "role": "agent", "address": "acme/prod/billing"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let agent_key = a.json()["key"].as_str().unwrap().to_string();
    let a = call(
        app,
        "POST",
        "/v1/admin/keys",
        Some(&agent_key),
        Some(json!({"name": "x", "role": "client"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // create, replay, conflict, validation, size limit
    let body = create_body();
    let a = call(
        app,
        "POST",
        "/v1/intents",
        Some(admin),
        Some(body.clone()),
        &[("idempotency-key", "k1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let created = a.json();
    assert_eq!(created["status"], "SUBMITTED");
    let id = created["intent_id"].as_str().unwrap().to_string();
    let a = call(
        app,
        "POST",
        "/v1/intents",
        Some(admin),
        Some(body.clone()),
        &[("idempotency-key", "k1")],
    )
    .await;
    assert_eq!(a.json()["intent_id"], json!(id));
    let a = call(
        app,
        "POST",
        "/v1/intents",
        Some(admin),
        Some(create_body()),
        &[("idempotency-key", "k1")],
    )
    .await;
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("idempotency_conflict"))
    );
    let mut bad = create_body();
    bad["intent_type"] = json!("nope");
    assert_eq!(
        call(app, "POST", "/v1/intents", Some(admin), Some(bad), &[])
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let a = call(app, "POST", "/v1/intents", Some(admin), None, &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let mut big = create_body();
    big["payload"] = json!({"blob": "x".repeat(4096)});
    let a = call(app, "POST", "/v1/intents", Some(admin), Some(big), &[]).await;
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large"))
    );

    // get + events
    let a = call(
        app,
        "GET",
        &format!("/v1/intents/{id}"),
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["intent"]["lifecycle_status"], "SUBMITTED");
    assert_eq!(
        call(app, "GET", "/v1/intents/not-a-uuid", Some(admin), None, &[])
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let missing = uuid::Uuid::new_v4();
    assert_eq!(
        call(
            app,
            "GET",
            &format!("/v1/intents/{missing}"),
            Some(admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let a = call(
        app,
        "GET",
        &format!("/v1/intents/{id}/events?since=1"),
        Some(admin),
        None,
        &[],
    )
    .await;
    let events = a.json()["events"].clone();
    assert_eq!(events.as_array().unwrap().len(), 1);
    assert_eq!(events[0]["event_type"], "intent.submitted");
    assert_eq!(
        call(
            app,
            "GET",
            &format!("/v1/intents/{id}/events?since=x"),
            Some(admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );

    // the agent listens: the delivery moves the intent to DELIVERED; then the wait times out
    let a = call(
        app,
        "GET",
        "/v1/agents/acme/prod/other/intents/stream?wait_seconds=1",
        Some(&agent_key),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(
        app,
        "GET",
        "/v1/agents/acme/prod/billing/intents/stream?since=0&wait_seconds=1",
        Some(&agent_key),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "text/event-stream");
    let got = frames(&a.text);
    assert_eq!(got.len(), 2, "{}", a.text);
    assert_eq!(got[0].0, "intent.delivered");
    assert_eq!(got[0].1["intent_id"], json!(id));
    assert_eq!(got[0].1["delivery_attempt"], 1);
    assert_eq!(got[1].0, "stream.timeout");

    // directory
    let a = call(app, "GET", "/v1/agents", Some(admin), None, &[]).await;
    assert_eq!(
        a.json()["agents"][0]["address"],
        "agent://acme/prod/billing"
    );
    assert_eq!(
        call(
            app,
            "GET",
            "/v1/agents/acme/prod/billing",
            Some(admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(
            app,
            "GET",
            "/v1/agents/acme/prod/ghost",
            Some(admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // controls CAS, resume by the agent, second resolve refused
    let a = call(
        app,
        "POST",
        &format!("/v1/intents/{id}/controls"),
        Some(admin),
        Some(json!({"controls_patch": {"paused": false}, "expected_policy_generation": 0})),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, a.json()["policy_generation"].clone()),
        (StatusCode::OK, json!(1)),
        "{}",
        a.text
    );
    let a = call(
        app,
        "POST",
        &format!("/v1/intents/{id}/controls"),
        Some(admin),
        Some(json!({"controls_patch": {}, "expected_policy_generation": 0})),
        &[],
    )
    .await;
    assert_eq!(a.json()["error"]["code"], "policy_generation_mismatch");
    let a = call(
        app,
        "POST",
        &format!("/v1/intents/{id}/resume"),
        Some(&agent_key),
        Some(json!({"answer": 42})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        (
            a.json()["applied"].clone(),
            a.json()["intent"]["status"].clone()
        ),
        (json!(true), json!("COMPLETED"))
    );
    let a = call(
        app,
        "POST",
        &format!("/v1/intents/{id}/resolve"),
        Some(admin),
        Some(json!({"status": "CANCELED", "reason": "late"})),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("intent_terminal"))
    );

    // the intent stream replays from since and closes right after the terminal event
    let a = call(
        app,
        "GET",
        &format!("/v1/intents/{id}/events/stream?since=2&wait_seconds=5"),
        Some(admin),
        None,
        &[],
    )
    .await;
    let got = frames(&a.text);
    let names: Vec<&str> = got.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names.last(), Some(&"intent.completed"), "{}", a.text);
    assert!(names.contains(&"intent.delivered"));
    assert_eq!(got[0].1["seq"], 3);

    // resolve with reply_to: the terminal event and completion delivery
    let mut body = create_body();
    body["reply_to"] = json!("agent://acme/prod/sender");
    let id2 = call(app, "POST", "/v1/intents", Some(admin), Some(body), &[])
        .await
        .json()["intent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = call(
        app,
        "POST",
        &format!("/v1/intents/{id2}/resolve"),
        Some(&agent_key),
        Some(json!({"status": "COMPLETED", "result": {"x": 1}})),
        &[("idempotency-key", "r1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    assert_eq!(v["event"]["event_type"], "intent.completed");
    assert_eq!(v["completion_delivery"]["delivered"], true);
    let again = call(
        app,
        "POST",
        &format!("/v1/intents/{id2}/resolve"),
        Some(&agent_key),
        Some(json!({"status": "COMPLETED", "result": {"x": 1}})),
        &[("idempotency-key", "r1")],
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json()["event"], v["event"]);

    // a live stream wakes on a new event rather than waiting out its window
    let id3 = call(
        app,
        "POST",
        "/v1/intents",
        Some(admin),
        Some(create_body()),
        &[],
    )
    .await
    .json()["intent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stream_app = app.clone();
    let uri = format!("/v1/intents/{id3}/events/stream?since=2&wait_seconds=30");
    let admin_owned = admin.to_string();
    let started = std::time::Instant::now();
    let watcher =
        tokio::spawn(
            async move { call(&stream_app, "GET", &uri, Some(&admin_owned), None, &[]).await },
        );
    let a = call(
        app,
        "POST",
        &format!("/v1/intents/{id3}/resolve"),
        Some(admin),
        Some(json!({"status": "CANCELED", "reason": "test"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = watcher.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(frames(&a.text).last().unwrap().0, "intent.canceled");

    // revoke
    let keys = call(app, "GET", "/v1/admin/keys", Some(admin), None, &[])
        .await
        .json();
    let agent_id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "billing")
        .unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        call(
            app,
            "DELETE",
            &format!("/v1/admin/keys/{agent_id}"),
            Some(admin),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(app, "GET", "/v1/capabilities", Some(&agent_key), None, &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    n.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_on_a_bound_listener_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let n = node(ApiConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(intentd_http_api::serve(
        listener,
        n.app.clone(),
        intentd_http_api::ConnLimits::default(),
        None,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"ok\":true"), "{reply}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    n.cluster.shutdown().await;
}

/// A key for `name` with `role` ("client", "agent" with `address`), made through the API.
async fn make_key(
    app: &Router,
    admin: &str,
    name: &str,
    role: &str,
    address: Option<&str>,
) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(a) = address {
        body["address"] = json!(a);
    }
    let a = call(app, "POST", "/v1/admin/keys", Some(admin), Some(body), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()["key"].as_str().unwrap().to_string()
}

async fn create_to(app: &Router, key: &str, to: &str, extra: Value) -> String {
    let mut body = create_body();
    body["to_agent"] = json!(to);
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let a = call(app, "POST", "/v1/intents", Some(key), Some(body), &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()["intent_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_receive_and_ack() {
    let n = node(ApiConfig::default()).await;
    let app = &n.app;
    let admin = n.admin.as_str();

    // registration: validation, the SSRF check, agent keys only for themselves
    let put = |path: &'static str, body: Value, key: String| async move {
        call(app, "PUT", path, Some(&key), Some(body), &[]).await
    };
    let a = put(
        "/v1/agents/acme/prod/poller/binding",
        json!({"delivery_mode": "poll", "ack_timeout_seconds": 30, "display_name": "Poller"}),
        admin.into(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["agent"]["binding"]["delivery_mode"], "poll");
    assert_eq!(a.json()["agent"]["display_name"], "Poller");
    let a = put(
        "/v1/agents/acme/prod/hook/binding",
        json!({"delivery_mode": "http", "url": "http://127.0.0.1:9/in", "secret": "0123456789abcdef"}),
        admin.into(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let a = put(
        "/v1/agents/acme/prod/hook/binding",
        json!({"delivery_mode": "http", "url": "https://93.184.216.34/in", "secret": "0123456789abcdefWXYZ"}),
        admin.into(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["agent"]["binding"]["secret_hint"], "WXYZ");
    assert!(!a.text.contains("0123456789abcdef"));
    let a = put(
        "/v1/agents/acme/prod/poller/binding",
        json!({"delivery_mode": "fax"}),
        admin.into(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let other = make_key(app, admin, "other", "agent", Some("acme/prod/other")).await;
    let a = put(
        "/v1/agents/acme/prod/poller/binding",
        json!({"delivery_mode": "poll"}),
        other.clone(),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(
        app,
        "GET",
        "/v1/agents/acme/prod/poller",
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["agent"]["binding"]["delivery_mode"], "poll");

    // a registration's max_delivery_attempts is the default of new intents to the agent
    let a = put(
        "/v1/agents/acme/prod/limited/binding",
        json!({"delivery_mode": "poll", "max_delivery_attempts": 2}),
        admin.into(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let limited = create_to(app, admin, "agent://acme/prod/limited", json!({})).await;
    let a = call(
        app,
        "GET",
        &format!("/v1/intents/{limited}"),
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["intent"]["max_delivery_attempts"], 2);

    // receive leases at once when something waits, then nothing is left
    let poller = make_key(app, admin, "poller", "agent", Some("acme/prod/poller")).await;
    let id = create_to(app, admin, "agent://acme/prod/poller", json!({})).await;
    let receive = "/v1/agents/acme/prod/poller/intents/receive";
    let a = call(
        app,
        "POST",
        receive,
        Some(&poller),
        Some(json!({"max": 5})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let got = a.json()["deliveries"].clone();
    assert_eq!(got.as_array().unwrap().len(), 1, "{}", a.text);
    assert_eq!(got[0]["intent_id"], json!(id));
    assert_eq!(got[0]["status"], "DELIVERED");
    assert!(got[0]["lease_expires_at"].is_string());
    let a = call(app, "POST", receive, Some(&poller), Some(json!({})), &[]).await;
    assert_eq!(a.json()["deliveries"], json!([]));
    let a = call(app, "POST", receive, Some(&other), Some(json!({})), &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(
        app,
        "POST",
        "/v1/agents/acme/prod/hook/intents/receive",
        Some(admin),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT);

    // a long poll wakes when an intent arrives
    let waiter = {
        let app = app.clone();
        let poller = poller.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let a = call(
                &app,
                "POST",
                receive,
                Some(&poller),
                Some(json!({"wait_seconds": 20})),
                &[],
            )
            .await;
            (a.json(), started.elapsed())
        })
    };
    // Gives the waiter time to start waiting; the assertions hold in either order (an
    // intent already there is leased at once), so this is no synchronisation.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = create_to(app, admin, "agent://acme/prod/poller", json!({})).await;
    let (answer, took) = waiter.await.unwrap();
    assert_eq!(
        answer["deliveries"][0]["intent_id"],
        json!(second),
        "{answer}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    // ack: the attempt must be the current one
    let ack = format!("/v1/intents/{id}/ack");
    let a = call(
        app,
        "POST",
        &ack,
        Some(&poller),
        Some(json!({"delivery_attempt": 2})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    let a = call(
        app,
        "POST",
        &ack,
        Some(&other),
        Some(json!({"delivery_attempt": 1})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(
        app,
        "POST",
        &ack,
        Some(&poller),
        Some(json!({"delivery_attempt": 1})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["intent"]["status"], "ACKNOWLEDGED");

    // a dead letter (the engine would expire the lease; here the test proposes it) and replay
    let dead = create_to(
        app,
        admin,
        "agent://acme/prod/poller",
        json!({"max_delivery_attempts": 1}),
    )
    .await;
    let a = call(app, "POST", receive, Some(&poller), Some(json!({})), &[]).await;
    assert_eq!(
        a.json()["deliveries"][0]["intent_id"],
        json!(dead),
        "{}",
        a.text
    );
    let dead_id: uuid::Uuid = dead.parse().unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    n.cluster
        .write(Command::Intent {
            command: intentd_lifecycle::IntentCommand::ExpireLease {
                intent_id: dead_id,
                attempt: 1,
                retry_at: later,
                at: later,
            },
            idempotency: None,
        })
        .await
        .unwrap();
    let a = call(
        app,
        "GET",
        "/v1/deliveries?status=dead_lettered",
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let listed = a.json()["deliveries"].clone();
    assert_eq!(listed[0]["delivery_id"], json!(dead), "{}", a.text);
    assert_eq!(listed[0]["status"], "dead_lettered");
    let a = call(
        app,
        "GET",
        "/v1/deliveries?status=pending",
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = call(
        app,
        "GET",
        &format!("/v1/deliveries/{dead}"),
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["delivery"]["intent"]["status"], "FAILED");
    assert!(!a.json()["delivery"]["attempts"]
        .as_array()
        .unwrap()
        .is_empty());
    let replay = format!("/v1/deliveries/{dead}/replay");
    let a = call(
        app,
        "POST",
        &replay,
        Some(admin),
        None,
        &[("idempotency-key", "r1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let new_id = a.json()["intent_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, dead);
    assert_eq!(a.json()["delivery"]["replay_of_delivery_id"], json!(dead));
    let again = call(
        app,
        "POST",
        &replay,
        Some(admin),
        None,
        &[("idempotency-key", "r1")],
    )
    .await;
    assert_eq!(again.json()["intent_id"], json!(new_id), "{}", again.text);
    let a = call(
        app,
        "GET",
        &format!("/v1/intents/{new_id}"),
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["intent"]["status"], "SUBMITTED");

    // metrics: no key needed, requests counted by route
    let a = call(app, "GET", "/metrics", None, None, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.text
            .contains("route=\"/v1/intents/{id}/ack\",status=\"409\""),
        "{}",
        a.text
    );
    n.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_approvals_webhooks_and_scenarios() {
    let n = node(ApiConfig::default()).await;
    let app = &n.app;
    let admin = n.admin.as_str();
    let lead = make_key(app, admin, "lead", "agent", Some("acme/people/lead")).await;
    let a = call(
        app,
        "PUT",
        "/v1/agents/acme/people/lead/binding",
        Some(&lead),
        Some(json!({"delivery_mode": "inbox"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let task = json!({"human_task": {"title": "Ship it?", "allowed_outcomes": ["approved", "rejected"],
                                      "required_comment": true}});
    let id = create_to(app, admin, "agent://acme/people/lead", task.clone()).await;

    let a = call(app, "GET", "/v1/inbox", Some(&lead), None, &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let threads = a.json()["threads"].clone();
    assert_eq!(threads.as_array().unwrap().len(), 1, "{}", a.text);
    assert_eq!(threads[0]["thread_id"], json!(id));
    assert_eq!(threads[0]["status"], "pending");
    assert_eq!(threads[0]["owner_agent"], "agent://acme/people/lead");
    let a = call(
        app,
        "GET",
        "/v1/inbox?owner_agent=acme/people/other",
        Some(&lead),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let thread = format!("/v1/inbox/{id}");
    let a = call(app, "GET", &thread, Some(admin), None, &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(!a.json()["thread"]["timeline"]
        .as_array()
        .unwrap()
        .is_empty());

    let a = call(
        app,
        "POST",
        &format!("{thread}/reply"),
        Some(&lead),
        Some(json!({"message": "looking"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let message_id = a.json()["message_id"].clone();
    let a = call(app, "GET", "/v1/inbox/changes", Some(&lead), None, &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let cursor = a.json()["next_cursor"].as_str().unwrap().to_string();
    assert!(!a.json()["changes"].as_array().unwrap().is_empty());
    let a = call(
        app,
        "GET",
        &format!("/v1/inbox/changes?cursor={cursor}"),
        Some(&lead),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["changes"], json!([]), "{}", a.text);
    let a = call(
        app,
        "POST",
        &format!("{thread}/messages/delete"),
        Some(&lead),
        Some(json!({"mode": "self", "message_ids": [message_id]})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["deleted_count"], 1);

    // the task's rules apply: a comment is required
    let a = call(
        app,
        "POST",
        &format!("{thread}/approve"),
        Some(&lead),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let a = call(
        app,
        "POST",
        &format!("{thread}/approve"),
        Some(&lead),
        Some(json!({"comment": "go"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["intent"]["status"], "COMPLETED");
    assert_eq!(a.json()["intent"]["result"]["outcome"], "approved");
    assert_eq!(a.json()["thread"]["status"], "done");

    // the approvals view of the same thing
    let second = create_to(app, admin, "agent://acme/people/lead", task).await;
    let decision = format!("/v1/approvals/{second}/decision");
    let a = call(
        app,
        "POST",
        &decision,
        Some(&lead),
        Some(json!({"decision": "reject", "comment": "no"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["approval"]["decision"], "reject");
    let a = call(
        app,
        "GET",
        &format!("/v1/intents/{second}"),
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["intent"]["result"]["outcome"], "rejected");
    let a = call(
        app,
        "POST",
        &decision,
        Some(&lead),
        Some(json!({"decision": "approve", "comment": "x"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);

    // webhooks: subscribe, publish, replay, revoke
    let a = call(
        app,
        "POST",
        "/v1/webhooks/subscriptions",
        Some(&lead),
        Some(json!({"callback_url": "http://10.0.0.1/hook", "event_types": ["intent.*"]})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let a = call(
        app,
        "POST",
        "/v1/webhooks/subscriptions",
        Some(&lead),
        Some(json!({"callback_url": "https://93.184.216.34/hook",
                    "event_types": ["inbox.thread_created", "intent.*"],
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let sub = a.json()["subscription"].clone();
    assert_eq!(sub["secret_hint"], "LaSw");
    let event =
        json!({"event_type": "inbox.thread_created", "source": "tests", "payload": {"a": 1}});
    let a = call(
        app,
        "POST",
        "/v1/webhooks/events",
        Some(&lead),
        Some(event.clone()),
        &[("idempotency-key", "e1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["queued_deliveries"], 1, "{}", a.text);
    let event_id = a.json()["event_id"].as_str().unwrap().to_string();
    let a = call(
        app,
        "POST",
        "/v1/webhooks/events",
        Some(&lead),
        Some(event),
        &[("idempotency-key", "e1")],
    )
    .await;
    assert_eq!(a.json()["event_id"], json!(event_id));
    let a = call(
        app,
        "POST",
        &format!("/v1/webhooks/events/{event_id}/replay"),
        Some(&lead),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["pending"], 1);
    let sub_path = format!(
        "/v1/webhooks/subscriptions/{}",
        sub["subscription_id"].as_str().unwrap()
    );
    let a = call(app, "DELETE", &sub_path, Some(&lead), None, &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.json()["revoked_at"].is_string());
    let a = call(
        app,
        "GET",
        "/v1/webhooks/subscriptions",
        Some(&lead),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["subscriptions"], json!([]));

    // scenarios: validate says what apply does; apply registers and submits
    let bundle = json!({
        "scenario_id": "ops.rollout",
        "agents": [{"role": "deployer", "address": "agent://acme/prod/deployer", "delivery_mode": "poll"}],
        "intent": {"type": "ops.rollout.v1", "payload": {"v": 2}},
    });
    let a = call(
        app,
        "POST",
        "/v1/scenarios/validate",
        Some(admin),
        Some(bundle.clone()),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["valid"], true, "{}", a.text);
    let a = call(
        app,
        "GET",
        "/v1/agents/acme/prod/deployer",
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::NOT_FOUND,
        "validate registers nothing"
    );
    let a = call(
        app,
        "POST",
        "/v1/scenarios/validate",
        Some(admin),
        Some(json!({"scenario_id": "x.y", "intent": {"type": "Bad"}})),
        &[],
    )
    .await;
    assert_eq!(a.json()["valid"], false, "{}", a.text);
    let a = call(
        app,
        "POST",
        "/v1/scenarios/apply",
        Some(admin),
        Some(bundle.clone()),
        &[("idempotency-key", "s1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["agents"][0]["created"], true);
    let intent_id = a.json()["intent_id"].clone();
    let a = call(
        app,
        "GET",
        "/v1/agents/acme/prod/deployer",
        Some(admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a.json()["agent"]["binding"]["delivery_mode"], "poll");
    let a = call(
        app,
        "POST",
        "/v1/scenarios/apply",
        Some(admin),
        Some(bundle),
        &[("idempotency-key", "s1")],
    )
    .await;
    assert_eq!(
        (
            a.json()["intent_id"].clone(),
            a.json()["idempotent"].clone()
        ),
        (intent_id, json!(true))
    );
    let a = call(
        app,
        "POST",
        "/v1/scenarios/apply",
        Some(&lead),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    n.cluster.shutdown().await;
}
