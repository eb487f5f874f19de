//! `veto-bench fanout`: SSE push latency and memory per subscriber.
//!
//! 1. Start a registry, warm it up (one revocation, one short-lived
//!    subscriber), let it settle and read its `VmRSS`.
//! 2. Open `--subscribers` concurrent `GET /v1/srl/events` streams; each
//!    counts as connected once it received its initial `checkpoint`. Let
//!    them idle, read `VmRSS` again: (after − before) / N is the memory per
//!    idle subscriber.
//! 3. Revoke one warrant at a time, `--interval-ms` apart. The POSTs run on
//!    their own thread and runtime so the acknowledgement time is not
//!    delayed behind the subscriber tasks. For each revocation and each
//!    subscriber, latency = time the subscriber received the `delta` with
//!    that version − time the POST's `201` arrived (the commit
//!    acknowledgement). The registry pushes before it answers, so a
//!    latency can be slightly negative; send→receive is reported too as an
//!    upper bound on commit→receive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use veto_core::wire::{path, EventKind};
use veto_core::SseParser;

use crate::registry::{own_cpu_secs, Registry};
use crate::stats::{percentile, random_jti, signed_ms, sorted};
use crate::Common;
use veto_testkit::Metrics;

const TARGET_P99_MS: f64 = 50.0;

/// Arguments of `veto-bench fanout`.
#[derive(Args, Debug)]
pub(crate) struct FanoutArgs {
    /// Concurrent SSE subscribers.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Revocations to push, one at a time.
    #[arg(long, default_value_t = 100)]
    revocations: usize,
    /// Pause before each revocation, in milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Subscribers connecting at once (a connection's slot frees when its first checkpoint arrives).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Idle time before each memory reading, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    #[command(flatten)]
    common: Common,
}

/// Shared progress of the subscriber tasks.
#[derive(Default)]
struct Progress {
    ready: AtomicUsize,
    failed: AtomicUsize,
    deltas: AtomicUsize,
    snapshots: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Progress {
    fn fail(&self, msg: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut e) = self.first_error.lock() {
            e.get_or_insert(msg);
        }
    }

    fn error(&self) -> String {
        self.first_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_default()
    }
}

/// The soft limit on open files of this process (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One subscriber: connects, reports ready on its first checkpoint, then
/// records `(version, receive time)` for every delta until stopped.
async fn subscriber(
    client: reqwest::Client,
    url: String,
    progress: Arc<Progress>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Vec<(u64, Instant)> {
    let mut got = Vec::new();
    let Ok(slot) = slots.acquire_owned().await else {
        return got;
    };
    let mut slot = Some(slot);
    let mut resp = match client
        .get(&url)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            progress.fail(format!(
                "GET {} answered {status}: {body}",
                path::SRL_EVENTS
            ));
            return got;
        }
        Err(e) => {
            progress.fail(format!("cannot open GET {}: {e:#}", path::SRL_EVENTS));
            return got;
        }
    };
    let mut parser = SseParser::new(1 << 20);
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c,
            _ = stop.changed() => break,
        };
        let at = Instant::now();
        let bytes = match chunk {
            Ok(Some(b)) => b,
            Ok(None) => {
                progress.fail("the registry closed an event stream".into());
                break;
            }
            Err(e) => {
                progress.fail(format!("event stream failed: {e:#}"));
                break;
            }
        };
        let events = match parser.feed(&bytes) {
            Ok(ev) => ev,
            Err(e) => {
                progress.fail(format!("bad event stream: {e}"));
                break;
            }
        };
        for ev in events {
            match EventKind::parse(&ev.event) {
                Some(EventKind::Checkpoint) if slot.is_some() => {
                    slot = None;
                    progress.ready.fetch_add(1, Ordering::SeqCst);
                }
                Some(EventKind::Delta) => {
                    if let Some(ver) = ev.id.as_deref().and_then(|v| v.parse().ok()) {
                        got.push((ver, at));
                        progress.deltas.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Some(EventKind::Snapshot) => {
                    progress.snapshots.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    }
    got
}

/// One timed revocation.
pub(crate) struct Sent {
    /// The version the revocation committed.
    pub ver: u64,
    /// When the POST was sent.
    pub sent: Instant,
    /// When its `201` arrived (the commit acknowledgement).
    pub acked: Instant,
}

/// Revokes one (random) warrant at a time, `interval` apart; runs its own
/// current-thread runtime, so call it on a dedicated thread.
pub(crate) fn revoke_sequentially(
    base: String,
    token: String,
    n: usize,
    interval: Duration,
    ca_file: Option<std::path::PathBuf>,
) -> anyhow::Result<Vec<Sent>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = crate::registry::bench_client(ca_file.as_deref())?;
        let url = format!("{base}{}", path::REVOCATIONS);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            tokio::time::sleep(interval).await;
            let body = serde_json::to_vec(&json!({"entries": [{"kind": "warrant", "id": random_jti()?, "reason": "superseded"}]}))?;
            let sent = Instant::now();
            let resp = client
                .post(&url)
                .bearer_auth(&token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .with_context(|| format!("revocation {i}"))?;
            let status = resp.status();
            let text = resp.bytes().await?;
            let acked = Instant::now();
            if status != reqwest::StatusCode::CREATED {
                bail!("revocation {i}: expected 201 Created, got {status}: {}", String::from_utf8_lossy(&text));
            }
            let v: serde_json::Value = serde_json::from_slice(&text)?;
            let ver = v["version"].as_u64().context("no `version` in the revocation answer")?;
            out.push(Sent { ver, sent, acked });
        }
        Ok(out)
    })
}

async fn revoke_once(client: &reqwest::Client, reg: &Registry) -> anyhow::Result<()> {
    let body = serde_json::to_vec(
        &json!({"entries": [{"kind": "warrant", "id": random_jti()?, "reason": "superseded"}]}),
    )?;
    client
        .post(format!("{}{}", reg.base, path::REVOCATIONS))
        .bearer_auth(&reg.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

fn ulimit_hint(n: usize) -> String {
    format!(
        "each subscriber needs a socket in this process and one in the registry: raise the limit before running, e.g. `ulimit -n 65536 && veto-bench fanout --subscribers {n} ...` (current soft limit: {})",
        open_files_limit().map_or("unknown".into(), |l| l.to_string())
    )
}

pub(crate) async fn run(a: FanoutArgs) -> anyhow::Result<()> {
    if a.subscribers == 0 || a.revocations == 0 || a.connect_concurrency == 0 {
        bail!("--subscribers, --revocations and --connect-concurrency must be at least 1");
    }
    if let Some(limit) = open_files_limit() {
        if limit < a.subscribers as u64 + 128 {
            bail!(
                "the open-files limit ({limit}) is too low for {} subscribers; {}",
                a.subscribers,
                ulimit_hint(a.subscribers)
            );
        }
    }
    let veto = a.common.veto_path()?;
    let reg = Registry::start(&veto, a.common.keep_data).await?;
    println!("== veto-bench fanout ==");
    println!(
        "registry        : {} (pid {}) at {}, data dir {}",
        veto.display(),
        reg.pid(),
        reg.base,
        reg.dir.display()
    );
    let settle = Duration::from_millis(a.settle_ms);
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let url = format!("{}{}", reg.base, path::SRL_EVENTS);

    // Warm-up: first revocation and first subscriber pay one-time costs
    // (lazy allocations, first signature) outside the measurement.
    revoke_once(&client, &reg)
        .await
        .context("warm-up revocation")?;
    {
        let progress = Arc::new(Progress::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let t = tokio::spawn(subscriber(
            client.clone(),
            url.clone(),
            progress.clone(),
            Arc::new(Semaphore::new(1)),
            stop_rx,
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while progress.ready.load(Ordering::SeqCst) == 0
            && progress.failed.load(Ordering::SeqCst) == 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop_tx.send(true);
        let _ = t.await;
        if progress.ready.load(Ordering::SeqCst) == 0 {
            bail!(
                "the warm-up subscriber did not receive a checkpoint: {}",
                progress.error()
            );
        }
    }
    tokio::time::sleep(settle).await;
    let rss_before = reg.rss_kib()?;

    // Connect N subscribers.
    let progress = Arc::new(Progress::default());
    let slots = Arc::new(Semaphore::new(a.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sub_client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(0)
        .build()?;
    let connect_start = Instant::now();
    let tasks: Vec<_> = (0..a.subscribers)
        .map(|_| {
            tokio::spawn(subscriber(
                sub_client.clone(),
                url.clone(),
                progress.clone(),
                slots.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (ready, failed) = (
            progress.ready.load(Ordering::SeqCst),
            progress.failed.load(Ordering::SeqCst),
        );
        if failed > 0 {
            let _ = stop_tx.send(true);
            bail!(
                "{failed} of {} subscribers failed to connect ({ready} connected); first error: {}\nhint: {}",
                a.subscribers,
                progress.error(),
                ulimit_hint(a.subscribers)
            );
        }
        if ready == a.subscribers {
            break;
        }
        if Instant::now() > deadline {
            let _ = stop_tx.send(true);
            bail!(
                "only {ready} of {} subscribers connected within 120 s; {}",
                a.subscribers,
                ulimit_hint(a.subscribers)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after = reg.rss_kib()?;
    let m = Metrics::fetch(&client, &reg.base).await?;
    let gauge = m.value("veto_registry_sse_subscribers").unwrap_or(f64::NAN);

    // Revoke one at a time; wait until every subscriber has every delta.
    let expected = a.subscribers * a.revocations;
    let (base, token, n, interval) = (
        reg.base.clone(),
        reg.token.clone(),
        a.revocations,
        Duration::from_millis(a.interval_ms),
    );
    let (reg_cpu0, own_cpu0, push_start) = (reg.cpu_secs()?, own_cpu_secs()?, Instant::now());
    let sender = std::thread::spawn(move || revoke_sequentially(base, token, n, interval, None));
    let sent = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the revocation thread panicked"))??;
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.deltas.load(Ordering::SeqCst) < expected
        && progress.failed.load(Ordering::SeqCst) == 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let push_secs = push_start.elapsed().as_secs_f64();
    let (reg_cpu, own_cpu) = (reg.cpu_secs()? - reg_cpu0, own_cpu_secs()? - own_cpu0);
    let _ = stop_tx.send(true);
    let mut received = Vec::with_capacity(a.subscribers);
    for t in tasks {
        received.push(t.await?);
    }
    let m_end = Metrics::fetch(&client, &reg.base).await?;

    // Latencies over every (subscriber, revocation) pair.
    let by_ver: HashMap<u64, &Sent> = sent.iter().map(|s| (s.ver, s)).collect();
    let mut ack_to_recv = Vec::with_capacity(expected);
    let mut send_to_recv = Vec::with_capacity(expected);
    let mut slowest: HashMap<u64, f64> = HashMap::new();
    for sub in &received {
        for (ver, at) in sub {
            if let Some(s) = by_ver.get(ver) {
                let l = signed_ms(*at, s.acked);
                ack_to_recv.push(l);
                send_to_recv.push(signed_ms(*at, s.sent));
                let e = slowest.entry(*ver).or_insert(f64::MIN);
                *e = e.max(l);
            }
        }
    }
    let matched = ack_to_recv.len();
    let missed = expected.saturating_sub(matched);
    let negative = ack_to_recv.iter().filter(|l| **l < 0.0).count();
    let lat = sorted(ack_to_recv);
    let up = sorted(send_to_recv);
    let slow = sorted(slowest.into_values().collect());
    let acks = sorted(sent.iter().map(|s| signed_ms(s.acked, s.sent)).collect());
    let (p50, p99, max, min) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        percentile(&lat, 0.0),
    );
    let per_sub_kib = (rss_after as f64 - rss_before as f64) / a.subscribers as f64;

    println!(
        "subscribers     : {} connected in {connect_secs:.2} s (registry gauge {gauge}); {} revocations, one every {} ms",
        a.subscribers, a.revocations, a.interval_ms
    );
    println!(
        "memory          : registry VmRSS {rss_before} KiB before, {rss_after} KiB with {} idle subscribers: {per_sub_kib:.1} KiB per subscriber",
        a.subscribers
    );
    println!(
        "commit->receive : p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, min {min:.2} ms over {matched} (subscriber, revocation) pairs; target p99 <= {TARGET_P99_MS:.0} ms: {}",
        if p99 <= TARGET_P99_MS && missed == 0 { "MET" } else { "MISSED" }
    );
    println!("  (commit = the POST's 201 arriving; {negative} deliveries arrived before it: the registry pushes, then answers)");
    println!(
        "send->receive   : p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (upper bound: includes the commit itself)",
        percentile(&up, 0.5),
        percentile(&up, 0.99),
        percentile(&up, 1.0)
    );
    println!(
        "slowest subscr. : per revocation, the last subscriber's commit->receive: p50 {:.2} ms, max {:.2} ms",
        percentile(&slow, 0.5),
        percentile(&slow, 1.0)
    );
    println!(
        "POST latency    : p50 {:.2} ms, p99 {:.2} ms (send -> 201)",
        percentile(&acks, 0.5),
        percentile(&acks, 0.99)
    );
    if let Some(h) = m_end.histogram("veto_registry_commit_to_broadcast_seconds") {
        println!(
            "registry        : commit->broadcast mean {:.3} ms (p99 <= {:.3} ms); lagged subscribers {}; snapshots received {}",
            h.mean() * 1e3,
            h.quantile_le(0.99) * 1e3,
            m_end.value("veto_registry_sse_lagged_total").or_else(|| m_end.value("veto_registry_sse_lagged")).unwrap_or(f64::NAN),
            progress.snapshots.load(Ordering::SeqCst)
        );
    }
    println!(
        "CPU (push phase): registry {reg_cpu:.2} s ({:.1} us per delivered event), this client {own_cpu:.2} s, over {push_secs:.2} s",
        reg_cpu / matched.max(1) as f64 * 1e6
    );
    if missed > 0 {
        println!(
            "MISSED DELIVERIES: {missed} of {expected} (subscriber, revocation) pairs never arrived within 30 s; first error: {}",
            progress.error()
        );
    }
    println!(
        "bench=fanout subscribers={} revocations={} interval_ms={} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} missed={missed} rss_before_kib={rss_before} rss_after_kib={rss_after} kib_per_subscriber={per_sub_kib:.1} registry_cpu_us_per_event={:.1}",
        a.subscribers,
        a.revocations,
        a.interval_ms,
        reg_cpu / matched.max(1) as f64 * 1e6
    );
    drop(received);
    reg.stop().await
}
