//! The HTTP server loop, and connections whose client stalls are closed.
//!
//! A client that stops reading (a stuck SSE subscriber, a half-open
//! connection, a slow-loris download) would otherwise pin its buffers and
//! its subscriber slot for as long as TCP keeps the connection, which can
//! be hours. Every accepted connection is wrapped so that a write which
//! makes no progress for the subscriber timeout fails with `TimedOut`;
//! hyper then drops the connection and everything it holds. A client that
//! does not finish sending a request head within the header timeout is
//! disconnected too.
//!
//! With TLS ([`veto_tls::ServerTls`]), the handshake runs on the
//! connection's own task (a slow client holds up no one), bounded by the
//! header timeout; when client certificates are requested, every request
//! carries a [`ClientCert`] saying whether the peer presented a verified
//! one, for the admin routes to check.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;

/// Limits every connection lives under.
#[derive(Clone, Debug)]
pub(crate) struct ConnLimits {
    /// A write without progress this long closes the connection.
    pub stall: Duration,
    /// A request head not complete this long closes the connection.
    pub header: Duration,
    /// Counts connections closed for stalling.
    pub stalled: Counter,
}

/// Whether the connection a request came on presented a client
/// certificate that chains to `--client-ca` (rustls verified it in the
/// handshake). Present in a request's extensions only when the registry
/// asks for client certificates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientCert {
    /// A verified certificate was presented.
    pub verified: bool,
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `stop`
/// turns true; then open connections finish their requests (event streams
/// end on the same signal) and this returns.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    tls: Option<veto_tls::ServerTls>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let io = tokio::select! {
            r = listener.accept() => match r {
                Ok((io, _)) => io,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = io.set_nodelay(true);
        let io = StallGuard {
            io,
            timeout: limits.stall,
            timer: None,
            stalled: limits.stalled.clone(),
        };
        let app = app.clone();
        let header = limits.header;
        let stop = stop.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let Some(tls) = tls else {
                let svc = hyper_util::service::TowerToHyperService::new(app);
                return serve_conn(io, svc, header, stop).await;
            };
            let io = match tokio::time::timeout(header, tls.acceptor().accept(io)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake not finished within the header timeout");
                    return;
                }
            };
            if tls.requests_client_certs() {
                let cert = ClientCert {
                    verified: io
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty()),
                };
                let svc = tower::Layer::layer(&axum::Extension(cert), app);
                serve_conn(
                    io,
                    hyper_util::service::TowerToHyperService::new(svc),
                    header,
                    stop,
                )
                .await;
            } else {
                let svc = hyper_util::service::TowerToHyperService::new(app);
                serve_conn(io, svc, header, stop).await;
            }
        });
        // Reap finished connections so the set stays as large as the open ones.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 on one connection until it ends, or until `stop`, when
/// it finishes the request in progress.
async fn serve_conn<I, S>(io: I, svc: S, header: Duration, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A TCP stream whose writes fail after `timeout` without progress.
pub(crate) struct StallGuard {
    io: TcpStream,
    timeout: Duration,
    /// Running while a write is pending; cleared by progress.
    timer: Option<Pin<Box<Sleep>>>,
    stalled: Counter,
}

impl StallGuard {
    /// Maps a pending write to `TimedOut` once it has pended for the
    /// timeout, and clears the timer on progress.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.timer = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        self.timer = None;
        self.stalled.inc();
        tracing::info!(
            timeout_s = timeout.as_secs_f64(),
            "closing a connection whose client took no bytes"
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took no bytes for the subscriber timeout",
        )))
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
