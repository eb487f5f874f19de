//! Holders revoke what they delegated (DESIGN 5): `POST
//! /v1/revocations/delegated`, authenticated by a DPoP proof (RFC 9449)
//! instead of the admin token. The chain and the link to revoke come with
//! the request; the proof's key must be bound (`cnf.jwk`) by that link or
//! by one of its ancestors: an orchestrator revokes a sub-agent it
//! delegated to, an agent surrenders its own credential, and nobody
//! revokes a sibling's or an ancestor's link.

use std::collections::HashMap;
use std::sync::Mutex;

use veto_core::dpop::{self, Credential, Expected, ReplayCache, ReplayError, Scheme};
use veto_core::wire::ErrorCode;
use veto_core::{CheckConfig, Checker, KeySet, ParsedChain, PublicKey};

use crate::refusal::{err, Refusal};

/// How old a proof may be, in seconds (RFC 9449 11.1).
pub(crate) const WINDOW: u64 = 30;
/// How far ahead a proof's `iat` may be, in seconds.
const SKEW: u64 = 5;
/// Byte budget of the registry's proof replay cache.
const REPLAY_BYTES: usize = 16 << 20;
/// Revocations one holder key may ask for in a minute.
pub(crate) const PER_MINUTE: u32 = 30;
/// Holder keys tracked by the rate limit at once; when it is full of
/// holders still inside their minute, new holders are refused (429), never
/// forgotten early.
const MAX_HOLDERS: usize = 10_000;

/// Who asked, once the request is proved: the proving link's `sub` and key.
#[derive(Debug)]
pub(crate) struct Holder {
    /// The `jti` of the link to revoke.
    pub jti: String,
    /// Its index in the chain (0 = the root, minted by an issuer).
    pub link: usize,
    /// When the link expires: nothing the entry matches is valid after it.
    pub exp: u64,
    /// The audit log's actor: the proving agent and its key thumbprint.
    pub actor: String,
}

/// The proof checks of the registry: replay cache and per-holder limit.
pub(crate) struct HolderGate {
    replay: ReplayCache,
    minutes: Mutex<HashMap<String, (u64, u32)>>,
}

use axum::http::StatusCode;

fn refusal(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Refusal {
    err(status, code, message)
}

impl HolderGate {
    pub fn new() -> Self {
        Self {
            replay: ReplayCache::new(REPLAY_BYTES),
            minutes: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a holder revocation request: the credential (`Authorization:
    /// DPoP <chain>` and one `DPoP` proof), the link asked for, the chain
    /// (trusted issuer, signatures, delegation rules; expiry is not
    /// required, revoking an expired link is harmless), the proof (by the
    /// key of that link or an ancestor, for `POST htu`, within the window,
    /// not replayed) and the holder's rate.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request's parts: credential, link, URI, issuers, time"
    )]
    pub fn check(
        &self,
        cred: Credential<'_>,
        link: usize,
        htu: &str,
        issuers: Vec<PublicKey>,
        iss: &str,
        max_depth: usize,
        now: u64,
    ) -> Result<Holder, Refusal> {
        let Some(proof) = cred.proof.filter(|_| cred.scheme == Scheme::Dpop) else {
            return Err(refusal(StatusCode::UNAUTHORIZED,
                ErrorCode::PopRequired,
                "a holder revocation is proved with DPoP: send `Authorization: DPoP <chain>` and a \
                 `DPoP` proof made by the key of the link to revoke or of one above it \
                 (`veto revoke --as-holder` does both)",
            ));
        };
        let parsed = ParsedChain::parse(cred.chain).map_err(|e| {
            refusal(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidChain,
                format!("the chain: {e}"),
            )
        })?;
        let n = parsed.links().len();
        if link >= n {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidLink,
                format!(
                    "`link` {link} is not in the chain: it has links 0 to {}",
                    n - 1
                ),
            ));
        }
        let checker = Checker::new(
            KeySet::new(issuers),
            CheckConfig {
                max_depth,
                issuer: Some(iss.to_owned()),
                ..CheckConfig::default()
            },
        );
        let verified = checker.verify(parsed).map_err(|d| {
            refusal(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidChain,
                format!("the chain: {d}"),
            )
        })?;
        let links = verified.chain().links();
        let presented = dpop::presented_key(proof).map_err(|e| {
            refusal(
                StatusCode::UNAUTHORIZED,
                ErrorCode::PopInvalid,
                e.to_string(),
            )
        })?;
        // A link's `jti` is chosen by whoever signed it, and a revocation
        // names only the `jti`: a link that repeats another's would let its
        // signer revoke that other warrant (its parent's, say).
        let target = &links[link].claims().jti;
        if let Some(other) = (0..n).find(|&i| i != link && links[i].claims().jti == *target) {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidChain,
                format!("link {link} repeats the `jti` of link {other}: refused, since revoking it would revoke that warrant too"),
            ));
        }
        // The proving link: the nearest at or above `link` that binds the key.
        let Some(prover) = links[..=link]
            .iter()
            .rposition(|l| l.holder() == Some(&presented))
        else {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                ErrorCode::NotYourLink,
                format!(
                    "the proof's key `{}` is not bound by link {link} or any link above it: a \
                     holder may revoke only its own link and those delegated below it",
                    presented.kid()
                ),
            ));
        };
        let expected = Expected {
            method: "POST",
            htu,
            chain: cred.chain,
            now,
            window: WINDOW,
            skew: SKEW,
        };
        let proved = dpop::verify(proof, &presented, &expected).map_err(|e| {
            refusal(
                StatusCode::UNAUTHORIZED,
                ErrorCode::PopInvalid,
                e.to_string(),
            )
        })?;
        let until = proved.iat.saturating_add(WINDOW).max(now).saturating_add(1);
        match self.replay.insert(presented.kid(), &proved.jti, now, until) {
            Ok(()) => {}
            Err(ReplayError::Seen) => {
                return Err(refusal(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::PopInvalid,
                    format!(
                    "the DPoP proof `{}` was already used: make a fresh proof for every request",
                    proved.jti
                ),
                ))
            }
            Err(ReplayError::Full) => {
                return Err(refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Busy,
                    "too many recent holder revocations to remember their proofs: retry shortly",
                ))
            }
        }
        self.rate(presented.kid(), now)?;
        if links[prover].claims().exp <= now {
            return Err(refusal(
                StatusCode::UNAUTHORIZED,
                ErrorCode::PopInvalid,
                format!("link {prover}, whose key made the proof, has expired: an expired holder revokes nothing"),
            ));
        }
        let sub = &links[prover].claims().sub;
        let target = links[link].claims();
        Ok(Holder {
            link,
            jti: target.jti.clone(),
            exp: target.exp,
            actor: format!("holder {sub} (key {})", presented.kid()),
        })
    }

    /// At most [`PER_MINUTE`] requests per holder key per minute.
    fn rate(&self, kid: &str, now: u64) -> Result<(), Refusal> {
        let minute = now / 60;
        let mut minutes = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        if !minutes.contains_key(kid) && minutes.len() >= MAX_HOLDERS {
            minutes.retain(|_, (m, _)| *m == minute);
            if minutes.len() >= MAX_HOLDERS {
                return Err(refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimited,
                    "too many holders revoking at once: retry in a minute",
                ));
            }
        }
        let slot = minutes.entry(kid.to_owned()).or_insert((minute, 0));
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        if slot.1 >= PER_MINUTE {
            return Err(refusal(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!(
                    "holder key `{kid}` asked for {PER_MINUTE} revocations this minute, the limit: \
                     retry next minute, or ask an operator"
                ),
            ));
        }
        slot.1 += 1;
        Ok(())
    }
}
