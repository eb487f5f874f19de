//! The HTTP surface (DESIGN 6). Every error is `{"error": code, "message":
//! text}` with a stable code; nothing is written for a refused request.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use veto_core::wire::{path, ErrorBody, ErrorCode, EventKind, RevokeRequest, RevokeResponse};
use veto_core::{warrant, Entry, EntryKind, Jwk, LinkSpec, PublicKey, Reason, SigningKey};

use crate::metrics::Code;
use crate::store::{AuditFilter, NewEntry, StoreError, Unwritable};
use crate::{Event, Inner, IssuerKey, WriteJob};

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
/// Most deltas replayed to a resuming SSE subscriber before it is sent a
/// snapshot instead.
pub const MAX_REPLAY: u64 = 10_000;
/// Most bytes of deltas replayed to one resuming SSE subscriber; further
/// behind, it is sent a snapshot instead.
pub const MAX_REPLAY_BYTES: usize = 8 << 20;
/// The replay is read from the store a page of at most this many bytes at
/// a time, as the subscriber takes it.
pub const REPLAY_PAGE_BYTES: usize = 1 << 20;
/// Largest snapshot sent inline on an event stream; a subscriber that
/// needs a larger one is sent the current checkpoint, from which it sees
/// how far behind it is and catches up by pull (`/v1/srl/deltas`, or the
/// shared `/v1/srl` when those are gone), so no per-subscriber copy of a
/// big state is ever made.
pub const MAX_SSE_SNAPSHOT_BYTES: usize = 8 << 20;
/// Most bytes of events queued for one subscriber (one larger event is
/// queued alone).
pub const SUBSCRIBER_QUEUE_BYTES: usize = 1 << 20;
/// All the bytes of replayed deltas, inline snapshots, live events queued
/// for subscribers and delta listings the registry holds at once, across
/// every client. A client that does not read keeps its share until the
/// subscriber timeout closes its connection; others wait for theirs.
pub const REPLAY_BUDGET_BYTES: usize = 64 << 20;
/// How long a delta listing waits for its share of the budget before it is
/// answered 503.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// The latest Unix time an entry may name (9999-12-31T23:59:59Z): every
/// time the store keeps fits its signed 64-bit integers.
const MAX_UNIX_TIME: u64 = 253_402_300_799;
/// Longest warrant lifetime the registry mints.
pub const MAX_TTL: u64 = 366 * 86_400;

type Shared = Arc<Inner>;

pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

fn err(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, code, message)
}

/// The store failed: the cause (which may name hosts, users or files) goes
/// to the operator's log, never to the client.
fn unavailable(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "a read from the store failed");
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the store did not answer; retry shortly",
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
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
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
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
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let tree: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| bad(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))?;
    check_objects(&tree)?;
    serde_json::from_slice(bytes)
        .map_err(|e| bad(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
}

/// The body, each of its `entries` and its `holder_key` must be JSON
/// objects.
fn check_objects(tree: &serde_json::Value) -> Result<(), ApiError> {
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
/// store: the number of entries it would revoke, or `code: message` of the
/// 400 the handler would answer. For fuzzing and tests.
pub fn parse_revocation_body(body: &[u8], now: u64) -> Result<usize, String> {
    parse_json::<RevokeRequest>(body)
        .and_then(|req| validate(req, now))
        .map(|(entries, _actor)| entries.len())
        .map_err(|e| format!("{}: {}", e.code, e.message))
}

/// Parses and validates a `POST /v1/warrants` body exactly as the handler
/// does before it signs anything: whether the holder key is present, or
/// `code: message` of the 400 the handler would answer. For fuzzing and
/// tests.
pub fn parse_mint_body(body: &[u8]) -> Result<bool, String> {
    parse_json::<MintRequest>(body)
        .and_then(|req| validate_mint(&req))
        .map(|holder| holder.is_some())
        .map_err(|e| format!("{}: {}", e.code, e.message))
}

pub(crate) fn router(inner: Shared, stop: watch::Receiver<bool>) -> Router {
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
        .route_layer(middleware::from_fn_with_state(inner.clone(), require_admin));
    Router::new()
        .merge(admin)
        .route(path::SRL, get(snapshot))
        .route(path::SRL_DELTAS, get(deltas))
        .route(path::SRL_CHECKPOINT, get(checkpoint))
        .route(path::SRL_EVENTS, get(events))
        .route(path::JWKS, get(jwks))
        .route(path::AUTHORITY, get(authority))
        .route(path::HEALTHZ, get(healthz))
        .route(path::METRICS, get(metrics))
        .fallback(|| async {
            err(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(close_after_refused_body))
        .layer(axum::Extension(stop))
        .with_state(inner)
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

async fn require_admin(State(inner): State<Shared>, req: Request, next: Next) -> Response {
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
        inner
            .metrics
            .errors
            .get_or_create(&Code {
                code: ErrorCode::Unauthorized.as_str().into(),
            })
            .inc();
        err(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            format!("{message}{hint}"),
        )
        .into_response()
    };
    let Some(given) = given else {
        return refuse(match scheme {
            Some(s) if !s.is_empty() => format!(
                "the admin token must be sent as `Authorization: Bearer <token>`, not with the `{s}` scheme"
            ),
            Some(_) => "the `Authorization` header is not visible ASCII: send `Authorization: Bearer <token>`".into(),
            None => "missing admin token: send `Authorization: Bearer <token>`".into(),
        });
    };
    // Compare digests in constant time: no early exit on the first differing byte.
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let diff = digest
        .iter()
        .zip(inner.admin_token_hash.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return refuse("wrong admin token".into());
    }
    next.run(req).await
}

fn validate(req: RevokeRequest, now: u64) -> Result<(Vec<NewEntry>, String), ApiError> {
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
    let actor = req.actor.unwrap_or_else(|| "admin".into());
    if actor.is_empty() || actor.len() > 128 {
        return Err(bad(
            ErrorCode::InvalidActor,
            "`actor` must be 1 to 128 bytes",
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
    Ok((out, actor))
}

async fn revoke(
    State(inner): State<Shared>,
    JsonBody(req): JsonBody<RevokeRequest>,
) -> Result<Response, ApiError> {
    let (entries, actor) = validate(req, inner.now()).inspect_err(|e| {
        inner
            .metrics
            .errors
            .get_or_create(&Code {
                code: e.code.as_str().into(),
            })
            .inc();
    })?;
    let (reply, rx) = oneshot::channel();
    inner
        .writes
        .send(WriteJob::Revoke {
            entries,
            actor,
            reply,
        })
        .await
        .map_err(|_| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                "the registry is shutting down; retry against another replica",
            )
        })?;
    let committed = rx
        .await
        .map_err(|_| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                "the registry is shutting down; retry",
            )
        })?
        .map_err(|e| {
            let (status, code, advice) = match e.kind {
                Unwritable::Full => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    ErrorCode::StoreFull,
                    "free space for the registry's database, then retry",
                ),
                Unwritable::ReadOnly => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    ErrorCode::StoreReadOnly,
                    "make the registry's database writable again, then retry",
                ),
                Unwritable::Other => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StoreUnavailable,
                    "retry once the store is writable",
                ),
            };
            inner
                .metrics
                .errors
                .get_or_create(&Code {
                    code: code.as_str().into(),
                })
                .inc();
            err(
                status,
                code,
                // The cause is in the operator's log (the writer logged it).
                format!("the revocation was NOT recorded: {advice}"),
            )
        })?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    kind: Option<String>,
    id: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    after: Option<i64>,
    limit: Option<u32>,
}

async fn audit(
    State(inner): State<Shared>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
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
        after: q.after,
        limit,
    };
    let items = inner.store.audit_log(filter).await.map_err(unavailable)?;
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
/// it binds, if any.
fn validate_mint(req: &MintRequest) -> Result<Option<PublicKey>, ApiError> {
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
    req.holder_key
        .as_ref()
        .map(PublicKey::from_jwk)
        .transpose()
        .map_err(|e| bad(ErrorCode::InvalidHolderKey, format!("`holder_key`: {e}")))
}

async fn mint(
    State(inner): State<Shared>,
    JsonBody(req): JsonBody<MintRequest>,
) -> Result<Response, ApiError> {
    let holder = validate_mint(&req)?;
    let now = inner.now();
    let chain = {
        let issuers = inner.issuers.read().unwrap_or_else(|p| p.into_inner());
        let trusted = inner.trusted_issuers();
        let key = issuers
            .iter()
            .rev()
            .find(|k| trusted.iter().any(|t| t.kid() == k.key.kid()))
            .ok_or_else(|| {
                err(
                    StatusCode::CONFLICT,
                    ErrorCode::NoIssuerKey,
                    "no trusted issuer key: add one with `veto keys rotate`",
                )
            })?;
        warrant::mint_root(
            &key.key,
            inner.signer.iss(),
            LinkSpec {
                sub: req.agent.clone(),
                act: req.act,
                iat: now,
                exp: now + req.ttl,
                holder,
            },
        )
        .map_err(|e| bad(ErrorCode::InvalidWarrant, e.to_string()))?
    };
    let parsed = veto_core::ParsedChain::parse(&chain).map_err(|d| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            d.message,
        )
    })?;
    let jti = parsed.root().claims().jti.clone();
    if let Err(e) = inner
        .store
        .audit(now, "admin", "mint", Some(&jti), Some(&req.agent))
        .await
    {
        tracing::warn!(error = %e, jti, "minted a warrant but could not write its audit record");
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"warrant": chain, "jti": jti, "exp": now + req.ttl})),
    )
        .into_response())
}

async fn add_issuer_key(State(inner): State<Shared>) -> Result<Response, ApiError> {
    let key = SigningKey::generate().map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    let jwk = key.to_private_jwk().to_json();
    let now = inner.now();
    inner
        .store
        .add_issuer_key(key.kid(), &jwk, now, "admin")
        .await
        .map_err(unavailable)?;
    let public = key.public().to_jwk();
    inner
        .issuers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(IssuerKey {
            key,
            added_at: now,
            retired_at: None,
        });
    Ok((
        StatusCode::CREATED,
        Json(json!({"kid": public.kid, "jwk": public})),
    )
        .into_response())
}

async fn list_issuer_keys(State(inner): State<Shared>) -> Response {
    let trusted = inner.trusted_issuers();
    let keys: Vec<_> = inner
        .issuers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|k| {
            json!({
                "kid": k.key.kid(),
                "added_at": k.added_at,
                "retired_at": k.retired_at,
                "trusted": trusted.iter().any(|t| t.kid() == k.key.kid()),
            })
        })
        .collect();
    Json(json!({"keys": keys})).into_response()
}

async fn retire_issuer_key(
    State(inner): State<Shared>,
    axum::extract::Path(kid): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let now = inner.now();
    let retired = inner
        .store
        .retire_issuer_key(&kid, now, "admin")
        .await
        .map_err(unavailable)?;
    if !retired {
        return Err(err(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownKey,
            format!("no active issuer key `{kid}`"),
        ));
    }
    for k in inner
        .issuers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .iter_mut()
    {
        if k.key.kid() == kid {
            k.retired_at = Some(now);
        }
    }
    Ok(Json(json!({"kid": kid, "retired_at": now})).into_response())
}

const JOSE: &str = "application/jose";

async fn snapshot(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    let Some(snap) = inner.snapshot().await else {
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
            Response::new(Body::from(snap.jws.clone()))
        };
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JOSE));
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
    State(inner): State<Shared>,
    query: Result<Query<DeltasQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
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
    let upto = inner.read_current().ver();
    let deadline = tokio::time::Instant::now() + BUDGET_WAIT;
    let page = budgeted_page(
        &inner,
        since,
        upto,
        MAX_DELTAS,
        MAX_DELTAS_BYTES,
        None,
        Some(deadline),
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
        None => Err(err(StatusCode::GONE, ErrorCode::Gone, format!("deltas after version {since} are no longer retained: fetch the snapshot at /v1/srl"))),
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

async fn checkpoint(State(inner): State<Shared>) -> Response {
    let (_, jws) = inner.checkpoint();
    (
        [
            (header::CONTENT_TYPE, JOSE),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        jws.to_string(),
    )
        .into_response()
}

async fn jwks(State(inner): State<Shared>) -> Response {
    let keys: Vec<Jwk> = inner
        .trusted_issuers()
        .iter()
        .map(PublicKey::to_jwk)
        .collect();
    Json(json!({"keys": keys})).into_response()
}

async fn authority(State(inner): State<Shared>) -> Response {
    Json(json!({"iss": inner.signer.iss(), "keys": [inner.signer.key().public().to_jwk()]}))
        .into_response()
}

async fn healthz(State(inner): State<Shared>) -> Response {
    Json(json!({"status": "ok", "version": inner.read_current().ver()})).into_response()
}

async fn metrics(State(inner): State<Shared>) -> Response {
    let free = inner.budget.available_permits();
    inner
        .metrics
        .client_buffer_bytes
        .set(REPLAY_BUDGET_BYTES.saturating_sub(free) as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        inner.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
}

struct SubscriberGuard(Shared);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.metrics.subscribers.dec();
    }
}

fn sse(kind: EventKind, ver: u64, data: &str) -> Bytes {
    crate::sse_frame(kind, ver, data)
}

/// SSE: resume from `Last-Event-ID` (or `?since=N`) by replaying missed
/// deltas in order, or a snapshot when they are gone; then a checkpoint;
/// then live deltas and a checkpoint every heartbeat. A subscriber that
/// falls behind the live buffer is sent a snapshot instead.
async fn events(
    State(inner): State<Shared>,
    axum::Extension(stop): axum::Extension<watch::Receiver<bool>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
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
    // Take the slot first and give it back when over: a check-then-increment
    // would let a burst of concurrent connections past the limit.
    let taken = inner.metrics.subscribers.inc();
    let guard = SubscriberGuard(inner.clone());
    if usize::try_from(taken).unwrap_or(usize::MAX) >= inner.config.max_subscribers {
        drop(guard);
        inner
            .metrics
            .errors
            .get_or_create(&Code {
                code: ErrorCode::TooManySubscribers.as_str().into(),
            })
            .inc();
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManySubscribers,
            "the registry is at its subscriber limit: retry later or poll /v1/srl/deltas",
        ));
    }
    // Subscribe before reading the version, so nothing committed in between is missed.
    let live = inner.events.subscribe();
    let (tx, rx) = mpsc::channel::<Queued>(64);
    tokio::spawn(feed(inner, guard, live, tx, since, stop));
    // An event's share of the budget is returned when hyper takes it.
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|(frame, _share)| (Ok::<_, Infallible>(frame), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// An event's hold on memory while it waits for hyper to take it: a share
/// of its subscriber's own queue and, for bytes copied for this subscriber
/// alone (replayed deltas, a snapshot), of the registry-wide budget. Live
/// events are shared frames ([`crate::Event`]): a subscriber holds a
/// reference, so they take no share of the budget, and clients that do not
/// read cannot hold back pushes to those that do.
struct Share {
    _global: Option<OwnedSemaphorePermit>,
    _own: OwnedSemaphorePermit,
}

/// An event queued for a subscriber (its SSE bytes), with its share.
type Queued = (Bytes, Share);

/// Where one subscriber's events go.
struct Sink {
    inner: Shared,
    tx: mpsc::Sender<Queued>,
    /// Bytes this subscriber may have queued: a client that does not read
    /// holds at most this much (plus one page being sent) of the budget.
    own: Arc<Semaphore>,
}

impl Sink {
    /// Waits for `n` permits of `sem` (at most `cap`), or gives up when the
    /// subscriber leaves.
    async fn permits(
        &self,
        sem: &Arc<Semaphore>,
        n: usize,
        cap: usize,
    ) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n.clamp(1, cap)).unwrap_or(u32::MAX);
        tokio::select! {
            p = sem.clone().acquire_many_owned(n) => p.ok(),
            _ = self.tx.closed() => None,
        }
    }

    /// Queues a frame shared with other subscribers (a live delta or
    /// checkpoint), charged to this subscriber's own queue only.
    async fn send_shared(&self, frame: Bytes) -> bool {
        let Some(own) = self
            .permits(&self.own, frame.len(), SUBSCRIBER_QUEUE_BYTES)
            .await
        else {
            return false;
        };
        let share = Share {
            _global: None,
            _own: own,
        };
        self.tx.send((frame, share)).await.is_ok()
    }

    /// Queues `event` of `bytes`, copied for this subscriber alone, charged
    /// to `global` when the caller holds that share already (a replay
    /// page), else to a new one.
    async fn send(&self, event: Bytes, bytes: usize, global: Option<OwnedSemaphorePermit>) -> bool {
        let Some(own) = self.permits(&self.own, bytes, SUBSCRIBER_QUEUE_BYTES).await else {
            return false;
        };
        let global = match global {
            Some(g) => g,
            None => match self
                .permits(&self.inner.budget, bytes, REPLAY_BUDGET_BYTES)
                .await
            {
                Some(g) => g,
                None => return false,
            },
        };
        let share = Share {
            _global: Some(global),
            _own: own,
        };
        self.tx.send((event, share)).await.is_ok()
    }
}

/// Sends the current snapshot, or, when it is too large to copy for one
/// subscriber, the current checkpoint (the subscriber sees the gap and
/// pulls). Returns the version the subscriber was brought to.
async fn send_snapshot(sink: &Sink) -> Option<u64> {
    let snap = sink.inner.snapshot().await;
    if let Some(snap) = snap.filter(|s| s.jws.len() <= MAX_SSE_SNAPSHOT_BYTES) {
        let text = std::str::from_utf8(&snap.jws).ok()?;
        let event = sse(EventKind::Snapshot, snap.ver, text);
        return sink
            .send(event, snap.jws.len(), None)
            .await
            .then_some(snap.ver);
    }
    let (ver, jws) = sink.inner.checkpoint();
    sink.send_shared(sse(EventKind::Checkpoint, ver, &jws))
        .await
        .then_some(ver)
}

/// How a replay ended.
enum Replay {
    /// Every delta was queued.
    Done,
    /// The subscriber is gone.
    Closed,
    /// Too far behind, not retained or unreadable: send a snapshot.
    Snapshot,
}

/// Reads deltas `since+1 ..= upto`, at most `max_bytes` (a single larger
/// delta comes alone), holding a share of the budget for what was read.
/// `None` when the budget was not granted: the subscriber `tx` left, or
/// `deadline` passed; `Some(Err)` when the store failed.
async fn budgeted_page(
    inner: &Shared,
    since: u64,
    upto: u64,
    max_count: usize,
    max_bytes: usize,
    tx: Option<&mpsc::Sender<Queued>>,
    deadline: Option<tokio::time::Instant>,
) -> Option<Result<(Option<Vec<(u64, String)>>, OwnedSemaphorePermit), StoreError>> {
    let mut want = max_bytes.clamp(1, REPLAY_BUDGET_BYTES);
    loop {
        let n = u32::try_from(want).unwrap_or(u32::MAX);
        let mut permit = tokio::select! {
            p = inner.budget.clone().acquire_many_owned(n) => p.ok()?,
            _ = async {
                match tx {
                    Some(tx) => tx.closed().await,
                    None => std::future::pending().await,
                }
            } => return None,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return None,
        };
        let page = match inner.store.deltas(since, upto, max_count, want).await {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let bytes: usize = page
            .iter()
            .flatten()
            .map(|(_, j)| j.len())
            .sum::<usize>()
            .max(1);
        if bytes <= want || want == REPLAY_BUDGET_BYTES {
            // Give back what the page did not use.
            if bytes < want {
                drop(permit.split(want - bytes));
            }
            return Some(Ok((page, permit)));
        }
        // One delta larger than the page: read it again under a share its size.
        drop((page, permit));
        want = bytes.min(REPLAY_BUDGET_BYTES);
    }
}

/// Queues the deltas after `since` up to `upto` page by page, each page
/// read only when the subscriber has taken most of the last, and at most
/// [`MAX_REPLAY_BYTES`] in all.
async fn replay(sink: &Sink, since: u64, upto: u64) -> Replay {
    if upto - since > MAX_REPLAY {
        return Replay::Snapshot;
    }
    let mut next = since;
    let mut total = 0usize;
    while next < upto {
        let page = budgeted_page(
            &sink.inner,
            next,
            upto,
            256,
            REPLAY_PAGE_BYTES,
            Some(&sink.tx),
            None,
        )
        .await;
        let (list, mut permit) = match page {
            None => return Replay::Closed,
            Some(Ok((Some(list), permit))) if !list.is_empty() => (list, permit),
            Some(Ok(_)) => return Replay::Snapshot,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read deltas to replay; sending a snapshot");
                return Replay::Snapshot;
            }
        };
        total = total.saturating_add(list.iter().map(|(_, j)| j.len()).sum());
        if total > MAX_REPLAY_BYTES {
            return Replay::Snapshot;
        }
        for (ver, jws) in list {
            // Each event takes its part of the page's share along.
            let part = jws.len().clamp(1, permit.num_permits().max(1));
            let global = permit.split(part);
            if !sink
                .send(sse(EventKind::Delta, ver, &jws), jws.len(), global)
                .await
            {
                return Replay::Closed;
            }
            next = ver;
        }
    }
    Replay::Done
}

async fn feed(
    inner: Shared,
    _guard: SubscriberGuard,
    mut live: broadcast::Receiver<Event>,
    tx: mpsc::Sender<Queued>,
    since: Option<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let sink = Sink {
        inner,
        tx,
        own: Arc::new(Semaphore::new(SUBSCRIBER_QUEUE_BYTES)),
    };
    let current = sink.inner.read_current().ver();
    let mut sent = current;
    if let Some(since) = since.filter(|s| *s < current) {
        match replay(&sink, since, current).await {
            Replay::Done => {}
            Replay::Closed => return,
            Replay::Snapshot => match send_snapshot(&sink).await {
                Some(v) => sent = sent.max(v),
                None => return,
            },
        }
    }
    // The first checkpoint (a few hundred bytes) takes no share of the
    // budget either: a subscriber at the head always hears from the registry.
    let (ver, jws) = sink.inner.checkpoint();
    if ver >= sent
        && !sink
            .send_shared(sse(EventKind::Checkpoint, ver, &jws))
            .await
    {
        return;
    }
    loop {
        let event = tokio::select! {
            e = live.recv() => e,
            _ = stop.changed() => return,
            _ = sink.tx.closed() => return,
        };
        let ok = match event {
            Ok(Event::Delta { ver, frame, .. }) if ver > sent => {
                sent = ver;
                sink.send_shared(frame).await
            }
            Ok(Event::Checkpoint { ver, frame, .. }) if ver >= sent => {
                sink.send_shared(frame).await
            }
            Ok(_) => true,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                sink.inner.metrics.lagged_subscribers.inc();
                tracing::warn!("slow SSE subscriber fell behind; sending a snapshot");
                match send_snapshot(&sink).await {
                    Some(v) => {
                        sent = sent.max(v);
                        true
                    }
                    None => false,
                }
            }
            Err(broadcast::error::RecvError::Closed) => false,
        };
        if !ok {
            return;
        }
    }
}
