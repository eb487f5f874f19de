//! Revocation entries (DESIGN 3.2) and the digests the published state
//! lists them by.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Longest entry id, in bytes.
pub const MAX_ENTRY_ID_BYTES: usize = 256;

/// What an entry revokes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// One warrant link by `jti`, and so every chain below it.
    Warrant,
    /// Every link for an agent (`sub`) issued at or before a cutoff.
    Agent,
    /// Every link signed by, or binding, a key (by thumbprint).
    Key,
}

impl EntryKind {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Warrant => "warrant",
            EntryKind::Agent => "agent",
            EntryKind::Key => "key",
        }
    }

    /// Every kind.
    pub const ALL: [EntryKind; 3] = [EntryKind::Warrant, EntryKind::Agent, EntryKind::Key];

    /// Parses a kind name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something was revoked (RFC 5280 reason codes that apply here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// The key is, or may be, in someone else's hands.
    KeyCompromise,
    /// The agent moved to another owner or role.
    AffiliationChanged,
    /// Replaced by a newer credential.
    Superseded,
    /// The agent or service is shut down.
    CessationOfOperation,
    /// The agent may no longer do what it was allowed to.
    PrivilegeWithdrawn,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 6] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::PrivilegeWithdrawn,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key_compromise",
            Reason::AffiliationChanged => "affiliation_changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation_of_operation",
            Reason::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    /// Parses a reason name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One revocation as published in a delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// What is revoked.
    pub kind: EntryKind,
    /// The `jti`, `sub` or key thumbprint.
    pub id: String,
    /// Why.
    pub reason: Reason,
    /// When (Unix seconds).
    pub revoked_at: u64,
    /// Agent entries: links with `iat <= before` are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// After this no credential the entry matches can be valid, so the
    /// entry may be pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Why an entry is not acceptable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryError {
    /// The id is empty or too long.
    #[error("{kind} entry id must be 1 to 256 bytes, found {len}")]
    Id {
        /// The entry's kind.
        kind: EntryKind,
        /// Its length.
        len: usize,
    },
    /// An agent entry has no `before`, or another kind has one.
    #[error("`before` is required for agent entries and not allowed for {0} entries")]
    Before(EntryKind),
}

impl Entry {
    /// Checks the id length and the `before` rule.
    pub fn validate(&self) -> Result<(), EntryError> {
        validate_id(self.kind, &self.id)?;
        if (self.kind == EntryKind::Agent) != self.before.is_some() {
            return Err(EntryError::Before(self.kind));
        }
        Ok(())
    }

    /// The digest this entry is listed by.
    pub fn digest(&self) -> Digest {
        Digest::of(self.kind, &self.id)
    }
}

/// An entry pruned from the state, named by kind and id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    /// The kind.
    pub kind: EntryKind,
    /// The id.
    pub id: String,
}

impl Removed {
    /// Checks the id length.
    pub fn validate(&self) -> Result<(), EntryError> {
        validate_id(self.kind, &self.id)
    }
}

fn validate_id(kind: EntryKind, id: &str) -> Result<(), EntryError> {
    if id.is_empty() || id.len() > MAX_ENTRY_ID_BYTES {
        return Err(EntryError::Id {
            kind,
            len: id.len(),
        });
    }
    Ok(())
}

/// The first 96 bits of SHA-256 over a domain tag, the kind and the id.
///
/// The published snapshot lists entries by digest, which keeps a
/// million-entry state near 12 MB and makes every lookup a fixed-size
/// compare. A digest collision can only make an unrevoked credential look
/// revoked (a denial, never an allow), and needs about 2^96 work to aim at
/// a given id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest(pub(crate) [u8; DIGEST_BYTES]);

/// Bytes in a [`Digest`].
pub const DIGEST_BYTES: usize = 12;

impl Digest {
    /// The digest of an entry's kind and id.
    pub fn of(kind: EntryKind, id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"veto/v1/");
        h.update(kind.as_str().as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        let full = h.finalize();
        let mut d = [0u8; DIGEST_BYTES];
        d.copy_from_slice(&full[..DIGEST_BYTES]);
        Digest(d)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_BYTES] {
        &self.0
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
