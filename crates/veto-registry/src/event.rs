//! What the authority pushes: each event rendered once as server-sent
//! event bytes, shared by every publisher and subscriber.

use std::sync::Arc;

use axum::body::Bytes;
use veto_core::wire::EventKind;

/// An event on the push channels, sent by the authority in version order
/// (a checkpoint for version N never before delta N). `frame` is the
/// event rendered once as server-sent-event bytes, shared (not copied) by
/// every subscriber's queue: a subscriber that does not read holds
/// references, not copies.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// A delta: version `ver`, already durable and applied.
    Delta {
        /// Its version.
        ver: u64,
        /// `event: delta`.
        frame: Bytes,
    },
    /// A checkpoint of version `ver`.
    Checkpoint {
        /// The version it attests.
        ver: u64,
        /// The compact JWS.
        jws: Arc<str>,
        /// `event: checkpoint`.
        frame: Bytes,
    },
    /// The authority-signed issuer key set, version `ver` (its own
    /// numbering, not the revocation state's): sent when an issuer key is
    /// added or retired, here or (learnt by reloading) on another replica.
    Issuers {
        /// The set's version.
        ver: u64,
        /// The compact JWS (`veto-issuers+jwt`).
        jws: Arc<str>,
        /// `event: issuers`, without an `id:`.
        frame: Bytes,
    },
}

impl Event {
    /// A delta event for the compact JWS `jws` of version `ver`.
    pub(crate) fn delta(ver: u64, jws: &str) -> Self {
        let frame = sse_frame(EventKind::Delta, Some(ver), jws);
        Self::Delta { ver, frame }
    }

    /// A checkpoint event for the compact JWS `jws` of version `ver`.
    pub(crate) fn checkpoint(ver: u64, jws: Arc<str>) -> Self {
        let frame = sse_frame(EventKind::Checkpoint, Some(ver), &jws);
        Self::Checkpoint { ver, jws, frame }
    }

    /// An issuer key set event for the compact JWS `jws` of set version
    /// `ver`.
    pub(crate) fn issuers(ver: u64, jws: Arc<str>) -> Self {
        let frame = sse_frame(EventKind::Issuers, None, &jws);
        Self::Issuers { ver, jws, frame }
    }
}

/// One server-sent event (WHATWG HTML, event stream format): `event:`,
/// `id:` = the version when `id` is given (an event without one leaves the
/// client's last event id as it was), one `data:` line per line of `data`
/// (a compact JWS has none), and the blank line that dispatches it.
pub(crate) fn sse_frame(kind: EventKind, id: Option<u64>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 48);
    out.push_str("event: ");
    out.push_str(kind.as_str());
    out.push('\n');
    if let Some(ver) = id {
        out.push_str("id: ");
        out.push_str(&ver.to_string());
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}
