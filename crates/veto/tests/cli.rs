#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! The `veto` command line against a real registry: ids that look like
//! flags, and answers read strictly.

mod common;

use common::{veto_command, Registry};

fn veto(reg: &Registry, args: &[&str]) -> std::process::Output {
    veto_command(reg.dir().path())
        .args(args)
        .args(["--registry", &reg.url, "--token-file"])
        .arg(reg.token_file())
        .output()
        .unwrap()
}

/// A base64url `jti` or thumbprint starts with `-` one time in 64, and an
/// agent id may too: each is taken as the value, never as a flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_start_with_a_hyphen_are_values_not_flags() {
    let reg = Registry::start(&[]);
    for (kind, id) in [
        ("warrant", "-hXYZ_0123456789abcdef"),
        ("warrant", "-abcDEF_123"),
        ("warrant", "--Xy3_abcdefghijklmnop"),
        ("warrant", "-"),
        ("key", "-V"),
        ("agent", "-worker"),
    ] {
        let out = veto(
            &reg,
            &["revoke", kind, id, "--reason", "superseded", "--note", "-n"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "revoke {kind} {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("revoked {kind} `{id}` in version")),
            "revoke {kind} {id}: {stdout}"
        );
        let out = veto(&reg, &["revocations", "list", "--kind", kind, "--id", id]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "list --id {id}: {stdout}");
        assert!(stdout.contains(id), "list --id {id}: {stdout}");
    }
    // Exactly `-h` is the help flag; after `--` it is an id like any other.
    let out = veto_command(reg.dir().path())
        .args(["revoke", "warrant", "--note", "-n", "--registry", &reg.url])
        .arg("--token-file")
        .arg(reg.token_file())
        .args(["--", "-h"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked warrant `-h` in version"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = reg.admin_get("/v1/revocations?kind=warrant&id=-h").await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["note"], "-n", "{body}");
}

/// An answer that is not a veto registry's is an error, not an empty id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_the_fields_is_an_error() {
    let reg = Registry::start(&[]);
    let upstream = common::ok_upstream().await;
    let out = veto_command(reg.dir().path())
        .args(["revoke", "warrant", "abc", "--registry", &upstream])
        .args(["--token", "0123456789abcdef0123456789abcdef"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is `--registry` a veto registry"),
        "{stderr}"
    );
}
