//! A verified object on its way to the apply path, with the compact form
//! it arrived in (what the disk cache keeps).

use veto_core::{VerifiedCheckpoint, VerifiedDelta, VerifiedSnapshot};

/// A verified object and its compact form (kept for the disk cache): a
/// snapshot's binary container, the others' compact JWS.
pub(crate) enum Incoming {
    Snapshot(VerifiedSnapshot, Vec<u8>),
    Delta(VerifiedDelta, String),
    Checkpoint(VerifiedCheckpoint, String),
}
