//! The admin token that guards the admin API: where it comes from, how
//! strong it must be, and the constant-time check of a presented one.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use veto_core::keyfile;

use crate::config::Config;
use crate::error::{io_err, RegistryError};

/// Fewest characters an admin token may have: 32 characters of base64 or
/// hex from a random source carry at least 128 bits.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// Least strength an admin token must show by its text (see
/// [`check_admin_token`]): a random 32-character hex token shows about 122
/// bits, a random 32-character base64 one about 147, `12345678` repeated
/// four times 24.
pub const MIN_ADMIN_TOKEN_BITS: f64 = 100.0;

/// The admin token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub(crate) struct AdminToken {
    digest: [u8; 32],
    /// Where it is, when it was generated into (or read from) a file.
    path: Option<PathBuf>,
}

impl AdminToken {
    /// The configured token (`VETO_ADMIN_TOKEN`), or the one in
    /// `<data_dir>/admin.token`, generated there (mode 0600) on first
    /// start. Either is held to [`check_admin_token`].
    pub(crate) fn load(config: &Config) -> Result<Self, RegistryError> {
        Self::load_secret(
            config.admin_token.as_deref(),
            "VETO_ADMIN_TOKEN",
            &config.data_dir.join("admin.token"),
        )
    }

    /// The fleet enrolment token (`VETO_FLEET_TOKEN`), or the one in
    /// `<data_dir>/fleet.token`, generated there (mode 0600) on first
    /// start; held to [`check_admin_token`] like the admin token.
    pub(crate) fn load_fleet(config: &Config) -> Result<Self, RegistryError> {
        Self::load_secret(
            config.fleet_token.as_deref(),
            "VETO_FLEET_TOKEN",
            &config.data_dir.join("fleet.token"),
        )
    }

    /// `given` (from the variable `var`), or the token in `file`,
    /// generated there (mode 0600) when it does not exist.
    fn load_secret(given: Option<&str>, var: &str, file: &Path) -> Result<Self, RegistryError> {
        let (token, path) = match given {
            Some(t) => {
                check_admin_token(t, var)?;
                (t.to_owned(), None)
            }
            None => {
                if !file.exists() {
                    keyfile::write_new(file, random_token()?.as_bytes(), true)?;
                }
                let t = std::fs::read_to_string(file).map_err(io_err(file))?;
                let t = t.trim().to_owned();
                // A file written by hand is held to the same rule; the path
                // goes to the operator only, never to a client.
                check_admin_token(&t, &format!("in `{}`", file.display()))?;
                (t, Some(file.to_path_buf()))
            }
        };
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
            path,
        })
    }

    /// Where the token is, when it lives in a file.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether `given` is the token. Compares digests in constant time: no
    /// early exit on the first differing byte.
    pub(crate) fn matches(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let diff = digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }
}

/// 32 random bytes, base64url: a new admin token.
fn random_token() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| RegistryError::Random(e.to_string()))?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Refuses an admin token that cannot be sent or is easy to guess: it must
/// be at least [`MIN_ADMIN_TOKEN_CHARS`] visible ASCII characters (what a
/// bearer header can carry) and show at least [`MIN_ADMIN_TOKEN_BITS`]
/// (so `aaaa…`, `0000…` and short patterns repeated are refused). `source`
/// names where it came from; the message never repeats the token.
pub fn check_admin_token(token: &str, source: &str) -> Result<(), RegistryError> {
    const MAKE: &str = "generate one with `head -c 32 /dev/urandom | base64`";
    let len = token.chars().count();
    let problem = if len < MIN_ADMIN_TOKEN_CHARS {
        format!("is {len} characters, fewer than the {MIN_ADMIN_TOKEN_CHARS} required")
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "holds a space, a control or a non-ASCII character, which an `Authorization: Bearer` header cannot carry".to_owned()
    } else if strength_bits(token) < MIN_ADMIN_TOKEN_BITS {
        format!("shows under {MIN_ADMIN_TOKEN_BITS} bits (its length, counting one period of a repeated pattern, times log2 of its distinct characters): it is not random")
    } else {
        return Ok(());
    };
    Err(RegistryError::WeakAdminToken(format!(
        "the admin token ({source}) {problem}: {MAKE}"
    )))
}

/// A token's strength as far as its text shows: the length of its
/// shortest repeating period times log2 of the distinct characters in it
/// (`12345678` four times counts as 8 characters of 8 symbols, 24 bits).
fn strength_bits(token: &str) -> f64 {
    let b = token.as_bytes();
    let period = (1..=b.len())
        .find(|&p| b.len() % p == 0 && b.chunks(p).all(|c| c == &b[..p]))
        .unwrap_or(b.len());
    let distinct = b.iter().collect::<std::collections::HashSet<_>>().len();
    period as f64 * (distinct.max(1) as f64).log2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_tokens_are_refused_and_random_ones_pass() {
        for weak in [
            "12345678123456781234567812345678",
            "abcdefghabcdefghabcdefghabcdefgh",
            &"a".repeat(44),
            &"ab".repeat(20),
            "11112222333344445555666677778888",
        ] {
            assert!(check_admin_token(weak, "test").is_err(), "{weak}");
        }
        for strong in [
            "3f9a1c0e7b2d4a6f8e1c3b5d7a9f0e2c",
            "Zq3mP0x9T2rW8kL5vN1bC7yH4jF6dS0a",
            "QWxhZGRpbjpvcGVuIHNlc2FtZSBhbmQgbW9yZSByYW5kb20",
        ] {
            assert!(check_admin_token(strong, "test").is_ok(), "{strong}");
        }
    }

    #[test]
    fn only_the_token_matches() {
        let token = AdminToken {
            digest: Sha256::digest(b"Zq3mP0x9T2rW8kL5vN1bC7yH4jF6dS0a").into(),
            path: None,
        };
        assert!(token.matches("Zq3mP0x9T2rW8kL5vN1bC7yH4jF6dS0a"));
        assert!(!token.matches("Zq3mP0x9T2rW8kL5vN1bC7yH4jF6dS0b"));
        assert!(!token.matches(""));
    }
}

/// What a named API token may do (DESIGN 5). The bootstrap admin token
/// may do everything, and alone manages tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `POST /v1/revocations`.
    Revoke,
    /// `POST /v1/warrants`.
    Mint,
    /// `GET /v1/revocations` (the audit log).
    Audit,
    /// `/v1/issuer-keys`: list, add, retire.
    Keys,
    /// The fleet view (reserved for gateway receipts).
    Fleet,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::Revoke,
        Scope::Mint,
        Scope::Audit,
        Scope::Keys,
        Scope::Fleet,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Revoke => "revoke",
            Scope::Mint => "mint",
            Scope::Audit => "audit",
            Scope::Keys => "keys",
            Scope::Fleet => "fleet",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Who an admin request is from: the bootstrap token (`admin`) or a named
/// token and its scopes. Its name is the audit log's actor.
#[derive(Clone, Debug)]
pub(crate) struct Principal {
    pub name: String,
    scopes: Vec<Scope>,
    bootstrap: bool,
}

impl Principal {
    /// The bootstrap admin token's principal.
    pub fn bootstrap() -> Self {
        Self {
            name: "admin".into(),
            scopes: Scope::ALL.to_vec(),
            bootstrap: true,
        }
    }

    /// Whether it may act in `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.bootstrap || self.scopes.contains(&scope)
    }

    /// Whether it is the bootstrap admin token (token management).
    pub fn is_bootstrap(&self) -> bool {
        self.bootstrap
    }
}

/// The live named tokens, by the SHA-256 of the token: read from the
/// store at start, after each change here, and every few seconds (so a
/// token created or revoked at another replica takes effect here too).
#[derive(Default)]
pub(crate) struct Tokens {
    by_digest: std::sync::RwLock<std::collections::HashMap<[u8; 32], Principal>>,
}

impl Tokens {
    /// Replaces the table with the live tokens of `rows`.
    pub fn load(&self, rows: &[crate::store::TokenRow]) {
        let mut map = std::collections::HashMap::new();
        for r in rows.iter().filter(|r| r.revoked_at.is_none()) {
            let Some(digest) = from_hex(&r.digest) else {
                tracing::warn!(name = %r.name, "a stored API token has an unreadable digest: ignored");
                continue;
            };
            let scopes = r.scopes.split(',').filter_map(Scope::parse).collect();
            map.insert(
                digest,
                Principal {
                    name: r.name.clone(),
                    scopes,
                    bootstrap: false,
                },
            );
        }
        *self.by_digest.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The named token `given` is, if it is one.
    pub fn find(&self, given: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        self.by_digest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned()
    }
}

/// A new random token and its SHA-256 digest in lowercase hex.
pub(crate) fn new_token() -> Result<(String, String), RegistryError> {
    let token = random_token()?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    Ok((token, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
