//! Hostile input against the real `veto proxy` and `veto serve` processes:
//! forged, truncated, oversized, over-deep, algorithm-confused, duplicated
//! and non-canonical credentials; unauthenticated, malformed and oversized
//! admin requests; floods of SSE subscribers and of forged tokens.
//!
//! Every bad input must get a clear 4xx (or 503 for a full registry) with a
//! JSON body naming what was wrong, must write nothing, and must leave the
//! process healthy with bounded memory. Each group prints one
//! `RELIABILITY hostile <group> …` line with what it measured (run with
//! `--nocapture` to see them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use veto_core::jws::{self, Typ};
use veto_core::wire::{path, DeltasPage, ErrorCode, EventKind};
use veto_core::{DenyReason, Head, PublicKey, SigningKey};
use veto_testkit::{
    metric_value, now, ok_upstream, rss_kib, EventStream, Proxy, Registry, TempDir,
};

const REGISTRY_ARGS: &[&str] = &["--heartbeat", "1s"];
const ACT: &[&str] = &["http:GET:/orders/*"];
const PATH: &str = "/orders/1";
const WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Encoding and signing by hand, so the test can build what veto never would.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64e(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64d(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Head::of_payload(bytes).0
}

/// HMAC-SHA256 (RFC 2104), for the `HS256` key-confusion attack.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

/// A compact JWS with any header, payload and signature bytes.
fn jws_raw(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64e(header.as_bytes()),
        b64e(payload.as_bytes()),
        b64e(signature)
    )
}

/// A warrant link with `claims` (any JSON text), properly signed by `key`.
fn link(key: &SigningKey, claims: &str) -> String {
    jws::sign(Typ::Warrant, key, claims.as_bytes())
}

fn seg(token: &str, i: usize) -> &str {
    token.split('.').nth(i).unwrap()
}

fn decode_claims(link: &str) -> Value {
    serde_json::from_slice(&b64d(seg(link, 1))).unwrap()
}

/// Replaces the character at `at` of a link's signature with another
/// alphabet character (still canonical base64url: not the last one).
fn flip_signature(link: &str, at: usize, variant: usize) -> String {
    let (head, sig) = link.rsplit_once('.').unwrap();
    let mut s: Vec<u8> = sig.bytes().collect();
    let old = ALPHABET.iter().position(|a| *a == s[at]).unwrap();
    s[at] = ALPHABET[(old + 1 + variant % 63) % 64];
    format!("{head}.{}", String::from_utf8(s).unwrap())
}

/// Child claims under `parent` (a claims object), for `holder`.
fn child(parent: &Value, holder: &PublicKey, extra: Value) -> Value {
    let mut c = json!({
        "jti": format!("c-{}", rand_id()),
        "iss": parent["sub"],
        "sub": "agent-child",
        "iat": now(),
        "nbf": now(),
        "exp": parent["exp"],
        "act": ACT,
        "par": parent["jti"],
        "cnf": {"jwk": holder.to_jwk()},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn rand_id() -> String {
    SigningKey::generate().unwrap().kid()[..16].to_owned()
}

/// `depth` links: the minted root, then children each signed by `holder`
/// and binding it again.
fn chain_of(root: &str, holder: &SigningKey, depth: usize) -> String {
    chain_with(root, holder, depth, json!({}))
}

/// Like [`chain_of`], with `extra` claims in every child.
fn chain_with(root: &str, holder: &SigningKey, depth: usize, extra: Value) -> String {
    let mut parts = vec![root.to_owned()];
    let mut parent = decode_claims(root);
    for _ in 1..depth {
        let c = child(&parent, holder.public(), extra.clone());
        parts.push(link(holder, &c.to_string()));
        parent = c;
    }
    parts.join("~")
}

// ---------------------------------------------------------------------------
// Processes and measurements.

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WITHIN).build().unwrap()
}

/// Status and JSON body of `GET {proxy}/orders/1` with `Authorization: {auth}`.
async fn call_auth(http: &reqwest::Client, proxy: &Proxy, auth: Option<&str>) -> (u16, Value) {
    let mut req = http.get(proxy.at(PATH));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("proxy: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

async fn call(http: &reqwest::Client, proxy: &Proxy, chain: &str) -> (u16, Value) {
    call_auth(http, proxy, Some(&format!("Bearer {chain}"))).await
}

/// Checks a proxy denial: status, exactly `{"error", "message"}`, and a
/// message containing `names`; what differs, described.
fn check_denied(
    what: &str,
    status: u16,
    body: &Value,
    reason: DenyReason,
    names: &str,
) -> Result<(), String> {
    let want = veto_authorizer::http_status(reason).as_u16();
    if status != want {
        return Err(format!(
            "{what}: status {status}, expected {want} for `{reason}` (body {body})"
        ));
    }
    let Some(obj) = body.as_object() else {
        return Err(format!("{what}: body is not a JSON object: {body}"));
    };
    if obj.len() != 2 {
        return Err(format!("{what}: other members in {body}"));
    }
    if body["error"] != reason.as_str() {
        return Err(format!("{what}: error is not `{reason}`: {body}"));
    }
    let message = body["message"].as_str().unwrap_or_default();
    if !message.contains(names) {
        return Err(format!(
            "{what}: message `{message}` does not name `{names}`"
        ));
    }
    Ok(())
}

/// A registry, an upstream and a proxy, with the proxy synced and a root
/// chain (holder `holder`) allowed.
struct Stack {
    registry: Registry,
    proxy: Proxy,
    _dir: TempDir,
    holder: SigningKey,
    root: String,
    http: reqwest::Client,
}

impl Stack {
    async fn start(registry_args: &[&str]) -> Self {
        let registry = Registry::start(registry_args);
        let upstream = ok_upstream().await;
        let dir = TempDir::new("hostile-proxy");
        let proxy = Proxy::start(&dir, &registry, &upstream, &[]);
        let holder = SigningKey::generate().unwrap();
        let (root, _) = registry.mint("agent-h", ACT, Some(holder.public())).await;
        let http = client();
        let start = Instant::now();
        loop {
            let (status, _) = call(&http, &proxy, &root).await;
            if status == 200 {
                break;
            }
            assert!(
                start.elapsed() < WITHIN,
                "the proxy never allowed a fresh chain; log:\n{}",
                proxy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            registry,
            proxy,
            _dir: dir,
            holder,
            root,
            http,
        }
    }

    async fn expect_allowed(&self, what: &str, chain: &str) {
        let (status, body) = call(&self.http, &self.proxy, chain).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
}

/// Counts per group for the `RELIABILITY` line, observed from the answers:
/// `refused` counts the 4xx answers, whatever the assertions say, and the
/// answers that were not the expected denial are kept to fail the group
/// after its line is printed.
#[derive(Default)]
struct Tally {
    sent: usize,
    refused: usize,
    wrong: Vec<String>,
}

impl Tally {
    async fn deny(&mut self, s: &Stack, what: &str, chain: &str, reason: DenyReason, names: &str) {
        let (status, body) = call(&s.http, &s.proxy, chain).await;
        self.observe(what, status, &body, reason, names);
    }

    fn observe(&mut self, what: &str, status: u16, body: &Value, reason: DenyReason, names: &str) {
        self.sent += 1;
        if (400..500).contains(&status) {
            self.refused += 1;
        }
        if let Err(e) = check_denied(what, status, body, reason, names) {
            self.wrong.push(e);
        }
    }

    /// Fails the group unless every request got its expected denial.
    fn assert_all(&self, group: &str) {
        assert!(self.wrong.is_empty(), "{group}: {:#?}", self.wrong);
        assert_eq!(
            self.refused, self.sent,
            "{group}: refused {} of {}",
            self.refused, self.sent
        );
    }
}

// ---------------------------------------------------------------------------
// The proxy: bad credentials.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_forged_malformed_and_confused_chains() {
    let s = Stack::start(REGISTRY_ARGS).await;
    let issuer_jwks: Value = s.registry.get(path::JWKS).await.1.clone();
    let root = s.root.clone();
    let root_claims = decode_claims(&root);
    let root_header = String::from_utf8(b64d(seg(&root, 0))).unwrap();
    let issuer_kid = root_header
        .split("\"kid\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let holder = s.holder.clone();
    let two = chain_of(&root, &holder, 2);
    s.expect_allowed("a two-link chain", &two).await;

    // --- forged -------------------------------------------------------------
    let mut t = Tally::default();
    for at in [0, 20, 42, 84] {
        t.deny(
            &s,
            "root signature flipped",
            &flip_signature(&root, at, at),
            DenyReason::BadSignature,
            "link 0: signature does not verify",
        )
        .await;
    }
    let (r, c) = two.split_once('~').unwrap();
    t.deny(
        &s,
        "child signature flipped",
        &format!("{r}~{}", flip_signature(c, 10, 3)),
        DenyReason::BadSignature,
        "link 1: signature does not verify",
    )
    .await;
    let rogue = SigningKey::generate().unwrap();
    let by_rogue = link(&rogue, &root_claims.to_string());
    t.deny(
        &s,
        "root signed by an unknown key",
        &by_rogue,
        DenyReason::UntrustedIssuer,
        &format!("unknown issuer key `{}`", rogue.kid()),
    )
    .await;
    // The issuer's header and signature over a payload granting everything.
    let mut widened = root_claims.clone();
    widened["act"] = json!(["*"]);
    let swapped = format!(
        "{}.{}.{}",
        seg(&root, 0),
        b64e(widened.to_string().as_bytes()),
        seg(&root, 2)
    );
    t.deny(
        &s,
        "root payload swapped",
        &swapped,
        DenyReason::BadSignature,
        "signature does not verify",
    )
    .await;
    let c_claims = decode_claims(c);
    t.deny(
        &s,
        "child signed by a key other than the parent's holder",
        &format!("{r}~{}", link(&rogue, &c_claims.to_string())),
        DenyReason::ChainInvalid,
        "parent's holder key",
    )
    .await;
    println!(
        "RELIABILITY hostile proxy-forged requests={} refused={} (flipped root/child signatures, unknown signer, swapped payload, wrong delegator)",
        t.sent, t.refused
    );
    t.assert_all("proxy-forged");

    // --- truncated ------------------------------------------------------------
    let mut t = Tally::default();
    let mut cut = 1;
    while cut < two.len() {
        // Cut exactly after the root is the root chain itself: a valid, narrower credential.
        if cut != r.len() {
            t.deny(
                &s,
                &format!("chain cut at byte {cut} of {}", two.len()),
                &two[..cut],
                DenyReason::Malformed,
                "link",
            )
            .await;
        }
        cut += 11;
    }
    t.deny(
        &s,
        "a trailing `~`",
        &format!("{root}~"),
        DenyReason::Malformed,
        "link 1",
    )
    .await;
    t.deny(
        &s,
        "an empty link in the middle",
        &format!("{r}~~{c}"),
        DenyReason::Malformed,
        "link 1",
    )
    .await;
    let (status, body) = call_auth(&s.http, &s.proxy, Some("Bearer ")).await;
    t.observe("an empty bearer", status, &body, DenyReason::Malformed, "");
    for auth in ["Basic dXNlcjpwYXNz", "Bearer", "Token abc"] {
        let (status, body) = call_auth(&s.http, &s.proxy, Some(auth)).await;
        t.observe(auth, status, &body, DenyReason::Malformed, "Bearer");
    }
    println!(
        "RELIABILITY hostile proxy-truncated requests={} refused={} (every 11th cut of a {}-byte 2-link chain, empty links, empty/other schemes)",
        t.sent,
        t.refused,
        two.len()
    );
    t.assert_all("proxy-truncated");

    // --- oversized and over-deep ---------------------------------------------
    let mut t = Tally::default();
    let big_act: Vec<String> = (0..400).map(|i| format!("http:GET:/orders/{i}")).collect();
    let fat = child(&root_claims, holder.public(), json!({"act": big_act}));
    let fat_link = link(&holder, &fat.to_string());
    assert!(fat_link.len() > 8192 && fat_link.len() < 32 * 1024);
    t.deny(
        &s,
        "a link over 8 KiB",
        &format!("{root}~{fat_link}"),
        DenyReason::Malformed,
        "over the limit of 8192 bytes",
    )
    .await;
    let padding = "x".repeat(33 * 1024);
    t.deny(
        &s,
        "a chain over 32 KiB",
        &format!("{root}~{padding}"),
        DenyReason::Malformed,
        "over the 32768-byte limit",
    )
    .await;
    t.deny(
        &s,
        "a 100 KiB bearer",
        &"a".repeat(100 * 1024),
        DenyReason::Malformed,
        "chain of 102400 bytes, over the 32768-byte limit",
    )
    .await;
    let crowded: Vec<String> = (0..65).map(|i| format!("http:GET:/orders/{i}")).collect();
    let crowded = child(&root_claims, holder.public(), json!({"act": crowded}));
    t.deny(
        &s,
        "65 action patterns",
        &format!("{root}~{}", link(&holder, &crowded.to_string())),
        DenyReason::Malformed,
        "65 action patterns, over the limit of 64",
    )
    .await;
    let eight = chain_of(&root, &holder, 8);
    s.expect_allowed("a chain of the default depth 8", &eight)
        .await;
    t.deny(
        &s,
        "depth 9",
        &chain_of(&root, &holder, 9),
        DenyReason::Malformed,
        "chain of 9 links, over the configured depth limit of 8",
    )
    .await;
    t.deny(
        &s,
        "depth 17",
        &chain_of(&root, &holder, 17),
        DenyReason::Malformed,
        "chain of 17 links, over the limit of 16",
    )
    .await;
    t.deny(
        &s,
        "5000 empty links",
        &"~".repeat(4999),
        DenyReason::Malformed,
        "chain of 5000 links, over the limit of 16",
    )
    .await;
    println!(
        "RELIABILITY hostile proxy-oversized requests={} refused={} (link {} B > 8 KiB, chain > 32 KiB, 100 KiB bearer, 65 patterns > 64, depth 9 > 8, depth 17 > 16, 5000 links)",
        t.sent,
        t.refused,
        fat_link.len()
    );
    t.assert_all("proxy-oversized");

    // --- algorithm and type confusion ------------------------------------------
    let mut t = Tally::default();
    let payload = widened.to_string();
    let header =
        |alg: &str, typ: &str| format!(r#"{{"alg":"{alg}","typ":"{typ}","kid":"{issuer_kid}"}}"#);
    t.deny(
        &s,
        "alg none, empty signature",
        &format!(
            "{}.{}.",
            b64e(header("none", "veto-warrant+jwt").as_bytes()),
            b64e(payload.as_bytes())
        ),
        DenyReason::Malformed,
        "unsupported algorithm `none`",
    )
    .await;
    t.deny(
        &s,
        "alg none with the issuer's signature",
        &jws_raw(
            &header("none", "veto-warrant+jwt"),
            &payload,
            &b64d(seg(&root, 2)),
        ),
        DenyReason::Malformed,
        "unsupported algorithm `none`",
    )
    .await;
    // HS256 keyed with the issuer's public key, as a confused verifier would use it.
    assert_eq!(
        hmac_sha256(b"Jefe", b"what do ya want for nothing?").to_vec(),
        (0..32)
            .map(|i| u8::from_str_radix(
                &"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
                    [2 * i..2 * i + 2],
                16
            )
            .unwrap())
            .collect::<Vec<u8>>(),
        "the test's HMAC-SHA256 (RFC 4231 case 2)"
    );
    let issuer_x = issuer_jwks["keys"][0]["x"].as_str().unwrap();
    let issuer_jwk_text = issuer_jwks["keys"][0].to_string();
    for (label, secret) in [
        ("raw public key bytes", b64d(issuer_x)),
        ("public JWK text", issuer_jwk_text.into_bytes()),
    ] {
        let h = b64e(header("HS256", "veto-warrant+jwt").as_bytes());
        let p = b64e(payload.as_bytes());
        let mac = hmac_sha256(&secret, format!("{h}.{p}").as_bytes());
        t.deny(
            &s,
            &format!("HS256 keyed with the issuer's {label}"),
            &format!("{h}.{p}.{}", b64e(&mac)),
            DenyReason::Malformed,
            "unsupported algorithm `HS256`",
        )
        .await;
    }
    for alg in ["eddsa", "ES256", "RS256", "Ed25519"] {
        t.deny(
            &s,
            &format!("alg {alg}"),
            &jws_raw(&header(alg, "veto-warrant+jwt"), &payload, &[0; 64]),
            DenyReason::Malformed,
            &format!("unsupported algorithm `{alg}`"),
        )
        .await;
    }
    for typ in [
        "veto-srl+jwt",
        "veto-srl-delta+jwt",
        "veto-srl-checkpoint+jwt",
        "at+jwt",
    ] {
        t.deny(
            &s,
            &format!("root of typ {typ}"),
            &jws_raw(&header("EdDSA", typ), &payload, &b64d(seg(&root, 2))),
            DenyReason::Malformed,
            "wrong object type",
        )
        .await;
    }
    // A child must say `veto-warrant+jwt`; a plain `JWT` is only a root.
    let c_payload = String::from_utf8(b64d(seg(c, 1))).unwrap();
    for typ in ["JWT", "veto-srl+jwt"] {
        let h = format!(
            r#"{{"alg":"EdDSA","typ":"{typ}","kid":"{}"}}"#,
            holder.kid()
        );
        t.deny(
            &s,
            &format!("child of typ {typ}"),
            &format!("{r}~{}", jws_raw(&h, &c_payload, &b64d(seg(c, 2)))),
            DenyReason::Malformed,
            "link 1: wrong object type",
        )
        .await;
    }
    // A real object signed by the authority is not a credential.
    let checkpoint = s
        .registry
        .http()
        .get(s.registry.at(path::SRL_CHECKPOINT))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    t.deny(
        &s,
        "a signed checkpoint as a bearer",
        &checkpoint,
        DenyReason::Malformed,
        "wrong object type `veto-srl-checkpoint+jwt`",
    )
    .await;
    println!(
        "RELIABILITY hostile proxy-alg-typ requests={} refused={} (alg none x2, HS256 keyed with the public key x2, 4 other algs, 4 root typs, 2 child typs, an authority checkpoint)",
        t.sent, t.refused
    );
    t.assert_all("proxy-alg-typ");

    // --- duplicate keys, unknown members, non-canonical base64 -----------------
    let mut t = Tally::default();
    let c_json = c_claims.to_string();
    for (key, value) in [
        ("exp", json!(4_102_444_800u64)),
        ("act", json!(["*"])),
        ("jti", json!("other")),
        ("sub", json!("someone-else")),
        ("par", json!("other")),
    ] {
        // Signed properly by the holder: only the duplicate is wrong.
        let dup = format!("{{\"{key}\":{value},{}", &c_json[1..]);
        t.deny(
            &s,
            &format!("duplicate `{key}` in the claims"),
            &format!("{r}~{}", link(&holder, &dup)),
            DenyReason::Malformed,
            &format!("duplicate field `{key}`"),
        )
        .await;
    }
    // The holder key, as it appears in the claims text (keys sorted).
    let jwk_text = serde_json::to_value(holder.public().to_jwk())
        .unwrap()
        .to_string();
    let dup_x = format!(
        "{{\"x\":\"{}\",{}",
        b64e(rogue.public().as_bytes()),
        &jwk_text[1..]
    );
    let dup_cnf = c_json.replace(&jwk_text, &dup_x);
    assert_ne!(dup_cnf, c_json);
    t.deny(
        &s,
        "duplicate `x` in `cnf.jwk`",
        &format!("{r}~{}", link(&holder, &dup_cnf)),
        DenyReason::Malformed,
        "duplicate field `x`",
    )
    .await;
    for (key, second) in [("alg", "none"), ("typ", "veto-srl+jwt"), ("kid", "other")] {
        let h = format!(
            r#"{{"alg":"EdDSA","typ":"veto-warrant+jwt","kid":"{issuer_kid}","{key}":"{second}"}}"#
        );
        t.deny(
            &s,
            &format!("duplicate `{key}` in the header"),
            &jws_raw(&h, &payload, &b64d(seg(&root, 2))),
            DenyReason::Malformed,
            &format!("duplicate field `{key}`"),
        )
        .await;
    }
    t.deny(
        &s,
        "`crit` in the header",
        &jws_raw(
            &format!(r#"{{"alg":"EdDSA","typ":"veto-warrant+jwt","kid":"{issuer_kid}","crit":["exp"],"exp":1}}"#),
            &payload,
            &b64d(seg(&root, 2)),
        ),
        DenyReason::Malformed,
        "`crit`",
    )
    .await;
    // Unknown header members are ignored and never acted on: parsing goes on
    // to the signature, over the bytes as received, which then fails.
    t.deny(
        &s,
        "`jku`/`x5u` in the header",
        &jws_raw(
            &format!(r#"{{"alg":"EdDSA","typ":"veto-warrant+jwt","kid":"{issuer_kid}","jku":"http://127.0.0.1:1/keys","x5u":"http://127.0.0.1:1/x5u"}}"#),
            &String::from_utf8(b64d(seg(&root, 1))).unwrap(),
            &b64d(seg(&root, 2)),
        ),
        DenyReason::BadSignature,
        "link 0: signature does not verify",
    )
    .await;
    // Non-canonical base64url: padding, `+`/`/`, set trailing bits, whitespace.
    let sig = seg(&root, 2);
    let last = ALPHABET
        .iter()
        .position(|a| *a == sig.as_bytes()[85])
        .unwrap();
    assert_eq!(last & 0xF, 0, "canonical: the 4 trailing bits are zero");
    let trailing = format!(
        "{}.{}.{}{}",
        seg(&root, 0),
        seg(&root, 1),
        &sig[..85],
        ALPHABET[last | 1] as char
    );
    let p1 = seg(&root, 1);
    for (what, token, names) in [
        (
            "a padded signature",
            format!("{root}=="),
            "signature is not 64 bytes of base64url",
        ),
        (
            "a padded payload",
            format!("{}.{p1}==.{sig}", seg(&root, 0)),
            "payload is not base64url",
        ),
        (
            "a padded header",
            format!("{}=.{p1}.{sig}", seg(&root, 0)),
            "header is not base64url",
        ),
        (
            "`+` in the signature",
            format!("{}.{p1}.+{}", seg(&root, 0), &sig[1..]),
            "signature is not 64 bytes of base64url",
        ),
        (
            "`/` in the payload",
            format!("{}.{}/{}.{sig}", seg(&root, 0), &p1[..10], &p1[11..]),
            "payload is not base64url",
        ),
        (
            "trailing bits set in the signature",
            trailing.clone(),
            "signature is not 64 bytes of base64url",
        ),
        (
            "a space in the payload",
            format!("{}.{} {}.{sig}", seg(&root, 0), &p1[..10], &p1[11..]),
            "payload is not base64url",
        ),
    ] {
        t.deny(&s, what, &token, DenyReason::Malformed, names).await;
    }
    // Unknown claims are ignored (a plain JWT with `aud` etc. is a valid
    // root, DESIGN 3.1): a properly signed child carrying some is allowed.
    let extra = child(
        &root_claims,
        holder.public(),
        json!({"aud": "orders", "x-extra": {"nested": [1, 2, 3]}, "scope": "admin"}),
    );
    s.expect_allowed(
        "unknown claims in a signed child",
        &format!("{root}~{}", link(&holder, &extra.to_string())),
    )
    .await;
    println!(
        "RELIABILITY hostile proxy-json-b64 requests={} refused={} (5 duplicate claims, duplicate cnf.jwk.x, 3 duplicate header members, crit, jku/x5u, 7 non-canonical base64url; unknown claims allowed as documented)",
        t.sent, t.refused
    );
    t.assert_all("proxy-json-b64");

    // --- time and replay -------------------------------------------------------
    let mut t = Tally::default();
    let old = child(
        &root_claims,
        holder.public(),
        json!({"iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 60}),
    );
    t.deny(
        &s,
        "an expired child",
        &format!("{root}~{}", link(&holder, &old.to_string())),
        DenyReason::Expired,
        "link 1",
    )
    .await;
    let early = child(&root_claims, holder.public(), json!({"nbf": now() + 3600}));
    t.deny(
        &s,
        "a not-yet-valid child",
        &format!("{root}~{}", link(&holder, &early.to_string())),
        DenyReason::NotYetValid,
        "link 1",
    )
    .await;
    let wide = child(&root_claims, holder.public(), json!({"act": ["http:*"]}));
    t.deny(
        &s,
        "a child widening the actions",
        &format!("{root}~{}", link(&holder, &wide.to_string())),
        DenyReason::ChainInvalid,
        "widens",
    )
    .await;
    let long = child(
        &root_claims,
        holder.public(),
        json!({"exp": root_claims["exp"].as_u64().unwrap() + 1}),
    );
    t.deny(
        &s,
        "a child outliving its parent",
        &format!("{root}~{}", link(&holder, &long.to_string())),
        DenyReason::ChainInvalid,
        "outlives",
    )
    .await;
    let unlinked = child(
        &root_claims,
        holder.public(),
        json!({"par": "not-the-root"}),
    );
    t.deny(
        &s,
        "a child whose `par` is not the parent",
        &format!("{root}~{}", link(&holder, &unlinked.to_string())),
        DenyReason::ChainInvalid,
        "`par`",
    )
    .await;

    // Replay after revocation: the root and every descendant stay refused.
    let (victim, victim_jti) = s
        .registry
        .mint("agent-victim", ACT, Some(holder.public()))
        .await;
    let victim_two = chain_of(&victim, &holder, 2);
    s.expect_allowed("the victim before revocation", &victim_two)
        .await;
    s.registry.revoke_warrant(&victim_jti).await;
    let start = Instant::now();
    loop {
        let (status, _) = call(&s.http, &s.proxy, &victim).await;
        if status == 403 {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the revocation never reached the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..50 {
        let c = if i % 2 == 0 { &victim } else { &victim_two };
        t.deny(&s, "a replayed revoked chain", c, DenyReason::Revoked, "")
            .await;
    }
    s.expect_allowed("an unrelated chain after the revocation", &two)
        .await;
    println!(
        "RELIABILITY hostile proxy-time-replay requests={} refused={} (expired, not yet valid, widening, outliving, wrong par, 50 replays after revocation)",
        t.sent, t.refused
    );
    t.assert_all("proxy-time-replay");
    let health = s.proxy.health().await;
    assert_eq!(health["status"], "ok", "{health}");
}

// ---------------------------------------------------------------------------
// The proxy: oversized heads, answered by hyper before any authorizer work.

/// Writes `request` on a fresh connection and reads until the server
/// closes or `timeout`; returns the status of the first response line, or
/// the I/O error (a reset after an early answer is not a hang).
async fn raw_http(
    addr: &str,
    request: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let addr = addr.trim_start_matches("http://").to_owned();
    let work = async move {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&request).await;
            let _ = wr.flush().await;
            wr
        });
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let read_err = loop {
            match rd.read(&mut chunk).await {
                Ok(0) => break None,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    // One response is enough: stop at the end of a short body.
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        if len.is_some_and(|l| buf.len() >= end + 4 + l) {
                            break None;
                        }
                    }
                }
                Err(e) => break Some(e.to_string()),
            }
        };
        writer.abort();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok());
        match (status, read_err) {
            (Some(s), _) => Ok((s, text)),
            (None, Some(e)) => Err(e),
            (None, None) => Err(format!("closed without an answer: `{text}`")),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| panic!("no answer within {timeout:?}: a hang"))
}

fn request_with(headers: &[(String, String)]) -> Vec<u8> {
    let mut r = format!("GET {PATH} HTTP/1.1\r\nhost: x\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("connection: close\r\n\r\n");
    r.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_a_clean_4xx_and_the_proxy_keeps_serving() {
    let s = Stack::start(REGISTRY_ARGS).await;
    let pid = s.proxy.pid();
    let (rss0, _) = rss_kib(pid);
    let timeout = Duration::from_secs(10);
    let mut statuses: Vec<String> = Vec::new();
    let auth = |n: usize| {
        vec![(
            "authorization".to_owned(),
            format!("Bearer {}", "a".repeat(n)),
        )]
    };

    // 100 KiB Authorization: within hyper's head buffer, refused by the chain limit.
    let (status, text) = raw_http(&s.proxy.url, request_with(&auth(100 * 1024)), timeout)
        .await
        .unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains(&format!(r#""error":"{}""#, DenyReason::Malformed)),
        "{text}"
    );
    assert!(text.contains("over the 32768-byte limit"), "{text}");
    statuses.push(format!("100KiB-auth:{status}"));

    // Heads larger than hyper accepts (about 400 KiB): 431, or the
    // connection closed right after it; never a hang or a crash.
    for size in [512 * 1024, 4 << 20] {
        let got = raw_http(&s.proxy.url, request_with(&auth(size)), timeout).await;
        match &got {
            Ok((status, text)) => assert_eq!(*status, 431, "{text}"),
            Err(e) => assert!(
                e.contains("reset") || e.contains("closed") || e.contains("Broken pipe"),
                "{size}-byte head: {e}"
            ),
        }
        statuses.push(format!(
            "{}KiB-auth:{}",
            size / 1024,
            got.map(|(s, _)| s.to_string()).unwrap_or_else(|e| e)
        ));
    }
    // More headers than hyper's 100.
    let many: Vec<(String, String)> = (0..200).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let (status, text) = raw_http(&s.proxy.url, request_with(&many), timeout)
        .await
        .unwrap();
    assert_eq!(status, 431, "{text}");
    statuses.push(format!("200-headers:{status}"));
    // 90 headers of 4 KiB each: under the count, over the head size.
    let wide: Vec<(String, String)> = (0..90)
        .map(|i| (format!("x-w{i}"), "w".repeat(4096)))
        .collect();
    let got = raw_http(&s.proxy.url, request_with(&wide), timeout).await;
    if let Ok((status, text)) = &got {
        assert!([400, 401, 431].contains(status), "{text}");
    }
    statuses.push(format!(
        "90x4KiB-headers:{}",
        got.map(|(s, _)| s.to_string()).unwrap_or_else(|e| e)
    ));
    // A broken head: 400 from hyper.
    let (status, text) = raw_http(
        &s.proxy.url,
        b"GET /orders/1 HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        timeout,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text}");
    statuses.push(format!("bad-head:{status}"));
    // Non-ASCII bytes in the Authorization value: not a Bearer token.
    let mut req =
        format!("GET {PATH} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer ")
            .into_bytes();
    req.extend_from_slice(&[0xff, 0xfe, 0x80]);
    req.extend_from_slice(b"\r\n\r\n");
    let (status, text) = raw_http(&s.proxy.url, req, timeout).await.unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("Bearer"), "{text}");
    statuses.push(format!("non-ascii-auth:{status}"));

    // The registry's listener, the same way.
    let (status, text) = raw_http(&s.registry.url, request_with(&many), timeout)
        .await
        .unwrap();
    assert_eq!(status, 431, "registry: {text}");
    statuses.push(format!("registry-200-headers:{status}"));

    s.expect_allowed("a valid chain after the oversized heads", &s.root)
        .await;
    assert_eq!(s.proxy.health().await["status"], "ok");
    assert_eq!(s.registry.get(path::HEALTHZ).await.0, 200);
    let (rss1, hwm) = rss_kib(pid);
    println!(
        "RELIABILITY hostile proxy-heads requests={} answers=[{}] proxy_rss_mib_before={:.1} after={:.1} peak={:.1}",
        statuses.len(),
        statuses.join(" "),
        mib(rss0),
        mib(rss1),
        mib(hwm)
    );
}

// ---------------------------------------------------------------------------
// The proxy: a flood of forged tokens.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_tokens_is_refused_with_bounded_memory() {
    let s = Stack::start(REGISTRY_ARGS).await;
    let pid = s.proxy.pid();
    let (rss0, _) = rss_kib(pid);
    let holder = s.holder.clone();
    // Small forgeries (flipped issuer signature) and large ones: 8 links
    // (the default depth) near the 32 KiB limit whose root signature is
    // flipped, so the whole chain is parsed before the first signature fails.
    let narrow: Vec<String> = (0..50)
        .map(|i| format!("http:GET:/orders/{i:04}-{}", "p".repeat(24)))
        .collect();
    let deep = chain_with(&s.root, &holder, 8, json!({"act": narrow}));
    // Unforged, it verifies (and only its actions do not cover the path).
    let (status, body) = call(&s.http, &s.proxy, &deep).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &json!(DenyReason::ActionDenied.as_str())),
        "{body}"
    );
    assert!(deep.len() < 32 * 1024, "{}", deep.len());
    let (deep_root, deep_rest) = deep.split_once('~').unwrap();
    const N: usize = 2000;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..N)
            .map(|i| {
                let at = i % 80;
                if i % 2 == 0 {
                    flip_signature(&s.root, at, i / 80)
                } else {
                    format!("{}~{deep_rest}", flip_signature(deep_root, at, i / 80))
                }
            })
            .collect(),
    );
    let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), N, "every forgery is a distinct token");
    let bytes: usize = tokens.iter().map(String::len).sum();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (http, url, tokens, sem) =
            (http.clone(), s.proxy.at(PATH), tokens.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let resp = http
                .get(url)
                .bearer_auth(&tokens[i])
                .send()
                .await
                .unwrap_or_else(|e| panic!("forged request {i}: {e}"));
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        });
    }
    let mut refused = 0;
    let mut peak = 0;
    while let Some(r) = tasks.join_next().await {
        let (status, error) = r.unwrap();
        assert_eq!(
            (status, error.as_str()),
            (401, DenyReason::BadSignature.as_str())
        );
        refused += 1;
        if refused % 250 == 0 {
            peak = peak.max(rss_kib(pid).0);
        }
    }
    let elapsed = started.elapsed();
    let (rss1, hwm) = rss_kib(pid);
    s.expect_allowed("a valid chain after the flood", &s.root)
        .await;
    let metrics = s.proxy.metrics().await;
    let counted = metric_value(
        &metrics,
        "veto_proxy_requests_total{outcome=\"bad_signature\"}",
    );
    assert!(
        counted >= N as f64,
        "bad_signature counted {counted}:\n{metrics}"
    );
    println!(
        "RELIABILITY hostile proxy-flood requests={N} refused={refused} bytes={bytes} concurrency=64 seconds={:.2} proxy_rss_mib_before={:.1} during_max={:.1} after={:.1} peak={:.1}",
        elapsed.as_secs_f64(),
        mib(rss0),
        mib(peak),
        mib(rss1),
        mib(hwm)
    );
    // Nothing forged is retained (the cache holds verified chains only):
    // what the flood leaves behind is allocator slack, not per-token state.
    assert!(
        rss1 < rss0 + 64 * 1024,
        "proxy RSS grew from {} to {} KiB",
        rss0,
        rss1
    );
}

// ---------------------------------------------------------------------------
// The registry: bad admin requests write nothing.

struct Baseline {
    version: u64,
    audit: usize,
}

async fn baseline(r: &Registry) -> Baseline {
    Baseline {
        version: r.version().await,
        audit: r.audit_all("").await.len(),
    }
}

async fn assert_unchanged(r: &Registry, b: &Baseline, what: &str) {
    assert_eq!(r.version().await, b.version, "{what}: the version moved");
    assert_eq!(
        r.audit_all("").await.len(),
        b.audit,
        "{what}: the audit log grew"
    );
}

/// Checks a registry error: status, `{"error": code, "message": text}`
/// with a message containing `names`; what differs, described.
fn check_api_error(
    what: &str,
    status: u16,
    body: &Value,
    want: u16,
    code: ErrorCode,
    names: &str,
) -> Result<(), String> {
    if status != want {
        return Err(format!("{what}: status {status}, expected {want}: {body}"));
    }
    let Some(obj) = body.as_object() else {
        return Err(format!("{what}: body is not a JSON object: {body}"));
    };
    if obj.len() != 2 {
        return Err(format!("{what}: other members in {body}"));
    }
    if body["error"] != code.as_str() {
        return Err(format!("{what}: error is not `{code}`: {body}"));
    }
    let message = body["message"].as_str().unwrap_or_default();
    if !message.contains(names) {
        return Err(format!(
            "{what}: message `{message}` does not name `{names}`"
        ));
    }
    Ok(())
}

/// Asserts a registry error (see [`check_api_error`]).
fn assert_api_error(
    what: &str,
    status: u16,
    body: &Value,
    want: u16,
    code: ErrorCode,
    names: &str,
) {
    if let Err(e) = check_api_error(what, status, body, want, code, names) {
        panic!("{e}");
    }
}

/// Registry refusals of one group, observed from the answers (4xx
/// counted whatever the checks say); mismatches fail the group after its
/// `RELIABILITY` line is printed.
#[derive(Default)]
struct Refusals {
    sent: usize,
    refused: usize,
    wrong: Vec<String>,
}

impl Refusals {
    fn observe(
        &mut self,
        what: &str,
        status: u16,
        body: &Value,
        want: u16,
        code: ErrorCode,
        names: &str,
    ) {
        self.sent += 1;
        if (400..500).contains(&status) {
            self.refused += 1;
        }
        if let Err(e) = check_api_error(what, status, body, want, code, names) {
            self.wrong.push(e);
        }
    }

    /// A request the server refused by closing the connection before
    /// reading it (nothing written, checked separately).
    fn closed(&mut self) {
        self.sent += 1;
        self.refused += 1;
    }

    fn assert_all(&self, group: &str) {
        assert!(self.wrong.is_empty(), "{group}: {:#?}", self.wrong);
        assert_eq!(
            self.refused, self.sent,
            "{group}: refused {} of {}",
            self.refused, self.sent
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_refuses_bad_admin_requests_and_writes_nothing() {
    let mut r = Registry::start(REGISTRY_ARGS);
    // Something in the log and the state first, so "unchanged" means something.
    r.mint("agent-base", ACT, None).await;
    let (status, body) = r
        .revoke(json!([{"kind": "warrant", "id": "base", "reason": "superseded"}]))
        .await;
    assert_eq!(status, 201, "{body}");
    let b = baseline(&r).await;
    let token = r.token();
    let http = r.http().clone();
    let good_revoke =
        json!({"entries": [{"kind": "warrant", "id": "never-written", "reason": "superseded"}]})
            .to_string();
    let good_mint =
        json!({"agent": "never-minted", "act": ACT, "ttl": 60, "holder_key": holder_jwk()})
            .to_string();
    let mut auth = Refusals::default();

    // --- authentication --------------------------------------------------------
    let wrong_same_len: String = token
        .chars()
        .map(|c| if c == 'a' { 'b' } else { 'a' })
        .collect();
    let auth_cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no Authorization", None, "missing admin token"),
        (
            "a wrong token of the right length",
            Some(format!("Bearer {wrong_same_len}")),
            "wrong admin token",
        ),
        (
            "a one-byte token",
            Some("Bearer x".into()),
            "wrong admin token",
        ),
        (
            "a 6 KiB token",
            Some(format!("Bearer {}", "t".repeat(6144))),
            "wrong admin token",
        ),
        (
            "the token with a suffix",
            Some(format!("Bearer {token}x")),
            "wrong admin token",
        ),
        (
            "the token as Basic",
            Some(format!("Basic {token}")),
            "`Basic`",
        ),
        (
            "an empty bearer",
            Some("Bearer ".into()),
            "missing admin token",
        ),
        ("the scheme alone", Some("Bearer".into()), "Bearer"),
    ];
    for endpoint in [path::REVOCATIONS, path::WARRANTS] {
        let body = if endpoint == path::REVOCATIONS {
            &good_revoke
        } else {
            &good_mint
        };
        for (what, header, names) in &auth_cases {
            let mut req = http
                .post(r.at(endpoint))
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(a) = header {
                req = req.header("authorization", a);
            }
            let (status, resp) = r.send(req).await;
            auth.observe(
                &format!("{endpoint}: {what}"),
                status,
                &resp,
                401,
                ErrorCode::Unauthorized,
                names,
            );
            assert_unchanged(&r, &b, what).await;
        }
    }
    // An unauthenticated body over the limit is refused for the token, not
    // read: the answer may come while the client is still sending, so a
    // connection closed after the 401 is acceptable too.
    let big = http
        .post(r.at(path::REVOCATIONS))
        .header("content-type", "application/json")
        .body(vec![b'['; 2 << 20])
        .send()
        .await;
    let big_outcome = match big {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            auth.observe(
                "2 MiB without a token",
                status,
                &body,
                401,
                ErrorCode::Unauthorized,
                "missing admin token",
            );
            status.to_string()
        }
        Err(e) => {
            auth.closed();
            format!("closed ({e})")
        }
    };
    assert_unchanged(&r, &b, "2 MiB without a token").await;
    // The scheme is case-insensitive (RFC 9110 11.1).
    let (status, resp) = r
        .send(
            http.get(r.at(&format!("{}?limit=1", path::REVOCATIONS)))
                .header("authorization", format!("bearer {token}")),
        )
        .await;
    assert_eq!(status, 200, "lower-case `bearer`: {resp}");
    println!(
        "RELIABILITY hostile registry-auth requests={} refused={} (none, wrong, 1 B, 6 KiB, suffixed, Basic, empty, scheme only; on both write endpoints; 2 MiB unauthenticated: {big_outcome})",
        auth.sent, auth.refused
    );
    auth.assert_all("registry-auth");

    // --- bodies ----------------------------------------------------------------
    let mut bodies = Refusals::default();
    let entry = |extra: &str| {
        format!(
            r#"{{"entries":[{{"kind":"warrant","id":"never-written","reason":"superseded"{extra}}}]}}"#
        )
    };
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"kind": "warrant", "id": format!("w{i}")}))
        .collect();
    let batch = json!({ "entries": many }).to_string();
    assert!(
        batch.len() < 1 << 20,
        "the batch test must not hit the byte limit"
    );
    let huge = json!({"entries": [{"kind": "warrant", "id": "x", "note": "n".repeat(1 << 20)}]})
        .to_string();
    let mut nested = "{\"entries\":".to_owned();
    nested.push_str(&"[".repeat(100_000));
    let mut non_utf8 = br#"{"entries":[{"kind":"warrant","id":""#.to_vec();
    non_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    non_utf8.extend_from_slice(br#"","reason":"superseded"}]}"#);
    let revoke_cases: Vec<(&str, Vec<u8>, u16, ErrorCode, &str)> = vec![
        ("an empty body", vec![], 400, ErrorCode::InvalidJson, "EOF"),
        ("truncated JSON", good_revoke.as_bytes()[..good_revoke.len() / 2].to_vec(), 400, ErrorCode::InvalidJson, "EOF"),
        ("a trailing comma", entry(",").into_bytes(), 400, ErrorCode::InvalidJson, "invalid JSON body"),
        ("trailing garbage", format!("{good_revoke} {{}}").into_bytes(), 400, ErrorCode::InvalidJson, "trailing characters"),
        ("duplicate `entries`", format!(r#"{{"entries":[],{}"#, &good_revoke[1..]).into_bytes(), 400, ErrorCode::InvalidJson, "duplicate field `entries`"),
        ("duplicate `id`", entry(r#","id":"other""#).into_bytes(), 400, ErrorCode::InvalidJson, "duplicate field `id`"),
        ("duplicate `kind`", entry(r#","kind":"key""#).into_bytes(), 400, ErrorCode::InvalidJson, "duplicate field `kind`"),
        ("an unknown top-level field", format!(r#"{{"dry_run":true,{}"#, &good_revoke[1..]).into_bytes(), 400, ErrorCode::InvalidJson, "unknown field `dry_run`"),
        ("an unknown entry field", entry(r#","colour":"red""#).into_bytes(), 400, ErrorCode::InvalidJson, "unknown field `colour`"),
        ("`id` a number", br#"{"entries":[{"kind":"warrant","id":5}]}"#.to_vec(), 400, ErrorCode::InvalidJson, "invalid type"),
        ("`entries` an object", br#"{"entries":{"kind":"warrant","id":"x"}}"#.to_vec(), 400, ErrorCode::InvalidJson, "invalid type"),
        ("`before` a string", br#"{"entries":[{"kind":"agent","id":"a","before":"yesterday"}]}"#.to_vec(), 400, ErrorCode::InvalidJson, "invalid type"),
        ("`before` negative", br#"{"entries":[{"kind":"agent","id":"a","before":-1}]}"#.to_vec(), 400, ErrorCode::InvalidJson, "invalid value"),
        ("`expires_at` a float", entry(r#","expires_at":1e30"#).into_bytes(), 400, ErrorCode::InvalidJson, "invalid type"),
        ("`expires_at` over u64", entry(r#","expires_at":18446744073709551616"#).into_bytes(), 400, ErrorCode::InvalidJson, "invalid"),
        ("`entries` null", br#"{"entries":null}"#.to_vec(), 400, ErrorCode::InvalidJson, "invalid type"),
        ("a JSON array", b"[]".to_vec(), 400, ErrorCode::InvalidJson, "must be a JSON object"),
        ("the body as an array of its fields", br#"[[{"kind":"warrant","id":"x"}]]"#.to_vec(), 400, ErrorCode::InvalidJson, "must be a JSON object"),
        ("an entry as an array of its fields", br#"{"entries":[["warrant","x"]]}"#.to_vec(), 400, ErrorCode::InvalidJson, "entry 0 must be a JSON object"),
        ("no entries", br#"{"entries":[]}"#.to_vec(), 400, ErrorCode::NoEntries, "`entries` is empty"),
        ("an unknown kind", br#"{"entries":[{"kind":"user","id":"x"}]}"#.to_vec(), 400, ErrorCode::UnknownKind, "`user`"),
        ("an unknown reason", entry("").replace("superseded", "because").into_bytes(), 400, ErrorCode::UnknownReason, "`because`"),
        ("an empty id", br#"{"entries":[{"kind":"warrant","id":""}]}"#.to_vec(), 400, ErrorCode::InvalidId, "`id` is empty"),
        ("a 257-byte id", json!({"entries": [{"kind": "warrant", "id": "i".repeat(257)}]}).to_string().into_bytes(), 400, ErrorCode::InvalidId, "257 bytes, over the 256-byte limit"),
        ("an agent entry without `before`", br#"{"entries":[{"kind":"agent","id":"a"}]}"#.to_vec(), 400, ErrorCode::MissingBefore, "`before`"),
        ("a 1025-byte note", json!({"entries": [{"kind": "warrant", "id": "x", "note": "n".repeat(1025)}]}).to_string().into_bytes(), 400, ErrorCode::InvalidNote, "`note`"),
        ("an actor in the body (the token names it)", json!({"entries": [{"kind": "warrant", "id": "x"}], "actor": "root-operator"}).to_string().into_bytes(), 400, ErrorCode::InvalidJson, "unknown field `actor`"),
        ("10,001 entries", batch.into_bytes(), 400, ErrorCode::BatchTooLarge, "10001 entries, over the limit of 10000"),
        ("the 10,001st entry bad after 10,000 good ones", {
            let mut v: Vec<Value> = (0..10_000).map(|i| json!({"kind": "warrant", "id": format!("g{i}")})).collect();
            v.push(json!({"kind": "warrant", "id": ""}));
            json!({"entries": v}).to_string().into_bytes()
        }, 400, ErrorCode::BatchTooLarge, "10001 entries"),
        ("the last of 3 entries bad", br#"{"entries":[{"kind":"warrant","id":"p1"},{"kind":"warrant","id":"p2"},{"kind":"warrant","id":""}]}"#.to_vec(), 400, ErrorCode::InvalidId, "entry 2"),
        // Times past what the store's signed integers hold would wrap
        // negative and be pruned at once: refused, every kind and field.
        ("`expires_at` 2^63", br#"{"entries":[{"kind":"warrant","id":"w","expires_at":9223372036854775808}]}"#.to_vec(), 400, ErrorCode::InvalidExpiresAt, "9999-12-31"),
        ("`expires_at` u64::MAX on a key", br#"{"entries":[{"kind":"key","id":"k","expires_at":18446744073709551615}]}"#.to_vec(), 400, ErrorCode::InvalidExpiresAt, "9999-12-31"),
        ("`before` 2^63", br#"{"entries":[{"kind":"agent","id":"a","before":9223372036854775808}]}"#.to_vec(), 400, ErrorCode::InvalidBefore, "9999-12-31"),
        ("an agent expiring before its cutoff", format!(r#"{{"entries":[{{"kind":"agent","id":"a","before":{},"expires_at":{}}}]}}"#, now() + 1000, now() + 2).into_bytes(), 400, ErrorCode::InvalidExpiresAt, "cutoff"),
        ("a body over 1 MiB", huge.into_bytes(), 413, ErrorCode::BodyTooLarge, "1048576-byte limit"),
        ("100,000 nested `[`", nested.into_bytes(), 400, ErrorCode::InvalidJson, "recursion limit exceeded"),
        ("a non-UTF-8 id", non_utf8, 400, ErrorCode::InvalidJson, "invalid unicode"),
        ("UTF-16", "{\"entries\":[]}".encode_utf16().flat_map(u16::to_le_bytes).collect(), 400, ErrorCode::InvalidJson, "invalid JSON body"),
        ("a form body", b"entries=warrant%3Ax".to_vec(), 400, ErrorCode::InvalidJson, "invalid JSON body"),
    ];
    let revoke_count = revoke_cases.len();
    for (what, body, want, code, names) in revoke_cases {
        let (status, resp) = r
            .send(
                http.post(r.at(path::REVOCATIONS))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        bodies.observe(what, status, &resp, want, code, names);
        assert_unchanged(&r, &b, what).await;
    }
    // A body that is valid JSON but not declared as such.
    for ctype in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let (status, resp) = r
            .send(
                http.post(r.at(path::REVOCATIONS))
                    .bearer_auth(&token)
                    .header("content-type", ctype)
                    .body(good_revoke.clone()),
            )
            .await;
        bodies.observe(
            ctype,
            status,
            &resp,
            415,
            ErrorCode::UnsupportedMediaType,
            "application/json",
        );
        assert_unchanged(&r, &b, ctype).await;
    }
    let (status, resp) = r
        .send(
            http.post(r.at(path::REVOCATIONS))
                .bearer_auth(&token)
                .body(good_revoke.clone()),
        )
        .await;
    bodies.observe(
        "no content type",
        status,
        &resp,
        415,
        ErrorCode::UnsupportedMediaType,
        "no content type",
    );
    assert_unchanged(&r, &b, "no content type").await;
    let mint_cases: Vec<(&str, String, ErrorCode, &str)> = vec![
        ("truncated", good_mint[..10].to_owned(), ErrorCode::InvalidJson, "EOF"),
        ("duplicate `ttl`", format!(r#"{{"ttl":99999999,{}"#, &good_mint[1..]), ErrorCode::InvalidJson, "duplicate field `ttl`"),
        ("duplicate `act`", format!(r#"{{"act":["*"],{}"#, &good_mint[1..]), ErrorCode::InvalidJson, "duplicate field `act`"),
        ("an unknown field", format!(r#"{{"admin":true,{}"#, &good_mint[1..]), ErrorCode::InvalidJson, "unknown field `admin`"),
        ("`ttl` negative", json!({"agent": "a", "act": ACT, "ttl": -1}).to_string(), ErrorCode::InvalidJson, "invalid value"),
        ("`ttl` a string", json!({"agent": "a", "act": ACT, "ttl": "60"}).to_string(), ErrorCode::InvalidJson, "invalid type"),
        ("`ttl` zero", json!({"agent": "a", "act": ACT, "ttl": 0}).to_string(), ErrorCode::InvalidTtl, "`ttl`"),
        ("`ttl` ten years", json!({"agent": "a", "act": ACT, "ttl": 315_360_000}).to_string(), ErrorCode::InvalidTtl, "`ttl`"),
        ("`act` a string", json!({"agent": "a", "act": "*", "ttl": 60}).to_string(), ErrorCode::InvalidJson, "invalid type"),
        ("`act` empty", json!({"agent": "a", "act": [], "ttl": 60}).to_string(), ErrorCode::InvalidAct, "`act` is empty"),
        ("`act` a bad pattern", json!({"agent": "a", "act": ["a*b"], "ttl": 60}).to_string(), ErrorCode::InvalidAct, "a*b"),
        ("a 257-byte agent", json!({"agent": "a".repeat(257), "act": ACT, "ttl": 60}).to_string(), ErrorCode::InvalidAgent, "`agent`"),
        ("a holder key of the wrong type", json!({"agent": "a", "act": ACT, "ttl": 60, "holder_key": {"kty": "RSA", "n": "x", "e": "AQAB"}}).to_string(), ErrorCode::InvalidJson, "invalid JSON body"),
        ("a holder key as an array", json!({"agent": "a", "act": ACT, "ttl": 60, "holder_key": ["OKP", "Ed25519", "x"]}).to_string(), ErrorCode::InvalidJson, "`holder_key` must be a JWK object"),
        ("a holder key that is not a point", json!({"agent": "a", "act": ACT, "ttl": 60, "holder_key": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}}).to_string(), ErrorCode::InvalidHolderKey, "`holder_key`"),
    ];
    let mint_count = mint_cases.len();
    for (what, body, code, names) in mint_cases {
        let (status, resp) = r
            .send(
                http.post(r.at(path::WARRANTS))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        bodies.observe(&format!("mint {what}"), status, &resp, 400, code, names);
        assert_unchanged(&r, &b, what).await;
    }
    println!(
        "RELIABILITY hostile registry-bodies requests={} refused={} ({revoke_count} revocation bodies: truncated, duplicate keys, unknown fields, wrong types, arrays for objects, 10,001 entries, 257-byte id, > 1 MiB, 100k `[`, non-UTF-8; 4 content types (3 wrong, 1 missing); {mint_count} mint bodies) version_unchanged={} audit_rows_unchanged={}",
        bodies.sent, bodies.refused, b.version, b.audit
    );
    bodies.assert_all("registry-bodies");

    // --- queries and resume ids --------------------------------------------------
    let mut queries = Refusals::default();
    for (since, code) in [
        ("since=abc", ErrorCode::InvalidSince),
        ("since=-1", ErrorCode::InvalidSince),
        ("since=", ErrorCode::InvalidSince),
        ("since=1.5", ErrorCode::InvalidSince),
        ("since=0x10", ErrorCode::InvalidSince),
        ("since=18446744073709551616", ErrorCode::InvalidSince),
        (
            "since=99999999999999999999999999999999",
            ErrorCode::InvalidSince,
        ),
        ("since=%ff", ErrorCode::InvalidSince),
        ("since=1&since=2", ErrorCode::InvalidSince),
        ("", ErrorCode::MissingSince),
        ("other=1", ErrorCode::MissingSince),
    ] {
        let (status, resp) = r.get(&format!("{}?{since}", path::SRL_DELTAS)).await;
        queries.observe(
            &format!("deltas?{since}"),
            status,
            &resp,
            400,
            code,
            "since",
        );
    }
    // The largest version is well-formed: nothing after it.
    let (status, resp) = r.deltas_since(u64::MAX).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp, serde_json::to_value(DeltasPage::default()).unwrap());
    for id in [
        "abc",
        "-1",
        "1.0",
        "99999999999999999999999",
        "",
        &"9".repeat(8000),
    ] {
        let resp = http
            .get(r.at(path::SRL_EVENTS))
            .header("last-event-id", id)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        queries.observe(
            &format!("Last-Event-ID `{:.20}`", id),
            status,
            &body,
            400,
            ErrorCode::InvalidLastEventId,
            "Last-Event-ID",
        );
    }
    let resp = http
        .get(r.at(path::SRL_EVENTS))
        .header(
            "last-event-id",
            reqwest::header::HeaderValue::from_bytes(&[0xff, 0x31]).unwrap(),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    queries.observe(
        "a non-ASCII Last-Event-ID",
        status,
        &body,
        400,
        ErrorCode::InvalidLastEventId,
        "Last-Event-ID",
    );
    for since in ["abc", "-1", "1&since=2"] {
        let resp = http
            .get(r.at(&format!("{}?since={since}", path::SRL_EVENTS)))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        queries.observe(
            &format!("events?since={since}"),
            status,
            &body,
            400,
            ErrorCode::InvalidSince,
            "since",
        );
    }
    // A resume id from the future is not an error: nothing to replay.
    let mut ahead = EventStream::open(&r.at(path::SRL_EVENTS), Some("18446744073709551615")).await;
    let first = ahead.next(WITHIN).await;
    assert_eq!(first.event, EventKind::Checkpoint.as_str());
    drop(ahead);
    for query in ["limit=0", "limit=abc", "kind=user", "after=x", "bogus=1"] {
        let (status, resp) = r.admin_get(&format!("{}?{query}", path::REVOCATIONS)).await;
        // Any code of the contract will do here; the message is not checked.
        let code = ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| resp["error"] == c.as_str())
            .unwrap_or_else(|| panic!("audit ?{query}: no code of the contract in {resp}"));
        queries.observe(&format!("audit ?{query}"), status, &resp, 400, code, "");
    }
    assert_unchanged(&r, &b, "queries").await;
    assert!(r.process().is_running(), "the registry died");
    println!(
        "RELIABILITY hostile registry-queries requests={} refused={} (11 bad `since`, 7 bad Last-Event-ID, 3 bad events `since`, 5 bad audit queries; since=u64::MAX answers an empty list)",
        queries.sent, queries.refused
    );
    queries.assert_all("registry-queries");
}

// ---------------------------------------------------------------------------
// The registry: a flood of SSE subscribers.

async fn open_raw(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_flood_is_refused_while_subscribers_keep_receiving() {
    const MAX: usize = 32;
    const EXCESS: usize = 400;
    let max = MAX.to_string();
    let mut r = Registry::start(&["--heartbeat", "1s", "--max-subscribers", &max]);
    let pid = r.process().id();
    let (rss0, _) = rss_kib(pid);
    let url = r.at(path::SRL_EVENTS);
    let mut subs = Vec::new();
    for _ in 0..MAX {
        subs.push(EventStream::open(&url, None).await);
    }
    let http = reqwest::Client::builder().timeout(WITHIN).build().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..EXCESS {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            let resp = open_raw(&http, &url).await;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        });
    }
    let mut refused = 0;
    while let Some(res) = tasks.join_next().await {
        let (status, body) = res.unwrap();
        assert_api_error(
            "an excess subscriber",
            status,
            &body,
            503,
            ErrorCode::TooManySubscribers,
            "subscriber limit",
        );
        refused += 1;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let (rss_flood, _) = rss_kib(pid);
    // The subscribers already connected still get every delta.
    let ver = r.revoke_warrant("flood-victim").await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let e = sub.next_except(EventKind::Checkpoint, WITHIN).await;
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            (EventKind::Delta.as_str(), Some(ver.to_string().as_str())),
            "subscriber {i}"
        );
    }
    // A burst from zero admits at most the limit, even when concurrent.
    drop(subs);
    let metrics_url = r.at(path::METRICS);
    let gauge = |text: &str| metric_value(text, "veto_registry_sse_subscribers");
    let start = Instant::now();
    loop {
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if gauge(&text) == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "subscribers never released:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..(MAX * 4) {
        let (http, url) = (http.clone(), url.clone());
        burst.spawn(async move { open_raw(&http, &url).await });
    }
    let mut held = Vec::new();
    let mut burst_refused = 0;
    while let Some(res) = burst.join_next().await {
        let resp = res.unwrap();
        match resp.status().as_u16() {
            200 => held.push(resp),
            503 => burst_refused += 1,
            other => panic!("burst subscriber: {other}"),
        }
    }
    assert!(
        held.len() <= MAX,
        "{} subscribers admitted over a limit of {MAX}",
        held.len()
    );
    assert!(!held.is_empty());
    let (rss1, hwm) = rss_kib(pid);
    assert_eq!(r.get(path::HEALTHZ).await.0, 200);
    println!(
        "RELIABILITY hostile registry-sse-flood max_subscribers={MAX} excess={EXCESS} refused_503={refused} in_seconds={flood_secs:.2} delivered_to={MAX}/{MAX} burst={} admitted={} refused={burst_refused} registry_rss_mib_before={:.1} after_flood={:.1} after={:.1} peak={:.1}",
        MAX * 4,
        held.len(),
        mib(rss0),
        mib(rss_flood),
        mib(rss1),
        mib(hwm)
    );
    assert!(
        rss1 < rss0 + 64 * 1024,
        "registry RSS grew from {rss0} to {rss1} KiB"
    );
}

// ---------------------------------------------------------------------------
// The proxy: slow-loris clients.

/// Opens `clients` connections to `addr` that send half a request head and
/// wait; returns how long until the last was closed by the server.
async fn slow_loris(addr: &str, clients: usize) -> Duration {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(
                format!(
                    "GET {}?{i} HTTP/1.1\r\nHost: x\r\nX-Slow:",
                    path::SRL_CHECKPOINT
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let mut buf = Vec::new();
            // The server must end the connection: read to EOF (or reset).
            let _ = tokio::time::timeout(WITHIN, s.read_to_end(&mut buf))
                .await
                .expect("a slow-loris connection was kept open");
            started.elapsed()
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.unwrap());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_disconnected_after_the_header_timeout() {
    const CLIENTS: usize = 200;
    let registry = Registry::start(&["--heartbeat", "1s", "--header-timeout", "1s"]);
    let upstream = ok_upstream().await;
    let dir = TempDir::new("hostile-loris");
    let proxy = Proxy::start(&dir, &registry, &upstream, &["--header-timeout", "1s"]);

    let (proxy_rss0, _) = rss_kib(proxy.pid());
    let proxy_slowest = slow_loris(proxy.url.trim_start_matches("http://"), CLIENTS).await;
    let (proxy_rss1, proxy_hwm) = rss_kib(proxy.pid());
    let (reg_rss0, _) = rss_kib(registry.pid());
    let reg_slowest = slow_loris(&registry.addr.to_string(), CLIENTS).await;
    let (reg_rss1, reg_hwm) = rss_kib(registry.pid());

    // Afterwards, real clients are served by both.
    assert_eq!(registry.get(path::HEALTHZ).await.0, 200);
    let (root, _) = registry.mint("agent-loris", ACT, None).await;
    let http = client();
    let start = Instant::now();
    while call(&http, &proxy, &root).await.0 != 200 {
        assert!(start.elapsed() < WITHIN, "the proxy stopped serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "RELIABILITY hostile slow-loris clients={CLIENTS} header_timeout_s=1 proxy_all_closed_within_ms={:.0} proxy_rss_mib_before={:.1} after={:.1} peak={:.1} registry_all_closed_within_ms={:.0} registry_rss_mib_before={:.1} after={:.1} peak={:.1}",
        proxy_slowest.as_secs_f64() * 1e3,
        mib(proxy_rss0),
        mib(proxy_rss1),
        mib(proxy_hwm),
        reg_slowest.as_secs_f64() * 1e3,
        mib(reg_rss0),
        mib(reg_rss1),
        mib(reg_hwm),
    );
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
