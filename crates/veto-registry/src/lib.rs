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
pub mod store;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot};
use veto_core::{
    keyfile, Clock, Digest, EntryKind, Head, PublicKey, RevocationSet, SigningKey, SrlSigner,
    SystemClock,
};

use crate::metrics::{KindReason, Metrics};
use crate::store::{Committed, NewEntry, SqliteStore, StoreError};

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
        }
    }
}

/// Why the registry could not start or run.
#[derive(Debug, thiserror::Error)]
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
    /// The data directory belongs to another authority.
    #[error("{0}")]
    Mismatch(String),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// An event on the push channels.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    Delta { ver: u64, jws: Arc<str> },
    Checkpoint { ver: u64, jws: Arc<str> },
}

pub(crate) struct Current {
    pub ver: u64,
    pub head: Head,
    pub set: RevocationSet,
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
        reply: oneshot::Sender<Result<Committed, String>>,
    },
    Prune {
        reply: oneshot::Sender<Result<usize, String>>,
    },
}

pub(crate) struct Inner {
    pub config: Config,
    pub store: Arc<SqliteStore>,
    pub signer: SrlSigner,
    pub clock: Arc<dyn Clock>,
    pub admin_token_hash: [u8; 32],
    pub admin_token_path: Option<PathBuf>,
    pub current: RwLock<Current>,
    pub events: broadcast::Sender<Event>,
    pub writes: mpsc::Sender<WriteJob>,
    pub write_rx: Mutex<Option<mpsc::Receiver<WriteJob>>>,
    pub snapshot: tokio::sync::Mutex<Option<Arc<CachedSnapshot>>>,
    pub checkpoint: RwLock<Option<(u64, Arc<str>)>>,
    pub issuers: RwLock<Vec<IssuerKey>>,
    pub metrics: Metrics,
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

pub(crate) fn random_token() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| RegistryError::Mismatch(format!("no randomness: {e}")))?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Registry {
    /// Opens the data directory: creates it, the database, the authority
    /// key, a first issuer key and the admin token on first start.
    pub fn open(config: Config) -> Result<Self, RegistryError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// As [`Registry::open`], with an injected clock.
    pub fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, RegistryError> {
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
            keyfile::write_signing_key(
                &key_path,
                &SigningKey::generate().map_err(|e| RegistryError::Mismatch(e.to_string()))?,
            )?;
        }
        let authority = keyfile::read_signing_key(&key_path)?;
        let store = SqliteStore::open(&dir.join("veto.db"))?;
        for (k, v) in [
            ("authority_kid", authority.kid()),
            ("iss", config.iss.as_str()),
        ] {
            match store.meta(k)? {
                Some(old) if old != v => {
                    return Err(RegistryError::Mismatch(format!(
                        "the database in `{}` was written with {k} `{old}`, not `{v}`: use the original {k}, or a new data directory",
                        dir.display()
                    )))
                }
                Some(_) => {}
                None => store.set_meta(k, v)?,
            }
        }
        let now = clock.now();
        if store.issuer_keys()?.iter().all(|k| k.retired_at.is_some()) {
            let key = SigningKey::generate().map_err(|e| RegistryError::Mismatch(e.to_string()))?;
            let jwk = serde_json::to_string(&key.to_private_jwk()).unwrap_or_default();
            store.add_issuer_key(key.kid(), &jwk, now, "registry")?;
        }
        let mut issuers = Vec::new();
        for row in store.issuer_keys()? {
            let key = SigningKey::from_jwk_json(&row.private_jwk)
                .map_err(|e| StoreError::Corrupt(format!("issuer key `{}`: {e}", row.kid)))?;
            issuers.push(IssuerKey {
                key,
                added_at: row.added_at,
                retired_at: row.retired_at,
            });
        }
        let (token, token_path) = match &config.admin_token {
            Some(t) => (t.clone(), None),
            None => {
                let path = dir.join("admin.token");
                if !path.exists() {
                    keyfile::write_new(&path, random_token()?.as_bytes(), true)?;
                }
                let t = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                (t.trim().to_owned(), Some(path))
            }
        };
        let loaded = store.load()?;
        let mut set = RevocationSet::default();
        for (kind, id, before) in &loaded.entries {
            set.insert(*kind, Digest::of(*kind, id), before.unwrap_or(0));
        }
        let metrics = Metrics::new();
        metrics.version.set(loaded.ver as i64);
        metrics.entries.set(set.len() as i64);
        let (events, _) = broadcast::channel(1024);
        let (writes, write_rx) = mpsc::channel(65_536);
        let signer = SrlSigner::new(authority, config.iss.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                admin_token_hash: Sha256::digest(token.as_bytes()).into(),
                admin_token_path: token_path,
                store: Arc::new(store),
                signer,
                clock,
                current: RwLock::new(Current {
                    ver: loaded.ver,
                    head: loaded.head,
                    set,
                }),
                events,
                writes,
                write_rx: Mutex::new(Some(write_rx)),
                snapshot: tokio::sync::Mutex::new(None),
                checkpoint: RwLock::new(None),
                issuers: RwLock::new(issuers),
                metrics,
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
        self.inner.read_current().ver
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
            .ok_or_else(|| RegistryError::Mismatch("this registry is already serving".into()))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let writer = tokio::spawn(writer(self.inner.clone(), rx));
        let heartbeat = tokio::spawn(heartbeat(self.inner.clone(), stop_rx.clone()));
        let pruner = tokio::spawn(pruner(self.inner.clone(), stop_rx.clone()));
        let app = api::router(self.inner.clone(), stop_rx);
        let result = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
        heartbeat.abort();
        pruner.abort();
        drop(self);
        writer.abort();
        result.map_err(RegistryError::Serve)
    }
}

impl Inner {
    pub(crate) fn read_current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Signs a checkpoint of the current state, caches and returns it.
    pub(crate) fn sign_checkpoint(&self) -> (u64, Arc<str>) {
        let (ver, head) = {
            let c = self.read_current();
            (c.ver, c.head)
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
        let ver = self.read_current().ver;
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
    /// cached one is older than a minute.
    pub(crate) async fn snapshot(self: &Arc<Self>) -> Arc<CachedSnapshot> {
        let mut cache = self.snapshot.lock().await;
        let (ver, head, set) = {
            let c = self.read_current();
            (c.ver, c.head, c.set.clone())
        };
        let now = self.now();
        if let Some(s) = cache.as_ref() {
            if s.ver == ver && now.saturating_sub(s.iat) < 60 {
                return s.clone();
            }
        }
        let inner = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let jws =
                inner
                    .signer
                    .snapshot(ver, head, now, now + inner.config.attestation_ttl, &set);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = std::io::Write::write_all(&mut gz, jws.as_bytes());
            let gzip = gz.finish().unwrap_or_default();
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
            Err(_) => {
                // The blocking task cannot panic short of a bug; serve what we had.
                if let Some(s) = cache.as_ref() {
                    return s.clone();
                }
                Arc::new(CachedSnapshot {
                    ver,
                    iat: now,
                    jws: axum::body::Bytes::new(),
                    gzip: axum::body::Bytes::new(),
                })
            }
        };
        self.metrics.snapshots_signed.inc();
        *cache = Some(snap.clone());
        snap
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
                cur.set
                    .get(EntryKind::Key, &Digest::of(EntryKind::Key, k.key.kid()))
                    .is_none()
            })
            .map(|k| k.key.public().clone())
            .collect()
    }

    /// Applies committed versions to memory, in order, then pushes them.
    fn publish(
        &self,
        versions: Vec<(
            u64,
            Head,
            String,
            Vec<(EntryKind, String, u64)>,
            Vec<(EntryKind, String)>,
        )>,
        committed_at: Instant,
    ) {
        if versions.is_empty() {
            return;
        }
        {
            let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
            for (ver, head, _, added, removed) in &versions {
                for (kind, id) in removed {
                    cur.set.remove(*kind, &Digest::of(*kind, id));
                }
                for (kind, id, value) in added {
                    cur.set.insert(*kind, Digest::of(*kind, id), *value);
                }
                cur.ver = *ver;
                cur.head = *head;
            }
            self.metrics.version.set(cur.ver as i64);
            self.metrics.entries.set(cur.set.len() as i64);
        }
        for (ver, _, jws, _, _) in versions {
            let _ = self.events.send(Event::Delta {
                ver,
                jws: jws.into(),
            });
        }
        self.metrics
            .commit_to_broadcast
            .observe(committed_at.elapsed().as_secs_f64());
    }
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

type Reply = oneshot::Sender<Result<Committed, String>>;

async fn commit_group(inner: &Arc<Inner>, jobs: Vec<(Vec<NewEntry>, String, Reply)>) {
    let (requests, replies): (Vec<_>, Vec<_>) =
        jobs.into_iter().map(|(e, a, r)| ((e, a), r)).unzip();
    let started = Instant::now();
    let now = inner.now();
    let store = inner.store.clone();
    let signer = inner.signer.clone();
    inner.metrics.group_size.observe(requests.len() as f64);
    let result = tokio::task::spawn_blocking(move || store.commit(&requests, &signer, now)).await;
    let committed_at = Instant::now();
    inner
        .metrics
        .commit_seconds
        .observe(committed_at.duration_since(started).as_secs_f64());
    match result {
        Ok(Ok(results)) => {
            let mut versions = Vec::new();
            for c in &results {
                if let Some((ver, head, jws)) = &c.new_version {
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
                    let added = c
                        .added
                        .iter()
                        .map(|e| (e.kind, e.id.clone(), e.before.unwrap_or(0)))
                        .collect();
                    versions.push((*ver, *head, jws.clone(), added, Vec::new()));
                }
            }
            // Acknowledge after the commit, push right after: memory first so
            // a subscriber that reads the version sees the new state.
            inner.publish(versions, committed_at);
            for (reply, c) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(c));
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "commit failed; no revocation in this group was acknowledged");
            for reply in replies {
                let _ = reply.send(Err(e.to_string()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit task failed");
            for reply in replies {
                let _ = reply.send(Err("internal error while committing".into()));
            }
        }
    }
}

async fn prune_all(inner: &Arc<Inner>) -> Result<usize, String> {
    let mut total = 0;
    loop {
        let store = inner.store.clone();
        let signer = inner.signer.clone();
        let now = inner.now();
        let pruned = tokio::task::spawn_blocking(move || store.prune(&signer, now, 10_000))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(p) = pruned else { break };
        total += p.removed.len();
        tracing::info!(
            version = p.ver,
            removed = p.removed.len(),
            "pruned expired entries"
        );
        let removed = p.removed.iter().map(|r| (r.kind, r.id.clone())).collect();
        inner.publish(
            vec![(p.ver, p.head, p.jws, Vec::new(), removed)],
            Instant::now(),
        );
    }
    let store = inner.store.clone();
    let keep = inner.config.retention;
    let dropped = tokio::task::spawn_blocking(move || store.drop_old_deltas(keep))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if dropped > 0 {
        tracing::info!(dropped, "dropped deltas past the retention window");
    }
    Ok(total)
}

async fn heartbeat(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (ver, jws) = inner.sign_checkpoint();
                let _ = inner.events.send(Event::Checkpoint { ver, jws });
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
