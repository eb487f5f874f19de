//! The fleet view with real processes: gateways (`veto proxy --name`)
//! enrol with the registry's fleet token and report what they applied;
//! `veto revoke --wait` waits until every live gateway has the revocation
//! in force, names a frozen one (SIGSTOP) when its timeout passes, and
//! succeeds once it resumes; forged and unenrolled reports are refused
//! and counted; the fleet survives a registry restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veto_core::report::{self, ReportPayload};
use veto_core::wire::path;
use veto_core::SigningKey;
use veto_testkit::{now, ok_upstream, veto_bin, Proxy, Registry, Schema, TempDir};

const WITHIN: Duration = Duration::from_secs(15);

/// Runs the `veto` CLI against `registry` with its admin token.
async fn cli(registry: &Registry, args: &[&str]) -> Output {
    let mut cmd = Command::new(veto_bin());
    cmd.env_remove("VETO_ADMIN_TOKEN")
        .args(args)
        .args(["--registry", &registry.url, "--token-file"])
        .arg(registry.token_file());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A proxy reporting to the fleet as `name` every second.
fn gateway(dir: &TempDir, registry: &Registry, upstream: &str, name: &str) -> Proxy {
    let token = registry.data_dir().join("fleet.token");
    let cache = dir.path().join(format!("cache-{name}"));
    Proxy::start(
        dir,
        registry,
        upstream,
        &[
            "--name",
            name,
            "--fleet-token-file",
            token.to_str().unwrap(),
            "--report-interval",
            "1s",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    )
}

/// Waits until the fleet shows `n` gateways, all live.
async fn all_live(registry: &Registry, n: usize) -> Value {
    let start = Instant::now();
    loop {
        let (status, fleet) = registry.admin_get(path::FLEET).await;
        assert_eq!(status, 200, "{fleet}");
        let gateways = fleet["gateways"].as_array().unwrap();
        if gateways.len() == n && gateways.iter().all(|g| g["state"] == "live") {
            return fleet;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the fleet never showed {n} live gateways: {fleet}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_wait_names_a_frozen_gateway_and_succeeds_after_it_resumes() {
    let registry = Registry::start(&[]);
    let upstream = ok_upstream().await;
    let dir = TempDir::new("fleet-wait");
    let gateways: Vec<Proxy> = (0..3)
        .map(|i| gateway(&dir, &registry, &upstream, &format!("gw-{i}")))
        .collect();
    let fleet = all_live(&registry, 3).await;
    assert_eq!(fleet["gateways"][0]["push"], "sse");
    assert_eq!(fleet["gateways"][0]["policy"], "fail-closed");

    // All three in force.
    let out = cli(&registry, &["revoke", "warrant", "jti-one", "--wait"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for i in 0..3 {
        assert!(said.contains(&format!("in force at gw-{i}")), "{said}");
    }
    assert!(said.contains("in force at all 3 gateways"), "{said}");
    let (status, v1) = registry
        .admin_get(&format!("{}/1", path::FLEET_VERSIONS))
        .await;
    assert_eq!(status, 200, "{v1}");
    assert_eq!(
        (v1["enforced"].as_u64(), v1["of"].as_u64()),
        (Some(3), Some(3)),
        "{v1}"
    );
    eprintln!(
        "version 1: the last gateway {} ms after the commit",
        v1["last_after_ms"]
    );

    // One frozen: --wait names it and exits 3 when its timeout passes.
    signal(gateways[2].pid(), "-STOP");
    let started = Instant::now();
    let out = cli(
        &registry,
        &["revoke", "warrant", "jti-two", "--wait", "--timeout", "3s"],
    )
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("NOT in force at gw-2"), "{said}");
    assert!(!said.contains("NOT in force at gw-0"), "{said}");
    eprintln!("--wait gave up after {:?}", started.elapsed());
    let (_, v2) = registry
        .admin_get(&format!("{}/2", path::FLEET_VERSIONS))
        .await;
    assert_eq!(v2["enforced"].as_u64(), Some(2), "{v2}");

    // Resumed: the same revocation (idempotent: version 2 again) is now
    // in force everywhere.
    signal(gateways[2].pid(), "-CONT");
    let out = cli(
        &registry,
        &["revoke", "warrant", "jti-two", "--wait", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    // With --json, standard output is exactly one JSON object.
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["in_force"], true, "{result}");
    assert_eq!(result["version"], 2);
    assert_eq!(result["gateways"].as_array().unwrap().len(), 3);

    let out = cli(&registry, &["status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("3 gateways, 3 live"), "{said}");
    for i in 0..3 {
        assert!(said.contains(&format!("gw-{i}")), "{said}");
    }
    let metrics = registry.get(path::METRICS).await.1;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("veto_registry_fleet_gateways{state=\"live\"} 3"),
        "{metrics}"
    );
}

/// A report signed by `key` for `registry`, as a gateway would send it.
fn payload(name: &str, seq: u64, ver: u64) -> ReportPayload {
    ReportPayload {
        aud: "veto".into(),
        name: name.into(),
        iat: now(),
        seq,
        ver,
        head: "h".into(),
        fresh: true,
        staleness_s: Some(0),
        fresh_until: Some(now() + 300),
        push: "sse".into(),
        push_connected: true,
        policy: "fail-closed".into(),
        error: None,
        interval_s: 10,
        veto: "test".into(),
    }
}

async fn post_report(registry: &Registry, body: &str, ctype: &str) -> (u16, Value) {
    registry
        .send(
            registry
                .http()
                .post(registry.at(path::FLEET_REPORTS))
                .header("content-type", ctype)
                .body(body.to_owned()),
        )
        .await
}

fn fleet_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("fleet.token"))
        .unwrap()
        .trim()
        .to_owned()
}

async fn enrol(registry: &Registry, token: &str, name: &str, key: &SigningKey) -> (u16, Value) {
    registry
        .send(
            registry
                .http()
                .post(registry.at(path::FLEET_GATEWAYS))
                .bearer_auth(token)
                .json(&json!({"name": name, "key": key.public().to_jwk()})),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_unenrolled_reports_are_refused_and_counted() {
    let registry = Registry::start(&[]);
    let token = fleet_token(registry.data_dir());
    let key = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();

    // Enrolment: the fleet token (not a guess), once per key, a public key.
    let (status, body) = enrol(&registry, "not-the-fleet-token", "gw", &key).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = enrol(&registry, &token, "gw", &key).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], key.kid());
    let (status, body) = enrol(&registry, &token, "gw", &key).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already_enrolled"))
    );
    let (status, body) = enrol(&registry, &token, "bad name", &stranger).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_name"))
    );
    let private = registry
        .send(
            registry
                .http()
                .post(registry.at(path::FLEET_GATEWAYS))
                .bearer_auth(&token)
                .json(&json!({"name": "gw-x", "key": stranger.to_private_jwk()})),
        )
        .await;
    assert_eq!(private.1["error"], "invalid_gateway_key", "{private:?}");

    let jose = "application/jose";
    let good = report::sign(&key, &payload("gw", 1, 0));
    assert_eq!(post_report(&registry, &good, jose).await.0, 204);
    // The same report again, or an older one: refused.
    let (status, body) = post_report(&registry, &good, jose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("stale_report"))
    );
    // Forged: the payload changed under the enrolled key's signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let newer = report::sign(&key, &payload("gw", 9, 5));
    parts[1] = newer.split('.').nth(1).unwrap().to_owned();
    let (status, body) = post_report(&registry, &parts.join("."), jose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_report")),
        "{body}"
    );
    // Unenrolled key.
    let theirs = report::sign(&stranger, &payload("gw", 2, 0));
    let (status, body) = post_report(&registry, &theirs, jose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_enrolled"))
    );
    // Another registry's, an old one, the wrong media type, too large.
    let mut p = payload("gw", 3, 0);
    p.aud = "another-registry".into();
    let (status, body) = post_report(&registry, &report::sign(&key, &p), jose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_report"))
    );
    let mut p = payload("gw", 4, 0);
    p.iat = now() - 600;
    let (status, body) = post_report(&registry, &report::sign(&key, &p), jose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_report"))
    );
    let (status, _) = post_report(&registry, &good, "application/json").await;
    assert_eq!(status, 415);
    let (status, _) = post_report(&registry, &"a".repeat(9000), jose).await;
    assert_eq!(status, 413);
    // A newer one is accepted.
    let next = report::sign(&key, &payload("gw", 5, 0));
    assert_eq!(post_report(&registry, &next, jose).await.0, 204);

    // A gateway that floods: past its burst, 429 until its budget refills.
    let mut limited = 0;
    for seq in 100..140 {
        let r = report::sign(&key, &payload("gw", seq, 0));
        let (status, body) = post_report(&registry, &r, jose).await;
        match status {
            204 => {}
            429 => {
                assert_eq!(body["error"], "rate_limited");
                limited += 1;
            }
            other => panic!("a flood report answered {other}: {body}"),
        }
    }
    assert!(limited > 0, "40 reports at once were never limited");

    // A version beyond the registry's head is a lie: refused.
    let lie = report::sign(&key, &payload("gw", 150, 99));
    let (status, body) = post_report(&registry, &lie, jose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_report")),
        "{body}"
    );
    // A name is one live gateway's.
    let (status, body) = enrol(&registry, &token, "gw", &stranger).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("name_taken")),
        "{body}"
    );
    // Versions are digits.
    for bad in ["+1", "01", "-1", "1e3", "%2B1"] {
        let (status, body) = registry
            .admin_get(&format!("{}/{bad}", path::FLEET_VERSIONS))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Removed: its reports are refused.
    let (status, body) = registry
        .admin_delete(&format!("{}/{}", path::FLEET_GATEWAYS, key.kid()))
        .await;
    assert_eq!(status, 200, "{body}");
    let after = report::sign(&key, &payload("gw", 200, 0));
    let (status, body) = post_report(&registry, &after, jose).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("not_enrolled"))
    );
    // It comes back only by an operator, not with the fleet token.
    let (status, body) = enrol(&registry, &token, "gw", &key).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("gateway_removed")),
        "{body}"
    );
    let (status, body) = enrol(&registry, &registry.token(), "gw", &key).await;
    assert_eq!(status, 201, "{body}");

    let metrics = registry.get(path::METRICS).await.1;
    let metrics = metrics.as_str().unwrap();
    for (code, least) in [
        ("invalid_report", 4.0),
        ("not_enrolled", 2.0),
        ("stale_report", 1.0),
    ] {
        let series = format!("veto_registry_fleet_reports_refused_total{{code=\"{code}\"}}");
        assert!(
            veto_testkit::metric_value(metrics, &series) >= least,
            "{series}:\n{metrics}"
        );
    }
    let accepted = veto_testkit::metric_value(metrics, "veto_registry_fleet_reports_total");
    assert_eq!(accepted, 2.0 + 40.0 - f64::from(limited), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_wait_without_gateways_confirms_nothing() {
    let registry = Registry::start(&[]);
    let out = cli(
        &registry,
        &[
            "revoke",
            "warrant",
            "jti-alone",
            "--wait",
            "--timeout",
            "1s",
        ],
    )
    .await;
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("no gateway is enrolled"), "{said}");
    // A token without the fleet scope: refused before anything is revoked.
    let (status, made) = registry
        .admin_post(
            path::TOKENS,
            &json!({"name": "revoker", "scopes": ["revoke"]}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let mut cmd = Command::new(veto_bin());
    cmd.env_remove("VETO_ADMIN_TOKEN")
        .args([
            "revoke",
            "warrant",
            "jti-unwaited",
            "--wait",
            "--registry",
            &registry.url,
        ])
        .args(["--token", made["token"].as_str().unwrap()]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("nothing was revoked"), "{said}");
    let (_, log) = registry.admin_get(path::REVOCATIONS).await;
    assert!(!log.to_string().contains("jti-unwaited"), "{log}");
}

async fn survives_restart(args: &[&str]) {
    let mut registry = Registry::start(args);
    let upstream = ok_upstream().await;
    let dir = TempDir::new("fleet-restart");
    let _gw = gateway(&dir, &registry, &upstream, "gw-restart");
    let before = all_live(&registry, 1).await;
    registry.kill();
    let registry = Registry::start_on(registry.dir(), registry.addr, args);
    // The enrolment survived: the gateway's reports are accepted again,
    // with no new enrolment (the token is only used at its start).
    let after = all_live(&registry, 1).await;
    assert_eq!(after["gateways"][0]["id"], before["gateways"][0]["id"]);
    let (status, _) = registry
        .revoke(json!([{"kind": "warrant", "id": "after-restart"}]))
        .await;
    assert_eq!(status, 201);
    let out = cli(&registry, &["revoke", "warrant", "after-restart", "--wait"]).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_survives_a_registry_restart_sqlite() {
    survives_restart(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_survives_a_registry_restart_and_is_shared_by_replicas_postgres() {
    let Some(base) = std::env::var("VETO_TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        eprintln!("skipped: set VETO_TEST_POSTGRES_URL to run the PostgreSQL fleet test");
        return;
    };
    let schema = Schema::create(&base).await;
    let url = schema.url();
    let keys = TempDir::new("fleet-replica-key");
    let key = keys.path().join("authority.jwk");
    veto_core::keyfile::write_signing_key(&key, &SigningKey::generate().unwrap()).unwrap();
    let args = ["--store", &url, "--authority-key", key.to_str().unwrap()];
    survives_restart(&args).await;
    // A second replica of the same store sees the same fleet.
    let other = Registry::start(&args);
    let (status, fleet) = other.admin_get(path::FLEET).await;
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["gateways"].as_array().unwrap().len(), 1, "{fleet}");
}
