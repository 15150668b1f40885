//! The public HTTP port's connection limits: a client that sends half a request, a body that
//! never comes or nothing at all is closed within the configured bound; more connections
//! than the cap are answered 503 with the JSON error; streams outlive every one of these
//! timers, because they bound what clients send, not how long answers last.

use std::time::Duration;

use serde_json::json;

use crate::support::raw::{self, connect, read_until_closed, request_keep_alive, send_and_read};
use crate::support::{eventually, intent_body, within, Server, PAYMENTS};

const LIMIT: Duration = Duration::from_secs(90);
/// How long past its configured bound a close may come on a loaded test machine.
const SLACK: Duration = Duration::from_secs(5);

#[tokio::test]
async fn half_a_request_head_is_closed_at_the_header_timeout() {
    within(LIMIT, async {
        let server = Server::start_with(&["--header-timeout-ms", "500"]).await;
        // Many at once, as an attacker would hold them.
        let mut conns = Vec::new();
        for _ in 0..50 {
            conns.push(connect(server.http_addr).await);
        }
        let exchanges = futures::future::join_all(conns.iter_mut().map(|c| {
            send_and_read(
                c,
                b"GET /health HTTP/1.1\r\nHost: x\r\nx-api-key: some",
                Duration::from_millis(500) + SLACK,
            )
        }))
        .await;
        for e in &exchanges {
            assert!(e.closed, "still open after {:?}", e.elapsed);
            assert!(
                e.elapsed >= Duration::from_millis(400),
                "closed early: {e:?}"
            );
            assert!(e.bytes.is_empty(), "answered: {e:?}");
        }
        // The node still serves.
        server.admin().get("/health").await.assert_ok(200);
    })
    .await
}

#[tokio::test]
async fn a_body_that_never_comes_is_a_json_408_at_the_body_timeout() {
    within(LIMIT, async {
        let server = Server::start_with(&["--body-timeout-ms", "500"]).await;
        let mut conn = connect(server.http_addr).await;
        let head = format!(
            "POST /v1/intents HTTP/1.1\r\nHost: x\r\nx-api-key: {}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"intent_type\":",
            server.admin_key
        );
        let e = send_and_read(
            &mut conn,
            head.as_bytes(),
            Duration::from_millis(500) + SLACK,
        )
        .await;
        assert!(e.closed, "still open after {:?}: {e:?}", e.elapsed);
        assert!(
            e.elapsed >= Duration::from_millis(400),
            "answered early: {e:?}"
        );
        e.assert_error(408, "request_timeout");
        // A body sent in time is not affected.
        server.admin().create_ok(&intent_body(PAYMENTS)).await;
    })
    .await
}

#[tokio::test]
async fn idle_connections_are_closed_at_the_idle_timeout() {
    within(LIMIT, async {
        let server = Server::start_with(&["--idle-timeout-ms", "800"]).await;
        // A connection that never sends anything.
        let mut silent = connect(server.http_addr).await;
        let e = read_until_closed(&mut silent, Duration::from_millis(800) + SLACK).await;
        assert!(e.closed && e.bytes.is_empty(), "{e:?}");
        assert!(
            e.elapsed >= Duration::from_millis(700),
            "closed early: {e:?}"
        );

        // A keep-alive connection after its answer: served, then closed when idle.
        let mut kept = connect(server.http_addr).await;
        let answer = request_keep_alive(
            &mut kept,
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(10),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let e = read_until_closed(&mut kept, Duration::from_millis(800) + SLACK).await;
        assert!(e.closed && e.bytes.is_empty(), "{e:?}");
        assert!(
            e.elapsed >= Duration::from_millis(700),
            "closed early: {e:?}"
        );
    })
    .await
}

#[tokio::test]
async fn streams_and_long_polls_outlive_the_connection_timers() {
    within(LIMIT, async {
        let server = Server::start_with(&[
            "--header-timeout-ms",
            "300",
            "--body-timeout-ms",
            "300",
            "--idle-timeout-ms",
            "300",
        ])
        .await;
        let api = server.admin();
        let id = api.create_ok(&intent_body(PAYMENTS)).await;
        // An event stream with nothing new for 3 s ends with the server's own timeout frame,
        // not by a connection timer ten times shorter.
        let started = tokio::time::Instant::now();
        let resp = api
            .builder(
                reqwest::Method::GET,
                &format!("/v1/intents/{id}/events/stream?since=2&wait_seconds=3"),
            )
            .send()
            .await
            .expect("stream");
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.expect("the whole stream");
        assert!(text.contains("event: stream.timeout"), "{text}");
        assert!(started.elapsed() >= Duration::from_millis(2900), "{text}");
        // The connection that carried it is usable for the next request.
        api.get("/health").await.assert_ok(200);
    })
    .await
}

#[tokio::test]
async fn connections_over_the_cap_get_a_json_503() {
    within(LIMIT, async {
        let server = Server::start_with(&["--max-connections", "3"]).await;
        let health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        // Three connections, each proven to be served (and so holding its place); the
        // harness's own readiness probe may hold a place for a moment, hence the retries.
        let mut held = Vec::new();
        for _ in 0..3 {
            let conn = eventually(Duration::from_secs(20), "a served connection", || async {
                let mut conn = connect(server.http_addr).await;
                let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, health).await;
                let mut first = [0u8; 12];
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::AsyncReadExt::read_exact(&mut conn, &mut first),
                )
                .await
                {
                    Ok(Ok(_)) if first.starts_with(b"HTTP/1.1 200") => Some(conn),
                    _ => None,
                }
            })
            .await;
            held.push(conn);
        }
        let mut fourth = connect(server.http_addr).await;
        let e = send_and_read(&mut fourth, health, Duration::from_secs(10)).await;
        assert!(e.closed, "{e:?}");
        e.assert_error(503, "unavailable");
        assert_eq!(e.json()["error"]["retryable"], json!(true));
        let text = String::from_utf8_lossy(&e.bytes).to_ascii_lowercase();
        assert!(text.contains("retry-after: 1"), "{text}");

        // A place freed is a place for the next client.
        held.pop();
        eventually(Duration::from_secs(20), "a place freed", || async {
            let mut conn = connect(server.http_addr).await;
            let e = send_and_read(
                &mut conn,
                b"GET /health HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
                Duration::from_secs(5),
            )
            .await;
            (e.status() == Some(200)).then_some(())
        })
        .await;
    })
    .await
}

#[tokio::test]
async fn a_silent_grpc_connection_is_closed_at_the_header_timeout() {
    within(LIMIT, async {
        let server = Server::start_with(&["--header-timeout-ms", "500"]).await;
        let mut silent = connect(server.grpc_addr).await;
        let e = raw::read_until_closed(&mut silent, Duration::from_millis(500) + SLACK).await;
        assert!(e.closed, "still open after {:?}", e.elapsed);
        assert!(
            e.elapsed >= Duration::from_millis(400),
            "closed early: {e:?}"
        );
    })
    .await
}
