#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests and benchmarks: a failed step fails the run"
)]
//! Replays the `admin_json` fuzz seeds (`fuzz/seeds/admin_json/`) on the
//! stable toolchain through exactly the checks the cargo-fuzz target runs
//! (`fuzz/src/admin.rs`, included here), and pins what the request parsers
//! answer for them.

use std::path::Path;

use veto_core::wire::ErrorCode;
use veto_registry::{parse_mint_body, parse_revocation_body};

#[path = "../../../fuzz/src/admin.rs"]
mod admin;

#[test]
fn admin_json_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/admin_json");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| admin::run(&bytes));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn request_parsers_answer_like_the_handlers() {
    let now = 1_800_000_000;
    let ok = br#"{"entries":[{"kind":"warrant","id":"w"},{"kind":"agent","id":"a","before":1}]}"#;
    assert_eq!(parse_revocation_body(ok, now), Ok(2));
    let missing_before = br#"{"entries":[{"kind":"agent","id":"a"}]}"#;
    assert!(
        parse_revocation_body(missing_before, now)
            .unwrap_err()
            .code()
            == ErrorCode::MissingBefore
    );
    assert!(parse_revocation_body(b"{", now).unwrap_err().code() == ErrorCode::InvalidJson);
    let past = br#"{"entries":[{"kind":"key","id":"k","expires_at":1800000000}]}"#;
    assert!(parse_revocation_body(past, now).unwrap_err().code() == ErrorCode::InvalidExpiresAt);
    let holder =
        br#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    let body = [
        &br#"{"agent":"a","act":["tool:*"],"ttl":60,"holder_key":"#[..],
        &holder[..],
        b"}",
    ]
    .concat();
    assert_eq!(
        parse_mint_body(&body).map(|kid| kid.len()),
        Ok(43),
        "a thumbprint"
    );
    // Every warrant binds a holder key: its holder proves it on every request.
    assert!(
        parse_mint_body(br#"{"agent":"a","act":["tool:*"],"ttl":60}"#)
            .unwrap_err()
            .code()
            == ErrorCode::InvalidHolderKey
    );
    assert!(
        parse_mint_body(br#"{"agent":"a","act":["tool:*"],"ttl":0}"#)
            .unwrap_err()
            .code()
            == ErrorCode::InvalidTtl
    );
}
