//! One signed HTTP push and what its answer means.
//!
//! The client never follows redirects (a redirect could point past the SSRF guard), ignores
//! proxy variables (the guard must judge the receiver, not a proxy), resolves names through
//! [`GuardedResolver`], and reads at most [`MAX_RESPONSE_BYTES`] of an answer, so a hostile
//! receiver can neither steer the request nor exhaust the leader's memory.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::backoff::parse_retry_after;
use crate::signing;
use crate::ssrf::{check_url, AllowList, GuardedResolver, SsrfError};

/// Only the answer's `status` / `result` / `error` matter; anything longer is cut off.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A 2xx answer may settle the intent at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Completed(Value),
    Failed(Value),
}

/// How one push ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// A 2xx answer; `settled` when its JSON body said COMPLETED or FAILED.
    Accepted {
        settled: Option<Settled>,
    },
    Failed(PushFailure),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PushFailure {
    /// Recorded in the event details and the webhook delivery's `last_error`.
    pub error: String,
    /// The receiver's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Counts against the endpoint's circuit breaker: the receiver looks down or overloaded
    /// (connect failure, timeout, 5xx, 408, 429), rather than answering "no" to this message.
    pub unhealthy: bool,
    /// Retrying cannot help (the URL or the address it resolved to is refused by the SSRF
    /// guard, or the secret is unusable): give up at once. A name that did not resolve is
    /// not permanent: DNS may answer on the next attempt.
    pub permanent: bool,
}

impl PushFailure {
    fn permanent(error: String) -> Self {
        PushFailure {
            error,
            retry_after: None,
            unhealthy: false,
            permanent: true,
        }
    }
}

/// One message to push.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    /// `webhook-id`: the same for every retry of one message, so receivers can dedupe.
    pub id: &'a str,
    pub body: Vec<u8>,
}

/// The HTTP client of the engine, with the guard built in.
#[derive(Debug, Clone)]
pub struct Pusher {
    client: reqwest::Client,
    allow: Arc<AllowList>,
}

impl Pusher {
    /// `extra_roots_pem` adds trusted certificates (PEM, one or more) to the bundled public
    /// roots for HTTPS receivers behind a private CA.
    pub fn new(
        allow: AllowList,
        timeout: Duration,
        extra_roots_pem: Option<&[u8]>,
    ) -> Result<Self, reqwest::Error> {
        let allow = Arc::new(allow);
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = extra_roots_pem {
            for root in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(root);
            }
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(allow.clone())))
            .user_agent(concat!("intentd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Pusher { client, allow })
    }

    /// POSTs `message` signed at `timestamp` (unix seconds) and classifies the answer.
    pub async fn push(&self, message: Message<'_>, timestamp: i64) -> PushOutcome {
        if let Err(e) = check_url(message.url, &self.allow) {
            return PushOutcome::Failed(PushFailure::permanent(e.to_string()));
        }
        let headers = match signing::headers(message.secret, message.id, timestamp, &message.body) {
            Ok(headers) => headers,
            Err(e) => return PushOutcome::Failed(PushFailure::permanent(e.to_string())),
        };
        let mut request = self
            .client
            .post(message.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = match request.body(message.body).send().await {
            Ok(response) => response,
            Err(e) => return PushOutcome::Failed(transport_failure(&e)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let body = read_limited(response).await;
        if status.is_success() {
            return PushOutcome::Accepted {
                settled: body.as_deref().and_then(settled),
            };
        }
        let code = status.as_u16();
        let mut error = format!("HTTP {code}");
        if let Some(text) = body
            .as_deref()
            .map(String::from_utf8_lossy)
            .filter(|t| !t.trim().is_empty())
        {
            let snippet: String = text.trim().chars().take(200).collect();
            error.push_str(": ");
            error.push_str(&snippet);
        }
        PushOutcome::Failed(PushFailure {
            error,
            retry_after,
            unhealthy: status.is_server_error() || code == 408 || code == 429,
            permanent: false,
        })
    }
}

/// Reads the answer up to the limit; a body that fails midway is treated as absent.
async fn read_limited(mut response: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    Some(body)
}

/// A 2xx JSON body `{"status": "COMPLETED", "result": ...}` or `{"status": "FAILED",
/// "error": ...}` settles the intent in the same round trip; anything else only acknowledges.
pub fn settled(body: &[u8]) -> Option<Settled> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let status = value.get("status")?.as_str()?.to_ascii_uppercase();
    let field = |name: &str| {
        value
            .get(name)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()))
    };
    match status.as_str() {
        "COMPLETED" => Some(Settled::Completed(field("result"))),
        "FAILED" => Some(Settled::Failed(field("error"))),
        _ => None,
    }
}

/// A push that got no HTTP answer: refused, timed out, stopped by the guard at resolve, or
/// its name did not resolve (an unreachable receiver, like a refused connection).
fn transport_failure(e: &reqwest::Error) -> PushFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut detail = String::new();
    while let Some(err) = source {
        if let Some(ssrf) = err.downcast_ref::<SsrfError>() {
            if ssrf.is_permanent() {
                return PushFailure::permanent(ssrf.to_string());
            }
            return PushFailure {
                error: ssrf.to_string(),
                retry_after: None,
                unhealthy: true,
                permanent: false,
            };
        }
        let text = err.to_string();
        if !detail.contains(&text) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&text);
        }
        source = err.source();
    }
    let error = if e.is_timeout() {
        format!("timed out: {detail}")
    } else {
        detail
    };
    PushFailure {
        error,
        retry_after: None,
        unhealthy: true,
        permanent: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_2xx_body_may_settle_the_intent() {
        assert_eq!(
            settled(br#"{"status":"COMPLETED","result":{"ok":1}}"#),
            Some(Settled::Completed(json!({"ok": 1})))
        );
        assert_eq!(
            settled(br#"{"status":"failed","error":{"code":"x"}}"#),
            Some(Settled::Failed(json!({"code": "x"})))
        );
        assert_eq!(
            settled(br#"{"status":"COMPLETED"}"#),
            Some(Settled::Completed(json!({})))
        );
        assert_eq!(settled(br#"{"status":"received"}"#), None);
        assert_eq!(settled(b"ok"), None);
        assert_eq!(settled(b""), None);
    }

    /// Pushes an empty message to `url` and returns the failure it must end in.
    async fn failure(allow: AllowList, url: &str) -> PushFailure {
        let pusher = Pusher::new(allow, Duration::from_secs(2), None).unwrap();
        let message = Message {
            url,
            secret: "s",
            id: "i",
            body: b"{}".to_vec(),
        };
        match pusher.push(message, 0).await {
            PushOutcome::Failed(f) => f,
            other => panic!("{url}: expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_url_is_a_permanent_failure() {
        for url in ["http://127.0.0.1:9/", "http://localhost:9/"] {
            let f = failure(AllowList::default(), url).await;
            assert!(f.permanent && !f.unhealthy, "{url}: {f:?}");
            assert!(f.error.contains("loopback"), "{url}: {}", f.error);
        }
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_transient_failure() {
        let f = failure(AllowList::default(), "https://integrator.invalid/hook").await;
        assert!(!f.permanent && f.unhealthy, "{f:?}");
        assert!(
            f.error.starts_with("cannot resolve integrator.invalid"),
            "{}",
            f.error
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_an_unhealthy_transient_failure() {
        // Bind and drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let f = failure(AllowList::parse("127.0.0.1").unwrap(), &url).await;
        assert!(f.unhealthy && !f.permanent, "{f:?}");
    }

    /// Serves `app` on a fresh 127.0.0.1 port and returns its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_redirect_is_a_failure_and_never_followed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // The target of the redirect is a receiver the allow-list even lets through: no
        // redirect is followed, so no hop can lead past the guard's judgement.
        let hits = Arc::new(AtomicUsize::new(0));
        let target = serve(axum::Router::new().fallback({
            let hits = Arc::clone(&hits);
            move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "reached"
            }
        }))
        .await;
        for status in [301u16, 302, 303, 307, 308] {
            let location = format!("{target}/after-{status}");
            let redirector = serve(axum::Router::new().fallback(move || {
                let location = location.clone();
                async move {
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [(axum::http::header::LOCATION, location)],
                    )
                }
            }))
            .await;
            let f = failure(AllowList::parse("127.0.0.1").unwrap(), &redirector).await;
            assert!(f.error.contains(&status.to_string()), "{status}: {f:?}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "a redirect was followed");
    }
}
