//! `GET /metrics`: Prometheus text, without authentication so a scraper needs no API key
//! (it shows counts and cluster positions, never intent data or secrets).
//!
//! The delivery engine's series come from `intentd_delivery::Metrics`; the HTTP request
//! counts are kept here, because only the edge knows the route a request matched and the
//! status it got.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Requests answered, keyed by (method, route template, status). Route templates (not raw
/// paths) keep the label set bounded whatever ids clients send.
#[derive(Debug, Default)]
pub(crate) struct HttpCounts(Mutex<BTreeMap<(String, String, u16), u64>>);

/// The label of requests that matched no route, so probes of random paths stay one series.
const UNMATCHED: &str = "unmatched";

impl HttpCounts {
    fn add(&self, method: &str, route: &str, status: u16) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
    }

    fn render(&self, out: &mut String) {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP intentd_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE intentd_http_requests_total counter\n");
        for ((method, route, status), n) in counts.iter() {
            let _ = writeln!(
                out,
                "intentd_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(method),
                escape(route)
            );
        }
    }
}

/// Escapes a Prometheus label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: counts every answered request under the route it matched.
pub(crate) async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_string();
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    state
        .http_counts
        .add(&method, &route, response.status().as_u16());
    response
}

/// The whole Prometheus text of this node: the delivery metrics, then the HTTP counts.
/// The console's status stream sends the same text.
pub(crate) fn render(state: &AppState) -> String {
    let mut body = state.metrics.render();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    state.http_counts.render(&mut body);
    body
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)),
    security(())
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = render(&state).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_prometheus_text() {
        let counts = HttpCounts::default();
        counts.add("GET", "/v1/intents/{id}", 200);
        counts.add("GET", "/v1/intents/{id}", 200);
        counts.add("POST", "we\"ird", 404);
        let mut out = String::new();
        counts.render(&mut out);
        assert!(out.contains("# TYPE intentd_http_requests_total counter\n"));
        assert!(out.contains(
            "intentd_http_requests_total{method=\"GET\",route=\"/v1/intents/{id}\",status=\"200\"} 2\n"
        ));
        assert!(out.contains("route=\"we\\\"ird\""));
    }
}
