//! The HTTP-push receiver: an axum server of the harness, in the root
//! namespace at `ctx.receiver_addr`, that the engine POSTs deliveries to.
//! During the fault phase it is at times down (listener closed), slow, or
//! answers 5xx; during the drain it is up and completes everything.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;
use serde_json::{json, Value};

use super::consumers::{act, key_of};
use super::{nap, Shared};

async fn push(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = v
        .get("intent_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let attempt = v.get("delivery_attempt").and_then(Value::as_u64);
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let key = key_of(&v).map(str::to_string);
    let agent = sh.agents.http.clone();
    let roll: f64 = if sh.is_draining() {
        0.0
    } else {
        sh.rand(|r| r.gen())
    };
    let reply = if roll < 0.4 {
        "complete"
    } else if roll < 0.6 {
        "accept"
    } else if roll < 0.75 {
        "503"
    } else if roll < 0.85 {
        "500"
    } else {
        "slow"
    };
    sh.history().ok(
        "receiver",
        "push",
        json!({"agent": agent, "intent_id": id, "delivery_attempt": attempt, "key": key,
               "webhook_id": webhook_id, "reply": reply}),
        None,
    );
    if !id.is_empty() {
        sh.learn(&id, key.as_deref(), agent.as_deref());
    }
    match reply {
        "complete" => (
            StatusCode::OK,
            axum::Json(json!({"status": "COMPLETED", "result": {"by": "push"}})),
        )
            .into_response(),
        "accept" => {
            // 2xx without a verdict: acknowledged; a consumer completes it later.
            if let Some(a) = attempt.filter(|_| !id.is_empty()) {
                let sh2 = sh.clone();
                tokio::spawn(async move { act(sh2, id, a).await });
            }
            StatusCode::OK.into_response()
        }
        "503" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "busy",
        )
            .into_response(),
        "500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        _ => {
            let d = sh.rand(|r| r.gen_range(2000..15000));
            tokio::time::sleep(Duration::from_millis(d)).await;
            (
                StatusCode::OK,
                axum::Json(json!({"status": "COMPLETED", "result": {"by": "slow-push"}})),
            )
                .into_response()
        }
    }
}

/// Serves pushes until the workload is done, going down now and then.
pub async fn serve(sh: Arc<Shared>) {
    let app = Router::new().fallback(push).with_state(sh.clone());
    let h = sh.history().clone();
    while !sh.is_done() {
        let listener = match tokio::net::TcpListener::bind(sh.ctx.receiver_addr).await {
            Ok(l) => l,
            Err(e) => {
                h.info(
                    "receiver",
                    "receiver-bind-error",
                    json!({"error": e.to_string()}),
                    None,
                );
                nap(&sh, Duration::from_secs(1)).await;
                continue;
            }
        };
        h.ok(
            "receiver",
            "receiver-up",
            json!({"addr": sh.ctx.receiver_addr.to_string()}),
            None,
        );
        let app2 = app.clone();
        let server = tokio::spawn(async move { axum::serve(listener, app2).await });
        loop {
            let up_for = sh.rand(|r| r.gen_range(8..25));
            nap(&sh, Duration::from_secs(up_for)).await;
            if sh.is_done() || !sh.is_draining() {
                break;
            }
        }
        server.abort();
        let _ = server.await;
        if sh.is_done() {
            break;
        }
        h.ok("receiver", "receiver-down", json!({}), None);
        let down_for = sh.rand(|r| r.gen_range(2..7));
        nap(&sh, Duration::from_secs(down_for)).await;
    }
}
