//! The durable store behind the registry: SQLite (the embedded default) or
//! PostgreSQL (shared by replicas). Both commit a version in the same
//! transaction as its signed delta and its entries, and both decide what a
//! group of requests writes with the same pure [`plan`].

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use veto_core::{Entry, EntryKind, Head, Reason, Removed, SrlSigner};

pub use postgres::{listen, PgStore};
pub use sqlite::SqliteStore;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error.
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A blocking store task failed.
    #[error("store task failed: {0}")]
    Task(String),
    /// The data in the database is not what veto wrote.
    #[error("database holds unexpected data: {0}")]
    Corrupt(String),
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

/// The outcome for one entry of a request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EntryOutcome {
    /// Kind.
    pub kind: EntryKind,
    /// Id.
    pub id: String,
    /// The version it was revoked in.
    pub version: u64,
    /// Whether this request created the revocation (false: already revoked).
    pub created: bool,
}

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

/// The state found at start.
pub struct Loaded {
    /// Newest version.
    pub ver: u64,
    /// Its head.
    pub head: Head,
    /// Live entries: kind, id, cutoff.
    pub entries: Vec<(EntryKind, String, Option<u64>)>,
}

/// A version to insert.
pub(crate) struct VersionRow {
    pub ver: u64,
    pub head: Head,
    pub iat: u64,
    pub jws: String,
}

/// An audit record to insert.
pub(crate) struct AuditRow {
    pub at: u64,
    pub actor: String,
    pub action: &'static str,
    pub kind: Option<EntryKind>,
    pub id: Option<String>,
    pub reason: Option<Reason>,
    pub before: Option<u64>,
    pub expires_at: Option<u64>,
    pub note: Option<String>,
    pub ver: Option<u64>,
}

/// What one group of revocation requests writes.
pub(crate) struct Plan {
    pub results: Vec<Committed>,
    pub versions: Vec<VersionRow>,
    /// Entries to upsert, with the version that last published them: one
    /// row per (kind, id), holding the join of everything asked for it.
    pub entries: Vec<(Entry, u64)>,
    /// Live entries published before this group whose life only grew:
    /// (kind, id, new `expires_at`, `None` = never). No version: expiry is
    /// registry bookkeeping (authorizers neither store nor apply it; an
    /// entry leaves their state only through a pruning delta's `rm`).
    pub extend: Vec<(EntryKind, String, Option<u64>)>,
    pub audit: Vec<AuditRow>,
}

/// A live entry as stored, for tests: kind, id, cutoff, expiry.
#[cfg(test)]
pub(crate) type LiveRow = (EntryKind, String, Option<u64>, Option<u64>);

/// A live entry as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The version that last published it.
    pub ver: u64,
    /// The agent cutoff (agents only).
    pub before: Option<u64>,
    /// When it may be pruned; `None`: never.
    pub expires_at: Option<u64>,
}

/// Live entries already stored, by (kind, id).
pub(crate) type Existing = HashMap<(EntryKind, String), Stored>;

/// The longer of two lives, where `None` (no expiry) is the longest: what
/// an entry asked for twice keeps (DESIGN 5: no request narrows an
/// acknowledged revocation).
pub(crate) fn join_expiry(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// Decides, without I/O, what a group of requests writes on top of version
/// `ver`/`head`. Every (kind, id) keeps the join of all that was asked for
/// it: the latest agent cutoff, the longest life (no `expires_at` is the
/// longest). A request whose join moves an agent cutoff later, or revokes
/// something not live, gets a version of its own; one that only lengthens
/// a life is answered with the existing version (`created: false`) and
/// extends the stored expiry; one that changes nothing creates nothing.
pub(crate) fn plan(
    requests: &[(Vec<NewEntry>, String)],
    existing: &Existing,
    mut ver: u64,
    mut head: Head,
    signer: &SrlSigner,
    now: u64,
) -> Plan {
    let mut live = existing.clone();
    let mut plan = Plan {
        results: Vec::with_capacity(requests.len()),
        versions: Vec::new(),
        entries: Vec::new(),
        extend: Vec::new(),
        audit: Vec::new(),
    };
    // Where each key sits in `plan.entries` / `plan.extend`, so a key asked
    // for twice in one group is written once, with the join.
    let mut row_of: HashMap<(EntryKind, String), usize> = HashMap::new();
    let mut extend_of: HashMap<(EntryKind, String), usize> = HashMap::new();
    let mut extend: Vec<Option<(EntryKind, String, Option<u64>)>> = Vec::new();
    for (entries, actor) in requests {
        let mut outcomes = Vec::new();
        // Per outcome: the new expiry when the request lengthened a life.
        let mut extended: Vec<Option<Option<u64>>> = Vec::new();
        let mut added: Vec<(Entry, Option<String>)> = Vec::new();
        for new in fold_duplicates(entries) {
            let mut e = new.entry;
            let key = (e.kind, e.id.clone());
            let old = live.get(&key).copied();
            if let Some(old) = old {
                e.before = e.before.max(old.before);
                e.expires_at = join_expiry(e.expires_at, old.expires_at);
            }
            match old {
                Some(old) if old.before == e.before => {
                    let grew = old.expires_at != e.expires_at;
                    if grew {
                        live.insert(
                            key.clone(),
                            Stored {
                                expires_at: e.expires_at,
                                ..old
                            },
                        );
                        if let Some(&i) = row_of.get(&key) {
                            plan.entries[i].0.expires_at = e.expires_at;
                        } else if let Some(x) =
                            extend_of.get(&key).and_then(|&i| extend[i].as_mut())
                        {
                            x.2 = e.expires_at;
                        } else {
                            extend_of.insert(key.clone(), extend.len());
                            extend.push(Some((e.kind, e.id.clone(), e.expires_at)));
                        }
                    }
                    extended.push(grew.then_some(e.expires_at));
                    outcomes.push(EntryOutcome {
                        kind: e.kind,
                        id: e.id,
                        version: old.ver,
                        created: false,
                    });
                }
                _ => {
                    live.insert(
                        key,
                        Stored {
                            ver: ver + 1,
                            before: e.before,
                            expires_at: e.expires_at,
                        },
                    );
                    outcomes.push(EntryOutcome {
                        kind: e.kind,
                        id: e.id.clone(),
                        version: ver + 1,
                        created: true,
                    });
                    extended.push(None);
                    added.push((e, new.note));
                }
            }
        }
        // Entries that were revoked already are audited in every case; one
        // whose life grew says so, with the expiry it keeps now (absent:
        // never expires).
        for (o, grew) in outcomes.iter().zip(&extended).filter(|(o, _)| !o.created) {
            plan.audit.push(AuditRow {
                at: now,
                actor: actor.clone(),
                action: if grew.is_some() {
                    "revoke_extend"
                } else {
                    "revoke_existing"
                },
                kind: Some(o.kind),
                id: Some(o.id.clone()),
                reason: None,
                before: None,
                expires_at: grew.flatten(),
                note: None,
                ver: Some(o.version),
            });
        }
        if added.is_empty() {
            plan.results.push(Committed {
                new_version: None,
                entries: outcomes,
                added: Vec::new(),
            });
            continue;
        }
        ver += 1;
        let published: Vec<Entry> = added.iter().map(|(e, _)| e.clone()).collect();
        let (jws, new_head) = signer.delta(ver, head, now, published.clone(), Vec::new());
        plan.versions.push(VersionRow {
            ver,
            head: new_head,
            iat: now,
            jws: jws.clone(),
        });
        for (e, note) in added {
            plan.audit.push(AuditRow {
                at: now,
                actor: actor.clone(),
                action: "revoke",
                kind: Some(e.kind),
                id: Some(e.id.clone()),
                reason: Some(e.reason),
                before: e.before,
                expires_at: e.expires_at,
                note,
                ver: Some(ver),
            });
            let key = (e.kind, e.id.clone());
            // A row published anew carries the whole join, so a pending
            // expiry-only update of it is folded in.
            if let Some(i) = extend_of.remove(&key) {
                extend[i] = None;
            }
            match row_of.get(&key) {
                Some(&i) => plan.entries[i] = (e, ver),
                None => {
                    row_of.insert(key, plan.entries.len());
                    plan.entries.push((e, ver));
                }
            }
        }
        head = new_head;
        plan.results.push(Committed {
            new_version: Some((ver, new_head, jws)),
            entries: outcomes,
            added: published,
        });
    }
    plan.extend = extend.into_iter().flatten().collect();
    plan
}

/// The audit records of a pruning version.
pub(crate) fn prune_audit(removed: &[Removed], now: u64, ver: u64) -> Vec<AuditRow> {
    removed
        .iter()
        .map(|r| AuditRow {
            at: now,
            actor: "registry".into(),
            action: "prune",
            kind: Some(r.kind),
            id: Some(r.id.clone()),
            reason: None,
            before: None,
            expires_at: None,
            note: None,
            ver: Some(ver),
        })
        .collect()
}

/// The (kind, id) pairs a group of requests touches.
pub(crate) fn keys_of(requests: &[(Vec<NewEntry>, String)]) -> Vec<(EntryKind, String)> {
    let mut keys: Vec<(EntryKind, String)> = requests
        .iter()
        .flat_map(|(es, _)| es.iter().map(|e| (e.entry.kind, e.entry.id.clone())))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Folds repeats of a (kind, id) in one request into the first, keeping the
/// latest agent cutoff and the longest life: a repeat must never narrow what
/// an acknowledged request revoked.
fn fold_duplicates(entries: &[NewEntry]) -> Vec<NewEntry> {
    let mut index: HashMap<(EntryKind, &str), usize> = HashMap::with_capacity(entries.len());
    let mut out: Vec<NewEntry> = Vec::with_capacity(entries.len());
    for new in entries {
        match index.get(&(new.entry.kind, new.entry.id.as_str())) {
            Some(&i) => {
                let kept = &mut out[i].entry;
                kept.before = kept.before.max(new.entry.before);
                kept.expires_at = match (kept.expires_at, new.entry.expires_at) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            None => {
                index.insert((new.entry.kind, new.entry.id.as_str()), out.len());
                out.push(new.clone());
            }
        }
    }
    out
}

/// A store: the embedded SQLite file, or a shared PostgreSQL database.
#[derive(Clone)]
pub enum Store {
    /// SQLite (blocking; run on the blocking pool).
    Sqlite(Arc<SqliteStore>),
    /// PostgreSQL.
    Postgres(Arc<PgStore>),
}

macro_rules! blocking {
    ($s:expr, |$st:ident| $body:expr) => {{
        let $st = $s.clone();
        tokio::task::spawn_blocking(move || $body)
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }};
}

impl Store {
    /// Reads a meta value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let key = key.to_owned();
                blocking!(s, |s| s.meta(&key))
            }
            Store::Postgres(p) => p.meta(key).await,
        }
    }

    /// Sets a meta value if absent; returns the value now stored.
    pub async fn meta_or_set(&self, key: &str, value: &str) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (key, value) = (key.to_owned(), value.to_owned());
                blocking!(s, |s| s.meta_or_set(&key, &value))
            }
            Store::Postgres(p) => p.meta_or_set(key, value).await,
        }
    }

    /// The newest version and the live entries.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.load()),
            Store::Postgres(p) => p.load().await,
        }
    }

    /// Every live entry as stored: kind, id, cutoff, expiry (tests).
    #[cfg(test)]
    pub(crate) async fn live(&self) -> Result<Vec<LiveRow>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.live()),
            Store::Postgres(p) => p.live().await,
        }
    }

    /// Commits a group of revocation requests in one transaction.
    pub async fn commit(
        &self,
        requests: Vec<(Vec<NewEntry>, String)>,
        signer: SrlSigner,
        now: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.commit(&requests, &signer, now)),
            Store::Postgres(p) => p.commit(&requests, &signer, now).await,
        }
    }

    /// Prunes up to `limit` expired entries as one new version.
    pub async fn prune(
        &self,
        signer: SrlSigner,
        now: u64,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.prune(&signer, now, limit)),
            Store::Postgres(p) => p.prune(&signer, now, limit).await,
        }
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
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.deltas(since, upto, limit, max_bytes)),
            Store::Postgres(p) => p.deltas(since, upto, limit, max_bytes).await,
        }
    }

    /// Drops deltas older than the newest `keep` versions; with an outbox,
    /// only those already published.
    pub async fn drop_old_deltas(
        &self,
        keep: u64,
        only_published: bool,
    ) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.drop_old_deltas(keep, only_published)),
            Store::Postgres(p) => p.drop_old_deltas(keep, only_published).await,
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
        match self {
            Store::Sqlite(s) => {
                let (actor, action, id, note) = (
                    actor.to_owned(),
                    action.to_owned(),
                    id.map(str::to_owned),
                    note.map(str::to_owned),
                );
                blocking!(s, |s| s.audit(
                    now,
                    &actor,
                    &action,
                    id.as_deref(),
                    note.as_deref()
                ))
            }
            Store::Postgres(p) => p.audit(now, actor, action, id, note).await,
        }
    }

    /// Queries the audit log.
    pub async fn audit_log(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.audit_log(&filter)),
            Store::Postgres(p) => p.audit_log(&filter).await,
        }
    }

    /// Every issuer key, oldest first.
    pub async fn issuer_keys(&self) -> Result<Vec<IssuerKeyRow>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.issuer_keys()),
            Store::Postgres(p) => p.issuer_keys().await,
        }
    }

    /// Adds an issuer key.
    pub async fn add_issuer_key(
        &self,
        kid: &str,
        private_jwk: &str,
        now: u64,
        actor: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (kid, jwk, actor) = (kid.to_owned(), private_jwk.to_owned(), actor.to_owned());
                blocking!(s, |s| s.add_issuer_key(&kid, &jwk, now, &actor))
            }
            Store::Postgres(p) => p.add_issuer_key(kid, private_jwk, now, actor).await,
        }
    }

    /// Retires an issuer key; false when no such active key exists.
    pub async fn retire_issuer_key(
        &self,
        kid: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let (kid, actor) = (kid.to_owned(), actor.to_owned());
                blocking!(s, |s| s.retire_issuer_key(&kid, now, &actor))
            }
            Store::Postgres(p) => p.retire_issuer_key(kid, now, actor).await,
        }
    }

    /// The oldest deltas not yet accepted by the bus (the outbox).
    pub async fn unpublished(&self, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.unpublished(limit)),
            Store::Postgres(p) => p.unpublished(limit).await,
        }
    }

    /// Moves committed WAL frames into the database file (SQLite; a no-op
    /// for PostgreSQL).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.checkpoint()),
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Marks a delta as accepted by the bus.
    pub async fn mark_published(&self, ver: u64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => blocking!(s, |s| s.mark_published(ver)),
            Store::Postgres(p) => p.mark_published(ver).await,
        }
    }
}
