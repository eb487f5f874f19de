//! The registry's admin request bodies (`POST /v1/revocations`,
//! `POST /v1/warrants`), through the same parsing and validation the
//! handlers use. Included by the fuzz crate and by veto-registry's
//! `tests/fuzz_seeds.rs` (`#[path]`).
//!
//! Invariants: an accepted revocation body is a JSON object whose `entries`
//! array has the returned length, 1 to 10,000; every refusal is a 400 with a code and a message;
//! parsing is deterministic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use veto_registry::{parse_mint_body, parse_revocation_body};

/// The vectors' "now".
const NOW: u64 = 1_800_000_000;

/// One input.
pub fn run(data: &[u8]) {
    let revoke = parse_revocation_body(data, NOW);
    assert_eq!(revoke, parse_revocation_body(data, NOW), "deterministic");
    match &revoke {
        Ok(n) => {
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted body is JSON");
            let entries = v["entries"]
                .as_array()
                .expect("accepted body has `entries`");
            assert_eq!(entries.len(), *n);
            assert!((1..=10_000).contains(n));
        }
        Err(e) => assert!(e.status() == 400 && !e.message().is_empty(), "{e}"),
    }
    match parse_mint_body(data) {
        Ok(kid) => {
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted body is JSON");
            assert!(v["holder_key"].is_object() && kid.len() == 43, "{kid}");
            assert!(v["ttl"].as_u64().is_some_and(|t| t > 0));
        }
        Err(e) => assert!(e.status() == 400 && !e.message().is_empty(), "{e}"),
    }
}
