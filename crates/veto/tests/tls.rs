//! TLS end to end (DESIGN 7): a CA made in the test, `veto serve` and
//! `veto proxy` with TLS listeners, the proxy reaching the registry and
//! its upstream over `https://` with `--ca-file`, a revocation pushed over
//! TLS SSE and enforced on the proxy's TLS listener; a proxy that does not
//! trust the CA; certificate rotation without a restart; client
//! certificates on the admin API; URLs refused at start.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use veto_core::wire::{path, ErrorCode};
use veto_core::DenyReason;
use veto_testkit::tls::{https_client, peer_certificate, pem_der, write, TestCa};
use veto_testkit::{ok_upstream, veto_command, Proxy, Registry, TempDir};

const WITHIN: Duration = Duration::from_secs(15);

/// A CA with its certificate written to `dir/ca.pem`, and a server
/// certificate for 127.0.0.1 and localhost in `dir/NAME.crt`/`.key`.
fn ca_and_cert(dir: &TempDir, name: &str) -> (TestCa, PathBuf, PathBuf, PathBuf) {
    let ca = TestCa::new("veto test CA");
    let ca_file = ca.write_ca(dir.path(), "ca.pem");
    let (cert, key) = ca.write_server(dir.path(), name, &["127.0.0.1", "localhost"]);
    (ca, ca_file, cert, key)
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// A registry on TLS with 1 s heartbeats; its helpers trust the CA.
fn tls_registry(
    ca: &TestCa,
    cert: &std::path::Path,
    key: &std::path::Path,
    extra: &[&str],
) -> Registry {
    let mut args = vec![
        "--heartbeat",
        "1s",
        "--tls-cert",
        s(cert),
        "--tls-key",
        s(key),
    ];
    args.extend_from_slice(extra);
    let mut registry = Registry::start(&args);
    assert!(registry.url.starts_with("https://"), "{}", registry.url);
    registry.set_http(https_client(&ca.ca_pem, None));
    registry
}

async fn wait_until<F, Fut>(what: &str, log: impl Fn() -> String, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WITHIN;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "{what} within {WITHIN:?}; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(http: &reqwest::Client, url: &str, chain: &str) -> (u16, Value) {
    let resp = http.get(url).bearer_auth(chain).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every hop on TLS: the proxy fetches and subscribes over `https://`
/// (trusting the test CA through `--ca-file`), serves agents and its admin
/// endpoints over TLS, and forwards to an `https://` upstream (a second
/// registry's `/healthz`). Polling is set to an hour, so only the TLS
/// push can explain the revocation being enforced within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_over_tls_and_a_revocation_pushed_and_enforced() {
    let dir = TempDir::new("tls-e2e");
    let (ca, ca_file, cert, key) = ca_and_cert(&dir, "registry");
    let registry = tls_registry(&ca, &cert, &key, &[]);
    // The upstream: another TLS server (a registry answering /healthz).
    let upstream = tls_registry(&ca, &cert, &key, &[]);
    let (pcert, pkey) = ca.write_server(dir.path(), "proxy", &["127.0.0.1"]);
    let mut proxy = Proxy::start(
        &dir,
        &registry,
        &upstream.url,
        &[
            "--ca-file",
            s(&ca_file),
            "--tls-cert",
            s(&pcert),
            "--tls-key",
            s(&pkey),
            "--admin-tls-cert",
            s(&pcert),
            "--admin-tls-key",
            s(&pkey),
            "--poll-interval",
            "1h",
        ],
    );
    assert!(proxy.url.starts_with("https://"), "{}", proxy.url);
    assert!(
        proxy.admin_url.starts_with("https://"),
        "{}",
        proxy.admin_url
    );
    let http = https_client(&ca.ca_pem, None);
    proxy.set_http(http.clone());
    wait_until(
        "the proxy is ready over TLS",
        || proxy.log_text(),
        || async { proxy.readyz_status().await == 200 },
    )
    .await;
    wait_until(
        "the TLS push is connected",
        || proxy.log_text(),
        || async { proxy.health().await["sync"]["push_connected"] == Value::Bool(true) },
    )
    .await;

    let (chain, jti) = registry.mint("agent-1", &["http:GET:/healthz"], None).await;
    let (status, body) = call(&http, &proxy.at(path::HEALTHZ), &chain).await;
    assert_eq!(status, 200, "forwarded to the https upstream: {body}");
    assert_eq!(body["status"], "ok", "{body}");

    registry.revoke_warrant(&jti).await;
    let start = Instant::now();
    let deadline = Instant::now() + WITHIN;
    let last = loop {
        let last = call(&http, &proxy.at(path::HEALTHZ), &chain).await;
        if last.0 == 403 || Instant::now() > deadline {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        last.0,
        403,
        "enforced within {WITHIN:?}: {:?}\n{}",
        last.1,
        proxy.log_text()
    );
    assert_eq!(
        last.1["error"],
        DenyReason::Revoked.as_str(),
        "{:?}",
        last.1
    );
    eprintln!("revocation enforced over TLS push in {:?}", start.elapsed());

    // A plaintext client cannot talk to the TLS listener.
    let plain = reqwest::Client::new()
        .get(proxy.url.replace("https://", "http://") + path::HEALTHZ)
        .send()
        .await;
    assert!(
        plain.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP is not served on the TLS listener"
    );
}

/// A proxy that does not trust the registry's CA never becomes ready, and
/// its log names the certificate problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_trust_the_ca_is_not_ready_and_says_why() {
    let dir = TempDir::new("tls-untrusted");
    let (ca, _ca_file, cert, key) = ca_and_cert(&dir, "registry");
    let registry = tls_registry(&ca, &cert, &key, &[]);
    let upstream = ok_upstream().await;
    let proxy = Proxy::start(&dir, &registry, &upstream, &["--poll-interval", "1s"]);
    wait_until(
        "the log names the certificate problem",
        || proxy.log_text(),
        || async {
            let log = proxy.log_text();
            log.contains("UnknownIssuer") || log.contains("invalid peer certificate")
        },
    )
    .await;
    assert_eq!(
        proxy.readyz_status().await,
        503,
        "never ready: {}",
        proxy.log_text()
    );
}

/// Replacing the certificate files is picked up without a restart: new
/// connections get the new certificate (within the 5 s check, or at once
/// on SIGHUP); a file that does not load keeps the old certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let dir = TempDir::new("tls-rotate");
    let (ca, _ca_file, cert, key) = ca_and_cert(&dir, "registry");
    let mut registry = tls_registry(&ca, &cert, &key, &[]);
    let addr = registry.addr;
    let first = pem_der(&std::fs::read_to_string(&cert).unwrap());
    assert_eq!(peer_certificate(addr, "localhost", &ca.ca_pem).await, first);

    // A new certificate and key, written over the old files.
    let (new_cert, new_key) = ca.issue(&["127.0.0.1", "localhost"]);
    write(dir.path(), "registry.key", &new_key);
    write(dir.path(), "registry.crt", &new_cert);
    let second = pem_der(&new_cert);
    wait_until(
        "the new certificate is served",
        || registry.log_text(),
        || async { peer_certificate(addr, "localhost", &ca.ca_pem).await == second },
    )
    .await;
    let (status, _) = registry.get(path::HEALTHZ).await;
    assert_eq!(status, 200, "the same process serves on");

    // A broken certificate file keeps the current one, and is logged.
    write(dir.path(), "registry.crt", "not a certificate\n");
    let pid = registry.pid();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until(
        "the bad file is reported",
        || registry.log_text(),
        || async { registry.log_text().contains("does not load") },
    )
    .await;
    assert!(
        registry.process().is_running(),
        "SIGHUP does not stop the registry"
    );
    assert_eq!(
        peer_certificate(addr, "localhost", &ca.ca_pem).await,
        second
    );

    // SIGHUP picks up a good one again.
    let (third_cert, third_key) = ca.issue(&["127.0.0.1", "localhost"]);
    write(dir.path(), "registry.key", &third_key);
    write(dir.path(), "registry.crt", &third_cert);
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    let third = pem_der(&third_cert);
    wait_until(
        "the third certificate is served",
        || registry.log_text(),
        || async { peer_certificate(addr, "localhost", &ca.ca_pem).await == third },
    )
    .await;
}

/// `--client-ca`: the admin API needs a client certificate from that CA as
/// well as the admin token; public endpoints need none. The CLI presents
/// one with `--client-cert`/`--client-key` and trusts the registry through
/// `--ca-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_guard_the_admin_api() {
    let dir = TempDir::new("tls-client-ca");
    let (ca, ca_file, cert, key) = ca_and_cert(&dir, "registry");
    let clients = TestCa::new("veto test client CA");
    let client_ca = clients.write_ca(dir.path(), "client-ca.pem");
    let mut registry = tls_registry(&ca, &cert, &key, &["--client-ca", s(&client_ca)]);

    // No client certificate: the token alone is refused, public reads work.
    let (status, body) = registry.admin_get(path::REVOCATIONS).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], ErrorCode::Unauthorized.as_str(), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{body}"
    );
    assert_eq!(registry.get(path::SRL_CHECKPOINT).await.0, 200);
    assert_eq!(registry.get(path::HEALTHZ).await.0, 200);

    // A certificate from another CA is refused in the handshake.
    let (other_cert, other_key) = ca.issue_client("intruder");
    let other = https_client(&ca.ca_pem, Some((&other_cert, &other_key)));
    let r = other.get(registry.at(path::REVOCATIONS)).send().await;
    assert!(r.is_err(), "a certificate from an untrusted CA: {r:?}");

    // With one: the admin API answers.
    let (ccert, ckey) = clients.issue_client("operator");
    registry.set_http(https_client(&ca.ca_pem, Some((&ccert, &ckey))));
    let (status, body) = registry.admin_get(path::REVOCATIONS).await;
    assert_eq!(status, 200, "{body}");

    // And a token is still needed.
    let resp = https_client(&ca.ca_pem, Some((&ccert, &ckey)))
        .get(registry.at(path::REVOCATIONS))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // The CLI, over TLS with a client certificate.
    let ccert_file = write(dir.path(), "operator.crt", &ccert);
    let ckey_file = write(dir.path(), "operator.key", &ckey);
    let run = |with_cert: bool| {
        let mut cmd = veto_command(dir.path());
        cmd.args(["revocations", "list", "--registry", &registry.url])
            .arg("--token-file")
            .arg(registry.token_file())
            .arg("--ca-file")
            .arg(&ca_file);
        if with_cert {
            cmd.arg("--client-cert")
                .arg(&ccert_file)
                .arg("--client-key")
                .arg(&ckey_file);
        }
        cmd.output().unwrap()
    };
    let out = run(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("client certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a build cannot serve is refused at start, with the reason, instead
/// of starting and staying unready.
#[test]
fn unusable_urls_and_tls_files_are_refused_at_start() {
    let dir = TempDir::new("tls-refused");
    let ca = TestCa::new("veto test CA");
    let (cert, key) = ca.write_server(dir.path(), "proxy", &["127.0.0.1"]);
    let not_pem = write(dir.path(), "not-pem.crt", "hello\n");
    // A gateway pins the authority's public key (a private one is refused).
    let key_file = dir.path().join("k.pub.jwk");
    let signing = veto_core::SigningKey::generate().unwrap();
    veto_core::keyfile::write_public_key(&key_file, signing.public()).unwrap();
    let proxy = |args: &[&str]| {
        let mut cmd = veto_command(dir.path());
        cmd.args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--authority-key")
        .arg(&key_file)
        .args(args);
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "refused: {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let up = ["--upstream", "http://127.0.0.1:9"];
    let e = proxy(&[&up[..], &["--registry", "ftp://127.0.0.1:8080"]].concat());
    assert!(
        e.contains("ftp://127.0.0.1:8080") && e.contains("http or https"),
        "{e}"
    );
    let e = proxy(&[
        "--registry",
        "https://127.0.0.1:8080",
        "--upstream",
        "ftp://127.0.0.1:9",
    ]);
    assert!(
        e.contains("ftp://127.0.0.1:9") && e.contains("http or https"),
        "{e}"
    );
    let e = proxy(&[
        "--registry",
        "127.0.0.1:8080",
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    assert!(e.contains("127.0.0.1:8080"), "{e}");
    let e = proxy(&[&up[..], &["--ca-file", s(&not_pem)]].concat());
    assert!(e.contains("not-pem.crt") && e.contains("not PEM"), "{e}");
    let e = proxy(&[&up[..], &["--tls-cert", s(&cert)]].concat());
    assert!(e.contains("--tls-key"), "{e}");
    // A key that is not the certificate's.
    let (_, other_key) = ca.issue(&["127.0.0.1"]);
    let other_key = write(dir.path(), "other.key", &other_key);
    let e = proxy(
        &[
            &up[..],
            &["--tls-cert", s(&cert), "--tls-key", s(&other_key)],
        ]
        .concat(),
    );
    assert!(e.contains("other.key") && e.contains("proxy.crt"), "{e}");
    let e = proxy(&[&up[..], &["--tls-cert", s(&cert), "--tls-key", s(&cert)]].concat());
    assert!(e.contains("no private key"), "{e}");
    let _ = key;

    let serve = |args: &[&str]| {
        let out = veto_command(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "refused: {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = serve(&["--tls-cert", s(&not_pem), "--tls-key", s(&key)]);
    assert!(e.contains("not-pem.crt"), "{e}");
    let e = serve(&["--client-ca", s(&not_pem)]);
    assert!(e.contains("--tls-cert"), "{e}");
    let e = serve(&["--store", "postgres://127.0.0.1:1/x?sslmode=allow"]);
    assert!(e.contains("sslmode `allow`"), "{e}");
}
