//! Enforcement for any tower service (axum, hyper): one line,
//! `.layer(AuthorizeLayer::new(authorizer))`.
//!
//! The layer and the proxy share the functions here: the request target is
//! canonicalized once ([`request_target`]; a target that cannot be made
//! unambiguous is a 400 `bad_target`), the action is `http:METHOD:PATH` on
//! the canonical path (the query is not part of it), the inner service
//! sees the canonical target, and a request must carry exactly one
//! credential ([`credential`]) and, unless the policy is `off`, prove it
//! holds the leaf's key with a `DPoP` proof for this method and URI
//! ([`request_htu`]).

use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use veto_core::wire::header::{DPOP, DPOP_NONCE};
use veto_core::wire::{ErrorBody, ErrorCode};
use veto_core::{Decision, Denial, DenyReason, Target, TargetError};

use crate::pop::{PopErrorCode, PopPolicy, Presented};
use crate::Authorizer;
use veto_core::dpop::Credential;

/// The action a request asks for: `http:METHOD:PATH`, where `path` is the
/// canonical path of [`request_target`] (never the raw one).
pub fn action_for(method: &Method, path: &str) -> String {
    format!("http:{method}:{path}")
}

/// The canonical target of a request: its method must be uppercase
/// ([`veto_core::check_method`]); of its URI, origin-form (`/path?query`)
/// and absolute-form (`http://host/path?query`, whose authority is
/// ignored) are accepted; asterisk-form (`*`) and authority-form
/// (`host:port`) name no path and are refused.
pub fn request_target(method: &Method, uri: &Uri) -> Result<Target, TargetError> {
    veto_core::check_method(method.as_str())?;
    match uri.path_and_query().map(PathAndQuery::as_str) {
        Some(pq) if pq.starts_with('/') => Target::parse(pq),
        _ => Err(TargetError::NotOriginForm(
            uri.to_string().chars().take(64).collect(),
        )),
    }
}

/// A 400 `{"error": "bad_target", "message": text}` response.
pub fn bad_target_response<B: From<String>>(error: &TargetError) -> Response<B> {
    let body = ErrorBody::new(ErrorCode::BadTarget, error.to_string()).to_json();
    let mut resp = Response::new(B::from(body));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The HTTP status for a denial: 401 when the credential itself is not
/// acceptable, 403 when it is revoked or does not permit the action, 503
/// when the revocation state is stale under fail-closed.
pub fn http_status(reason: DenyReason) -> StatusCode {
    match reason {
        DenyReason::Malformed
        | DenyReason::BadSignature
        | DenyReason::UntrustedIssuer
        | DenyReason::Expired
        | DenyReason::NotYetValid
        | DenyReason::PopRequired
        | DenyReason::PopInvalid
        | DenyReason::ChainInvalid => StatusCode::UNAUTHORIZED,
        DenyReason::Revoked | DenyReason::ActionDenied => StatusCode::FORBIDDEN,
        DenyReason::Stale => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The one credential of a request, or why there is not exactly one:
/// [`veto_core::dpop::credential`] over its `Authorization` and `DPoP`
/// headers.
pub fn credential(headers: &HeaderMap) -> Result<Credential<'_>, Denial> {
    let values = |name| -> Vec<&[u8]> {
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    };
    veto_core::dpop::credential(&values(header::AUTHORIZATION.as_str()), &values(DPOP))
}

/// The request's canonical URI for the proof's `htu` (RFC 9449 4.3):
/// `scheme` is how the client reached this server (`https` behind a TLS
/// listener); the authority is the request's own (absolute-form or
/// HTTP/2 `:authority`) or else its one `Host` header; `path` is the
/// canonical path of [`request_target`].
///
/// With `trust_forwarded`, exactly one `X-Forwarded-Proto` (`http` or
/// `https`) and one `X-Forwarded-Host` replace them when present: turn it
/// on only when every request comes through a front end that sets both
/// and strips the client's (off by default; otherwise a client could name
/// any URI).
pub fn request_htu(
    scheme: &str,
    uri: &Uri,
    headers: &HeaderMap,
    path: &str,
    trust_forwarded: bool,
) -> Result<String, Denial> {
    let bad = |m: String| Denial::new(DenyReason::Malformed, m);
    let one = |name: &str| -> Result<Option<&str>, Denial> {
        let mut all = headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(bad(format!("more than one `{name}` header"))),
            (Some(v), None) => v
                .to_str()
                .map(|v| Some(v.trim()))
                .map_err(|_| bad(format!("the `{name}` header is not visible ASCII"))),
        }
    };
    let mut scheme = scheme.to_owned();
    let mut authority = match uri.authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => one("host")?.map(str::to_owned),
    };
    if trust_forwarded {
        if let Some(p) = one("x-forwarded-proto")? {
            if !p.eq_ignore_ascii_case("http") && !p.eq_ignore_ascii_case("https") {
                return Err(bad(format!(
                    "`X-Forwarded-Proto: {p}` is not http or https"
                )));
            }
            scheme = p.to_ascii_lowercase();
        }
        if let Some(h) = one("x-forwarded-host")? {
            authority = Some(h.to_owned());
        }
    }
    let Some(authority) = authority else {
        return Err(bad(
            "no `Host` header: the proof's `htu` cannot be checked without it".into(),
        ));
    };
    let default_port = if scheme == "https" { "443" } else { "80" };
    let authority = veto_core::dpop::canonical_authority(&authority, default_port)
        .map_err(|e| bad(format!("`Host`: {e}")))?;
    Ok(format!("{scheme}://{authority}{path}"))
}

/// What an allowed request carries in its extensions: who vouched for
/// what (DESIGN 3.1).
#[derive(Clone, Debug)]
pub struct Verified {
    /// The acting agent (the leaf's `sub`), asserted only by its delegator.
    pub agent: String,
    /// The root's `sub`, asserted by a trusted issuer.
    pub root_agent: String,
    /// Every link's `sub`, root first.
    pub delegation: Vec<String>,
    /// The leaf warrant's `jti`.
    pub warrant: String,
    /// The RFC 7638 thumbprint of the holder key the request's proof
    /// proved; `None` when the policy let it through without one.
    pub holder: Option<String>,
    /// Allowed only because the policy is fail-open while stale.
    pub stale: bool,
}

impl Verified {
    /// Who an allowed outcome names; `None` for a denial.
    pub fn from_outcome(outcome: &crate::outcome::Outcome) -> Option<Self> {
        let (Decision::Allow { stale }, Some(chain)) = (&outcome.decision, &outcome.chain) else {
            return None;
        };
        let links = chain.chain().links();
        let leaf = chain.chain().leaf().claims();
        Some(Self {
            agent: leaf.sub.clone(),
            root_agent: chain.chain().root().claims().sub.clone(),
            delegation: links.iter().map(|l| l.claims().sub.clone()).collect(),
            warrant: leaf.jti.clone(),
            holder: outcome.holder.clone(),
            stale: *stale,
        })
    }
}

/// Decides a request: who is acting, or the denial with what the client
/// is told to do next.
pub(crate) fn decide(
    authz: &Authorizer,
    method: &Method,
    uri: &Uri,
    path: &str,
    headers: &HeaderMap,
    scheme: &str,
) -> Result<Verified, (Denial, Challenge)> {
    let refuse = |d: Denial, outcome: Option<&crate::outcome::Outcome>| {
        let c = challenge(authz, &d, outcome);
        (d, c)
    };
    let cred = credential(headers).map_err(|d| refuse(d, None))?;
    let htu = match cred.proof {
        Some(_) => request_htu(scheme, uri, headers, path, false).map_err(|d| refuse(d, None))?,
        None => String::new(),
    };
    let action = action_for(method, path);
    let outcome = authz.check_request(&Presented {
        credential: cred,
        method: method.as_str(),
        htu: &htu,
        action: &action,
    });
    match Verified::from_outcome(&outcome) {
        Some(v) => Ok(v),
        None => match &outcome.decision {
            Decision::Deny(d) => Err(refuse(d.clone(), Some(&outcome))),
            Decision::Allow { .. } => Err(refuse(
                Denial::new(DenyReason::BadSignature, "chain not verified"),
                None,
            )),
        },
    }
}

/// What a refusal tells the client to do next (RFC 6750 3, RFC 9449 7.1
/// and 8): the `WWW-Authenticate` challenge of a 401 and the `DPoP-Nonce`
/// to use, built from the authorizer's policy and the outcome.
#[derive(Clone, Debug, Default)]
pub struct Challenge {
    dpop: bool,
    error: Option<PopErrorCode>,
    nonce: Option<String>,
}

/// The challenge for `denial` under `authz`'s policy; `outcome` (when the
/// check ran) carries the proof step's own error.
pub fn challenge(
    authz: &Authorizer,
    denial: &Denial,
    outcome: Option<&crate::outcome::Outcome>,
) -> Challenge {
    let error = outcome.and_then(|o| o.pop_error).or(match denial.reason {
        DenyReason::PopInvalid => Some(PopErrorCode::InvalidDpopProof),
        _ => None,
    });
    Challenge {
        dpop: authz.pop().policy != PopPolicy::Off,
        error,
        // Made only for a refusal: the hot path computes no nonce.
        nonce: authz.nonce_now(),
    }
}

/// A `{"error": reason, "message": text}` response for a denial, with the
/// `WWW-Authenticate` of a 401 and the `DPoP-Nonce` of `challenge`.
pub fn deny_response<B: From<String>>(denial: &Denial, challenge: &Challenge) -> Response<B> {
    let body = ErrorBody::denial(denial).to_json();
    let mut resp = Response::new(B::from(body));
    *resp.status_mut() = http_status(denial.reason);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(n) = challenge
        .nonce
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        h.insert(DPOP_NONCE, n);
    }
    if resp.status() == StatusCode::UNAUTHORIZED {
        let value = match (challenge.dpop, challenge.error) {
            (true, Some(e)) => format!(r#"DPoP algs="EdDSA", error="{}""#, e.as_str()),
            (true, None) => r#"DPoP algs="EdDSA", error="invalid_token""#.to_owned(),
            (false, _) => r#"Bearer error="invalid_token""#.to_owned(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    resp
}

/// A tower layer that authorizes every request before the inner service.
#[derive(Clone)]
pub struct AuthorizeLayer {
    authz: Authorizer,
    scheme: &'static str,
}

impl AuthorizeLayer {
    /// Enforces with `authz`, for a service its clients reach over plain
    /// `http` (the scheme DPoP proofs must name in `htu`).
    pub fn new(authz: Authorizer) -> Self {
        Self {
            authz,
            scheme: "http",
        }
    }

    /// For a service its clients reach over TLS: proofs must name `https`.
    pub fn https(mut self) -> Self {
        self.scheme = "https";
        self
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = AuthorizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeService {
            inner,
            authz: self.authz.clone(),
            scheme: self.scheme,
        }
    }
}

/// The service [`AuthorizeLayer`] makes.
#[derive(Clone)]
pub struct AuthorizeService<S> {
    inner: S,
    authz: Authorizer,
    scheme: &'static str,
}

impl<S, B, RB> tower::Service<Request<B>> for AuthorizeService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: From<String>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<RB>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let target = match request_target(req.method(), req.uri()) {
            Ok(t) => t,
            Err(e) => return Either::Left(ready(Ok(bad_target_response(&e)))),
        };
        // The scheme is how this service is reached, never what an
        // absolute-form target claims.
        let scheme = self.scheme;
        let decided = decide(
            &self.authz,
            req.method(),
            req.uri(),
            target.path(),
            req.headers(),
            scheme,
        );
        match decided {
            Ok(verified) => {
                // The inner service routes on the form that was authorized.
                let mut parts = req.uri().clone().into_parts();
                match target.to_string().parse::<PathAndQuery>() {
                    Ok(pq) => parts.path_and_query = Some(pq),
                    Err(_) => {
                        return Either::Left(ready(Ok(bad_target_response(
                            &TargetError::NotOriginForm(target.to_string()),
                        ))))
                    }
                }
                match Uri::from_parts(parts) {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(_) => {
                        return Either::Left(ready(Ok(bad_target_response(
                            &TargetError::NotOriginForm(target.to_string()),
                        ))))
                    }
                }
                req.extensions_mut().insert(verified);
                Either::Right(self.inner.call(req))
            }
            Err((denial, challenge)) => Either::Left(ready(Ok(deny_response(&denial, &challenge)))),
        }
    }
}
