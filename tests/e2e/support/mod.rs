//! The end-to-end harness: a real `intentd` process per test (one starter, `cluster::Node`,
//! on ports chosen as `ports` explains), an HTTP client, an SSE reader.

pub mod api;
pub mod cluster;
pub mod ports;
pub mod raw;
pub mod receiver;
pub mod server;
pub mod sse;

use std::future::Future;
use std::time::Duration;

pub use api::{address_path, assert_gapless, intent_body, Api, PAYMENTS};
pub use server::Server;
pub use sse::{Frame, SseStream};

/// Runs a test body with a hard time bound, so a hung server fails the test instead of CI.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its {limit:?} bound"))
}

/// Polls `check` until it returns `Some`, failing after `limit`: waiting on a condition,
/// never on a fixed sleep.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
