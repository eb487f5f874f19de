//! End-to-end tests of the proxy: the real `veto serve` and `veto proxy`
//! binaries on loopback, with an upstream in this process that records
//! what reaches it (DESIGN 4, 6).
//!
//! Timeouts here are generous upper bounds, never speed claims: each test
//! says which channel (push or poll) is the only one that can explain a
//! denial arriving within them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::Value;
use veto_core::{warrant, DenyReason, LinkSpec, ParsedChain, SigningKey};
use veto_testkit::{now, Proxy, Registry, TempDir};

/// Heartbeats every second, so `--max-staleness 3s` is reachable.
const REGISTRY_ARGS: &[&str] = &["--heartbeat", "1s"];
const ACT: &[&str] = &["http:GET:/orders/*", "http:GET:/stream"];
const WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The upstream.

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
}

#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn record(&self, path: &str, headers: &HeaderMap) {
        self.seen.lock().unwrap().push(Seen {
            path: path.to_owned(),
            headers: headers.clone(),
        });
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request the upstream saw for `path`.
    fn last(&self, path: &str) -> Seen {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|s| s.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("the upstream never saw `{path}`"))
    }
}

/// Answers `ok` to anything, and streams a chunk every 100 ms for 30 s on
/// `/stream`.
async fn start_upstream() -> (String, Upstream) {
    let up = Upstream::default();
    let (u1, u2) = (up.clone(), up.clone());
    let app = axum::Router::new()
        .route(
            "/stream",
            get(move |headers: HeaderMap| async move {
                u1.record("/stream", &headers);
                let chunks = futures_util::stream::unfold(0u32, |i| async move {
                    if i == 300 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, Infallible>(Bytes::from(format!("chunk {i}\n"))),
                        i + 1,
                    ))
                });
                Body::from_stream(chunks)
            }),
        )
        .fallback(move |uri: axum::http::Uri, headers: HeaderMap| async move {
            u2.record(uri.path(), &headers);
            "ok"
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, up)
}

// ---------------------------------------------------------------------------
// Helpers.

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WITHIN).build().unwrap()
}

/// Status and body of `GET {proxy}{path}` with `Bearer chain` (none when `None`).
async fn call(proxy: &Proxy, chain: Option<&str>, path: &str) -> (u16, Value) {
    call_with(proxy, reqwest::Method::GET, path, |r| match chain {
        Some(c) => r.bearer_auth(c),
        None => r,
    })
    .await
}

async fn call_with(
    proxy: &Proxy,
    method: reqwest::Method,
    path: &str,
    f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let resp = f(client().request(method, proxy.at(path)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap();
    let body = if ctype.starts_with("application/json") {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: JSON body `{text}`: {e}"))
    } else {
        Value::String(text)
    };
    (status, body)
}

/// Calls until the status is `want`, for at most `within`; returns the body.
async fn until_status(
    proxy: &Proxy,
    chain: &str,
    path: &str,
    want: u16,
    within: Duration,
) -> Value {
    let start = Instant::now();
    loop {
        let (status, body) = call(proxy, Some(chain), path).await;
        if status == want {
            return body;
        }
        assert!(
            start.elapsed() < within,
            "`{path}` still answers {status} {body}, not {want}, after {within:?}; proxy log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a denial: the status mapped from `reason`, and a body that is
/// exactly `{"error": reason, "message": text}`.
fn assert_denied(what: &str, status: u16, body: &Value, reason: DenyReason) {
    assert_eq!(
        status,
        veto_authorizer::http_status(reason).as_u16(),
        "{what}: status for `{reason}` (body {body})"
    );
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: body is not a JSON object: {body}"));
    assert_eq!(obj.len(), 2, "{what}: other members in {body}");
    assert_eq!(body["error"], reason.as_str(), "{what}: {body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message in {body}"));
    assert!(!message.is_empty(), "{what}: empty message");
}

/// Waits until the proxy's state is fresh (and its push connected, when
/// `push`) and `chain` is allowed.
async fn wait_ready(proxy: &Proxy, chain: &str, push: bool) {
    let start = Instant::now();
    loop {
        let h = proxy.health().await;
        let sync = &h["sync"];
        if sync["fresh"] == true && (!push || sync["push_connected"] == true) {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the proxy did not sync: {h}; log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_status(proxy, chain, "/orders/1", 200, WITHIN).await;
}

fn leaf_jti(chain: &str) -> String {
    ParsedChain::parse(chain)
        .unwrap()
        .leaf()
        .claims()
        .jti
        .clone()
}

/// A child of `parent` for agent `sub`, delegated offline with the
/// parent's holder key.
fn delegate(parent: &str, holder: &SigningKey, sub: &str) -> String {
    let now = now();
    let spec = LinkSpec {
        sub: sub.into(),
        act: vec!["http:GET:/orders/*".into()],
        iat: now,
        exp: now + 600,
        holder: Some(SigningKey::generate().unwrap().public().clone()),
    };
    warrant::delegate(parent, holder, spec).unwrap()
}

// ---------------------------------------------------------------------------
// Revocation delivery.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_arrives_by_push() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, _seen) = start_upstream().await;
    let dir = TempDir::new("proxy-push");
    // Polling once an hour: after the first sync, only the push can
    // deliver a revocation within the test's timeout.
    let proxy = Proxy::start(&dir, &registry, &upstream, &["--poll-interval", "3600s"]);
    let holder = SigningKey::generate().unwrap();
    let (root, jti) = registry.mint("planner", ACT, Some(holder.public())).await;
    let child = delegate(&root, &holder, "worker");
    wait_ready(&proxy, &root, true).await;
    assert_eq!(call(&proxy, Some(&child), "/orders/1").await.0, 200);

    let version = registry.revoke_warrant(&jti).await;
    let body = until_status(&proxy, &child, "/orders/1", 403, WITHIN).await;
    assert_denied("child of a revoked root", 403, &body, DenyReason::Revoked);
    let (status, body) = call(&proxy, Some(&root), "/orders/1").await;
    assert_denied("revoked root", status, &body, DenyReason::Revoked);
    assert_eq!(
        proxy.metric("veto_authorizer_applied_version").await,
        version as f64
    );
    assert_eq!(proxy.metric("veto_authorizer_push_connected").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_push_a_revocation_arrives_by_polling() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, _seen) = start_upstream().await;
    let dir = TempDir::new("proxy-poll");
    let proxy = Proxy::start(
        &dir,
        &registry,
        &upstream,
        &["--no-push", "--poll-interval", "1s"],
    );
    let (root, jti) = registry.mint("poller", ACT, None).await;
    wait_ready(&proxy, &root, false).await;
    assert_eq!(proxy.health().await["sync"]["push_connected"], false);

    registry.revoke_warrant(&jti).await;
    let body = until_status(&proxy, &root, "/orders/1", 403, WITHIN).await;
    assert_denied("revoked by polling", 403, &body, DenyReason::Revoked);
    assert_eq!(proxy.metric("veto_authorizer_push_connected").await, 0.0);
    assert!(
        proxy
            .metric("veto_authorizer_applied_objects_total{kind=\"delta\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_resumes_without_loss_after_a_registry_restart() {
    let mut registry = Registry::start(REGISTRY_ARGS);
    let (upstream, _seen) = start_upstream().await;
    let dir = TempDir::new("proxy-restart");
    let proxy = Proxy::start(&dir, &registry, &upstream, &["--poll-interval", "3600s"]);
    let (a, a_jti) = registry.mint("agent-a", ACT, None).await;
    let (b, b_jti) = registry.mint("agent-b", ACT, None).await;
    let (c, c_jti) = registry.mint("agent-c", ACT, None).await;
    wait_ready(&proxy, &a, true).await;
    for chain in [&b, &c] {
        assert_eq!(call(&proxy, Some(chain), "/orders/1").await.0, 200);
    }

    registry.revoke_warrant(&a_jti).await;
    until_status(&proxy, &a, "/orders/1", 403, WITHIN).await;

    // Restart on the same port and data directory. The revocation of `b`
    // is made at once, most likely before the proxy has reconnected: it
    // must come with the replay from `Last-Event-ID`.
    registry.kill();
    let registry = Registry::start_on(registry.dir(), registry.addr, REGISTRY_ARGS);
    registry.revoke_warrant(&b_jti).await;
    let body = until_status(&proxy, &b, "/orders/1", 403, WITHIN).await;
    assert_denied(
        "revoked right after the restart",
        403,
        &body,
        DenyReason::Revoked,
    );
    // And once reconnected, live pushes flow again.
    let start = Instant::now();
    while proxy.health().await["sync"]["push_connected"] != true {
        assert!(start.elapsed() < WITHIN, "the push did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call(&proxy, Some(&c), "/orders/1").await.0, 200);
    registry.revoke_warrant(&c_jti).await;
    until_status(&proxy, &c, "/orders/1", 403, WITHIN).await;
    for chain in [&a, &b, &c] {
        assert_eq!(call(&proxy, Some(chain), "/orders/1").await.0, 403);
    }
}

// ---------------------------------------------------------------------------
// Staleness.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_past_max_staleness_then_back() {
    let mut registry = Registry::start(REGISTRY_ARGS);
    let (upstream, seen) = start_upstream().await;
    let dir = TempDir::new("proxy-stale");
    let common = ["--max-staleness", "3s", "--poll-interval", "1s"];
    let closed = Proxy::start(&dir, &registry, &upstream, &common);
    let open = Proxy::start(
        &dir,
        &registry,
        &upstream,
        &[&common[..], &["--policy", "fail-open"][..]].concat(),
    );
    let (root, _) = registry.mint("stale-agent", ACT, None).await;
    wait_ready(&closed, &root, true).await;
    wait_ready(&open, &root, true).await;
    assert_eq!(call(&open, Some(&root), "/orders/open-fresh").await.0, 200);
    assert!(seen
        .last("/orders/open-fresh")
        .headers
        .get("veto-stale")
        .is_none());

    registry.kill();
    let body = until_status(&closed, &root, "/orders/closed-stale", 503, WITHIN).await;
    assert_denied("fail-closed while stale", 503, &body, DenyReason::Stale);
    assert_eq!(closed.health().await["sync"]["fresh"], false);
    let start = Instant::now();
    while open.health().await["sync"]["fresh"] != false {
        assert!(
            start.elapsed() < WITHIN,
            "the fail-open proxy never went stale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = call(&open, Some(&root), "/orders/open-stale").await;
    assert_eq!(status, 200, "fail-open while stale: {body}");
    let flagged = seen.last("/orders/open-stale");
    assert_eq!(
        flagged.headers.get("veto-stale").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "{:?}",
        flagged.headers
    );
    assert!(
        open.metric("veto_proxy_requests_total{outcome=\"allow_stale\"}")
            .await
            >= 1.0
    );
    assert!(
        closed
            .metric("veto_proxy_requests_total{outcome=\"stale\"}")
            .await
            >= 1.0
    );

    // Back on the same port and data: fresh again, by polling or push.
    let _registry = Registry::start_on(registry.dir(), registry.addr, REGISTRY_ARGS);
    until_status(&closed, &root, "/orders/closed-fresh", 200, WITHIN).await;
    let start = Instant::now();
    while open.health().await["sync"]["fresh"] != true {
        assert!(
            start.elapsed() < WITHIN,
            "the fail-open proxy never became fresh again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        call(&open, Some(&root), "/orders/open-fresh-again").await.0,
        200
    );
    assert!(seen
        .last("/orders/open-fresh-again")
        .headers
        .get("veto-stale")
        .is_none());
}

// ---------------------------------------------------------------------------
// What clients and the upstream see.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_is_json_with_the_mapped_status() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, seen) = start_upstream().await;
    let dir = TempDir::new("proxy-deny");
    let proxy = Proxy::start(&dir, &registry, &upstream, &["--poll-interval", "1s"]);
    let holder = SigningKey::generate().unwrap();
    let (root, jti) = registry
        .mint("deny-agent", ACT, Some(holder.public()))
        .await;
    let (other_root, _) = registry
        .mint("deny-agent", ACT, Some(holder.public()))
        .await;
    let (revoked, revoked_jti) = registry.mint("revoked-agent", ACT, None).await;
    wait_ready(&proxy, &root, true).await;
    registry.revoke_warrant(&revoked_jti).await;
    until_status(&proxy, &revoked, "/orders/1", 403, WITHIN).await;
    let before = seen.count();

    let now = now();
    let rogue = SigningKey::generate().unwrap();
    let local = |iat: u64, exp: u64| {
        let spec = LinkSpec {
            sub: "deny-agent".into(),
            act: vec!["http:GET:/orders/*".into()],
            iat,
            exp,
            holder: None,
        };
        warrant::mint_root(&rogue, "veto", spec).unwrap()
    };
    // One character of the signature changed (the first: the last one
    // also carries padding bits, and a non-canonical encoding is malformed).
    let tampered = {
        let at = root.rfind('.').unwrap() + 1;
        let c = if root.as_bytes()[at] == b'A' {
            "B"
        } else {
            "A"
        };
        format!("{}{c}{}", &root[..at], &root[at + 1..])
    };
    // A child of `other_root` presented under `root`: same holder key, so
    // it verifies, but its `par` names the other parent.
    let misplaced = {
        let child = delegate(&other_root, &holder, "worker");
        let link = child.rsplit('~').next().unwrap().to_owned();
        format!("{root}~{link}")
    };
    assert_ne!(jti, leaf_jti(&other_root));
    let cases: Vec<(&str, reqwest::Method, Option<String>, DenyReason)> = vec![
        (
            "no Authorization",
            reqwest::Method::GET,
            None,
            DenyReason::Malformed,
        ),
        (
            "not a chain",
            reqwest::Method::GET,
            Some("Bearer not-a-chain".into()),
            DenyReason::Malformed,
        ),
        (
            "not a bearer",
            reqwest::Method::GET,
            Some(format!("Basic {root}")),
            DenyReason::Malformed,
        ),
        (
            "an action not granted",
            reqwest::Method::DELETE,
            Some(format!("Bearer {root}")),
            DenyReason::ActionDenied,
        ),
        (
            "revoked",
            reqwest::Method::GET,
            Some(format!("Bearer {revoked}")),
            DenyReason::Revoked,
        ),
        (
            "expired",
            reqwest::Method::GET,
            Some(format!("Bearer {}", local(now - 7200, now - 3600))),
            DenyReason::Expired,
        ),
        (
            "not yet valid",
            reqwest::Method::GET,
            Some(format!("Bearer {}", local(now + 3600, now + 7200))),
            DenyReason::NotYetValid,
        ),
        (
            "an untrusted issuer",
            reqwest::Method::GET,
            Some(format!("Bearer {}", local(now, now + 600))),
            DenyReason::UntrustedIssuer,
        ),
        (
            "a tampered signature",
            reqwest::Method::GET,
            Some(format!("Bearer {tampered}")),
            DenyReason::BadSignature,
        ),
        (
            "a broken chain",
            reqwest::Method::GET,
            Some(format!("Bearer {misplaced}")),
            DenyReason::ChainInvalid,
        ),
    ];
    for (what, method, auth, reason) in cases {
        let (status, body) = call_with(&proxy, method, "/orders/1", |r| match auth {
            Some(a) => r.header("authorization", a),
            None => r,
        })
        .await;
        assert_denied(what, status, &body, reason);
    }
    assert_eq!(
        seen.count(),
        before,
        "a denied request reached the upstream"
    );
    // Stale (503) is covered by `registry_down_past_max_staleness_then_back`.
    assert_eq!(
        veto_authorizer::http_status(DenyReason::Stale).as_u16(),
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_the_proxy_identity_not_the_clients() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, seen) = start_upstream().await;
    let dir = TempDir::new("proxy-headers");
    let proxy = Proxy::start(&dir, &registry, &upstream, &[]);
    let holder = SigningKey::generate().unwrap();
    let (root, _) = registry.mint("planner", ACT, Some(holder.public())).await;
    let child = delegate(&root, &holder, "worker");
    wait_ready(&proxy, &root, true).await;

    let (status, body) = call_with(&proxy, reqwest::Method::GET, "/orders/spoof", |r| {
        r.bearer_auth(&child)
            .header("veto-agent", "mallory")
            .header("Veto-Warrant", "forged-jti")
            .header("veto-stale", "1")
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let got = seen.last("/orders/spoof").headers;
    let all = |name: &str| {
        got.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("veto-agent"), ["worker"], "{got:?}");
    assert_eq!(all("veto-warrant"), [leaf_jti(&child)], "{got:?}");
    assert!(
        all("authorization").is_empty(),
        "the client's credential reached the upstream: {got:?}"
    );
    assert!(
        all("veto-stale").is_empty(),
        "a client-sent `Veto-Stale` reached the upstream while fresh: {got:?}"
    );

    // One keep-alive connection presenting one chain, then another, then
    // the first again: the identity headers (made once per chain a
    // connection presents) follow the chain of each request.
    let one = reqwest::Client::builder()
        .timeout(WITHIN)
        .pool_max_idle_per_host(1)
        .http1_only()
        .build()
        .unwrap();
    for (i, (chain, agent, delegation)) in [
        (&child, "worker", "planner,worker"),
        (&root, "planner", "planner"),
        (&child, "worker", "planner,worker"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/orders/who-{i}");
        let resp = one
            .get(proxy.at(&path))
            .bearer_auth(chain)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.bytes().await.unwrap();
        let got = seen.last(&path).headers;
        assert_eq!(got["veto-agent"], agent, "request {i}: {got:?}");
        assert_eq!(got["veto-delegation"], delegation, "request {i}: {got:?}");
        assert_eq!(got["veto-warrant"], leaf_jti(chain).as_str(), "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_chain_loses_its_open_stream() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, _seen) = start_upstream().await;
    let dir = TempDir::new("proxy-stream");
    // One thread: the proxy as one event loop (the default on one core).
    let proxy = Proxy::start(
        &dir,
        &registry,
        &upstream,
        &["--poll-interval", "3600s", "--threads", "1"],
    );
    let (doomed, doomed_jti) = registry.mint("streamer", ACT, None).await;
    let (kept, _) = registry.mint("bystander", ACT, None).await;
    wait_ready(&proxy, &doomed, true).await;
    assert_eq!(
        proxy
            .metric("veto_proxy_streams_cut_total{reason=\"revoked\"}")
            .await,
        0.0
    );

    // No overall timeout: the stream is meant to run for 30 s.
    let streaming = reqwest::Client::new();
    let open = |chain: String| {
        let streaming = streaming.clone();
        let url = proxy.at("/stream");
        async move {
            let resp = streaming.get(url).bearer_auth(chain).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            resp
        }
    };
    let mut doomed_stream = open(doomed).await;
    let mut kept_stream = open(kept).await;
    // A few chunks first: the stream is live before the revocation.
    for _ in 0..3 {
        let chunk = tokio::time::timeout(WITHIN, doomed_stream.chunk())
            .await
            .unwrap()
            .unwrap();
        assert!(chunk.is_some_and(|c| c.starts_with(b"chunk")));
    }

    registry.revoke_warrant(&doomed_jti).await;
    let revoked_at = Instant::now();
    let ended = loop {
        match tokio::time::timeout(WITHIN, doomed_stream.chunk()).await {
            Err(_) => panic!("the revoked stream neither ended nor sent anything for {WITHIN:?}"),
            Ok(Err(e)) => break format!("error: {e}"),
            Ok(Ok(None)) => break "end of stream".to_owned(),
            Ok(Ok(Some(_))) => assert!(
                revoked_at.elapsed() < WITHIN,
                "the revoked stream is still flowing after {WITHIN:?}"
            ),
        }
    };
    let cut_after = revoked_at.elapsed();
    assert!(
        cut_after < Duration::from_secs(5),
        "cut {cut_after:?} after the revocation ({ended})"
    );
    assert_eq!(
        proxy
            .metric("veto_proxy_streams_cut_total{reason=\"revoked\"}")
            .await,
        1.0
    );
    // The other chain's stream goes on.
    for _ in 0..3 {
        let chunk = tokio::time::timeout(WITHIN, kept_stream.chunk())
            .await
            .unwrap();
        assert!(
            matches!(chunk, Ok(Some(_))),
            "the unrevoked stream stopped: {chunk:?}"
        );
    }
}
