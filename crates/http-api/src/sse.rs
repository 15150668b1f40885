//! Server-sent events framing, shared by the intent and agent streams.
//!
//! The SDK's parser is line based and strict about what it yields: it keeps the last `event:`
//! name, joins `data:` lines, and on a blank line yields the JSON only if the name starts with
//! `intent.`; a `stream.timeout` ends the connection and it reconnects with `since` = the
//! highest `seq` it saw. Frames are therefore always `event`, `id`, one `data` line (compact
//! JSON has no newlines), then a blank line.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::Value;

/// The name of the frame that tells a client the wait is over and it should reconnect.
pub(crate) const TIMEOUT_EVENT: &str = "stream.timeout";

/// One SSE frame. `id` becomes the browser's `Last-Event-ID` on reconnect.
pub(crate) fn frame(event: &str, id: Option<u64>, data: &Value) -> Bytes {
    debug_assert!(
        !event.contains(['\n', '\r']),
        "event names are ours, single-line"
    );
    let mut out = String::with_capacity(64);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out.push_str("data: ");
    // serde_json's compact output escapes control characters, so it is one line.
    out.push_str(&data.to_string());
    out.push_str("\n\n");
    Bytes::from(out)
}

/// The closing frame after a wait without news; `since` is where the client should resume.
pub(crate) fn timeout_frame(since: u64) -> Bytes {
    frame(TIMEOUT_EVENT, None, &serde_json::json!({ "since": since }))
}

/// A streaming `text/event-stream` response. Proxies are asked not to buffer it.
pub(crate) fn response<S>(frames: S) -> Response
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut response = Body::from_stream(frames).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Parses a `Last-Event-ID` header or `since` parameter value.
pub(crate) fn parse_cursor(raw: &str) -> Option<u64> {
    raw.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal copy of the SDK's parser, to prove the frames are read as intended.
    fn sdk_parse(text: &str) -> (Vec<Value>, bool) {
        let mut yielded = Vec::new();
        let mut current: Option<String> = None;
        let mut data: Vec<String> = Vec::new();
        for line in text.split('\n') {
            if line.is_empty() {
                if current.as_deref() == Some(TIMEOUT_EVENT) {
                    return (yielded, true);
                }
                if let Some(name) = &current {
                    if !data.is_empty() && name.starts_with("intent.") {
                        yielded.push(serde_json::from_str(&data.join("\n")).unwrap());
                    }
                }
                current = None;
                data.clear();
            } else if let Some(rest) = line.strip_prefix("event:") {
                current = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("data:") {
                data.push(rest.trim_start().to_string());
            }
        }
        (yielded, false)
    }

    #[test]
    fn frame_layout() {
        let f = frame("intent.created", Some(1), &json!({"seq": 1}));
        assert_eq!(
            &f[..],
            b"event: intent.created\nid: 1\ndata: {\"seq\":1}\n\n"
        );
    }

    #[test]
    fn multiline_strings_stay_on_one_data_line() {
        let f = frame("intent.progress", Some(2), &json!({"note": "a\nb\r\nc"}));
        let text = std::str::from_utf8(&f).unwrap();
        assert_eq!(text.matches('\n').count(), 4);
        let (events, _) = sdk_parse(text);
        assert_eq!(events, vec![json!({"note": "a\nb\r\nc"})]);
    }

    #[test]
    fn sdk_yields_intent_frames_and_stops_at_timeout() {
        let mut text = String::new();
        text.push_str(
            std::str::from_utf8(&frame("intent.created", Some(1), &json!({"seq": 1}))).unwrap(),
        );
        text.push_str(": keep-alive\n\n");
        text.push_str(std::str::from_utf8(&timeout_frame(1)).unwrap());
        text.push_str(
            std::str::from_utf8(&frame("intent.submitted", Some(2), &json!({"seq": 2}))).unwrap(),
        );
        let (events, timed_out) = sdk_parse(&text);
        assert!(timed_out);
        assert_eq!(events, vec![json!({"seq": 1})]);
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(" 17 "), Some(17));
        assert_eq!(parse_cursor("-1"), None);
        assert_eq!(parse_cursor("x"), None);
    }
}
