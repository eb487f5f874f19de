//! The authorizer's settings, and why it can refuse to start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use veto_core::{CheckConfig, KeySet, SigningKey};

use crate::pop::PopConfig;
use veto_tls::ClientTls;

/// Where trusted issuer keys come from.
#[derive(Clone, Debug)]
pub enum Issuers {
    /// The authority-signed issuer key set (`GET /v1/issuers`,
    /// `veto-issuers+jwt`, DESIGN 3.5), verified with the pinned authority
    /// key, applied only at a higher version (never rolled back), and
    /// fetched again every interval. The plain JWKS is never trusted.
    Signed {
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
    /// 1M-entry snapshot is ~12 MB), counted after gzip decompression.
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
    /// Reports to the registry's fleet view (DESIGN 5), when set.
    pub fleet: Option<FleetConfig>,
}

/// How an authorizer reports to the registry's fleet view (DESIGN 5):
/// signed `veto-report+jwt` reports of what it applied, at start, on
/// every applied version (at most one per [`FleetConfig::min_gap`]) and
/// every [`FleetConfig::interval`].
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The gateway's name (`[A-Za-z0-9._-]`, 1 to 64 characters).
    pub name: String,
    /// The gateway's own Ed25519 key; its RFC 7638 thumbprint is the
    /// gateway's id.
    pub key: Arc<SigningKey>,
    /// The registry's fleet enrolment token: the key is enrolled with it
    /// once at start (`None`: enrolled by an operator already).
    pub enrol_token: Option<String>,
    /// Seconds between reports when nothing changes (default 10 s); the
    /// registry counts a gateway lost after three such intervals.
    pub interval: Duration,
    /// Least time between two reports (default 100 ms): a revocation storm
    /// is not a report storm.
    pub min_gap: Duration,
}

impl FleetConfig {
    /// Reporting as `name` with `key`, enrolled with `enrol_token` if given;
    /// default intervals.
    pub fn new(name: impl Into<String>, key: Arc<SigningKey>, enrol_token: Option<String>) -> Self {
        Self {
            name: name.into(),
            key,
            enrol_token,
            interval: Duration::from_secs(10),
            min_gap: Duration::from_millis(100),
        }
    }
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
            issuers: Issuers::Signed {
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
            fleet: None,
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
    /// The fleet settings are unusable.
    #[error("fleet: {0}")]
    Fleet(String),
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
