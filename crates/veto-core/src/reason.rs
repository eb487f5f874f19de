//! Why a request is denied: the stable codes every part reports
//! (decisions, parse and chain errors, HTTP errors, metrics).

use std::fmt;

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
    /// The policy requires proof of possession and the request has none:
    /// no `DPoP` proof, the `Bearer` scheme, or a leaf that binds no key.
    PopRequired,
    /// The `DPoP` proof is invalid: another key, method, URI or chain, too
    /// old or too new, replayed, or without the server's nonce.
    PopInvalid,
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
    pub const ALL: [DenyReason; 11] = [
        DenyReason::Malformed,
        DenyReason::Revoked,
        DenyReason::Expired,
        DenyReason::NotYetValid,
        DenyReason::PopRequired,
        DenyReason::PopInvalid,
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
            DenyReason::PopRequired => "pop_required",
            DenyReason::PopInvalid => "pop_invalid",
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
