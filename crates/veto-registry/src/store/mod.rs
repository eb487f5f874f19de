//! The durable store behind the registry: SQLite (the embedded default) or
//! PostgreSQL (shared by replicas). Both commit a version in the same
//! transaction as its signed delta and its entries, and both decide what a
//! group of requests writes with the same pure [`plan()`].
//!
//! - [`Store`]: the handle the registry holds, a thin wrapper on one
//!   [`Backend`]; what is the same for every backend (the delta gap check,
//!   the retention cutoff) is done here, once.
//! - `plan`: the pure planner (no I/O), tested on its own in `tests.rs`.
//! - `rows`: decoding stored columns into veto's types, shared by both.
//! - `sqlite` + `blocking`: the SQLite store is synchronous; `blocking`
//!   is the one place its calls move to the blocking pool.
//! - `postgres`: the PostgreSQL store, natively async.
//!
//! Both schemas keep the current version and head in a one-row table
//! (`head`, `veto_head`) moved in the transaction that adds a version.

mod blocking;
mod pg_tls;
mod plan;
mod postgres;
mod rows;
mod sqlite;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use veto_core::{Entry, EntryKind, Head, Removed, SrlSigner};

use blocking::OnBlockingPool;
#[cfg(test)]
use plan::{fold_duplicates, join_expiry};
pub(crate) use plan::{keys_of, plan, prune_audit, AuditRow, Existing, Stored};
pub use postgres::{listen, PgStore};
pub use sqlite::SqliteStore;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error. The message carries its causes
    /// (tokio-postgres's own says only "error performing TLS handshake").
    #[error("database: {}", veto_tls::error_chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A blocking store task failed.
    #[error("store task failed: {0}")]
    Task(String),
    /// The data in the database is not what veto wrote.
    #[error("database holds unexpected data: {0}")]
    Corrupt(String),
    /// The store URL asks for something this build cannot do.
    #[error("store URL: {detail}")]
    Url {
        /// What is wrong with it.
        detail: String,
    },
    /// A TLS file named by the store URL (`sslrootcert`) does not load.
    #[error("store URL: {0}")]
    Tls(#[from] veto_tls::TlsError),
}

/// Why a write could not be made durable, as the client should hear it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwritable {
    /// The disk (or the database's quota) is full.
    Full,
    /// The database or its filesystem is read-only.
    ReadOnly,
    /// Anything else: the database is down, busy or failing.
    Other,
}

impl Unwritable {
    /// Tells a full or read-only filesystem apart by trying to create a
    /// file in `dir` (SQLite reports a write refused by a read-only
    /// filesystem as a plain I/O error).
    pub fn probe(dir: &std::path::Path) -> Self {
        let probe = dir.join(".veto-write-probe");
        let result = std::fs::write(&probe, b"probe");
        let _ = std::fs::remove_file(&probe);
        match result.map_err(|e| e.kind()) {
            Err(std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) => Self::Full,
            Err(std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied) => {
                Self::ReadOnly
            }
            _ => Self::Other,
        }
    }
}

impl StoreError {
    /// What this error means for a write that failed with it.
    pub fn unwritable(&self) -> Unwritable {
        use rusqlite::ErrorCode;
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => match e.code {
                ErrorCode::DiskFull => Unwritable::Full,
                ErrorCode::ReadOnly => Unwritable::ReadOnly,
                _ => Unwritable::Other,
            },
            Self::Postgres(e) => match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::DISK_FULL => Unwritable::Full,
                Some(c) if *c == tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION => {
                    Unwritable::ReadOnly
                }
                _ => Unwritable::Other,
            },
            _ => Unwritable::Other,
        }
    }
}

/// One revocation as requested, with audit details.
#[derive(Clone, Debug)]
pub struct NewEntry {
    /// The entry as it will be published.
    pub entry: Entry,
    /// Free text for the audit log (never published).
    pub note: Option<String>,
}

pub use veto_core::wire::EntryOutcome;

/// The outcome of one revocation request.
#[derive(Clone, Debug)]
pub struct Committed {
    /// The new version, if the request created one.
    pub new_version: Option<(u64, Head, String)>,
    /// Per-entry outcomes, in request order (duplicates folded).
    pub entries: Vec<EntryOutcome>,
    /// Entries newly published.
    pub added: Vec<Entry>,
}

/// A version that pruned entries.
#[derive(Clone, Debug)]
pub struct Pruned {
    /// The version.
    pub ver: u64,
    /// Its head.
    pub head: Head,
    /// The delta.
    pub jws: String,
    /// The entries removed.
    pub removed: Vec<Removed>,
}

/// One audit record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRecord {
    /// Sequence number (for pagination).
    pub seq: i64,
    /// When.
    pub at: u64,
    /// Who.
    pub actor: String,
    /// What: `revoke`, `revoke_existing` (already revoked, nothing changed),
    /// `revoke_extend` (already revoked; its life grew to `expires_at`,
    /// absent = never expires), `prune`, `mint`, `issuer_key_add`,
    /// `issuer_key_retire`.
    pub action: String,
    /// Entry kind, for revocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Entry id or subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Agent cutoff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Expiry of the entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The version, when one was created or matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Filters for the audit log.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this id.
    pub id: Option<String>,
    /// Only at or after this time.
    pub since: Option<u64>,
    /// Only before this time.
    pub until: Option<u64>,
    /// Only this actor (the token name, `admin`, or a holder).
    pub actor: Option<String>,
    /// Only records after this sequence number (pagination cursor).
    pub after: Option<i64>,
    /// At most this many (1..=1000).
    pub limit: u32,
}

/// An issuer key as stored.
#[derive(Clone, Debug)]
pub struct IssuerKeyRow {
    /// Its thumbprint.
    pub kid: String,
    /// The private JWK.
    pub private_jwk: String,
    /// When added.
    pub added_at: u64,
    /// When retired (no longer trusted), if it was.
    pub retired_at: Option<u64>,
}

/// A named API token as stored: never the token, only its digest.
#[derive(Clone, Debug)]
pub struct TokenRow {
    /// Its name, as the audit log shows it.
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    pub digest: String,
    /// Its scopes, comma-separated.
    pub scopes: String,
    /// When created.
    pub created_at: u64,
    /// When revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// An enrolled gateway (an authorizer that reports what it applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRow {
    /// Its id: the RFC 7638 thumbprint of its Ed25519 key.
    pub id: String,
    /// Its operator-given name.
    pub name: String,
    /// Its public key, a JWK as JSON text.
    pub public_jwk: String,
    /// Enrolled at (Unix seconds).
    pub enrolled_at: u64,
    /// Removed at (Unix seconds), if removed.
    pub removed_at: Option<u64>,
}

/// A gateway's newest accepted report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// The gateway's id.
    pub id: String,
    /// The report's `iat` (Unix seconds) and `seq` (per gateway process, increasing): reports are accepted only in increasing (iat, seq) order.
    pub iat: u64,
    /// The report's `seq` (see `iat`).
    pub seq: u64,
    /// When the registry received it (Unix milliseconds).
    pub received_ms: u64,
    /// The version the gateway reports applied.
    pub ver: u64,
    /// The verified report payload, JSON text.
    pub report: String,
}

/// The state found at start.
pub struct Loaded {
    /// Newest version.
    pub ver: u64,
    /// Its head.
    pub head: Head,
    /// Live entries: kind, id, cutoff.
    pub entries: Vec<(EntryKind, String, Option<u64>)>,
}

/// A live entry as stored, for tests: kind, id, cutoff, expiry.
#[cfg(test)]
pub(crate) type LiveRow = (EntryKind, String, Option<u64>, Option<u64>);

/// A boxed future answering a store call.
pub(crate) type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// What a backend does: every method of [`Store`], as an object-safe trait
/// with boxed futures. Arguments that a blocking backend must move to
/// another thread are taken by value.
pub(crate) trait Backend: Send + Sync {
    /// Reads a meta value.
    fn meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Sets a meta value if absent; returns the value now stored.
    fn meta_or_set<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, String>;
    /// The newest version and the live entries.
    fn load(&self) -> StoreFuture<'_, Loaded>;
    /// Every live entry as stored (tests).
    #[cfg(test)]
    fn live(&self) -> StoreFuture<'_, Vec<LiveRow>>;
    /// Commits a group of revocation requests in one transaction.
    fn commit(
        &self,
        requests: Vec<(Vec<NewEntry>, String)>,
        signer: SrlSigner,
        now: u64,
    ) -> StoreFuture<'_, Vec<Committed>>;
    /// Prunes up to `limit` expired entries as one new version.
    fn prune(&self, signer: SrlSigner, now: u64, limit: usize) -> StoreFuture<'_, Option<Pruned>>;
    /// The current version and head (version 0 and the zero head before
    /// the first commit).
    fn head(&self) -> StoreFuture<'_, (u64, Head)>;
    /// The retained deltas among `since+1 ..= upto` (`since < upto`), in
    /// version order: at most `limit` of them and `max_bytes` of JWS, but
    /// always the first.
    fn deltas(
        &self,
        since: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreFuture<'_, Vec<(u64, String)>>;
    /// Drops the deltas of versions up to `upto`; with `only_published`,
    /// only those the bus accepted. Returns how many.
    fn drop_deltas(&self, upto: u64, only_published: bool) -> StoreFuture<'_, usize>;
    /// Writes an audit record that is not a revocation.
    fn audit<'a>(
        &'a self,
        now: u64,
        actor: &'a str,
        action: &'a str,
        id: Option<&'a str>,
        note: Option<&'a str>,
    ) -> StoreFuture<'a, ()>;
    /// Queries the audit log.
    fn audit_log(&self, filter: AuditFilter) -> StoreFuture<'_, Vec<AuditRecord>>;
    /// Every issuer key, oldest first.
    fn issuer_keys(&self) -> StoreFuture<'_, Vec<IssuerKeyRow>>;
    /// Adds an issuer key.
    fn add_issuer_key<'a>(
        &'a self,
        kid: &'a str,
        private_jwk: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// Every named API token, oldest first.
    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRow>>;
    /// Adds a named API token (audited); false when the name is taken.
    fn add_token<'a>(&'a self, row: &'a TokenRow, actor: &'a str) -> StoreFuture<'a, bool>;
    /// Revokes a named API token (audited); false when no such live token.
    fn revoke_token<'a>(&'a self, name: &'a str, now: u64, actor: &'a str)
        -> StoreFuture<'a, bool>;
    /// Every gateway, removed ones included, by enrolment time then id.
    fn gateways(&self) -> StoreFuture<'_, Vec<GatewayRow>>;
    /// Enrols a gateway, or re-enrols a removed one (audited); false when
    /// a live gateway has its id.
    fn enrol_gateway<'a>(&'a self, row: &'a GatewayRow, actor: &'a str) -> StoreFuture<'a, bool>;
    /// Removes a live gateway with its report and applied history
    /// (audited); false when no live gateway has that id.
    fn remove_gateway<'a>(&'a self, id: &'a str, now: u64, actor: &'a str)
        -> StoreFuture<'a, bool>;
    /// Records a live gateway's report if it is newer, by (iat, seq), than
    /// the one stored; false (nothing written) otherwise.
    fn record_report<'a>(&'a self, row: &'a ReportRow) -> StoreFuture<'a, bool>;
    /// Every stored report, by gateway id.
    fn reports(&self) -> StoreFuture<'_, Vec<ReportRow>>;
    /// Per gateway id, the earliest receipt of a report applying `ver` or
    /// later; by id.
    fn applied_since(&self, ver: u64) -> StoreFuture<'_, Vec<(String, u64)>>;
    /// Drops applied history received before `before_ms`, except each
    /// gateway's newest; returns how many rows.
    fn prune_applied(&self, before_ms: u64) -> StoreFuture<'_, u64>;
    /// Replaces an issuer key stored in clear with its sealed form, only if
    /// it is still in clear (`private_jwk` starts with `{`); false otherwise.
    fn seal_issuer_key<'a>(&'a self, kid: &'a str, sealed: &'a str) -> StoreFuture<'a, bool>;
    /// Retires an issuer key; false when no such active key exists.
    fn retire_issuer_key<'a>(
        &'a self,
        kid: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, bool>;
    /// The oldest deltas not yet accepted by the bus (the outbox).
    fn unpublished(&self, limit: usize) -> StoreFuture<'_, Vec<(u64, String)>>;
    /// Marks a delta as accepted by the bus.
    fn mark_published(&self, ver: u64) -> StoreFuture<'_, ()>;
    /// Housekeeping the registry runs every second, off the commit path
    /// (SQLite: a passive WAL checkpoint); `None` when there is none.
    fn checkpoint(&self) -> Option<StoreFuture<'_, ()>> {
        None
    }
    /// Where commits by other replicas are announced (PostgreSQL: the
    /// connection URL to `LISTEN` on); `None` when this registry is the
    /// only writer.
    fn shared_url(&self) -> Option<&str> {
        None
    }
}

/// A store: the embedded SQLite file, or a shared PostgreSQL database.
/// A thin, cheaply cloned handle on one [`Backend`].
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>);

impl Store {
    /// The embedded SQLite store; its calls run on the blocking pool.
    pub fn sqlite(store: SqliteStore) -> Self {
        Self(Arc::new(OnBlockingPool::new(store)))
    }

    /// A PostgreSQL store, shared with other replicas.
    pub fn postgres(store: PgStore) -> Self {
        Self(Arc::new(store))
    }

    /// Where commits by other replicas are announced (the PostgreSQL URL
    /// to `LISTEN` on); `None` when this registry is the only writer.
    pub fn shared_url(&self) -> Option<&str> {
        self.0.shared_url()
    }

    /// Whether [`Store::checkpoint`] has work to do (SQLite).
    pub fn needs_checkpoints(&self) -> bool {
        self.0.checkpoint().is_some()
    }

    /// Reads a meta value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.0.meta(key).await
    }

    /// Sets a meta value if absent; returns the value now stored.
    pub async fn meta_or_set(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.0.meta_or_set(key, value).await
    }

    /// The newest version and the live entries.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        self.0.load().await
    }

    /// Every live entry as stored: kind, id, cutoff, expiry (tests).
    #[cfg(test)]
    pub(crate) async fn live(&self) -> Result<Vec<LiveRow>, StoreError> {
        self.0.live().await
    }

    /// Commits a group of revocation requests in one transaction.
    pub async fn commit(
        &self,
        requests: Vec<(Vec<NewEntry>, String)>,
        signer: SrlSigner,
        now: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        self.0.commit(requests, signer, now).await
    }

    /// Prunes up to `limit` expired entries as one new version.
    pub async fn prune(
        &self,
        signer: SrlSigner,
        now: u64,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError> {
        self.0.prune(signer, now, limit).await
    }

    /// Deltas `since+1 ..= upto` in version order: a prefix of at most
    /// `limit` deltas and `max_bytes` of JWS, but never empty when any is
    /// due (one delta over the budget comes alone); `None` when not retained.
    pub async fn deltas(
        &self,
        since: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(u64, String)>>, StoreError> {
        if since >= upto {
            return Ok(Some(Vec::new()));
        }
        let page = self.0.deltas(since, upto, limit, max_bytes).await?;
        // Gap-free by construction; a missing first delta means it was
        // dropped by retention.
        if page.first().is_some_and(|(v, _)| *v != since + 1) {
            return Ok(None);
        }
        Ok(Some(page))
    }

    /// Drops deltas older than the newest `keep` versions (the newest delta
    /// always stays); with an outbox, only those already published.
    pub async fn drop_old_deltas(
        &self,
        keep: u64,
        only_published: bool,
    ) -> Result<usize, StoreError> {
        // The newest delta always stays, so a client one version behind
        // can still catch up by delta. The version only grows, so a head
        // read before a concurrent commit only keeps more.
        let (top, _) = self.0.head().await?;
        match top.checked_sub(keep.max(1)) {
            Some(upto) if upto > 0 => self.0.drop_deltas(upto, only_published).await,
            _ => Ok(0),
        }
    }

    /// Writes an audit record that is not a revocation.
    pub async fn audit(
        &self,
        now: u64,
        actor: &str,
        action: &str,
        id: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        self.0.audit(now, actor, action, id, note).await
    }

    /// Queries the audit log.
    pub async fn audit_log(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.0.audit_log(filter).await
    }

    /// Every issuer key, oldest first.
    pub async fn issuer_keys(&self) -> Result<Vec<IssuerKeyRow>, StoreError> {
        self.0.issuer_keys().await
    }

    /// Adds an issuer key.
    pub async fn add_issuer_key(
        &self,
        kid: &str,
        private_jwk: &str,
        now: u64,
        actor: &str,
    ) -> Result<(), StoreError> {
        self.0.add_issuer_key(kid, private_jwk, now, actor).await
    }

    /// Every named API token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.0.tokens().await
    }

    /// Adds a named API token; false when the name is taken.
    pub async fn add_token(&self, row: &TokenRow, actor: &str) -> Result<bool, StoreError> {
        self.0.add_token(row, actor).await
    }

    /// Revokes a named API token; false when no such live token.
    pub async fn revoke_token(
        &self,
        name: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.0.revoke_token(name, now, actor).await
    }

    /// Every gateway, removed ones included, ordered by enrolment time
    /// then id.
    pub async fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError> {
        self.0.gateways().await
    }

    /// Enrols a gateway (`row.removed_at` is ignored), audited as
    /// `gateway_enrol` at `row.enrolled_at`. A removed gateway with the
    /// same id is enrolled again with `row`'s name, key and time; false
    /// when a live gateway has that id (nothing changes).
    pub async fn enrol_gateway(&self, row: &GatewayRow, actor: &str) -> Result<bool, StoreError> {
        self.0.enrol_gateway(row, actor).await
    }

    /// Removes a live gateway, dropping its report and its applied
    /// history, audited as `gateway_remove`; false when no live gateway
    /// has that id.
    pub async fn remove_gateway(
        &self,
        id: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.0.remove_gateway(id, now, actor).await
    }

    /// Records a report, in one transaction: false (nothing written) when
    /// `row.id` is not a live gateway or the stored report's (iat, seq) is
    /// not older than `row`'s. Otherwise the report replaces the stored
    /// one, and when it is the first or its `ver` is higher, `(id, ver,
    /// received_ms)` joins the applied history.
    pub async fn record_report(&self, row: &ReportRow) -> Result<bool, StoreError> {
        self.0.record_report(row).await
    }

    /// Every stored report, ordered by gateway id.
    pub async fn reports(&self) -> Result<Vec<ReportRow>, StoreError> {
        self.0.reports().await
    }

    /// For each gateway with applied history at `ver` or later, the
    /// earliest time (Unix milliseconds) a report of such a version was
    /// received; ordered by gateway id.
    pub async fn applied_since(&self, ver: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.0.applied_since(ver).await
    }

    /// Deletes applied history received before `before_ms`, but never a
    /// gateway's newest applied row (its highest version); returns how
    /// many rows were deleted.
    pub async fn prune_applied(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.0.prune_applied(before_ms).await
    }

    /// Seals an issuer key stored in clear by an older registry; false when
    /// it was sealed already (by another replica, say).
    pub async fn seal_issuer_key(&self, kid: &str, sealed: &str) -> Result<bool, StoreError> {
        self.0.seal_issuer_key(kid, sealed).await
    }

    /// Retires an issuer key; false when no such active key exists.
    pub async fn retire_issuer_key(
        &self,
        kid: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.0.retire_issuer_key(kid, now, actor).await
    }

    /// The oldest deltas not yet accepted by the bus (the outbox).
    pub async fn unpublished(&self, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.0.unpublished(limit).await
    }

    /// Moves committed WAL frames into the database file (SQLite; a no-op
    /// for PostgreSQL).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        match self.0.checkpoint() {
            Some(f) => f.await,
            None => Ok(()),
        }
    }

    /// Marks a delta as accepted by the bus.
    pub async fn mark_published(&self, ver: u64) -> Result<(), StoreError> {
        self.0.mark_published(ver).await
    }
}
