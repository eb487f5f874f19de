//! Connections whose client stops reading are closed.
//!
//! A client that stops reading (a stuck SSE subscriber, a half-open
//! connection, a slow-loris download) would otherwise pin its buffers and
//! its subscriber slot for as long as TCP keeps the connection, which can
//! be hours. Every accepted connection is wrapped so that a write which
//! makes no progress for the subscriber timeout fails with `TimedOut`;
//! hyper then drops the connection and everything it holds.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A listener whose connections fail writes that stall for `timeout`.
pub(crate) struct StallListener {
    inner: TcpListener,
    timeout: Duration,
    stalled: Counter,
}

impl StallListener {
    pub(crate) fn new(inner: TcpListener, timeout: Duration, stalled: Counter) -> Self {
        Self {
            inner,
            timeout,
            stalled,
        }
    }
}

impl axum::serve::Listener for StallListener {
    type Io = StallGuard;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    let guard = StallGuard {
                        io,
                        timeout: self.timeout,
                        timer: None,
                        stalled: self.stalled.clone(),
                    };
                    return (guard, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
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
