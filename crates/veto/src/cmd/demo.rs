//! `veto demo`: the whole product on loopback, in one command. A registry
//! in a temporary directory, a small upstream, and a proxy; a warrant and a
//! delegated child; allowed calls; the parent revoked; and the measured
//! time until the proxy denies the child and the parent.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use reqwest::header::AUTHORIZATION;
use serde_json::json;
use veto_authorizer::{Authorizer, Config as AuthzConfig};
use veto_core::dpop::{self, ProofSpec};
use veto_core::wire::{header, path};
use veto_core::{warrant, KeySet, LinkSpec, SigningKey};
use veto_proxy::ProxyConfig;
use veto_registry::{Config as RegistryConfig, Registry};

use crate::util;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary data directory (its path is printed).
    #[arg(long)]
    keep: bool,
}

struct TempDir(std::path::PathBuf, bool);

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(demo(a))
}

async fn bind() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("veto-demo-{}-{}", std::process::id(), util::now()));
    let tmp = TempDir(dir.clone(), a.keep);

    // 1. The registry, on the embedded default (SQLite + SSE).
    let mut rc = RegistryConfig::new(&dir);
    rc.heartbeat = Duration::from_secs(1);
    let registry = Registry::open(rc).await.context("starting the registry")?;
    let token = std::fs::read_to_string(registry.admin_token_path().context("admin token")?)?
        .trim()
        .to_owned();
    let authority = registry.authority_key().clone();
    let iss = registry.iss().to_owned();
    let reg_listener = bind().await?;
    let reg_url = format!("http://{}", reg_listener.local_addr()?);
    tokio::spawn(registry.serve(reg_listener, std::future::pending()));

    // 2. A small upstream that says who called it.
    let up_listener = bind().await?;
    let up_url = format!("http://{}", up_listener.local_addr()?);
    let upstream = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let agent = headers
            .get(header::AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        format!("hello {agent}\n")
    });
    tokio::spawn(async move { axum::serve(up_listener, upstream).await });

    // 3. The proxy, with the authorizer inside, pinned to the authority key.
    let mut ac = AuthzConfig::new(&reg_url, &iss, KeySet::new([authority]));
    ac.check.issuer = Some(iss.clone());
    let authz = Authorizer::start(ac).await?;
    let px_listener = bind().await?;
    let px_url = format!("http://{}", px_listener.local_addr()?);
    let admin_listener = bind().await?;
    tokio::spawn(veto_proxy::serve(
        authz.clone(),
        ProxyConfig::new(up_url.parse()?),
        px_listener,
        admin_listener,
        std::future::pending(),
    ));
    println!(
        "veto demo (everything on loopback, data in {})",
        tmp.0.display()
    );
    println!("  registry  {reg_url}\n  upstream  {up_url}\n  proxy     {px_url}");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    loop {
        let s = authz.status();
        if s.fresh && s.push_connected {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the proxy did not sync with the registry within 10 s: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 4. A root warrant for the planner agent, minted by the registry, and
    //    a narrower child delegated offline to a worker agent.
    let planner_key = SigningKey::generate()?;
    let worker_key = SigningKey::generate()?;
    let resp: serde_json::Value = http
        .post(format!("{reg_url}{}", path::WARRANTS))
        .bearer_auth(&token)
        .json(&json!({"agent": "planner", "act": ["http:*:/orders/*"], "ttl": 3600, "holder_key": planner_key.public().to_jwk()}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let root = resp["warrant"].as_str().context("no warrant")?.to_owned();
    let root_jti = resp["jti"].as_str().context("no jti")?.to_owned();
    let now = util::now();
    let child = warrant::delegate(
        &root,
        &planner_key,
        LinkSpec {
            sub: "worker".into(),
            act: vec!["http:GET:/orders/*".into()],
            iat: now,
            exp: now + 600,
            holder: Some(worker_key.public().clone()),
        },
    )?;
    println!("\nminted a root warrant for `planner` (http:*:/orders/*) and delegated `worker` (http:GET:/orders/*)");

    // Every call proves the leaf's holder key with a fresh DPoP proof
    // (RFC 9449), as `veto request` does.
    let call = |method: reqwest::Method, chain: String, key: Option<SigningKey>| {
        let http = http.clone();
        let url = format!("{px_url}/orders/42");
        async move {
            let mut req = http.request(method.clone(), &url);
            req = match key {
                Some(key) => {
                    let proof = dpop::make(
                        &key,
                        &ProofSpec {
                            method: method.as_str(),
                            url: &url,
                            chain: &chain,
                            iat: util::now(),
                            nonce: None,
                        },
                    )?;
                    req.header(AUTHORIZATION, format!("DPoP {chain}"))
                        .header(header::DPOP, proof)
                }
                None => req.bearer_auth(&chain),
            };
            let r = req.send().await?;
            let status = r.status().as_u16();
            let body = r.text().await?;
            Ok::<_, anyhow::Error>((status, body))
        }
    };
    let planner = Some(planner_key.clone());
    let worker = Some(worker_key.clone());
    for (who, method, chain, key) in [
        (
            "planner",
            reqwest::Method::GET,
            root.clone(),
            planner.clone(),
        ),
        (
            "worker ",
            reqwest::Method::GET,
            child.clone(),
            worker.clone(),
        ),
        (
            "worker ",
            reqwest::Method::POST,
            child.clone(),
            worker.clone(),
        ),
    ] {
        let (status, body) = call(method.clone(), chain, key).await?;
        println!("  {who} {method:<4} /orders/42 -> {status} {}", body.trim());
    }
    let (status, body) = call(reqwest::Method::GET, child.clone(), None).await?;
    println!(
        "  the worker's chain replayed without its key -> {status} {}",
        body.trim()
    );

    // 5. Revoke the parent. One entry; every descendant goes with it.
    println!("\nrevoking the planner's root warrant `{root_jti}` ...");
    let t0 = Instant::now();
    let resp = http
        .post(format!("{reg_url}{}", path::REVOCATIONS))
        .bearer_auth(&token)
        .json(&json!({"entries": [{"kind": "warrant", "id": root_jti, "reason": "privilege_withdrawn"}]}))
        .send()
        .await?;
    let acked = t0.elapsed();
    if !resp.status().is_success() {
        bail!("revocation refused: {}", resp.text().await?);
    }
    let acked_at = Instant::now();
    let mut child_denied = None;
    let mut parent_denied = None;
    while child_denied.is_none() || parent_denied.is_none() {
        if acked_at.elapsed() > Duration::from_secs(30) {
            bail!("the proxy still allowed a revoked chain 30 s after the revocation");
        }
        if child_denied.is_none()
            && call(reqwest::Method::GET, child.clone(), worker.clone())
                .await?
                .0
                == 403
        {
            child_denied = Some(acked_at.elapsed());
        }
        if parent_denied.is_none()
            && call(reqwest::Method::GET, root.clone(), planner.clone())
                .await?
                .0
                == 403
        {
            parent_denied = Some(acked_at.elapsed());
        }
    }
    let (status, body) = call(reqwest::Method::GET, child.clone(), worker.clone()).await?;
    println!(
        "  revocation acknowledged (durable) in {:.2} ms",
        acked.as_secs_f64() * 1e3
    );
    println!(
        "  worker  denied {:.2} ms after the acknowledgement",
        child_denied.unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  planner denied {:.2} ms after the acknowledgement",
        parent_denied.unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("  worker  GET  /orders/42 -> {status} {}", body.trim());
    let s = authz.status();
    println!(
        "\nproxy state: version {}, fresh {}, push connected {}",
        s.version, s.fresh, s.push_connected
    );
    println!("For comparison: Clawdentity polls its CRL every 5 minutes; Tenuo polls its SRL every 30 s.");
    Ok(())
}
