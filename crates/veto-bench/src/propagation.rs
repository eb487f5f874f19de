//! `veto-bench propagation`: how long after a revocation is acknowledged
//! an authorizer enforces it.
//!
//! In-process mode (default): a registry (`veto serve`, a child process)
//! and `--authorizers` N [`veto_authorizer::Authorizer`]s in this process,
//! pushed to over SSE (default) or NATS JetStream (`--bus`), each polling
//! only every 3,600 s so that nothing but push can explain a delivery.
//! Once every authorizer is fresh, connected and has applied a warm-up
//! revocation, `--revocations` revocations of random ids are made one at a
//! time, `--interval-ms` apart, from a dedicated thread (its own runtime,
//! so the acknowledgement time is not queued behind the authorizers'
//! tasks). For every (authorizer, revocation) pair, latency = the time
//! that authorizer's `versions()` watch first showed a version ≥ the
//! revocation's − the time the POST's `201` arrived. The registry pushes
//! before it answers, so a pair can come out slightly negative.
//!
//! `--proxy` mode: a real `veto proxy` (a child process, polling every
//! 3,600 s) in front of an in-process upstream. One warrant per
//! revocation is minted up front. Per round: a dedicated thread requests
//! `GET /` through the proxy with that round's warrant until it gets `200`
//! (the proxy has verified and cached the chain), then every
//! `--poll-us` µs until the proxy answers `403 revoked`; meanwhile the
//! warrant is revoked. Latency = the time the first `403 revoked`
//! arrived − the time the revocation's `201` arrived.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;
use veto_authorizer::{Authorizer, Config, Push};
use veto_core::wire::{nats, path};
use veto_core::{keyfile, KeySet};

use crate::fanout::{revoke_sequentially, Sent};
use crate::pg::Schema;
use crate::proxy::Proxy;
use crate::registry::{own_cpu_secs, Registry, ServeOpts};
use crate::stats::{percentile, random_jti, signed_ms, sorted};
use crate::Common;
use veto_testkit::Upstream;

const TARGET_P99_MS: f64 = 100.0;
/// Authorizers poll this rarely: only push explains a delivery.
const POLL: Duration = Duration::from_secs(3600);

/// Arguments of `veto-bench propagation`.
#[derive(Args, Debug)]
pub(crate) struct PropagationArgs {
    /// In-process authorizers (ignored with --proxy, which measures one proxy).
    #[arg(long, default_value_t = 1)]
    authorizers: usize,
    /// Revocations to make, one at a time.
    #[arg(long, default_value_t = 100)]
    revocations: usize,
    /// Pause before each revocation, in milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Push over NATS JetStream at this URL (`nats://127.0.0.1:4222`)
    /// instead of SSE. The stream `VETO_SRL` is deleted first.
    #[arg(long)]
    bus: Option<String>,
    /// A PEM bundle of CA certificates for a `tls://` --bus.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Start a `nats-server` of the bench's own with TLS (a throwaway CA)
    /// and JetStream on a free port, and push over `tls://` to it
    /// (replaces --bus and --ca-file).
    #[arg(long, conflicts_with_all = ["bus", "ca_file"])]
    nats_tls: bool,
    /// Keep the registry's state in PostgreSQL (`postgres://...`), in a
    /// fresh schema dropped afterwards.
    #[arg(long)]
    store: Option<String>,
    /// Measure a real `veto proxy` instead of in-process authorizers.
    #[arg(long)]
    proxy: bool,
    /// Measure twice in this run, the registry on plain HTTP and then on
    /// HTTPS (a certificate from a CA made for the run, which the
    /// authorizers trust as `--ca-file`): pushes over SSE on TLS.
    #[arg(long, conflicts_with_all = ["proxy", "bus", "nats_tls"])]
    tls: bool,
    /// --proxy: pause between requests to the proxy, in microseconds.
    #[arg(long, default_value_t = 500)]
    poll_us: u64,
    #[command(flatten)]
    common: Common,
}

/// Deletes JetStream's `VETO_SRL` stream, so the authorizers start on an
/// empty one (nothing of an earlier run is replayed to them).
pub(crate) async fn reset_stream(bus: &veto_bus::NatsSettings) -> anyhow::Result<()> {
    let nc = bus
        .connect("veto-bench")
        .await
        .with_context(|| format!("connecting to NATS at {}", bus.servers()))?;
    // Answers an error when the stream does not exist: that is fine.
    let _ = async_nats::jetstream::new(nc)
        .delete_stream(nats::STREAM)
        .await;
    Ok(())
}

/// A TLS `nats-server` with JetStream, its CA file and its `tls://` URL.
struct TlsNats {
    server: veto_testkit::NatsServer,
    ca_file: std::path::PathBuf,
    dir: veto_testkit::TempDir,
}

impl TlsNats {
    fn start() -> anyhow::Result<Self> {
        let dir = veto_testkit::TempDir::new("bench-nats-tls");
        let ca = veto_testkit::tls::TestCa::new("veto-bench ca");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let (cert, key) = ca.write_server(dir.path(), "nats", &["localhost", "127.0.0.1"]);
        let server = veto_testkit::NatsServer::start(dir.path(), |port, dir| {
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\ntls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
                dir.join("js").display(),
                cert.display(),
                key.display()
            )
        })
        .context("--nats-tls needs the nats-server binary")?;
        Ok(Self {
            server,
            ca_file,
            dir,
        })
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.server.port)
    }
}

/// The push transport's short label in result lines.
fn push_label(bus: Option<&str>) -> &'static str {
    match bus {
        Some(u) if u.starts_with("tls://") => "nats-tls",
        Some(_) => "nats",
        None => "sse",
    }
}

fn push_name(bus: Option<&str>) -> String {
    match bus {
        Some(u) => format!("NATS JetStream {u}"),
        None => "SSE".into(),
    }
}

pub(crate) async fn run(a: PropagationArgs) -> anyhow::Result<()> {
    if a.revocations == 0 || a.authorizers == 0 {
        bail!("--authorizers and --revocations must be at least 1");
    }
    // --nats-tls: a TLS nats-server of our own, kept up for the run.
    let tls_nats = if a.nats_tls {
        Some(TlsNats::start()?)
    } else {
        None
    };
    let mut a = a;
    if let Some(t) = &tls_nats {
        a.bus = Some(t.url());
        a.ca_file = Some(t.ca_file.clone());
        eprintln!(
            "nats-server with TLS at {} (files in {})",
            t.url(),
            t.dir.path().display()
        );
    }
    let a = a;
    if let Some(b) = &a.bus {
        reset_stream(&veto_bus::NatsSettings::new(b, a.ca_file.as_deref(), None)?).await?;
    }
    let schema = match &a.store {
        Some(url) => Some(Schema::create(url).await?),
        None => None,
    };
    let veto = a.common.veto_path()?;
    let modes: &[bool] = if a.tls { &[false, true] } else { &[false] };
    let mut result = Ok(());
    for &tls in modes {
        let opts = ServeOpts {
            store: schema.as_ref().map(Schema::url),
            bus: a.bus.clone(),
            heartbeat: Some("1s".into()),
            ca_file: a.ca_file.clone(),
            tls,
            ..ServeOpts::default()
        };
        let reg = Registry::start_with(&veto, a.common.keep_data, &opts).await?;
        let r = if a.proxy {
            run_proxy(&a, &veto, &reg).await
        } else {
            run_authorizers(&a, &reg).await
        };
        let stopped = reg.stop().await;
        result = r.and(stopped);
        if result.is_err() {
            break;
        }
    }
    if let Some(s) = schema {
        s.drop_schema().await?;
    }
    result
}

/// Watches one authorizer's version channel; records `(version, time)`
/// each time it changes, until `stop`.
async fn watch_versions(authz: Authorizer, stop: Arc<AtomicBool>) -> Vec<(u64, Instant)> {
    let mut rx = authz.versions();
    let mut seen = Vec::new();
    loop {
        let changed = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        let at = Instant::now();
        match changed {
            Ok(Ok(())) => {
                let v = *rx.borrow_and_update();
                seen.push((v, at));
            }
            Ok(Err(_)) => break,
            Err(_) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    seen
}

async fn run_authorizers(a: &PropagationArgs, reg: &Registry) -> anyhow::Result<()> {
    let n = a.authorizers;
    let key = keyfile::read_public_key(&reg.authority_pub())
        .context("reading the registry's authority public key")?;
    println!("== veto-bench propagation (in-process authorizers) ==");
    println!(
        "registry        : pid {} at {}, data dir {}{}",
        reg.pid(),
        reg.base,
        reg.dir.display(),
        if a.store.is_some() {
            ", store PostgreSQL"
        } else {
            ", store SQLite"
        }
    );
    let push = match &a.bus {
        Some(u) => Push::Nats(veto_bus::NatsSettings::new(u, a.ca_file.as_deref(), None)?),
        None => Push::Sse,
    };
    let tls = veto_tls::ClientTls::with_ca_file(reg.ca_file.as_deref())?;
    let start = Instant::now();
    let mut authzs = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Config::new(&reg.base, "veto", KeySet::new([key.clone()]));
        c.push = push.clone();
        c.tls = Some(tls.clone());
        c.poll_interval = POLL;
        c.pop.policy = veto_authorizer::PopPolicy::Off;
        authzs.push(Authorizer::start(c).await?);
    }
    // Every authorizer fresh and its push connected.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = authzs
            .iter()
            .map(Authorizer::status)
            .filter(|s| s.fresh && s.push_connected)
            .count();
        if ready == n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {n} authorizers were fresh with push connected after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm-up: one revocation every authorizer must get by push.
    let client = reg.client()?;
    let (warm_ver, _, _) = revoke_id(&client, reg, &random_jti()?).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while authzs.iter().any(|z| z.status().version < warm_ver) {
        if Instant::now() > deadline {
            let behind = authzs
                .iter()
                .filter(|z| z.status().version < warm_ver)
                .count();
            bail!("{behind} of {n} authorizers did not apply the warm-up revocation (version {warm_ver}) within 30 s: push is not working");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let setup_secs = start.elapsed().as_secs_f64();

    let stop = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = authzs
        .iter()
        .map(|z| tokio::spawn(watch_versions(z.clone(), stop.clone())))
        .collect();
    let (base, token, count, interval, ca_file) = (
        reg.base.clone(),
        reg.token.clone(),
        a.revocations,
        Duration::from_millis(a.interval_ms),
        reg.ca_file.clone(),
    );
    let (reg_cpu0, own_cpu0, t0) = (reg.cpu_secs()?, own_cpu_secs()?, Instant::now());
    let sender =
        std::thread::spawn(move || revoke_sequentially(base, token, count, interval, ca_file));
    let sent: Vec<Sent> = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the revocation thread panicked"))??;
    let last = sent.iter().map(|s| s.ver).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while authzs.iter().any(|z| z.status().version < last) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let phase_secs = t0.elapsed().as_secs_f64();
    let (reg_cpu, own_cpu) = (reg.cpu_secs()? - reg_cpu0, own_cpu_secs()? - own_cpu0);
    stop.store(true, Ordering::SeqCst);
    let mut seen = Vec::with_capacity(n);
    for w in watchers {
        seen.push(w.await?);
    }
    let status: Vec<_> = authzs.iter().map(Authorizer::status).collect();
    for z in &authzs {
        z.shutdown();
    }

    // For each authorizer and revocation: the first time a version >= it was seen.
    let mut lat = Vec::with_capacity(n * sent.len());
    let mut send_lat = Vec::with_capacity(n * sent.len());
    let mut slowest: BTreeMap<u64, f64> = BTreeMap::new();
    let mut missed = 0usize;
    for obs in &seen {
        for s in &sent {
            match obs.iter().find(|(v, _)| *v >= s.ver) {
                Some((_, at)) => {
                    let l = signed_ms(*at, s.acked);
                    lat.push(l);
                    send_lat.push(signed_ms(*at, s.sent));
                    let e = slowest.entry(s.ver).or_insert(f64::MIN);
                    *e = e.max(l);
                }
                None => missed += 1,
            }
        }
    }
    let coalesced = seen
        .iter()
        .map(|obs| sent.len().saturating_sub(obs.len()))
        .sum::<usize>();
    let negative = lat.iter().filter(|l| **l < 0.0).count();
    let pairs = lat.len();
    let lat = sorted(lat);
    let up = sorted(send_lat);
    let slow = sorted(slowest.into_values().collect());
    let acks = sorted(sent.iter().map(|s| signed_ms(s.acked, s.sent)).collect());
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    let entries = status.first().map_or(0, |s| s.entries);
    let on_tls = reg.ca_file.is_some();
    let push = push_name(a.bus.as_deref()) + if on_tls { " over TLS" } else { "" };
    println!(
        "authorizers     : {n} in this process, push {push}, poll every {} s; fresh, connected and warmed up in {setup_secs:.2} s",
        POLL.as_secs()
    );
    println!(
        "revocations     : {} (random ids), one every {} ms; versions {}..={last}; {entries} entries in the final state",
        sent.len(),
        a.interval_ms,
        sent.first().map_or(0, |s| s.ver)
    );
    println!(
        "ack->applied    : p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms over {pairs} (authorizer, revocation) pairs; target p99 <= {TARGET_P99_MS:.0} ms: {}",
        if p99 <= TARGET_P99_MS && missed == 0 { "MET" } else { "MISSED" }
    );
    println!("  (ack = the revoke POST's 201 arriving; applied = the authorizer's versions() watch showing it; {negative} pairs applied before the ack arrived: the registry pushes, then answers)");
    println!(
        "send->applied   : p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (upper bound: includes the commit itself)",
        percentile(&up, 0.5),
        percentile(&up, 0.99),
        percentile(&up, 1.0)
    );
    println!(
        "slowest authz.  : per revocation, the last authorizer's ack->applied: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&slow, 0.5),
        percentile(&slow, 0.99)
    );
    println!(
        "POST latency    : p50 {:.2} ms, p99 {:.2} ms (send -> 201)",
        percentile(&acks, 0.5),
        percentile(&acks, 0.99)
    );
    println!(
        "CPU             : registry {reg_cpu:.2} s, this process (authorizers + client) {own_cpu:.2} s, over {phase_secs:.2} s"
    );
    if coalesced > 0 {
        println!("note            : {coalesced} watch updates were coalesced (two versions applied before the watcher ran); such a pair counts at the later observation");
    }
    if missed > 0 {
        println!(
            "MISSED          : {missed} (authorizer, revocation) pairs never applied within 30 s"
        );
    }
    println!(
        "bench=propagation mode=authorizer push={} tls={} authorizers={n} revocations={} interval_ms={} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} missed={missed} store={}",
        push_label(a.bus.as_deref()),
        if on_tls { "on" } else { "off" },
        sent.len(),
        a.interval_ms,
        if a.store.is_some() { "postgres" } else { "sqlite" }
    );
    Ok(())
}

/// Revokes one warrant id; returns `(version, sent, acked)`.
pub(crate) async fn revoke_id(
    client: &reqwest::Client,
    reg: &Registry,
    id: &str,
) -> anyhow::Result<(u64, Instant, Instant)> {
    let body = serde_json::to_vec(
        &json!({"entries": [{"kind": "warrant", "id": id, "reason": "superseded"}]}),
    )?;
    let sent = Instant::now();
    let resp = client
        .post(format!("{}{}", reg.base, path::REVOCATIONS))
        .bearer_auth(&reg.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {}", path::REVOCATIONS))?;
    let status = resp.status();
    let text = resp.bytes().await?;
    let acked = Instant::now();
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "POST {}: expected 201 Created, got {status}: {}",
            path::REVOCATIONS,
            String::from_utf8_lossy(&text)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&text)?;
    let ver = v["version"]
        .as_u64()
        .context("no `version` in the revocation answer")?;
    Ok((ver, sent, acked))
}

/// What one polling round saw.
struct Round {
    /// When the first `403 revoked` arrived.
    denied_at: Instant,
    /// Requests made until then.
    requests: u64,
    /// Round-trip time of each request to the proxy, in microseconds.
    rtts_us: Vec<f64>,
}

/// Polls `GET {proxy}/` with `token` on the current thread: until `200`,
/// then signals `ready`, then every `pause` until `403` with `revoked`.
fn poll_until_revoked(
    proxy: String,
    token: String,
    pause: Duration,
    ready: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<Round> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(10))
            .build()?;
        let url = format!("{proxy}/");
        let auth = format!("Bearer {token}");
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until the proxy allows it (verifies and caches the chain).
        loop {
            let r = client
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, &auth)
                .send()
                .await?;
            let status = r.status();
            let body = r.text().await?;
            if status == reqwest::StatusCode::OK {
                break;
            }
            if Instant::now() > deadline {
                bail!("the proxy did not allow a fresh warrant within 30 s: {status} {body}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = ready.send(());
        let mut rtts_us = Vec::new();
        let mut requests = 0u64;
        loop {
            let t = Instant::now();
            let r = client
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, &auth)
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            let at = Instant::now();
            requests += 1;
            rtts_us.push((at - t).as_secs_f64() * 1e6);
            match status.as_u16() {
                200 => {}
                403 if body.windows(9).any(|w| w == b"\"revoked\"") => {
                    return Ok(Round {
                        denied_at: at,
                        requests,
                        rtts_us,
                    });
                }
                _ => bail!(
                    "the proxy answered {status} {} while waiting for `revoked`",
                    String::from_utf8_lossy(&body)
                ),
            }
            if at > deadline {
                bail!("the proxy still allowed a revoked warrant after 30 s");
            }
            // Blocking on purpose: nothing else runs on this thread's runtime,
            // and a thread sleep is finer than the runtime's 1 ms timer.
            std::thread::sleep(pause);
        }
    })
}

async fn run_proxy(
    a: &PropagationArgs,
    veto: &std::path::Path,
    reg: &Registry,
) -> anyhow::Result<()> {
    let upstream = Upstream::start().await?;
    let mut extra = vec!["--poll-interval", "3600s"];
    if let Some(b) = &a.bus {
        extra.extend(["--bus", b.as_str()]);
    }
    if let Some(c) = a.ca_file.as_deref().and_then(std::path::Path::to_str) {
        extra.extend(["--ca-file", c]);
    }
    let proxy = Proxy::start(veto, a.common.keep_data, reg, &upstream.url, &extra).await?;
    println!("== veto-bench propagation (--proxy) ==");
    println!(
        "registry        : pid {} at {}; proxy pid {} at {} (push {}, poll every 3600 s); upstream (in-process) {}",
        reg.pid(),
        reg.base,
        proxy.pid(),
        proxy.base,
        push_name(a.bus.as_deref()),
        upstream.url
    );
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let result = async {
        let mut warrants = Vec::with_capacity(a.revocations);
        for i in 0..a.revocations {
            warrants.push(
                reg.mint(&client, &format!("bench-agent-{i}"), &["http:*:/*"], 3600)
                    .await?,
            );
        }
        let pause = Duration::from_micros(a.poll_us);
        let mut lat = Vec::with_capacity(a.revocations);
        let mut send_lat = Vec::with_capacity(a.revocations);
        let mut rtts = Vec::new();
        let mut requests = 0u64;
        for (i, (chain, jti)) in warrants.into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
            let (tx, rx) = std::sync::mpsc::channel();
            let (base, token) = (proxy.base.clone(), chain);
            let poller = std::thread::spawn(move || poll_until_revoked(base, token, pause, tx));
            let ready =
                tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(40)))
                    .await?;
            if ready.is_err() {
                let r = tokio::task::spawn_blocking(move || poller.join()).await?;
                match r {
                    Ok(Err(e)) => return Err(e.context(format!("round {i}"))),
                    _ => bail!("round {i}: the polling thread stopped"),
                }
            }
            // Let the poller run a few requests against the allowed warrant.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (_, sent, acked) = revoke_id(&client, reg, &jti).await?;
            let round = tokio::task::spawn_blocking(move || poller.join())
                .await?
                .map_err(|_| anyhow::anyhow!("round {i}: the polling thread panicked"))?
                .with_context(|| format!("round {i}"))?;
            lat.push(signed_ms(round.denied_at, acked));
            send_lat.push(signed_ms(round.denied_at, sent));
            rtts.extend(round.rtts_us);
            requests += round.requests;
        }
        Ok::<_, anyhow::Error>((lat, send_lat, rtts, requests))
    }
    .await;
    let stopped = proxy.stop().await;
    drop(upstream);
    let (lat, send_lat, rtts, requests) = result?;
    let up = sorted(send_lat);
    stopped?;
    let n = lat.len();
    let negative = lat.iter().filter(|l| **l < 0.0).count();
    let lat = sorted(lat);
    let rtts = sorted(rtts);
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    println!(
        "rounds          : {n} warrants minted up front, each revoked in its own round, {} ms apart",
        a.interval_ms
    );
    println!(
        "ack->first 403  : p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, min {:.2} ms; target p99 <= {TARGET_P99_MS:.0} ms: {}",
        percentile(&lat, 0.0),
        if p99 <= TARGET_P99_MS { "MET" } else { "MISSED" }
    );
    println!("  (ack = the revoke POST's 201 arriving; first 403 = the first `403 revoked` response from the proxy arriving; {negative} rounds denied before the ack arrived)");
    println!(
        "send->first 403 : p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (upper bound: includes the commit itself)",
        percentile(&up, 0.5),
        percentile(&up, 0.99),
        percentile(&up, 1.0)
    );
    println!(
        "polling         : {requests} requests through the proxy, one every {} us + round trip; round trip p50 {:.0} us, p99 {:.0} us (the resolution of the measurement)",
        a.poll_us,
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99)
    );
    println!(
        "bench=propagation mode=proxy push={} revocations={n} interval_ms={} poll_us={} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} rtt_p50_us={:.0}",
        push_label(a.bus.as_deref()),
        a.interval_ms,
        a.poll_us,
        percentile(&rtts, 0.5)
    );
    Ok(())
}
