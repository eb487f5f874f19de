//! veto's reverse proxy: runs the authorizer on every request and
//! forwards allowed ones to one upstream, streaming both ways.
//!
//! - The request target is canonicalized once
//!   ([`veto_authorizer::request_target`], DESIGN 4): dot segments
//!   removed, unreserved escapes decoded, ambiguous spellings (`%2F`, `\`,
//!   `%2e%2e`, `//`, `;`, control characters, raw non-ASCII, `*`) refused
//!   with 400 `bad_target`. The action is `http:METHOD:PATH` on that
//!   canonical path (the query is not part of it) unless a [`Routes`] file
//!   maps the canonical path otherwise, and exactly that path, with the
//!   query unchanged, is what the upstream receives.
//! - The chain comes from exactly one `Authorization: Bearer` header; two
//!   headers, or a comma-joined second credential, are refused (401
//!   `malformed`).
//! - Denials answer 401/403/503 with `{"error": reason, "message": text}`;
//!   the proxy's own refusals use the same shape (`bad_target`,
//!   `upgrade_refused`, `upstream_timeout`, `bad_gateway`).
//! - Allowed requests reach the upstream without hop-by-hop headers,
//!   without the client's `Authorization`, without any client header whose
//!   name contains `_` (CGI/WSGI upstreams read `Veto_Agent` as
//!   `Veto-Agent`), without any client `Veto-*` header and without the
//!   method-override headers (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override`: the action was decided on the request's method).
//!   The proxy then sets `X-Forwarded-For`, `Veto-Agent`, `Veto-Warrant`
//!   and, when allowed only by fail-open, `Veto-Stale: 1`.
//! - Only the upgrade protocols in [`ProxyConfig::upgrade_protocols`] pass
//!   (`websocket` by default); `h2c` never does. Others are refused with 400
//!   `upgrade_refused`.
//! - The upstream must send a response head within
//!   [`ProxyConfig::upstream_timeout`], or the client gets 504
//!   `upstream_timeout`.
//! - A response that is still streaming (chunked body, SSE) or an upgraded
//!   connection (WebSocket) is cut off as soon as its chain is denied: it
//!   is re-checked on every newly applied version and, on the proxy's one
//!   tick just after each whole second, once the chain's earliest `exp` or
//!   the state's `fresh_until` has come, so expiry and (under fail-closed)
//!   staleness end it too (no timer per request). Cuts are counted in
//!   `veto_proxy_streams_cut_total{reason}`.
//! - TLS (one stack, [`veto_tls`]): the agents' listener and the admin
//!   listener each serve HTTPS when given a [`ServerTls`] (reloaded when
//!   its files change), and an `https://` upstream is reached with
//!   [`ProxyConfig::upstream_tls`] (webpki roots plus `--ca-file`).

mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::WatchStream;
use veto_authorizer::Authorizer;
use veto_core::wire::{self, path, ErrorBody, ErrorCode};
use veto_core::{Denial, VerifiedChain};

/// The default for [`ProxyConfig::upstream_timeout`].
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

pub use routes::{RouteError, Routes};
pub use veto_tls::{ClientTls, ServerTls};

/// Why an upstream URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("upstream `{url}`: {reason}")]
pub struct UpstreamUrlError {
    url: String,
    reason: &'static str,
}

/// Parses an upstream base URL: `http://HOST[:PORT][/PREFIX]` or
/// `https://…` (RFC 9110 §4.2); anything else is refused here, at start,
/// rather than failing every request later.
pub fn upstream_uri(url: &str) -> Result<Uri, UpstreamUrlError> {
    let bad = |reason| UpstreamUrlError {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("not a valid URL: expected `http://host:port` or `https://host:port`"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(bad("the scheme must be http or https")),
        None => return Err(bad("expected `http://host:port` or `https://host:port`")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a query cannot be part of the upstream base"));
    }
    Ok(uri)
}

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The upstream base URL, such as `http://127.0.0.1:9000`.
    pub upstream: Uri,
    /// Action mapping.
    pub routes: Routes,
    /// How long a client may take to send a request head before its
    /// connection is closed, so slow-loris clients hold nothing.
    pub header_read_timeout: Duration,
    /// How long the upstream may take to connect and send a response head
    /// (default 30 s); after it the client gets 504 `upstream_timeout`.
    /// A body already streaming is not limited by it.
    pub upstream_timeout: Duration,
    /// Upgrade protocols passed to the upstream, lowercase names without
    /// version (default `["websocket"]`). `h2c` is refused even if listed:
    /// it would turn the connection into a channel of requests the proxy
    /// never sees.
    pub upgrade_protocols: Vec<String>,
    /// Serve agents over HTTPS with this certificate (default: plain HTTP).
    pub tls: Option<ServerTls>,
    /// Serve `/metrics`, `/healthz`, `/readyz` over HTTPS with this
    /// certificate (default: plain HTTP).
    pub admin_tls: Option<ServerTls>,
    /// What an `https://` upstream is checked against (default: the
    /// webpki roots; add a private CA with [`ClientTls::with_ca_file`]).
    pub upstream_tls: Option<ClientTls>,
    /// Take the scheme and authority a DPoP proof's `htu` must name from
    /// `X-Forwarded-Proto` / `X-Forwarded-Host` (default off; see
    /// [`veto_authorizer::request_htu`]). Only for a proxy reachable
    /// solely through a front end that sets both.
    pub trust_forwarded: bool,
}

impl ProxyConfig {
    /// Defaults for an upstream: no routes, 30 s header and upstream
    /// timeouts, WebSocket upgrades only.
    pub fn new(upstream: Uri) -> Self {
        Self {
            upstream,
            routes: Routes::default(),
            header_read_timeout: Duration::from_secs(30),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            upgrade_protocols: vec!["websocket".to_owned()],
            tls: None,
            admin_tls: None,
            upstream_tls: None,
            trust_forwarded: false,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CutReason {
    reason: String,
}

struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    /// `requests{outcome="allow"}` and `{outcome="allow_stale"}`, looked
    /// up once.
    allow: Counter,
    allow_stale: Counter,
    upstream_errors: Counter,
    streams_cut: Family<CutReason, Counter>,
}

impl Metrics {
    fn outcome(&self, outcome: &str) {
        self.requests
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

struct State {
    authz: Authorizer,
    /// The applied version, sent on every change and every second
    /// ([`pace`]): what open streams re-check on.
    rechecks: tokio::sync::watch::Receiver<u64>,
    config: ProxyConfig,
    upstream: UpstreamBase,
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    metrics: Metrics,
}

impl State {
    /// A receiver of [`State::rechecks`] that has seen what was sent last,
    /// and the authorizer's applied version now.
    fn rechecks_from_now(&self) -> (tokio::sync::watch::Receiver<u64>, u64) {
        let mut rx = self.rechecks.clone();
        rx.borrow_and_update();
        (rx, self.authz.applied_version())
    }
}

/// The response body: a local answer, or the upstream's guarded stream.
pub enum ProxyBody {
    /// A response made by the proxy.
    Local(Full<Bytes>),
    /// The upstream's body, cut off if its chain is revoked.
    Upstream(Guarded),
}

impl From<String> for ProxyBody {
    fn from(s: String) -> Self {
        ProxyBody::Local(Full::new(Bytes::from(s)))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Local(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e: Infallible| match e {}),
            ProxyBody::Upstream(g) => Pin::new(g).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(b) => b.is_end_stream(),
            ProxyBody::Upstream(g) => g.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(b) => b.size_hint(),
            ProxyBody::Upstream(g) => g.inner.size_hint(),
        }
    }
}

/// Why a stream was cut.
#[derive(Debug, thiserror::Error)]
#[error("stream cut off: {0}")]
pub struct Cut(String);

/// An upstream body that re-checks its chain whenever a new revocation
/// version is applied and when its chain expires or the state's freshness
/// runs out, and ends with an error (the connection is dropped) once the
/// chain is denied.
pub struct Guarded {
    inner: Incoming,
    guard: StreamGuard,
}

/// Watches one open stream's chain: re-checks it on every newly applied
/// version, and on the proxy's second tick once the next moment the
/// decision can change by itself has come (the chain's earliest `exp`, the
/// state's `fresh_until`). Decisions use whole seconds (`exp <= now`
/// denies), so a tick just after each second boundary cuts as soon as a
/// per-stream timer would, without arming one per request.
struct StreamGuard {
    /// The applied version, sent again on every tick ([`pace`]).
    rechecks: WatchStream<u64>,
    state: Arc<State>,
    chain: Arc<VerifiedChain>,
    action: String,
    /// The version last decided on, and the Unix second from which the
    /// decision must be made again without news (0: at the first tick).
    version: u64,
    next: u64,
}

/// Unix seconds now.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// How long after a whole second the tick comes (decisions change at
/// whole seconds; the margin keeps the tick on the far side of one).
const TICK_MARGIN: Duration = Duration::from_millis(20);

/// Sends the applied version to every open stream's guard whenever a new
/// one is applied and once a second just after the boundary, until the
/// proxy stops (or the authorizer goes away).
async fn pace(
    mut versions: tokio::sync::watch::Receiver<u64>,
    rechecks: tokio::sync::watch::Sender<u64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let now = unix_now();
        let to_next_second = Duration::from_secs(now.as_secs() + 1) - now;
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(to_next_second + TICK_MARGIN) => {}
            _ = stop.changed() => return,
        }
        rechecks.send_replace(*versions.borrow_and_update());
    }
}

impl StreamGuard {
    /// Watches `chain` from the moment `seen` was taken: take it with
    /// [`State::rechecks_from_now`] before deciding, so a version applied
    /// while deciding is re-checked.
    fn new(
        state: Arc<State>,
        seen: (tokio::sync::watch::Receiver<u64>, u64),
        chain: Arc<VerifiedChain>,
        action: String,
    ) -> Self {
        let (rechecks, version) = seen;
        Self {
            rechecks: WatchStream::from_changes(rechecks),
            state,
            chain,
            action,
            version,
            next: 0,
        }
    }

    /// Decides the chain again now; `Some(denial)` (counted as a cut) when
    /// it is denied. Otherwise notes when to decide again without news:
    /// the earliest `exp` in the chain, or the state's `fresh_until` (a
    /// checkpoint that extends freshness without a new version is seen
    /// when that second comes).
    fn check_now(&mut self) -> Option<Denial> {
        match self.state.authz.recheck(&self.chain, &self.action) {
            veto_core::Decision::Deny(d) => {
                self.count_cut(&d);
                Some(d)
            }
            veto_core::Decision::Allow { .. } => {
                let exp = self.chain.chain().expires_at();
                self.next = self.state.authz.fresh_until().map_or(exp, |f| f.min(exp));
                None
            }
        }
    }

    fn count_cut(&self, d: &Denial) {
        self.state
            .metrics
            .streams_cut
            .get_or_create(&CutReason {
                reason: d.reason.as_str().to_owned(),
            })
            .inc();
        tracing::info!(reason = %d.reason, message = %d.message, "cutting off an open stream");
    }

    /// `Some(denial)` once the chain is denied: revoked, expired, or the
    /// state stale under fail-closed (fail-open allows, so never cuts).
    ///
    /// Woken by [`pace`]; what decides whether to look again is the
    /// authorizer's own applied version (never one `pace` has not passed on
    /// yet) and the clock. Should `pace` ever end, every poll decides again.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<Denial> {
        let mut woken = false;
        loop {
            match Pin::new(&mut self.rechecks).poll_next(cx) {
                Poll::Ready(Some(_)) => woken = true,
                Poll::Ready(None) => {
                    self.next = 0;
                    woken = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let v = self.state.authz.applied_version();
        if v == self.version && !(woken && unix_now().as_secs() >= self.next) {
            return None;
        }
        self.version = v;
        self.check_now()
    }

    /// [`Self::poll_cut`] without waiting: `Some(denial)` when a version
    /// applied since the decision (or a second that came) denies the chain.
    fn cut_now(&mut self) -> Option<Denial> {
        self.poll_cut(&mut Context::from_waker(std::task::Waker::noop()))
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.guard.poll_cut(cx) {
            return Poll::Ready(Some(Err(Box::new(Cut(d.to_string())))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "http2-settings",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client headers never forwarded, besides hop-by-hop ones: each restates
/// the request's method, target or origin, and an upstream (or framework,
/// such as Symfony or IIS rewrite rules) that honours it would run another
/// method or serve another path than the one authorized, or trust an
/// origin the client made up.
const OVERRIDES: [&str; 19] = [
    // method
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-forwarded-method",
    // target
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
    // origin (`X-Forwarded-For` is kept and appended to)
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// The credential headers, consumed here and never forwarded.
const CREDENTIALS: [&str; 2] = ["authorization", wire::header::DPOP];

/// Which headers [`strip`] removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strip {
    /// A response: hop-by-hop headers.
    Response,
    /// A request: hop-by-hop headers (`Upgrade` kept when `upgrade`), the
    /// credentials, `Host`, and every client header that could alias or
    /// override what the proxy decided: names with `_` (CGI/WSGI read
    /// `Veto_Agent` as `HTTP_VETO_AGENT`, the same as `Veto-Agent`; nginx
    /// drops them too), every `veto-*` header (the proxy's own namespace),
    /// and the [`OVERRIDES`].
    Request { upgrade: bool },
}

/// Removes, in one pass over the names present, every header `what`
/// names, and every header the `Connection` header lists (RFC 9110
/// 7.6.1); all repeats of each go. An upgrade forwards only
/// `Connection: upgrade`: the client's may list other headers, even the
/// proxy's own.
fn strip(headers: &mut HeaderMap, what: Strip) {
    let upgrade = what == Strip::Request { upgrade: true };
    // Names listed in `Connection`; almost always none.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            if upgrade && *name == header::UPGRADE {
                return false;
            }
            HOP_BY_HOP.contains(&n)
                || listed.contains(name)
                || match what {
                    Strip::Response => false,
                    Strip::Request { .. } => {
                        *name == header::HOST
                            || CREDENTIALS.contains(&n)
                            || n.contains('_')
                            || n.starts_with("veto-")
                            || OVERRIDES.contains(&n)
                    }
                }
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The header names the proxy sets, made once.
mod names {
    use http::HeaderName;
    use veto_core::wire::header;

    pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub(crate) static ROOT_AGENT: HeaderName = HeaderName::from_static(header::ROOT_AGENT);
    pub(crate) static DELEGATION: HeaderName = HeaderName::from_static(header::DELEGATION);
    pub(crate) static AGENT: HeaderName = HeaderName::from_static(header::AGENT);
    pub(crate) static WARRANT: HeaderName = HeaderName::from_static(header::WARRANT);
    pub(crate) static HOLDER: HeaderName = HeaderName::from_static(header::HOLDER);
    pub(crate) static STALE: HeaderName = HeaderName::from_static(header::STALE);
}

/// Who vouched for what (DESIGN 3.1), as the header values the upstream
/// gets, made for one verified chain and the holder key its request
/// proved. Always sent, percent-encoded: a `sub` holding spaces, control
/// characters or non-ASCII arrives escaped, never dropped and never
/// trimmed or normalized into another name.
struct Identity {
    /// The chain these values were made from (compared by pointer: the
    /// authorizer hands out one `Arc` per verified chain).
    chain: Arc<VerifiedChain>,
    /// The holder thumbprint they were made with.
    holder: Option<String>,
    values: Vec<(&'static HeaderName, HeaderValue)>,
}

impl Identity {
    fn new(chain: &Arc<VerifiedChain>, holder: Option<&str>) -> Self {
        let c = chain.chain();
        let mut delegation = String::new();
        for (i, link) in c.links().iter().enumerate() {
            if i > 0 {
                delegation.push(',');
            }
            escape_identity(&mut delegation, &link.claims().sub);
        }
        let mut values = vec![
            (&names::ROOT_AGENT, identity_value(&c.root().claims().sub)),
            (&names::DELEGATION, header_value(&delegation)),
            (&names::AGENT, identity_value(&c.leaf().claims().sub)),
            (&names::WARRANT, identity_value(&c.leaf().claims().jti)),
        ];
        if let Some(kid) = holder {
            values.push((&names::HOLDER, identity_value(kid)));
        }
        Self {
            chain: chain.clone(),
            holder: holder.map(str::to_owned),
            values,
        }
    }

    fn is_for(&self, chain: &Arc<VerifiedChain>, holder: Option<&str>) -> bool {
        Arc::ptr_eq(&self.chain, chain) && self.holder.as_deref() == holder
    }

    /// Sets every value, replacing any of the same name.
    fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.values {
            headers.insert((*name).clone(), value.clone());
        }
    }
}

/// One client connection: its peer's address as an `X-Forwarded-For` hop,
/// and the identity headers of the last chain it presented (an agent
/// keeps presenting one chain on its connection, so they are made once).
struct Conn {
    peer: HeaderValue,
    last: std::sync::Mutex<Option<Arc<Identity>>>,
}

impl Conn {
    fn new(peer: SocketAddr) -> Self {
        Self {
            peer: header_value(&peer.ip().to_string()),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The identity headers for `chain` proved by `holder`: the last ones
    /// when they were made for the same, else new ones.
    fn identity(&self, chain: &Arc<VerifiedChain>, holder: Option<&str>) -> Arc<Identity> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*last {
            Some(id) if id.is_for(chain, holder) => id.clone(),
            _ => {
                let id = Arc::new(Identity::new(chain, holder));
                *last = Some(id.clone());
                id
            }
        }
    }
}

/// The upstream's base URI, split once so each request's URI is the base
/// path (without a trailing `/`) followed by exactly the canonical target
/// that was authorized, query unchanged.
struct UpstreamBase {
    scheme: Option<http::uri::Scheme>,
    authority: Option<http::uri::Authority>,
    path: String,
}

impl UpstreamBase {
    fn new(upstream: &Uri) -> Self {
        Self {
            scheme: upstream.scheme().cloned(),
            authority: upstream.authority().cloned(),
            path: upstream.path().trim_end_matches('/').to_owned(),
        }
    }

    /// The URI for `target`, or `None` when it does not form one.
    fn uri(&self, target: &veto_core::Target) -> Option<Uri> {
        use std::fmt::Write as _;
        let mut pq = String::with_capacity(self.path.len() + 64);
        pq.push_str(&self.path);
        write!(pq, "{target}").ok()?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = self.scheme.clone();
        parts.authority = self.authority.clone();
        parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).ok()?);
        Uri::from_parts(parts).ok()
    }
}

/// `text` as a header value, every byte outside RFC 3986 `pchar`
/// (unreserved, sub-delims, `:` and `@`) percent-encoded, `%` included, so
/// the value is reversible and holds only visible ASCII.
fn identity_value(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    escape_identity(&mut out, text);
    header_value(&out)
}

/// Whether `b` passes into an identity header as itself: RFC 3986
/// `pchar` without `,`, which separates the hops of `Veto-Delegation` (a
/// `sub` of `a,b` must not read as two delegators).
fn identity_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=:@".contains(&b)
}

/// Appends `text` to `out`, every byte outside [`identity_byte`]
/// percent-encoded (`%XX`, upper case).
fn escape_identity(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        if identity_byte(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
}

fn header_value(escaped: &str) -> HeaderValue {
    #[expect(
        clippy::expect_used,
        reason = "escaped text holds only visible ASCII, which every header value may"
    )]
    HeaderValue::from_str(escaped).expect("visible ASCII is a valid header value")
}

fn local(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A `{"error": code, "message": text}` answer.
fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::from(ErrorBody::new(code, message).to_json()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer counted in `veto_proxy_requests{outcome}`.
fn refuse(
    state: &State,
    status: StatusCode,
    code: ErrorCode,
    message: String,
) -> Response<ProxyBody> {
    state.metrics.outcome(code.as_str());
    error(status, code, message)
}

/// Whether `Connection` lists `token` (case-insensitively).
fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The protocols an `Upgrade` header asks for, lowercase, without version.
fn upgrade_protocols(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all(header::UPGRADE) {
        for p in String::from_utf8_lossy(v.as_bytes()).split(',') {
            let p = p.trim();
            let name = p.split_once('/').map_or(p, |(name, _)| name);
            out.push(name.trim().to_ascii_lowercase());
        }
    }
    out
}

/// Why an upgrade request is refused, if it is.
fn refused_upgrade(config: &ProxyConfig, asked: &[String]) -> Option<String> {
    for p in asked {
        if p == "h2c" {
            return Some("`Upgrade: h2c` is never passed: it would carry requests the proxy cannot authorize".to_owned());
        }
        if p.is_empty() {
            return Some("an empty protocol in `Upgrade`".to_owned());
        }
        if !config.upgrade_protocols.iter().any(|a| a == p) {
            return Some(format!(
                "upgrade protocol `{}` is not allowed here (allowed: {})",
                p.chars().take(64).collect::<String>(),
                if config.upgrade_protocols.is_empty() {
                    "none".to_owned()
                } else {
                    config.upgrade_protocols.join(", ")
                }
            ));
        }
    }
    None
}

async fn handle(
    state: Arc<State>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let target = match veto_authorizer::request_target(req.method(), req.uri()) {
        Ok(t) => t,
        Err(e) => {
            state.metrics.outcome(veto_core::TargetError::CODE);
            return Ok(veto_authorizer::bad_target_response(&e));
        }
    };
    let asked_upgrade = upgrade_protocols(req.headers());
    if let Some(message) = refused_upgrade(&state.config, &asked_upgrade) {
        return Ok(refuse(
            &state,
            StatusCode::BAD_REQUEST,
            ErrorCode::UpgradeRefused,
            message,
        ));
    }
    let action = state.config.routes.action(req.method(), target.path());
    let deny = |denial: &veto_core::Denial, outcome: Option<&veto_authorizer::Outcome>| {
        state.metrics.outcome(denial.reason.as_str());
        let challenge = veto_authorizer::challenge(&state.authz, denial, outcome);
        Ok(veto_authorizer::deny_response(denial, &challenge))
    };
    let cred = match veto_authorizer::credential(req.headers()) {
        Ok(c) => c,
        Err(d) => return deny(&d, None),
    };
    // The proof names the URI the client addressed: this listener's
    // scheme, the request's authority, the canonical path.
    // (Not computed when proofs are off: the authorizer ignores them.)
    let htu = match cred.proof {
        Some(_) if state.authz.pop().policy != veto_authorizer::PopPolicy::Off => {
            let scheme = if state.config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            match veto_authorizer::request_htu(
                scheme,
                req.uri(),
                req.headers(),
                target.path(),
                state.config.trust_forwarded,
            ) {
                Ok(h) => h,
                Err(d) => return deny(&d, None),
            }
        }
        _ => String::new(),
    };
    let seen = state.rechecks_from_now();
    let outcome = state.authz.check_request(&veto_authorizer::Presented {
        credential: cred,
        method: req.method().as_str(),
        htu: &htu,
        action: &action,
    });
    let (stale, chain) = match (&outcome.decision, &outcome.chain) {
        (veto_core::Decision::Allow { stale }, Some(chain)) => (*stale, chain.clone()),
        (veto_core::Decision::Deny(d), _) => return deny(d, Some(&outcome)),
        (veto_core::Decision::Allow { .. }, None) => {
            return Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "allowed without a verified chain",
            ))
        }
    };
    if stale {
        state.metrics.allow_stale.inc();
    } else {
        state.metrics.allow.inc();
    }
    let identity = conn.identity(&chain, outcome.holder.as_deref());
    // Watch the chain from the decision on: a revocation applied while the
    // upstream has the request (its body still arriving, its head not sent
    // yet) ends the request, and one applied after the head ends the stream.
    let mut guard = StreamGuard::new(state.clone(), seen, chain, action);

    // An upgrade is asked only as RFC 9110 7.8 says: HTTP/1.1 with
    // `upgrade` listed in `Connection`. Otherwise `Upgrade` is an ordinary
    // hop-by-hop header, dropped, and the request is forwarded as it is.
    let upgrade = !asked_upgrade.is_empty()
        && req.version() == http::Version::HTTP_11
        && connection_lists(req.headers(), "upgrade");
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let Some(uri) = state.upstream.uri(&target) else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "cannot form the upstream URI",
        ));
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    strip(headers, Strip::Request { upgrade });
    // The client's hops are kept when they are visible ASCII; otherwise
    // only the peer is sent.
    let xff = match headers
        .get(&names::X_FORWARDED_FOR)
        .filter(|v| v.to_str().is_ok())
    {
        Some(prev) => {
            let mut hops = prev.as_bytes().to_vec();
            hops.extend_from_slice(b", ");
            hops.extend_from_slice(conn.peer.as_bytes());
            HeaderValue::from_bytes(&hops).ok()
        }
        None => Some(conn.peer.clone()),
    };
    if let Some(v) = xff {
        headers.insert(names::X_FORWARDED_FOR.clone(), v);
    }
    // Every `veto-*` header of the client's is gone already.
    identity.insert_into(headers);
    // Only the proxy says whether the decision was stale.
    if stale {
        headers.insert(names::STALE.clone(), HeaderValue::from_static("1"));
    }

    let timeout = state.config.upstream_timeout;
    let forwarded = tokio::time::timeout(timeout, state.client.request(req));
    let cut = std::future::poll_fn(|cx| match guard.poll_cut(cx) {
        Some(d) => Poll::Ready(d),
        None => Poll::Pending,
    });
    let answer = tokio::select! {
        answer = forwarded => answer,
        denial = cut => {
            // Dropping the upstream request closes its connection: the
            // upstream gets no more of the body and its answer is never relayed.
            tracing::info!(reason = %denial.reason, "ending a request the upstream had not answered yet");
            return Ok(veto_authorizer::deny_response(
                &denial,
                &veto_authorizer::challenge(&state.authz, &denial, None),
            ));
        }
    };
    let mut resp = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            state.metrics.upstream_errors.inc();
            tracing::warn!(error = %e, "upstream request failed");
            return Ok(error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::BadGateway,
                format!("the upstream could not be reached: {e}"),
            ));
        }
        Err(_) => {
            state.metrics.upstream_errors.inc();
            tracing::warn!(?timeout, "upstream sent no response head in time");
            return Ok(error(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::UpstreamTimeout,
                format!(
                    "the upstream sent no response head within {} ms (--upstream-timeout)",
                    timeout.as_millis()
                ),
            ));
        }
    };
    // A version applied (or a second come) just as the head arrived:
    // decide again before relaying anything.
    if let Some(denial) = guard.cut_now() {
        return Ok(veto_authorizer::deny_response(
            &denial,
            &veto_authorizer::challenge(&state.authz, &denial, None),
        ));
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The upstream may only switch to a protocol the client asked for
        // (and the operator allows).
        let switched = upgrade_protocols(resp.headers());
        let agreed = !switched.is_empty() && switched.iter().all(|p| asked_upgrade.contains(p));
        let Some(client_upgrade) = client_upgrade.filter(|_| agreed) else {
            state.metrics.upstream_errors.inc();
            return Ok(error(
                StatusCode::BAD_GATEWAY,
                ErrorCode::BadGateway,
                "the upstream switched to a protocol the client did not ask for",
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, guard));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::from(String::new())));
    }
    strip(resp.headers_mut(), Strip::Response);
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        ProxyBody::Upstream(Guarded { inner: body, guard }),
    ))
}

/// Copies bytes both ways after an upgrade, until either side closes or
/// the chain is denied (revoked, expired, or stale under fail-closed).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut guard: StreamGuard,
) {
    let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
        return;
    };
    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
    let revoked = std::future::poll_fn(|cx| match guard.poll_cut(cx) {
        Some(d) => Poll::Ready(d),
        None => Poll::Pending,
    });
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
        _ = revoked => {}
    }
}

/// Serves the proxy on `listener` and metrics/health on `admin` until
/// `shutdown` completes.
pub async fn serve(
    authz: Authorizer,
    config: ProxyConfig,
    listener: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut registry = Registry::with_prefix("veto_proxy");
    let requests = Family::<Outcome, Counter>::default();
    let counter = |outcome: &str| {
        requests
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .clone()
    };
    let metrics = Metrics {
        allow: counter("allow"),
        allow_stale: counter("allow_stale"),
        requests: requests.clone(),
        upstream_errors: Counter::default(),
        streams_cut: Family::default(),
        registry: Registry::default(),
    };
    registry.register(
        "requests",
        "Requests, by outcome (allow, allow_stale, or the denial reason)",
        metrics.requests.clone(),
    );
    registry.register(
        "upstream_errors",
        "Requests the upstream could not answer",
        metrics.upstream_errors.clone(),
    );
    registry.register(
        "streams_cut",
        "Open streams and upgraded connections cut off because their chain was denied, by reason (revoked, expired, stale, ...)",
        metrics.streams_cut.clone(),
    );
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // The TLS layer below takes `https://` itself.
    connector.enforce_http(false);
    let upstream_tls = match &config.upstream_tls {
        Some(t) => t.clone(),
        None => ClientTls::with_ca_file(None).map_err(std::io::Error::other)?,
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*upstream_tls.config()).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    let tls = config.tls.clone();
    let admin_tls = config.admin_tls.clone();
    let versions = authz.versions();
    let (rechecks_tx, rechecks) = tokio::sync::watch::channel(*versions.borrow());
    let state = Arc::new(State {
        rechecks,
        client: Client::builder(TokioExecutor::new()).build(connector),
        upstream: UpstreamBase::new(&config.upstream),
        authz,
        config,
        metrics: Metrics {
            registry,
            ..metrics
        },
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(pace(versions, rechecks_tx, stop_rx.clone()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    for t in [&tls, &admin_tls].into_iter().flatten() {
        tokio::spawn(
            t.clone()
                .watch(veto_tls::DEFAULT_RELOAD_INTERVAL, stop_rx.clone()),
        );
    }
    tokio::spawn(serve_admin(
        state.clone(),
        admin,
        admin_tls,
        stop_rx.clone(),
    ));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_rx.changed() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let timeout = state.config.header_read_timeout;
            let conn = Arc::new(Conn::new(peer));
            let svc = service_fn(move |req| handle(state.clone(), conn.clone(), req));
            let result = match tls {
                None => {
                    http1(timeout)
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await
                }
                Some(tls) => {
                    let Some(stream) = handshake(&tls, stream, timeout).await else {
                        return;
                    };
                    http1(timeout)
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// The TLS handshake of one connection, bounded by the header timeout (a
/// client that stalls in it holds nothing longer than a slow request
/// head would); failures are logged at debug and close the connection.
async fn handshake(
    tls: &ServerTls,
    stream: tokio::net::TcpStream,
    timeout: Duration,
) -> Option<veto_tls::tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake not finished within the header timeout");
            None
        }
    }
}

/// The HTTP/1 server settings for both listeners.
fn http1(header_read_timeout: std::time::Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    b
}

async fn serve_admin(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let timeout = state.config.header_read_timeout;
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(admin(&state, req.uri().path())) }
            });
            match tls {
                None => {
                    let _ = http1(timeout)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }
                Some(tls) => {
                    if let Some(stream) = handshake(&tls, stream, timeout).await {
                        let _ = http1(timeout)
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                }
            }
        });
    }
}

fn admin(state: &State, target: &str) -> Response<ProxyBody> {
    match target {
        path::METRICS => {
            let mut text = state.authz.metrics_text();
            let _ = prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry);
            let mut r = Response::new(ProxyBody::from(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        path::HEALTHZ => local(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "sync": state.authz.status()}),
        ),
        path::READYZ => {
            let s = state.authz.status();
            let code = if s.fresh {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            local(code, serde_json::json!({"ready": s.fresh, "sync": s}))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "admin endpoints: /metrics, /healthz, /readyz",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_headers_that_alias_or_override_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("veto_agent", "admin"),
            ("veto-agent", "a"),
            ("veto-agent", "b"),
            ("veto-future", "x"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-original-method", "DELETE"),
            ("forwarded", "for=10.0.0.9;host=admin"),
            ("x-forwarded-host", "admin.internal"),
            ("x-real-ip", "10.0.0.9"),
            ("x-forwarded-for", "10.0.0.2"),
            ("accept", "*/*"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip(&mut h, Strip::Request { upgrade: false });
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forwarded-for"]);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        left
    }

    #[test]
    fn credentials_host_hop_by_hop_and_listed_headers_are_never_forwarded() {
        let sent = [
            ("authorization", "DPoP a"),
            ("authorization", "Bearer b"),
            ("dpop", "proof"),
            ("host", "proxy.example"),
            ("connection", "keep-alive, x-secret, Veto-Agent"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ];
        let mut h = headers(&sent);
        strip(&mut h, Strip::Request { upgrade: false });
        assert_eq!(names(&h), ["accept"]);

        // An upgrade keeps `Upgrade` and forwards only `Connection: upgrade`.
        let mut h = headers(&sent);
        strip(&mut h, Strip::Request { upgrade: true });
        assert_eq!(names(&h), ["accept", "connection", "upgrade"]);
        assert_eq!(h.get_all(header::CONNECTION).iter().count(), 1);
        assert_eq!(h[header::CONNECTION], "upgrade");

        // A response loses hop-by-hop and listed headers only.
        let mut h = headers(&[
            ("connection", "x-internal"),
            ("x-internal", "1"),
            ("transfer-encoding", "chunked"),
            ("veto-agent", "kept: the upstream's own"),
            ("content-type", "text/plain"),
        ]);
        strip(&mut h, Strip::Response);
        assert_eq!(names(&h), ["content-type", "veto-agent"]);
    }

    #[test]
    fn identity_values_are_escaped_never_dropped() {
        for (sub, sent) in [
            ("worker", "worker"),
            ("billing-bot@team:7", "billing-bot@team:7"),
            (" admin", "%20admin"),
            ("ad\r\nmin", "ad%0D%0Amin"),
            ("a\0b", "a%00b"),
            ("r\u{202E}lta", "r%E2%80%AElta"),
            ("100%", "100%25"),
            ("x,billing-service", "x%2Cbilling-service"),
        ] {
            assert_eq!(identity_value(sub).to_str().unwrap(), sent, "{sub:?}");
        }
    }

    #[test]
    fn only_listed_upgrades_pass_and_h2c_never() {
        let mut config = ProxyConfig::new(Uri::from_static("http://127.0.0.1:1"));
        let asked = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_static(v));
            upgrade_protocols(&h)
        };
        assert_eq!(asked("WebSocket, foo/1.0 "), ["websocket", "foo"]);
        assert!(refused_upgrade(&config, &asked("websocket")).is_none());
        assert!(refused_upgrade(&config, &asked("foo")).is_some_and(|m| m.contains("`foo`")));
        config.upgrade_protocols.push("h2c".into());
        for v in ["h2c", "H2C/2", "websocket, h2c"] {
            assert!(
                refused_upgrade(&config, &asked(v)).is_some_and(|m| m.contains("h2c")),
                "{v}"
            );
        }
        assert!(refused_upgrade(&config, &[]).is_none());
    }
}
