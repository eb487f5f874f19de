//! Issuer private keys at rest: sealed with AES-256-GCM under a key that
//! is not in the database.
//!
//! The sealing key is derived with HKDF-SHA256 (RFC 5869) from the
//! authority's private key (the file `authority.jwk`, never stored in the
//! database), with the registry's `iss` as context. Each issuer key is
//! stored as `sealed:v1:` + base64url(nonce ‖ ciphertext ‖ tag), with a
//! random 96-bit nonce and the key's `kid` as associated data, so a sealed
//! key moved to another row does not open. Anyone who reads the database,
//! or a plaintext PostgreSQL connection, sees no issuer private key; every
//! replica opens them with the authority key it already shares.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use veto_core::SigningKey;

/// The prefix of a sealed key in the store.
const PREFIX: &str = "sealed:v1:";

/// Why a stored issuer key could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not sealed under this authority key, or altered.
    #[error(
        "issuer key `{0}` does not open with this registry's authority key: the database \
         belongs to another authority, or the sealed key was altered"
    )]
    Open(String),
    /// Not in any known form.
    #[error("issuer key `{0}` is stored in an unknown form")]
    Form(String),
    /// The OS gave no randomness for a nonce.
    #[error("no randomness for sealing an issuer key: {0}")]
    Random(String),
}

/// The sealing key.
pub(crate) struct Seal {
    key: LessSafeKey,
}

impl Seal {
    /// Derives the sealing key from the authority key and `iss`.
    pub fn new(authority: &SigningKey, iss: &str) -> Self {
        // The authority's 32-byte seed, via its private JWK (`d`).
        let jwk = authority.to_private_jwk();
        let seed = jwk
            .d
            .as_deref()
            .and_then(|d| URL_SAFE_NO_PAD.decode(d).ok())
            .unwrap_or_default();
        let prk = Salt::new(HKDF_SHA256, b"veto issuer keys at rest v1").extract(&seed);
        let info = [iss.as_bytes()];
        let mut bytes = [0u8; 32];
        #[expect(
            clippy::expect_used,
            reason = "HKDF-SHA256 can always expand to 32 bytes (the limit is 255 * 32)"
        )]
        prk.expand(&info, &AES_256_GCM)
            .expect("32 bytes are within HKDF-SHA256's output limit")
            .fill(&mut bytes)
            .expect("32 bytes are within HKDF-SHA256's output limit");
        #[expect(
            clippy::expect_used,
            reason = "AES-256-GCM takes exactly the 32 bytes just derived"
        )]
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(key),
        }
    }

    /// Seals the private JWK text of issuer key `kid`.
    pub fn seal(&self, kid: &str, jwk: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let mut data = jwk.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Form(kid.to_owned()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens what the store holds for issuer key `kid`: the private JWK
    /// text, and whether it was stored in clear (by a registry before
    /// sealing existed) and must be sealed now.
    pub fn open(&self, kid: &str, stored: &str) -> Result<(String, bool), SealError> {
        if stored.trim_start().starts_with('{') {
            return Ok((stored.to_owned(), true));
        }
        let body = stored
            .strip_prefix(PREFIX)
            .ok_or_else(|| SealError::Form(kid.to_owned()))?;
        let mut raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Form(kid.to_owned()))?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Form(kid.to_owned()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let data = &mut raw[NONCE_LEN..];
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                data,
            )
            .map_err(|_| SealError::Open(kid.to_owned()))?;
        let text =
            String::from_utf8(plain.to_vec()).map_err(|_| SealError::Form(kid.to_owned()))?;
        Ok((text, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_under_their_authority_and_kid() {
        let authority = SigningKey::from_seed(&[1; 32]);
        let seal = Seal::new(&authority, "veto");
        let sealed = seal.seal("kid-a", r#"{"d":"secret"}"#).unwrap();
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("secret"));
        assert_eq!(
            seal.open("kid-a", &sealed).unwrap(),
            (r#"{"d":"secret"}"#.to_owned(), false)
        );
        assert!(matches!(
            seal.open("kid-b", &sealed),
            Err(SealError::Open(_))
        ));
        let other = Seal::new(&SigningKey::from_seed(&[2; 32]), "veto");
        assert!(matches!(
            other.open("kid-a", &sealed),
            Err(SealError::Open(_))
        ));
        let other_iss = Seal::new(&authority, "other");
        assert!(other_iss.open("kid-a", &sealed).is_err());
        // Legacy rows in clear open, flagged for sealing.
        assert!(seal.open("k", r#"{"x":1}"#).unwrap().1);
        assert!(seal.open("k", "sealed:v1:!!").is_err());
        // Two seals of one key differ (random nonces).
        assert_ne!(seal.seal("k", "x").unwrap(), seal.seal("k", "x").unwrap());
    }
}
