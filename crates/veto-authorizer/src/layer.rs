//! Enforcement for any tower service (axum, hyper): one line,
//! `.layer(AuthorizeLayer::new(authorizer))`.
//!
//! The layer and the proxy share the functions here: the request target is
//! canonicalized once ([`request_target`]; a target that cannot be made
//! unambiguous is a 400 `bad_target`), the action is `http:METHOD:PATH` on
//! the canonical path (the query is not part of it), the inner service
//! sees the canonical target, and a request must carry exactly one
//! credential ([`bearer`]).

use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use veto_core::wire::{ErrorBody, ErrorCode};
use veto_core::{Decision, Denial, DenyReason, Target, TargetError};

use crate::Authorizer;

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
        | DenyReason::ChainInvalid => StatusCode::UNAUTHORIZED,
        DenyReason::Revoked | DenyReason::ActionDenied => StatusCode::FORBIDDEN,
        DenyReason::Stale => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The one bearer chain of a request, or why there is not exactly one.
///
/// A request with more than one credential is refused rather than decided
/// on one of them: two `Authorization` headers (even identical, even with
/// the second empty), or one header holding a comma-joined second
/// credential (a chain never contains `,`). No other place (cookie, query,
/// `Proxy-Authorization`) is read for a credential.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Denial> {
    let malformed = |m: &str| Denial::new(DenyReason::Malformed, m);
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Err(malformed("missing `Authorization: Bearer <chain>`"));
    };
    let more = all.count();
    if more > 0 {
        return Err(malformed(&format!(
            "more than one credential: {} `Authorization` headers; send exactly one",
            more + 1
        )));
    }
    let value = value
        .to_str()
        .map_err(|_| malformed("the `Authorization` header is not visible ASCII"))?;
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Err(malformed("`Authorization` must be `Bearer <chain>`"));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed("`Authorization` must be `Bearer <chain>`"));
    }
    let token = token.trim();
    if token.contains(',') {
        return Err(malformed(
            "more than one credential in one `Authorization` header (`,`); send exactly one",
        ));
    }
    if token.is_empty() {
        return Err(malformed("missing `Authorization: Bearer <chain>`"));
    }
    Ok(token)
}

/// What an allowed request carries in its extensions.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The acting agent (the leaf's `sub`).
    pub agent: String,
    /// The leaf warrant's `jti`.
    pub warrant: String,
    /// Allowed only because the policy is fail-open while stale.
    pub stale: bool,
}

/// Decides a request's headers: the denial, or who is acting.
pub(crate) fn decide(
    authz: &Authorizer,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(Verified, crate::Outcome), Denial> {
    let token = bearer(headers)?;
    let outcome = authz.check(token, &action_for(method, path));
    match (&outcome.decision, &outcome.chain) {
        (Decision::Allow { stale }, Some(chain)) => {
            let leaf = chain.chain().leaf().claims();
            Ok((
                Verified {
                    agent: leaf.sub.clone(),
                    warrant: leaf.jti.clone(),
                    stale: *stale,
                },
                outcome.clone(),
            ))
        }
        (Decision::Deny(d), _) => Err(d.clone()),
        (Decision::Allow { .. }, None) => {
            Err(Denial::new(DenyReason::BadSignature, "chain not verified"))
        }
    }
}

/// A `{"error": reason, "message": text}` response for a denial.
pub fn deny_response<B: From<String>>(denial: &Denial) -> Response<B> {
    let body = ErrorBody::denial(denial).to_json();
    let mut resp = Response::new(B::from(body));
    *resp.status_mut() = http_status(denial.reason);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    resp
}

/// A tower layer that authorizes every request before the inner service.
#[derive(Clone)]
pub struct AuthorizeLayer {
    authz: Authorizer,
}

impl AuthorizeLayer {
    /// Enforces with `authz`.
    pub fn new(authz: Authorizer) -> Self {
        Self { authz }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = AuthorizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeService {
            inner,
            authz: self.authz.clone(),
        }
    }
}

/// The service [`AuthorizeLayer`] makes.
#[derive(Clone)]
pub struct AuthorizeService<S> {
    inner: S,
    authz: Authorizer,
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
        match decide(&self.authz, req.method(), target.path(), req.headers()) {
            Ok((verified, _)) => {
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
            Err(denial) => Either::Left(ready(Ok(deny_response(&denial)))),
        }
    }
}
