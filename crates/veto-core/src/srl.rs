//! The published revocation state (DESIGN 3.3): deltas, snapshots and
//! checkpoints, how the authority signs them and how an authorizer verifies
//! them. Verification ends in `Verified*` values, the only inputs
//! [`SrlState`](crate::SrlState) accepts.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::b64;
use crate::entry::{Digest, Entry, EntryError, Removed, DIGEST_BYTES};
use crate::jws::{self, JwsError, Typ};
use crate::keys::{Jwk, KeySet, PublicKey, SigningKey};
use crate::set::RevocationSet;

/// The head of the hash chain: SHA-256 of the newest delta's payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Head(pub [u8; 32]);

impl Head {
    /// `head(0)`: 32 zero bytes.
    pub const ZERO: Head = Head([0; 32]);

    /// SHA-256 of a delta payload.
    pub fn of_payload(payload: &[u8]) -> Self {
        Head(Sha256::digest(payload).into())
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let nib = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = nib(pair[0])? << 4 | nib(pair[1])?;
        }
        Some(Head(out))
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Head({self})")
    }
}

impl Serialize for Head {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Head::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("head must be 64 lowercase hex digits"))
    }
}

/// The payload of a delta.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeltaPayload {
    /// The authority.
    pub iss: String,
    /// This delta's version.
    pub ver: u64,
    /// `head(ver - 1)`.
    pub prev: Head,
    /// Signed at.
    pub iat: u64,
    /// Entries added.
    pub add: Vec<Entry>,
    /// Entries pruned.
    pub rm: Vec<Removed>,
}

/// The payload of a checkpoint: "as of `iat`, `ver`/`head` is current".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointPayload {
    /// The authority.
    pub iss: String,
    /// The current version.
    pub ver: u64,
    /// Its head.
    pub head: Head,
    /// Signed at.
    pub iat: u64,
    /// Not to be relied on after.
    pub exp: u64,
}

/// The payload of an issuer key set (DESIGN 3.5): the keys root warrants
/// may be signed with, at version `ver` (+1 for every key added or
/// retired; never rolled back).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuersPayload {
    /// The authority.
    pub iss: String,
    /// The set's version.
    pub ver: u64,
    /// Signed at.
    pub iat: u64,
    /// The trusted issuer public keys.
    pub keys: Vec<Jwk>,
}

/// The digest scheme snapshots use.
pub const DIGEST_SCHEME: &str = "sha256-96";

/// The payload of a snapshot. Each list is one base64url string of
/// fixed-size records in strictly ascending order: 12-byte digests for
/// `warrants` and `keys`, 12-byte digest + 8-byte big-endian `before` for
/// `agents`. That ships a million entries in about 16 MB and loads them
/// without sorting or hashing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPayload<'a> {
    /// The authority.
    pub iss: String,
    /// The version the snapshot is of.
    pub ver: u64,
    /// Its head.
    pub head: Head,
    /// Signed at.
    pub iat: u64,
    /// Not to be relied on after.
    pub exp: u64,
    /// Always [`DIGEST_SCHEME`].
    pub digest: String,
    /// Revoked warrant digests.
    #[serde(borrow)]
    pub warrants: std::borrow::Cow<'a, str>,
    /// Revoked agent digests with cutoffs.
    #[serde(borrow)]
    pub agents: std::borrow::Cow<'a, str>,
    /// Revoked key digests.
    #[serde(borrow)]
    pub keys: std::borrow::Cow<'a, str>,
}

/// Size limits for incoming objects.
#[derive(Clone, Copy, Debug)]
pub struct SrlLimits {
    /// Largest snapshot, in bytes (default 256 MiB, ~15M entries).
    pub max_snapshot_bytes: usize,
    /// Largest delta, in bytes (default 16 MiB).
    pub max_delta_bytes: usize,
    /// Largest checkpoint, in bytes (default 4 KiB).
    pub max_checkpoint_bytes: usize,
}

impl Default for SrlLimits {
    fn default() -> Self {
        Self {
            max_snapshot_bytes: 256 << 20,
            max_delta_bytes: 16 << 20,
            max_checkpoint_bytes: 4096,
        }
    }
}

/// Signs the published state: the registry's side.
#[derive(Debug, Clone)]
pub struct SrlSigner {
    key: SigningKey,
    iss: String,
}

impl SrlSigner {
    /// A signer for authority `iss`.
    pub fn new(key: SigningKey, iss: impl Into<String>) -> Self {
        Self {
            key,
            iss: iss.into(),
        }
    }

    /// The authority name.
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// The authority key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs delta `ver` on top of `prev`; returns it with its head.
    pub fn delta(
        &self,
        ver: u64,
        prev: Head,
        iat: u64,
        add: Vec<Entry>,
        rm: Vec<Removed>,
    ) -> (String, Head) {
        let payload = DeltaPayload {
            iss: self.iss.clone(),
            ver,
            prev,
            iat,
            add,
            rm,
        };
        let bytes = crate::json::payload_bytes(&payload);
        (
            jws::sign(Typ::Delta, &self.key, &bytes),
            Head::of_payload(&bytes),
        )
    }

    /// Signs a checkpoint.
    pub fn checkpoint(&self, ver: u64, head: Head, iat: u64, exp: u64) -> String {
        let payload = CheckpointPayload {
            iss: self.iss.clone(),
            ver,
            head,
            iat,
            exp,
        };
        jws::sign(
            Typ::Checkpoint,
            &self.key,
            &crate::json::payload_bytes(&payload),
        )
    }

    /// Signs the issuer key set `keys` at version `ver`.
    pub fn issuers(&self, ver: u64, iat: u64, keys: &[PublicKey]) -> String {
        let payload = IssuersPayload {
            iss: self.iss.clone(),
            ver,
            iat,
            keys: keys.iter().map(PublicKey::to_jwk).collect(),
        };
        jws::sign(
            Typ::Issuers,
            &self.key,
            &crate::json::payload_bytes(&payload),
        )
    }

    /// Signs a snapshot of `set` at `ver`/`head`.
    pub fn snapshot(
        &self,
        ver: u64,
        head: Head,
        iat: u64,
        exp: u64,
        set: &RevocationSet,
    ) -> String {
        let (warrants, agents, keys) = set.tables();
        let flat = |v: &[Digest]| b64::encode(&v.iter().flat_map(|d| d.0).collect::<Vec<u8>>());
        let mut agent_bytes = Vec::with_capacity(agents.len() * 20);
        for (d, before) in &agents {
            agent_bytes.extend_from_slice(&d.0);
            agent_bytes.extend_from_slice(&before.to_be_bytes());
        }
        let payload = SnapshotPayload {
            iss: self.iss.clone(),
            ver,
            head,
            iat,
            exp,
            digest: DIGEST_SCHEME.into(),
            warrants: flat(&warrants).into(),
            agents: b64::encode(&agent_bytes).into(),
            keys: flat(&keys).into(),
        };
        jws::sign(
            Typ::Snapshot,
            &self.key,
            &crate::json::payload_bytes(&payload),
        )
    }
}

/// Why a published object was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SrlError {
    /// The JWS itself is bad (size, structure, `alg`, `typ`, key, signature).
    #[error("{what}: {source}")]
    Jws {
        /// Which object.
        what: &'static str,
        /// What was wrong.
        source: JwsError,
    },
    /// The signed payload is not of the expected shape.
    #[error("{what}: invalid payload: {message}")]
    Payload {
        /// Which object.
        what: &'static str,
        /// What was wrong.
        message: String,
    },
    /// Signed for another authority.
    #[error("{what}: issued by `{found}`, expected `{expected}`")]
    Issuer {
        /// Which object.
        what: &'static str,
        /// The configured authority.
        expected: String,
        /// The `iss` found.
        found: String,
    },
    /// `iat` is later than now plus the allowed clock skew.
    #[error("{what}: issued at {iat}, in the future (now {now}, skew allowance {skew} s)")]
    FromFuture {
        /// Which object.
        what: &'static str,
        /// Its `iat`.
        iat: u64,
        /// Now.
        now: u64,
        /// The allowance.
        skew: u64,
    },
}

/// A delta whose signature, issuer and time were checked.
#[derive(Debug, Clone)]
pub struct VerifiedDelta {
    /// The payload.
    pub payload: DeltaPayload,
    /// `head(ver)`, computed from the payload bytes.
    pub head: Head,
}

/// A checkpoint whose signature, issuer and time were checked.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    /// The payload.
    pub payload: CheckpointPayload,
}

/// An issuer key set whose signature, issuer, time and keys were checked.
#[derive(Debug, Clone)]
pub struct VerifiedIssuers {
    /// Its version.
    pub ver: u64,
    /// Signed at.
    pub iat: u64,
    /// The keys.
    pub keys: KeySet,
}

/// A snapshot whose signature, issuer, time and tables were checked.
#[derive(Debug, Clone)]
pub struct VerifiedSnapshot {
    /// Its version.
    pub ver: u64,
    /// Its head.
    pub head: Head,
    /// Signed at.
    pub iat: u64,
    /// Expires at.
    pub exp: u64,
    /// The entries.
    pub set: RevocationSet,
}

/// Verifies published objects for one authority.
#[derive(Debug, Clone)]
pub struct SrlVerifier {
    keys: KeySet,
    iss: String,
    skew: u64,
    limits: SrlLimits,
}

/// The default allowance for clock skew, in seconds.
pub const DEFAULT_SKEW: u64 = 5;

impl SrlVerifier {
    /// A verifier trusting `keys` (the pinned authority keys) for `iss`.
    pub fn new(keys: KeySet, iss: impl Into<String>) -> Self {
        Self {
            keys,
            iss: iss.into(),
            skew: DEFAULT_SKEW,
            limits: SrlLimits::default(),
        }
    }

    /// Sets the clock-skew allowance.
    pub fn with_skew(mut self, skew: u64) -> Self {
        self.skew = skew;
        self
    }

    /// Sets the size limits.
    pub fn with_limits(mut self, limits: SrlLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The authority name.
    pub fn iss(&self) -> &str {
        &self.iss
    }

    fn open(
        &self,
        what: &'static str,
        token: &str,
        typ: Typ,
        max: usize,
    ) -> Result<Vec<u8>, SrlError> {
        jws::verify(token, typ, &self.keys, max)
            .map(|v| v.payload)
            .map_err(|source| SrlError::Jws { what, source })
    }

    fn check(&self, what: &'static str, iss: &str, iat: u64, now: u64) -> Result<(), SrlError> {
        if iss != self.iss {
            return Err(SrlError::Issuer {
                what,
                expected: self.iss.clone(),
                found: iss.into(),
            });
        }
        if iat > now.saturating_add(self.skew) {
            return Err(SrlError::FromFuture {
                what,
                iat,
                now,
                skew: self.skew,
            });
        }
        Ok(())
    }

    /// Verifies an issuer key set (at most 1 MiB: thousands of keys).
    pub fn issuers(&self, token: &str, now: u64) -> Result<VerifiedIssuers, SrlError> {
        const WHAT: &str = "issuer key set";
        let bytes = self.open(WHAT, token, Typ::Issuers, 1 << 20)?;
        let payload: IssuersPayload = parse(WHAT, &bytes)?;
        self.check(WHAT, &payload.iss, payload.iat, now)?;
        let keys = payload
            .keys
            .iter()
            .map(PublicKey::from_jwk)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| payload_error(WHAT, format!("a key: {e}")))?;
        Ok(VerifiedIssuers {
            ver: payload.ver,
            iat: payload.iat,
            keys: KeySet::new(keys),
        })
    }

    /// Verifies a delta.
    pub fn delta(&self, token: &str, now: u64) -> Result<VerifiedDelta, SrlError> {
        const WHAT: &str = "delta";
        let bytes = self.open(WHAT, token, Typ::Delta, self.limits.max_delta_bytes)?;
        let payload: DeltaPayload = parse(WHAT, &bytes)?;
        self.check(WHAT, &payload.iss, payload.iat, now)?;
        if payload.ver == 0 {
            return Err(payload_error(WHAT, "version 0 has no delta"));
        }
        let bad = |e: EntryError| payload_error(WHAT, e.to_string());
        payload
            .add
            .iter()
            .try_for_each(|e| e.validate().map_err(bad))?;
        payload
            .rm
            .iter()
            .try_for_each(|e| e.validate().map_err(bad))?;
        Ok(VerifiedDelta {
            head: Head::of_payload(&bytes),
            payload,
        })
    }

    /// Verifies a checkpoint.
    pub fn checkpoint(&self, token: &str, now: u64) -> Result<VerifiedCheckpoint, SrlError> {
        const WHAT: &str = "checkpoint";
        let bytes = self.open(
            WHAT,
            token,
            Typ::Checkpoint,
            self.limits.max_checkpoint_bytes,
        )?;
        let payload: CheckpointPayload = parse(WHAT, &bytes)?;
        self.check(WHAT, &payload.iss, payload.iat, now)?;
        Ok(VerifiedCheckpoint { payload })
    }

    /// Verifies a snapshot and loads its tables.
    pub fn snapshot(&self, token: &str, now: u64) -> Result<VerifiedSnapshot, SrlError> {
        const WHAT: &str = "snapshot";
        let bytes = self.open(WHAT, token, Typ::Snapshot, self.limits.max_snapshot_bytes)?;
        let payload: SnapshotPayload<'_> = parse(WHAT, &bytes)?;
        self.check(WHAT, &payload.iss, payload.iat, now)?;
        if payload.digest != DIGEST_SCHEME {
            return Err(payload_error(
                WHAT,
                format!("unknown digest scheme `{}`", payload.digest),
            ));
        }
        let warrants = digests(WHAT, "warrants", &payload.warrants)?;
        let keys = digests(WHAT, "keys", &payload.keys)?;
        let raw = b64::decode(&payload.agents)
            .ok_or_else(|| payload_error(WHAT, "`agents` is not base64url"))?;
        if raw.len() % (DIGEST_BYTES + 8) != 0 {
            return Err(payload_error(
                WHAT,
                "`agents` is not a whole number of records",
            ));
        }
        let mut agents = Vec::with_capacity(raw.len() / (DIGEST_BYTES + 8));
        for rec in raw.chunks_exact(DIGEST_BYTES + 8) {
            let (d, before) = rec.split_at(DIGEST_BYTES);
            let mut dd = [0u8; DIGEST_BYTES];
            dd.copy_from_slice(d);
            let mut bb = [0u8; 8];
            bb.copy_from_slice(before);
            agents.push((Digest(dd), u64::from_be_bytes(bb)));
        }
        if !agents.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(payload_error(
                WHAT,
                "`agents` is not in strictly ascending order",
            ));
        }
        Ok(VerifiedSnapshot {
            ver: payload.ver,
            head: payload.head,
            iat: payload.iat,
            exp: payload.exp,
            set: RevocationSet::from_sorted(warrants, agents, keys),
        })
    }
}

fn payload_error(what: &'static str, message: impl Into<String>) -> SrlError {
    SrlError::Payload {
        what,
        message: message.into(),
    }
}

fn parse<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, SrlError> {
    serde_json::from_slice(bytes).map_err(|e| payload_error(what, e.to_string()))
}

fn digests(what: &'static str, field: &str, text: &str) -> Result<Vec<Digest>, SrlError> {
    let raw = b64::decode(text)
        .ok_or_else(|| payload_error(what, format!("`{field}` is not base64url")))?;
    if raw.len() % DIGEST_BYTES != 0 {
        return Err(payload_error(
            what,
            format!("`{field}` is not a whole number of digests"),
        ));
    }
    let list: Vec<Digest> = raw
        .chunks_exact(DIGEST_BYTES)
        .map(|c| {
            let mut d = [0u8; DIGEST_BYTES];
            d.copy_from_slice(c);
            Digest(d)
        })
        .collect();
    if !list.windows(2).all(|w| w[0] < w[1]) {
        return Err(payload_error(
            what,
            format!("`{field}` is not in strictly ascending order"),
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod issuer_set_tests {
    use super::*;

    #[test]
    fn an_issuer_set_verifies_only_as_itself_and_from_its_authority() {
        let authority = SigningKey::from_seed(&[3; 32]);
        let issuer = SigningKey::from_seed(&[4; 32]);
        let signer = SrlSigner::new(authority.clone(), "veto");
        let token = signer.issuers(7, 100, &[issuer.public().clone()]);
        let verifier = SrlVerifier::new(KeySet::new([authority.public().clone()]), "veto");
        let set = verifier.issuers(&token, 100).unwrap();
        assert_eq!((set.ver, set.iat), (7, 100));
        assert!(set.keys.keys().contains(issuer.public()));
        // Not as a checkpoint; not from another authority; not from the future.
        assert!(verifier.checkpoint(&token, 100).is_err());
        let other = SrlVerifier::new(KeySet::new([issuer.public().clone()]), "veto");
        assert!(other.issuers(&token, 100).is_err());
        assert!(matches!(
            verifier.issuers(&token, 10),
            Err(SrlError::FromFuture { .. })
        ));
        let forged = SrlSigner::new(issuer.clone(), "veto").issuers(8, 100, &[]);
        assert!(verifier.issuers(&forged, 100).is_err());
    }
}
