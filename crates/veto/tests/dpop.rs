//! Proof of possession (DPoP, RFC 9449; DESIGN 3.4) through the real
//! `veto serve` and `veto proxy` binaries on loopback: who can use a
//! chain, and what the upstream is told about who vouched for what.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::Value;
use veto_core::dpop::{self, ProofSpec};
use veto_core::wire::header;
use veto_core::{keyfile, warrant, DenyReason, LinkSpec, SigningKey};
use veto_testkit::{now, veto_bin, Proxy, Registry, TempDir};

const WITHIN: Duration = Duration::from_secs(10);

/// An upstream that keeps the headers of every request it answers.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| async move {
        s.lock().unwrap().push(headers);
        "ok"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

struct World {
    registry: Registry,
    proxy: Proxy,
    _dir: TempDir,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    /// The root's holder key and chain (agent `planner`).
    planner: (SigningKey, String),
}

async fn world(name: &str, proxy_args: &[&str], exact: bool) -> World {
    let registry = Registry::start(&["--heartbeat", "1s"]);
    let (upstream, seen) = recording_upstream().await;
    let dir = TempDir::new(name);
    let proxy = if exact {
        Proxy::start_exact(&dir, &registry, &upstream, proxy_args)
    } else {
        Proxy::start(&dir, &registry, &upstream, proxy_args)
    };
    let key = SigningKey::generate().unwrap();
    let (chain, _) = registry
        .mint("planner", &["http:*:/orders/*"], Some(key.public()))
        .await;
    let start = Instant::now();
    while proxy.health().await["sync"]["fresh"] != true {
        assert!(start.elapsed() < WITHIN, "the proxy did not sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    World {
        registry,
        proxy,
        _dir: dir,
        seen,
        planner: (key, chain),
    }
}

/// Delegates `depth - 1` children under the planner's chain, each to a new
/// holder key; returns the leaf holder's key and the chain.
fn delegated(w: &World, depth: usize) -> (SigningKey, String) {
    let (mut key, mut chain) = (w.planner.0.clone(), w.planner.1.clone());
    for i in 1..depth {
        let next = SigningKey::generate().unwrap();
        chain = warrant::delegate(
            &chain,
            &key,
            LinkSpec {
                sub: format!("worker-{i}"),
                act: vec!["http:GET:/orders/*".into()],
                iat: now(),
                exp: now() + 600,
                holder: Some(next.public().clone()),
            },
        )
        .unwrap();
        key = next;
    }
    (key, chain)
}

fn b64decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn proof(key: &SigningKey, method: &str, url: &str, chain: &str, iat: u64) -> String {
    dpop::make(
        key,
        &ProofSpec {
            method,
            url,
            chain,
            iat,
            nonce: None,
        },
    )
    .unwrap()
}

/// Sends `method url` with `Authorization: <scheme> <chain>` and the given
/// `DPoP` headers; returns status, headers and body.
async fn send(
    method: &str,
    url: &str,
    authorization: Option<String>,
    proofs: &[&str],
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::builder().timeout(WITHIN).build().unwrap();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    for p in proofs {
        req = req.header(header::DPOP, *p);
    }
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn denied(what: &str, got: &(u16, reqwest::header::HeaderMap, Value), reason: DenyReason) {
    let (status, headers, body) = got;
    assert_eq!(*status, 401, "{what}: {body}");
    assert_eq!(body["error"], reason.as_str(), "{what}: {body}");
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        challenge.starts_with("DPoP "),
        "{what}: WWW-Authenticate `{challenge}`"
    );
    assert!(!body["message"].as_str().unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_of_the_leaf_key_can_use_a_chain() {
    // The default policy: nothing on the command line says `--pop`.
    let w = world("dpop-required", &[], true).await;
    let url = w.proxy.at("/orders/7");
    let (worker_key, worker) = delegated(&w, 2);
    let dpop_auth = |c: &str| Some(format!("DPoP {c}"));

    // A forged chain whose leaf names the attacker's key, with a valid
    // proof by that key: refused for its signature, and its proofs never
    // reach the replay cache (a stranger cannot fill it and lock holders out).
    let attacker = SigningKey::generate().unwrap();
    let (head, rest) = worker.rsplit_once('~').unwrap();
    let (h, p_and_s) = rest.split_once('.').unwrap();
    let (p, s) = p_and_s.split_once('.').unwrap();
    let mut claims: Value = serde_json::from_slice(&b64decode(p)).unwrap();
    claims["cnf"]["jwk"] = serde_json::to_value(attacker.public().to_jwk()).unwrap();
    let forged = format!(
        "{head}~{h}.{}.{s}",
        base64url(claims.to_string().as_bytes())
    );
    for _ in 0..20 {
        let got = send(
            "GET",
            &url,
            dpop_auth(&forged),
            &[&proof(&attacker, "GET", &url, &forged, now())],
            &[],
        )
        .await;
        assert_eq!(got.2["error"], "bad_signature", "{:?}", got.2);
    }
    assert_eq!(
        w.proxy.metric("veto_authorizer_dpop_replay_bytes").await,
        0.0,
        "forged chains spent no room in the replay cache"
    );

    // The happy path at depth 1 and 4, and what the upstream is told.
    let (pk, pc) = (&w.planner.0, &w.planner.1);
    let ok = send(
        "GET",
        &url,
        dpop_auth(pc),
        &[&proof(pk, "GET", &url, pc, now())],
        &[],
    )
    .await;
    assert_eq!(ok.0, 200, "{:?}", ok.2);
    let (k4, c4) = delegated(&w, 4);
    let forged_identity = [
        ("veto-root-agent", "root-operator"),
        ("veto_agent", "root-operator"),
        ("Veto-Holder", "x"),
    ];
    let ok = send(
        "GET",
        &url,
        dpop_auth(&c4),
        &[&proof(&k4, "GET", &url, &c4, now())],
        &forged_identity,
    )
    .await;
    assert_eq!(ok.0, 200, "depth 4: {:?}", ok.2);
    assert!(
        w.proxy.metric("veto_authorizer_dpop_replay_bytes").await > 0.0,
        "the proofs that passed are remembered (and the series is the one read above)"
    );
    let seen = w.seen.lock().unwrap().last().unwrap().clone();
    let h = |n: &str| seen.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h(header::ROOT_AGENT).as_deref(), Some("planner"));
    assert_eq!(
        h(header::DELEGATION).as_deref(),
        Some("planner,worker-1,worker-2,worker-3")
    );
    assert_eq!(h(header::AGENT).as_deref(), Some("worker-3"));
    assert_eq!(h(header::HOLDER).as_deref(), Some(k4.kid()));
    assert!(seen.get("veto_agent").is_none() && seen.get(header::DPOP).is_none());
    assert_eq!(seen.get_all(header::ROOT_AGENT).iter().count(), 1);

    // A stolen chain without the key: as a bearer token, with no proof,
    // with a proof by another key, with the parent's key.
    let got = send("GET", &url, Some(format!("Bearer {worker}")), &[], &[]).await;
    denied("bearer", &got, DenyReason::PopRequired);
    let got = send("GET", &url, dpop_auth(&worker), &[], &[]).await;
    denied("DPoP without a proof", &got, DenyReason::PopRequired);
    let thief = SigningKey::generate().unwrap();
    let got = send(
        "GET",
        &url,
        dpop_auth(&worker),
        &[&proof(&thief, "GET", &url, &worker, now())],
        &[],
    )
    .await;
    denied("another key", &got, DenyReason::PopInvalid);
    let got = send(
        "GET",
        &url,
        dpop_auth(&worker),
        &[&proof(pk, "GET", &url, &worker, now())],
        &[],
    )
    .await;
    denied(
        "the parent's key on the child's chain",
        &got,
        DenyReason::PopInvalid,
    );
    assert!(got.2["message"]
        .as_str()
        .unwrap()
        .contains(worker_key.kid()));

    // A proof for another method, another URL, another chain.
    let got = send(
        "GET",
        &url,
        dpop_auth(&worker),
        &[&proof(&worker_key, "POST", &url, &worker, now())],
        &[],
    )
    .await;
    denied("another method", &got, DenyReason::PopInvalid);
    let other = w.proxy.at("/orders/8");
    let got = send(
        "GET",
        &url,
        dpop_auth(&worker),
        &[&proof(&worker_key, "GET", &other, &worker, now())],
        &[],
    )
    .await;
    denied("another URL", &got, DenyReason::PopInvalid);
    let got = send(
        "GET",
        &url,
        dpop_auth(&worker),
        &[&proof(&worker_key, "GET", &url, pc, now())],
        &[],
    )
    .await;
    denied("another chain", &got, DenyReason::PopInvalid);

    // Ten minutes old, ten minutes ahead.
    for iat in [now() - 600, now() + 600] {
        let got = send(
            "GET",
            &url,
            dpop_auth(&worker),
            &[&proof(&worker_key, "GET", &url, &worker, iat)],
            &[],
        )
        .await;
        denied("iat out of the window", &got, DenyReason::PopInvalid);
    }

    // A replayed proof, and two proofs at once.
    let p = proof(&worker_key, "GET", &url, &worker, now());
    assert_eq!(
        send("GET", &url, dpop_auth(&worker), &[&p], &[]).await.0,
        200
    );
    let got = send("GET", &url, dpop_auth(&worker), &[&p], &[]).await;
    denied("replayed", &got, DenyReason::PopInvalid);
    let fresh = proof(&worker_key, "GET", &url, &worker, now());
    let again = proof(&worker_key, "GET", &url, &worker, now());
    let got = send("GET", &url, dpop_auth(&worker), &[&fresh, &again], &[]).await;
    denied("two DPoP headers", &got, DenyReason::PopInvalid);

    // Hostile proofs: oversized, two joined with a comma, not a JWS, `alg`
    // `none`, a header `jwk` with the private key in it.
    let good = proof(&worker_key, "GET", &url, &worker, now());
    let (_, rest) = good.split_once('.').unwrap();
    let alg_none = format!(
        "{}.{rest}",
        base64url(br#"{"typ":"dpop+jwt","alg":"none"}"#)
    );
    let leaked = format!(
        "{}.{rest}",
        base64url(
            format!(
                r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{}}}"#,
                worker_key.to_private_jwk().to_json()
            )
            .as_bytes()
        )
    );
    let oversized = format!("{good}{}", "A".repeat(5000));
    let joined = format!("{good},{good}");
    for (what, p) in [
        ("oversized", oversized.as_str()),
        ("two joined with a comma", joined.as_str()),
        ("not a JWS", "not-a-jws"),
        ("alg none", alg_none.as_str()),
        ("a private key in the header", leaked.as_str()),
    ] {
        let got = send("GET", &url, dpop_auth(&worker), &[p], &[]).await;
        denied(what, &got, DenyReason::PopInvalid);
    }

    // The URL as the client addressed it, differently spelled, is the same URI.
    let spelled = url
        .replace("http://", "HTTP://")
        .replace("/orders/7", "/orders/./%37");
    let got = send(
        "GET",
        &url,
        dpop_auth(&worker),
        &[&proof(&worker_key, "GET", &spelled, &worker, now())],
        &[],
    )
    .await;
    assert_eq!(got.0, 200, "{:?}", got.2);
    // Cheap checks first: a revoked chain is `revoked` whatever its proof.
    w.registry
        .revoke_warrant(
            &veto_core::ParsedChain::parse(&worker)
                .unwrap()
                .leaf()
                .claims()
                .jti,
        )
        .await;
    let start = Instant::now();
    loop {
        let got = send("GET", &url, dpop_auth(&worker), &[], &[]).await;
        if got.0 == 403 {
            assert_eq!(got.2["error"], "revoked");
            break;
        }
        assert!(start.elapsed() < WITHIN, "never revoked: {:?}", got.2);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_and_off_behave_as_documented() {
    let w = world("dpop-optional", &["--pop", "optional"], false).await;
    let url = w.proxy.at("/orders/1");
    let (key, chain) = (&w.planner.0, &w.planner.1);
    // Optional: a bearer chain passes; a proof that is sent is checked.
    assert_eq!(
        send("GET", &url, Some(format!("Bearer {chain}")), &[], &[])
            .await
            .0,
        200
    );
    let bad = proof(key, "POST", &url, chain, now());
    let got = send("GET", &url, Some(format!("DPoP {chain}")), &[&bad], &[]).await;
    assert_eq!((got.0, got.2["error"].as_str()), (401, Some("pop_invalid")));
    let good = proof(key, "GET", &url, chain, now());
    assert_eq!(
        send("GET", &url, Some(format!("DPoP {chain}")), &[&good], &[])
            .await
            .0,
        200
    );
    let holder = w
        .seen
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .get(header::HOLDER)
        .cloned();
    assert_eq!(holder.unwrap().to_str().unwrap(), key.kid());

    // Off: every chain is a bearer token, and no holder is claimed.
    let w = world("dpop-off", &["--pop", "off"], false).await;
    let url = w.proxy.at("/orders/1");
    let chain = &w.planner.1;
    assert_eq!(
        send("GET", &url, Some(format!("Bearer {chain}")), &[], &[])
            .await
            .0,
        200
    );
    assert_eq!(
        send(
            "GET",
            &url,
            Some(format!("DPoP {chain}")),
            &["garbage"],
            &[]
        )
        .await
        .0,
        200
    );
    assert!(w
        .seen
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .get(header::HOLDER)
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_requests_and_proofs_and_follows_a_nonce() {
    let w = world("dpop-cli", &["--pop", "required", "--pop-nonce"], false).await;
    let dir = TempDir::new("dpop-cli-files");
    let key_file = dir.path().join("planner.jwk");
    keyfile::write_signing_key(&key_file, &w.planner.0).unwrap();
    let chain_file = dir.path().join("chain");
    std::fs::write(&chain_file, &w.planner.1).unwrap();
    let url = w.proxy.at("/orders/9");
    let chain_arg = format!("@{}", chain_file.display());

    // `veto request`: the first answer asks for a nonce; it retries with it.
    let out = Command::new(veto_bin())
        .args(["request", "--chain", &chain_arg, "--holder-key"])
        .arg(&key_file)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");

    // Without the nonce, a proof from `veto dpop` is refused with one.
    let made = |nonce: Option<&str>| {
        let mut cmd = Command::new(veto_bin());
        cmd.args(["dpop", "--chain", &chain_arg, "--holder-key"])
            .arg(&key_file);
        if let Some(n) = nonce {
            cmd.args(["--nonce", n]);
        }
        let out = cmd.arg(&url).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let auth = Some(format!("DPoP {}", w.planner.1));
    let got = send("GET", &url, auth.clone(), &[&made(None)], &[]).await;
    assert_eq!(got.0, 401, "{:?}", got.2);
    let challenge = got.1.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(challenge.contains("use_dpop_nonce"), "{challenge}");
    let nonce = got
        .1
        .get(header::DPOP_NONCE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let got = send("GET", &url, auth, &[&made(Some(&nonce))], &[]).await;
    assert_eq!(got.0, 200, "{:?}", got.2);

    // A holder key that is not the leaf's is refused before anything is sent.
    let stranger = dir.path().join("stranger.jwk");
    keyfile::write_signing_key(&stranger, &SigningKey::generate().unwrap()).unwrap();
    let out = Command::new(veto_bin())
        .args(["request", "--chain", &chain_arg, "--holder-key"])
        .arg(&stranger)
        .arg(&url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("binds"));
}
