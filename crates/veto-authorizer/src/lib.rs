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
//! Inside: `state` owns the applied state (the checks, the one apply path,
//! gap tracking, the version channel, freshness) behind methods; `sync`
//! talks to the registry (push, poll, JWKS, restore from disk) and feeds
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
mod incoming;
mod layer;
mod metrics;
mod persist;
mod pop;
mod state;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use veto_core::{CheckConfig, Clock, Decision, KeySet, SystemClock, VerifiedChain};

pub use layer::{
    action_for, bad_target_response, challenge, credential, deny_response, http_status,
    request_htu, request_target, AuthorizeLayer, AuthorizeService, Challenge, Verified,
};
pub use pop::{PopConfig, PopErrorCode, PopPolicy, Presented};
pub use veto_core::dpop::{Credential, Scheme};
pub use veto_core::{DenyReason, StalenessPolicy};
pub use veto_tls::{ClientTls, TlsError};

use crate::cache::ChainCache;
use crate::persist::DiskCache;
use crate::pop::Prover;
use crate::state::State;
use crate::sync::Syncer;

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
#[derive(Clone, Debug)]
pub enum Push {
    /// Server-Sent Events from `GET /v1/srl/events` (default).
    Sse,
    /// NATS JetStream (stream `VETO_SRL`) with these settings (servers,
    /// TLS trust, credentials); HTTP polling covers while it is
    /// unreachable. The authorizer only subscribes: see the README for the
    /// permissions its NATS user needs.
    Nats(veto_bus::NatsSettings),
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
    /// Proof of possession (DPoP): policy (default `required`), window,
    /// replay-cache budget, server nonces.
    pub pop: PopConfig,
    /// What an `https://` registry is checked against: `None` trusts the
    /// compiled-in webpki roots; build one with a private CA bundle with
    /// [`ClientTls::with_ca_file`] (`--ca-file`).
    pub tls: Option<ClientTls>,
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
            pop: PopConfig::default(),
            tls: None,
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
    /// The NATS bus refused the connection for a reason retrying cannot
    /// fix: its certificate is not trusted, or it refused the credentials.
    #[error(transparent)]
    Bus(veto_bus::ConnectError),
    /// The registry URL is not one this build can reach.
    #[error("registry URL `{url}`: {reason}")]
    RegistryUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A TLS file (`--ca-file`) does not load.
    #[error(transparent)]
    Tls(#[from] veto_tls::TlsError),
    /// The operating system gave no randomness (for the DPoP nonce secret).
    #[error("{0}")]
    Random(String),
    /// The cache directory is unusable.
    #[error("cache directory `{path}`: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Refuses a registry URL the authorizer cannot fetch from: only
/// `http://HOST…` and `https://HOST…` (RFC 9110 §4.2) are served, so
/// anything else would start and never become ready.
pub fn check_registry_url(url: &str) -> Result<(), StartError> {
    let bad = |reason| {
        Err(StartError::RegistryUrl {
            url: url.to_owned(),
            reason,
        })
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        Some(_) => return bad("the scheme must be http or https"),
        None => return bad("expected `http://host:port` or `https://host:port`"),
    };
    if rest.split(['/', '?', '#']).next().unwrap_or("").is_empty() {
        return bad("no host");
    }
    if reqwest::Url::parse(url).is_err() {
        return bad("not a valid URL");
    }
    Ok(())
}

/// The result of a check.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Allow or deny, with the reason.
    pub decision: Decision,
    /// The verified chain, when signatures verified (for re-checking a
    /// long-lived response, and for the agent and warrant ids).
    pub chain: Option<Arc<VerifiedChain>>,
    /// The RFC 7638 thumbprint of the holder key the request's DPoP proof
    /// proved, when it carried a valid one.
    pub holder: Option<String>,
    /// When the proof-of-possession step refused the request: the RFC 9449
    /// error for `WWW-Authenticate`.
    pub pop_error: Option<PopErrorCode>,
    /// The server nonce to send in `DPoP-Nonce`, when nonces are on.
    pub nonce: Option<String>,
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
            Issuers::Jwks { .. } => KeySet::default(),
        };
        let state = Arc::new(State::new(
            config.check.clone(),
            issuers,
            clock,
            ChainCache::new(config.chain_cache_capacity, config.chain_cache_bytes),
            Prover::new(config.pop.clone(), config.check.skew).map_err(StartError::Random)?,
            disk.clone(),
        ));
        let sync = Arc::new(Syncer::new(config, http, state.clone(), disk));
        if let Some(saved) = saved {
            sync.restore(saved);
        }
        sync.spawn(first_bus);
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

    /// Prometheus metrics in the text format.
    pub fn metrics_text(&self) -> String {
        self.state.metrics_text()
    }

    /// Polls the registry once now (checkpoint, then catch-up if needed).
    pub async fn sync_now(&self) {
        sync::poll_once(&self.sync).await;
    }
}
