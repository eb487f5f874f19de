//! veto's reverse proxy: runs the authorizer on every request and
//! forwards allowed ones to one upstream, streaming both ways.
//!
//! - The chain comes from `Authorization: Bearer`; the action is
//!   `http:METHOD:PATH` unless a [`Routes`] file says otherwise.
//! - Denials answer 401/403/503 with `{"error": reason, "message": text}`.
//! - Allowed requests reach the upstream without hop-by-hop headers and
//!   without the client's `Authorization`, with `X-Forwarded-For`,
//!   `Veto-Agent`, `Veto-Warrant` and, when allowed only by fail-open,
//!   `Veto-Stale: 1` (any client-sent copies removed).
//! - A response that is still streaming (chunked body, SSE, a WebSocket
//!   after upgrade) is cut off as soon as a revocation of its chain is
//!   applied: every new version re-checks the chains of open streams.

mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::WatchStream;
use veto_authorizer::{Authorizer, Verified};
use veto_core::{Denial, DenyReason, VerifiedChain};

pub use routes::{RouteError, Routes};

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The upstream base URL, such as `http://127.0.0.1:9000`.
    pub upstream: Uri,
    /// Action mapping.
    pub routes: Routes,
    /// How long a client may take to send a request head before its
    /// connection is closed, so slow-loris clients hold nothing.
    pub header_read_timeout: std::time::Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    upstream_errors: Counter,
    streams_cut: Counter,
}

struct State {
    authz: Authorizer,
    config: ProxyConfig,
    client: Client<HttpConnector, Incoming>,
    metrics: Metrics,
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
/// version is applied, and ends with an error (the connection is dropped)
/// once the chain is denied.
pub struct Guarded {
    inner: Incoming,
    guard: StreamGuard,
}

struct StreamGuard {
    versions: WatchStream<u64>,
    state: Arc<State>,
    chain: Arc<VerifiedChain>,
    action: String,
}

impl StreamGuard {
    /// `Some(denial)` once a newly applied version denies the chain.
    fn poll_revoked(&mut self, cx: &mut Context<'_>) -> Option<Denial> {
        while let Poll::Ready(Some(_)) = Pin::new(&mut self.versions).poll_next(cx) {
            if let veto_core::Decision::Deny(d) =
                self.state.authz.recheck(&self.chain, &self.action)
            {
                if d.reason != DenyReason::Stale {
                    self.state.metrics.streams_cut.inc();
                    tracing::info!(reason = %d.reason, message = %d.message, "cutting off an open stream");
                    return Some(d);
                }
            }
        }
        None
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.guard.poll_revoked(cx) {
            return Poll::Ready(Some(Err(Box::new(Cut(d.to_string())))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == "upgrade" || name == "connection") {
            continue;
        }
        headers.remove(name);
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

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let action = state.config.routes.action(req.method(), req.uri().path());
    let token = veto_authorizer::bearer(req.headers()).map(str::to_owned);
    let Some(token) = token else {
        state
            .metrics
            .requests
            .get_or_create(&Outcome {
                outcome: "malformed".into(),
            })
            .inc();
        return Ok(veto_authorizer::deny_response(&Denial::new(
            DenyReason::Malformed,
            "missing `Authorization: Bearer <chain>`",
        )));
    };
    let outcome = state.authz.check(&token, &action);
    let (verified, chain) = match (&outcome.decision, outcome.chain) {
        (veto_core::Decision::Allow { stale }, Some(chain)) => {
            let leaf = chain.chain().leaf().claims();
            let v = Verified {
                agent: leaf.sub.clone(),
                warrant: leaf.jti.clone(),
                stale: *stale,
            };
            (v, chain)
        }
        (veto_core::Decision::Deny(d), _) => {
            state
                .metrics
                .requests
                .get_or_create(&Outcome {
                    outcome: d.reason.as_str().into(),
                })
                .inc();
            return Ok(veto_authorizer::deny_response(d));
        }
        (veto_core::Decision::Allow { .. }, None) => {
            return Ok(local(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "internal", "message": "allowed without a verified chain"}),
            ));
        }
    };
    state
        .metrics
        .requests
        .get_or_create(&Outcome {
            outcome: if verified.stale {
                "allow_stale"
            } else {
                "allow"
            }
            .into(),
        })
        .inc();

    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut parts = state.config.upstream.clone().into_parts();
    let base = parts
        .path_and_query
        .as_ref()
        .map(|p| p.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    parts.path_and_query = format!("{base}{path_and_query}").parse().ok();
    let Ok(uri) = Uri::from_parts(parts) else {
        return Ok(local(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "bad_request", "message": "cannot form the upstream URI"}),
        ));
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    for (name, value) in [
        ("x-forwarded-for", xff),
        ("veto-agent", verified.agent.clone()),
        ("veto-warrant", verified.warrant.clone()),
    ] {
        headers.remove(name);
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    // Only the proxy says whether the decision was stale.
    headers.remove("veto-stale");
    if verified.stale {
        headers.insert("veto-stale", HeaderValue::from_static("1"));
    }

    let mut resp = match state.client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            state.metrics.upstream_errors.inc();
            tracing::warn!(error = %e, "upstream request failed");
            return Ok(local(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({"error": "bad_gateway", "message": format!("the upstream could not be reached: {e}")}),
            ));
        }
    };
    let guard = StreamGuard {
        versions: WatchStream::from_changes(state.authz.versions()),
        state: state.clone(),
        chain,
        action,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, guard));
        }
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::from(String::new())));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        ProxyBody::Upstream(Guarded { inner: body, guard }),
    ))
}

/// Copies bytes both ways after an upgrade, until either side closes or
/// the chain is revoked.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut guard: StreamGuard,
) {
    let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
        return;
    };
    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
    let revoked = std::future::poll_fn(|cx| match guard.poll_revoked(cx) {
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
    let metrics = Metrics {
        requests: Family::default(),
        upstream_errors: Counter::default(),
        streams_cut: Counter::default(),
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
        "Open streams cut off because their chain was revoked",
        metrics.streams_cut.clone(),
    );
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let state = Arc::new(State {
        client: Client::builder(TokioExecutor::new()).build(connector),
        authz,
        config,
        metrics: Metrics {
            registry,
            ..metrics
        },
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tokio::spawn(serve_admin(state.clone(), admin, stop_rx.clone()));
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
        tokio::spawn(async move {
            let timeout = state.config.header_read_timeout;
            let svc = service_fn(move |req| handle(state.clone(), peer, req));
            let conn = http1(timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
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
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let timeout = state.config.header_read_timeout;
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(admin(&state, req.uri().path())) }
            });
            let _ = http1(timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin(state: &State, path: &str) -> Response<ProxyBody> {
    match path {
        "/metrics" => {
            let mut text = state.authz.metrics_text();
            let _ = prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry);
            let mut r = Response::new(ProxyBody::from(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => local(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "sync": state.authz.status()}),
        ),
        "/readyz" => {
            let s = state.authz.status();
            let code = if s.fresh {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            local(code, serde_json::json!({"ready": s.fresh, "sync": s}))
        }
        _ => local(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "message": "admin endpoints: /metrics, /healthz, /readyz"}),
        ),
    }
}
