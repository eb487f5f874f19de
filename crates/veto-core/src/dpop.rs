//! Proof of possession: DPoP proofs (RFC 9449) made with, and checked
//! against, the holder key a chain's leaf binds (`cnf.jwk`, DESIGN 3.4).
//!
//! A proof is a compact JWS with protected header
//! `{"typ":"dpop+jwt","alg":"EdDSA","jwk":<the holder's public JWK>}` and
//! claims `jti`, `htm`, `htu`, `iat`, `ath` and, when the server asked for
//! one, `nonce`. This module is pure: the time, the expected request and
//! the chain come in; the replay cache and the nonce source live with the
//! caller (the authorizer).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::b64;
use crate::jws::{self, Typ, UnverifiedJws};
use crate::keys::{PublicKey, SigningKey};
use crate::target::{canonical_path, TargetError};
use crate::{Denial, DenyReason};

/// Largest proof accepted, in bytes: a header with an Ed25519 JWK, five
/// short claims, a long `htu` and a nonce fit in well under this.
pub const MAX_PROOF_BYTES: usize = 4096;

/// Longest `jti` accepted, in bytes (veto's own are 22).
pub const MAX_JTI_BYTES: usize = 128;

/// Why a proof was refused. Every message names what was wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PopError {
    /// Not a compact JWS of the proof's shape, or over a size limit.
    #[error("the DPoP proof is not a valid JWS: {0}")]
    Jws(#[from] jws::JwsError),
    /// The header carries no usable public `jwk`.
    #[error("the DPoP proof's header `jwk`: {0}")]
    Jwk(String),
    /// The proof is signed by another key than the leaf's holder key.
    #[error("the DPoP proof is made with key `{presented}`, but the chain's leaf binds `{bound}`")]
    WrongKey {
        /// Thumbprint of the key in the proof's header.
        presented: String,
        /// Thumbprint of the leaf's `cnf.jwk`.
        bound: String,
    },
    /// The claims are not JSON of the proof's shape.
    #[error("the DPoP proof's claims: {0}")]
    Claims(String),
    /// `htm` is not the request's method.
    #[error("the DPoP proof is for method `{proof}`, but the request is `{request}`")]
    Method {
        /// `htm`.
        proof: String,
        /// The request's method.
        request: String,
    },
    /// `htu` is not the request's URI.
    #[error("the DPoP proof is for `{proof}`, but the request is for `{request}`")]
    Uri {
        /// `htu`, canonicalized (or as sent when it cannot be).
        proof: String,
        /// The canonical URI of the request.
        request: String,
    },
    /// `ath` is not the hash of the chain as sent.
    #[error("the DPoP proof's `ath` is not the SHA-256 of the chain sent with it: the proof was made for another credential")]
    Ath,
    /// `iat` is outside the accepted window.
    #[error("the DPoP proof was made at {iat}, outside the accepted window [{from}, {to}] (now {now}); make a fresh proof for every request, with a correct clock")]
    Time {
        /// The proof's `iat`.
        iat: u64,
        /// Earliest accepted `iat`.
        from: u64,
        /// Latest accepted `iat`.
        to: u64,
        /// The verifier's time.
        now: u64,
    },
}

/// What the request a proof must match: the method, the canonical target
/// URI (scheme and authority as the client addressed the server, the
/// canonical path, no query or fragment; see [`canonical_htu`]), the chain
/// exactly as sent, and the time window.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    /// The request method, as sent (`GET`, `POST`, ...).
    pub method: &'a str,
    /// The request's canonical URI, from [`canonical_htu`].
    pub htu: &'a str,
    /// The chain exactly as it appeared after `DPoP ` in `Authorization`.
    pub chain: &'a str,
    /// Now, in Unix seconds.
    pub now: u64,
    /// How old a proof may be, in seconds.
    pub window: u64,
    /// How far in the future `iat` may be (clock skew), in seconds.
    pub skew: u64,
}

/// A proof that verified: what the caller still checks (replay of `jti`,
/// the server nonce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The proof's unique id.
    pub jti: String,
    /// When it was made, Unix seconds.
    pub iat: u64,
    /// The server nonce it carries, if any.
    pub nonce: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: u64,
    ath: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
}

/// The scheme of the `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer` (RFC 6750).
    Bearer,
    /// `DPoP` (RFC 9449 7.1).
    Dpop,
}

/// The credential a request presents: the chain, how it was sent, and
/// the proof that came with it.
#[derive(Clone, Copy, Debug)]
pub struct Credential<'a> {
    /// The `Authorization` scheme.
    pub scheme: Scheme,
    /// The chain exactly as sent.
    pub chain: &'a str,
    /// The `DPoP` header, if any.
    pub proof: Option<&'a str>,
}

/// A header value as text, when it is visible ASCII (and tabs), as
/// RFC 9110 5.5 field values that carry tokens are.
fn visible(value: &[u8]) -> Option<&str> {
    // One pass without an early exit, so it runs over whole vectors: a
    // credential is checked on every request.
    let ok = value.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | (0x20..0x7f).contains(&b))
    });
    if ok {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Whether `text` holds any of the bytes `a` or `b` (one pass, no early
/// exit, as [`visible`]).
fn holds_either(text: &str, a: u8, b: u8) -> bool {
    text.bytes()
        .fold(false, |seen, c| seen | (c == a) | (c == b))
}

/// The one credential of a request, from every value of its
/// `Authorization` header (`authorization`) and of its `DPoP` header
/// (`proofs`), or why there is not exactly one.
///
/// The chain comes from exactly one `Authorization` header with the
/// `Bearer` (RFC 6750) or `DPoP` (RFC 9449 7.1) scheme, case-insensitive;
/// the proof from at most one `DPoP` header. More than one credential is
/// refused rather than decided on one of them: two `Authorization` headers
/// (even identical, even with the second empty), one holding a
/// comma-joined second credential (a chain never contains `,`), or two
/// `DPoP` headers (`pop_invalid`, RFC 9449 4.3). Errors are `malformed`
/// unless they are about the proof.
pub fn credential<'a>(
    authorization: &[&'a [u8]],
    proofs: &[&'a [u8]],
) -> Result<Credential<'a>, Denial> {
    let malformed = |m: &str| Denial::new(DenyReason::Malformed, m);
    const SHAPE: &str = "`Authorization` must be `DPoP <chain>` (or `Bearer <chain>` where proofs are not required)";
    let value = match authorization {
        [] => {
            return Err(malformed(
                "missing `Authorization: DPoP <chain>` and its `DPoP` proof",
            ))
        }
        [one] => *one,
        more => {
            return Err(malformed(&format!(
                "more than one credential: {} `Authorization` headers; send exactly one",
                more.len()
            )))
        }
    };
    let value = visible(value)
        .ok_or_else(|| malformed("the `Authorization` header is not visible ASCII"))?;
    let Some((scheme, chain)) = value.trim().split_once(' ') else {
        return Err(malformed(SHAPE));
    };
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(malformed(SHAPE));
    };
    let chain = chain.trim();
    if chain.contains(',') {
        return Err(malformed(
            "more than one credential in one `Authorization` header (`,`); send exactly one",
        ));
    }
    if chain.is_empty() {
        return Err(malformed(SHAPE));
    }
    let proof = match proofs {
        [] => None,
        [one] => {
            let p = visible(one)
                .map(str::trim)
                .filter(|v| !v.is_empty() && !holds_either(v, b',', b' '));
            Some(p.ok_or_else(|| {
                Denial::new(
                    DenyReason::PopInvalid,
                    "the `DPoP` header is not one compact JWS (visible ASCII, no `,` or space)",
                )
            })?)
        }
        _ => {
            return Err(Denial::new(
                DenyReason::PopInvalid,
                "more than one `DPoP` header: send exactly one proof",
            ))
        }
    };
    Ok(Credential {
        scheme,
        chain,
        proof,
    })
}

/// The public key a proof's header names (`jwk`), not yet checked against
/// anything: for a verifier that accepts the key of any of several links
/// (the registry's holder revocation), to pick which one to verify with.
pub fn presented_key(proof: &str) -> Result<PublicKey, PopError> {
    let jws = UnverifiedJws::parse(proof, MAX_PROOF_BYTES)?;
    PublicKey::from_jwk(public_jwk(&jws)?).map_err(|e| PopError::Jwk(e.to_string()))
}

/// A proof's `typ` (`dpop+jwt`) and the public `jwk` of its header.
fn public_jwk<'a>(jws: &'a UnverifiedJws<'_>) -> Result<&'a crate::keys::Jwk, PopError> {
    jws.expect_typ(Typ::Dpop)?;
    let jwk = jws.header().jwk.as_ref().ok_or_else(|| {
        PopError::Jwk("missing: the proof must carry the holder's public key".into())
    })?;
    if jwk.d.is_some() {
        return Err(PopError::Jwk(
            "it holds a private key (`d`): send only the public key".into(),
        ));
    }
    Ok(jwk)
}

/// `ath`: base64url(SHA-256(chain)) over the chain's ASCII bytes (RFC 9449 4.2).
pub fn ath(chain: &str) -> String {
    b64::encode(&Sha256::digest(chain.as_bytes()))
}

/// Verifies `proof` for a request whose chain's leaf binds `holder`.
///
/// In order: size and JWS structure, `typ` `dpop+jwt` and `alg` `EdDSA`,
/// a public Ed25519 `jwk` in the header equal to `holder`, the signature,
/// then the claims: `htm`, `htu`, `ath`, `iat` within
/// `[now - window, now + skew]`. Replay and nonce are the caller's.
pub fn verify(proof: &str, holder: &PublicKey, expected: &Expected<'_>) -> Result<Proof, PopError> {
    let jws = UnverifiedJws::parse(proof, MAX_PROOF_BYTES)?;
    let jwk = public_jwk(&jws)?;
    if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return Err(PopError::Jwk(format!(
            "`kty` must be `OKP` and `crv` `Ed25519`, found `{}`/`{}`",
            jwk.kty, jwk.crv
        )));
    }
    // Compared as bytes with the leaf's key, already decoded and checked:
    // no point decompression per request.
    let x = b64::decode_array::<32>(&jwk.x)
        .ok_or_else(|| PopError::Jwk("`x` is not 32 bytes of unpadded base64url".into()))?;
    if x != *holder.as_bytes() {
        return Err(PopError::WrongKey {
            presented: crate::keys::thumbprint(&jwk.x),
            bound: holder.kid().to_owned(),
        });
    }
    jws.verify_with(holder)?;
    let payload = jws.payload_unverified()?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|e| PopError::Claims(e.to_string()))?;
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_BYTES {
        return Err(PopError::Claims(format!(
            "`jti` must be 1 to {MAX_JTI_BYTES} bytes"
        )));
    }
    if claims.htm != expected.method {
        return Err(PopError::Method {
            proof: claims.htm,
            request: expected.method.to_owned(),
        });
    }
    match canonical_htu(&claims.htu) {
        Ok(htu) if htu == expected.htu => {}
        Ok(htu) => {
            return Err(PopError::Uri {
                proof: htu,
                request: expected.htu.to_owned(),
            })
        }
        Err(e) => return Err(PopError::Claims(format!("`htu`: {e}"))),
    }
    if claims.ath != ath(expected.chain) {
        return Err(PopError::Ath);
    }
    let from = expected.now.saturating_sub(expected.window);
    let to = expected.now.saturating_add(expected.skew);
    if claims.iat < from || claims.iat > to {
        return Err(PopError::Time {
            iat: claims.iat,
            from,
            to,
            now: expected.now,
        });
    }
    Ok(Proof {
        jti: claims.jti,
        iat: claims.iat,
        nonce: claims.nonce,
    })
}

/// What a client puts in a proof besides its key.
#[derive(Clone, Debug)]
pub struct ProofSpec<'a> {
    /// The request method.
    pub method: &'a str,
    /// The request URL; its query and fragment are dropped for `htu`.
    pub url: &'a str,
    /// The chain exactly as it will be sent after `DPoP `.
    pub chain: &'a str,
    /// Now, Unix seconds.
    pub iat: u64,
    /// The server's last `DPoP-Nonce`, if it sent one.
    pub nonce: Option<&'a str>,
}

/// Makes a proof with `holder` (the leaf's holder private key), with a
/// fresh random `jti`. Errors only when the OS has no randomness.
pub fn make(holder: &SigningKey, spec: &ProofSpec<'_>) -> Result<String, crate::WarrantError> {
    let htu = spec
        .url
        .split(['?', '#'])
        .next()
        .unwrap_or(spec.url)
        .to_owned();
    let claims = Claims {
        jti: crate::warrant::new_jti()?,
        htm: spec.method.to_owned(),
        htu,
        iat: spec.iat,
        ath: ath(spec.chain),
        nonce: spec.nonce.map(str::to_owned),
    };
    let header = format!(
        r#"{{"typ":"{}","alg":"EdDSA","jwk":{}}}"#,
        Typ::Dpop.as_str(),
        holder.public().to_jwk().to_json()
    );
    Ok(jws::sign_with_header(
        &header,
        holder,
        &crate::json::payload_bytes(&claims),
    ))
}

/// Why a URI is not a usable `htu`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HtuError {
    /// Not `http://` or `https://` with an authority.
    #[error("`{0}` is not an absolute http(s) URI")]
    NotAbsolute(String),
    /// The authority has user information, or an empty or invalid host or port.
    #[error("invalid authority `{0}`")]
    Authority(String),
    /// The path is not in a form the authorizer accepts.
    #[error("{0}")]
    Path(#[from] TargetError),
}

/// The canonical form of a request URI for `htu` comparison (RFC 9449
/// 4.3, RFC 3986 6.2.2–6.2.3): scheme and host lowercased, the default
/// port (80 for http, 443 for https) dropped, the path in the authorizer's
/// one canonical form ([`canonical_path`]; empty becomes `/`), query and
/// fragment dropped. The proxy builds the request's side the same way from
/// the scheme and authority it was addressed with.
pub fn canonical_htu(uri: &str) -> Result<String, HtuError> {
    let not_absolute = || HtuError::NotAbsolute(uri.chars().take(128).collect());
    let (scheme, rest) = uri.split_once("://").ok_or_else(not_absolute)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return Err(not_absolute()),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let authority = canonical_authority(authority, default_port)?;
    Ok(format!("{scheme}://{authority}{}", canonical_path(path)?))
}

/// `host[:port]` lowercased, the default port dropped; user information,
/// an empty host, a non-numeric or empty port are refused.
pub fn canonical_authority(authority: &str, default_port: &str) -> Result<String, HtuError> {
    let bad = || HtuError::Authority(authority.chars().take(128).collect());
    if authority.is_empty()
        || authority.contains('@')
        || !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b))
    {
        return Err(bad());
    }
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err(bad());
    }
    let host = host.to_ascii_lowercase();
    match port {
        None => Ok(host),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => {
                if n.to_string() == default_port {
                    Ok(host)
                } else {
                    Ok(format!("{host}:{n}"))
                }
            }
            _ => Err(bad()),
        },
    }
}

/// Why [`ReplayCache::insert`] refused a proof.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// This proof was seen within its window.
    Seen,
    /// The byte budget is used up by proofs still inside their window.
    Full,
}

const SHARDS: usize = 16;

/// Bytes one remembered proof is charged: its 16-byte key in a hash set
/// (with the table's slack) and in the expiry queue, rounded up.
pub const ENTRY_BYTES: usize = 96;

/// Proofs seen within their window (RFC 9449 11.1), keyed by a 128-bit
/// SHA-256 digest of (holder thumbprint, `jti`), in 16 shards; time is
/// passed in. Memory is bounded by a byte
/// budget; when it is used up, new proofs are refused (never are old ones
/// forgotten early, which would let them be replayed).
pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    budget: usize,
}

#[derive(Default)]
struct Shard {
    seen: HashSet<u128>,
    /// (forget after, key), in insertion order.
    order: VecDeque<(u64, u128)>,
}

impl ReplayCache {
    /// A cache of at most `budget` bytes (charged [`ENTRY_BYTES`] a proof).
    pub fn new(budget: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (budget / ENTRY_BYTES / SHARDS).max(1),
            budget,
        }
    }

    /// Records `(kid, jti)` as used until `until` (Unix seconds), or
    /// refuses it when it was used already or there is no room.
    pub fn insert(&self, kid: &str, jti: &str, now: u64, until: u64) -> Result<(), ReplayError> {
        let mut h = Sha256::new();
        h.update(kid.as_bytes());
        h.update([0]);
        h.update(jti.as_bytes());
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        let key = u128::from_le_bytes(key);
        let shard = &self.shards[(key % SHARDS as u128) as usize];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(t, k)) = shard.order.front() {
            if t > now {
                break;
            }
            shard.order.pop_front();
            shard.seen.remove(&k);
        }
        if shard.seen.contains(&key) {
            return Err(ReplayError::Seen);
        }
        if shard.seen.len() >= self.per_shard {
            return Err(ReplayError::Full);
        }
        shard.seen.insert(key);
        shard.order.push_back((until, key));
        Ok(())
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).seen.len() * ENTRY_BYTES)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[7; 32])
    }

    fn expected<'a>(htu: &'a str, chain: &'a str, now: u64) -> Expected<'a> {
        Expected {
            method: "GET",
            htu,
            chain,
            now,
            window: 30,
            skew: 5,
        }
    }

    fn proof(method: &str, url: &str, chain: &str, iat: u64) -> String {
        make(
            &key(),
            &ProofSpec {
                method,
                url,
                chain,
                iat,
                nonce: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_proof_verifies_for_its_request_only() {
        let htu = canonical_htu("http://proxy.example:8080/orders/7").unwrap();
        let p = proof("GET", "http://Proxy.Example:8080/orders/./7?x=1", "c", 1000);
        let ok = verify(&p, key().public(), &expected(&htu, "c", 1000)).unwrap();
        assert_eq!(ok.iat, 1000);
        assert_eq!(ok.jti.len(), 22);

        let mut post = expected(&htu, "c", 1000);
        post.method = "POST";
        assert!(matches!(
            verify(&p, key().public(), &post),
            Err(PopError::Method { .. })
        ));
        let other = canonical_htu("http://proxy.example:8080/orders/8").unwrap();
        assert!(matches!(
            verify(&p, key().public(), &expected(&other, "c", 1000)),
            Err(PopError::Uri { .. })
        ));
        assert_eq!(
            verify(&p, key().public(), &expected(&htu, "c2", 1000)),
            Err(PopError::Ath)
        );
        assert!(matches!(
            verify(&p, key().public(), &expected(&htu, "c", 1031)),
            Err(PopError::Time { .. })
        ));
        assert!(matches!(
            verify(&p, key().public(), &expected(&htu, "c", 994)),
            Err(PopError::Time { .. })
        ));
        let stranger = SigningKey::from_seed(&[8; 32]);
        assert!(matches!(
            verify(&p, stranger.public(), &expected(&htu, "c", 1000)),
            Err(PopError::WrongKey { .. })
        ));
    }

    #[test]
    fn a_proof_with_a_swapped_key_or_type_is_refused() {
        let htu = "http://h/";
        let p = proof("GET", htu, "c", 10);
        let (_, rest) = p.split_once('.').unwrap();
        let stranger = SigningKey::from_seed(&[9; 32]);
        // The stranger's key in the header, the holder's signature.
        let h = b64::encode(
            format!(
                r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{}}}"#,
                stranger.public().to_jwk().to_json()
            )
            .as_bytes(),
        );
        let forged = format!("{h}.{rest}");
        assert!(matches!(
            verify(&forged, stranger.public(), &expected(htu, "c", 10)),
            Err(PopError::Jws(jws::JwsError::BadSignature))
        ));
        let warrant = jws::sign(Typ::Warrant, &key(), b"{}");
        assert!(matches!(
            verify(&warrant, key().public(), &expected(htu, "c", 10)),
            Err(PopError::Jws(jws::JwsError::Typ { .. }))
        ));
        let private = format!(
            r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{}}}"#,
            key().to_private_jwk().to_json()
        );
        let leaked = jws::sign_with_header(&private, &key(), b"{}");
        assert!(matches!(
            verify(&leaked, key().public(), &expected(htu, "c", 10)),
            Err(PopError::Jwk(_))
        ));
    }

    #[test]
    fn a_proof_is_refused_twice_until_it_ages_out() {
        let c = ReplayCache::new(1 << 20);
        assert_eq!(c.insert("k", "j", 100, 131), Ok(()));
        assert_eq!(c.insert("k", "j", 120, 151), Err(ReplayError::Seen));
        // Another holder's proof with the same `jti` is another proof.
        assert_eq!(c.insert("k2", "j", 120, 151), Ok(()));
        assert_eq!(c.insert("k", "j", 131, 162), Ok(()));
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgets() {
        let c = ReplayCache::new(ENTRY_BYTES * SHARDS);
        let mut refused = 0;
        for i in 0..200 {
            if c.insert("k", &i.to_string(), 10, 40) == Err(ReplayError::Full) {
                refused += 1;
            }
        }
        assert!(refused >= 200 - SHARDS, "refused {refused}");
        assert!(c.bytes() <= ENTRY_BYTES * SHARDS);
        // Every proof it did take is still refused as a replay.
        let kept: Vec<_> = (0..200)
            .filter(|i| c.insert("k", &i.to_string(), 10, 40) == Err(ReplayError::Seen))
            .collect();
        assert_eq!(kept.len(), c.bytes() / ENTRY_BYTES);
        // Once they age out there is room again.
        assert_eq!(c.insert("k", "new", 41, 70), Ok(()));
    }

    #[test]
    fn htu_forms() {
        for (given, want) in [
            ("http://A.example/x", "http://a.example/x"),
            ("HTTPS://a.example:443/x?q#f", "https://a.example/x"),
            ("http://a.example:80", "http://a.example/"),
            ("http://a.example:8080/%7Ex", "http://a.example:8080/~x"),
            ("http://127.0.0.1:08080/a/../b", "http://127.0.0.1:8080/b"),
            ("http://[::1]:8080/", "http://[::1]:8080/"),
        ] {
            assert_eq!(canonical_htu(given).unwrap(), want, "{given}");
        }
        for bad in [
            "ftp://a/",
            "/x",
            "http:///x",
            "http://u@a/x",
            "http://a:x/",
            "http://a:/",
            "http://a/%2e%2e/x",
            "http://a/b%2Fc",
        ] {
            assert!(canonical_htu(bad).is_err(), "{bad}");
        }
    }
}
