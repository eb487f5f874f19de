//! The PostgreSQL store, shared by registry replicas.
//!
//! Versions stay serialized and gap-free across replicas: every writing
//! transaction first locks the one row of `veto_head` (`FOR UPDATE`), so
//! one transaction at a time extends the chain, and it commits the new
//! head, the versions, the entries and the audit records together. The
//! commit sends `NOTIFY veto_versions`, so the other replicas learn of it.
//! New entries and audit records are written with binary `COPY`, rows
//! that exist already with `unnest` array upserts: a group costs a handful
//! of round trips whatever its size.

use std::collections::HashSet;

use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};
use veto_core::{Entry, EntryKind, Head, SrlSigner};

use super::rows::{
    self, audit_columns, gateway_columns, int, issuer_key_columns, opt_int, report_columns,
    token_columns, Columns,
};
#[cfg(test)]
use super::LiveRow;
use super::{
    keys_of, plan, prune_audit, AuditFilter, AuditRecord, AuditRow, Backend, Committed, Existing,
    GatewayRow, IssuerKeyRow, Loaded, NewEntry, Pruned, ReportRow, StoreError, StoreFuture,
    TokenRow,
};

/// Migrations, in order; `veto_meta.schema_version` counts those applied.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS veto_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS veto_head (id INT PRIMARY KEY CHECK (id = 1), ver BIGINT NOT NULL, head BYTEA NOT NULL);
INSERT INTO veto_head (id, ver, head) VALUES (1, 0, decode(repeat('00', 32), 'hex')) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS veto_versions (
    ver BIGINT PRIMARY KEY,
    head BYTEA NOT NULL,
    iat BIGINT NOT NULL,
    jws TEXT NOT NULL,
    published BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS veto_versions_unpublished ON veto_versions (ver) WHERE NOT published;
CREATE TABLE IF NOT EXISTS veto_entries (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    before BIGINT,
    expires_at BIGINT,
    ver BIGINT NOT NULL,
    pruned_ver BIGINT,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS veto_entries_expiry ON veto_entries (expires_at) WHERE pruned_ver IS NULL AND expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS veto_audit (
    seq BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT,
    id TEXT,
    reason TEXT,
    before BIGINT,
    expires_at BIGINT,
    note TEXT,
    ver BIGINT
);
CREATE INDEX IF NOT EXISTS veto_audit_id ON veto_audit (kind, id);
CREATE TABLE IF NOT EXISTS veto_issuer_keys (
    kid TEXT PRIMARY KEY,
    private_jwk TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    retired_at BIGINT
);
CREATE TABLE IF NOT EXISTS veto_api_tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
"#;

/// The fleet: enrolled gateways, each one's newest accepted report, and
/// the history of the versions they reported applied (when each was first
/// heard of), as SQLite has them (`gateways`, ...).
const SCHEMA_V2: &str = r#"
CREATE TABLE IF NOT EXISTS veto_gateways (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    removed_at BIGINT
);
CREATE TABLE IF NOT EXISTS veto_gateway_reports (
    id TEXT PRIMARY KEY,
    iat BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    ver BIGINT NOT NULL,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS veto_gateway_applied (
    id TEXT NOT NULL,
    ver BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (id, ver)
);
CREATE INDEX IF NOT EXISTS veto_gateway_applied_ver ON veto_gateway_applied (ver);
"#;

/// The order issuer keys were added in, the same at every replica (the
/// newest mints; `added_at` is in seconds, so it cannot order keys added
/// within one). Existing rows are numbered in table order.
const SCHEMA_V3: &str = r#"
ALTER TABLE veto_issuer_keys ADD COLUMN IF NOT EXISTS seq BIGSERIAL;
"#;

/// The audit log's index on `id`: a hash index. The log is looked up by
/// `id` by equality only (`audit_log`, the delegated-revocation check),
/// and a hash index costs a batch about half of what the `(kind, id)`
/// B-tree of [`SCHEMA_V1`] did (BENCHMARKS.md, item 5 of "Against real
/// peers"); a lookup by kind alone reads the log in `seq` order, as one
/// with no filter does. A new database gets it with its tables; one made
/// by an earlier release gets it from [`audit_id_index`].
const AUDIT_ID_HASH: &str = "veto_audit_id_hash ON veto_audit USING hash (id)";

/// Replaces an existing database's `(kind, id)` audit B-tree with
/// [`AUDIT_ID_HASH`] without blocking writes: `CONCURRENTLY`, so outside a
/// transaction, by the one replica that takes the session advisory lock
/// (the others go on without waiting, so no replica can wait on another's
/// build while it waits on them). An index an interrupted build left
/// invalid (written to, never read) is dropped and built again. The
/// schema version is left alone: the previous release still starts.
async fn audit_id_index(client: &Client) -> Result<(), StoreError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('veto_audit_id_hash') AND indisvalid),
                    to_regclass('veto_audit_id') IS NOT NULL",
            &[],
        )
        .await?;
    let (hash_valid, btree): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
    if hash_valid && !btree {
        return Ok(());
    }
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock(7436976)", &[])
        .await?
        .try_get(0)?;
    if !locked {
        return Ok(());
    }
    tracing::info!("replacing the audit log's (kind, id) index with a hash index on id, without blocking writes (once)");
    let result = async {
        if !hash_valid {
            client
                .batch_execute("DROP INDEX CONCURRENTLY IF EXISTS veto_audit_id_hash")
                .await?;
            client
                .batch_execute(&format!("CREATE INDEX CONCURRENTLY {AUDIT_ID_HASH}"))
                .await?;
        }
        client
            .batch_execute("DROP INDEX CONCURRENTLY IF EXISTS veto_audit_id")
            .await?;
        Ok::<(), StoreError>(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock(7436976)", &[])
        .await?;
    result
}

/// The channel replicas are told of new versions on.
pub const CHANNEL: &str = "veto_versions";

/// A PostgreSQL store: one connection for writing transactions, one for reads.
pub struct PgStore {
    writer: Mutex<Client>,
    reader: Client,
    url: String,
}

/// Connects one client, driving its connection on a task.
/// TLS follows the URL's `sslmode` (see `pg_tls`).
pub(crate) async fn connect(url: &str) -> Result<Client, StoreError> {
    let (url, tls) = super::pg_tls::target(url)?;
    let (client, connection) = tokio_postgres::connect(&url, tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Connects and creates the tables if needed (under an advisory lock, so
    /// replicas starting together do not race).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut writer = connect(url).await?;
        let tx = writer.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(7436975)", &[])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS veto_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .await?;
        let applied: i64 = tx
            .query_opt(
                "SELECT value FROM veto_meta WHERE key = 'schema_version'",
                &[],
            )
            .await?
            .map(|r| r.text(0))
            .transpose()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if applied > known {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {applied}, newer than this veto knows ({known}): upgrade veto"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO veto_meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&(i + 1).to_string()],
            )
            .await?;
        }
        if applied == 0 {
            // A new database: no rows to index, no writer to block.
            tx.batch_execute(&format!(
                "CREATE INDEX IF NOT EXISTS {AUDIT_ID_HASH}; DROP INDEX IF EXISTS veto_audit_id"
            ))
            .await?;
        }
        tx.commit().await?;
        audit_id_index(&writer).await?;
        let reader = connect(url).await?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader,
            url: url.to_owned(),
        })
    }
}

/// Decodes every row with `decode`.
fn decode_all<T>(
    rows: &[tokio_postgres::Row],
    decode: impl Fn(&tokio_postgres::Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(decode).collect()
}

impl Backend for PgStore {
    fn shared_url(&self) -> Option<&str> {
        Some(&self.url)
    }

    fn meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            self.reader
                .query_opt("SELECT value FROM veto_meta WHERE key = $1", &[&key])
                .await?
                .map(|r| r.text(0))
                .transpose()
        })
    }

    fn meta_or_set<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let w = self.writer.lock().await;
            w.execute(
                "INSERT INTO veto_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .await?;
            w.query_one("SELECT value FROM veto_meta WHERE key = $1", &[&key])
                .await?
                .text(0)
        })
    }

    fn load(&self) -> StoreFuture<'_, Loaded> {
        Box::pin(async move {
            let (ver, head) = self.head().await?;
            // Entries committed after the head was read belong to a later
            // version, which the registry reads as a delta.
            let found = self
                .reader
                .query(
                    "SELECT kind, id, before FROM veto_entries WHERE pruned_ver IS NULL AND ver <= $1",
                    &[&int(ver)],
                )
                .await?;
            let entries = decode_all(&found, rows::loaded_entry)?;
            Ok(Loaded { ver, head, entries })
        })
    }

    #[cfg(test)]
    fn live(&self) -> StoreFuture<'_, Vec<LiveRow>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    "SELECT kind, id, before, expires_at FROM veto_entries WHERE pruned_ver IS NULL",
                    &[],
                )
                .await?;
            decode_all(&found, rows::live_row)
        })
    }

    fn commit(
        &self,
        requests: Vec<(Vec<NewEntry>, String)>,
        signer: SrlSigner,
        now: u64,
    ) -> StoreFuture<'_, Vec<Committed>> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = begin_by_key(&mut w).await?;
            let results = commit(&tx, &requests, &signer, now).await?;
            tx.commit().await?;
            Ok(results)
        })
    }

    fn prune(&self, signer: SrlSigner, now: u64, limit: usize) -> StoreFuture<'_, Option<Pruned>> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = begin_by_key(&mut w).await?;
            let (ver, head) = lock_head(&tx).await?;
            let found = tx
                .query(
                    "SELECT kind, id FROM veto_entries WHERE pruned_ver IS NULL AND expires_at IS NOT NULL AND expires_at <= $1
                     ORDER BY expires_at LIMIT $2",
                    &[&int(now), &(limit as i64)],
                )
                .await?;
            let removed = decode_all(&found, rows::removed)?;
            if removed.is_empty() {
                return Ok(None);
            }
            let ver = ver + 1;
            let (jws, new_head) = signer.delta(ver, head, now, Vec::new(), removed.clone());
            tx.execute(
                "INSERT INTO veto_versions (ver, head, iat, jws) VALUES ($1, $2, $3, $4)",
                &[&int(ver), &new_head.0.to_vec(), &int(now), &jws],
            )
            .await?;
            let kinds: Vec<&str> = removed.iter().map(|r| r.kind.as_str()).collect();
            let ids: Vec<&str> = removed.iter().map(|r| r.id.as_str()).collect();
            tx.execute(MARK_PRUNED, &[&kinds, &ids, &int(ver)]).await?;
            set_head(&tx, ver, new_head).await?;
            let audit = prune_audit(&removed, now, ver);
            insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(Some(Pruned {
                ver,
                head: new_head,
                jws,
                removed,
            }))
        })
    }

    fn deltas(
        &self,
        since: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreFuture<'_, Vec<(u64, String)>> {
        Box::pin(async move {
            // The running total is computed by the server, so rows past the
            // byte budget never cross the wire; the first row always does.
            let found = self
                .reader
                .query(
                    "SELECT ver, jws FROM (
                       SELECT ver, jws, SUM(octet_length(jws)) OVER (ORDER BY ver) - octet_length(jws) AS before_it
                       FROM veto_versions WHERE ver > $1 AND ver <= $2 ORDER BY ver LIMIT $3
                     ) page WHERE before_it = 0 OR before_it + octet_length(jws) <= $4 ORDER BY ver",
                    &[
                        &int(since),
                        &int(upto),
                        &(limit.min(i64::MAX as usize) as i64),
                        &(max_bytes.min(i64::MAX as usize) as i64),
                    ],
                )
                .await?;
            decode_all(&found, rows::delta)
        })
    }

    fn head(&self) -> StoreFuture<'_, (u64, Head)> {
        Box::pin(async move {
            rows::version_head(
                &self
                    .reader
                    .query_one("SELECT ver, head FROM veto_head WHERE id = 1", &[])
                    .await?,
            )
        })
    }

    fn drop_deltas(&self, upto: u64, only_published: bool) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let n = self
                .reader
                .execute(
                    "DELETE FROM veto_versions WHERE ver <= $1 AND (published OR NOT $2)",
                    &[&int(upto), &only_published],
                )
                .await?;
            Ok(n as usize)
        })
    }

    fn audit<'a>(
        &'a self,
        now: u64,
        actor: &'a str,
        action: &'a str,
        id: Option<&'a str>,
        note: Option<&'a str>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.reader
                .execute(
                    "INSERT INTO veto_audit (at, actor, action, id, note) VALUES ($1, $2, $3, $4, $5)",
                    &[&int(now), &actor, &action, &id, &note],
                )
                .await?;
            Ok(())
        })
    }

    fn audit_log(&self, f: AuditFilter) -> StoreFuture<'_, Vec<AuditRecord>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    concat!(
                        "SELECT ",
                        audit_columns!(),
                        " FROM veto_audit
                         WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR id = $2) AND ($3::bigint IS NULL OR at >= $3)
                           AND ($4::bigint IS NULL OR at < $4) AND seq > COALESCE($5::bigint, 0)
                           AND ($7::text IS NULL OR actor = $7)
                         ORDER BY seq LIMIT $6"
                    ),
                    &[
                        &f.kind,
                        &f.id,
                        &opt_int(f.since),
                        &opt_int(f.until),
                        &f.after,
                        &i64::from(f.limit),
                        &f.actor,
                    ],
                )
                .await?;
            decode_all(&found, rows::audit_record)
        })
    }

    fn issuer_keys(&self) -> StoreFuture<'_, Vec<IssuerKeyRow>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    concat!(
                        "SELECT ",
                        issuer_key_columns!(),
                        " FROM veto_issuer_keys ORDER BY seq"
                    ),
                    &[],
                )
                .await?;
            decode_all(&found, rows::issuer_key)
        })
    }

    fn add_issuer_key<'a>(
        &'a self,
        kid: &'a str,
        private_jwk: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = w.transaction().await?;
            tx.execute(
                "INSERT INTO veto_issuer_keys (kid, private_jwk, added_at) VALUES ($1, $2, $3)",
                &[&kid, &private_jwk, &int(now)],
            )
            .await?;
            tx.execute(
                "INSERT INTO veto_audit (at, actor, action, id) VALUES ($1, $2, 'issuer_key_add', $3)",
                &[&int(now), &actor, &kid],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn tokens(&self) -> StoreFuture<'_, Vec<TokenRow>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    concat!(
                        "SELECT ",
                        token_columns!(),
                        " FROM veto_api_tokens ORDER BY created_at, name"
                    ),
                    &[],
                )
                .await?;
            decode_all(&found, rows::token)
        })
    }

    fn add_token<'a>(&'a self, row: &'a TokenRow, actor: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = w.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO veto_api_tokens (name, digest, scopes, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                    &[&row.name, &row.digest, &row.scopes, &int(row.created_at)],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO veto_audit (at, actor, action, id, note) VALUES ($1, $2, 'token_create', $3, $4)",
                    &[&int(row.created_at), &actor, &row.name, &row.scopes],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = w.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE veto_api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
                    &[&int(now), &name],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO veto_audit (at, actor, action, id) VALUES ($1, $2, 'token_revoke', $3)",
                    &[&int(now), &actor, &name],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn gateways(&self) -> StoreFuture<'_, Vec<GatewayRow>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    concat!(
                        "SELECT ",
                        gateway_columns!(),
                        " FROM veto_gateways ORDER BY enrolled_at, id"
                    ),
                    &[],
                )
                .await?;
            decode_all(&found, rows::gateway)
        })
    }

    fn enrol_gateway<'a>(&'a self, row: &'a GatewayRow, actor: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = w.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO veto_gateways (id, name, public_jwk, enrolled_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, public_jwk = excluded.public_jwk,
                       enrolled_at = excluded.enrolled_at, removed_at = NULL
                     WHERE veto_gateways.removed_at IS NOT NULL",
                    &[&row.id, &row.name, &row.public_jwk, &int(row.enrolled_at)],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO veto_audit (at, actor, action, id, note) VALUES ($1, $2, 'gateway_enrol', $3, $4)",
                    &[&int(row.enrolled_at), &actor, &row.id, &row.name],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn remove_gateway<'a>(
        &'a self,
        id: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = w.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE veto_gateways SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL",
                    &[&int(now), &id],
                )
                .await?;
            if n == 1 {
                tx.execute("DELETE FROM veto_gateway_reports WHERE id = $1", &[&id])
                    .await?;
                tx.execute("DELETE FROM veto_gateway_applied WHERE id = $1", &[&id])
                    .await?;
                tx.execute(
                    "INSERT INTO veto_audit (at, actor, action, id) VALUES ($1, $2, 'gateway_remove', $3)",
                    &[&int(now), &actor, &id],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn record_report<'a>(&'a self, row: &'a ReportRow) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = w.transaction().await?;
            // The gateway's row, locked: reports of one gateway (to any
            // replica) and its removal are decided one at a time.
            let live = tx
                .query_opt(
                    "SELECT 1 FROM veto_gateways WHERE id = $1 AND removed_at IS NULL FOR UPDATE",
                    &[&row.id],
                )
                .await?
                .is_some();
            if !live {
                return Ok(false);
            }
            let stored = tx
                .query_opt(
                    "SELECT iat, seq, ver FROM veto_gateway_reports WHERE id = $1",
                    &[&row.id],
                )
                .await?
                .map(|r| rows::report_order(&r))
                .transpose()?;
            if stored.is_some_and(|(iat, seq, _)| (iat, seq) >= (row.iat, row.seq)) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO veto_gateway_reports (id, iat, seq, received_ms, ver, report)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET iat = excluded.iat, seq = excluded.seq,
                   received_ms = excluded.received_ms, ver = excluded.ver, report = excluded.report",
                &[
                    &row.id,
                    &int(row.iat),
                    &int(row.seq),
                    &int(row.received_ms),
                    &int(row.ver),
                    &row.report,
                ],
            )
            .await?;
            if stored.is_none_or(|(_, _, ver)| row.ver > ver) {
                tx.execute(
                    "INSERT INTO veto_gateway_applied (id, ver, received_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (id, ver) DO NOTHING",
                    &[&row.id, &int(row.ver), &int(row.received_ms)],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn reports(&self) -> StoreFuture<'_, Vec<ReportRow>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    concat!(
                        "SELECT ",
                        report_columns!(),
                        " FROM veto_gateway_reports ORDER BY id"
                    ),
                    &[],
                )
                .await?;
            decode_all(&found, rows::report)
        })
    }

    fn applied_since(&self, ver: u64) -> StoreFuture<'_, Vec<(String, u64)>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    "SELECT id, MIN(received_ms) FROM veto_gateway_applied WHERE ver >= $1
                     GROUP BY id ORDER BY id",
                    &[&int(ver)],
                )
                .await?;
            decode_all(&found, rows::applied)
        })
    }

    fn prune_applied(&self, before_ms: u64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let n = self
                .reader
                .execute(
                    "DELETE FROM veto_gateway_applied g WHERE g.received_ms < $1
                       AND g.ver < (SELECT MAX(a.ver) FROM veto_gateway_applied a WHERE a.id = g.id)",
                    &[&int(before_ms)],
                )
                .await?;
            Ok(n)
        })
    }

    fn seal_issuer_key<'a>(&'a self, kid: &'a str, sealed: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let w = self.writer.lock().await;
            let n = w
                .execute(
                    "UPDATE veto_issuer_keys SET private_jwk = $1 WHERE kid = $2 AND private_jwk LIKE '{%'",
                    &[&sealed, &kid],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn retire_issuer_key<'a>(
        &'a self,
        kid: &'a str,
        now: u64,
        actor: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut w = self.writer.lock().await;
            let tx = w.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE veto_issuer_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
                    &[&int(now), &kid],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO veto_audit (at, actor, action, id) VALUES ($1, $2, 'issuer_key_retire', $3)",
                    &[&int(now), &actor, &kid],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn unpublished(&self, limit: usize) -> StoreFuture<'_, Vec<(u64, String)>> {
        Box::pin(async move {
            let found = self
                .reader
                .query(
                    "SELECT ver, jws FROM veto_versions WHERE NOT published ORDER BY ver LIMIT $1",
                    &[&(limit as i64)],
                )
                .await?;
            decode_all(&found, rows::delta)
        })
    }

    fn mark_published(&self, ver: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.reader
                .execute(
                    "UPDATE veto_versions SET published = TRUE WHERE ver = $1",
                    &[&int(ver)],
                )
                .await?;
            Ok(())
        })
    }
}

/// Set at the start of every transaction that writes entries
/// ([`begin_by_key`]): its statements find entries by their primary key,
/// one probe per key. Left to its cost model, PostgreSQL hashes the whole
/// table instead once it holds some tens of thousands of rows (60,000
/// analyzed rows and a 3,000-key batch plan a hash join over a sequential
/// scan), so the cost of every batch grew with the table rather than with
/// the batch (BENCHMARKS.md, item 5 of "Against real peers").
const BY_KEY: &str =
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; SET LOCAL enable_seqscan = off";

/// The stored rows (live or pruned) of the keys `$1` (kinds) and `$2`
/// (ids), as `kind, id, ver, before, expires_at, live`.
pub(crate) const STORED_ROWS: &str =
    "SELECT e.kind, e.id, e.ver, e.before, e.expires_at, e.pruned_ver IS NULL FROM veto_entries e
     JOIN unnest($1::text[], $2::text[]) AS k(kind, id) ON e.kind = k.kind AND e.id = k.id";

/// Begins a transaction that writes revocation state: [`BY_KEY`] holds
/// for all of it (committing batches and pruning expired entries).
pub(crate) async fn begin_by_key(client: &mut Client) -> Result<Transaction<'_>, StoreError> {
    let tx = client.transaction().await?;
    tx.batch_execute(BY_KEY).await?;
    Ok(tx)
}

/// Marks the keys `$1` (kinds) and `$2` (ids) pruned at version `$3`.
pub(crate) const MARK_PRUNED: &str =
    "UPDATE veto_entries e SET pruned_ver = $3 FROM unnest($1::text[], $2::text[]) AS k(kind, id)
     WHERE e.kind = k.kind AND e.id = k.id";

/// A group of revocation requests, written in `tx` (see [`plan`]).
async fn commit(
    tx: &Transaction<'_>,
    requests: &[(Vec<NewEntry>, String)],
    signer: &SrlSigner,
    now: u64,
) -> Result<Vec<Committed>, StoreError> {
    let (ver, head) = lock_head(tx).await?;
    let keys = keys_of(requests);
    let kinds: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
    // Every stored row of these keys, pruned ones too: a key with no row
    // at all is written by COPY, one with a row by the upsert.
    let found = tx.query(STORED_ROWS, &[&kinds, &ids]).await?;
    let mut existing = Existing::new();
    let mut stored: HashSet<(EntryKind, String)> = HashSet::with_capacity(found.len());
    for row in &found {
        let (key, entry) = rows::stored(row)?;
        if row.try_get::<_, bool>(5)? {
            existing.insert(key.clone(), entry);
        }
        stored.insert(key);
    }
    let plan = plan(requests, &existing, ver, head, signer, now);
    if let Some(last) = plan.versions.last() {
        let vers: Vec<i64> = plan.versions.iter().map(|v| int(v.ver)).collect();
        let heads: Vec<Vec<u8>> = plan.versions.iter().map(|v| v.head.0.to_vec()).collect();
        let iats: Vec<i64> = plan.versions.iter().map(|v| int(v.iat)).collect();
        let jwss: Vec<&str> = plan.versions.iter().map(|v| v.jws.as_str()).collect();
        tx.execute(
            "INSERT INTO veto_versions (ver, head, iat, jws) SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::text[])",
            &[&vers, &heads, &iats, &jwss],
        )
        .await?;
        let (fresh, known): (Vec<_>, Vec<_>) = plan
            .entries
            .iter()
            .partition(|(e, _)| !stored.contains(&(e.kind, e.id.clone())));
        copy_entries(tx, &fresh).await?;
        upsert_entries(tx, &known).await?;
        set_head(tx, last.ver, last.head).await?;
    }
    if !plan.extend.is_empty() {
        // A longer life for a live entry: never shorter, even if the
        // plan were wrong (the join again, in SQL).
        let kinds: Vec<&str> = plan.extend.iter().map(|(k, _, _)| k.as_str()).collect();
        let ids: Vec<&str> = plan.extend.iter().map(|(_, id, _)| id.as_str()).collect();
        let expires: Vec<Option<i64>> = plan.extend.iter().map(|(_, _, x)| opt_int(*x)).collect();
        tx.execute(
            "UPDATE veto_entries e SET expires_at = CASE WHEN e.expires_at IS NULL OR k.expires_at IS NULL THEN NULL
                                                       ELSE GREATEST(e.expires_at, k.expires_at) END
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(kind, id, expires_at)
             WHERE e.kind = k.kind AND e.id = k.id AND e.pruned_ver IS NULL",
            &[&kinds, &ids, &expires],
        )
        .await?;
    }
    insert_audit(tx, &plan.audit).await?;
    Ok(plan.results)
}

/// Writes entries that have no row yet with one binary `COPY` (the head
/// row is locked, so no other writer can add the same keys meanwhile).
async fn copy_entries(tx: &Transaction<'_>, entries: &[&(Entry, u64)]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in("COPY veto_entries (kind, id, reason, revoked_at, before, expires_at, ver) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::INT8,
        ],
    );
    let mut writer = std::pin::pin!(writer);
    for (e, ver) in entries {
        writer
            .as_mut()
            .write(&[
                &e.kind.as_str(),
                &e.id.as_str(),
                &e.reason.as_str(),
                &int(e.revoked_at),
                &opt_int(e.before),
                &opt_int(e.expires_at),
                &int(*ver),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Writes entries that have a row (live, or pruned and now revoked again)
/// with an `unnest` upsert that never moves a cutoff earlier or shortens a
/// life.
async fn upsert_entries(tx: &Transaction<'_>, entries: &[&(Entry, u64)]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = entries.iter().map(|(e, _)| e.kind.as_str()).collect();
    let ids: Vec<&str> = entries.iter().map(|(e, _)| e.id.as_str()).collect();
    let reasons: Vec<&str> = entries.iter().map(|(e, _)| e.reason.as_str()).collect();
    let revoked_at: Vec<i64> = entries.iter().map(|(e, _)| int(e.revoked_at)).collect();
    let befores: Vec<Option<i64>> = entries.iter().map(|(e, _)| opt_int(e.before)).collect();
    let expires: Vec<Option<i64>> = entries.iter().map(|(e, _)| opt_int(e.expires_at)).collect();
    let evers: Vec<i64> = entries.iter().map(|(_, v)| int(*v)).collect();
    tx.execute(
        "INSERT INTO veto_entries (kind, id, reason, revoked_at, before, expires_at, ver)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
         ON CONFLICT (kind, id) DO UPDATE SET reason = excluded.reason, revoked_at = excluded.revoked_at,
           before = CASE WHEN veto_entries.pruned_ver IS NOT NULL THEN excluded.before
                         ELSE GREATEST(veto_entries.before, excluded.before) END,
           expires_at = CASE WHEN veto_entries.pruned_ver IS NOT NULL THEN excluded.expires_at
                             WHEN veto_entries.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                             ELSE GREATEST(veto_entries.expires_at, excluded.expires_at) END,
           ver = excluded.ver, pruned_ver = NULL",
        &[&kinds, &ids, &reasons, &revoked_at, &befores, &expires, &evers],
    )
    .await?;
    Ok(())
}

/// Locks the head row: the serialization point for versions.
async fn lock_head(tx: &Transaction<'_>) -> Result<(u64, Head), StoreError> {
    rows::version_head(
        &tx.query_one(
            "SELECT ver, head FROM veto_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?,
    )
}

async fn set_head(tx: &Transaction<'_>, ver: u64, head: Head) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE veto_head SET ver = $1, head = $2 WHERE id = 1",
        &[&int(ver), &head.0.to_vec()],
    )
    .await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &ver.to_string()])
        .await?;
    Ok(())
}

async fn insert_audit(tx: &Transaction<'_>, rows: &[AuditRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in(
            "COPY veto_audit (at, actor, action, kind, id, reason, before, expires_at, note, ver) FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
        ],
    );
    let mut writer = std::pin::pin!(writer);
    for a in rows {
        writer
            .as_mut()
            .write(&[
                &int(a.at),
                &a.actor.as_str(),
                &a.action,
                &a.kind.map(|k| k.as_str()),
                &a.id.as_deref(),
                &a.reason.map(|r| r.as_str()),
                &opt_int(a.before),
                &opt_int(a.expires_at),
                &a.note.as_deref(),
                &opt_int(a.ver),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Listens for new versions committed by any replica; the receiver ends
/// when the connection is lost.
pub async fn listen(url: &str) -> Result<tokio::sync::mpsc::UnboundedReceiver<u64>, StoreError> {
    use futures_util::StreamExt as _;
    let (url, tls) = super::pg_tls::target(url)?;
    let (client, mut connection) = tokio_postgres::connect(&url, tls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // The client must live as long as the listening task: it is handed to
    // the task through this channel once LISTEN is done.
    let (keep_tx, keep_rx) = tokio::sync::oneshot::channel::<Client>();
    tokio::spawn(async move {
        let _client = keep_rx;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                if let Ok(v) = n.payload().parse::<u64>() {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let _ = keep_tx.send(client);
    Ok(rx)
}
