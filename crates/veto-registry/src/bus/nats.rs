//! The transactional outbox relay for the NATS JetStream bus.
//!
//! A delta is committed first (in the store, `published = false`); this
//! relay publishes unpublished deltas in version order with a
//! `Nats-Msg-Id` derived from the signed delta
//! ([`veto_core::wire::nats::delta_msg_id`]: the version and 128 bits of
//! SHA-256 over the compact JWS, so nobody else can pre-empt it), and
//! marks each published only after JetStream acknowledged it. After a
//! crash the relay starts over from the outbox: a delta published but not
//! yet marked is published again with the same id and the stream
//! de-duplicates it. Every replica runs a relay; duplicates between them
//! are de-duplicated the same way. Checkpoints follow on their subject,
//! each after the outbox is drained, so none overtakes its delta; issuer
//! key sets on theirs, at the start of each session and on every change.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use tokio::sync::{broadcast, watch};
use veto_bus::NatsSettings;
use veto_core::wire::nats::{checkpoint_msg_id, delta_msg_id, issuers_msg_id};

use crate::authority::Authority;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::store::StoreError;

pub use veto_core::wire::nats::{CHECKPOINT_SUBJECT, DELTA_SUBJECT, ISSUERS_SUBJECT, STREAM};
/// JetStream's de-duplication window for `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the stream keeps messages (older clients catch up over HTTP).
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long a publish waits for JetStream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a relay session ended (it starts over after a backoff).
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Connect(#[from] veto_bus::ConnectError),
    #[error("jetstream stream `{STREAM}`: {0}")]
    Stream(String),
    #[error("publishing {what} {ver} to jetstream: {source}")]
    Publish {
        what: &'static str,
        ver: u64,
        source: jetstream::context::PublishError,
    },
    #[error("the outbox: {0}")]
    Store(#[from] StoreError),
}

/// Runs the relay to the NATS bus until `stop` turns true, reconnecting
/// with backoff (200 ms doubling to 10 s).
pub(crate) async fn relay(
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
    bus: NatsSettings,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = session(&authority, &metrics, &bus, &mut stop).await;
        metrics.bus_connected.set(0);
        match result {
            Ok(()) => return,
            Err(e) => {
                metrics.bus_errors.inc();
                tracing::warn!(error = %e, retry_in = ?backoff, "NATS relay down; deltas wait in the outbox");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Creates the stream, or brings an existing one's subjects, duplicate
/// window and max age to ours (the rest of its configuration is kept).
/// Needs `$JS.API.STREAM.INFO.VETO_SRL`, `.CREATE.` and `.UPDATE.`.
async fn ensure_stream(js: &jetstream::Context) -> Result<(), RelayError> {
    // Sorted, as the existing configuration is compared sorted.
    let mut subjects = vec![
        DELTA_SUBJECT.to_owned(),
        CHECKPOINT_SUBJECT.to_owned(),
        ISSUERS_SUBJECT.to_owned(),
    ];
    subjects.sort_unstable();
    let err = |e: &dyn std::fmt::Display| RelayError::Stream(e.to_string());
    match js.get_stream(STREAM).await {
        Ok(mut existing) => {
            let mut config = existing.info().await.map_err(|e| err(&e))?.config.clone();
            let mut have = config.subjects.clone();
            have.sort_unstable();
            if have == subjects
                && config.duplicate_window == DUPLICATE_WINDOW
                && config.max_age == MAX_AGE
            {
                return Ok(());
            }
            config.subjects = subjects;
            config.duplicate_window = DUPLICATE_WINDOW;
            config.max_age = MAX_AGE;
            tracing::info!(
                stream = STREAM,
                "updating the jetstream stream configuration"
            );
            js.update_stream(&config).await.map_err(|e| err(&e))?;
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(stream::Config {
                name: STREAM.to_owned(),
                subjects,
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                num_replicas: 1,
                max_age: MAX_AGE,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        }
        Err(e) => return Err(err(&e)),
    }
    Ok(())
}

/// Publishes `jws` with message id `id` and waits for the acknowledgement;
/// true when the stream stored it (false: a duplicate it already had).
async fn publish(
    js: &jetstream::Context,
    subject: &'static str,
    what: &'static str,
    ver: u64,
    id: String,
    jws: &str,
) -> Result<bool, RelayError> {
    let fail = |source| RelayError::Publish { what, ver, source };
    let message = PublishMessage::build()
        .payload(jws.to_owned().into())
        .message_id(id);
    let ack = js.send_publish(subject, message).await.map_err(fail)?;
    let ack = ack.await.map_err(fail)?;
    Ok(!ack.duplicate)
}

async fn session(
    authority: &Authority,
    metrics: &Metrics,
    bus: &NatsSettings,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let client = bus.connect("veto-registry").await?;
    let mut js = jetstream::new(client);
    js.set_timeout(ACK_TIMEOUT);
    ensure_stream(&js).await?;
    metrics.bus_connected.set(1);
    tracing::info!(servers = bus.servers(), "NATS relay connected");
    let mut events = authority.subscribe();
    // The issuer key set version last published: the current set goes out
    // at the start of each session (it may have changed while the bus was
    // away), on every change, and on the next tick after a missed one.
    let mut issuers = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        drain(authority, metrics, &js).await?;
        if issuers != Some(authority.issuers_version()) {
            let (ver, jws) = authority.issuer_set();
            let id = issuers_msg_id(ver, &jws);
            publish(&js, ISSUERS_SUBJECT, "issuer key set", ver, id, &jws).await?;
            issuers = Some(ver);
        }
        tokio::select! {
            event = events.recv() => match event {
                Ok(Event::Checkpoint { ver, jws, .. }) => {
                    drain(authority, metrics, &js).await?;
                    let id = checkpoint_msg_id(ver, &jws);
                    publish(&js, CHECKPOINT_SUBJECT, "checkpoint", ver, id, &jws).await?;
                }
                Ok(Event::Issuers { ver, jws, .. }) => {
                    let id = issuers_msg_id(ver, &jws);
                    publish(&js, ISSUERS_SUBJECT, "issuer key set", ver, id, &jws).await?;
                    issuers = Some(ver);
                }
                Ok(Event::Delta { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // Another replica's commits, or a wake-up missed while publishing.
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// Publishes every unpublished delta, oldest first; each is marked
/// published only after JetStream acknowledged it.
async fn drain(
    authority: &Authority,
    metrics: &Metrics,
    js: &jetstream::Context,
) -> Result<(), RelayError> {
    loop {
        let batch = authority.outbox(256).await?;
        if batch.is_empty() {
            metrics.outbox.set(0);
            return Ok(());
        }
        metrics.outbox.set(batch.len() as i64);
        for (ver, jws) in batch {
            let id = delta_msg_id(ver, &jws);
            let stored = publish(js, DELTA_SUBJECT, "delta", ver, id, &jws).await?;
            authority.mark_published(ver).await?;
            if stored {
                metrics.bus_published.inc();
            }
        }
    }
}
