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
//! Inside: `config` holds the settings and start errors, `outcome` what a
//! check answers; `state` owns the applied state (the checks, the one apply path,
//! gap tracking, the version channel, freshness) behind methods; `sync`
//! talks to the registry (push, poll, signed issuer keys, restore from disk) and feeds
//! `state`; `persist` keeps the signed objects for the disk cache under
//! its own lock; `cache` is the verified-chain cache; `layer` the tower
//! layer; `metrics` the Prometheus registry.
//!
//! ```no_run
//! # async fn demo(config: veto_authorizer::Config) -> Result<(), veto_authorizer::StartError> {
//! let authz = veto_authorizer::Authorizer::start(config).await?;
//! let outcome = authz.check("<root>~<leaf>", "http:GET:/orders/7");
//! if outcome.decision.is_allowed() { /* serve */ }
//! # Ok(()) }
//! ```

mod cache;
mod config;
mod fleet;
mod incoming;
mod layer;
mod metrics;
mod outcome;
mod persist;
mod pop;
mod state;
mod sync;

use std::sync::Arc;

use tokio::sync::watch;
use veto_core::{Clock, Decision, KeySet, SystemClock, VerifiedChain};

pub use config::{check_registry_url, Config, FleetConfig, Issuers, Push, StartError};
pub use layer::{
    action_for, bad_target_response, challenge, credential, deny_response, http_status,
    request_htu, request_target, AuthorizeLayer, AuthorizeService, Challenge, Verified,
};
pub use outcome::{Outcome, Status};
pub use pop::{PopConfig, PopErrorCode, PopPolicy, Presented};
pub use veto_core::dpop::{Credential, Scheme};
pub use veto_core::{DenyReason, StalenessPolicy};
pub use veto_tls::{ClientTls, TlsError};

use crate::cache::ChainCache;
use crate::persist::DiskCache;
use crate::pop::Prover;
use crate::state::State;
use crate::sync::Syncer;

/// An authorizer. Cheap to clone; the sync tasks stop when
/// [`Authorizer::shutdown`] is called.
#[derive(Clone)]
pub struct Authorizer {
    state: Arc<State>,
    sync: Arc<Syncer>,
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
        check_registry_url(&config.registry)?;
        if let Some(fleet) = &config.fleet {
            veto_core::report::check_name(&fleet.name)
                .map_err(|e| StartError::Fleet(e.to_string()))?;
        }
        let http = sync::client(&config, true)?;
        let first_bus = match &config.push {
            Push::Nats(bus) => sync::first_connect(bus).await.map_err(StartError::Bus)?,
            Push::Sse | Push::Off => None,
        };
        let (disk, saved) = match &config.cache_dir {
            Some(dir) => {
                let (disk, saved) = DiskCache::open(dir).map_err(|source| StartError::Cache {
                    path: dir.clone(),
                    source,
                })?;
                (Some(Arc::new(disk)), saved)
            }
            None => (None, None),
        };
        let issuers = match &config.issuers {
            Issuers::Pinned(keys) => keys.clone(),
            Issuers::Signed { .. } => KeySet::default(),
        };
        let state = Arc::new(State::new(
            config.check.clone(),
            issuers,
            clock,
            ChainCache::new(config.chain_cache_capacity, config.chain_cache_bytes),
            Prover::new(config.pop.clone(), config.check.skew).map_err(StartError::Random)?,
            disk.clone(),
        ));
        let (sync_fleet, registry) = (config.fleet.clone(), config.registry.clone());
        let sync = Arc::new(Syncer::new(config, http.clone(), state.clone(), disk));
        if let Some(saved) = saved {
            sync.restore(saved);
        }
        // A fleet token the registry refuses is a configuration error, like
        // a bad certificate: say so now. An unreachable registry is not
        // (the reporter enrols when it is back).
        let mut enrolled = false;
        if let Some(fleet) = &sync_fleet {
            if let Some(token) = &fleet.enrol_token {
                match fleet::enrol(&http, &registry, fleet, token).await {
                    Ok(()) => enrolled = true,
                    Err(fleet::Enrol::Refused(e)) => return Err(StartError::Fleet(e)),
                    Err(fleet::Enrol::Unreachable(e)) => {
                        tracing::warn!(error = %e, "cannot enrol with the registry's fleet at start; retrying in the background");
                    }
                }
            }
        }
        sync.spawn(first_bus, enrolled);
        Ok(Self { state, sync })
    }

    /// Stops the sync tasks. Checks keep working on the last state (and
    /// become stale in time).
    pub fn shutdown(&self) {
        self.sync.shutdown();
    }

    /// Decides a request presented with `Authorization: Bearer <token>`
    /// and no proof, for `action` (such as `http:GET:/orders/7`). Under
    /// the default `required` proof policy it is denied `pop_required`;
    /// HTTP front ends call [`Authorizer::check_request`].
    pub fn check(&self, token: &str, action: &str) -> Outcome {
        self.check_request(&Presented {
            credential: Credential {
                scheme: Scheme::Bearer,
                chain: token,
                proof: None,
            },
            method: "",
            htu: "",
            action,
        })
    }

    /// Decides a request: its credential and proof (DPoP, RFC 9449), the
    /// method and canonical URI the proof must name, and the action. In
    /// DESIGN 4 order: parse, revocation, time, proof, signatures, action,
    /// freshness.
    pub fn check_request(&self, req: &Presented<'_>) -> Outcome {
        self.state.check(req)
    }

    /// The proof-of-possession settings.
    pub fn pop(&self) -> &PopConfig {
        self.state.pop()
    }

    /// The server nonce clients must put in proofs now (`DPoP-Nonce`),
    /// when nonces are on.
    pub fn nonce_now(&self) -> Option<String> {
        self.state.nonce_now()
    }

    /// Re-decides a chain verified earlier, against the current state: for
    /// cutting off a long-lived response when its chain becomes revoked.
    pub fn recheck(&self, chain: &VerifiedChain, action: &str) -> Decision {
        self.state.recheck(chain, action)
    }

    /// A channel that changes whenever a newer version is applied.
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.state.subscribe_versions()
    }

    /// The sync state now.
    pub fn status(&self) -> Status {
        self.state.status()
    }

    /// The version applied now: what [`Authorizer::versions`] last sent.
    pub fn applied_version(&self) -> u64 {
        self.state.applied_version()
    }

    /// Until when (Unix seconds) the applied state stays fresh without news
    /// (`Status::fresh_until` alone, without building the whole status:
    /// the proxy reads it on every request).
    pub fn fresh_until(&self) -> Option<u64> {
        self.state.fresh_until()
    }

    /// Prometheus metrics in the text format.
    pub fn metrics_text(&self) -> String {
        self.state.metrics_text()
    }

    /// Polls the registry once now (checkpoint, then catch-up if needed).
    pub async fn sync_now(&self) {
        sync::poll_once(&self.sync).await;
    }
}
