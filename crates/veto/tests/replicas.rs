//! Scale-out on the real PostgreSQL: several `veto serve` replicas sharing
//! one database keep versions serialized and gap-free, chain every delta,
//! and lose no acknowledged revocation.
//!
//! Needs `VETO_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`); skipped, saying so, without it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use veto_core::{keyfile, Digest, EntryKind, SigningKey, SrlState};
use veto_testkit::{now, Registry, Schema, TempDir};

fn postgres_url() -> Option<String> {
    match std::env::var("VETO_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: set VETO_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run the PostgreSQL tests");
            None
        }
    }
}

/// Starts `n` replicas on one schema, all signing with one authority key.
fn replicas(n: usize, url: &str, keys: &TempDir) -> Vec<Registry> {
    let key_path = keys.path().join("authority.jwk");
    if !key_path.exists() {
        keyfile::write_signing_key(&key_path, &SigningKey::generate().unwrap()).unwrap();
    }
    let key = key_path.to_str().unwrap().to_owned();
    (0..n)
        .map(|_| Registry::start(&["--store", url, "--authority-key", &key, "--heartbeat", "1s"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_revoking_concurrently_stay_gap_free() {
    let Some(base) = postgres_url() else { return };
    let schema = Schema::create(&base).await;
    let keys = TempDir::new("replica-keys");
    let regs = Arc::new(replicas(3, &schema.url(), &keys));

    // 1,500 single revocations, 24 at a time, spread over the replicas.
    const N: usize = 1500;
    let mut tasks = Vec::new();
    for worker in 0..24 {
        let regs = regs.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (worker..N).step_by(24) {
                let reg = &regs[i % regs.len()];
                let id = format!("w-{i}");
                let (status, body) = reg
                    .revoke(json!([{"kind": "warrant", "id": id, "reason": "superseded"}]))
                    .await;
                assert_eq!(status, 201, "revocation {i}: {body}");
                acked.push((id, body["version"].as_u64().unwrap()));
            }
            acked
        }));
    }
    let mut acked: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), N);

    // Every version was handed out exactly once.
    let mut versions: Vec<u64> = acked.values().copied().collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions,
        (1..=N as u64).collect::<Vec<_>>(),
        "versions must be 1..=N, no gap, no duplicate"
    );

    // Every replica reaches the top, serves the same chain, and lists every acknowledged id.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for reg in regs.iter() {
        while reg.version().await < N as u64 {
            assert!(
                std::time::Instant::now() < deadline,
                "replica {} did not catch up",
                reg.url
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let mut heads = Vec::new();
    for reg in regs.iter() {
        let verifier = reg.verifier();
        let mut state = SrlState::new();
        for (i, jws) in reg.all_deltas(0).await.iter().enumerate() {
            let d = verifier.delta(jws, now()).unwrap();
            assert_eq!(d.payload.ver, i as u64 + 1);
            state
                .apply_delta(&d)
                .unwrap_or_else(|e| panic!("delta {} from {}: {e}", i + 1, reg.url));
        }
        assert_eq!(state.ver(), N as u64);
        let snap = reg.snapshot().await;
        assert_eq!(
            (snap.ver, snap.head),
            (state.ver(), state.head()),
            "snapshot of {} disagrees with its deltas",
            reg.url
        );
        for id in acked.keys() {
            assert!(
                snap.set
                    .get(EntryKind::Warrant, &Digest::of(EntryKind::Warrant, id))
                    .is_some(),
                "{id} missing at {}",
                reg.url
            );
        }
        heads.push(state.head());
    }
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "replicas disagree on the head"
    );

    // Re-revoking through another replica is idempotent across replicas.
    let (id, ver) = acked.iter().next().unwrap();
    let (status, body) = regs[2].revoke(json!([{"kind": "warrant", "id": id}])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entries"][0]["version"].as_u64(), Some(*ver));
    drop(schema);
}
