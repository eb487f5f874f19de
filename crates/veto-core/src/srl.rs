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

/// Bytes of one `warrants` or `keys` record: a digest.
const DIGEST_RECORD: usize = DIGEST_BYTES;
/// Bytes of one `agents` record: a digest, then `before` as 8 big-endian bytes.
const AGENT_RECORD: usize = DIGEST_BYTES + 8;

/// Largest signed header of a snapshot (its compact JWS): the header only
/// names the tables, so a few hundred bytes; the cap leaves room for a
/// long `iss`.
pub const MAX_SNAPSHOT_JWS_BYTES: usize = 8 << 10;

/// Ends the signed header of a snapshot's binary container; the table
/// bytes follow.
pub const BINARY_SEPARATOR: u8 = b'\n';

/// Ends the signed header of a snapshot's text container; base64url
/// (without padding) of the table bytes follows.
pub const TEXT_SEPARATOR: u8 = b'~';

/// The payload of a snapshot: the claims of the state at `ver`/`head`
/// and the SHA-256 of its tables, which travel beside the JWS rather
/// than inside it (so they are never base64url-encoded twice).
///
/// The tables are the bytes `warrants ‖ agents ‖ keys`: `tables.warrants`
/// 12-byte digests, then `tables.agents` records of a 12-byte digest and
/// an 8-byte big-endian `before`, then `tables.keys` 12-byte digests, each
/// list in strictly ascending digest order. That ships a million entries
/// in about 12 MB and loads them without sorting.
///
/// A snapshot travels in one of two containers (see [`Snapshot`]):
/// binary, the compact JWS, `\n` ([`BINARY_SEPARATOR`]), then the table
/// bytes (the body of `GET /v1/srl`, the authorizer's disk cache); or
/// text, the compact JWS, `~` ([`TEXT_SEPARATOR`]), then base64url of the
/// table bytes (an SSE `snapshot` event, a conformance vector). Neither
/// separator can occur in a compact JWS.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPayload {
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
    /// What the table bytes beside the JWS hold.
    pub tables: TablesClaim,
}

/// The signed description of a snapshot's table bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TablesClaim {
    /// SHA-256 of the table bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// How many warrant records come first (12 bytes each).
    pub warrants: u64,
    /// How many agent records follow (20 bytes each).
    pub agents: u64,
    /// How many key records come last (12 bytes each).
    pub keys: u64,
}

impl TablesClaim {
    /// The table length these counts imply, when it is at most `max`
    /// bytes: checked before anything is allocated, so a hostile header
    /// cannot make the verifier allocate.
    fn len_within(&self, max: usize) -> Result<usize, String> {
        let records = |n: u64, size: usize| n.checked_mul(size as u64);
        let len = records(self.warrants, DIGEST_RECORD)
            .zip(records(self.agents, AGENT_RECORD))
            .and_then(|(w, a)| w.checked_add(a))
            .zip(records(self.keys, DIGEST_RECORD))
            .and_then(|(wa, k)| wa.checked_add(k));
        match len.and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n <= max => Ok(n),
            _ => Err(format!(
                "the counts ({} warrants, {} agents, {} keys) make tables over the limit of {max} bytes",
                self.warrants, self.agents, self.keys
            )),
        }
    }
}

/// A signed snapshot as the signer made it: the compact JWS (the signed
/// header) and the table bytes, held as the binary container.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    jws: String,
    /// `jws`, [`BINARY_SEPARATOR`], the table bytes.
    bytes: Vec<u8>,
}

impl Snapshot {
    fn new(jws: String, tables: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(jws.len() + 1 + tables.len());
        bytes.extend_from_slice(jws.as_bytes());
        bytes.push(BINARY_SEPARATOR);
        bytes.extend_from_slice(tables);
        Self { jws, bytes }
    }

    /// Splits a container (either form) into its signed header and its
    /// tables, verifying nothing: [`SrlVerifier::snapshot`] is what
    /// checks it. For converting a verified text container to the binary
    /// one (e.g. to keep it on disk).
    pub fn from_container(container: &[u8]) -> Result<Self, SrlError> {
        let (jws, tables) = split_container(container)?;
        let tables = match tables {
            Tables::Binary(t) => std::borrow::Cow::Borrowed(t),
            Tables::Text(t) => std::borrow::Cow::Owned(
                b64::decode(t).ok_or_else(|| snapshot_error("the tables are not base64url"))?,
            ),
        };
        Ok(Self::new(jws.to_owned(), &tables))
    }

    /// The signed header, a compact JWS.
    pub fn jws(&self) -> &str {
        &self.jws
    }

    /// The table bytes.
    pub fn tables(&self) -> &[u8] {
        self.bytes.get(self.jws.len() + 1..).unwrap_or_default()
    }

    /// The binary container, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The binary container: the JWS, `\n`, the table bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The binary container, taking it.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The text container: the JWS, `~`, base64url of the table bytes.
    pub fn to_text(&self) -> String {
        let mut out = self.jws.clone();
        out.push(char::from(TEXT_SEPARATOR));
        out.push_str(&b64::encode(self.tables()));
        out
    }
}

impl AsRef<[u8]> for Snapshot {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("jws", &self.jws)
            .field("table_bytes", &self.tables().len())
            .finish()
    }
}

/// The tables of a container, as they came.
enum Tables<'a> {
    /// The bytes themselves.
    Binary(&'a [u8]),
    /// base64url of them.
    Text(&'a str),
}

fn snapshot_error(message: impl Into<String>) -> SrlError {
    payload_error("snapshot", message)
}

/// Splits a container at the first separator: a compact JWS holds neither
/// `\n` nor `~`, so the first one ends it. Looks no further than
/// [`MAX_SNAPSHOT_JWS_BYTES`] for it.
fn split_container(container: &[u8]) -> Result<(&str, Tables<'_>), SrlError> {
    let head = container
        .get(..=MAX_SNAPSHOT_JWS_BYTES)
        .unwrap_or(container);
    let Some(at) = head
        .iter()
        .position(|&b| b == BINARY_SEPARATOR || b == TEXT_SEPARATOR)
    else {
        return Err(snapshot_error(format!(
            "no `\\n` or `~` after the signed header within {MAX_SNAPSHOT_JWS_BYTES} bytes: \
             a snapshot is the compact JWS, then `\\n` and the table bytes, or `~` and their base64url"
        )));
    };
    let (jws, rest) = container.split_at(at);
    let jws = std::str::from_utf8(jws)
        .map_err(|_| snapshot_error("the signed header is not a compact JWS (not ASCII)"))?;
    let (sep, rest) = rest.split_first().unwrap_or((&0, &[]));
    let tables = if *sep == BINARY_SEPARATOR {
        Tables::Binary(rest)
    } else {
        Tables::Text(
            std::str::from_utf8(rest)
                .map_err(|_| snapshot_error("the tables after `~` are not base64url"))?,
        )
    };
    Ok((jws, tables))
}

/// Size limits for incoming objects.
#[derive(Clone, Copy, Debug)]
pub struct SrlLimits {
    /// Largest snapshot, in bytes (default 256 MiB: ~22M warrant digests of 12 bytes).
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

    /// Signs a snapshot of `set` at `ver`/`head`: the table bytes, and a
    /// JWS naming their SHA-256 and record counts ([`SnapshotPayload`]).
    pub fn snapshot(
        &self,
        ver: u64,
        head: Head,
        iat: u64,
        exp: u64,
        set: &RevocationSet,
    ) -> Snapshot {
        let (warrants, agents, keys) = set.tables();
        let mut tables = Vec::with_capacity(
            (warrants.len() + keys.len()) * DIGEST_RECORD + agents.len() * AGENT_RECORD,
        );
        warrants.iter().for_each(|d| tables.extend_from_slice(&d.0));
        for (d, before) in &agents {
            tables.extend_from_slice(&d.0);
            tables.extend_from_slice(&before.to_be_bytes());
        }
        keys.iter().for_each(|d| tables.extend_from_slice(&d.0));
        let payload = SnapshotPayload {
            iss: self.iss.clone(),
            ver,
            head,
            iat,
            exp,
            digest: DIGEST_SCHEME.into(),
            tables: TablesClaim {
                sha256: Head(Sha256::digest(&tables).into()).to_string(),
                warrants: warrants.len() as u64,
                agents: agents.len() as u64,
                keys: keys.len() as u64,
            },
        };
        let jws = jws::sign(
            Typ::Snapshot,
            &self.key,
            &crate::json::payload_bytes(&payload),
        );
        Snapshot::new(jws, &tables)
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

    /// Verifies a snapshot in either container (binary or text, see
    /// [`SnapshotPayload`]) and loads its tables.
    ///
    /// In order: the container's size, the split at the first separator,
    /// the JWS (size, `alg`, `typ`, signature) and its claims as for any
    /// signed object, the counts against the size limit (before anything
    /// is allocated), the tables' exact length, their SHA-256 against the
    /// signed one, and each list's strictly ascending order.
    pub fn snapshot(
        &self,
        container: impl AsRef<[u8]>,
        now: u64,
    ) -> Result<VerifiedSnapshot, SrlError> {
        self.snapshot_bytes(container.as_ref(), now)
    }

    fn snapshot_bytes(&self, container: &[u8], now: u64) -> Result<VerifiedSnapshot, SrlError> {
        const WHAT: &str = "snapshot";
        let max = self.limits.max_snapshot_bytes;
        if container.len() > max {
            return Err(SrlError::Jws {
                what: WHAT,
                source: JwsError::TooLarge {
                    len: container.len(),
                    limit: max,
                },
            });
        }
        let (token, tables) = split_container(container)?;
        let bytes = self.open(WHAT, token, Typ::Snapshot, MAX_SNAPSHOT_JWS_BYTES)?;
        let payload: SnapshotPayload = parse(WHAT, &bytes)?;
        self.check(WHAT, &payload.iss, payload.iat, now)?;
        if payload.digest != DIGEST_SCHEME {
            return Err(payload_error(
                WHAT,
                format!("unknown digest scheme `{}`", payload.digest),
            ));
        }
        let claim = &payload.tables;
        let sha256 = Head::parse(&claim.sha256).ok_or_else(|| {
            payload_error(WHAT, "`tables.sha256` must be 64 lowercase hex digits")
        })?;
        let len = claim.len_within(max).map_err(|m| payload_error(WHAT, m))?;
        let decoded;
        let raw = match tables {
            Tables::Binary(raw) => raw,
            Tables::Text(text) => {
                // Unpadded base64url of `len` bytes has exactly this length.
                let expected = len / 3 * 4 + [0, 2, 3][len % 3];
                if text.len() != expected {
                    return Err(payload_error(
                        WHAT,
                        format!(
                            "the tables are {} base64url characters, the signed counts make {expected}",
                            text.len()
                        ),
                    ));
                }
                decoded = b64::decode(text)
                    .ok_or_else(|| payload_error(WHAT, "the tables are not base64url"))?;
                &decoded[..]
            }
        };
        if raw.len() != len {
            return Err(payload_error(
                WHAT,
                format!(
                    "the tables are {} bytes, the signed counts make {len}",
                    raw.len()
                ),
            ));
        }
        if Sha256::digest(raw)[..] != sha256.0[..] {
            return Err(payload_error(
                WHAT,
                "the tables do not match the signed `tables.sha256`",
            ));
        }
        // The lengths were checked against the counts just above.
        let (w, rest) = raw.split_at(len_of(claim.warrants, DIGEST_RECORD));
        let (a, k) = rest.split_at(len_of(claim.agents, AGENT_RECORD));
        let warrants = digests(WHAT, "warrants", w)?;
        let keys = digests(WHAT, "keys", k)?;
        let agents: Vec<(Digest, u64)> = a
            .chunks_exact(AGENT_RECORD)
            .map(|rec| {
                let (d, before) = rec.split_at(DIGEST_BYTES);
                (Digest(array(d)), u64::from_be_bytes(array(before)))
            })
            .collect();
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

/// Bytes of `n` records of `size` (`n` was bounded by [`TablesClaim::len_within`]).
fn len_of(n: u64, size: usize) -> usize {
    usize::try_from(n)
        .unwrap_or(usize::MAX)
        .saturating_mul(size)
}

/// The first `N` bytes of `bytes` (zero-padded when shorter, which the
/// callers' fixed-size chunks rule out).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.iter_mut().zip(bytes).for_each(|(o, b)| *o = *b);
    out
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

fn digests(what: &'static str, field: &str, raw: &[u8]) -> Result<Vec<Digest>, SrlError> {
    let list: Vec<Digest> = raw
        .chunks_exact(DIGEST_RECORD)
        .map(|c| Digest(array(c)))
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

#[cfg(test)]
mod snapshot_container_tests {
    use super::*;
    use crate::entry::EntryKind;

    const NOW: u64 = 1_000;

    fn world() -> (SrlSigner, SrlVerifier) {
        let authority = SigningKey::from_seed(&[5; 32]);
        let verifier = SrlVerifier::new(KeySet::new([authority.public().clone()]), "veto");
        (SrlSigner::new(authority, "veto"), verifier)
    }

    fn set() -> RevocationSet {
        let mut set = RevocationSet::default();
        for i in 0..5u8 {
            set.insert(EntryKind::Warrant, Digest([i * 7 + 1; DIGEST_BYTES]), 0);
            set.insert(EntryKind::Key, Digest([i * 11 + 2; DIGEST_BYTES]), 0);
        }
        set.insert(EntryKind::Agent, Digest([9; DIGEST_BYTES]), 77);
        set.insert(EntryKind::Agent, Digest([3; DIGEST_BYTES]), 55);
        set
    }

    fn snapshot() -> Snapshot {
        world().0.snapshot(4, Head([1; 32]), NOW, NOW + 60, &set())
    }

    /// A container with the JWS of `snap` and `tables` in place of its own.
    fn binary_with(snap: &Snapshot, tables: &[u8]) -> Vec<u8> {
        Snapshot::new(snap.jws().to_owned(), tables).into_bytes()
    }

    /// A snapshot signed over `claim` with `tables` beside it.
    fn signed(claim: TablesClaim, tables: &[u8]) -> Vec<u8> {
        let (signer, _) = world();
        let payload = SnapshotPayload {
            iss: "veto".into(),
            ver: 4,
            head: Head([1; 32]),
            iat: NOW,
            exp: NOW + 60,
            digest: DIGEST_SCHEME.into(),
            tables: claim,
        };
        let jws = jws::sign(
            Typ::Snapshot,
            signer.key(),
            &crate::json::payload_bytes(&payload),
        );
        Snapshot::new(jws, tables).into_bytes()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        Head(Sha256::digest(bytes).into()).to_string()
    }

    fn refused(container: &[u8], needle: &str) {
        let (_, verifier) = world();
        match verifier.snapshot(container, NOW) {
            Ok(_) => panic!("accepted; expected a refusal naming `{needle}`"),
            Err(e) => assert!(
                e.to_string().contains(needle),
                "refusal `{e}` does not name `{needle}`"
            ),
        }
    }

    #[test]
    fn both_containers_round_trip_to_the_same_set() {
        let (_, verifier) = world();
        let snap = snapshot();
        let bytes = snap.to_bytes();
        let text = snap.to_text();
        assert_eq!(snap.tables().len(), 10 * 12 + 2 * 20);
        assert_eq!(bytes.len(), snap.jws().len() + 1 + snap.tables().len());
        assert!(text.starts_with(&format!("{}~", snap.jws())));
        for container in [&bytes[..], text.as_bytes()] {
            let v = verifier.snapshot(container, NOW).unwrap();
            assert_eq!(
                (v.ver, v.head, v.iat, v.exp),
                (4, Head([1; 32]), NOW, NOW + 60)
            );
            assert!(v.set == set());
            assert_eq!(v.set.get(EntryKind::Agent, &Digest([9; 12])), Some(77));
        }
        // Either container splits back to the same snapshot.
        assert_eq!(Snapshot::from_container(text.as_bytes()).unwrap(), snap);
        assert_eq!(Snapshot::from_container(&bytes).unwrap(), snap);
        // An empty set too.
        let empty = world()
            .0
            .snapshot(0, Head::ZERO, NOW, NOW + 1, &RevocationSet::default());
        assert!(empty.tables().is_empty());
        assert!(verifier
            .snapshot(empty.to_text(), NOW)
            .unwrap()
            .set
            .is_empty());
        assert!(verifier.snapshot(&empty, NOW).unwrap().set.is_empty());
    }

    #[test]
    fn truncated_or_extended_tables_are_refused() {
        let snap = snapshot();
        let t = snap.tables();
        refused(
            &binary_with(&snap, &t[..t.len() - 1]),
            "the tables are 159 bytes, the signed counts make 160",
        );
        refused(
            &binary_with(&snap, &[t, b"\0"].concat()),
            "the tables are 161 bytes",
        );
        refused(&binary_with(&snap, &[]), "the tables are 0 bytes");
        let text = snap.to_text();
        refused(
            &text.as_bytes()[..text.len() - 2],
            "base64url characters, the signed counts make",
        );
        refused(format!("{text}AA").as_bytes(), "base64url characters");
    }

    #[test]
    fn a_flipped_table_byte_breaks_the_hash() {
        let snap = snapshot();
        let mut t = snap.tables().to_vec();
        t[13] ^= 1;
        refused(
            &binary_with(&snap, &t),
            "do not match the signed `tables.sha256`",
        );
        let mut text = snap.to_text().into_bytes();
        let last = text.len() - 3;
        text[last] = if text[last] == b'A' { b'B' } else { b'A' };
        refused(&text, "do not match the signed `tables.sha256`");
    }

    #[test]
    fn records_out_of_order_are_refused_even_when_signed() {
        let snap = snapshot();
        for (from, size, name) in [(0, 12, "warrants"), (60, 20, "agents"), (100, 12, "keys")] {
            let mut t = snap.tables().to_vec();
            let (a, b) = t[from..from + 2 * size].split_at_mut(size);
            a.swap_with_slice(b);
            let claim = TablesClaim {
                sha256: sha256_hex(&t),
                warrants: 5,
                agents: 2,
                keys: 5,
            };
            refused(
                &signed(claim, &t),
                &format!("`{name}` is not in strictly ascending order"),
            );
        }
    }

    #[test]
    fn counts_over_the_limit_or_overflowing_are_refused_before_allocating() {
        let claim = |warrants, agents, keys| TablesClaim {
            sha256: sha256_hex(b""),
            warrants,
            agents,
            keys,
        };
        for c in [
            claim(u64::MAX, 0, 0),
            claim(0, u64::MAX / 20 + 1, 0),
            claim(u64::MAX / 24, 0, u64::MAX / 24),
            claim(1 << 40, 0, 0),
            // 256 MiB + 12 bytes: one record over the default limit.
            claim((256 << 20) / 12 + 1, 0, 0),
        ] {
            refused(
                &signed(c, b""),
                "make tables over the limit of 268435456 bytes",
            );
        }
        // A container over the limit is refused before it is split.
        let (_, verifier) = world();
        let small = verifier.with_limits(SrlLimits {
            max_snapshot_bytes: 100,
            ..SrlLimits::default()
        });
        assert!(matches!(
            small.snapshot(snapshot(), NOW),
            Err(SrlError::Jws {
                source: JwsError::TooLarge { .. },
                ..
            })
        ));
    }

    #[test]
    fn a_container_without_its_separator_or_with_one_inside_is_refused() {
        let snap = snapshot();
        // The plain JWS of old.
        refused(
            snap.jws().as_bytes(),
            "no `\\n` or `~` after the signed header",
        );
        refused(b"", "no `\\n` or `~` after the signed header");
        // A separator inside the JWS cuts it short.
        let mut inside = snap.to_bytes();
        inside[10] = b'\n';
        refused(&inside, "not a compact JWS");
        let mut inside = snap.to_text().into_bytes();
        inside[10] = b'~';
        refused(&inside, "not a compact JWS");
        // A second `~` in the text tables.
        let text = snap.to_text();
        let tilde = format!("{}~{}", &text[..text.len() - 4], &text[text.len() - 3..]);
        refused(tilde.as_bytes(), "not base64url");
    }

    #[test]
    fn a_text_container_with_bad_base64url_is_refused() {
        let snap = snapshot();
        let text = snap.to_text();
        let n = text.len();
        for bad in [
            format!("{}*{}", &text[..n - 5], &text[n - 4..]),
            format!("{}+{}", &text[..n - 5], &text[n - 4..]),
            // Padding is not base64url here.
            format!("{}=", &text[..n - 1]),
        ] {
            refused(bad.as_bytes(), "not base64url");
        }
        // Not text at all after `~`.
        let mut bytes = text.into_bytes();
        bytes[n - 2] = 0xff;
        refused(&bytes, "not base64url");
    }

    #[test]
    fn the_header_is_checked_like_any_signed_object() {
        let snap = snapshot();
        let (signer, verifier) = world();
        // Another key, another typ, a bad digest, a hash that is not hex.
        let forged = SrlSigner::new(SigningKey::from_seed(&[6; 32]), "veto").snapshot(
            4,
            Head([1; 32]),
            NOW,
            NOW + 60,
            &set(),
        );
        assert!(matches!(
            verifier.snapshot(&forged, NOW),
            Err(SrlError::Jws { .. })
        ));
        let delta = signer.delta(1, Head::ZERO, NOW, vec![], vec![]).0;
        refused(
            &Snapshot::new(delta, snap.tables()).into_bytes(),
            "wrong object type",
        );
        let claim = TablesClaim {
            sha256: sha256_hex(snap.tables()).to_uppercase(),
            warrants: 5,
            agents: 2,
            keys: 5,
        };
        refused(
            &signed(claim, snap.tables()),
            "`tables.sha256` must be 64 lowercase hex",
        );
        assert!(matches!(
            verifier.snapshot(&snap, NOW - 100),
            Err(SrlError::FromFuture { .. })
        ));
    }
}
