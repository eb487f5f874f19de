//! The wire contract between the parts (DESIGN 6 and 7), written once:
//! HTTP paths, SSE event names, NATS JetStream names, the API's error codes
//! and the JSON bodies both sides read. The registry, the authorizer, the
//! proxy, the CLI and the tests import these instead of spelling the
//! strings themselves.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Paths of the registry's HTTP surface (DESIGN 6) and of the admin
/// endpoints every veto server answers.
pub mod path {
    /// `GET`: the current snapshot, its binary container
    /// ([`super::content_type::SNAPSHOT`]; ETag = version; gzip).
    pub const SRL: &str = "/v1/srl";
    /// `GET ?since=N`: signed deltas after N ([`super::DeltasPage`]), 410 when gone.
    pub const SRL_DELTAS: &str = "/v1/srl/deltas";
    /// `GET`: the newest checkpoint (compact JWS).
    pub const SRL_CHECKPOINT: &str = "/v1/srl/checkpoint";
    /// `GET`: server-sent events ([`super::EventKind`]), `id:` = version.
    pub const SRL_EVENTS: &str = "/v1/srl/events";
    /// `POST` (admin): revoke; `GET` (admin): the audit log.
    pub const REVOCATIONS: &str = "/v1/revocations";
    /// `POST` (a holder, proved with DPoP): revoke a link of a presented
    /// chain that the proof's key binds, or one delegated below it.
    pub const REVOCATIONS_DELEGATED: &str = "/v1/revocations/delegated";
    /// `POST` (bootstrap admin): create a named API token; `GET`: list them.
    pub const TOKENS: &str = "/v1/tokens";
    /// `GET` (scope `fleet`): every enrolled gateway and what it applied.
    pub const FLEET: &str = "/v1/fleet";
    /// `POST` (an enrolled gateway, signed `veto-report+jwt`): a report.
    pub const FLEET_REPORTS: &str = "/v1/fleet/reports";
    /// `POST` (the fleet enrolment token, or scope `fleet`): enrol a
    /// gateway key; `DELETE {FLEET_GATEWAYS}/{id}` (scope `fleet`) removes it.
    pub const FLEET_GATEWAYS: &str = "/v1/fleet/gateways";
    /// `GET {FLEET_VERSIONS}/{N}` (scope `fleet`): when each gateway applied
    /// version N.
    pub const FLEET_VERSIONS: &str = "/v1/fleet/versions";
    /// `GET` (scope `fleet`): server-sent events `fleet`, each the body of
    /// [`FLEET`], when it changes.
    pub const FLEET_EVENTS: &str = "/v1/fleet/events";
    /// `GET`: the operator console (a page; its API calls need a token).
    pub const UI: &str = "/ui";
    /// `POST` (admin): mint a root warrant.
    pub const WARRANTS: &str = "/v1/warrants";
    /// `GET`/`POST` (admin): issuer keys; `DELETE {ISSUER_KEYS}/{kid}` retires one.
    pub const ISSUER_KEYS: &str = "/v1/issuer-keys";
    /// `GET`: `{iss, keys}` of the authority, for display.
    pub const AUTHORITY: &str = "/v1/authority";
    /// `GET`: the trusted issuer keys as a JWKS (RFC 7517), for other JOSE
    /// tools; no authorizer trusts it.
    pub const JWKS: &str = "/.well-known/jwks.json";
    /// `GET`: the authority-signed issuer key set (`veto-issuers+jwt`,
    /// DESIGN 3.5), the one source of issuer keys authorizers trust.
    pub const ISSUERS: &str = "/v1/issuers";
    /// `GET`: liveness (and, on the proxy, the sync state).
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: the proxy's readiness (503 while stale).
    pub const READYZ: &str = "/readyz";
    /// `GET`: Prometheus metrics (text format).
    pub const METRICS: &str = "/metrics";
}

/// Content types of veto's own bodies.
pub mod content_type {
    /// A snapshot's binary container: the compact JWS, `\n`, the table
    /// bytes ([`crate::srl::SnapshotPayload`]).
    pub const SNAPSHOT: &str = "application/vnd.veto.snapshot";
}

/// The HTTP headers veto sets or reads besides the standard ones.
pub mod header {
    /// The proof of possession on a request (RFC 9449 4.1).
    pub const DPOP: &str = "dpop";
    /// A server nonce for the next proof (RFC 9449 8).
    pub const DPOP_NONCE: &str = "dpop-nonce";
    /// To the upstream: the leaf's `sub`, asserted only by its delegator.
    pub const AGENT: &str = "veto-agent";
    /// To the upstream: the root's `sub`, asserted by a trusted issuer.
    pub const ROOT_AGENT: &str = "veto-root-agent";
    /// To the upstream: every link's `sub`, root first, comma-separated,
    /// each percent-encoded.
    pub const DELEGATION: &str = "veto-delegation";
    /// To the upstream: the leaf's `jti`.
    pub const WARRANT: &str = "veto-warrant";
    /// To the upstream: the RFC 7638 thumbprint of the holder key the
    /// request's proof proved (absent when none was checked).
    pub const HOLDER: &str = "veto-holder";
    /// To the upstream: `1` when only the fail-open policy allowed it.
    pub const STALE: &str = "veto-stale";
}

/// NATS JetStream names of the scale-out bus (DESIGN 7).
pub mod nats {
    /// The stream.
    pub const STREAM: &str = "VETO_SRL";
    /// Every subject of the stream.
    pub const SUBJECTS: &str = "veto.srl.>";
    /// Deltas, one message per version.
    pub const DELTA_SUBJECT: &str = "veto.srl.delta";
    /// Heartbeat checkpoints.
    pub const CHECKPOINT_SUBJECT: &str = "veto.srl.checkpoint";
    /// Authority-signed issuer key sets (`veto-issuers+jwt`), one message
    /// per set version.
    pub const ISSUERS_SUBJECT: &str = "veto.srl.issuers";

    /// The `Nats-Msg-Id` of delta `ver` whose compact JWS is `jws`:
    /// `d-<ver>-<digest>`, where the digest is the first 16 bytes (128 bits)
    /// of SHA-256 over the compact JWS, base64url without padding.
    ///
    /// JetStream drops a message whose id it stored within the stream's
    /// duplicate window, so an id anyone could predict (the bare version)
    /// lets whoever may publish to the subject pre-empt real deltas. This
    /// one names the signed bytes: only the registry's own delta has it,
    /// and republishing that delta (after a crash, or from another
    /// replica) yields the same id, which keeps the outbox's
    /// de-duplication.
    pub fn delta_msg_id(ver: u64, jws: &str) -> String {
        msg_id("d", ver, jws)
    }

    /// The `Nats-Msg-Id` of a checkpoint for `ver`: `c-<ver>-<digest>`, the
    /// digest as in [`delta_msg_id`].
    pub fn checkpoint_msg_id(ver: u64, jws: &str) -> String {
        msg_id("c", ver, jws)
    }

    /// The `Nats-Msg-Id` of issuer key set `ver`: `i-<ver>-<digest>`, the
    /// digest as in [`delta_msg_id`].
    pub fn issuers_msg_id(ver: u64, jws: &str) -> String {
        msg_id("i", ver, jws)
    }

    fn msg_id(prefix: &str, ver: u64, jws: &str) -> String {
        use sha2::{Digest as _, Sha256};
        let digest = Sha256::digest(jws.as_bytes());
        format!("{prefix}-{ver}-{}", crate::b64::encode(&digest[..16]))
    }
}

/// The `event:` of a server-sent event on [`path::SRL_EVENTS`]; its data
/// is the compact JWS of the object (for a snapshot, its text container:
/// the JWS, `~`, base64url of the tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A signed delta.
    Delta,
    /// A signed checkpoint (heartbeat).
    Checkpoint,
    /// A signed snapshot (a subscriber too far behind for deltas).
    Snapshot,
    /// An authority-signed issuer key set (`veto-issuers+jwt`, DESIGN 3.5).
    /// Sent without an `id:` (its version is not the revocation state's,
    /// so it leaves `Last-Event-ID` alone): at the start of every stream
    /// and whenever an issuer key is added or retired.
    Issuers,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 4] = [Self::Delta, Self::Checkpoint, Self::Snapshot, Self::Issuers];

    /// The event name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delta => "delta",
            Self::Checkpoint => "checkpoint",
            Self::Snapshot => "snapshot",
            Self::Issuers => "issuers",
        }
    }

    /// The kind named `name`, if veto sends such events.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind a message on `subject` (of [`nats`]) carries.
    pub fn of_subject(subject: &str) -> Option<Self> {
        match subject {
            nats::DELTA_SUBJECT => Some(Self::Delta),
            nats::CHECKPOINT_SUBJECT => Some(Self::Checkpoint),
            nats::ISSUERS_SUBJECT => Some(Self::Issuers),
            _ => None,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// The stable `error` codes of `{"error": code, "message": text}`
        /// answers from the registry and the proxy (denials use
        /// [`crate::DenyReason`]). A code never changes meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    /// No, or a wrong, admin token.
    Unauthorized => "unauthorized",
    /// A body that is not declared `application/json`.
    UnsupportedMediaType => "unsupported_media_type",
    /// A body that is not the JSON object expected.
    InvalidJson => "invalid_json",
    /// A body that could not be read.
    BadBody => "bad_body",
    /// A body over the size limit.
    BodyTooLarge => "body_too_large",
    /// More entries than one request may carry.
    BatchTooLarge => "batch_too_large",
    /// A revocation with no entries.
    NoEntries => "no_entries",
    /// An entry kind other than `warrant`, `agent`, `key`.
    UnknownKind => "unknown_kind",
    /// A reason not in the RFC 5280-style list.
    UnknownReason => "unknown_reason",
    /// An empty or oversized id.
    InvalidId => "invalid_id",
    /// An agent entry without `before`.
    MissingBefore => "missing_before",
    /// `before` on an entry that is not an agent.
    UnexpectedBefore => "unexpected_before",
    /// An unusable `expires_at`.
    InvalidExpiresAt => "invalid_expires_at",
    /// An unusable `before`.
    InvalidBefore => "invalid_before",
    /// An oversized or unusable note.
    InvalidNote => "invalid_note",
    /// An unusable agent id.
    InvalidAgent => "invalid_agent",
    /// Unusable action patterns.
    InvalidAct => "invalid_act",
    /// A lifetime out of range.
    InvalidTtl => "invalid_ttl",
    /// A holder key that is not an Ed25519 JWK.
    InvalidHolderKey => "invalid_holder_key",
    /// A warrant that could not be minted.
    InvalidWarrant => "invalid_warrant",
    /// No issuer key to mint with.
    NoIssuerKey => "no_issuer_key",
    /// An issuer key id the registry does not know.
    UnknownKey => "unknown_key",
    /// An unreadable query string.
    InvalidQuery => "invalid_query",
    /// A page size out of range.
    InvalidLimit => "invalid_limit",
    /// A `since` that is not a version.
    InvalidSince => "invalid_since",
    /// No `since` where one is needed.
    MissingSince => "missing_since",
    /// A `Last-Event-ID` that is not a version.
    InvalidLastEventId => "invalid_last_event_id",
    /// Deltas no longer retained: fetch the snapshot.
    Gone => "gone",
    /// The client byte budget is spent for now: retry.
    Busy => "busy",
    /// Over `--max-subscribers`.
    TooManySubscribers => "too_many_subscribers",
    /// The store did not answer; nothing was recorded.
    StoreUnavailable => "store_unavailable",
    /// The store's disk is full; nothing was recorded.
    StoreFull => "store_full",
    /// The store is read-only; nothing was recorded.
    StoreReadOnly => "store_read_only",
    /// The snapshot could not be signed.
    SnapshotUnavailable => "snapshot_unavailable",
    /// The server is stopping.
    ShuttingDown => "shutting_down",
    /// No such endpoint.
    NotFound => "not_found",
    /// A bug: see the server's log.
    Internal => "internal",
    /// A request target refused by [`crate::Target`].
    BadTarget => "bad_target",
    /// A request the proxy cannot forward.
    BadRequest => "bad_request",
    /// An `Upgrade` the proxy does not pass.
    UpgradeRefused => "upgrade_refused",
    /// The upstream sent no response head in time.
    UpstreamTimeout => "upstream_timeout",
    /// The upstream could not be reached, or answered wrongly.
    BadGateway => "bad_gateway",
    /// A holder revocation came without a DPoP proof.
    PopRequired => "pop_required",
    /// A holder revocation's DPoP proof is invalid or replayed.
    PopInvalid => "pop_invalid",
    /// The chain of a holder revocation does not parse or verify.
    InvalidChain => "invalid_chain",
    /// The link of a holder revocation is not in its chain.
    InvalidLink => "invalid_link",
    /// The proof's key binds neither the link nor any link above it.
    NotYourLink => "not_your_link",
    /// Too many requests from one holder key.
    RateLimited => "rate_limited",
    /// The token is valid but its scopes do not cover this endpoint.
    Forbidden => "forbidden",
    /// A token name that is empty, too long or not `[A-Za-z0-9._-]`.
    InvalidName => "invalid_name",
    /// An unknown or missing token scope.
    InvalidScope => "invalid_scope",
    /// A token of that name exists (live or revoked).
    NameTaken => "name_taken",
    /// A gateway report that is not a valid `veto-report+jwt` for this
    /// registry now (malformed, forged, other audience, out of time).
    InvalidReport => "invalid_report",
    /// A report from a key no gateway is enrolled with (or was removed).
    NotEnrolled => "not_enrolled",
    /// A report no newer (by `iat`, `seq`) than one already accepted.
    StaleReport => "stale_report",
    /// A gateway key that is not an Ed25519 public JWK.
    InvalidGatewayKey => "invalid_gateway_key",
    /// That gateway key is enrolled already (under the name given).
    AlreadyEnrolled => "already_enrolled",
    /// The gateway was removed by an operator: only an operator may enrol
    /// it again.
    GatewayRemoved => "gateway_removed",
    /// As many gateways are enrolled as the registry keeps.
    FleetFull => "fleet_full",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": code, "message": text}`: every refusal's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// An [`ErrorCode`] or a [`crate::DenyReason`], as a string.
    pub error: String,
    /// What was wrong, for a person.
    pub message: String,
}

impl ErrorBody {
    /// A body for `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: code.as_str().to_owned(),
            message: message.into(),
        }
    }

    /// A body for a denial.
    pub fn denial(denial: &crate::Denial) -> Self {
        Self {
            error: denial.reason.as_str().to_owned(),
            message: denial.message.clone(),
        }
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        crate::json::to_json(self)
    }
}

/// The body of `POST` [`path::REVOCATIONS`]: one or a batch of entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// What to revoke.
    pub entries: Vec<RevokeEntry>,
}

/// `POST /v1/revocations/delegated`: which link of the chain sent in
/// `Authorization: DPoP <chain>` to revoke (0 = the root), why, and a note
/// for the audit log. The actor is the proving holder, never the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegatedRevokeRequest {
    /// The link's index in the chain, root first.
    pub link: usize,
    /// An RFC 5280 reason code (default `unspecified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Free text for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One entry of a [`RevokeRequest`]. Kind and reason are kept as text so
/// the registry can name what is wrong with them (`unknown_kind`,
/// `unknown_reason`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeEntry {
    /// `warrant`, `agent` or `key`.
    pub kind: String,
    /// The `jti`, agent id or key thumbprint.
    pub id: String,
    /// An RFC 5280-style reason (default `unspecified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Agents: credentials issued at or before this Unix time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Unix time after which nothing this entry matches can be valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Free text for the audit log (never published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The answer to a [`RevokeRequest`]: `201` with the new version, or `200`
/// when every entry was revoked already (the newest version they were
/// revoked in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// The version this request created, or the one its entries were
    /// revoked in.
    pub version: u64,
    /// One outcome per distinct entry.
    pub entries: Vec<EntryOutcome>,
}

/// The outcome for one entry of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryOutcome {
    /// Kind.
    pub kind: crate::EntryKind,
    /// Id.
    pub id: String,
    /// The version it was revoked in.
    pub version: u64,
    /// Whether this request created the revocation (false: already revoked).
    pub created: bool,
}

/// The answer of [`path::SRL_DELTAS`]: compact JWS deltas in version order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltasPage {
    /// The deltas, oldest first.
    pub deltas: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_msg_ids_name_the_signed_bytes() {
        let a = nats::delta_msg_id(7, "h.p.s1");
        // The shape: prefix, version, 22 base64url characters (128 bits).
        let digest = a.strip_prefix("d-7-").unwrap_or_default();
        assert_eq!(digest.len(), 22, "{a}");
        assert!(digest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        // Same bytes, same id (republishing de-duplicates); other bytes of
        // the same version, another id (no pre-emption by version).
        assert_eq!(a, nats::delta_msg_id(7, "h.p.s1"));
        assert_ne!(a, nats::delta_msg_id(7, "h.p.s2"));
        assert_ne!(a, "7");
        // A checkpoint never shares a delta's id.
        assert_ne!(nats::checkpoint_msg_id(7, "h.p.s1"), a);
        assert!(nats::checkpoint_msg_id(7, "h.p.s1").starts_with("c-7-"));
    }

    #[test]
    fn codes_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "`{s}` twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "`{s}`"
            );
        }
        assert_eq!(crate::TargetError::CODE, ErrorCode::BadTarget.as_str());
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("message"), None);
        assert_eq!(
            EventKind::of_subject(nats::DELTA_SUBJECT),
            Some(EventKind::Delta)
        );
        assert_eq!(EventKind::of_subject("veto.srl.other"), None);
    }
}
