//! What a check and a status query answer.

use std::sync::Arc;

use veto_core::{Decision, VerifiedChain};

use crate::pop::PopErrorCode;

/// The result of a check.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Allow or deny, with the reason.
    pub decision: Decision,
    /// The verified chain, when signatures verified (for re-checking a
    /// long-lived response, and for the agent and warrant ids).
    pub chain: Option<Arc<VerifiedChain>>,
    /// The RFC 7638 thumbprint of the holder key the request's DPoP proof
    /// proved, when it carried a valid one.
    pub holder: Option<String>,
    /// When the proof-of-possession step refused the request: the RFC 9449
    /// error for `WWW-Authenticate`.
    pub pop_error: Option<PopErrorCode>,
}

/// A point-in-time view of the sync state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// Applied version.
    pub version: u64,
    /// Applied head.
    pub head: String,
    /// Whether the state is fresh now.
    pub fresh: bool,
    /// Until when it stays fresh without news (Unix seconds).
    pub fresh_until: Option<u64>,
    /// Seconds since the newest attestation was signed.
    pub age: Option<u64>,
    /// Whether the push subscription is connected.
    pub push_connected: bool,
    /// Revoked entries known.
    pub entries: usize,
    /// The last sync error, until a verified object applies again.
    pub last_error: Option<String>,
}
