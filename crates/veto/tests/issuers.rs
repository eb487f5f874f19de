//! The authority-signed issuer key set (DESIGN 3.5) served by the real
//! `veto serve`: verified with the authority key, its version going up
//! with every key added and retired.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use serde_json::json;
use veto_core::wire::path;
use veto_testkit::{now, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_issuer_set_follows_additions_and_retirements() {
    let registry = Registry::start(&[]);
    let verifier = registry.verifier();
    let fetch = || async {
        let resp = registry
            .http()
            .get(registry.at(path::ISSUERS))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        verifier
            .issuers(&resp.text().await.unwrap(), now())
            .expect("the set verifies with the authority key")
    };
    let first = fetch().await;
    assert_eq!((first.ver, first.keys.keys().len()), (1, 1));
    let first_kid = first.keys.keys()[0].kid().to_owned();

    let (status, added) = registry.admin_post(path::ISSUER_KEYS, &json!({})).await;
    assert_eq!(status, 201, "{added}");
    let second = fetch().await;
    assert_eq!((second.ver, second.keys.keys().len()), (2, 2));

    let (status, body) = registry
        .admin_delete(&format!("{}/{first_kid}", path::ISSUER_KEYS))
        .await;
    assert_eq!(status, 200, "{body}");
    let third = fetch().await;
    assert_eq!(third.ver, 3);
    assert!(third.keys.keys().iter().all(|k| k.kid() != first_kid));
    assert_eq!(third.keys.keys().len(), 1);
}

// ---------------------------------------------------------------------
// Issuer keys reach proxies by push, and only signed by the authority.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use veto_core::warrant::{self, LinkSpec};
use veto_core::{DenyReason, SigningKey, SrlSigner};
use veto_testkit::{ok_upstream, Proxy, TempDir};

const WITHIN: Duration = Duration::from_secs(10);
const ISS: &str = "veto";

/// A root warrant for `agent` allowing everything, signed by `issuer`.
fn root(issuer: &SigningKey, agent: &str) -> String {
    let holder = SigningKey::generate().unwrap();
    let spec = LinkSpec {
        sub: agent.into(),
        act: vec!["*".into()],
        iat: now(),
        exp: now() + 3600,
        holder: Some(holder.public().clone()),
    };
    warrant::mint_root(issuer, ISS, spec).unwrap()
}

/// `GET {proxy}/orders/1` with `Bearer chain`: the status and the denial
/// reason, if any.
async fn call(proxy: &Proxy, chain: &str) -> (u16, Option<String>) {
    let resp = reqwest::Client::new()
        .get(proxy.at("/orders/1"))
        .bearer_auth(chain)
        .timeout(WITHIN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, body["error"].as_str().map(str::to_owned))
}

/// Calls until `chain` is allowed (`None`) or denied for `reason`.
async fn until(proxy: &Proxy, chain: &str, reason: Option<DenyReason>, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, got) = call(proxy, chain).await;
        let done = match reason {
            None => status == 200,
            Some(r) => got.as_deref() == Some(r.as_str()),
        };
        if done {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WITHIN,
            "{what}: still {status} {got:?} after {WITHIN:?}; proxy log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The key listed first: the oldest.
async fn oldest_kid(registry: &Registry) -> String {
    let (_, keys) = registry.admin_get(path::ISSUER_KEYS).await;
    keys["keys"][0]["kid"].as_str().unwrap().to_owned()
}

/// Adding and retiring an issuer key reaches every proxy by push: the
/// proxies poll the issuer set only every 300 s (the default) and the
/// revocation state every hour, so only the push can bring either change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_added_and_retired_reach_every_proxy_by_push() {
    let registry = Registry::start(&[]);
    let upstream = ok_upstream().await;
    let dir = TempDir::new("issuers-push");
    let proxies: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(&dir, &registry, &upstream, &["--poll-interval", "3600s"]))
        .collect();
    let (first, _) = registry
        .mint("agent-first", &["http:GET:/orders/*"], None)
        .await;
    for p in &proxies {
        until(p, &first, None, "a root from the first issuer key").await;
    }

    // A second key: roots minted now are signed by it.
    let (status, added) = registry.admin_post(path::ISSUER_KEYS, &json!({})).await;
    assert_eq!(status, 201, "{added}");
    let (second, _) = registry
        .mint("agent-second", &["http:GET:/orders/*"], None)
        .await;
    for (i, p) in proxies.iter().enumerate() {
        let took = until(p, &second, None, "a root from the added issuer key").await;
        eprintln!("proxy {i}: the added key in force after {took:?}");
    }

    // The first key retired: its roots stop at every proxy.
    let first_kid = oldest_kid(&registry).await;
    let (status, body) = registry
        .admin_delete(&format!("{}/{first_kid}", path::ISSUER_KEYS))
        .await;
    assert_eq!(status, 200, "{body}");
    for (i, p) in proxies.iter().enumerate() {
        let took = until(
            p,
            &first,
            Some(DenyReason::UntrustedIssuer),
            "a root from the retired key",
        )
        .await;
        eprintln!("proxy {i}: the retired key refused after {took:?}");
        assert_eq!(call(p, &second).await.0, 200);
        assert_eq!(
            p.metric("veto_authorizer_sync_errors_total{kind=\"issuers\"}")
                .await,
            0.0,
            "the real sets were all applied"
        );
    }
}

/// What a hostile relay between the proxy and the registry does: adds its
/// own key to the plain JWKS, answers `GET /v1/issuers` with a set it
/// signed itself, and slips into the event stream a set it signed and
/// the authority's set with its key spliced into the payload. Everything
/// else it forwards unchanged.
#[derive(Clone)]
struct HostileRelay {
    registry: String,
    attacker: Arc<SigningKey>,
    http: reqwest::Client,
}

impl HostileRelay {
    /// The registry's set with the attacker's key added to the payload,
    /// under the authority's header and signature.
    async fn spliced(&self) -> String {
        let real = self
            .http
            .get(format!("{}{}", self.registry, path::ISSUERS))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut parts = real.split('.');
        let (header, payload, signature) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut value: serde_json::Value =
            serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
        value["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::to_value(self.attacker.public().to_jwk()).unwrap());
        value["ver"] = json!(1000);
        let payload = b64.encode(serde_json::to_vec(&value).unwrap());
        format!("{header}.{payload}.{signature}")
    }

    /// A set listing the attacker's key, signed by the attacker.
    fn forged(&self, ver: u64) -> String {
        SrlSigner::new((*self.attacker).clone(), ISS).issuers(
            ver,
            now(),
            &[self.attacker.public().clone()],
        )
    }
}

async fn relay(State(r): State<HostileRelay>, req: Request) -> Response {
    let target = format!("{}{}", r.registry, req.uri());
    let path = req.uri().path().to_owned();
    let mut forward = r.http.request(req.method().clone(), target);
    for name in [
        "last-event-id",
        "if-none-match",
        "accept",
        "accept-encoding",
    ] {
        if let Some(v) = req.headers().get(name) {
            forward = forward.header(name, v);
        }
    }
    if path == path::ISSUERS {
        return r.forged(999).into_response();
    }
    let resp = forward.send().await.unwrap();
    let status = resp.status();
    let mut headers = resp.headers().clone();
    if path == path::JWKS {
        let mut jwks: serde_json::Value = resp.json().await.unwrap();
        jwks["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::to_value(r.attacker.public().to_jwk()).unwrap());
        headers.remove("content-length");
        return (status, headers, jwks.to_string()).into_response();
    }
    if path == path::SRL_EVENTS {
        let injected = format!(
            "event: issuers\ndata: {}\n\nevent: issuers\ndata: {}\n\n",
            r.forged(1001),
            r.spliced().await
        );
        let head = futures_util::stream::once(async move {
            Ok::<_, reqwest::Error>(axum::body::Bytes::from(injected))
        });
        let body = Body::from_stream(head.chain(resp.bytes_stream()));
        return (status, headers, body).into_response();
    }
    let bytes = resp.bytes().await.unwrap();
    (status, headers, bytes).into_response()
}

/// Serves the relay on a loopback port; its URL and its task.
async fn start_relay(r: HostileRelay) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(relay).with_state(r);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

/// A relay that injects an issuer key gets `untrusted_issuer` for its
/// forged root, live and after the proxy restarts from its disk cache
/// with the registry out of reach; the real roots keep working from the
/// signed set the cache kept, in a 0700 directory of 0600 files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_injects_an_issuer_key_gets_untrusted_issuer() {
    let mut registry = Registry::start(&[]);
    let upstream = ok_upstream().await;
    let dir = TempDir::new("issuers-relay");
    let attacker = Arc::new(SigningKey::generate().unwrap());
    let hostile = HostileRelay {
        registry: registry.url.clone(),
        attacker: attacker.clone(),
        http: reqwest::Client::new(),
    };
    let (via, relay_task) = start_relay(hostile).await;
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().unwrap().to_owned();
    let args = ["--poll-interval", "1s", "--cache-dir", cache_arg.as_str()];
    let proxy = Proxy::start_via(&dir, &registry, &via, &upstream, &args);

    let forged = root(&attacker, "agent-mallory");
    let (real, _) = registry
        .mint("agent-real", &["http:GET:/orders/*"], None)
        .await;
    until(&proxy, &real, None, "the real root through the relay").await;
    let (status, reason) = call(&proxy, &forged).await;
    assert_eq!(
        (status, reason.as_deref()),
        (
            veto_authorizer::http_status(DenyReason::UntrustedIssuer).as_u16(),
            Some(DenyReason::UntrustedIssuer.as_str())
        ),
        "the forged root, live"
    );
    assert!(
        proxy
            .metric("veto_authorizer_rejected_objects_total{kind=\"bad_signature\"}")
            .await
            >= 2.0,
        "the set signed by the relay and the spliced one were both refused:\n{}",
        proxy.metrics().await
    );
    // Let the disk cache write what was applied, then take the registry
    // and the relay away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(proxy);
    relay_task.abort();
    registry.kill();

    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache directory");
    for entry in std::fs::read_dir(&cache).unwrap() {
        let entry = entry.unwrap().path();
        if entry.is_file() {
            assert_eq!(mode(&entry), 0o600, "{}", entry.display());
        }
    }

    let proxy = Proxy::start_via(&dir, &registry, &via, &upstream, &args);
    let (status, reason) = call(&proxy, &forged).await;
    assert_eq!(
        (status, reason.as_deref()),
        (
            veto_authorizer::http_status(DenyReason::UntrustedIssuer).as_u16(),
            Some(DenyReason::UntrustedIssuer.as_str())
        ),
        "the forged root, after a restart from the cache"
    );
    let (status, reason) = call(&proxy, &real).await;
    assert_eq!(
        (status, reason),
        (200, None),
        "the real root, from the cached signed set; proxy log:\n{}",
        proxy.log_text()
    );
}

/// Over NATS JetStream too: an authorizer that takes its pushes from the
/// bus (and would poll the issuer set only every 300 s) trusts an added
/// issuer key and drops a retired one as soon as the registry's relay
/// publishes the new set on `veto.srl.issuers`. Runs a private
/// `nats-server` (skipped, saying so, without the binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_reach_authorizers_over_nats() {
    let dir = TempDir::new("issuers-nats");
    let store = dir.path().join("js");
    let jetstream = |port: u16, _: &std::path::Path| {
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n",
            store.display()
        )
    };
    let Some(server) = veto_testkit::NatsServer::start(dir.path(), jetstream) else {
        eprintln!(
            "skipped: no nats-server binary (VETO_TEST_REQUIRE_NATS_SERVER=1 makes this a failure)"
        );
        return;
    };
    let nats = server.url();
    let registry = Registry::start(&["--bus", nats.as_str()]);
    let mut config = veto_authorizer::Config::new(
        &registry.url,
        ISS,
        veto_core::KeySet::new([registry.authority_key()]),
    );
    config.push =
        veto_authorizer::Push::Nats(veto_bus::NatsSettings::new(&nats, None, None).unwrap());
    config.poll_interval = Duration::from_secs(3600);
    config.pop.policy = veto_authorizer::PopPolicy::Off;
    let authz = veto_authorizer::Authorizer::start(config).await.unwrap();
    let action = "http:GET:/orders/1";
    let reason = |chain: &str| authz.check(chain, action).decision.reason();
    let eventually = |what: &'static str, ok: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < WITHIN,
                "{what} after {WITHIN:?}; the authorizer: {:?}\n{}",
                authz.status(),
                authz.metrics_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{what}: {:?}", start.elapsed());
    };
    let (first, _) = registry
        .mint("agent-first", &["http:GET:/orders/*"], None)
        .await;
    eventually("the first key's root allowed", &|| reason(&first).is_none());
    let started = Instant::now();
    while !authz.status().push_connected {
        assert!(started.elapsed() < WITHIN, "NATS push never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, added) = registry.admin_post(path::ISSUER_KEYS, &json!({})).await;
    assert_eq!(status, 201, "{added}");
    let (second, _) = registry
        .mint("agent-second", &["http:GET:/orders/*"], None)
        .await;
    eventually("the added key's root allowed over NATS", &|| {
        reason(&second).is_none()
    });
    let first_kid = oldest_kid(&registry).await;
    let (status, body) = registry
        .admin_delete(&format!("{}/{first_kid}", path::ISSUER_KEYS))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("the retired key's root refused over NATS", &|| {
        reason(&first) == Some(DenyReason::UntrustedIssuer)
    });
    authz.shutdown();
}

/// On the event stream the set comes right after the first checkpoint and
/// on every change, as an `issuers` event without an `id:`: a subscriber's
/// `Last-Event-ID` keeps naming the revocation version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_carries_the_issuer_set_without_an_id() {
    use veto_core::wire::EventKind;
    let registry = Registry::start(&[]);
    let verifier = registry.verifier();
    let mut events = veto_testkit::EventStream::open(&registry.at(path::SRL_EVENTS), None).await;
    let first = events.next_any(WITHIN).await;
    assert_eq!(first.event, EventKind::Checkpoint.as_str());
    let id = events.last_id().map(str::to_owned);
    let set = events.next_any(WITHIN).await;
    assert_eq!(set.event, EventKind::Issuers.as_str());
    // The revocation state is at version 0 and the set at 1: an `id:` on
    // the set's event would show here.
    assert_eq!(
        set.id, id,
        "an issuer key set event leaves the last id alone"
    );
    assert_eq!(id.as_deref(), Some("0"));
    assert_eq!(verifier.issuers(&set.data, now()).unwrap().ver, 1);

    let (status, added) = registry.admin_post(path::ISSUER_KEYS, &json!({})).await;
    assert_eq!(status, 201, "{added}");
    let pushed = loop {
        let e = events.next_any(WITHIN).await;
        if e.event != EventKind::Checkpoint.as_str() {
            break e;
        }
    };
    assert_eq!(pushed.event, EventKind::Issuers.as_str());
    let pushed = verifier.issuers(&pushed.data, now()).unwrap();
    assert_eq!((pushed.ver, pushed.keys.keys().len()), (2, 2));
    assert_eq!(events.last_id().map(str::to_owned), id);
}
