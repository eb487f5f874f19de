//! The durable store: SQLite in WAL mode with `synchronous = FULL`, so a
//! commit is on disk before it is acknowledged. One writer connection
//! (used by the writer task only) and one reader connection.
//!
//! A version is committed in the same transaction as its signed delta and
//! its entries, so there is never a version without its delta or an entry
//! without its version.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, Params, Row, Statement, Transaction, TransactionBehavior};
use veto_core::{Head, Removed, SrlSigner};

use super::rows::{
    self, audit_columns, gateway_columns, int, issuer_key_columns, opt_int, report_columns,
    token_columns, Columns,
};
#[cfg(test)]
use super::LiveRow;
use super::{
    keys_of, plan, prune_audit, AuditFilter, AuditRecord, AuditRow, Committed, Existing,
    GatewayRow, IssuerKeyRow, Loaded, NewEntry, Pruned, ReportRow, StoreError, TokenRow,
};

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    checkpointer: Mutex<Connection>,
}

/// Migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    ver INTEGER PRIMARY KEY,
    head BLOB NOT NULL,
    iat INTEGER NOT NULL,
    jws TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_at INTEGER NOT NULL,
    before INTEGER,
    expires_at INTEGER,
    ver INTEGER NOT NULL,
    pruned_ver INTEGER,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE pruned_ver IS NULL AND expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT,
    id TEXT,
    reason TEXT,
    before INTEGER,
    expires_at INTEGER,
    note TEXT,
    ver INTEGER
);
CREATE INDEX IF NOT EXISTS audit_id ON audit (kind, id);
CREATE TABLE IF NOT EXISTS issuer_keys (
    kid TEXT PRIMARY KEY,
    private_jwk TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    retired_at INTEGER
);
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
"#;

/// The current version and head in a one-row table, as PostgreSQL keeps
/// them (`veto_head`): written in the transaction that adds a version, so
/// they no longer depend on the newest delta's row surviving retention.
/// Seeded from the newest delta (version 0 and the zero head when none).
/// And the outbox index PostgreSQL has (`veto_versions_unpublished`).
const SCHEMA_V2: &str = r#"
CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), ver INTEGER NOT NULL, head BLOB NOT NULL);
INSERT INTO head (id, ver, head)
SELECT 1,
       COALESCE((SELECT ver FROM versions ORDER BY ver DESC LIMIT 1), 0),
       COALESCE((SELECT head FROM versions ORDER BY ver DESC LIMIT 1), zeroblob(32));
CREATE INDEX versions_unpublished ON versions (ver) WHERE published = 0;
"#;

/// The fleet: enrolled gateways, each one's newest accepted report, and
/// the history of the versions they reported applied (when each was first
/// heard of), as PostgreSQL has them (`veto_gateways`, ...).
const SCHEMA_V3: &str = r#"
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    removed_at INTEGER
);
CREATE TABLE IF NOT EXISTS gateway_reports (
    id TEXT PRIMARY KEY,
    iat INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    ver INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_applied (
    id TEXT NOT NULL,
    ver INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (id, ver)
);
CREATE INDEX IF NOT EXISTS gateway_applied_ver ON gateway_applied (ver);
"#;

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Runs a prepared query and decodes every row with `decode`.
fn collect<'s, T>(
    stmt: &'s mut Statement<'_>,
    params: impl Params,
    decode: impl Fn(&Row<'s>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// Runs a query expected to answer exactly one row and decodes it.
fn first<'s, T>(
    stmt: &'s mut Statement<'_>,
    params: impl Params,
    decode: impl Fn(&Row<'s>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => decode(row),
        None => Err(rusqlite::Error::QueryReturnedNoRows.into()),
    }
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let writer = open_conn(path)?;
        migrate(&writer)?;
        // The writer keeps the random-key indexes in memory (64 MiB), and
        // leaves WAL checkpoints to `checkpoint`, run off the commit path.
        writer.pragma_update(None, "cache_size", -65_536)?;
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let reader = open_conn(path)?;
        let checkpointer = open_conn(path)?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            checkpointer: Mutex::new(checkpointer),
        })
    }

    /// Copies committed WAL frames into the database file without blocking
    /// the writer (a passive checkpoint); the registry runs it every second.
    pub(crate) fn checkpoint(&self) -> Result<(), StoreError> {
        let conn = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn w(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn r(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a meta value.
    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
        Ok(collect(&mut stmt, [key], |r| r.text(0))?.pop())
    }

    /// Sets a meta value if absent; returns the value stored.
    pub(crate) fn meta_or_set(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let conn = self.w();
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
        first(&mut stmt, [key], |r| r.text(0))
    }

    /// The oldest unpublished deltas, in version order.
    pub(crate) fn unpublished(&self, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT ver, jws FROM versions WHERE published = 0 ORDER BY ver LIMIT ?1",
        )?;
        collect(&mut stmt, [limit as i64], rows::delta)
    }

    /// Marks a delta as accepted by the bus.
    pub(crate) fn mark_published(&self, ver: u64) -> Result<(), StoreError> {
        self.w().execute(
            "UPDATE versions SET published = 1 WHERE ver = ?1",
            [int(ver)],
        )?;
        Ok(())
    }

    /// Loads the newest version and the live entries it covers, from one
    /// read snapshot.
    pub(crate) fn load(&self) -> Result<Loaded, StoreError> {
        let mut conn = self.r();
        let tx = conn.transaction()?;
        let (ver, head) = top(&tx)?;
        let mut stmt = tx.prepare_cached(
            "SELECT kind, id, before FROM entries WHERE pruned_ver IS NULL AND ver <= ?1",
        )?;
        let entries = collect(&mut stmt, [int(ver)], rows::loaded_entry)?;
        Ok(Loaded { ver, head, entries })
    }

    /// Every live entry as stored: kind, id, cutoff, expiry (tests).
    #[cfg(test)]
    pub(crate) fn live(&self) -> Result<Vec<LiveRow>, StoreError> {
        let conn = self.r();
        let mut stmt = conn
            .prepare("SELECT kind, id, before, expires_at FROM entries WHERE pruned_ver IS NULL")?;
        collect(&mut stmt, [], rows::live_row)
    }

    /// Commits a group of revocation requests in one transaction (see [`plan`]).
    pub(crate) fn commit(
        &self,
        requests: &[(Vec<NewEntry>, String)],
        signer: &SrlSigner,
        now: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (ver, head) = top(&tx)?;
        let mut existing = Existing::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT kind, id, ver, before, expires_at FROM entries
                 WHERE kind = ?1 AND id = ?2 AND pruned_ver IS NULL",
            )?;
            for (kind, id) in keys_of(requests) {
                existing.extend(collect(
                    &mut stmt,
                    params![kind.as_str(), id],
                    rows::stored,
                )?);
            }
        }
        let plan = plan(requests, &existing, ver, head, signer, now);
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO versions (ver, head, iat, jws) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for v in &plan.versions {
                stmt.execute(params![int(v.ver), v.head.0.to_vec(), int(v.iat), v.jws])?;
            }
            let mut stmt = tx.prepare_cached(
                "INSERT INTO entries (kind, id, reason, revoked_at, before, expires_at, ver, pruned_ver)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)
                 ON CONFLICT (kind, id) DO UPDATE SET reason = excluded.reason, revoked_at = excluded.revoked_at,
                   before = CASE WHEN entries.pruned_ver IS NOT NULL OR entries.before IS NULL THEN excluded.before
                                 WHEN excluded.before IS NULL THEN entries.before
                                 ELSE max(entries.before, excluded.before) END,
                   expires_at = CASE WHEN entries.pruned_ver IS NOT NULL THEN excluded.expires_at
                                     WHEN entries.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                                     ELSE max(entries.expires_at, excluded.expires_at) END,
                   ver = excluded.ver, pruned_ver = NULL",
            )?;
            for (e, ver) in &plan.entries {
                stmt.execute(params![
                    e.kind.as_str(),
                    e.id,
                    e.reason.as_str(),
                    int(e.revoked_at),
                    opt_int(e.before),
                    opt_int(e.expires_at),
                    int(*ver)
                ])?;
            }
            if let Some(last) = plan.versions.last() {
                set_head(&tx, last.ver, last.head)?;
            }
            // A longer life for a live entry: never shorter, even if the
            // plan were wrong (the join again, in SQL).
            let mut stmt = tx.prepare_cached(
                "UPDATE entries SET expires_at = CASE WHEN expires_at IS NULL OR ?3 IS NULL THEN NULL
                                                      ELSE max(expires_at, ?3) END
                 WHERE kind = ?1 AND id = ?2 AND pruned_ver IS NULL",
            )?;
            for (kind, id, expires_at) in &plan.extend {
                stmt.execute(params![kind.as_str(), id, opt_int(*expires_at)])?;
            }
            insert_audit(&tx, &plan.audit)?;
        }
        tx.commit()?;
        Ok(plan.results)
    }

    /// Prunes up to `limit` entries whose `expires_at` has passed, as one
    /// new version.
    pub(crate) fn prune(
        &self,
        signer: &SrlSigner,
        now: u64,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let removed: Vec<Removed> = {
            let mut stmt = tx.prepare_cached(
                "SELECT kind, id FROM entries WHERE pruned_ver IS NULL AND expires_at IS NOT NULL AND expires_at <= ?1
                 ORDER BY expires_at LIMIT ?2",
            )?;
            collect(&mut stmt, params![int(now), limit as i64], rows::removed)?
        };
        if removed.is_empty() {
            return Ok(None);
        }
        let (ver, head) = top(&tx)?;
        let ver = ver + 1;
        let (jws, new_head) = signer.delta(ver, head, now, Vec::new(), removed.clone());
        tx.execute(
            "INSERT INTO versions (ver, head, iat, jws) VALUES (?1, ?2, ?3, ?4)",
            params![int(ver), new_head.0.to_vec(), int(now), jws],
        )?;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE entries SET pruned_ver = ?1 WHERE kind = ?2 AND id = ?3")?;
            for r in &removed {
                stmt.execute(params![int(ver), r.kind.as_str(), r.id])?;
            }
        }
        set_head(&tx, ver, new_head)?;
        let audit = prune_audit(&removed, now, ver);
        insert_audit(&tx, &audit)?;
        tx.commit()?;
        Ok(Some(Pruned {
            ver,
            head: new_head,
            jws,
            removed,
        }))
    }

    /// The retained deltas among `since+1 ..= upto` (`since < upto`), at
    /// most `limit` of them and at most `max_bytes` of JWS (but always the
    /// first).
    pub(crate) fn deltas(
        &self,
        since: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT ver, jws FROM versions WHERE ver > ?1 AND ver <= ?2 ORDER BY ver LIMIT ?3",
        )?;
        let mut found = stmt.query(params![int(since), int(upto), limit as i64])?;
        // Rows are read one at a time: stop before the one that would pass
        // the byte budget (the first is always taken, so a page advances).
        let mut out: Vec<(u64, String)> = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = found.next()? {
            let (ver, jws) = rows::delta(row)?;
            bytes = bytes.saturating_add(jws.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push((ver, jws));
        }
        Ok(out)
    }

    /// The current version and head.
    pub(crate) fn head(&self) -> Result<(u64, Head), StoreError> {
        top(&self.r())
    }

    /// Drops the deltas of versions up to `upto` (their entries stay;
    /// clients that far behind get a snapshot).
    pub(crate) fn drop_deltas(&self, upto: u64, only_published: bool) -> Result<usize, StoreError> {
        Ok(self.w().execute(
            "DELETE FROM versions WHERE ver <= ?1 AND (published = 1 OR ?2 = 0)",
            params![int(upto), only_published],
        )?)
    }

    /// Writes an audit record that is not a revocation.
    pub(crate) fn audit(
        &self,
        now: u64,
        actor: &str,
        action: &str,
        id: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        self.w().execute(
            "INSERT INTO audit (at, actor, action, id, note) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![int(now), actor, action, id, note],
        )?;
        Ok(())
    }

    /// Queries the audit log.
    pub(crate) fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit
             WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR id = ?2) AND (?3 IS NULL OR at >= ?3)
               AND (?4 IS NULL OR at < ?4) AND seq > COALESCE(?5, 0)
               AND (?7 IS NULL OR actor = ?7)
             ORDER BY seq LIMIT ?6"
        ))?;
        collect(
            &mut stmt,
            params![
                f.kind,
                f.id,
                opt_int(f.since),
                opt_int(f.until),
                f.after,
                i64::from(f.limit),
                f.actor
            ],
            rows::audit_record,
        )
    }

    /// Every issuer key, oldest first.
    pub(crate) fn issuer_keys(&self) -> Result<Vec<IssuerKeyRow>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            issuer_key_columns!(),
            " FROM issuer_keys ORDER BY rowid"
        ))?;
        collect(&mut stmt, [], rows::issuer_key)
    }

    /// Adds an issuer key.
    pub(crate) fn add_issuer_key(
        &self,
        kid: &str,
        private_jwk: &str,
        now: u64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO issuer_keys (kid, private_jwk, added_at) VALUES (?1, ?2, ?3)",
            params![kid, private_jwk, int(now)],
        )?;
        tx.execute(
            "INSERT INTO audit (at, actor, action, id) VALUES (?1, ?2, 'issuer_key_add', ?3)",
            params![int(now), actor, kid],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every named API token, oldest first.
    pub(crate) fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens ORDER BY created_at, name"
        ))?;
        collect(&mut stmt, [], rows::token)
    }

    /// Adds a named API token; false when the name is taken.
    pub(crate) fn add_token(&self, row: &TokenRow, actor: &str) -> Result<bool, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO api_tokens (name, digest, scopes, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING",
            params![row.name, row.digest, row.scopes, int(row.created_at)],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT INTO audit (at, actor, action, id, note) VALUES (?1, ?2, 'token_create', ?3, ?4)",
                params![int(row.created_at), actor, row.name, row.scopes],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Revokes a named API token; false when no such live token.
    pub(crate) fn revoke_token(
        &self,
        name: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE api_tokens SET revoked_at = ?1 WHERE name = ?2 AND revoked_at IS NULL",
            params![int(now), name],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT INTO audit (at, actor, action, id) VALUES (?1, ?2, 'token_revoke', ?3)",
                params![int(now), actor, name],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Every gateway, removed ones included, by enrolment time then id.
    pub(crate) fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            gateway_columns!(),
            " FROM gateways ORDER BY enrolled_at, id"
        ))?;
        collect(&mut stmt, [], rows::gateway)
    }

    /// Enrols a gateway, or re-enrols a removed one; false when a live
    /// gateway has its id.
    pub(crate) fn enrol_gateway(&self, row: &GatewayRow, actor: &str) -> Result<bool, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO gateways (id, name, public_jwk, enrolled_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, public_jwk = excluded.public_jwk,
               enrolled_at = excluded.enrolled_at, removed_at = NULL
             WHERE gateways.removed_at IS NOT NULL",
            params![row.id, row.name, row.public_jwk, int(row.enrolled_at)],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT INTO audit (at, actor, action, id, note) VALUES (?1, ?2, 'gateway_enrol', ?3, ?4)",
                params![int(row.enrolled_at), actor, row.id, row.name],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Removes a live gateway with its report and applied history; false
    /// when no live gateway has that id.
    pub(crate) fn remove_gateway(
        &self,
        id: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE gateways SET removed_at = ?1 WHERE id = ?2 AND removed_at IS NULL",
            params![int(now), id],
        )?;
        if n == 1 {
            tx.execute("DELETE FROM gateway_reports WHERE id = ?1", [id])?;
            tx.execute("DELETE FROM gateway_applied WHERE id = ?1", [id])?;
            tx.execute(
                "INSERT INTO audit (at, actor, action, id) VALUES (?1, ?2, 'gateway_remove', ?3)",
                params![int(now), actor, id],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Records a live gateway's report if newer, by (iat, seq), than the
    /// stored one; its version joins the applied history when it grew.
    pub(crate) fn record_report(&self, row: &ReportRow) -> Result<bool, StoreError> {
        let mut conn = self.w();
        // Immediate: what is read decides what is written.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let live = {
            let mut stmt =
                tx.prepare_cached("SELECT 1 FROM gateways WHERE id = ?1 AND removed_at IS NULL")?;
            !collect(&mut stmt, [&row.id], |r| r.int(0))?.is_empty()
        };
        if !live {
            return Ok(false);
        }
        let stored = {
            let mut stmt =
                tx.prepare_cached("SELECT iat, seq, ver FROM gateway_reports WHERE id = ?1")?;
            collect(&mut stmt, [&row.id], rows::report_order)?.pop()
        };
        if stored.is_some_and(|(iat, seq, _)| (iat, seq) >= (row.iat, row.seq)) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO gateway_reports (id, iat, seq, received_ms, ver, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET iat = excluded.iat, seq = excluded.seq,
               received_ms = excluded.received_ms, ver = excluded.ver, report = excluded.report",
            params![
                row.id,
                int(row.iat),
                int(row.seq),
                int(row.received_ms),
                int(row.ver),
                row.report
            ],
        )?;
        if stored.is_none_or(|(_, _, ver)| row.ver > ver) {
            tx.execute(
                "INSERT INTO gateway_applied (id, ver, received_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id, ver) DO NOTHING",
                params![row.id, int(row.ver), int(row.received_ms)],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Every stored report, by gateway id.
    pub(crate) fn reports(&self) -> Result<Vec<ReportRow>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            report_columns!(),
            " FROM gateway_reports ORDER BY id"
        ))?;
        collect(&mut stmt, [], rows::report)
    }

    /// Per gateway id, the earliest receipt of a version at or after `ver`.
    pub(crate) fn applied_since(&self, ver: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT id, MIN(received_ms) FROM gateway_applied WHERE ver >= ?1 GROUP BY id ORDER BY id",
        )?;
        collect(&mut stmt, [int(ver)], rows::applied)
    }

    /// Drops applied history received before `before_ms`, except each
    /// gateway's newest row.
    pub(crate) fn prune_applied(&self, before_ms: u64) -> Result<u64, StoreError> {
        let n = self.w().execute(
            "DELETE FROM gateway_applied WHERE received_ms < ?1
               AND ver < (SELECT MAX(a.ver) FROM gateway_applied a WHERE a.id = gateway_applied.id)",
            [int(before_ms)],
        )?;
        Ok(n as u64)
    }

    /// Seals an issuer key still stored in clear.
    pub(crate) fn seal_issuer_key(&self, kid: &str, sealed: &str) -> Result<bool, StoreError> {
        let n = self.w().execute(
            "UPDATE issuer_keys SET private_jwk = ?1 WHERE kid = ?2 AND private_jwk LIKE '{%'",
            params![sealed, kid],
        )?;
        Ok(n == 1)
    }

    /// Retires an issuer key; returns false when no such active key exists.
    pub(crate) fn retire_issuer_key(
        &self,
        kid: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE issuer_keys SET retired_at = ?1 WHERE kid = ?2 AND retired_at IS NULL",
            params![int(now), kid],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT INTO audit (at, actor, action, id) VALUES (?1, ?2, 'issuer_key_retire', ?3)",
                params![int(now), actor, kid],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }
}

/// The current version and head. Writers hold the write lock already (an
/// immediate transaction), so a plain read is the serialization point.
fn top(conn: &Connection) -> Result<(u64, Head), StoreError> {
    let mut stmt = conn.prepare_cached("SELECT ver, head FROM head WHERE id = 1")?;
    first(&mut stmt, [], rows::version_head)
}

/// Moves the current version and head, in the transaction that added it.
fn set_head(tx: &Transaction<'_>, ver: u64, head: Head) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE head SET ver = ?1, head = ?2 WHERE id = 1",
        params![int(ver), head.0.to_vec()],
    )?;
    Ok(())
}

fn insert_audit(tx: &Transaction<'_>, rows: &[AuditRow]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, kind, id, reason, before, expires_at, note, ver)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for a in rows {
        stmt.execute(params![
            int(a.at),
            a.actor,
            a.action,
            a.kind.map(|k| k.as_str()),
            a.id,
            a.reason.map(|r| r.as_str()),
            opt_int(a.before),
            opt_int(a.expires_at),
            a.note,
            opt_int(a.ver)
        ])?;
    }
    Ok(())
}

/// Applies the migrations not yet applied, each in its own transaction;
/// refuses a database written by a newer veto.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if applied > known {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {applied}, newer than this veto knows ({known}): upgrade veto"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Migration 2 on databases written before it.

    use veto_core::{
        Entry, EntryKind, KeySet, Reason, RevocationSet, SigningKey, SrlState, SrlVerifier,
    };

    use super::*;

    fn request(id: &str) -> Vec<(Vec<NewEntry>, String)> {
        let entry = Entry {
            kind: EntryKind::Warrant,
            id: id.into(),
            reason: Reason::Unspecified,
            revoked_at: 100,
            before: None,
            expires_at: None,
        };
        vec![(vec![NewEntry { entry, note: None }], "admin".into())]
    }

    /// Takes the database at `path` back to schema 1.
    fn back_to_v1(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "DROP TABLE head; DROP INDEX versions_unpublished; PRAGMA user_version = 1;",
        )
        .unwrap();
    }

    #[test]
    fn migration_2_seeds_the_head_from_the_newest_delta() {
        let dir = std::env::temp_dir().join(format!("veto-sqlite-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("veto.db");
        let key = SigningKey::generate().unwrap();
        let verifier =
            SrlVerifier::new(KeySet::new([key.public().clone()]), "veto").with_skew(u64::MAX / 4);
        let signer = SrlSigner::new(key, "veto");

        // An empty schema-1 database starts at version 0 and the zero head.
        drop(SqliteStore::open(&path).unwrap());
        back_to_v1(&path);
        let store = SqliteStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.ver, 0);
        assert!(loaded.head == Head::ZERO);

        // One with versions, some of them dropped by retention, continues
        // from its newest delta.
        for i in 0..4 {
            store
                .commit(&request(&format!("w{i}")), &signer, 1_000)
                .unwrap();
        }
        assert_eq!(store.drop_deltas(3, false).unwrap(), 3);
        let before = store.load().unwrap();
        drop(store);
        back_to_v1(&path);
        let store = SqliteStore::open(&path).unwrap();
        let after = store.load().unwrap();
        assert_eq!(after.ver, 4);
        assert!(after.head == before.head);
        assert_eq!(after.entries.len(), 4);
        let next = store.commit(&request("w4"), &signer, 1_000).unwrap();
        let (ver, _, jws) = next[0].new_version.clone().unwrap();
        assert_eq!(ver, 5);
        // The new delta chains onto the head before the migration.
        let mut state = SrlState::at(4, before.head, RevocationSet::default());
        state
            .apply_delta(&verifier.delta(&jws, 1_000).unwrap())
            .unwrap();
        assert_eq!(state.ver(), 5);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
