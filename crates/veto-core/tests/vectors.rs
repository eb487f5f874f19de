#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! Conformance vectors: data files in `tests/vectors/*.json` at the
//! repository root, one per case, shared with every other checker (see
//! `scripts/check_jose.py` and `tests/vectors/README.md`).
//!
//! This file is both the generator and the runner:
//! - `VETO_REGENERATE_VECTORS=1 cargo test -p veto-core --test vectors`
//!   rewrites the files (fixed seeds, fixed times: byte-identical output);
//! - otherwise every file is loaded and its expected outcome is checked
//!   through the public API, and the files are compared with what the
//!   generator produces now, so they cannot drift from the code.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use veto_core::jws::{self, JwsError, Typ, UnverifiedJws};
use veto_core::srl::CheckpointPayload;
use veto_core::warrant::{Claims, Cnf};
use veto_core::{
    Applied, ApplyError, CheckConfig, Checker, Decision, Entry, EntryKind, Head, IssuerSet, Jwk,
    KeySet, ParsedChain, PublicKey, Reason, RevocationSet, SigningKey, SrlError, SrlLimits,
    SrlSigner, SrlState, SrlVerifier, StalenessPolicy,
};

// ---------------------------------------------------------------------------
// The file format.

/// One conformance case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    /// The file name without `.json`.
    name: String,
    /// What the case checks, in one line.
    description: String,
    /// `check`: decide a request; `apply`: verify and apply one object.
    kind: Kind,
    /// The registry's `iss` (the authority of the list and the root issuer).
    iss: String,
    /// "Now", in Unix seconds.
    now: u64,
    /// The trusted issuer key (roots).
    issuer_jwk: Jwk,
    /// The pinned authority key (snapshots, deltas, checkpoints).
    authority_jwk: Jwk,
    /// Other keys appearing in the case (holders, an attacker), by name.
    other_jwks: BTreeMap<String, Jwk>,
    /// Checker and verifier settings.
    config: Config,
    /// Objects applied in order to an empty state first; each must apply.
    setup: Vec<Obj>,
    /// `check`: the presented chain `root~…~leaf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// `check`: the requested action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    /// `apply`: the object verified and applied after the setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<Obj>,
    /// The outcome.
    expect: Expect,
    /// `apply`: the applied version and head afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expect_state: Option<StateView>,
    /// `apply` of an issuer key set: the applied set afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expect_issuers: Option<IssuersView>,
    /// Every JWS in the case: its `typ`, the key it claims, and whether the
    /// signature verifies with that key.
    signatures: Vec<Sig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Check,
    Apply,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    max_depth: usize,
    skew: u64,
    max_staleness: u64,
    /// `fail-closed` or `fail-open`.
    policy: String,
    /// When set, the root's `iss` must equal it.
    issuer: Option<String>,
    max_snapshot_bytes: usize,
    max_delta_bytes: usize,
    max_checkpoint_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ObjKind {
    Snapshot,
    Delta,
    Checkpoint,
    Issuers,
}

/// A published object, and what it is presented as. A snapshot's `jws`
/// is its text container: the compact JWS, `~`, base64url of the tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Obj {
    #[serde(rename = "as")]
    as_: ObjKind,
    jws: String,
}

impl Obj {
    /// The compact JWS: all of `jws`, or a snapshot container's signed header.
    fn signed(&self) -> &str {
        self.jws.split('~').next().unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `allow` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stale: Option<bool>,
    /// The denial reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// `advanced`, `refreshed`, `ignored` or `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    apply: Option<String>,
    /// `verify` or `apply`: where a rejection happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<u64>,
}

impl Expect {
    fn allow(stale: bool) -> Self {
        Self {
            decision: Some("allow".into()),
            stale: Some(stale),
            ..Self::default()
        }
    }

    fn deny(reason: &str) -> Self {
        Self {
            decision: Some("deny".into()),
            reason: Some(reason.into()),
            ..Self::default()
        }
    }

    fn applied(what: &str) -> Self {
        Self {
            apply: Some(what.into()),
            ..Self::default()
        }
    }

    fn advanced(from: u64, to: u64) -> Self {
        Self {
            from: Some(from),
            to: Some(to),
            ..Self::applied("advanced")
        }
    }

    fn rejected(stage: &str, error: &str) -> Self {
        Self {
            stage: Some(stage.into()),
            error: Some(error.into()),
            ..Self::applied("rejected")
        }
    }

    fn summary(&self) -> String {
        let parts = [&self.decision, &self.reason, &self.apply, &self.error];
        let mut s: Vec<String> = parts.iter().filter_map(|p| (*p).clone()).collect();
        if self.stale == Some(true) {
            s.push("stale".into());
        }
        s.join(" ")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateView {
    ver: u64,
    head: String,
}

/// The applied issuer key set: its version and its keys, by name
/// (`issuer`, `authority`, or a name in `other_jwks`), sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuersView {
    ver: u64,
    keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sig {
    jws: String,
    /// The header `typ` (absent for a plain JWT without one: `""`).
    typ: String,
    /// The key the object claims to be signed by: `issuer`, `authority`, or
    /// a name in `other_jwks`.
    signer: String,
    /// Whether the signature verifies with that key.
    valid: bool,
}

// ---------------------------------------------------------------------------
// The generator.

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://registry.example";
const ACTION: &str = "http:GET:/orders/7";
const OTHER_KEYS: [&str; 4] = ["alice", "bob", "carol", "mallory"];

fn seed(name: &str) -> [u8; 32] {
    Sha256::digest(format!("veto conformance vector key: {name}").as_bytes()).into()
}

fn key(name: &str) -> SigningKey {
    SigningKey::from_seed(&seed(name))
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn entry(kind: EntryKind, id: &str, before: Option<u64>) -> Entry {
    Entry {
        kind,
        id: id.into(),
        reason: Reason::PrivilegeWithdrawn,
        revoked_at: NOW - 300,
        before,
        expires_at: Some(NOW + 86_400),
    }
}

fn default_config() -> Config {
    let limits = SrlLimits::default();
    let check = CheckConfig::default();
    Config {
        max_depth: check.max_depth,
        skew: check.skew,
        max_staleness: check.max_staleness,
        policy: "fail-closed".into(),
        issuer: Some(ISS.into()),
        max_snapshot_bytes: limits.max_snapshot_bytes,
        max_delta_bytes: limits.max_delta_bytes,
        max_checkpoint_bytes: limits.max_checkpoint_bytes,
    }
}

struct SigInfo {
    typ: String,
    signer: String,
    valid: bool,
}

struct Gen {
    /// Every JWS made, with who it claims to be from and whether it verifies.
    made: BTreeMap<String, SigInfo>,
    authority: SrlSigner,
    vectors: Vec<Vector>,
}

impl Gen {
    fn new() -> Self {
        Self {
            made: BTreeMap::new(),
            authority: SrlSigner::new(key("authority"), ISS),
            vectors: Vec::new(),
        }
    }

    fn note(&mut self, jws: &str, typ: &str, signer: &str, valid: bool) {
        self.made.insert(
            jws.to_owned(),
            SigInfo {
                typ: typ.into(),
                signer: signer.into(),
                valid,
            },
        );
    }

    /// A warrant link signed by `signer` through the library.
    fn link(&mut self, signer: &str, claims: &Claims) -> String {
        self.link_json(signer, &serde_json::to_vec(claims).unwrap())
    }

    fn link_json(&mut self, signer: &str, payload: &[u8]) -> String {
        let jws = jws::sign(Typ::Warrant, &key(signer), payload);
        self.note(&jws, Typ::Warrant.as_str(), signer, true);
        jws
    }

    /// A JWS with a hand-written header, signed with `actual`'s key while
    /// naming `claimed`'s: a forgery unless the two are the same.
    fn raw(
        &mut self,
        header: &str,
        payload: &[u8],
        actual: &str,
        claimed: &str,
        typ: &str,
    ) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload));
        let sig = ed25519_dalek::SigningKey::from_bytes(&seed(actual)).sign(input.as_bytes());
        let jws = format!("{input}.{}", b64(&sig.to_bytes()));
        self.note(&jws, typ, claimed, actual == claimed);
        jws
    }

    /// `jws` with its payload replaced and its signature kept.
    fn tamper(&mut self, jws: &str, payload: &[u8]) -> String {
        let info = &self.made[jws];
        let (typ, signer) = (info.typ.clone(), info.signer.clone());
        let mut parts = jws.split('.');
        let (h, _, s) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
        let out = format!("{h}.{}.{s}", b64(payload));
        self.note(&out, &typ, &signer, false);
        out
    }

    fn delta_with(
        &mut self,
        signer: &SrlSigner,
        name: &str,
        ver: u64,
        prev: Head,
        add: Vec<Entry>,
    ) -> (String, Head) {
        let (jws, head) = signer.delta(ver, prev, NOW - 200 + ver, add, vec![]);
        self.note(&jws, Typ::Delta.as_str(), name, true);
        (jws, head)
    }

    fn delta(&mut self, ver: u64, prev: Head, add: Vec<Entry>) -> (String, Head) {
        let signer = self.authority.clone();
        self.delta_with(&signer, "authority", ver, prev, add)
    }

    fn checkpoint_with(
        &mut self,
        signer: &SrlSigner,
        name: &str,
        ver: u64,
        head: Head,
        iat: u64,
    ) -> String {
        let jws = signer.checkpoint(ver, head, iat, iat + 300);
        self.note(&jws, Typ::Checkpoint.as_str(), name, true);
        jws
    }

    fn checkpoint(&mut self, ver: u64, head: Head, iat: u64) -> String {
        let signer = self.authority.clone();
        self.checkpoint_with(&signer, "authority", ver, head, iat)
    }

    fn snapshot(&mut self, ver: u64, head: Head, entries: &[Entry]) -> String {
        let mut set = RevocationSet::default();
        for e in entries {
            set.insert(e.kind, e.digest(), e.before.unwrap_or(0));
        }
        let snap = self
            .authority
            .snapshot(ver, head, NOW - 30, NOW + 270, &set);
        self.note(snap.jws(), Typ::Snapshot.as_str(), "authority", true);
        snap.to_text()
    }

    /// A fresh state at version 1 holding `add`: delta 1 and a checkpoint
    /// signed 10 s ago.
    fn state(&mut self, add: Vec<Entry>) -> Vec<Obj> {
        self.state_attested_at(add, NOW - 10)
    }

    fn state_attested_at(&mut self, mut add: Vec<Entry>, iat: u64) -> Vec<Obj> {
        // Something unrelated is always revoked, so no check passes only
        // because the state is empty.
        add.insert(0, entry(EntryKind::Warrant, "jti-unrelated", None));
        add.insert(
            1,
            entry(EntryKind::Agent, "agent-unrelated", Some(NOW - 100)),
        );
        let (d1, h1) = self.delta(1, Head::ZERO, add);
        let cp = self.checkpoint(1, h1, iat);
        vec![obj(ObjKind::Delta, d1), obj(ObjKind::Checkpoint, cp)]
    }

    /// The claims of the standard chain: the issuer grants `agent-alice`
    /// (holder key alice), alice delegates to `agent-bob` (key bob), bob to
    /// `agent-carol` (key carol), each narrowing the actions.
    fn chain_claims(&self) -> [Claims; 3] {
        let holder = |name: &str| {
            Some(Cnf {
                jwk: key(name).public().to_jwk(),
            })
        };
        [
            Claims {
                jti: "jti-root".into(),
                iss: Some(ISS.into()),
                sub: "agent-alice".into(),
                iat: Some(NOW - 3600),
                nbf: Some(NOW - 3600),
                exp: NOW + 86_400,
                act: vec!["http:GET:/orders/*".into(), "http:POST:/orders/*".into()],
                cnf: holder("alice"),
                par: None,
            },
            Claims {
                jti: "jti-child".into(),
                iss: Some("agent-alice".into()),
                sub: "agent-bob".into(),
                iat: Some(NOW - 1800),
                nbf: Some(NOW - 1800),
                exp: NOW + 43_200,
                act: vec!["http:GET:/orders/*".into()],
                cnf: holder("bob"),
                par: Some("jti-root".into()),
            },
            Claims {
                jti: "jti-leaf".into(),
                iss: Some("agent-bob".into()),
                sub: "agent-carol".into(),
                iat: Some(NOW - 600),
                nbf: Some(NOW - 600),
                exp: NOW + 3600,
                act: vec![ACTION.into()],
                cnf: holder("carol"),
                par: Some("jti-child".into()),
            },
        ]
    }

    fn sign_chain(&mut self, claims: &[Claims], signers: &[&str]) -> String {
        let links: Vec<String> = claims
            .iter()
            .zip(signers)
            .map(|(c, s)| self.link(s, c))
            .collect();
        links.join("~")
    }

    fn standard_chain(&mut self) -> String {
        let claims = self.chain_claims();
        self.sign_chain(&claims, &["issuer", "alice", "bob"])
    }

    /// Every JWS in the case, in order of appearance, with what was noted
    /// when it was made.
    fn signatures(&self, v: &Vector) -> Vec<Sig> {
        let mut all: Vec<&str> = v.setup.iter().map(Obj::signed).collect();
        all.extend(v.token.iter().flat_map(|t| t.split('~')));
        all.extend(v.input.iter().map(Obj::signed));
        let mut out: Vec<Sig> = Vec::new();
        for jws in all {
            if out.iter().any(|s| s.jws == jws) {
                continue;
            }
            match self.made.get(jws) {
                Some(info) => out.push(Sig {
                    jws: jws.into(),
                    typ: info.typ.clone(),
                    signer: info.signer.clone(),
                    valid: info.valid,
                }),
                None => assert!(
                    UnverifiedJws::parse(jws, usize::MAX).is_err(),
                    "{}: a JWS the generator did not note",
                    v.name
                ),
            }
        }
        out
    }

    fn base(name: &str, description: &str, kind: Kind, setup: Vec<Obj>, expect: Expect) -> Vector {
        Vector {
            name: name.into(),
            description: description.into(),
            kind,
            iss: ISS.into(),
            now: NOW,
            issuer_jwk: key("issuer").public().to_jwk(),
            authority_jwk: key("authority").public().to_jwk(),
            other_jwks: OTHER_KEYS
                .iter()
                .map(|n| ((*n).to_owned(), key(n).public().to_jwk()))
                .collect(),
            config: default_config(),
            setup,
            token: None,
            action: None,
            input: None,
            expect,
            expect_state: None,
            expect_issuers: None,
            signatures: Vec::new(),
        }
    }

    fn check(
        &mut self,
        name: &str,
        description: &str,
        setup: Vec<Obj>,
        token: String,
        action: &str,
        expect: Expect,
    ) {
        self.check_with(name, description, setup, token, action, expect, |_| {});
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a vector is its name, description, setup, token, action, expectation and hook"
    )]
    fn check_with(
        &mut self,
        name: &str,
        description: &str,
        setup: Vec<Obj>,
        token: String,
        action: &str,
        expect: Expect,
        edit: impl FnOnce(&mut Config),
    ) {
        let mut v = Self::base(name, description, Kind::Check, setup, expect);
        v.token = Some(token);
        v.action = Some(action.into());
        edit(&mut v.config);
        v.signatures = self.signatures(&v);
        self.vectors.push(v);
    }

    fn apply(
        &mut self,
        name: &str,
        description: &str,
        setup: Vec<Obj>,
        input: Obj,
        expect: Expect,
        after: (u64, Head),
    ) {
        let mut v = Self::base(name, description, Kind::Apply, setup, expect);
        v.input = Some(input);
        v.expect_state = Some(StateView {
            ver: after.0,
            head: after.1.to_string(),
        });
        v.signatures = self.signatures(&v);
        self.vectors.push(v);
    }
}

impl Gen {
    /// An issuer key set of version `ver` listing the named keys, signed
    /// at `iat` by `signer` (named `name`).
    fn issuers_with(
        &mut self,
        signer: &SrlSigner,
        name: &str,
        ver: u64,
        iat: u64,
        keys: &[&str],
    ) -> String {
        let keys: Vec<PublicKey> = keys.iter().map(|k| key(k).public().clone()).collect();
        let jws = signer.issuers(ver, iat, &keys);
        self.note(&jws, Typ::Issuers.as_str(), name, true);
        jws
    }

    fn issuers(&mut self, ver: u64, iat: u64, keys: &[&str]) -> String {
        let signer = self.authority.clone();
        self.issuers_with(&signer, "authority", ver, iat, keys)
    }

    /// An `apply` case for an issuer key set: `setup` sets, then `input`;
    /// `after` is the applied set's version and key names.
    fn apply_issuers(
        &mut self,
        name: &str,
        description: &str,
        setup: Vec<Obj>,
        input: Obj,
        expect: Expect,
        after: (u64, &[&str]),
    ) {
        let mut v = Self::base(name, description, Kind::Apply, setup, expect);
        v.input = Some(input);
        let mut keys: Vec<String> = after.1.iter().map(|k| (*k).to_owned()).collect();
        keys.sort_unstable();
        v.expect_issuers = Some(IssuersView { ver: after.0, keys });
        v.signatures = self.signatures(&v);
        self.vectors.push(v);
    }
}

/// The issuer key set cases (DESIGN 3.5): signed by the authority,
/// versioned, never rolled back.
fn issuer_set_vectors(g: &mut Gen) {
    let v1 = g.issuers(1, NOW - 60, &["issuer"]);
    let v2 = g.issuers(2, NOW - 30, &["issuer", "alice"]);
    let one = vec![obj(ObjKind::Issuers, v1.clone())];
    let two = vec![
        obj(ObjKind::Issuers, v1.clone()),
        obj(ObjKind::Issuers, v2.clone()),
    ];
    let both: &[&str] = &["issuer", "alice"];
    g.apply_issuers(
        "apply-issuers-first",
        "the first authority-signed issuer key set is applied",
        vec![],
        obj(ObjKind::Issuers, v1.clone()),
        Expect::advanced(0, 1),
        (1, &["issuer"]),
    );
    g.apply_issuers(
        "apply-issuers-next",
        "a set of version 2 adding alice's key replaces version 1",
        one.clone(),
        obj(ObjKind::Issuers, v2.clone()),
        Expect::advanced(1, 2),
        (2, both),
    );
    let v3_retired = g.issuers(3, NOW - 10, &["alice"]);
    g.apply_issuers(
        "apply-issuers-retire",
        "a set of version 3 without the issuer key retires it",
        two.clone(),
        obj(ObjKind::Issuers, v3_retired),
        Expect::advanced(2, 3),
        (3, &["alice"]),
    );
    let v2_again = g.issuers(2, NOW - 5, &["alice", "issuer"]);
    g.apply_issuers(
        "apply-issuers-duplicate",
        "version 2 signed again later, keys in another order: the same set, nothing changes",
        two.clone(),
        obj(ObjKind::Issuers, v2_again),
        Expect::applied("ignored"),
        (2, both),
    );
    g.apply_issuers(
        "apply-issuers-rollback",
        "a validly signed set of version 1 on version 2: never roll back (the retired state of a key cannot be undone)",
        two.clone(),
        obj(ObjKind::Issuers, v1.clone()),
        Expect::rejected("apply", "rollback"),
        (2, both),
    );
    let v2_fork = g.issuers(2, NOW - 5, &["issuer", "mallory"]);
    g.apply_issuers(
        "apply-issuers-equivocation",
        "a validly signed set of the applied version 2 with other keys: equivocation",
        two.clone(),
        obj(ObjKind::Issuers, v2_fork),
        Expect::rejected("apply", "equivocation"),
        (2, both),
    );
    let mut payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(v2.split('.').nth(1).unwrap()).unwrap()).unwrap();
    payload["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::to_value(key("mallory").public().to_jwk()).unwrap());
    payload["ver"] = 3.into();
    let spliced = g.tamper(&v2, &serde_json::to_vec(&payload).unwrap());
    g.apply_issuers(
        "apply-issuers-spliced",
        "the authority's set with mallory's key spliced into the payload, signature kept: refused",
        one.clone(),
        obj(ObjKind::Issuers, spliced),
        Expect::rejected("verify", "bad_signature"),
        (1, &["issuer"]),
    );
    let header = format!(
        r#"{{"alg":"EdDSA","typ":"veto-issuers+jwt","kid":"{}"}}"#,
        key("authority").kid()
    );
    let forged = g.raw(
        &header,
        &serde_json::to_vec(&payload).unwrap(),
        "mallory",
        "authority",
        Typ::Issuers.as_str(),
    );
    g.apply_issuers(
        "apply-issuers-forged",
        "a set naming the authority's kid but signed with mallory's key",
        one.clone(),
        obj(ObjKind::Issuers, forged),
        Expect::rejected("verify", "bad_signature"),
        (1, &["issuer"]),
    );
    let untrusted = SrlSigner::new(key("mallory"), ISS);
    let by_mallory = g.issuers_with(&untrusted, "mallory", 9, NOW - 5, &["mallory"]);
    g.apply_issuers(
        "apply-issuers-untrusted-key",
        "a set validly signed by a key that is not the pinned authority key",
        one.clone(),
        obj(ObjKind::Issuers, by_mallory),
        Expect::rejected("verify", "unknown_key"),
        (1, &["issuer"]),
    );
    let other = SrlSigner::new(key("authority"), "https://other-registry.example");
    let other_iss = g.issuers_with(&other, "authority", 2, NOW - 5, &["mallory"]);
    g.apply_issuers(
        "apply-issuers-wrong-iss",
        "a set signed by the authority key for another registry's `iss`",
        one.clone(),
        obj(ObjKind::Issuers, other_iss),
        Expect::rejected("verify", "wrong_issuer"),
        (1, &["issuer"]),
    );
    let future = g.issuers(2, NOW + 6, both);
    g.apply_issuers(
        "apply-issuers-from-future",
        "a set with iat now + 6 s, beyond the 5 s clock-skew allowance",
        one.clone(),
        obj(ObjKind::Issuers, future),
        Expect::rejected("verify", "from_future"),
        (1, &["issuer"]),
    );
    let cp = g.checkpoint(1, Head::ZERO, NOW - 5);
    g.apply_issuers(
        "apply-checkpoint-as-issuers",
        "a validly signed checkpoint presented as an issuer key set: wrong `typ`",
        one,
        obj(ObjKind::Issuers, cp),
        Expect::rejected("verify", "wrong_typ"),
        (1, &["issuer"]),
    );
}

fn obj(as_: ObjKind, jws: String) -> Obj {
    Obj { as_, jws }
}

/// Builds every vector, deterministically.
fn generate() -> Vec<Vector> {
    let mut g = Gen::new();
    let chain = g.standard_chain();
    let claims = g.chain_claims();

    // --- Requests (`check`) -------------------------------------------------

    let setup = g.state(vec![]);
    g.check(
        "allow-chain-depth-3",
        "a valid chain issuer -> alice -> bob -> carol, each link narrowing the actions, against a fresh state",
        setup,
        chain.clone(),
        ACTION,
        Expect::allow(false),
    );

    let plain = serde_json::json!({
        "jti": "jti-plain",
        "sub": "agent-plain",
        "exp": NOW + 3600,
        "act": ["http:GET:/*"],
    });
    let header = format!(
        r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#,
        key("issuer").kid()
    );
    let plain = g.raw(
        &header,
        plain.to_string().as_bytes(),
        "issuer",
        "issuer",
        "JWT",
    );
    let setup = g.state(vec![]);
    g.check_with(
        "allow-plain-jwt-root",
        "a plain EdDSA JWT (`typ` JWT, only jti/sub/exp/act) from the trusted issuer is a valid root (DESIGN 3.1)",
        setup,
        plain,
        ACTION,
        Expect::allow(false),
        |c| c.issuer = None,
    );

    let setup = g.state(vec![]);
    let parts: Vec<&str> = chain.split('~').collect();
    g.check(
        "deny-malformed",
        "the middle link of an otherwise valid chain is not a compact JWS",
        setup,
        format!("{}~not-a-jws~{}", parts[0], parts[2]),
        ACTION,
        Expect::deny("malformed"),
    );

    let setup = g.state(vec![entry(EntryKind::Warrant, "jti-leaf", None)]);
    g.check(
        "deny-revoked-warrant",
        "the leaf link's jti is revoked",
        setup,
        chain.clone(),
        ACTION,
        Expect::deny("revoked"),
    );

    let setup = g.state(vec![entry(EntryKind::Warrant, "jti-root", None)]);
    g.check(
        "deny-revoked-transitive-parent",
        "only the root's jti is revoked: every chain below it is revoked by that one entry",
        setup,
        chain.clone(),
        ACTION,
        Expect::deny("revoked"),
    );

    let setup = g.state(vec![entry(EntryKind::Agent, "agent-bob", Some(NOW - 1800))]);
    g.check(
        "deny-revoked-agent-cutoff",
        "agent-bob is revoked with cutoff `before` equal to its link's iat (iat <= before is revoked)",
        setup,
        chain.clone(),
        ACTION,
        Expect::deny("revoked"),
    );

    let setup = g.state(vec![entry(EntryKind::Agent, "agent-bob", Some(NOW - 1801))]);
    g.check(
        "allow-agent-issued-after-cutoff",
        "agent-bob is revoked with a cutoff one second before its link's iat: a credential issued after re-enrolment stays valid",
        setup,
        chain.clone(),
        ACTION,
        Expect::allow(false),
    );

    let setup = g.state(vec![entry(EntryKind::Key, key("alice").kid(), None)]);
    g.check(
        "deny-revoked-key-holder",
        "alice's holder key (bound in the root's cnf.jwk, signing the child) is revoked by thumbprint",
        setup,
        chain.clone(),
        ACTION,
        Expect::deny("revoked"),
    );

    let setup = g.state(vec![entry(EntryKind::Key, key("issuer").kid(), None)]);
    g.check(
        "deny-revoked-key-issuer",
        "the issuer key that signed the root is revoked by thumbprint",
        setup,
        chain.clone(),
        ACTION,
        Expect::deny("revoked"),
    );

    let mut c = claims.clone();
    c[2].exp = NOW;
    let token = g.sign_chain(&c, &["issuer", "alice", "bob"]);
    let setup = g.state(vec![]);
    g.check(
        "deny-expired",
        "the leaf's exp equals now (a link is valid only while now < exp)",
        setup,
        token,
        ACTION,
        Expect::deny("expired"),
    );

    let mut c = claims.clone();
    c[2].nbf = Some(NOW + 6);
    let token = g.sign_chain(&c, &["issuer", "alice", "bob"]);
    let setup = g.state(vec![]);
    g.check(
        "deny-not-yet-valid",
        "the leaf's nbf is now + 6 s, beyond the 5 s clock-skew allowance",
        setup,
        token,
        ACTION,
        Expect::deny("not_yet_valid"),
    );

    let header = format!(
        r#"{{"alg":"EdDSA","typ":"veto-warrant+jwt","kid":"{}"}}"#,
        key("bob").kid()
    );
    let forged = g.raw(
        &header,
        &serde_json::to_vec(&claims[2]).unwrap(),
        "mallory",
        "bob",
        Typ::Warrant.as_str(),
    );
    let setup = g.state(vec![]);
    g.check(
        "deny-bad-signature",
        "the leaf names bob's key (the parent's holder) but was signed by mallory's",
        setup,
        format!("{}~{}~{forged}", parts[0], parts[1]),
        ACTION,
        Expect::deny("bad_signature"),
    );

    let mut widened = claims[0].clone();
    widened.act = vec!["*".into()];
    let tampered = g.tamper(parts[0], &serde_json::to_vec(&widened).unwrap());
    let setup = g.state(vec![]);
    g.check(
        "deny-tampered-payload",
        "the root's payload was changed (act widened to `*`) and its original signature kept",
        setup,
        format!("{tampered}~{}~{}", parts[1], parts[2]),
        ACTION,
        Expect::deny("bad_signature"),
    );

    let token = g.sign_chain(&claims, &["mallory", "alice", "bob"]);
    let setup = g.state(vec![]);
    g.check(
        "deny-untrusted-issuer",
        "the root is validly signed, by a key that is not a trusted issuer key (mallory's)",
        setup,
        token,
        ACTION,
        Expect::deny("untrusted_issuer"),
    );

    let mut c = claims.clone();
    c[0].iss = Some("https://other-registry.example".into());
    let token = g.sign_chain(&c, &["issuer", "alice", "bob"]);
    let setup = g.state(vec![]);
    g.check(
        "deny-untrusted-issuer-iss",
        "the root is signed by the trusted issuer key but its iss is not the configured issuer",
        setup,
        token,
        ACTION,
        Expect::deny("untrusted_issuer"),
    );

    let mut c = claims.clone();
    c[1].act = vec!["http:*".into()];
    let token = g.sign_chain(&c, &["issuer", "alice", "bob"]);
    let setup = g.state(vec![]);
    g.check(
        "deny-chain-invalid-widened-act",
        "the child's act `http:*` is wider than the root's (all signatures valid)",
        setup,
        token,
        ACTION,
        Expect::deny("chain_invalid"),
    );

    let mut c = claims.clone();
    c[2].par = Some("jti-other".into());
    let token = g.sign_chain(&c, &["issuer", "alice", "bob"]);
    let setup = g.state(vec![]);
    g.check(
        "deny-chain-invalid-wrong-par",
        "the leaf's par is not its parent's jti (all signatures valid)",
        setup,
        token,
        ACTION,
        Expect::deny("chain_invalid"),
    );

    let mut c = claims.clone();
    c[2].exp = c[1].exp + 1;
    let token = g.sign_chain(&c, &["issuer", "alice", "bob"]);
    let setup = g.state(vec![]);
    g.check(
        "deny-chain-invalid-outlives-parent",
        "the leaf expires one second after its parent (all signatures valid)",
        setup,
        token,
        ACTION,
        Expect::deny("chain_invalid"),
    );

    let setup = g.state(vec![]);
    g.check(
        "deny-action-denied",
        "a valid chain asked for an action its leaf does not permit",
        setup,
        chain.clone(),
        "http:DELETE:/orders/7",
        Expect::deny("action_denied"),
    );

    let setup = g.state_attested_at(vec![], NOW - 301);
    g.check(
        "deny-stale",
        "the newest checkpoint was signed 301 s ago, over max_staleness 300 s; policy fail-closed",
        setup,
        chain.clone(),
        ACTION,
        Expect::deny("stale"),
    );

    let setup = g.state_attested_at(vec![], NOW - 301);
    g.check_with(
        "allow-stale-fail-open",
        "as deny-stale, with policy fail-open: allowed and flagged stale",
        setup,
        chain.clone(),
        ACTION,
        Expect::allow(true),
        |c| c.policy = "fail-open".into(),
    );

    let (_, h1) = g.delta(1, Head::ZERO, vec![]);
    let cp = g.checkpoint(1, h1, NOW - 10);
    let setup = g.state(vec![]);
    g.check(
        "deny-checkpoint-as-warrant",
        "a validly signed checkpoint presented as a warrant chain (`typ` veto-srl-checkpoint+jwt)",
        setup,
        cp,
        ACTION,
        Expect::deny("malformed"),
    );

    // Five valid links of about 7 KiB each (padded with an ignored claim):
    // each link is under the 8 KiB link limit, the chain over 32 KiB.
    let alice = Some(Cnf {
        jwk: key("alice").public().to_jwk(),
    });
    let mut links = Vec::new();
    let mut par: Option<String> = None;
    for i in 0..5 {
        let mut c = claims[0].clone();
        c.jti = format!("jti-big-{i}");
        c.cnf = alice.clone();
        c.par = par.replace(c.jti.clone());
        if i > 0 {
            c.iss = Some("agent-alice".into());
        }
        let mut payload = serde_json::to_value(&c).unwrap();
        payload["pad"] = "p".repeat(5000).into();
        let payload = serde_json::to_vec(&payload).unwrap();
        links.push(g.link_json(if i == 0 { "issuer" } else { "alice" }, &payload));
    }
    // Without the fifth link the chain is under the limit, and valid.
    let four = ParsedChain::parse(&links[..4].join("~")).unwrap();
    four.verify(&KeySet::new([key("issuer").public().clone()]), 8)
        .unwrap();
    let setup = g.state(vec![]);
    g.check(
        "deny-oversize-chain",
        "five validly signed links of about 7 KiB each: the chain is over the 32 KiB limit",
        setup,
        links.join("~"),
        ACTION,
        Expect::deny("malformed"),
    );

    // --- Published objects (`apply`) ----------------------------------------

    let e1 = vec![entry(EntryKind::Warrant, "jti-revoked-1", None)];
    let e2 = vec![entry(EntryKind::Agent, "agent-gone", Some(NOW - 500))];
    let e2_fork = vec![entry(EntryKind::Key, key("mallory").kid(), None)];
    let (d1, h1) = g.delta(1, Head::ZERO, e1.clone());
    let (d2, h2) = g.delta(2, h1, e2.clone());
    let (d3, _) = g.delta(
        3,
        h2,
        vec![entry(EntryKind::Warrant, "jti-revoked-3", None)],
    );
    let (_, h2_fork) = g.delta(2, h1, e2_fork);
    let (_, h1_fork) = g.delta(
        1,
        Head::ZERO,
        vec![entry(EntryKind::Warrant, "jti-forked", None)],
    );
    let (d2_off_fork, _) = g.delta(2, h1_fork, e2.clone());
    let cp2 = g.checkpoint(2, h2, NOW - 5);
    let delta = |j: &String| obj(ObjKind::Delta, j.clone());
    let one = vec![delta(&d1)];
    let two = vec![delta(&d1), delta(&d2)];

    g.apply(
        "apply-delta-next",
        "delta 2 with prev = head(1) on a state at version 1 advances it to 2",
        one.clone(),
        delta(&d2),
        Expect::advanced(1, 2),
        (2, h2),
    );
    g.apply(
        "apply-delta-duplicate",
        "delta 1 delivered again to a state at version 2 is ignored",
        two.clone(),
        delta(&d1),
        Expect::applied("ignored"),
        (2, h2),
    );
    g.apply(
        "apply-delta-gap",
        "delta 3 delivered to a state at version 1: a gap, the caller must catch up",
        one.clone(),
        delta(&d3),
        Expect::rejected("apply", "gap"),
        (1, h1),
    );
    g.apply(
        "apply-delta-wrong-prev",
        "delta 2 whose prev is the head of a different delta 1 (a fork): the hash chain is broken",
        one.clone(),
        delta(&d2_off_fork),
        Expect::rejected("apply", "broken_chain"),
        (1, h1),
    );
    g.apply(
        "apply-checkpoint-refresh",
        "a checkpoint for the applied version and head renews freshness",
        two.clone(),
        obj(ObjKind::Checkpoint, cp2.clone()),
        Expect::applied("refreshed"),
        (2, h2),
    );
    let cp1 = g.checkpoint(1, h1, NOW - 5);
    g.apply(
        "apply-checkpoint-older",
        "a checkpoint for an older version is ignored",
        two.clone(),
        obj(ObjKind::Checkpoint, cp1),
        Expect::applied("ignored"),
        (2, h2),
    );
    g.apply(
        "apply-checkpoint-gap",
        "a checkpoint for version 2 on a state at version 1: a gap, catch up",
        one.clone(),
        obj(ObjKind::Checkpoint, cp2.clone()),
        Expect::rejected("apply", "gap"),
        (1, h1),
    );
    let cp_equivocal = g.checkpoint(2, h2_fork, NOW - 5);
    g.apply(
        "apply-checkpoint-equivocation",
        "a validly signed checkpoint for the applied version 2 with another head: equivocation",
        two.clone(),
        obj(ObjKind::Checkpoint, cp_equivocal),
        Expect::rejected("apply", "equivocation"),
        (2, h2),
    );
    let snap2 = g.snapshot(2, h2, &[e1.clone(), e2.clone()].concat());
    g.apply(
        "apply-snapshot-advance",
        "a snapshot of version 2 on a state at version 1 replaces it",
        one.clone(),
        obj(ObjKind::Snapshot, snap2),
        Expect::advanced(1, 2),
        (2, h2),
    );
    let snap1 = g.snapshot(1, h1, &e1);
    g.apply(
        "apply-snapshot-rollback",
        "a validly signed snapshot of version 1 on a state at version 2: never roll back",
        two.clone(),
        obj(ObjKind::Snapshot, snap1),
        Expect::rejected("apply", "rollback"),
        (2, h2),
    );
    let snap2_fork = g.snapshot(2, h2_fork, &e1);
    g.apply(
        "apply-snapshot-equivocation",
        "a validly signed snapshot of the applied version 2 with another head: equivocation",
        two.clone(),
        obj(ObjKind::Snapshot, snap2_fork),
        Expect::rejected("apply", "equivocation"),
        (2, h2),
    );
    g.apply(
        "apply-delta-as-checkpoint",
        "a validly signed delta presented as a checkpoint: wrong `typ`",
        two.clone(),
        obj(ObjKind::Checkpoint, d2.clone()),
        Expect::rejected("verify", "wrong_typ"),
        (2, h2),
    );
    g.apply(
        "apply-checkpoint-as-delta",
        "a validly signed checkpoint presented as a delta: wrong `typ`",
        two.clone(),
        obj(ObjKind::Delta, cp2.clone()),
        Expect::rejected("verify", "wrong_typ"),
        (2, h2),
    );
    let authority_link = g.link("authority", &claims[0]);
    g.apply(
        "apply-warrant-as-checkpoint",
        "a warrant link signed with the authority key, presented as a checkpoint: wrong `typ`",
        two.clone(),
        obj(ObjKind::Checkpoint, authority_link),
        Expect::rejected("verify", "wrong_typ"),
        (2, h2),
    );
    let mut payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(d2.split('.').nth(1).unwrap()).unwrap()).unwrap();
    payload["add"][0]["id"] = "agent-innocent".into();
    let d2_tampered = g.tamper(&d2, &serde_json::to_vec(&payload).unwrap());
    g.apply(
        "apply-delta-tampered",
        "delta 2 with its payload changed (another agent revoked) and its original signature kept",
        one.clone(),
        delta(&d2_tampered),
        Expect::rejected("verify", "bad_signature"),
        (1, h1),
    );
    let forged_payload = CheckpointPayload {
        iss: ISS.into(),
        ver: 2,
        head: h2_fork,
        iat: NOW - 5,
        exp: NOW + 295,
    };
    let header = format!(
        r#"{{"alg":"EdDSA","typ":"veto-srl-checkpoint+jwt","kid":"{}"}}"#,
        key("authority").kid()
    );
    let forged = g.raw(
        &header,
        &serde_json::to_vec(&forged_payload).unwrap(),
        "mallory",
        "authority",
        Typ::Checkpoint.as_str(),
    );
    g.apply(
        "apply-checkpoint-forged",
        "a checkpoint naming the authority's kid but signed with mallory's key",
        two.clone(),
        obj(ObjKind::Checkpoint, forged),
        Expect::rejected("verify", "bad_signature"),
        (2, h2),
    );
    let untrusted = SrlSigner::new(key("mallory"), ISS);
    let cp_untrusted = g.checkpoint_with(&untrusted, "mallory", 2, h2_fork, NOW - 5);
    g.apply(
        "apply-checkpoint-untrusted-key",
        "a checkpoint validly signed by a key that is not the pinned authority key",
        two.clone(),
        obj(ObjKind::Checkpoint, cp_untrusted),
        Expect::rejected("verify", "unknown_key"),
        (2, h2),
    );
    let other = SrlSigner::new(key("authority"), "https://other-registry.example");
    let cp_other = g.checkpoint_with(&other, "authority", 2, h2, NOW - 5);
    g.apply(
        "apply-checkpoint-wrong-iss",
        "a checkpoint signed by the authority key for another iss",
        two.clone(),
        obj(ObjKind::Checkpoint, cp_other),
        Expect::rejected("verify", "wrong_issuer"),
        (2, h2),
    );
    let big = SrlSigner::new(
        key("authority"),
        format!("https://{}.example", "x".repeat(4096)),
    );
    let cp_big = g.checkpoint_with(&big, "authority", 2, h2, NOW - 5);
    g.apply(
        "apply-checkpoint-oversize",
        "a validly signed checkpoint over the 4096-byte checkpoint limit is refused before parsing",
        two.clone(),
        obj(ObjKind::Checkpoint, cp_big),
        Expect::rejected("verify", "too_large"),
        (2, h2),
    );
    let cp_future = g.checkpoint(2, h2, NOW + 6);
    g.apply(
        "apply-checkpoint-from-future",
        "a checkpoint with iat now + 6 s, beyond the 5 s clock-skew allowance",
        two.clone(),
        obj(ObjKind::Checkpoint, cp_future),
        Expect::rejected("verify", "from_future"),
        (2, h2),
    );
    let cp_skew = g.checkpoint(2, h2, NOW + 5);
    g.apply(
        "apply-checkpoint-within-skew",
        "a checkpoint with iat now + 5 s, exactly the clock-skew allowance, is accepted",
        two.clone(),
        obj(ObjKind::Checkpoint, cp_skew),
        Expect::applied("refreshed"),
        (2, h2),
    );
    issuer_set_vectors(&mut g);

    g.vectors
}

// ---------------------------------------------------------------------------
// The runner: only the files and the public API.

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn to_json(v: &Vector) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    s
}

fn public(jwk: &Jwk) -> PublicKey {
    let key = PublicKey::from_jwk(jwk).unwrap();
    assert_eq!(
        jwk.kid.as_deref(),
        Some(key.kid()),
        "a JWK's kid is its RFC 7638 thumbprint"
    );
    key
}

fn verify_error(e: &SrlError) -> &'static str {
    match e {
        SrlError::Jws { source, .. } => match source {
            JwsError::TooLarge { .. } => "too_large",
            JwsError::Malformed(_) | JwsError::Header(_) => "malformed",
            JwsError::Alg(_) => "alg",
            JwsError::Typ { .. } => "wrong_typ",
            JwsError::MissingKid | JwsError::UnknownKey(_) => "unknown_key",
            JwsError::BadSignature => "bad_signature",
            // A variant added later has no vector yet: any expectation fails.
            _ => "unclassified",
        },
        SrlError::Payload { .. } => "payload",
        SrlError::Issuer { .. } => "wrong_issuer",
        SrlError::FromFuture { .. } => "from_future",
        _ => "unclassified",
    }
}

fn apply_error(e: &ApplyError) -> &'static str {
    match e {
        ApplyError::Gap { .. } => "gap",
        ApplyError::Rollback { .. } => "rollback",
        ApplyError::Equivocation { .. } => "equivocation",
        ApplyError::BrokenChain { .. } => "broken_chain",
    }
}

/// Verifies `o` as what it is presented as, and applies it (an issuer key
/// set to `issuers`, anything else to `state`).
fn apply(
    verifier: &SrlVerifier,
    state: &mut SrlState,
    issuers: &mut IssuerSet,
    o: &Obj,
    now: u64,
) -> Expect {
    let applied = match o.as_ {
        ObjKind::Issuers => verifier.issuers(&o.jws, now).map(|s| issuers.apply(s)),
        ObjKind::Delta => verifier.delta(&o.jws, now).map(|d| state.apply_delta(&d)),
        ObjKind::Checkpoint => verifier
            .checkpoint(&o.jws, now)
            .map(|c| state.apply_checkpoint(&c)),
        ObjKind::Snapshot => verifier
            .snapshot(&o.jws, now)
            .map(|s| state.apply_snapshot(s)),
    };
    match applied {
        Err(e) => Expect::rejected("verify", verify_error(&e)),
        Ok(Err(e)) => Expect::rejected("apply", apply_error(&e)),
        Ok(Ok(Applied::Advanced { from, to })) => Expect::advanced(from, to),
        Ok(Ok(Applied::Refreshed)) => Expect::applied("refreshed"),
        Ok(Ok(Applied::Ignored)) => Expect::applied("ignored"),
    }
}

fn decision(d: &Decision) -> Expect {
    match d {
        Decision::Allow { stale } => Expect::allow(*stale),
        Decision::Deny(denial) => Expect::deny(denial.reason.as_str()),
    }
}

/// Checks one vector's outcome, and its signature table, through the public API.
fn run(v: &Vector) {
    let name = &v.name;
    let issuer = public(&v.issuer_jwk);
    let authority = public(&v.authority_jwk);
    let mut keys: BTreeMap<&str, PublicKey> =
        BTreeMap::from([("issuer", issuer.clone()), ("authority", authority.clone())]);
    for (n, jwk) in &v.other_jwks {
        keys.insert(n, public(jwk));
    }

    // The signature table: each entry says how it verifies, and is complete.
    for s in &v.signatures {
        let jws =
            UnverifiedJws::parse(&s.jws, usize::MAX).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(jws.header().alg, "EdDSA", "{name}");
        assert_eq!(jws.header().typ.as_deref().unwrap_or(""), s.typ, "{name}");
        let key = &keys[s.signer.as_str()];
        assert_eq!(
            jws.header().kid.as_deref(),
            Some(key.kid()),
            "{name}: kid names the signer"
        );
        assert_eq!(
            jws.verify_with(key).is_ok(),
            s.valid,
            "{name}: signature by {}",
            s.signer
        );
    }
    let listed = |jws: &str| v.signatures.iter().any(|s| s.jws == jws);
    let mut present: Vec<&str> = v.setup.iter().map(Obj::signed).collect();
    present.extend(v.token.iter().flat_map(|t| t.split('~')));
    present.extend(v.input.iter().map(Obj::signed));
    for jws in &present {
        assert!(
            listed(jws) || UnverifiedJws::parse(jws, usize::MAX).is_err(),
            "{name}: unlisted JWS"
        );
    }
    assert!(
        v.signatures
            .iter()
            .all(|s| present.contains(&s.jws.as_str())),
        "{name}: listed JWS not in the case"
    );

    let c = &v.config;
    let verifier = SrlVerifier::new(KeySet::new([authority]), v.iss.clone())
        .with_skew(c.skew)
        .with_limits(SrlLimits {
            max_snapshot_bytes: c.max_snapshot_bytes,
            max_delta_bytes: c.max_delta_bytes,
            max_checkpoint_bytes: c.max_checkpoint_bytes,
        });
    let mut state = SrlState::new();
    let mut issuers = IssuerSet::new();
    for (i, o) in v.setup.iter().enumerate() {
        let got = apply(&verifier, &mut state, &mut issuers, o, v.now);
        assert!(
            matches!(got.apply.as_deref(), Some("advanced" | "refreshed")),
            "{name}: setup object {i} did not apply: {got:?}"
        );
    }

    match v.kind {
        Kind::Check => {
            let policy = match c.policy.as_str() {
                "fail-closed" => StalenessPolicy::FailClosed,
                "fail-open" => StalenessPolicy::FailOpen,
                other => panic!("{name}: unknown policy `{other}`"),
            };
            let checker = Checker::new(
                KeySet::new([issuer]),
                CheckConfig {
                    max_depth: c.max_depth,
                    skew: c.skew,
                    max_staleness: c.max_staleness,
                    policy,
                    issuer: c.issuer.clone(),
                },
            );
            let token = v.token.as_deref().unwrap();
            let action = v.action.as_deref().unwrap();
            let got = checker.check_token(&state, token, action, v.now);
            assert_eq!(decision(&got), v.expect, "{name}: {got:?}");
            // A chain verified once and cached decides the same way.
            if let Ok(chain) = ParsedChain::parse(token) {
                if let Ok(verified) = checker.verify(chain) {
                    assert_eq!(
                        checker.check_verified(&state, &verified, action, v.now),
                        got,
                        "{name}: cached path"
                    );
                }
            }
        }
        Kind::Apply => {
            let input = v.input.as_ref().unwrap();
            let got = apply(&verifier, &mut state, &mut issuers, input, v.now);
            assert_eq!(got, v.expect, "{name}");
            assert!(
                v.expect_state.is_some() || v.expect_issuers.is_some(),
                "{name}: expects nothing afterwards"
            );
            if let Some(want) = &v.expect_state {
                assert_eq!(
                    (state.ver(), state.head().to_string()),
                    (want.ver, want.head.clone()),
                    "{name}: state after"
                );
            }
            if let Some(want) = &v.expect_issuers {
                let mut names: Vec<String> = issuers
                    .keys()
                    .map(|set| {
                        set.keys()
                            .iter()
                            .map(|k| {
                                keys.iter()
                                    .find(|(_, p)| p.kid() == k.kid())
                                    .map(|(n, _)| (*n).to_owned())
                                    .unwrap_or_else(|| panic!("{name}: an unnamed key"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort_unstable();
                assert_eq!(
                    (issuers.ver(), names),
                    (Some(want.ver), want.keys.clone()),
                    "{name}: issuer key set after"
                );
            }
        }
    }
}

const README_HEAD: &str = r#"# Conformance vectors

One JSON file per case. They are generated, deterministically (fixed Ed25519
seeds, fixed times), by `crates/veto-core/tests/vectors.rs`:

    VETO_REGENERATE_VECTORS=1 cargo test -p veto-core --test vectors

Without the variable the same test loads every file, checks its expected
outcome through veto-core's public API, and fails if the files differ from
what the generator produces now. `scripts/check_jose.py` verifies every
signature independently (Python `cryptography`). This README is generated too.

## Format

| field | meaning |
|---|---|
| `name` | the file name without `.json` |
| `description` | what the case checks |
| `kind` | `check`: decide a request; `apply`: verify and apply one published object |
| `iss` | the registry's `iss`: the authority of the list, and the root issuer |
| `now` | the current time, Unix seconds |
| `issuer_jwk` | the trusted issuer public key (signs roots), an RFC 8037 JWK with its RFC 7638 `kid` |
| `authority_jwk` | the pinned authority public key (signs snapshots, deltas, checkpoints, issuer key sets) |
| `other_jwks` | other public keys by name: holders `alice`, `bob`, `carol`, and the attacker `mallory` |
| `config` | `max_depth`, `skew` (s), `max_staleness` (s), `policy` (`fail-closed` or `fail-open`), `issuer` (required root `iss`, or null), and the size limits `max_snapshot_bytes`, `max_delta_bytes`, `max_checkpoint_bytes` |
| `setup` | objects `{"as": "snapshot" \| "delta" \| "checkpoint" \| "issuers", "jws": …}` verified (at `now`) and applied, in order, to an empty state (version 0) and no issuer key set; each must apply. A snapshot's `jws` is its text container: the compact JWS (payload `{iss, ver, head, iat, exp, digest: "sha256-96", tables: {sha256, warrants, agents, keys}}`), `~`, then base64url (no padding) of the table bytes: `warrants` 12-byte digests, then `agents` records (12-byte digest, 8-byte big-endian `before`), then `keys` 12-byte digests, each list strictly ascending, their count as signed and their SHA-256 (lowercase hex) equal to `tables.sha256` |
| `token` | `check`: the chain `root~child~…~leaf`, compact JWS links |
| `action` | `check`: the requested action |
| `input` | `apply`: one object, as in `setup`, verified as what `as` says and applied |
| `expect` | `check`: `{"decision": "allow", "stale": bool}` or `{"decision": "deny", "reason": R}` with R one of `malformed`, `revoked`, `expired`, `not_yet_valid`, `bad_signature`, `untrusted_issuer`, `chain_invalid`, `action_denied`, `stale`. `apply`: `{"apply": "advanced", "from": n, "to": m}`, `{"apply": "refreshed"}`, `{"apply": "ignored"}`, or `{"apply": "rejected", "stage": "verify" \| "apply", "error": E}` with E one of `too_large`, `malformed`, `alg`, `wrong_typ`, `unknown_key`, `bad_signature`, `payload`, `wrong_issuer`, `from_future` (verify) or `gap`, `rollback`, `equivocation`, `broken_chain` (apply) |
| `expect_state` | `apply` of a snapshot, delta or checkpoint: `{"ver", "head"}` of the state afterwards (a rejection leaves it unchanged) |
| `expect_issuers` | `apply` of an issuer key set (`veto-issuers+jwt`, payload `{iss, ver, iat, keys}`): `{"ver", "keys"}` of the applied set afterwards, its keys by name, sorted. A higher `ver` replaces the set; the applied `ver` with the same keys (any order) is `ignored`; with other keys `equivocation`; a lower `ver` `rollback` |
| `signatures` | every JWS in the case: `{"jws", "typ" (the header's, `""` if none), "signer" (`issuer`, `authority` or a name in `other_jwks`: the key its `kid` names), "valid"}`. `valid: true` means it verifies as EdDSA with that key over `header.payload` as received, and `kid` is that key's thumbprint; `valid: false` (tampered, or forged by another key) means it does not verify with that key |

Denial messages are not part of the contract; reasons and errors are.

## Cases

"#;

fn readme(vectors: &[Vector]) -> String {
    let mut s = README_HEAD.to_owned();
    for v in vectors {
        s.push_str(&format!(
            "- `{}` ({}): {}\n",
            v.name,
            v.expect.summary(),
            v.description
        ));
    }
    s
}

/// What the generator produces: file name and contents.
fn expected_files() -> (Vec<Vector>, BTreeMap<String, String>) {
    let vectors = generate();
    let mut files: BTreeMap<String, String> = vectors
        .iter()
        .map(|v| (format!("{}.json", v.name), to_json(v)))
        .collect();
    assert_eq!(files.len(), vectors.len(), "vector names are unique");
    files.insert("README.md".into(), readme(&vectors));
    (vectors, files)
}

#[test]
fn conformance_vectors() {
    let dir = vectors_dir();
    let (generated, files) = expected_files();
    if std::env::var("VETO_REGENERATE_VECTORS").as_deref() == Ok("1") {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                std::fs::remove_file(path).unwrap();
            }
        }
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    // The committed files are exactly what the generator produces.
    let mut on_disk = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.ends_with(".json") || file == "README.md" {
            on_disk.insert(file, std::fs::read_to_string(&path).unwrap());
        }
    }
    let stale: Vec<&String> = files
        .keys()
        .filter(|f| on_disk.get(*f) != files.get(*f))
        .collect();
    let extra: Vec<&String> = on_disk.keys().filter(|f| !files.contains_key(*f)).collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "tests/vectors is out of date (differs: {stale:?}, not generated: {extra:?}); \
         regenerate with VETO_REGENERATE_VECTORS=1 cargo test -p veto-core --test vectors"
    );

    // Every file's expected outcome holds, read back from disk.
    let mut loaded = 0;
    for (file, text) in &on_disk {
        if !file.ends_with(".json") {
            continue;
        }
        let v: Vector = serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(format!("{}.json", v.name), *file);
        run(&v);
        loaded += 1;
    }
    assert_eq!(loaded, generated.len());

    // Every denial reason a chain check can give has a vector. The proof
    // of possession (`pop_required`, `pop_invalid`) is decided on the
    // request, not the chain: the authorizer's proof step, tested by the
    // `dpop` unit tests, `crates/veto/tests/dpop.rs` through the real
    // proxy, and `scripts/check_dpop.py` against an independent DPoP
    // implementation.
    let request_level = [
        veto_core::DenyReason::PopRequired,
        veto_core::DenyReason::PopInvalid,
    ];
    for reason in veto_core::DenyReason::ALL
        .into_iter()
        .filter(|r| !request_level.contains(r))
    {
        assert!(
            generated
                .iter()
                .any(|v| v.expect.reason.as_deref() == Some(reason.as_str())),
            "no vector for `{reason}`"
        );
    }
}
