//! The durable store: SQLite in WAL mode with `synchronous = FULL`, so a
//! commit is on disk before it is acknowledged. One writer connection
//! (used by the writer task only) and one reader connection.
//!
//! A version is committed in the same transaction as its signed delta and
//! its entries, so there is never a version without its delta or an entry
//! without its version.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension as _, Transaction, TransactionBehavior};
use veto_core::{EntryKind, Head, Removed, SrlSigner};

#[cfg(test)]
use super::LiveRow;
use super::{
    keys_of, plan, prune_audit, AuditFilter, AuditRecord, AuditRow, Committed, Existing,
    IssuerKeyRow, Loaded, NewEntry, Pruned, StoreError, Stored,
};

/// The SQLite store.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    checkpointer: Mutex<Connection>,
}

/// Migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[SCHEMA_V1];

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
"#;

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn kind_of(s: &str) -> Result<EntryKind, StoreError> {
    EntryKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown kind `{s}`")))
}

fn head_of(bytes: Vec<u8>) -> Result<Head, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("head is not 32 bytes".into()))?;
    Ok(Head(arr))
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
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
    pub fn checkpoint(&self) -> Result<(), StoreError> {
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
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .r()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a meta value if absent; returns the value stored.
    pub fn meta_or_set(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let conn = self.w();
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?)
    }

    /// The oldest unpublished deltas, in version order.
    pub fn unpublished(&self, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare_cached(
            "SELECT ver, jws FROM versions WHERE published = 0 ORDER BY ver LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a delta as accepted by the bus.
    pub fn mark_published(&self, ver: u64) -> Result<(), StoreError> {
        self.w().execute(
            "UPDATE versions SET published = 1 WHERE ver = ?1",
            [ver as i64],
        )?;
        Ok(())
    }

    /// Loads the newest version and the live entries.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let conn = self.r();
        let top: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT ver, head FROM versions ORDER BY ver DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (ver, head) = match top {
            Some((v, h)) => (v as u64, head_of(h)?),
            None => (0, Head::ZERO),
        };
        let mut stmt =
            conn.prepare("SELECT kind, id, before FROM entries WHERE pruned_ver IS NULL")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (k, id, before) = row?;
            entries.push((kind_of(&k)?, id, opt_u64(before)));
        }
        Ok(Loaded { ver, head, entries })
    }

    /// Every live entry as stored: kind, id, cutoff, expiry (tests).
    #[cfg(test)]
    pub(crate) fn live(&self) -> Result<Vec<LiveRow>, StoreError> {
        let conn = self.r();
        let mut stmt = conn
            .prepare("SELECT kind, id, before, expires_at FROM entries WHERE pruned_ver IS NULL")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (k, id, before, expires_at) = row?;
            out.push((kind_of(&k)?, id, opt_u64(before), opt_u64(expires_at)));
        }
        Ok(out)
    }

    /// Commits a group of revocation requests in one transaction (see [`plan`]).
    pub fn commit(
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
            let mut stmt = tx.prepare_cached("SELECT ver, before, expires_at FROM entries WHERE kind = ?1 AND id = ?2 AND pruned_ver IS NULL")?;
            for (kind, id) in keys_of(requests) {
                let row: Option<(i64, Option<i64>, Option<i64>)> = stmt
                    .query_row(params![kind.as_str(), id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                if let Some((v, before, expires_at)) = row {
                    existing.insert(
                        (kind, id),
                        Stored {
                            ver: v as u64,
                            before: opt_u64(before),
                            expires_at: opt_u64(expires_at),
                        },
                    );
                }
            }
        }
        let plan = plan(requests, &existing, ver, head, signer, now);
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO versions (ver, head, iat, jws) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for v in &plan.versions {
                stmt.execute(params![
                    v.ver as i64,
                    v.head.0.to_vec(),
                    v.iat as i64,
                    v.jws
                ])?;
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
                    e.revoked_at as i64,
                    e.before.map(|b| b as i64),
                    e.expires_at.map(|x| x as i64),
                    *ver as i64
                ])?;
            }
            // A longer life for a live entry: never shorter, even if the
            // plan were wrong (the join again, in SQL).
            let mut stmt = tx.prepare_cached(
                "UPDATE entries SET expires_at = CASE WHEN expires_at IS NULL OR ?3 IS NULL THEN NULL
                                                      ELSE max(expires_at, ?3) END
                 WHERE kind = ?1 AND id = ?2 AND pruned_ver IS NULL",
            )?;
            for (kind, id, expires_at) in &plan.extend {
                stmt.execute(params![kind.as_str(), id, expires_at.map(|x| x as i64)])?;
            }
            insert_audit(&tx, &plan.audit)?;
        }
        tx.commit()?;
        Ok(plan.results)
    }

    /// Prunes up to `limit` entries whose `expires_at` has passed, as one
    /// new version.
    pub fn prune(
        &self,
        signer: &SrlSigner,
        now: u64,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let removed: Vec<Removed> = {
            let mut stmt = tx.prepare(
                "SELECT kind, id FROM entries WHERE pruned_ver IS NULL AND expires_at IS NOT NULL AND expires_at <= ?1
                 ORDER BY expires_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now as i64, limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (k, id) = row?;
                out.push(Removed {
                    kind: kind_of(&k)?,
                    id,
                });
            }
            out
        };
        if removed.is_empty() {
            return Ok(None);
        }
        let (ver, head) = tx
            .query_row(
                "SELECT ver, head FROM versions ORDER BY ver DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()?
            .map(|(v, h)| Ok::<_, StoreError>((v as u64, head_of(h)?)))
            .transpose()?
            .unwrap_or((0, Head::ZERO));
        let ver = ver + 1;
        let (jws, new_head) = signer.delta(ver, head, now, Vec::new(), removed.clone());
        tx.execute(
            "INSERT INTO versions (ver, head, iat, jws) VALUES (?1, ?2, ?3, ?4)",
            params![ver as i64, new_head.0.to_vec(), now as i64, jws],
        )?;
        for r in &removed {
            tx.execute(
                "UPDATE entries SET pruned_ver = ?1 WHERE kind = ?2 AND id = ?3",
                params![ver as i64, r.kind.as_str(), r.id],
            )?;
        }
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

    /// The signed deltas `since+1 ..= upto`, at most `limit` of them and
    /// at most `max_bytes` of JWS (but always the first); `None` when some
    /// of them are no longer retained.
    pub fn deltas(
        &self,
        since: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(u64, String)>>, StoreError> {
        if since >= upto {
            return Ok(Some(Vec::new()));
        }
        let conn = self.r();
        let mut stmt = conn.prepare(
            "SELECT ver, jws FROM versions WHERE ver > ?1 AND ver <= ?2 ORDER BY ver LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![since as i64, upto as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        // Rows are read one at a time: stop before the one that would pass
        // the byte budget (the first is always taken, so a page advances).
        let mut out: Vec<(u64, String)> = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            let (ver, jws) = row?;
            bytes = bytes.saturating_add(jws.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push((ver, jws));
        }
        // Gap-free by construction; a missing first delta means it was
        // dropped by retention.
        if !out.is_empty() && out.first().map(|(v, _)| *v) != Some(since + 1) {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Drops deltas older than the newest `keep` versions (their entries
    /// stay; clients that far behind get a snapshot).
    pub fn drop_old_deltas(&self, keep: u64, only_published: bool) -> Result<usize, StoreError> {
        let conn = self.w();
        let top: i64 = conn.query_row("SELECT COALESCE(MAX(ver), 0) FROM versions", [], |r| {
            r.get(0)
        })?;
        // The newest version's row is where `commit`, `prune` and `load` find
        // the current version and head: dropping it would restart the chain
        // at version 1 (a rollback and an equivocation). Keep it always.
        let cutoff = top - keep.max(1) as i64;
        if cutoff <= 0 {
            return Ok(0);
        }
        Ok(conn.execute(
            "DELETE FROM versions WHERE ver <= ?1 AND (published = 1 OR ?2 = 0)",
            params![cutoff, only_published],
        )?)
    }

    /// Writes an audit record that is not a revocation.
    pub fn audit(
        &self,
        now: u64,
        actor: &str,
        action: &str,
        id: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        self.w().execute(
            "INSERT INTO audit (at, actor, action, id, note) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now as i64, actor, action, id, note],
        )?;
        Ok(())
    }

    /// Queries the audit log.
    pub fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare(
            "SELECT seq, at, actor, action, kind, id, reason, before, expires_at, note, ver FROM audit
             WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR id = ?2) AND (?3 IS NULL OR at >= ?3)
               AND (?4 IS NULL OR at < ?4) AND seq > COALESCE(?5, 0)
             ORDER BY seq LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                f.kind,
                f.id,
                f.since.map(|x| x as i64),
                f.until.map(|x| x as i64),
                f.after,
                f.limit as i64
            ],
            |r| {
                Ok(AuditRecord {
                    seq: r.get(0)?,
                    at: r.get::<_, i64>(1)? as u64,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    kind: r.get(4)?,
                    id: r.get(5)?,
                    reason: r.get(6)?,
                    before: opt_u64(r.get(7)?),
                    expires_at: opt_u64(r.get(8)?),
                    note: r.get(9)?,
                    version: opt_u64(r.get(10)?),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every issuer key, oldest first.
    pub fn issuer_keys(&self) -> Result<Vec<IssuerKeyRow>, StoreError> {
        let conn = self.r();
        let mut stmt = conn.prepare(
            "SELECT kid, private_jwk, added_at, retired_at FROM issuer_keys ORDER BY added_at, kid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(IssuerKeyRow {
                kid: r.get(0)?,
                private_jwk: r.get(1)?,
                added_at: r.get::<_, i64>(2)? as u64,
                retired_at: opt_u64(r.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds an issuer key.
    pub fn add_issuer_key(
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
            params![kid, private_jwk, now as i64],
        )?;
        tx.execute(
            "INSERT INTO audit (at, actor, action, id) VALUES (?1, ?2, 'issuer_key_add', ?3)",
            params![now as i64, actor, kid],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Retires an issuer key; returns false when no such active key exists.
    pub fn retire_issuer_key(&self, kid: &str, now: u64, actor: &str) -> Result<bool, StoreError> {
        let mut conn = self.w();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE issuer_keys SET retired_at = ?1 WHERE kid = ?2 AND retired_at IS NULL",
            params![now as i64, kid],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT INTO audit (at, actor, action, id) VALUES (?1, ?2, 'issuer_key_retire', ?3)",
                params![now as i64, actor, kid],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }
}

fn top(tx: &Transaction<'_>) -> Result<(u64, Head), StoreError> {
    tx.query_row(
        "SELECT ver, head FROM versions ORDER BY ver DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
    )
    .optional()?
    .map(|(v, h)| Ok((v as u64, head_of(h)?)))
    .transpose()
    .map(|t| t.unwrap_or((0, Head::ZERO)))
}

fn insert_audit(tx: &Transaction<'_>, rows: &[AuditRow]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, kind, id, reason, before, expires_at, note, ver)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for a in rows {
        stmt.execute(params![
            a.at as i64,
            a.actor,
            a.action,
            a.kind.map(|k| k.as_str()),
            a.id,
            a.reason.map(|r| r.as_str()),
            a.before.map(|b| b as i64),
            a.expires_at.map(|x| x as i64),
            a.note,
            a.ver.map(|v| v as i64)
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
