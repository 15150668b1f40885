//! A real HTTP endpoint on 127.0.0.1 for the delivery engine's pushes (http binding and
//! webhooks). It records every request, checks its Standard Webhooks signature
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`) with an
//! HMAC written here from the definition, and answers as its current [`Mode`] says; tests
//! switch the mode (a receiver that is down, then recovers) and wait on what it received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A failure status, with `Retry-After: secs` when set.
    Fail {
        status: u16,
        retry_after: Option<u64>,
    },
    /// 200 with this JSON body, or 204 without one.
    Succeed { body: Option<Value> },
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Push {
    /// 1-based arrival number.
    pub n: usize,
    pub at: Instant,
    pub unix_at: i64,
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    /// The body as JSON (`Null` if it is not JSON).
    pub json: Value,
    /// `None` when the signature checks out, else why not.
    pub bad_signature: Option<String>,
    /// The status this request was answered with.
    pub answered: u16,
}

impl Push {
    /// The headers a Standard Webhooks push carries: JSON content, a timestamp close to when
    /// it arrived, and a `v1,` signature.
    #[track_caller]
    pub fn assert_well_formed(&self) {
        assert!(
            self.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "push #{} content-type {:?}",
            self.n,
            self.content_type
        );
        let ts: i64 = self
            .webhook_timestamp
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "push #{} webhook-timestamp {:?}",
                    self.n, self.webhook_timestamp
                )
            });
        assert!(
            (ts - self.unix_at).abs() <= 60,
            "push #{} signed at {ts}, arrived at {}",
            self.n,
            self.unix_at
        );
        assert!(
            self.webhook_signature
                .as_deref()
                .is_some_and(|s| s.starts_with("v1,")),
            "push #{} webhook-signature {:?}",
            self.n,
            self.webhook_signature
        );
    }
}

struct Inner {
    key: Vec<u8>,
    mode: Mode,
    pushes: Vec<Push>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// The signing key a Standard Webhooks secret stands for: `whsec_<base64>` is decoded,
/// anything else is used as its UTF-8 bytes (docs/delivery-design.md).
pub fn secret_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("whsec_ secret is base64"),
        None => secret.as_bytes().to_vec(),
    }
}

/// A fresh `whsec_` secret (24 random bytes).
pub fn new_secret() -> String {
    let bytes: Vec<u8> = (0..24).map(|_| rand::random::<u8>()).collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// HMAC-SHA256 (RFC 2104) over SHA-256's 64-byte blocks.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Checks one request's Standard Webhooks headers against `body`: the signature list must
/// hold a `v1,` signature equal to HMAC(key, "{id}.{timestamp}.{body}"), and the timestamp
/// must be within 5 minutes of now.
pub fn verify(key: &[u8], headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<(), String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| format!("missing {name}"))
    };
    let id = get("webhook-id")?;
    let ts = get("webhook-timestamp")?;
    let sigs = get("webhook-signature")?;
    let ts_n: i64 = ts
        .parse()
        .map_err(|_| format!("webhook-timestamp {ts:?} is not unix seconds"))?;
    if (ts_n - now_unix).abs() > 300 {
        return Err(format!(
            "webhook-timestamp {ts_n} is {}s off",
            ts_n - now_unix
        ));
    }
    let mut signed = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(ts.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &signed));
    let matched = sigs
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .any(|(version, sig)| version == "v1" && sig == expected);
    if matched {
        Ok(())
    } else {
        Err(format!("no v1 signature matches in {sigs:?}"))
    }
}

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let now_unix = chrono::Utc::now().timestamp();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (mode, status) = {
        let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        let bad_signature = verify(&inner.key, &headers, &body, now_unix).err();
        let mode = if bad_signature.is_some() {
            // As a real receiver would: refuse what it cannot authenticate.
            Mode::Fail {
                status: 401,
                retry_after: None,
            }
        } else {
            inner.mode.clone()
        };
        let status = match &mode {
            Mode::Fail { status, .. } => *status,
            Mode::Succeed { body: Some(_) } => 200,
            Mode::Succeed { body: None } => 204,
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let push = Push {
            n: inner.pushes.len() + 1,
            at: Instant::now(),
            unix_at: now_unix,
            webhook_id: header("webhook-id"),
            webhook_timestamp: header("webhook-timestamp"),
            webhook_signature: header("webhook-signature"),
            content_type: header("content-type"),
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            body: text,
            bad_signature,
            answered: status,
        };
        inner.pushes.push(push);
        (mode, status)
    };
    shared.notify.notify_waiters();
    let code = StatusCode::from_u16(status).expect("valid status");
    match mode {
        Mode::Fail { retry_after, .. } => {
            let mut resp = (code, r#"{"error":"receiver down"}"#).into_response();
            if let Some(secs) = retry_after {
                resp.headers_mut().insert(
                    "retry-after",
                    secs.to_string().parse().expect("header value"),
                );
            }
            resp
        }
        Mode::Succeed { body: Some(v) } => (code, axum::Json(v)).into_response(),
        Mode::Succeed { body: None } => code.into_response(),
    }
}

impl Receiver {
    /// Starts a receiver on a free 127.0.0.1 port that verifies with `secret`.
    pub async fn start(secret: &str, mode: Mode) -> Receiver {
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                key: secret_key(secret),
                mode,
                pushes: Vec::new(),
            })),
            notify: Arc::new(Notify::new()),
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Verifies with `secret` from now on (one the server generated after the URL was known).
    pub fn set_secret(&self, secret: &str) {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .key = secret_key(secret);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mode = mode;
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pushes
            .clone()
    }

    /// The pushes of one intent (`webhook-id` = `<intent_id>:<attempt>`).
    pub fn pushes_for(&self, intent_id: &str) -> Vec<Push> {
        let prefix = format!("{intent_id}:");
        self.pushes()
            .into_iter()
            .filter(|p| {
                p.webhook_id
                    .as_deref()
                    .is_some_and(|w| w.starts_with(&prefix))
            })
            .collect()
    }

    /// Waits until `pred` holds for the pushes so far; panics with all of them after `limit`.
    pub async fn wait(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[Push]) -> bool,
    ) -> Vec<Push> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.shared.notify.notified();
            let pushes = self.pushes();
            if pred(&pushes) {
                return pushes;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "receiver: timed out after {limit:?} waiting for {what}; got {}",
                    describe(&self.pushes())
                );
            }
        }
    }

    /// Fails the test if any request carried a signature that does not verify.
    #[track_caller]
    pub fn assert_all_verified(&self) {
        let pushes = self.pushes();
        assert!(
            pushes.iter().all(|p| p.bad_signature.is_none()),
            "pushes failing Standard Webhooks verification: {}",
            describe(&pushes)
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn describe(pushes: &[Push]) -> String {
    let lines: Vec<String> = pushes
        .iter()
        .map(|p| {
            format!(
                "#{} id={:?} answered={} bad_signature={:?} body={}",
                p.n,
                p.webhook_id,
                p.answered,
                p.bad_signature,
                p.body.chars().take(300).collect::<String>()
            )
        })
        .collect();
    format!("[\n  {}\n]", lines.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_the_right_key_only() {
        let key = secret_key(&new_secret());
        let body = br#"{"a":1}"#;
        let now = chrono::Utc::now().timestamp();
        let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
            &key,
            format!("m1.{now}.{{\"a\":1}}").as_bytes(),
        ));
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "m1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert(
            "webhook-signature",
            format!("v1,bogus v1,{sig}").parse().unwrap(),
        );
        assert_eq!(verify(&key, &headers, body, now), Ok(()));
        assert!(verify(b"other key", &headers, body, now).is_err());
        assert!(verify(&key, &headers, br#"{"a":2}"#, now).is_err());
        assert!(verify(&key, &headers, body, now + 600).is_err());
    }
}
