#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! Replays every fuzz seed and crash reproduction in `fuzz/seeds/<target>/`
//! on the stable toolchain, through exactly the checks the cargo-fuzz
//! targets run (`fuzz/src/core_targets.rs`, included here), so CI exercises
//! the parsers and their invariants without nightly. `admin_json` seeds are
//! replayed by veto-registry's `tests/fuzz_seeds.rs`.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/src/core_targets.rs"]
mod targets;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in seeds(target) {
        let r = std::panic::catch_unwind(|| run(&bytes));
        assert!(r.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn jws_seeds() {
    replay("jws", targets::jws::run);
}

#[test]
fn chain_seeds() {
    replay("chain", targets::chain::run);
}

#[test]
fn snapshot_seeds() {
    replay("snapshot", targets::snapshot::run);
}

#[test]
fn delta_seeds() {
    replay("delta", targets::delta::run);
}

#[test]
fn checkpoint_seeds() {
    replay("checkpoint", targets::checkpoint::run);
}

#[test]
fn sse_seeds() {
    replay("sse", targets::sse::run);
}

#[test]
fn jwk_seeds() {
    replay("jwk", targets::jwk::run);
}

/// The seeds must reach past the signature: each signed-object target has
/// a seed that verifies, so the fuzzer starts from the payload parsers.
#[test]
fn seeds_reach_verified_objects() {
    let f = targets::fixtures();
    let token = |target: &str, name: &str| {
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fuzz/seeds")
                .join(target)
                .join(name),
        )
        .unwrap();
        String::from_utf8(bytes[1..].to_vec()).unwrap()
    };
    let now = targets::NOW;
    assert!(f
        .verifier
        .delta(&token("delta", "apply-delta-next.token"), now)
        .is_ok());
    assert!(f
        .verifier
        .checkpoint(&token("checkpoint", "apply-checkpoint-refresh.token"), now)
        .is_ok());
    assert!(f
        .verifier
        .snapshot(token("snapshot", "apply-snapshot-advance.token"), now)
        .is_ok());
    let chain = token("chain", "allow-chain-depth-3.token");
    let state = veto_core::SrlState::new();
    // Not stale-allowed (no attestation), but past every signature check.
    assert_eq!(
        f.checker
            .check_token(&state, &chain, "http:GET:/orders/7", now)
            .reason(),
        Some(veto_core::DenyReason::Stale)
    );
}
