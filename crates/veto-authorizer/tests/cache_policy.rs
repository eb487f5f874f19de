//! What the verified-chain cache keeps, seen through the public API: the
//! `veto_authorizer_chain_cache_chains` gauge. No registry is reachable, so
//! the state is never attested: every chain that passes every other check
//! is denied `stale` (and kept: it is allowed again once the registry is
//! heard from), while a chain denied for its action or its expiry is not
//! kept, and a kept chain that expires gives its room back.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test: a failed step fails the run"
)]

use std::sync::Arc;
use std::time::Duration;

use veto_authorizer::{Authorizer, Config, Issuers, Push};
use veto_core::{
    warrant, Clock as _, DenyReason, KeySet, LinkSpec, ManualClock, SigningKey, SystemClock,
};

const ISS: &str = "veto-test";

fn chains(authz: &Authorizer) -> f64 {
    let text = authz.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix("veto_authorizer_chain_cache_chains "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no chain cache gauge in:\n{text}"))
}

#[tokio::test]
async fn only_chains_that_can_be_allowed_again_are_kept() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let now = clock.now();
    let issuer = SigningKey::generate().unwrap();
    let authority = SigningKey::generate().unwrap();
    // Nothing listens on the discard port: the state is never attested.
    let mut config = Config::new(
        "http://127.0.0.1:9",
        ISS,
        KeySet::new([authority.public().clone()]),
    );
    config.issuers = Issuers::Pinned(KeySet::new([issuer.public().clone()]));
    config.push = Push::Off;
    config.pop.policy = veto_authorizer::PopPolicy::Off;
    config.poll_interval = Duration::from_secs(3600);
    config.check.issuer = Some(ISS.into());
    let authz = Authorizer::start_with_clock(config, clock.clone())
        .await
        .unwrap();
    let mint = |act: &str, exp: u64| {
        warrant::mint_root(
            &issuer,
            ISS,
            LinkSpec {
                sub: "agent".into(),
                act: vec![act.into()],
                iat: now - 10,
                exp,
                holder: None,
            },
        )
        .unwrap()
    };
    let action = "http:GET:/orders/7";

    // Passes every check but freshness: denied `stale`, kept.
    let good = mint("http:GET:/orders/*", now + 60);
    let d = authz.check(&good, action).decision;
    assert_eq!(d.reason(), Some(DenyReason::Stale), "{d:?}");
    assert_eq!(chains(&authz), 1.0);
    // A hit: same answer.
    assert_eq!(
        authz.check(&good, action).decision.reason(),
        Some(DenyReason::Stale)
    );

    // Verified, but denied for its action: not kept.
    let narrow = mint("http:GET:/other/*", now + 60);
    let d = authz.check(&narrow, action);
    assert_eq!(d.decision.reason(), Some(DenyReason::ActionDenied));
    assert!(d.chain.is_some(), "the chain verified");
    assert_eq!(chains(&authz), 1.0);

    // Expired: not kept.
    let expired = mint("http:GET:/orders/*", now - 1);
    assert_eq!(
        authz.check(&expired, action).decision.reason(),
        Some(DenyReason::Expired)
    );
    assert_eq!(chains(&authz), 1.0);

    // The kept chain expires: the next check drops it.
    clock.advance(120);
    assert_eq!(
        authz.check(&good, action).decision.reason(),
        Some(DenyReason::Expired)
    );
    assert_eq!(chains(&authz), 0.0);
    authz.shutdown();
}
