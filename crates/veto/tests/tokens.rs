//! Named API tokens with scopes (DESIGN 5) against the real `veto serve`:
//! each scope allows exactly its endpoints, every use is attributed to
//! the token's name, and a revoked token stops working.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::process::Command;

use serde_json::{json, Value};
use veto_core::wire::{path, ErrorCode};
use veto_core::SigningKey;
use veto_testkit::{veto_bin, Registry};

/// An endpoint a token may be used on: what it is, method, path, body,
/// and the scope it needs (`None`: only the bootstrap admin token).
struct Endpoint {
    what: &'static str,
    method: reqwest::Method,
    path: &'static str,
    body: Option<Value>,
    needs: Option<&'static str>,
}

fn endpoints() -> Vec<Endpoint> {
    let holder = SigningKey::generate().unwrap();
    let e = |what, method, path, body, needs| Endpoint {
        what,
        method,
        path,
        body,
        needs,
    };
    vec![
        e(
            "revoke",
            reqwest::Method::POST,
            path::REVOCATIONS,
            Some(json!({"entries": [{"kind": "agent", "id": "someone", "before": 1}]})),
            Some("revoke"),
        ),
        e(
            "audit",
            reqwest::Method::GET,
            path::REVOCATIONS,
            None,
            Some("audit"),
        ),
        e(
            "mint",
            reqwest::Method::POST,
            path::WARRANTS,
            Some(
                json!({"agent": "a", "act": ["x:*"], "ttl": 60, "holder_key": holder.public().to_jwk()}),
            ),
            Some("mint"),
        ),
        e(
            "keys",
            reqwest::Method::GET,
            path::ISSUER_KEYS,
            None,
            Some("keys"),
        ),
        e(
            "fleet",
            reqwest::Method::GET,
            path::FLEET,
            None,
            Some("fleet"),
        ),
        e("tokens", reqwest::Method::GET, path::TOKENS, None, None),
    ]
}

async fn call(
    registry: &Registry,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = registry
        .http()
        .request(method, registry.at(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    registry.send(req).await
}

async fn create(registry: &Registry, name: &str, scopes: &[&str]) -> String {
    let (status, body) = registry
        .admin_post(path::TOKENS, &json!({"name": name, "scopes": scopes}))
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_allows_exactly_its_endpoints() {
    let registry = Registry::start(&[]);
    for scope in ["revoke", "mint", "audit", "keys", "fleet"] {
        let token = create(&registry, &format!("only-{scope}"), &[scope]).await;
        for Endpoint {
            what,
            method,
            path,
            body,
            needs,
        } in endpoints()
        {
            let (status, answer) = call(&registry, &token, method, path, body.as_ref()).await;
            if needs == Some(scope) {
                assert!(
                    (200..300).contains(&status),
                    "`{scope}` on {what}: {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "`{scope}` on {what}: {answer}");
                assert_eq!(answer["error"], ErrorCode::Forbidden.as_str());
                assert!(answer["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("only-{scope}")));
            }
        }
    }

    // Every use is attributed to the token's name; the body names nobody.
    let revoker = create(&registry, "incident-bot", &["revoke", "audit"]).await;
    let (status, _) = call(
        &registry,
        &revoker,
        reqwest::Method::POST,
        path::REVOCATIONS,
        Some(&json!({"entries": [{"kind": "warrant", "id": "stolen-1"}]})),
    )
    .await;
    assert_eq!(status, 201);
    let audit = registry.audit_all("id=stolen-1").await;
    assert_eq!(audit[0]["actor"], "incident-bot", "{audit:?}");
    let (status, body) = call(
        &registry,
        &revoker,
        reqwest::Method::POST,
        path::REVOCATIONS,
        Some(&json!({"entries": [{"kind": "warrant", "id": "stolen-2"}], "actor": "admin"})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json")),
        "{body}"
    );

    // Names are never reused; scopes are checked; only the bootstrap token
    // manages tokens.
    let (status, body) = registry
        .admin_post(
            path::TOKENS,
            &json!({"name": "incident-bot", "scopes": ["audit"]}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("name_taken")));
    let (status, body) = registry
        .admin_post(path::TOKENS, &json!({"name": "x", "scopes": ["root"]}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    for bad in ["", "admin", "has space", "a/b"] {
        let (status, body) = registry
            .admin_post(path::TOKENS, &json!({"name": bad, "scopes": ["audit"]}))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_name")),
            "{bad:?}"
        );
    }
    let (status, _) = call(
        &registry,
        &revoker,
        reqwest::Method::POST,
        path::TOKENS,
        Some(&json!({"name": "escalated", "scopes": ["keys"]})),
    )
    .await;
    assert_eq!(status, 403);

    // A revoked token stops at once; the list shows it, never a token.
    let (status, body) = registry
        .admin_delete(&format!("{}/incident-bot", path::TOKENS))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &registry,
        &revoker,
        reqwest::Method::GET,
        path::REVOCATIONS,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (_, list) = registry.admin_get(path::TOKENS).await;
    let listed = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "incident-bot")
        .unwrap();
    assert!(listed["revoked_at"].is_u64() && listed.get("token").is_none());
    assert!(!list.to_string().contains(&revoker));

    // The CLI.
    let out = Command::new(veto_bin())
        .env_remove("VETO_ADMIN_TOKEN")
        .args(["tokens", "create", "--name", "cli-bot", "--scope", "audit"])
        .args(["--registry", &registry.url, "--token-file"])
        .arg(registry.token_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, _) = call(
        &registry,
        &token,
        reqwest::Method::GET,
        path::REVOCATIONS,
        None,
    )
    .await;
    assert_eq!(status, 200);
}
