#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! Benchmarks for veto-core: chain verification, the per-request
//! revocation check, and million-entry snapshots. See BENCHMARKS.md.
//!
//! Run: `cargo bench -p veto-core --bench core`
//! Set `VETO_BENCH_SNAPSHOT_OUT=/tmp/veto-snapshot-1m.bin` to also write the
//! 1M-entry snapshot's binary container (the body of `GET /v1/srl`) to a
//! file (for measuring its gzip size).

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use veto_core::warrant::{delegate, mint_root};
use veto_core::{
    CheckConfig, Checker, Digest, EntryKind, Head, KeySet, LinkSpec, ParsedChain, RevocationSet,
    SigningKey, Snapshot, SrlSigner, SrlState, SrlVerifier, VerifiedChain,
};

/// A fixed "now" (Unix seconds); nothing reads the system clock.
const NOW: u64 = 1_750_000_000;
const ISSUER: &str = "https://issuer.bench.example";
const AUTHORITY: &str = "https://registry.bench.example";
const ACTION: &str = "http:GET:/orders/7";
/// Distinct pre-verified chains rotated through, so each check touches
/// cold(er) Bloom-filter blocks and chain memory.
const ROTATE: usize = 4096;

/// splitmix64: deterministic ids and key seeds without an extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        for c in s.chunks_exact_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        s
    }

    /// A 128-bit random id, 32 hex digits (the shape of a jti or uuid).
    fn id(&mut self) -> String {
        format!("{:016x}{:016x}", self.next(), self.next())
    }
}

struct World {
    issuer: SigningKey,
    authority: SigningKey,
    checker: Checker,
    verifier: SrlVerifier,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut rng = Rng(7);
        let issuer = SigningKey::from_seed(&rng.seed32());
        let authority = SigningKey::from_seed(&rng.seed32());
        let checker = Checker::new(
            KeySet::new([issuer.public().clone()]),
            CheckConfig {
                issuer: Some(ISSUER.into()),
                ..CheckConfig::default()
            },
        );
        let verifier = SrlVerifier::new(KeySet::new([authority.public().clone()]), AUTHORITY);
        World {
            issuer,
            authority,
            checker,
            verifier,
        }
    })
}

/// A valid chain of `depth` links: root minted by the issuer, each child
/// delegated by the previous holder to a new holder key and a new agent,
/// actions narrowing on the way down.
fn make_chain(rng: &mut Rng, depth: usize) -> String {
    let w = world();
    let mut holder = SigningKey::from_seed(&rng.seed32());
    let tag = rng.next();
    let mut token = mint_root(
        &w.issuer,
        ISSUER,
        LinkSpec {
            sub: format!("agent-{tag:016x}-0"),
            act: vec!["http:GET:/*".into(), "http:POST:/orders/*".into()],
            iat: NOW - 600,
            exp: NOW + 3600,
            holder: Some(holder.public().clone()),
        },
    )
    .unwrap();
    for i in 1..depth {
        let next = SigningKey::from_seed(&rng.seed32());
        token = delegate(
            &token,
            &holder,
            LinkSpec {
                sub: format!("agent-{tag:016x}-{i}"),
                act: vec!["http:GET:/orders/*".into()],
                iat: NOW - 600 + i as u64,
                exp: NOW + 3600 - i as u64,
                holder: Some(next.public().clone()),
            },
        )
        .unwrap();
        holder = next;
    }
    token
}

fn verified(token: &str) -> VerifiedChain {
    world()
        .checker
        .verify(ParsedChain::parse(token).unwrap())
        .unwrap()
}

/// `n` distinct random digests of `kind`, sorted, plus `extra` given ids.
fn digests(rng: &mut Rng, kind: EntryKind, n: usize, extra: &[&str]) -> Vec<Digest> {
    let mut v: Vec<Digest> = (0..n).map(|_| Digest::of(kind, &rng.id())).collect();
    v.extend(extra.iter().map(|id| Digest::of(kind, id)));
    v.sort_unstable();
    v.dedup();
    v
}

/// The revocation set for a state of `n` entries: `n` warrants (one of them
/// `revoked_jti`, when given), plus `n / 1000` agents and `n / 1000` keys.
fn revocation_set(n: usize, revoked_jti: Option<&str>) -> RevocationSet {
    let mut rng = Rng(0x5eed ^ n as u64);
    let extra: Vec<&str> = revoked_jti.into_iter().collect();
    let warrants = digests(&mut rng, EntryKind::Warrant, n - extra.len().min(n), &extra);
    let agents = digests(&mut rng, EntryKind::Agent, n / 1000, &[])
        .into_iter()
        .map(|d| (d, NOW - 86_400))
        .collect();
    let keys = digests(&mut rng, EntryKind::Key, n / 1000, &[]);
    RevocationSet::from_sorted(warrants, agents, keys)
}

fn snapshot_of(set: &RevocationSet) -> Snapshot {
    let w = world();
    let signer = SrlSigner::new(w.authority.clone(), AUTHORITY);
    signer.snapshot(1, Head::of_payload(b"bench"), NOW - 1, NOW + 3600, set)
}

/// A fresh state holding `set`, loaded the way an authorizer loads one:
/// sign a snapshot, verify it, apply it.
fn state_of(set: &RevocationSet) -> SrlState {
    let token = snapshot_of(set);
    let mut state = SrlState::new();
    state
        .apply_snapshot(world().verifier.snapshot(&token, NOW).unwrap())
        .unwrap();
    assert!(state.is_fresh(NOW, world().checker.config().max_staleness));
    state
}

struct Fixtures {
    /// depth 1 and depth 4 tokens.
    tokens: [String; 2],
    /// The hot depth-4 chain, pre-verified.
    hot: VerifiedChain,
    /// Distinct pre-verified depth-4 chains.
    many: Vec<VerifiedChain>,
    /// A depth-4 chain whose root jti is listed in the 1M state.
    revoked: VerifiedChain,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = Rng(42);
        let tokens = [make_chain(&mut rng, 1), make_chain(&mut rng, 4)];
        let hot = verified(&tokens[1]);
        let many = (0..ROTATE)
            .map(|_| verified(&make_chain(&mut rng, 4)))
            .collect();
        let revoked = verified(&make_chain(&mut rng, 4));
        Fixtures {
            tokens,
            hot,
            many,
            revoked,
        }
    })
}

/// The 1M-warrant set (with the revoked fixture's root jti among them).
fn million() -> &'static RevocationSet {
    static M: OnceLock<RevocationSet> = OnceLock::new();
    M.get_or_init(|| {
        let jti = fixtures().revoked.chain().root().claims().jti.clone();
        revocation_set(1_000_000, Some(&jti))
    })
}

fn bench_chain(c: &mut Criterion) {
    let w = world();
    let f = fixtures();
    let state = state_of(&RevocationSet::default());
    let mut g = c.benchmark_group("chain");
    for (token, depth) in f.tokens.iter().zip([1, 4]) {
        assert!(w
            .checker
            .check_token(&state, token, ACTION, NOW)
            .is_allowed());
        g.bench_with_input(BenchmarkId::new("parse+check", depth), token, |b, token| {
            b.iter(|| {
                let chain = ParsedChain::parse(black_box(token)).unwrap();
                w.checker.check(&state, &chain, ACTION, NOW)
            })
        });
        g.bench_with_input(BenchmarkId::new("parse", depth), token, |b, token| {
            b.iter(|| ParsedChain::parse(black_box(token)).unwrap())
        });
        let chain = verified(token);
        g.bench_with_input(
            BenchmarkId::new("check_verified", depth),
            &chain,
            |b, chain| {
                b.iter(|| {
                    w.checker
                        .check_verified(&state, black_box(chain), ACTION, NOW)
                })
            },
        );
    }
    g.finish();
}

/// The 13 revocation probes of a depth-4 chain (4 `jti`s, 4 `sub`s, the
/// root's signing key and 4 holder keys), for [`RevocationSet::get`] alone.
fn probe_digests(chain: &VerifiedChain) -> Vec<(EntryKind, Digest)> {
    let links = chain.chain().links();
    let mut v: Vec<(EntryKind, Digest)> = Vec::new();
    v.extend(links.iter().map(|l| {
        (
            EntryKind::Warrant,
            Digest::of(EntryKind::Warrant, &l.claims().jti),
        )
    }));
    v.extend(links.iter().map(|l| {
        (
            EntryKind::Agent,
            Digest::of(EntryKind::Agent, &l.claims().sub),
        )
    }));
    v.extend(
        chain
            .chain()
            .root()
            .kid()
            .map(|k| (EntryKind::Key, Digest::of(EntryKind::Key, k))),
    );
    v.extend(
        links
            .iter()
            .filter_map(|l| l.holder())
            .map(|h| (EntryKind::Key, Digest::of(EntryKind::Key, h.kid()))),
    );
    assert_eq!(v.len(), 13);
    v
}

fn bench_revocation(c: &mut Criterion) {
    let w = world();
    let f = fixtures();
    let hot_probes = probe_digests(&f.hot);
    let many_probes: Vec<Vec<(EntryKind, Digest)>> = f.many.iter().map(probe_digests).collect();
    let mut g = c.benchmark_group("revocation");
    for (n, label) in [(0usize, "0"), (10_000, "10k"), (1_000_000, "1M")] {
        let set = if n == 1_000_000 {
            million().clone()
        } else {
            revocation_set(n, None)
        };
        let state = state_of(&set);
        assert!(w
            .checker
            .check_verified(&state, &f.hot, ACTION, NOW)
            .is_allowed());
        assert!(f.many.iter().all(|c| w
            .checker
            .check_verified(&state, c, ACTION, NOW)
            .is_allowed()));
        g.bench_with_input(
            BenchmarkId::new("check_verified/hot", label),
            &state,
            |b, state| {
                b.iter(|| {
                    w.checker
                        .check_verified(black_box(state), black_box(&f.hot), ACTION, NOW)
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("check_verified/rotate4096", label),
            &state,
            |b, state| {
                let mut i = 0usize;
                b.iter(|| {
                    let chain = &f.many[i];
                    i = (i + 1) % ROTATE;
                    w.checker
                        .check_verified(black_box(state), black_box(chain), ACTION, NOW)
                })
            },
        );
        // The set lookups alone (Bloom filter; no chain memory, no time or action check).
        let s = state.set();
        g.bench_function(BenchmarkId::new("set_get_x13/hot", label), |b| {
            b.iter(|| {
                black_box(&hot_probes)
                    .iter()
                    .filter(|(k, d)| s.get(*k, d).is_some())
                    .count()
            })
        });
        g.bench_function(BenchmarkId::new("set_get_x13/rotate4096", label), |b| {
            let mut i = 0usize;
            b.iter(|| {
                let probes = &many_probes[i];
                i = (i + 1) % ROTATE;
                black_box(probes)
                    .iter()
                    .filter(|(k, d)| s.get(*k, d).is_some())
                    .count()
            })
        });
        if n == 1_000_000 {
            assert!(!w
                .checker
                .check_verified(&state, &f.revoked, ACTION, NOW)
                .is_allowed());
            g.bench_with_input(
                BenchmarkId::new("check_verified/revoked", label),
                &state,
                |b, state| {
                    b.iter(|| {
                        w.checker.check_verified(
                            black_box(state),
                            black_box(&f.revoked),
                            ACTION,
                            NOW,
                        )
                    })
                },
            );
        }
    }
    g.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let w = world();
    let set = million();
    let signer = SrlSigner::new(w.authority.clone(), AUTHORITY);
    // The binary container, as `GET /v1/srl` serves it (before gzip).
    let token = snapshot_of(set).into_bytes();
    eprintln!(
        "snapshot_1m: {} entries ({} warrants + agents + keys), {} bytes raw ({:.2} MB, binary container)",
        set.len(),
        set.tables().0.len(),
        token.len(),
        token.len() as f64 / 1e6
    );
    if let Some(path) = std::env::var_os("VETO_BENCH_SNAPSHOT_OUT") {
        std::fs::write(&path, &token).unwrap();
        eprintln!("snapshot_1m: written to {}", path.to_string_lossy());
    }
    let mut g = c.benchmark_group("snapshot_1m");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(token.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| {
            signer.snapshot(
                1,
                Head::of_payload(b"bench"),
                NOW - 1,
                NOW + 3600,
                black_box(set),
            )
        })
    });
    g.bench_function("verify", |b| {
        b.iter_with_large_drop(|| w.verifier.snapshot(black_box(&token), NOW).unwrap())
    });
    g.bench_function("verify+load", |b| {
        b.iter_batched(
            SrlState::new,
            |mut state| {
                let v = w.verifier.snapshot(black_box(&token), NOW).unwrap();
                state.apply_snapshot(v).unwrap();
                state
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_chain, bench_revocation, bench_snapshot);
criterion_main!(benches);
