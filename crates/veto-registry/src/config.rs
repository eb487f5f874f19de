//! The registry's settings.

use std::path::PathBuf;
use std::time::Duration;

/// Registry settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the database, keys and admin token live.
    pub data_dir: PathBuf,
    /// The authority name (`iss`) published in every object.
    pub iss: String,
    /// How often a checkpoint is signed and pushed (default 5 s).
    pub heartbeat: Duration,
    /// How long a checkpoint or snapshot may be relied on (default 300 s).
    pub attestation_ttl: u64,
    /// How many versions of deltas are retained (default 100,000).
    pub retention: u64,
    /// How often expired entries are pruned (default 60 s).
    pub prune_interval: Duration,
    /// The admin token; generated into the data directory when absent.
    pub admin_token: Option<String>,
    /// The fleet enrolment token gateways enrol their keys with;
    /// generated into `<data_dir>/fleet.token` when absent.
    pub fleet_token: Option<String>,
    /// The authority key file; default `<data_dir>/authority.jwk`, created
    /// on first start.
    pub authority_key: Option<PathBuf>,
    /// Most concurrent SSE subscribers (default 10,000).
    pub max_subscribers: usize,
    /// An SSE subscriber that has not taken an event for this long is
    /// disconnected, freeing its slot; it resumes with `Last-Event-ID`
    /// (default 30 s).
    pub subscriber_timeout: Duration,
    /// A client that has not sent a whole request head this long is
    /// disconnected (default 30 s).
    pub header_timeout: Duration,
    /// A PostgreSQL URL to share the state with other replicas; `None`
    /// keeps it in `<data_dir>/veto.db` (SQLite).
    pub store: Option<String>,
    /// The NATS bus (server URLs, TLS trust, credentials, validated by
    /// [`veto_bus::NatsSettings::new`]): publish deltas and checkpoints to
    /// JetStream through the transactional outbox; `None` pushes over SSE
    /// only.
    pub bus: Option<veto_bus::NatsSettings>,
    /// Serve HTTPS with this certificate (reloaded when its files change
    /// or on SIGHUP) instead of plain HTTP. When it asks for client
    /// certificates (`--client-ca`), the admin endpoints require a
    /// verified one as well as the admin token.
    pub tls: Option<veto_tls::ServerTls>,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            iss: "veto".into(),
            heartbeat: Duration::from_secs(5),
            attestation_ttl: 300,
            retention: 100_000,
            prune_interval: Duration::from_secs(60),
            admin_token: None,
            fleet_token: None,
            authority_key: None,
            max_subscribers: 10_000,
            subscriber_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            store: None,
            bus: None,
            tls: None,
        }
    }
}
