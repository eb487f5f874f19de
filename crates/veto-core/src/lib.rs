//! veto's core: the formats and rules every part shares, as pure functions
//! and state machines. No network, no async runtime, no clock of its own:
//! time is passed in, bytes are passed in, values come out.
//!
//! - [`keys`]: Ed25519 keys as JWKs, RFC 7638 thumbprints, [`KeyResolver`].
//! - [`jws`]: compact JWS sign/verify with `alg`/`typ` checked first.
//! - [`warrant`]: minting, delegating, parsing and verifying chains.
//! - [`srl`]: deltas, snapshots and checkpoints: [`SrlSigner`], [`SrlVerifier`].
//! - [`SrlState`]: applying them (no rollback, gaps, equivocation, freshness).
//! - [`Checker`]: the per-request [`Decision`].
//! - [`dpop`]: proofs of possession (RFC 9449) by the leaf's holder key.
//! - [`Target`]: the one canonical form of a request target (the path
//!   every action, route and forwarded request uses).

mod action;
mod b64;
mod clock;
mod decision;
pub mod dpop;
mod entry;
mod json;
pub mod jws;
pub mod keyfile;
mod keys;
mod reason;
mod record;
pub mod report;
mod set;
pub mod srl;
mod sse;
mod state;
mod target;
pub mod warrant;
pub mod wire;

pub use action::{ActionSet, Pattern, PatternError};
#[cfg(any(test, feature = "test-util"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use decision::{CheckConfig, Checker, Decision, Denial, StalenessPolicy};
pub use entry::{Digest, Entry, EntryError, EntryKind, Reason, Removed, MAX_ENTRY_ID_BYTES};
pub use keys::{thumbprint, Jwk, KeyError, KeyResolver, KeySet, PublicKey, SigningKey};
pub use reason::DenyReason;
pub use set::RevocationSet;
pub use srl::{
    Head, IssuersPayload, Snapshot, SrlError, SrlLimits, SrlSigner, SrlVerifier,
    VerifiedCheckpoint, VerifiedDelta, VerifiedIssuers, VerifiedSnapshot,
};
pub use sse::{SseError, SseEvent, SseParser};
pub use state::{Applied, ApplyError, Attestation, IssuerSet, SrlState};
pub use target::{canonical_path, check_method, Target, TargetError};
pub use warrant::{ChainError, LinkError, LinkSpec, ParsedChain, VerifiedChain, WarrantError};
