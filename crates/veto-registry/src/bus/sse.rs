//! The SSE publisher (WHATWG HTML server-sent events): each subscriber
//! resumes from its `Last-Event-ID` by a replay of the deltas it missed,
//! in order (or a snapshot when they are gone), then hears a checkpoint,
//! then the issuer key set, then live deltas, a checkpoint every heartbeat
//! and the issuer key set whenever it changes. A subscriber that
//! falls behind the live buffer is sent a snapshot instead.
//!
//! Memory: each subscriber may have [`SUBSCRIBER_QUEUE_BYTES`] queued;
//! bytes copied for one subscriber alone (a replay, a snapshot) also take
//! a share of the registry-wide [`ClientBudget`]; live events are frames
//! shared by every subscriber and take none.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use veto_core::wire::EventKind;

use crate::authority::Authority;
use crate::budget::ClientBudget;
use crate::event::{sse_frame, Event};
use crate::metrics::Metrics;

/// Most deltas replayed to a resuming subscriber before it is sent a
/// snapshot instead.
pub const MAX_REPLAY: u64 = 10_000;
/// Most bytes of deltas replayed to one resuming subscriber; further
/// behind, it is sent a snapshot instead.
pub const MAX_REPLAY_BYTES: usize = 8 << 20;
/// The replay is read from the store a page of at most this many bytes at
/// a time, as the subscriber takes it.
pub const REPLAY_PAGE_BYTES: usize = 1 << 20;
/// Most deltas in one replay page.
const REPLAY_PAGE_DELTAS: usize = 256;
/// Largest snapshot (its text container) sent inline on an event stream; a subscriber that
/// needs a larger one is sent the current checkpoint, from which it sees
/// how far behind it is and catches up by pull (`/v1/srl/deltas`, or the
/// shared `/v1/srl` when those are gone), so no per-subscriber copy of a
/// big state is ever made.
pub const MAX_SSE_SNAPSHOT_BYTES: usize = 8 << 20;
/// Most bytes of events queued for one subscriber (one larger event is
/// queued alone).
pub const SUBSCRIBER_QUEUE_BYTES: usize = 1 << 20;

/// The SSE publisher: hands out event streams.
pub(crate) struct SseHub {
    authority: Arc<Authority>,
    budget: ClientBudget,
    metrics: Arc<Metrics>,
    max_subscribers: usize,
    /// Turns true at shutdown: every stream ends, so connections can close.
    stop: watch::Receiver<bool>,
}

/// The subscriber limit is reached.
#[derive(Debug)]
pub(crate) struct TooManySubscribers;

impl SseHub {
    /// A hub for at most `max_subscribers` streams at once.
    pub(crate) fn new(
        authority: Arc<Authority>,
        budget: ClientBudget,
        metrics: Arc<Metrics>,
        max_subscribers: usize,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            authority,
            budget,
            metrics,
            max_subscribers,
            stop,
        }
    }

    /// A new event stream for a subscriber that has applied `since` (none:
    /// it starts at the head), as the bytes of an `text/event-stream` body.
    pub(crate) fn subscribe(
        &self,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes, Infallible>>, TooManySubscribers> {
        // Take the slot first and give it back when over: a check-then-increment
        // would let a burst of concurrent connections past the limit.
        let taken = self.metrics.subscribers.inc();
        let slot = Slot(self.metrics.clone());
        if usize::try_from(taken).unwrap_or(usize::MAX) >= self.max_subscribers {
            return Err(TooManySubscribers);
        }
        // Subscribe before reading the version, so nothing committed in
        // between is missed.
        let live = self.authority.subscribe();
        let (tx, rx) = mpsc::channel::<Queued>(64);
        let sink = Sink {
            authority: self.authority.clone(),
            budget: self.budget.clone(),
            tx,
            own: Arc::new(Semaphore::new(SUBSCRIBER_QUEUE_BYTES)),
        };
        tokio::spawn(feed(
            sink,
            slot,
            live,
            since,
            self.stop.clone(),
            self.metrics.clone(),
        ));
        // An event's share of the budget is returned when hyper takes it.
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|(frame, _share)| (Ok::<_, Infallible>(frame), rx))
        }))
    }
}

/// A subscriber's slot; given back when its feed ends.
struct Slot(Arc<Metrics>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

/// An event's hold on memory while it waits for hyper to take it: a share
/// of its subscriber's own queue and, for bytes copied for this subscriber
/// alone (replayed deltas, a snapshot), of the registry-wide budget. Live
/// events are shared frames ([`Event`]): a subscriber holds a reference,
/// so they take no share of the budget, and clients that do not read
/// cannot hold back pushes to those that do.
struct Share {
    _global: Option<OwnedSemaphorePermit>,
    _own: OwnedSemaphorePermit,
}

/// An event queued for a subscriber (its SSE bytes), with its share.
type Queued = (Bytes, Share);

/// Where one subscriber's events go.
struct Sink {
    authority: Arc<Authority>,
    budget: ClientBudget,
    tx: mpsc::Sender<Queued>,
    /// Bytes this subscriber may have queued: a client that does not read
    /// holds at most this much (plus one page being sent) of the budget.
    own: Arc<Semaphore>,
}

impl Sink {
    /// A share of this subscriber's own queue, or `None` when it left.
    async fn own_share(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.clamp(1, SUBSCRIBER_QUEUE_BYTES)).unwrap_or(u32::MAX);
        tokio::select! {
            p = self.own.clone().acquire_many_owned(n) => p.ok(),
            _ = self.tx.closed() => None,
        }
    }

    /// Queues a frame shared with other subscribers (a live delta or
    /// checkpoint), charged to this subscriber's own queue only.
    async fn send_shared(&self, frame: Bytes) -> bool {
        let Some(own) = self.own_share(frame.len()).await else {
            return false;
        };
        let share = Share {
            _global: None,
            _own: own,
        };
        self.tx.send((frame, share)).await.is_ok()
    }

    /// Queues `event` of `bytes`, copied for this subscriber alone, charged
    /// to `global` when the caller holds that share already (a replay
    /// page), else to a new one.
    async fn send(&self, event: Bytes, bytes: usize, global: Option<OwnedSemaphorePermit>) -> bool {
        let Some(own) = self.own_share(bytes).await else {
            return false;
        };
        let global = match global {
            Some(g) => g,
            None => match self.budget.share(bytes, self.tx.closed()).await {
                Some(g) => g,
                None => return false,
            },
        };
        let share = Share {
            _global: Some(global),
            _own: own,
        };
        self.tx.send((event, share)).await.is_ok()
    }

    /// Sends the current snapshot, or, when it is too large to copy for
    /// one subscriber, the current checkpoint (the subscriber sees the gap
    /// and pulls). Returns the version the subscriber was brought to.
    async fn send_snapshot(&self) -> Option<u64> {
        let snap = self.authority.snapshot().await;
        // An event's data is text: the text container, whose length is at
        // most 4/3 of the binary one's (checked before making it).
        if let Some(snap) = snap.filter(|s| s.bytes.len().div_ceil(3) * 4 <= MAX_SSE_SNAPSHOT_BYTES)
        {
            let text = snap.text();
            let event = sse_frame(EventKind::Snapshot, Some(snap.ver), &text);
            return self.send(event, text.len(), None).await.then_some(snap.ver);
        }
        self.send_checkpoint().await
    }

    /// Sends the current checkpoint (a few hundred bytes: no share of the
    /// budget, so a subscriber at the head always hears from the registry).
    async fn send_checkpoint(&self) -> Option<u64> {
        let (ver, jws) = self.authority.checkpoint();
        self.send_shared(sse_frame(EventKind::Checkpoint, Some(ver), &jws))
            .await
            .then_some(ver)
    }

    /// Queues the deltas after `since` up to `upto` page by page, each page
    /// read only when the subscriber has taken most of the last, and at
    /// most [`MAX_REPLAY_BYTES`] in all.
    async fn replay(&self, since: u64, upto: u64) -> Replay {
        if upto - since > MAX_REPLAY {
            return Replay::Snapshot;
        }
        let mut next = since;
        let mut total = 0usize;
        while next < upto {
            let page = self
                .budget
                .page(
                    &self.authority,
                    next,
                    upto,
                    REPLAY_PAGE_DELTAS,
                    REPLAY_PAGE_BYTES,
                    self.tx.closed(),
                )
                .await;
            let (list, mut permit) = match page {
                None => return Replay::Closed,
                Some(Ok((Some(list), permit))) if !list.is_empty() => (list, permit),
                Some(Ok(_)) => return Replay::Snapshot,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read deltas to replay; sending a snapshot");
                    return Replay::Snapshot;
                }
            };
            total = total.saturating_add(list.iter().map(|(_, j)| j.len()).sum());
            if total > MAX_REPLAY_BYTES {
                return Replay::Snapshot;
            }
            for (ver, jws) in list {
                // Each event takes its part of the page's share along.
                let part = jws.len().clamp(1, permit.num_permits().max(1));
                let global = permit.split(part);
                let frame = sse_frame(EventKind::Delta, Some(ver), &jws);
                if !self.send(frame, jws.len(), global).await {
                    return Replay::Closed;
                }
                next = ver;
            }
        }
        Replay::Done
    }
}

/// How a replay ended.
enum Replay {
    /// Every delta was queued.
    Done,
    /// The subscriber is gone.
    Closed,
    /// Too far behind, not retained or unreadable: send a snapshot.
    Snapshot,
}

/// One subscriber's feed: the replay (or snapshot), the first checkpoint,
/// then live events until the subscriber leaves or the registry stops.
async fn feed(
    sink: Sink,
    _slot: Slot,
    mut live: broadcast::Receiver<Event>,
    since: Option<u64>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let current = sink.authority.version();
    let mut sent = current;
    if let Some(since) = since.filter(|s| *s < current) {
        match sink.replay(since, current).await {
            Replay::Done => {}
            Replay::Closed => return,
            Replay::Snapshot => match sink.send_snapshot().await {
                Some(v) => sent = sent.max(v),
                None => return,
            },
        }
    }
    let (ver, jws) = sink.authority.checkpoint();
    if ver >= sent
        && !sink
            .send_shared(sse_frame(EventKind::Checkpoint, Some(ver), &jws))
            .await
    {
        return;
    }
    // The issuer key set, so a subscriber that missed a change while away
    // has it at once (a few hundred bytes per key: no share of the budget).
    let (_, issuers) = sink.authority.issuer_set();
    if !sink
        .send_shared(sse_frame(EventKind::Issuers, None, &issuers))
        .await
    {
        return;
    }
    loop {
        let event = tokio::select! {
            e = live.recv() => e,
            _ = stop.changed() => return,
            _ = sink.tx.closed() => return,
        };
        let ok = match event {
            Ok(Event::Delta { ver, frame }) if ver > sent => {
                sent = ver;
                sink.send_shared(frame).await
            }
            Ok(Event::Checkpoint { ver, frame, .. }) if ver >= sent => {
                sink.send_shared(frame).await
            }
            Ok(Event::Issuers { frame, .. }) => sink.send_shared(frame).await,
            Ok(_) => true,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                metrics.lagged_subscribers.inc();
                tracing::warn!("slow SSE subscriber fell behind; sending a snapshot");
                match sink.send_snapshot().await {
                    Some(v) => {
                        sent = sent.max(v);
                        true
                    }
                    None => false,
                }
            }
            Err(broadcast::error::RecvError::Closed) => false,
        };
        if !ok {
            return;
        }
    }
}
