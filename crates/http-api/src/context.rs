//! Per-request identity: the caller's trace id and our request id.
//!
//! Handlers reach the trace id through the span (every log line carries it), not as a value.
//!
//! The middleware runs around every route (and the fallbacks), so that every response, errors
//! included, carries `X-Trace-Id` and `x-request-id`, and every log line of the request is
//! inside a span that names both.

use std::time::Instant;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::error::ApiError;

pub(crate) const TRACE_ID: &str = "x-trace-id";
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Identity of the request being served.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    pub(crate) request_id: String,
    /// The request's span; streams outlive the handler, so they enter it explicitly.
    pub(crate) span: Span,
}

/// A caller-supplied trace id is echoed only if it is short and plain, so it cannot be used to
/// inject into logs or response headers; otherwise a fresh one is made.
fn acceptable_trace_id(raw: &HeaderValue) -> Option<String> {
    let s = raw.to_str().ok()?.trim();
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_string())
}

/// Middleware: assigns the ids, runs the request inside its span, stamps the response.
pub(crate) async fn middleware(mut request: Request, next: Next) -> Response {
    let trace_id = request
        .headers()
        .get(TRACE_ID)
        .and_then(acceptable_trace_id)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let request_id = Uuid::new_v4().to_string();
    let span = tracing::info_span!(
        "http",
        trace_id = %trace_id,
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    request.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        span: span.clone(),
    });
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request answered"
        )
    });
    let headers = response.headers_mut();
    // Both ids were checked (or generated) above, so they are valid header values.
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        headers.insert(TRACE_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, v);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("request context middleware not installed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_echoed_only_when_plain() {
        let ok = HeaderValue::from_static("4bf92f3577b34da6-a3ce929d0e0e4736");
        assert_eq!(
            acceptable_trace_id(&ok).as_deref(),
            Some("4bf92f3577b34da6-a3ce929d0e0e4736")
        );
        assert!(acceptable_trace_id(&HeaderValue::from_static("a b")).is_none());
        assert!(acceptable_trace_id(&HeaderValue::from_static("")).is_none());
        let long = "x".repeat(129);
        assert!(acceptable_trace_id(&HeaderValue::from_str(&long).unwrap()).is_none());
    }
}
