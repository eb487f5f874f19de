//! Proof of possession on every request (DPoP, RFC 9449; DESIGN 3.4): the
//! policy, the credential a request presents, the replay cache and the
//! server nonces. The proof itself is checked by [`veto_core::dpop`].

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use veto_core::dpop::{self, Credential, Expected, ReplayCache, ReplayError, Scheme};
use veto_core::{Denial, DenyReason, ParsedChain};

/// Whether requests must prove their holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PopPolicy {
    /// Every request carries `Authorization: DPoP <chain>` and a valid
    /// `DPoP` proof by the leaf's holder key (the default). `Bearer` and
    /// chains whose leaf binds no key are refused (`pop_required`).
    #[default]
    Required,
    /// A `DPoP` request must carry a valid proof; a `Bearer` request with
    /// no proof is decided as a bearer token.
    Optional,
    /// Proofs are not checked: every chain is a bearer token.
    Off,
}

impl PopPolicy {
    /// `required`, `optional` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            PopPolicy::Required => "required",
            PopPolicy::Optional => "optional",
            PopPolicy::Off => "off",
        }
    }
}

impl fmt::Display for PopPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PopPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "required" => Ok(PopPolicy::Required),
            "optional" => Ok(PopPolicy::Optional),
            "off" => Ok(PopPolicy::Off),
            other => Err(format!(
                "unknown proof-of-possession policy `{other}`: expected `required`, `optional` or `off`"
            )),
        }
    }
}

/// Proof-of-possession settings.
#[derive(Clone, Debug)]
pub struct PopConfig {
    /// The policy (default `required`).
    pub policy: PopPolicy,
    /// How old a proof's `iat` may be, in seconds (default 30; a proof
    /// may also be up to the check's clock skew in the future).
    pub window: u64,
    /// Byte budget of the replay cache (default 64 MiB, about 700,000
    /// proofs: 20,000 new proofs a second with the default window). When
    /// it is full, proofs are refused until old ones age out: the cache
    /// never forgets a proof inside its window.
    pub replay_bytes: usize,
    /// Require a server nonce (`DPoP-Nonce`, RFC 9449 8) in every proof.
    pub nonce: bool,
}

impl Default for PopConfig {
    fn default() -> Self {
        Self {
            policy: PopPolicy::Required,
            window: 30,
            replay_bytes: 64 << 20,
            nonce: false,
        }
    }
}

/// A request to decide: the credential, the method and canonical URI the
/// proof must name, and the action asked for.
#[derive(Clone, Copy, Debug)]
pub struct Presented<'a> {
    /// What the request carries.
    pub credential: Credential<'a>,
    /// The request method as sent.
    pub method: &'a str,
    /// The request's canonical URI (`scheme://authority/path`, built with
    /// [`veto_core::dpop::canonical_htu`] or from the same parts).
    pub htu: &'a str,
    /// The action, such as `http:GET:/orders/7`.
    pub action: &'a str,
}

/// The RFC 9449 7.1 / RFC 6750 3.1 `error` of a refused proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopErrorCode {
    /// No proof, or a chain that cannot be proved.
    InvalidToken,
    /// The proof is invalid or replayed.
    InvalidDpopProof,
    /// The proof lacks the server's current nonce.
    UseDpopNonce,
}

impl PopErrorCode {
    /// The `error` parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PopErrorCode::InvalidToken => "invalid_token",
            PopErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            PopErrorCode::UseDpopNonce => "use_dpop_nonce",
        }
    }
}

/// A valid proof not yet spent: the holder key's thumbprint, the proof's
/// `jti`, and until when it must be remembered.
#[derive(Debug)]
pub(crate) struct Proven {
    pub kid: String,
    jti: String,
    until: u64,
}

/// A refused proof: the denial and its RFC 9449 error.
pub(crate) type Refused = (Denial, PopErrorCode);

/// Checks proofs: the policy, the replay cache and the nonces.
pub(crate) struct Prover {
    config: PopConfig,
    skew: u64,
    replay: ReplayCache,
    nonces: Nonces,
}

impl Prover {
    pub fn new(config: PopConfig, skew: u64) -> Result<Self, String> {
        let replay = ReplayCache::new(config.replay_bytes);
        let nonces = Nonces::new(config.window.max(1))?;
        Ok(Self {
            config,
            skew,
            replay,
            nonces,
        })
    }

    pub fn config(&self) -> &PopConfig {
        &self.config
    }

    /// The nonce to send now, when nonces are on.
    pub fn nonce(&self, now: u64) -> Option<String> {
        self.config.nonce.then(|| self.nonces.current(now))
    }

    pub fn replay_bytes(&self) -> usize {
        self.replay.bytes()
    }

    /// The proof-of-possession step for `chain` (parsed, not yet
    /// verified): `Ok(Some(proof))` when the proof by the leaf's key is
    /// valid (to be [`Prover::spend`]t once the chain verifies),
    /// `Ok(None)` when the policy let the request through without a proof.
    pub fn prove(
        &self,
        chain: &ParsedChain,
        req: &Presented<'_>,
        now: u64,
    ) -> Result<Option<Proven>, Refused> {
        let required = |m: &str| {
            (
                Denial::new(DenyReason::PopRequired, m),
                PopErrorCode::InvalidToken,
            )
        };
        let invalid = |m: String| {
            (
                Denial::new(DenyReason::PopInvalid, m),
                PopErrorCode::InvalidDpopProof,
            )
        };
        let cred = req.credential;
        let proof =
            match (self.config.policy, cred.scheme, cred.proof) {
                (PopPolicy::Off, _, _) | (PopPolicy::Optional, Scheme::Bearer, None) => {
                    return Ok(None)
                }
                (PopPolicy::Required, Scheme::Bearer, _) => return Err(required(
                    "a bearer chain is refused here: send `Authorization: DPoP <chain>` with a \
                     `DPoP` proof made by the leaf's holder key (`veto request` does both)",
                )),
                (PopPolicy::Optional, Scheme::Bearer, Some(_)) => {
                    return Err(invalid(
                        "a `DPoP` proof came with `Authorization: Bearer`: send the chain as \
                     `Authorization: DPoP <chain>`"
                            .into(),
                    ))
                }
                (_, Scheme::Dpop, None) => {
                    return Err(required(
                        "`Authorization: DPoP` without a `DPoP` header: add a proof made by the \
                     leaf's holder key for this method and URL",
                    ))
                }
                (_, Scheme::Dpop, Some(p)) => p,
            };
        let Some(holder) = chain.leaf().holder() else {
            return Err(required(
                "the chain's leaf binds no holder key (`cnf.jwk`), so nobody can prove holding \
                 it: issue or delegate it with a holder key",
            ));
        };
        let expected = Expected {
            method: req.method,
            htu: req.htu,
            chain: cred.chain,
            now,
            window: self.config.window,
            skew: self.skew,
        };
        let verified =
            dpop::verify(proof, holder, &expected).map_err(|e| invalid(e.to_string()))?;
        if self.config.nonce {
            match verified.nonce.as_deref() {
                Some(n) if self.nonces.accepts(n, now) => {}
                Some(_) => {
                    return Err((
                        Denial::new(
                            DenyReason::PopInvalid,
                            "the DPoP proof's `nonce` is not one this server issued recently: \
                             make a new proof with the `DPoP-Nonce` of this response",
                        ),
                        PopErrorCode::UseDpopNonce,
                    ))
                }
                None => {
                    return Err((
                        Denial::new(
                            DenyReason::PopInvalid,
                            "this server requires a `nonce` in DPoP proofs: make a new proof \
                             with the `DPoP-Nonce` of this response",
                        ),
                        PopErrorCode::UseDpopNonce,
                    ))
                }
            }
        }
        // Remembered until the proof can no longer pass the `iat` check.
        let until = verified
            .iat
            .saturating_add(self.config.window)
            .max(now)
            .saturating_add(1);
        Ok(Some(Proven {
            kid: holder.kid().to_owned(),
            jti: verified.jti,
            until,
        }))
    }

    /// Spends a proof in the replay cache: only once the chain's
    /// signatures verified, so a forged chain with a proof by the
    /// attacker's own key cannot fill the cache and lock holders out.
    pub fn spend(&self, proven: &Proven, now: u64) -> Result<(), Refused> {
        let invalid = |m: String| {
            (
                Denial::new(DenyReason::PopInvalid, m),
                PopErrorCode::InvalidDpopProof,
            )
        };
        match self
            .replay
            .insert(&proven.kid, &proven.jti, now, proven.until)
        {
            Ok(()) => Ok(()),
            Err(ReplayError::Seen) => Err(invalid(format!(
                "the DPoP proof `{}` was already used: make a fresh proof for every request",
                proven.jti
            ))),
            Err(ReplayError::Full) => Err(invalid(format!(
                "the replay cache is full ({} bytes): proofs are refused until older ones age \
                 out; retry shortly (operators: raise --pop-replay-bytes or shorten --pop-window)",
                self.replay.budget()
            ))),
        }
    }
}

/// Server nonces (RFC 9449 8) without server state: a nonce is the period
/// number and a 128-bit tag over it under a random secret; the current
/// and the previous period's nonces are accepted.
struct Nonces {
    secret: [u8; 32],
    period: u64,
}

impl Nonces {
    fn new(period: u64) -> Result<Self, String> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| format!("no randomness for the DPoP nonce secret: {e}"))?;
        Ok(Self { secret, period })
    }

    fn for_period(&self, n: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(n.to_be_bytes());
        let tag = h.finalize();
        format!("{n:x}.{}", hex(&tag[..16]))
    }

    fn current(&self, now: u64) -> String {
        self.for_period(now / self.period)
    }

    fn accepts(&self, nonce: &str, now: u64) -> bool {
        let n = now / self.period;
        // Nonces are public (sent in the clear to every client): a plain
        // comparison leaks nothing.
        [n, n.saturating_sub(1)]
            .iter()
            .any(|&p| self.for_period(p) == nonce)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_last_two_periods() {
        let n = Nonces::new(30).unwrap();
        let now = 1_000_000;
        let current = n.current(now);
        assert!(n.accepts(&current, now));
        assert!(n.accepts(&current, now + 30));
        assert!(!n.accepts(&current, now + 60));
        assert!(!n.accepts("0.00", now));
        let other = Nonces::new(30).unwrap();
        assert!(!other.accepts(&current, now));
    }
}
