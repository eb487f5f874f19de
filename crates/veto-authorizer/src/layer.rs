//! Enforcement for any tower service (axum, hyper): one line,
//! `.layer(AuthorizeLayer::new(authorizer))`.

use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use veto_core::{Decision, Denial, DenyReason};

use crate::Authorizer;

/// The action a request asks for: `http:METHOD:PATH`.
pub fn action_for(method: &Method, path: &str) -> String {
    format!("http:{method}:{path}")
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

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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
    let token = bearer(headers).ok_or_else(|| {
        Denial::new(
            DenyReason::Malformed,
            "missing `Authorization: Bearer <chain>`",
        )
    })?;
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
    let body =
        serde_json::json!({"error": denial.reason.as_str(), "message": denial.message}).to_string();
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
        match decide(&self.authz, req.method(), req.uri().path(), req.headers()) {
            Ok((verified, _)) => {
                req.extensions_mut().insert(verified);
                Either::Right(self.inner.call(req))
            }
            Err(denial) => Either::Left(ready(Ok(deny_response(&denial)))),
        }
    }
}
