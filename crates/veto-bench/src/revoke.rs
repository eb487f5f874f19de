//! `veto-bench revoke`: durable revocations per second.
//!
//! `--concurrency` workers share a queue of pre-built request bodies; each
//! request is `POST /v1/revocations` with one entry (`--mode single`) or
//! `--batch` entries (`--mode batch`), each a random unique warrant id. A
//! request counts once the registry answered `201`, which it does only
//! after the entries and their delta are committed (SQLite WAL,
//! `synchronous = FULL`). Wall time runs from the first request to the
//! last acknowledgement.
//!
//! With `--store postgres://...` the registry keeps its state in
//! PostgreSQL (a fresh schema, dropped afterwards), and `--replicas K`
//! starts K registries on that schema, sharing one authority key and admin
//! token; request `i` goes to replica `i mod K`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use serde_json::json;
use veto_core::wire::path;

use crate::pg::Schema;
use crate::registry::{fresh_dir, local_postgres_cpu_secs, own_cpu_secs, Registry, ServeOpts};
use crate::stats::{percentile, random_jti, sorted};
use crate::Common;
use veto_testkit::{Histogram, Metrics};

/// The registry's per-request limit (`MAX_BATCH`).
const MAX_BATCH: usize = 10_000;
const TARGET_SINGLE_PER_SEC: f64 = 2_000.0;
const TARGET_BATCH_PER_SEC: f64 = 50_000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// One entry per request.
    Single,
    /// `--batch` entries per request.
    Batch,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Batch => "batch",
        }
    }
}

/// Arguments of `veto-bench revoke`.
#[derive(Args, Debug)]
pub(crate) struct RevokeArgs {
    /// One entry per request, or batches.
    #[arg(long, value_enum, default_value = "single")]
    mode: Mode,
    /// Entries to revoke in total.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Entries per request in batch mode (at most 10,000).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Keep the state in PostgreSQL (`postgres://user@host:5432/db`), in a
    /// fresh schema dropped after the run; default: SQLite.
    #[arg(long)]
    store: Option<String>,
    /// Registry replicas sharing the --store, requests spread round-robin.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    #[command(flatten)]
    common: Common,
}

/// What one worker measured.
struct WorkerResult {
    latencies_ms: Vec<f64>,
    last_ack: Option<Instant>,
}

pub(crate) async fn run(a: RevokeArgs) -> anyhow::Result<()> {
    let batch = match a.mode {
        Mode::Single => 1,
        Mode::Batch => a.batch,
    };
    if a.count == 0 || a.concurrency == 0 || batch == 0 {
        bail!("--count, --batch and --concurrency must be at least 1");
    }
    if a.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if a.replicas > 1 && a.store.is_none() {
        bail!("--replicas {} needs --store postgres://...: replicas share one PostgreSQL database (SQLite is one process's file)", a.replicas);
    }
    if batch > MAX_BATCH {
        bail!("--batch {batch} is over the registry's limit of {MAX_BATCH} entries per request");
    }
    // Build every body up front so the client does as little as possible while timed.
    let mut bodies = Vec::with_capacity(a.count.div_ceil(batch));
    let mut left = a.count;
    while left > 0 {
        let n = left.min(batch);
        left -= n;
        let entries = (0..n)
            .map(|_| Ok(json!({"kind": "warrant", "id": random_jti()?, "reason": "superseded"})))
            .collect::<anyhow::Result<Vec<_>>>()?;
        bodies.push(serde_json::to_vec(&json!({ "entries": entries }))?);
    }

    let veto = a.common.veto_path()?;
    let schema = match &a.store {
        Some(url) => Some(Schema::create(url).await?),
        None => None,
    };
    let keys = fresh_dir("keys")?;
    let result = async {
        let mut opts = ServeOpts {
            store: schema.as_ref().map(Schema::url),
            ..ServeOpts::default()
        };
        if a.replicas > 1 {
            // One authority key and one admin token for every replica.
            let path = keys.join("authority.jwk");
            let key = veto_core::SigningKey::generate()
                .map_err(|e| anyhow::anyhow!("generating the authority key: {e}"))?;
            veto_core::keyfile::write_signing_key(&path, &key)?;
            opts.authority_key = Some(path);
            opts.admin_token = Some(random_jti()?);
        }
        let mut regs = Vec::with_capacity(a.replicas);
        for _ in 0..a.replicas {
            regs.push(Registry::start_with(&veto, a.common.keep_data, &opts).await?);
        }
        let r = measure(&a, &veto, &regs, batch, bodies, schema.as_ref()).await;
        for reg in regs {
            reg.stop().await?;
        }
        r
    }
    .await;
    let _ = std::fs::remove_dir_all(&keys);
    if let Some(s) = schema {
        s.drop_schema().await?;
    }
    result
}

/// Sums histograms of the same metric from several replicas (same buckets).
fn merged(hs: Vec<Histogram>) -> Option<Histogram> {
    let mut it = hs.into_iter();
    let mut acc = it.next()?;
    for h in it {
        acc.add(&h);
    }
    Some(acc)
}

async fn measure(
    a: &RevokeArgs,
    veto: &std::path::Path,
    regs: &[Registry],
    batch: usize,
    bodies: Vec<Vec<u8>>,
    schema: Option<&Schema>,
) -> anyhow::Result<()> {
    let requests = bodies.len();
    let bodies = Arc::new(bodies);
    println!("== veto-bench revoke (mode={}) ==", a.mode.as_str());
    for reg in regs {
        println!(
            "registry        : {} (pid {}) at {}, data dir {}",
            veto.display(),
            reg.pid(),
            reg.base,
            reg.dir.display()
        );
    }
    match schema {
        Some(s) => println!(
            "store           : PostgreSQL, schema {} ({} replica{} sharing it, requests round-robin)",
            s.name,
            regs.len(),
            if regs.len() == 1 { "" } else { "s" }
        ),
        None => println!("store           : SQLite (WAL, synchronous = FULL) in the data directory"),
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .tcp_nodelay(true)
        .build()?;
    let urls: Arc<Vec<String>> = Arc::new(
        regs.iter()
            .map(|r| format!("{}{}", r.base, path::REVOCATIONS))
            .collect(),
    );
    let token = regs.first().map(|r| r.token.clone()).unwrap_or_default();
    let next = Arc::new(AtomicUsize::new(0));
    let reg_cpu_now = || -> anyhow::Result<f64> {
        regs.iter()
            .map(Registry::cpu_secs)
            .sum::<anyhow::Result<f64>>()
    };
    let pg_cpu0 = schema.and_then(|_| local_postgres_cpu_secs());
    let (reg_cpu0, own_cpu0) = (reg_cpu_now()?, own_cpu_secs()?);
    let start = Instant::now();
    let workers: Vec<_> = (0..a.concurrency.min(requests))
        .map(|_| {
            let (client, urls, token, bodies, next) = (
                client.clone(),
                urls.clone(),
                token.clone(),
                bodies.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut out = WorkerResult {
                    latencies_ms: Vec::new(),
                    last_ack: None,
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let url = &urls[i % urls.len()];
                    let t0 = Instant::now();
                    let resp = client
                        .post(url)
                        .bearer_auth(&token)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .with_context(|| format!("request {i}"))?;
                    let status = resp.status();
                    let text = resp
                        .bytes()
                        .await
                        .with_context(|| format!("reading the answer to request {i}"))?;
                    let t1 = Instant::now();
                    if status != reqwest::StatusCode::CREATED {
                        bail!(
                            "request {i}: expected 201 Created, got {status}: {}",
                            String::from_utf8_lossy(&text)
                        );
                    }
                    out.latencies_ms.push((t1 - t0).as_secs_f64() * 1e3);
                    out.last_ack = Some(t1);
                }
                Ok::<_, anyhow::Error>(out)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    let mut end = start;
    for w in workers {
        let r = w.await??;
        latencies.extend(r.latencies_ms);
        if let Some(t) = r.last_ack {
            end = end.max(t);
        }
    }
    let secs = (end - start).as_secs_f64();
    let (reg_cpu, own_cpu) = (reg_cpu_now()? - reg_cpu0, own_cpu_secs()? - own_cpu0);
    // Every local `postgres` process, so other clients of the server count too.
    let pg_cpu = pg_cpu0.and_then(|c0| Some(local_postgres_cpu_secs()? - c0));
    let lat = sorted(latencies);
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    let per_sec = a.count as f64 / secs;
    let req_per_sec = requests as f64 / secs;

    let mut ms = Vec::with_capacity(regs.len());
    for reg in regs {
        ms.push(Metrics::fetch(&client, &reg.base).await?);
    }
    // Replicas learn of each other's commits shortly after: the highest.
    let version = ms
        .iter()
        .filter_map(|m| m.value("veto_registry_version"))
        .fold(f64::NAN, f64::max);
    let commits = merged(
        ms.iter()
            .filter_map(|m| m.histogram("veto_registry_commit_seconds"))
            .collect(),
    );
    let groups = merged(
        ms.iter()
            .filter_map(|m| m.histogram("veto_registry_commit_group_size"))
            .collect(),
    );
    let rss: Option<u64> = regs.iter().map(|r| r.rss_kib().ok()).sum();

    let (unit, target) = match a.mode {
        Mode::Single => ("revocations/s", TARGET_SINGLE_PER_SEC),
        Mode::Batch => ("entries/s", TARGET_BATCH_PER_SEC),
    };
    println!(
        "requests        : {requests} x {batch} entr{} = {} entries, concurrency {}",
        if batch == 1 { "y" } else { "ies" },
        a.count,
        a.concurrency
    );
    println!("wall time       : {secs:.3} s (first request to last acknowledgement)");
    println!(
        "throughput      : {per_sec:.0} {unit} ({req_per_sec:.0} requests/s); target >= {target:.0} {unit}: {}",
        if per_sec >= target { "MET" } else { "MISSED" }
    );
    println!("request latency : p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    println!(
        "registry        : version {version} after the run (expected {requests}: one version per request){}",
        if version as usize == requests { "" } else { " -- MISMATCH" }
    );
    if let (Some(c), Some(g)) = (&commits, &groups) {
        println!(
            "group commit    : {} transactions, mean {:.1} requests each (p99 <= {}); commit time mean {:.2} ms (p50 <= {:.2} ms, p99 <= {:.2} ms)",
            c.count,
            g.mean(),
            g.quantile_le(0.99),
            c.mean() * 1e3,
            c.quantile_le(0.5) * 1e3,
            c.quantile_le(0.99) * 1e3
        );
    }
    println!(
        "CPU             : registr{} {reg_cpu:.2} s ({:.0}% of one core over the wall time, {:.1} us per entry), this client {own_cpu:.2} s",
        if regs.len() == 1 { "y" } else { "ies (sum)" },
        reg_cpu / secs * 100.0,
        reg_cpu / a.count as f64 * 1e6
    );
    if let Some(c) = pg_cpu {
        println!(
            "PostgreSQL CPU  : {c:.2} s ({:.0}% of one core, {:.1} us per entry), all local `postgres` processes (other clients of the server included)",
            c / secs * 100.0,
            c / a.count as f64 * 1e6
        );
    }
    if let Some(rss) = rss {
        println!("registry RSS    : {rss} KiB after the run (sum over replicas)");
    }
    let mut line = format!("bench=revoke mode={} count={} ", a.mode.as_str(), a.count);
    if a.mode == Mode::Batch {
        line.push_str(&format!("batch={batch} "));
    }
    line.push_str(&format!(
        "concurrency={} secs={secs:.3} per_sec={per_sec:.0} p50_ms={p50:.2} p99_ms={p99:.2}",
        a.concurrency
    ));
    if let (Some(c), Some(g)) = (&commits, &groups) {
        line.push_str(&format!(
            " commits={} mean_group={:.1} mean_commit_ms={:.2}",
            c.count,
            g.mean(),
            c.mean() * 1e3
        ));
    }
    line.push_str(&format!(
        " registry_cpu_s={reg_cpu:.2} client_cpu_s={own_cpu:.2} store={} replicas={}",
        if schema.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        regs.len()
    ));
    if let Some(c) = pg_cpu {
        line.push_str(&format!(" postgres_cpu_s={c:.2}"));
    }
    println!("{line}");
    Ok(())
}
