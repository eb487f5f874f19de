//! Row decoding, written once for both backends: each decoder reads its
//! columns by position from anything that implements [`Columns`] (a SQLite
//! or a PostgreSQL row), and the column lists the backends select are the
//! macros beside the decoders, so a query and its decoder cannot drift.
//!
//! Integers are stored as signed 64-bit (the type both databases have) and
//! written with [`int`]; reading them back reverses the same two's-complement
//! cast, so every `u64` veto writes reads back unchanged.

use veto_core::{EntryKind, Head, Removed};

use super::{AuditRecord, GatewayRow, IssuerKeyRow, ReportRow, StoreError, Stored, TokenRow};

/// A result row, read by column position.
pub(crate) trait Columns {
    /// A non-null integer.
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    /// A nullable integer.
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    /// A non-null text.
    fn text(&self, i: usize) -> Result<String, StoreError>;
    /// A nullable text.
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    /// A non-null blob.
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError>;
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(i)?)
    }
}

impl Columns for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

/// A `u64` as stored (see the module docs).
pub(crate) fn int(v: u64) -> i64 {
    v as i64
}

/// An optional `u64` as stored.
pub(crate) fn opt_int(v: Option<u64>) -> Option<i64> {
    v.map(int)
}

/// A stored integer as the `u64` it was written from.
fn uint(v: i64) -> u64 {
    v as u64
}

fn opt_uint(v: Option<i64>) -> Option<u64> {
    v.map(uint)
}

/// A stored entry kind.
pub(crate) fn kind(s: &str) -> Result<EntryKind, StoreError> {
    EntryKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown kind `{s}`")))
}

/// A stored chain head.
pub(crate) fn head(bytes: Vec<u8>) -> Result<Head, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("head is not 32 bytes".into()))?;
    Ok(Head(arr))
}

/// Columns: `ver, head` (the head row, or a version row).
pub(crate) fn version_head(r: &impl Columns) -> Result<(u64, Head), StoreError> {
    Ok((uint(r.int(0)?), head(r.bytes(1)?)?))
}

/// Columns: `ver, jws` (a delta).
pub(crate) fn delta(r: &impl Columns) -> Result<(u64, String), StoreError> {
    Ok((uint(r.int(0)?), r.text(1)?))
}

/// Columns: `kind, id, before` (a live entry, as loaded at start).
pub(crate) fn loaded_entry(
    r: &impl Columns,
) -> Result<(EntryKind, String, Option<u64>), StoreError> {
    Ok((kind(&r.text(0)?)?, r.text(1)?, opt_uint(r.opt_int(2)?)))
}

/// Columns: `kind, id, before, expires_at` (a live entry, for tests).
#[cfg(test)]
pub(crate) fn live_row(r: &impl Columns) -> Result<super::LiveRow, StoreError> {
    Ok((
        kind(&r.text(0)?)?,
        r.text(1)?,
        opt_uint(r.opt_int(2)?),
        opt_uint(r.opt_int(3)?),
    ))
}

/// Columns: `kind, id, ver, before, expires_at` (a live entry a commit
/// builds on).
pub(crate) fn stored(r: &impl Columns) -> Result<((EntryKind, String), Stored), StoreError> {
    Ok((
        (kind(&r.text(0)?)?, r.text(1)?),
        Stored {
            ver: uint(r.int(2)?),
            before: opt_uint(r.opt_int(3)?),
            expires_at: opt_uint(r.opt_int(4)?),
        },
    ))
}

/// Columns: `kind, id` (an entry to prune).
pub(crate) fn removed(r: &impl Columns) -> Result<Removed, StoreError> {
    Ok(Removed {
        kind: kind(&r.text(0)?)?,
        id: r.text(1)?,
    })
}

/// The columns [`audit_record`] reads, in order.
macro_rules! audit_columns {
    () => {
        "seq, at, actor, action, kind, id, reason, before, expires_at, note, ver"
    };
}
pub(crate) use audit_columns;

/// Columns: [`audit_columns!`].
pub(crate) fn audit_record(r: &impl Columns) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: r.int(0)?,
        at: uint(r.int(1)?),
        actor: r.text(2)?,
        action: r.text(3)?,
        kind: r.opt_text(4)?,
        id: r.opt_text(5)?,
        reason: r.opt_text(6)?,
        before: opt_uint(r.opt_int(7)?),
        expires_at: opt_uint(r.opt_int(8)?),
        note: r.opt_text(9)?,
        version: opt_uint(r.opt_int(10)?),
    })
}

/// The columns [`token`] reads, in order.
macro_rules! token_columns {
    () => {
        "name, digest, scopes, created_at, revoked_at"
    };
}
pub(crate) use token_columns;

/// Columns: [`token_columns!`].
pub(crate) fn token(r: &impl Columns) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        name: r.text(0)?,
        digest: r.text(1)?,
        scopes: r.text(2)?,
        created_at: uint(r.int(3)?),
        revoked_at: opt_uint(r.opt_int(4)?),
    })
}

/// The columns [`issuer_key`] reads, in order.
macro_rules! issuer_key_columns {
    () => {
        "kid, private_jwk, added_at, retired_at"
    };
}
pub(crate) use issuer_key_columns;

/// Columns: [`issuer_key_columns!`].
pub(crate) fn issuer_key(r: &impl Columns) -> Result<IssuerKeyRow, StoreError> {
    Ok(IssuerKeyRow {
        kid: r.text(0)?,
        private_jwk: r.text(1)?,
        added_at: uint(r.int(2)?),
        retired_at: opt_uint(r.opt_int(3)?),
    })
}

/// The columns [`gateway`] reads, in order.
macro_rules! gateway_columns {
    () => {
        "id, name, public_jwk, enrolled_at, removed_at"
    };
}
pub(crate) use gateway_columns;

/// Columns: [`gateway_columns!`].
pub(crate) fn gateway(r: &impl Columns) -> Result<GatewayRow, StoreError> {
    Ok(GatewayRow {
        id: r.text(0)?,
        name: r.text(1)?,
        public_jwk: r.text(2)?,
        enrolled_at: uint(r.int(3)?),
        removed_at: opt_uint(r.opt_int(4)?),
    })
}

/// The columns [`report`] reads, in order.
macro_rules! report_columns {
    () => {
        "id, iat, seq, received_ms, ver, report"
    };
}
pub(crate) use report_columns;

/// Columns: [`report_columns!`].
pub(crate) fn report(r: &impl Columns) -> Result<ReportRow, StoreError> {
    Ok(ReportRow {
        id: r.text(0)?,
        iat: uint(r.int(1)?),
        seq: uint(r.int(2)?),
        received_ms: uint(r.int(3)?),
        ver: uint(r.int(4)?),
        report: r.text(5)?,
    })
}

/// Columns: `iat, seq, ver` (where a stored report stands, for ordering).
pub(crate) fn report_order(r: &impl Columns) -> Result<(u64, u64, u64), StoreError> {
    Ok((uint(r.int(0)?), uint(r.int(1)?), uint(r.int(2)?)))
}

/// Columns: `id, received_ms` (a gateway and a time it applied something).
pub(crate) fn applied(r: &impl Columns) -> Result<(String, u64), StoreError> {
    Ok((r.text(0)?, uint(r.int(1)?)))
}
