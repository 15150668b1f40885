//! The web console at `/ui`: a page, a script and a style sheet compiled into the binary
//! (`crates/http-api/console/`), so every node serves it with nothing to install or fetch.
//!
//! The page itself holds no data and needs no key; it asks for an API key, keeps it in the
//! tab's `sessionStorage`, and calls the API with it like any client. Its live views read
//! SSE routes with `fetch` (an `EventSource` cannot send the `x-api-key` header), so they
//! are pushed, not polled:
//! - intents: `GET /v1/admin/intents/stream` (`routes::admin_intents`);
//! - agents: `GET /v1/mesh/events/stream`;
//! - cluster: `GET /v1/admin/console/stream` (here): this node's status, membership and
//!   Prometheus text, pushed every `interval_seconds` for the charts.
//!
//! The answers carry a strict Content-Security-Policy: only these assets run, nothing is
//! loaded from elsewhere, and the page cannot be framed.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use crate::auth::AdminCaller;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::{sse, AppState};

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// This module's operations in the OpenAPI document (`crate::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(status_stream))]
pub(crate) struct Doc;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/v1/admin/console/stream", get(status_stream))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A node upgraded in place serves its own console: never a cached older one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    interval_seconds: Option<u64>,
    wait_seconds: Option<u64>,
}

/// SSE of `status` frames: this node's Raft status (role, leader, term, indexes, clock),
/// the membership and the Prometheus text of `/metrics`, one at once and then one every
/// `interval_seconds` (default 2, 1 to 60). Metrics are samples, so a timer is what makes
/// them: the server pushes them, the console draws rates from consecutive frames. The
/// stream sends `stream.timeout` and closes after `wait_seconds` (default 300, at most
/// 3600), so a forgotten tab does not hold a connection forever.
#[utoipa::path(
    get,
    path = "/v1/admin/console/stream",
    tag = "admin",
    params(StatusQuery),
    responses((status = 200, description = "SSE: `status` frames (this node's status, membership and Prometheus text) every interval_seconds, `stream.timeout` after wait_seconds", content_type = "text/event-stream", body = String)),
    operation_id = "console_status_stream"
)]
async fn status_stream(
    State(state): State<AppState>,
    _admin: AdminCaller,
    QueryParams(q): QueryParams<StatusQuery>,
) -> Result<Response, ApiError> {
    let interval = Duration::from_secs(q.interval_seconds.unwrap_or(2).clamp(1, 60));
    let wait = Duration::from_secs(q.wait_seconds.unwrap_or(300).clamp(1, 3600));
    let frames = async_stream::stream! {
        let end = tokio::time::Instant::now() + wait;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = tokio::time::sleep_until(end) => {
                    yield Ok::<_, Infallible>(sse::timeout_frame(0));
                    break;
                }
            }
            let data = json!({
                "at": crate::views::timestamp(&chrono::Utc::now()),
                "node": state.cluster.status(),
                "membership": super::cluster::membership_view(&state.cluster.membership()),
                "metrics": super::metrics::render(&state),
            });
            yield Ok(sse::frame("status", None, &data));
        }
    };
    Ok(sse::response(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded_and_link_only_each_other() {
        assert!(INDEX_HTML.contains("<script src=\"app.js\""));
        assert!(INDEX_HTML.contains("<link rel=\"stylesheet\" href=\"app.css\""));
        // The one URL in them is the SVG namespace name, an identifier never fetched.
        let svg_ns = "'http://www.w3.org/2000/svg'";
        assert!(APP_JS.contains(svg_ns));
        for text in [INDEX_HTML, &APP_JS.replace(svg_ns, "''"), APP_CSS] {
            assert!(
                !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
                "no remote asset"
            );
        }
        let response = asset(INDEX_HTML, "text/html; charset=utf-8");
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    }
}
