//! The HTTP surface (DESIGN 6): translates requests to the authority's
//! methods and their outcomes to responses. Every error is `{"error":
//! code, "message": text}` with a stable code ([`ErrorCode`]); nothing is
//! written for a refused request.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;
use veto_core::wire::{
    path, DelegatedRevokeRequest, ErrorCode, RevokeEntry, RevokeRequest, RevokeResponse,
};
use veto_core::{DenyReason, Entry, EntryKind, Jwk, LinkSpec, PublicKey, Reason, WarrantError};

use crate::admin::{new_token, AdminToken, Principal, Scope, Tokens};
use crate::authority::{Authority, MintFailed, RevokeFailed};
use crate::budget::ClientBudget;
use crate::bus::sse::{SseHub, TooManySubscribers};
use crate::error::RegistryError;
use crate::fleet::{Fleet, GatewayState, GatewayView};
use crate::holder::HolderGate;
use crate::metrics::Metrics;
use crate::refusal::{bad, err, Refusal};
use crate::store::{AuditFilter, GatewayRow, NewEntry, ReportRow, StoreError, Unwritable};

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;
/// Most entries in one revocation request.
pub const MAX_BATCH: usize = 10_000;
/// Most deltas in one response.
pub const MAX_DELTAS: usize = 1000;
/// Most bytes of deltas in one `GET /v1/srl/deltas` response: a longer
/// answer is a prefix in version order (the client pages with `since=`);
/// a single larger delta comes alone.
pub const MAX_DELTAS_BYTES: usize = 4 << 20;
/// How long a delta listing waits for its share of the client budget
/// before it is answered 503.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// The latest Unix time an entry may name (9999-12-31T23:59:59Z): every
/// time the store keeps fits its signed 64-bit integers.
const MAX_UNIX_TIME: u64 = 253_402_300_799;
/// Longest warrant lifetime the registry mints.
pub const MAX_TTL: u64 = 366 * 86_400;

/// What the handlers share.
pub(crate) struct Api {
    authority: Arc<Authority>,
    admin: AdminToken,
    budget: ClientBudget,
    metrics: Arc<Metrics>,
    sse: SseHub,
    holders: HolderGate,
    /// `https` behind `--tls-cert`: what holder proofs name in `htu`.
    scheme: &'static str,
    /// The live named API tokens.
    tokens: Arc<Tokens>,
    /// The enrolment token, enrolled gateway keys and commit times.
    fleet: Arc<Fleet>,
}

impl Api {
    /// The API over `authority`; `access` is who may use the admin API
    /// (the bootstrap token and the named tokens).
    pub(crate) fn new(
        authority: Arc<Authority>,
        access: (AdminToken, Arc<Tokens>),
        budget: ClientBudget,
        metrics: Arc<Metrics>,
        sse: SseHub,
        scheme: &'static str,
        fleet: Arc<Fleet>,
    ) -> Self {
        let (admin, tokens) = access;
        Self {
            authority,
            admin,
            budget,
            metrics,
            sse,
            holders: HolderGate::new(),
            scheme,
            tokens,
            fleet,
        }
    }

    /// A refusal counted in the `errors` metric.
    fn refuse(&self, e: Refusal) -> Refusal {
        self.metrics.refused(e.code());
        e
    }

    /// Refuses `p` unless its token covers `scope` (403 `forbidden`).
    fn need(&self, p: &Principal, scope: Scope) -> Result<(), Refusal> {
        if p.may(scope) {
            return Ok(());
        }
        Err(self.refuse(err(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "token `{}` does not have the `{}` scope this endpoint needs: use a token that has it",
                p.name,
                scope.as_str()
            ),
        )))
    }
}

type Shared = Arc<Api>;

/// The store failed: the cause (which may name hosts, users or files) goes
/// to the operator's log, never to the client.
fn unavailable(e: StoreError) -> Refusal {
    tracing::error!(error = %e, "a read from the store failed");
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the store did not answer; retry shortly",
    )
}

/// A JSON body: declared `application/json` (or `…+json`), size-limited,
/// strict, errors in the API's shape.
pub(crate) struct JsonBody<T>(T);

/// Whether a `Content-Type` value declares JSON.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(mime) = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    let mime = mime.trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Refusal> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            let found = req.headers().get(header::CONTENT_TYPE).map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(100)
                    .collect::<String>()
            });
            return Err(err(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                match found {
                    Some(t) => format!("the body is declared as `{t}`: send JSON with `Content-Type: application/json`"),
                    None => "the body has no content type: send JSON with `Content-Type: application/json`".into(),
                },
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                err(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge, format!("request body is over the {MAX_BODY}-byte limit: send fewer entries per request"))
            } else {
                bad(ErrorCode::BadBody, format!("could not read the request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Strict JSON as every admin body is read: errors in the API's shape.
///
/// Read twice: once as a tree, to insist that objects are objects (serde
/// would also read a struct from an array of its fields, and name the Rust
/// type when it can't), and once into `T`, which refuses duplicate and
/// unknown members.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    let tree: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))?;
    check_objects(&tree)?;
    serde_json::from_slice(bytes)
        .map_err(|e| bad(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
}

/// The body, each of its `entries` and its `holder_key` must be JSON
/// objects.
fn check_objects(tree: &serde_json::Value) -> Result<(), Refusal> {
    let body = tree
        .as_object()
        .ok_or_else(|| bad(ErrorCode::InvalidJson, "the body must be a JSON object"))?;
    if let Some(entries) = body.get("entries").and_then(|e| e.as_array()) {
        if let Some(i) = entries.iter().position(|e| !e.is_object()) {
            return Err(bad(
                ErrorCode::InvalidJson,
                format!(
                    "entry {i} must be a JSON object such as {{\"kind\":\"warrant\",\"id\":\"…\"}}"
                ),
            ));
        }
    }
    if body.get("holder_key").is_some_and(|k| !k.is_object()) {
        return Err(bad(
            ErrorCode::InvalidJson,
            "`holder_key` must be a JWK object",
        ));
    }
    Ok(())
}

/// Parses and validates a `POST /v1/revocations` body exactly as the
/// handler does (same JSON reader, same [`validate`] rules), without a
/// store: the number of entries it would revoke, or the 400 the handler
/// would answer. For fuzzing and tests.
pub fn parse_revocation_body(body: &[u8], now: u64) -> Result<usize, Refusal> {
    parse_json::<RevokeRequest>(body)
        .and_then(|req| validate(req, now))
        .map(|entries| entries.len())
}

/// Parses and validates a `POST /v1/warrants` body exactly as the handler
/// does before it signs anything: the holder key it binds (RFC 7638
/// thumbprint), or the 400 the handler would answer. For fuzzing and tests.
pub fn parse_mint_body(body: &[u8]) -> Result<String, Refusal> {
    parse_json::<MintRequest>(body)
        .and_then(|req| validate_mint(&req))
        .map(|holder| holder.kid().to_owned())
}

/// The registry's routes (DESIGN 6), admin ones behind the admin token.
pub(crate) fn router(api: Arc<Api>) -> Router {
    let admin = Router::new()
        .route(path::REVOCATIONS, post(revoke).get(audit))
        .route(path::WARRANTS, post(mint))
        .route(
            path::ISSUER_KEYS,
            post(add_issuer_key).get(list_issuer_keys),
        )
        .route(
            &format!("{}/{{kid}}", path::ISSUER_KEYS),
            delete(retire_issuer_key),
        )
        .route(path::TOKENS, post(create_token).get(list_tokens))
        .route(&format!("{}/{{name}}", path::TOKENS), delete(revoke_token))
        .route(path::FLEET, get(fleet))
        .route(path::FLEET_EVENTS, get(fleet_events))
        .route(
            &format!("{}/{{id}}", path::FLEET_GATEWAYS),
            delete(remove_gateway),
        )
        .route(
            &format!("{}/{{ver}}", path::FLEET_VERSIONS),
            get(fleet_version),
        )
        .route_layer(middleware::from_fn_with_state(api.clone(), require_admin));
    Router::new()
        .merge(admin)
        .route(path::REVOCATIONS_DELEGATED, post(revoke_delegated))
        .route(
            path::FLEET_GATEWAYS,
            post(enrol_gateway).layer(DefaultBodyLimit::max(veto_core::report::MAX_REPORT_BYTES)),
        )
        .route(
            path::FLEET_REPORTS,
            post(fleet_report).layer(DefaultBodyLimit::max(veto_core::report::MAX_REPORT_BYTES)),
        )
        .route(path::SRL, get(snapshot))
        .route(path::SRL_DELTAS, get(deltas))
        .route(path::SRL_CHECKPOINT, get(checkpoint))
        .route(path::SRL_EVENTS, get(events))
        .route(path::JWKS, get(jwks))
        .route(path::ISSUERS, get(issuer_set))
        .route(path::AUTHORITY, get(authority))
        .route(path::HEALTHZ, get(healthz))
        .route(path::METRICS, get(metrics))
        .route(path::UI, get(crate::console::index))
        .route(&format!("{}/app.js", path::UI), get(crate::console::script))
        .route(&format!("{}/app.css", path::UI), get(crate::console::style))
        .fallback(|| async {
            err(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(close_after_refused_body))
        .with_state(api)
}

/// A refused request with a body may leave that body unread, and then the
/// server closes the connection after answering: say so with
/// `Connection: close`, or a client could send its next request on a
/// connection about to close and see it fail.
async fn close_after_refused_body(req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

async fn require_admin(State(api): State<Shared>, req: Request, next: Next) -> Response {
    // The scheme is case-insensitive (RFC 9110 11.1); another scheme is named.
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().ok());
    let (scheme, given) = match value {
        None => (None, None),
        Some(None) => (Some(String::new()), None),
        Some(Some(v)) => {
            let (s, t) = v.split_once(' ').unwrap_or((v, ""));
            if s.eq_ignore_ascii_case("bearer") {
                (None, Some(t.trim()).filter(|t| !t.is_empty()))
            } else {
                (Some(s.chars().take(32).collect()), None)
            }
        }
    };
    // Where the token lives is the operator's business: the registry says
    // it at start, never to a client (a path tells an attacker what to read).
    let hint = " (the registry's start-up output says where its admin token is)";
    let refuse = |message: String| {
        api.refuse(err(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            format!("{message}{hint}"),
        ))
        .into_response()
    };
    // With `--client-ca`, the admin API also needs a client certificate
    // rustls verified in the handshake (the accept loop says which).
    if let Some(crate::stall::ClientCert { verified: false }) = req.extensions().get() {
        return refuse("the admin API requires a client certificate issued by the registry's `--client-ca`: present one (veto CLI: `--client-cert FILE --client-key FILE`)".into());
    }
    let Some(given) = given else {
        return refuse(match scheme {
            Some(s) if !s.is_empty() => format!(
                "the admin token must be sent as `Authorization: Bearer <token>`, not with the `{s}` scheme"
            ),
            Some(_) => "the `Authorization` header is not visible ASCII: send `Authorization: Bearer <token>`".into(),
            None => "missing admin token: send `Authorization: Bearer <token>`".into(),
        });
    };
    let principal = if api.admin.matches(given) {
        Principal::bootstrap()
    } else if let Some(p) = api.tokens.find(given) {
        p
    } else {
        return refuse(
            "wrong admin token (neither the bootstrap token nor a live named token)".into(),
        );
    };
    let mut req = req;
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn validate(req: RevokeRequest, now: u64) -> Result<Vec<NewEntry>, Refusal> {
    if req.entries.is_empty() {
        return Err(bad(
            ErrorCode::NoEntries,
            "`entries` is empty: give at least one entry to revoke",
        ));
    }
    if req.entries.len() > MAX_BATCH {
        return Err(bad(
            ErrorCode::BatchTooLarge,
            format!(
                "{} entries, over the limit of {MAX_BATCH} per request: split the batch",
                req.entries.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(req.entries.len());
    for (i, e) in req.entries.into_iter().enumerate() {
        let kind = EntryKind::parse(&e.kind).ok_or_else(|| {
            bad(
                ErrorCode::UnknownKind,
                format!(
                    "entry {i}: unknown kind `{}`: expected `warrant`, `agent` or `key`",
                    e.kind
                ),
            )
        })?;
        let reason = match e.reason.as_deref() {
            None => Reason::Unspecified,
            Some(r) => Reason::parse(r).ok_or_else(|| {
                let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                bad(
                    ErrorCode::UnknownReason,
                    format!(
                        "entry {i}: unknown reason `{r}`: expected one of {}",
                        all.join(", ")
                    ),
                )
            })?,
        };
        if e.id.is_empty() {
            return Err(bad(
                ErrorCode::InvalidId,
                format!("entry {i}: `id` is empty"),
            ));
        }
        if e.id.len() > veto_core::MAX_ENTRY_ID_BYTES {
            return Err(bad(
                ErrorCode::InvalidId,
                format!(
                    "entry {i}: `id` is {} bytes, over the 256-byte limit",
                    e.id.len()
                ),
            ));
        }
        match (kind, e.before) {
            (EntryKind::Agent, None) => {
                return Err(bad(ErrorCode::MissingBefore, format!("entry {i}: an agent entry needs `before` (revoke credentials issued at or before this Unix time)")))
            }
            (EntryKind::Warrant | EntryKind::Key, Some(_)) => {
                return Err(bad(ErrorCode::UnexpectedBefore, format!("entry {i}: `before` applies only to agent entries")))
            }
            _ => {}
        }
        if let Some(before) = e.before.filter(|b| *b > MAX_UNIX_TIME) {
            return Err(bad(
                ErrorCode::InvalidBefore,
                format!("entry {i}: `before` {before} is past 9999-12-31 ({MAX_UNIX_TIME}): give Unix seconds"),
            ));
        }
        if let Some(exp) = e.expires_at {
            if exp <= now {
                return Err(bad(
                    ErrorCode::InvalidExpiresAt,
                    format!("entry {i}: `expires_at` {exp} is not in the future"),
                ));
            }
            if exp > MAX_UNIX_TIME {
                return Err(bad(
                    ErrorCode::InvalidExpiresAt,
                    format!("entry {i}: `expires_at` {exp} is past 9999-12-31 ({MAX_UNIX_TIME}): give Unix seconds, or leave it out for an entry that never expires"),
                ));
            }
            // An agent's credentials issued up to `before` can outlive it:
            // an expiry at or before the cutoff contradicts the entry.
            if let Some(before) = e.before.filter(|b| exp <= *b) {
                return Err(bad(
                    ErrorCode::InvalidExpiresAt,
                    format!("entry {i}: `expires_at` {exp} is not after the cutoff `before` {before}: credentials issued up to the cutoff could still be valid when the entry is pruned"),
                ));
            }
        }
        if e.note.as_ref().is_some_and(|n| n.len() > 1024) {
            return Err(bad(
                ErrorCode::InvalidNote,
                format!("entry {i}: `note` is over 1024 bytes"),
            ));
        }
        out.push(NewEntry {
            entry: Entry {
                kind,
                id: e.id,
                reason,
                revoked_at: now,
                before: e.before,
                expires_at: e.expires_at,
            },
            note: e.note,
        });
    }
    Ok(out)
}

async fn revoke(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    JsonBody(req): JsonBody<RevokeRequest>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Revoke)?;
    let entries = validate(req, api.authority.now()).map_err(|e| api.refuse(e))?;
    commit_revocation(&api, entries, principal.name).await
}

/// `POST /v1/revocations/delegated` (DESIGN 5): a holder revokes a link of
/// the chain it presents, proved with DPoP ([`HolderGate::check`]); the
/// revocation is then committed, published and audited like any other,
/// with the proving holder as its actor. The entry expires with the link.
async fn revoke_delegated(
    State(api): State<Shared>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<DelegatedRevokeRequest>,
) -> Result<Response, Refusal> {
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    };
    let auth = values(header::AUTHORIZATION.as_str());
    let proofs = values(veto_core::wire::header::DPOP);
    let cred = veto_core::dpop::credential(&auth, &proofs).map_err(|d| {
        let code = match d.reason {
            DenyReason::PopInvalid => ErrorCode::PopInvalid,
            _ => ErrorCode::PopRequired,
        };
        api.refuse(err(StatusCode::UNAUTHORIZED, code, d.message))
    })?;
    let host = match uri.authority() {
        Some(a) => Some(a.as_str()),
        None => {
            let mut hosts = headers.get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => h.to_str().ok(),
                _ => None,
            }
        }
    };
    let default_port = if api.scheme == "https" { "443" } else { "80" };
    let authority = host
        .and_then(|h| veto_core::dpop::canonical_authority(h, default_port).ok())
        .ok_or_else(|| {
            api.refuse(bad(
                ErrorCode::BadRequest,
                "exactly one valid `Host` header is needed to check the proof's `htu`",
            ))
        })?;
    let htu = format!(
        "{}://{authority}{}",
        api.scheme,
        path::REVOCATIONS_DELEGATED
    );
    let now = api.authority.now();
    let holder = api
        .holders
        .check(
            cred,
            req.link,
            &htu,
            api.authority.trusted_issuers(),
            api.authority.iss(),
            veto_core::warrant::limits::DEFAULT_DEPTH,
            now,
        )
        .map_err(|e| api.refuse(e))?;
    // A delegated link's `jti` is its delegator's choice: it may not name a
    // root this registry minted (another holder's warrant).
    if holder.link > 0 {
        let minted = api
            .authority
            .audit_log(AuditFilter {
                id: Some(holder.jti.clone()),
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .map_err(|e| api.refuse(unavailable(e)))?;
        if minted.iter().any(|r| r.action == "mint") {
            return Err(api.refuse(err(
                StatusCode::FORBIDDEN,
                ErrorCode::NotYourLink,
                format!(
                    "link {} names `{}`, the id of a root warrant this registry minted: a delegated \
                     link cannot revoke it",
                    holder.link, holder.jti
                ),
            )));
        }
    }
    let request = RevokeRequest {
        entries: vec![RevokeEntry {
            kind: EntryKind::Warrant.as_str().to_owned(),
            id: holder.jti,
            reason: req.reason,
            before: None,
            expires_at: (holder.exp > now).then_some(holder.exp),
            note: req.note,
        }],
    };
    let entries = validate(request, now).map_err(|e| api.refuse(e))?;
    commit_revocation(&api, entries, holder.actor).await
}

/// Commits validated entries as `actor`'s revocation and answers: 201 with
/// the new version, or 200 with the versions they were revoked in when
/// every entry was revoked already.
async fn commit_revocation(
    api: &Api,
    entries: Vec<NewEntry>,
    actor: String,
) -> Result<Response, Refusal> {
    let committed = api
        .authority
        .revoke(entries, actor)
        .await
        .map_err(|e| api.refuse(not_recorded(e)))?;
    let (status, version) = match &committed.new_version {
        Some((ver, _, _)) => (StatusCode::CREATED, *ver),
        None => (
            StatusCode::OK,
            committed
                .entries
                .iter()
                .map(|e| e.version)
                .max()
                .unwrap_or(0),
        ),
    };
    let body = RevokeResponse {
        version,
        entries: committed.entries,
    };
    Ok((status, Json(body)).into_response())
}

/// Why a revocation was not recorded, as the client hears it (the cause is
/// in the operator's log: the writer logged it).
fn not_recorded(e: RevokeFailed) -> Refusal {
    let (status, code, advice) = match e {
        RevokeFailed::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            "the registry is shutting down; retry against another replica",
        ),
        RevokeFailed::Unwritable(Unwritable::Full) => (
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::StoreFull,
            "free space for the registry's database, then retry",
        ),
        RevokeFailed::Unwritable(Unwritable::ReadOnly) => (
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::StoreReadOnly,
            "make the registry's database writable again, then retry",
        ),
        RevokeFailed::Unwritable(Unwritable::Other) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "retry once the store is writable",
        ),
    };
    err(
        status,
        code,
        format!("the revocation was NOT recorded: {advice}"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    kind: Option<String>,
    id: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    actor: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn audit(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Audit)?;
    let Query(q) = query.map_err(|e| bad(ErrorCode::InvalidQuery, e.body_text()))?;
    if let Some(k) = &q.kind {
        EntryKind::parse(k).ok_or_else(|| {
            bad(
                ErrorCode::UnknownKind,
                format!("unknown kind `{k}`: expected `warrant`, `agent` or `key`"),
            )
        })?;
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad(ErrorCode::InvalidLimit, "`limit` must be 1 to 1000"));
    }
    let filter = AuditFilter {
        kind: q.kind,
        id: q.id,
        since: q.since,
        until: q.until,
        actor: q.actor,
        after: q.after,
        limit,
    };
    let items = api.authority.audit_log(filter).await.map_err(unavailable)?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|r| r.seq))
        .flatten();
    Ok(Json(json!({"items": items, "next": next})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    agent: String,
    act: Vec<String>,
    ttl: u64,
    #[serde(default)]
    holder_key: Option<Jwk>,
}

/// The checks on a mint request before anything is signed: the holder key
/// it binds (required: its holder proves it on every request).
fn validate_mint(req: &MintRequest) -> Result<PublicKey, Refusal> {
    if req.agent.is_empty() || req.agent.len() > 256 {
        return Err(bad(
            ErrorCode::InvalidAgent,
            "`agent` must be 1 to 256 bytes",
        ));
    }
    if req.act.is_empty() {
        return Err(bad(
            ErrorCode::InvalidAct,
            "`act` is empty: give at least one action pattern",
        ));
    }
    veto_core::ActionSet::parse(&req.act).map_err(|e| bad(ErrorCode::InvalidAct, e.to_string()))?;
    if req.ttl == 0 || req.ttl > MAX_TTL {
        return Err(bad(
            ErrorCode::InvalidTtl,
            format!("`ttl` must be 1 to {MAX_TTL} seconds"),
        ));
    }
    let Some(jwk) = &req.holder_key else {
        return Err(bad(
            ErrorCode::InvalidHolderKey,
            "`holder_key` is required: the public JWK of the key the agent will prove on every \
             request (DPoP); `veto issue` generates one when none is given",
        ));
    };
    PublicKey::from_jwk(jwk)
        .map_err(|e| bad(ErrorCode::InvalidHolderKey, format!("`holder_key`: {e}")))
}

async fn mint(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    JsonBody(req): JsonBody<MintRequest>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Mint)?;
    let holder = validate_mint(&req)?;
    let now = api.authority.now();
    let exp = now + req.ttl;
    let spec = LinkSpec {
        sub: req.agent,
        act: req.act,
        iat: now,
        exp,
        holder: Some(holder),
    };
    let (chain, jti) = api
        .authority
        .mint(spec, &principal.name)
        .await
        .map_err(|e| match e {
            MintFailed::NoIssuerKey => err(
                StatusCode::CONFLICT,
                ErrorCode::NoIssuerKey,
                "no trusted issuer key: add one with `veto keys rotate`",
            ),
            MintFailed::Invalid(e @ WarrantError::Random(_)) => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            ),
            MintFailed::Invalid(e) => bad(ErrorCode::InvalidWarrant, e.to_string()),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"warrant": chain, "jti": jti, "exp": exp})),
    )
        .into_response())
}

async fn add_issuer_key(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Keys)?;
    let public = api
        .authority
        .add_issuer_key(&principal.name)
        .await
        .map_err(|e| match e {
            RegistryError::Store(e) => unavailable(e),
            e => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            ),
        })?;
    let public = public.to_jwk();
    Ok((
        StatusCode::CREATED,
        Json(json!({"kid": public.kid, "jwk": public})),
    )
        .into_response())
}

async fn list_issuer_keys(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Keys)?;
    let keys: Vec<_> = api
        .authority
        .issuer_keys()
        .into_iter()
        .map(|k| {
            json!({
                "kid": k.kid,
                "added_at": k.added_at,
                "retired_at": k.retired_at,
                "trusted": k.trusted,
            })
        })
        .collect();
    Ok(Json(json!({"keys": keys})).into_response())
}

async fn retire_issuer_key(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    axum::extract::Path(kid): axum::extract::Path<String>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Keys)?;
    let retired_at = api
        .authority
        .retire_issuer_key(&kid, &principal.name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownKey,
                format!("no active issuer key `{kid}`"),
            )
        })?;
    Ok(Json(json!({"kid": kid, "retired_at": retired_at})).into_response())
}

const JOSE: &str = "application/jose";

async fn snapshot(State(api): State<Shared>, headers: HeaderMap) -> Response {
    let Some(snap) = api.authority.snapshot().await else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::SnapshotUnavailable,
            "the snapshot could not be signed (see the registry's log); retry shortly, or follow the deltas",
        )
        .into_response();
    };
    let etag = format!("\"{}\"", snap.ver);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let gzip = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|e| e.trim().split(';').next() == Some("gzip"))
            });
        let mut r = if gzip {
            let mut r = Response::new(Body::from(snap.gzip.clone()));
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r
        } else {
            Response::new(Body::from(snap.bytes.clone()))
        };
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(veto_core::wire::content_type::SNAPSHOT),
        );
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[derive(Deserialize)]
struct DeltasQuery {
    since: Option<String>,
}

async fn deltas(
    State(api): State<Shared>,
    query: Result<Query<DeltasQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    // A query axum cannot read (a repeated `since`, bad percent-encoding)
    // gets the same JSON error as a bad value, not a plain-text rejection.
    let Query(q) = query.map_err(|_| {
        bad(
            ErrorCode::InvalidSince,
            "`since` must be one non-negative integer version",
        )
    })?;
    let since: u64 = q
        .since
        .as_deref()
        .ok_or_else(|| {
            bad(
                ErrorCode::MissingSince,
                "give `since=N`, the version you have applied",
            )
        })?
        .parse()
        .map_err(|_| {
            bad(
                ErrorCode::InvalidSince,
                "`since` must be a non-negative integer version",
            )
        })?;
    let upto = api.authority.version();
    let page = api
        .budget
        .page(
            &api.authority,
            since,
            upto,
            MAX_DELTAS,
            MAX_DELTAS_BYTES,
            tokio::time::sleep(BUDGET_WAIT),
        )
        .await
        .ok_or_else(|| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Busy,
                "the registry is sending as many deltas as it may hold at once: retry shortly",
            )
        })?;
    let (list, permit) = page.map_err(unavailable)?;
    match list {
        Some(list) => Ok(deltas_body(list, permit)),
        None => Err(err(
            StatusCode::GONE,
            ErrorCode::Gone,
            format!(
                "deltas after version {since} are no longer retained: fetch the snapshot at {}",
                path::SRL
            ),
        )),
    }
}

/// A [`veto_core::wire::DeltasPage`] (`{"deltas": [...]}`), written a delta at a time; the
/// budget share is held until the last byte was taken (or the client went
/// away).
fn deltas_body(list: Vec<(u64, String)>, permit: OwnedSemaphorePermit) -> Response {
    let mut parts: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    parts.push_back(Bytes::from_static(b"{\"deltas\":["));
    let n = list.len();
    for (i, (_, jws)) in list.into_iter().enumerate() {
        // A JWS is base64url and dots: nothing to escape in a JSON string.
        let mut s = String::with_capacity(jws.len() + 3);
        s.push('"');
        s.push_str(&jws);
        s.push('"');
        if i + 1 < n {
            s.push(',');
        }
        parts.push_back(Bytes::from(s));
    }
    parts.push_back(Bytes::from_static(b"]}"));
    let stream =
        futures_util::stream::unfold((parts, Some(permit)), |(mut parts, permit)| async move {
            let next = parts.pop_front();
            next.map(|b| (Ok::<_, Infallible>(b), (parts, permit)))
        });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn checkpoint(State(api): State<Shared>) -> Response {
    let (_, jws) = api.authority.checkpoint();
    (
        [
            (header::CONTENT_TYPE, JOSE),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        jws.to_string(),
    )
        .into_response()
}

async fn jwks(State(api): State<Shared>) -> Response {
    let keys: Vec<Jwk> = api
        .authority
        .trusted_issuers()
        .iter()
        .map(PublicKey::to_jwk)
        .collect();
    Json(json!({"keys": keys})).into_response()
}

async fn authority(State(api): State<Shared>) -> Response {
    let key = api.authority.authority_key().to_jwk();
    Json(json!({"iss": api.authority.iss(), "keys": [key]})).into_response()
}

async fn healthz(State(api): State<Shared>) -> Response {
    Json(json!({"status": "ok", "version": api.authority.version()})).into_response()
}

async fn metrics(State(api): State<Shared>) -> Response {
    api.metrics
        .client_buffer_bytes
        .set(api.budget.in_use() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
}

/// `GET /v1/srl/events`: an SSE stream resuming after `Last-Event-ID` (or
/// `?since=N`); see [`crate::bus::sse`].
async fn events(
    State(api): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    let Query(q) = query.map_err(|_| {
        bad(
            ErrorCode::InvalidSince,
            "`since` must be a non-negative integer version",
        )
    })?;
    let since = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    bad(
                        ErrorCode::InvalidLastEventId,
                        "`Last-Event-ID` must be a version number",
                    )
                })?,
        ),
        None => q.since,
    };
    let stream = api.sse.subscribe(since).map_err(|TooManySubscribers| {
        api.refuse(err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManySubscribers,
            format!(
                "the registry is at its subscriber limit: retry later or poll {}",
                path::SRL_DELTAS
            ),
        ))
    })?;
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// `POST /v1/tokens` body: a name and its scopes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    scopes: Vec<String>,
}

/// Token management is the bootstrap admin token's alone.
fn bootstrap_only(api: &Api, p: &Principal) -> Result<(), Refusal> {
    if p.is_bootstrap() {
        return Ok(());
    }
    Err(api.refuse(err(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!(
            "token `{}` may not manage tokens: only the bootstrap admin token may",
            p.name
        ),
    )))
}

/// `POST /v1/tokens`: creates a named token with scopes; the token is in
/// the answer once and only its SHA-256 is stored.
async fn create_token(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    JsonBody(req): JsonBody<CreateToken>,
) -> Result<Response, Refusal> {
    bootstrap_only(&api, &principal)?;
    let name_ok = !req.name.is_empty()
        && req.name.len() <= 64
        && req.name != "admin"
        && !req.name.starts_with("holder ")
        && req
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(api.refuse(bad(
            ErrorCode::InvalidName,
            "`name` must be 1 to 64 of `A-Z a-z 0-9 . _ -`, and not `admin`",
        )));
    }
    let mut scopes = Vec::new();
    for s in &req.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            api.refuse(bad(
                ErrorCode::InvalidScope,
                format!("unknown scope `{s}`: expected any of {}", all.join(", ")),
            ))
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(api.refuse(bad(
            ErrorCode::InvalidScope,
            "`scopes` is empty: give at least one",
        )));
    }
    let (token, digest) = new_token().map_err(|e| {
        api.refuse(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        ))
    })?;
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let row = crate::store::TokenRow {
        name: req.name.clone(),
        digest,
        scopes: scopes.join(","),
        created_at: api.authority.now(),
        revoked_at: None,
    };
    let created = api
        .authority
        .add_token(&row, &principal.name)
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    if !created {
        return Err(api.refuse(err(
            StatusCode::CONFLICT,
            ErrorCode::NameTaken,
            format!(
                "a token named `{}` exists (or existed): names are never reused; choose another",
                req.name
            ),
        )));
    }
    api.tokens.load(
        &api.authority
            .tokens()
            .await
            .map_err(|e| api.refuse(unavailable(e)))?,
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": req.name, "scopes": scopes, "token": token})),
    )
        .into_response())
}

/// `GET /v1/tokens`: every named token (never the token itself).
async fn list_tokens(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Refusal> {
    bootstrap_only(&api, &principal)?;
    let rows = api
        .authority
        .tokens()
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    let tokens: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "scopes": r.scopes.split(',').collect::<Vec<_>>(),
                "created_at": r.created_at,
                "revoked_at": r.revoked_at,
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

/// `DELETE /v1/tokens/{name}`: revokes a named token, at once here and
/// within a few seconds at other replicas.
async fn revoke_token(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Refusal> {
    bootstrap_only(&api, &principal)?;
    let revoked = api
        .authority
        .revoke_token(&name, &principal.name)
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    if !revoked {
        return Err(api.refuse(err(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no live token named `{name}`"),
        )));
    }
    api.tokens.load(
        &api.authority
            .tokens()
            .await
            .map_err(|e| api.refuse(unavailable(e)))?,
    );
    Ok(Json(json!({"name": name, "revoked": true})).into_response())
}

/// `GET /v1/issuers`: the authority-signed issuer key set, as a compact JWS.
async fn issuer_set(State(api): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jose")],
        api.authority.issuer_set().1,
    )
        .into_response()
}

// ---------------------------------------------------------------------
// The fleet (DESIGN 5): enrolment, reports, the fleet view.

/// The bearer token of a request, if it sent exactly one well-formed one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let v = v.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `POST /v1/fleet/gateways` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    name: String,
    key: Jwk,
}

/// `POST /v1/fleet/gateways`: enrols a gateway key, with the fleet
/// enrolment token or an admin token that has the `fleet` scope. The token
/// is checked before the body is read. A name is one live gateway's; a
/// gateway an operator removed comes back only by an operator.
async fn enrol_gateway(
    State(api): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Refusal> {
    let (actor, operator) = match bearer(&headers) {
        Some(t) if api.fleet.is_enrolment_token(t) => ("fleet-token".to_owned(), false),
        Some(t) if api.admin.matches(t) => (Principal::bootstrap().name, true),
        Some(t) => match api.tokens.find(t) {
            Some(p) => {
                api.need(&p, Scope::Fleet)?;
                (p.name, true)
            }
            None => {
                return Err(api.refuse(err(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "wrong token: enrol with the registry's fleet token (`<data-dir>/fleet.token`) or an admin token with the `fleet` scope",
                )))
            }
        },
        None => {
            return Err(api.refuse(err(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing token: send `Authorization: Bearer <fleet token>`",
            )))
        }
    };
    let body = body.map_err(|e| {
        api.refuse(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            e.body_text(),
        ))
    })?;
    let req: EnrolRequest = parse_json(&body).map_err(|e| api.refuse(e))?;
    veto_core::report::check_name(&req.name)
        .map_err(|e| api.refuse(bad(ErrorCode::InvalidName, e.to_string())))?;
    if req.key.d.is_some() {
        return Err(api.refuse(bad(
            ErrorCode::InvalidGatewayKey,
            "`key` holds a private key (`d`): send the public half only",
        )));
    }
    let key = PublicKey::from_jwk(&req.key).map_err(|e| {
        api.refuse(bad(
            ErrorCode::InvalidGatewayKey,
            format!("`key` is not an Ed25519 public JWK: {e}"),
        ))
    })?;
    let id = key.kid().to_owned();
    let known = api
        .authority
        .gateways()
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    if let Some(g) = known.iter().find(|g| g.id == id) {
        if g.removed_at.is_none() {
            return Err(api.refuse(err(
                StatusCode::CONFLICT,
                ErrorCode::AlreadyEnrolled,
                format!("the key `{id}` is enrolled already, as `{}`", g.name),
            )));
        }
        if !operator {
            return Err(api.refuse(err(
                StatusCode::FORBIDDEN,
                ErrorCode::GatewayRemoved,
                format!("gateway `{id}` (`{}`) was removed by an operator: only an operator may enrol it again (veto fleet enrol)", g.name),
            )));
        }
    }
    let live: Vec<&GatewayRow> = known.iter().filter(|g| g.removed_at.is_none()).collect();
    if let Some(g) = live.iter().find(|g| g.name == req.name) {
        return Err(api.refuse(err(
            StatusCode::CONFLICT,
            ErrorCode::NameTaken,
            format!(
                "the name `{}` is gateway `{}`'s: choose another, or remove that one first (veto fleet remove {})",
                req.name, g.id, g.id
            ),
        )));
    }
    if live.len() >= crate::fleet::MAX_GATEWAYS {
        return Err(api.refuse(err(
            StatusCode::CONFLICT,
            ErrorCode::FleetFull,
            format!(
                "{} gateways are enrolled, as many as the registry keeps: remove gone ones first (veto fleet remove)",
                crate::fleet::MAX_GATEWAYS
            ),
        )));
    }
    let row = GatewayRow {
        id,
        name: req.name.clone(),
        public_jwk: key.to_jwk().to_json(),
        enrolled_at: api.authority.now(),
        removed_at: None,
    };
    let added = api
        .authority
        .enrol_gateway(&row, &actor)
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    if !added {
        return Err(api.refuse(err(
            StatusCode::CONFLICT,
            ErrorCode::AlreadyEnrolled,
            format!("the key `{}` is enrolled already", row.id),
        )));
    }
    api.fleet.add_key(&row.id, key);
    api.fleet.changed();
    tracing::info!(id = %row.id, name = %row.name, %actor, "gateway enrolled");
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": row.id, "name": row.name})),
    )
        .into_response())
}

/// `DELETE /v1/fleet/gateways/{id}` (scope `fleet`): its reports are
/// refused from now on.
async fn remove_gateway(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Fleet)?;
    let removed = api
        .authority
        .remove_gateway(&id, &principal.name)
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    if !removed {
        return Err(api.refuse(err(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no enrolled gateway `{id}`"),
        )));
    }
    api.fleet.remove_key(&id);
    api.fleet.changed();
    Ok(Json(json!({"id": id, "removed": true})).into_response())
}

/// `POST /v1/fleet/reports`: a gateway's signed report (`application/jose`).
async fn fleet_report(
    State(api): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Refusal> {
    let refuse = |status: StatusCode, code: ErrorCode, message: String| {
        api.metrics.report_refused(code);
        api.refuse(err(status, code, message))
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ctype.eq_ignore_ascii_case("application/jose") {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "a report is a compact JWS sent as `Content-Type: application/jose`".into(),
        ));
    }
    let body = body.map_err(|_| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!(
                "a report is at most {} bytes",
                veto_core::report::MAX_REPORT_BYTES
            ),
        )
    })?;
    if body.len() > veto_core::report::MAX_REPORT_BYTES {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!(
                "a report is at most {} bytes",
                veto_core::report::MAX_REPORT_BYTES
            ),
        ));
    }
    let token = std::str::from_utf8(&body).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidReport,
            "the report is not UTF-8".into(),
        )
    })?;
    let token = token.trim();
    let kid = veto_core::report::kid(token).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidReport,
            e.to_string(),
        )
    })?;
    let mut key = api.fleet.key(&kid);
    if key.is_none() && api.fleet.may_reload() {
        // Enrolled at another replica since the last read.
        let rows = api
            .authority
            .gateways()
            .await
            .map_err(|e| api.refuse(unavailable(e)))?;
        api.fleet.load(&rows);
        key = api.fleet.key(&kid);
    }
    let Some(key) = key else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::NotEnrolled,
            format!("no gateway is enrolled with the key `{kid}`: enrol it first (veto proxy --fleet-token-file, or veto fleet enrol)"),
        ));
    };
    let payload = crate::fleet::verify(token, &key, api.authority.iss(), api.authority.now())
        .map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidReport,
                e.to_string(),
            )
        })?;
    // An old report replayed is refused before it costs the gateway's
    // budget: a replay cannot silence the gateway.
    if !api.fleet.is_newer(&kid, payload.iat, payload.seq) {
        return Err(refuse(
            StatusCode::CONFLICT,
            ErrorCode::StaleReport,
            format!(
                "a report no newer than one already accepted (iat {}, seq {})",
                payload.iat, payload.seq
            ),
        ));
    }
    // A version the registry has not committed: another replica's commit
    // not followed yet, or a lie.
    if payload.ver > api.authority.version() {
        api.authority.follow(payload.ver).await;
        let head = api.authority.version();
        if payload.ver > head {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidReport,
                format!(
                    "the report claims version {}, beyond the head {head}",
                    payload.ver
                ),
            ));
        }
    }
    if !api.fleet.take_report(&kid) {
        return Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "over {} reports a second from one gateway: slow down",
                crate::fleet::REPORTS_PER_SECOND
            ),
        ));
    }
    let row = ReportRow {
        id: kid,
        iat: payload.iat,
        seq: payload.seq,
        received_ms: crate::fleet::now_ms(),
        ver: payload.ver,
        report: serde_json::to_string(&payload).unwrap_or_default(),
    };
    let fresh = api
        .authority
        .record_report(&row)
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    if !fresh {
        return Err(refuse(
            StatusCode::CONFLICT,
            ErrorCode::StaleReport,
            format!(
                "a report no newer than one already accepted (iat {}, seq {}), or from a removed gateway",
                row.iat, row.seq
            ),
        ));
    }
    api.fleet.accepted(&row.id, row.iat, row.seq);
    api.metrics.fleet_reports.inc();
    api.fleet.changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Reads the fleet view now, and sets the fleet gauges from it.
async fn read_fleet(api: &Api) -> Result<(u64, Vec<GatewayView>), Refusal> {
    let head = api.authority.version();
    let gateways = api
        .authority
        .gateways()
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    let reports = api
        .authority
        .reports()
        .await
        .map_err(|e| api.refuse(unavailable(e)))?;
    let view = crate::fleet::view(&gateways, &reports, head, crate::fleet::now_ms());
    for state in GatewayState::ALL {
        let n = view.iter().filter(|g| g.state == state).count();
        api.metrics
            .fleet_gateways
            .get_or_create(&crate::metrics::StateLabel {
                state: state.as_str().into(),
            })
            .set(n as i64);
    }
    let lag = view
        .iter()
        .filter(|g| g.state != GatewayState::Lost)
        .filter_map(|g| g.lag)
        .max()
        .unwrap_or(0);
    api.metrics.fleet_max_lag.set(lag as i64);
    Ok((head, view))
}

/// `GET /v1/fleet` (scope `fleet`): every enrolled gateway.
async fn fleet(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Fleet)?;
    Ok(Json(fleet_body(&api).await?).into_response())
}

/// The body of `GET /v1/fleet`: the head, the applied state (version,
/// head digest, entries per kind, the newest checkpoint's `iat`) and every
/// gateway.
async fn fleet_body(api: &Api) -> Result<Value, Refusal> {
    let (head, gateways) = read_fleet(api).await?;
    let (ver, digest, [warrants, agents, keys]) = api.authority.summary();
    let (_, checkpoint) = api.authority.checkpoint();
    let checkpoint_iat = veto_core::jws::UnverifiedJws::parse(&checkpoint, usize::MAX)
        .ok()
        .and_then(|j| j.payload_unverified().ok())
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        .and_then(|p| p["iat"].as_u64());
    Ok(json!({
        "head": head,
        "state": {
            "version": ver,
            "head": digest,
            "entries": {"warrant": warrants, "agent": agents, "key": keys},
            "checkpoint_iat": checkpoint_iat,
        },
        "gateways": gateways,
    }))
}

/// `GET /v1/fleet/events` (scope `fleet`): server-sent events `fleet`,
/// each the body of `GET /v1/fleet`, at once and then whenever it changes
/// (a report accepted here, or states aging: read every second), with a
/// comment every 15 s. At most [`crate::fleet::MAX_FLEET_STREAMS`] open.
async fn fleet_events(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Fleet)?;
    let Some(slot) = api.fleet.open_stream() else {
        return Err(api.refuse(err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManySubscribers,
            format!(
                "{} fleet streams are open: close one, or read GET {}",
                crate::fleet::MAX_FLEET_STREAMS,
                path::FLEET
            ),
        )));
    };
    let changes = api.fleet.watch();
    let state = (
        api,
        changes,
        slot,
        String::new(),
        std::time::Instant::now(),
        true,
    );
    let stream = futures_util::stream::unfold(
        state,
        |(api, mut changes, slot, last, mut quiet_since, first)| async move {
            loop {
                if !first {
                    tokio::select! {
                        _ = changes.changed() => {
                            // Let a burst of reports land first.
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
                let body = match fleet_body(&api).await {
                    Ok(b) => b.to_string(),
                    Err(_) => return None,
                };
                if body != last {
                    let frame = format!("event: fleet\ndata: {body}\n\n");
                    return Some((
                        Ok::<_, Infallible>(Bytes::from(frame)),
                        (api, changes, slot, body, std::time::Instant::now(), false),
                    ));
                }
                if quiet_since.elapsed() >= std::time::Duration::from_secs(15) {
                    quiet_since = std::time::Instant::now();
                    return Some((
                        Ok(Bytes::from_static(b": keep-alive\n\n")),
                        (api, changes, slot, last, quiet_since, false),
                    ));
                }
            }
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /v1/fleet/versions/{N}` (scope `fleet`): when each gateway was
/// first heard to have applied version N (or a later one).
async fn fleet_version(
    State(api): State<Shared>,
    Extension(principal): Extension<Principal>,
    axum::extract::Path(ver): axum::extract::Path<String>,
) -> Result<Response, Refusal> {
    api.need(&principal, Scope::Fleet)?;
    let digits = !ver.is_empty()
        && ver.len() <= 19
        && ver.bytes().all(|b| b.is_ascii_digit())
        && !(ver.len() > 1 && ver.starts_with('0'));
    let ver: u64 = ver.parse().ok().filter(|_| digits).ok_or_else(|| {
        api.refuse(bad(
            ErrorCode::InvalidQuery,
            format!(
                "`{}` is not a version: digits, no sign or leading zero",
                ver.chars().take(32).collect::<String>()
            ),
        ))
    })?;
    let (head, gateways) = read_fleet(&api).await?;
    if ver == 0 || ver > head {
        return Err(api.refuse(err(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("version {ver} does not exist (the head is {head})"),
        )));
    }
    let applied: std::collections::HashMap<String, u64> = api
        .authority
        .applied_since(ver)
        .await
        .map_err(|e| api.refuse(unavailable(e)))?
        .into_iter()
        .collect();
    let committed = api.fleet.commit_time(ver);
    let rows: Vec<_> = gateways
        .iter()
        .map(|g| {
            // Heard to have applied N or later, and not behind N now.
            let at = applied
                .get(&g.id)
                .copied()
                .filter(|_| g.applied_version.is_some_and(|v| v >= ver));
            json!({
                "id": g.id,
                "name": g.name,
                "state": g.state,
                "applied_ms": at,
                "after_ms": at.zip(committed).map(|(a, c)| a.saturating_sub(c)),
            })
        })
        .collect();
    let enforced = rows.iter().filter(|r| !r["applied_ms"].is_null()).count();
    let last = rows.iter().filter_map(|r| r["after_ms"].as_u64()).max();
    Ok(Json(json!({
        "version": ver,
        "committed_ms": committed,
        "enforced": enforced,
        "of": rows.len(),
        "last_after_ms": if enforced == rows.len() { last } else { None },
        "gateways": rows,
    }))
    .into_response())
}
