//! Keeping the state current: one SSE subscription and a poller, both
//! feeding [`Inner::apply`]. Nothing here touches the check path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use veto_core::{ApplyError, KeySet, PublicKey, SrlError, SseParser};

use crate::metrics::Metrics;
use crate::{Incoming, Inner};

/// Byte caps on what the authorizer reads from a registry (a stranger on
/// the path, or a broken registry, must not be able to make it allocate
/// without bound). Each body is read through [`read_capped`], which stops
/// at the cap before allocating more; the snapshot cap is configurable
/// ([`crate::Config::max_snapshot_bytes`]) and also bounds an SSE event (a
/// resuming subscriber may be sent a snapshot) and one page of deltas
/// (when the deltas since a version outweigh a snapshot, the snapshot is
/// fetched instead).
///
/// A JWKS: an issuer key is ~150 bytes, so 1 MiB is thousands of keys.
pub(crate) const MAX_JWKS: usize = 1 << 20;
/// A checkpoint: ~400 bytes signed; the verifier refuses over 4 KiB.
pub(crate) const MAX_CHECKPOINT: usize = 16 << 10;
/// Most delta pages fetched in one catch-up.
const MAX_PAGES: usize = 1000;
/// A disk cache with more deltas than this is replaced by a fresh snapshot.
const MAX_KEPT_DELTAS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error("cannot reach the registry: {0}")]
    Connect(String),
    #[error("registry answered {0}")]
    Status(u16),
    #[error("{0}")]
    Invalid(#[from] SrlError),
    #[error("push stream silent for {0:?}: reconnecting")]
    Idle(Duration),
    #[error("push stream: {0}")]
    Stream(String),
    #[error("the registry's {what} is over the {cap}-byte cap: refused without reading further")]
    TooLarge { what: &'static str, cap: usize },
}

impl SyncError {
    fn kind(&self) -> &'static str {
        match self {
            SyncError::Connect(_) => "connect",
            SyncError::Status(_) => "status",
            SyncError::Invalid(_) => "invalid_object",
            SyncError::Idle(_) => "push_idle",
            SyncError::Stream(_) => "push_stream",
            SyncError::TooLarge { .. } => "too_large",
        }
    }
}

fn count(inner: &Inner, e: &SyncError) {
    inner
        .metrics
        .sync_errors
        .get_or_create(&Metrics::label(e.kind()))
        .inc();
    if let SyncError::Invalid(err) = e {
        inner
            .metrics
            .rejected
            .get_or_create(&Metrics::label(invalid_kind(err)))
            .inc();
    }
}

fn invalid_kind(e: &SrlError) -> &'static str {
    match e {
        SrlError::Jws { source, .. } => match source {
            veto_core::jws::JwsError::BadSignature | veto_core::jws::JwsError::UnknownKey(_) => {
                "bad_signature"
            }
            veto_core::jws::JwsError::Typ { .. } => "wrong_typ",
            _ => "malformed",
        },
        SrlError::FromFuture { .. } => "from_future",
        SrlError::Issuer { .. } => "wrong_issuer",
        SrlError::Payload { .. } => "malformed",
    }
}

/// ±20% jitter, so a fleet does not poll in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::getrandom(&mut b);
    let f = 0.8 + 0.4 * (f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX));
    d.mul_f64(f)
}

/// Reads a response body, refusing it as soon as it is over `cap` bytes:
/// first by its declared length, then while reading (a chunked or
/// compressed body declares none; the cap counts decompressed bytes, so a
/// gzip bomb stops at the cap too).
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    what: &'static str,
    cap: usize,
) -> Result<Vec<u8>, SyncError> {
    let too_large = SyncError::TooLarge { what, cap };
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(cap).unwrap_or(u64::MAX))
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| SyncError::Connect(e.to_string()))?
    {
        if body.len() + chunk.len() > cap {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn utf8(body: Vec<u8>, what: &'static str) -> Result<String, SyncError> {
    String::from_utf8(body)
        .map_err(|_| SyncError::Stream(format!("the registry's {what} is not UTF-8")))
}

async fn get(
    inner: &Inner,
    path: &str,
    etag: Option<u64>,
    what: &'static str,
    cap: usize,
) -> Result<Option<String>, SyncError> {
    let mut req = inner.http.get(format!("{}{path}", inner.config.registry));
    if let Some(v) = etag {
        req = req.header("if-none-match", format!("\"{v}\""));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| SyncError::Connect(e.to_string()))?;
    match resp.status().as_u16() {
        200 => Ok(Some(utf8(read_capped(resp, what, cap).await?, what)?)),
        304 => Ok(None),
        s => Err(SyncError::Status(s)),
    }
}

fn apply_logged(inner: &Inner, incoming: Incoming) -> Result<(), ApplyError> {
    inner.apply(incoming).map(|_| ())
}

/// Fetches and applies the current snapshot; `conditional` skips it when
/// the registry has nothing newer than the applied version (a refresh of
/// the disk cache must not be skipped: it replaces the kept deltas).
pub(crate) async fn fetch_snapshot(inner: &Arc<Inner>, conditional: bool) -> Result<(), SyncError> {
    let ver = inner.current.load().state.ver();
    let etag = (conditional && ver > 0).then_some(ver);
    let cap = inner.config.max_snapshot_bytes;
    let Some(token) = get(inner, "/v1/srl", etag, "snapshot", cap).await? else {
        return Ok(());
    };
    let token = token.trim().to_owned();
    let i = inner.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let v = i.verifier.snapshot(&token, i.now());
        (v, token)
    })
    .await
    .map_err(|e| SyncError::Stream(e.to_string()))?;
    let snapshot = verified.0?;
    let _ = apply_logged(inner, Incoming::Snapshot(snapshot, verified.1));
    Ok(())
}

async fn fetch_checkpoint(inner: &Arc<Inner>) -> Result<bool, SyncError> {
    let Some(token) = get(
        inner,
        "/v1/srl/checkpoint",
        None,
        "checkpoint",
        MAX_CHECKPOINT,
    )
    .await?
    else {
        return Ok(false);
    };
    let token = token.trim().to_owned();
    let cp = inner.verifier.checkpoint(&token, inner.now())?;
    Ok(matches!(
        inner.apply(Incoming::Checkpoint(cp, token)),
        Err(ApplyError::Gap { .. })
    ))
}

/// Fetches deltas after the applied version until none are left; a
/// snapshot when they are no longer retained.
pub(crate) async fn catch_up(inner: &Arc<Inner>) -> Result<(), SyncError> {
    for _ in 0..MAX_PAGES {
        let since = inner.current.load().state.ver();
        let resp = inner
            .http
            .get(format!(
                "{}/v1/srl/deltas?since={since}",
                inner.config.registry
            ))
            .send()
            .await
            .map_err(|e| SyncError::Connect(e.to_string()))?;
        match resp.status().as_u16() {
            200 => {}
            410 => {
                tracing::info!(since, "deltas no longer retained; fetching a snapshot");
                return fetch_snapshot(inner, true).await;
            }
            s => return Err(SyncError::Status(s)),
        }
        #[derive(serde::Deserialize)]
        struct Deltas {
            deltas: Vec<String>,
        }
        // A page of deltas outweighing a snapshot is refused (and counted);
        // the snapshot, under its own cap, replaces it.
        let cap = inner.config.max_snapshot_bytes;
        let bytes = match read_capped(resp, "page of deltas", cap).await {
            Err(e @ SyncError::TooLarge { .. }) => {
                count(inner, &e);
                tracing::warn!(error = %e, since, "fetching a snapshot instead");
                return fetch_snapshot(inner, true).await;
            }
            other => other?,
        };
        let body: Deltas =
            serde_json::from_slice(&bytes).map_err(|e| SyncError::Stream(e.to_string()))?;
        if body.deltas.is_empty() {
            return Ok(());
        }
        for token in body.deltas {
            let delta = inner.verifier.delta(&token, inner.now())?;
            if let Err(e) = apply_logged(inner, Incoming::Delta(delta, token)) {
                if !matches!(e, ApplyError::Gap { .. }) {
                    return Err(SyncError::Stream(format!("catch-up stopped: {e}")));
                }
            }
        }
        if inner.current.load().state.ver() == since {
            return Err(SyncError::Stream("catch-up made no progress".into()));
        }
    }
    Ok(())
}

/// One poll: checkpoint (cheap), and catch up when it shows a gap.
pub(crate) async fn poll_once(inner: &Arc<Inner>) {
    let result = async {
        let (ver, attested) = {
            let c = inner.current.load();
            (c.state.ver(), c.state.attested().is_some())
        };
        let kept = inner.apply_lock.lock().map(|o| o.deltas.len()).unwrap_or(0);
        if ver == 0 && !attested {
            fetch_snapshot(inner, true).await?;
        } else if kept > MAX_KEPT_DELTAS {
            // The disk cache holds every delta since its snapshot: start it
            // over from a current snapshot, even one of the same version.
            fetch_snapshot(inner, false).await?;
        }
        // Catch up when the checkpoint shows a gap, or when a pushed
        // object did: a signed delta N+2 proves N+1 exists even if the
        // checkpoint served on pull is older (DESIGN 4: gap → fetch).
        let shown = fetch_checkpoint(inner).await?;
        let pushed = inner.gap_to.load(Ordering::Relaxed) > inner.current.load().state.ver();
        if shown || pushed {
            let before = inner.current.load().state.ver();
            catch_up(inner).await?;
            if inner.current.load().state.ver() > before {
                inner.metrics.gaps_repaired.inc();
            }
            fetch_checkpoint(inner).await?;
        }
        Ok::<_, SyncError>(())
    }
    .await;
    if let Err(e) = result {
        count(inner, &e);
        tracing::warn!(error = %e, "poll failed; the state is not refreshed by this poll");
    }
}

pub(crate) async fn poll_loop(inner: Arc<Inner>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        poll_once(&inner).await;
        tokio::select! {
            _ = tokio::time::sleep(jitter(inner.config.poll_interval)) => {}
            _ = inner.catch_up.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Keeps one push session up: reconnects with exponential backoff and
/// jitter (reset after a session that lasted), while the poller covers.
async fn push_loop<F, Fut>(inner: Arc<Inner>, transport: &'static str, mut session: F)
where
    F: FnMut(Arc<Inner>) -> Fut,
    Fut: std::future::Future<Output = Result<(), SyncError>>,
{
    let mut stop = inner.shutdown.subscribe();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session(inner.clone()) => r,
            _ = stop.changed() => return,
        };
        inner.push_connected.store(false, Ordering::Relaxed);
        match &result {
            Ok(()) => tracing::info!(transport, "push closed by the server; reconnecting"),
            Err(e) => {
                count(&inner, e);
                tracing::warn!(transport, error = %e, retry_in = ?backoff, "push down; polling continues meanwhile");
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff)) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

pub(crate) async fn sse_loop(inner: Arc<Inner>) {
    let client = match reqwest::Client::builder()
        .connect_timeout(inner.config.request_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the push client; polling only");
            return;
        }
    };
    push_loop(inner, "SSE", move |i| {
        let client = client.clone();
        async move { sse_session(&i, &client).await }
    })
    .await;
}

async fn sse_session(inner: &Arc<Inner>, client: &reqwest::Client) -> Result<(), SyncError> {
    let (ver, attested) = {
        let c = inner.current.load();
        (c.state.ver(), c.state.attested().is_some())
    };
    let mut req = client
        .get(format!("{}/v1/srl/events", inner.config.registry))
        .header("accept", "text/event-stream");
    if ver > 0 || attested {
        req = req.header("last-event-id", ver.to_string());
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| SyncError::Connect(e.to_string()))?;
    if resp.status().as_u16() != 200 {
        return Err(SyncError::Status(resp.status().as_u16()));
    }
    inner.push_connected.store(true, Ordering::Relaxed);
    tracing::info!(from = ver, "push stream connected");
    // One event may be a snapshot (sent to a subscriber resuming from a
    // version whose deltas are gone), so an event is capped like one; the
    // parser's line buffer is under the same cap.
    let cap = inner.config.max_snapshot_bytes;
    let mut parser = SseParser::new(cap);
    let mut live = Liveness::new(inner);
    loop {
        let chunk = match tokio::time::timeout_at(live.deadline, resp.chunk()).await {
            Err(_) => return Err(SyncError::Idle(live.idle)),
            Ok(Err(e)) => return Err(SyncError::Stream(e.to_string())),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(c))) => c,
        };
        let events = parser.feed(&chunk).map_err(|e| match e {
            veto_core::SseError::TooLarge(_) => SyncError::TooLarge {
                what: "push event",
                cap,
            },
            veto_core::SseError::NotUtf8 => SyncError::Stream(e.to_string()),
        })?;
        for event in events {
            match handle_event(inner, &event.event, event.data).await {
                Ok(iat) => live.saw(iat),
                Err(e) => {
                    count(inner, &e);
                    tracing::warn!(error = %e, event = %event.event, "refused a pushed object");
                }
            }
        }
    }
}

/// When a push session is alive. Bytes are not news: comments, `retry:`
/// lines, unknown events, objects that fail to verify or do not fit the
/// applied chain, and a verified object replayed (no newer than what this
/// session already knew) renew nothing. Only a verified object that fits
/// (applied, a duplicate, or proof of a gap) and was signed after the
/// newest attestation known when the session opened, or after the last
/// such object on it, pushes the deadline out: a registry (or a relay)
/// that replays one checkpoint forever is reopened like a silent one.
struct Liveness {
    idle: Duration,
    deadline: tokio::time::Instant,
    newest: u64,
}

impl Liveness {
    fn new(inner: &Inner) -> Self {
        let idle = inner.config.push_idle_timeout;
        Self {
            idle,
            deadline: tokio::time::Instant::now() + idle,
            newest: inner.current.load().state.attested().map_or(0, |a| a.iat),
        }
    }

    /// `iat` is that of a verified object that fit, if the event was one.
    fn saw(&mut self, iat: Option<u64>) {
        if let Some(iat) = iat.filter(|&iat| iat > self.newest) {
            self.newest = iat;
            self.deadline = tokio::time::Instant::now() + self.idle;
        }
    }
}

/// Whether applying a verified object shows the stream is carrying the
/// registry's chain: applied, a duplicate, or a gap to repair — not a
/// rollback, a broken chain or an equivocation.
fn fits(result: &Result<veto_core::Applied, ApplyError>) -> bool {
    matches!(result, Ok(_) | Err(ApplyError::Gap { .. }))
}

/// Verifies and applies one pushed object; returns its `iat` when it
/// verified and fit the applied chain (see [`Liveness`]).
async fn handle_event(
    inner: &Arc<Inner>,
    kind: &str,
    data: String,
) -> Result<Option<u64>, SyncError> {
    let now = inner.now();
    let (iat, result) = match kind {
        "delta" => {
            let d = inner.verifier.delta(&data, now)?;
            (d.payload.iat, inner.apply(Incoming::Delta(d, data)))
        }
        "checkpoint" => {
            let c = inner.verifier.checkpoint(&data, now)?;
            (c.payload.iat, inner.apply(Incoming::Checkpoint(c, data)))
        }
        "snapshot" => {
            let i = inner.clone();
            let (v, data) =
                tokio::task::spawn_blocking(move || (i.verifier.snapshot(&data, now), data))
                    .await
                    .map_err(|e| SyncError::Stream(e.to_string()))?;
            let v = v?;
            (v.iat, inner.apply(Incoming::Snapshot(v, data)))
        }
        _ => return Ok(None),
    };
    Ok(fits(&result).then_some(iat))
}

pub(crate) fn parse_jwks(text: &str) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Jwks {
        keys: Vec<veto_core::Jwk>,
    }
    let jwks: Jwks = serde_json::from_str(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let keys = jwks
        .keys
        .iter()
        .map(PublicKey::from_jwk)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid JWKS key: {e}"))?;
    Ok(KeySet::new(keys))
}

pub(crate) async fn jwks_loop(inner: Arc<Inner>, refresh: Duration) {
    let mut stop = inner.shutdown.subscribe();
    let mut retry = Duration::from_millis(200);
    loop {
        let wait = match get(&inner, "/.well-known/jwks.json", None, "JWKS", MAX_JWKS).await {
            Ok(Some(text)) => match parse_jwks(&text) {
                Ok(keys) => {
                    inner.set_issuers(keys);
                    if let Ok(mut o) = inner.apply_lock.lock() {
                        o.jwks = Some(text);
                    }
                    inner.persist_now.notify_one();
                    retry = Duration::from_millis(200);
                    jitter(refresh)
                }
                Err(e) => {
                    inner
                        .metrics
                        .sync_errors
                        .get_or_create(&Metrics::label("jwks"))
                        .inc();
                    tracing::warn!(error = %e, "refusing the registry's JWKS; keeping the previous issuer keys");
                    refresh
                }
            },
            Ok(None) => jitter(refresh),
            Err(e) => {
                count(&inner, &e);
                tracing::warn!(error = %e, "cannot fetch issuer keys (JWKS); retrying");
                retry = (retry * 2).min(refresh);
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The NATS JetStream push: an ephemeral consumer of `veto.srl.>` that
/// starts a little before the newest attestation (anything older than the
/// applied version is ignored; anything missing shows as a gap and is
/// fetched over HTTP). Idle heartbeats every 5 s: a silent connection is
/// noticed within 10 s and reopened.
pub(crate) async fn nats_loop(inner: Arc<Inner>, url: String) {
    push_loop(inner, "NATS", move |i| {
        let url = url.clone();
        async move { nats_session(&i, &url).await }
    })
    .await;
}

async fn nats_session(inner: &Arc<Inner>, url: &str) -> Result<(), SyncError> {
    use veto_nats::DeliverFrom;
    let client = veto_nats::Client::connect(url, "veto-authorizer")
        .await
        .map_err(|e| SyncError::Connect(e.to_string()))?;
    let start = match inner.current.load().state.attested() {
        Some(a) => {
            let from = a.iat.saturating_sub(inner.config.check.skew + 5);
            DeliverFrom::StartTime(std::time::UNIX_EPOCH + Duration::from_secs(from))
        }
        None => DeliverFrom::New,
    };
    let mut sub = client
        .js_subscribe("VETO_SRL", "veto.srl.>", start, Duration::from_secs(5))
        .await
        .map_err(|e| SyncError::Stream(e.to_string()))?;
    inner.push_connected.store(true, Ordering::Relaxed);
    tracing::info!(url, "NATS push connected");
    // JetStream idle heartbeats (answered inside `next`) prove the NATS
    // connection, not the revocation feed: the same liveness rule as SSE.
    let mut live = Liveness::new(inner);
    loop {
        let next = tokio::time::timeout_at(live.deadline, sub.next())
            .await
            .map_err(|_| SyncError::Idle(live.idle))?;
        let Some(msg) = next.map_err(|e| SyncError::Stream(e.to_string()))? else {
            return Ok(());
        };
        let kind = match msg.subject.as_str() {
            "veto.srl.delta" => "delta",
            "veto.srl.checkpoint" => "checkpoint",
            _ => continue,
        };
        let Ok(data) = String::from_utf8(msg.payload.to_vec()) else {
            count(
                inner,
                &SyncError::Stream("a pushed object is not UTF-8".into()),
            );
            continue;
        };
        match handle_event(inner, kind, data).await {
            Ok(iat) => live.saw(iat),
            Err(e) => {
                count(inner, &e);
                tracing::warn!(error = %e, kind, "refused a pushed object");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(newest: u64) -> Liveness {
        let idle = Duration::from_secs(15);
        Liveness {
            idle,
            deadline: tokio::time::Instant::now() + idle,
            newest,
        }
    }

    #[test]
    fn only_a_newer_verified_object_is_news() {
        let mut l = liveness(100);
        let d0 = l.deadline;
        std::thread::sleep(Duration::from_millis(5));
        // Not an object that verified and fit (comment, unknown, forged, …).
        l.saw(None);
        // Verified and fitting, but no newer than what was known: a replay.
        l.saw(Some(100));
        l.saw(Some(99));
        assert_eq!((l.deadline, l.newest), (d0, 100));
        l.saw(Some(101));
        assert!(l.deadline > d0);
        assert_eq!(l.newest, 101);
        // The same object again renews nothing.
        let d1 = l.deadline;
        std::thread::sleep(Duration::from_millis(5));
        l.saw(Some(101));
        assert_eq!(l.deadline, d1);
    }

    #[test]
    fn objects_that_do_not_fit_the_chain_are_not_news() {
        assert!(fits(&Ok(veto_core::Applied::Refreshed)));
        assert!(fits(&Ok(veto_core::Applied::Ignored)));
        assert!(fits(&Err(ApplyError::Gap {
            applied: 1,
            received: 3
        })));
        assert!(!fits(&Err(ApplyError::Equivocation { ver: 1 })));
        assert!(!fits(&Err(ApplyError::Rollback {
            applied: 2,
            received: 1
        })));
        assert!(!fits(&Err(ApplyError::BrokenChain { ver: 2 })));
    }
}
