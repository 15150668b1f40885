//! A minimal Server-Sent Events reader that keeps the framing visible (event, id, data), so
//! tests can assert on the wire format rather than on a library's interpretation of it.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::api::{Api, Resp};

/// One dispatched SSE message.
#[derive(Debug, Clone)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: Option<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("frame without data: {self:?}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"))
    }

    pub fn event(&self) -> &str {
        self.event.as_deref().unwrap_or("")
    }
}

pub struct SseStream {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: Vec<u8>,
    current: Frame,
    /// Whether the current frame has any field line (comment-only blocks are keep-alives).
    has_fields: bool,
    ended: bool,
}

impl SseStream {
    /// Opens `path` as an event stream. Answers other than 200 come back as `Err(Resp)` so
    /// tests can assert on error statuses of streaming endpoints too.
    pub async fn open(api: &Api, path: &str, headers: &[(&str, &str)]) -> Result<SseStream, Resp> {
        let mut rb = api
            .builder(Method::GET, path)
            .header("accept", "text/event-stream")
            // Streams outlive the client's default request timeout; tests bound reads instead.
            .timeout(Duration::from_secs(300));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.expect("stream request reaches the server");
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(Resp {
                status,
                headers,
                text,
                body,
            });
        }
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            ctype.starts_with("text/event-stream"),
            "stream answered with content-type {ctype:?}"
        );
        Ok(SseStream {
            body: resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
            buf: Vec::new(),
            current: empty_frame(),
            has_fields: false,
            ended: false,
        })
    }

    /// Opens a stream that must succeed.
    pub async fn open_ok(api: &Api, path: &str, headers: &[(&str, &str)]) -> SseStream {
        match SseStream::open(api, path, headers).await {
            Ok(s) => s,
            Err(r) => panic!("stream {path} answered {}: {}", r.status, r.text),
        }
    }

    /// The next frame, or `None` when the server closed the stream. Panics if nothing
    /// arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
        match tokio::time::timeout(within, self.next_inner()).await {
            Ok(f) => f,
            Err(_) => panic!("no SSE frame or close within {within:?}"),
        }
    }

    /// Reads until the server closes the stream, bounded by `within` in total.
    pub async fn rest(&mut self, within: Duration) -> Vec<Frame> {
        let collect = async {
            let mut frames = Vec::new();
            while let Some(f) = self.next_inner().await {
                frames.push(f);
            }
            frames
        };
        match tokio::time::timeout(within, collect).await {
            Ok(frames) => frames,
            Err(_) => panic!("stream did not close within {within:?}"),
        }
    }

    async fn next_inner(&mut self) -> Option<Frame> {
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line).expect("SSE is UTF-8");
                if let Some(frame) = self.feed(&line) {
                    return Some(frame);
                }
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => panic!("SSE body error: {e}"),
                None => self.ended = true,
            }
        }
    }

    /// Feeds one line; returns a frame when a blank line dispatches one.
    fn feed(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let had = std::mem::replace(&mut self.has_fields, false);
            let frame = std::mem::replace(&mut self.current, empty_frame());
            return had.then_some(frame);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        self.has_fields = true;
        match field {
            "event" => self.current.event = Some(value.to_string()),
            "id" => self.current.id = Some(value.to_string()),
            "data" => {
                let data = self.current.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
        None
    }
}

fn empty_frame() -> Frame {
    Frame {
        event: None,
        id: None,
        data: None,
    }
}
