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

mod guard;
mod headers;
mod routes;

use guard::{pace, tunnel, StreamGuard};
pub use guard::{Cut, Guarded};
use headers::{names, strip, Conn, Strip};

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
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
use veto_authorizer::Authorizer;
use veto_core::wire::{path, ErrorBody, ErrorCode};

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
    /// Changes on every applied version and every second ([`pace`]): what
    /// wakes open streams to look again.
    rechecks: tokio::sync::watch::Receiver<()>,
    config: ProxyConfig,
    upstream: UpstreamBase,
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    metrics: Metrics,
}

impl State {
    /// A receiver of [`State::rechecks`] that has seen what was sent last,
    /// and the authorizer's applied version now.
    fn rechecks_from_now(&self) -> (tokio::sync::watch::Receiver<()>, u64) {
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
    let stale = match &outcome.decision {
        veto_core::Decision::Allow { stale } => *stale,
        veto_core::Decision::Deny(d) => return deny(d, Some(&outcome)),
    };
    let (Some(chain), Some(identity)) = (outcome.chain.clone(), conn.identity(&outcome)) else {
        return Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "allowed without a verified chain",
        ));
    };
    if stale {
        state.metrics.allow_stale.inc();
    } else {
        state.metrics.allow.inc();
    }
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
    conn.forward_for(headers);
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
    let (rechecks_tx, rechecks) = tokio::sync::watch::channel(());
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
