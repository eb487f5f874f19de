//! The applied revocation state and everything that hangs off it, owned
//! by one type ([`State`]): the checks read it, the one apply path
//! changes it, and the sync side learns from it where to resume and
//! which gap to repair. Its fields are private; the rest of the crate
//! calls its methods.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};
use veto_core::{
    Applied, ApplyError, CheckConfig, Checker, Clock, Decision, Denial, DenyReason, IssuerSet,
    KeySet, ParsedChain, SrlState, VerifiedChain, VerifiedIssuers,
};

use crate::cache::ChainCache;
use crate::incoming::Incoming;
use crate::metrics::{Gauges, Metrics};
use crate::outcome::{Outcome, Status};
use crate::persist::DiskCache;
use crate::pop::{Presented, Prover};

/// The applied version and the `iat` of its newest attestation, read
/// together: where a push subscription resumes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Position {
    pub ver: u64,
    pub attested: Option<u64>,
}

/// What a check reads, swapped whole by an apply or a change of issuer
/// keys. The verified-chain cache belongs to the checker that verified its
/// chains: a change of issuer keys starts a new, empty one with the new
/// checker, so a check that verified a chain under the old keys and
/// inserts it after the swap writes into a cache no later check reads.
struct Current {
    state: SrlState,
    checker: Arc<Checker>,
    cache: Arc<ChainCache>,
}

/// The authorizer's state. A check never takes a lock of its own (only
/// the chain cache's shard lock on a hit); an apply and a change of issuer
/// keys are serialized by `apply_lock`.
///
/// Lock order: `apply_lock`, then the disk cache's lock
/// ([`DiskCache::record`]); that never takes `apply_lock`.
pub(crate) struct State {
    check: CheckConfig,
    clock: Arc<dyn Clock>,
    current: ArcSwap<Current>,
    /// Serializes the read-modify-swap of `current`.
    apply_lock: Mutex<()>,
    /// Where applied objects are recorded, when there is a cache directory.
    disk: Option<Arc<DiskCache>>,
    prover: Prover,
    metrics: Metrics,
    version_tx: watch::Sender<u64>,
    /// Woken when an object showed a gap.
    catch_up: Notify,
    /// The highest version a verified object showed to exist: a gap to
    /// it is repaired even when the checkpoint served on pull lags.
    gap_to: AtomicU64,
    push_connected: AtomicBool,
    /// The applied signed issuer key set.
    issuer_set: Mutex<IssuerSet>,
    /// The last sync error, until a verified object applies again.
    last_error: Mutex<Option<String>>,
}

impl State {
    pub fn new(
        check: CheckConfig,
        issuers: KeySet,
        clock: Arc<dyn Clock>,
        cache: ChainCache,
        prover: Prover,
        disk: Option<Arc<DiskCache>>,
    ) -> Self {
        let checker = Arc::new(Checker::new(issuers, check.clone()));
        let (version_tx, _) = watch::channel(0);
        Self {
            check,
            clock,
            current: ArcSwap::from_pointee(Current {
                state: SrlState::new(),
                checker,
                cache: Arc::new(cache),
            }),
            apply_lock: Mutex::new(()),
            disk,
            prover,
            metrics: Metrics::new(),
            version_tx,
            catch_up: Notify::new(),
            gap_to: AtomicU64::new(0),
            push_connected: AtomicBool::new(false),
            issuer_set: Mutex::new(IssuerSet::new()),
            last_error: Mutex::new(None),
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn pop(&self) -> &crate::pop::PopConfig {
        self.prover.config()
    }

    pub fn nonce_now(&self) -> Option<String> {
        self.prover.nonce(self.clock.now())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Decides a request against the state now, its proof of possession
    /// included. Never waits on I/O.
    pub fn check(&self, req: &Presented<'_>) -> Outcome {
        let now = self.clock.now();
        let current = self.current.load();
        let token = req.credential.chain;
        let mut proven = None;
        let mut pop_error = None;
        let pop = |chain: &ParsedChain| match self.prover.prove(chain, req, now) {
            Ok(p) => {
                proven = p;
                Ok(())
            }
            Err((denial, code)) => {
                pop_error = Some(code);
                Err(denial)
            }
        };
        let (mut decision, chain) = match current.cache.get(token) {
            Some(chain) => {
                self.metrics.cache_hit();
                let decision = current.checker.check_verified_proved(
                    &current.state,
                    &chain,
                    req.action,
                    now,
                    pop,
                );
                // Revocation is irreversible and expiry final: such a chain
                // is never allowed again, so it gives its room back.
                if matches!(
                    decision.reason(),
                    Some(DenyReason::Revoked | DenyReason::Expired)
                ) {
                    current.cache.remove(token);
                }
                (decision, Some(chain))
            }
            None => {
                self.metrics.cache_miss();
                self.check_uncached(&current, token, req.action, now, pop)
            }
        };
        // The proof is spent only for a chain whose signatures verified.
        let mut holder = None;
        if let (Some(p), Some(_)) = (&proven, &chain) {
            match self.prover.spend(p, now) {
                Ok(()) => holder = Some(p.kid.clone()),
                Err((denial, code)) => {
                    decision = Decision::Deny(denial);
                    pop_error = Some(code);
                }
            }
        }
        self.metrics.decision(&decision);
        if let Decision::Deny(d) = &decision {
            tracing::debug!(reason = %d.reason, message = %d.message, action = req.action, "denied");
        }
        Outcome {
            decision,
            chain,
            holder,
            pop_error,
        }
    }

    fn check_uncached(
        &self,
        current: &Current,
        token: &str,
        action: &str,
        now: u64,
        pop: impl FnOnce(&ParsedChain) -> Result<(), Denial>,
    ) -> (Decision, Option<Arc<VerifiedChain>>) {
        let parsed = match ParsedChain::parse(token) {
            Ok(p) => p,
            Err(d) => return (Decision::Deny(d.into()), None),
        };
        let (decision, verified) =
            current
                .checker
                .check_and_verify_proved(&current.state, parsed, action, now, pop);
        let chain = verified.map(Arc::new);
        // Only a chain that was allowed is worth keeping: one denied for
        // its action, expiry or revocation is not going to be reused. A
        // `stale` denial comes after every other check passed and lasts
        // only until the registry is heard from again: that chain is kept.
        let reusable = match &decision {
            Decision::Allow { .. } => true,
            Decision::Deny(d) => d.reason == DenyReason::Stale,
        };
        if let (Some(c), true) = (&chain, reusable) {
            current.cache.insert(token, c.clone());
        }
        (decision, chain)
    }

    /// Re-decides a chain verified earlier, against the state now.
    pub fn recheck(&self, chain: &VerifiedChain, action: &str) -> Decision {
        let current = self.current.load();
        current
            .checker
            .check_verified(&current.state, chain, action, self.clock.now())
    }

    /// The one apply path: push, poll and the disk cache all come here.
    pub fn apply(&self, incoming: Incoming) -> Result<Applied, ApplyError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        let mut state = current.state.clone();
        let (kind, result) = match &incoming {
            Incoming::Snapshot(s, _) => ("snapshot", state.apply_snapshot(s.clone())),
            Incoming::Delta(d, _) => ("delta", state.apply_delta(d)),
            Incoming::Checkpoint(c, _) => ("checkpoint", state.apply_checkpoint(c)),
        };
        match result {
            Ok(Applied::Ignored) => {}
            Ok(applied) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                // Signed objects are kept only to be written to the disk
                // cache; recorded under the apply lock, in applied order.
                if let Some(disk) = &self.disk {
                    disk.record(incoming);
                }
                let ver = state.ver();
                self.current.store(Arc::new(Current {
                    state,
                    checker: current.checker.clone(),
                    cache: current.cache.clone(),
                }));
                self.metrics.applied(kind);
                if let Applied::Advanced { from, to } = applied {
                    tracing::debug!(from, to, kind, "applied");
                    self.version_tx.send_replace(ver);
                }
            }
            Err(e @ ApplyError::Gap { received, .. }) => {
                tracing::info!(error = %e, "gap: catching up");
                self.note_gap(received);
            }
            Err(e) => {
                let label = match e {
                    ApplyError::Equivocation { .. } => {
                        self.metrics.equivocation();
                        "equivocation"
                    }
                    ApplyError::Rollback { .. } => "rollback",
                    ApplyError::BrokenChain { .. } => "wrong_prev",
                    ApplyError::Gap { .. } => "gap",
                };
                self.metrics.rejected(label);
                tracing::error!(error = %e, kind, "refused a signed object from the registry");
            }
        }
        result
    }

    /// Applies a verified issuer key set ([`IssuerSet::apply`]): true when
    /// its keys now verify roots, and then its signed bytes `text` go to
    /// the disk cache. A rollback or an equivocation is counted
    /// (`issuers_rollback`, `issuers_equivocation`) and changes nothing.
    ///
    /// The keys are installed and recorded while the set's lock is held,
    /// so a slower apply of an older set (a poll racing a push) can never
    /// install its keys or write its bytes after a newer set's. Lock order:
    /// `issuer_set`, then `apply_lock` (which never takes `issuer_set`).
    pub fn apply_issuers(&self, set: VerifiedIssuers, text: String) -> Result<bool, ApplyError> {
        let mut applied = self.issuer_set.lock().unwrap_or_else(|p| p.into_inner());
        match applied.apply(set) {
            Ok(Applied::Advanced { .. }) => {
                let keys = applied.keys().cloned().unwrap_or_default();
                self.set_issuers(keys);
                if let Some(disk) = &self.disk {
                    disk.record_issuers(text);
                    disk.poke();
                }
                drop(applied);
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => {
                self.metrics.rejected(match e {
                    ApplyError::Rollback { .. } => "issuers_rollback",
                    _ => "issuers_equivocation",
                });
                Err(e)
            }
        }
    }

    /// The version of the applied issuer key set, if one was applied.
    pub fn issuers_version(&self) -> Option<u64> {
        self.issuer_set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ver()
    }

    pub fn set_issuers(&self, keys: KeySet) {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        if current.checker.issuers() == &keys {
            return;
        }
        tracing::info!(keys = keys.keys().len(), "issuer keys updated");
        self.current.store(Arc::new(Current {
            state: current.state.clone(),
            checker: Arc::new(Checker::new(keys, self.check.clone())),
            cache: Arc::new(current.cache.empty_like()),
        }));
    }

    /// The applied version.
    pub fn version(&self) -> u64 {
        self.current.load().state.ver()
    }

    /// The applied version and its newest attestation, read together.
    pub fn position(&self) -> Position {
        let c = self.current.load();
        Position {
            ver: c.state.ver(),
            attested: c.state.attested().map(|a| a.iat),
        }
    }

    /// A channel that changes whenever a newer version is applied.
    pub fn subscribe_versions(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    /// The version applied now (the last value sent to subscribers).
    pub fn applied_version(&self) -> u64 {
        *self.version_tx.borrow()
    }

    /// Records that a verified object showed version `ver` to exist, and
    /// wakes the catch-up.
    fn note_gap(&self, ver: u64) {
        self.gap_to.fetch_max(ver, Ordering::Relaxed);
        self.catch_up.notify_one();
    }

    /// Whether a verified object showed a version beyond the applied one.
    pub fn gap_pending(&self) -> bool {
        self.gap_to.load(Ordering::Relaxed) > self.version()
    }

    /// Completes when an object shows a gap (or showed one since the last
    /// wait).
    pub fn gap_noticed(&self) -> Notified<'_> {
        self.catch_up.notified()
    }

    /// Records a sync error (kept until a verified object applies).
    pub fn record_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    pub fn set_push_connected(&self, connected: bool) {
        self.push_connected.store(connected, Ordering::Relaxed);
    }

    /// Until when the applied state stays fresh (see [`Status`]).
    pub fn fresh_until(&self) -> Option<u64> {
        self.current
            .load()
            .state
            .fresh_until(self.check.max_staleness)
    }

    /// The sync state now.
    pub fn status(&self) -> Status {
        let current = self.current.load();
        let st = &current.state;
        let now = self.clock.now();
        let max = self.check.max_staleness;
        Status {
            version: st.ver(),
            head: st.head().to_string(),
            fresh: st.is_fresh(now, max),
            fresh_until: st.fresh_until(max),
            age: st.age(now),
            push_connected: self.push_connected.load(Ordering::Relaxed),
            entries: st.set().len(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Prometheus metrics in the text format.
    pub fn metrics_text(&self) -> String {
        let s = self.status();
        let current = self.current.load();
        self.metrics.encode(&Gauges {
            version: s.version,
            age: s.age,
            fresh: s.fresh,
            push_connected: s.push_connected,
            cache_bytes: current.cache.bytes(),
            cache_chains: current.cache.len(),
            replay_bytes: self.prover.replay_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use veto_core::{Head, ManualClock, SigningKey, SrlSigner, SrlVerifier};

    use super::*;

    const NOW: u64 = 1_700_000_000;

    struct World {
        signer: SrlSigner,
        verifier: SrlVerifier,
        state: State,
        disk: Arc<DiskCache>,
        _dir: TempDir,
    }

    /// A directory removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn world() -> World {
        let key = SigningKey::generate().unwrap();
        let verifier = SrlVerifier::new(KeySet::new([key.public().clone()]), "veto");
        let signer = SrlSigner::new(key, "veto");
        let dir = std::env::temp_dir().join(format!(
            "veto-authz-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let (disk, saved) = DiskCache::open(&dir).unwrap();
        assert!(saved.is_none());
        let disk = Arc::new(disk);
        let state = State::new(
            CheckConfig::default(),
            KeySet::default(),
            Arc::new(ManualClock::new(NOW)),
            ChainCache::new(16, 1 << 20),
            Prover::new(crate::pop::PopConfig::default(), 5).unwrap(),
            Some(disk.clone()),
        );
        World {
            signer,
            verifier,
            state,
            disk,
            _dir: TempDir(dir),
        }
    }

    fn delta(w: &World, ver: u64, prev: Head) -> (Incoming, Head) {
        let (token, head) = w.signer.delta(ver, prev, NOW, Vec::new(), Vec::new());
        let d = w.verifier.delta(&token, NOW).unwrap();
        (Incoming::Delta(d, token), head)
    }

    #[test]
    fn apply_advances_records_and_announces_in_order() {
        let w = world();
        let mut versions = w.state.subscribe_versions();
        let (d1, h1) = delta(&w, 1, w.state.current.load().state.head());
        assert!(matches!(
            w.state.apply(d1),
            Ok(Applied::Advanced { from: 0, to: 1 })
        ));
        assert_eq!(w.state.version(), 1);
        assert!(versions.has_changed().unwrap());
        assert_eq!(*versions.borrow_and_update(), 1);
        assert_eq!(w.disk.kept_deltas(), 1);
        assert!(!w.state.gap_pending());

        // A duplicate is ignored: not recorded again, nothing announced.
        let (d1_again, _) = delta(&w, 1, w.state.current.load().state.head());
        let _ = w.state.apply(d1_again);
        assert_eq!(w.disk.kept_deltas(), 1);
        assert!(!versions.has_changed().unwrap());

        // Delta 3 on top of an unknown 2: a gap to repair, nothing applied.
        let (d3, _) = delta(&w, 3, h1);
        assert!(matches!(
            w.state.apply(d3),
            Err(ApplyError::Gap {
                applied: 1,
                received: 3
            })
        ));
        assert!(w.state.gap_pending());
        assert_eq!((w.state.version(), w.disk.kept_deltas()), (1, 1));
    }

    #[test]
    fn a_snapshot_replaces_the_recorded_deltas() {
        let w = world();
        let (d1, h1) = delta(&w, 1, w.state.current.load().state.head());
        w.state.apply(d1).unwrap();
        let (d2, h2) = delta(&w, 2, h1);
        w.state.apply(d2).unwrap();
        assert_eq!(w.disk.kept_deltas(), 2);
        let token = w
            .signer
            .snapshot(3, h2, NOW, NOW + 600, &veto_core::RevocationSet::default());
        let s = w.verifier.snapshot(&token, NOW).unwrap();
        w.state
            .apply(Incoming::Snapshot(s, token.into_bytes()))
            .unwrap();
        assert_eq!((w.state.version(), w.disk.kept_deltas()), (3, 0));
        assert_eq!(w.state.position().attested, Some(NOW));
    }

    /// A check that verified a chain under the old issuer keys and caches
    /// it after the keys changed must not leave it for later checks: the
    /// cache belongs to the checker that verified its chains.
    #[test]
    fn a_chain_verified_under_retired_issuer_keys_is_not_cached_past_the_change() {
        let (old_key, new_key) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let state = State::new(
            CheckConfig::default(),
            KeySet::new([old_key.public().clone()]),
            Arc::new(ManualClock::new(NOW)),
            ChainCache::new(16, 1 << 20),
            Prover::new(
                crate::pop::PopConfig {
                    policy: crate::pop::PopPolicy::Off,
                    ..crate::pop::PopConfig::default()
                },
                5,
            )
            .unwrap(),
            None,
        );
        let token = veto_core::warrant::mint_root(
            &old_key,
            "veto",
            veto_core::LinkSpec {
                sub: "agent".into(),
                act: vec!["*".into()],
                iat: NOW,
                exp: NOW + 600,
                holder: None,
            },
        )
        .unwrap();
        let check = || {
            state.check(&Presented {
                credential: veto_core::dpop::Credential {
                    scheme: veto_core::dpop::Scheme::Bearer,
                    chain: &token,
                    proof: None,
                },
                method: "GET",
                htu: "http://gw/x",
                action: "http:GET:/x",
            })
        };
        let untrusted = |o: &Outcome| o.decision.reason() == Some(DenyReason::UntrustedIssuer);
        // Verified (and cached) under the old keys: not untrusted (stale,
        // as no state was received, but verified).
        assert!(!untrusted(&check()));
        // A check that loaded the old keys, racing the change: it verifies
        // under them and inserts after the swap.
        let before = state.current.load_full();
        state.set_issuers(KeySet::new([new_key.public().clone()]));
        let (_, raced) = state.check_uncached(&before, &token, "http:GET:/x", NOW, |_| Ok(()));
        assert!(
            raced.is_some(),
            "the racing check verified the chain under the old keys"
        );
        // Every later check decides with the new keys.
        assert!(untrusted(&check()), "{:?}", check().decision);
    }
}
