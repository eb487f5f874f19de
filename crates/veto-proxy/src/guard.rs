//! Open streams under watch: an upstream body or an upgraded connection
//! that is cut off once its chain is denied (revoked, expired, or stale
//! under fail-closed), re-checked on every newly applied version and on
//! the proxy's one tick a second ([`pace`]), never by a timer per request.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream as _;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_stream::wrappers::WatchStream;
use veto_core::{Denial, VerifiedChain};

use crate::{BoxError, CutReason, State};

/// Why a stream was cut.
#[derive(Debug, thiserror::Error)]
#[error("stream cut off: {0}")]
pub struct Cut(pub(crate) String);

/// An upstream body that re-checks its chain whenever a new revocation
/// version is applied and when its chain expires or the state's freshness
/// runs out, and ends with an error (the connection is dropped) once the
/// chain is denied.
pub struct Guarded {
    pub(crate) inner: Incoming,
    pub(crate) guard: StreamGuard,
}

/// Watches one open stream's chain: re-checks it on every newly applied
/// version, and on the proxy's second tick once the next moment the
/// decision can change by itself has come (the chain's earliest `exp`, the
/// state's `fresh_until`). Decisions use whole seconds (`exp <= now`
/// denies), so a tick just after each second boundary cuts as soon as a
/// per-stream timer would, without arming one per request.
pub(crate) struct StreamGuard {
    /// Wakes it on every applied version and every tick ([`pace`]).
    rechecks: WatchStream<()>,
    state: Arc<State>,
    chain: Arc<VerifiedChain>,
    action: String,
    /// The version last decided on, and the Unix second from which the
    /// decision must be made again without news (0: at the first tick).
    version: u64,
    next: u64,
}

/// Unix seconds now.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// How long after a whole second the tick comes (decisions change at
/// whole seconds; the margin keeps the tick on the far side of one).
const TICK_MARGIN: Duration = Duration::from_millis(20);

/// Wakes every open stream's guard whenever a new version is applied and
/// once a second just after the boundary, until the proxy stops (or the
/// authorizer goes away).
pub(crate) async fn pace(
    mut versions: tokio::sync::watch::Receiver<u64>,
    rechecks: tokio::sync::watch::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = unix_now();
        let to_next_second = Duration::from_secs(now.as_secs() + 1) - now;
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(to_next_second + TICK_MARGIN) => {}
            _ = stop.changed() => return,
        }
        versions.borrow_and_update();
        rechecks.send_replace(());
    }
}

impl StreamGuard {
    /// Watches `chain` from the moment `seen` was taken: take it with
    /// [`State::rechecks_from_now`] before deciding, so a version applied
    /// while deciding is re-checked.
    pub(crate) fn new(
        state: Arc<State>,
        seen: (tokio::sync::watch::Receiver<()>, u64),
        chain: Arc<VerifiedChain>,
        action: String,
    ) -> Self {
        let (rechecks, version) = seen;
        Self {
            rechecks: WatchStream::from_changes(rechecks),
            state,
            chain,
            action,
            version,
            next: 0,
        }
    }

    /// Decides the chain again now; `Some(denial)` (counted as a cut) when
    /// it is denied. Otherwise notes when to decide again without news:
    /// the earliest `exp` in the chain, or the state's `fresh_until` (a
    /// checkpoint that extends freshness without a new version is seen
    /// when that second comes).
    pub(crate) fn check_now(&mut self) -> Option<Denial> {
        match self.state.authz.recheck(&self.chain, &self.action) {
            veto_core::Decision::Deny(d) => {
                self.count_cut(&d);
                Some(d)
            }
            veto_core::Decision::Allow { .. } => {
                let exp = self.chain.chain().expires_at();
                self.next = self.state.authz.fresh_until().map_or(exp, |f| f.min(exp));
                None
            }
        }
    }

    fn count_cut(&self, d: &Denial) {
        self.state
            .metrics
            .streams_cut
            .get_or_create(&CutReason {
                reason: d.reason.as_str().to_owned(),
            })
            .inc();
        tracing::info!(reason = %d.reason, message = %d.message, "cutting off an open stream");
    }

    /// `Some(denial)` once the chain is denied: revoked, expired, or the
    /// state stale under fail-closed (fail-open allows, so never cuts).
    ///
    /// Woken by [`pace`]; what decides whether to look again is the
    /// authorizer's own applied version (never one `pace` has not passed on
    /// yet) and the clock. Should `pace` ever end, every poll decides again.
    pub(crate) fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<Denial> {
        let mut woken = false;
        loop {
            match Pin::new(&mut self.rechecks).poll_next(cx) {
                Poll::Ready(Some(_)) => woken = true,
                Poll::Ready(None) => {
                    self.next = 0;
                    woken = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let v = self.state.authz.applied_version();
        if v == self.version && !(woken && unix_now().as_secs() >= self.next) {
            return None;
        }
        self.version = v;
        self.check_now()
    }

    /// [`Self::poll_cut`] without waiting: `Some(denial)` when a version
    /// applied since the decision (or a second that came) denies the chain.
    pub(crate) fn cut_now(&mut self) -> Option<Denial> {
        self.poll_cut(&mut Context::from_waker(std::task::Waker::noop()))
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.guard.poll_cut(cx) {
            return Poll::Ready(Some(Err(Box::new(Cut(d.to_string())))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }
}

/// Copies bytes both ways after an upgrade, until either side closes or
/// the chain is denied (revoked, expired, or stale under fail-closed).
pub(crate) async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut guard: StreamGuard,
) {
    let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
        return;
    };
    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
    let revoked = std::future::poll_fn(|cx| match guard.poll_cut(cx) {
        Some(d) => Poll::Ready(d),
        None => Poll::Pending,
    });
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
        _ = revoked => {}
    }
}
