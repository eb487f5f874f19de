#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! Property tests of veto-core through its public API: JWS round trips and
//! tamper evidence, the apply state machine against a model and against
//! snapshots, and no panics on arbitrary input.
//!
//! Case counts are moderate so the suite stays quick in debug builds
//! (Ed25519 costs milliseconds there); set `PROPTEST_CASES` to run more.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use veto_core::jws::{self, JwsError, Typ, UnverifiedJws};
use veto_core::warrant::{delegate, mint_root};
use veto_core::{
    Applied, ApplyError, CheckConfig, Checker, Decision, Digest, Entry, EntryKind, Head, KeySet,
    LinkSpec, ParsedChain, Pattern, PublicKey, Reason, Removed, RevocationSet, SigningKey,
    SrlSigner, SrlState, SrlVerifier, VerifiedDelta,
};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://registry.example";
const TYPS: [Typ; 4] = [Typ::Warrant, Typ::Snapshot, Typ::Delta, Typ::Checkpoint];

/// `n` cases, unless `PROPTEST_CASES` says otherwise.
fn cases(n: u32) -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(n)
    }
}

fn typ() -> impl Strategy<Value = Typ> {
    proptest::sample::select(TYPS.to_vec())
}

// ---------------------------------------------------------------------------
// Fixtures, built once.

struct World {
    issuer: SigningKey,
    signer: SrlSigner,
    verifier: SrlVerifier,
    checker: Checker,
    /// A fresh, empty state at version 0 (attested by a checkpoint).
    state: SrlState,
    /// A valid chain of depth 3 that `checker` allows for `ACTION`.
    chain: String,
    /// A delta, a checkpoint and a (non-empty) snapshot that verify (the
    /// snapshot's text container: a changed byte may land in the JWS, the
    /// separator or the base64url tables).
    delta: String,
    checkpoint: String,
    snapshot: String,
}

const ACTION: &str = "http:GET:/orders/7";

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let authority = SigningKey::from_seed(&[2; 32]);
        let holders: Vec<SigningKey> = (3..6).map(|i| SigningKey::from_seed(&[i; 32])).collect();
        let signer = SrlSigner::new(authority.clone(), ISS);
        let verifier = SrlVerifier::new(KeySet::new([authority.public().clone()]), ISS);
        let checker = Checker::new(
            KeySet::new([issuer.public().clone()]),
            CheckConfig {
                issuer: Some(ISS.into()),
                ..CheckConfig::default()
            },
        );
        let mut state = SrlState::new();
        let checkpoint = signer.checkpoint(0, Head::ZERO, NOW - 1, NOW + 300);
        state
            .apply_checkpoint(&verifier.checkpoint(&checkpoint, NOW).unwrap())
            .unwrap();

        let spec = |sub: &str, act: &str, exp: u64, holder: &SigningKey| LinkSpec {
            sub: sub.into(),
            act: vec![act.into()],
            iat: NOW - 60,
            exp,
            holder: Some(holder.public().clone()),
        };
        let mut chain = mint_root(
            &issuer,
            ISS,
            spec("alice", "http:GET:/*", NOW + 3600, &holders[0]),
        )
        .unwrap();
        chain = delegate(
            &chain,
            &holders[0],
            spec("bob", "http:GET:/orders/*", NOW + 1800, &holders[1]),
        )
        .unwrap();
        chain = delegate(
            &chain,
            &holders[1],
            spec("carol", ACTION, NOW + 900, &holders[2]),
        )
        .unwrap();
        assert_eq!(
            checker.check_token(&state, &chain, ACTION, NOW),
            Decision::Allow { stale: false }
        );

        let adds = vec![
            entry(EntryKind::Warrant, "w", None),
            entry(EntryKind::Agent, "a", Some(NOW)),
            entry(EntryKind::Key, "k", None),
        ];
        let (delta, head) = signer.delta(1, Head::ZERO, NOW - 1, adds.clone(), vec![]);
        let mut set = RevocationSet::default();
        adds.iter().for_each(|e| {
            set.insert(e.kind, e.digest(), e.before.unwrap_or(0));
        });
        let snapshot = signer.snapshot(1, head, NOW - 1, NOW + 300, &set).to_text();
        World {
            issuer,
            signer,
            verifier,
            checker,
            state,
            chain,
            delta,
            checkpoint,
            snapshot,
        }
    })
}

fn entry(kind: EntryKind, id: &str, before: Option<u64>) -> Entry {
    Entry {
        kind,
        id: id.into(),
        reason: Reason::Unspecified,
        revoked_at: NOW - 10,
        before,
        expires_at: None,
    }
}

// ---------------------------------------------------------------------------
// Signing and tamper evidence.

/// Characters a byte of a compact JWS may be changed to: the whole base64url
/// alphabet, the separators, padding, the standard-base64 extras, and a few
/// that never belong.
fn replacement() -> impl Strategy<Value = char> {
    let mut chars: Vec<char> = ('A'..='Z').chain('a'..='z').chain('0'..='9').collect();
    chars.extend("-_.~=+/ \0\n\u{e9}".chars());
    proptest::sample::select(chars)
}

/// `s` with the byte at `at` replaced by `c`; `None` when that is no change.
/// Compact JWS and chains are ASCII, so every index is a char boundary.
fn change_one_byte(s: &str, at: Index, c: char) -> Option<String> {
    assert!(s.is_ascii());
    let i = at.index(s.len());
    if char::from(s.as_bytes()[i]) == c {
        return None;
    }
    let mut out = s.to_owned();
    out.replace_range(i..=i, c.encode_utf8(&mut [0; 4]));
    Some(out)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn sign_verify_round_trip(seed in any::<[u8; 32]>(), payload in proptest::collection::vec(any::<u8>(), 0..300), typ in typ()) {
        let key = SigningKey::from_seed(&seed);
        let token = jws::sign(typ, &key, &payload);
        let verified = jws::verify(&token, typ, key.public(), token.len()).unwrap();
        prop_assert_eq!(&verified.payload, &payload);
        prop_assert_eq!(verified.kid.as_str(), key.kid());

        let parsed = UnverifiedJws::parse(&token, token.len()).unwrap();
        prop_assert_eq!(parsed.header().alg.as_str(), "EdDSA");
        prop_assert_eq!(parsed.header().typ.as_deref(), Some(typ.as_str()));
        prop_assert_eq!(parsed.payload_unverified().unwrap(), payload);

        // `typ` is domain separation: no other type accepts it.
        for other in TYPS.into_iter().filter(|t| *t != typ) {
            let is_typ_error = matches!(jws::verify(&token, other, key.public(), usize::MAX), Err(JwsError::Typ { .. }));
            prop_assert!(is_typ_error);
        }
        // Another key does not verify it.
        let mut other_seed = seed;
        other_seed[0] ^= 1;
        prop_assert_eq!(parsed.verify_with(SigningKey::from_seed(&other_seed).public()), Err(JwsError::BadSignature));
        // The size limit is inclusive and checked first.
        let too_large = matches!(jws::verify(&token, typ, key.public(), token.len() - 1), Err(JwsError::TooLarge { .. }));
        prop_assert!(too_large);
        // The public JWK round-trips to the same key and kid.
        let jwk = serde_json::to_string(&key.public().to_jwk()).unwrap();
        prop_assert_eq!(&PublicKey::from_jwk_json(&jwk).unwrap(), key.public());
    }

    #[test]
    fn jws_any_single_byte_change_is_rejected(
        seed in any::<[u8; 32]>(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        typ in typ(),
        at in any::<Index>(),
        c in replacement(),
    ) {
        let key = SigningKey::from_seed(&seed);
        let token = jws::sign(typ, &key, &payload);
        let Some(changed) = change_one_byte(&token, at, c) else { return Ok(()) };
        let result = jws::verify(&changed, typ, key.public(), usize::MAX);
        prop_assert!(result.is_err(), "accepted after changing byte {}: {:?}", at.index(token.len()), result);
    }

    #[test]
    fn chain_any_single_byte_change_is_denied(at in any::<Index>(), c in replacement()) {
        let w = world();
        let Some(changed) = change_one_byte(&w.chain, at, c) else { return Ok(()) };
        let decision = w.checker.check_token(&w.state, &changed, ACTION, NOW);
        prop_assert!(!decision.is_allowed(), "allowed after changing byte {}", at.index(w.chain.len()));
    }

    #[test]
    fn srl_any_single_byte_change_is_rejected(which in 0..3usize, at in any::<Index>(), c in replacement()) {
        let w = world();
        let token = [&w.delta, &w.checkpoint, &w.snapshot][which];
        let Some(changed) = change_one_byte(token, at, c) else { return Ok(()) };
        let accepted = match which {
            0 => w.verifier.delta(&changed, NOW).is_ok(),
            1 => w.verifier.checkpoint(&changed, NOW).is_ok(),
            _ => w.verifier.snapshot(&changed, NOW).is_ok(),
        };
        prop_assert!(!accepted, "accepted after changing byte {}", at.index(token.len()));
    }
}

// ---------------------------------------------------------------------------
// The apply state machine.

/// One delta's changes: `(kind, id, before)` added and `(kind, id)` pruned.
/// Ids come from a small pool so adds, re-adds and removals collide.
#[derive(Clone, Debug)]
struct Change {
    add: Vec<(usize, u8, u64)>,
    rm: Vec<(usize, u8)>,
}

const IDS: u8 = 5;

fn changes() -> impl Strategy<Value = Vec<Change>> {
    let change = (
        proptest::collection::vec((0..3usize, 0..IDS, 0..4u64), 0..4),
        proptest::collection::vec((0..3usize, 0..IDS), 0..3),
    )
        .prop_map(|(add, rm)| Change { add, rm });
    proptest::collection::vec(change, 1..7)
}

fn id(i: u8) -> String {
    format!("id-{i}")
}

fn add_entry(&(k, i, b): &(usize, u8, u64)) -> Entry {
    let kind = EntryKind::ALL[k];
    entry(
        kind,
        &id(i),
        (kind == EntryKind::Agent).then_some(NOW - 1000 + b * 100),
    )
}

/// Signs deltas 1..=n for `changes`, verifies them, and records the
/// in-order state after each (index = version).
fn sign_and_apply(changes: &[Change]) -> (Vec<VerifiedDelta>, Vec<SrlState>) {
    let w = world();
    let mut states = vec![SrlState::new()];
    let mut deltas = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let ver = i as u64 + 1;
        let state = states.last().unwrap();
        let add = c.add.iter().map(add_entry).collect();
        let rm =
            c.rm.iter()
                .map(|&(k, i)| Removed {
                    kind: EntryKind::ALL[k],
                    id: id(i),
                })
                .collect();
        let (token, head) = w.signer.delta(ver, state.head(), NOW - 100 + ver, add, rm);
        let delta = w.verifier.delta(&token, NOW).unwrap();
        assert_eq!(
            delta.head, head,
            "the signer and the verifier agree on head({ver})"
        );
        let mut next = state.clone();
        assert_eq!(
            next.apply_delta(&delta),
            Ok(Applied::Advanced {
                from: ver - 1,
                to: ver
            })
        );
        deltas.push(delta);
        states.push(next);
    }
    (deltas, states)
}

/// The revocation model: (kind, id) → value (`before` for agents, else 0).
fn model(changes: &[Change]) -> BTreeMap<(usize, u8), u64> {
    let mut m = BTreeMap::new();
    for c in changes {
        for &(k, i) in &c.rm {
            m.remove(&(k, i));
        }
        for a in &c.add {
            let e = add_entry(a);
            let v = e.before.unwrap_or(0);
            let slot = m.entry((a.0, a.1)).or_insert(v);
            *slot = (*slot).max(v);
        }
    }
    m
}

fn same(a: &SrlState, b: &SrlState) -> bool {
    a.ver() == b.ver() && a.head() == b.head() && a.set() == b.set()
}

proptest! {
    // Each case signs and verifies up to a few dozen objects.
    #![proptest_config(cases(64))]

    #[test]
    fn deltas_in_order_equal_the_model_and_the_snapshot(changes in changes(), at in any::<Index>()) {
        let w = world();
        let (deltas, states) = sign_and_apply(&changes);
        let n = deltas.len();
        let last = &states[n];
        prop_assert_eq!(last.ver(), n as u64);

        // Against the model: every (kind, id) is listed exactly as it says.
        let m = model(&changes);
        prop_assert_eq!(last.set().len(), m.len());
        for (k, kind) in EntryKind::ALL.into_iter().enumerate() {
            for i in 0..IDS {
                let got = last.set().get(kind, &Digest::of(kind, &id(i)));
                prop_assert_eq!(got, m.get(&(k, i)).copied(), "{} {}", kind, id(i));
            }
        }

        // A snapshot of the state at n, loaded into an empty state, is that state.
        let snapshot = w.signer.snapshot(n as u64, last.head(), NOW - 1, NOW + 300, last.set());
        let mut loaded = SrlState::new();
        prop_assert_eq!(
            loaded.apply_snapshot(w.verifier.snapshot(&snapshot, NOW).unwrap()),
            Ok(Applied::Advanced { from: 0, to: n as u64 })
        );
        prop_assert!(same(&loaded, last));

        // So is a snapshot at k followed by deltas k+1..=n.
        let k = at.index(n + 1);
        let mut resumed = SrlState::new();
        if k > 0 {
            let snap = w.signer.snapshot(k as u64, states[k].head(), NOW - 1, NOW + 300, states[k].set());
            resumed.apply_snapshot(w.verifier.snapshot(&snap, NOW).unwrap()).unwrap();
        }
        for d in &deltas[k..] {
            let advanced = matches!(resumed.apply_delta(d), Ok(Applied::Advanced { .. }));
            prop_assert!(advanced);
        }
        prop_assert!(same(&resumed, last));
    }

    #[test]
    fn duplicated_or_reordered_deltas_converge_or_gap(
        changes in changes(),
        order in proptest::collection::vec(any::<Index>(), 0..20),
    ) {
        let (deltas, states) = sign_and_apply(&changes);
        let mut state = SrlState::new();
        let deliveries = order.iter().map(|i| i.index(deltas.len())).chain(0..deltas.len());
        for i in deliveries {
            let before = state.clone();
            let ver = deltas[i].payload.ver;
            match state.apply_delta(&deltas[i]) {
                Ok(Applied::Advanced { from, to }) => {
                    prop_assert_eq!((from, to), (before.ver(), ver));
                    prop_assert_eq!(ver, before.ver() + 1);
                }
                Ok(Applied::Ignored) => {
                    prop_assert!(ver <= before.ver());
                    prop_assert!(same(&state, &before));
                }
                Err(ApplyError::Gap { applied, received }) => {
                    prop_assert_eq!((applied, received), (before.ver(), ver));
                    prop_assert!(ver > before.ver() + 1);
                    prop_assert!(same(&state, &before));
                }
                other => prop_assert!(false, "delta {} on version {}: {:?}", ver, before.ver(), other),
            }
            // Never a different state at the same version.
            prop_assert!(same(&state, &states[state.ver() as usize]));
        }
        // Delivering everything in order at the end reaches the in-order state.
        prop_assert!(same(&state, &states[deltas.len()]));
    }
}

// ---------------------------------------------------------------------------
// No panics on arbitrary input.

/// Feeds `s` to every parser and verifier that takes untrusted text.
fn exercise(s: &str) {
    let w = world();
    let _ = ParsedChain::parse(s).map(|c| w.checker.verify(c));
    let _ = w.checker.check_token(&w.state, s, ACTION, NOW);
    if let Ok(jws) = UnverifiedJws::parse(s, usize::MAX) {
        let _ = jws.payload_unverified();
        let _ = jws.verify(&KeySet::new([w.issuer.public().clone()]));
        for t in TYPS {
            let _ = jws.expect_typ(t);
        }
    }
    apply_all(s, &mut BTreeMap::new());
    let _fresh = w.state.is_fresh(NOW, u64::MAX);
    let _ = PublicKey::from_jwk_json(s);
    let _ = SigningKey::from_jwk_json(s);
    let _ = Pattern::parse(s);
    let _ = veto_core::report::kid(s);
    let _ = veto_core::report::verify(s, w.signer.key().public(), ISS, NOW, 60);
}

/// Applies `s` as each signed object it verifies as, to the world's state,
/// asserting the outcome; counts `kind/outcome` in `seen`.
fn apply_all(s: &str, seen: &mut BTreeMap<String, u32>) {
    let w = world();
    let mut note = |kind: &str, r: &Result<Applied, ApplyError>| {
        let outcome = match r {
            Ok(Applied::Advanced { .. }) => "advanced",
            Ok(Applied::Refreshed) => "refreshed",
            Ok(Applied::Ignored) => "ignored",
            Err(_) => "refused",
        };
        *seen.entry(format!("{kind}/{outcome}")).or_default() += 1;
    };
    if let Ok(d) = w.verifier.delta(s, NOW) {
        let mut state = w.state.clone();
        let result = state.apply_delta(&d);
        assert_apply("delta", &w.state, &state, &result);
        note("delta", &result);
        if let Ok(Applied::Advanced { .. }) = result {
            assert_delta_model(&w.state, &state, &d);
        }
    }
    if let Ok(c) = w.verifier.checkpoint(s, NOW) {
        let mut state = w.state.clone();
        let result = state.apply_checkpoint(&c);
        assert_apply("checkpoint", &w.state, &state, &result);
        note("checkpoint", &result);
        assert!(
            !matches!(result, Ok(Applied::Advanced { .. })),
            "a checkpoint never advances"
        );
    }
    if let Ok(snap) = w.verifier.snapshot(s, NOW) {
        let mut state = w.state.clone();
        let result = state.apply_snapshot(snap.clone());
        assert_apply("snapshot", &w.state, &state, &result);
        note("snapshot", &result);
        if let Ok(Applied::Advanced { .. }) = result {
            assert_eq!(
                (state.ver(), state.head(), state.set()),
                (snap.ver, snap.head, &snap.set),
                "an applied snapshot is the state"
            );
        }
    }
}

/// The odd signed objects reach every outcome of the apply state machine,
/// so the assertions in [`apply_all`] are exercised, not skipped.
#[test]
fn odd_signed_objects_reach_every_apply_outcome() {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = signed_object();
    let mut seen = BTreeMap::new();
    for _ in 0..3000 {
        let s = strategy.new_tree(&mut runner).unwrap().current();
        apply_all(&s, &mut seen);
    }
    eprintln!("{seen:?}");
    for outcome in [
        "delta/advanced",
        "delta/refused",
        "snapshot/advanced",
        "checkpoint/refreshed",
        "checkpoint/refused",
    ] {
        assert!(
            seen.get(outcome).is_some_and(|n| *n > 0),
            "{outcome} never reached: {seen:?}"
        );
    }
}

/// A refused or ignored object leaves version, head, set and freshness as
/// they were; a refresh changes only freshness; an advance moves forward.
fn assert_apply(
    what: &str,
    before: &SrlState,
    after: &SrlState,
    result: &Result<Applied, ApplyError>,
) {
    match result {
        Err(_) | Ok(Applied::Ignored) => {
            assert!(same(before, after), "{what} {result:?} changed the state");
            assert_eq!(
                before.attested(),
                after.attested(),
                "{what} {result:?} changed freshness"
            );
        }
        Ok(Applied::Refreshed) => {
            assert!(same(before, after), "a refreshing {what} changed the state")
        }
        Ok(Applied::Advanced { from, to }) => {
            assert_eq!((*from, *to), (before.ver(), after.ver()), "{what}");
            assert!(to > from, "{what} advanced from {from} to {to}");
        }
    }
}

/// An applied delta moves to the next version and its head, lists what it
/// adds (an agent's cutoff never moves earlier), unlists what it removes
/// and leaves every other entry as it was.
fn assert_delta_model(before: &SrlState, after: &SrlState, d: &VerifiedDelta) {
    assert_eq!(after.ver(), before.ver() + 1);
    assert_eq!(after.head(), d.head);
    assert_eq!(d.payload.prev, before.head());
    let added: BTreeMap<Digest, u64> = d
        .payload
        .add
        .iter()
        .map(|e| (e.digest(), e.before.unwrap_or(0)))
        .collect();
    for e in &d.payload.add {
        let got = after.set().get(e.kind, &e.digest());
        let want = e.before.unwrap_or(0);
        match e.kind {
            EntryKind::Agent => assert!(got.is_some_and(|v| v >= want), "agent {e:?}: {got:?}"),
            _ => assert!(got.is_some(), "{e:?} is not listed"),
        }
    }
    for r in &d.payload.rm {
        let dg = Digest::of(r.kind, &r.id);
        if !added.contains_key(&dg) {
            assert_eq!(after.set().get(r.kind, &dg), None, "{r:?} is still listed");
        }
    }
    let removed: Vec<Digest> = d
        .payload
        .rm
        .iter()
        .map(|r| Digest::of(r.kind, &r.id))
        .collect();
    let untouched = |dg: &Digest| !added.contains_key(dg) && !removed.contains(dg);
    let (w0, a0, k0) = before.set().tables();
    let (w1, a1, k1) = after.set().tables();
    let keep = |v: &[Digest]| v.iter().copied().filter(untouched).collect::<Vec<_>>();
    let keep_agents = |v: &[(Digest, u64)]| {
        v.iter()
            .copied()
            .filter(|(dg, _)| untouched(dg))
            .collect::<Vec<_>>()
    };
    assert_eq!(keep(&w0), keep(&w1), "untouched warrants");
    assert_eq!(keep(&k0), keep(&k1), "untouched keys");
    assert_eq!(keep_agents(&a0), keep_agents(&a1), "untouched agents");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// JSON with the member names veto's formats use, and edge-case values.
fn json() -> impl Strategy<Value = Value> {
    let names = [
        "alg",
        "typ",
        "kid",
        "crit",
        "iss",
        "ver",
        "prev",
        "head",
        "iat",
        "nbf",
        "exp",
        "add",
        "rm",
        "digest",
        "warrants",
        "agents",
        "keys",
        "jti",
        "sub",
        "act",
        "cnf",
        "jwk",
        "par",
        "kind",
        "id",
        "reason",
        "revoked_at",
        "before",
        "expires_at",
        "kty",
        "crv",
        "x",
        "d",
    ];
    let strings = prop_oneof![
        "[ -~]{0,12}",
        Just(ISS.to_owned()),
        Just("EdDSA".to_owned()),
        Just("sha256-96".to_owned()),
        Just("OKP".to_owned()),
        Just("Ed25519".to_owned()),
        Just("agent".to_owned()),
        Just("*".to_owned()),
        Just(Head::ZERO.to_string()),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(|b| b64(&b)),
        Just(TYPS[0].as_str().to_owned()),
        Just(TYPS[2].as_str().to_owned()),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(NOW), Just(u64::MAX), any::<u64>()]
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        strings.prop_map(Value::from),
    ];
    let names = proptest::sample::select(names.to_vec()).prop_map(str::to_owned);
    leaf.prop_recursive(3, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(names.clone(), inner, 0..10)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A compact JWS made of arbitrary parts: a JSON header naming a trusted
/// key or not, a JSON or binary payload, 64 arbitrary signature bytes.
fn jws_shaped() -> impl Strategy<Value = String> {
    let kid = prop_oneof![
        Just(SigningKey::from_seed(&[1; 32]).kid().to_owned()),
        Just(SigningKey::from_seed(&[2; 32]).kid().to_owned()),
        "[a-zA-Z0-9_-]{0,43}",
    ];
    let header = (kid, typ(), json()).prop_map(|(kid, typ, extra)| {
        let mut h = serde_json::json!({"alg": "EdDSA", "typ": typ.as_str(), "kid": kid});
        if let (Value::Object(h), Value::Object(extra)) = (&mut h, extra) {
            h.extend(extra);
        }
        h.to_string()
    });
    let payload = prop_oneof![
        json().prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..200)
    ];
    (
        header,
        payload,
        proptest::collection::vec(any::<u8>(), 64..=64),
    )
        .prop_map(|(h, p, s)| format!("{}.{}.{}", b64(h.as_bytes()), b64(&p), b64(&s)))
}

/// Payloads that pass the signature check and reach the payload parsers
/// and the state machine: near-valid objects with edge-case values, and
/// sometimes one arbitrary member.
fn signed_object() -> impl Strategy<Value = String> {
    use proptest::collection::{btree_map, btree_set, vec};
    let digests = prop_oneof![
        // Sorted, distinct digests (valid), or arbitrary bytes.
        4 => btree_set(any::<[u8; 12]>(), 0..6).prop_map(|s| s.into_iter().flatten().collect::<Vec<u8>>()),
        1 => vec(any::<u8>(), 0..60),
    ];
    let agents = prop_oneof![
        4 => btree_map(any::<[u8; 12]>(), any::<u64>(), 0..6).prop_map(|m| {
            m.into_iter().flat_map(|(d, b)| d.into_iter().chain(b.to_be_bytes())).collect::<Vec<u8>>()
        }),
        1 => vec(any::<u8>(), 0..60),
    ];
    let num = || {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(NOW),
            Just(NOW + 6),
            Just(u64::MAX),
            any::<u64>()
        ]
    };
    let head = prop_oneof![2 => Just(Head::ZERO.to_string()), 2 => "[0-9a-f]{64}", 1 => "[0-9a-fA-F]{0,66}"];
    let kind = proptest::sample::select(vec!["warrant", "agent", "key", "agent", "Warrant", ""]);
    let entry_id =
        prop_oneof![8 => "[a-z0-9-]{1,8}", 1 => Just(String::new()), 1 => Just("x".repeat(257))];
    // Mostly with `before` exactly when the kind is `agent`, as required.
    let before = (proptest::bool::weighted(0.8), num(), any::<bool>());
    let entry = (kind, entry_id, before, proptest::option::of(num())).prop_map(
        |(kind, id, (by_rule, before, has), expires_at)| {
            let mut e = serde_json::json!({"kind": kind, "id": id, "reason": "superseded", "revoked_at": NOW});
            if (by_rule && kind == "agent") || (!by_rule && has) {
                e["before"] = before.into();
            }
            if let Some(x) = expires_at {
                e["expires_at"] = x.into();
            }
            e
        },
    );
    let removed = (
        proptest::sample::select(vec!["warrant", "agent", "key"]),
        "[a-z0-9-]{1,8}",
    )
        .prop_map(|(kind, id)| serde_json::json!({"kind": kind, "id": id}));
    let fields = (
        num(),
        num(),
        num(),
        head,
        digests.clone(),
        agents,
        digests,
        vec(entry, 0..4),
        vec(removed, 0..3),
    );
    let extra = proptest::option::weighted(0.2, json());
    (typ(), fields, extra).prop_map(|(typ, (ver, iat, exp, head, warrants, agents, keys, add, rm), extra)| {
        // A snapshot's tables travel beside its JWS (the text container);
        // the counts are what the bytes hold in whole records.
        let tables = [&warrants[..], &agents, &keys].concat();
        let claim = serde_json::json!({"sha256": hex(&Sha256::digest(&tables)),
            "warrants": warrants.len() / 12, "agents": agents.len() / 20, "keys": keys.len() / 12});
        let (warrants, keys) = (b64(&warrants), b64(&keys));
        let mut v = match typ {
            Typ::Snapshot => serde_json::json!({"iss": ISS, "ver": ver, "head": head, "iat": iat, "exp": exp,
                "digest": "sha256-96", "tables": claim}),
            Typ::Delta => serde_json::json!({"iss": ISS, "ver": ver, "prev": head, "iat": iat, "add": add, "rm": rm}),
            Typ::Checkpoint => serde_json::json!({"iss": ISS, "ver": ver, "head": head, "iat": iat, "exp": exp}),
            Typ::Warrant => serde_json::json!({"jti": warrants, "sub": keys, "iat": iat, "exp": exp,
                "act": [head], "iss": ISS}),
            Typ::Dpop => serde_json::json!({"jti": head, "htm": "GET", "htu": "http://h/", "iat": iat, "ath": head}),
            Typ::Issuers => serde_json::json!({"iss": ISS, "ver": ver, "iat": iat, "keys": []}),
            Typ::Report => serde_json::json!({"aud": ISS, "name": "gw", "iat": iat, "seq": ver,
                "ver": ver, "head": head, "fresh": true, "staleness_s": exp, "push": "sse",
                "push_connected": true, "policy": "fail-closed", "error": null,
                "interval_s": 10, "veto": "0"}),
        };
        if let (Value::Object(v), Some(Value::Object(extra))) = (&mut v, extra) {
            v.extend(extra.into_iter().take(1));
        }
        let w = world();
        let key = if typ == Typ::Warrant { &w.issuer } else { w.signer.key() };
        let token = jws::sign(typ, key, v.to_string().as_bytes());
        if typ == Typ::Snapshot {
            format!("{token}~{}", b64(&tables))
        } else {
            token
        }
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        exercise(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn jws_alphabet_soup_never_panics(s in "[A-Za-z0-9_=.~-]{0,400}") {
        exercise(&s);
    }

    #[test]
    fn jws_shaped_input_never_panics(s in jws_shaped(), more in proptest::collection::vec(jws_shaped(), 0..3)) {
        exercise(&s);
        exercise(&std::iter::once(s).chain(more).collect::<Vec<_>>().join("~"));
    }

    #[test]
    fn arbitrary_json_never_panics(v in json()) {
        exercise(&v.to_string());
    }

    #[test]
    fn validly_signed_odd_objects_never_panic(s in signed_object()) {
        exercise(&s);
    }
}
