//! The connections of the public HTTP port: how many may be open, and how long a client may
//! take to send a request or leave a connection idle.
//!
//! Requests are unauthenticated until their headers are in, so every limit here is on what a
//! client *sends*, never on how long an answer lasts: an SSE stream or a long poll is a
//! request in progress, which none of the timers below touches.
//!
//! ```text
//!  accept -- over max_connections? --> 503 JSON, close
//!     |
//!  connection: Idle --first byte--> Head --headers parsed--> Busy(n) --last answer done--> Idle
//!              idle_timeout          header_timeout           body_timeout on the request
//!              (close)               (close)                  body (408 JSON)
//! ```
//!
//! hyper's own refusals of a request it cannot parse (400, 414, 431) are written with an
//! empty body; [`Watched`] swaps them for the API's JSON error on the way out.
//!
//! With TLS (HTTPS) the handshake comes first, under the connection's permit and its own
//! `handshake_timeout`; every limit above then applies to the decrypted stream as it does to
//! a plain one. The certificate is looked up per handshake, so a reload (SIGHUP) reaches new
//! connections while open ones, SSE streams included, keep theirs.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

use intentd_tls::{Socket, TlsAcceptor};

use crate::error::ApiError;

/// The bounds of the public HTTP port (`--http-*` flags).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// From the first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// From the end of a request's headers to the end of its body; a 408 beyond it.
    pub body_timeout: Duration,
    /// How long a connection may wait for the first byte of its next request (a fresh
    /// connection for its first one).
    pub idle_timeout: Duration,
    /// Open connections of this node; one more is answered 503 and closed.
    pub max_connections: usize,
    /// From accepting a connection to the end of its TLS handshake (HTTPS only).
    pub handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16_384,
            handshake_timeout: intentd_tls::HANDSHAKE_TIMEOUT,
        }
    }
}

/// Connections over the cap get their 503 from a task each; past this many such tasks at
/// once, a connection is dropped without an answer rather than let refusals pile up.
const MAX_REFUSING: usize = 256;
/// How long a refused connection gets to take its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long open connections (mostly SSE streams, which last up to `wait_seconds`) get to
/// finish after shutdown is requested before `serve` returns anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on an already bound listener until `shutdown` completes, plus at most
/// [`SHUTDOWN_GRACE`] for the requests still open. Taking a bound listener lets tests bind
/// port 0 and read the port before serving. With `tls` every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Keep-alive between requests is bounded by `idle_timeout` here, not by hyper.
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close instead of
                    // spinning on the error.
                    tracing::warn!(error = %e, "accepting an http connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A small answer must leave at once, not wait for the client's delayed ACK of the last one.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
        match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(
                    tcp,
                    tls.clone(),
                    permit,
                    app.clone(),
                    Arc::clone(&builder),
                    Arc::clone(&limits),
                    stop_rx.clone(),
                ));
            }
            Err(_) => match Arc::clone(&refusing).try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(refuse(tcp, tls.clone(), permit));
                }
                Err(_) => tracing::debug!("dropped a connection over the cap unanswered"),
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every open connection holds a permit: all of them back means all are closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(SHUTDOWN_GRACE, open.acquire_many(all)).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the shutdown grace period; closing"
        ),
    }
    Ok(())
}

/// Answers a connection over the cap with a 503 and closes it. The request is read (and
/// dropped) for a moment after the answer so that closing with unread bytes does not reset
/// the connection before the client has read its 503. An HTTPS client gets its 503 over
/// TLS, the handshake included in the linger time.
async fn refuse(tcp: TcpStream, tls: Option<TlsAcceptor>, _permit: OwnedSemaphorePermit) {
    let answer = ApiError::Unavailable {
        message: "this node has too many open connections; retry later or on another node".into(),
        retry_after_secs: 1,
    }
    .raw_http1();
    if once_a_second(&LAST_REFUSAL_WARNING) {
        tracing::warn!("refusing http connections: too many open connections");
    }
    let linger = async {
        let mut tcp = match tls {
            Some(tls) => intentd_tls::accept(&tls, tcp, REFUSAL_LINGER).await?,
            None => Socket::Plain(tcp),
        };
        tcp.write_all(&answer).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        loop {
            if tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// When a refusal was last logged (unix seconds): a flood of connections over the cap makes
/// one warning a second, not one per connection.
static LAST_REFUSAL_WARNING: AtomicU64 = AtomicU64::new(0);

/// Whether a warning stamped in `last` is due again (at most one a second).
fn once_a_second(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    last.fetch_max(now, Ordering::Relaxed) < now
}

/// Serves one connection until it ends, a limit closes it, or shutdown drains it.
async fn connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    permit: OwnedSemaphorePermit,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<ConnLimits>,
    mut stop: watch::Receiver<bool>,
) {
    let socket = match tls {
        None => Socket::Plain(tcp),
        Some(tls) => match intentd_tls::accept(&tls, tcp, limits.handshake_timeout).await {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!(error = %e, "an https connection failed its TLS handshake");
                return;
            }
        },
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let phase = Arc::new(phase_tx);
    let io = Watched {
        inner: socket,
        phase: Arc::clone(&phase),
        replacement: None,
    };
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let guard = InFlight::start(Arc::clone(&phase));
        let request = request.map(|body| Body::new(TimedBody::new(body, body_timeout)));
        let answer = app.clone().oneshot(request);
        async move {
            let response = answer.await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: guard,
                })
            }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let expired = watchdog(phase_rx, &limits);
    tokio::pin!(expired);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                break;
            }
            changed = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            phase = &mut expired => {
                tracing::debug!(?phase, "closing an http connection that overran its time");
                break;
            }
        }
    }
    drop(permit);
}

/// Where a connection is in its request cycle, which decides the limit that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request (`idle_timeout`).
    Idle,
    /// Some bytes of a request head are in, not all of it (`header_timeout`).
    Head,
    /// This many requests are being served (or their answers streamed); no connection timer.
    Busy(usize),
}

/// Resolves with the phase that overran its limit; never while a request is being served.
async fn watchdog(mut phase: watch::Receiver<Phase>, limits: &ConnLimits) -> Phase {
    loop {
        let now = *phase.borrow_and_update();
        let limit = match now {
            Phase::Idle => limits.idle_timeout,
            Phase::Head => limits.header_timeout,
            Phase::Busy(_) => {
                if phase.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
        };
        match tokio::time::timeout(limit, phase.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_) => return now,
        }
    }
}

/// Counts a request as in progress from its headers until its answer's body is dropped
/// (written out in full, or abandoned).
struct InFlight(Arc<watch::Sender<Phase>>);

impl InFlight {
    fn start(phase: Arc<watch::Sender<Phase>>) -> Self {
        phase.send_modify(|p| {
            *p = match *p {
                Phase::Busy(n) => Phase::Busy(n + 1),
                Phase::Idle | Phase::Head => Phase::Busy(1),
            }
        });
        InFlight(phase)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|p| {
            *p = match *p {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle,
            }
        });
    }
}

/// An answer's body that keeps its request counted as in progress while it lives.
struct Guarded {
    body: Body,
    _guard: InFlight,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error a request body fails with when it is not in by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
pub(crate) struct BodyTimedOut(Duration);

/// Whether `error` (or any error it wraps) is a request body that ran out of time.
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A request body that must be in full within `limit` of its headers: a trickle of bytes
/// does not extend it, unlike a timeout between reads would.
struct TimedBody {
    body: Incoming,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(body: Incoming, limit: Duration) -> Self {
        TimedBody {
            body,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, watched: the first byte read while idle starts the header
/// clock, and hyper's automatic answers to unparseable requests are replaced by JSON ones.
struct Watched {
    inner: Socket,
    phase: Arc<watch::Sender<Phase>>,
    /// A JSON answer standing in for hyper's empty one, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Watched {
    /// Writes what is left of the replacement answer; ready once it is all out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The JSON answer for hyper's automatic refusal in `head`, if `head` is one: a complete
/// bodiless 400, 414 or 431 head (hyper writes these only for a request it could not parse,
/// before any route saw it).
fn automatic_refusal(head: &[u8]) -> Option<ApiError> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    if !head.ends_with(b"\r\n\r\n") || !contains(head, b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    match rest.get(..4)? {
        b"400 " => Some(ApiError::InvalidRequest(
            "malformed HTTP request: the request line or a header could not be parsed".into(),
        )),
        b"414 " => Some(ApiError::UriTooLong(
            "the request target is longer than this server accepts".into(),
        )),
        b"431 " => Some(ApiError::HeadersTooLarge(
            "the request headers are larger, or more numerous, than this server accepts".into(),
        )),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.phase.send_if_modified(|p| {
                let idle = *p == Phase::Idle;
                if idle {
                    *p = Phase::Head;
                }
                idle
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        // Only while a request head is being read can hyper be writing its own refusal; an
        // answer of a route is written while its request is in progress.
        if *self.phase.borrow() == Phase::Head {
            if let Some(error) = automatic_refusal(buf) {
                tracing::debug!(code = error.code(), error = %error, "refused an unparseable request");
                self.replacement = Some((error.raw_http1(), 0));
                // hyper must see its head as written; the replacement goes out on flush.
                let _ = self.poll_replacement(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's refusal is a head alone, in one buffer: look at it as `poll_write` does.
        if self.replacement.is_some() || *self.phase.borrow() == Phase::Head {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bodiless_refusals_are_recognised() {
        let head = |status: &str| {
            format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 08:01:51 GMT\r\n\r\n")
        };
        let code = |raw: String| automatic_refusal(raw.as_bytes()).map(|e| e.code());
        assert_eq!(code(head("400 Bad Request")), Some("invalid_request"));
        assert_eq!(code(head("414 URI Too Long")), Some("uri_too_long"));
        assert_eq!(
            code(head("431 Request Header Fields Too Large")),
            Some("headers_too_large")
        );
        // Anything else is passed through as written.
        assert_eq!(code(head("200 OK")), None);
        assert_eq!(code(head("400 Bad Request") + "{}"), None);
        assert_eq!(
            code("HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n".into()),
            None
        );
    }

    #[test]
    fn the_raw_answer_is_the_api_error_json() {
        let raw = ApiError::HeadersTooLarge("too big".into()).raw_http1();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["ok"], false);
        assert_eq!(body["error"]["code"], "headers_too_large");
    }

    #[tokio::test]
    async fn the_watchdog_times_idle_and_head_but_never_a_request_in_progress() {
        let limits = ConnLimits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(200),
            ..ConnLimits::default()
        };
        let (tx, rx) = watch::channel(Phase::Idle);
        let start = tokio::time::Instant::now();
        assert_eq!(watchdog(rx, &limits).await, Phase::Idle);
        assert!(start.elapsed() >= Duration::from_millis(200));

        let tx = Arc::new(tx);
        let guard = InFlight::start(Arc::clone(&tx));
        let rx = tx.subscribe();
        let busy = tokio::spawn({
            let limits = limits.clone();
            async move { watchdog(rx, &limits).await }
        });
        tokio::pin!(busy);
        // Many times both limits, and nothing fires while the request is in progress.
        assert!(
            tokio::time::timeout(Duration::from_millis(1000), &mut busy)
                .await
                .is_err(),
            "a request in progress was timed out"
        );
        let back = tokio::time::Instant::now();
        drop(guard);
        assert_eq!(busy.await.unwrap(), Phase::Idle);
        assert!(back.elapsed() >= Duration::from_millis(200));

        tx.send_replace(Phase::Head);
        let rx = tx.subscribe();
        let head = tokio::time::Instant::now();
        assert_eq!(watchdog(rx, &limits).await, Phase::Head);
        assert!(head.elapsed() >= Duration::from_millis(100));
    }
}
