//! Scale-out with NATS JetStream: registry replicas on PostgreSQL publish
//! through their outboxes; authorizers take pushes from JetStream and poll
//! over HTTP while NATS is away.
//!
//! Needs `VETO_TEST_POSTGRES_URL` and `VETO_TEST_NATS_URL` (the machine's
//! servers); the outage test also needs a `nats-server` binary, which it
//! runs itself on its own port so the shared server is never disturbed.
//! Each test is skipped, saying so, when what it needs is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use veto_authorizer::{Authorizer, Config as AuthzConfig, Push};
use veto_core::wire::path;
use veto_core::{keyfile, Digest, EntryKind, KeySet, SigningKey, SrlState};
use veto_testkit::{now, NatsServer, Registry, Schema, TempDir};

fn env(name: &str, example: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("skipped: set {name} (e.g. {example}) to run the scale-out tests");
            None
        }
    }
}

fn authority_key(dir: &TempDir) -> (String, veto_core::PublicKey) {
    let path = dir.path().join("authority.jwk");
    let key = SigningKey::generate().unwrap();
    keyfile::write_signing_key(&path, &key).unwrap();
    (path.to_str().unwrap().to_owned(), key.public().clone())
}

async fn authorizer(
    registry: &str,
    key: &veto_core::PublicKey,
    nats: &str,
    poll: Duration,
) -> Authorizer {
    let mut c = AuthzConfig::new(registry, "veto", KeySet::new([key.clone()]));
    c.push = Push::Nats(veto_bus::NatsSettings::new(nats, None, None).unwrap());
    c.poll_interval = poll;
    c.pop.policy = veto_authorizer::PopPolicy::Off;
    Authorizer::start(c).await.unwrap()
}

/// Waits until every authorizer is at `ver` with `head`.
async fn converge(authzs: &[Authorizer], ver: u64, head: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let lagging: Vec<_> = authzs
            .iter()
            .map(|a| a.status())
            .filter(|s| s.version != ver || s.head != head)
            .collect();
        if lagging.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "authorizers did not converge to {ver}: {lagging:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chain a registry serves, verified and applied from version 1.
async fn chain_state(reg: &Registry) -> SrlState {
    let verifier = reg.verifier();
    let mut state = SrlState::new();
    for jws in reg.all_deltas(0).await {
        let d = verifier.delta(&jws, now()).unwrap();
        state.apply_delta(&d).unwrap();
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_killed_during_a_storm_loses_nothing_and_authorizers_converge() {
    let (Some(pg), Some(nats)) = (
        env(
            "VETO_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        env("VETO_TEST_NATS_URL", "nats://127.0.0.1:4222"),
    ) else {
        return;
    };
    // The stream is veto's own; start it empty, so no earlier run's
    // messages are replayed to the authorizers.
    let nc = async_nats::connect(nats.as_str()).await.unwrap();
    let _ = async_nats::jetstream::new(nc)
        .delete_stream(veto_core::wire::nats::STREAM)
        .await;
    let schema = Schema::create(&pg).await;
    let keys = TempDir::new("scaleout-keys");
    let (key_path, key) = authority_key(&keys);
    let url = schema.url();
    let args = [
        "--store",
        url.as_str(),
        "--bus",
        nats.as_str(),
        "--authority-key",
        key_path.as_str(),
        "--heartbeat",
        "1s",
    ];
    let mut regs: Vec<Registry> = (0..3).map(|_| Registry::start(&args)).collect();

    // Ten authorizers on NATS, polling rarely: pushes carry the storm.
    let mut authzs = Vec::new();
    for i in 0..10 {
        authzs.push(authorizer(&regs[i % 2].url, &key, &nats, Duration::from_secs(30)).await);
    }

    // A storm over all three replicas; the third is killed with SIGKILL
    // once 300 revocations are acknowledged.
    let victim_url = regs[2].url.clone();
    let urls: Arc<Vec<(String, String)>> =
        Arc::new(regs.iter().map(|r| (r.url.clone(), r.token())).collect());
    let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (urls, acked_count, http) = (urls.clone(), acked_count.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (w..1200).step_by(16) {
                let (url, token) = &urls[i % urls.len()];
                let id = format!("storm-{i}");
                let resp = http
                    .post(format!("{url}{}", path::REVOCATIONS))
                    .bearer_auth(token)
                    .json(&json!({"entries": [{"kind": "warrant", "id": id}]}))
                    .send()
                    .await;
                if let Ok(r) = resp {
                    if r.status().as_u16() == 201 {
                        let body: serde_json::Value = r.json().await.unwrap();
                        acked.push((id, body["version"].as_u64().unwrap()));
                        acked_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            acked
        }));
    }
    while acked_count.load(std::sync::atomic::Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    regs[2].kill();
    let mut acked: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() >= 800,
        "only {} revocations acknowledged",
        acked.len()
    );
    eprintln!(
        "acknowledged {} revocations; killed {victim_url} during the storm",
        acked.len()
    );

    // No acknowledged revocation is lost; versions are 1..=V with no gap.
    // The chain is read from the database; each survivor's own version
    // follows it (by NOTIFY and a one-second check), so it may lag the
    // killed replica's last commits for a moment: wait until both agree.
    let survivors = &regs[..2];
    let state = chain_state(&survivors[0]).await;
    let top = state.ver();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for s in survivors {
        loop {
            let v = s.version().await;
            if v == top {
                break;
            }
            assert!(
                v < top && std::time::Instant::now() < deadline,
                "a surviving replica is at version {v}, the chain at {top}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (id, ver) in &acked {
        assert!(*ver <= top);
        assert!(
            state
                .set()
                .get(EntryKind::Warrant, &Digest::of(EntryKind::Warrant, id))
                .is_some(),
            "acknowledged {id} (version {ver}) is missing"
        );
    }
    // Every authorizer converges to the same head, by push.
    converge(
        &authzs,
        top,
        &state.head().to_string(),
        Duration::from_secs(30),
    )
    .await;
    for a in &authzs {
        assert!(
            a.status().push_connected,
            "an authorizer lost its NATS push"
        );
        a.shutdown();
    }
    drop(regs);
    drop(schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_outage_falls_back_to_polling_and_push_resumes() {
    if env("VETO_TEST_NATS_URL", "nats://127.0.0.1:4222").is_none() {
        return;
    }
    let dir = TempDir::new("nats-outage");
    // JetStream keeps its store across the restart below.
    let store = dir.path().join("js");
    let jetstream = |port: u16, _: &std::path::Path| {
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n",
            store.display()
        )
    };
    let Some(server) = NatsServer::start(dir.path(), jetstream) else {
        eprintln!("skipped: no nats-server binary to run a private NATS for the outage test (VETO_TEST_REQUIRE_NATS_SERVER=1 makes this a failure)");
        return;
    };
    let nats = server.url();
    let reg = Registry::start(&["--bus", nats.as_str(), "--heartbeat", "1s"]);
    let key = reg.authority_key();
    let mut authzs = Vec::new();
    for _ in 0..3 {
        authzs.push(authorizer(&reg.url, &key, &nats, Duration::from_secs(1)).await);
    }
    let revoke = |i: usize| {
        let reg = &reg;
        async move {
            let (status, body) = reg
                .revoke(json!([{"kind": "warrant", "id": format!("o-{i}")}]))
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };
    let settle = |authzs: &[Authorizer]| {
        let reg = &reg;
        let authzs = authzs.to_vec();
        async move {
            let snap = reg.snapshot().await;
            converge(
                &authzs,
                snap.ver,
                &snap.head.to_string(),
                Duration::from_secs(20),
            )
            .await;
        }
    };
    let wait_push = |authzs: &[Authorizer], want: bool| {
        let authzs = authzs.to_vec();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !authzs.iter().all(|a| a.status().push_connected == want) {
                assert!(
                    Instant::now() < deadline,
                    "push_connected never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_push(&authzs, true).await;
    for i in 0..5 {
        revoke(i).await;
    }
    settle(&authzs).await;

    // NATS goes away: revocations still reach every authorizer, by polling.
    let port = server.port;
    drop(server);
    wait_push(&authzs, false).await;
    for i in 5..10 {
        revoke(i).await;
    }
    settle(&authzs).await;

    // NATS comes back (same port, same store): push resumes, the outbox drains.
    let _server =
        NatsServer::start_on(dir.path(), port, jetstream).expect("restarting nats-server");
    wait_push(&authzs, true).await;
    for i in 10..15 {
        revoke(i).await;
    }
    settle(&authzs).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = reg.get(path::METRICS).await;
        let metrics = metrics.as_str().unwrap_or_default().to_owned();
        if metrics.lines().any(|l| l == "veto_registry_outbox 0")
            && metrics
                .lines()
                .any(|l| l == "veto_registry_bus_connected 1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not drain after NATS came back:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in &authzs {
        a.shutdown();
    }
}
