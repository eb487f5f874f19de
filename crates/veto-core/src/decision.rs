//! The per-request decision (DESIGN 4): parse → revocation → time →
//! proof of possession → signatures and chain rules → action → freshness
//! policy.

use std::fmt;

use crate::entry::{Digest, EntryKind};
use crate::keys::KeySet;
use crate::reason::DenyReason;
use crate::state::SrlState;
use crate::warrant::{limits, ChainError, ParsedChain, VerifiedChain};

/// A denial: the reason and a message naming what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The reason.
    pub reason: DenyReason,
    /// What was wrong, for logs and the caller.
    pub message: String,
}

impl Denial {
    /// A denial.
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A chain that does not parse or verify is denied for its
/// [`ChainError::reason`], with its message.
impl From<ChainError> for Denial {
    fn from(e: ChainError) -> Self {
        Self::new(e.reason(), e.to_string())
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed. `stale` is set when only the fail-open policy let it through.
    Allow {
        /// The revocation state was stale (fail-open): flag, count, log.
        stale: bool,
    },
    /// Denied.
    Deny(Denial),
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The denial reason, if denied.
    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny(d) => Some(d.reason),
        }
    }
}

/// What to do when the revocation state is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StalenessPolicy {
    /// Deny with reason `stale` (the default).
    #[default]
    FailClosed,
    /// Allow, flagged as stale.
    FailOpen,
}

/// How requests are checked.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Longest chain accepted (default 8).
    pub max_depth: usize,
    /// Clock-skew allowance for `nbf`/`iat`, in seconds (default 5).
    pub skew: u64,
    /// Longest the state may go without a fresh attestation (default 300 s).
    pub max_staleness: u64,
    /// What to do when stale.
    pub policy: StalenessPolicy,
    /// When set, the root's `iss` must equal it.
    pub issuer: Option<String>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            max_depth: limits::DEFAULT_DEPTH,
            skew: crate::srl::DEFAULT_SKEW,
            max_staleness: 300,
            policy: StalenessPolicy::FailClosed,
            issuer: None,
        }
    }
}

/// Decides requests against a revocation state and trusted issuer keys.
#[derive(Clone, Debug)]
pub struct Checker {
    issuers: KeySet,
    config: CheckConfig,
}

type Step = Result<(), Denial>;

impl Checker {
    /// A checker trusting `issuers` for root links.
    pub fn new(issuers: KeySet, config: CheckConfig) -> Self {
        Self { issuers, config }
    }

    /// The configuration.
    pub fn config(&self) -> &CheckConfig {
        &self.config
    }

    /// The trusted issuer keys.
    pub fn issuers(&self) -> &KeySet {
        &self.issuers
    }

    /// Parses and checks a presented chain.
    pub fn check_token(&self, state: &SrlState, token: &str, action: &str, now: u64) -> Decision {
        match ParsedChain::parse(token) {
            Ok(chain) => self.check(state, &chain, action, now),
            Err(e) => Decision::Deny(e.into()),
        }
    }

    /// Checks a parsed chain, signatures included.
    pub fn check(&self, state: &SrlState, chain: &ParsedChain, action: &str, now: u64) -> Decision {
        self.decide(
            state,
            chain,
            action,
            now,
            |_| Ok(()),
            || {
                self.check_issuer(chain)?;
                Ok(chain.check_signatures(&self.issuers, self.config.max_depth)?)
            },
        )
    }

    /// Verifies signatures and chain rules once, for a cache of verified
    /// chains; [`Checker::check_verified`] then skips only that step.
    pub fn verify(&self, chain: ParsedChain) -> Result<VerifiedChain, Denial> {
        self.check_issuer(&chain)?;
        Ok(chain.verify(&self.issuers, self.config.max_depth)?)
    }

    /// Checks a chain verified earlier by [`Checker::verify`]: revocation,
    /// time, action and freshness are still checked on every call.
    pub fn check_verified(
        &self,
        state: &SrlState,
        chain: &VerifiedChain,
        action: &str,
        now: u64,
    ) -> Decision {
        self.check_verified_proved(state, chain, action, now, |_| Ok(()))
    }

    /// [`Checker::check_verified`] with the request's proof of possession
    /// checked by `pop` after revocation and time (DESIGN 4).
    pub fn check_verified_proved(
        &self,
        state: &SrlState,
        chain: &VerifiedChain,
        action: &str,
        now: u64,
        pop: impl FnOnce(&ParsedChain) -> Result<(), Denial>,
    ) -> Decision {
        self.decide(state, chain.chain(), action, now, pop, || Ok(()))
    }

    fn check_issuer(&self, chain: &ParsedChain) -> Step {
        match (&self.config.issuer, &chain.root().claims().iss) {
            (Some(want), Some(got)) if want == got => Ok(()),
            (Some(want), Some(got)) => Err(Denial::new(
                DenyReason::UntrustedIssuer,
                format!("root issued by `{got}`, expected `{want}`"),
            )),
            (Some(want), None) => Err(Denial::new(
                DenyReason::UntrustedIssuer,
                format!("the root names no issuer (`iss`), expected `{want}`"),
            )),
            (None, _) => Ok(()),
        }
    }

    /// Checks a parsed chain in DESIGN order and, when its signatures
    /// verified, also returns it verified (for a cache). Signature work is
    /// done at most once, and not at all for a revoked or expired chain.
    pub fn check_and_verify(
        &self,
        state: &SrlState,
        chain: ParsedChain,
        action: &str,
        now: u64,
    ) -> (Decision, Option<VerifiedChain>) {
        self.check_and_verify_proved(state, chain, action, now, |_| Ok(()))
    }

    /// [`Checker::check_and_verify`] with the request's proof of possession
    /// checked by `pop` after revocation and time and before the chain's
    /// signatures (DESIGN 4).
    pub fn check_and_verify_proved(
        &self,
        state: &SrlState,
        chain: ParsedChain,
        action: &str,
        now: u64,
        pop: impl FnOnce(&ParsedChain) -> Result<(), Denial>,
    ) -> (Decision, Option<VerifiedChain>) {
        if let Err(denial) = revocation(state, &chain)
            .and_then(|()| self.time(&chain, now))
            .and_then(|()| pop(&chain))
        {
            return (Decision::Deny(denial), None);
        }
        match self.verify(chain) {
            Ok(verified) => (
                self.finish(state, verified.chain(), action, now),
                Some(verified),
            ),
            Err(denial) => (Decision::Deny(denial), None),
        }
    }

    fn decide(
        &self,
        state: &SrlState,
        chain: &ParsedChain,
        action: &str,
        now: u64,
        pop: impl FnOnce(&ParsedChain) -> Step,
        signatures: impl FnOnce() -> Step,
    ) -> Decision {
        let steps = || -> Step {
            revocation(state, chain)?;
            self.time(chain, now)?;
            pop(chain)?;
            signatures()
        };
        match steps() {
            Ok(()) => self.finish(state, chain, action, now),
            Err(denial) => Decision::Deny(denial),
        }
    }

    /// The last steps: action, then the freshness policy.
    fn finish(&self, state: &SrlState, chain: &ParsedChain, action: &str, now: u64) -> Decision {
        if !chain.record().allows(action) {
            return Decision::Deny(Denial::new(
                DenyReason::ActionDenied,
                format!("the warrant does not permit `{action}`"),
            ));
        }
        if state.is_fresh(now, self.config.max_staleness) {
            return Decision::Allow { stale: false };
        }
        match self.config.policy {
            StalenessPolicy::FailOpen => Decision::Allow { stale: true },
            StalenessPolicy::FailClosed => Decision::Deny(Denial::new(
                DenyReason::Stale,
                stale_message(state, now, self.config.max_staleness),
            )),
        }
    }

    fn time(&self, chain: &ParsedChain, now: u64) -> Step {
        if chain.record().in_time(now, self.config.skew) {
            return Ok(());
        }
        // Outside: find the link to name.
        for (i, link) in chain.links().iter().enumerate() {
            let c = link.claims();
            if c.exp <= now {
                return Err(Denial::new(
                    DenyReason::Expired,
                    format!("link {i} expired at {}", c.exp),
                ));
            }
            let start = c.nbf.unwrap_or(0).max(c.iat.unwrap_or(0));
            if start > now.saturating_add(self.config.skew) {
                return Err(Denial::new(
                    DenyReason::NotYetValid,
                    format!("link {i} is not valid before {start}"),
                ));
            }
        }
        Ok(())
    }
}

/// Why a state that is not fresh is not fresh, naming the bound that ran
/// out: the freshness is `min(exp, iat + max_staleness)` of the newest
/// attestation, so either the registry's own `exp` (its attestation ttl)
/// passed first, or the authorizer's `max_staleness` did, or there never
/// was an attestation. The operator fixes each in a different place.
fn stale_message(state: &SrlState, now: u64, max_staleness: u64) -> String {
    let Some(a) = state.attested() else {
        return "no revocation state has been received from the registry yet \
                (no signed snapshot or checkpoint has arrived)"
            .into();
    };
    let age = now.saturating_sub(a.iat);
    if a.exp <= a.iat.saturating_add(max_staleness) {
        format!(
            "the newest attestation of the revocation state (version {}, signed {age} s ago) \
             expired {} s ago: its `exp`, set by the registry's attestation ttl, has passed \
             and no newer one has arrived",
            a.ver,
            now.saturating_sub(a.exp)
        )
    } else {
        format!(
            "revocation state is {age} s old, over the {max_staleness} s max staleness \
             configured on this authorizer: the registry has not been heard from"
        )
    }
}

/// The revocation step: one probe per id, no enumeration of descendants.
fn revocation(state: &SrlState, chain: &ParsedChain) -> Step {
    let Some((kind, digest)) = state.set().first_hit(chain.record()) else {
        return Ok(());
    };
    let links = chain.links();
    let named = |pred: &dyn Fn(usize) -> bool| (0..links.len()).find(|&i| pred(i)).unwrap_or(0);
    let message = match kind {
        EntryKind::Warrant => {
            let i = named(&|i| Digest::of(kind, &links[i].claims().jti) == digest);
            format!("warrant `{}` (link {i}) is revoked", links[i].claims().jti)
        }
        EntryKind::Agent => {
            let i = named(&|i| Digest::of(kind, &links[i].claims().sub) == digest);
            format!(
                "agent `{}` is revoked for credentials issued before the cutoff",
                links[i].claims().sub
            )
        }
        EntryKind::Key => match std::iter::once(chain.root().kid())
            .chain(links.iter().map(|l| l.holder().map(|h| h.kid())))
            .flatten()
            .find(|k| Digest::of(kind, k) == digest)
        {
            Some(kid) => format!("key `{kid}` is revoked"),
            // A child's signing key is its parent's holder key, listed above.
            None => "a key this chain is signed by or binds is revoked".to_owned(),
        },
    };
    Err(Denial::new(DenyReason::Revoked, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::srl::{Head, SrlSigner, SrlVerifier};
    use crate::warrant::{mint_root, LinkSpec};

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "veto";

    /// A fail-closed checker, a valid root chain and the state attested
    /// by a checkpoint signed at `iat` with expiry `exp` (none if `None`).
    fn deny_message(attestation: Option<(u64, u64)>, max_staleness: u64, now: u64) -> String {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let authority = SigningKey::from_seed(&[2; 32]);
        let checker = Checker::new(
            KeySet::new([issuer.public().clone()]),
            CheckConfig {
                max_staleness,
                ..CheckConfig::default()
            },
        );
        let mut state = SrlState::new();
        if let Some((iat, exp)) = attestation {
            let signer = SrlSigner::new(authority.clone(), ISS);
            let verifier = SrlVerifier::new(KeySet::new([authority.public().clone()]), ISS);
            let cp = signer.checkpoint(0, Head::ZERO, iat, exp);
            state
                .apply_checkpoint(&verifier.checkpoint(&cp, iat).unwrap())
                .unwrap();
        }
        let chain = mint_root(
            &issuer,
            ISS,
            LinkSpec {
                sub: "alice".into(),
                act: vec!["http:GET:/*".into()],
                iat: NOW - 60,
                exp: NOW + 3600,
                holder: None,
            },
        )
        .unwrap();
        match checker.check_token(&state, &chain, "http:GET:/x", now) {
            Decision::Deny(d) => {
                assert_eq!(d.reason, DenyReason::Stale);
                d.message
            }
            other => panic!("expected a stale denial, got {other:?}"),
        }
    }

    #[test]
    fn stale_names_the_attestation_exp_when_it_ran_out_first() {
        // Attestation ttl 30 s, max staleness 300 s: exp binds.
        let m = deny_message(Some((NOW - 40, NOW - 10)), 300, NOW);
        assert!(m.contains("`exp`"), "{m}");
        assert!(m.contains("attestation ttl"), "{m}");
        assert!(m.contains("expired 10 s ago"), "{m}");
        assert!(!m.contains("max staleness"), "{m}");
    }

    #[test]
    fn stale_names_max_staleness_when_it_ran_out_first() {
        // Attestation valid for an hour, max staleness 20 s: max staleness binds.
        let m = deny_message(Some((NOW - 40, NOW + 3600)), 20, NOW);
        assert!(m.contains("40 s old"), "{m}");
        assert!(m.contains("20 s max staleness"), "{m}");
        assert!(!m.contains("`exp`"), "{m}");
    }

    #[test]
    fn stale_says_when_no_attestation_ever_arrived() {
        let m = deny_message(None, 300, NOW);
        assert!(m.contains("no revocation state has been received"), "{m}");
        assert!(!m.contains("max staleness") && !m.contains("`exp`"), "{m}");
    }

    #[test]
    fn equal_bounds_name_the_exp() {
        // exp == iat + max_staleness: the registry's ttl is what to look at.
        let m = deny_message(Some((NOW - 300, NOW)), 300, NOW);
        assert!(m.contains("`exp`") && m.contains("expired 0 s ago"), "{m}");
    }
}
