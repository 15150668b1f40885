//! The connections of the public gRPC port: how many may be open, and how long a new one may
//! stay silent. Calls themselves are not timed here: `Listen` and `WatchEvents` stream for as
//! long as the client wants, and HTTP/2 keep-alive pings (set on the server in `serve`) drop
//! the connections whose peer has gone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::Stream;
use intentd_tls::{Socket, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// When a refusal was last logged (unix seconds).
static LAST_REFUSAL_WARNING: AtomicU64 = AtomicU64::new(0);

/// The client connection preface of HTTP/2 (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;

#[derive(Clone)]
pub(crate) struct Limits {
    pub(crate) preface_timeout: Duration,
    pub(crate) max_connections: usize,
    /// Set when the port speaks TLS.
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) handshake_timeout: Duration,
}

/// The accepted connections of `listener`, at most `max_connections` open at once: one more
/// is closed as soon as it is accepted (the client sees UNAVAILABLE and may retry). Accepting
/// stops when the server drops the stream.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = Result<LimitedConn, io::Error>> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors, mostly: wait for some to close.
                        tracing::warn!(error = %e, "accepting a grpc connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                // One warning a second, not one per connection of a flood.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if LAST_REFUSAL_WARNING.fetch_max(now, Ordering::Relaxed) < now {
                    tracing::warn!("refusing grpc connections: too many open connections");
                }
                continue;
            };
            // Without TCP_NODELAY a reply's trailing frames wait for the client's delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
            }
            let with_tls = limits.tls.is_some();
            let limits = limits.clone();
            let tx = tx.clone();
            let handshake = async move {
                let socket = match &limits.tls {
                    None => Socket::Plain(tcp),
                    Some(tls) => {
                        match intentd_tls::accept(tls, tcp, limits.handshake_timeout).await {
                            Ok(socket) => socket,
                            Err(e) => {
                                tracing::debug!(error = %e, "a grpc connection failed its TLS handshake");
                                return;
                            }
                        }
                    }
                };
                let conn = LimitedConn {
                    tcp: socket,
                    _permit: permit,
                    preface: Some(Box::pin(tokio::time::sleep(limits.preface_timeout))),
                    read: 0,
                };
                let _ = tx.send(Ok(conn)).await;
            };
            if with_tls {
                tokio::spawn(handshake);
            } else {
                handshake.await;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// An accepted connection holding its place under the cap, which must send the HTTP/2
/// preface before its deadline.
pub(crate) struct LimitedConn {
    tcp: Socket,
    _permit: OwnedSemaphorePermit,
    /// Until the preface is in: the time it must be in by.
    preface: Option<Pin<Box<tokio::time::Sleep>>>,
    read: usize,
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.tcp().connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.read += buf.filled().len() - before;
                if self.read >= PREFACE_LEN {
                    self.preface = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if let Some(deadline) = &mut self.preface {
                    ready!(deadline.as_mut().poll(cx));
                    tracing::debug!("closing a grpc connection that sent no preface in time");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the header timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
