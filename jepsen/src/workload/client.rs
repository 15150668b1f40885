//! HTTP plumbing for the workloads: one call with its outcome classified the
//! way a history needs it, and an SSE frame reader.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::history::History;

/// How a request ended, for the history.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 2xx with its JSON body.
    Ok(Value),
    /// Certainly not applied: a 4xx answer, or the connection was never made.
    Fail(Value),
    /// May or may not have been applied: timeout, reset after sending, 5xx.
    Info(Value),
}

impl Outcome {
    /// The HTTP status, if there was an answer.
    pub fn http(&self) -> Option<u64> {
        match self {
            Outcome::Ok(_) => Some(200),
            Outcome::Fail(v) | Outcome::Info(v) => v.get("http").and_then(Value::as_u64),
        }
    }
}

/// A small HTTP client bound to the admin key.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    key: String,
}

impl Api {
    /// A client with short connect timeouts (a partitioned node must not
    /// hold a worker for long).
    pub fn new(key: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Api {
            http,
            key: key.to_string(),
        })
    }

    /// The inner reqwest client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The admin key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// One request with a total timeout; the body of a 2xx is parsed as JSON
    /// (an empty or non-JSON body becomes `null`).
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Outcome {
        let mut rb = self
            .http
            .request(method, url)
            .bearer_auth(&self.key)
            .timeout(timeout);
        for (k, v) in headers {
            rb = rb.header(*k, v);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        match rb.send().await {
            Err(e) => classify_error(&e),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = match resp.text().await {
                    Ok(t) => t,
                    Err(e) => {
                        // The answer was cut off: for a 2xx the effect happened.
                        return if (200..300).contains(&status) {
                            Outcome::Ok(Value::Null)
                        } else {
                            Outcome::Info(json!({"http": status, "error": e.to_string()}))
                        };
                    }
                };
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if (200..300).contains(&status) {
                    Outcome::Ok(body)
                } else {
                    let code = body.pointer("/error/code").cloned().unwrap_or(Value::Null);
                    let v = json!({"http": status, "code": code});
                    if status >= 500 || status == 408 {
                        Outcome::Info(v)
                    } else {
                        Outcome::Fail(v)
                    }
                }
            }
        }
    }
}

/// A transport error: never connected is a definite failure, anything later
/// is indeterminate.
pub fn classify_error(e: &reqwest::Error) -> Outcome {
    let msg = e.to_string();
    if e.is_connect() {
        Outcome::Fail(json!({"error": "connect", "detail": msg}))
    } else if e.is_timeout() {
        Outcome::Info(json!({"error": "timeout", "detail": msg}))
    } else {
        Outcome::Info(json!({"error": "transport", "detail": msg}))
    }
}

/// Records an outcome as the completion of `f` on `process`.
pub fn record(h: &History, process: &str, f: &str, node: &str, out: &Outcome, value: Value) {
    match out {
        Outcome::Ok(_) => h.ok(process, f, value, Some(node)),
        Outcome::Fail(_) => h.fail(process, f, value, Some(node)),
        Outcome::Info(_) => h.info(process, f, value, Some(node)),
    };
}

/// Merges two JSON objects (b's fields win).
pub fn merge(a: Value, b: &Value) -> Value {
    let mut a = match a {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    if let Value::Object(m) = b {
        for (k, v) in m {
            a.insert(k.clone(), v.clone());
        }
    }
    Value::Object(a)
}

/// One SSE frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub event: String,
    pub id: Option<u64>,
    pub data: Value,
}

/// Reads SSE frames from a streaming response, calling `on_frame` for each;
/// stops when it returns false, the server closes, or no bytes arrive for
/// `idle`. Returns why it stopped.
pub async fn read_sse<F>(resp: reqwest::Response, idle: Duration, mut on_frame: F) -> &'static str
where
    F: FnMut(Frame) -> bool,
{
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut event = String::new();
    let mut id: Option<u64> = None;
    let mut data: Vec<String> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return "idle",
            Ok(None) => return "closed",
            Ok(Some(Err(_))) => return "error",
            Ok(Some(Ok(c))) => c,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() || !event.is_empty() {
                    let joined = data.join("\n");
                    let frame = Frame {
                        event: std::mem::take(&mut event),
                        id: id.take(),
                        data: serde_json::from_str(&joined).unwrap_or(Value::String(joined)),
                    };
                    data.clear();
                    if !on_frame(frame) {
                        return "stopped";
                    }
                }
            } else if line.starts_with(':') {
                // keep-alive comment
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
    }
}
