#![allow(
    clippy::unwrap_used,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! The wire contract, pinned by hand (STYLE: "One source for every wire
//! string"). Everything else (the registry, the authorizer, the proxy, the
//! CLI, the tests, the benchmarks) imports these strings from
//! `veto_core::wire` and `DenyReason`; this file is the one place they are
//! written a second time, so changing what goes on the wire is a
//! deliberate, visible edit here, and is caught when it is not.
//!
//! The enums are matched exhaustively: a new variant does not compile
//! until its string is pinned here.

use veto_core::wire::{header, nats, path, DeltasPage, ErrorBody, ErrorCode, EventKind};
use veto_core::DenyReason;

#[test]
fn paths() {
    let pinned = [
        (path::SRL, "/v1/srl"),
        (path::SRL_DELTAS, "/v1/srl/deltas"),
        (path::SRL_CHECKPOINT, "/v1/srl/checkpoint"),
        (path::SRL_EVENTS, "/v1/srl/events"),
        (path::REVOCATIONS, "/v1/revocations"),
        (path::REVOCATIONS_DELEGATED, "/v1/revocations/delegated"),
        (path::WARRANTS, "/v1/warrants"),
        (path::TOKENS, "/v1/tokens"),
        (path::FLEET, "/v1/fleet"),
        (path::FLEET_REPORTS, "/v1/fleet/reports"),
        (path::FLEET_GATEWAYS, "/v1/fleet/gateways"),
        (path::FLEET_VERSIONS, "/v1/fleet/versions"),
        (path::FLEET_EVENTS, "/v1/fleet/events"),
        (path::UI, "/ui"),
        (path::ISSUER_KEYS, "/v1/issuer-keys"),
        (path::AUTHORITY, "/v1/authority"),
        (path::JWKS, "/.well-known/jwks.json"),
        (path::HEALTHZ, "/healthz"),
        (path::READYZ, "/readyz"),
        (path::METRICS, "/metrics"),
    ];
    for (got, want) in pinned {
        assert_eq!(got, want);
    }
}

#[test]
fn headers() {
    let pinned = [
        (header::DPOP, "dpop"),
        (header::DPOP_NONCE, "dpop-nonce"),
        (header::AGENT, "veto-agent"),
        (header::ROOT_AGENT, "veto-root-agent"),
        (header::DELEGATION, "veto-delegation"),
        (header::WARRANT, "veto-warrant"),
        (header::HOLDER, "veto-holder"),
        (header::STALE, "veto-stale"),
    ];
    for (got, want) in pinned {
        assert_eq!(got, want);
    }
}

#[test]
fn nats_names() {
    // Message ids: kind, version, the first 128 bits of SHA-256 of the
    // signed bytes in base64url (computed here by hand with Python's
    // hashlib for these two inputs).
    assert_eq!(
        nats::delta_msg_id(7, "h.p.s1"),
        "d-7-ZAFCsp0LFA86wB8KVQkgag"
    );
    assert_eq!(
        nats::checkpoint_msg_id(9, "h.p.s2"),
        "c-9-BJNSFbJAcSAHrdKOeXhhzw"
    );
    assert_eq!(
        nats::issuers_msg_id(3, "h.p.s3"),
        "i-3-2FfwjOMIoSt6cX6oeYWm-g"
    );
    assert_eq!(nats::STREAM, "VETO_SRL");
    assert_eq!(nats::SUBJECTS, "veto.srl.>");
    assert_eq!(nats::DELTA_SUBJECT, "veto.srl.delta");
    assert_eq!(nats::CHECKPOINT_SUBJECT, "veto.srl.checkpoint");
    assert_eq!(nats::ISSUERS_SUBJECT, "veto.srl.issuers");
}

#[test]
fn event_kinds() {
    let pinned = |k: EventKind| match k {
        EventKind::Delta => "delta",
        EventKind::Checkpoint => "checkpoint",
        EventKind::Snapshot => "snapshot",
        EventKind::Issuers => "issuers",
    };
    assert_eq!(EventKind::ALL.len(), 4);
    for k in EventKind::ALL {
        assert_eq!(k.as_str(), pinned(k));
        assert_eq!(k.to_string(), pinned(k));
    }
    assert_eq!(
        EventKind::of_subject("veto.srl.delta"),
        Some(EventKind::Delta)
    );
    assert_eq!(
        EventKind::of_subject("veto.srl.checkpoint"),
        Some(EventKind::Checkpoint)
    );
    assert_eq!(
        EventKind::of_subject("veto.srl.issuers"),
        Some(EventKind::Issuers)
    );
    assert_eq!(EventKind::of_subject("veto.srl.snapshot"), None);
}

#[test]
fn error_codes() {
    let pinned = |c: ErrorCode| match c {
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::UnsupportedMediaType => "unsupported_media_type",
        ErrorCode::InvalidJson => "invalid_json",
        ErrorCode::BadBody => "bad_body",
        ErrorCode::BodyTooLarge => "body_too_large",
        ErrorCode::BatchTooLarge => "batch_too_large",
        ErrorCode::NoEntries => "no_entries",
        ErrorCode::UnknownKind => "unknown_kind",
        ErrorCode::UnknownReason => "unknown_reason",
        ErrorCode::InvalidId => "invalid_id",
        ErrorCode::MissingBefore => "missing_before",
        ErrorCode::UnexpectedBefore => "unexpected_before",
        ErrorCode::InvalidExpiresAt => "invalid_expires_at",
        ErrorCode::InvalidBefore => "invalid_before",
        ErrorCode::InvalidNote => "invalid_note",
        ErrorCode::InvalidAgent => "invalid_agent",
        ErrorCode::InvalidAct => "invalid_act",
        ErrorCode::InvalidTtl => "invalid_ttl",
        ErrorCode::InvalidHolderKey => "invalid_holder_key",
        ErrorCode::InvalidWarrant => "invalid_warrant",
        ErrorCode::NoIssuerKey => "no_issuer_key",
        ErrorCode::UnknownKey => "unknown_key",
        ErrorCode::InvalidQuery => "invalid_query",
        ErrorCode::InvalidLimit => "invalid_limit",
        ErrorCode::InvalidSince => "invalid_since",
        ErrorCode::MissingSince => "missing_since",
        ErrorCode::InvalidLastEventId => "invalid_last_event_id",
        ErrorCode::Gone => "gone",
        ErrorCode::Busy => "busy",
        ErrorCode::TooManySubscribers => "too_many_subscribers",
        ErrorCode::StoreUnavailable => "store_unavailable",
        ErrorCode::StoreFull => "store_full",
        ErrorCode::StoreReadOnly => "store_read_only",
        ErrorCode::SnapshotUnavailable => "snapshot_unavailable",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Internal => "internal",
        ErrorCode::BadTarget => "bad_target",
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::UpgradeRefused => "upgrade_refused",
        ErrorCode::UpstreamTimeout => "upstream_timeout",
        ErrorCode::BadGateway => "bad_gateway",
        ErrorCode::PopRequired => "pop_required",
        ErrorCode::PopInvalid => "pop_invalid",
        ErrorCode::InvalidChain => "invalid_chain",
        ErrorCode::InvalidLink => "invalid_link",
        ErrorCode::NotYourLink => "not_your_link",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::InvalidName => "invalid_name",
        ErrorCode::InvalidScope => "invalid_scope",
        ErrorCode::NameTaken => "name_taken",
        ErrorCode::InvalidReport => "invalid_report",
        ErrorCode::NotEnrolled => "not_enrolled",
        ErrorCode::StaleReport => "stale_report",
        ErrorCode::InvalidGatewayKey => "invalid_gateway_key",
        ErrorCode::AlreadyEnrolled => "already_enrolled",
        ErrorCode::GatewayRemoved => "gateway_removed",
        ErrorCode::FleetFull => "fleet_full",
    };
    // `ALL` lists every variant once (the match above has one arm each).
    assert_eq!(ErrorCode::ALL.len(), 59);
    let mut seen = std::collections::HashSet::new();
    for &c in ErrorCode::ALL {
        assert!(seen.insert(c), "{c:?} twice in ALL");
        assert_eq!(c.as_str(), pinned(c));
        assert_eq!(c.to_string(), pinned(c));
    }
}

#[test]
fn deny_reasons() {
    let pinned = |r: DenyReason| match r {
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
    };
    assert_eq!(DenyReason::ALL.len(), 11);
    let mut seen = std::collections::HashSet::new();
    for r in DenyReason::ALL {
        assert!(seen.insert(r), "{r:?} twice in ALL");
        assert_eq!(r.as_str(), pinned(r));
        assert_eq!(r.to_string(), pinned(r));
    }
}

#[test]
fn bodies() {
    assert_eq!(
        ErrorBody::new(ErrorCode::Gone, "fetch the snapshot").to_json(),
        r#"{"error":"gone","message":"fetch the snapshot"}"#
    );
    let page = DeltasPage {
        deltas: vec!["a.b.c".into()],
    };
    assert_eq!(
        serde_json::to_string(&page).unwrap(),
        r#"{"deltas":["a.b.c"]}"#
    );
    assert_eq!(
        serde_json::to_string(&DeltasPage::default()).unwrap(),
        r#"{"deltas":[]}"#
    );
}
