//! The authorizer as a tower layer on an ordinary axum service, against a
//! real registry running in this process: one line of enforcement, the
//! agent handed to the handler, and revocations honoured by push.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};
use veto_authorizer::{AuthorizeLayer, Authorizer, Config, Verified};
use veto_core::KeySet;
use veto_registry::{Config as RegistryConfig, Registry};

async fn bind() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_layer_enforces_on_an_axum_service() {
    let dir = std::env::temp_dir().join(format!(
        "veto-layer-{}-{}",
        std::process::id(),
        veto_core::Clock::now(&veto_core::SystemClock)
    ));
    let mut rc = RegistryConfig::new(&dir);
    rc.heartbeat = Duration::from_secs(1);
    rc.admin_token = Some("layer-test-token".into());
    let registry = Registry::open(rc).await.unwrap();
    let key = registry.authority_key().clone();
    let (l, reg_url) = bind().await;
    tokio::spawn(registry.serve(l, std::future::pending()));

    let authz = Authorizer::start(Config::new(&reg_url, "veto", KeySet::new([key])))
        .await
        .unwrap();
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
        .post(format!("{reg_url}/v1/warrants"))
        .bearer_auth("layer-test-token")
        .json(&json!({"agent": "billing-bot", "act": ["http:GET:/orders/*"], "ttl": 600}))
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
    while status == 401 && body.contains("untrusted_issuer") && Instant::now() < deadline {
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
        "malformed"
    );

    let resp = http
        .post(format!("{reg_url}/v1/revocations"))
        .bearer_auth("layer-test-token")
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
                "revoked"
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
