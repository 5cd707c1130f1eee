//! The HTTP/1.1 connection loop. `axum::serve` gives hyper no timer, so hyper's header read
//! timeout never fires and a client sending its headers one byte at a time (slowloris) or a
//! client that stops reading holds a connection forever. Here every connection gets:
//!
//! - a header timeout (`TOLLGATE_HEADER_TIMEOUT_MS`): the request head must be complete this
//!   long after the server starts waiting for it, which also bounds an idle keep-alive
//!   connection; on expiry the connection is closed without an answer;
//! - a send timeout (`TOLLGATE_SEND_TIMEOUT_MS`): a write that makes no progress for this
//!   long (the client stopped reading) closes the connection;
//! - limits on the request head (`TOLLGATE_MAX_HEADER_BYTES`, `TOLLGATE_MAX_HEADERS`): the
//!   router's middleware answers 431 with the uniform JSON error and closes; hyper's own
//!   limits are set at twice those (a hard stop, where hyper answers a bare 431: hyper 1.x
//!   writes its parse-error answers itself, without a body and without a hook to add one);
//! - a limit on the connections served at once (`TOLLGATE_MAX_CONNECTIONS`, per listener):
//!   a connection beyond it is answered `503 temporarily_unavailable` (JSON, `Retry-After`,
//!   `Connection: close`) and closed, without reaching the router.
//!
//! The body and the handler are bounded by the router's middleware (`request_guard`).

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::tls::{Listener, PeerCertificate};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::config::Config;
use crate::error::OAuthError;

/// hyper's default read buffer limit (8 KiB + 100 × 4 KiB); raised only when the head limit
/// needs more.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;
/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Connections served at once on one listener.
    pub max_connections: usize,
}

impl ConnLimits {
    pub fn from_config(cfg: &Config) -> ConnLimits {
        ConnLimits {
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
            send_timeout: Duration::from_millis(cfg.send_timeout_ms),
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            max_connections: cfg.max_connections,
        }
    }

    /// hyper's head limits are twice the configured ones: between the two the router
    /// answers the JSON 431, beyond them hyper answers its bare 431.
    fn builder(&self) -> hyper::server::conn::http1::Builder {
        let hard_bytes = self.max_header_bytes.saturating_mul(2);
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_header_size(hard_bytes)
            .max_headers(self.max_headers.saturating_mul(2))
            .max_buf_size(HYPER_DEFAULT_MAX_BUF.max(hard_bytes + 8192));
        b
    }

    /// For a connection over the limit: one small request, no keep-alive.
    fn refusal_builder(&self) -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(false)
            .max_buf_size(HYPER_DEFAULT_MAX_BUF.max(self.max_header_bytes + 8192));
        b
    }
}

/// The answer to a connection over `TOLLGATE_MAX_CONNECTIONS`.
fn over_capacity() -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse;
    let mut r = OAuthError::TemporarilyUnavailable("too many connections".into()).into_response();
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Serve `app` on `listener` until `shutdown` completes, then let in-flight requests finish
/// (at most [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    serve_tls(listener, app, limits, shutdown, None).await
}

/// [`serve`], with TLS when `tls` is set: the handshake runs in the connection's task
/// (bounded by the header timeout), and the client certificate's SHA-256, when one was
/// presented, goes with every request of the connection as a [`PeerCertificate`].
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    tls: Option<Listener>,
) {
    let builder = limits.builder();
    let refusal = limits.refusal_builder();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Refusals are bounded too: past as many again, a connection is closed unanswered.
    let refusals = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("tollgate_http_connections_refused_total").increment(1);
            let Ok(refusing) = refusals.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let service = hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(over_capacity())
            });
            let io = TokioIo::new(SendGuard::new(stream, limits.send_timeout));
            let conn = graceful.watch(refusal.serve_connection(io, service));
            tokio::spawn(async move {
                let _ = conn.await;
                drop(refusing);
            });
            continue;
        };
        let app = app.clone();
        let guarded = SendGuard::new(stream, limits.send_timeout);
        let Some(Listener {
            acceptor,
            client_ca,
        }) = tls.clone()
        else {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(Body::new))
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(guarded), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        let (watcher, builder, handshake) =
            (graceful.watcher(), builder.clone(), limits.header_timeout);
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake, acceptor.accept(guarded)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let cert = stream.get_ref().1.peer_certificates().and_then(|chain| {
                PeerCertificate::from_chain(chain, client_ca.as_deref(), UnixTime::now())
            });
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(c) = &cert {
                    req.extensions_mut().insert(c.clone());
                }
                app.clone().oneshot(req.map(Body::new))
            });
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
}

/// A TCP stream whose writes fail with `TimedOut` once they made no progress for
/// `timeout`: the peer stopped reading and its receive window is full.
pub struct SendGuard {
    inner: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl SendGuard {
    pub fn new(inner: TcpStream, timeout: Duration) -> SendGuard {
        SendGuard {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// The write is pending: start the stall clock (once), fail when it ran out.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the response in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn guard<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for SendGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn a_write_the_peer_never_reads_times_out() {
        let (_client, server) = pair().await;
        let mut g = SendGuard::new(server, Duration::from_millis(200));
        let chunk = vec![0u8; 64 * 1024];
        let err = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(e) = g.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the guard gives up long before 30 s");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (mut client, server) = pair().await;
        let mut g = SendGuard::new(server, Duration::from_millis(300));
        let total = 8 * 1024 * 1024;
        let reader = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = vec![0u8; 256 * 1024];
            while got < total {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "early EOF after {got} bytes");
                got += n;
                // Slower than the writer, never stalled for the whole timeout.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        });
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..total / chunk.len() {
            g.write_all(&chunk).await.unwrap();
        }
        g.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), total);
    }
}
