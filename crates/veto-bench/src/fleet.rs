//! `veto-bench fleet-receipts` and `veto-bench fleet-wait`: what gateway
//! reports cost the registry, and how long `veto revoke --wait` takes.
//!
//! `fleet-receipts`: a registry (`veto serve`, a child process) and
//! `--gateways` N gateway keys enrolled with its fleet token; each sends a
//! signed report (`veto-report+jwt`, made by this process) every
//! `--interval`, the N spread evenly over it, for `--duration`. Measured:
//! the registry's CPU seconds and RSS over the run, reports accepted per
//! second and request bytes per second (report bodies; HTTP headers not
//! counted).
//!
//! `fleet-wait`: a registry and `--gateways` N in-process authorizers
//! (SSE push, polling hourly) that enrol and report like `veto proxy
//! --name`. Per revocation (one at a time, `--interval-ms` apart): time
//! from the `201` to the moment `GET /v1/fleet` (read every 5 ms, as
//! `veto revoke --wait` does every 20 ms) shows every gateway at or above
//! its version; and the registry's own figure, `last_after_ms` of
//! `GET /v1/fleet/versions/N` (commit → the last gateway's report).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};
use veto_authorizer::{Authorizer, Config, FleetConfig};
use veto_core::report::{self, ReportPayload};
use veto_core::wire::path;
use veto_core::{keyfile, KeySet, SigningKey};

use crate::propagation::revoke_id;
use crate::registry::Registry;
use crate::stats::{percentile, random_jti, sorted};
use crate::Common;

/// Arguments of `veto-bench fleet-receipts`.
#[derive(Args, Debug)]
pub(crate) struct ReceiptsArgs {
    /// Gateways reporting.
    #[arg(long, default_value_t = 1000)]
    gateways: usize,
    /// Seconds between one gateway's reports.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Seconds to measure.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `veto-bench fleet-wait`.
#[derive(Args, Debug)]
pub(crate) struct WaitArgs {
    /// In-process gateways (authorizers reporting to the fleet).
    #[arg(long, default_value_t = 100)]
    gateways: usize,
    /// Revocations to wait for, one at a time.
    #[arg(long, default_value_t = 50)]
    revocations: usize,
    /// Pause before each revocation, in milliseconds (more than the
    /// reporters' 100 ms least gap, so each revocation is reported at once).
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    #[command(flatten)]
    common: Common,
}

fn fleet_token(reg: &Registry) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(reg.dir.join("fleet.token"))
        .context("reading the registry's fleet token")?
        .trim()
        .to_owned())
}

/// Runs `veto-bench fleet-receipts`.
pub(crate) async fn receipts(a: ReceiptsArgs) -> anyhow::Result<()> {
    if a.gateways == 0 || a.interval == 0 || a.duration == 0 {
        bail!("--gateways, --interval and --duration must be at least 1");
    }
    let veto = a.common.veto_path()?;
    let reg = Registry::start(&veto, a.common.keep_data).await?;
    let client = reg.client()?;
    let token = fleet_token(&reg)?;
    println!("== veto-bench fleet-receipts ==");
    println!("registry        : pid {} at {}", reg.pid(), reg.base);
    let mut keys = Vec::with_capacity(a.gateways);
    for i in 0..a.gateways {
        let key = SigningKey::generate()?;
        let resp = client
            .post(format!("{}{}", reg.base, path::FLEET_GATEWAYS))
            .bearer_auth(&token)
            .json(&json!({"name": format!("gw-{i}"), "key": key.public().to_jwk()}))
            .send()
            .await?;
        if resp.status() != 201 {
            bail!("enrolling gateway {i}: {}", resp.text().await?);
        }
        keys.push(key);
    }
    println!(
        "gateways        : {} enrolled, a report each every {} s",
        a.gateways, a.interval
    );
    let spread = Duration::from_secs(a.interval).as_secs_f64() / a.gateways as f64;
    let cpu0 = reg.cpu_secs()?;
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration);
    let (mut sent, mut refused, mut bytes, mut seq) = (0u64, 0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    'run: loop {
        seq += 1;
        for (i, key) in keys.iter().enumerate() {
            let due = start
                + Duration::from_secs_f64(spread * i as f64)
                + Duration::from_secs(a.interval * (seq - 1));
            if due >= end {
                break 'run;
            }
            tokio::time::sleep_until(due.into()).await;
            let payload = ReportPayload {
                aud: "veto".into(),
                name: format!("gw-{i}"),
                iat: veto_testkit::now(),
                seq,
                ver: 0,
                head: "AAAA".into(),
                fresh: true,
                staleness_s: Some(1),
                fresh_until: Some(veto_testkit::now() + 299),
                push: "sse".into(),
                push_connected: true,
                policy: "fail-closed".into(),
                error: None,
                interval_s: a.interval,
                veto: env!("CARGO_PKG_VERSION").into(),
            };
            let jws = report::sign(key, &payload);
            bytes += jws.len() as u64;
            let t = Instant::now();
            let resp = client
                .post(format!("{}{}", reg.base, path::FLEET_REPORTS))
                .header("content-type", "application/jose")
                .body(jws)
                .send()
                .await?;
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            if resp.status() == 204 {
                sent += 1;
            } else {
                refused += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = reg.cpu_secs()? - cpu0;
    let rss = reg.rss_kib()?;
    let lat = sorted(latencies);
    println!("duration        : {secs:.1} s");
    println!(
        "reports         : {sent} accepted ({:.0}/s), {refused} refused",
        sent as f64 / secs
    );
    println!(
        "report bytes    : {:.1} KiB/s ({} bytes per report)",
        bytes as f64 / secs / 1024.0,
        bytes / (sent + refused).max(1)
    );
    println!(
        "registry CPU    : {cpu:.2} s over {secs:.1} s = {:.1}% of one core; {:.0} µs per report",
        cpu / secs * 100.0,
        cpu / sent.max(1) as f64 * 1e6
    );
    println!(
        "registry RSS    : {:.1} MiB at the end",
        rss as f64 / 1024.0
    );
    println!(
        "report latency  : p50 {:.2} ms, p99 {:.2} ms (POST to 204, one at a time)",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    reg.stop().await
}

/// Runs `veto-bench fleet-wait`.
pub(crate) async fn wait(a: WaitArgs) -> anyhow::Result<()> {
    if a.gateways == 0 || a.revocations == 0 {
        bail!("--gateways and --revocations must be at least 1");
    }
    let veto = a.common.veto_path()?;
    let reg = Registry::start(&veto, a.common.keep_data).await?;
    let client = reg.client()?;
    let token = fleet_token(&reg)?;
    let key = keyfile::read_public_key(&reg.authority_pub())?;
    println!("== veto-bench fleet-wait ==");
    println!("registry        : pid {} at {}", reg.pid(), reg.base);
    let mut authzs = Vec::with_capacity(a.gateways);
    for i in 0..a.gateways {
        let mut c = Config::new(&reg.base, "veto", KeySet::new([key.clone()]));
        c.poll_interval = Duration::from_secs(3600);
        c.pop.policy = veto_authorizer::PopPolicy::Off;
        c.fleet = Some(FleetConfig::new(
            format!("gw-{i}"),
            Arc::new(SigningKey::generate()?),
            Some(token.clone()),
        ));
        authzs.push(Authorizer::start(c).await?);
    }
    let fleet = |client: reqwest::Client| {
        let url = format!("{}{}", reg.base, path::FLEET);
        let token = reg.token.clone();
        async move {
            let v: Value = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f = fleet(client.clone()).await?;
        let live = f["gateways"]
            .as_array()
            .map_or(0, |g| g.iter().filter(|g| g["state"] == "live").count());
        if live == a.gateways {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {live} of {} gateways live after 60 s", a.gateways);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "gateways        : {} in-process authorizers, live",
        a.gateways
    );
    let (mut client_ms, mut registry_ms) = (Vec::new(), Vec::new());
    for _ in 0..a.revocations {
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
        let (ver, _sent, acked) = revoke_id(&client, &reg, &random_jti()?).await?;
        let deadline = acked + Duration::from_secs(30);
        loop {
            let f = fleet(client.clone()).await?;
            let all = f["gateways"].as_array().is_some_and(|g| {
                g.iter()
                    .all(|g| g["applied_version"].as_u64().unwrap_or(0) >= ver)
            });
            if all {
                client_ms.push(acked.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!("version {ver} not in force at every gateway after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let v: Value = client
            .get(format!("{}{}/{ver}", reg.base, path::FLEET_VERSIONS))
            .bearer_auth(&reg.token)
            .send()
            .await?
            .json()
            .await?;
        if let Some(ms) = v["last_after_ms"].as_u64() {
            registry_ms.push(ms as f64);
        }
    }
    let (c, r) = (sorted(client_ms), sorted(registry_ms));
    println!(
        "revoke --wait   : p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (201 -> every gateway's report seen in GET /v1/fleet, read every 5 ms; {} revocations)",
        percentile(&c, 0.50),
        percentile(&c, 0.99),
        c.last().copied().unwrap_or(0.0),
        c.len()
    );
    println!(
        "registry's view : p50 {:.1} ms, p99 {:.1} ms (commit -> the last gateway's report, GET /v1/fleet/versions/N)",
        percentile(&r, 0.50),
        percentile(&r, 0.99)
    );
    for z in &authzs {
        z.shutdown();
    }
    reg.stop().await
}
