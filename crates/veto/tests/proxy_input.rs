//! Hostile request shapes against a real `veto proxy` on loopback (issue
//! 10): path spellings that would widen a delegated warrant, aliased
//! identity headers, two credentials in one request, method overrides,
//! upgrades (h2c, WebSocket) and open streams outliving their chain, and
//! an upstream that never answers.
//!
//! Requests are written byte for byte on a TCP socket where an HTTP client
//! would normalize them (`..`, `%2e`, duplicate headers). The upstream
//! records the raw target and headers it receives, so every test checks
//! what got through, not only what the client was told.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, Uri};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use veto_core::wire::ErrorCode;
use veto_core::{warrant, DenyReason, LinkSpec, SigningKey};
use veto_testkit::{now, Proxy, Registry, TempDir};

const REGISTRY_ARGS: &[&str] = &["--heartbeat", "1s"];
const ROOT_ACT: &[&str] = &["http:GET:/*"];
const CHILD_ACT: &str = "http:GET:/orders/*";
const WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The upstream: records what reaches it.

#[derive(Clone, Debug)]
struct Seen {
    /// The method the upstream would act on: the request's, or the one a
    /// method-override header asks for (as many frameworks honour them).
    effective_method: String,
    /// The request target exactly as received.
    target: String,
    headers: HeaderMap,
}

#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw nothing")
    }

    fn targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect()
    }
}

async fn start_upstream() -> (String, Upstream) {
    let up = Upstream::default();
    let rec = up.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap| async move {
            let effective_method = [
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ]
            .iter()
            .find_map(|h| headers.get(*h))
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| method.to_string(), str::to_owned);
            rec.seen.lock().unwrap().push(Seen {
                effective_method,
                target: uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
                headers,
            });
            "ok"
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, up)
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1.

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.head, self.body))
    }
}

/// Reads one response head (and its `Content-Length` body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(str::trim))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head
                    .get(9..12)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("no status in `{head}`"));
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return Raw { status, head, body };
            }
        }
        let n = tokio::time::timeout(WITHIN, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no whole response within {WITHIN:?}: {buf:?}"))
            .unwrap_or_else(|e| panic!("reading a response: {e}"));
        assert!(
            n > 0,
            "closed before a whole response: `{}`",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `METHOD target` with `headers` (lines `name: value`) on a fresh
/// connection and reads the answer.
async fn raw(proxy: &Proxy, method: &str, target: &str, headers: &[String]) -> Raw {
    raw_to(&proxy.url, method, target, headers).await
}

/// [`raw`] to any `http://addr`.
async fn raw_to(url: &str, method: &str, target: &str, headers: &[String]) -> Raw {
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: proxy\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("connection: close\r\n\r\n");
    let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

fn bearer(chain: &str) -> String {
    format!("authorization: Bearer {chain}")
}

/// Asserts `{"error": code, "message": text}` with this status, and that
/// the message mentions `needle` (case-insensitive).
fn assert_refused(what: &str, r: &Raw, status: u16, code: ErrorCode, needle: &str) {
    assert_error_body(what, r, status, code.as_str(), needle);
}

/// As [`assert_refused`], for a denial.
fn assert_denied(what: &str, r: &Raw, status: u16, reason: DenyReason, needle: &str) {
    assert_error_body(what, r, status, reason.as_str(), needle);
}

fn assert_error_body(what: &str, r: &Raw, status: u16, code: &str, needle: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.head, r.body);
    let body = r.json();
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 2, "{what}: {body}");
    assert_eq!(body["error"], code, "{what}: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: message `{message}` does not name `{needle}`"
    );
}

// ---------------------------------------------------------------------------
// Set-up.

struct Setup {
    registry: Registry,
    upstream_url: String,
    upstream: Upstream,
    dir: TempDir,
    holder: SigningKey,
    root: String,
}

impl Setup {
    async fn new(label: &str) -> Self {
        let registry = Registry::start(REGISTRY_ARGS);
        let (upstream_url, upstream) = start_upstream().await;
        let holder = SigningKey::generate().unwrap();
        let (root, _) = registry.mint(label, ROOT_ACT, Some(holder.public())).await;
        Self {
            registry,
            upstream_url,
            upstream,
            dir: TempDir::new(label),
            holder,
            root,
        }
    }

    async fn proxy(&self, args: &[&str]) -> Proxy {
        let proxy = Proxy::start(&self.dir, &self.registry, &self.upstream_url, args);
        wait_allowed(&proxy, &self.root).await;
        proxy
    }

    /// A child of the root for `sub`, with `act`, expiring in `ttl` seconds.
    fn child(&self, sub: &str, act: &str, ttl: u64) -> String {
        let now = now();
        let spec = LinkSpec {
            sub: sub.into(),
            act: vec![act.into()],
            iat: now,
            exp: now + ttl,
            holder: Some(SigningKey::generate().unwrap().public().clone()),
        };
        warrant::delegate(&self.root, &self.holder, spec).unwrap()
    }
}

/// Waits until the proxy is fresh and allows `chain` on `/orders/1`.
async fn wait_allowed(proxy: &Proxy, chain: &str) {
    let start = Instant::now();
    loop {
        let fresh = proxy.health().await["sync"]["fresh"] == true;
        if fresh
            && raw(proxy, "GET", "/orders/1", &[bearer(chain)])
                .await
                .status
                == 200
        {
            return;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the proxy never allowed the chain; log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Path spellings.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_spellings_cannot_widen_a_delegated_warrant() {
    let s = Setup::new("path-tricks").await;
    let proxy = s.proxy(&[]).await;
    let child = s.child("worker", CHILD_ACT, 600);
    let auth = [bearer(&child)];

    // The canonical target is what is authorized and what is forwarded.
    for (target, forwarded) in [
        ("/orders/1", "/orders/1"),
        ("/orders/./1", "/orders/1"),
        ("/orders/x/../1", "/orders/1"),
        ("/%6Frders/%31", "/orders/1"),
        ("/orders/a%2eb", "/orders/a.b"),
        ("/orders/%c3%a9", "/orders/%C3%A9"),
        (
            "/orders/1?next=/../secret.txt&x=%2e%2e",
            "/orders/1?next=/../secret.txt&x=%2e%2e",
        ),
        ("http://elsewhere.example/orders/./1", "/orders/1"),
    ] {
        let r = raw(&proxy, "GET", target, &auth).await;
        assert_eq!(r.status, 200, "`{target}`: {} {}", r.head, r.body);
        assert_eq!(s.upstream.last().target, forwarded, "`{target}`");
    }

    // Resolved dot segments that leave the delegated prefix are judged on
    // where they land: `/secret.txt`, outside `/orders/*`.
    let before = s.upstream.count();
    for target in [
        "/orders/../secret.txt",
        "/orders/1/../../secret.txt",
        "/orders/./../secret.txt",
        "http://elsewhere.example/orders/../secret.txt",
    ] {
        let r = raw(&proxy, "GET", target, &auth).await;
        assert_denied(target, &r, 403, DenyReason::ActionDenied, "/secret.txt");
    }
    // The same for another method the child does not hold.
    let r = raw(&proxy, "DELETE", "/orders/../orders/1", &auth).await;
    assert_denied("DELETE", &r, 403, DenyReason::ActionDenied, "DELETE");

    // Spellings servers read differently are refused before any decision.
    let cases: &[(&str, &str)] = &[
        ("/orders/%2e%2e/secret.txt", "dot segment"),
        ("/orders/%252e%252e/secret.txt", "double encoding"),
        ("/orders/%c0%ae%c0%ae/secret.txt", "not UTF-8"),
        ("/orders/%e0%80%af", "not UTF-8"),
        ("/orders/%EF%BC%8E%EF%BC%8E/secret.txt", "normalizes"),
        ("/orders/%2E%2E/secret.txt", "dot segment"),
        ("/orders/.%2e/secret.txt", "dot segment"),
        ("/orders/%2e./secret.txt", "dot segment"),
        ("/orders/%2e/1", "dot segment"),
        ("/orders%2f..%2fsecret.txt", "encoded `/`"),
        ("/orders/..%2Fsecret.txt", "encoded `/`"),
        ("/orders/..%5csecret.txt", "backslash"),
        ("/orders/..\\secret.txt", "backslash"),
        ("/orders/%00", "control character"),
        ("/orders/%0d%0a", "control character"),
        ("/orders/%zz", "percent-escape"),
        ("/orders/%4", "percent-escape"),
        ("/orders/%", "percent-escape"),
        ("/orders//../secret.txt", "empty path segment"),
        ("//secret.txt", "empty path segment"),
        ("/orders/..;/secret.txt", "`;`"),
        ("/orders/1;jsessionid=x", "`;`"),
        ("/../secret.txt", "above `/`"),
        ("/orders/../../secret.txt", "above `/`"),
        ("/orders/{1}", "`{`"),
        ("/orders/|", "`|`"),
        ("/orders/\"1\"", "`\"`"),
        ("/orders/\u{e9}", "non-ascii"),
        ("*", "names no path"),
    ];
    for (target, needle) in cases {
        let r = raw(&proxy, "GET", target, &auth).await;
        assert_refused(target, &r, 400, ErrorCode::BadTarget, needle);
    }
    // Raw control characters in the request line never reach the proxy's
    // code: the HTTP parser answers a bare 400 itself.
    for target in ["/orders/\u{7f}", "/orders/\t1"] {
        let r = raw(&proxy, "GET", target, &auth).await;
        assert_eq!(r.status, 400, "{target:?}: {} {}", r.head, r.body);
    }
    let r = raw(&proxy, "OPTIONS", "*", &auth).await;
    assert_refused("OPTIONS *", &r, 400, ErrorCode::BadTarget, "names no path");
    assert_eq!(
        s.upstream.count(),
        before,
        "a refused target reached the upstream: {:?}",
        s.upstream.targets()
    );
    assert!(
        proxy
            .metric("veto_proxy_requests_total{outcome=\"bad_target\"}")
            .await
            >= cases.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_files_match_the_canonical_path() {
    let s = Setup::new("path-routes").await;
    let routes = s.dir.path().join("routes");
    std::fs::write(&routes, "* /admin* admin:all\n").unwrap();
    let proxy = s.proxy(&["--routes", routes.to_str().unwrap()]).await;
    let auth = [bearer(&s.root)];
    let before = s.upstream.count();
    // The root holds `http:GET:/*` but not `admin:all`.
    for target in [
        "/admin/users",
        "/x/../admin/users",
        "/./admin/users",
        "/%61dmin/users",
        "/%61%64%6D%69%6E",
    ] {
        let r = raw(&proxy, "GET", target, &auth).await;
        assert_denied(target, &r, 403, DenyReason::ActionDenied, "admin:all");
    }
    let r = raw(&proxy, "GET", "/admin%2fusers", &auth).await;
    assert_refused(
        "/admin%2fusers",
        &r,
        400,
        ErrorCode::BadTarget,
        "encoded `/`",
    );
    // Neither the path's case (upstreams that route case-insensitively)
    // nor a lowercase method dodges a rule; HEAD meets the GET rules.
    for target in ["/ADMIN", "/Admin/users", "/%41dmin"] {
        let r = raw(&proxy, "GET", target, &auth).await;
        assert_denied(target, &r, 403, DenyReason::ActionDenied, "admin:all");
        let head = reqwest::Client::new()
            .head(proxy.at(target))
            .bearer_auth(&s.root)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status().as_u16(), 403, "HEAD {target}");
    }
    for method in ["get", "Get", "post"] {
        let r = raw(&proxy, method, "/admin", &auth).await;
        assert_refused(method, &r, 400, ErrorCode::BadTarget, "uppercase");
    }
    assert_eq!(s.upstream.count(), before, "{:?}", s.upstream.targets());

    // A route file whose rule is not canonical is refused at start.
    std::fs::write(&routes, "* /x/../admin* admin:all\n").unwrap();
    let out = veto_testkit::veto_command(s.dir.path())
        .args(["proxy", "--upstream", &s.upstream_url, "--authority-key"])
        .arg(s.registry.authority_key_file())
        .args([
            "--routes",
            routes.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("canonical"), "{err}");
}

// ---------------------------------------------------------------------------
// 2 and 8. Headers the upstream must never take from the client.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliased_identity_and_method_override_headers_never_reach_the_upstream() {
    let s = Setup::new("alias-headers").await;
    let proxy = s.proxy(&[]).await;
    let child = s.child("worker", CHILD_ACT, 600);
    let sent = [
        bearer(&child),
        "Veto_Agent: admin".into(),
        "veto_agent: admin2".into(),
        "Veto_Stale: 0".into(),
        "Veto_Warrant: forged".into(),
        "VETO-AGENT: mallory".into(),
        "Veto-Agent: mallory2".into(),
        "Veto-Warrant: forged".into(),
        "Veto-Stale: 1".into(),
        "Veto-Root: issuer".into(),
        "Veto-Holder: forged".into(),
        "X_Forwarded_For: 10.0.0.1".into(),
        "X-HTTP-Method-Override: DELETE".into(),
        "X-HTTP-Method: DELETE".into(),
        "X-Method-Override: DELETE".into(),
        "X-Original-Method: DELETE".into(),
        "X-Forwarded-Method: DELETE".into(),
        "X-Original-URL: /admin".into(),
        "X-Rewrite-URL: /admin".into(),
        "X-Forwarded-Uri: /admin".into(),
        "X-Forwarded-Path: /admin".into(),
        "X-Forwarded-Prefix: /admin".into(),
        "X-Envoy-Original-Path: /admin".into(),
        "Forwarded: for=10.0.0.9;host=admin.internal".into(),
        "X-Forwarded-Host: admin.internal".into(),
        "X-Forwarded-Proto: https".into(),
        "X-Real-IP: 10.0.0.9".into(),
        "X-Kept: yes".into(),
    ];
    let r = raw(&proxy, "GET", "/orders/7", &sent).await;
    assert_eq!(r.status, 200, "{} {}", r.head, r.body);
    let seen = s.upstream.last();
    let names: Vec<&str> = seen.headers.keys().map(|n| n.as_str()).collect();
    assert!(
        names.iter().all(|n| !n.contains('_')),
        "an underscore header reached the upstream: {names:?}"
    );
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(all("veto-agent"), ["worker"], "{names:?}");
    assert_eq!(all("veto-warrant").len(), 1, "{names:?}");
    assert_ne!(all("veto-warrant"), ["forged"]);
    assert!(all("veto-stale").is_empty(), "{names:?}");
    assert!(all("veto-root").is_empty() && all("veto-holder").is_empty());
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
        "x-forwarded-method",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-uri",
        "x-forwarded-path",
        "x-forwarded-prefix",
        "x-envoy-original-path",
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    ] {
        assert!(all(h).is_empty(), "`{h}` reached the upstream");
    }
    assert_eq!(seen.effective_method, "GET");
    assert_eq!(all("x-kept"), ["yes"], "an ordinary header was dropped");

    // An agent id a header cannot carry as is arrives escaped, never
    // dropped and never trimmed into another name.
    for (sub, escaped) in [
        (" admin", "%20admin"),
        ("ad\r\nmin", "ad%0D%0Amin"),
        ("wor\u{202E}ker", "wor%E2%80%AEker"),
    ] {
        let child = s.child(sub, CHILD_ACT, 600);
        let r = raw(&proxy, "GET", "/orders/7", &[bearer(&child)]).await;
        assert_eq!(r.status, 200, "{sub:?}: {} {}", r.head, r.body);
        let seen = s.upstream.last();
        let agent: Vec<&str> = seen
            .headers
            .get_all("veto-agent")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(agent, [escaped], "{sub:?}");
        assert_eq!(seen.headers.get_all("veto-warrant").iter().count(), 1);
    }
}

// ---------------------------------------------------------------------------
// 5. More than one credential.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_two_credentials_is_refused() {
    let s = Setup::new("two-credentials").await;
    let proxy = s.proxy(&[]).await;
    let (revoked, jti) = s.registry.mint("victim", ROOT_ACT, None).await;
    s.registry.revoke_warrant(&jti).await;
    let start = Instant::now();
    while raw(&proxy, "GET", "/orders/1", &[bearer(&revoked)])
        .await
        .status
        != 403
    {
        assert!(start.elapsed() < WITHIN, "the revocation never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let good = &s.root;
    let before = s.upstream.count();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("valid then revoked", vec![bearer(good), bearer(&revoked)]),
        ("revoked then valid", vec![bearer(&revoked), bearer(good)]),
        ("two identical", vec![bearer(good), bearer(good)]),
        (
            "valid then empty",
            vec![bearer(good), "authorization: ".into()],
        ),
        (
            "valid then another scheme",
            vec![bearer(good), "Authorization: Basic dXNlcjpwYXNz".into()],
        ),
        (
            "comma-joined with a second scheme",
            vec![format!("authorization: Bearer {good}, Bearer {revoked}")],
        ),
        (
            "comma-joined chains",
            vec![format!("authorization: Bearer {good},{revoked}")],
        ),
    ];
    for (what, headers) in &cases {
        let r = raw(&proxy, "GET", "/orders/1", headers).await;
        assert_denied(
            what,
            &r,
            401,
            DenyReason::Malformed,
            "more than one credential",
        );
    }
    assert_eq!(
        s.upstream.count(),
        before,
        "a two-credential request got through"
    );
    // One credential still works.
    assert_eq!(
        raw(&proxy, "GET", "/orders/1", &[bearer(good)])
            .await
            .status,
        200
    );
}

// ---------------------------------------------------------------------------
// 8. The upstream timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_a_504() {
    let registry = Registry::start(REGISTRY_ARGS);
    // Accepts connections and reads, but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let dir = TempDir::new("upstream-timeout");
    let proxy = Proxy::start(&dir, &registry, &silent_url, &["--upstream-timeout", "1s"]);
    let (root, _) = registry.mint("patient", ROOT_ACT, None).await;
    let start = Instant::now();
    let r = loop {
        let t = Instant::now();
        let r = raw(&proxy, "GET", "/orders/1", &[bearer(&root)]).await;
        if r.status == 504 {
            break (r, t.elapsed());
        }
        assert!(
            start.elapsed() < WITHIN,
            "never a 504: {} {}",
            r.head,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_refused(
        "silent upstream",
        &r.0,
        504,
        ErrorCode::UpstreamTimeout,
        "--upstream-timeout",
    );
    assert!(
        r.1 >= Duration::from_millis(900) && r.1 < Duration::from_secs(5),
        "answered after {:?}",
        r.1
    );
}

// ---------------------------------------------------------------------------
// 7. Upgrades and open streams.

/// Opens a WebSocket-upgraded tunnel through the proxy with `chain`.
async fn open_tunnel(proxy: &Proxy, chain: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let req = format!(
        "GET /orders/ws HTTP/1.1\r\nhost: proxy\r\n{}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        bearer(chain)
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 101, "{} {}", r.head, r.body);
    stream
}

/// Sends one line through the tunnel and reads its echo; `false` once the
/// tunnel is closed.
async fn echo(stream: &mut TcpStream, n: u32) -> bool {
    let line = format!("ping {n}\n");
    if stream.write_all(line.as_bytes()).await.is_err() {
        return false;
    }
    let mut got = vec![0u8; line.len()];
    match tokio::time::timeout(WITHIN, stream.read_exact(&mut got)).await {
        Ok(Ok(_)) => {
            assert_eq!(got, line.as_bytes());
            true
        }
        Ok(Err(_)) => false,
        Err(_) => panic!("the tunnel neither echoed nor closed within {WITHIN:?}"),
    }
}

/// Pings every 100 ms until the tunnel closes; returns when it closed.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Instant {
    let start = Instant::now();
    let mut n = 0;
    while echo(stream, n).await {
        n += 1;
        assert!(
            start.elapsed() < limit,
            "the tunnel is still open after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_unlisted_upgrades_are_refused() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, requests) = start_stream_upstream(Duration::ZERO).await;
    let dir = TempDir::new("upgrades");
    let (root, _) = registry.mint("upgrader", ROOT_ACT, None).await;
    let default = Proxy::start(&dir, &registry, &upstream, &[]);
    let listed = Proxy::start(
        &dir,
        &registry,
        &upstream,
        &["--upgrade-protocols", "websocket,h2c"],
    );
    for proxy in [&default, &listed] {
        let start = Instant::now();
        while proxy.health().await["sync"]["fresh"] != true {
            assert!(start.elapsed() < WITHIN, "never fresh");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let before = requests.lock().unwrap().len();
    let h2c = |upgrade: &str| {
        vec![
            bearer(&root),
            format!("upgrade: {upgrade}"),
            "http2-settings: AAMAAABkAARAAAAAAAIAAAAA".to_owned(),
        ]
    };
    for proxy in [&default, &listed] {
        for upgrade in ["h2c", "H2C", "websocket, h2c", "h2c/2"] {
            // `connection: close` is added by `raw`; the upgrade still shows.
            let r = raw(proxy, "GET", "/orders/1", &h2c(upgrade)).await;
            assert_refused(upgrade, &r, 400, ErrorCode::UpgradeRefused, "h2c");
        }
        for upgrade in ["foo", "TLS/1.0", "websocket, foo/2"] {
            let name = upgrade
                .rsplit(", ")
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            let r = raw(proxy, "GET", "/orders/1", &h2c(upgrade)).await;
            assert_refused(
                upgrade,
                &r,
                400,
                ErrorCode::UpgradeRefused,
                &format!("`{}`", name.to_lowercase()),
            );
        }
    }
    assert_eq!(
        requests.lock().unwrap().len(),
        before,
        "a refused upgrade reached the upstream"
    );
    // A listed protocol passes.
    let mut t = open_tunnel(&default, &root).await;
    assert!(echo(&mut t, 0).await);
    // `Upgrade` without `upgrade` in `Connection`, or on HTTP/1.0, asks for
    // no upgrade (RFC 9110 7.8): the request goes through as a plain one.
    let r = raw(
        &default,
        "GET",
        "/orders/1",
        &[bearer(&root), "upgrade: websocket".into()],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let mut c = TcpStream::connect(default.url.trim_start_matches("http://"))
        .await
        .unwrap();
    c.write_all(
        format!(
            "GET /orders/1 HTTP/1.0\r\nhost: proxy\r\n{}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            bearer(&root)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 200, "HTTP/1.0: {}", r.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_ends_when_its_chain_expires_or_is_revoked() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, _requests) = start_stream_upstream(Duration::ZERO).await;
    let dir = TempDir::new("tunnels");
    let proxy = Proxy::start(&dir, &registry, &upstream, &["--poll-interval", "3600s"]);
    let holder = SigningKey::generate().unwrap();
    let (root, _) = registry
        .mint("tunneler", ROOT_ACT, Some(holder.public()))
        .await;
    let (doomed, doomed_jti) = registry.mint("doomed", ROOT_ACT, None).await;
    wait_allowed(&proxy, &root).await;
    wait_allowed(&proxy, &doomed).await;
    let exp = now() + 3;
    let short = warrant::delegate(
        &root,
        &holder,
        LinkSpec {
            sub: "short-lived".into(),
            act: vec![CHILD_ACT.into()],
            iat: now(),
            exp,
            holder: None,
        },
    )
    .unwrap();

    let mut expiring = open_tunnel(&proxy, &short).await;
    let mut revoked = open_tunnel(&proxy, &doomed).await;
    let mut kept = open_tunnel(&proxy, &root).await;
    for t in [&mut expiring, &mut revoked, &mut kept] {
        assert!(echo(t, 0).await, "a fresh tunnel does not echo");
    }

    // Expiry: the tunnel carries traffic until `exp`, and not after.
    let closed = until_closed(&mut expiring, WITHIN).await;
    let closed_unix = now();
    assert!(
        closed_unix >= exp && closed_unix <= exp + 2,
        "the expiring tunnel closed at {closed_unix}, its chain expires at {exp}"
    );
    let _ = closed;
    assert_eq!(
        proxy
            .metric("veto_proxy_streams_cut_total{reason=\"expired\"}")
            .await,
        1.0
    );

    // Revocation.
    registry.revoke_warrant(&doomed_jti).await;
    let revoked_at = Instant::now();
    until_closed(&mut revoked, WITHIN).await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "cut {:?} after the revocation",
        revoked_at.elapsed()
    );
    assert_eq!(
        proxy
            .metric("veto_proxy_streams_cut_total{reason=\"revoked\"}")
            .await,
        1.0
    );
    // The unrevoked, unexpired tunnel goes on.
    for n in 1..5 {
        assert!(echo(&mut kept, n).await, "the kept tunnel was cut");
    }
}

/// A raw upstream: after a request head it reads the body its
/// `content-length` announces (recording how many bytes came, one record
/// per request), waits `delay`, then answers a WebSocket upgrade with 101
/// and an echo of everything after the head, anything else with an
/// endless event stream (a chunk every 100 ms).
async fn start_stream_upstream(delay: Duration) -> (String, Arc<Mutex<Vec<usize>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end;
                    }
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let rest = buf[end + 4..].to_vec();
                let mut got = rest.len();
                while got < length {
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                seen.lock().unwrap().push(got);
                if got < length {
                    return;
                }
                tokio::time::sleep(delay).await;
                if head.contains("\r\nupgrade: websocket") {
                    let _ = c
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                        .await;
                    let _ = c.write_all(&rest).await;
                    let (mut rd, mut wr) = c.into_split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                } else {
                    let _ = c
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await;
                    for i in 0..600u32 {
                        let data = format!("data: {i}\n\n");
                        let frame = format!("{:x}\r\n{data}\r\n", data.len());
                        if c.write_all(frame.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
    });
    (url, bodies)
}

/// A revocation applied while the upstream holds the request (its head
/// not sent yet, or the body still arriving) ends the request with the
/// denial: no tunnel, no stream and no more body follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_the_upstream_holds_the_request_ends_it() {
    let registry = Registry::start(REGISTRY_ARGS);
    let (upstream, bodies) = start_stream_upstream(Duration::from_millis(2500)).await;
    let dir = TempDir::new("held-requests");
    let proxy = Proxy::start(&dir, &registry, &upstream, &["--poll-interval", "3600s"]);
    let connect = || TcpStream::connect(proxy.url.trim_start_matches("http://").to_owned());
    wait_synced(&proxy).await;
    for (what, head, body_len) in [
        (
            "an upgrade",
            "GET /orders/ws HTTP/1.1\r\nhost: proxy\r\nconnection: Upgrade\r\nupgrade: websocket\r\n",
            0usize,
        ),
        ("a stream", "GET /orders/events HTTP/1.1\r\nhost: proxy\r\n", 0),
        (
            "a trickled upload",
            "GET /orders/upload HTTP/1.1\r\nhost: proxy\r\ncontent-length: 1000\r\n",
            1000,
        ),
    ] {
        let (chain, jti) = registry.mint("held", ROOT_ACT, None).await;
        let mut c = connect().await.unwrap();
        c.write_all(format!("{head}{}\r\n\r\n", bearer(&chain)).as_bytes())
            .await
            .unwrap();
        // The upload trickles: 10 bytes every 50 ms, 100 of the 1,000 first.
        let mut sent = 0;
        while sent < body_len.min(100) {
            c.write_all(&[b'x'; 10]).await.unwrap();
            sent += 10;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        registry.revoke_warrant(&jti).await;
        let revoked = Instant::now();
        if body_len > 0 {
            // Keep sending; the proxy must not pass it on.
            for _ in 0..20 {
                if c.write_all(&[b'x'; 10]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let r = tokio::time::timeout(WITHIN, read_response(&mut c))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"));
        assert_denied(what, &r, 403, DenyReason::Revoked, "is revoked");
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "{what}: answered {:?} after the revocation, the upstream's delay is 2.5 s",
            revoked.elapsed()
        );
        if body_len > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let got = *bodies.lock().unwrap().last().unwrap();
            assert!(got < body_len, "{what}: the upstream got the whole body ({got} B)");
        }
    }
    assert_eq!(
        proxy
            .metric("veto_proxy_streams_cut_total{reason=\"revoked\"}")
            .await,
        3.0
    );
}

/// Waits until the proxy is fresh with its push connected (for an
/// upstream too slow to probe with [`wait_allowed`]).
async fn wait_synced(proxy: &Proxy) {
    let start = Instant::now();
    loop {
        let h = proxy.health().await;
        if h["sync"]["fresh"] == true && h["sync"]["push_connected"] == true {
            return;
        }
        assert!(start.elapsed() < WITHIN, "the proxy never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads chunks from a streaming response until it ends or fails; returns
/// when. Panics if it is still flowing after `limit`.
async fn until_cut(resp: &mut reqwest::Response, limit: Duration) -> Instant {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(WITHIN, resp.chunk()).await {
            Err(_) => panic!("the stream neither ended nor sent anything for {WITHIN:?}"),
            Ok(Ok(Some(_))) => assert!(start.elapsed() < limit, "still flowing after {limit:?}"),
            Ok(Ok(None) | Err(_)) => return Instant::now(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_cut_when_the_state_turns_stale_under_fail_closed_only() {
    let mut registry = Registry::start(REGISTRY_ARGS);
    let (upstream, _requests) = start_stream_upstream(Duration::ZERO).await;
    let dir = TempDir::new("stale-streams");
    // One thread (an event loop, the default on one core): the second
    // tick that cuts stale streams runs beside the requests.
    let common = [
        "--max-staleness",
        "3s",
        "--poll-interval",
        "1s",
        "--threads",
        "1",
    ];
    let closed = Proxy::start(&dir, &registry, &upstream, &common);
    let open = Proxy::start(
        &dir,
        &registry,
        &upstream,
        &[&common[..], &["--policy", "fail-open"][..]].concat(),
    );
    let (root, _) = registry.mint("stale-streamer", ROOT_ACT, None).await;
    // The stream upstream answers everything with a stream: wait on health.
    for proxy in [&closed, &open] {
        let start = Instant::now();
        while proxy.health().await["sync"]["fresh"] != true {
            assert!(start.elapsed() < WITHIN, "never fresh");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let http = reqwest::Client::new();
    let mut streams = Vec::new();
    for proxy in [&closed, &open] {
        let start = Instant::now();
        let resp = loop {
            let resp = http
                .get(proxy.at("/events"))
                .bearer_auth(&root)
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                break resp;
            }
            assert!(start.elapsed() < WITHIN, "never allowed: {}", resp.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        streams.push(resp);
    }
    let [mut closed_stream, mut open_stream] = <[_; 2]>::try_from(streams).unwrap();
    for s in [&mut closed_stream, &mut open_stream] {
        let c = tokio::time::timeout(WITHIN, s.chunk())
            .await
            .unwrap()
            .unwrap();
        assert!(c.is_some_and(|c| c.starts_with(b"data:")));
    }

    registry.kill();
    let killed = Instant::now();
    // Fail-closed: cut once the state is older than 3 s (the last
    // checkpoint was signed at most a heartbeat before the kill).
    until_cut(&mut closed_stream, WITHIN).await;
    let cut_after = killed.elapsed();
    assert!(
        cut_after >= Duration::from_secs(1) && cut_after < Duration::from_secs(6),
        "cut {cut_after:?} after the registry went away"
    );
    assert_eq!(closed.health().await["sync"]["fresh"], false);
    assert_eq!(
        closed
            .metric("veto_proxy_streams_cut_total{reason=\"stale\"}")
            .await,
        1.0
    );
    // Fail-open: stale too, and the stream still flows.
    let start = Instant::now();
    while open.health().await["sync"]["fresh"] != false {
        assert!(
            start.elapsed() < WITHIN,
            "the fail-open proxy never went stale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let c = tokio::time::timeout(WITHIN, open_stream.chunk())
            .await
            .unwrap();
        assert!(
            matches!(c, Ok(Some(_))),
            "fail-open cut a stream on staleness: {c:?}"
        );
    }
    let text = open.metrics().await;
    assert!(
        !text.contains("veto_proxy_streams_cut_total{"),
        "the fail-open proxy cut something:\n{text}"
    );
}

// ---------------------------------------------------------------------------
// The tower layer shares the rules.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_canonicalizes_and_refuses_like_the_proxy() {
    use veto_authorizer::{AuthorizeLayer, Authorizer, Config};

    let s = Setup::new("layer-input").await;
    let mut config = Config::new(
        &s.registry.url,
        "veto",
        veto_core::KeySet::new([s.registry.authority_key()]),
    );
    config.pop.policy = veto_authorizer::PopPolicy::Off;
    let authz = Authorizer::start(config).await.unwrap();
    let inner_saw = Arc::new(Mutex::new(Vec::<String>::new()));
    let rec = inner_saw.clone();
    let app = axum::Router::new()
        .fallback(move |uri: Uri| async move {
            rec.lock().unwrap().push(
                uri.path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
            );
            "ok"
        })
        .layer(AuthorizeLayer::new(authz.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let child = s.child("layer-worker", CHILD_ACT, 600);
    let auth = [bearer(&child)];
    let start = Instant::now();
    while raw_to(&url, "GET", "/orders/1", &auth).await.status != 200 {
        assert!(
            start.elapsed() < WITHIN,
            "the layer never allowed the child"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = raw_to(&url, "GET", "/orders/x/../1?q=%2e", &auth).await;
    assert_eq!(r.status, 200, "{} {}", r.head, r.body);
    assert_eq!(
        inner_saw.lock().unwrap().last().map(String::as_str),
        Some("/orders/1?q=%2e"),
        "the inner service did not see the canonical target"
    );
    let before = inner_saw.lock().unwrap().len();
    let r = raw_to(&url, "GET", "/orders/../secret.txt", &auth).await;
    assert_denied(
        "dot segments",
        &r,
        403,
        DenyReason::ActionDenied,
        "/secret.txt",
    );
    for (target, needle) in [
        ("/orders/%2e%2e/secret.txt", "dot segment"),
        ("/orders/..%2fsecret.txt", "encoded `/`"),
        ("/orders/..\\secret.txt", "backslash"),
        ("/orders//x", "empty path segment"),
    ] {
        let r = raw_to(&url, "GET", target, &auth).await;
        assert_refused(target, &r, 400, ErrorCode::BadTarget, needle);
    }
    for (what, headers) in [
        ("two headers", vec![bearer(&child), bearer(&child)]),
        (
            "comma-joined",
            vec![format!("authorization: Bearer {child}, Bearer {child}")],
        ),
    ] {
        let r = raw_to(&url, "GET", "/orders/1", &headers).await;
        assert_denied(
            what,
            &r,
            401,
            DenyReason::Malformed,
            "more than one credential",
        );
    }
    assert_eq!(
        inner_saw.lock().unwrap().len(),
        before,
        "a refused request reached the service"
    );
    authz.shutdown();
}
