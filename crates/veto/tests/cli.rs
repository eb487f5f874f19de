#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! The `veto` command line against a real registry: ids that look like
//! flags, and answers read strictly.

use veto_core::wire::path;
use veto_testkit::{veto_command, Registry};

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
    let (_, body) = reg
        .admin_get(&format!("{}?kind=warrant&id=-h", path::REVOCATIONS))
        .await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["note"], "-n", "{body}");
}

/// An answer that is not a veto registry's is an error, not an empty id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_the_fields_is_an_error() {
    let reg = Registry::start(&[]);
    let upstream = veto_testkit::ok_upstream().await;
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

/// Output of one `veto` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `veto ARGS` against `reg` through the environment, as the README
/// does (`VETO_REGISTRY`, `VETO_ADMIN_TOKEN_FILE`), in `cwd`.
fn run(reg: &Registry, cwd: &std::path::Path, args: &[&str]) -> Run {
    let out = veto_command(reg.dir().path())
        .current_dir(cwd)
        .env("VETO_REGISTRY", &reg.url)
        .env("VETO_ADMIN_TOKEN_FILE", reg.token_file())
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every command of the README's "Running it for real", with its exit
/// code and what it prints, against a real registry; and the refusals a
/// user meets: widening or outliving delegation, an unknown reason, a
/// wrong authority key, garbage to inspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_with_its_exit_code_and_output() {
    let reg = Registry::start(&[]);
    let work = veto_testkit::TempDir::new("cli-work");
    let cwd = work.path();
    let ok = |r: &Run, what: &str| {
        assert_eq!(r.code, 0, "{what}: {}{}", r.stdout, r.stderr);
    };
    let fails = |r: &Run, what: &str, names: &str| {
        assert_eq!(r.code, 1, "{what} must fail: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(names),
            "{what}: `{}` does not name `{names}`",
            r.stderr
        );
    };

    // keys generate / show
    let r = run(
        &reg,
        cwd,
        &[
            "keys",
            "generate",
            "--out",
            "planner.jwk",
            "--public-out",
            "planner.pub.jwk",
        ],
    );
    ok(&r, "keys generate");
    let kid = r.stdout.trim().to_owned();
    assert_eq!(kid.len(), 43, "a thumbprint: {kid}");
    let r = run(&reg, cwd, &["keys", "generate", "--out", "planner.jwk"]);
    fails(&r, "keys generate over an existing file", "exists already");
    let r = run(&reg, cwd, &["keys", "show", "planner.jwk"]);
    ok(&r, "keys show");
    let shown: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(shown["kid"], kid.as_str());
    assert!(
        shown.get("d").is_none(),
        "keys show must not print the private part: {shown}"
    );
    let r = run(&reg, cwd, &["keys", "list"]);
    ok(&r, "keys list");
    let listed: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["trusted"], true);

    // issue, delegate, inspect
    let r = run(
        &reg,
        cwd,
        &[
            "issue",
            "--agent",
            "planner",
            "--act",
            "http:*:/orders/*",
            "--ttl",
            "1h",
            "--holder-key",
            "planner.jwk",
        ],
    );
    ok(&r, "issue");
    let root = r.stdout.trim().to_owned();
    assert_eq!(
        veto_core::ParsedChain::parse(&root).unwrap().links().len(),
        1
    );
    std::fs::write(cwd.join("root.chain"), &root).unwrap();
    let r = run(
        &reg,
        cwd,
        &[
            "delegate",
            "--parent",
            "@root.chain",
            "--holder-key",
            "planner.jwk",
            "--agent",
            "worker",
            "--act",
            "http:GET:/orders/*",
            "--ttl",
            "10m",
        ],
    );
    ok(&r, "delegate");
    let child = r.stdout.trim().to_owned();
    let parsed = veto_core::ParsedChain::parse(&child).unwrap();
    assert_eq!(parsed.links().len(), 2);
    assert_eq!(parsed.leaf().claims().sub, "worker");
    // Refused delegations: (what, holder key, act, ttl, what the error names).
    for (what, key, act, ttl, names) in [
        (
            "a widening delegation",
            "planner.jwk",
            "http:*:/*",
            "10m",
            "may only narrow",
        ),
        (
            "an outliving delegation",
            "planner.jwk",
            "http:GET:/orders/*",
            "10h",
            "after its parent",
        ),
        (
            "delegating with a public key",
            "planner.pub.jwk",
            "http:GET:/orders/*",
            "1m",
            "private",
        ),
    ] {
        let r = run(
            &reg,
            cwd,
            &[
                "delegate",
                "--parent",
                &root,
                "--holder-key",
                key,
                "--act",
                act,
                "--ttl",
                ttl,
            ],
        );
        fails(&r, what, names);
    }
    let r = run(&reg, cwd, &["inspect", &child]);
    ok(&r, "inspect");
    assert!(
        r.stdout.contains("chain of 2 link(s)") && r.stdout.contains("sub  worker"),
        "{}",
        r.stdout
    );
    let r = run(&reg, cwd, &["inspect", "not-a-chain"]);
    fails(&r, "inspect garbage", "malformed");

    // revoke, revocations list
    let jti = parsed.leaf().claims().jti.clone();
    let r = run(
        &reg,
        cwd,
        &["revoke", "warrant", &jti, "--reason", "key_compromise"],
    );
    ok(&r, "revoke");
    assert!(
        r.stdout
            .starts_with(&format!("revoked warrant `{jti}` in version 1")),
        "{}",
        r.stdout
    );
    let r = run(&reg, cwd, &["revoke", "warrant", &jti]);
    ok(&r, "revoke again");
    assert!(
        r.stdout.contains("was already revoked in version 1"),
        "{}",
        r.stdout
    );
    let r = run(&reg, cwd, &["revoke", "warrant", "x", "--reason", "bogus"]);
    fails(&r, "an unknown reason", "unknown reason `bogus`");
    let r = run(&reg, cwd, &["revoke", "warrant", "x", "--before", "now"]);
    fails(
        &r,
        "--before on a warrant",
        "--before applies only to agents",
    );
    let r = run(
        &reg,
        cwd,
        &[
            "revoke",
            "agent",
            "worker",
            "--before",
            "now",
            "--reason",
            "privilege_withdrawn",
        ],
    );
    ok(&r, "revoke agent");
    let r = run(&reg, cwd, &["revocations", "list", "--kind", "warrant"]);
    ok(&r, "revocations list");
    assert!(
        r.stdout.contains(&jti) && r.stdout.contains("key_compromise"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("privilege_withdrawn"),
        "filtered by kind: {}",
        r.stdout
    );

    // srl show: verified against the pinned key, refused against another
    let authority = reg.authority_key_file();
    let r = run(
        &reg,
        cwd,
        &[
            "srl",
            "show",
            "--authority-key",
            authority.to_str().unwrap(),
        ],
    );
    ok(&r, "srl show");
    assert!(
        r.stdout.contains("snapshot (verified): version 2"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("1 warrants, 1 agents, 0 keys"),
        "{}",
        r.stdout
    );
    let r = run(
        &reg,
        cwd,
        &["srl", "show", "--authority-key", "planner.pub.jwk"],
    );
    fails(
        &r,
        "srl show with the wrong authority key",
        "does not verify against the pinned key",
    );

    // A gateway never pins the authority's private key file.
    let private = reg.data_dir().join("authority.jwk");
    let r = run(
        &reg,
        cwd,
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--authority-key",
            private.to_str().unwrap(),
        ],
    );
    fails(
        &r,
        "a proxy given the private authority key",
        "holds a private key",
    );

    // Without a token, the admin commands say where to find one.
    let out = veto_command(reg.dir().path())
        .current_dir(cwd)
        .env("VETO_REGISTRY", &reg.url)
        .args(["revoke", "warrant", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin token"));
}

/// `veto demo`, the README's first command: the whole product on loopback,
/// ending with the child and the parent denied after the revocation.
#[test]
fn the_demo_runs_end_to_end() {
    let home = veto_testkit::TempDir::new("cli-demo");
    let out = veto_command(home.path()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "planner GET /orders/42 -> 200",
        "worker  GET /orders/42 -> 200",
        "worker  POST /orders/42 -> 403",
        "revocation acknowledged (durable)",
        "worker  denied",
        "planner denied",
        "-> 403 {\"error\":\"revoked\"",
    ] {
        assert!(stdout.contains(line), "`{line}` missing from:\n{stdout}");
    }
}
