//! The authority: the registry's revocation state and the only code that
//! changes it (mini-redis's `Db` is the model).
//!
//! [`Authority`] owns the applied state, the signer, the store handle, the
//! issuer keys and the push channel; every field is private. The HTTP API,
//! the background loops ([`crate::tasks`]) and the publishers
//! ([`crate::bus`]) use its methods. A revocation goes: the API validates
//! it → [`Authority::revoke`] queues it for the one writer → the writer
//! commits a group ([`Authority::commit_group`]) → memory moves forward
//! and every version is pushed ([`Authority::advance`]) → the API answers.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use axum::body::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use veto_core::{
    keyfile, warrant, Applied, Clock, Digest, EntryKind, KeySet, LinkSpec, PublicKey,
    RevocationSet, SigningKey, SrlSigner, SrlState, SrlVerifier,
};

use crate::config::Config;
use crate::error::RegistryError;
use crate::event::Event;
use crate::metrics::{KindReason, Metrics};
use crate::seal::Seal;
use crate::store::{
    AuditFilter, AuditRecord, Committed, GatewayRow, Loaded, NewEntry, PgStore, ReportRow,
    SqliteStore, Store, StoreError, TokenRow, Unwritable,
};

/// Most expired entries one pruning version removes.
const PRUNE_BATCH: usize = 10_000;
/// A cached snapshot is signed anew after this many seconds even when the
/// version has not moved, so its `iat` stays recent.
const SNAPSHOT_REFRESH_SECS: u64 = 60;

/// The registry's state. See the module docs.
///
/// Lock order: a lock further down this list may be taken while one
/// above it is held, never the reverse.
/// 1. `follow` (async): orders moving memory forward and pushing, so
///    versions apply and push in order and a checkpoint never overtakes
///    its delta;
/// 2. `snapshot` (async): the cached signed snapshot;
/// 3. `current`: the applied state;
/// 4. `issuers`: the issuer keys;
/// 5. `checkpoint`: the newest signed checkpoint.
pub(crate) struct Authority {
    signer: SrlSigner,
    /// Verifies this authority's own deltas before they reach memory.
    verifier: SrlVerifier,
    clock: Arc<dyn Clock>,
    store: Store,
    metrics: Arc<Metrics>,
    /// How long a checkpoint or snapshot may be relied on, in seconds.
    attestation_ttl: u64,
    /// How many versions of deltas are retained.
    retention: u64,
    /// Whether deltas wait in the outbox for the bus: they are kept until
    /// published, even past the retention window.
    outbox: bool,
    /// The SQLite data directory, probed to tell a full disk from a
    /// read-only one; `None` on PostgreSQL.
    sqlite_dir: Option<PathBuf>,
    writes: mpsc::Sender<WriteJob>,
    events: broadcast::Sender<Event>,
    follow: tokio::sync::Mutex<()>,
    snapshot: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    current: RwLock<SrlState>,
    issuers: RwLock<Vec<IssuerKey>>,
    /// Seals issuer private keys before they reach the store.
    seal: Seal,
    checkpoint: RwLock<Option<(u64, Arc<str>)>>,
}

/// A signed snapshot (DESIGN 3.3), as served: its binary container (the
/// body of `GET /v1/srl`) and that gzipped, shared by every response
/// until the version moves; the text container (an SSE `snapshot`
/// event) is made from it on first use.
pub(crate) struct Snapshot {
    /// The version it attests.
    pub ver: u64,
    /// When it was signed (Unix seconds).
    pub iat: u64,
    /// The binary container: the compact JWS, `\n`, the table bytes.
    pub bytes: Bytes,
    /// The binary container, gzipped.
    pub gzip: Bytes,
    /// The text container, made on first use.
    text: std::sync::OnceLock<Arc<str>>,
}

impl Snapshot {
    /// The text container: the compact JWS, `~`, base64url of the tables
    /// (made once, on the first subscriber that needs it).
    pub fn text(&self) -> Arc<str> {
        self.text
            .get_or_init(|| match veto_core::Snapshot::from_container(&self.bytes) {
                Ok(s) => s.to_text().into(),
                // The bytes are our own signer's: a split cannot fail.
                Err(_) => Arc::from(""),
            })
            .clone()
    }
}

/// An issuer key the registry mints root warrants with.
struct IssuerKey {
    key: SigningKey,
    added_at: u64,
    retired_at: Option<u64>,
}

/// An issuer key as listed (never the private half).
pub(crate) struct IssuerKeyInfo {
    /// The key id (RFC 7638 thumbprint).
    pub kid: String,
    /// When it was added (Unix seconds).
    pub added_at: u64,
    /// When it was retired, if it was.
    pub retired_at: Option<u64>,
    /// Whether authorizers trust it: not retired, not revoked.
    pub trusted: bool,
}

/// Work for the one writer.
pub(crate) enum WriteJob {
    /// Commit these entries; answer with the outcome.
    Revoke {
        entries: Vec<NewEntry>,
        actor: String,
        reply: oneshot::Sender<Result<Committed, RevokeFailed>>,
    },
    /// Remove expired entries and deltas past retention.
    Prune {
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
}

/// A queued revocation: its entries, its actor and where its outcome goes.
pub(crate) type RevokeJob = (
    Vec<NewEntry>,
    String,
    oneshot::Sender<Result<Committed, RevokeFailed>>,
);

/// Why a revocation was not recorded. Nothing of it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RevokeFailed {
    /// The writer has stopped: the registry is shutting down.
    ShuttingDown,
    /// The commit failed; the cause is in the operator's log.
    Unwritable(Unwritable),
}

/// Why a warrant could not be minted.
#[derive(Debug)]
pub(crate) enum MintFailed {
    /// Every issuer key is retired or revoked.
    NoIssuerKey,
    /// The warrant's fields are refused by the format.
    Invalid(veto_core::WarrantError),
}

/// A new signing key from the operating system's randomness.
pub(crate) fn random_key() -> Result<SigningKey, RegistryError> {
    SigningKey::generate().map_err(|e| match e {
        veto_core::KeyError::Random(cause) => RegistryError::Random(cause),
        other => RegistryError::Random(other.to_string()),
    })
}

impl Authority {
    /// Opens the store named by `config` (creating the authority key and a
    /// first issuer key on first start), checks it was written by this
    /// authority, and loads the state. Returns the authority and the
    /// writer's queue, for [`crate::tasks::writer`].
    pub(crate) async fn open(
        config: &Config,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, mpsc::Receiver<WriteJob>), RegistryError> {
        let dir = &config.data_dir;
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
        let seal = Seal::new(&authority, &config.iss);
        if store
            .issuer_keys()
            .await?
            .iter()
            .all(|k| k.retired_at.is_some())
        {
            let key = random_key()?;
            let sealed = seal.seal(key.kid(), &key.to_private_jwk().to_json())?;
            store
                .add_issuer_key(key.kid(), &sealed, clock.now(), "registry")
                .await?;
        }
        let issuers = load_issuers(&store, &seal).await?;
        let state = state_of(store.load().await?);
        metrics.version.set(state.ver() as i64);
        metrics.entries.set(state.set().len() as i64);
        let (events, _) = broadcast::channel(1024);
        let (writes, write_rx) = mpsc::channel(65_536);
        // Its own deltas are checked for the signature and the chain, not
        // for freshness: a replica far behind still applies old versions.
        let verifier = SrlVerifier::new(
            KeySet::new([authority.public().clone()]),
            config.iss.clone(),
        )
        .with_skew(u64::MAX / 4);
        let authority = Self {
            signer: SrlSigner::new(authority, config.iss.clone()),
            verifier,
            clock,
            sqlite_dir: config.store.is_none().then(|| dir.clone()),
            store,
            metrics,
            attestation_ttl: config.attestation_ttl,
            retention: config.retention,
            outbox: config.bus.is_some(),
            writes,
            events,
            follow: tokio::sync::Mutex::new(()),
            snapshot: tokio::sync::Mutex::new(None),
            current: RwLock::new(state),
            issuers: RwLock::new(issuers),
            seal,
            checkpoint: RwLock::new(None),
        };
        Ok((authority, write_rx))
    }

    /// The authority name (`iss`).
    pub(crate) fn iss(&self) -> &str {
        self.signer.iss()
    }

    /// The public key authorizers pin.
    pub(crate) fn authority_key(&self) -> &PublicKey {
        self.signer.key().public()
    }

    /// Now, in Unix seconds, from the injected clock.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The newest applied version.
    pub(crate) fn version(&self) -> u64 {
        self.read_current().ver()
    }

    /// Every event pushed from now on, in version order. Subscribe before
    /// reading [`Authority::version`], so nothing in between is missed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn read_current(&self) -> RwLockReadGuard<'_, SrlState> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `entries` durably (one new version, or none when all were
    /// already in force), pushes it, and only then returns.
    pub(crate) async fn revoke(
        &self,
        entries: Vec<NewEntry>,
        actor: String,
    ) -> Result<Committed, RevokeFailed> {
        let (reply, rx) = oneshot::channel();
        let job = WriteJob::Revoke {
            entries,
            actor,
            reply,
        };
        self.writes
            .send(job)
            .await
            .map_err(|_| RevokeFailed::ShuttingDown)?;
        rx.await.map_err(|_| RevokeFailed::ShuttingDown)?
    }

    /// Prunes through the writer (so pruning versions interleave with
    /// revocations in one order). `None` when the writer has stopped.
    pub(crate) async fn prune(&self) -> Option<Result<usize, StoreError>> {
        let (reply, rx) = oneshot::channel();
        self.writes.send(WriteJob::Prune { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Signs a checkpoint of the current state, caches and returns it.
    fn sign_checkpoint(&self) -> (u64, Arc<str>) {
        let (ver, head) = {
            let c = self.read_current();
            (c.ver(), c.head())
        };
        let now = self.now();
        let jws: Arc<str> = self
            .signer
            .checkpoint(ver, head, now, now + self.attestation_ttl)
            .into();
        self.metrics.checkpoints_signed.inc();
        *self.checkpoint.write().unwrap_or_else(|p| p.into_inner()) = Some((ver, jws.clone()));
        (ver, jws)
    }

    /// The newest checkpoint (DESIGN 3.3), signed anew when the version
    /// moved.
    pub(crate) fn checkpoint(&self) -> (u64, Arc<str>) {
        let ver = self.read_current().ver();
        let cached = self
            .checkpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match cached {
            Some((v, jws)) if v == ver => (v, jws),
            _ => self.sign_checkpoint(),
        }
    }

    /// Signs a checkpoint and pushes it, under the ordering lock: a
    /// checkpoint for version N is never pushed before delta N itself.
    pub(crate) async fn heartbeat(&self) {
        let _order = self.follow.lock().await;
        let (ver, jws) = self.sign_checkpoint();
        let _ = self.events.send(Event::checkpoint(ver, jws));
    }

    /// The current snapshot, signed anew when the version moved or the
    /// cached one is older than a minute. `None` only when signing failed
    /// (the signing task died) and no earlier snapshot is cached: never an
    /// empty body in place of a signed one.
    pub(crate) async fn snapshot(self: &Arc<Self>) -> Option<Arc<Snapshot>> {
        let mut cache = self.snapshot.lock().await;
        let (ver, head, set) = {
            let c = self.read_current();
            (c.ver(), c.head(), c.set().clone())
        };
        let now = self.now();
        if let Some(s) = cache.as_ref() {
            if s.ver == ver && now.saturating_sub(s.iat) < SNAPSHOT_REFRESH_SECS {
                return Some(s.clone());
            }
        }
        let this = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let bytes = this
                .signer
                .snapshot(ver, head, now, now + this.attestation_ttl, &set)
                .into_bytes();
            let gzip = gzip(&bytes);
            Snapshot {
                ver,
                iat: now,
                bytes: bytes.into(),
                gzip: gzip.into(),
                text: std::sync::OnceLock::new(),
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

    /// The deltas `since+1 ..= upto` as `(version, compact JWS)`, at most
    /// `max_count` and about `max_bytes` (a single larger delta comes
    /// alone); `None` when some of them are no longer retained.
    pub(crate) async fn deltas(
        &self,
        since: u64,
        upto: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(u64, String)>>, StoreError> {
        self.store.deltas(since, upto, max_count, max_bytes).await
    }

    /// A page of the audit log.
    pub(crate) async fn audit_log(
        &self,
        filter: AuditFilter,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.store.audit_log(filter).await
    }

    /// Mints a root warrant (DESIGN 3.4) with the newest trusted issuer
    /// key (the last added: the store keeps the order, so every replica
    /// picks the same one), and writes its audit record. Returns the chain and its `jti`.
    pub(crate) async fn mint(
        &self,
        spec: LinkSpec,
        actor: &str,
    ) -> Result<(String, String), MintFailed> {
        let agent = spec.sub.clone();
        let jti = warrant::new_jti().map_err(MintFailed::Invalid)?;
        let chain = {
            let cur = self.read_current();
            let issuers = self.issuers.read().unwrap_or_else(|p| p.into_inner());
            let key = issuers
                .iter()
                .rev()
                .find(|k| k.retired_at.is_none() && !key_revoked(cur.set(), k.key.kid()))
                .ok_or(MintFailed::NoIssuerKey)?;
            drop(cur);
            warrant::mint_root_with_jti(&key.key, self.iss(), spec, jti.clone())
                .map_err(MintFailed::Invalid)?
        };
        let now = self.now();
        if let Err(e) = self
            .store
            .audit(now, actor, "mint", Some(&jti), Some(&agent))
            .await
        {
            tracing::warn!(error = %e, jti, "minted a warrant but could not write its audit record");
        }
        Ok((chain, jti))
    }

    /// The trusted issuer keys: not retired, not revoked.
    pub(crate) fn trusted_issuers(&self) -> Vec<PublicKey> {
        let cur = self.read_current();
        let issuers = self.issuers.read().unwrap_or_else(|p| p.into_inner());
        issuers
            .iter()
            .filter(|k| k.retired_at.is_none() && !key_revoked(cur.set(), k.key.kid()))
            .map(|k| k.key.public().clone())
            .collect()
    }

    /// Every issuer key, in the order they were added (the store's order,
    /// the same at every replica).
    pub(crate) fn issuer_keys(&self) -> Vec<IssuerKeyInfo> {
        let cur = self.read_current();
        let issuers = self.issuers.read().unwrap_or_else(|p| p.into_inner());
        issuers
            .iter()
            .map(|k| IssuerKeyInfo {
                kid: k.key.kid().to_owned(),
                added_at: k.added_at,
                retired_at: k.retired_at,
                trusted: k.retired_at.is_none() && !key_revoked(cur.set(), k.key.kid()),
            })
            .collect()
    }

    /// The issuer key set signed by the authority (DESIGN 3.5): the keys
    /// not retired, at a version that counts every key added and retired
    /// (the same at every replica, never going back).
    pub(crate) fn issuer_set(&self) -> (u64, String) {
        let issuers = self.issuers.read().unwrap_or_else(|p| p.into_inner());
        let ver = issuers_version(&issuers);
        let keys: Vec<PublicKey> = issuers
            .iter()
            .filter(|k| k.retired_at.is_none())
            .map(|k| k.key.public().clone())
            .collect();
        drop(issuers);
        (ver, self.signer.issuers(ver, self.now(), &keys))
    }

    /// The version of the current issuer key set.
    pub(crate) fn issuers_version(&self) -> u64 {
        issuers_version(&self.issuers.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Pushes the current issuer key set to every subscriber (SSE) and
    /// the bus relay (NATS).
    fn announce_issuers(&self) {
        let (ver, jws) = self.issuer_set();
        tracing::info!(version = ver, "issuer key set changed; pushing it");
        let _ = self.events.send(Event::issuers(ver, jws.into()));
    }

    /// The applied state for display: version, head, entries per kind
    /// (`[warrants, agents, keys]`) and the newest checkpoint's `iat`.
    pub(crate) fn summary(&self) -> (u64, String, [usize; 3]) {
        let cur = self.read_current();
        (cur.ver(), cur.head().to_string(), cur.set().counts())
    }

    /// Every enrolled gateway, removed ones included.
    pub(crate) async fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError> {
        self.store.gateways().await
    }

    /// Enrols a gateway (audited as `actor`); false when its key is
    /// enrolled already.
    pub(crate) async fn enrol_gateway(
        &self,
        row: &GatewayRow,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.store.enrol_gateway(row, actor).await
    }

    /// Removes a gateway (audited as `actor`); false when no live one has
    /// that id.
    pub(crate) async fn remove_gateway(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.store.remove_gateway(id, self.now(), actor).await
    }

    /// Keeps a gateway's report; false when it is not newer than the last.
    pub(crate) async fn record_report(&self, row: &ReportRow) -> Result<bool, StoreError> {
        self.store.record_report(row).await
    }

    /// Every gateway's newest report.
    pub(crate) async fn reports(&self) -> Result<Vec<ReportRow>, StoreError> {
        self.store.reports().await
    }

    /// Per gateway, when it was first heard to have applied `ver` or later
    /// (Unix milliseconds).
    pub(crate) async fn applied_since(&self, ver: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.store.applied_since(ver).await
    }

    /// Forgets application times older than `before_ms`.
    pub(crate) async fn prune_applied(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.store.prune_applied(before_ms).await
    }

    /// Every named API token, as stored.
    pub(crate) async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.store.tokens().await
    }

    /// Stores a named API token (audited as `actor`); false when the name
    /// is taken.
    pub(crate) async fn add_token(&self, row: &TokenRow, actor: &str) -> Result<bool, StoreError> {
        self.store.add_token(row, actor).await
    }

    /// Revokes a named API token (audited as `actor`); false when there is
    /// no live one of that name.
    pub(crate) async fn revoke_token(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        self.store.revoke_token(name, self.now(), actor).await
    }

    /// Generates and stores a new issuer key; returns its public half.
    pub(crate) async fn add_issuer_key(&self, actor: &str) -> Result<PublicKey, RegistryError> {
        let key = random_key()?;
        let sealed = self.seal.seal(key.kid(), &key.to_private_jwk().to_json())?;
        let now = self.now();
        self.store
            .add_issuer_key(key.kid(), &sealed, now, actor)
            .await?;
        let public = key.public().clone();
        let mut issuers = self.issuers.write().unwrap_or_else(|p| p.into_inner());
        issuers.push(IssuerKey {
            key,
            added_at: now,
            retired_at: None,
        });
        drop(issuers);
        self.announce_issuers();
        Ok(public)
    }

    /// Retires the active issuer key `kid`: the time it was retired, or
    /// `None` when no active key has that id.
    pub(crate) async fn retire_issuer_key(
        &self,
        kid: &str,
        actor: &str,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.now();
        if !self.store.retire_issuer_key(kid, now, actor).await? {
            return Ok(None);
        }
        let mut issuers = self.issuers.write().unwrap_or_else(|p| p.into_inner());
        for k in issuers.iter_mut().filter(|k| k.key.kid() == kid) {
            k.retired_at = Some(now);
        }
        drop(issuers);
        self.announce_issuers();
        Ok(Some(now))
    }

    /// Reads the issuer keys again (another replica may have changed
    /// them) and pushes the set when its version moved.
    pub(crate) async fn reload_issuers(&self) -> Result<(), RegistryError> {
        let keys = load_issuers(&self.store, &self.seal).await?;
        let changed = {
            let mut issuers = self.issuers.write().unwrap_or_else(|p| p.into_inner());
            let changed = issuers_version(&issuers) != issuers_version(&keys);
            *issuers = keys;
            changed
        };
        if changed {
            self.announce_issuers();
        }
        Ok(())
    }

    /// The PostgreSQL URL other replicas share, if any.
    pub(crate) fn shared_url(&self) -> Option<&str> {
        self.store.shared_url()
    }

    /// Runs a WAL checkpoint, when the store needs them (SQLite); `false`
    /// when it never does.
    pub(crate) fn needs_wal_checkpoints(&self) -> bool {
        self.store.needs_checkpoints()
    }

    /// Moves the SQLite WAL into the database file.
    pub(crate) async fn wal_checkpoint(&self) -> Result<(), StoreError> {
        self.store.checkpoint().await
    }

    /// The oldest `limit` deltas not yet accepted by the bus.
    pub(crate) async fn outbox(&self, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.store.unpublished(limit).await
    }

    /// Marks delta `ver` as accepted by the bus.
    pub(crate) async fn mark_published(&self, ver: u64) -> Result<(), StoreError> {
        self.store.mark_published(ver).await
    }

    /// Commits a group of revocation requests in one transaction (one
    /// version each, one fsync for all), moves memory forward and pushes,
    /// and only then answers each request.
    pub(crate) async fn commit_group(&self, jobs: Vec<RevokeJob>) {
        let (requests, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|(e, a, r)| ((e, a), r)).unzip();
        let started = Instant::now();
        self.metrics.group_size.observe(requests.len() as f64);
        let result = self
            .store
            .commit(requests, self.signer.clone(), self.now())
            .await;
        let committed_at = Instant::now();
        self.metrics
            .commit_seconds
            .observe(committed_at.duration_since(started).as_secs_f64());
        let results = match result {
            Ok(results) => results,
            Err(e) => {
                let mut kind = e.unwritable();
                if let (Unwritable::Other, Some(dir)) = (kind, &self.sqlite_dir) {
                    kind = Unwritable::probe(dir);
                }
                tracing::error!(error = %e, ?kind, "commit failed; no revocation in this group was acknowledged");
                // The cause stays in the log above: it may name hosts or files.
                for reply in replies {
                    let _ = reply.send(Err(RevokeFailed::Unwritable(kind)));
                }
                return;
            }
        };
        let mut known = Vec::new();
        for c in &results {
            if let Some((ver, _, jws)) = &c.new_version {
                for e in &c.added {
                    self.metrics
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
        self.advance(known, upto, Some(committed_at)).await;
        for (reply, c) in replies.into_iter().zip(results) {
            let _ = reply.send(Ok(c));
        }
    }

    /// Removes expired entries (a new version per batch) and deltas past
    /// the retention window. Returns how many entries were removed.
    pub(crate) async fn prune_expired(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        while let Some(p) = self
            .store
            .prune(self.signer.clone(), self.now(), PRUNE_BATCH)
            .await?
        {
            total += p.removed.len();
            tracing::info!(
                version = p.ver,
                removed = p.removed.len(),
                "pruned expired entries"
            );
            self.advance(vec![(p.ver, p.jws)], p.ver, Some(Instant::now()))
                .await;
        }
        let dropped = self
            .store
            .drop_old_deltas(self.retention, self.outbox)
            .await?;
        if dropped > 0 {
            tracing::info!(dropped, "dropped deltas past the retention window");
        }
        Ok(total)
    }

    /// Moves memory forward to at least `upto` with versions other
    /// replicas committed (read from the store).
    pub(crate) async fn follow(&self, upto: u64) {
        self.advance(Vec::new(), upto, None).await;
    }

    /// Moves memory forward to at least `upto`, in version order, and
    /// pushes every version applied. `known` are versions this replica has
    /// just committed; anything before them that memory lacks (another
    /// replica's commits) is read from the store first. Every delta is
    /// verified and must extend the applied head.
    async fn advance(&self, known: Vec<(u64, String)>, upto: u64, committed_at: Option<Instant>) {
        let _order = self.follow.lock().await;
        let cur = self.version();
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
                            let state = state_of(loaded);
                            tracing::warn!(
                                version = state.ver(),
                                "reloaded the state from the store"
                            );
                            *self.current.write().unwrap_or_else(|p| p.into_inner()) = state;
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
            let delta = match self.verifier.delta(&jws, self.now()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(version = ver, error = %e, "a stored delta does not verify; stopping here");
                    break;
                }
            };
            match state.apply_delta(&delta) {
                Ok(Applied::Advanced { .. }) => applied.push((ver, jws)),
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

/// Whether the issuer key `kid` is revoked in `set`.
fn key_revoked(set: &RevocationSet, kid: &str) -> bool {
    set.get(EntryKind::Key, &Digest::of(EntryKind::Key, kid))
        .is_some()
}

/// The revocation state the store holds.
fn state_of(loaded: Loaded) -> SrlState {
    let mut set = RevocationSet::default();
    for (kind, id, before) in &loaded.entries {
        set.insert(*kind, Digest::of(*kind, id), before.unwrap_or(0));
    }
    SrlState::at(loaded.ver, loaded.head, set)
}

/// Reads the issuer keys, opening each sealed one; a key an older registry
/// stored in clear is sealed in place now.
async fn load_issuers(store: &Store, seal: &Seal) -> Result<Vec<IssuerKey>, RegistryError> {
    let mut issuers = Vec::new();
    for row in store.issuer_keys().await? {
        let (jwk, in_clear) = seal.open(&row.kid, &row.private_jwk)?;
        let key = SigningKey::from_jwk_json(&jwk)
            .map_err(|e| StoreError::Corrupt(format!("issuer key `{}`: {e}", row.kid)))?;
        if in_clear {
            let sealed = seal.seal(&row.kid, &jwk)?;
            if store.seal_issuer_key(&row.kid, &sealed).await? {
                tracing::info!(kid = %row.kid, "sealed an issuer key stored in clear by an older registry");
            }
        }
        issuers.push(IssuerKey {
            key,
            added_at: row.added_at,
            retired_at: row.retired_at,
        });
    }
    Ok(issuers)
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

/// The version of an issuer key set: every key ever added plus every key
/// retired, the same at every replica and never going back.
fn issuers_version(keys: &[IssuerKey]) -> u64 {
    let retired = keys.iter().filter(|k| k.retired_at.is_some()).count();
    (keys.len() + retired) as u64
}
