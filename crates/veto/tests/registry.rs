//! End-to-end tests of the registry: the real `veto serve` binary on
//! loopback, driven over HTTP, its output checked with veto-core's
//! verifiers (DESIGN 3, 5, 6).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veto_core::wire::{path, DeltasPage, ErrorCode, EventKind};
use veto_core::{
    Applied, CheckConfig, Checker, Decision, DenyReason, Digest, EntryKind, KeySet, ParsedChain,
    PublicKey, SrlState, SrlVerifier, VerifiedDelta,
};
use veto_testkit::{now, veto_command, EventStream, Registry};

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn warrant(id: &str) -> Value {
    json!({"kind": "warrant", "id": id})
}

/// Asserts an error answer: the status, `{"error": code, "message": text}`
/// with nothing else, and a message naming `mentions`.
fn assert_api_error(
    what: &str,
    status: u16,
    body: &Value,
    want_status: u16,
    code: ErrorCode,
    mentions: &str,
) {
    assert_eq!(status, want_status, "{what}: status (body {body})");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: error body is not a JSON object: {body}"));
    assert_eq!(obj.len(), 2, "{what}: error body has other members: {body}");
    assert_eq!(
        body["error"],
        code.as_str(),
        "{what}: error code (body {body})"
    );
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message: {body}"));
    assert!(
        message.to_lowercase().contains(&mentions.to_lowercase()),
        "{what}: message `{message}` does not mention `{mentions}`"
    );
}

/// Verifies deltas and applies them in order on top of `state`; each must
/// advance it by exactly one version.
fn apply_all(
    verifier: &SrlVerifier,
    state: &mut SrlState,
    deltas: &[String],
) -> Vec<VerifiedDelta> {
    deltas
        .iter()
        .map(|jws| {
            let d = verifier
                .delta(jws, now())
                .unwrap_or_else(|e| panic!("delta does not verify: {e}"));
            let from = state.ver();
            let applied = state.apply_delta(&d).unwrap_or_else(|e| {
                panic!("delta {} does not apply on {from}: {e}", d.payload.ver)
            });
            assert_eq!(
                applied,
                Applied::Advanced { from, to: from + 1 },
                "delta {}",
                d.payload.ver
            );
            d
        })
        .collect()
}

fn added_ids(d: &VerifiedDelta) -> Vec<(EntryKind, String)> {
    d.payload
        .add
        .iter()
        .map(|e| (e.kind, e.id.clone()))
        .collect()
}

fn listed(state_set: &veto_core::RevocationSet, kind: EntryKind, id: &str) -> Option<u64> {
    state_set.get(kind, &Digest::of(kind, id))
}

// 1. Revoking: single, batch, idempotent, agent cutoffs, audit log.
#[tokio::test]
async fn revocations_are_versioned_idempotent_and_audited() {
    let reg = Registry::start(&[]);
    let verifier = reg.verifier();
    assert_eq!(reg.version().await, 0);

    // One entry: version 1.
    let (s, body) = reg
        .revoke(
            json!([{"kind": "warrant", "id": "w-1", "reason": "superseded", "note": "rotated"}]),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["entries"],
        json!([{"kind": "warrant", "id": "w-1", "version": 1, "created": true}])
    );

    // A batch is one version, with every entry in its delta.
    let batch = json!([
        warrant("w-2"),
        {"kind": "key", "id": "k-1", "reason": "key_compromise"},
        {"kind": "agent", "id": "a-1", "before": 1000, "reason": "privilege_withdrawn"},
    ]);
    let (s, body) = reg.revoke(batch).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["version"], 2);
    assert!(
        body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["version"] == 2 && e["created"] == true),
        "{body}"
    );
    assert_eq!(reg.version().await, 2);
    let deltas = reg.all_deltas(1).await;
    assert_eq!(deltas.len(), 1, "a batch must be one version");
    let d2 = verifier.delta(&deltas[0], now()).unwrap();
    assert_eq!(d2.payload.ver, 2);
    assert_eq!(
        added_ids(&d2),
        vec![
            (EntryKind::Warrant, "w-2".into()),
            (EntryKind::Key, "k-1".into()),
            (EntryKind::Agent, "a-1".into())
        ]
    );
    assert_eq!(d2.payload.add[2].before, Some(1000));

    // Re-revoking: 200 with the original version, no new version.
    let (s, body) = reg.revoke(json!([warrant("w-1")])).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["entries"],
        json!([{"kind": "warrant", "id": "w-1", "version": 1, "created": false}])
    );
    let (s, body) = reg
        .revoke(
            json!([warrant("w-2"), warrant("w-1"), {"kind": "agent", "id": "a-1", "before": 1000}]),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["version"], 2, "the newest of the original versions");
    let versions: Vec<u64> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![2, 1, 2]);
    // An earlier cutoff is covered by the later one already revoked.
    let (s, body) = reg
        .revoke(json!([{"kind": "agent", "id": "a-1", "before": 500}]))
        .await;
    assert_eq!((s, &body["version"]), (200, &json!(2)), "{body}");
    assert_eq!(reg.version().await, 2);
    assert!(
        reg.all_deltas(2).await.is_empty(),
        "idempotent re-revokes must not create deltas"
    );

    // A later cutoff for an agent is a new revocation.
    let (s, body) = reg
        .revoke(json!([{"kind": "agent", "id": "a-1", "before": 2000}]))
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["version"], 3);
    let d3 = verifier.delta(&reg.all_deltas(2).await[0], now()).unwrap();
    assert_eq!(d3.payload.add.len(), 1);
    assert_eq!(d3.payload.add[0].before, Some(2000));
    let snap = reg.snapshot().await;
    assert_eq!(snap.ver, 3);
    assert_eq!(listed(&snap.set, EntryKind::Agent, "a-1"), Some(2000));
    assert_eq!(listed(&snap.set, EntryKind::Key, "k-1"), Some(0));
    assert_eq!(listed(&snap.set, EntryKind::Warrant, "w-1"), Some(0));
    assert_eq!(
        listed(&snap.set, EntryKind::Warrant, "k-1"),
        None,
        "kinds are separate"
    );

    // Mixed: the new entry gets a new version, the old keeps its own.
    let (s, body) = reg.revoke(json!([warrant("w-1"), warrant("w-3")])).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["version"], 4);
    assert_eq!(
        body["entries"],
        json!([{"kind": "warrant", "id": "w-1", "version": 1, "created": false}, {"kind": "warrant", "id": "w-3", "version": 4, "created": true}])
    );
    let d4 = verifier.delta(&reg.all_deltas(3).await[0], now()).unwrap();
    assert_eq!(
        added_ids(&d4),
        vec![(EntryKind::Warrant, "w-3".into())],
        "an old entry is not republished"
    );

    // Audit log: filters.
    let (s, body) = reg
        .admin_get(&format!("{}?kind=warrant&id=w-1", path::REVOCATIONS))
        .await;
    assert_eq!(s, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    assert!(items.len() >= 3, "{body}");
    assert!(
        items
            .iter()
            .all(|i| i["kind"] == "warrant" && i["id"] == "w-1"),
        "{body}"
    );
    assert_eq!(items[0]["action"], "revoke");
    assert_eq!(items[0]["version"], 1);
    assert_eq!(items[0]["reason"], "superseded");
    assert_eq!(items[0]["note"], "rotated");
    assert!(
        items[1..]
            .iter()
            .all(|i| i["action"] != "revoke" && i["version"] == 1),
        "re-revokes name the original version: {body}"
    );
    let (_, body) = reg
        .admin_get(&format!("{}?kind=agent", path::REVOCATIONS))
        .await;
    let agents = body["items"].as_array().unwrap();
    assert!(
        agents
            .iter()
            .all(|i| i["kind"] == "agent" && i["id"] == "a-1"),
        "{body}"
    );
    let revokes: Vec<(u64, u64)> = agents
        .iter()
        .filter(|i| i["action"] == "revoke")
        .map(|i| {
            (
                i["version"].as_u64().unwrap(),
                i["before"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(revokes, vec![(2, 1000), (3, 2000)]);
    let (_, body) = reg
        .admin_get(&format!("{}?kind=key&id=k-1", path::REVOCATIONS))
        .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["items"][0]["reason"], "key_compromise");
    let (_, body) = reg
        .admin_get(&format!("{}?id=nobody", path::REVOCATIONS))
        .await;
    assert_eq!(body, json!({"items": [], "next": null}));

    // Audit log: pagination with `limit`, `after` and `next` walks every record once, in order.
    let all = reg.audit_all("").await;
    assert!(all.len() >= 10, "{all:?}");
    let mut paged = Vec::new();
    let mut after = None;
    for _ in 0..all.len() + 1 {
        let cursor = after
            .map(|a: i64| format!("&after={a}"))
            .unwrap_or_default();
        let (s, body) = reg
            .admin_get(&format!("{}?limit=3{cursor}", path::REVOCATIONS))
            .await;
        assert_eq!(s, 200, "{body}");
        let page = body["items"].as_array().unwrap().clone();
        assert!(page.len() <= 3);
        paged.extend(page.iter().cloned());
        match body["next"].as_i64() {
            Some(n) => {
                assert_eq!(page.len(), 3, "a short page is the last: {body}");
                assert_eq!(
                    Some(n),
                    page.last().unwrap()["seq"].as_i64(),
                    "`next` is the last `seq`"
                );
                after = Some(n);
            }
            None => break,
        }
    }
    assert_eq!(paged, all);
    let seqs: Vec<i64> = all.iter().map(|i| i["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The audit log is admin-only, and its parameters are checked.
    let (s, body) = reg.get(path::REVOCATIONS).await;
    assert_api_error(
        "audit without token",
        s,
        &body,
        401,
        ErrorCode::Unauthorized,
        "token",
    );
    let (s, body) = reg
        .admin_get(&format!("{}?limit=0", path::REVOCATIONS))
        .await;
    assert_api_error("limit 0", s, &body, 400, ErrorCode::InvalidLimit, "limit");
    let (s, body) = reg
        .admin_get(&format!("{}?limit=1001", path::REVOCATIONS))
        .await;
    assert_api_error(
        "limit 1001",
        s,
        &body,
        400,
        ErrorCode::InvalidLimit,
        "limit",
    );
    let (s, body) = reg
        .admin_get(&format!("{}?kind=user", path::REVOCATIONS))
        .await;
    assert_api_error(
        "audit kind",
        s,
        &body,
        400,
        ErrorCode::UnknownKind,
        "`user`",
    );

    // Repeats in one batch fold into one entry, and never narrow it: the
    // latest agent cutoff asked for is the one published.
    let (s, body) = reg
        .revoke(json!([
            {"kind": "agent", "id": "a-2", "before": 100},
            warrant("w-5"),
            {"kind": "agent", "id": "a-2", "before": 300},
            warrant("w-5"),
            {"kind": "agent", "id": "a-2", "before": 200},
        ]))
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(
        body["entries"],
        json!([{"kind": "agent", "id": "a-2", "version": 5, "created": true}, {"kind": "warrant", "id": "w-5", "version": 5, "created": true}])
    );
    let d5 = verifier.delta(&reg.all_deltas(4).await[0], now()).unwrap();
    assert_eq!(
        added_ids(&d5),
        vec![
            (EntryKind::Agent, "a-2".into()),
            (EntryKind::Warrant, "w-5".into())
        ]
    );
    assert_eq!(d5.payload.add[0].before, Some(300));
    assert_eq!(
        listed(&reg.snapshot().await.set, EntryKind::Agent, "a-2"),
        Some(300)
    );
    let (s, body) = reg
        .revoke(json!([{"kind": "agent", "id": "a-2", "before": 300}]))
        .await;
    assert_eq!((s, body["version"].as_u64()), (200, Some(5)), "{body}");
}

// 2. Bad input: a 4xx naming the problem, and nothing written.
#[tokio::test]
async fn bad_input_is_refused_by_name_and_writes_nothing() {
    let reg = Registry::start(&[]);
    let (s, body) = reg.revoke(json!([warrant("before-the-storm")])).await;
    assert_eq!(s, 201, "{body}");
    let version = reg.version().await;
    let audit = reg.audit_all("").await.len();
    let token = reg.token();

    let entries = |list: Value| json!({"entries": list}).to_string();
    let many: Vec<Value> = (0..10_001).map(|i| warrant(&format!("b{i}"))).collect();
    let huge = entries(json!([{"kind": "warrant", "id": "big", "note": "x".repeat(1 << 20)}]));
    assert!(huge.len() > 1 << 20);
    let long_id = "i".repeat(257);
    // (what, body, token, status, code, the message must mention)
    type Case<'a> = (&'a str, String, Option<&'a str>, u16, ErrorCode, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", r#"{"entries": [{"kind": "warrant", "id": "m"#.into(), Some(&token), 400, ErrorCode::InvalidJson, "json"),
        ("not JSON at all", "revoke everything".into(), Some(&token), 400, ErrorCode::InvalidJson, "json"),
        ("unknown kind", entries(json!([{"kind": "user", "id": "u"}])), Some(&token), 400, ErrorCode::UnknownKind, "`user`"),
        ("unknown reason", entries(json!([{"kind": "warrant", "id": "r", "reason": "bored"}])), Some(&token), 400, ErrorCode::UnknownReason, "`bored`"),
        ("empty id", entries(json!([{"kind": "warrant", "id": ""}])), Some(&token), 400, ErrorCode::InvalidId, "empty"),
        ("id of 257 bytes", entries(json!([{"kind": "warrant", "id": long_id}])), Some(&token), 400, ErrorCode::InvalidId, "257"),
        ("10,001 entries", entries(Value::Array(many)), Some(&token), 400, ErrorCode::BatchTooLarge, "10001"),
        ("body over 1 MiB", huge, Some(&token), 413, ErrorCode::BodyTooLarge, "limit"),
        ("missing token", entries(json!([warrant("t")])), None, 401, ErrorCode::Unauthorized, "missing"),
        ("wrong token", entries(json!([warrant("t")])), Some("not-the-token"), 401, ErrorCode::Unauthorized, "wrong"),
        ("agent without before", entries(json!([{"kind": "agent", "id": "a"}])), Some(&token), 400, ErrorCode::MissingBefore, "`before`"),
        ("before on a warrant", entries(json!([{"kind": "warrant", "id": "w", "before": 5}])), Some(&token), 400, ErrorCode::UnexpectedBefore, "`before`"),
        ("before on a key", entries(json!([{"kind": "key", "id": "k", "before": 5}])), Some(&token), 400, ErrorCode::UnexpectedBefore, "`before`"),
        (
            "duplicate key in an entry",
            r#"{"entries": [{"kind": "warrant", "id": "d1", "id": "d2"}]}"#.into(),
            Some(&token),
            400,
            ErrorCode::InvalidJson,
            "duplicate field `id`",
        ),
        (
            "duplicate top-level key",
            r#"{"entries": [{"kind": "warrant", "id": "d3"}], "entries": [{"kind": "warrant", "id": "d4"}]}"#.into(),
            Some(&token),
            400,
            ErrorCode::InvalidJson,
            "duplicate field `entries`",
        ),
        (
            "unknown entry field",
            entries(json!([{"kind": "warrant", "id": "f", "colour": "red"}])),
            Some(&token),
            400,
            ErrorCode::InvalidJson,
            "unknown field `colour`",
        ),
        (
            "unknown top-level field",
            json!({"entries": [warrant("g")], "dry_run": true}).to_string(),
            Some(&token),
            400,
            ErrorCode::InvalidJson,
            "unknown field `dry_run`",
        ),
        ("no entries", entries(json!([])), Some(&token), 400, ErrorCode::NoEntries, "empty"),
        ("entries missing", "{}".into(), Some(&token), 400, ErrorCode::InvalidJson, "missing field `entries`"),
        ("id of the wrong type", entries(json!([{"kind": "warrant", "id": 7}])), Some(&token), 400, ErrorCode::InvalidJson, "invalid type"),
        (
            "expires_at in the past",
            entries(json!([{"kind": "warrant", "id": "p", "expires_at": 1000}])),
            Some(&token),
            400,
            ErrorCode::InvalidExpiresAt,
            "1000",
        ),
        (
            "one bad entry after good ones",
            entries(json!([warrant("ok-1"), warrant("ok-2"), {"kind": "warrant", "id": "bad", "reason": "whim"}])),
            Some(&token),
            400,
            ErrorCode::UnknownReason,
            "entry 2",
        ),
    ];
    for (what, body, tok, status, code, mentions) in cases {
        let mut req = reg
            .http()
            .post(reg.at(path::REVOCATIONS))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = tok {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(ctype.as_deref(), Some("application/json"), "{what}");
        let got_status = resp.status().as_u16();
        let got: Value = serde_json::from_str(&resp.text().await.unwrap())
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert_api_error(what, got_status, &got, status, code, mentions);
        assert_eq!(reg.version().await, version, "{what}: the version moved");
    }

    // Nothing was written: no version, no delta, no audit record, no entry.
    assert_eq!(reg.version().await, version);
    assert!(reg.all_deltas(version).await.is_empty());
    assert_eq!(
        reg.audit_all("").await.len(),
        audit,
        "a refused request left an audit record"
    );
    let snap = reg.snapshot().await;
    assert_eq!(snap.set.len(), 1);
    for id in [
        "ok-1", "ok-2", "d1", "d2", "d3", "d4", "f", "g", "t", "w", "big",
    ] {
        assert_eq!(
            listed(&snap.set, EntryKind::Warrant, id),
            None,
            "`{id}` was written"
        );
    }
}

// 3. Public API: snapshot, ETag, gzip, deltas, checkpoint, JWKS, keys, warrants.
#[tokio::test]
async fn public_api_serves_verifiable_state_and_keys() {
    let reg = Registry::start(&[]);
    let verifier = reg.verifier();
    reg.revoke(json!([warrant("p-1")])).await;
    reg.revoke(json!([warrant("p-2"), {"kind": "agent", "id": "p-agent", "before": 42}]))
        .await;
    reg.revoke(json!([{"kind": "key", "id": "p-key"}])).await;
    assert_eq!(reg.version().await, 3);

    // Snapshot: verifies, ETag is the version, conditional GET.
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    let resp = plain.get(reg.at(path::SRL)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["etag"], "\"3\"");
    assert_eq!(
        resp.headers()["content-type"],
        veto_core::wire::content_type::SNAPSHOT
    );
    assert!(resp.headers().get("content-encoding").is_none());
    // The binary container: the JWS, `\n`, the table bytes.
    let body = resp.bytes().await.unwrap();
    let snap = verifier.snapshot(&body, now()).unwrap();
    let split = veto_core::Snapshot::from_container(&body).unwrap();
    assert_eq!(split.tables().len(), body.len() - split.jws().len() - 1);
    assert_eq!(split.tables().len() % 4, 0, "4 records of 12 or 20 bytes");
    assert!(
        !split.jws().contains('\n') && body[split.jws().len()] == b'\n',
        "one `\\n` after the JWS"
    );
    assert_eq!(snap.ver, 3);
    assert_eq!(snap.set.len(), 4);
    let resp = plain
        .get(reg.at(path::SRL))
        .header("if-none-match", "\"3\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 304);
    assert_eq!(resp.headers()["etag"], "\"3\"");
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = plain
        .get(reg.at(path::SRL))
        .header("if-none-match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "a stale ETag gets the body");

    // gzip on request, and the same document inside.
    let resp = plain
        .get(reg.at(path::SRL))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let raw = resp.bytes().await.unwrap();
    assert_eq!(raw[..2], [0x1f, 0x8b], "gzip magic");
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, body, "the same document inside");
    let again = verifier.snapshot(&unzipped, now()).unwrap();
    assert_eq!(
        (again.ver, again.head, &again.set),
        (snap.ver, snap.head, &snap.set)
    );

    // Deltas: signed, in order, chained; applied from nothing they give the snapshot.
    let (s, body) = reg.deltas_since(0).await;
    assert_eq!(s, 200, "{body}");
    let DeltasPage { deltas } = serde_json::from_value(body).unwrap();
    assert_eq!(deltas.len(), 3);
    let mut state = SrlState::new();
    let verified = apply_all(&verifier, &mut state, &deltas);
    assert_eq!(
        verified.iter().map(|d| d.payload.ver).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!((state.ver(), state.head()), (snap.ver, snap.head));
    assert_eq!(state.set(), &snap.set);
    let (_, body) = reg.deltas_since(1).await;
    let DeltasPage { deltas: tail } = serde_json::from_value(body).unwrap();
    assert_eq!(tail, deltas[1..]);
    let (_, body) = reg.deltas_since(3).await;
    assert_eq!(body, serde_json::to_value(DeltasPage::default()).unwrap());
    let (s, body) = reg.get(&format!("{}?since=abc", path::SRL_DELTAS)).await;
    assert_api_error("since=abc", s, &body, 400, ErrorCode::InvalidSince, "since");
    let (s, body) = reg.get(path::SRL_DELTAS).await;
    assert_api_error("no since", s, &body, 400, ErrorCode::MissingSince, "since");
    // A delta must not verify as anything else.
    assert!(verifier.checkpoint(&deltas[0], now()).is_err());
    assert!(verifier.snapshot(&deltas[0], now()).is_err());

    // Checkpoint: verifies and attests the head.
    let resp = reg
        .http()
        .get(reg.at(path::SRL_CHECKPOINT))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/jose");
    let cp = verifier
        .checkpoint(&resp.text().await.unwrap(), now())
        .unwrap();
    assert_eq!((cp.payload.ver, cp.payload.head), (snap.ver, snap.head));
    assert!(cp.payload.exp > now());
    assert_eq!(state.apply_checkpoint(&cp), Ok(Applied::Refreshed));

    // The authority document names the pinned key.
    let (_, body) = reg.get(path::AUTHORITY).await;
    assert_eq!(body["iss"], "veto");
    assert_eq!(body["keys"][0]["kid"], reg.authority_key().kid());

    // JWKS and a minted warrant that verifies against it.
    let jwks = fetch_jwks(&reg).await;
    assert_eq!(jwks.keys().len(), 1);
    let first_kid = jwks.keys()[0].kid().to_owned();
    assert_ne!(
        first_kid,
        reg.authority_key().kid(),
        "issuer and list-signing keys are separate"
    );
    let (s, body) = reg
        .admin_post(
            path::WARRANTS,
            &json!({"agent": "bot-1", "act": ["files:read", "mail:*"], "ttl": 600, "holder_key": holder_jwk()}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let w1 = body["warrant"].as_str().unwrap().to_owned();
    let jti1 = body["jti"].as_str().unwrap().to_owned();
    let chain = ParsedChain::parse(&w1).unwrap();
    assert_eq!(chain.root().claims().jti, jti1);
    assert_eq!(chain.root().claims().sub, "bot-1");
    assert_eq!(body["exp"].as_u64(), Some(chain.root().claims().exp));
    assert_eq!(chain.root().kid(), Some(first_kid.as_str()));
    let mut state = SrlState::new();
    state.apply_snapshot(reg.snapshot().await).unwrap();
    let check = |keys: &KeySet, state: &SrlState, token: &str, action: &str| {
        let config = CheckConfig {
            issuer: Some("veto".into()),
            ..CheckConfig::default()
        };
        Checker::new(keys.clone(), config).check_token(state, token, action, now())
    };
    assert_eq!(
        check(&jwks, &state, &w1, "files:read"),
        Decision::Allow { stale: false }
    );
    assert_eq!(
        check(&jwks, &state, &w1, "mail:send"),
        Decision::Allow { stale: false }
    );
    assert_eq!(
        check(&jwks, &state, &w1, "files:write").reason(),
        Some(DenyReason::ActionDenied)
    );
    assert_eq!(
        check(&KeySet::default(), &state, &w1, "files:read").reason(),
        Some(DenyReason::UntrustedIssuer)
    );
    let (s, body) = reg
        .admin_post(
            path::WARRANTS,
            &json!({"agent": "bot-1", "act": [], "ttl": 600, "holder_key": holder_jwk()}),
        )
        .await;
    assert_api_error(
        "mint without act",
        s,
        &body,
        400,
        ErrorCode::InvalidAct,
        "act",
    );
    let (s, body) = reg
        .send(
            reg.http()
                .post(reg.at(path::WARRANTS))
                .json(&json!({"agent": "x", "act": ["a"], "ttl": 1, "holder_key": holder_jwk()})),
        )
        .await;
    assert_api_error(
        "mint without token",
        s,
        &body,
        401,
        ErrorCode::Unauthorized,
        "token",
    );

    // Revoking the warrant's jti denies it.
    let (s, _) = reg.revoke(json!([warrant(&jti1)])).await;
    assert_eq!(s, 201);
    state.apply_snapshot(reg.snapshot().await).unwrap();
    assert_eq!(
        check(&jwks, &state, &w1, "files:read").reason(),
        Some(DenyReason::Revoked)
    );

    // `veto keys rotate` adds a key; new warrants use it; old ones stay valid.
    let out = veto_command(reg.dir().path())
        .args(["keys", "rotate", "--registry", &reg.url, "--token-file"])
        .arg(reg.token_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys rotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second_kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let jwks = fetch_jwks(&reg).await;
    let kids: Vec<&str> = jwks.keys().iter().map(PublicKey::kid).collect();
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(
        kids.contains(&first_kid.as_str()) && kids.contains(&second_kid.as_str()),
        "{kids:?}"
    );
    let (_, body) = reg
        .admin_post(
            path::WARRANTS,
            &json!({"agent": "bot-2", "act": ["*"], "ttl": 60, "holder_key": holder_jwk()}),
        )
        .await;
    let w2 = body["warrant"].as_str().unwrap().to_owned();
    assert_eq!(
        ParsedChain::parse(&w2).unwrap().root().kid(),
        Some(second_kid.as_str()),
        "new warrants use the new key"
    );
    let (_, body) = reg
        .admin_post(
            path::WARRANTS,
            &json!({"agent": "bot-3", "act": ["*"], "ttl": 60, "holder_key": holder_jwk()}),
        )
        .await;
    let w3 = body["warrant"].as_str().unwrap().to_owned();
    assert_eq!(
        check(&jwks, &state, &w2, "anything"),
        Decision::Allow { stale: false }
    );

    // Retiring the first key takes it out of the JWKS.
    let out = veto_command(reg.dir().path())
        .args([
            "keys",
            "retire",
            &first_kid,
            "--registry",
            &reg.url,
            "--token-file",
        ])
        .arg(reg.token_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys retire: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks = fetch_jwks(&reg).await;
    assert_eq!(
        jwks.keys().iter().map(PublicKey::kid).collect::<Vec<_>>(),
        vec![second_kid.as_str()]
    );
    let (s, body) = reg
        .send(
            reg.http()
                .delete(reg.at(&format!("{}/{first_kid}", path::ISSUER_KEYS)))
                .bearer_auth(reg.token()),
        )
        .await;
    assert_api_error(
        "retire twice",
        s,
        &body,
        404,
        ErrorCode::UnknownKey,
        &first_kid,
    );

    // Revoking the remaining issuer key (kind `key`, id = kid) takes it out too,
    // revokes what it signed, and leaves nothing to mint with.
    let (s, body) = reg
        .revoke(json!([{"kind": "key", "id": second_kid, "reason": "key_compromise"}]))
        .await;
    assert_eq!(s, 201, "{body}");
    let (_, body) = reg.get(path::JWKS).await;
    assert_eq!(body, json!({"keys": []}));
    state.apply_snapshot(reg.snapshot().await).unwrap();
    // `jwks` still holds the second key, as an authorizer that fetched it earlier would.
    assert_eq!(
        check(&jwks, &state, &w3, "anything").reason(),
        Some(DenyReason::Revoked)
    );
    let (s, body) = reg
        .admin_post(
            path::WARRANTS,
            &json!({"agent": "bot-4", "act": ["*"], "ttl": 60, "holder_key": holder_jwk()}),
        )
        .await;
    assert_api_error(
        "mint with no trusted key",
        s,
        &body,
        409,
        ErrorCode::NoIssuerKey,
        "rotate",
    );
}

async fn fetch_jwks(reg: &Registry) -> KeySet {
    let (s, body) = reg.get(path::JWKS).await;
    assert_eq!(s, 200, "{body}");
    let keys = body["keys"].as_array().unwrap();
    KeySet::new(keys.iter().map(|k| {
        let key = PublicKey::from_jwk(&serde_json::from_value(k.clone()).unwrap()).unwrap();
        assert_eq!(k["kid"], key.kid(), "the JWKS `kid` is the thumbprint");
        key
    }))
}

// 4. SSE: live deltas, resuming from Last-Event-ID, replay from 0.
#[tokio::test]
async fn events_push_deltas_and_resume_from_last_event_id() {
    let reg = Registry::start(&[]);
    let verifier = reg.verifier();
    let events = reg.at(path::SRL_EVENTS);
    let mut state = SrlState::new();

    // A new subscriber first gets a checkpoint of the current version.
    let mut stream = EventStream::open(&events, None).await;
    let first = stream.next(EVENT_TIMEOUT).await;
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        (EventKind::Checkpoint.as_str(), Some("0"))
    );
    let cp = verifier.checkpoint(&first.data, now()).unwrap();
    assert_eq!(
        (cp.payload.ver, cp.payload.head),
        (0, veto_core::Head::ZERO)
    );
    assert_eq!(state.apply_checkpoint(&cp), Ok(Applied::Refreshed));

    // A revocation is pushed as a signed delta whose event id is its version.
    let (s, _) = reg.revoke(json!([warrant("s-1")])).await;
    assert_eq!(s, 201);
    let e = stream
        .next_except(EventKind::Checkpoint, EVENT_TIMEOUT)
        .await;
    assert_eq!(
        (e.event.as_str(), e.id.as_deref()),
        (EventKind::Delta.as_str(), Some("1"))
    );
    let d = apply_all(&verifier, &mut state, std::slice::from_ref(&e.data));
    assert_eq!(added_ids(&d[0]), vec![(EntryKind::Warrant, "s-1".into())]);
    let last = stream_last_id(&stream);
    assert_eq!(last, "1");
    drop(stream);

    // Missed while disconnected: exactly those deltas, in order, then a checkpoint.
    reg.revoke(json!([warrant("s-2")])).await;
    reg.revoke(json!([warrant("s-3"), warrant("s-4")])).await;
    let mut stream = EventStream::open(&events, Some(&last)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(stream.next(EVENT_TIMEOUT).await);
    }
    let kinds: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|e| (e.event.as_str(), e.id.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Delta.as_str(), Some("2")),
            (EventKind::Delta.as_str(), Some("3")),
            (EventKind::Checkpoint.as_str(), Some("3"))
        ]
    );
    apply_all(
        &verifier,
        &mut state,
        &[got[0].data.clone(), got[1].data.clone()],
    );
    let cp = verifier.checkpoint(&got[2].data, now()).unwrap();
    assert_eq!(
        state.apply_checkpoint(&cp),
        Ok(Applied::Refreshed),
        "the checkpoint attests the replayed head"
    );

    // The resumed stream goes on live.
    reg.revoke(json!([warrant("s-5")])).await;
    let e = stream
        .next_except(EventKind::Checkpoint, EVENT_TIMEOUT)
        .await;
    assert_eq!(
        (e.event.as_str(), e.id.as_deref()),
        (EventKind::Delta.as_str(), Some("4"))
    );
    apply_all(&verifier, &mut state, std::slice::from_ref(&e.data));
    let snap = reg.snapshot().await;
    assert_eq!((state.ver(), state.head()), (snap.ver, snap.head));
    assert_eq!(state.set(), &snap.set);
    drop(stream);

    // `?since=0` replays everything.
    let mut stream = EventStream::open(&format!("{events}?since=0"), None).await;
    let mut replayed = SrlState::new();
    for ver in 1..=4 {
        let e = stream.next(EVENT_TIMEOUT).await;
        assert_eq!(
            (e.event.as_str(), e.id.clone()),
            (EventKind::Delta.as_str(), Some(ver.to_string()))
        );
        apply_all(&verifier, &mut replayed, &[e.data]);
    }
    let e = stream.next(EVENT_TIMEOUT).await;
    assert_eq!(
        (e.event.as_str(), e.id.as_deref()),
        (EventKind::Checkpoint.as_str(), Some("4"))
    );
    assert_eq!(replayed.set(), &snap.set);
    drop(stream);

    // Up to date: only a checkpoint. A bad Last-Event-ID is refused by name.
    let mut stream = EventStream::open(&events, Some("4")).await;
    let e = stream.next(EVENT_TIMEOUT).await;
    assert_eq!(
        (e.event.as_str(), e.id.as_deref()),
        (EventKind::Checkpoint.as_str(), Some("4"))
    );
    drop(stream);
    let (s, body) = reg
        .send(reg.http().get(&events).header("last-event-id", "four"))
        .await;
    assert_api_error(
        "bad Last-Event-ID",
        s,
        &body,
        400,
        ErrorCode::InvalidLastEventId,
        "Last-Event-ID",
    );
}

fn stream_last_id(stream: &EventStream) -> String {
    stream.last_id().expect("an event id was seen").to_owned()
}

// 5. Retention: deltas past the window are gone; subscribers get a snapshot.
#[tokio::test]
async fn deltas_past_retention_are_gone_and_sse_sends_a_snapshot() {
    let reg = Registry::start(&["--retention", "2", "--prune-interval", "1s"]);
    let verifier = reg.verifier();
    for i in 1..=5 {
        let (s, body) = reg.revoke(json!([warrant(&format!("r-{i}"))])).await;
        assert_eq!((s, body["version"].as_u64()), (201, Some(i)), "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (s, body) = loop {
        let (s, body) = reg.deltas_since(0).await;
        if s != 200 || Instant::now() > deadline {
            break (s, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_api_error("deltas since 0", s, &body, 410, ErrorCode::Gone, path::SRL);
    let (s, body) = reg.deltas_since(2).await;
    assert_api_error("deltas since 2", s, &body, 410, ErrorCode::Gone, path::SRL);

    // The last two are kept, and chain up to the snapshot's head.
    let snap = reg.snapshot().await;
    assert_eq!(snap.ver, 5);
    let kept = reg.all_deltas(3).await;
    let kept: Vec<VerifiedDelta> = kept
        .iter()
        .map(|j| verifier.delta(j, now()).unwrap())
        .collect();
    assert_eq!(
        kept.iter().map(|d| d.payload.ver).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(kept[1].payload.prev, kept[0].head);
    assert_eq!(kept[1].head, snap.head);

    // SSE from version 0: a snapshot, then a checkpoint.
    let mut stream = EventStream::open(&reg.at(path::SRL_EVENTS), Some("0")).await;
    let e = stream.next(EVENT_TIMEOUT).await;
    assert_eq!(
        (e.event.as_str(), e.id.as_deref()),
        (EventKind::Snapshot.as_str(), Some("5"))
    );
    // The text container: the JWS, `~`, base64url of the tables.
    let split = veto_core::Snapshot::from_container(e.data.as_bytes()).unwrap();
    assert!(
        e.data.starts_with(&format!("{}~", split.jws())),
        "{}",
        e.data
    );
    let mut state = SrlState::new();
    state
        .apply_snapshot(verifier.snapshot(&e.data, now()).unwrap())
        .unwrap();
    assert_eq!(state.set(), &snap.set);
    assert!((1..=5).all(|i| listed(state.set(), EntryKind::Warrant, &format!("r-{i}")).is_some()));
    let e = stream.next(EVENT_TIMEOUT).await;
    assert_eq!(
        (e.event.as_str(), e.id.as_deref()),
        (EventKind::Checkpoint.as_str(), Some("5"))
    );
    assert_eq!(
        state.apply_checkpoint(&verifier.checkpoint(&e.data, now()).unwrap()),
        Ok(Applied::Refreshed)
    );
    drop(stream);

    // From a retained version: the deltas, not a snapshot.
    let mut stream = EventStream::open(&reg.at(path::SRL_EVENTS), Some("3")).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = stream.next(EVENT_TIMEOUT).await;
        seen.push((e.event, e.id.unwrap_or_default()));
    }
    let seen: Vec<(&str, &str)> = seen.iter().map(|(k, i)| (k.as_str(), i.as_str())).collect();
    assert_eq!(
        seen,
        vec![
            (EventKind::Delta.as_str(), "4"),
            (EventKind::Delta.as_str(), "5"),
            (EventKind::Checkpoint.as_str(), "5")
        ]
    );
}

// 5b. Even `--retention 0` keeps the newest version: it is where the chain
// goes on from, before and after a restart.
#[tokio::test]
async fn retention_zero_keeps_the_chain_going() {
    let mut reg = Registry::start(&["--retention", "0", "--prune-interval", "1s"]);
    let verifier = reg.verifier();
    reg.revoke(json!([warrant("z-1")])).await;
    reg.revoke(json!([warrant("z-2")])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while reg.deltas_since(0).await.0 != 410 {
        assert!(Instant::now() < deadline, "old deltas were never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut state = SrlState::new();
    state.apply_snapshot(reg.snapshot().await).unwrap();
    assert_eq!(state.ver(), 2);
    let (s, body) = reg.revoke(json!([warrant("z-3")])).await;
    assert_eq!(
        (s, body["version"].as_u64()),
        (201, Some(3)),
        "the version went backwards: {body}"
    );
    apply_all(&verifier, &mut state, &reg.all_deltas(2).await);

    let dir = reg.dir();
    reg.kill();
    drop(reg);
    let reg = Registry::start_in(dir, &["--retention", "0", "--prune-interval", "1s"]);
    assert_eq!(reg.version().await, 3);
    let (s, body) = reg.revoke(json!([warrant("z-4")])).await;
    assert_eq!((s, body["version"].as_u64()), (201, Some(4)), "{body}");
    apply_all(&verifier, &mut state, &reg.all_deltas(3).await);
    assert_eq!(state.set(), &reg.snapshot().await.set);
}

// 6. Expiry: entries past `expires_at` leave the state in a new version.
#[tokio::test]
async fn expired_entries_are_pruned_in_a_new_version() {
    let reg = Registry::start(&["--prune-interval", "1s"]);
    let verifier = reg.verifier();
    let expires_at = now() + 2;
    let (s, body) = reg
        .revoke(json!([{"kind": "warrant", "id": "e-1", "expires_at": expires_at}]))
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, _) = reg.revoke(json!([warrant("e-keep")])).await;
    assert_eq!(s, 201);
    let snap = reg.snapshot().await;
    assert_eq!(snap.ver, 2);
    assert!(listed(&snap.set, EntryKind::Warrant, "e-1").is_some());

    let deadline = Instant::now() + Duration::from_secs(8);
    while reg.version().await < 3 {
        assert!(
            Instant::now() < deadline,
            "no pruning version within 8 s of expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reg.version().await, 3, "one pruning version");
    let deltas = reg.all_deltas(0).await;
    let mut state = SrlState::new();
    let verified = apply_all(&verifier, &mut state, &deltas);
    let d3 = &verified[2].payload;
    assert!(d3.add.is_empty());
    assert_eq!(
        d3.rm,
        vec![veto_core::Removed {
            kind: EntryKind::Warrant,
            id: "e-1".into()
        }]
    );
    assert!(
        d3.iat >= expires_at,
        "pruned at {} before expiry {expires_at}",
        d3.iat
    );
    let snap = reg.snapshot().await;
    assert_eq!((snap.ver, snap.head), (3, state.head()));
    assert_eq!(listed(&snap.set, EntryKind::Warrant, "e-1"), None);
    assert!(listed(&snap.set, EntryKind::Warrant, "e-keep").is_some());
    assert_eq!(state.set(), &snap.set);
    let audit = reg.audit_all("kind=warrant&id=e-1").await;
    let actions: Vec<(&str, u64)> = audit
        .iter()
        .map(|i| {
            (
                i["action"].as_str().unwrap(),
                i["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, vec![("revoke", 1), ("prune", 3)]);

    // Pruned is not revoked: revoking it again is a new version.
    let (s, body) = reg.revoke(json!([warrant("e-1")])).await;
    assert_eq!((s, body["version"].as_u64()), (201, Some(4)), "{body}");
}

// 7. kill -9 in a storm of revocations: nothing acknowledged is lost and
// the versions stay gap-free and chained.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_revocations_survive_kill_9() {
    const TOTAL: usize = 2000;
    const WORKERS: usize = 16;
    const KILL_AFTER: usize = 500;
    let mut reg = Registry::start(&[]);
    let url = reg.at(path::REVOCATIONS);
    let token = reg.token();
    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (next, acked, client, url, token) = (
            next.clone(),
            acked.clone(),
            client.clone(),
            url.clone(),
            token.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= TOTAL {
                    return;
                }
                let id = format!("kill9-{i:04}");
                let sent = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"entries": [warrant(&id)]}))
                    .send()
                    .await;
                // Any failure is the registry dying: that request was not acknowledged.
                let Ok(resp) = sent else { return };
                let status = resp.status().as_u16();
                let Ok(body) = resp.json::<Value>().await else {
                    return;
                };
                assert_eq!(status, 201, "{id}: {body}");
                let ver = body["version"].as_u64().unwrap();
                acked.lock().unwrap().push((id, ver));
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "the storm is too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    reg.kill();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KILL_AFTER && acked.len() < TOTAL,
        "{} acknowledged",
        acked.len()
    );

    let dir = reg.dir();
    drop(reg);
    let reg = Registry::start_in(dir, &[]);
    let verifier = reg.verifier();
    let v = reg.version().await;
    let max_acked = acked.iter().map(|(_, v)| *v).max().unwrap();
    assert!(
        v >= max_acked,
        "restarted at version {v}, below acknowledged version {max_acked}"
    );

    // Versions 1..=V, every delta signed and chained, 1000 per page at most.
    let (_, first_page) = reg.deltas_since(0).await;
    let DeltasPage { deltas: first_page } = serde_json::from_value(first_page).unwrap();
    assert_eq!(first_page.len(), (v as usize).min(1000));
    let deltas = reg.all_deltas(0).await;
    assert_eq!(deltas.len() as u64, v, "versions 1..={v} must all be there");
    let mut state = SrlState::new();
    let verified = apply_all(&verifier, &mut state, &deltas);
    let by_version: HashMap<u64, Vec<(EntryKind, String)>> = verified
        .iter()
        .map(|d| (d.payload.ver, added_ids(d)))
        .collect();
    let snap = reg.snapshot().await;
    assert_eq!((snap.ver, snap.head), (v, state.head()));
    assert_eq!(state.set(), &snap.set);
    assert_eq!(snap.set.len() as u64, v, "one entry per version");

    // Every acknowledged revocation: in its version's delta, in the snapshot, in the audit log.
    let audit: HashMap<String, u64> = reg
        .audit_all("kind=warrant")
        .await
        .iter()
        .filter(|i| i["action"] == "revoke")
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(audit.len() as u64, v);
    let mut versions = HashSet::new();
    for (id, ver) in &acked {
        assert!(versions.insert(*ver), "version {ver} acknowledged twice");
        assert_eq!(
            by_version.get(ver),
            Some(&vec![(EntryKind::Warrant, id.clone())]),
            "delta {ver} should add `{id}`"
        );
        assert!(
            listed(&snap.set, EntryKind::Warrant, id).is_some(),
            "`{id}` (version {ver}) is missing from the snapshot"
        );
        assert_eq!(
            audit.get(id),
            Some(ver),
            "`{id}` is missing from the audit log"
        );
    }

    // The chain goes on from where it was.
    let (s, body) = reg.revoke(json!([warrant("after-restart")])).await;
    assert_eq!((s, body["version"].as_u64()), (201, Some(v + 1)), "{body}");
    apply_all(&verifier, &mut state, &reg.all_deltas(v).await);
}

/// The `veto` binary the issue-10 tests run as the registry: this build, or
/// `VETO_TEST_REGISTRY_BIN` (an older build, for a before figure).
fn registry_program() -> String {
    std::env::var("VETO_TEST_REGISTRY_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_veto").to_owned())
}

// Issue 10, item 3: a later re-revocation never undoes an earlier one. A
// permanent agent entry re-revoked with a later cutoff and a short life stays
// permanent (with the later cutoff); a warrant re-revoked without an expiry
// loses its expiry. Both outlive the pruner running every second.
#[tokio::test]
async fn a_re_revocation_never_shortens_an_earlier_one() {
    let reg = Registry::start_program(&registry_program(), &[], &["--prune-interval", "1s"]);
    re_revocation_scenario(&reg).await;
}

// The same on a PostgreSQL store (its own schema).
#[tokio::test]
async fn a_re_revocation_never_shortens_an_earlier_one_on_postgres() {
    let Ok(base) = std::env::var("VETO_TEST_POSTGRES_URL") else {
        println!("skipped: VETO_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = veto_testkit::Schema::create(&base).await;
    let url = schema.url();
    let reg = Registry::start_program(
        &registry_program(),
        &[],
        &["--prune-interval", "1s", "--store", &url],
    );
    re_revocation_scenario(&reg).await;
}

async fn re_revocation_scenario(reg: &Registry) {
    let t0 = now();
    let first_before = t0 - 10;
    let (s, body) = reg
        .revoke(json!([{"kind": "agent", "id": "worker", "before": first_before}]))
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = reg
        .revoke(json!([{"kind": "agent", "id": "worker", "before": t0, "expires_at": t0 + 3}]))
        .await;
    assert_eq!(s, 201, "a later cutoff is a new version: {body}");
    let (s, body) = reg
        .revoke(json!([{"kind": "warrant", "id": "w-short", "expires_at": t0 + 4}]))
        .await;
    assert_eq!(s, 201, "{body}");
    let v = body["version"].as_u64().unwrap();
    let (s, body) = reg
        .revoke(json!([{"kind": "warrant", "id": "w-short"}]))
        .await;
    assert_eq!(s, 200, "only the life grew: no new version: {body}");
    assert_eq!(body["entries"][0]["created"], json!(false), "{body}");
    assert_eq!(body["entries"][0]["version"].as_u64(), Some(v), "{body}");
    // The same in one request, twice over, and across two requests.
    let (s, body) = reg
        .revoke(json!([
            {"kind": "key", "id": "k-1", "expires_at": t0 + 2},
            {"kind": "key", "id": "k-1"},
            {"kind": "key", "id": "k-1", "expires_at": t0 + 3}
        ]))
        .await;
    assert_eq!(s, 201, "{body}");

    // Well past every expiry asked for, with the pruner running every second.
    let deadline = Instant::now() + Duration::from_secs(6);
    while now() < t0 + 6 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = reg.snapshot().await;
    assert_eq!(
        listed(&snap.set, EntryKind::Agent, "worker"),
        Some(t0),
        "a credential issued at the first cutoff is still revoked"
    );
    assert!(listed(&snap.set, EntryKind::Warrant, "w-short").is_some());
    assert!(listed(&snap.set, EntryKind::Key, "k-1").is_some());
    let audit = reg.audit_all("").await;
    let prunes: Vec<&Value> = audit.iter().filter(|a| a["action"] == "prune").collect();
    assert!(prunes.is_empty(), "nothing may be pruned: {prunes:?}");
    let extended: Vec<(&str, &str)> = audit
        .iter()
        .filter(|a| a["action"] == "revoke_extend")
        .map(|a| (a["kind"].as_str().unwrap(), a["id"].as_str().unwrap()))
        .collect();
    assert_eq!(extended, vec![("warrant", "w-short")], "{audit:?}");
    // The published chain agrees with the snapshot.
    let mut state = SrlState::new();
    apply_all(&reg.verifier(), &mut state, &reg.all_deltas(0).await);
    assert_eq!(state.set(), &snap.set);
}

// Issue 10, item 8: a weak admin token is refused at start, saying how to
// make a good one; a README-style token starts; no 401 names where the
// token is (or repeats what was sent).
#[tokio::test]
async fn weak_admin_tokens_are_refused_and_401s_name_no_path() {
    let tmp = veto_testkit::TempDir::new("weak-token");
    let weak = [
        ("short", "s3cret-but-short".to_owned()),
        ("one character repeated", "a".repeat(40)),
        (
            "with a space",
            "0123456789abcdef 0123456789abcdef".to_owned(),
        ),
    ];
    for (what, token) in &weak {
        let data = tmp.path().join(what.replace(' ', "-"));
        let (code, out) = veto_testkit::serve_refused(&data, &[("VETO_ADMIN_TOKEN", token)]);
        assert_ne!(code, Some(0), "{what}: {out}");
        assert!(
            out.contains("head -c 32 /dev/urandom | base64"),
            "{what}: {out}"
        );
        assert!(out.contains("VETO_ADMIN_TOKEN"), "{what}: {out}");
        assert!(
            !out.contains(token.as_str()),
            "{what}: the token is echoed: {out}"
        );
    }
    // A hand-written admin.token file is held to the same rule.
    let data = tmp.path().join("file");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("admin.token"), "hunter2\n").unwrap();
    let (code, out) = veto_testkit::serve_refused(&data, &[]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("admin.token") && out.contains("32"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");

    // The README's token: `head -c 32 /dev/urandom | base64 | tr -d '/+='`.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("head -c 32 /dev/urandom | base64 | tr -d '/+='")
        .output()
        .unwrap();
    let readme_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let env_reg = Registry::start_env(&[("VETO_ADMIN_TOKEN", &readme_token)], &[]);
    let (s, body) = env_reg
        .send(
            env_reg
                .http()
                .get(env_reg.at(&format!("{}?limit=1", path::REVOCATIONS)))
                .bearer_auth(&readme_token),
        )
        .await;
    assert_eq!(s, 200, "{body}");

    let file_reg = Registry::start(&[]);
    for reg in [&env_reg, &file_reg] {
        let data_dir = reg.data_dir().display().to_string();
        let sent_secret = "Bearer wrong-but-distinctive-9f8e7d";
        for (method, path) in [
            ("GET", path::REVOCATIONS),
            ("POST", path::REVOCATIONS),
            ("POST", path::WARRANTS),
            ("GET", path::ISSUER_KEYS),
            ("POST", path::ISSUER_KEYS),
        ] {
            for auth in [None, Some(sent_secret)] {
                let mut req = match method {
                    "GET" => reg.http().get(reg.at(path)),
                    _ => reg
                        .http()
                        .post(reg.at(path))
                        .header("content-type", "application/json")
                        .body("{}"),
                };
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let (s, body) = reg.send(req).await;
                assert_eq!(s, 401, "{method} {path}: {body}");
                let message = body["message"].as_str().unwrap();
                for leak in [
                    data_dir.as_str(),
                    "admin.token",
                    "/tmp",
                    "VETO_ADMIN_TOKEN",
                    "wrong-but-distinctive",
                    readme_token.as_str(),
                ] {
                    assert!(
                        !message.contains(leak),
                        "{method} {path} names `{leak}`: {message}"
                    );
                }
            }
        }
    }
}

// Issue 10, item 6(b): unauthenticated replays cannot grow the registry's
// memory. A registry holds 1,000 deltas of 250 entries (~85 MB of JWS); ten
// SSE clients resume from `Last-Event-ID: 0` and three fetch
// `deltas?since=0`, none of them reading. The registry reads replays a page
// at a time under a byte budget shared by every client, so its resident
// memory grows by at most a bounded amount. Set VETO_TEST_REGISTRY_BIN to an
// older `veto` binary to measure it the same way (it fails the bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_replays_and_delta_listings_stay_within_a_memory_budget() {
    use tokio::io::AsyncWriteExt as _;
    const VERSIONS: usize = 1000;
    const ENTRIES: usize = 250;
    let program = registry_program();
    let reg = Arc::new(Registry::start_program(&program, &[], &[]));
    // An authorizer that only pulls, seldom: its next poll finds tens of MB
    // of deltas to catch up on, so it must page through byte-capped
    // prefixes with `since=`.
    let proxy_dir = veto_testkit::TempDir::new("replay-proxy");
    let upstream = veto_testkit::ok_upstream().await;
    let proxy = veto_testkit::Proxy::start(
        &proxy_dir,
        &reg,
        &upstream,
        &["--no-push", "--poll-interval", "20s"],
    );
    let started = Instant::now();
    fill(&reg, "x", VERSIONS, ENTRIES).await;
    assert_eq!(reg.version().await, VERSIONS as u64);
    println!(
        "filled {VERSIONS} versions x {ENTRIES} entries in {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy.health().await["sync"]["version"] != json!(VERSIONS) {
        assert!(
            Instant::now() < deadline,
            "the pulling proxy did not catch up: {}",
            proxy.health().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // By deltas (pages), not by a snapshot: only version 0 came as one.
    let by_delta = proxy
        .metric("veto_authorizer_applied_objects_total{kind=\"delta\"}")
        .await;
    assert_eq!(by_delta, VERSIONS as f64);
    drop(proxy);
    // The snapshot any authorizer's first fetch builds (cached), then the
    // baseline.
    let _ = reg.snapshot().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = reg.pid();
    let (rss0, _) = veto_testkit::rss_kib(pid);

    let addr = reg.addr;
    let mut held = Vec::new();
    for i in 0..13 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = if i < 10 {
            format!("GET {} HTTP/1.1\r\nHost: veto\r\nAccept: text/event-stream\r\nLast-Event-ID: 0\r\n\r\n", path::SRL_EVENTS)
        } else {
            format!(
                "GET {}?since=0 HTTP/1.1\r\nHost: veto\r\n\r\n",
                path::SRL_DELTAS
            )
        };
        s.write_all(req.as_bytes()).await.unwrap();
        held.push(s);
    }
    let mut peak = rss0;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        peak = peak.max(veto_testkit::rss_kib(pid).0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let buffered = async || client_buffer_bytes(&reg).await;
    // The attack is held to the budget, and it is what holds it.
    let in_use = buffered().await;
    println!("REGISTRY-CLIENT-BUFFER bytes_in_use={in_use}");
    let growth_mib = (peak.saturating_sub(rss0)) as f64 / 1024.0;
    println!(
        "REGISTRY-REPLAY-RSS program={program} rss_before_mib={:.0} rss_peak_mib={:.0} growth_mib={growth_mib:.0} (10 unread SSE Last-Event-ID: 0 + 3 unread deltas?since=0, {VERSIONS} versions x {ENTRIES} entries)",
        rss0 as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    // While those hold their share, readers still get what they ask for,
    // in bounded pieces. A listing is a prefix in version order.
    let resp = reg
        .http()
        .get(reg.at(&format!("{}?since=0", path::SRL_DELTAS)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    println!("REGISTRY-DELTAS-SINCE-0 bytes={}", text.len());
    assert!(
        growth_mib < 128.0,
        "the registry grew by {growth_mib:.0} MiB under unread replays"
    );
    assert!(text.len() <= (4 << 20) + (1 << 20), "{} bytes", text.len());
    assert!(
        in_use > 0.0 && in_use <= (64 << 20) as f64,
        "budget in use: {in_use}"
    );
    drop(held);
    // Their shares come back when they go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while buffered().await > 0.0 {
        assert!(Instant::now() < deadline, "the budget was not given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deltas = reg.all_deltas(0).await;
    assert_eq!(deltas.len(), VERSIONS);
    let mut state = SrlState::new();
    apply_all(&reg.verifier(), &mut state, &deltas);
    assert_eq!(state.ver(), VERSIONS as u64);

    // A reading SSE client from 0 gets deltas 1, 2, … in order, then, past
    // the replay budget, the current checkpoint (the state is too large to
    // send inline) from which it catches up by pull.
    let mut events = EventStream::open(&reg.at(path::SRL_EVENTS), Some("0")).await;
    let mut next = 1u64;
    let end = loop {
        let e = events.next(EVENT_TIMEOUT).await;
        if e.event != EventKind::Delta.as_str() {
            break e;
        }
        assert_eq!(e.id.as_deref(), Some(next.to_string().as_str()));
        next += 1;
    };
    assert!(
        matches!(
            EventKind::parse(&end.event),
            Some(EventKind::Checkpoint | EventKind::Snapshot)
        ),
        "{}",
        end.event
    );
    assert_eq!(end.id.as_deref(), Some(VERSIONS.to_string().as_str()));
    assert!(
        next <= VERSIONS as u64,
        "the whole replay ({} deltas) was sent",
        next - 1
    );
}

/// Clients that replay from version 0 and never read can spend the whole
/// client budget; a subscriber at the head still hears from the registry
/// at once and gets the next delta by push: live events are frames shared
/// by every subscriber, outside the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_replays_cannot_hold_back_live_pushes() {
    use tokio::io::AsyncWriteExt as _;
    const VERSIONS: usize = 100;
    const ENTRIES: usize = 1000;
    const ATTACKERS: usize = 80;
    let reg = Arc::new(Registry::start(&["--heartbeat", "1s"]));
    fill(&reg, "y", VERSIONS, ENTRIES).await;
    let head = reg.version().await;

    // Non-reading replays with tiny receive buffers: each holds its queue
    // share and a page of the budget until the subscriber timeout.
    let mut held = Vec::new();
    for _ in 0..ATTACKERS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(reg.addr).await.unwrap();
        s.write_all(format!("GET {} HTTP/1.1\r\nHost: veto\r\nAccept: text/event-stream\r\nLast-Event-ID: 0\r\n\r\n", path::SRL_EVENTS).as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    let in_use = async || client_buffer_bytes(&reg).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut used = in_use().await;
    while used < f64::from(60u32 << 20) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        used = in_use().await;
    }
    println!("REGISTRY-LIVE-UNDER-ATTACK attackers={ATTACKERS} budget_in_use={used}");
    assert!(
        used >= f64::from(60u32 << 20),
        "the attack did not spend the budget ({used} bytes): the test proves nothing"
    );

    // A subscriber at the head: its first checkpoint, then the next delta.
    let opened = Instant::now();
    let mut events = EventStream::open(&reg.at(path::SRL_EVENTS), Some(&head.to_string())).await;
    let first = events.next(Duration::from_secs(3)).await;
    assert_eq!(first.event, EventKind::Checkpoint.as_str());
    let first_ms = opened.elapsed().as_secs_f64() * 1e3;
    let ver = reg.revoke_warrant("live-under-attack").await;
    let acked = Instant::now();
    let e = events
        .next_except(EventKind::Checkpoint, Duration::from_secs(3))
        .await;
    assert_eq!(
        (e.event.as_str(), e.id.as_deref()),
        (EventKind::Delta.as_str(), Some(ver.to_string().as_str()))
    );
    println!(
        "REGISTRY-LIVE-UNDER-ATTACK first_checkpoint_ms={first_ms:.1} ack_to_push_ms={:.1}",
        acked.elapsed().as_secs_f64() * 1e3
    );
    drop(held);
}

/// Commits `versions` revocations of `entries` warrants each, with ids
/// of about 200 bytes (`tag` keeps them apart), 8 requests at a time.
async fn fill(reg: &Arc<Registry>, tag: &str, versions: usize, entries: usize) {
    use futures_util::StreamExt as _;
    let pad = tag.repeat(180);
    let results: Vec<u16> = futures_util::stream::iter(0..versions)
        .map(|v| {
            let reg = reg.clone();
            let entries: Vec<Value> = (0..entries)
                .map(|i| json!({"kind": "warrant", "id": format!("{pad}-{v}-{i}")}))
                .collect();
            async move { reg.revoke(Value::Array(entries)).await.0 }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(results.iter().all(|s| *s == 201), "{results:?}");
}

/// The registry's `veto_registry_client_buffer_bytes`.
async fn client_buffer_bytes(reg: &Registry) -> f64 {
    let text = reg
        .http()
        .get(reg.at(path::METRICS))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    veto_testkit::metric_value(&text, "veto_registry_client_buffer_bytes")
}

/// A holder public key to bind in minted warrants (the registry requires one).
fn holder_jwk() -> serde_json::Value {
    serde_json::to_value(
        veto_core::SigningKey::from_seed(&[0x11; 32])
            .public()
            .to_jwk(),
    )
    .unwrap()
}
