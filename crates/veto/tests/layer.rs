//! The authorizer as a tower layer on an ordinary axum service, against a
//! real registry running in this process: one line of enforcement, the
//! agent handed to the handler, and revocations honoured by push.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};
use veto_authorizer::{AuthorizeLayer, Authorizer, Config, Verified};
use veto_core::wire::path;
use veto_core::{DenyReason, KeySet};
use veto_registry::{Config as RegistryConfig, Registry};

/// An admin token for the in-process registries (32 or more characters).
const TOKEN: &str = "layer-test-token-0123456789abcdef";

async fn bind() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// A registry in this process (SQLite in a fresh temporary directory,
/// heartbeat 1 s, admin [`TOKEN`]) serving on a loopback port until
/// `shutdown`: its directory, authority key, URL and serving task.
async fn serve_registry(
    label: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    std::path::PathBuf,
    veto_core::PublicKey,
    String,
    tokio::task::JoinHandle<Result<(), veto_registry::RegistryError>>,
) {
    let dir = std::env::temp_dir().join(format!(
        "veto-{label}-{}-{}",
        std::process::id(),
        veto_core::Clock::now(&veto_core::SystemClock)
    ));
    let mut rc = RegistryConfig::new(&dir);
    rc.heartbeat = Duration::from_secs(1);
    rc.admin_token = Some(TOKEN.into());
    let registry = Registry::open(rc).await.unwrap();
    let key = registry.authority_key().clone();
    let (l, url) = bind().await;
    let served = tokio::spawn(registry.serve(l, shutdown));
    (dir, key, url, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_layer_enforces_on_an_axum_service() {
    let (dir, key, reg_url, _served) = serve_registry("layer", std::future::pending()).await;

    let mut config = Config::new(&reg_url, "veto", KeySet::new([key]));
    config.pop.policy = veto_authorizer::PopPolicy::Off;
    let authz = Authorizer::start(config).await.unwrap();
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|Extension(v): Extension<Verified>| async move {
                format!("hello {} ({})", v.agent, v.warrant)
            }),
        )
        .layer(AuthorizeLayer::new(authz.clone()));
    let (l, app_url) = bind().await;
    tokio::spawn(async move { axum::serve(l, app).await });

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(authz.status().fresh && authz.status().push_connected) {
        assert!(
            Instant::now() < deadline,
            "never synced: {:?}",
            authz.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let minted: Value = http
        .post(format!("{reg_url}{}", path::WARRANTS))
        .bearer_auth(TOKEN)
        .json(&json!({"agent": "billing-bot", "act": ["http:GET:/orders/*"], "ttl": 600, "holder_key": holder_jwk()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain = minted["warrant"].as_str().unwrap();
    let jti = minted["jti"].as_str().unwrap();
    // The JWKS may lag the first mint by one refresh; wait for the issuer key.
    let get = |chain: Option<&str>| {
        let req = http.get(format!("{app_url}/orders/7"));
        let req = match chain {
            Some(c) => req.bearer_auth(c),
            None => req,
        };
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut status, mut body) = get(Some(chain)).await;
    while status == 401
        && body.contains(DenyReason::UntrustedIssuer.as_str())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        (status, body) = get(Some(chain)).await;
    }
    assert_eq!(
        (status, body.as_str()),
        (200, format!("hello billing-bot ({jti})").as_str())
    );

    let (status, body) = get(None).await;
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        DenyReason::Malformed.as_str()
    );

    let resp = http
        .post(format!("{reg_url}{}", path::REVOCATIONS))
        .bearer_auth(TOKEN)
        .json(&json!({"entries": [{"kind": "warrant", "id": jti, "reason": "superseded"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(Some(chain)).await;
        if status == 403 {
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["error"],
                DenyReason::Revoked.as_str()
            );
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "the revocation never reached the layer"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    authz.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The layer's default policy requires proof of possession: the handler
/// sees the proven holder; a bearer chain, or a proof for another URL or
/// from another key, gets 401 with a `DPoP` challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_requires_a_dpop_proof_by_default() {
    let (dir, key, reg_url, _served) = serve_registry("layer-dpop", std::future::pending()).await;
    let mut config = Config::new(&reg_url, "veto", KeySet::new([key]));
    config.issuers = veto_authorizer::Issuers::Signed {
        refresh: Duration::from_millis(200),
    };
    let authz = Authorizer::start(config).await.unwrap();
    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|Extension(v): Extension<Verified>| async move {
                format!("{} proved {}", v.agent, v.holder.unwrap_or_default())
            }),
        )
        .layer(AuthorizeLayer::new(authz.clone()));
    let (l, app_url) = bind().await;
    tokio::spawn(async move { axum::serve(l, app).await });

    let holder = veto_core::SigningKey::generate().unwrap();
    let http = reqwest::Client::new();
    let minted: Value = http
        .post(format!("{reg_url}{}", path::WARRANTS))
        .bearer_auth(TOKEN)
        .json(
            &json!({"agent": "billing-bot", "act": ["http:GET:/orders/*"], "ttl": 600,
            "holder_key": holder.public().to_jwk()}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain = minted["warrant"].as_str().unwrap().to_owned();
    let url = format!("{app_url}/orders/7");
    let call = |key: &veto_core::SigningKey, proof_url: &str, scheme: &str| {
        let proof = veto_core::dpop::make(
            key,
            &veto_core::dpop::ProofSpec {
                method: "GET",
                url: proof_url,
                chain: &chain,
                iat: veto_core::Clock::now(&veto_core::SystemClock),
                nonce: None,
            },
        )
        .unwrap();
        let req = http
            .get(&url)
            .header("authorization", format!("{scheme} {chain}"))
            .header(veto_core::wire::header::DPOP, proof);
        async move {
            let r = req.send().await.unwrap();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), challenge, r.text().await.unwrap())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = call(&holder, &url, "DPoP").await;
    while got.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = call(&holder, &url, "DPoP").await;
    }
    assert_eq!(got.2, format!("billing-bot proved {}", holder.kid()));

    let stranger = veto_core::SigningKey::generate().unwrap();
    for (what, key, proof_url, scheme, reason) in [
        (
            "bearer",
            &holder,
            url.clone(),
            "Bearer",
            DenyReason::PopRequired,
        ),
        (
            "another key",
            &stranger,
            url.clone(),
            "DPoP",
            DenyReason::PopInvalid,
        ),
        (
            "another URL",
            &holder,
            format!("{app_url}/orders/8"),
            "DPoP",
            DenyReason::PopInvalid,
        ),
    ] {
        let (status, challenge, body) = call(key, &proof_url, scheme).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            reason.as_str(),
            "{what}"
        );
        assert!(
            challenge.is_some_and(|c| c.starts_with("DPoP ")),
            "{what}: a DPoP challenge"
        );
    }
    authz.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every denial the layer makes, by reason, as a client sees it: 401 with
/// `WWW-Authenticate` for a bad credential, 403 `action_denied`, and once
/// the registry is gone past max staleness, 503 `stale` under fail-closed
/// while fail-open lets the request through flagged `stale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_answers_each_denial_and_the_staleness_policy() {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (dir, key, reg_url, served) = serve_registry("layer-stale", async move {
        let _ = stop_rx.await;
    })
    .await;

    let start = |policy| {
        let mut c = Config::new(&reg_url, "veto", KeySet::new([key.clone()]));
        c.check.max_staleness = 2;
        c.check.policy = policy;
        c.pop.policy = veto_authorizer::PopPolicy::Off;
        c.push_idle_timeout = Duration::from_secs(2);
        Authorizer::start(c)
    };
    let closed = start(veto_core::StalenessPolicy::FailClosed).await.unwrap();
    let open = start(veto_core::StalenessPolicy::FailOpen).await.unwrap();
    let app = |authz: &Authorizer| {
        Router::new()
            .route(
                "/orders/{id}",
                get(|Extension(v): Extension<Verified>| async move {
                    format!("{} stale={}", v.agent, v.stale)
                }),
            )
            .layer(AuthorizeLayer::new(authz.clone()))
    };
    let (l, closed_url) = bind().await;
    let closed_app = app(&closed);
    tokio::spawn(async move { axum::serve(l, closed_app).await });
    let (l, open_url) = bind().await;
    let open_app = app(&open);
    tokio::spawn(async move { axum::serve(l, open_app).await });

    let http = reqwest::Client::new();
    let minted: Value = http
        .post(format!("{reg_url}{}", path::WARRANTS))
        .bearer_auth(TOKEN)
        .json(&json!({"agent": "billing-bot", "act": ["http:GET:/orders/*"], "ttl": 600, "holder_key": holder_jwk()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chain = minted["warrant"].as_str().unwrap().to_owned();
    let call = |base: &str, method: reqwest::Method, auth: Option<String>| {
        let mut req = http.request(method, format!("{base}/orders/7"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let www = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, www, r.text().await.unwrap())
        }
    };
    let bearer = Some(format!("Bearer {chain}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    for base in [&closed_url, &open_url] {
        loop {
            let (status, _, body) = call(base, reqwest::Method::GET, bearer.clone()).await;
            if status == 200 {
                assert_eq!(body, "billing-bot stale=false");
                break;
            }
            assert!(Instant::now() < deadline, "never allowed: {status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let error = |body: &str| serde_json::from_str::<Value>(body).unwrap()["error"].clone();

    // 401 names the scheme to use.
    for auth in [
        None,
        Some("Bearer x.y.z".to_owned()),
        Some(format!("Basic {chain}")),
    ] {
        let (status, www, body) = call(&closed_url, reqwest::Method::GET, auth.clone()).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(
            error(&body),
            DenyReason::Malformed.as_str(),
            "{auth:?}: {body}"
        );
        assert!(
            www.as_deref().is_some_and(|w| w.starts_with("Bearer")),
            "{auth:?}: WWW-Authenticate {www:?}"
        );
    }
    // 403 for an action the warrant does not permit, without WWW-Authenticate.
    let (status, www, body) = call(&closed_url, reqwest::Method::DELETE, bearer.clone()).await;
    assert_eq!(
        (status, error(&body)),
        (403, json!(DenyReason::ActionDenied.as_str())),
        "{body}"
    );
    assert_eq!(www, None);

    // The registry goes away: past max staleness the policies part ways.
    stop_tx.send(()).unwrap();
    served.await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, body) = call(&closed_url, reqwest::Method::GET, bearer.clone()).await;
        if status == 503 {
            assert_eq!(error(&body), DenyReason::Stale.as_str(), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "never stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!closed.status().fresh);
    let (status, _, body) = call(&open_url, reqwest::Method::GET, bearer.clone()).await;
    assert!(!open.status().fresh);
    assert_eq!((status, body.as_str()), (200, "billing-bot stale=true"));
    // Fail-open still refuses what is not permitted.
    let (status, _, body) = call(&open_url, reqwest::Method::DELETE, bearer).await;
    assert_eq!(
        (status, error(&body)),
        (403, json!(DenyReason::ActionDenied.as_str())),
        "{body}"
    );
    closed.shutdown();
    open.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The disk cache keeps a snapshot and the deltas since; past a few
/// thousand deltas a poll replaces them with a current snapshot (even one
/// of the same version), so neither the file nor the memory behind it
/// grows with every revocation, and a restart from it is still current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cache_is_compacted_and_stays_loadable() {
    const REVOCATIONS: usize = 4200; // over the 4096 deltas a cache may keep
    let dir = std::env::temp_dir().join(format!(
        "veto-layer-cache-{}-{}",
        std::process::id(),
        veto_core::Clock::now(&veto_core::SystemClock)
    ));
    let mut rc = RegistryConfig::new(dir.join("registry"));
    rc.admin_token = Some(TOKEN.into());
    let registry = Registry::open(rc).await.unwrap();
    let key = registry.authority_key().clone();
    let (l, reg_url) = bind().await;
    tokio::spawn(registry.serve(l, std::future::pending()));

    let cache = dir.join("cache");
    let mut config = Config::new(&reg_url, "veto", KeySet::new([key.clone()]));
    config.cache_dir = Some(cache.clone());
    config.pop.policy = veto_authorizer::PopPolicy::Off;
    config.poll_interval = Duration::from_secs(3600); // polls only when asked
    let authz = Authorizer::start(config).await.unwrap();

    // One delta per revocation.
    let http = reqwest::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (http, next, url) = (
            http.clone(),
            next.clone(),
            format!("{reg_url}{}", path::REVOCATIONS),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= REVOCATIONS {
                    return;
                }
                let resp = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&json!({"entries": [{"kind": "warrant", "id": format!("c{i}")}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 201);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let head = REVOCATIONS as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while authz.status().version < head {
        assert!(
            Instant::now() < deadline,
            "never applied: {:?}",
            authz.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A poll sees too many kept deltas and starts the cache over.
    authz.sync_now().await;
    let file = cache.join("veto-authorizer-state.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let cached: Value = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let deltas = cached["deltas"].as_array().map_or(usize::MAX, Vec::len);
        // The snapshot is kept in its own file (its binary container).
        if cache.join("veto-authorizer-snapshot.bin").is_file() && deltas < 10 {
            break deltas;
        }
        assert!(
            Instant::now() < deadline,
            "the cache was not compacted: {deltas} deltas kept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    authz.shutdown();
    // What the authorizer trusted is readable by its own user only.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache), 0o700, "the cache directory");
        assert_eq!(mode(&file), 0o600, "the cache file");
        assert_eq!(
            mode(&cache.join("veto-authorizer-snapshot.bin")),
            0o600,
            "the snapshot file"
        );
    }

    // A restart with the registry unreachable starts from the cache, current.
    let mut offline = Config::new("http://127.0.0.1:9", "veto", KeySet::new([key]));
    offline.cache_dir = Some(cache);
    offline.push = veto_authorizer::Push::Off;
    let restarted = Authorizer::start(offline).await.unwrap();
    assert_eq!(restarted.status().version, head, "kept {kept} deltas");
    restarted.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A holder public key to bind in minted warrants (the registry requires one).
fn holder_jwk() -> serde_json::Value {
    serde_json::to_value(
        veto_core::SigningKey::from_seed(&[0x11; 32])
            .public()
            .to_jwk(),
    )
    .unwrap()
}
