//! What a stranger can make a real `veto proxy` hold, and whether a push
//! stream that carries no news is noticed (issue 10 items 4, 6(a), 6(c)).
//!
//! - The verified-chain cache: any holder can mint descendants of its own
//!   chain offline; 3,000 distinct ~30 KB chains must not grow the proxy
//!   without bound, nor evict other holders' chains.
//! - What the proxy reads from a registry: a fake registry in this process
//!   serves a 300 MB issuer key set, a gzip bomb for a snapshot, an SSE event that
//!   never ends and an SSE line that never ends. Each is refused at its
//!   cap, with the proxy's peak RSS bounded and the log naming the object.
//! - Push liveness: a fake registry's event stream that sends only
//!   comments, `retry:` lines, unknown events, forged or replayed
//!   checkpoints, or dribbles bytes is reopened within the idle timeout;
//!   one that sends a fresh signed checkpoint every second is not.
//!
//! Each test prints a `MEMORY` line with its figures. `VETO_BIN` runs the
//! same tests against another `veto` binary (to measure the code before a
//! change); without it they run the binary under test.
#![expect(clippy::unwrap_used, reason = "a test: a failed step fails the run")]

use std::convert::Infallible;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use veto_core::wire::{path, DeltasPage, EventKind};
use veto_core::{keyfile, warrant, Head, LinkSpec, RevocationSet, SigningKey, SrlSigner};
use veto_testkit::{metric_value, now, ok_upstream, rss_kib, url_in, Process, Registry, TempDir};

const ISS: &str = "veto";

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The binary measured: `VETO_BIN`, or the one under test.
fn veto_bin() -> PathBuf {
    std::env::var_os("VETO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_veto")))
}

/// A running `veto proxy` started from [`veto_bin`].
struct Spawned {
    process: Process,
    url: String,
    admin_url: String,
    http: reqwest::Client,
}

impl Spawned {
    fn start(
        dir: &TempDir,
        registry: &str,
        key_file: &std::path::Path,
        upstream: &str,
        args: &[&str],
    ) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = dir
            .path()
            .join(format!("proxy-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let mut cmd = std::process::Command::new(veto_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VETO_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("XDG_CONFIG_HOME", dir.path())
            .env("HOME", dir.path())
            .arg("proxy")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", upstream, "--registry", registry])
            .arg("--authority-key")
            .arg(key_file)
            .args(["--pop", "off"])
            .args(args);
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        let (process, admin_line) = Process::spawn(cmd, "veto proxy", &log, move |l| {
            seen.lock().unwrap().push(l.to_owned());
            l.starts_with("  admin (metrics, health): http://")
        });
        let first = lines.lock().unwrap().first().cloned().unwrap_or_default();
        Self {
            process,
            url: url_in(&first),
            admin_url: url_in(&admin_line),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}{}", self.admin_url, path::METRICS))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

fn sync_errors(kind: &str) -> String {
    format!("veto_authorizer_sync_errors_total{{kind=\"{kind}\"}}")
}

// ---------------------------------------------------------------------------
// 6(a): the verified-chain cache.

/// A distinct child of `parent` for the holder, its `act` padded with
/// patterns under the root's (each link stays under the 8 KiB limit).
fn padded_child(parent: &str, holder: &SigningKey, pad: usize, exp: u64) -> String {
    let mut act = vec!["http:GET:/orders/*".to_owned()];
    act.extend((0..pad).map(|i| format!("http:GET:/orders/p{i}/{}", "x".repeat(90))));
    let spec = LinkSpec {
        sub: "agent-mint".into(),
        act,
        iat: now() - 5,
        exp,
        holder: Some(holder.public().clone()),
    };
    warrant::delegate(parent, holder, spec).unwrap()
}

async fn get_status(http: &reqwest::Client, url: &str, chain: &str) -> u16 {
    http.get(url)
        .header("authorization", format!("Bearer {chain}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_minted_chains_leave_the_proxy_bounded() {
    let registry = Registry::start(&["--heartbeat", "1s"]);
    let upstream = ok_upstream().await;
    let dir = TempDir::new("memory-cache");
    let proxy = Spawned::start(
        &dir,
        &registry.url,
        &registry.authority_key_file(),
        &upstream,
        &[],
    );
    let holder = SigningKey::generate().unwrap();
    let (root, _) = registry
        .mint("agent-mint", &["http:GET:/orders/*"], Some(holder.public()))
        .await;
    let (bystander, _) = registry
        .mint("agent-bystander", &["http:GET:/orders/*"], None)
        .await;
    let http = reqwest::Client::new();
    let target = format!("{}/orders/1", proxy.url);
    let start = Instant::now();
    while get_status(&http, &target, &bystander).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never allowed: {}",
            proxy.process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Root + three padded children, shared; each request adds a distinct leaf.
    let exp = now() + 1800;
    let mut prefix = root.clone();
    for _ in 0..3 {
        prefix = padded_child(&prefix, &holder, 44, exp);
    }
    let chains: Vec<String> = (0..3000)
        .map(|_| padded_child(&prefix, &holder, 44, exp))
        .collect();
    let size = chains[0].len();
    assert!((25_000..=32_768).contains(&size), "a chain is {size} bytes");
    let (rss0, _) = rss_kib(proxy.pid());

    let t = Instant::now();
    let chains = Arc::new(chains);
    let next = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (chains, next, allowed, http, target) = (
                chains.clone(),
                next.clone(),
                allowed.clone(),
                http.clone(),
                target.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = chains.get(i) else { return };
                    if get_status(&http, &target, c).await == 200 {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = t.elapsed();
    let (rss1, hwm) = rss_kib(proxy.pid());
    let allowed = allowed.load(Ordering::Relaxed);
    // The chains were allowed: the attack is on what the cache keeps, not
    // on what it refuses.
    assert_eq!(allowed, 3000);
    // Another holder's chain is still served (and still cached: a hit).
    let hits = proxy.metric("veto_authorizer_chain_cache_hits_total").await;
    assert_eq!(get_status(&http, &target, &bystander).await, 200);
    let hits_after = proxy.metric("veto_authorizer_chain_cache_hits_total").await;
    let cache_bytes = proxy.metric("veto_authorizer_chain_cache_bytes").await;
    let cache_chains = proxy.metric("veto_authorizer_chain_cache_chains").await;

    // Denied for their action: never kept.
    let (denied_root, _) = registry
        .mint(
            "agent-narrow",
            &["http:GET:/other/*"],
            Some(holder.public()),
        )
        .await;
    let before = proxy.metric("veto_authorizer_chain_cache_chains").await;
    for _ in 0..50 {
        let c = padded_child_under(&denied_root, &holder);
        assert_eq!(get_status(&http, &target, &c).await, 403);
    }
    let after = proxy.metric("veto_authorizer_chain_cache_chains").await;

    println!(
        "MEMORY chain-cache chains=3000 chain_bytes={size} seconds={:.1} proxy_rss_mib_before={:.1} after={:.1} peak={:.1} cache_bytes_mib={:.1} cache_chains={cache_chains} bin={}",
        elapsed.as_secs_f64(),
        mib(rss0),
        mib(rss1),
        mib(hwm),
        cache_bytes / 1_048_576.0,
        veto_bin().display()
    );
    assert!(hits_after > hits, "the bystander's chain was evicted");
    assert_eq!(after, before, "chains denied for their action were cached");
    // One root may use 1/16 of the 64 MiB default budget (estimated).
    assert!(
        cache_bytes <= (4 << 20) as f64,
        "one root holds {cache_bytes} bytes"
    );
    assert!(
        rss1.saturating_sub(rss0) < 64 * 1024,
        "the proxy grew by {:.1} MiB",
        mib(rss1.saturating_sub(rss0))
    );
}

fn padded_child_under(root: &str, holder: &SigningKey) -> String {
    let spec = LinkSpec {
        sub: "agent-narrow".into(),
        act: vec!["http:GET:/other/*".into()],
        iat: now() - 5,
        exp: now() + 1800,
        holder: Some(holder.public().clone()),
    };
    warrant::delegate(root, holder, spec).unwrap()
}

// ---------------------------------------------------------------------------
// A fake registry, for 6(c) and 4.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Events {
    /// 503: no push.
    None,
    /// A fresh signed checkpoint every second (the control).
    Honest,
    /// `: ping` every 300 ms.
    Comments,
    /// `retry:` lines.
    Retry,
    /// An event type veto does not know, with data.
    Unknown,
    /// Fresh checkpoints signed by another key.
    Forged,
    /// `checkpoint` events whose data is not a JWS, and lines with fields
    /// SSE does not define.
    Garbage,
    /// One fresh checkpoint, then the same bytes again forever.
    Replayed,
    /// A valid-looking event, one byte every 200 ms.
    Dribble,
    /// `event: snapshot` with data lines forever, no blank line.
    HugeEvent,
    /// One line that never ends.
    EndlessLine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body6c {
    Honest,
    Huge,
}

struct Fake {
    signer: SrlSigner,
    forger: SrlSigner,
    jwks: Body6c,
    snapshot: Body6c,
    events: Events,
    /// The signed issuer key set (`/v1/issuers`).
    issuer_set: String,
    /// Connections to `/v1/srl/events`.
    connections: AtomicUsize,
    /// Bytes of hostile streamed bodies the proxy pulled.
    pulled: AtomicU64,
    bomb: Bytes,
    /// Version 1 (its head and set), when the fake is one version ahead of
    /// its first snapshot and serves an endless page of deltas.
    v1: Option<(Head, RevocationSet)>,
    snapshots: AtomicUsize,
    /// `/v1/srl/checkpoint` serves a body that never ends.
    huge_checkpoint: bool,
}

type Shared = Arc<Fake>;

impl Fake {
    fn checkpoint(&self) -> String {
        let t = now();
        match &self.v1 {
            Some((head, _)) => self.signer.checkpoint(1, *head, t, t + 300),
            None => self.signer.checkpoint(0, Head::ZERO, t, t + 300),
        }
    }
}

/// An endless body of `chunk` repeated, counting what is pulled.
fn endless(
    fake: Shared,
    head: impl Into<Bytes>,
    chunk: Bytes,
    pause: Option<Duration>,
    chunks: usize,
) -> Body {
    let head = head.into();
    let first = futures_util::stream::once(async move { Ok::<_, Infallible>(head) });
    let rest = futures_util::stream::unfold(fake, move |f| {
        let chunk = chunk.clone();
        async move {
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
            f.pulled.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Some((Ok::<_, Infallible>(chunk), f))
        }
    });
    Body::from_stream(futures_util::StreamExt::chain(
        first,
        futures_util::StreamExt::take(rest, chunks),
    ))
}

async fn issuer_set(State(f): State<Shared>) -> Response {
    match f.jwks {
        Body6c::Honest => (
            [(header::CONTENT_TYPE, "application/jose")],
            f.issuer_set.clone(),
        )
            .into_response(),
        // 300 MB of JSON whitespace inside the key list: parseable if read whole.
        Body6c::Huge => {
            let body = endless(
                f.clone(),
                "{\"keys\":[",
                Bytes::from(vec![b' '; 1 << 20]),
                None,
                300,
            );
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

async fn snapshot(State(f): State<Shared>) -> Response {
    let first = f.snapshots.fetch_add(1, Ordering::Relaxed) == 0;
    match f.snapshot {
        Body6c::Honest => {
            let t = now();
            match (&f.v1, first) {
                (Some((head, set)), false) => f.signer.snapshot(1, *head, t, t + 300, set),
                _ => f
                    .signer
                    .snapshot(0, Head::ZERO, t, t + 300, &RevocationSet::default()),
            }
            .into_bytes()
            .into_response()
        }
        Body6c::Huge => ([(header::CONTENT_ENCODING, "gzip")], f.bomb.clone()).into_response(),
    }
}

async fn checkpoint(State(f): State<Shared>) -> Response {
    if f.huge_checkpoint {
        let chunk = Bytes::from(vec![b'A'; 64 << 10]);
        return endless(f.clone(), "eyJhbGciOiJFZERTQSJ9.", chunk, None, usize::MAX)
            .into_response();
    }
    f.checkpoint().into_response()
}

async fn deltas(State(f): State<Shared>) -> Response {
    if f.v1.is_none() {
        return axum::Json(DeltasPage::default()).into_response();
    }
    // A page of deltas that never ends.
    let body = endless(
        f.clone(),
        // Hostile: a `DeltasPage` opened by hand and never closed.
        "{\"deltas\":[\"",
        Bytes::from(vec![b'A'; 1 << 20]),
        None,
        usize::MAX,
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn frame(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

async fn events(State(f): State<Shared>) -> Response {
    f.connections.fetch_add(1, Ordering::Relaxed);
    let every = |f: Shared, period: Duration, make: fn(&Fake, u64) -> Bytes| {
        let s = futures_util::stream::unfold((f, 0u64), move |(f, n)| async move {
            if n > 0 {
                tokio::time::sleep(period).await;
            }
            let b = make(&f, n);
            Some((Ok::<_, Infallible>(b), (f, n + 1)))
        });
        Body::from_stream(s)
    };
    let body = match f.events {
        Events::None => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Events::Honest => every(f.clone(), Duration::from_secs(1), |f, _| {
            frame(EventKind::Checkpoint.as_str(), &f.checkpoint())
        }),
        Events::Comments => every(f.clone(), Duration::from_millis(300), |_, _| {
            Bytes::from(": ping\n\n")
        }),
        Events::Retry => every(f.clone(), Duration::from_millis(300), |_, _| {
            Bytes::from("retry: 1000\n\n")
        }),
        Events::Unknown => every(f.clone(), Duration::from_millis(300), |_, n| {
            // Hostile: an event name veto never sends, kept as a literal.
            frame("heartbeat", &format!("{{\"n\":{n}}}"))
        }),
        Events::Forged => every(f.clone(), Duration::from_millis(1000), |f, _| {
            let t = now();
            frame(
                EventKind::Checkpoint.as_str(),
                &f.forger.checkpoint(0, Head::ZERO, t, t + 300),
            )
        }),
        Events::Garbage => every(f.clone(), Duration::from_millis(300), |_, n| {
            Bytes::from(format!(
                "x-junk: {n}\nevent: {}\ndata: not.a.jws{n}\n\n",
                EventKind::Checkpoint
            ))
        }),
        Events::Replayed => {
            let once = frame(EventKind::Checkpoint.as_str(), &f.checkpoint());
            let s = futures_util::stream::unfold(once, |b| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some((Ok::<_, Infallible>(b.clone()), b))
            });
            Body::from_stream(s)
        }
        Events::Dribble => endless(
            f.clone(),
            format!("event: {}\ndata: ", EventKind::Checkpoint),
            Bytes::from_static(b"e"),
            Some(Duration::from_millis(200)),
            usize::MAX,
        ),
        Events::HugeEvent => {
            let line = format!("data: {}\n", "A".repeat(1023));
            endless(
                f.clone(),
                format!("event: {}\n", EventKind::Snapshot),
                Bytes::from(line.repeat(64)),
                None,
                usize::MAX,
            )
        }
        Events::EndlessLine => endless(
            f.clone(),
            format!("event: {}\ndata: ", EventKind::Snapshot),
            Bytes::from(vec![b'A'; 64 << 10]),
            None,
            usize::MAX,
        ),
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn gzip_zeros(n: usize) -> Bytes {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let block = vec![0u8; 1 << 20];
    for _ in 0..n >> 20 {
        gz.write_all(&block).unwrap();
    }
    Bytes::from(gz.finish().unwrap())
}

/// A fake registry and a proxy pointed at it.
struct Rig {
    fake: Shared,
    proxy: Spawned,
    _dir: TempDir,
}

async fn rig(jwks_mode: Body6c, snapshot_mode: Body6c, events_mode: Events, args: &[&str]) -> Rig {
    rig_with(jwks_mode, snapshot_mode, events_mode, false, false, args).await
}

async fn rig_with(
    jwks_mode: Body6c,
    snapshot_mode: Body6c,
    events_mode: Events,
    gap: bool,
    huge_checkpoint: bool,
    args: &[&str],
) -> Rig {
    let authority = SigningKey::generate().unwrap();
    let signer = SrlSigner::new(authority.clone(), ISS);
    let v1 = gap.then(|| {
        let entry = veto_core::Entry {
            kind: veto_core::EntryKind::Warrant,
            id: "w-1".into(),
            reason: veto_core::Reason::KeyCompromise,
            revoked_at: now(),
            before: None,
            expires_at: None,
        };
        let (_, head) = signer.delta(1, Head::ZERO, now(), vec![entry.clone()], vec![]);
        let mut set = RevocationSet::default();
        set.insert(entry.kind, entry.digest(), 0);
        (head, set)
    });
    let issuer = SigningKey::generate().unwrap();
    let bomb = if snapshot_mode == Body6c::Huge {
        gzip_zeros(512 << 20)
    } else {
        Bytes::new()
    };
    let signed_set = signer.issuers(1, now(), &[issuer.public().clone()]);
    let fake = Arc::new(Fake {
        signer,
        forger: SrlSigner::new(SigningKey::generate().unwrap(), ISS),
        jwks: jwks_mode,
        snapshot: snapshot_mode,
        events: events_mode,
        issuer_set: signed_set,
        connections: AtomicUsize::new(0),
        pulled: AtomicU64::new(0),
        bomb,
        v1,
        snapshots: AtomicUsize::new(0),
        huge_checkpoint,
    });
    let app = Router::new()
        .route(path::SRL, get(snapshot))
        .route(path::SRL_CHECKPOINT, get(checkpoint))
        .route(path::SRL_DELTAS, get(deltas))
        .route(path::SRL_EVENTS, get(events))
        .route(path::ISSUERS, get(issuer_set))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = TempDir::new("memory-fake");
    let key_file = dir.path().join("authority.pub.jwk");
    keyfile::write_public_key(&key_file, authority.public()).unwrap();
    let upstream = ok_upstream().await;
    let proxy = Spawned::start(&dir, &url, &key_file, &upstream, args);
    Rig {
        fake,
        proxy,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------
// 6(c): byte caps on what the proxy reads from a registry.

/// Waits until the proxy's log says `needle`, up to `within`.
async fn until_logged(proxy: &Spawned, needle: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if proxy.process.log_text().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// One hostile object: the peak RSS it caused, the bytes pulled, whether
/// it was refused with the cap named.
async fn hostile_object(name: &str, r: Rig, needle: &str) -> (f64, f64, u64, bool) {
    let pid = r.proxy.pid();
    let (rss0, _) = rss_kib(pid);
    let refused = until_logged(&r.proxy, needle, Duration::from_secs(20)).await;
    // Let whatever is in flight settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, hwm) = rss_kib(pid);
    // Per connection: a refused push stream is reopened (with backoff), and
    // each session is bounded on its own.
    let connections = match r.fake.events {
        Events::HugeEvent | Events::EndlessLine => {
            r.fake.connections.load(Ordering::Relaxed).max(1) as u64
        }
        _ => 1,
    };
    let pulled = r.fake.pulled.load(Ordering::Relaxed) / connections;
    let too_large = r.proxy.metric(&sync_errors("too_large")).await;
    println!(
        "MEMORY registry-object {name} refused={refused} too_large_errors={too_large} proxy_rss_mib_start={:.1} peak={:.1} pulled_mib_per_connection={:.1} bin={}",
        mib(rss0),
        mib(hwm),
        pulled as f64 / 1_048_576.0,
        veto_bin().display()
    );
    if refused {
        assert!(
            too_large >= 1.0,
            "{name}: refused but not counted as too_large"
        );
    }
    (mib(rss0), mib(hwm), pulled, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_registry_objects_are_refused_at_their_caps() {
    // Every object is measured first, then judged, so one run prints all
    // the figures (also against a binary without the caps).
    // The issuer key set: 1 MiB cap; 300 MB offered.
    let jwks = hostile_object(
        "jwks-300MB",
        rig(Body6c::Huge, Body6c::Honest, Events::None, &[]).await,
        "issuer key set is over the 1048576-byte cap",
    )
    .await;
    // Snapshot: a gzip bomb (~0.5 MB compressed, 512 MiB of zeros).
    let bomb = hostile_object(
        "snapshot-gzip-bomb-512MiB",
        rig(Body6c::Honest, Body6c::Huge, Events::None, &[]).await,
        "snapshot is over the 67108864-byte cap",
    )
    .await;
    // Checkpoint: 16 KiB cap; a body that never ends.
    let checkpoint = hostile_object(
        "checkpoint-endless",
        rig_with(
            Body6c::Honest,
            Body6c::Honest,
            Events::None,
            false,
            true,
            &[],
        )
        .await,
        "checkpoint is over the 16384-byte cap",
    )
    .await;
    // SSE: an event that never ends, and a line that never ends.
    let mut sse = Vec::new();
    for (name, mode) in [
        ("sse-endless-event", Events::HugeEvent),
        ("sse-endless-line", Events::EndlessLine),
    ] {
        sse.push((
            name,
            hostile_object(
                name,
                rig(Body6c::Honest, Body6c::Honest, mode, &[]).await,
                "push event is over the 67108864-byte cap",
            )
            .await,
        ));
    }

    let (_, peak, pulled, refused) = jwks;
    assert!(
        refused,
        "the 300 MB issuer key set was not refused at its cap"
    );
    assert!(
        peak < 64.0,
        "peak RSS {peak:.1} MiB for a refused issuer key set"
    );
    assert!(
        pulled < 48 << 20,
        "pulled {pulled} bytes of the issuer key set"
    );
    let (_, peak, _, refused) = bomb;
    assert!(refused, "the gzip bomb was not refused at the snapshot cap");
    assert!(
        peak < 160.0,
        "peak RSS {peak:.1} MiB for a refused gzip bomb"
    );
    let (_, peak, pulled, refused) = checkpoint;
    assert!(refused, "the endless checkpoint was not refused at its cap");
    assert!(
        peak < 64.0,
        "peak RSS {peak:.1} MiB for a refused checkpoint"
    );
    assert!(pulled < 48 << 20, "pulled {pulled} bytes of the checkpoint");
    for (name, (_, peak, pulled, refused)) in sse {
        assert!(refused, "{name}: not refused at the event cap");
        assert!(peak < 200.0, "{name}: peak RSS {peak:.1} MiB");
        // The cap, plus what socket buffers and the reader's chunks hold.
        assert!(
            pulled < 128 << 20,
            "{name}: pulled {pulled} bytes in one connection"
        );
    }
}

// ---------------------------------------------------------------------------
// 4: only verified news keeps a push stream open.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stream_without_news_is_reopened_within_the_idle_timeout() {
    let modes = [
        Events::Honest,
        Events::Comments,
        Events::Retry,
        Events::Unknown,
        Events::Forged,
        Events::Garbage,
        Events::Replayed,
        Events::Dribble,
    ];
    let mut rigs = Vec::new();
    for m in modes {
        rigs.push((
            m,
            rig(
                Body6c::Honest,
                Body6c::Honest,
                m,
                &["--push-idle-timeout", "3s"],
            )
            .await,
        ));
    }
    // 8 s: over two idle timeouts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut failures = Vec::new();
    for (m, r) in &rigs {
        let connections = r.fake.connections.load(Ordering::Relaxed);
        let idle = r.proxy.metric(&sync_errors("push_idle")).await;
        println!(
            "MEMORY push-liveness mode={m:?} connections_in_8s={connections} push_idle_errors={idle} bin={}",
            veto_bin().display()
        );
        let ok = if *m == Events::Honest {
            connections == 1 && idle == 0.0
        } else {
            connections >= 2 && idle >= 1.0
        };
        if !ok {
            failures.push(format!(
                "{m:?}: {connections} connections, {idle} idle errors"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// A private `nats-server` with JetStream, killed on drop; `None` when the
/// binary is not installed.
struct Nats(std::process::Child);

impl Nats {
    fn start(dir: &std::path::Path) -> Option<(Self, String)> {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let nats = Self(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some((nats, format!("nats://127.0.0.1:{port}")))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// NATS keeps answering JetStream idle heartbeats after the registry has
/// stopped publishing: heartbeats are not news, so the push is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_heartbeats_without_news_do_not_keep_the_push_open() {
    let dir = TempDir::new("memory-nats");
    let Some((_nats, url)) = Nats::start(&dir.path().join("js")) else {
        eprintln!("skipped: no nats-server binary");
        return;
    };
    let mut registry = Registry::start(&["--bus", &url, "--heartbeat", "1s"]);
    let upstream = ok_upstream().await;
    let proxy = Spawned::start(
        &dir,
        &registry.url,
        &registry.authority_key_file(),
        &upstream,
        &[
            "--bus",
            &url,
            "--push-idle-timeout",
            "3s",
            "--poll-interval",
            "600s",
        ],
    );
    let start = Instant::now();
    while proxy.metric("veto_authorizer_push_connected").await != 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "NATS push never connected: {}",
            proxy.process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Control: with the registry publishing a checkpoint every second, the
    // push stays open.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_while_published = proxy.metric(&sync_errors("push_idle")).await;
    // The registry stops; NATS stays up and keeps heartbeating.
    registry.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let idle_after = proxy.metric(&sync_errors("push_idle")).await;
    println!(
        "MEMORY nats-liveness push_idle_while_published={idle_while_published} push_idle_8s_after_registry_stopped={idle_after} bin={}",
        veto_bin().display()
    );
    assert_eq!(idle_while_published, 0.0, "reopened while news flowed");
    assert!(
        idle_after >= 1.0,
        "heartbeats alone kept the NATS push open for 8 s with a 3 s idle timeout"
    );
}

/// A page of deltas that never ends is refused at the cap and replaced by
/// the snapshot (under its own cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_page_of_deltas_is_refused_and_the_snapshot_fetched_instead() {
    let r = rig_with(
        Body6c::Honest,
        Body6c::Honest,
        Events::None,
        true,
        false,
        &[],
    )
    .await;
    let pid = r.proxy.pid();
    let (rss0, _) = rss_kib(pid);
    let start = Instant::now();
    while r.proxy.metric("veto_authorizer_applied_version").await != 1.0
        && start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let version = r.proxy.metric("veto_authorizer_applied_version").await;
    let too_large = r.proxy.metric(&sync_errors("too_large")).await;
    let (_, hwm) = rss_kib(pid);
    let pulled = r.fake.pulled.load(Ordering::Relaxed);
    println!(
        "MEMORY registry-object deltas-endless-page version={version} too_large_errors={too_large} proxy_rss_mib_start={:.1} peak={:.1} pulled_mib={:.1} bin={}",
        mib(rss0),
        mib(hwm),
        pulled as f64 / 1_048_576.0,
        veto_bin().display()
    );
    assert_eq!(
        version,
        1.0,
        "the snapshot did not replace the refused page: {}",
        r.proxy.process.log_text()
    );
    assert!(too_large >= 1.0);
    assert!(r
        .proxy
        .process
        .log_text()
        .contains("page of deltas is over the 67108864-byte cap"));
    assert!(mib(hwm) < 200.0, "peak RSS {:.1} MiB", mib(hwm));
    assert!(pulled < 128 << 20, "pulled {pulled} bytes");
}
