//! The per-request decision (DESIGN 4): parse → revocation → time →
//! signatures and chain rules → action → freshness policy.

use std::fmt;

use crate::entry::{Digest, EntryKind};
use crate::keys::KeySet;
use crate::state::SrlState;
use crate::warrant::{limits, ParsedChain, VerifiedChain};

/// Why a request was denied. Exhaustive: callers must handle every reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The credential could not be parsed, or is over a size or depth limit.
    Malformed,
    /// A link, agent or key in the chain is revoked.
    Revoked,
    /// A link has expired.
    Expired,
    /// A link is not valid yet.
    NotYetValid,
    /// A signature does not verify.
    BadSignature,
    /// The root is not signed by a trusted issuer key.
    UntrustedIssuer,
    /// The chain breaks a delegation rule.
    ChainInvalid,
    /// The chain does not permit the action.
    ActionDenied,
    /// The revocation state is too old to rely on (fail-closed).
    Stale,
}

impl DenyReason {
    /// Every reason.
    pub const ALL: [DenyReason; 9] = [
        DenyReason::Malformed,
        DenyReason::Revoked,
        DenyReason::Expired,
        DenyReason::NotYetValid,
        DenyReason::BadSignature,
        DenyReason::UntrustedIssuer,
        DenyReason::ChainInvalid,
        DenyReason::ActionDenied,
        DenyReason::Stale,
    ];

    /// The stable code, as used in HTTP errors and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Malformed => "malformed",
            DenyReason::Revoked => "revoked",
            DenyReason::Expired => "expired",
            DenyReason::NotYetValid => "not_yet_valid",
            DenyReason::BadSignature => "bad_signature",
            DenyReason::UntrustedIssuer => "untrusted_issuer",
            DenyReason::ChainInvalid => "chain_invalid",
            DenyReason::ActionDenied => "action_denied",
            DenyReason::Stale => "stale",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
            Err(denial) => Decision::Deny(denial),
        }
    }

    /// Checks a parsed chain, signatures included.
    pub fn check(&self, state: &SrlState, chain: &ParsedChain, action: &str, now: u64) -> Decision {
        self.decide(state, chain, action, now, || {
            self.check_issuer(chain)?;
            chain.check_signatures(&self.issuers, self.config.max_depth)
        })
    }

    /// Verifies signatures and chain rules once, for a cache of verified
    /// chains; [`Checker::check_verified`] then skips only that step.
    pub fn verify(&self, chain: ParsedChain) -> Result<VerifiedChain, Denial> {
        self.check_issuer(&chain)?;
        chain.verify(&self.issuers, self.config.max_depth)
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
        self.decide(state, chain.chain(), action, now, || Ok(()))
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
        if let Err(denial) = revocation(state, &chain).and_then(|()| self.time(&chain, now)) {
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
        signatures: impl FnOnce() -> Step,
    ) -> Decision {
        let steps = || -> Step {
            revocation(state, chain)?;
            self.time(chain, now)?;
            signatures()
        };
        match steps() {
            Ok(()) => self.finish(state, chain, action, now),
            Err(denial) => Decision::Deny(denial),
        }
    }

    /// The last steps: action, then the freshness policy.
    fn finish(&self, state: &SrlState, chain: &ParsedChain, action: &str, now: u64) -> Decision {
        if !chain.leaf().actions().allows(action) {
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
                match state.age(now) {
                    Some(age) => format!(
                        "revocation state is {age} s old, over the {} s limit: the registry has not been heard from",
                        self.config.max_staleness
                    ),
                    None => "no revocation state has been received from the registry yet".into(),
                },
            )),
        }
    }

    fn time(&self, chain: &ParsedChain, now: u64) -> Step {
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

/// The revocation step: one probe per id, no enumeration of descendants.
fn revocation(state: &SrlState, chain: &ParsedChain) -> Step {
    let Some((kind, digest)) = state.set().first_hit(chain.probes()) else {
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
