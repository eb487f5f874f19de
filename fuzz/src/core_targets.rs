//! The fuzz targets' bodies and the fixtures they share, one module per
//! target with a `run(&[u8])` that checks invariants by panicking. Plain
//! Rust on veto-core only: the cargo-fuzz binaries in `fuzz_targets/` call
//! it, and veto-core's `tests/fuzz_regressions.rs` includes this file
//! (`#[path]`) to replay every seed and crash reproduction on stable.
//!
//! Fixtures: fixed keys, a verifier and a checker that trust both the
//! fuzzer's own keys and the keys of the conformance vectors (so the seed
//! corpora, built from `tests/vectors`, verify), and a small revocation
//! state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "fuzz targets: a failed step is a finding, and not every helper serves every target"
)]

use std::sync::OnceLock;

use veto_core::{
    CheckConfig, Checker, Entry, EntryKind, Head, Jwk, KeySet, PublicKey, Reason, SigningKey,
    SrlSigner, SrlState, SrlVerifier,
};

/// "Now" of every target: the conformance vectors' `now`.
pub const NOW: u64 = 1_800_000_000;
/// The authority of the vectors and of the fuzzer's own objects.
pub const ISS: &str = "https://registry.example";

/// The vectors' issuer and authority public keys (`tests/vectors/*.json`).
const VECTOR_ISSUER_X: &str = "KbhxLglwzlqB8fkBfv1Fib1ktVAhdDQZNddnt7vx7hc";
const VECTOR_AUTHORITY_X: &str = "ESJkO5QPc0WEJRdpoaHH01xvTvuj8_KhXvnxZiC8sGg";

/// Everything a target needs, built once.
pub struct Fixtures {
    /// The fuzzer's root issuer key (trusted by `checker`).
    pub issuer: SigningKey,
    /// The fuzzer's authority key (trusted by `verifier`).
    pub authority: SigningKey,
    /// Signs published objects with `authority`.
    pub signer: SrlSigner,
    /// Trusts `authority` and the vectors' authority.
    pub verifier: SrlVerifier,
    /// Trusts `issuer` and the vectors' issuer; root `iss` must be [`ISS`].
    pub checker: Checker,
    /// A fresh state at version 1 that revokes warrant `revoked-jti`,
    /// agent `revoked-agent` (before `NOW`) and the key `revoked_key`.
    pub state: SrlState,
    /// A key whose thumbprint `state` revokes.
    pub revoked_key: SigningKey,
}

fn vector_key(x: &str) -> PublicKey {
    PublicKey::from_jwk(&Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: x.into(),
        d: None,
        kid: None,
        alg: None,
        use_: None,
    })
    .expect("the vectors' keys are valid")
}

/// The fixtures.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let issuer = SigningKey::from_seed(&[11; 32]);
        let authority = SigningKey::from_seed(&[12; 32]);
        let revoked_key = SigningKey::from_seed(&[13; 32]);
        let signer = SrlSigner::new(authority.clone(), ISS);
        let verifier = SrlVerifier::new(
            KeySet::new([authority.public().clone(), vector_key(VECTOR_AUTHORITY_X)]),
            ISS,
        );
        let checker = Checker::new(
            KeySet::new([issuer.public().clone(), vector_key(VECTOR_ISSUER_X)]),
            CheckConfig {
                issuer: Some(ISS.into()),
                ..CheckConfig::default()
            },
        );
        let entry = |kind, id: &str, before| Entry {
            kind,
            id: id.into(),
            reason: Reason::Unspecified,
            revoked_at: NOW - 10,
            before,
            expires_at: None,
        };
        let (delta, head) = signer.delta(
            1,
            Head::ZERO,
            NOW - 10,
            vec![
                entry(EntryKind::Warrant, "revoked-jti", None),
                entry(EntryKind::Agent, "revoked-agent", Some(NOW)),
                entry(EntryKind::Key, revoked_key.kid(), None),
            ],
            vec![],
        );
        let mut state = SrlState::new();
        state
            .apply_delta(&verifier.delta(&delta, NOW).unwrap())
            .unwrap();
        let checkpoint = signer.checkpoint(1, head, NOW - 1, NOW + 300);
        state
            .apply_checkpoint(&verifier.checkpoint(&checkpoint, NOW).unwrap())
            .unwrap();
        Fixtures {
            issuer,
            authority,
            signer,
            verifier,
            checker,
            state,
            revoked_key,
        }
    })
}

/// Splits off the first byte as a mode selector.
pub fn mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

/// The input as a token (even mode byte) or as a payload `key` signs as
/// `typ` (odd mode byte); `None` for a token that is not UTF-8.
pub fn token_or_signed(
    m: u8,
    rest: &[u8],
    typ: veto_core::jws::Typ,
    key: &SigningKey,
) -> Option<String> {
    if m % 2 == 0 {
        std::str::from_utf8(rest).ok().map(str::to_owned)
    } else {
        Some(veto_core::jws::sign(typ, key, rest))
    }
}

/// Whether two states hold the same published state.
pub fn same_state(a: &SrlState, b: &SrlState) -> bool {
    a.ver() == b.ver() && a.head() == b.head() && a.set() == b.set() && a.attested() == b.attested()
}

pub mod jws {
    //! Compact JWS: `UnverifiedJws::parse` and `verify` on arbitrary text, and
    //! sign → parse → verify round trips of arbitrary payloads.
    //!
    //! Mode byte (first input byte), rest = input:
    //! - even: the rest is a token; parse, check every `typ`, verify with the
    //!   fixed keys. A token that verifies must verify again after re-parsing,
    //!   and changing its signature must make it fail.
    //! - odd: the rest is a payload; sign it with the fixed key as every `typ`
    //!   and check it verifies back to the same bytes, only as its own `typ`.

    use super::{fixtures, mode};
    use veto_core::jws::{self, JwsError, Typ, UnverifiedJws};
    use veto_core::KeySet;

    const TYPS: [Typ; 4] = [Typ::Warrant, Typ::Snapshot, Typ::Delta, Typ::Checkpoint];
    const MAX: usize = 16 * 1024;

    /// One input.
    pub fn run(data: &[u8]) {
        let Some((m, rest)) = mode(data) else { return };
        let f = fixtures();
        let keys = KeySet::new([f.authority.public().clone(), f.issuer.public().clone()]);
        if m % 2 == 0 {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            let parsed = match UnverifiedJws::parse(token, MAX) {
                Ok(p) => p,
                Err(JwsError::TooLarge { len, limit }) => {
                    assert!(len > limit && limit == MAX);
                    return;
                }
                Err(_) => return,
            };
            assert_eq!(parsed.header().alg, "EdDSA", "parse accepted another alg");
            for typ in TYPS {
                let ok = parsed.expect_typ(typ).is_ok();
                assert_eq!(ok, parsed.header().typ.as_deref() == Some(typ.as_str()));
            }
            let _ = parsed.payload_unverified();
            if let Ok(v) = parsed.verify(&keys) {
                // Only the fixed keys sign; the fuzzer cannot forge, so a
                // verified token is one of ours (a seed or a mutation that kept
                // the signed bytes): it must verify the same way again.
                let again = UnverifiedJws::parse(token, MAX)
                    .unwrap()
                    .verify(&keys)
                    .unwrap();
                assert_eq!(again.payload, v.payload);
                assert_eq!(Some(v.kid.as_str()), parsed.header().kid.as_deref());
                // Flip one signature bit: must no longer verify.
                let (head, sig) = token.rsplit_once('.').unwrap();
                let mut raw = sig.as_bytes().to_vec();
                raw[0] = if raw[0] == b'A' { b'B' } else { b'A' };
                let forged = format!("{head}.{}", String::from_utf8(raw).unwrap());
                if let Ok(p) = UnverifiedJws::parse(&forged, MAX) {
                    assert!(p.verify(&keys).is_err(), "a changed signature verified");
                }
            }
        } else {
            for (i, typ) in TYPS.into_iter().enumerate() {
                let key = if i % 2 == 0 { &f.authority } else { &f.issuer };
                let token = jws::sign(typ, key, rest);
                if token.len() > MAX {
                    continue;
                }
                for other in TYPS {
                    let r = jws::verify(&token, other, &keys, MAX);
                    if other == typ {
                        let v = r.expect("a freshly signed JWS verifies");
                        assert_eq!(v.payload, rest);
                        assert_eq!(v.kid, key.kid());
                    } else {
                        assert!(matches!(r, Err(JwsError::Typ { .. })), "typ separation");
                    }
                }
            }
        }
    }
}

pub mod chain {
    //! Warrant chains: `ParsedChain::parse` and `Checker` decisions on arbitrary
    //! tokens, against fixed trusted issuer keys and a small revocation state.
    //!
    //! Mode byte (first input byte), rest = input:
    //! - even: the rest is a token `root~…~leaf`.
    //! - odd: the rest is a claims payload, signed as a root link by the
    //!   trusted issuer (or by the revoked key when bit 1 is set), optionally
    //!   followed (after a `~`) by more raw links: reaches every check behind
    //!   the root signature.
    //!
    //! Invariants: `check`, `check_token` and `check_and_verify` agree; an
    //! allowed chain is not revoked according to an independent reading of its
    //! claims, verifies, is within limits and time-valid; a chain that names a
    //! revoked id is never allowed and, when it parses, is denied `revoked`.

    use super::{fixtures, mode, NOW};
    use veto_core::jws::{self, Typ};
    use veto_core::warrant::limits;
    use veto_core::{Decision, DenyReason, ParsedChain};

    const ACTIONS: [&str; 3] = ["http:GET:/orders/7", "tool:search", "*"];

    /// One input.
    pub fn run(data: &[u8]) {
        let Some((m, rest)) = mode(data) else { return };
        let f = fixtures();
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let token = if m % 2 == 0 {
            text.to_owned()
        } else {
            let (claims, tail) = text
                .split_once('~')
                .map_or((text, None), |(a, b)| (a, Some(b)));
            let key = if m & 2 == 0 {
                &f.issuer
            } else {
                &f.revoked_key
            };
            let typ = if m & 4 == 0 {
                Typ::Warrant
            } else {
                Typ::Checkpoint
            };
            let root = jws::sign(typ, key, claims.as_bytes());
            match tail {
                Some(t) => format!("{root}~{t}"),
                None => root,
            }
        };
        let action = ACTIONS[usize::from(m >> 4) % ACTIONS.len()];
        let state = &f.state;
        let by_token = f.checker.check_token(state, &token, action, NOW);
        let chain = match ParsedChain::parse(&token) {
            Ok(c) => c,
            Err(e) => {
                assert_eq!(e.reason(), DenyReason::Malformed);
                assert_eq!(by_token, Decision::Deny(e.into()));
                return;
            }
        };
        let links = chain.links();
        assert!(!links.is_empty() && links.len() <= limits::MAX_DEPTH);
        assert!(token.len() <= limits::MAX_CHAIN_BYTES);
        let decision = f.checker.check(state, &chain, action, NOW);
        assert_eq!(decision, by_token, "check and check_token disagree");
        let (again, verified) = f
            .checker
            .check_and_verify(state, chain.clone(), action, NOW);
        assert_eq!(
            again.reason(),
            decision.reason(),
            "check_and_verify disagrees"
        );
        if let Some(v) = &verified {
            assert_eq!(
                f.checker.check_verified(state, v, action, NOW).reason(),
                decision.reason()
            );
        }

        // An independent reading of the revocation state's three entries.
        let revoked_kid = f.revoked_key.kid();
        let names_revoked = links.iter().any(|l| {
            let c = l.claims();
            c.jti == "revoked-jti"
                || (c.sub == "revoked-agent" && c.iat.unwrap_or(0) <= NOW)
                || l.holder().is_some_and(|h| h.kid() == revoked_kid)
        }) || chain.root().kid() == Some(revoked_kid);
        if names_revoked {
            assert_eq!(decision.reason(), Some(DenyReason::Revoked), "{decision:?}");
        }
        if decision.is_allowed() {
            assert!(!names_revoked);
            assert!(verified.is_some(), "allowed but does not verify");
            assert!(links.len() <= f.checker.config().max_depth);
            for l in links {
                assert!(l.claims().exp > NOW, "allowed an expired link");
            }
            assert!(chain.leaf().actions().allows(action));
        }
    }
}

pub mod snapshot {
    //! Snapshots: `SrlVerifier::snapshot` on an arbitrary container (binary
    //! or text), and on arbitrary payload bytes signed with the trusted
    //! authority key with arbitrary table bytes beside them (the payload
    //! JSON, the signed counts and hash, and the records behind the
    //! signature), then `SrlState::apply_snapshot`.
    //!
    //! Mode byte (first input byte), rest = input: even, a container; odd,
    //! a payload to sign as a snapshot, then (after the first `\n`, if any)
    //! the table bytes, made into a binary container.
    //!
    //! Invariants: a verified snapshot re-signed from its loaded set verifies to
    //! the same version, head, times and set (table encoding round trip),
    //! from either container; applying follows DESIGN 4 (older: rollback
    //! refused; same version, other head: equivocation; same: refreshed;
    //! newer: the state becomes exactly the snapshot's) and a refusal leaves
    //! the state unchanged.

    use super::{fixtures, mode, same_state, NOW};
    use veto_core::jws::Typ;
    use veto_core::{Applied, ApplyError, SrlState};

    /// One input.
    pub fn run(data: &[u8]) {
        let Some((m, rest)) = mode(data) else { return };
        let f = fixtures();
        let container = if m % 2 == 0 {
            rest.to_vec()
        } else {
            let at = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (payload, tables) = rest.split_at(at);
            let mut out = veto_core::jws::sign(Typ::Snapshot, &f.authority, payload).into_bytes();
            out.push(b'\n');
            out.extend_from_slice(tables.get(1..).unwrap_or_default());
            out
        };
        let Ok(snap) = f.verifier.snapshot(&container, NOW) else {
            return;
        };
        assert!(snap.iat <= NOW + 5);
        let resigned = f
            .signer
            .snapshot(snap.ver, snap.head, snap.iat, snap.exp, &snap.set);
        let again = f
            .verifier
            .snapshot(&resigned, NOW)
            .expect("re-signed snapshot verifies");
        assert_eq!(
            (again.ver, again.head, again.iat, again.exp),
            (snap.ver, snap.head, snap.iat, snap.exp)
        );
        assert!(again.set == snap.set, "snapshot tables do not round-trip");
        let text = f
            .verifier
            .snapshot(resigned.to_text(), NOW)
            .expect("re-signed snapshot verifies as text");
        assert!(text.set == snap.set, "text container does not round-trip");

        for base in [SrlState::new(), f.state.clone()] {
            let mut state = base.clone();
            match state.apply_snapshot(snap.clone()) {
                Ok(Applied::Advanced { from, to }) => {
                    assert_eq!((from, to), (base.ver(), snap.ver));
                    assert!(snap.ver > base.ver());
                    assert_eq!(state.head(), snap.head);
                    assert!(state.set() == &snap.set);
                }
                Ok(Applied::Refreshed) => {
                    assert_eq!((snap.ver, snap.head), (base.ver(), base.head()));
                    assert!(state.set() == base.set(), "a refresh replaced the set");
                }
                Ok(Applied::Ignored) => panic!("a snapshot is never silently ignored"),
                Err(e) => {
                    assert!(
                        same_state(&state, &base),
                        "refused snapshot changed the state"
                    );
                    match e {
                        ApplyError::Rollback { applied, received } => {
                            assert_eq!((applied, received), (base.ver(), snap.ver));
                            assert!(snap.ver < base.ver());
                        }
                        ApplyError::Equivocation { ver } => {
                            assert_eq!(ver, base.ver());
                            assert_ne!(snap.head, base.head());
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
    }
}

pub mod delta {
    //! Deltas: `SrlVerifier::delta` on arbitrary text, and on arbitrary payload
    //! bytes signed with the trusted authority key (so the payload parser behind
    //! the signature is reached), then `SrlState::apply_delta`.
    //!
    //! Mode byte (first input byte), rest = input: even, a token; odd, a
    //! payload to sign as a delta.
    //!
    //! Invariants: a verified delta's head is SHA-256 of its payload bytes, its
    //! payload survives a JSON round trip and re-signing; applying follows
    //! DESIGN 4 exactly (ignore `ver <= applied`, gap beyond `applied + 1`,
    //! wrong `prev` refused, else advance by one with every added entry
    //! present), and a refused or ignored delta leaves the state unchanged.

    use super::{fixtures, mode, same_state, token_or_signed, NOW};
    use veto_core::jws::{Typ, UnverifiedJws};
    use veto_core::srl::DeltaPayload;
    use veto_core::{Applied, ApplyError, Digest, Head, SrlState};

    /// One input.
    pub fn run(data: &[u8]) {
        let Some((m, rest)) = mode(data) else { return };
        let f = fixtures();
        let Some(token) = token_or_signed(m, rest, Typ::Delta, &f.authority) else {
            return;
        };
        let Ok(delta) = f.verifier.delta(&token, NOW) else {
            return;
        };
        let bytes = UnverifiedJws::parse(&token, usize::MAX)
            .unwrap()
            .payload_unverified()
            .unwrap();
        assert_eq!(delta.head, Head::of_payload(&bytes));
        let p = &delta.payload;
        assert!(p.ver >= 1 && p.iat <= NOW + 5 && p.iss == super::ISS);
        let json = serde_json::to_vec(p).unwrap();
        assert_eq!(&serde_json::from_slice::<DeltaPayload>(&json).unwrap(), p);
        let (resigned, head) = f
            .signer
            .delta(p.ver, p.prev, p.iat, p.add.clone(), p.rm.clone());
        let again = f
            .verifier
            .delta(&resigned, NOW)
            .expect("re-signed delta verifies");
        assert_eq!(&again.payload, p);
        assert_eq!(again.head, head);

        for base in [SrlState::new(), f.state.clone()] {
            let mut state = base.clone();
            match state.apply_delta(&delta) {
                Ok(Applied::Advanced { from, to }) => {
                    assert_eq!((from, to), (base.ver(), p.ver));
                    assert_eq!(p.ver, base.ver() + 1);
                    assert_eq!(p.prev, base.head());
                    assert_eq!(state.head(), delta.head);
                    for e in &p.add {
                        assert!(
                            state.set().get(e.kind, &e.digest()).is_some(),
                            "added entry missing"
                        );
                    }
                    for r in &p.rm {
                        if !p.add.iter().any(|e| e.kind == r.kind && e.id == r.id) {
                            assert!(state
                                .set()
                                .get(r.kind, &Digest::of(r.kind, &r.id))
                                .is_none());
                        }
                    }
                }
                Ok(Applied::Ignored) => {
                    assert!(p.ver <= base.ver());
                    assert!(same_state(&state, &base));
                }
                Ok(Applied::Refreshed) => panic!("a delta never only refreshes"),
                Err(e) => {
                    assert!(same_state(&state, &base), "refused delta changed the state");
                    match e {
                        ApplyError::Gap { applied, received } => {
                            assert_eq!(applied, base.ver());
                            assert_eq!(received, p.ver);
                            assert!(p.ver > base.ver() + 1);
                        }
                        ApplyError::BrokenChain { ver } => {
                            assert_eq!(ver, base.ver() + 1);
                            assert_ne!(p.prev, base.head());
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
    }
}

pub mod checkpoint {
    //! Checkpoints: `SrlVerifier::checkpoint` on arbitrary text, and on
    //! arbitrary payload bytes signed with the trusted authority key, then
    //! `SrlState::apply_checkpoint`.
    //!
    //! Mode byte (first input byte), rest = input: even, a token; odd, a
    //! payload to sign as a checkpoint (bit 1 set: signed as a delta instead,
    //! which must never verify as a checkpoint).
    //!
    //! Invariants: `typ` separation; a verified payload survives a JSON round
    //! trip and re-signing; `iat` is within the skew allowance; applying follows
    //! DESIGN 4 (lower: ignored; higher: gap; same version and head: refreshed;
    //! same version, other head: equivocation) and only a refresh changes the
    //! state, and only its attestation.

    use super::{fixtures, mode, same_state, token_or_signed, NOW};
    use veto_core::jws::{self, Typ};
    use veto_core::srl::CheckpointPayload;
    use veto_core::{Applied, ApplyError, SrlError, SrlState};

    /// One input.
    pub fn run(data: &[u8]) {
        let Some((m, rest)) = mode(data) else { return };
        let f = fixtures();
        if m % 2 == 1 && m & 2 != 0 {
            let t = jws::sign(Typ::Delta, &f.authority, rest);
            let r = f.verifier.checkpoint(&t, NOW);
            assert!(
                matches!(r, Err(SrlError::Jws { .. })),
                "a delta verified as a checkpoint: {r:?}"
            );
            return;
        }
        let Some(token) = token_or_signed(m, rest, Typ::Checkpoint, &f.authority) else {
            return;
        };
        let Ok(cp) = f.verifier.checkpoint(&token, NOW) else {
            return;
        };
        let p = &cp.payload;
        assert!(p.iat <= NOW + 5 && p.iss == super::ISS);
        let json = serde_json::to_vec(p).unwrap();
        assert_eq!(
            &serde_json::from_slice::<CheckpointPayload>(&json).unwrap(),
            p
        );
        let resigned = f.signer.checkpoint(p.ver, p.head, p.iat, p.exp);
        assert_eq!(&f.verifier.checkpoint(&resigned, NOW).unwrap().payload, p);

        for base in [SrlState::new(), f.state.clone()] {
            let mut state = base.clone();
            match state.apply_checkpoint(&cp) {
                Ok(Applied::Refreshed) => {
                    assert_eq!((p.ver, p.head), (base.ver(), base.head()));
                    assert_eq!(
                        (state.ver(), state.head(), state.set()),
                        (base.ver(), base.head(), base.set())
                    );
                    let a = state.attested().unwrap();
                    assert!(a.iat >= base.attested().map_or(0, |b| b.iat));
                }
                Ok(Applied::Ignored) => {
                    assert!(p.ver < base.ver());
                    assert!(same_state(&state, &base));
                }
                Ok(Applied::Advanced { .. }) => panic!("a checkpoint never advances"),
                Err(e) => {
                    assert!(
                        same_state(&state, &base),
                        "refused checkpoint changed the state"
                    );
                    match e {
                        ApplyError::Gap { applied, received } => {
                            assert_eq!((applied, received), (base.ver(), p.ver));
                            assert!(p.ver > base.ver());
                        }
                        ApplyError::Equivocation { ver } => {
                            assert_eq!(ver, base.ver());
                            assert_ne!(p.head, base.head());
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
    }
}

pub mod sse {
    //! The SSE parser fed arbitrary bytes, whole and split at fuzzer-chosen
    //! points.
    //!
    //! Input: byte 0 selects the event size limit (small limits exercise the
    //! bound), byte 1 the number of split points (0–7), then two bytes per split
    //! point, then the stream.
    //!
    //! Invariant: how the stream is split into chunks does not change the
    //! outcome: the same events in the same order, or the same error. After an
    //! error the stream is abandoned (the client reconnects), so the events
    //! returned before it are not compared.

    use veto_core::{SseError, SseEvent, SseParser};

    fn feed_all(stream: &[u8], cuts: &[usize], max: usize) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            out.extend(p.feed(&stream[at..cut])?);
            at = cut;
        }
        Ok(out)
    }

    /// One input.
    pub fn run(data: &[u8]) {
        if data.len() < 2 {
            return;
        }
        let max = match data[0] % 4 {
            0 => 16,
            1 => 64,
            2 => 300,
            _ => 1 << 20,
        };
        let n = usize::from(data[1] % 8);
        let Some(points) = data.get(2..2 + 2 * n) else {
            return;
        };
        let stream = &data[2 + 2 * n..];
        let mut cuts: Vec<usize> = points
            .chunks_exact(2)
            .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
            .collect();
        cuts.sort_unstable();
        let whole = feed_all(stream, &[], max);
        let split = feed_all(stream, &cuts, max);
        assert_eq!(whole, split, "splitting at {cuts:?} changed the outcome");
        let bytewise: Vec<usize> = (0..stream.len()).collect();
        if stream.len() <= 512 {
            assert_eq!(
                whole,
                feed_all(stream, &bytewise, max),
                "byte-by-byte feeding changed the outcome"
            );
        }
    }
}

pub mod jwk {
    //! JWK parsing: `PublicKey::from_jwk_json`, `SigningKey::from_jwk_json` and
    //! the `Jwk` serde shape on arbitrary text.
    //!
    //! Invariants: a parsed public key round-trips through `to_jwk` and its
    //! `kid` is the RFC 7638 thumbprint of its `x`; a parsed private key's public
    //! half is the JWK's `x`, round-trips through `to_private_jwk`, and signs a
    //! JWS that verifies with the public key parsed from the same text.

    use veto_core::jws::{self, Typ};
    use veto_core::{thumbprint, Jwk, PublicKey, SigningKey};

    /// One input.
    pub fn run(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(jwk) = serde_json::from_str::<Jwk>(text) {
            let again: Jwk = serde_json::from_str(&serde_json::to_string(&jwk).unwrap()).unwrap();
            assert_eq!(again, jwk, "Jwk serde round trip");
        }
        let public = PublicKey::from_jwk_json(text);
        if let Ok(key) = &public {
            let jwk = key.to_jwk();
            assert_eq!(key.kid(), thumbprint(&jwk.x));
            assert_eq!(&PublicKey::from_jwk(&jwk).unwrap(), key);
            let text_again = serde_json::to_string(&jwk).unwrap();
            assert_eq!(&PublicKey::from_jwk_json(&text_again).unwrap(), key);
        }
        if let Ok(key) = SigningKey::from_jwk_json(text) {
            let public = public.expect("a valid private JWK has a valid public part");
            assert_eq!(key.public(), &public);
            let jwk = key.to_private_jwk();
            assert_eq!(SigningKey::from_jwk(&jwk).unwrap().public(), key.public());
            let token = jws::sign(Typ::Warrant, &key, b"{}");
            assert!(jws::verify(&token, Typ::Warrant, &public, 1024).is_ok());
        }
    }
}
