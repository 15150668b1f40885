//! A raw TCP client for what HTTP libraries will not send: half a request, a body that never
//! comes, malformed heads. It reads until the server closes, with an upper time bound, so a
//! test waits on the close itself, never on a sleep.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What came back on a connection until it closed (or the bound passed).
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection (EOF or reset) within the bound.
    pub closed: bool,
    /// From the last byte sent to the close (or to the bound).
    pub elapsed: Duration,
}

impl Exchange {
    /// The status code of the first answer, if one came.
    pub fn status(&self) -> Option<u16> {
        let text = std::str::from_utf8(&self.bytes).ok()?;
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The body of the first answer, as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        let text = String::from_utf8_lossy(&self.bytes);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(Value::Null)
    }

    /// Asserts an answer with `status` and the API's JSON error with `code`.
    pub fn assert_error(&self, status: u16, code: &str) {
        let text = String::from_utf8_lossy(&self.bytes);
        assert_eq!(self.status(), Some(status), "{text}");
        let body = self.json();
        assert_eq!(body["ok"], Value::Bool(false), "not the JSON error: {text}");
        assert_eq!(body["error"]["code"], code, "{text}");
        assert!(body["error"]["message"].is_string(), "{text}");
        assert!(body["error"]["retryable"].is_boolean(), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{text}"
        );
    }
}

/// Opens a connection; it is accepted by the kernel even before the server looks at it.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Sends `request` on `conn` and reads until the server closes it, for at most `bound`.
pub async fn send_and_read(conn: &mut TcpStream, request: &[u8], bound: Duration) -> Exchange {
    // The server may answer and close before it has read everything: a failed write is
    // then expected, and the answer is still there to read.
    let _ = conn.write_all(request).await;
    read_until_closed(conn, bound).await
}

/// Reads until EOF (or a reset), at most `bound`.
pub async fn read_until_closed(conn: &mut TcpStream, bound: Duration) -> Exchange {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = loop {
        let left = bound.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
    };
    Exchange {
        bytes,
        closed,
        elapsed: start.elapsed(),
    }
}

/// One request and its whole answer on a connection that stays open (keep-alive): reads
/// until the `content-length` of the answer is in.
pub async fn request_keep_alive(conn: &mut TcpStream, request: &[u8], bound: Duration) -> String {
    conn.write_all(request).await.expect("write request");
    let deadline = Instant::now() + bound;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let text = String::from_utf8_lossy(&bytes).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("an answer with content-length");
            if body.len() >= length {
                return text;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no complete answer ({other:?}): {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
}
