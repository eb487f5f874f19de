//! veto's registry: the authority for revocations.
//!
//! - [`store`]: the durable store (SQLite, WAL, `synchronous = FULL`).
//! - the writer: one task that owns version assignment. It takes every
//!   queued request, commits them in one transaction (one version each,
//!   one fsync for all: group commit) and only then acknowledges them and
//!   pushes their deltas.
//! - the heartbeat: a signed checkpoint every interval, on every channel.
//! - the pruner: entries past `expires_at` leave the state in a new version.
//! - the HTTP API (`api`), including the SSE hub.
//!
//! [`Registry::open`] prepares everything without starting tasks;
//! [`Registry::serve`] runs on a bound listener until a shutdown signal.

mod api;
mod metrics;
pub mod relay;
mod stall;
pub mod store;

pub use api::{parse_mint_body, parse_revocation_body};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot};
use veto_core::{
    keyfile, Clock, Digest, EntryKind, KeySet, PublicKey, RevocationSet, SigningKey, SrlSigner,
    SrlState, SrlVerifier, SystemClock,
};

use crate::metrics::{KindReason, Metrics};
use crate::store::{Committed, NewEntry, PgStore, SqliteStore, Store, StoreError, Unwritable};

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
            authority_key: None,
            max_subscribers: 10_000,
            subscriber_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            store: None,
            bus: None,
        }
    }
}

/// Why the registry could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A file in the data directory could not be used.
    #[error("data directory `{path}`: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file could not be used.
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store was written by another authority: its authority key id
    /// or `iss` differs from this registry's.
    #[error("the store was written with {what} `{stored}`, not `{ours}`: every replica must use the same authority key and iss; use the original {what}, or a new store")]
    Mismatch {
        /// `authority_kid` or `iss`.
        what: &'static str,
        /// What the store holds.
        stored: String,
        /// What this registry has.
        ours: String,
    },
    /// The operating system's random source failed (for a token or a key).
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
    /// [`Registry::serve`] was called twice on one registry.
    #[error("this registry is already serving")]
    AlreadyServing,
    /// The admin token is too weak to guard the admin API.
    #[error("{0}")]
    WeakAdminToken(String),
}

/// Fewest characters an admin token may have: 32 characters of base64 or
/// hex from a random source carry at least 128 bits.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// Least strength an admin token must show by its text (see
/// [`check_admin_token`]): a random 32-character hex token shows about 122
/// bits, a random 32-character base64 one about 147, `12345678` repeated
/// four times 24.
pub const MIN_ADMIN_TOKEN_BITS: f64 = 100.0;

/// Refuses an admin token that cannot be sent or is easy to guess: it must
/// be at least [`MIN_ADMIN_TOKEN_CHARS`] visible ASCII characters (what a
/// bearer header can carry) and show at least [`MIN_ADMIN_TOKEN_BITS`]
/// (so `aaaa…`, `0000…` and short patterns repeated are refused). `source` names where it came from; the message
/// never repeats the token.
pub fn check_admin_token(token: &str, source: &str) -> Result<(), RegistryError> {
    const MAKE: &str = "generate one with `head -c 32 /dev/urandom | base64`";
    let len = token.chars().count();
    let problem = if len < MIN_ADMIN_TOKEN_CHARS {
        format!("is {len} characters, fewer than the {MIN_ADMIN_TOKEN_CHARS} required")
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "holds a space, a control or a non-ASCII character, which an `Authorization: Bearer` header cannot carry".to_owned()
    } else if strength_bits(token) < MIN_ADMIN_TOKEN_BITS {
        format!("shows under {MIN_ADMIN_TOKEN_BITS} bits (its length, counting one period of a repeated pattern, times log2 of its distinct characters): it is not random")
    } else {
        return Ok(());
    };
    Err(RegistryError::WeakAdminToken(format!(
        "the admin token ({source}) {problem}: {MAKE}"
    )))
}

/// A token's strength as far as its text shows: the length of its
/// shortest repeating period times log2 of the distinct characters in it
/// (`12345678` four times counts as 8 characters of 8 symbols, 24 bits).
fn strength_bits(token: &str) -> f64 {
    let b = token.as_bytes();
    let period = (1..=b.len())
        .find(|&p| b.len() % p == 0 && b.chunks(p).all(|c| c == &b[..p]))
        .unwrap_or(b.len());
    let distinct = b.iter().collect::<std::collections::HashSet<_>>().len();
    period as f64 * (distinct.max(1) as f64).log2()
}

/// An event on the push channels. `frame` is the event rendered once as
/// server-sent-event bytes, shared (not copied) by every subscriber's
/// queue: a subscriber that does not read holds references, not copies.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    Delta {
        ver: u64,
        frame: axum::body::Bytes,
    },
    Checkpoint {
        ver: u64,
        jws: Arc<str>,
        frame: axum::body::Bytes,
    },
}

impl Event {
    pub(crate) fn delta(ver: u64, jws: &str) -> Self {
        let frame = sse_frame(veto_core::wire::EventKind::Delta, ver, jws);
        Self::Delta { ver, frame }
    }

    pub(crate) fn checkpoint(ver: u64, jws: Arc<str>) -> Self {
        let frame = sse_frame(veto_core::wire::EventKind::Checkpoint, ver, &jws);
        Self::Checkpoint { ver, jws, frame }
    }
}

/// One server-sent event (WHATWG HTML, event stream format): `event:`,
/// `id:` = the version, one `data:` line per line of `data` (a compact JWS
/// has none), and the blank line that dispatches it.
pub(crate) fn sse_frame(
    kind: veto_core::wire::EventKind,
    ver: u64,
    data: &str,
) -> axum::body::Bytes {
    let mut out = String::with_capacity(data.len() + 48);
    out.push_str("event: ");
    out.push_str(kind.as_str());
    out.push_str("\nid: ");
    out.push_str(&ver.to_string());
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
    axum::body::Bytes::from(out)
}

pub(crate) struct IssuerKey {
    pub key: SigningKey,
    pub added_at: u64,
    pub retired_at: Option<u64>,
}

pub(crate) struct CachedSnapshot {
    pub ver: u64,
    pub iat: u64,
    pub jws: axum::body::Bytes,
    pub gzip: axum::body::Bytes,
}

pub(crate) enum WriteJob {
    Revoke {
        entries: Vec<NewEntry>,
        actor: String,
        reply: oneshot::Sender<Result<Committed, WriteFailed>>,
    },
    Prune {
        reply: oneshot::Sender<Result<usize, String>>,
    },
}

pub(crate) struct Inner {
    pub config: Config,
    pub store: Store,
    pub signer: SrlSigner,
    /// Verifies this authority's own deltas before they reach memory.
    pub verifier: SrlVerifier,
    /// Serializes moving memory forward, so versions apply and push in order.
    pub follow: tokio::sync::Mutex<()>,
    pub clock: Arc<dyn Clock>,
    pub admin_token_hash: [u8; 32],
    pub admin_token_path: Option<PathBuf>,
    pub current: RwLock<SrlState>,
    pub events: broadcast::Sender<Event>,
    pub writes: mpsc::Sender<WriteJob>,
    pub write_rx: Mutex<Option<mpsc::Receiver<WriteJob>>>,
    pub snapshot: tokio::sync::Mutex<Option<Arc<CachedSnapshot>>>,
    pub checkpoint: RwLock<Option<(u64, Arc<str>)>>,
    pub issuers: RwLock<Vec<IssuerKey>>,
    pub metrics: Metrics,
    /// Bytes of deltas and snapshots held for clients at once (replays,
    /// queued events, delta listings): `api::REPLAY_BUDGET_BYTES`.
    pub budget: Arc<tokio::sync::Semaphore>,
}

/// A registry, ready to serve.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::DataDir {
        path: path.into(),
        source,
    }
}

/// A new signing key from the operating system's randomness.
fn random_key() -> Result<SigningKey, RegistryError> {
    SigningKey::generate().map_err(|e| match e {
        veto_core::KeyError::Random(cause) => RegistryError::Random(cause),
        other => RegistryError::Random(other.to_string()),
    })
}

pub(crate) fn random_token() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| RegistryError::Random(e.to_string()))?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
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
        let key_path = config
            .authority_key
            .clone()
            .unwrap_or_else(|| dir.join("authority.jwk"));
        if config.authority_key.is_none() && !key_path.exists() {
            keyfile::write_signing_key(&key_path, &random_key()?)?;
        }
        let authority = keyfile::read_signing_key(&key_path)?;
        let store = match &config.store {
            None => {
                let path = dir.join("veto.db");
                Store::sqlite(
                    tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                        .await
                        .map_err(|e| StoreError::Task(e.to_string()))??,
                )
            }
            Some(url) => Store::postgres(PgStore::connect(url).await?),
        };
        for (k, v) in [
            ("authority_kid", authority.kid()),
            ("iss", config.iss.as_str()),
        ] {
            let stored = store.meta_or_set(k, v).await?;
            if stored != v {
                return Err(RegistryError::Mismatch {
                    what: k,
                    stored,
                    ours: v.to_owned(),
                });
            }
        }
        let now = clock.now();
        if store
            .issuer_keys()
            .await?
            .iter()
            .all(|k| k.retired_at.is_some())
        {
            let key = random_key()?;
            let jwk = key.to_private_jwk().to_json();
            store
                .add_issuer_key(key.kid(), &jwk, now, "registry")
                .await?;
        }
        let issuers = load_issuers(&store).await?;
        let (token, token_path) = match &config.admin_token {
            Some(t) => {
                check_admin_token(t, "VETO_ADMIN_TOKEN")?;
                (t.clone(), None)
            }
            None => {
                let path = dir.join("admin.token");
                if !path.exists() {
                    keyfile::write_new(&path, random_token()?.as_bytes(), true)?;
                }
                let t = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                let t = t.trim().to_owned();
                // A file written by hand is held to the same rule; the path
                // goes to the operator only, never to a client.
                check_admin_token(&t, &format!("in `{}`", path.display()))?;
                (t, Some(path))
            }
        };
        let loaded = store.load().await?;
        let mut set = RevocationSet::default();
        for (kind, id, before) in &loaded.entries {
            set.insert(*kind, Digest::of(*kind, id), before.unwrap_or(0));
        }
        let metrics = Metrics::new();
        metrics.version.set(loaded.ver as i64);
        metrics.entries.set(set.len() as i64);
        let (events, _) = broadcast::channel(1024);
        let (writes, write_rx) = mpsc::channel(65_536);
        let verifier = SrlVerifier::new(
            KeySet::new([authority.public().clone()]),
            config.iss.clone(),
        )
        .with_skew(u64::MAX / 4);
        let signer = SrlSigner::new(authority, config.iss.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                admin_token_hash: Sha256::digest(token.as_bytes()).into(),
                admin_token_path: token_path,
                store,
                signer,
                verifier,
                follow: tokio::sync::Mutex::new(()),
                clock,
                current: RwLock::new(SrlState::at(loaded.ver, loaded.head, set)),
                events,
                writes,
                write_rx: Mutex::new(Some(write_rx)),
                snapshot: tokio::sync::Mutex::new(None),
                checkpoint: RwLock::new(None),
                issuers: RwLock::new(issuers),
                metrics,
                budget: Arc::new(tokio::sync::Semaphore::new(api::REPLAY_BUDGET_BYTES)),
                config,
            }),
        })
    }

    /// The authority name.
    pub fn iss(&self) -> &str {
        self.inner.signer.iss()
    }

    /// The authority public key authorizers must pin.
    pub fn authority_key(&self) -> &PublicKey {
        self.inner.signer.key().public()
    }

    /// Where the admin token is, when it was generated into a file.
    pub fn admin_token_path(&self) -> Option<&Path> {
        self.inner.admin_token_path.as_deref()
    }

    /// The newest committed version.
    pub fn version(&self) -> u64 {
        self.inner.read_current().ver()
    }

    /// Serves HTTP on `listener` until `shutdown` completes, with the
    /// writer, heartbeat and pruner running alongside.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RegistryError> {
        let rx = self
            .inner
            .write_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(RegistryError::AlreadyServing)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(writer(self.inner.clone(), rx));
        let heartbeat = tokio::spawn(heartbeat(self.inner.clone(), stop_rx.clone()));
        let pruner = tokio::spawn(pruner(self.inner.clone(), stop_rx.clone()));
        let follower = tokio::spawn(follower(self.inner.clone(), stop_rx.clone()));
        let checkpoints = tokio::spawn(checkpointer(self.inner.clone(), stop_rx.clone()));
        let relay = self
            .inner
            .config
            .bus
            .clone()
            .map(|bus| tokio::spawn(relay::relay(self.inner.clone(), bus, stop_rx.clone())));
        let app = api::router(self.inner.clone(), stop_rx.clone());
        let limits = stall::ConnLimits {
            stall: self.inner.config.subscriber_timeout,
            header: self.inner.config.header_timeout,
            stalled: self.inner.metrics.stalled_connections.clone(),
        };
        // One signal stops accepting, ends the event streams (so the open
        // connections can finish) and stops the background tasks.
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        stall::serve(listener, app, limits, stop_rx).await;
        heartbeat.abort();
        pruner.abort();
        follower.abort();
        checkpoints.abort();
        if let Some(r) = relay {
            r.abort();
        }
        drop(self);
        writer.abort();
        Ok(())
    }
}

impl Inner {
    pub(crate) fn read_current(&self) -> std::sync::RwLockReadGuard<'_, SrlState> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Signs a checkpoint of the current state, caches and returns it.
    pub(crate) fn sign_checkpoint(&self) -> (u64, Arc<str>) {
        let (ver, head) = {
            let c = self.read_current();
            (c.ver(), c.head())
        };
        let now = self.now();
        let jws: Arc<str> = self
            .signer
            .checkpoint(ver, head, now, now + self.config.attestation_ttl)
            .into();
        self.metrics.checkpoints_signed.inc();
        *self.checkpoint.write().unwrap_or_else(|p| p.into_inner()) = Some((ver, jws.clone()));
        (ver, jws)
    }

    /// The newest checkpoint, signed anew when the version moved.
    pub(crate) fn checkpoint(&self) -> (u64, Arc<str>) {
        let ver = self.read_current().ver();
        if let Some((v, jws)) = self
            .checkpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            if v == ver {
                return (v, jws);
            }
        }
        self.sign_checkpoint()
    }

    /// The current snapshot, signed anew when the version moved or the
    /// cached one is older than a minute. `None` only when signing failed
    /// (the signing task died) and no earlier snapshot is cached: never an
    /// empty body in place of a signed one.
    pub(crate) async fn snapshot(self: &Arc<Self>) -> Option<Arc<CachedSnapshot>> {
        let mut cache = self.snapshot.lock().await;
        let (ver, head, set) = {
            let c = self.read_current();
            (c.ver(), c.head(), c.set().clone())
        };
        let now = self.now();
        if let Some(s) = cache.as_ref() {
            if s.ver == ver && now.saturating_sub(s.iat) < 60 {
                return Some(s.clone());
            }
        }
        let inner = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let jws =
                inner
                    .signer
                    .snapshot(ver, head, now, now + inner.config.attestation_ttl, &set);
            let gzip = gzip(jws.as_bytes());
            CachedSnapshot {
                ver,
                iat: now,
                jws: jws.into(),
                gzip: gzip.into(),
            }
        })
        .await;
        let snap = match built {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // The blocking task cannot panic short of a bug: serve the
                // last signed snapshot (older, still valid) or nothing.
                tracing::error!(error = %e, ver, "signing the snapshot failed");
                return cache.clone();
            }
        };
        self.metrics.snapshots_signed.inc();
        *cache = Some(snap.clone());
        Some(snap)
    }

    /// The trusted issuer keys: not retired, not revoked.
    pub(crate) fn trusted_issuers(&self) -> Vec<PublicKey> {
        let cur = self.read_current();
        self.issuers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|k| k.retired_at.is_none())
            .filter(|k| {
                cur.set()
                    .get(EntryKind::Key, &Digest::of(EntryKind::Key, k.key.kid()))
                    .is_none()
            })
            .map(|k| k.key.public().clone())
            .collect()
    }

    /// Moves memory forward to at least `upto`, in version order, and
    /// pushes every version applied. `known` are versions this replica has
    /// just committed; anything before them that memory lacks (another
    /// replica's commits) is read from the store first. Every delta is
    /// verified and must extend the applied head.
    pub(crate) async fn advance(
        &self,
        known: Vec<(u64, String)>,
        upto: u64,
        committed_at: Option<Instant>,
    ) {
        let _order = self.follow.lock().await;
        let cur = self.read_current().ver();
        let first_known = known.first().map_or(u64::MAX, |(v, _)| *v);
        let mut list = Vec::new();
        if first_known != cur + 1 && upto > cur {
            let until = first_known.saturating_sub(1).min(upto);
            match self.store.deltas(cur, until, usize::MAX, usize::MAX).await {
                Ok(Some(l)) => list = l,
                Ok(None) => {
                    // Too far behind to replay: reload the whole state.
                    match self.store.load().await {
                        Ok(loaded) => {
                            let mut set = RevocationSet::default();
                            for (kind, id, before) in &loaded.entries {
                                set.insert(*kind, Digest::of(*kind, id), before.unwrap_or(0));
                            }
                            *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                                SrlState::at(loaded.ver, loaded.head, set);
                            tracing::warn!(
                                version = loaded.ver,
                                "reloaded the state from the store"
                            );
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot reload the state from the store")
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read new versions from the store; will retry");
                    return;
                }
            }
        }
        let last = list.last().map_or(cur, |(v, _)| *v);
        list.extend(known.into_iter().filter(|(v, _)| *v > last));
        if list.is_empty() {
            return;
        }
        let mut state = self.read_current().clone();
        let mut applied = Vec::with_capacity(list.len());
        for (ver, jws) in list {
            let result = self
                .verifier
                .delta(&jws, self.now())
                .map_err(|e| e.to_string())
                .and_then(|d| state.apply_delta(&d).map_err(|e| e.to_string()));
            match result {
                Ok(veto_core::Applied::Advanced { .. }) => applied.push((ver, jws)),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(version = ver, error = %e, "a stored delta does not extend the applied head; stopping here");
                    break;
                }
            }
        }
        self.metrics.version.set(state.ver() as i64);
        self.metrics.entries.set(state.set().len() as i64);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = state;
        for (ver, jws) in applied {
            let _ = self.events.send(Event::delta(ver, &jws));
        }
        if let Some(t) = committed_at {
            self.metrics
                .commit_to_broadcast
                .observe(t.elapsed().as_secs_f64());
        }
    }
}

async fn load_issuers(store: &Store) -> Result<Vec<IssuerKey>, RegistryError> {
    let mut issuers = Vec::new();
    for row in store.issuer_keys().await? {
        let key = SigningKey::from_jwk_json(&row.private_jwk)
            .map_err(|e| StoreError::Corrupt(format!("issuer key `{}`: {e}", row.kid)))?;
        issuers.push(IssuerKey {
            key,
            added_at: row.added_at,
            retired_at: row.retired_at,
        });
    }
    Ok(issuers)
}

/// The one writer: drains the queue, commits a group, acknowledges, pushes.
async fn writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<WriteJob>) {
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
            if revokes.len() < 1024 {
                job = rx.try_recv().ok();
            }
        }
        if !revokes.is_empty() {
            commit_group(&inner, revokes).await;
        }
        for reply in prunes {
            let _ = reply.send(prune_all(&inner).await);
        }
    }
}

/// A group commit that failed: nothing in it was written.
#[derive(Clone, Debug)]
pub(crate) struct WriteFailed {
    pub kind: Unwritable,
}

type Reply = oneshot::Sender<Result<Committed, WriteFailed>>;

async fn commit_group(inner: &Arc<Inner>, jobs: Vec<(Vec<NewEntry>, String, Reply)>) {
    let (requests, replies): (Vec<_>, Vec<_>) =
        jobs.into_iter().map(|(e, a, r)| ((e, a), r)).unzip();
    let started = Instant::now();
    inner.metrics.group_size.observe(requests.len() as f64);
    let result = inner
        .store
        .commit(requests, inner.signer.clone(), inner.now())
        .await;
    let committed_at = Instant::now();
    inner
        .metrics
        .commit_seconds
        .observe(committed_at.duration_since(started).as_secs_f64());
    match result {
        Ok(results) => {
            let mut known = Vec::new();
            for c in &results {
                if let Some((ver, _, jws)) = &c.new_version {
                    for e in &c.added {
                        inner
                            .metrics
                            .revocations
                            .get_or_create(&KindReason {
                                kind: e.kind.as_str().into(),
                                reason: e.reason.as_str().into(),
                            })
                            .inc();
                    }
                    known.push((*ver, jws.clone()));
                }
            }
            // Durable now: move memory forward and push, then acknowledge.
            let upto = known.last().map_or(0, |(v, _)| *v);
            inner.advance(known, upto, Some(committed_at)).await;
            for (reply, c) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(c));
            }
        }
        Err(e) => {
            let mut kind = e.unwritable();
            if kind == Unwritable::Other && inner.config.store.is_none() {
                kind = Unwritable::probe(&inner.config.data_dir);
            }
            tracing::error!(error = %e, ?kind, "commit failed; no revocation in this group was acknowledged");
            // The cause stays in the log above: it may name hosts or files.
            let failed = WriteFailed { kind };
            for reply in replies {
                let _ = reply.send(Err(failed.clone()));
            }
        }
    }
}

async fn prune_all(inner: &Arc<Inner>) -> Result<usize, String> {
    let mut total = 0;
    while let Some(p) = inner
        .store
        .prune(inner.signer.clone(), inner.now(), 10_000)
        .await
        .map_err(|e| e.to_string())?
    {
        total += p.removed.len();
        tracing::info!(
            version = p.ver,
            removed = p.removed.len(),
            "pruned expired entries"
        );
        inner
            .advance(vec![(p.ver, p.jws)], p.ver, Some(Instant::now()))
            .await;
    }
    let dropped = inner
        .store
        .drop_old_deltas(inner.config.retention, inner.config.bus.is_some())
        .await
        .map_err(|e| e.to_string())?;
    if dropped > 0 {
        tracing::info!(dropped, "dropped deltas past the retention window");
    }
    Ok(total)
}

/// Keeps memory in step with commits made by other replicas (PostgreSQL):
/// woken by `NOTIFY`, and every second in case a notification was lost.
/// Issuer keys added or retired elsewhere are reloaded every few seconds.
async fn follower(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(url) = inner.store.shared_url().map(str::to_owned) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
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
                    if ticks % 5 == 0 {
                        if let Ok(keys) = load_issuers(&inner.store).await {
                            *inner.issuers.write().unwrap_or_else(|p| p.into_inner()) = keys;
                        }
                    }
                    i64::MAX as u64
                },
                _ = stop.changed() => return,
            };
            inner.advance(Vec::new(), upto, None).await;
        }
        tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn heartbeat(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Under the ordering lock: a checkpoint for version N is never
                // pushed before delta N itself.
                let _order = inner.follow.lock().await;
                let (ver, jws) = inner.sign_checkpoint();
                let _ = inner.events.send(Event::checkpoint(ver, jws));
            }
            _ = stop.changed() => return,
        }
    }
}

/// SQLite only: WAL checkpoints every second, off the commit path.
async fn checkpointer(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !inner.store.needs_checkpoints() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = inner.store.checkpoint().await {
                    tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

async fn pruner(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.config.prune_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (reply, rx) = oneshot::channel();
                if inner.writes.send(WriteJob::Prune { reply }).await.is_err() {
                    return;
                }
                if let Ok(Err(e)) = rx.await {
                    tracing::error!(error = %e, "pruning failed; will retry");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Gzips `bytes` in memory.
#[expect(
    clippy::expect_used,
    reason = "writing to and finishing a GzEncoder over a Vec cannot fail: a Vec's io::Write never errors"
)]
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut gz, bytes).expect("writing to a Vec cannot fail");
    gz.finish().expect("finishing into a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_tokens_are_refused_and_random_ones_pass() {
        for weak in [
            "12345678123456781234567812345678",
            "abcdefghabcdefghabcdefghabcdefgh",
            &"a".repeat(44),
            &"ab".repeat(20),
            "11112222333344445555666677778888",
        ] {
            assert!(check_admin_token(weak, "test").is_err(), "{weak}");
        }
        for strong in [
            "3f9a1c0e7b2d4a6f8e1c3b5d7a9f0e2c",
            "Zq3mP0x9T2rW8kL5vN1bC7yH4jF6dS0a",
            "QWxhZGRpbjpvcGVuIHNlc2FtZSBhbmQgbW9yZSByYW5kb20",
        ] {
            assert!(check_admin_token(strong, "test").is_ok(), "{strong}");
        }
    }

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
}
