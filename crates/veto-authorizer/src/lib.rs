//! veto's authorizer: decide every request against verified, versioned
//! revocation state that is kept current by push and poll, and know at
//! every moment how stale it is.
//!
//! - [`Authorizer::start`] loads the last verified state from disk (if a
//!   cache directory is set), re-verifying it, and starts the sync tasks:
//!   one push subscription (SSE) and a poller (fallback and gap repair).
//!   Both feed one apply path; the state swaps atomically.
//! - [`Authorizer::check`] never waits on I/O: a verified-chain cache skips
//!   signature work for tokens seen before; revocation, expiry, action and
//!   freshness are checked on every call.
//! - [`AuthorizeLayer`] enforces on any tower/axum/hyper service.
//!
//! ```no_run
//! # async fn demo(config: veto_authorizer::Config) -> Result<(), veto_authorizer::StartError> {
//! let authz = veto_authorizer::Authorizer::start(config).await?;
//! let outcome = authz.check("<root>~<leaf>", "http:GET:/orders/7");
//! if outcome.decision.is_allowed() { /* serve */ }
//! # Ok(()) }
//! ```

mod cache;
mod layer;
mod metrics;
mod persist;
mod sync;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};
use veto_core::{
    Applied, ApplyError, CheckConfig, Checker, Clock, Decision, KeySet, ParsedChain, SrlState,
    SrlVerifier, SystemClock, VerifiedChain, VerifiedCheckpoint, VerifiedDelta, VerifiedSnapshot,
};

pub use layer::{
    action_for, bad_target_response, bearer, deny_response, http_status, request_target,
    AuthorizeLayer, AuthorizeService, Verified,
};
pub use veto_core::{DenyReason, StalenessPolicy};

use crate::cache::ChainCache;
use crate::metrics::Metrics;

/// Where trusted issuer keys come from.
#[derive(Clone, Debug)]
pub enum Issuers {
    /// The registry's JWKS, refreshed every interval. The JWKS is not
    /// signed: fetch it over a trusted network, or pin the keys.
    Jwks {
        /// Refresh interval.
        refresh: Duration,
    },
    /// Keys configured out of band.
    Pinned(KeySet),
}

/// The push transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// Server-Sent Events from `GET /v1/srl/events` (default).
    Sse,
    /// NATS JetStream (stream `VETO_SRL`) at this URL, such as
    /// `nats://127.0.0.1:4222`; HTTP polling covers while it is unreachable.
    Nats(String),
    /// No push: poll only.
    Off,
}

/// Authorizer settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Registry base URL, such as `http://127.0.0.1:8080`.
    pub registry: String,
    /// The authority's `iss`.
    pub iss: String,
    /// The pinned authority key(s) (more than one during a rotation).
    pub authority_keys: KeySet,
    /// Trusted issuer keys.
    pub issuers: Issuers,
    /// Push transport.
    pub push: Push,
    /// Poll interval (default 60 s), with ±20% jitter.
    pub poll_interval: Duration,
    /// Checks: depth, skew, max staleness (default 300 s), policy.
    pub check: CheckConfig,
    /// Where the last verified state is kept across restarts.
    pub cache_dir: Option<PathBuf>,
    /// A push connection that has carried no news this long is dropped and
    /// reopened (default 15 s: three missed heartbeats). News is a verified
    /// delta, checkpoint or snapshot that fits the applied chain and was
    /// signed after the newest one known: comments, unknown events,
    /// objects that fail to verify and replays renew nothing.
    pub push_idle_timeout: Duration,
    /// Most verified chains cached (default 65,536).
    pub chain_cache_capacity: usize,
    /// Byte budget of the verified-chain cache (default 64 MiB), counting
    /// each token and an estimate of its parsed chain. One root's chains
    /// (a root warrant and every descendant of it) may use at most 1/16.
    pub chain_cache_bytes: usize,
    /// Largest snapshot read from the registry (default 64 MiB; a
    /// 1M-entry snapshot is ~21 MB), counted after gzip decompression.
    /// The same cap bounds one push event (a snapshot may be pushed) and
    /// one page of deltas (a larger page is replaced by the snapshot).
    pub max_snapshot_bytes: usize,
    /// Timeout for each HTTP request to the registry (default 10 s).
    pub request_timeout: Duration,
}

impl Config {
    /// Defaults for a registry, authority and pinned authority key.
    pub fn new(
        registry: impl Into<String>,
        iss: impl Into<String>,
        authority_keys: KeySet,
    ) -> Self {
        Self {
            registry: registry.into().trim_end_matches('/').to_owned(),
            iss: iss.into(),
            authority_keys,
            issuers: Issuers::Jwks {
                refresh: Duration::from_secs(300),
            },
            push: Push::Sse,
            poll_interval: Duration::from_secs(60),
            check: CheckConfig::default(),
            cache_dir: None,
            push_idle_timeout: Duration::from_secs(15),
            chain_cache_capacity: 65_536,
            chain_cache_bytes: 64 << 20,
            max_snapshot_bytes: 64 << 20,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the authorizer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No authority key configured.
    #[error("no authority key configured: pin the registry's authority public key")]
    NoAuthorityKey,
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
    /// The cache directory is unusable.
    #[error("cache directory `{path}`: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The result of a check.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Allow or deny, with the reason.
    pub decision: Decision,
    /// The verified chain, when signatures verified (for re-checking a
    /// long-lived response, and for the agent and warrant ids).
    pub chain: Option<Arc<VerifiedChain>>,
}

/// A point-in-time view of the sync state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// Applied version.
    pub version: u64,
    /// Applied head.
    pub head: String,
    /// Whether the state is fresh now.
    pub fresh: bool,
    /// Until when it stays fresh without news (Unix seconds).
    pub fresh_until: Option<u64>,
    /// Seconds since the newest attestation was signed.
    pub age: Option<u64>,
    /// Whether the push subscription is connected.
    pub push_connected: bool,
    /// Revoked entries known.
    pub entries: usize,
}

pub(crate) struct Current {
    pub state: SrlState,
    pub checker: Arc<Checker>,
}

/// A verified object and its compact form (kept for the disk cache).
pub(crate) enum Incoming {
    Snapshot(VerifiedSnapshot, String),
    Delta(VerifiedDelta, String),
    Checkpoint(VerifiedCheckpoint, String),
}

pub(crate) struct Inner {
    pub config: Config,
    pub http: reqwest::Client,
    pub verifier: SrlVerifier,
    pub clock: Arc<dyn Clock>,
    pub current: ArcSwap<Current>,
    pub apply_lock: Mutex<persist::Objects>,
    pub cache: ChainCache,
    pub metrics: Metrics,
    pub version_tx: watch::Sender<u64>,
    pub catch_up: Notify,
    /// The highest version a verified object showed to exist: a gap to
    /// it is repaired even when the checkpoint served on pull lags.
    pub gap_to: AtomicU64,
    pub persist_now: Notify,
    pub push_connected: AtomicBool,
    pub shutdown: watch::Sender<bool>,
}

/// An authorizer. Cheap to clone; the sync tasks stop when
/// [`Authorizer::shutdown`] is called.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

impl Authorizer {
    /// Starts with the system clock.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Starts with an injected clock.
    pub async fn start_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        if config.authority_keys.is_empty() {
            return Err(StartError::NoAuthorityKey);
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| StartError::Http(e.to_string()))?;
        let verifier = SrlVerifier::new(config.authority_keys.clone(), config.iss.clone())
            .with_skew(config.check.skew)
            .with_limits(veto_core::SrlLimits {
                max_snapshot_bytes: config.max_snapshot_bytes,
                ..veto_core::SrlLimits::default()
            });
        let issuers = match &config.issuers {
            Issuers::Pinned(keys) => keys.clone(),
            Issuers::Jwks { .. } => KeySet::default(),
        };
        let checker = Arc::new(Checker::new(issuers, config.check.clone()));
        let (version_tx, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            http,
            verifier,
            clock,
            current: ArcSwap::from_pointee(Current {
                state: SrlState::new(),
                checker,
            }),
            apply_lock: Mutex::new(persist::Objects::default()),
            cache: ChainCache::new(config.chain_cache_capacity, config.chain_cache_bytes),
            metrics: Metrics::new(),
            version_tx,
            catch_up: Notify::new(),
            persist_now: Notify::new(),
            gap_to: AtomicU64::new(0),
            push_connected: AtomicBool::new(false),
            shutdown,
            config,
        });
        if let Some(dir) = &inner.config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| StartError::Cache {
                path: dir.clone(),
                source,
            })?;
            persist::load(&inner, dir);
        }
        let authz = Self { inner };
        authz.spawn_tasks();
        Ok(authz)
    }

    fn spawn_tasks(&self) {
        let inner = &self.inner;
        // Issuer keys first, so the first checks can verify chains.
        if let Issuers::Jwks { refresh } = inner.config.issuers {
            tokio::spawn(sync::jwks_loop(inner.clone(), refresh));
        }
        tokio::spawn(sync::poll_loop(inner.clone()));
        match &inner.config.push {
            Push::Sse => {
                tokio::spawn(sync::sse_loop(inner.clone()));
            }
            Push::Nats(url) => {
                tokio::spawn(sync::nats_loop(inner.clone(), url.clone()));
            }
            Push::Off => {}
        }
        if let Some(dir) = inner.config.cache_dir.clone() {
            tokio::spawn(persist::persist_loop(inner.clone(), dir));
        }
    }

    /// Stops the sync tasks. Checks keep working on the last state (and
    /// become stale in time).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    /// Decides a request: `token` is the chain (without `Bearer `), `action`
    /// the action it asks for, such as `http:GET:/orders/7`.
    pub fn check(&self, token: &str, action: &str) -> Outcome {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let current = inner.current.load();
        let outcome = match inner.cache.get(token) {
            Some(chain) => {
                inner.metrics.cache_hits.inc();
                let decision = current
                    .checker
                    .check_verified(&current.state, &chain, action, now);
                // Revocation is irreversible and expiry final: such a chain
                // is never allowed again, so it gives its room back.
                if matches!(
                    decision.reason(),
                    Some(DenyReason::Revoked | DenyReason::Expired)
                ) {
                    inner.cache.remove(token);
                }
                Outcome {
                    decision,
                    chain: Some(chain),
                }
            }
            None => {
                inner.metrics.cache_misses.inc();
                self.check_uncached(&current, token, action, now)
            }
        };
        inner.metrics.decision(&outcome.decision);
        if let Decision::Deny(d) = &outcome.decision {
            tracing::debug!(reason = %d.reason, message = %d.message, action, "denied");
        }
        outcome
    }

    fn check_uncached(&self, current: &Current, token: &str, action: &str, now: u64) -> Outcome {
        let parsed = match ParsedChain::parse(token) {
            Ok(p) => p,
            Err(d) => {
                return Outcome {
                    decision: Decision::Deny(d),
                    chain: None,
                }
            }
        };
        let (decision, verified) =
            current
                .checker
                .check_and_verify(&current.state, parsed, action, now);
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
            self.inner.cache.insert(token, c.clone());
        }
        Outcome { decision, chain }
    }

    /// Re-decides a chain verified earlier, against the current state: for
    /// cutting off a long-lived response when its chain becomes revoked.
    pub fn recheck(&self, chain: &VerifiedChain, action: &str) -> Decision {
        let current = self.inner.current.load();
        current
            .checker
            .check_verified(&current.state, chain, action, self.inner.clock.now())
    }

    /// A channel that changes whenever a newer version is applied.
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.inner.version_tx.subscribe()
    }

    /// The sync state now.
    pub fn status(&self) -> Status {
        let current = self.inner.current.load();
        let st = &current.state;
        let now = self.inner.clock.now();
        let max = self.inner.config.check.max_staleness;
        Status {
            version: st.ver(),
            head: st.head().to_string(),
            fresh: st.is_fresh(now, max),
            fresh_until: st.fresh_until(max),
            age: st.age(now),
            push_connected: self.inner.push_connected.load(Ordering::Relaxed),
            entries: st.set().len(),
        }
    }

    /// Prometheus metrics in the text format.
    pub fn metrics_text(&self) -> String {
        let s = self.status();
        let m = &self.inner.metrics;
        m.staleness.set(s.age.map_or(-1, |a| a as i64));
        m.fresh.set(i64::from(s.fresh));
        m.push_connected.set(i64::from(s.push_connected));
        m.version.set(s.version as i64);
        m.cache_bytes
            .set(i64::try_from(self.inner.cache.bytes()).unwrap_or(i64::MAX));
        m.cache_chains
            .set(i64::try_from(self.inner.cache.len()).unwrap_or(i64::MAX));
        m.encode()
    }

    /// Polls the registry once now (checkpoint, then catch-up if needed).
    pub async fn sync_now(&self) {
        sync::poll_once(&self.inner).await;
    }
}

impl Inner {
    /// The one apply path: push, poll and the disk cache all come here.
    pub(crate) fn apply(&self, incoming: Incoming) -> Result<Applied, ApplyError> {
        let mut objects = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
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
                // Signed objects are kept only to be written to the disk cache.
                if self.config.cache_dir.is_some() {
                    objects.record(incoming);
                }
                let ver = state.ver();
                self.current.store(Arc::new(Current {
                    state,
                    checker: current.checker.clone(),
                }));
                self.metrics
                    .applied
                    .get_or_create(&Metrics::label(kind))
                    .inc();
                if let Applied::Advanced { from, to } = applied {
                    tracing::debug!(from, to, kind, "applied");
                    self.version_tx.send_replace(ver);
                }
                self.persist_now.notify_one();
            }
            Err(e @ ApplyError::Gap { received, .. }) => {
                tracing::info!(error = %e, "gap: catching up");
                self.gap_to.fetch_max(received, Ordering::Relaxed);
                self.catch_up.notify_one();
            }
            Err(e) => {
                let label = match e {
                    ApplyError::Equivocation { .. } => {
                        self.metrics.equivocations.inc();
                        "equivocation"
                    }
                    ApplyError::Rollback { .. } => "rollback",
                    ApplyError::BrokenChain { .. } => "wrong_prev",
                    ApplyError::Gap { .. } => "gap",
                };
                self.metrics
                    .rejected
                    .get_or_create(&Metrics::label(label))
                    .inc();
                tracing::error!(error = %e, kind, "refused a signed object from the registry");
            }
        }
        result
    }

    pub(crate) fn set_issuers(&self, keys: KeySet) {
        let _guard = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        if current.checker.issuers() == &keys {
            return;
        }
        tracing::info!(keys = keys.keys().len(), "issuer keys updated");
        self.current.store(Arc::new(Current {
            state: current.state.clone(),
            checker: Arc::new(Checker::new(keys, self.config.check.clone())),
        }));
        self.cache.clear();
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }
}
