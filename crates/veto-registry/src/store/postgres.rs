//! The PostgreSQL store, shared by registry replicas.
//!
//! Versions stay serialized and gap-free across replicas: every writing
//! transaction first locks the one row of `veto_head` (`FOR UPDATE`), so
//! one transaction at a time extends the chain, and it commits the new
//! head, the versions, the entries and the audit records together. The
//! commit sends `NOTIFY veto_versions`, so the other replicas learn of it.
//! Rows are written with `unnest` arrays: a group costs a handful of round
//! trips whatever its size.

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Transaction};
use veto_core::{EntryKind, Head, Removed, SrlSigner};

#[cfg(test)]
use super::LiveRow;
use super::{
    keys_of, plan, prune_audit, AuditFilter, AuditRecord, AuditRow, Committed, Existing,
    IssuerKeyRow, Loaded, NewEntry, Pruned, StoreError, Stored,
};

/// Migrations, in order; `veto_meta.schema_version` counts those applied.
const MIGRATIONS: &[&str] = &[SCHEMA_V1];

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
"#;

/// The channel replicas are told of new versions on.
pub const CHANNEL: &str = "veto_versions";

/// A PostgreSQL store: one connection for writing transactions, one for reads.
pub struct PgStore {
    writer: Mutex<Client>,
    reader: Client,
    url: String,
}

fn head_of(bytes: Vec<u8>) -> Result<Head, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("head is not 32 bytes".into()))?;
    Ok(Head(arr))
}

fn kind_of(s: &str) -> Result<EntryKind, StoreError> {
    EntryKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown kind `{s}`")))
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|x| x as u64)
}

/// Connects one client, driving its connection on a task.
pub(crate) async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
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
            .and_then(|r| r.get::<_, String>(0).parse().ok())
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
        tx.commit().await?;
        let reader = connect(url).await?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader,
            url: url.to_owned(),
        })
    }

    /// The connection URL (for the notification listener).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads a meta value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .reader
            .query_opt("SELECT value FROM veto_meta WHERE key = $1", &[&key])
            .await?
            .map(|r| r.get(0)))
    }

    /// Sets a meta value if absent; returns the value stored.
    pub async fn meta_or_set(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let w = self.writer.lock().await;
        w.execute(
            "INSERT INTO veto_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )
        .await?;
        Ok(
            w.query_one("SELECT value FROM veto_meta WHERE key = $1", &[&key])
                .await?
                .get(0),
        )
    }

    /// The newest version and the live entries.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let tx_client = &self.reader;
        let row = tx_client
            .query_one("SELECT ver, head FROM veto_head WHERE id = 1", &[])
            .await?;
        let ver: i64 = row.get(0);
        let head = head_of(row.get(1))?;
        let rows = tx_client
            .query(
                "SELECT kind, id, before FROM veto_entries WHERE pruned_ver IS NULL AND ver <= $1",
                &[&ver],
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in rows {
            let k: String = r.get(0);
            entries.push((kind_of(&k)?, r.get::<_, String>(1), opt_u64(r.get(2))));
        }
        Ok(Loaded {
            ver: ver as u64,
            head,
            entries,
        })
    }

    /// Every live entry as stored: kind, id, cutoff, expiry (tests).
    #[cfg(test)]
    pub(crate) async fn live(&self) -> Result<Vec<LiveRow>, StoreError> {
        let rows = self
            .reader
            .query(
                "SELECT kind, id, before, expires_at FROM veto_entries WHERE pruned_ver IS NULL",
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let k: String = r.get(0);
            out.push((kind_of(&k)?, r.get(1), opt_u64(r.get(2)), opt_u64(r.get(3))));
        }
        Ok(out)
    }

    /// Commits a group of revocation requests in one transaction.
    pub async fn commit(
        &self,
        requests: &[(Vec<NewEntry>, String)],
        signer: &SrlSigner,
        now: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        let mut w = self.writer.lock().await;
        let tx = w.transaction().await?;
        let (ver, head) = lock_head(&tx).await?;
        let keys = keys_of(requests);
        let kinds: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
        let rows = tx
            .query(
                "SELECT e.kind, e.id, e.ver, e.before, e.expires_at FROM veto_entries e
                 JOIN unnest($1::text[], $2::text[]) AS k(kind, id) ON e.kind = k.kind AND e.id = k.id
                 WHERE e.pruned_ver IS NULL",
                &[&kinds, &ids],
            )
            .await?;
        let mut existing = Existing::new();
        for r in rows {
            let k: String = r.get(0);
            existing.insert(
                (kind_of(&k)?, r.get(1)),
                Stored {
                    ver: r.get::<_, i64>(2) as u64,
                    before: opt_u64(r.get(3)),
                    expires_at: opt_u64(r.get(4)),
                },
            );
        }
        let plan = plan(requests, &existing, ver, head, signer, now);
        if let Some(last) = plan.versions.last() {
            let vers: Vec<i64> = plan.versions.iter().map(|v| v.ver as i64).collect();
            let heads: Vec<Vec<u8>> = plan.versions.iter().map(|v| v.head.0.to_vec()).collect();
            let iats: Vec<i64> = plan.versions.iter().map(|v| v.iat as i64).collect();
            let jwss: Vec<&str> = plan.versions.iter().map(|v| v.jws.as_str()).collect();
            tx.execute(
                "INSERT INTO veto_versions (ver, head, iat, jws) SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::text[])",
                &[&vers, &heads, &iats, &jwss],
            )
            .await?;
            let kinds: Vec<&str> = plan.entries.iter().map(|(e, _)| e.kind.as_str()).collect();
            let ids: Vec<&str> = plan.entries.iter().map(|(e, _)| e.id.as_str()).collect();
            let reasons: Vec<&str> = plan
                .entries
                .iter()
                .map(|(e, _)| e.reason.as_str())
                .collect();
            let revoked_at: Vec<i64> = plan
                .entries
                .iter()
                .map(|(e, _)| e.revoked_at as i64)
                .collect();
            let befores: Vec<Option<i64>> = plan
                .entries
                .iter()
                .map(|(e, _)| e.before.map(|b| b as i64))
                .collect();
            let expires: Vec<Option<i64>> = plan
                .entries
                .iter()
                .map(|(e, _)| e.expires_at.map(|b| b as i64))
                .collect();
            let evers: Vec<i64> = plan.entries.iter().map(|(_, v)| *v as i64).collect();
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
            set_head(&tx, last.ver, last.head).await?;
        }
        if !plan.extend.is_empty() {
            // A longer life for a live entry: never shorter, even if the
            // plan were wrong (the join again, in SQL).
            let kinds: Vec<&str> = plan.extend.iter().map(|(k, _, _)| k.as_str()).collect();
            let ids: Vec<&str> = plan.extend.iter().map(|(_, id, _)| id.as_str()).collect();
            let expires: Vec<Option<i64>> = plan
                .extend
                .iter()
                .map(|(_, _, x)| x.map(|x| x as i64))
                .collect();
            tx.execute(
                "UPDATE veto_entries e SET expires_at = CASE WHEN e.expires_at IS NULL OR k.expires_at IS NULL THEN NULL
                                                           ELSE GREATEST(e.expires_at, k.expires_at) END
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(kind, id, expires_at)
                 WHERE e.kind = k.kind AND e.id = k.id AND e.pruned_ver IS NULL",
                &[&kinds, &ids, &expires],
            )
            .await?;
        }
        insert_audit(&tx, &plan.audit).await?;
        tx.commit().await?;
        Ok(plan.results)
    }

    /// Prunes up to `limit` expired entries as one new version.
    pub async fn prune(
        &self,
        signer: &SrlSigner,
        now: u64,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError> {
        let mut w = self.writer.lock().await;
        let tx = w.transaction().await?;
        let (ver, head) = lock_head(&tx).await?;
        let rows = tx
            .query(
                "SELECT kind, id FROM veto_entries WHERE pruned_ver IS NULL AND expires_at IS NOT NULL AND expires_at <= $1
                 ORDER BY expires_at LIMIT $2",
                &[&(now as i64), &(limit as i64)],
            )
            .await?;
        let mut removed = Vec::with_capacity(rows.len());
        for r in rows {
            let k: String = r.get(0);
            removed.push(Removed {
                kind: kind_of(&k)?,
                id: r.get(1),
            });
        }
        if removed.is_empty() {
            return Ok(None);
        }
        let ver = ver + 1;
        let (jws, new_head) = signer.delta(ver, head, now, Vec::new(), removed.clone());
        tx.execute(
            "INSERT INTO veto_versions (ver, head, iat, jws) VALUES ($1, $2, $3, $4)",
            &[&(ver as i64), &new_head.0.to_vec(), &(now as i64), &jws],
        )
        .await?;
        let kinds: Vec<&str> = removed.iter().map(|r| r.kind.as_str()).collect();
        let ids: Vec<&str> = removed.iter().map(|r| r.id.as_str()).collect();
        tx.execute(
            "UPDATE veto_entries e SET pruned_ver = $3 FROM unnest($1::text[], $2::text[]) AS k(kind, id)
             WHERE e.kind = k.kind AND e.id = k.id",
            &[&kinds, &ids, &(ver as i64)],
        )
        .await?;
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
    }

    /// Deltas `since+1 ..= upto`, at most `limit`; `None` when not retained.
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
        // The running total is computed by the server, so rows past the
        // byte budget never cross the wire; the first row always does.
        let rows = self
            .reader
            .query(
                "SELECT ver, jws FROM (
                   SELECT ver, jws, SUM(octet_length(jws)) OVER (ORDER BY ver) - octet_length(jws) AS before_it
                   FROM veto_versions WHERE ver > $1 AND ver <= $2 ORDER BY ver LIMIT $3
                 ) page WHERE before_it = 0 OR before_it + octet_length(jws) <= $4 ORDER BY ver",
                &[
                    &(since as i64),
                    &(upto as i64),
                    &(limit.min(i64::MAX as usize) as i64),
                    &(max_bytes.min(i64::MAX as usize) as i64),
                ],
            )
            .await?;
        let out: Vec<(u64, String)> = rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect();
        if !out.is_empty() && out.first().map(|(v, _)| *v) != Some(since + 1) {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Drops deltas older than the newest `keep` versions.
    pub async fn drop_old_deltas(
        &self,
        keep: u64,
        only_published: bool,
    ) -> Result<usize, StoreError> {
        let w = self.writer.lock().await;
        let top: i64 = w
            .query_one("SELECT ver FROM veto_head WHERE id = 1", &[])
            .await?
            .get(0);
        let cutoff = top - keep.max(1) as i64;
        if cutoff <= 0 {
            return Ok(0);
        }
        let n = w
            .execute(
                "DELETE FROM veto_versions WHERE ver <= $1 AND (published OR NOT $2)",
                &[&cutoff, &only_published],
            )
            .await?;
        Ok(n as usize)
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
        self.reader
            .execute(
                "INSERT INTO veto_audit (at, actor, action, id, note) VALUES ($1, $2, $3, $4, $5)",
                &[&(now as i64), &actor, &action, &id, &note],
            )
            .await?;
        Ok(())
    }

    /// Queries the audit log.
    pub async fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self
            .reader
            .query(
                "SELECT seq, at, actor, action, kind, id, reason, before, expires_at, note, ver FROM veto_audit
                 WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR id = $2) AND ($3::bigint IS NULL OR at >= $3)
                   AND ($4::bigint IS NULL OR at < $4) AND seq > COALESCE($5::bigint, 0)
                 ORDER BY seq LIMIT $6",
                &[
                    &f.kind,
                    &f.id,
                    &f.since.map(|x| x as i64),
                    &f.until.map(|x| x as i64),
                    &f.after,
                    &i64::from(f.limit),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                seq: r.get(0),
                at: r.get::<_, i64>(1) as u64,
                actor: r.get(2),
                action: r.get(3),
                kind: r.get(4),
                id: r.get(5),
                reason: r.get(6),
                before: opt_u64(r.get(7)),
                expires_at: opt_u64(r.get(8)),
                note: r.get(9),
                version: opt_u64(r.get(10)),
            })
            .collect())
    }

    /// Every issuer key, oldest first.
    pub async fn issuer_keys(&self) -> Result<Vec<IssuerKeyRow>, StoreError> {
        let rows = self
            .reader
            .query("SELECT kid, private_jwk, added_at, retired_at FROM veto_issuer_keys ORDER BY added_at, kid", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| IssuerKeyRow {
                kid: r.get(0),
                private_jwk: r.get(1),
                added_at: r.get::<_, i64>(2) as u64,
                retired_at: opt_u64(r.get(3)),
            })
            .collect())
    }

    /// Adds an issuer key.
    pub async fn add_issuer_key(
        &self,
        kid: &str,
        private_jwk: &str,
        now: u64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut w = self.writer.lock().await;
        let tx = w.transaction().await?;
        tx.execute(
            "INSERT INTO veto_issuer_keys (kid, private_jwk, added_at) VALUES ($1, $2, $3)",
            &[&kid, &private_jwk, &(now as i64)],
        )
        .await?;
        tx.execute(
            "INSERT INTO veto_audit (at, actor, action, id) VALUES ($1, $2, 'issuer_key_add', $3)",
            &[&(now as i64), &actor, &kid],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Retires an issuer key; false when no such active key exists.
    pub async fn retire_issuer_key(
        &self,
        kid: &str,
        now: u64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut w = self.writer.lock().await;
        let tx = w.transaction().await?;
        let n = tx
            .execute(
                "UPDATE veto_issuer_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
                &[&(now as i64), &kid],
            )
            .await?;
        if n == 1 {
            tx.execute(
                "INSERT INTO veto_audit (at, actor, action, id) VALUES ($1, $2, 'issuer_key_retire', $3)",
                &[&(now as i64), &actor, &kid],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The oldest unpublished deltas, in version order.
    pub async fn unpublished(&self, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = self
            .reader
            .query(
                "SELECT ver, jws FROM veto_versions WHERE NOT published ORDER BY ver LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    /// Marks a delta as accepted by the bus.
    pub async fn mark_published(&self, ver: u64) -> Result<(), StoreError> {
        self.reader
            .execute(
                "UPDATE veto_versions SET published = TRUE WHERE ver = $1",
                &[&(ver as i64)],
            )
            .await?;
        Ok(())
    }
}

/// Locks the head row: the serialization point for versions.
async fn lock_head(tx: &Transaction<'_>) -> Result<(u64, Head), StoreError> {
    let row = tx
        .query_one(
            "SELECT ver, head FROM veto_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?;
    Ok((row.get::<_, i64>(0) as u64, head_of(row.get(1))?))
}

async fn set_head(tx: &Transaction<'_>, ver: u64, head: Head) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE veto_head SET ver = $1, head = $2 WHERE id = 1",
        &[&(ver as i64), &head.0.to_vec()],
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
    let at: Vec<i64> = rows.iter().map(|a| a.at as i64).collect();
    let actor: Vec<&str> = rows.iter().map(|a| a.actor.as_str()).collect();
    let action: Vec<&str> = rows.iter().map(|a| a.action).collect();
    let kind: Vec<Option<&str>> = rows.iter().map(|a| a.kind.map(|k| k.as_str())).collect();
    let id: Vec<Option<&str>> = rows.iter().map(|a| a.id.as_deref()).collect();
    let reason: Vec<Option<&str>> = rows.iter().map(|a| a.reason.map(|r| r.as_str())).collect();
    let before: Vec<Option<i64>> = rows.iter().map(|a| a.before.map(|b| b as i64)).collect();
    let expires: Vec<Option<i64>> = rows
        .iter()
        .map(|a| a.expires_at.map(|b| b as i64))
        .collect();
    let note: Vec<Option<&str>> = rows.iter().map(|a| a.note.as_deref()).collect();
    let ver: Vec<Option<i64>> = rows.iter().map(|a| a.ver.map(|v| v as i64)).collect();
    tx.execute(
        "INSERT INTO veto_audit (at, actor, action, kind, id, reason, before, expires_at, note, ver)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::text[], $10::bigint[])",
        &[&at, &actor, &action, &kind, &id, &reason, &before, &expires, &note, &ver],
    )
    .await?;
    Ok(())
}

/// Listens for new versions committed by any replica; the receiver ends
/// when the connection is lost.
pub async fn listen(url: &str) -> Result<tokio::sync::mpsc::UnboundedReceiver<u64>, StoreError> {
    use futures_util::StreamExt as _;
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
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
