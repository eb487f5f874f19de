//! The authorizer against a hostile or broken registry (DESIGN 3, 4).
//!
//! A fake registry in this process serves objects crafted with veto-core's
//! `SrlSigner`: some are honest, some are rolled back, forged, unchained,
//! equivocating, from the future or of the wrong type. Every bad object
//! must leave the applied state exactly as it was (version, head,
//! freshness, and the decision for the chain the object would revoke) and
//! must be counted in the authorizer's metrics. Each test then publishes
//! the honest revocation over the same channel and checks that it is
//! applied, so a channel that silently delivers nothing cannot pass.
//!
//! Time is a `ManualClock` shared by the fake and the authorizer, so
//! staleness is reached by moving the clock, not by sleeping.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::broadcast;
use veto_authorizer::{Authorizer, Config, Push, Status};
use veto_core::wire::{path, DeltasPage, ErrorBody, ErrorCode, EventKind};
use veto_core::{
    warrant, Clock as _, Decision, DenyReason, Entry, EntryKind, Head, KeySet, LinkSpec,
    ManualClock, ParsedChain, Reason, RevocationSet, SigningKey, Snapshot, SrlSigner,
    StalenessPolicy, SystemClock,
};

const ISS: &str = "veto-test";
const ACTION: &str = "http:GET:/orders/7";
const WAIT: Duration = Duration::from_secs(10);
/// How long a checkpoint or snapshot the fake signs may be relied on.
const TTL: u64 = 300;

// ---------------------------------------------------------------------------
// The fake registry.

#[derive(Default)]
struct Published {
    ver: u64,
    head: Head,
    set: RevocationSet,
    /// `deltas[i]` is delta `i + 1`.
    deltas: Vec<String>,
    /// Served at `/v1/srl` as its binary container (503 when `None`).
    snapshot: Option<Snapshot>,
    /// Served at `/v1/srl/checkpoint` (503 when `None`).
    checkpoint: Option<String>,
    /// `/v1/srl/deltas` answers 410.
    deltas_gone: bool,
    /// Requests served, in order: `path status`.
    log: Vec<String>,
}

struct Fake {
    signer: SrlSigner,
    clock: Arc<ManualClock>,
    jwks: Mutex<String>,
    /// The signed issuer key set served at `/v1/issuers`.
    issuers: Mutex<String>,
    published: Mutex<Published>,
    frames: broadcast::Sender<String>,
}

impl Fake {
    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Published) -> T) -> T {
        f(&mut self.published.lock().unwrap())
    }

    fn log(&self, line: String) {
        self.with(|p| p.log.push(line));
    }

    fn requests(&self) -> Vec<String> {
        self.with(|p| p.log.clone())
    }

    /// Commits the next version revoking `jtis`; returns its delta. Nothing
    /// else (snapshot, checkpoint) is republished.
    fn commit(&self, jtis: &[&str]) -> String {
        let now = self.now();
        self.with(|p| {
            let add: Vec<Entry> = jtis.iter().map(|id| entry(id, now)).collect();
            for e in &add {
                p.set.insert(e.kind, e.digest(), 0);
            }
            let (jws, head) = self.signer.delta(p.ver + 1, p.head, now, add, vec![]);
            p.ver += 1;
            p.head = head;
            p.deltas.push(jws.clone());
            jws
        })
    }

    /// Signs a checkpoint of the current version now and serves it.
    fn publish_checkpoint(&self) -> String {
        let now = self.now();
        self.with(|p| {
            let jws = self.signer.checkpoint(p.ver, p.head, now, now + TTL);
            p.checkpoint = Some(jws.clone());
            jws
        })
    }

    /// Signs a snapshot of the current version now and serves it.
    fn publish_snapshot(&self) -> Snapshot {
        let now = self.now();
        self.with(|p| {
            let jws = self.signer.snapshot(p.ver, p.head, now, now + TTL, &p.set);
            p.snapshot = Some(jws.clone());
            jws
        })
    }

    fn ver_head(&self) -> (u64, Head) {
        self.with(|p| (p.ver, p.head))
    }

    /// Pushes one event to every open `/v1/srl/events` stream.
    fn push(&self, event: EventKind, id: u64, data: &str) {
        let _ = self
            .frames
            .send(format!("event: {event}\nid: {id}\ndata: {data}\n\n"));
    }

    fn subscribers(&self) -> usize {
        self.frames.receiver_count()
    }
}

fn entry(jti: &str, now: u64) -> Entry {
    Entry {
        kind: EntryKind::Warrant,
        id: jti.into(),
        reason: Reason::KeyCompromise,
        revoked_at: now,
        before: None,
        expires_at: None,
    }
}

type Shared = Arc<Fake>;

async fn srl(State(f): State<Shared>) -> Response {
    let body = f.with(|p| p.snapshot.clone());
    let status = if body.is_some() { 200 } else { 503 };
    f.log(format!("{} {status}", path::SRL));
    match body {
        Some(b) => b.into_bytes().into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn checkpoint(State(f): State<Shared>) -> Response {
    let body = f.with(|p| p.checkpoint.clone());
    let status = if body.is_some() { 200 } else { 503 };
    f.log(format!("{} {status}", path::SRL_CHECKPOINT));
    match body {
        Some(b) => b.into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn deltas(State(f): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let since: usize = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let (gone, list) = f.with(|p| {
        (
            p.deltas_gone,
            p.deltas
                .get(since..)
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
        )
    });
    if gone {
        f.log(format!("{} 410", path::SRL_DELTAS));
        let body = ErrorBody::new(ErrorCode::Gone, "not retained").to_json();
        return (StatusCode::GONE, body).into_response();
    }
    f.log(format!("{} 200", path::SRL_DELTAS));
    axum::Json(DeltasPage { deltas: list }).into_response()
}

async fn events(State(f): State<Shared>) -> Response {
    // Subscribed before the response head is sent, so once the authorizer
    // reports the push connected, nothing pushed afterwards is missed.
    let rx = f.frames.subscribe();
    f.log(format!("{} 200", path::SRL_EVENTS));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(frame) => return Some((Ok::<_, Infallible>(Bytes::from(frame)), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn jwks(State(f): State<Shared>) -> Response {
    let body = f.jwks.lock().unwrap().clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn issuers(State(f): State<Shared>) -> Response {
    let body = f.issuers.lock().unwrap().clone();
    ([(header::CONTENT_TYPE, "application/jose")], body).into_response()
}

/// Starts a fake registry at version 2 (two unrelated revocations, plus
/// `revoked_jti`), with a snapshot and a checkpoint of it.
async fn start_fake(
    clock: Arc<ManualClock>,
    issuer: &SigningKey,
    revoked_jti: &str,
) -> (Shared, String) {
    let authority = SigningKey::generate().unwrap();
    let (frames, _) = broadcast::channel(64);
    let signer = SrlSigner::new(authority, ISS);
    let issuer_set = signer.issuers(1, clock.now(), &[issuer.public().clone()]);
    let fake = Arc::new(Fake {
        signer,
        clock,
        jwks: Mutex::new(serde_json::json!({ "keys": [issuer.public().to_jwk()] }).to_string()),
        issuers: Mutex::new(issuer_set),
        published: Mutex::new(Published::default()),
        frames,
    });
    fake.commit(&["unrelated-1"]);
    fake.commit(&["unrelated-2", revoked_jti]);
    fake.publish_snapshot();
    fake.publish_checkpoint();
    let app = Router::new()
        .route(path::SRL, get(srl))
        .route(path::SRL_CHECKPOINT, get(checkpoint))
        .route(path::SRL_DELTAS, get(deltas))
        .route(path::SRL_EVENTS, get(events))
        .route(path::JWKS, get(jwks))
        .route(path::ISSUERS, get(issuers))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url)
}

// ---------------------------------------------------------------------------
// The authorizer under test.

struct Harness {
    fake: Shared,
    clock: Arc<ManualClock>,
    /// The one issuer key the fake registry's signed set lists.
    issuer: SigningKey,
    authz: Authorizer,
    /// A chain nothing has revoked; the bad objects try to revoke it.
    victim: String,
    victim_jti: String,
    /// A chain revoked in the honest state from the start.
    revoked: String,
    /// A chain nothing tries to revoke.
    bystander: String,
    push: bool,
}

fn chain(issuer: &SigningKey, sub: &str, now: u64) -> (String, String) {
    let holder = SigningKey::generate().unwrap();
    let spec = LinkSpec {
        sub: sub.into(),
        act: vec!["http:GET:/orders/*".into()],
        iat: now,
        exp: now + 3600,
        holder: Some(holder.public().clone()),
    };
    let root = warrant::mint_root(issuer, ISS, spec).unwrap();
    let jti = ParsedChain::parse(&root)
        .unwrap()
        .root()
        .claims()
        .jti
        .clone();
    (root, jti)
}

fn config(url: &str, fake: &Fake) -> Config {
    let mut c = Config::new(url, ISS, KeySet::new([fake.signer.key().public().clone()]));
    c.poll_interval = Duration::from_millis(200);
    c.check.issuer = Some(ISS.into());
    // Bearer checks: these tests are about the sync path.
    c.pop.policy = veto_authorizer::PopPolicy::Off;
    c
}

async fn start(configure: impl FnOnce(&mut Config)) -> Harness {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let issuer = SigningKey::generate().unwrap();
    let (victim, victim_jti) = chain(&issuer, "agent-victim", clock.now());
    let (revoked, revoked_jti) = chain(&issuer, "agent-revoked", clock.now());
    let (bystander, _) = chain(&issuer, "agent-bystander", clock.now());
    let (fake, url) = start_fake(clock.clone(), &issuer, &revoked_jti).await;
    let mut c = config(&url, &fake);
    configure(&mut c);
    let push = matches!(c.push, Push::Sse);
    let authz = Authorizer::start_with_clock(c, clock.clone())
        .await
        .unwrap();
    let h = Harness {
        fake,
        clock,
        issuer,
        authz,
        victim,
        victim_jti,
        revoked,
        bystander,
        push,
    };
    h.wait_synced().await;
    h
}

impl Harness {
    /// Waits until the authorizer holds the fake's version, fresh, with the
    /// push connected and the issuer keys loaded.
    async fn wait_synced(&self) {
        let (ver, head) = self.fake.ver_head();
        let push = self.push;
        eventually("the authorizer syncs with the fake registry", || {
            let s = self.authz.status();
            s.version == ver
                && s.head == head.to_string()
                && s.fresh
                && (!push || (s.push_connected && self.fake.subscribers() > 0))
                && self.decide(&self.victim) == Decision::Allow { stale: false }
        })
        .await;
        assert_eq!(self.reason(&self.revoked), Some(DenyReason::Revoked));
        assert_eq!(
            self.decide(&self.bystander),
            Decision::Allow { stale: false }
        );
    }

    fn decide(&self, chain: &str) -> Decision {
        self.authz.check(chain, ACTION).decision
    }

    fn reason(&self, chain: &str) -> Option<DenyReason> {
        self.decide(chain).reason()
    }

    fn metric(&self, series: &str) -> f64 {
        metric(&self.authz.metrics_text(), series)
    }

    /// Waits until `series` reaches `at_least`, then checks that nothing
    /// moved: same version, head and freshness as `before`, and the victim
    /// still allowed.
    async fn assert_refused(&self, before: &Status, series: &str, at_least: f64) {
        eventually(&format!("`{series}` reaches {at_least}"), || {
            self.metric(series) >= at_least
        })
        .await;
        // Anything else already queued on the push stream is handled too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = self.authz.status();
        assert_eq!(
            (s.version, &s.head),
            (before.version, &before.head),
            "a refused object changed the state"
        );
        assert_eq!(
            s.fresh_until, before.fresh_until,
            "a refused object changed the freshness"
        );
        assert_eq!(
            s.entries, before.entries,
            "a refused object changed the entries"
        );
        assert_eq!(
            self.decide(&self.victim),
            Decision::Allow { stale: false },
            "a refused object revoked the victim"
        );
    }

    /// The honest revocation of the victim, pushed as the next delta: it
    /// must apply (so the channel the bad objects came through works).
    async fn revoke_victim_honestly(&self) {
        let delta = self.fake.commit(&[&self.victim_jti]);
        self.fake.publish_checkpoint();
        let (ver, _) = self.fake.ver_head();
        self.fake.push(EventKind::Delta, ver, &delta);
        eventually("the honest revocation is applied", || {
            self.reason(&self.victim) == Some(DenyReason::Revoked)
        })
        .await;
        assert_eq!(self.authz.status().version, ver);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.authz.shutdown();
    }
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text;
/// 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("metric `{series}` value `{v}`: {e}"))
        })
        .unwrap_or(0.0)
}

/// A series of the rejected-objects metric. Its `kind` labels (`malformed`,
/// `bad_signature`, `wrong_typ`, …) are metric labels, not wire codes, so
/// the tests spell them.
fn rejected(kind: &str) -> String {
    format!("veto_authorizer_rejected_objects_total{{kind=\"{kind}\"}}")
}

fn sync_errors(kind: &str) -> String {
    format!("veto_authorizer_sync_errors_total{{kind=\"{kind}\"}}")
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The payload segment of a compact JWS.
fn payload_segment(jws: &str) -> &str {
    jws.split('.').nth(1).unwrap()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("veto-authz-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Refused objects.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_snapshot_is_refused() {
    let h = start(|_| {}).await;
    let before = h.authz.status();
    // Version 1, honestly signed, but listing the victim: applying it
    // would both roll back and revoke.
    let mut set = RevocationSet::default();
    let e = entry(&h.victim_jti, h.clock.now());
    set.insert(e.kind, e.digest(), 0);
    let head1 = Head::of_payload(b"version 1");
    let old = h
        .fake
        .signer
        .snapshot(1, head1, h.clock.now(), h.clock.now() + TTL, &set);
    h.fake.push(EventKind::Snapshot, 1, &old.to_text());
    h.assert_refused(&before, &rejected("rollback"), 1.0).await;
    h.revoke_victim_honestly().await;
}

/// Issuer keys come only from the authority-signed set: a key injected
/// into the plain JWKS, or into a set signed by anyone else, is never
/// trusted; an older set (a rollback) does not bring back a retired key;
/// a newer one takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_come_only_from_the_signed_set() {
    let h = start(|c| {
        c.issuers = veto_authorizer::Issuers::Signed {
            refresh: Duration::from_millis(100),
        }
    })
    .await;
    let attacker = SigningKey::generate().unwrap();
    let (forged_root, _) = chain(&attacker, "agent-mallory", h.clock.now());
    let untrusted = |authz: &Authorizer| {
        authz.check(&forged_root, ACTION).decision.reason() == Some(DenyReason::UntrustedIssuer)
    };
    // The JWKS lists the attacker's key: nothing changes.
    *h.fake.jwks.lock().unwrap() =
        serde_json::json!({ "keys": [attacker.public().to_jwk()] }).to_string();
    // A set listing it, signed by the attacker, is refused.
    let forged = SrlSigner::new(attacker.clone(), ISS).issuers(
        9,
        h.clock.now(),
        &[attacker.public().clone()],
    );
    *h.fake.issuers.lock().unwrap() = forged;
    let before = h.authz.metrics_text();
    eventually("the forged set to be fetched and refused", || {
        metric(&h.authz.metrics_text(), &sync_errors("issuers"))
            > metric(&before, &sync_errors("issuers"))
    })
    .await;
    assert!(untrusted(&h.authz));
    assert!(h.authz.check(&h.bystander, ACTION).decision.is_allowed());

    // The authority adds the key at version 2: it is trusted.
    let new_issuer = SigningKey::generate().unwrap();
    let (new_root, _) = chain(&new_issuer, "agent-new", h.clock.now());
    let (old_keys, new_keys) = (
        vec![h.issuer.public().clone()],
        vec![h.issuer.public().clone(), new_issuer.public().clone()],
    );
    *h.fake.issuers.lock().unwrap() = h.fake.signer.issuers(2, h.clock.now(), &new_keys);
    eventually("the new issuer key", || {
        h.authz.check(&new_root, ACTION).decision.is_allowed()
    })
    .await;
    // Version 1 again (a rollback) cannot take it away, nor can another
    // set signed as version 2 (equivocation).
    *h.fake.issuers.lock().unwrap() = h.fake.signer.issuers(1, h.clock.now(), &old_keys);
    eventually("the rollback to be refused", || {
        metric(&h.authz.metrics_text(), &rejected("issuers_rollback")) >= 1.0
    })
    .await;
    *h.fake.issuers.lock().unwrap() = h.fake.signer.issuers(2, h.clock.now(), &old_keys);
    eventually("the equivocation to be refused", || {
        metric(&h.authz.metrics_text(), &rejected("issuers_equivocation")) >= 1.0
    })
    .await;
    assert!(h.authz.check(&new_root, ACTION).decision.is_allowed());
    // Retired at version 3: no longer trusted.
    *h.fake.issuers.lock().unwrap() = h.fake.signer.issuers(3, h.clock.now(), &old_keys);
    eventually("the retired key to stop working", || {
        h.authz.check(&new_root, ACTION).decision.reason() == Some(DenyReason::UntrustedIssuer)
    })
    .await;
    assert!(untrusted(&h.authz));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_signatures_are_refused() {
    let h = start(|_| {}).await;
    let before = h.authz.status();
    let (ver, head) = h.fake.ver_head();
    let now = h.clock.now();
    // The right delta, signed by another key under the same `iss`.
    let rogue = SrlSigner::new(SigningKey::generate().unwrap(), ISS);
    let (forged, _) = rogue.delta(ver + 1, head, now, vec![entry(&h.victim_jti, now)], vec![]);
    h.fake.push(EventKind::Delta, ver + 1, &forged);
    h.assert_refused(&before, &rejected("bad_signature"), 1.0)
        .await;
    // The authority's header and signature over an empty delta, with the
    // payload swapped for one that revokes the victim.
    let (honest, _) = h.fake.signer.delta(ver + 1, head, now, vec![], vec![]);
    let mut parts: Vec<&str> = honest.split('.').collect();
    parts[1] = payload_segment(&forged);
    h.fake.push(EventKind::Delta, ver + 1, &parts.join("."));
    h.assert_refused(&before, &rejected("bad_signature"), 2.0)
        .await;
    assert!(h.metric(&sync_errors("invalid_object")) >= 2.0);
    h.revoke_victim_honestly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_with_a_wrong_prev_is_refused() {
    let h = start(|_| {}).await;
    let before = h.authz.status();
    let (ver, _) = h.fake.ver_head();
    let now = h.clock.now();
    let (broken, _) = h.fake.signer.delta(
        ver + 1,
        Head([7; 32]),
        now,
        vec![entry(&h.victim_jti, now)],
        vec![],
    );
    h.fake.push(EventKind::Delta, ver + 1, &broken);
    h.assert_refused(&before, &rejected("wrong_prev"), 1.0)
        .await;
    h.revoke_victim_honestly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivocation_is_refused_and_raised() {
    let h = start(|_| {}).await;
    // Later than the applied attestation, so accepting it would move
    // `fresh_until`.
    h.clock.advance(10);
    let before = h.authz.status();
    let (ver, _) = h.fake.ver_head();
    let now = h.clock.now();
    let other = Head([9; 32]);
    h.fake.push(
        EventKind::Checkpoint,
        ver,
        &h.fake.signer.checkpoint(ver, other, now, now + TTL),
    );
    h.assert_refused(&before, "veto_authorizer_equivocations_total", 1.0)
        .await;
    assert_eq!(h.metric(&rejected("equivocation")), 1.0);
    // A snapshot of the same version with another head (revoking the victim).
    let mut set = RevocationSet::default();
    let e = entry(&h.victim_jti, now);
    set.insert(e.kind, e.digest(), 0);
    h.fake.push(
        EventKind::Snapshot,
        ver,
        &h.fake
            .signer
            .snapshot(ver, other, now, now + TTL, &set)
            .to_text(),
    );
    h.assert_refused(&before, "veto_authorizer_equivocations_total", 2.0)
        .await;
    // Served on pull too.
    h.fake
        .with(|p| p.checkpoint = Some(h.fake.signer.checkpoint(ver, other, now, now + TTL)));
    h.assert_refused(&before, "veto_authorizer_equivocations_total", 3.0)
        .await;
    h.fake.publish_checkpoint();
    h.revoke_victim_honestly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_from_the_future_are_refused() {
    let h = start(|_| {}).await;
    let before = h.authz.status();
    let (ver, head) = h.fake.ver_head();
    // Beyond the default 5 s skew allowance.
    let future = h.clock.now() + 60;
    let cp = h.fake.signer.checkpoint(ver, head, future, future + TTL);
    h.fake.push(EventKind::Checkpoint, ver, &cp);
    h.assert_refused(&before, &rejected("from_future"), 1.0)
        .await;
    let (delta, _) = h.fake.signer.delta(
        ver + 1,
        head,
        future,
        vec![entry(&h.victim_jti, future)],
        vec![],
    );
    h.fake.push(EventKind::Delta, ver + 1, &delta);
    h.assert_refused(&before, &rejected("from_future"), 2.0)
        .await;
    // Served on pull: every poll refuses it.
    h.fake.with(|p| p.checkpoint = Some(cp));
    h.assert_refused(&before, &rejected("from_future"), 4.0)
        .await;
    // Within the allowance is fine.
    h.clock.advance(1);
    let near = h.clock.now() + 4;
    h.fake
        .with(|p| p.checkpoint = Some(h.fake.signer.checkpoint(ver, head, near, near + TTL)));
    eventually("a checkpoint within the skew allowance is applied", || {
        h.authz.status().fresh_until != before.fresh_until
    })
    .await;
    h.revoke_victim_honestly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_the_wrong_type_are_refused() {
    let h = start(|_| {}).await;
    let before = h.authz.status();
    let (ver, head) = h.fake.ver_head();
    let now = h.clock.now();
    // A checkpoint sent as a delta event.
    h.fake.push(
        EventKind::Delta,
        ver + 1,
        &h.fake.signer.checkpoint(ver, head, now, now + TTL),
    );
    h.assert_refused(&before, &rejected("wrong_typ"), 1.0).await;
    // A delta revoking the victim, sent as a checkpoint event.
    let (delta, _) =
        h.fake
            .signer
            .delta(ver + 1, head, now, vec![entry(&h.victim_jti, now)], vec![]);
    h.fake.push(EventKind::Checkpoint, ver + 1, &delta);
    h.assert_refused(&before, &rejected("wrong_typ"), 2.0).await;
    // A delta sent as a snapshot event (in a snapshot's container, with
    // no tables: it is its `typ` that is refused).
    h.fake
        .push(EventKind::Snapshot, ver + 1, &format!("{delta}~"));
    h.assert_refused(&before, &rejected("wrong_typ"), 3.0).await;
    h.revoke_victim_honestly().await;
}

/// base64url without padding, for headers veto would never sign.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// HMAC-SHA256 (RFC 2104) over veto-core's SHA-256.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let sha = |b: &[u8]| Head::of_payload(b).0;
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha(&inner));
    sha(&outer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_confusion_is_refused() {
    let h = start(|_| {}).await;
    let before = h.authz.status();
    let (ver, head) = h.fake.ver_head();
    let now = h.clock.now();
    // The honest delta revoking the victim, re-headed with other algorithms.
    let (honest, _) =
        h.fake
            .signer
            .delta(ver + 1, head, now, vec![entry(&h.victim_jti, now)], vec![]);
    let payload = payload_segment(&honest);
    let signature = honest.rsplit('.').next().unwrap();
    let key = h.fake.signer.key();
    let header = |alg: &str| {
        b64url(
            format!(
                r#"{{"alg":"{alg}","typ":"veto-srl-delta+jwt","kid":"{}"}}"#,
                key.kid()
            )
            .as_bytes(),
        )
    };
    let public_jwk = serde_json::to_string(&key.public().to_jwk()).unwrap();
    let hs256 = |secret: &[u8]| {
        let input = format!("{}.{payload}", header("HS256"));
        let mac = hmac_sha256(secret, input.as_bytes());
        format!("{input}.{}", b64url(&mac))
    };
    let forged = [
        // `none`, unsigned and with the authority's signature kept.
        format!("{}.{payload}.", header("none")),
        format!("{}.{payload}.{signature}", header("none")),
        // HS256 keyed with what a confused verifier holds: the public key.
        hs256(key.public().as_bytes()),
        hs256(public_jwk.as_bytes()),
        // Near misses of `EdDSA`.
        format!("{}.{payload}.{signature}", header("eddsa")),
        format!("{}.{payload}.{signature}", header("Ed25519")),
    ];
    for (i, jws) in forged.iter().enumerate() {
        h.fake.push(EventKind::Delta, ver + 1, jws);
        h.assert_refused(&before, &rejected("malformed"), (i + 1) as f64)
            .await;
    }
    // The same confusion on a checkpoint and a snapshot.
    let checkpoint = h.fake.signer.checkpoint(ver, head, now, now + TTL);
    let cp_header = b64url(
        format!(
            r#"{{"alg":"HS256","typ":"veto-srl-checkpoint+jwt","kid":"{}"}}"#,
            key.kid()
        )
        .as_bytes(),
    );
    let cp_input = format!("{cp_header}.{}", payload_segment(&checkpoint));
    let cp_mac = hmac_sha256(key.public().as_bytes(), cp_input.as_bytes());
    h.fake.push(
        EventKind::Checkpoint,
        ver,
        &format!("{cp_input}.{}", b64url(&cp_mac)),
    );
    h.assert_refused(&before, &rejected("malformed"), forged.len() as f64 + 1.0)
        .await;
    let sn_header = b64url(
        format!(
            r#"{{"alg":"none","typ":"veto-srl+jwt","kid":"{}"}}"#,
            key.kid()
        )
        .as_bytes(),
    );
    let snapshot = h.fake.with(|p| p.snapshot.clone()).unwrap();
    let text = snapshot.to_text();
    h.fake.push(
        EventKind::Snapshot,
        ver,
        &format!(
            "{sn_header}.{}.{}",
            payload_segment(snapshot.jws()),
            &text[snapshot.jws().len()..]
        ),
    );
    h.assert_refused(&before, &rejected("malformed"), forged.len() as f64 + 2.0)
        .await;
    h.revoke_victim_honestly().await;
}

// ---------------------------------------------------------------------------
// Repair.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_gap_is_repaired_by_fetching_the_deltas() {
    // Polling is hourly, so only the pushed delta can start the repair.
    let h = start(|c| c.poll_interval = Duration::from_secs(3600)).await;
    let (n, _) = h.fake.ver_head();
    let repaired = h.metric("veto_authorizer_gaps_repaired_total");
    h.fake.commit(&["unrelated-3"]);
    let skipped = h.fake.commit(&[&h.victim_jti]);
    // The checkpoint served on pull still attests version N: it was
    // signed before the deltas, as a lagging replica or cache would serve
    // it. The signed delta N+2 alone proves the gap.
    h.fake.push(EventKind::Delta, n + 2, &skipped);
    eventually("the gap is repaired", || h.authz.status().version == n + 2).await;
    assert_eq!(h.authz.status().head, h.fake.ver_head().1.to_string());
    assert_eq!(h.reason(&h.victim), Some(DenyReason::Revoked));
    assert_eq!(
        h.metric("veto_authorizer_gaps_repaired_total"),
        repaired + 1.0
    );
    let log = h.fake.requests();
    assert!(
        log.iter()
            .any(|r| *r == format!("{} 200", path::SRL_DELTAS)),
        "no delta fetch: {log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|r| r.starts_with(&format!("{} ", path::SRL)))
            .count(),
        1,
        "a snapshot was fetched for a gap deltas could fill: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_deltas_are_replaced_by_a_snapshot() {
    let h = start(|_| {}).await;
    let (n, _) = h.fake.ver_head();
    h.fake.with(|p| p.deltas_gone = true);
    h.fake.commit(&["unrelated-3"]);
    h.fake.commit(&[&h.victim_jti]);
    h.fake.commit(&["unrelated-4"]);
    h.fake.publish_snapshot();
    let cp = h.fake.publish_checkpoint();
    h.fake.push(EventKind::Checkpoint, n + 3, &cp);
    eventually("the snapshot is applied", || {
        h.authz.status().version == n + 3
    })
    .await;
    assert_eq!(h.authz.status().head, h.fake.ver_head().1.to_string());
    assert_eq!(h.reason(&h.victim), Some(DenyReason::Revoked));
    assert_eq!(h.reason(&h.revoked), Some(DenyReason::Revoked));
    assert!(h.authz.status().fresh);
    let log = h.fake.requests();
    let gone = log
        .iter()
        .position(|r| *r == format!("{} 410", path::SRL_DELTAS))
        .unwrap_or_else(|| panic!("no 410: {log:?}"));
    assert!(
        log[gone..]
            .iter()
            .any(|r| *r == format!("{} 200", path::SRL)),
        "no snapshot fetched after the 410: {log:?}"
    );
}

// ---------------------------------------------------------------------------
// Staleness.

/// The registry stops attesting; after `max_staleness` the policy decides;
/// once checkpoints resume the state is fresh again.
async fn staleness(policy: StalenessPolicy, is_stale_decision: impl Fn(&Decision) -> bool) {
    let h = start(|c| {
        c.check.max_staleness = 2;
        c.check.policy = policy;
    })
    .await;
    assert_eq!(h.decide(&h.victim), Decision::Allow { stale: false });
    // The pull endpoint fails and nothing is pushed.
    let errors = h.metric(&sync_errors("status"));
    h.fake.with(|p| p.checkpoint = None);
    eventually("a failed poll is counted", || {
        h.metric(&sync_errors("status")) > errors
    })
    .await;
    h.clock.advance(1);
    assert!(h.authz.status().fresh, "stale before max_staleness passed");
    assert_eq!(h.decide(&h.victim), Decision::Allow { stale: false });
    h.clock.advance(1);
    let s = h.authz.status();
    assert!(!s.fresh, "still fresh after max_staleness: {s:?}");
    let d = h.decide(&h.victim);
    assert!(
        is_stale_decision(&d),
        "{policy:?} decided {d:?} on stale state"
    );
    // Revocations known are still enforced, whatever the policy.
    assert_eq!(h.reason(&h.revoked), Some(DenyReason::Revoked));
    // Failed polls go on; none of them renews freshness.
    let errors = h.metric(&sync_errors("status"));
    eventually("more failed polls", || {
        h.metric(&sync_errors("status")) >= errors + 2.0
    })
    .await;
    assert!(is_stale_decision(&h.decide(&h.victim)));
    assert_eq!(h.metric("veto_authorizer_fresh"), 0.0);
    // Checkpoints resume (pull and push): fresh again.
    let cp = h.fake.publish_checkpoint();
    h.fake.push(EventKind::Checkpoint, s.version, &cp);
    eventually("fresh again", || h.authz.status().fresh).await;
    assert_eq!(h.decide(&h.victim), Decision::Allow { stale: false });
    assert_eq!(h.metric("veto_authorizer_fresh"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_state_denies_under_fail_closed() {
    staleness(StalenessPolicy::FailClosed, |d| {
        d.reason() == Some(DenyReason::Stale)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_state_allows_flagged_under_fail_open() {
    staleness(StalenessPolicy::FailOpen, |d| {
        *d == Decision::Allow { stale: true }
    })
    .await;
    let h = start(|c| c.check.policy = StalenessPolicy::FailOpen).await;
    // Counted as such.
    h.fake.with(|p| p.checkpoint = None);
    h.clock.advance(TTL + 1);
    assert_eq!(h.decide(&h.victim), Decision::Allow { stale: true });
    assert!(h.metric("veto_authorizer_decisions_total{outcome=\"allow_stale\"}") >= 1.0);
}

// ---------------------------------------------------------------------------
// The disk cache.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cache_survives_a_restart_without_the_registry() {
    let dir = TempDir::new("cache");
    let cache_dir = dir.0.clone();
    let h = start(|c| c.cache_dir = Some(cache_dir.clone())).await;
    let delta = h.fake.commit(&[&h.victim_jti]);
    let cp = h.fake.publish_checkpoint();
    let (ver, head) = h.fake.ver_head();
    h.fake.push(EventKind::Delta, ver, &delta);
    h.fake.push(EventKind::Checkpoint, ver, &cp);
    eventually("the revocation is applied", || {
        h.reason(&h.victim) == Some(DenyReason::Revoked)
    })
    .await;
    let file = cache_dir.join("veto-authorizer-state.json");
    eventually("the state is written to disk", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains(&delta) && t.contains(&cp))
    })
    .await;
    h.authz.shutdown();
    let (victim, revoked, bystander, clock) = (
        h.victim.clone(),
        h.revoked.clone(),
        h.bystander.clone(),
        h.clock.clone(),
    );
    let mut c = config("http://127.0.0.1:1", &h.fake);
    c.cache_dir = Some(cache_dir.clone());
    drop(h);

    // Nothing listens on port 1: the new authorizer has only the cache.
    let authz = Authorizer::start_with_clock(c, clock.clone())
        .await
        .unwrap();
    let s = authz.status();
    assert_eq!(
        (s.version, s.head.as_str()),
        (ver, head.to_string().as_str()),
        "{s:?}"
    );
    assert!(s.fresh, "{s:?}");
    assert_eq!(
        authz.check(&victim, ACTION).decision.reason(),
        Some(DenyReason::Revoked)
    );
    assert_eq!(
        authz.check(&revoked, ACTION).decision.reason(),
        Some(DenyReason::Revoked)
    );
    // Nothing is revoked that was not, and the issuer keys came from the
    // cache too (the JWKS cannot be fetched).
    assert_eq!(
        authz.check(&bystander, ACTION).decision,
        Decision::Allow { stale: false }
    );
    // Past the attestation's lifetime the cache is stale; revoked chains stay revoked.
    clock.advance(TTL + 1);
    assert!(!authz.status().fresh);
    assert_eq!(
        authz.check(&bystander, ACTION).decision.reason(),
        Some(DenyReason::Stale)
    );
    assert_eq!(
        authz.check(&victim, ACTION).decision.reason(),
        Some(DenyReason::Revoked)
    );
    authz.shutdown();
    drop(dir);
}
