//! Ed25519 keys as JWKs (RFC 8037), with RFC 7638 thumbprints as key ids.

use std::fmt;

use ed25519_dalek::{Signer as _, SECRET_KEY_LENGTH};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::b64;

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The JWK text is not valid JSON of the expected shape.
    #[error("invalid JWK: {0}")]
    Json(String),
    /// The JWK is not an Ed25519 key (`kty` must be `OKP`, `crv` must be `Ed25519`).
    #[error(
        "unsupported key: `kty` must be `OKP` and `crv` must be `Ed25519`, found `{kty}`/`{crv}`"
    )]
    Unsupported {
        /// The `kty` found.
        kty: String,
        /// The `crv` found.
        crv: String,
    },
    /// A key member is not canonical base64url of the right length.
    #[error("invalid JWK member `{0}`: expected 32 bytes of unpadded base64url")]
    Member(&'static str),
    /// The public part is not a valid Ed25519 point, or does not match the private part.
    #[error("invalid Ed25519 public key `x`")]
    BadPoint,
    /// A private key was needed but the JWK holds only a public key.
    #[error("the JWK has no private part `d`: a private key file is needed here")]
    NotPrivate,
    /// The operating system's random source failed.
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
}

/// A JSON Web Key for Ed25519 (RFC 8037), public or private. Members other
/// than these (such as `key_ops` or `ext` from WebCrypto) are ignored.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    /// Key type, always `OKP`.
    pub kty: String,
    /// Curve, always `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// The private key seed, base64url (private JWKs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// Key id: the RFC 7638 thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Algorithm, `EdDSA` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Public key use, `sig` when present.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl fmt::Debug for Jwk {
    // Never print the private part.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("crv", &self.crv)
            .field("x", &self.x)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Jwk {
    /// The JWK as compact JSON (RFC 7517), private part included when
    /// present: handle the result as a secret when [`Jwk::d`] is set.
    pub fn to_json(&self) -> String {
        crate::json::to_json(self)
    }
}

/// An Ed25519 public key with its RFC 7638 thumbprint.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    kid: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kid)
    }
}

impl PublicKey {
    /// Builds a key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::BadPoint)?;
        if key.is_weak() {
            return Err(KeyError::BadPoint);
        }
        Ok(Self::from_dalek(key))
    }

    fn from_dalek(key: ed25519_dalek::VerifyingKey) -> Self {
        let kid = thumbprint(&b64::encode(key.as_bytes()));
        Self { key, kid }
    }

    /// Reads a public key from a JWK (a private JWK's public part is used).
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        check_kty(jwk)?;
        let x: [u8; 32] = b64::decode_array(&jwk.x).ok_or(KeyError::Member("x"))?;
        Self::from_bytes(&x)
    }

    /// Parses a JWK from JSON text.
    pub fn from_jwk_json(text: &str) -> Result<Self, KeyError> {
        Self::from_jwk(&parse_jwk(text)?)
    }

    /// The RFC 7638 thumbprint, used as `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The 32 raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The public JWK, with `kid`, `alg` and `use`.
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64::encode(self.key.as_bytes()),
            d: None,
            kid: Some(self.kid.clone()),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
        }
    }

    /// Verifies an Ed25519 signature strictly (no malleable or small-order forms).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.key.verify_strict(message, &sig).is_ok()
    }
}

/// An Ed25519 signing key. Its `Debug` never shows the secret.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.kid)
    }
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        Self::from_seed(&self.key.to_bytes())
    }
}

impl SigningKey {
    /// Generates a new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; SECRET_KEY_LENGTH];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Builds a key from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = PublicKey::from_dalek(key.verifying_key());
        Self { key, public }
    }

    /// Reads a private JWK; its `x` must match its `d`.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        check_kty(jwk)?;
        let d = jwk.d.as_deref().ok_or(KeyError::NotPrivate)?;
        let seed: [u8; 32] = b64::decode_array(d).ok_or(KeyError::Member("d"))?;
        let key = Self::from_seed(&seed);
        if b64::encode(key.public.as_bytes()) != jwk.x {
            return Err(KeyError::BadPoint);
        }
        Ok(key)
    }

    /// Parses a private JWK from JSON text.
    pub fn from_jwk_json(text: &str) -> Result<Self, KeyError> {
        Self::from_jwk(&parse_jwk(text)?)
    }

    /// The private JWK (with `d`), for a key file.
    pub fn to_private_jwk(&self) -> Jwk {
        Jwk {
            d: Some(b64::encode(&self.key.to_bytes())),
            ..self.public.to_jwk()
        }
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key id (RFC 7638 thumbprint of the public key).
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

fn parse_jwk(text: &str) -> Result<Jwk, KeyError> {
    if text.len() > 4096 {
        return Err(KeyError::Json(format!(
            "{} bytes, over the 4096-byte limit",
            text.len()
        )));
    }
    serde_json::from_str(text).map_err(|e| KeyError::Json(e.to_string()))
}

fn check_kty(jwk: &Jwk) -> Result<(), KeyError> {
    if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return Err(KeyError::Unsupported {
            kty: jwk.kty.clone(),
            crv: jwk.crv.clone(),
        });
    }
    Ok(())
}

/// RFC 7638 thumbprint of an Ed25519 JWK given its `x`: SHA-256 over the
/// required members in lexicographic order, base64url.
pub fn thumbprint(x_b64: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x_b64}"}}"#);
    b64::encode(&Sha256::digest(canonical.as_bytes()))
}

/// Finds a verification key by `kid`. Rotation is a data change: a resolver
/// holding several keys accepts objects signed by any of them.
pub trait KeyResolver {
    /// The key with this id, if trusted.
    fn resolve(&self, kid: &str) -> Option<&PublicKey>;
}

/// A small set of trusted keys, looked up by `kid`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

impl KeySet {
    /// A set of the given keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut set = Self::default();
        for key in keys {
            set.insert(key);
        }
        set
    }

    /// Adds a key (no-op if present).
    pub fn insert(&mut self, key: PublicKey) {
        if self.resolve(key.kid()).is_none() {
            self.keys.push(key);
        }
    }

    /// The keys in the set.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl KeyResolver for KeySet {
    fn resolve(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

impl KeyResolver for PublicKey {
    fn resolve(&self, kid: &str) -> Option<&PublicKey> {
        (self.kid == kid).then_some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8037_thumbprint_vector() {
        // RFC 8037 appendix A.3.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(thumbprint(x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn rfc8037_private_key_round_trip() {
        let jwk = r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let key = SigningKey::from_jwk_json(jwk).unwrap();
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let again = SigningKey::from_jwk(&key.to_private_jwk()).unwrap();
        assert_eq!(again.public(), key.public());
    }

    #[test]
    fn mismatched_private_key_is_rejected() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        let mut jwk = a.to_private_jwk();
        jwk.x = b.public().to_jwk().x;
        assert_eq!(SigningKey::from_jwk(&jwk).unwrap_err(), KeyError::BadPoint);
    }

    #[test]
    fn public_jwk_is_not_private() {
        let a = SigningKey::generate().unwrap();
        assert_eq!(
            SigningKey::from_jwk(&a.public().to_jwk()).unwrap_err(),
            KeyError::NotPrivate
        );
    }

    #[test]
    fn debug_hides_secret() {
        let a = SigningKey::generate().unwrap();
        let d = a.to_private_jwk().d.unwrap();
        assert!(!format!("{a:?} {:?}", a.to_private_jwk()).contains(&d));
    }
}
