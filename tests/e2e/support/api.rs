//! A thin HTTP client for the v1 API that returns status, headers and parsed body together,
//! so that tests assert on all three.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

/// One answer: the status, the headers and the body both as text and as JSON
/// (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a success status and `"ok": true`.
    #[track_caller]
    pub fn assert_ok(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "expected {status}, got {}: {}",
            self.status, self.text
        );
        assert_eq!(
            self.body["ok"],
            json!(true),
            "success body without ok:true: {}",
            self.text
        );
        &self.body
    }

    /// Asserts the API's error shape: the status, JSON content type,
    /// `{"ok": false, "error": {"code", "message", "retryable"}}`, and the code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &str {
        assert_eq!(
            self.status, status,
            "expected {status} {code}, got {}: {}",
            self.status, self.text
        );
        let ctype = self.header("content-type").unwrap_or("");
        assert!(
            ctype.starts_with("application/json"),
            "error with content-type {ctype:?}: {:?}",
            self.text
        );
        assert_eq!(self.body["ok"], json!(false), "error body: {}", self.text);
        let err = &self.body["error"];
        assert_eq!(err["code"], json!(code), "error body: {}", self.text);
        assert!(
            err["retryable"].is_boolean(),
            "error.retryable not bool: {}",
            self.text
        );
        let message = err["message"].as_str().expect("error.message is a string");
        assert!(!message.is_empty(), "empty error message: {}", self.text);
        message
    }
}

/// A client bound to one server and (optionally) one API key.
#[derive(Clone)]
pub struct Api {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

/// A client builder that also trusts the CA in `ca_pem` (the cluster CA of a TLS cluster).
pub fn client_trusting(ca_pem: Option<&[u8]>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match ca_pem {
        Some(pem) => {
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem).expect("ca pem"))
        }
        None => builder,
    }
}

impl Api {
    pub fn new(base: &str, key: Option<&str>) -> Api {
        Api::trusting(base, key, None)
    }

    /// A client of an HTTPS server whose certificate `ca_pem` signed.
    pub fn trusting(base: &str, key: Option<&str>, ca_pem: Option<&[u8]>) -> Api {
        let http = client_trusting(ca_pem)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Api {
            base: base.trim_end_matches('/').to_string(),
            key: key.map(str::to_string),
            http,
        }
    }

    /// The same server with another key.
    pub fn with_key(&self, key: &str) -> Api {
        Api {
            key: Some(key.to_string()),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request builder with the key in `x-api-key` already set.
    pub fn builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.key {
            Some(k) => rb.header("x-api-key", k),
            None => rb,
        }
    }

    pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
        let resp = rb.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("read body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        Api::send(self.builder(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        Api::send(self.builder(Method::POST, path).json(body)).await
    }

    /// POST of raw bytes as `application/json`, for malformed and oversized bodies.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Resp {
        Api::send(
            self.builder(Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        Api::send(self.builder(Method::PUT, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        Api::send(self.builder(Method::DELETE, path)).await
    }

    /// `POST /v1/intents`, optionally with an `Idempotency-Key`.
    pub async fn create(&self, body: &Value, idempotency_key: Option<&str>) -> Resp {
        let mut rb = self.builder(Method::POST, "/v1/intents").json(body);
        if let Some(k) = idempotency_key {
            rb = rb.header("Idempotency-Key", k);
        }
        Api::send(rb).await
    }

    /// Creates an intent, asserting success, and returns its id.
    pub async fn create_ok(&self, body: &Value) -> String {
        let resp = self.create(body, None).await;
        resp.assert_ok(200);
        resp.body["intent_id"]
            .as_str()
            .expect("intent_id is a string")
            .to_string()
    }

    /// `GET /v1/intents/{id}`, asserting success; returns the `intent` object.
    pub async fn intent(&self, id: &str) -> Value {
        let resp = self.get(&format!("/v1/intents/{id}")).await;
        resp.assert_ok(200);
        resp.body["intent"].clone()
    }

    /// `GET /v1/intents/{id}/events`, asserting success; returns the events.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let resp = self.get(&format!("/v1/intents/{id}/events")).await;
        resp.assert_ok(200);
        resp.body["events"]
            .as_array()
            .expect("events is an array")
            .clone()
    }

    /// Creates an API key through the admin endpoint; returns `(key, key_id)`.
    pub async fn create_key(
        &self,
        name: &str,
        role: &str,
        address: Option<&str>,
    ) -> (String, String) {
        let mut body = json!({ "name": name, "role": role });
        if let Some(a) = address {
            body["address"] = json!(a);
        }
        let resp = self.post("/v1/admin/keys", &body).await;
        resp.assert_ok(200);
        let key = resp.body["key"]
            .as_str()
            .expect("key is a string")
            .to_string();
        let id = resp.body["key_id"]
            .as_str()
            .expect("key_id is a string")
            .to_string();
        (key, id)
    }
}

/// The receiving agent used by most tests.
pub const PAYMENTS: &str = "agent://acme/prod/payments";

/// A valid create body for `to_agent` with a fresh correlation id.
pub fn intent_body(to_agent: &str) -> Value {
    json!({
        "intent_type": "payment.charge.v1",
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "to_agent": to_agent,
        "payload": { "amount_cents": 1250, "currency": "EUR", "order": "ord-42" },
    })
}

/// The address as the agent-stream path carries it (the SDK strips `agent://`).
pub fn address_path(address: &str) -> &str {
    address.strip_prefix("agent://").unwrap_or(address)
}

/// Asserts `events` are numbered 1..=n in order, all for `intent_id`, and returns their
/// `event_type`s.
#[track_caller]
pub fn assert_gapless(intent_id: &str, events: &[Value]) -> Vec<String> {
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(
            ev["seq"],
            json!(i as u64 + 1),
            "seq gap or disorder in {events:#?}"
        );
        assert_eq!(
            ev["intent_id"],
            json!(intent_id),
            "foreign event in {events:#?}"
        );
    }
    events
        .iter()
        .map(|e| {
            e["event_type"]
                .as_str()
                .expect("event_type string")
                .to_string()
        })
        .collect()
}
