//! The registry's background loops: the writer (the one owner of version
//! assignment), the heartbeat, the pruner, the follower of other replicas'
//! commits (PostgreSQL) and the SQLite WAL checkpointer. Each runs until
//! the stop signal turns true; all of them work through [`Authority`]'s
//! methods.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::authority::{Authority, WriteJob};
use crate::store;

/// Most revocation requests the writer gathers into one commit.
const MAX_GROUP: usize = 1024;
/// How often the follower reads new versions when no notification came.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// The follower reloads issuer keys every this many polls.
const ISSUER_RELOAD_POLLS: u64 = 5;
/// How often SQLite's WAL is checkpointed.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The running loops; dropping this aborts them.
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the loops other than the writer: the heartbeat every
/// `heartbeat`, the pruner every `prune_interval`, the follower and the WAL
/// checkpointer (each only when the store needs it).
pub(crate) fn spawn(
    authority: &Arc<Authority>,
    heartbeat: Duration,
    prune_interval: Duration,
    stop: &watch::Receiver<bool>,
) -> Tasks {
    Tasks(vec![
        tokio::spawn(heartbeats(authority.clone(), heartbeat, stop.clone())),
        tokio::spawn(pruner(authority.clone(), prune_interval, stop.clone())),
        tokio::spawn(follower(authority.clone(), stop.clone())),
        tokio::spawn(wal_checkpointer(authority.clone(), stop.clone())),
    ])
}

/// The one writer: drains the queue, commits a group of revocations in one
/// transaction, acknowledges, pushes; prunes in the same order.
pub(crate) async fn writer(authority: Arc<Authority>, mut rx: mpsc::Receiver<WriteJob>) {
    while let Some(first) = rx.recv().await {
        let mut revokes = Vec::new();
        let mut prunes = Vec::new();
        let mut job = Some(first);
        while let Some(j) = job.take() {
            match j {
                WriteJob::Revoke {
                    entries,
                    actor,
                    reply,
                } => revokes.push((entries, actor, reply)),
                WriteJob::Prune { reply } => prunes.push(reply),
            }
            if revokes.len() < MAX_GROUP {
                job = rx.try_recv().ok();
            }
        }
        if !revokes.is_empty() {
            authority.commit_group(revokes).await;
        }
        for reply in prunes {
            let _ = reply.send(authority.prune_expired().await);
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn heartbeats(authority: Arc<Authority>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => authority.heartbeat().await,
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn pruner(authority: Arc<Authority>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => match authority.prune().await {
                None => return,
                Some(Err(e)) => tracing::error!(error = %e, "pruning failed; will retry"),
                Some(Ok(_)) => {}
            },
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Keeps memory in step with commits made by other replicas (PostgreSQL):
/// woken by `NOTIFY`, and every second in case a notification was lost.
/// Issuer keys added or retired elsewhere are reloaded every few seconds.
async fn follower(authority: Arc<Authority>, mut stop: watch::Receiver<bool>) {
    let Some(url) = authority.shared_url().map(str::to_owned) else {
        return;
    };
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        let mut notes = match store::listen(&url).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for other replicas' commits; following by polling");
                None
            }
        };
        loop {
            let upto = tokio::select! {
                v = async { match notes.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => match v {
                    Some(v) => v,
                    None => break,
                },
                _ = tick.tick() => {
                    ticks += 1;
                    if ticks % ISSUER_RELOAD_POLLS == 0 {
                        if let Err(e) = authority.reload_issuers().await {
                            tracing::warn!(error = %e, "cannot reload the issuer keys; will retry");
                        }
                    }
                    // As far as there is (the store's versions are i64).
                    i64::MAX as u64
                },
                _ = stopped(&mut stop) => return,
            };
            authority.follow(upto).await;
        }
        tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// SQLite only: WAL checkpoints every second, off the commit path.
async fn wal_checkpointer(authority: Arc<Authority>, mut stop: watch::Receiver<bool>) {
    if !authority.needs_wal_checkpoints() {
        return;
    }
    let mut tick = tokio::time::interval(WAL_CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = authority.wal_checkpoint().await {
                    tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                }
            }
            _ = stopped(&mut stop) => return,
        }
    }
}
