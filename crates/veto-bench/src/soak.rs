//! `veto-bench soak`: a real `veto proxy` at sustained load while
//! revocations stream in.
//!
//! Setup: a registry (`veto serve`), a `veto proxy` with its defaults (SSE
//! push, fail-closed, poll every 60 s, `--pop required`) in front of the
//! in-process upstream,
//! and root warrants (act `http:*:/*`) minted by concurrent `POST
//! /v1/warrants`: `--chains`, plus one for each revocation to come, plus
//! one in twenty of `--chains` that is revoked before the load starts (so
//! denials are exercised from the first second). Every chain is minted up
//! front so that the set of distinct chains, and with it the proxy's
//! verified-chain cache, stops growing once each has been seen (during the
//! warm-up): RSS growth after that is the revocation state, or a leak.
//!
//! Load: `--connections` keep-alive HTTP/1.1 connections (one hyper client
//! connection each) send `GET /` back to back, each request with a chain
//! picked at random and a fresh DPoP proof made here by that chain's holder
//! key (`--pop off`: the chain as a bearer token; the proof is still made
//! and sent, and ignored, so the client does the same work). The chain is
//! an already-revoked one with probability
//! `--revoked-share`, a live one otherwise. Meanwhile a dedicated thread
//! revokes a random live chain `--revoke-rate` times a second (`POST
//! /v1/revocations`; the acknowledged version and the arrival of the `201`
//! are recorded), so about `--chains` live ones are left at the end.
//! Another thread polls the proxy's admin
//! `GET /healthz` every 2 ms: the first answer whose `sync.version` reached
//! a revocation's version marks that revocation *applied*. The arrival of
//! that answer is an upper bound of the moment the proxy applied it, so
//! the check below never blames the proxy for the polling resolution.
//!
//! Correctness: a request is *wrongly allowed* when it was sent after the
//! applied instant of its chain's revocation and was answered 2xx. A
//! request sent between the acknowledgement and the applied instant and
//! allowed is *allowed in the propagation window*: counted, not an error.
//! Only requests whose chain's revocation had already been sent when the
//! request was sent are kept for this check; the others cannot be wrong.
//! The proxy cuts off an answer still in flight when its chain's
//! revocation arrives: such a broken answer is counted apart, not as a
//! transport failure.
//!
//! Every `--sample` a progress line goes to stderr and into the time series
//! printed at the end: throughput and latency in the interval, the proxy's
//! and the registry's RSS (`VmRSS`), revocations so far, the proxy's
//! applied version. The exit status is the gate described in [`GATE`]:
//! `.ci/run` can run the short profile (`--duration 60s`) as a gate, and a
//! user the long one (`--duration 10m`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use veto_authorizer::PopPolicy;
use veto_core::dpop::{self, ProofSpec};
use veto_core::wire::{header, path};
use veto_core::SigningKey;

use crate::overhead::parse_duration_ms;
use crate::propagation::revoke_id;
use crate::proxy::Proxy;
use crate::registry::Registry;
use crate::stats::{percentile, signed_ms, sorted};
use crate::Common;
use veto_testkit::Metrics;
use veto_testkit::Upstream;

/// What makes `veto-bench soak` exit non-zero (its `--help` epilogue).
/// Keep in step with the constants below (a test checks).
pub(crate) const GATE: &str = "\
Exit status: non-zero when
  - any request was wrongly allowed: sent after the proxy had applied the
    revocation of its chain (as seen on its /healthz) and answered 2xx;
  - a live chain (no revocation sent yet) was denied;
  - a revocation was not applied by the proxy within 30 s of its
    acknowledgement (each revocation is checked);
  - more than 1 in 10000 requests failed at the transport level
    (connection error, broken response, no answer within 10 s, and an
    answer broken off on a chain whose revocation had been applied before
    the request was sent; an answer the proxy cut off because its chain's
    revocation was applied while it was in flight is by design, counted
    apart, and must not outnumber the proxy's own count of streams cut);
  - the proxy's RSS grew, from the first sample at or after --warmup to the
    last sample, by more than 32 MiB and by more than 50% (the larger of the
    two is the allowance).
Short profile (CI gate): veto-bench soak --duration 60s
Long profile:            veto-bench soak --duration 10m";

/// RSS growth allowance: the larger of this many MiB ...
const RSS_GROWTH_MIB: u64 = 32;
/// ... and this percentage of the first post-warm-up sample.
const RSS_GROWTH_PCT: u64 = 50;
/// Transport failures tolerated: one per this many requests.
const TRANSPORT_TOLERANCE: u64 = 10_000;
/// A request without a complete answer after this is a transport failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the proxy to apply a revocation at the end.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// `/healthz` polling period of the applied-version watcher.
const WATCH_EVERY: Duration = Duration::from_millis(2);
/// Concurrent `POST /v1/warrants` during setup.
const MINT_CONCURRENCY: usize = 16;
/// One chain in this many is revoked before the load starts.
const PRE_REVOKED_ONE_IN: usize = 20;
const ACT: &[&str] = &["http:*:/*"];

/// Arguments of `veto-bench soak`.
#[derive(Args, Debug)]
pub(crate) struct SoakArgs {
    /// How long to load the proxy: `60s` (short profile), `10m` (long profile).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent keep-alive HTTP/1.1 connections to the proxy.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Revocations during the load: `20/s`, `600/m`, or a number per second (`0`: none).
    #[arg(long, default_value = "20/s", value_parser = parse_rate)]
    revoke_rate: f64,
    /// Live chains left at the end (one more is minted up front for each revocation to come).
    #[arg(long, default_value_t = 2000)]
    chains: usize,
    /// Share of requests sent with an already-revoked chain.
    #[arg(long, default_value_t = 0.1)]
    revoked_share: f64,
    /// Interval of the progress lines and the time series.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample: Duration,
    /// RSS growth is measured from the first sample at or after this. The
    /// default is past the proxy's DPoP replay horizon (its 30 s proof
    /// window plus 1 s): until then the replay cache fills by design (every
    /// proof of the last 31 s is remembered); after it, memory must be flat.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    warmup: Duration,
    /// The proxy's `--pop` policy: `required` (its default; every request
    /// carries `Authorization: DPoP` and a fresh proof made by this
    /// process) or `off` (`Authorization: Bearer`; the proof is made and
    /// sent all the same, and ignored by the proxy).
    #[arg(long, default_value = "required")]
    pop: veto_authorizer::PopPolicy,
    #[command(flatten)]
    common: Common,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s)
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .ok_or_else(|| format!("`{s}` is not a duration such as `60s`, `10m` or `500ms`"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, per_secs) = match s.split_once('/') {
        None => (s, 1.0),
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some(_) => return Err(format!("`{s}`: the rate's unit must be `/s` or `/m`")),
    };
    n.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .map(|r| r / per_secs)
        .ok_or_else(|| format!("`{s}` is not a rate such as `20/s`"))
}

/// xorshift64*: cheap, and plenty for picking chains.
struct Rng(u64);

impl Rng {
    fn new() -> anyhow::Result<Self> {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b)
            .map_err(|e| anyhow::anyhow!("cannot read random bytes: {e}"))?;
        Ok(Self(u64::from_le_bytes(b) | 1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One chain of the pool.
struct Chain {
    jti: String,
    /// The chain as sent.
    raw: String,
    /// The leaf's holder key, which proves every request (DPoP).
    key: SigningKey,
    /// `DPoP <chain>`, or `Bearer <chain>` with `--pop off`.
    auth: HeaderValue,
    /// Set just before its revocation is sent.
    revoking: OnceLock<Instant>,
}

/// Every chain minted (index = chain id), split into live and revoked.
#[derive(Default)]
struct Pool {
    chains: Vec<Arc<Chain>>,
    live: Vec<u32>,
    revoked: Vec<u32>,
}

impl Pool {
    fn add(&mut self, chain: &str, jti: String, key: SigningKey, pop: bool) -> anyhow::Result<()> {
        let id = u32::try_from(self.chains.len())?;
        let scheme = if pop { "DPoP" } else { "Bearer" };
        self.chains.push(Arc::new(Chain {
            jti,
            raw: chain.to_owned(),
            key,
            auth: HeaderValue::from_str(&format!("{scheme} {chain}"))?,
            revoking: OnceLock::new(),
        }));
        self.live.push(id);
        Ok(())
    }

    /// A revoked chain with probability `revoked_share` (once there is
    /// one), a live one otherwise.
    fn pick(&self, rng: &mut Rng, revoked_share: f64) -> Option<(u32, Arc<Chain>)> {
        let from = if !self.revoked.is_empty() && rng.unit() < revoked_share {
            &self.revoked
        } else {
            &self.live
        };
        let id = *from.get(rng.below(from.len()))?;
        Some((id, self.chains.get(id as usize)?.clone()))
    }

    /// Takes a random chain out of the live set, marked as being revoked now.
    fn take_live(&mut self, rng: &mut Rng) -> Option<(u32, Arc<Chain>)> {
        if self.live.is_empty() {
            return None;
        }
        let i = rng.below(self.live.len());
        let id = self.live.swap_remove(i);
        let chain = self.chains.get(id as usize)?.clone();
        let _ = chain.revoking.set(Instant::now());
        Some((id, chain))
    }
}

/// State shared by the connections, the revoker, the watcher and the sampler.
#[derive(Default)]
struct Shared {
    pool: RwLock<Pool>,
    /// Latencies (µs) of the requests completed since the last sample.
    interval: Mutex<Vec<u32>>,
    /// Transport failures, and the first one's message.
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
    revocations: AtomicU64,
    /// The proxy's applied version, as last seen on `/healthz`.
    applied: AtomicU64,
    /// Stops the watcher.
    stop: AtomicBool,
}

impl Shared {
    fn failed(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(what);
    }
}

/// Stops the watcher thread however the run ends.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// A request whose chain's revocation had been sent before it was.
struct Watched {
    sent: Instant,
    chain: u32,
    allowed: bool,
}

/// A request on a chain that was being revoked whose answer broke off.
struct Broken {
    sent: Instant,
    chain: u32,
    /// The status of the head, when one arrived before the break.
    head: Option<StatusCode>,
    error: String,
}

/// What the connections saw.
#[derive(Default)]
struct Tally {
    watched: Vec<Watched>,
    ok: u64,
    forbidden: u64,
    other: u64,
    /// Clean closes by the proxy between requests (reconnected, not failures).
    reconnects: u64,
    /// Answers broken off on chains with a revocation sent (judged later).
    broken: Vec<Broken>,
    /// Live chains (no revocation sent) answered with something else than 2xx.
    live_denied: u64,
    first_live_denial: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.watched.extend(o.watched);
        self.ok += o.ok;
        self.forbidden += o.forbidden;
        self.other += o.other;
        self.reconnects += o.reconnects;
        self.broken.extend(o.broken);
        self.live_denied += o.live_denied;
        if self.first_live_denial.is_none() {
            self.first_live_denial = o.first_live_denial;
        }
    }
}

/// One revocation, with the chain it revoked.
struct Revocation {
    chain: u32,
    ver: u64,
    sent: Instant,
    acked: Instant,
}

/// One point of the time series.
struct Sample {
    elapsed: Duration,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    proxy_kib: u64,
    registry_kib: u64,
    revocations: u64,
    applied: u64,
}

async fn connect(addr: &str) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One keep-alive connection sending `GET /` back to back until `deadline`.
async fn connection(
    shared: Arc<Shared>,
    addr: String,
    deadline: Instant,
    revoked_share: f64,
) -> anyhow::Result<Tally> {
    let url = format!("http://{addr}/");
    let mut rng = Rng::new()?;
    let mut tally = Tally::default();
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    while Instant::now() < deadline {
        let s = match &mut sender {
            Some(s) => s,
            None => match connect(&addr).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    shared.failed(format!("connecting to the proxy: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            // Closed by the proxy between requests: nothing was sent.
            tally.reconnects += 1;
            sender = None;
            continue;
        }
        let picked = shared
            .pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pick(&mut rng, revoked_share);
        let Some((id, chain)) = picked else {
            bail!("the chain pool is empty");
        };
        let mut req = Request::get("/")
            .header(HOST, &addr)
            .header(AUTHORIZATION, chain.auth.clone());
        {
            // A fresh proof per request, as an agent makes it; with `--pop
            // off` too (the proxy ignores it), so that the client's work is
            // the same in both modes and only the proxy's differs.
            let proof = dpop::make(
                &chain.key,
                &ProofSpec {
                    method: "GET",
                    url: &url,
                    chain: &chain.raw,
                    iat: unix_now(),
                    nonce: None,
                },
            )?;
            req = req.header(header::DPOP, proof);
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let sent = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let r = s.send_request(req).await.map_err(|e| (None, e))?;
            // The status is kept from the head: a 2xx head is an allowed
            // request whatever happens to its body afterwards.
            let status = r.status();
            let body = r
                .into_body()
                .collect()
                .await
                .map_err(|e| (Some(status), e))?
                .to_bytes();
            Ok::<_, (Option<StatusCode>, hyper::Error)>((status, body))
        })
        .await;
        let (status, body) = match answer {
            Ok(Ok(a)) => a,
            // The proxy cuts off an answer still streaming when its
            // chain's revocation is applied: judged after the run against
            // the revocation's instants (by design only while it was
            // being revoked; a transport failure if it was applied before
            // the request was sent).
            Ok(Err((head, e))) if chain.revoking.get().is_some() => {
                tally.broken.push(Broken {
                    sent,
                    chain: id,
                    head,
                    error: e.to_string(),
                });
                sender = None;
                continue;
            }
            Ok(Err((_, e))) => {
                shared.failed(format!("request through the proxy: {e}"));
                sender = None;
                continue;
            }
            Err(_) => {
                shared.failed(format!(
                    "no answer from the proxy within {REQUEST_TIMEOUT:?}"
                ));
                sender = None;
                continue;
            }
        };
        let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        shared
            .interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(micros);
        let allowed = status.is_success();
        match status.as_u16() {
            200..=299 => tally.ok += 1,
            403 => tally.forbidden += 1,
            _ => tally.other += 1,
        }
        match chain.revoking.get() {
            Some(at) if *at <= sent => tally.watched.push(Watched {
                sent,
                chain: id,
                allowed,
            }),
            None if !allowed => {
                tally.live_denied += 1;
                tally
                    .first_live_denial
                    .get_or_insert_with(|| format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            _ => {}
        }
    }
    Ok(tally)
}

/// Now, Unix seconds (a proof's `iat`).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `sync.version` from the proxy's `/healthz`.
async fn applied_version(client: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["sync"]["version"]
        .as_u64()
        .with_context(|| format!("no `sync.version` in the proxy's {}", path::HEALTHZ))
}

/// Polls the proxy's `/healthz` every [`WATCH_EVERY`] until `stop`; returns
/// each new applied version with the arrival of the answer that first
/// showed it, and the number of failed polls. Runs its own current-thread
/// runtime so the load's tasks do not delay it: call it on its own thread.
fn watch_applied(admin: String, shared: Arc<Shared>) -> anyhow::Result<(Vec<(u64, Instant)>, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("{admin}{}", path::HEALTHZ);
        let (mut seen, mut failed) = (Vec::<(u64, Instant)>::new(), 0u64);
        while !shared.stop.load(Ordering::SeqCst) {
            match applied_version(&client, &url).await {
                Ok(v) if seen.last().is_none_or(|(last, _)| v > *last) => {
                    seen.push((v, Instant::now()));
                    shared.applied.store(v, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => failed += 1,
            }
            // A thread sleep is finer than the runtime's 1 ms timer, and
            // nothing else runs on this runtime.
            std::thread::sleep(WATCH_EVERY);
        }
        Ok((seen, failed))
    })
}

/// Revokes a random live chain; returns what was acknowledged.
async fn revoke_live(
    client: &reqwest::Client,
    reg: &Registry,
    shared: &Shared,
    rng: &mut Rng,
) -> anyhow::Result<Revocation> {
    let taken = shared
        .pool
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take_live(rng);
    let (id, chain) = taken.context("no live chain left to revoke")?;
    let (ver, sent, acked) = revoke_id(client, reg, &chain.jti).await?;
    shared
        .pool
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .revoked
        .push(id);
    shared.revocations.fetch_add(1, Ordering::SeqCst);
    Ok(Revocation {
        chain: id,
        ver,
        sent,
        acked,
    })
}

/// Revokes a live chain `rate` times a second until `deadline` (at most
/// `rate` × the time left); runs its own current-thread runtime (so the
/// acknowledgement times are not queued behind the load): call it on its
/// own thread.
fn revoke_stream(
    reg: Arc<Registry>,
    shared: Arc<Shared>,
    rate: f64,
    deadline: Instant,
) -> anyhow::Result<Vec<Revocation>> {
    let mut out = Vec::new();
    if rate <= 0.0 {
        return Ok(out);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let mut rng = Rng::new()?;
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut next = Instant::now() + every;
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            out.push(revoke_live(&client, &reg, &shared, &mut rng).await?);
            // Behind schedule (a slow commit): no burst to catch up.
            next = (next + every).max(Instant::now());
        }
        Ok(out)
    })
}

/// Mints `n` chains with [`MINT_CONCURRENCY`] concurrent requests, with
/// progress on stderr.
async fn mint_pool(reg: &Arc<Registry>, n: usize, ttl: u64, pop: bool) -> anyhow::Result<Pool> {
    let (next, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let tasks: Vec<_> = (0..MINT_CONCURRENCY.min(n))
        .map(|_| {
            let (reg, next, done) = (reg.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let key = SigningKey::generate()?;
                    let agent = format!("soak-agent-{i}");
                    let (chain, jti) = reg
                        .mint_held(&client, &agent, ACT, ttl, key.public())
                        .await?;
                    out.push((chain, jti, key));
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if d % (n / 10).max(1) == 0 || d == n {
                        eprintln!("soak: minted {d}/{n} chains");
                    }
                }
                Ok::<_, anyhow::Error>(out)
            })
        })
        .collect();
    let mut pool = Pool::default();
    for t in tasks {
        for (chain, jti, key) in t.await?? {
            pool.add(&chain, jti, key, pop)?;
        }
    }
    Ok(pool)
}

/// How the requests on chains under revocation were answered.
#[derive(Debug, Default, PartialEq)]
struct Verdicts {
    /// `(chain, ms sent after applied)` of each 2xx sent after the proxy
    /// had applied the chain's revocation.
    wrongly_allowed: Vec<(u32, f64)>,
    /// 2xx sent between the acknowledgement and the applied instant.
    window_allowed: u64,
    /// Denials sent after the applied instant.
    denied_after_applied: u64,
    /// Answers broken off because their chain's revocation was applied
    /// while they were in flight (by design).
    cut: u64,
    /// Answers broken off although the chain's revocation had been applied
    /// before the request was sent: the proxy should have refused them
    /// cleanly, so each is a transport failure. The first few, described.
    broken_after_applied: Vec<String>,
}

/// Judges each request on a chain under revocation against the
/// revocation's instants: `by_chain` maps a chain to its acknowledgement
/// and applied instants. A broken answer whose head said 2xx was allowed,
/// whatever happened to its body.
fn judge(
    watched: &[Watched],
    broken: &[Broken],
    revoking: impl Fn(u32) -> Option<Instant>,
    by_chain: &HashMap<u32, (Instant, Option<Instant>)>,
) -> Verdicts {
    let mut v = Verdicts::default();
    let mut allowed_heads = Vec::new();
    for b in broken {
        let applied = by_chain.get(&b.chain).and_then(|(_, applied)| *applied);
        match applied {
            Some(at) if b.sent > at => v.broken_after_applied.push(format!(
                "chain #{} sent {:.2} ms after its revocation was applied: {}",
                b.chain,
                signed_ms(b.sent, at),
                b.error
            )),
            _ => v.cut += 1,
        }
        let revoked_before = revoking(b.chain).is_some_and(|at| at <= b.sent);
        if revoked_before && b.head.is_some_and(|s| s.is_success()) {
            allowed_heads.push(Watched {
                sent: b.sent,
                chain: b.chain,
                allowed: true,
            });
        }
    }
    for w in watched.iter().chain(&allowed_heads) {
        let Some((acked, applied)) = by_chain.get(&w.chain) else {
            continue;
        };
        match applied {
            Some(at) if w.sent > *at && w.allowed => {
                v.wrongly_allowed.push((w.chain, signed_ms(w.sent, *at)));
            }
            Some(at) if w.sent > *at => v.denied_after_applied += 1,
            _ if w.allowed && w.sent >= *acked => v.window_allowed += 1,
            _ => {}
        }
    }
    v
}

/// Waits until the proxy's applied version is at least `ver`.
async fn wait_applied(shared: &Shared, ver: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while shared.applied.load(Ordering::SeqCst) < ver {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn ms_of(micros: &[u32]) -> Vec<f64> {
    sorted(micros.iter().map(|u| f64::from(*u) / 1e3).collect())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Everything the result block needs.
struct Report {
    registry: String,
    proxy: String,
    setup_secs: f64,
    minted: usize,
    pre_revoked: usize,
    load_secs: f64,
    latencies_ms: Vec<f64>,
    tally: Tally,
    failures: u64,
    first_failure: Option<String>,
    revocations: Vec<Revocation>,
    /// Ack→applied of each revocation during the load, in ms.
    propagation_ms: Vec<f64>,
    unapplied: usize,
    verdicts: Verdicts,
    watch_failures: u64,
    /// The proxy's `veto_proxy_streams_cut_total`, summed over reasons.
    streams_cut: Option<f64>,
    samples: Vec<Sample>,
}

pub(crate) async fn run(a: SoakArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.chains < 2 {
        bail!("--connections must be at least 1 and --chains at least 2");
    }
    if !(0.0..1.0).contains(&a.revoked_share) {
        bail!("--revoked-share must be in [0, 1)");
    }
    let veto = a.common.veto_path()?;
    let reg = Arc::new(Registry::start(&veto, a.common.keep_data).await?);
    let upstream = Upstream::start().await?;
    let pop = a.pop.to_string();
    let args = ["--pop", pop.as_str()];
    let result = match Proxy::start(&veto, a.common.keep_data, &reg, &upstream.url, &args).await {
        Ok(proxy) => {
            let r = soak(&a, &reg, &proxy).await;
            let stopped = proxy.stop().await;
            r.and_then(|r| stopped.map(|()| r))
        }
        Err(e) => Err(e),
    };
    drop(upstream);
    // Every thread holding a clone has been joined; otherwise dropping
    // the last clone kills the registry.
    let stopped = match Arc::try_unwrap(reg) {
        Ok(reg) => reg.stop().await,
        Err(_) => Ok(()),
    };
    let report = result?;
    stopped?;
    report.print(&a);
    report.verdict(&a)
}

async fn soak(a: &SoakArgs, reg: &Arc<Registry>, proxy: &Proxy) -> anyhow::Result<Report> {
    let setup = Instant::now();
    let ttl = a.duration.as_secs() + 3600;
    let pre_revoked = (a.chains / PRE_REVOKED_ONE_IN).max(1);
    let to_revoke = (a.revoke_rate * a.duration.as_secs_f64()).ceil() as usize;
    let minted = a.chains + pre_revoked + to_revoke;
    eprintln!(
        "soak: minting {minted} chains ({} + {pre_revoked} revoked before the load + {to_revoke} for the revocations during it)",
        a.chains
    );
    let shared = Arc::new(Shared {
        pool: RwLock::new(mint_pool(reg, minted, ttl, a.pop != PopPolicy::Off).await?),
        ..Shared::default()
    });
    let _stop = StopOnDrop(shared.clone());
    let watcher = {
        let (admin, shared) = (proxy.admin.clone(), shared.clone());
        std::thread::spawn(move || watch_applied(admin, shared))
    };
    eprintln!("soak: revoking {pre_revoked} chains before the load");
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut rng = Rng::new()?;
    let mut revocations = Vec::with_capacity(pre_revoked);
    for _ in 0..pre_revoked {
        revocations.push(revoke_live(&client, reg, &shared, &mut rng).await?);
    }
    let pre_ver = revocations.last().map_or(0, |r| r.ver);
    if !wait_applied(&shared, pre_ver, APPLY_TIMEOUT).await {
        bail!(
            "the proxy did not apply version {pre_ver} within {APPLY_TIMEOUT:?}; its log:\n{}",
            proxy.log_tail()
        );
    }
    shared.revocations.store(0, Ordering::SeqCst);
    let setup_secs = setup.elapsed().as_secs_f64();
    eprintln!(
        "soak: setup done in {setup_secs:.1} s; loading the proxy for {:?} with {} connections",
        a.duration, a.connections
    );

    let t0 = Instant::now();
    let deadline = t0 + a.duration;
    let addr = proxy.base.trim_start_matches("http://").to_owned();
    let workers: Vec<_> = (0..a.connections)
        .map(|_| {
            tokio::spawn(connection(
                shared.clone(),
                addr.clone(),
                deadline,
                a.revoked_share,
            ))
        })
        .collect();
    let revoker = {
        let (reg, shared, rate) = (reg.clone(), shared.clone(), a.revoke_rate);
        std::thread::spawn(move || revoke_stream(reg, shared, rate, deadline))
    };

    let mut samples = Vec::new();
    let mut all = Vec::new();
    let mut last = t0;
    loop {
        tokio::time::sleep_until((last + a.sample).min(deadline).into()).await;
        let lat = std::mem::take(
            &mut *shared
                .interval
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let now = Instant::now();
        let ms = ms_of(&lat);
        let s = Sample {
            elapsed: now - t0,
            rps: lat.len() as f64 / (now - last).as_secs_f64(),
            p50_ms: percentile(&ms, 0.5),
            p99_ms: percentile(&ms, 0.99),
            max_ms: percentile(&ms, 1.0),
            proxy_kib: veto_testkit::vm_rss_kib(proxy.pid())?,
            registry_kib: reg.rss_kib()?,
            revocations: shared.revocations.load(Ordering::SeqCst),
            applied: shared.applied.load(Ordering::SeqCst),
        };
        eprintln!(
            "soak: {:>6.1} s  {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  proxy RSS {:>6.1} MiB  registry RSS {:>6.1} MiB  revocations {:>5}  applied version {}",
            s.elapsed.as_secs_f64(),
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            mib(s.proxy_kib),
            mib(s.registry_kib),
            s.revocations,
            s.applied
        );
        samples.push(s);
        all.extend(lat);
        last = now;
        if now >= deadline {
            break;
        }
    }
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await??);
    }
    let load_secs = t0.elapsed().as_secs_f64();
    all.extend(std::mem::take(
        &mut *shared
            .interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    ));
    let during = tokio::task::spawn_blocking(move || revoker.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the revocation thread panicked"))??;
    let last_ver = during.iter().map(|r| r.ver).max().unwrap_or(pre_ver);
    wait_applied(&shared, last_ver, APPLY_TIMEOUT).await;
    shared.stop.store(true, Ordering::SeqCst);
    let (seen, watch_failures) = tokio::task::spawn_blocking(move || watcher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the watcher thread panicked"))??;

    let applied_at = |ver: u64| seen.iter().find(|(v, _)| *v >= ver).map(|(_, at)| *at);
    let mut propagation_ms = Vec::with_capacity(during.len());
    let mut unapplied = 0;
    for r in &during {
        match applied_at(r.ver) {
            Some(at) => propagation_ms.push(signed_ms(at, r.acked)),
            None => unapplied += 1,
        }
    }
    revocations.extend(during);
    let by_chain: HashMap<u32, (Instant, Option<Instant>)> = revocations
        .iter()
        .map(|r| (r.chain, (r.acked, applied_at(r.ver))))
        .collect();
    let verdicts = {
        let pool = shared.pool.read().unwrap_or_else(PoisonError::into_inner);
        let revoking = |id: u32| {
            pool.chains
                .get(id as usize)
                .and_then(|c| c.revoking.get().copied())
        };
        judge(&tally.watched, &tally.broken, revoking, &by_chain)
    };
    let streams_cut = Metrics::fetch(&reqwest::Client::new(), &proxy.admin)
        .await
        .ok()
        .and_then(|m| m.sum("veto_proxy_streams_cut_total"));
    let first_failure = shared
        .first_failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    Ok(Report {
        registry: format!("pid {} at {}", reg.pid(), reg.base),
        proxy: format!(
            "pid {} at {} (admin {})",
            proxy.pid(),
            proxy.base,
            proxy.admin
        ),
        setup_secs,
        minted,
        pre_revoked,
        load_secs,
        latencies_ms: ms_of(&all),
        tally,
        failures: shared.failures.load(Ordering::SeqCst),
        first_failure,
        revocations: revocations.split_off(pre_revoked),
        propagation_ms: sorted(propagation_ms),
        unapplied,
        verdicts,
        watch_failures,
        streams_cut,
        samples,
    })
}

impl Report {
    /// Every request sent, answered whole or broken off.
    fn requests(&self) -> u64 {
        self.tally.ok + self.tally.forbidden + self.tally.other + self.tally.broken.len() as u64
    }

    fn transport_failures(&self) -> u64 {
        self.failures + self.verdicts.broken_after_applied.len() as u64
    }

    /// Revocations applied, but later than [`APPLY_TIMEOUT`] after their ack.
    fn late(&self) -> usize {
        let limit = APPLY_TIMEOUT.as_secs_f64() * 1e3;
        self.propagation_ms.iter().filter(|ms| **ms > limit).count()
    }

    /// `(baseline sample, allowance in KiB, growth in KiB)` of the proxy's RSS.
    fn rss_growth(&self, a: &SoakArgs) -> Option<(&Sample, u64, i64)> {
        let base = self
            .samples
            .iter()
            .find(|s| s.elapsed >= a.warmup)
            .or(self.samples.first())?;
        let last = self.samples.last()?;
        let allowance = (RSS_GROWTH_MIB * 1024).max(base.proxy_kib * RSS_GROWTH_PCT / 100);
        Some((
            base,
            allowance,
            last.proxy_kib as i64 - base.proxy_kib as i64,
        ))
    }

    fn print(&self, a: &SoakArgs) {
        let n = self.requests();
        let rps = n as f64 / self.load_secs;
        let (p50, p99, max) = (
            percentile(&self.latencies_ms, 0.5),
            percentile(&self.latencies_ms, 0.99),
            percentile(&self.latencies_ms, 1.0),
        );
        let prop = &self.propagation_ms;
        let (pp50, pp99, pmax) = (
            percentile(prop, 0.5),
            percentile(prop, 0.99),
            percentile(prop, 1.0),
        );
        let t = &self.tally;
        let rss = |f: fn(&Sample) -> u64| {
            let v: Vec<u64> = self.samples.iter().map(f).collect();
            (
                v.first().copied().unwrap_or(0),
                v.iter().copied().max().unwrap_or(0),
                v.last().copied().unwrap_or(0),
            )
        };
        let (pf, pm, pl) = rss(|s| s.proxy_kib);
        let (rf, rm, rl) = rss(|s| s.registry_kib);
        let growth = self.rss_growth(a);
        let (base_t, base_kib, allowance, grown) = growth
            .map_or((f64::NAN, 0, 0, 0), |(b, al, g)| {
                (b.elapsed.as_secs_f64(), b.proxy_kib, al, g)
            });
        let reg_growth = self
            .samples
            .iter()
            .find(|s| s.elapsed >= a.warmup)
            .map_or(0, |b| rl as i64 - b.registry_kib as i64);
        let revs = self.revocations.len();
        let posts = sorted(
            self.revocations
                .iter()
                .map(|r| signed_ms(r.acked, r.sent))
                .collect(),
        );
        println!("== veto-bench soak ==");
        println!(
            "setup           : registry {}; proxy {} (SSE push, fail-closed, poll 60 s) in front of the in-process upstream; {} chains minted up front, {} of them revoked before the load, in {:.1} s",
            self.registry, self.proxy, self.minted, self.pre_revoked, self.setup_secs
        );
        println!(
            "load            : {:.1} s, {} keep-alive HTTP/1.1 connections sending `GET /` back to back, each with a random chain ({:.0}% already revoked)",
            self.load_secs,
            a.connections,
            a.revoked_share * 100.0
        );
        println!(
            "requests        : {n} ({rps:.0} req/s mean); latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; 2xx {}, 403 {}, other {}",
            t.ok, t.forbidden, t.other
        );
        println!(
            "transport       : {} failures (tolerance 1 in {TRANSPORT_TOLERANCE}; {} of them answers broken off on a chain revoked before the request){}; {} reconnects after a clean close; {} answers cut off while their chain's revocation was being applied (by design; the proxy counted {} streams cut)",
            self.transport_failures(),
            self.verdicts.broken_after_applied.len(),
            self.first_failure
                .as_ref()
                .or(self.verdicts.broken_after_applied.first())
                .map_or(String::new(), |f| format!(", first: {f}")),
            t.reconnects,
            self.verdicts.cut,
            self.streams_cut
                .map_or("an unknown number of".into(), |n| format!("{n:.0}"))
        );
        println!(
            "revocations     : {revs} during the load ({:.1}/s; asked {:.1}/s), versions {}..={}; POST send->201 p50 {:.2} ms, p99 {:.2} ms",
            revs as f64 / self.load_secs,
            a.revoke_rate,
            self.revocations.first().map_or(0, |r| r.ver),
            self.revocations.last().map_or(0, |r| r.ver),
            percentile(&posts, 0.5),
            percentile(&posts, 0.99)
        );
        println!(
            "ack->applied    : p50 {pp50:.2} ms, p99 {pp99:.2} ms, max {pmax:.2} ms over {} revocations; {} never applied (applied = first proxy /healthz answer showing the version, polled every {} ms; {} polls failed)",
            prop.len(),
            self.unapplied,
            WATCH_EVERY.as_millis(),
            self.watch_failures
        );
        println!(
            "correctness     : wrongly_allowed {} (sent after the proxy applied the chain's revocation, answered 2xx); window_allowed {} (sent between the revocation's ack and the applied instant, allowed); {} denied after applied; {} live chains denied{}",
            self.verdicts.wrongly_allowed.len(),
            self.verdicts.window_allowed,
            self.verdicts.denied_after_applied,
            t.live_denied,
            t.first_live_denial
                .as_ref()
                .map_or(String::new(), |d| format!(", first: {d}"))
        );
        for (chain, after) in self.verdicts.wrongly_allowed.iter().take(5) {
            println!("  WRONGLY ALLOWED: chain #{chain}, sent {after:.2} ms after the proxy showed its revocation applied");
        }
        println!(
            "proxy RSS       : first {:.1} MiB, max {:.1} MiB, last {:.1} MiB; growth since t={base_t:.0} s ({:.1} MiB): {:+.1} MiB, allowance {:.1} MiB (max of +{RSS_GROWTH_MIB} MiB, +{RSS_GROWTH_PCT}%)",
            mib(pf), mib(pm), mib(pl), mib(base_kib), grown as f64 / 1024.0, mib(allowance)
        );
        println!(
            "registry RSS    : first {:.1} MiB, max {:.1} MiB, last {:.1} MiB; growth since t={base_t:.0} s: {:+.1} MiB",
            mib(rf), mib(rm), mib(rl), reg_growth as f64 / 1024.0
        );
        println!("time series     :    t_s    req/s  p50_ms   p99_ms   max_ms  proxy_rss_mib  registry_rss_mib  revocations  applied_ver");
        for s in &self.samples {
            println!(
                "                  {:>6.1} {:>8.0} {:>7.2} {:>8.2} {:>8.2} {:>14.1} {:>17.1} {:>12} {:>12}",
                s.elapsed.as_secs_f64(),
                s.rps,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                mib(s.proxy_kib),
                mib(s.registry_kib),
                s.revocations,
                s.applied
            );
        }
        println!(
            "bench=soak duration_s={:.0} connections={} chains={} revoke_rate={} requests={n} rps={rps:.0} p50_ms={p50:.3} p99_ms={p99:.3} transport_failures={} cut={} wrongly_allowed={} window_allowed={} live_denied={} revocations={revs} unapplied={} prop_p50_ms={pp50:.2} prop_p99_ms={pp99:.2} prop_max_ms={pmax:.2} proxy_rss_first_kib={pf} proxy_rss_max_kib={pm} proxy_rss_last_kib={pl} proxy_rss_growth_kib={grown} registry_rss_first_kib={rf} registry_rss_max_kib={rm} registry_rss_last_kib={rl} pass={}",
            a.duration.as_secs_f64(),
            a.connections,
            a.chains,
            a.revoke_rate,
            self.transport_failures(),
            self.verdicts.cut,
            self.verdicts.wrongly_allowed.len(),
            self.verdicts.window_allowed,
            t.live_denied,
            self.unapplied,
            self.failures(a).is_empty()
        );
    }

    /// Why the run fails the gate (empty: it passes).
    fn failures(&self, a: &SoakArgs) -> Vec<String> {
        let mut why = Vec::new();
        if !self.verdicts.wrongly_allowed.is_empty() {
            why.push(format!(
                "{} requests were allowed after the proxy had applied their chain's revocation",
                self.verdicts.wrongly_allowed.len()
            ));
        }
        if self.tally.live_denied > 0 {
            why.push(format!(
                "{} requests with a live chain were denied",
                self.tally.live_denied
            ));
        }
        if self.unapplied + self.late() > 0 {
            why.push(format!(
                "{} revocations were not applied by the proxy within {APPLY_TIMEOUT:?} of their acknowledgement ({} never, {} late)",
                self.unapplied + self.late(),
                self.unapplied,
                self.late()
            ));
        }
        if self.transport_failures() * TRANSPORT_TOLERANCE > self.requests().max(1) {
            why.push(format!(
                "{} of {} requests failed at the transport level (tolerance 1 in {TRANSPORT_TOLERANCE})",
                self.transport_failures(),
                self.requests()
            ));
        }
        // Every answer counted as cut by design must be one the proxy says
        // it cut; more means breaks the proxy did not make.
        match self.streams_cut {
            Some(n) if self.verdicts.cut as f64 <= n => {}
            Some(n) => why.push(format!(
                "{} answers broke off while their chain was being revoked, but the proxy counted only {n:.0} streams cut",
                self.verdicts.cut
            )),
            None if self.verdicts.cut == 0 => {}
            None => why.push(format!(
                "{} answers broke off while their chain was being revoked, and the proxy's veto_proxy_streams_cut_total could not be read",
                self.verdicts.cut
            )),
        }
        if let Some((base, allowance, grown)) = self.rss_growth(a) {
            if grown > allowance as i64 {
                why.push(format!(
                    "the proxy's RSS grew by {:.1} MiB since t={:.0} s, more than the allowed {:.1} MiB",
                    grown as f64 / 1024.0,
                    base.elapsed.as_secs_f64(),
                    mib(allowance)
                ));
            }
        }
        why
    }

    fn verdict(&self, a: &SoakArgs) -> anyhow::Result<()> {
        let why = self.failures(a);
        if why.is_empty() {
            println!("soak            : PASS");
            return Ok(());
        }
        println!("soak            : FAIL");
        bail!("soak failed: {}", why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_durations() {
        assert_eq!(parse_rate("20/s"), Ok(20.0));
        assert_eq!(parse_rate("600/m"), Ok(10.0));
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("20/h").is_err());
        assert!(parse_rate("-1/s").is_err());
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn help_states_the_bounds() {
        assert!(GATE.contains(&format!("by more than {RSS_GROWTH_MIB} MiB")));
        assert!(GATE.contains(&format!("by more than {RSS_GROWTH_PCT}%")));
        assert!(GATE.contains(&format!("1 in {TRANSPORT_TOLERANCE} requests")));
    }

    #[test]
    fn judges_requests_against_the_applied_instant() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        // Chain 1: acked at 10 ms, applied at 20 ms; chain 2: never applied.
        let by_chain = HashMap::from([(1, (at(10), Some(at(20)))), (2, (at(10), None))]);
        let req = |chain, sent, allowed| Watched {
            sent: at(sent),
            chain,
            allowed,
        };
        let watched = [
            req(1, 5, true),   // before the ack: nothing to say
            req(1, 15, true),  // in the window
            req(1, 15, false), // in the window, already denied
            req(1, 25, false), // after applied, denied
            req(1, 30, true),  // after applied, allowed: wrong
            req(2, 30, true),  // never applied: in the window
            req(3, 30, true),  // not revoked
        ];
        let v = judge(&watched, &[], |_| Some(at(8)), &by_chain);
        assert_eq!(v.wrongly_allowed, vec![(1, 10.0)]);
        assert_eq!(v.window_allowed, 2);
        assert_eq!(v.denied_after_applied, 1);
        assert_eq!(v.cut, 0);
    }

    #[test]
    fn judges_broken_answers_by_their_head_and_instant() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        // Chain 1: revocation sent at 8 ms, acked at 10 ms, applied at 20 ms.
        let by_chain = HashMap::from([(1, (at(10), Some(at(20))))]);
        let broken = |sent, head: Option<u16>| Broken {
            sent: at(sent),
            chain: 1,
            head: head.map(|s| StatusCode::from_u16(s).unwrap()),
            error: "connection reset".into(),
        };
        let v = judge(
            &[],
            &[
                broken(5, Some(200)),  // sent before the revocation, cut when applied: by design
                broken(15, Some(200)), // in the window, cut when applied: by design, window allowed
                broken(15, None),      // in the window, no head: by design
                broken(30, Some(200)), // 2xx head after applied: wrongly allowed, and a failure
                broken(30, None),      // after applied, no head: a transport failure
            ],
            |_| Some(at(8)),
            &by_chain,
        );
        assert_eq!(v.cut, 3);
        assert_eq!(v.broken_after_applied.len(), 2);
        assert_eq!(v.wrongly_allowed, vec![(1, 10.0)]);
        assert_eq!(v.window_allowed, 1);
    }

    #[test]
    fn pool_keeps_live_and_revoked_apart() -> anyhow::Result<()> {
        let mut pool = Pool::default();
        for i in 0..3 {
            pool.add(
                &format!("chain{i}"),
                format!("jti{i}"),
                SigningKey::from_seed(&[1; 32]),
                false,
            )?;
        }
        let mut rng = Rng::new()?;
        let (id, chain) = pool
            .take_live(&mut rng)
            .ok_or_else(|| anyhow::anyhow!("no live chain"))?;
        assert!(chain.revoking.get().is_some());
        assert!(!pool.live.contains(&id));
        pool.revoked.push(id);
        for _ in 0..100 {
            let (picked, _) = pool
                .pick(&mut rng, 0.0)
                .ok_or_else(|| anyhow::anyhow!("nothing picked"))?;
            assert_ne!(picked, id);
        }
        let revoked = (0..1000)
            .filter_map(|_| pool.pick(&mut rng, 0.5))
            .filter(|(p, _)| *p == id)
            .count();
        assert!((300..700).contains(&revoked), "{revoked}");
        Ok(())
    }
}
