//! The transactional outbox relay for the NATS JetStream bus.
//!
//! A delta is committed first (in the store, `published = false`); this
//! relay publishes unpublished deltas in version order with
//! `Nats-Msg-Id` = version, and marks each published only after JetStream
//! acknowledged it. After a crash the relay starts over from the outbox:
//! a delta published but not yet marked is published again and the stream
//! de-duplicates it. Every replica runs a relay; duplicates between them
//! are de-duplicated the same way. Checkpoints follow on their subject,
//! each after the outbox is drained, so none overtakes its delta.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use veto_nats::Client;

use crate::authority::Authority;
use crate::event::Event;
use crate::metrics::Metrics;

pub use veto_core::wire::nats::{CHECKPOINT_SUBJECT, DELTA_SUBJECT, STREAM};
/// JetStream's de-duplication window for `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the stream keeps messages (older clients catch up over HTTP).
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the relay to the NATS server at `url` until `stop` turns true,
/// reconnecting with backoff (200 ms doubling to 10 s).
pub(crate) async fn relay(
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
    url: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = session(&authority, &metrics, &url, &mut stop).await;
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

async fn session(
    authority: &Authority,
    metrics: &Metrics,
    url: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let client = Client::connect(url, "veto-registry")
        .await
        .map_err(|e| e.to_string())?;
    client
        .js_ensure_stream(
            STREAM,
            &[DELTA_SUBJECT, CHECKPOINT_SUBJECT],
            DUPLICATE_WINDOW,
            MAX_AGE,
        )
        .await
        .map_err(|e| e.to_string())?;
    metrics.bus_connected.set(1);
    tracing::info!(url, "NATS relay connected");
    let mut events = authority.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        drain(authority, metrics, &client).await?;
        tokio::select! {
            event = events.recv() => match event {
                Ok(Event::Checkpoint { ver, jws, .. }) => {
                    drain(authority, metrics, &client).await?;
                    // Unique per checkpoint: its signature's tail.
                    let id = format!("cp-{ver}-{}", &jws[jws.len().saturating_sub(16)..]);
                    client.js_publish(CHECKPOINT_SUBJECT, &id, jws.as_bytes(), ACK_TIMEOUT).await.map_err(|e| e.to_string())?;
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

/// Publishes every unpublished delta, oldest first.
async fn drain(authority: &Authority, metrics: &Metrics, client: &Client) -> Result<(), String> {
    loop {
        let batch = authority.outbox(256).await.map_err(|e| e.to_string())?;
        if batch.is_empty() {
            metrics.outbox.set(0);
            return Ok(());
        }
        metrics.outbox.set(batch.len() as i64);
        for (ver, jws) in batch {
            let ack = client
                .js_publish(DELTA_SUBJECT, &ver.to_string(), jws.as_bytes(), ACK_TIMEOUT)
                .await
                .map_err(|e| format!("publishing delta {ver}: {e}"))?;
            authority
                .mark_published(ver)
                .await
                .map_err(|e| e.to_string())?;
            if !ack.duplicate {
                metrics.bus_published.inc();
            }
        }
    }
}
