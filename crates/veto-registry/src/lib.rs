//! veto's registry: the authority for revocations (DESIGN 5, 6, 7).
//!
//! Layout:
//! - [`authority`](crate::authority): `Authority`, the one owner of the
//!   revocation state, the signer, the store handle, the issuer keys and
//!   the push channel, behind a small method API (revoke, snapshot,
//!   checkpoint, deltas, mint, issuer keys, …). Its lock order is written
//!   beside its fields.
//! - [`store`]: the durable store behind one backend trait: SQLite (WAL,
//!   `synchronous = FULL`; the default, in the data directory) or
//!   PostgreSQL (shared by replicas; each commit is announced with
//!   `NOTIFY`).
//! - the background loops (`tasks`): the writer, the one owner of version
//!   assignment (it commits every queued request in one transaction, one
//!   version each, then acknowledges them and pushes their deltas); the
//!   heartbeat (a signed checkpoint every interval, on every channel); the
//!   pruner (expired entries leave in a new version); the follower (on
//!   PostgreSQL, memory follows other replicas' commits); the SQLite WAL
//!   checkpointer.
//! - the bus (`bus`), two publishers side by side: `bus::sse` serves
//!   server-sent events to each subscriber, resuming from
//!   `Last-Event-ID`; `bus::nats` is the relay of the transactional outbox
//!   to NATS JetStream.
//! - the HTTP API (`api`): translates requests to the authority's methods
//!   and outcomes to responses with stable error codes; the admin token
//!   (`admin`) guards the admin routes; holder revocations (`holder`) are
//!   proved with DPoP instead (replay cache, per-holder rate); refusals
//!   (`refusal`) carry a status, a stable code and a message; the client
//!   budget (`budget`)
//!   bounds the bytes held for clients; connections whose client stalls
//!   are closed (`stall`).
//!
//! [`Registry::open`] prepares everything without starting tasks;
//! [`Registry::serve`] runs on a bound listener until a shutdown signal.

mod admin;
mod api;
mod authority;
mod budget;
mod bus;
mod config;
mod console;
mod error;
mod event;
mod fleet;
mod holder;
mod metrics;
mod refusal;
mod seal;
mod stall;
pub mod store;
mod tasks;

pub use admin::Scope;
pub use admin::{check_admin_token, MIN_ADMIN_TOKEN_BITS, MIN_ADMIN_TOKEN_CHARS};
pub use api::{parse_mint_body, parse_revocation_body};
pub use budget::CLIENT_BUDGET_BYTES;
pub use config::Config;
pub use error::RegistryError;
pub use refusal::Refusal;
pub use seal::SealError;

/// How often a registry re-reads the named API tokens (so one created or
/// revoked at another replica takes effect here within this).
pub const TOKEN_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use veto_core::{Clock, PublicKey, SystemClock};

use crate::admin::AdminToken;
use crate::authority::{Authority, WriteJob};
use crate::budget::ClientBudget;
use crate::error::io_err;
use crate::metrics::Metrics;

/// A registry, ready to serve.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Parts>,
}

struct Parts {
    config: Config,
    authority: Arc<Authority>,
    admin: AdminToken,
    /// The fleet enrolment token.
    fleet_token: AdminToken,
    metrics: Arc<Metrics>,
    /// The writer's queue, taken by the one [`Registry::serve`].
    write_rx: Mutex<Option<mpsc::Receiver<WriteJob>>>,
}

impl Registry {
    /// Opens the data directory (and the PostgreSQL store, when one is
    /// configured): creates the database, the authority key, a first
    /// issuer key and the admin token on first start.
    pub async fn open(config: Config) -> Result<Self, RegistryError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Registry::open`], with an injected clock.
    pub async fn open_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RegistryError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err(dir))?;
        }
        let metrics = Arc::new(Metrics::new());
        let (authority, write_rx) = Authority::open(&config, clock, metrics.clone()).await?;
        let admin = AdminToken::load(&config)?;
        let fleet_token = AdminToken::load_fleet(&config)?;
        Ok(Self {
            inner: Arc::new(Parts {
                admin,
                fleet_token,
                authority: Arc::new(authority),
                metrics,
                write_rx: Mutex::new(Some(write_rx)),
                config,
            }),
        })
    }

    /// The authority name.
    pub fn iss(&self) -> &str {
        self.inner.authority.iss()
    }

    /// The authority public key authorizers must pin.
    pub fn authority_key(&self) -> &PublicKey {
        self.inner.authority.authority_key()
    }

    /// Where the admin token is, when it was generated into a file.
    pub fn admin_token_path(&self) -> Option<&Path> {
        self.inner.admin.path()
    }

    /// Where the fleet enrolment token is, when it was generated into a
    /// file.
    pub fn fleet_token_path(&self) -> Option<&Path> {
        self.inner.fleet_token.path()
    }

    /// The newest committed version.
    pub fn version(&self) -> u64 {
        self.inner.authority.version()
    }

    /// Serves HTTP on `listener` until `shutdown` completes, with the
    /// writer, heartbeat, pruner, follower and (with a bus) the NATS relay
    /// running alongside.
    ///
    /// # Errors
    /// [`RegistryError::AlreadyServing`] when called twice on one registry.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RegistryError> {
        let parts = &self.inner;
        let rx = parts
            .write_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(RegistryError::AlreadyServing)?;
        let config = &parts.config;
        let authority = &parts.authority;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(tasks::writer(authority.clone(), rx));
        let loops = tasks::spawn(authority, config.heartbeat, config.prune_interval, &stop_rx);
        let relay = config.bus.clone().map(|url| {
            tokio::spawn(bus::nats::relay(
                authority.clone(),
                parts.metrics.clone(),
                url,
                stop_rx.clone(),
            ))
        });
        let budget = ClientBudget::new();
        let sse = bus::sse::SseHub::new(
            authority.clone(),
            budget.clone(),
            parts.metrics.clone(),
            config.max_subscribers,
            stop_rx.clone(),
        );
        // Named API tokens: read now, after each change here, and every few
        // seconds (a token made or revoked at another replica).
        let tokens = Arc::new(admin::Tokens::default());
        tokens.load(&authority.tokens().await?);
        {
            let (tokens, authority, mut stop) =
                (tokens.clone(), authority.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TOKEN_REFRESH);
                loop {
                    tokio::select! {
                        _ = tick.tick() => match authority.tokens().await {
                            Ok(rows) => tokens.load(&rows),
                            Err(e) => tracing::warn!(error = %e, "reading the API tokens failed; keeping the last ones read"),
                        },
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        // The fleet: enrolled keys now (then on a miss, at most once a
        // second), commit times as versions are pushed, and the per-version
        // application times pruned to their window every hour.
        let fleet = Arc::new(fleet::Fleet::new(parts.fleet_token.clone()));
        fleet.load(&authority.gateways().await?);
        {
            let (fleet, authority, mut stop) = (fleet.clone(), authority.clone(), stop_rx.clone());
            let mut events = authority.subscribe();
            tokio::spawn(async move {
                let mut prune = tokio::time::interval(std::time::Duration::from_secs(3600));
                loop {
                    tokio::select! {
                        e = events.recv() => match e {
                            Ok(event::Event::Delta { ver, .. }) => fleet.committed(ver, fleet::now_ms()),
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        },
                        _ = prune.tick() => {
                            let before = fleet::now_ms().saturating_sub(fleet::HISTORY.as_millis() as u64);
                            if let Err(e) = authority.prune_applied(before).await {
                                tracing::warn!(error = %e, "pruning the fleet's application times failed; will retry");
                            }
                        }
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        let api = api::Api::new(
            authority.clone(),
            (parts.admin.clone(), tokens),
            budget,
            parts.metrics.clone(),
            sse,
            if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            fleet,
        );
        let app = api::router(Arc::new(api));
        let limits = stall::ConnLimits {
            stall: config.subscriber_timeout,
            header: config.header_timeout,
            stalled: parts.metrics.stalled_connections.clone(),
        };
        // One signal stops accepting, ends the event streams (so the open
        // connections can finish) and stops the background tasks.
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let tls = config.tls.clone();
        let reload = tls
            .clone()
            .map(|t| tokio::spawn(t.watch(veto_tls::DEFAULT_RELOAD_INTERVAL, stop_rx.clone())));
        stall::serve(listener, app, limits, tls, stop_rx).await;
        if let Some(r) = reload {
            r.abort();
        }
        drop(loops);
        if let Some(r) = relay {
            r.abort();
        }
        writer.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written by one authority is refused by a registry of
    /// another, by name, with what to do.
    #[tokio::test]
    async fn a_store_of_another_authority_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!(
            "veto-registry-mismatch-{}-{}",
            std::process::id(),
            veto_core::Clock::now(&veto_core::SystemClock)
        ));
        let mut config = Config::new(&dir);
        config.admin_token = Some("mismatch-test-token-0123456789abcdef".into());
        drop(Registry::open(config.clone()).await.unwrap());
        config.iss = "another-authority".into();
        let Err(e) = Registry::open(config).await else {
            panic!("a store of another iss was accepted");
        };
        assert!(
            matches!(&e, RegistryError::Mismatch { what: "iss", stored, ours } if stored == "veto" && ours == "another-authority"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("use the original iss, or a new store"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issuer private keys never sit in the database in clear: new ones
    /// are sealed, one an older registry stored in clear is sealed on the
    /// next start and still mints, and a sealed row moved to another key's
    /// `kid` does not open.
    #[tokio::test]
    async fn issuer_keys_are_sealed_at_rest() {
        let dir = std::env::temp_dir().join(format!(
            "veto-registry-sealed-{}-{}",
            std::process::id(),
            veto_core::Clock::now(&veto_core::SystemClock)
        ));
        let mut config = Config::new(&dir);
        config.admin_token = Some("sealed-test-token-0123456789abcdef0".into());
        let registry = Registry::open(config.clone()).await.unwrap();
        let first = registry.inner.authority.issuer_keys()[0].kid.clone();
        drop(registry);
        let db = || rusqlite::Connection::open(dir.join("veto.db")).unwrap();
        let stored = |kid: &str| -> String {
            db().query_row(
                "SELECT private_jwk FROM issuer_keys WHERE kid = ?1",
                [kid],
                |r| r.get(0),
            )
            .unwrap()
        };
        let sealed = stored(&first);
        assert!(sealed.starts_with("sealed:v1:"), "{sealed}");
        assert!(!sealed.contains("\"d\""), "{sealed}");

        // An older registry's row, in clear, is sealed on the next start.
        let legacy = veto_core::SigningKey::generate().unwrap();
        db().execute(
            "INSERT INTO issuer_keys (kid, private_jwk, added_at) VALUES (?1, ?2, 1)",
            [legacy.kid(), legacy.to_private_jwk().to_json().as_str()],
        )
        .unwrap();
        let registry = Registry::open(config.clone()).await.unwrap();
        assert!(registry
            .inner
            .authority
            .trusted_issuers()
            .iter()
            .any(|k| k == legacy.public()));
        drop(registry);
        assert!(stored(legacy.kid()).starts_with("sealed:v1:"));

        // A sealed key moved to another row's kid does not open.
        db().execute(
            "UPDATE issuer_keys SET private_jwk = ?1 WHERE kid = ?2",
            [sealed.as_str(), legacy.kid()],
        )
        .unwrap();
        let Err(e) = Registry::open(config).await else {
            panic!("a sealed key opened under another kid");
        };
        assert!(
            matches!(e, RegistryError::Seal(SealError::Open(_))),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
