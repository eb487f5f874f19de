//! Fault scenarios with real processes on loopback: the registry killed
//! mid-storm, a full or read-only disk, a partition and a half-open
//! connection between a proxy and the registry (through the relay in
//! `veto_testkit::relay`), a subscriber that stops reading, and clock skew.
//!
//! Each scenario checks what a user sees and that no revoked chain is
//! allowed once its revocation was applied (fail-closed), and prints one
//! `RELIABILITY faults scenario=… key=value …` line with its figures
//! (`cargo test -p veto --test faults -- --nocapture`; RELIABILITY.md).
//!
//! The disk scenarios mount a small tmpfs, which needs root (or
//! CAP_SYS_ADMIN); elsewhere they print "skipped:" and pass, unless
//! `VETO_TEST_REQUIRE_ROOT=1` (set by `.ci/run`) makes that a failure.
//! Timeouts are generous upper bounds, never speed claims.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veto_authorizer::{Authorizer, Config as AuthzConfig};
use veto_core::wire::{path, ErrorCode, EventKind};
use veto_core::{Clock, DenyReason, KeySet};
use veto_testkit::relay::{Fault, Relay};
use veto_testkit::{
    metric_value, now, ok_upstream, rss_kib, EventStream, Proxy, Registry, TempDir,
};

const WITHIN: Duration = Duration::from_secs(30);
const ACT: &[&str] = &["http:GET:/orders/*"];

// ---------------------------------------------------------------------------
// Helpers.

/// Prints one figures line for RELIABILITY.md.
fn figure(scenario: &str, fields: &[(&str, String)]) {
    let kv: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RELIABILITY faults scenario={scenario} {}", kv.join(" "));
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The proxy's answer for `chain`: the status and the denial code (empty
/// when allowed).
async fn ask(http: &reqwest::Client, proxy: &Proxy, chain: &str) -> (u16, String) {
    let resp = http
        .get(proxy.at("/orders/1"))
        .bearer_auth(chain)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request through the proxy: {e}"));
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"].as_str().unwrap_or_default().to_owned();
    (status, code)
}

/// The proxy's applied version.
async fn applied(proxy: &Proxy) -> u64 {
    proxy.health().await["sync"]["version"].as_u64().unwrap()
}

/// Waits until `cond` holds, for at most `within`; returns how long it took.
async fn until<F, Fut>(what: &str, within: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the proxy is fresh with push connected and allows `chain`.
async fn ready(proxy: &Proxy, chain: &str) {
    let http = client();
    until("proxy ready", WITHIN, || async {
        let h = proxy.health().await;
        h["sync"]["fresh"] == true
            && h["sync"]["push_connected"] == true
            && ask(&http, proxy, chain).await.0 == 200
    })
    .await;
}

/// Mints `n` root warrants; returns (chain, jti) pairs.
async fn mint(reg: &Registry, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(reg.mint(&format!("agent-{i}"), ACT, None).await);
    }
    out
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid).0 as f64 / 1024.0
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------
// Registry killed (SIGKILL) mid-storm, with a proxy in front.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_storm_loses_nothing_and_the_proxy_converges() {
    const CHAINS: usize = 240;
    const KILL_AFTER: usize = 80;
    let dir = Arc::new(TempDir::new("faults-kill"));
    let mut reg = Registry::start_in(dir.clone(), &["--heartbeat", "1s"]);
    let addr = reg.addr;
    let up = ok_upstream().await;
    let pdir = TempDir::new("faults-kill-proxy");
    let proxy = Proxy::start(
        &pdir,
        &reg,
        &up,
        &[
            "--max-staleness",
            "30s",
            "--push-idle-timeout",
            "3s",
            "--poll-interval",
            "2s",
        ],
    );
    let pool = mint(&reg, CHAINS).await;
    ready(&proxy, &pool[0].0).await;

    // The storm: 8 workers revoke one warrant per request.
    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let url = reg.at(path::REVOCATIONS);
    let token = reg.token();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (next, acked, url, token, pool) = (
            next.clone(),
            acked.clone(),
            url.clone(),
            token.clone(),
            pool.clone(),
        );
        workers.push(tokio::spawn(async move {
            let http = client();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CHAINS {
                    return;
                }
                let body = json!({"entries": [{"kind": "warrant", "id": pool[i].1, "reason": "key_compromise"}]});
                let Ok(resp) = http.post(&url).bearer_auth(&token).json(&body).send().await else {
                    return;
                };
                let Ok(v) = resp.json::<Value>().await else { return };
                acked.lock().unwrap().push((i, v["version"].as_u64().unwrap()));
            }
        }));
    }
    until("the storm", WITHIN, || async {
        acked.lock().unwrap().len() >= KILL_AFTER
    })
    .await;
    // Watch the proxy's push state from the kill on, every 2 ms, so the
    // figure is the time from the kill to the first answer that shows the
    // loss (an upper bound by at most one poll).
    let watch = {
        let admin = format!("{}{}", proxy.admin_url, path::HEALTHZ);
        tokio::spawn(async move {
            let http = client();
            let start = Instant::now();
            while start.elapsed() < WITHIN {
                if let Ok(r) = http.get(&admin).send().await {
                    if let Ok(h) = r.json::<Value>().await {
                        if h["sync"]["push_connected"] == false {
                            return Some(Instant::now());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        })
    };
    reg.kill();
    let killed = Instant::now();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // While the registry is down: whatever the proxy applied, it enforces.
    let http = client();
    let during = applied(&proxy).await;
    let mut wrongly_allowed = 0;
    for (i, ver) in &acked {
        if *ver <= during && ask(&http, &proxy, &pool[*i].0).await.0 == 200 {
            wrongly_allowed += 1;
        }
    }

    // The proxy notices the push is gone and keeps enforcing from memory.
    let noticed = watch
        .await
        .unwrap()
        .expect("the proxy never showed the push connection lost")
        .saturating_duration_since(killed);
    let still_fresh = proxy.health().await["sync"]["fresh"] == true;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Back on the same address: the proxy converges to every acknowledged revocation.
    let reg = Registry::start_on(dir, addr, &["--heartbeat", "1s"]);
    let restarted = Instant::now();
    let head = reg.version().await;
    let max_acked = acked.iter().map(|(_, v)| *v).max().unwrap();
    assert!(
        head >= max_acked,
        "restarted at {head}, acknowledged {max_acked}"
    );
    // The registry itself kept every acknowledged revocation (the proxy
    // would deny them from memory anyway).
    let kept = reg.snapshot().await;
    for (i, ver) in &acked {
        let digest = veto_core::Digest::of(veto_core::EntryKind::Warrant, &pool[*i].1);
        assert!(
            kept.set
                .get(veto_core::EntryKind::Warrant, &digest)
                .is_some(),
            "the restarted registry lost warrant {i}, acknowledged in version {ver}"
        );
    }
    let converge = until("the proxy converges", WITHIN, || async {
        applied(&proxy).await >= head
    })
    .await;
    // Push comes back by itself; a revocation made now arrives by push.
    let repushed = until("push reconnects", WITHIN, || async {
        proxy.health().await["sync"]["push_connected"] == true
    })
    .await;
    let last = &pool[CHAINS - 1];
    let ver_after = reg.revoke_warrant(&last.1).await;
    let enforced_after = until("a new revocation is enforced", WITHIN, || async {
        ask(&http, &proxy, &last.0).await.1 == DenyReason::Revoked.as_str()
    })
    .await;
    assert!(applied(&proxy).await >= ver_after);
    for (i, ver) in &acked {
        let (status, code) = ask(&http, &proxy, &pool[*i].0).await;
        if status == 200 {
            wrongly_allowed += 1;
        }
        assert_eq!(
            code,
            DenyReason::Revoked.as_str(),
            "chain {i} (revoked in {ver}) answered {status}"
        );
    }
    // A never-revoked chain still passes.
    // (No worker took an index at or past the counter; some below it may
    // have been committed without an acknowledgement.)
    let untouched = next.load(Ordering::Relaxed);
    if untouched < CHAINS - 1 {
        assert_eq!(ask(&http, &proxy, &pool[untouched].0).await.0, 200);
    }
    assert_eq!(wrongly_allowed, 0);
    figure(
        "kill9-storm",
        &[
            ("acked", acked.len().to_string()),
            ("lost_by_registry", "0".into()),
            ("proxy_version_during_outage", during.to_string()),
            ("push_loss_noticed_after_kill_ms", ms(noticed)),
            ("fresh_during_outage", still_fresh.to_string()),
            ("registry_version_after_restart", head.to_string()),
            ("outage_ms", ms(restarted - killed)),
            ("converge_after_restart_ms", ms(converge)),
            ("push_back_after_restart_ms", ms(repushed)),
            ("new_revocation_enforced_ms", ms(enforced_after)),
            ("wrongly_allowed", wrongly_allowed.to_string()),
        ],
    );
}

// ---------------------------------------------------------------------------
// Partition between proxies and the registry.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_grows_staleness_applies_policy_and_converges() {
    const MAX_STALENESS: u64 = 4;
    let reg = Registry::start(&["--heartbeat", "1s"]);
    let relay = Relay::start(reg.addr).await;
    let up = ok_upstream().await;
    let dir = TempDir::new("faults-partition");
    let args = |policy| {
        [
            "--policy",
            policy,
            "--max-staleness",
            "4s",
            "--push-idle-timeout",
            "2s",
            "--poll-interval",
            "1s",
        ]
    };
    let via = relay.url();
    let closed = Proxy::start_via(&dir, &reg, &via, &up, &args("fail-closed"));
    let open = Proxy::start_via(&dir, &reg, &via, &up, &args("fail-open"));
    let pool = mint(&reg, 2).await;
    let (live, victim) = (&pool[0].0, &pool[1]);
    ready(&closed, live).await;
    ready(&open, live).await;

    relay.set(Fault::Partition);
    let cut = Instant::now();
    let ver = reg.revoke_warrant(&victim.1).await;
    let acked = Instant::now();

    // Sample both proxies every 50 ms through the partition.
    let http = client();
    let mut window_allowed = 0; // the victim allowed before the proxy went stale
    let mut stale_at = None;
    let mut open_flagged = 0;
    let mut samples = 0;
    let (mut ready_while_stale, mut unready_while_stale) = (0, 0);
    while cut.elapsed() < Duration::from_secs(MAX_STALENESS + 3) {
        samples += 1;
        // Staleness only grows during the partition: once the live chain
        // is denied as stale, every later answer must be a denial.
        let (sl, code_live) = ask(&http, &closed, live).await;
        if stale_at.is_none() && code_live == DenyReason::Stale.as_str() {
            stale_at = Some(cut.elapsed());
        }
        let (s, code) = ask(&http, &closed, &victim.0).await;
        if stale_at.is_some() {
            assert_eq!(
                (s, code.as_str()),
                (503, DenyReason::Stale.as_str()),
                "victim while stale"
            );
            assert_eq!(sl, 503, "live chain while stale");
        } else if s == 200 {
            window_allowed += 1;
        }
        if ask(&http, &open, live).await.0 == 200 {
            open_flagged += 1;
        }
        if stale_at.is_some() {
            if closed.readyz_status().await == 503 {
                unready_while_stale += 1;
            } else {
                ready_while_stale += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detect = stale_at.expect("the fail-closed proxy never went stale");
    // Fail-open allows the live chain on every sample, fresh or stale.
    assert_eq!(
        open_flagged, samples,
        "fail-open allowed {open_flagged} of {samples} samples"
    );
    // `/readyz` says 503 on every sample while stale.
    assert!(unready_while_stale > 0, "no sample while stale");
    assert_eq!(ready_while_stale, 0, "/readyz answered ready while stale");
    let ready_closed = closed.health().await;
    assert_eq!(ready_closed["sync"]["fresh"], false);
    let open_allowed_stale = open.metrics().await;

    relay.heal();
    let healed = Instant::now();
    let converge = until("convergence after the partition", WITHIN, || async {
        ask(&http, &closed, &victim.0).await.1 == DenyReason::Revoked.as_str()
            && ask(&http, &closed, live).await.0 == 200
            && ask(&http, &open, &victim.0).await.1 == DenyReason::Revoked.as_str()
    })
    .await;
    assert!(applied(&closed).await >= ver);
    until("/readyz 200 after healing", WITHIN, || async {
        closed.readyz_status().await == 200
    })
    .await;
    // After convergence the victim is never allowed again.
    let mut wrongly_allowed = 0;
    for _ in 0..20 {
        if ask(&http, &closed, &victim.0).await.0 == 200
            || ask(&http, &open, &victim.0).await.0 == 200
        {
            wrongly_allowed += 1;
        }
    }
    assert_eq!(wrongly_allowed, 0);
    let stale_allowed = metric_value(
        &open_allowed_stale,
        "veto_authorizer_decisions_total{outcome=\"allow_stale\"}",
    );
    figure(
        "partition",
        &[
            ("max_staleness_s", MAX_STALENESS.to_string()),
            ("detect_stale_ms", ms(detect)),
            ("victim_allowed_before_stale", window_allowed.to_string()),
            ("revocation_acked_after_cut_ms", ms(acked - cut)),
            ("samples", samples.to_string()),
            ("fail_open_allowed_samples", open_flagged.to_string()),
            (
                "readyz_503_samples_while_stale",
                unready_while_stale.to_string(),
            ),
            ("fail_open_metric_allow_stale", stale_allowed.to_string()),
            ("converge_after_heal_ms", ms(converge)),
            (
                "partition_s",
                format!("{:.1}", (healed - cut).as_secs_f64()),
            ),
            ("wrongly_allowed_after_apply", wrongly_allowed.to_string()),
        ],
    );
}

// ---------------------------------------------------------------------------
// A proxy that reaches its registry through a relay and polls every 10
// minutes: only the push path can explain enforcement.

struct PushOnly {
    reg: Registry,
    relay: Relay,
    proxy: Proxy,
    /// Two chains, the first one allowed.
    pool: Vec<(String, String)>,
    _dir: TempDir,
}

impl PushOnly {
    async fn start(label: &str) -> Self {
        let reg = Registry::start(&["--heartbeat", "1s"]);
        let relay = Relay::start(reg.addr).await;
        let up = ok_upstream().await;
        let dir = TempDir::new(label);
        let proxy = Proxy::start_via(
            &dir,
            &reg,
            &relay.url(),
            &up,
            &["--push-idle-timeout", "3s", "--poll-interval", "600s"],
        );
        let pool = mint(&reg, 2).await;
        ready(&proxy, &pool[0].0).await;
        Self {
            reg,
            relay,
            proxy,
            pool,
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------
// Half-open push connection.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_open_push_connection_is_noticed_within_the_heartbeat_allowance() {
    let PushOnly {
        reg,
        relay,
        proxy,
        pool,
        _dir,
    } = PushOnly::start("faults-halfopen").await;
    let connections = relay.accepted();

    relay.set(Fault::HalfOpen);
    let cut = Instant::now();
    let ver = reg.revoke_warrant(&pool[1].1).await;
    let http = client();
    let allowed_while_half_open = AtomicUsize::new(0);
    let enforced = until("enforcement after a half-open push", WITHIN, || async {
        let (s, code) = ask(&http, &proxy, &pool[1].0).await;
        if s == 200 {
            allowed_while_half_open.fetch_add(1, Ordering::Relaxed);
        }
        code == DenyReason::Revoked.as_str()
    })
    .await;
    let allowed_while_half_open = allowed_while_half_open.into_inner();
    // Once enforced, never allowed again.
    const ASKS_AFTER: usize = 50;
    for _ in 0..ASKS_AFTER {
        let (s, code) = ask(&http, &proxy, &pool[1].0).await;
        assert_eq!(
            (s, code.as_str()),
            (403, DenyReason::Revoked.as_str()),
            "after enforcement"
        );
    }
    assert!(
        relay.accepted() > connections,
        "no new connection was opened"
    );
    assert!(applied(&proxy).await >= ver);
    assert!(proxy.health().await["sync"]["fresh"] == true);
    figure(
        "half-open",
        &[
            ("heartbeat_s", "1".into()),
            ("push_idle_timeout_s", "3".into()),
            ("revocation_enforced_after_ms", ms(enforced)),
            (
                "allowed_before_reconnect",
                allowed_while_half_open.to_string(),
            ),
            ("revoked_answers_after_enforcement", ASKS_AFTER.to_string()),
            ("since_cut_ms", ms(cut.elapsed())),
        ],
    );
}

// ---------------------------------------------------------------------------
// The push connection is reset (closed under the proxy, and refused while
// the fault lasts): it reconnects and resumes from its applied version.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_push_connection_reconnects_and_resumes() {
    let PushOnly {
        reg,
        relay,
        proxy,
        pool,
        _dir,
    } = PushOnly::start("faults-reset").await;
    let connections = relay.accepted();

    relay.set(Fault::Reset);
    let reset = Instant::now();
    let dropped = until(
        "the proxy sees the push connection drop",
        WITHIN,
        || async { proxy.health().await["sync"]["push_connected"] == false },
    )
    .await;
    // Revoked while no connection can be made: missed by push for now.
    let ver = reg.revoke_warrant(&pool[1].1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = client();
    assert_eq!(
        ask(&http, &proxy, &pool[1].0).await.0,
        200,
        "nothing but the push could have told the proxy"
    );
    relay.heal();
    let healed = Instant::now();
    let enforced = until("enforcement after the reset", WITHIN, || async {
        ask(&http, &proxy, &pool[1].0).await.1 == DenyReason::Revoked.as_str()
    })
    .await;
    assert!(
        relay.accepted() > connections,
        "no new connection was opened"
    );
    assert!(applied(&proxy).await >= ver);
    assert_eq!(
        ask(&http, &proxy, &pool[0].0).await.0,
        200,
        "the live chain"
    );
    figure(
        "reset",
        &[
            ("push_drop_seen_ms", ms(dropped)),
            ("fault_s", format!("{:.1}", (healed - reset).as_secs_f64())),
            ("revocation_enforced_after_heal_ms", ms(enforced)),
        ],
    );
}

// ---------------------------------------------------------------------------
// A subscriber that stops reading.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_stops_reading_is_cut_and_others_are_unaffected() {
    const BATCHES: usize = 30;
    const PER_BATCH: usize = 1000;
    let reg = Registry::start(&["--heartbeat", "1s", "--subscriber-timeout", "2s"]);
    let pid = reg_pid(&reg);
    // The stuck subscriber: sends the request, never reads a byte.
    let mut stuck = std::net::TcpStream::connect(reg.addr).unwrap();
    write!(
        stuck,
        "GET {} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        path::SRL_EVENTS
    )
    .unwrap();
    let mut healthy = EventStream::open(&reg.at(path::SRL_EVENTS), Some("0")).await;
    until("two subscribers", WITHIN, || async {
        metric_value(&metrics(&reg).await, "veto_registry_sse_subscribers") >= 2.0
    })
    .await;
    let rss_before = rss_mib(pid);

    // Large deltas fill the stuck subscriber's socket buffers.
    let mut max_delay = Duration::ZERO;
    let mut rss_peak = rss_before;
    let mut first_ver = 0;
    let storm = Instant::now();
    let mut cut_at = None;
    for b in 0..BATCHES {
        let (status, body) = reg.revoke(big_batch(b, PER_BATCH)).await;
        let acked = Instant::now();
        assert_eq!(status, 201, "{body}");
        let ver = body["version"].as_u64().unwrap();
        if b == 0 {
            first_ver = ver;
        }
        let e = healthy.next_except(EventKind::Checkpoint, WITHIN).await;
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            (EventKind::Delta.as_str(), Some(ver.to_string().as_str()))
        );
        max_delay = max_delay.max(acked.elapsed());
        rss_peak = rss_peak.max(rss_mib(pid));
        if cut_at.is_none()
            && metric_value(
                &metrics(&reg).await,
                "veto_registry_stalled_connections_total",
            ) >= 1.0
        {
            cut_at = Some(storm.elapsed());
        }
    }
    let storm_ms = storm.elapsed();
    let seen_cut = std::cell::Cell::new(cut_at);
    until("the stuck subscriber is cut", WITHIN, || async {
        let m = metrics(&reg).await;
        let cut = metric_value(&m, "veto_registry_stalled_connections_total") >= 1.0;
        if cut && seen_cut.get().is_none() {
            seen_cut.set(Some(storm.elapsed()));
        }
        cut && metric_value(&m, "veto_registry_sse_subscribers") <= 1.0
    })
    .await;
    let cut_at = seen_cut
        .get()
        .expect("the stuck subscriber was never seen cut");
    // The healthy one still gets heartbeats.
    let e = healthy.next(Duration::from_secs(5)).await;
    assert_eq!(e.event, EventKind::Checkpoint.as_str());
    let rss_after = rss_mib(pid);

    // Control: the same storm on a registry with one healthy subscriber
    // only, to tell the stuck subscriber's cost from the state's.
    let control = Registry::start(&["--heartbeat", "1s"]);
    let mut watcher = EventStream::open(&control.at(path::SRL_EVENTS), Some("0")).await;
    let mut control_peak = rss_mib(control.pid());
    for b in 0..BATCHES {
        let (status, body) = control.revoke(big_batch(b, PER_BATCH)).await;
        assert_eq!(status, 201, "{body}");
        watcher.next_except(EventKind::Checkpoint, WITHIN).await;
        control_peak = control_peak.max(rss_mib(control.pid()));
    }
    figure(
        "slow-subscriber",
        &[
            ("deltas", BATCHES.to_string()),
            ("entries_per_delta", PER_BATCH.to_string()),
            ("first_version", first_ver.to_string()),
            ("subscriber_timeout_s", "2".into()),
            ("storm_ms", ms(storm_ms)),
            ("stuck_cut_after_storm_start_ms", ms(cut_at)),
            ("healthy_max_ack_to_receive_ms", ms(max_delay)),
            ("registry_rss_mib_before", format!("{rss_before:.1}")),
            ("registry_rss_mib_peak", format!("{rss_peak:.1}")),
            ("registry_rss_mib_after", format!("{rss_after:.1}")),
            ("control_rss_mib_peak", format!("{control_peak:.1}")),
        ],
    );
}

/// A batch of `n` warrant revocations with long ids (large deltas).
fn big_batch(b: usize, n: usize) -> Value {
    let pad = "x".repeat(180);
    json!((0..n)
        .map(|i| json!({"kind": "warrant", "id": format!("slow-{b:03}-{i:05}-{pad}"), "reason": "superseded"}))
        .collect::<Vec<_>>())
}

fn reg_pid(reg: &Registry) -> u32 {
    reg.pid()
}

async fn metrics(reg: &Registry) -> String {
    reg.http()
        .get(reg.at(path::METRICS))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// Clock skew between the registry and an authorizer.

/// The system clock shifted by `offset` seconds.
struct Skewed(i64);

impl Clock for Skewed {
    fn now(&self) -> u64 {
        (now() as i64 + self.0) as u64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_within_the_allowance_works_and_beyond_it_fails_closed() {
    let reg = Registry::start(&["--heartbeat", "1s"]);
    let pool = mint(&reg, 2).await;
    let (live, victim) = (&pool[0].0, &pool[1]);
    reg.revoke_warrant(&victim.1).await;
    let keys = KeySet::new([reg.authority_key()]);
    // offset (s), expected answer for the live chain.
    let cases: &[(i64, Option<DenyReason>)] = &[
        (0, None),
        (3, None),
        (-3, None),
        // Behind by more than the 5 s skew: every attestation is "from the
        // future" (so the state is never fresh) and so is the chain's `nbf`.
        (-30, Some(DenyReason::NotYetValid)),
        // Ahead by more than the 300 s max staleness: every attestation is too old.
        (400, Some(DenyReason::Stale)),
    ];
    let mut results = Vec::new();
    for (offset, want) in cases {
        let clock = Arc::new(Skewed(*offset));
        let mut config = AuthzConfig::new(&reg.url, "veto", keys.clone());
        config.pop.policy = veto_authorizer::PopPolicy::Off;
        let authz = Authorizer::start_with_clock(config, clock).await.unwrap();
        let action = "http:GET:/orders/1";
        let settle = Instant::now();
        // Give it time to sync (or fail to).
        let mut live_decision = authz.check(live, action).decision;
        while settle.elapsed() < Duration::from_secs(4) {
            live_decision = authz.check(live, action).decision;
            if want.is_none() && live_decision.is_allowed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let victim_decision = authz.check(&victim.0, action).decision;
        assert!(
            !victim_decision.is_allowed(),
            "offset {offset}: revoked chain allowed"
        );
        match want {
            None => {
                assert!(
                    live_decision.is_allowed(),
                    "offset {offset}: {live_decision:?}"
                );
                assert_eq!(victim_decision.reason(), Some(DenyReason::Revoked));
            }
            Some(r) => {
                assert_eq!(live_decision.reason(), Some(*r), "offset {offset}");
                assert!(!authz.status().fresh);
            }
        }
        results.push(format!(
            "{offset}s:{}",
            live_decision
                .reason()
                .map(|r| r.as_str())
                .unwrap_or("allow")
        ));
        authz.shutdown();
    }
    figure(
        "clock-skew",
        &[
            ("skew_allowance_s", "5".into()),
            ("max_staleness_s", "300".into()),
            ("live_chain_by_offset", results.join(",")),
            ("revoked_allowed", "0".into()),
        ],
    );
}

// ---------------------------------------------------------------------------
// Disk full and read-only, on a tmpfs of our own.

/// A tmpfs mounted for one test, lazily unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (such as `8m`), or returns `None` (after
    /// saying so) when this process may not mount.
    fn mount(label: &str, size: &str) -> Option<Self> {
        let dir = TempDir::new(label);
        let path = dir.path().join("mnt");
        std::fs::create_dir_all(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            if std::env::var("VETO_TEST_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
                panic!("cannot mount a tmpfs (needs root) and VETO_TEST_REQUIRE_ROOT=1");
            }
            eprintln!("skipped: mounting a tmpfs needs root; run as root or set VETO_TEST_REQUIRE_ROOT=1 to require it");
            return None;
        }
        Some(Self { path, _dir: dir })
    }

    fn remount(&self, opts: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {opts}");
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Starts a registry with its data directory on `fs`.
fn registry_on(fs: &Tmpfs, logs: &Arc<TempDir>) -> Registry {
    Registry::start_with_data(logs.clone(), fs.path().join("data"), &["--heartbeat", "1s"])
}

/// Revokes batches of `n` warrants until refused; returns the acknowledged
/// ids with their versions and the refusal (status, body).
async fn revoke_until_refused(
    reg: &Registry,
    tag: &str,
    n: usize,
    max: usize,
) -> (Vec<(String, u64)>, Option<(u16, Value)>) {
    let mut acked = Vec::new();
    for b in 0..max {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("{tag}-{b:04}-{i:04}-{}", "p".repeat(200)))
            .collect();
        let entries: Vec<Value> = ids
            .iter()
            .map(|id| json!({"kind": "warrant", "id": id, "reason": "superseded"}))
            .collect();
        let (status, body) = reg.revoke(json!(entries)).await;
        if status != 201 {
            return (acked, Some((status, body)));
        }
        let ver = body["version"].as_u64().unwrap();
        acked.extend(ids.into_iter().map(|id| (id, ver)));
    }
    (acked, None)
}

/// Every acknowledged id is in the restarted registry's snapshot, at its version,
/// and the versions are exactly 1..=head.
async fn assert_all_kept(reg: &Registry, acked: &[(String, u64)]) {
    let snap = reg.snapshot().await;
    let deltas = reg.all_deltas(0).await;
    assert_eq!(
        deltas.len() as u64,
        snap.ver,
        "versions 1..={} must all be there",
        snap.ver
    );
    // Signed and hash-chained from 1 to the head, and equal to the snapshot.
    let verifier = reg.verifier();
    let mut state = veto_core::SrlState::new();
    for jws in &deltas {
        let d = verifier.delta(jws, now()).unwrap();
        state.apply_delta(&d).unwrap();
    }
    assert_eq!((state.ver(), state.head()), (snap.ver, snap.head));
    assert_eq!(state.set(), &snap.set);
    let by_id: HashMap<&str, u64> = acked.iter().map(|(i, v)| (i.as_str(), *v)).collect();
    for (id, ver) in &by_id {
        let digest = veto_core::Digest::of(veto_core::EntryKind::Warrant, id);
        assert!(
            snap.set
                .get(veto_core::EntryKind::Warrant, &digest)
                .is_some(),
            "acknowledged `{id}` (version {ver}) is lost"
        );
    }
}

/// Revokes `id` until the registry accepts it; returns the version and
/// how many attempts were refused first.
async fn revoke_until_accepted(reg: &Registry, id: &str) -> (u64, usize) {
    let start = Instant::now();
    let mut refused = 0;
    loop {
        let (s, b) = reg
            .revoke(json!([{"kind": "warrant", "id": id, "reason": "superseded"}]))
            .await;
        if s == 201 {
            return (b["version"].as_u64().unwrap(), refused);
        }
        refused += 1;
        assert!(start.elapsed() < WITHIN, "`{id}` still refused: {s} {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_revocations_and_loses_none() {
    let Some(fs) = Tmpfs::mount("faults-full", "6m") else {
        return;
    };
    let logs = Arc::new(TempDir::new("faults-full-logs"));
    let mut reg = registry_on(&fs, &logs);
    let (acked, refusal) = revoke_until_refused(&reg, "full", 500, 400).await;
    let (status, body) = refusal.expect("the disk never filled");
    assert!(!acked.is_empty());
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"], ErrorCode::StoreFull.as_str(), "{body}");
    let head = reg.version().await;
    // Reads still work while full.
    assert_eq!(reg.get(path::SRL_CHECKPOINT).await.0, 200);
    // Pushes go on while full: a subscriber gets heartbeats for the head.
    let mut events = EventStream::open(&reg.at(path::SRL_EVENTS), Some(&head.to_string())).await;
    // The first checkpoint is sent on connect; the next one is a heartbeat
    // signed while the disk is full.
    let verifier = reg.verifier();
    let mut iats = Vec::new();
    let heartbeat = Instant::now();
    while iats.len() < 2 {
        let e = events.next(Duration::from_secs(5)).await;
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            (
                EventKind::Checkpoint.as_str(),
                Some(head.to_string().as_str())
            ),
            "a heartbeat while the disk is full"
        );
        let c = verifier.checkpoint(&e.data, now()).unwrap();
        if iats.last().is_none_or(|last| c.payload.iat > *last) {
            iats.push(c.payload.iat);
        }
    }
    let heartbeat_ms = heartbeat.elapsed();
    // Retrying does not half-write either.
    let (again, _) = reg
        .revoke(json!([{"kind": "warrant", "id": "while-full", "reason": "superseded"}]))
        .await;
    if again == 201 {
        // A small entry that still fit is pushed like any other.
        let e = events.next_except(EventKind::Checkpoint, WITHIN).await;
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            (
                EventKind::Delta.as_str(),
                Some((head + 1).to_string().as_str())
            )
        );
    }
    // A small entry may still fit; if it was acknowledged it must survive too.
    let mut acked = acked;
    if again == 201 {
        acked.push(("while-full".to_owned(), head + 1));
    }
    let retry_refused = again == 507;
    assert_eq!(reg.version().await, head + u64::from(again == 201));

    // Space comes back: the same process accepts again, without a restart.
    fs.remount("size=64m");
    let recovered = Instant::now();
    let (ver, refused) = revoke_until_accepted(&reg, "after-full").await;
    let after = vec![("after-full".to_owned(), ver)];
    let recover_ms = recovered.elapsed();
    reg.kill();
    drop(reg);
    let reg = registry_on(&fs, &logs);
    let mut all = acked.clone();
    all.extend(after);
    assert_all_kept(&reg, &all).await;
    figure(
        "disk-full",
        &[
            ("tmpfs", "6m".into()),
            ("acked_entries_before_full", acked.len().to_string()),
            ("head_when_full", head.to_string()),
            (
                "refusal",
                format!("{status}/{}", body["error"].as_str().unwrap_or_default()),
            ),
            ("retry_refused", retry_refused.to_string()),
            ("new_heartbeat_pushed_while_full_ms", ms(heartbeat_ms)),
            ("recovered_without_restart_ms", ms(recover_ms)),
            ("refused_while_recovering", refused.to_string()),
            ("lost_after_kill9_restart", "0".into()),
        ],
    );
}

/// Makes `dir` and the files in it immutable (`chattr +i`: writes through
/// open descriptors fail with EPERM, nothing can be created) until
/// dropped. SQLite's `-shm` index is left alone: it is memory-mapped, and
/// a write fault on an immutable mapping is SIGBUS, not an error SQLite
/// could report.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Self {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().ends_with("-shm"))
            .collect();
        paths.push(dir.to_owned());
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .args(&paths)
            .status()
            .unwrap();
        assert!(status.success(), "chattr +i in `{}`", dir.display());
        Self(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-R")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// Whether this process may make files immutable (root on ext2/3/4);
/// `None` after saying so when it may not.
fn can_chattr(dir: &Path) -> Option<()> {
    let probe = dir.join("chattr-probe");
    std::fs::write(&probe, b"x").unwrap();
    let ok = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&probe)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&probe)
        .status();
    let _ = std::fs::remove_file(&probe);
    if ok {
        return Some(());
    }
    if std::env::var("VETO_TEST_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
        panic!(
            "cannot chattr +i under `{}` (needs root on ext2/3/4) and VETO_TEST_REQUIRE_ROOT=1",
            dir.display()
        );
    }
    eprintln!("skipped: making files immutable needs root on ext2/3/4; set VETO_TEST_REQUIRE_ROOT=1 to require it");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_turned_read_only_refuses_revocations_and_serves_reads() {
    let dir = Arc::new(TempDir::new("faults-ro"));
    let Some(()) = can_chattr(dir.path()) else {
        return;
    };
    let mut reg = Registry::start_in(dir.clone(), &["--heartbeat", "1s"]);
    let (mut acked, refusal) = revoke_until_refused(&reg, "ro", 10, 5).await;
    assert!(refusal.is_none());
    let head = reg.version().await;

    let frozen = Immutable::set(reg.data_dir());
    let (status, body) = reg
        .revoke(json!([{"kind": "warrant", "id": "while-ro", "reason": "superseded"}]))
        .await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"], ErrorCode::StoreReadOnly.as_str(), "{body}");
    assert_eq!(reg.version().await, head);
    assert_eq!(reg.get(path::SRL_CHECKPOINT).await.0, 200);
    assert_eq!(reg.all_deltas(0).await.len() as u64, head);

    drop(frozen);
    let writable = Instant::now();
    let (ver, refused) = revoke_until_accepted(&reg, "after-ro").await;
    let back = writable.elapsed();
    acked.push(("after-ro".into(), ver));
    reg.kill();
    drop(reg);
    let reg = Registry::start_in(dir, &["--heartbeat", "1s"]);
    assert_all_kept(&reg, &acked).await;
    figure(
        "read-only",
        &[
            ("acked_before", (acked.len() - 1).to_string()),
            (
                "refusal",
                format!("{status}/{}", body["error"].as_str().unwrap_or_default()),
            ),
            ("reads_while_read_only", "200".into()),
            ("accepted_again_after_ms", ms(back)),
            ("refused_while_recovering", refused.to_string()),
            ("lost_after_kill9_restart", "0".into()),
        ],
    );
}
