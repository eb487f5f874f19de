//! Keeping the state current: one push subscription (SSE or NATS) and a
//! poller, both feeding [`State::apply`]; the signed issuer key set refresh; and the
//! restore from the disk cache. [`Syncer`] holds what talking to the
//! registry needs (client, verifier, settings); the state it feeds is
//! reached only through [`State`]'s methods. Nothing here touches the
//! check path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use veto_core::wire::{nats, path, DeltasPage, EventKind};
use veto_core::{ApplyError, SrlError, SrlVerifier, SseParser};

use crate::config::{Config, Issuers, Push, StartError};
use crate::incoming::Incoming;
use crate::persist::{DiskCache, Saved};
use crate::state::State;

/// Byte caps on what the authorizer reads from a registry (a stranger on
/// the path, or a broken registry, must not be able to make it allocate
/// without bound). Each body is read through [`read_capped`], which stops
/// at the cap before allocating more; the snapshot cap is configurable
/// ([`crate::config::Config::max_snapshot_bytes`]) and also bounds an SSE event (a
/// resuming subscriber may be sent a snapshot) and one page of deltas
/// (when the deltas since a version outweigh a snapshot, the snapshot is
/// fetched instead).
///
/// An issuer key set: a key is ~150 bytes, so 1 MiB is thousands of keys.
pub(crate) const MAX_ISSUERS: usize = 1 << 20;
/// A checkpoint: ~400 bytes signed; the verifier refuses over 4 KiB.
pub(crate) const MAX_CHECKPOINT: usize = 16 << 10;
/// Most delta pages fetched in one catch-up.
const MAX_PAGES: usize = 1000;
/// A disk cache with more deltas than this is replaced by a fresh snapshot.
const MAX_KEPT_DELTAS: usize = 4096;

/// What keeping the state current needs: the registry's address and
/// settings, the HTTP client, the verifier of signed objects, the state
/// it feeds and the disk cache (to keep the issuer key set in, and to know how many
/// deltas it holds).
pub(crate) struct Syncer {
    config: Config,
    http: reqwest::Client,
    verifier: SrlVerifier,
    state: Arc<State>,
    disk: Option<Arc<DiskCache>>,
    shutdown: watch::Sender<bool>,
}

/// The HTTP client for the registry, with the configured timeouts.
/// `https://` registries are checked against [`Config::tls`] (the webpki
/// roots when it is `None`). With `total` false the client has only a
/// connect timeout (a push stream is long-lived).
pub(crate) fn client(config: &Config, total: bool) -> Result<reqwest::Client, StartError> {
    let tls = match &config.tls {
        Some(t) => t.clone(),
        None => veto_tls::ClientTls::with_ca_file(None)?,
    };
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls((*tls.config()).clone())
        .connect_timeout(config.request_timeout);
    if total {
        b = b.timeout(config.request_timeout);
    }
    b.build()
        .map_err(|e| StartError::Http(veto_tls::error_chain(&e)))
}

impl Syncer {
    pub fn new(
        config: Config,
        http: reqwest::Client,
        state: Arc<State>,
        disk: Option<Arc<DiskCache>>,
    ) -> Self {
        let verifier = SrlVerifier::new(config.authority_keys.clone(), config.iss.clone())
            .with_skew(config.check.skew)
            .with_limits(veto_core::SrlLimits {
                max_snapshot_bytes: config.max_snapshot_bytes,
                ..veto_core::SrlLimits::default()
            });
        let (shutdown, _) = watch::channel(false);
        Self {
            config,
            http,
            verifier,
            state,
            disk,
            shutdown,
        }
    }

    fn now(&self) -> u64 {
        self.state.now()
    }

    /// Verifies and applies what the disk cache kept; anything that fails
    /// to verify is dropped with a warning.
    pub fn restore(&self, saved: Saved) {
        let now = self.now();
        let v = &self.verifier;
        if let Some(text) = saved.issuers {
            // Verified like anything else from the disk: a file that was
            // changed, or signed by another authority, is dropped.
            match v.issuers(&text, now) {
                Ok(set) => {
                    if let Err(e) = adopt_issuers(self, set, text, false) {
                        tracing::warn!(error = %e, "cached issuer key set refused");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cached issuer key set does not verify; ignoring it")
                }
            }
        }
        let mut loaded = 0;
        if let Some(t) = saved.snapshot {
            match v.snapshot(&t, now) {
                Ok(s) => loaded += usize::from(self.state.apply(Incoming::Snapshot(s, t)).is_ok()),
                Err(e) => {
                    tracing::warn!(error = %e, "cached snapshot does not verify; ignoring it")
                }
            }
        }
        for t in saved.deltas {
            match v.delta(&t, now) {
                Ok(d) => loaded += usize::from(self.state.apply(Incoming::Delta(d, t)).is_ok()),
                Err(e) => tracing::warn!(error = %e, "cached delta does not verify; ignoring it"),
            }
        }
        if let Some(t) = saved.checkpoint {
            if let Ok(c) = v.checkpoint(&t, now) {
                let _ = self.state.apply(Incoming::Checkpoint(c, t));
            }
        }
        tracing::info!(
            version = self.state.version(),
            objects = loaded,
            "loaded the cached revocation state (still subject to staleness)"
        );
    }

    /// Starts the sync tasks: issuer key set refresh (first, so the first checks can
    /// verify chains), poller, push, and the disk cache's writer.
    /// `first_bus` is the NATS connection opened at start, if any.
    /// `fleet_enrolled`: the gateway's key was enrolled at start already.
    pub fn spawn(self: &Arc<Self>, first_bus: Option<veto_bus::Client>, fleet_enrolled: bool) {
        if let Issuers::Signed { refresh } = self.config.issuers {
            tokio::spawn(issuers_loop(self.clone(), refresh));
        }
        tokio::spawn(poll_loop(self.clone()));
        match &self.config.push {
            Push::Sse => {
                tokio::spawn(sse_loop(self.clone()));
            }
            Push::Nats(bus) => {
                tokio::spawn(nats_loop(self.clone(), bus.clone(), first_bus));
            }
            Push::Off => {}
        }
        if let Some(fleet) = &self.config.fleet {
            let reporter = crate::fleet::Reporter {
                fleet: fleet.clone(),
                registry: self.config.registry.clone(),
                iss: self.config.iss.clone(),
                push: crate::fleet::push_name(&self.config.push),
                policy: crate::fleet::policy_name(self.config.check.policy),
                state: self.state.clone(),
                http: self.http.clone(),
            };
            tokio::spawn(reporter.run(fleet_enrolled, self.shutdown.subscribe()));
        }
        if let Some(disk) = self.disk.clone() {
            let stop = self.shutdown.subscribe();
            tokio::spawn(async move { disk.run(stop).await });
        }
    }

    /// Stops the sync tasks (the disk cache is flushed once more).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

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
    #[error(transparent)]
    Bus(#[from] veto_bus::ConnectError),
    #[error("the registry's {what} is over the {cap}-byte cap: refused without reading further")]
    TooLarge { what: &'static str, cap: usize },
    #[error("issuer key set refused: {0}")]
    Issuers(ApplyError),
}

impl SyncError {
    fn kind(&self) -> &'static str {
        match self {
            SyncError::Connect(_) => "connect",
            SyncError::Status(_) => "status",
            SyncError::Invalid(_) => "invalid_object",
            SyncError::Idle(_) => "push_idle",
            SyncError::Stream(_) => "push_stream",
            SyncError::Bus(_) => "connect",
            SyncError::TooLarge { .. } => "too_large",
            SyncError::Issuers(_) => "issuers",
        }
    }
}

fn count(sync: &Syncer, e: &SyncError) {
    sync.state.record_error(e.to_string());
    let metrics = sync.state.metrics();
    metrics.sync_error(e.kind());
    if let SyncError::Invalid(err) = e {
        metrics.rejected(invalid_kind(err));
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
        _ => "malformed",
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
        .map_err(|e| SyncError::Connect(veto_tls::error_chain(&e)))?
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
    sync: &Syncer,
    path: &str,
    etag: Option<u64>,
    what: &'static str,
    cap: usize,
) -> Result<Option<String>, SyncError> {
    get_bytes(sync, path, etag, what, cap)
        .await?
        .map(|body| utf8(body, what))
        .transpose()
}

/// `GET path`: the body (at most `cap` bytes), or `None` on 304.
async fn get_bytes(
    sync: &Syncer,
    path: &str,
    etag: Option<u64>,
    what: &'static str,
    cap: usize,
) -> Result<Option<Vec<u8>>, SyncError> {
    let mut req = sync.http.get(format!("{}{path}", sync.config.registry));
    if let Some(v) = etag {
        req = req.header("if-none-match", format!("\"{v}\""));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| SyncError::Connect(veto_tls::error_chain(&e)))?;
    match resp.status().as_u16() {
        200 => Ok(Some(read_capped(resp, what, cap).await?)),
        304 => Ok(None),
        s => Err(SyncError::Status(s)),
    }
}

fn apply_logged(sync: &Syncer, incoming: Incoming) -> Result<(), ApplyError> {
    sync.state.apply(incoming).map(|_| ())
}

/// Fetches and applies the current snapshot; `conditional` skips it when
/// the registry has nothing newer than the applied version (a refresh of
/// the disk cache must not be skipped: it replaces the kept deltas).
async fn fetch_snapshot(sync: &Arc<Syncer>, conditional: bool) -> Result<(), SyncError> {
    let ver = sync.state.version();
    let etag = (conditional && ver > 0).then_some(ver);
    let cap = sync.config.max_snapshot_bytes;
    // The binary container, taken as it came (never trimmed: the table
    // bytes are binary).
    let Some(token) = get_bytes(sync, path::SRL, etag, "snapshot", cap).await? else {
        return Ok(());
    };
    let i = sync.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let v = i.verifier.snapshot(&token, i.now());
        (v, token)
    })
    .await
    .map_err(|e| SyncError::Stream(e.to_string()))?;
    let snapshot = verified.0?;
    let _ = apply_logged(sync, Incoming::Snapshot(snapshot, verified.1));
    Ok(())
}

async fn fetch_checkpoint(sync: &Arc<Syncer>) -> Result<bool, SyncError> {
    let Some(token) = get(
        sync,
        path::SRL_CHECKPOINT,
        None,
        "checkpoint",
        MAX_CHECKPOINT,
    )
    .await?
    else {
        return Ok(false);
    };
    let token = token.trim().to_owned();
    let cp = sync.verifier.checkpoint(&token, sync.now())?;
    Ok(matches!(
        sync.state.apply(Incoming::Checkpoint(cp, token)),
        Err(ApplyError::Gap { .. })
    ))
}

/// Fetches deltas after the applied version until none are left; a
/// snapshot when they are no longer retained.
async fn catch_up(sync: &Arc<Syncer>) -> Result<(), SyncError> {
    for _ in 0..MAX_PAGES {
        let since = sync.state.version();
        let resp = sync
            .http
            .get(format!(
                "{}{}?since={since}",
                sync.config.registry,
                path::SRL_DELTAS
            ))
            .send()
            .await
            .map_err(|e| SyncError::Connect(veto_tls::error_chain(&e)))?;
        match resp.status().as_u16() {
            200 => {}
            410 => {
                tracing::info!(since, "deltas no longer retained; fetching a snapshot");
                return fetch_snapshot(sync, true).await;
            }
            s => return Err(SyncError::Status(s)),
        }
        // A page of deltas outweighing a snapshot is refused (and counted);
        // the snapshot, under its own cap, replaces it.
        let cap = sync.config.max_snapshot_bytes;
        let bytes = match read_capped(resp, "page of deltas", cap).await {
            Err(e @ SyncError::TooLarge { .. }) => {
                count(sync, &e);
                tracing::warn!(error = %e, since, "fetching a snapshot instead");
                return fetch_snapshot(sync, true).await;
            }
            other => other?,
        };
        let body: DeltasPage =
            serde_json::from_slice(&bytes).map_err(|e| SyncError::Stream(e.to_string()))?;
        if body.deltas.is_empty() {
            return Ok(());
        }
        for token in body.deltas {
            let delta = sync.verifier.delta(&token, sync.now())?;
            if let Err(e) = apply_logged(sync, Incoming::Delta(delta, token)) {
                if !matches!(e, ApplyError::Gap { .. }) {
                    return Err(SyncError::Stream(format!("catch-up stopped: {e}")));
                }
            }
        }
        if sync.state.version() == since {
            return Err(SyncError::Stream("catch-up made no progress".into()));
        }
    }
    Ok(())
}

/// One poll: checkpoint (cheap), and catch up when it shows a gap.
pub(crate) async fn poll_once(sync: &Arc<Syncer>) {
    let result = async {
        let at = sync.state.position();
        let kept = sync.disk.as_ref().map_or(0, |d| d.kept_deltas());
        if at.ver == 0 && at.attested.is_none() {
            fetch_snapshot(sync, true).await?;
        } else if kept > MAX_KEPT_DELTAS {
            // The disk cache holds every delta since its snapshot: start it
            // over from a current snapshot, even one of the same version.
            fetch_snapshot(sync, false).await?;
        }
        // Catch up when the checkpoint shows a gap, or when a pushed
        // object did: a signed delta N+2 proves N+1 exists even if the
        // checkpoint served on pull is older (DESIGN 4: gap → fetch).
        let shown = fetch_checkpoint(sync).await?;
        let pushed = sync.state.gap_pending();
        if shown || pushed {
            let before = sync.state.version();
            catch_up(sync).await?;
            if sync.state.version() > before {
                sync.state.metrics().gap_repaired();
            }
            fetch_checkpoint(sync).await?;
        }
        Ok::<_, SyncError>(())
    }
    .await;
    if let Err(e) = result {
        count(sync, &e);
        tracing::warn!(error = %e, "poll failed; the state is not refreshed by this poll");
    }
}

async fn poll_loop(sync: Arc<Syncer>) {
    let mut stop = sync.shutdown.subscribe();
    loop {
        poll_once(&sync).await;
        tokio::select! {
            _ = tokio::time::sleep(jitter(sync.config.poll_interval)) => {}
            _ = sync.state.gap_noticed() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Keeps one push session up: reconnects with exponential backoff and
/// jitter (reset after a session that lasted), while the poller covers.
async fn push_loop<F, Fut>(sync: Arc<Syncer>, transport: &'static str, mut session: F)
where
    F: FnMut(Arc<Syncer>) -> Fut,
    Fut: std::future::Future<Output = Result<(), SyncError>>,
{
    let mut stop = sync.shutdown.subscribe();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = session(sync.clone()) => r,
            _ = stop.changed() => return,
        };
        sync.state.set_push_connected(false);
        match &result {
            Ok(()) => tracing::info!(transport, "push closed by the server; reconnecting"),
            Err(e) => {
                count(&sync, e);
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

async fn sse_loop(sync: Arc<Syncer>) {
    let client = match client(&sync.config, false) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the push client; polling only");
            return;
        }
    };
    push_loop(sync, "SSE", move |i| {
        let client = client.clone();
        async move { sse_session(&i, &client).await }
    })
    .await;
}

async fn sse_session(sync: &Arc<Syncer>, client: &reqwest::Client) -> Result<(), SyncError> {
    let at = sync.state.position();
    let ver = at.ver;
    let mut req = client
        .get(format!("{}{}", sync.config.registry, path::SRL_EVENTS))
        .header("accept", "text/event-stream");
    if ver > 0 || at.attested.is_some() {
        req = req.header("last-event-id", ver.to_string());
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| SyncError::Connect(veto_tls::error_chain(&e)))?;
    if resp.status().as_u16() != 200 {
        return Err(SyncError::Status(resp.status().as_u16()));
    }
    sync.state.set_push_connected(true);
    tracing::info!(from = ver, "push stream connected");
    // One event may be a snapshot (sent to a subscriber resuming from a
    // version whose deltas are gone), so an event is capped like one; the
    // parser's line buffer is under the same cap.
    let cap = sync.config.max_snapshot_bytes;
    let mut parser = SseParser::new(cap);
    let mut live = Liveness::new(sync);
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
            _ => SyncError::Stream(e.to_string()),
        })?;
        for event in events {
            // Other event names (and comments) carry nothing to apply and
            // renew nothing (see [`Liveness`]).
            let Some(kind) = EventKind::parse(&event.event) else {
                continue;
            };
            match handle_event(sync, kind, event.data).await {
                Ok(iat) => live.saw(iat),
                Err(e) => {
                    count(sync, &e);
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
    fn new(sync: &Syncer) -> Self {
        let idle = sync.config.push_idle_timeout;
        Self {
            idle,
            deadline: tokio::time::Instant::now() + idle,
            newest: sync.state.position().attested.unwrap_or(0),
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
    sync: &Arc<Syncer>,
    kind: EventKind,
    data: String,
) -> Result<Option<u64>, SyncError> {
    let now = sync.now();
    let (iat, result) = match kind {
        EventKind::Delta => {
            let d = sync.verifier.delta(&data, now)?;
            (d.payload.iat, sync.state.apply(Incoming::Delta(d, data)))
        }
        EventKind::Checkpoint => {
            let c = sync.verifier.checkpoint(&data, now)?;
            (
                c.payload.iat,
                sync.state.apply(Incoming::Checkpoint(c, data)),
            )
        }
        EventKind::Issuers => {
            // A set is not news about the revocation state: it never
            // renews the push session's liveness.
            let set = sync.verifier.issuers(&data, now)?;
            adopt_issuers(sync, set, data, true).map_err(SyncError::Issuers)?;
            return Ok(None);
        }
        EventKind::Snapshot => {
            // The text container; the disk cache keeps the binary one.
            let i = sync.clone();
            let verified = tokio::task::spawn_blocking(move || {
                let v = i.verifier.snapshot(data.as_bytes(), now)?;
                let bytes = veto_core::Snapshot::from_container(data.as_bytes())?.into_bytes();
                Ok::<_, SrlError>((v, bytes))
            })
            .await
            .map_err(|e| SyncError::Stream(e.to_string()))?;
            let (v, bytes) = verified?;
            (v.iat, sync.state.apply(Incoming::Snapshot(v, bytes)))
        }
    };
    Ok(fits(&result).then_some(iat))
}

/// Applies a verified issuer key set `set` (its compact JWS `text`) when
/// this authorizer trusts the signed set (not pinned keys), and keeps the
/// signed bytes in the disk cache. A set older than the applied one is a
/// rollback and refused, except when `pushed`: a stream replays what it
/// carried before (JetStream from a start time), so there an older set
/// is only old news and is ignored.
fn adopt_issuers(
    sync: &Syncer,
    set: veto_core::VerifiedIssuers,
    text: String,
    pushed: bool,
) -> Result<(), ApplyError> {
    if !matches!(sync.config.issuers, Issuers::Signed { .. }) {
        return Ok(());
    }
    if pushed && sync.state.issuers_version().is_some_and(|v| set.ver < v) {
        return Ok(());
    }
    sync.state.apply_issuers(set, text)?;
    Ok(())
}

/// Fetches the authority-signed issuer key set every `refresh` (sooner
/// after a failure) and applies it: verified with the pinned authority
/// key, never rolled back.
async fn issuers_loop(sync: Arc<Syncer>, refresh: Duration) {
    let mut stop = sync.shutdown.subscribe();
    let mut retry = Duration::from_millis(200);
    loop {
        let wait = match get(&sync, path::ISSUERS, None, "issuer key set", MAX_ISSUERS).await {
            Ok(Some(text)) => {
                let applied = sync
                    .verifier
                    .issuers(&text, sync.now())
                    .map_err(SyncError::Invalid)
                    .and_then(|set| {
                        adopt_issuers(&sync, set, text, false).map_err(SyncError::Issuers)
                    });
                match applied {
                    Ok(()) => {
                        retry = Duration::from_millis(200);
                        jitter(refresh)
                    }
                    Err(e) => {
                        sync.state.metrics().sync_error("issuers");
                        tracing::warn!(error = %e, "refusing the registry's issuer key set; keeping the keys applied");
                        refresh
                    }
                }
            }
            Ok(None) => jitter(refresh),
            Err(e) => {
                count(&sync, &e);
                tracing::warn!(error = %e, "cannot fetch the issuer key set; retrying");
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

/// Connects to the NATS bus once at start. A certificate or credential
/// problem cannot heal by retrying: it is returned, so the authorizer
/// refuses to start and says why. An unreachable server is only logged
/// (push starts when it is back; polling covers meanwhile).
pub(crate) async fn first_connect(
    bus: &veto_bus::NatsSettings,
) -> Result<Option<veto_bus::Client>, veto_bus::ConnectError> {
    match bus.connect(NATS_CLIENT_NAME).await {
        Ok(client) => Ok(Some(client)),
        Err(e) if e.is_configuration() => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "NATS unreachable at start; polling until it is back");
            Ok(None)
        }
    }
}

/// The name the authorizer gives its NATS connections.
const NATS_CLIENT_NAME: &str = "veto-authorizer";

/// The NATS JetStream push: an ordered (ephemeral, in-memory, no acks)
/// push consumer of `veto.srl.>` on stream `VETO_SRL` that starts a little
/// before the newest attestation (anything older than the applied version
/// is ignored; anything missing shows as a gap and is fetched over HTTP).
/// JetStream's idle heartbeats (every 5 s) and flow control are handled by
/// the client; they prove the connection, not the feed (see [`Liveness`]).
///
/// What the authorizer's NATS user needs (and no more): publish to
/// `$JS.API.CONSUMER.CREATE.VETO_SRL` (create the consumer) and
/// `$JS.FC.VETO_SRL.>` (answer flow control); subscribe to `_INBOX.>`
/// (the deliver subject and API replies). It never publishes to
/// `veto.srl.>` and never touches the stream's configuration.
async fn nats_loop(
    sync: Arc<Syncer>,
    bus: veto_bus::NatsSettings,
    first: Option<veto_bus::Client>,
) {
    let first = std::sync::Mutex::new(first);
    push_loop(sync, "NATS", move |i| {
        let bus = bus.clone();
        let client = first.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            let client = match client {
                Some(c) => c,
                None => bus.connect(NATS_CLIENT_NAME).await?,
            };
            nats_session(&i, &bus, client).await
        }
    })
    .await;
}

async fn nats_session(
    sync: &Arc<Syncer>,
    bus: &veto_bus::NatsSettings,
    client: veto_bus::Client,
) -> Result<(), SyncError> {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    use futures_util::StreamExt as _;
    let js_err =
        |what: &str, e: &dyn std::fmt::Display| SyncError::Stream(format!("jetstream {what}: {e}"));
    let deliver_policy = match sync.state.position().attested {
        Some(iat) => {
            let from = iat.saturating_sub(sync.config.check.skew + 5);
            let start_time = i64::try_from(from)
                .ok()
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            DeliverPolicy::ByStartTime { start_time }
        }
        None => DeliverPolicy::New,
    };
    let deliver_subject = client.new_inbox();
    let js = async_nats::jetstream::new(client);
    // No STREAM.INFO request: the consumer's creation tells whether the
    // stream exists, and an authorizer needs no right to read its config.
    let stream = js
        .get_stream_no_info(nats::STREAM)
        .await
        .map_err(|e| js_err("stream", &e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject,
            filter_subject: nats::SUBJECTS.to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("consumer", &e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| js_err("consumer", &e))?;
    sync.state.set_push_connected(true);
    tracing::info!(servers = bus.servers(), "NATS push connected");
    let mut live = Liveness::new(sync);
    loop {
        let next = tokio::time::timeout_at(live.deadline, messages.next())
            .await
            .map_err(|_| SyncError::Idle(live.idle))?;
        let Some(msg) = next else {
            return Ok(());
        };
        let msg = msg.map_err(|e| js_err("push", &e))?;
        let Some(kind) = EventKind::of_subject(msg.subject.as_str()) else {
            continue;
        };
        let Ok(data) = String::from_utf8(msg.payload.to_vec()) else {
            count(
                sync,
                &SyncError::Stream("a pushed object is not UTF-8".into()),
            );
            continue;
        };
        match handle_event(sync, kind, data).await {
            Ok(iat) => live.saw(iat),
            Err(e) => {
                count(sync, &e);
                tracing::warn!(error = %e, kind = kind.as_str(), "refused a pushed object");
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
