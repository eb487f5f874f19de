//! The authority-signed issuer key set (DESIGN 3.5) served by the real
//! `veto serve`: verified with the authority key, its version going up
//! with every key added and retired.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use serde_json::json;
use veto_core::wire::path;
use veto_testkit::{now, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_issuer_set_follows_additions_and_retirements() {
    let registry = Registry::start(&[]);
    let verifier = registry.verifier();
    let fetch = || async {
        let resp = registry
            .http()
            .get(registry.at(path::ISSUERS))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        verifier
            .issuers(&resp.text().await.unwrap(), now())
            .expect("the set verifies with the authority key")
    };
    let first = fetch().await;
    assert_eq!((first.ver, first.keys.keys().len()), (1, 1));
    let first_kid = first.keys.keys()[0].kid().to_owned();

    let (status, added) = registry.admin_post(path::ISSUER_KEYS, &json!({})).await;
    assert_eq!(status, 201, "{added}");
    let second = fetch().await;
    assert_eq!((second.ver, second.keys.keys().len()), (2, 2));

    let (status, body) = registry
        .send(
            registry
                .http()
                .delete(registry.at(&format!("{}/{first_kid}", path::ISSUER_KEYS)))
                .bearer_auth(registry.token()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let third = fetch().await;
    assert_eq!(third.ver, 3);
    assert!(third.keys.keys().iter().all(|k| k.kid() != first_kid));
    assert_eq!(third.keys.keys().len(), 1);
}
