#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! `Authorizer::check` on the hot path: a real registry in this process
//! (SQLite in a temporary directory, serving on a loopback port), an
//! authorizer synced to it over SSE, and two chains minted through the
//! registry's API — a depth-1 root warrant and a depth-4 chain (the root
//! plus three delegations, each to a new holder key). Each chain is checked
//! once before measuring, which verifies its signatures and puts it in the
//! verified-chain cache; the benchmark then measures what every later
//! request with that token costs: the cache lookup (a keyed hash of the
//! token's tail and a full comparison), the revocation lookups for every
//! link, time validity, the action match and the freshness check.
//!
//! Proof of possession: a second authorizer with `--pop required` checks
//! the same chains presented with `Authorization: DPoP` and a fresh proof
//! by the leaf's holder key (made outside the measurement, one per
//! iteration), beside one Ed25519 `verify_strict` of a proof-sized message
//! (the floor: the signature check a proof cannot avoid).
//!
//! Then, unless `VETO_BENCH_REVOKED=0`, the registry revokes that many
//! random warrant ids (default 1,000,000; in POSTs of 10,000 entries) and
//! the same checks are measured against the larger revocation state.
//!
//! Run: `cargo bench -p veto-authorizer --bench check`. See BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;
use veto_authorizer::{Authorizer, Config, Credential, Presented, Scheme};
use veto_core::dpop::{self, ProofSpec};
use veto_core::warrant::delegate;
use veto_core::wire::path;
use veto_core::{KeySet, LinkSpec, SigningKey};

const ACTION: &str = "http:GET:/orders/7";
/// Entries per revocation POST (the registry's limit).
const BATCH: usize = 10_000;

struct World {
    rt: tokio::runtime::Runtime,
    authz: Authorizer,
    /// The same registry, `PopPolicy::Required`.
    pop: Authorizer,
    /// The leaf holder keys of `depth1` and `depth4`.
    holders: [SigningKey; 2],
    base: String,
    token: String,
    depth1: String,
    depth4: String,
    dir: std::path::PathBuf,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn setup() -> World {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "veto-bench-check-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let (authz, pop, holders, base, token, depth1, depth4) = rt.block_on(async {
        let reg = veto_registry::Registry::open(veto_registry::Config::new(&dir))
            .await
            .unwrap();
        let token = std::fs::read_to_string(reg.admin_token_path().unwrap())
            .unwrap()
            .trim()
            .to_owned();
        let authority = reg.authority_key().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(reg.serve(listener, std::future::pending()));

        let http = reqwest::Client::new();
        let mint = |holder: Option<&SigningKey>| {
            // The registry binds a holder key in every warrant.
            let unheld = SigningKey::generate().unwrap();
            let k = holder.unwrap_or(&unheld);
            let body = json!({"agent": "planner", "act": ["http:*:/*"], "ttl": 3600,
                "holder_key": serde_json::to_value(k.public().to_jwk()).unwrap()});
            let req = http
                .post(format!("{base}{}", path::WARRANTS))
                .bearer_auth(&token)
                .json(&body);
            async move {
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
                let v: serde_json::Value = resp.json().await.unwrap();
                (
                    v["warrant"].as_str().unwrap().to_owned(),
                    v["exp"].as_u64().unwrap(),
                )
            }
        };
        let holder1 = SigningKey::generate().unwrap();
        let (depth1, _) = mint(Some(&holder1)).await;
        // Depth 4: root (holder k0) -> k1 -> k2 -> k3, narrowing the action.
        let keys: Vec<SigningKey> = (0..4).map(|_| SigningKey::generate().unwrap()).collect();
        let (mut chain, exp) = mint(Some(&keys[0])).await;
        let acts = [
            vec!["http:GET:/*".to_owned()],
            vec!["http:GET:/orders/*".to_owned()],
            vec!["http:GET:/orders/*".to_owned()],
        ];
        for (i, act) in acts.into_iter().enumerate() {
            chain = delegate(
                &chain,
                &keys[i],
                LinkSpec {
                    sub: format!("worker-{i}"),
                    act,
                    iat: now(),
                    exp,
                    holder: Some(keys[i + 1].public().clone()),
                },
            )
            .unwrap();
        }
        let depth4 = chain;

        let mut config = Config::new(&base, "veto", KeySet::new([authority]));
        config.poll_interval = Duration::from_secs(3600);
        config.pop.policy = veto_authorizer::PopPolicy::Off;
        let authz = Authorizer::start(config.clone()).await.unwrap();
        config.pop.policy = veto_authorizer::PopPolicy::Required;
        let pop = Authorizer::start(config).await.unwrap();
        // Fresh, and the issuer keys (JWKS) loaded: both chains allowed.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = authz.status().fresh
                && pop.status().fresh
                && authz.check(&depth1, ACTION).decision.is_allowed()
                && authz.check(&depth4, ACTION).decision.is_allowed();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the authorizer did not allow the chains within 30 s: {:?} / {:?} / {:?}",
                authz.status(),
                authz.check(&depth1, ACTION).decision,
                authz.check(&depth4, ACTION).decision
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let holder4 = keys.into_iter().last().unwrap();
        (authz, pop, [holder1, holder4], base, token, depth1, depth4)
    });
    World {
        rt,
        authz,
        pop,
        holders,
        base,
        token,
        depth1,
        depth4,
        dir,
    }
}

/// Revokes `n` random warrant ids in POSTs of [`BATCH`], then waits until
/// the authorizer has them all; returns the seconds both took.
fn revoke_many(w: &World, n: usize) -> (f64, f64) {
    w.rt.block_on(async {
        let http = reqwest::Client::new();
        let before = w.authz.status().entries;
        let t0 = Instant::now();
        let mut left = n;
        let mut i = 0u64;
        while left > 0 {
            let k = left.min(BATCH);
            left -= k;
            let entries: Vec<_> = (0..k)
                .map(|_| {
                    i += 1;
                    json!({"kind": "warrant", "id": format!("bulk-{:016x}-{i}", now()), "reason": "superseded"})
                })
                .collect();
            let resp = http
                .post(format!("{}{}", w.base, path::REVOCATIONS))
                .bearer_auth(&w.token)
                .json(&json!({ "entries": entries }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        }
        let registry_secs = t0.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(120);
        while w.authz.status().entries < before + n {
            assert!(
                Instant::now() < deadline,
                "the authorizer has {} of {} entries after 120 s",
                w.authz.status().entries,
                before + n
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (registry_secs, t0.elapsed().as_secs_f64())
    })
}

fn bench_checks(c: &mut Criterion, w: &World, label: &str) {
    let mut g = c.benchmark_group(format!("authorizer_check/{label}"));
    for (name, token) in [("depth1", &w.depth1), ("depth4", &w.depth4)] {
        assert!(w.authz.check(token, ACTION).decision.is_allowed());
        g.bench_function(name, |b| {
            b.iter(|| black_box(w.authz.check(black_box(token), black_box(ACTION))))
        });
    }
    g.finish();
}

const URL: &str = "http://gateway.example/orders/7";

/// `chain` presented with a fresh proof by `holder` for `GET` [`URL`].
fn proved(holder: &SigningKey, chain: &str) -> String {
    dpop::make(
        holder,
        &ProofSpec {
            method: "GET",
            url: URL,
            chain,
            iat: now(),
            nonce: None,
        },
    )
    .unwrap()
}

fn bench_pop(c: &mut Criterion, w: &World) {
    let mut g = c.benchmark_group("authorizer_check_dpop");
    let htu = dpop::canonical_htu(URL).unwrap();
    for (name, token, holder) in [
        ("depth1", &w.depth1, &w.holders[0]),
        ("depth4", &w.depth4, &w.holders[1]),
    ] {
        let present = |proof: &str| {
            w.pop.check_request(&Presented {
                credential: Credential {
                    scheme: Scheme::Dpop,
                    chain: token,
                    proof: Some(proof),
                },
                method: "GET",
                htu: &htu,
                action: ACTION,
            })
        };
        let first = present(&proved(holder, token));
        assert!(first.decision.is_allowed(), "{:?}", first.decision);
        g.bench_function(name, |b| {
            b.iter_batched(
                || proved(holder, token),
                |proof| black_box(present(black_box(&proof))),
                BatchSize::SmallInput,
            )
        });
    }
    // The floor: one strict Ed25519 verification of a proof's signing input.
    let proof = proved(&w.holders[0], &w.depth1);
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig: [u8; 64] = URL_SAFE_NO_PAD.decode(sig).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(w.holders[0].public().as_bytes()).unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    assert!(key.verify_strict(input.as_bytes(), &sig).is_ok());
    g.bench_function("ed25519_verify_strict_floor", |b| {
        b.iter(|| black_box(key.verify_strict(black_box(input.as_bytes()), &sig)))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let w = setup();
    println!(
        "tokens: depth 1 = {} bytes, depth 4 = {} bytes; revocation entries: {}",
        w.depth1.len(),
        w.depth4.len(),
        w.authz.status().entries
    );
    bench_checks(c, &w, "empty_state");
    bench_pop(c, &w);
    let n: usize = std::env::var("VETO_BENCH_REVOKED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if n > 0 {
        let (reg_secs, total_secs) = revoke_many(&w, n);
        println!(
            "revoked {n} random warrant ids: registry acknowledged all in {reg_secs:.1} s ({:.0} entries/s), the authorizer had all {:.1} s after the first POST; entries now {}",
            n as f64 / reg_secs,
            total_secs,
            w.authz.status().entries
        );
        bench_checks(c, &w, &format!("{n}_revoked"));
    }
    w.authz.shutdown();
    w.pop.shutdown();
    let _ = std::fs::remove_dir_all(&w.dir);
}

criterion_group! {
    name = check;
    config = Criterion::default()
        .sample_size(100)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(check);
