#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! Model-based test of the revocation apply state machine (DESIGN 3.3, 4).
//!
//! A random history is committed at a registry (batches of warrant, agent
//! and key revocations, some transitive through a parent `jti`, and prunes),
//! signed with [`SrlSigner`] into deltas, checkpoints and snapshots. A random
//! delivery schedule then hands the authorizer side those objects out of
//! order, duplicated, with gaps, rolled back, forged (bad signature, unknown
//! key, tampered payload, wrong `typ`), equivocating, and from the future.
//! Each object is verified and applied exactly as the authorizer's one apply
//! path does (verify, apply to a copy, keep it only on success; a gap is
//! followed, sometimes, by the catch-up the authorizer would do).
//!
//! A reference model (the revoked ids per version, the applied version, and
//! whether anything attested the state) predicts every outcome. After every
//! step: the applied version never decreases; every object gets exactly the
//! predicted outcome (forgeries and equivocations the predicted error); the
//! state is exactly the registry's at the applied version; and for a set of
//! probe chains the [`Checker`] never allows one the reference says is
//! revoked at that version and never denies as `revoked` one it says is not
//! (those are allowed when the state is attested, denied `stale` before). At
//! the end, after delivering everything, the state equals the registry's
//! final snapshot.
//!
//! 256 cases by default; `PROPTEST_CASES=N` for a longer run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};
use veto_core::jws::JwsError;
use veto_core::warrant::{delegate, mint_root};
use veto_core::{
    Applied, ApplyError, CheckConfig, Checker, Decision, DenyReason, Digest, Entry, EntryKind,
    Head, KeySet, LinkSpec, ParsedChain, Reason, Removed, RevocationSet, SigningKey, SrlError,
    SrlSigner, SrlState, SrlVerifier, VerifiedChain,
};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://registry.example";
/// The verifier's default clock-skew allowance.
const SKEW: u64 = 5;
const ACTION: &str = "tool:search";
/// Agent cutoffs used by revocations: before, between and after the probe
/// links' `iat`s (`NOW - 60` and `NOW - 30`).
const BEFORES: [u64; 4] = [NOW - 100, NOW - 60, NOW - 45, NOW];

fn config(n: u32) -> ProptestConfig {
    let config = if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(n)
    };
    // Failing cases are saved and replayed first on the next run (the
    // path is relative to the crate, where `cargo test` runs tests).
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/model.proptest-regressions",
        ))),
        ..config
    }
}

// ---------------------------------------------------------------------------
// Fixtures: keys, probe chains, and the ids revocations draw from.

/// A chain presented to the checker, with what the reference needs to know
/// about it: every link's `jti`, every link's `sub` and `iat`, and every key
/// that signs a link or is bound in one.
struct Probe {
    name: &'static str,
    token: String,
    verified: VerifiedChain,
    jtis: Vec<String>,
    agents: Vec<(String, u64)>,
    keys: Vec<String>,
}

struct World {
    signer: SrlSigner,
    mallory: SrlSigner,
    verifier: SrlVerifier,
    checker: Checker,
    probes: Vec<Probe>,
    /// Ids per kind (index as in `EntryKind::ALL`).
    pool: [Vec<String>; 3],
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let authority = SigningKey::from_seed(&[21; 32]);
        let mallory = SigningKey::from_seed(&[22; 32]);
        let issuer = SigningKey::from_seed(&[23; 32]);
        let h: Vec<SigningKey> = (24..28).map(|i| SigningKey::from_seed(&[i; 32])).collect();
        let checker = Checker::new(
            KeySet::new([issuer.public().clone()]),
            CheckConfig {
                issuer: Some(ISS.into()),
                ..CheckConfig::default()
            },
        );
        let spec = |sub: &str, act: &str, iat: u64, exp: u64, holder: &SigningKey| LinkSpec {
            sub: sub.into(),
            act: vec![act.into()],
            iat,
            exp,
            holder: Some(holder.public().clone()),
        };
        let p0 = mint_root(
            &issuer,
            ISS,
            spec("agent-0", "tool:*", NOW - 60, NOW + 3600, &h[0]),
        )
        .unwrap();
        let p1 = delegate(
            &p0,
            &h[0],
            spec("agent-1", ACTION, NOW - 30, NOW + 1800, &h[1]),
        )
        .unwrap();
        let p2 = delegate(
            &p1,
            &h[1],
            spec("agent-2", ACTION, NOW - 30, NOW + 900, &h[2]),
        )
        .unwrap();
        let p3 = mint_root(
            &issuer,
            ISS,
            spec("agent-1", "tool:*", NOW - 60, NOW + 3600, &h[3]),
        )
        .unwrap();
        // Shares agent-2 with p2 (other iat) and holder key h[1] with p1.
        let p4 = delegate(
            &p3,
            &h[3],
            spec("agent-2", ACTION, NOW - 60, NOW + 900, &h[1]),
        )
        .unwrap();
        let probes: Vec<Probe> = [
            ("root", p0),
            ("depth-2", p1),
            ("depth-3", p2),
            ("other-root", p3),
            ("other-depth-2", p4),
        ]
        .into_iter()
        .map(|(name, token)| {
            let chain = ParsedChain::parse(&token).unwrap();
            let links = chain.links();
            let mut keys = vec![chain.root().kid().unwrap().to_owned()];
            keys.extend(
                links
                    .iter()
                    .filter_map(|l| l.holder())
                    .map(|k| k.kid().to_owned()),
            );
            Probe {
                name,
                jtis: links.iter().map(|l| l.claims().jti.clone()).collect(),
                agents: links
                    .iter()
                    .map(|l| (l.claims().sub.clone(), l.claims().iat.unwrap()))
                    .collect(),
                keys,
                verified: checker.verify(chain).unwrap(),
                token,
            }
        })
        .collect();
        let mut warrants: Vec<String> = probes.iter().flat_map(|p| p.jtis.clone()).collect();
        warrants.sort();
        warrants.dedup();
        warrants.push("w-unrelated".into());
        let agents = ["agent-0", "agent-1", "agent-2", "agent-unrelated"].map(String::from);
        let mut keys: Vec<String> = h.iter().map(|k| k.kid().to_owned()).collect();
        keys.push(issuer.kid().to_owned());
        keys.push("k-unrelated".into());
        World {
            signer: SrlSigner::new(authority.clone(), ISS),
            mallory: SrlSigner::new(mallory, ISS),
            verifier: SrlVerifier::new(KeySet::new([authority.public().clone()]), ISS),
            checker,
            probes,
            pool: [warrants, agents.to_vec(), keys],
        }
    })
}

// ---------------------------------------------------------------------------
// The registry side: a history of committed changes, and what it publishes.

#[derive(Clone, Debug)]
enum Batch {
    /// Revoke these (kind, id, cutoff choice); one version if anything is new.
    Revoke(Vec<(usize, Index, usize)>),
    /// Prune these currently listed entries; one version if any.
    Prune(Vec<Index>),
}

fn batch() -> impl Strategy<Value = Batch> {
    prop_oneof![
        3 => proptest::collection::vec((0..3usize, any::<Index>(), 0..BEFORES.len()), 1..4)
            .prop_map(Batch::Revoke),
        1 => proptest::collection::vec(any::<Index>(), 1..3).prop_map(Batch::Prune),
    ]
}

/// The reference: `(kind, id) → value` (the cutoff for agents, else 0).
type Listed = BTreeMap<(EntryKind, String), u64>;

struct Registry {
    /// `deltas[v - 1]` is delta `v`.
    deltas: Vec<String>,
    /// `heads[v]` is `head(v)`.
    heads: Vec<Head>,
    /// `listed[v]` is what is revoked at version `v`.
    listed: Vec<Listed>,
}

impl Registry {
    fn commit(history: &[Batch]) -> Self {
        let w = world();
        let mut reg = Registry {
            deltas: Vec::new(),
            heads: vec![Head::ZERO],
            listed: vec![Listed::new()],
        };
        for b in history {
            let mut now = reg.listed.last().unwrap().clone();
            let ver = reg.deltas.len() as u64 + 1;
            let (mut add, mut rm) = (Vec::new(), Vec::new());
            match b {
                Batch::Revoke(items) => {
                    for &(k, i, b) in items {
                        let kind = EntryKind::ALL[k];
                        let id = i.get(&w.pool[k]).clone();
                        let before = (kind == EntryKind::Agent).then_some(BEFORES[b]);
                        let value = before.unwrap_or(0);
                        // Idempotent: only what is new (or a later agent
                        // cutoff) goes into the delta.
                        match now.get(&(kind, id.clone())) {
                            Some(&old) if kind != EntryKind::Agent || old >= value => continue,
                            _ => {}
                        }
                        now.insert((kind, id.clone()), value);
                        add.push(Entry {
                            kind,
                            id,
                            reason: Reason::KeyCompromise,
                            revoked_at: NOW - 1000 + ver,
                            before,
                            expires_at: None,
                        });
                    }
                }
                Batch::Prune(items) => {
                    for i in items {
                        if now.is_empty() {
                            break;
                        }
                        let key = i.get(&now.keys().cloned().collect::<Vec<_>>()).clone();
                        now.remove(&key);
                        rm.push(Removed {
                            kind: key.0,
                            id: key.1,
                        });
                    }
                }
            }
            if add.is_empty() && rm.is_empty() {
                continue; // nothing changed: no new version
            }
            let prev = *reg.heads.last().unwrap();
            let (token, head) = w.signer.delta(ver, prev, NOW - 1000 + ver, add, rm);
            reg.deltas.push(token);
            reg.heads.push(head);
            reg.listed.push(now);
        }
        reg
    }

    fn last(&self) -> u64 {
        self.deltas.len() as u64
    }

    fn set(&self, ver: u64) -> RevocationSet {
        let mut set = RevocationSet::default();
        for ((kind, id), &value) in &self.listed[ver as usize] {
            set.insert(*kind, Digest::of(*kind, id), value);
        }
        set
    }

    /// The snapshot of `ver`, as its text container.
    fn snapshot(&self, ver: u64) -> String {
        let iat = NOW - 200 + ver.min(100);
        world()
            .signer
            .snapshot(
                ver,
                self.heads[ver as usize],
                iat,
                NOW + 300,
                &self.set(ver),
            )
            .to_text()
    }

    fn checkpoint(&self, ver: u64, age: u64) -> String {
        world()
            .signer
            .checkpoint(ver, self.heads[ver as usize], NOW - age, NOW + 300)
    }
}

/// What the reference says about a probe at a version.
fn revoked(p: &Probe, listed: &Listed) -> bool {
    p.jtis
        .iter()
        .any(|j| listed.contains_key(&(EntryKind::Warrant, j.clone())))
        || p.agents.iter().any(|(sub, iat)| {
            listed
                .get(&(EntryKind::Agent, sub.clone()))
                .is_some_and(|before| iat <= before)
        })
        || p.keys
            .iter()
            .any(|k| listed.contains_key(&(EntryKind::Key, k.clone())))
}

// ---------------------------------------------------------------------------
// The delivery schedule.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum As {
    Snapshot,
    Delta,
    Checkpoint,
}

#[derive(Clone, Debug)]
enum Step {
    Delta(Index),
    Checkpoint(Index, u8),
    /// Any version: older than applied is a rollback attempt.
    Snapshot(Index),
    /// The last genuine object again.
    Duplicate,
    /// A genuine object with one signature character changed.
    BadSignature(As, Index),
    /// The same content signed by a key that is not the authority's.
    WrongKey(As, Index),
    /// A genuine object whose payload was changed under its signature.
    Tampered(As, Index),
    /// A genuine delta presented as a checkpoint, or a checkpoint as a snapshot.
    WrongTyp(Index),
    /// A validly signed checkpoint for the applied version with another head.
    EquivocatingCheckpoint,
    /// A validly signed snapshot for a version at or below the applied one
    /// with another head.
    EquivocatingSnapshot(Index),
    /// A validly signed next delta that does not extend the applied head.
    WrongPrev,
    /// A checkpoint signed with `iat` beyond the clock-skew allowance.
    FromFuture(Index, u8),
}

fn kind() -> impl Strategy<Value = As> {
    prop_oneof![Just(As::Snapshot), Just(As::Delta), Just(As::Checkpoint)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any::<Index>().prop_map(Step::Delta),
        3 => (any::<Index>(), 0..100u8).prop_map(|(i, a)| Step::Checkpoint(i, a)),
        2 => any::<Index>().prop_map(Step::Snapshot),
        2 => Just(Step::Duplicate),
        1 => (kind(), any::<Index>()).prop_map(|(k, i)| Step::BadSignature(k, i)),
        1 => (kind(), any::<Index>()).prop_map(|(k, i)| Step::WrongKey(k, i)),
        1 => (kind(), any::<Index>()).prop_map(|(k, i)| Step::Tampered(k, i)),
        1 => any::<Index>().prop_map(Step::WrongTyp),
        1 => Just(Step::EquivocatingCheckpoint),
        1 => any::<Index>().prop_map(Step::EquivocatingSnapshot),
        1 => Just(Step::WrongPrev),
        1 => (any::<Index>(), 0..100u8).prop_map(|(i, s)| Step::FromFuture(i, s)),
    ]
}

/// What the authorizer does after a gap: nothing (it will catch up later),
/// fetch the missing deltas, or fetch a snapshot (deltas no longer retained).
#[derive(Clone, Copy, Debug)]
enum CatchUp {
    Later,
    Deltas,
    Snapshot,
}

fn catch_up() -> impl Strategy<Value = CatchUp> {
    prop_oneof![
        Just(CatchUp::Later),
        Just(CatchUp::Deltas),
        Just(CatchUp::Snapshot)
    ]
}

// ---------------------------------------------------------------------------
// The authorizer side and the reference's predictions.

/// The outcome of delivering one object.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Applied(Applied),
    /// Refused at verification: the `JwsError` kind, or another `SrlError`.
    Verify(String),
    Apply(ApplyError),
}

fn verify_kind(e: &SrlError) -> String {
    match e {
        SrlError::Jws { source, .. } => match source {
            JwsError::BadSignature => "bad_signature",
            JwsError::UnknownKey(_) => "unknown_key",
            JwsError::Typ { .. } => "wrong_typ",
            _ => "jws",
        },
        SrlError::Payload { .. } => "payload",
        SrlError::Issuer { .. } => "wrong_issuer",
        SrlError::FromFuture { .. } => "from_future",
        _ => "other",
    }
    .to_owned()
}

/// Verifies and applies one object as the authorizer's one apply path does:
/// verify as what the channel says it is, apply to a copy, keep the copy
/// only when something was applied.
fn deliver(state: &mut SrlState, what: As, token: &str) -> Outcome {
    let v = &world().verifier;
    let mut next = state.clone();
    let result = match what {
        As::Snapshot => v.snapshot(token, NOW).map(|s| next.apply_snapshot(s)),
        As::Delta => v.delta(token, NOW).map(|d| next.apply_delta(&d)),
        As::Checkpoint => v.checkpoint(token, NOW).map(|c| next.apply_checkpoint(&c)),
    };
    match result {
        Err(e) => Outcome::Verify(verify_kind(&e)),
        Ok(Err(e)) => Outcome::Apply(e),
        Ok(Ok(applied)) => {
            if applied != Applied::Ignored {
                *state = next;
            }
            Outcome::Applied(applied)
        }
    }
}

/// The reference model of the authorizer: the applied version, and whether
/// any snapshot or checkpoint has attested the state.
#[derive(Clone, Copy, Debug, Default)]
struct Reference {
    applied: u64,
    attested: bool,
}

impl Reference {
    /// Predicts a genuine object of version `ver` and updates itself.
    fn genuine(&mut self, what: As, ver: u64) -> Outcome {
        let a = self.applied;
        let out = match what {
            As::Delta if ver <= a => Outcome::Applied(Applied::Ignored),
            As::Delta if ver == a + 1 => Outcome::Applied(Applied::Advanced { from: a, to: ver }),
            As::Checkpoint if ver < a => Outcome::Applied(Applied::Ignored),
            As::Checkpoint if ver == a => Outcome::Applied(Applied::Refreshed),
            As::Snapshot if ver < a => Outcome::Apply(ApplyError::Rollback {
                applied: a,
                received: ver,
            }),
            As::Snapshot if ver == a => Outcome::Applied(Applied::Refreshed),
            As::Snapshot => Outcome::Applied(Applied::Advanced { from: a, to: ver }),
            As::Delta | As::Checkpoint => Outcome::Apply(ApplyError::Gap {
                applied: a,
                received: ver,
            }),
        };
        if let Outcome::Applied(Applied::Advanced { to, .. }) = out {
            self.applied = to;
        }
        if matches!(
            out,
            Outcome::Applied(Applied::Advanced { .. } | Applied::Refreshed)
        ) && what != As::Delta
        {
            self.attested = true;
        }
        out
    }
}

/// Tallies of outcomes over the whole run, to show what was exercised.
static TALLY: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];
const TALLY_NAMES: [&str; 12] = [
    "advanced",
    "refreshed",
    "ignored",
    "gap",
    "rollback",
    "equivocation",
    "broken_chain",
    "verify:bad_signature",
    "verify:unknown_key",
    "verify:wrong_typ",
    "verify:from_future",
    "probe revoked denials",
];

fn tally(o: &Outcome) {
    let i = match o {
        Outcome::Applied(Applied::Advanced { .. }) => 0,
        Outcome::Applied(Applied::Refreshed) => 1,
        Outcome::Applied(Applied::Ignored) => 2,
        Outcome::Apply(ApplyError::Gap { .. }) => 3,
        Outcome::Apply(ApplyError::Rollback { .. }) => 4,
        Outcome::Apply(ApplyError::Equivocation { .. }) => 5,
        Outcome::Apply(ApplyError::BrokenChain { .. }) => 6,
        Outcome::Verify(k) => match k.as_str() {
            "bad_signature" => 7,
            "unknown_key" => 8,
            "wrong_typ" => 9,
            _ => 10,
        },
    };
    TALLY[i].fetch_add(1, Ordering::Relaxed);
}

/// One run: the registry, the authorizer's state, the reference.
struct Run<'a> {
    reg: &'a Registry,
    state: SrlState,
    reference: Reference,
    /// The last genuine object delivered, for duplicates.
    last: Option<(As, u64, String)>,
    log: Vec<String>,
}

type Check = Result<(), TestCaseError>;

impl Run<'_> {
    fn token(&self, what: As, ver: u64) -> String {
        match what {
            As::Delta => self.reg.deltas[ver as usize - 1].clone(),
            As::Checkpoint => self.reg.checkpoint(ver, 10),
            As::Snapshot => self.reg.snapshot(ver),
        }
    }

    /// A genuine object's version chosen by `i` (deltas start at 1).
    fn pick(&self, what: As, i: &Index) -> Option<u64> {
        let n = self.reg.last();
        match what {
            As::Delta if n == 0 => None,
            As::Delta => Some(1 + i.index(n as usize) as u64),
            _ => Some(i.index(n as usize + 1) as u64),
        }
    }

    /// Delivers and checks the outcome and every invariant.
    fn expect(&mut self, what: As, token: &str, expected: Outcome) -> Check {
        let before = self.state.ver();
        let got = deliver(&mut self.state, what, token);
        self.log.push(format!("{what:?} -> {got:?}"));
        tally(&got);
        prop_assert_eq!(&got, &expected, "log: {:#?}", self.log);
        prop_assert!(self.state.ver() >= before, "version went back");
        self.invariants()
    }

    fn invariants(&self) -> Check {
        let w = world();
        let a = self.reference.applied;
        prop_assert_eq!(self.state.ver(), a, "log: {:#?}", self.log);
        prop_assert_eq!(self.state.head(), self.reg.heads[a as usize]);
        prop_assert!(
            self.state.set() == &self.reg.set(a),
            "state at {} differs from the registry's; log: {:#?}",
            a,
            self.log
        );
        prop_assert_eq!(self.state.attested().is_some(), self.reference.attested);
        let listed = &self.reg.listed[a as usize];
        for p in &w.probes {
            let d = w
                .checker
                .check_verified(&self.state, &p.verified, ACTION, NOW);
            if revoked(p, listed) {
                prop_assert!(!d.is_allowed(), "allowed revoked probe {}", p.name);
                prop_assert_eq!(d.reason(), Some(DenyReason::Revoked), "probe {}", p.name);
                TALLY[11].fetch_add(1, Ordering::Relaxed);
            } else if self.reference.attested {
                prop_assert_eq!(d, Decision::Allow { stale: false }, "probe {}", p.name);
            } else {
                prop_assert_eq!(d.reason(), Some(DenyReason::Stale), "probe {}", p.name);
            }
        }
        Ok(())
    }

    /// A genuine object: predicted by the reference; a gap is followed by
    /// the chosen catch-up and the object delivered again.
    fn genuine(&mut self, what: As, ver: u64, token: String, catch: CatchUp) -> Check {
        let expected = self.reference.genuine(what, ver);
        self.expect(what, &token, expected.clone())?;
        self.last = Some((what, ver, token.clone()));
        if let Outcome::Apply(ApplyError::Gap { applied, received }) = expected {
            match catch {
                CatchUp::Later => return Ok(()),
                CatchUp::Deltas => {
                    for v in applied + 1..=received {
                        let t = self.token(As::Delta, v);
                        let e = self.reference.genuine(As::Delta, v);
                        self.expect(As::Delta, &t, e)?;
                    }
                }
                CatchUp::Snapshot => {
                    let t = self.token(As::Snapshot, received);
                    let e = self.reference.genuine(As::Snapshot, received);
                    self.expect(As::Snapshot, &t, e)?;
                }
            }
            let e = self.reference.genuine(what, ver);
            self.expect(what, &token, e)?;
        }
        Ok(())
    }

    fn forged(&mut self, what: As, token: &str, expected: Outcome) -> Check {
        self.expect(what, token, expected)
    }

    fn step(&mut self, step: &Step, catch: CatchUp) -> Check {
        let w = world();
        let a = self.reference.applied;
        let other_head = |v: u64| Head::of_payload(format!("equivocation at {v}").as_bytes());
        let verify = |k: &str| Outcome::Verify(k.to_owned());
        match step {
            Step::Delta(i) | Step::Snapshot(i) | Step::Checkpoint(i, _) => {
                let what = match step {
                    Step::Delta(_) => As::Delta,
                    Step::Snapshot(_) => As::Snapshot,
                    _ => As::Checkpoint,
                };
                let Some(ver) = self.pick(what, i) else {
                    return Ok(());
                };
                let token = match step {
                    Step::Checkpoint(_, age) => self.reg.checkpoint(ver, u64::from(*age)),
                    _ => self.token(what, ver),
                };
                self.genuine(what, ver, token, catch)
            }
            Step::Duplicate => match self.last.clone() {
                Some((what, ver, token)) => self.genuine(what, ver, token, catch),
                None => Ok(()),
            },
            Step::BadSignature(what, i) | Step::Tampered(what, i) | Step::WrongKey(what, i) => {
                let Some(ver) = self.pick(*what, i) else {
                    return Ok(());
                };
                let genuine = self.token(*what, ver);
                let (head, sig) = genuine.rsplit_once('.').unwrap();
                let (token, expected) = match step {
                    Step::BadSignature(..) => {
                        let c = if sig.starts_with('A') { 'B' } else { 'A' };
                        (format!("{head}.{c}{}", &sig[1..]), "bad_signature")
                    }
                    Step::Tampered(..) => {
                        let (h, p) = head.split_once('.').unwrap();
                        let mut payload = b64_decode(p);
                        payload.push(b' '); // still valid JSON, other bytes
                        (
                            format!("{h}.{}.{sig}", b64_encode(&payload)),
                            "bad_signature",
                        )
                    }
                    _ => {
                        let m = &w.mallory;
                        let t = match what {
                            As::Delta => {
                                let prev = self.reg.heads[ver as usize - 1];
                                m.delta(ver, prev, NOW - 1, vec![], vec![]).0
                            }
                            As::Checkpoint => {
                                m.checkpoint(ver, self.reg.heads[ver as usize], NOW - 1, NOW + 300)
                            }
                            As::Snapshot => m
                                .snapshot(
                                    ver,
                                    self.reg.heads[ver as usize],
                                    NOW - 1,
                                    NOW + 300,
                                    &RevocationSet::default(),
                                )
                                .to_text(),
                        };
                        (t, "unknown_key")
                    }
                };
                self.forged(*what, &token, verify(expected))
            }
            Step::WrongTyp(i) => {
                if let Some(ver) = self.pick(As::Delta, i) {
                    let t = self.token(As::Delta, ver);
                    self.forged(As::Checkpoint, &t, verify("wrong_typ"))?;
                }
                let ver = self.pick(As::Checkpoint, i).unwrap_or(0);
                // In a snapshot's container (no tables), so that it is its
                // `typ` that is refused.
                let t = format!("{}~", self.token(As::Checkpoint, ver));
                self.forged(As::Snapshot, &t, verify("wrong_typ"))
            }
            Step::EquivocatingCheckpoint => {
                let t = w.signer.checkpoint(a, other_head(a), NOW - 1, NOW + 300);
                self.forged(
                    As::Checkpoint,
                    &t,
                    Outcome::Apply(ApplyError::Equivocation { ver: a }),
                )
            }
            Step::EquivocatingSnapshot(i) => {
                let ver = i.index(a as usize + 1) as u64;
                let t = w
                    .signer
                    .snapshot(ver, other_head(ver), NOW - 1, NOW + 300, &self.reg.set(ver))
                    .to_text();
                let expected = if ver < a {
                    ApplyError::Rollback {
                        applied: a,
                        received: ver,
                    }
                } else {
                    ApplyError::Equivocation { ver }
                };
                self.forged(As::Snapshot, &t, Outcome::Apply(expected))
            }
            Step::WrongPrev => {
                let add = vec![Entry {
                    kind: EntryKind::Warrant,
                    id: "w-forked".into(),
                    reason: Reason::Unspecified,
                    revoked_at: NOW - 1,
                    before: None,
                    expires_at: None,
                }];
                let (t, _) = w.signer.delta(a + 1, other_head(a), NOW - 1, add, vec![]);
                self.forged(
                    As::Delta,
                    &t,
                    Outcome::Apply(ApplyError::BrokenChain { ver: a + 1 }),
                )
            }
            Step::FromFuture(i, s) => {
                let ver = self.pick(As::Checkpoint, i).unwrap_or(0);
                let iat = NOW + SKEW + 1 + u64::from(*s);
                let t = w
                    .signer
                    .checkpoint(ver, self.reg.heads[ver as usize], iat, iat + 300);
                self.forged(As::Checkpoint, &t, verify("from_future"))
            }
        }
    }

    /// Delivers everything still missing, then the latest checkpoint; the
    /// state must then be the registry's final snapshot.
    fn finish(&mut self) -> Check {
        let w = world();
        let n = self.reg.last();
        for v in self.reference.applied + 1..=n {
            let t = self.token(As::Delta, v);
            let e = self.reference.genuine(As::Delta, v);
            self.expect(As::Delta, &t, e)?;
        }
        let cp = self.reg.checkpoint(n, 0);
        let e = self.reference.genuine(As::Checkpoint, n);
        prop_assert_eq!(&e, &Outcome::Applied(Applied::Refreshed));
        self.expect(As::Checkpoint, &cp, e)?;

        let final_snapshot = w.verifier.snapshot(self.reg.snapshot(n), NOW).unwrap();
        prop_assert_eq!(self.state.ver(), final_snapshot.ver);
        prop_assert_eq!(self.state.head(), final_snapshot.head);
        prop_assert!(self.state.set() == &final_snapshot.set);
        let mut fresh = SrlState::new();
        fresh.apply_snapshot(final_snapshot.clone()).unwrap();
        prop_assert!(fresh.set() == self.state.set());
        prop_assert_eq!(
            self.state.clone().apply_snapshot(final_snapshot),
            Ok(Applied::Refreshed)
        );
        // Full checks, signatures included, on the final state.
        let listed = &self.reg.listed[n as usize];
        for p in &w.probes {
            let d = w.checker.check_token(&self.state, &p.token, ACTION, NOW);
            if revoked(p, listed) {
                prop_assert_eq!(d.reason(), Some(DenyReason::Revoked), "probe {}", p.name);
            } else {
                prop_assert_eq!(d, Decision::Allow { stale: false }, "probe {}", p.name);
            }
        }
        Ok(())
    }
}

fn b64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn b64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn deliveries_in_any_order_agree_with_the_reference() {
    let strategy = (
        proptest::collection::vec(batch(), 1..12),
        proptest::collection::vec((step(), catch_up()), 0..40),
    );
    let mut runner = TestRunner::new(config(256));
    let result = runner.run(&strategy, |(history, schedule)| {
        let reg = Registry::commit(&history);
        let mut run = Run {
            reg: &reg,
            state: SrlState::new(),
            reference: Reference::default(),
            last: None,
            log: Vec::new(),
        };
        run.invariants()?;
        for (step, catch) in &schedule {
            run.log.push(format!("step {step:?} (catch-up {catch:?})"));
            run.step(step, *catch)?;
        }
        run.finish()
    });
    let counts: Vec<String> = TALLY_NAMES
        .iter()
        .zip(&TALLY)
        .map(|(n, c)| format!("{n}={}", c.load(Ordering::Relaxed)))
        .collect();
    eprintln!(
        "model: {} cases; outcomes: {}",
        runner.config().cases,
        counts.join(" ")
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
