//! Drives the whole router in process against a real one-node cluster (Raft, WAL, sled), to
//! check routing, extractors and the SSE loops together. The end-to-end suite against the
//! binary and the official SDK lives in the workspace's `tests/`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use intentd_consensus::{Cluster, NodeConfig, RaftTimings};
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
    let dir = tempfile::tempdir().unwrap();
    let (log, sm) = intentd_storage::open(dir.path(), Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config_node = NodeConfig {
        node_id: 1,
        peers: BTreeMap::from([(1, addr)]),
        timings: RaftTimings::default(),
        request_timeout: Duration::from_secs(5),
        join: false,
    };
    let cluster = intentd_consensus::start(config_node, log, sm, listener, std::future::pending())
        .await
        .unwrap();
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
        app: app(cluster.clone(), config),
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
