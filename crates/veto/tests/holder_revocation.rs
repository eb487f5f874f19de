//! Holders revoke what they delegated (DESIGN 5): `POST
//! /v1/revocations/delegated` against the real `veto serve`, proved with
//! DPoP instead of the admin token, and enforced by a real `veto proxy`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veto_core::dpop::{self, ProofSpec};
use veto_core::wire::{header, path, ErrorCode};
use veto_core::{keyfile, warrant, LinkSpec, ParsedChain, SigningKey};
use veto_testkit::{now, ok_upstream, veto_bin, Proxy, Registry, TempDir};

fn child(parent: &str, parent_key: &SigningKey, sub: &str, to: &SigningKey) -> String {
    warrant::delegate(
        parent,
        parent_key,
        LinkSpec {
            sub: sub.into(),
            act: vec!["http:GET:/orders/*".into()],
            iat: now(),
            exp: now() + 600,
            holder: Some(to.public().clone()),
        },
    )
    .unwrap()
}

fn jti(chain: &str, link: usize) -> String {
    ParsedChain::parse(chain).unwrap().links()[link]
        .claims()
        .jti
        .clone()
}

/// Sends a holder revocation of `link` of `chain`, with `proof` (a fresh
/// one by `key` when `None`).
async fn ask(
    registry: &Registry,
    chain: &str,
    link: usize,
    key: &SigningKey,
    proof: Option<&str>,
) -> (u16, Value, String) {
    let url = registry.at(path::REVOCATIONS_DELEGATED);
    let made;
    let proof = match proof {
        Some(p) => p,
        None => {
            made = dpop::make(
                key,
                &ProofSpec {
                    method: "POST",
                    url: &url,
                    chain,
                    iat: now(),
                    nonce: None,
                },
            )
            .unwrap();
            &made
        }
    };
    let (status, body) = registry
        .send(
            registry
                .http()
                .post(&url)
                .header("authorization", format!("DPoP {chain}"))
                .header(header::DPOP, proof)
                .json(&json!({"link": link, "reason": "privilege_withdrawn"})),
        )
        .await;
    (status, body, proof.to_owned())
}

fn refused(what: &str, got: &(u16, Value, String), status: u16, code: ErrorCode) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(got.1["error"], code.as_str(), "{what}: {}", got.1);
    assert!(!got.1["message"].as_str().unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_revokes_what_it_delegated_and_nothing_else() {
    let registry = Registry::start(&["--heartbeat", "1s"]);
    let upstream = ok_upstream().await;
    let dir = TempDir::new("holder-revocation");
    let proxy = Proxy::start(&dir, &registry, &upstream, &[]);

    // planner (k0) -> worker-1 (k1) -> worker-2 (k2); and a sibling
    // planner -> worker-1b (k1b).
    let keys: Vec<SigningKey> = (0..4).map(|_| SigningKey::generate().unwrap()).collect();
    let (k0, k1, k2, k1b) = (&keys[0], &keys[1], &keys[2], &keys[3]);
    let (root, _) = registry
        .mint("planner", &["http:*:/orders/*"], Some(k0.public()))
        .await;
    let worker = child(&root, k0, "worker-1", k1);
    let grandchild = child(&worker, k1, "worker-2", k2);
    let sibling = child(&root, k0, "worker-1b", k1b);
    let stranger = SigningKey::generate().unwrap();

    // Refused: the admin token is no holder proof; an unrelated key; a
    // sibling's key; the grandchild's own key on its parent's link; a link
    // that is not there.
    let (status, body) = registry
        .send(
            registry
                .http()
                .post(registry.at(path::REVOCATIONS_DELEGATED))
                .bearer_auth(registry.token())
                .json(&json!({"link": 2})),
        )
        .await;
    refused(
        "the admin token",
        &(status, body, String::new()),
        401,
        ErrorCode::PopRequired,
    );
    let got = ask(&registry, &grandchild, 2, &stranger, None).await;
    refused("an unrelated key", &got, 403, ErrorCode::NotYourLink);
    let got = ask(&registry, &grandchild, 1, k1b, None).await;
    refused("a sibling's key", &got, 403, ErrorCode::NotYourLink);
    let got = ask(&registry, &grandchild, 1, k2, None).await;
    refused("an ancestor's link", &got, 403, ErrorCode::NotYourLink);
    let got = ask(&registry, &grandchild, 3, k0, None).await;
    refused("no such link", &got, 400, ErrorCode::InvalidLink);
    let forged = format!("{}x", &grandchild[..grandchild.len() - 1]);
    let got = ask(&registry, &forged, 2, k0, None).await;
    assert!(
        [400, 401].contains(&got.0),
        "a forged chain: {} {}",
        got.0,
        got.1
    );
    // A link whose `jti` its signer copied from another warrant: from its
    // parent in the chain, or from a root minted for someone else.
    let (victim_root, victim_jti) = registry
        .mint("victim", &["http:*:/orders/*"], Some(stranger.public()))
        .await;
    for (what, stolen, code, status) in [
        (
            "its root's jti",
            jti(&worker, 0),
            ErrorCode::InvalidChain,
            400,
        ),
        (
            "another tenant's root jti",
            victim_jti.clone(),
            ErrorCode::NotYourLink,
            403,
        ),
    ] {
        let evil = copied_jti_child(&worker, k1, &stolen);
        let got = ask(&registry, &evil, 2, k1, None).await;
        refused(what, &got, status, code);
    }
    assert_eq!(registry.version().await, 0, "nothing was revoked");
    assert_eq!(proxy_status(&proxy, &victim_root).await, 200);

    // The root's holder revokes the grandchild's link: 201, audited as the
    // holder, in the signed state, enforced by the proxy.
    assert_eq!(
        proxy_status(&proxy, &grandchild).await,
        200,
        "the grandchild works before"
    );
    let got = ask(&registry, &grandchild, 2, k0, None).await;
    assert_eq!(got.0, 201, "{}", got.1);
    assert_eq!(got.1["entries"][0]["id"], jti(&grandchild, 2).as_str());
    let audit = registry
        .audit_all(&format!("id={}", jti(&grandchild, 2)))
        .await;
    let actor = audit[0]["actor"].as_str().unwrap();
    assert_eq!(actor, format!("holder planner (key {})", k0.kid()));
    let start = Instant::now();
    while proxy_status(&proxy, &grandchild).await != 403 {
        assert!(start.elapsed() < Duration::from_secs(10), "never enforced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy_status(&proxy, &worker).await, 200, "its parent stays");
    assert_eq!(
        proxy_status(&proxy, &sibling).await,
        200,
        "the sibling stays"
    );

    // The same proof again is a replay.
    let proof = ask(&registry, &worker, 1, k1, None).await;
    assert_eq!(
        proof.0, 201,
        "an agent surrenders its own link: {}",
        proof.1
    );
    let again = ask(&registry, &worker, 1, k1, Some(&proof.2)).await;
    refused("a replayed proof", &again, 401, ErrorCode::PopInvalid);

    // The CLI: the sibling's own holder surrenders it.
    let files = TempDir::new("holder-revocation-files");
    let key_file = files.path().join("k1b.jwk");
    keyfile::write_signing_key(&key_file, k1b).unwrap();
    let out = Command::new(veto_bin())
        .env_remove("VETO_ADMIN_TOKEN")
        .env_remove("VETO_ADMIN_TOKEN_FILE")
        .args(["revoke", "--as-holder", "--registry", &registry.url])
        .args(["--chain", &sibling, "--link", "1", "--holder-key"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("revoked link 1"), "{said}");

    // Rate: 30 a minute per holder key (already-revoked links count too).
    let mut limited = None;
    for i in 0..40 {
        let got = ask(&registry, &grandchild, 2, k1, None).await;
        if got.0 == 429 {
            limited = Some((i, got));
            break;
        }
        assert_eq!(got.0, 200, "{}", got.1);
    }
    let (i, got) = limited.expect("never rate-limited");
    assert!(i <= 30, "limited only after {i}");
    refused("over the rate", &got, 429, ErrorCode::RateLimited);
}

/// A child of `parent`, signed by `key` (the parent's holder key, bound
/// again), whose `jti` is `jti`: what a delegator may write.
fn copied_jti_child(parent: &str, key: &SigningKey, jti: &str) -> String {
    let parent_link = ParsedChain::parse(parent).unwrap();
    let par = parent_link.leaf().claims();
    let claims = json!({
        "jti": jti,
        "iss": par.sub,
        "sub": "evil",
        "iat": now(),
        "nbf": now(),
        "exp": par.exp,
        "act": ["http:GET:/orders/*"],
        "cnf": {"jwk": key.public().to_jwk()},
        "par": par.jti,
    });
    let link = veto_core::jws::sign(
        veto_core::jws::Typ::Warrant,
        key,
        claims.to_string().as_bytes(),
    );
    format!("{parent}~{link}")
}

async fn proxy_status(proxy: &Proxy, chain: &str) -> u16 {
    reqwest::Client::new()
        .get(proxy.at("/orders/1"))
        .bearer_auth(chain)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
