//! JWS compact serialization (RFC 7515) with EdDSA/Ed25519 (RFC 8037).
//!
//! Verification follows DESIGN 3: size first, then structure, then `alg` and
//! `typ` (domain separation), then the signature over the bytes exactly as
//! received, and only then is the payload handed out for parsing.

use serde::Deserialize;

use crate::b64;
use crate::keys::{KeyResolver, PublicKey, SigningKey};

/// The kinds of signed object; the JWS `typ` keeps them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Typ {
    /// A warrant link, `veto-warrant+jwt`.
    Warrant,
    /// A snapshot of the revocation state, `veto-srl+jwt`.
    Snapshot,
    /// A delta, `veto-srl-delta+jwt`.
    Delta,
    /// A checkpoint, `veto-srl-checkpoint+jwt`.
    Checkpoint,
    /// A proof of possession, `dpop+jwt` (RFC 9449).
    Dpop,
    /// The trusted issuer keys, `veto-issuers+jwt` (DESIGN 3.5).
    Issuers,
    /// A gateway's report of what it applied, `veto-report+jwt` (DESIGN 5).
    Report,
}

impl Typ {
    /// The `typ` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Typ::Warrant => "veto-warrant+jwt",
            Typ::Snapshot => "veto-srl+jwt",
            Typ::Delta => "veto-srl-delta+jwt",
            Typ::Checkpoint => "veto-srl-checkpoint+jwt",
            Typ::Dpop => "dpop+jwt",
            Typ::Issuers => "veto-issuers+jwt",
            Typ::Report => "veto-report+jwt",
        }
    }
}

/// Why a JWS was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwsError {
    /// The input is over the size limit for its kind.
    #[error("{len} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The input is not three dot-separated base64url parts.
    #[error("not a compact JWS: {0}")]
    Malformed(&'static str),
    /// The protected header is not a JSON object of the expected shape.
    #[error("invalid protected header: {0}")]
    Header(String),
    /// `alg` is not `EdDSA`.
    #[error("unsupported algorithm `{0}`: only `EdDSA` is accepted")]
    Alg(String),
    /// `typ` is not the one expected here.
    #[error("wrong object type: expected `{expected}`, found `{found}`")]
    Typ {
        /// The expected `typ`.
        expected: &'static str,
        /// The `typ` found (empty when absent).
        found: String,
    },
    /// The header has no `kid`.
    #[error("the protected header has no `kid`")]
    MissingKid,
    /// No trusted key has this `kid`.
    #[error("no trusted key with kid `{0}`")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// The protected header. `crit` is refused (no extension is understood);
/// other unknown members are ignored and never acted on (no `jku`, `x5u`).
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    /// Algorithm.
    pub alg: String,
    /// Object type.
    #[serde(default)]
    pub typ: Option<String>,
    /// Key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// The signer's public key, carried in the header (DPoP proofs only,
    /// RFC 9449 4.2; never trusted on its own).
    #[serde(default)]
    pub jwk: Option<crate::keys::Jwk>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

const MAX_HEADER_BYTES: usize = 1024;

/// Signs `payload` as a compact JWS of type `typ`.
pub fn sign(typ: Typ, key: &SigningKey, payload: &[u8]) -> String {
    let header = format!(
        r#"{{"alg":"EdDSA","typ":"{}","kid":"{}"}}"#,
        typ.as_str(),
        key.kid()
    );
    sign_with_header(&header, key, payload)
}

/// Signs `payload` under the protected header JSON `header` exactly as given.
pub(crate) fn sign_with_header(header: &str, key: &SigningKey, payload: &[u8]) -> String {
    let mut out = b64::encode(header.as_bytes());
    out.push('.');
    out.push_str(&b64::encode(payload));
    let signature = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&b64::encode(&signature));
    out
}

/// A structurally valid compact JWS whose signature is not yet verified.
#[derive(Debug, Clone)]
pub struct UnverifiedJws<'a> {
    header: Header,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: [u8; 64],
}

impl<'a> UnverifiedJws<'a> {
    /// Splits and decodes the structure, checks size and `alg`.
    pub fn parse(token: &'a str, max_len: usize) -> Result<Self, JwsError> {
        if token.len() > max_len {
            return Err(JwsError::TooLarge {
                len: token.len(),
                limit: max_len,
            });
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed("expected three dot-separated parts"));
        };
        if h.len() > MAX_HEADER_BYTES * 4 / 3 + 4 {
            return Err(JwsError::Header("over 1024 bytes".into()));
        }
        let header_bytes = b64::decode(h).ok_or(JwsError::Malformed("header is not base64url"))?;
        let header: Header =
            serde_json::from_slice(&header_bytes).map_err(|e| JwsError::Header(e.to_string()))?;
        if header.alg != "EdDSA" {
            return Err(JwsError::Alg(header.alg));
        }
        if header.crit.is_some() {
            return Err(JwsError::Header(
                "`crit` extensions are not supported".into(),
            ));
        }
        let signature = b64::decode_array::<64>(s).ok_or(JwsError::Malformed(
            "signature is not 64 bytes of base64url",
        ))?;
        Ok(Self {
            header,
            signing_input: &token[..h.len() + 1 + p.len()],
            payload_b64: p,
            signature,
        })
    }

    /// The protected header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub(crate) fn signing_input(&self) -> &str {
        self.signing_input
    }

    pub(crate) fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// Requires `typ` to be exactly `expected`.
    pub fn expect_typ(&self, expected: Typ) -> Result<(), JwsError> {
        match self.header.typ.as_deref() {
            Some(t) if t == expected.as_str() => Ok(()),
            other => Err(JwsError::Typ {
                expected: expected.as_str(),
                found: other.unwrap_or_default().to_owned(),
            }),
        }
    }

    /// Decodes the payload without verifying it. Only warrant claims are read
    /// this way, for the revocation check that DESIGN 4 puts before signatures.
    pub fn payload_unverified(&self) -> Result<Vec<u8>, JwsError> {
        b64::decode(self.payload_b64).ok_or(JwsError::Malformed("payload is not base64url"))
    }

    /// Verifies the signature with one given key.
    pub fn verify_with(&self, key: &PublicKey) -> Result<(), JwsError> {
        if key.verify(self.signing_input.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(JwsError::BadSignature)
        }
    }

    /// Verifies with the key named by `kid` and returns the payload bytes.
    pub fn verify(&self, keys: &dyn KeyResolver) -> Result<Verified, JwsError> {
        let kid = self.header.kid.as_deref().ok_or(JwsError::MissingKid)?;
        let key = keys
            .resolve(kid)
            .ok_or_else(|| JwsError::UnknownKey(kid.to_owned()))?;
        self.verify_with(key)?;
        Ok(Verified {
            payload: self.payload_unverified()?,
            kid: kid.to_owned(),
        })
    }
}

/// A verified payload and the id of the key that signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The payload bytes, exactly as signed.
    pub payload: Vec<u8>,
    /// The signing key's id.
    pub kid: String,
}

/// Parses, checks `typ`, and verifies in one step.
pub fn verify(
    token: &str,
    typ: Typ,
    keys: &dyn KeyResolver,
    max_len: usize,
) -> Result<Verified, JwsError> {
    let jws = UnverifiedJws::parse(token, max_len)?;
    jws.expect_typ(typ)?;
    jws.verify(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_domain_separation() {
        let key = SigningKey::generate().unwrap();
        let token = sign(Typ::Delta, &key, b"{\"a\":1}");
        let v = verify(&token, Typ::Delta, key.public(), 1 << 20).unwrap();
        assert_eq!(v.payload, b"{\"a\":1}");
        assert_eq!(v.kid, key.kid());
        assert!(matches!(
            verify(&token, Typ::Checkpoint, key.public(), 1 << 20),
            Err(JwsError::Typ { .. })
        ));
    }

    #[test]
    fn alg_none_and_hs256_are_refused() {
        let key = SigningKey::generate().unwrap();
        let token = sign(Typ::Delta, &key, b"{}");
        let (_, rest) = token.split_once('.').unwrap();
        for alg in ["none", "HS256", "eddsa"] {
            let h = b64::encode(
                format!(
                    r#"{{"alg":"{alg}","typ":"veto-srl-delta+jwt","kid":"{}"}}"#,
                    key.kid()
                )
                .as_bytes(),
            );
            let forged = format!("{h}.{rest}");
            assert_eq!(
                verify(&forged, Typ::Delta, key.public(), 1 << 20).unwrap_err(),
                JwsError::Alg(alg.into())
            );
        }
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let junk = "a".repeat(100);
        assert_eq!(
            UnverifiedJws::parse(&junk, 99).unwrap_err(),
            JwsError::TooLarge {
                len: 100,
                limit: 99
            }
        );
    }

    #[test]
    fn padded_base64_is_refused() {
        let key = SigningKey::generate().unwrap();
        let token = sign(Typ::Delta, &key, b"{}");
        let (h, rest) = token.split_once('.').unwrap();
        assert!(UnverifiedJws::parse(&format!("{h}=.{rest}"), 1 << 20).is_err());
    }
}
