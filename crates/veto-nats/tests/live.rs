//! Against a real nats-server: `VETO_TEST_NATS_URL=nats://127.0.0.1:4222`
//! (JetStream enabled). Tests that kill or pause a server start their own
//! `nats-server` (`VETO_TEST_NATS_SERVER`, else `nats-server` on PATH, else
//! `/usr/sbin/nats-server`) on a free loopback port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::time::timeout;
use veto_nats::{Client, DeliverFrom, JsSubscription, Message, NatsError, Subscription};

const T: Duration = Duration::from_secs(5);
const HB: Duration = Duration::from_millis(500);

fn url() -> Option<String> {
    match std::env::var("VETO_TEST_NATS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!(
                "skipped: set VETO_TEST_NATS_URL (e.g. nats://127.0.0.1:4222) to run the NATS tests"
            );
            None
        }
    }
}

/// Unique per test and run, so parallel runs and leftovers do not collide.
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}_{}_{nanos}", std::process::id())
}

async fn recv(sub: &mut Subscription) -> Message {
    timeout(T, sub.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

async fn next(sub: &mut JsSubscription) -> Message {
    timeout(T, sub.next())
        .await
        .expect("timed out waiting for a jetstream message")
        .expect("jetstream subscription failed")
        .expect("jetstream subscription ended")
}

async fn payloads(sub: &mut JsSubscription, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(String::from_utf8(next(sub).await.payload.to_vec()).unwrap());
    }
    out
}

async fn stream_info(c: &Client, stream: &str) -> serde_json::Value {
    let r = c
        .request(&format!("$JS.API.STREAM.INFO.{stream}"), &[], b"", T)
        .await
        .unwrap();
    serde_json::from_slice(&r.payload).unwrap()
}

/// Deletes a test stream when dropped, also when the test fails, using a
/// connection of its own (an async drop is not possible).
struct DeleteStream {
    url: String,
    name: String,
}

impl Drop for DeleteStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = Client::connect(&url, "veto-nats-test-cleanup").await?;
                let r = c
                    .request(&format!("$JS.API.STREAM.DELETE.{name}"), &[], b"", T)
                    .await?;
                Ok::<_, NatsError>(String::from_utf8_lossy(&r.payload).into_owned())
            })
        })
        .join();
        match deleted {
            Ok(Ok(r)) if r.contains("\"success\":true") => {}
            other => eprintln!("could not delete stream `{}`: {other:?}", self.name),
        }
    }
}

fn delete_on_drop(url: &str, name: &str) -> DeleteStream {
    DeleteStream {
        url: url.to_owned(),
        name: name.to_owned(),
    }
}

/// A nats-server of our own, killed and cleaned up on drop.
struct OwnServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnServer {
    fn start(config: Option<&str>) -> OwnServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("veto-nats-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = std::env::var("VETO_TEST_NATS_SERVER").unwrap_or_else(|_| {
            let on_path = Command::new("nats-server")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if on_path {
                "nats-server"
            } else {
                "/usr/sbin/nats-server"
            }
            .to_owned()
        });
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(config) = config {
            let path = dir.join("server.conf");
            std::fs::write(&path, config).unwrap();
            cmd.arg("-c").arg(path);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{bin}` (set VETO_TEST_NATS_SERVER): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnServer { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A stopped process would not die until continued.
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn pub_sub_round_trip_with_headers() {
    let Some(url) = url() else { return };
    let c = Client::connect(&url, "veto-nats-test").await.unwrap();
    assert!(c.is_connected());
    assert!(c.server_info().headers);
    let base = unique("veto.test.pubsub").replace('_', ".");
    let mut sub = c.subscribe(&format!("{base}.>")).await.unwrap();

    c.publish(&format!("{base}.plain"), b"hello").await.unwrap();
    c.publish_with_headers(
        &format!("{base}.hdr"),
        &[
            ("X-One", "1"),
            ("X-Two", "two words: yes"),
            ("X-One", "again"),
        ],
        b"with headers",
    )
    .await
    .unwrap();
    c.publish(&format!("{base}.empty"), b"").await.unwrap();
    c.flush().await.unwrap();

    let m = recv(&mut sub).await;
    assert_eq!(m.subject, format!("{base}.plain"));
    assert_eq!(&m.payload[..], b"hello");
    assert!(m.headers.is_empty() && m.reply.is_none() && m.status.is_none());

    let m = recv(&mut sub).await;
    assert_eq!(m.subject, format!("{base}.hdr"));
    assert_eq!(&m.payload[..], b"with headers");
    assert_eq!(
        m.headers,
        vec![
            ("X-One".to_owned(), "1".to_owned()),
            ("X-Two".to_owned(), "two words: yes".to_owned()),
            ("X-One".to_owned(), "again".to_owned()),
        ]
    );
    assert_eq!(m.header("x-two"), Some("two words: yes"));
    assert_eq!(m.status, None);

    let m = recv(&mut sub).await;
    assert_eq!(m.subject, format!("{base}.empty"));
    assert!(m.payload.is_empty());

    // Bad input is refused before anything is sent.
    assert!(matches!(
        c.publish(&format!("{base}.*"), b"").await,
        Err(NatsError::InvalidSubject(_))
    ));
    assert!(matches!(
        c.publish_with_headers("x", &[("A", "b\r\nEvil: 1")], b"")
            .await,
        Err(NatsError::InvalidHeader(_))
    ));

    // Dropping the subscription unsubscribes: nobody answers on it afterwards.
    let sole = unique("veto.test.sole").replace('_', ".");
    let s2 = c.subscribe(&sole).await.unwrap();
    assert!(matches!(
        c.request(&sole, &[], b"", Duration::from_millis(200)).await,
        Err(NatsError::Timeout { .. })
    ));
    drop(s2);
    c.flush().await.unwrap();
    assert!(matches!(
        c.request(&sole, &[], b"", T).await,
        Err(NatsError::NoResponders { .. })
    ));
}

#[tokio::test]
async fn request_reply() {
    let Some(url) = url() else { return };
    let server = Client::connect(&url, "veto-nats-test-responder")
        .await
        .unwrap();
    let c = Client::connect(&url, "veto-nats-test-requester")
        .await
        .unwrap();
    let subject = unique("veto.test.svc").replace('_', ".");
    let mut svc = server.subscribe(&subject).await.unwrap();
    server.flush().await.unwrap();
    let responder = tokio::spawn({
        let server = server.clone();
        async move {
            while let Some(m) = svc.recv().await {
                let reply = m.reply.clone().unwrap();
                let body = m.payload.to_ascii_uppercase();
                let echo = m.header("Echo").unwrap_or("none").to_owned();
                if &m.payload[..] == b"ignore me" {
                    continue;
                }
                server
                    .publish_with_headers(&reply, &[("Echo", &echo)], &body)
                    .await
                    .unwrap();
            }
        }
    });

    let r = c
        .request(&subject, &[("Echo", "e1")], b"ping", T)
        .await
        .unwrap();
    assert_eq!(&r.payload[..], b"PING");
    assert_eq!(r.header("Echo"), Some("e1"));

    // Many requests in flight on the one shared inbox each get their own reply.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!("req-{i}");
            let r = c.request(&subject, &[], body.as_bytes(), T).await.unwrap();
            assert_eq!(r.payload, body.to_ascii_uppercase().as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let started = Instant::now();
    let err = c
        .request(&subject, &[], b"ignore me", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let err = c
        .request(&format!("{subject}.nobody"), &[], b"", T)
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::NoResponders { .. }), "{err}");

    server.close();
    timeout(T, responder).await.unwrap().unwrap();
}

#[tokio::test]
async fn jetstream_publish_deduplicates_by_msg_id() {
    let Some(url) = url() else { return };
    let c = Client::connect(&url, "veto-nats-test").await.unwrap();
    let stream = unique("VETO_TEST_DEDUP");
    let _cleanup = delete_on_drop(&url, &stream);
    let subject = format!("{}.delta", stream.to_lowercase());
    let window = Duration::from_secs(120);
    let age = Duration::from_secs(3600);
    c.js_ensure_stream(&stream, &[&subject], window, age)
        .await
        .unwrap();
    // Ensuring again with the same settings is a no-op.
    c.js_ensure_stream(&stream, &[&subject], window, age)
        .await
        .unwrap();

    let a1 = c.js_publish(&subject, "v1", b"one", T).await.unwrap();
    assert_eq!(
        (a1.stream.as_str(), a1.seq, a1.duplicate),
        (stream.as_str(), 1, false)
    );
    let a2 = c.js_publish(&subject, "v1", b"one again", T).await.unwrap();
    assert_eq!((a2.seq, a2.duplicate), (1, true));
    assert_eq!(stream_info(&c, &stream).await["state"]["messages"], 1);
    let a3 = c.js_publish(&subject, "v2", b"two", T).await.unwrap();
    assert_eq!((a3.seq, a3.duplicate), (2, false));
    assert_eq!(stream_info(&c, &stream).await["state"]["messages"], 2);

    // The stored copy of v1 is the first one.
    let mut sub = c
        .js_subscribe(&stream, &subject, DeliverFrom::All, HB)
        .await
        .unwrap();
    assert_eq!(payloads(&mut sub, 2).await, ["one", "two"]);
    assert_quiet(&mut sub).await;

    // A different subject set updates the stream in place.
    let extra = format!("{subject}.extra");
    c.js_ensure_stream(&stream, &[&subject, &extra], window, age)
        .await
        .unwrap();
    let info = stream_info(&c, &stream).await;
    assert_eq!(
        info["config"]["subjects"],
        serde_json::json!([subject, extra])
    );
    assert_eq!(info["state"]["messages"], 2);
    c.js_publish(&extra, "v3", b"three", T).await.unwrap();

    // Nothing captures this subject.
    let err = c
        .js_publish(&format!("{subject}x"), "v1", b"", T)
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::NoResponders { .. }), "{err}");
    // A JetStream API error surfaces as such.
    let err = c
        .js_subscribe(&unique("VETO_NO_SUCH"), "x", DeliverFrom::All, HB)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NatsError::JetStream { code: 404, .. }),
        "{err}"
    );
}

/// No data message arrives for a while (heartbeats do, and are swallowed).
async fn assert_quiet(sub: &mut JsSubscription) {
    if let Ok(r) = timeout(HB * 3 / 2, sub.next()).await {
        panic!("expected no message, got {r:?}");
    }
}

#[tokio::test]
async fn jetstream_subscribe_from_all_new_start_time_and_sequence() {
    let Some(url) = url() else { return };
    let c = Client::connect(&url, "veto-nats-test").await.unwrap();
    let stream = unique("VETO_TEST_DELIVER");
    let _cleanup = delete_on_drop(&url, &stream);
    let base = stream.to_lowercase();
    let (x, other) = (format!("{base}.x"), format!("{base}.other"));
    c.js_ensure_stream(
        &stream,
        &[&format!("{base}.>")],
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let mut id = 0;
    let mut publish = |subject: String, body: &'static str| {
        id += 1;
        let c = c.clone();
        let msg_id = id.to_string();
        async move {
            c.js_publish(&subject, &msg_id, body.as_bytes(), T)
                .await
                .unwrap()
        }
    };
    publish(x.clone(), "a1").await;
    publish(other.clone(), "o1").await;
    publish(x.clone(), "a2").await;
    publish(x.clone(), "a3").await;

    let mut all = c
        .js_subscribe(&stream, &x, DeliverFrom::All, HB)
        .await
        .unwrap();
    assert_eq!(payloads(&mut all, 3).await, ["a1", "a2", "a3"]);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(x.clone(), "b1").await;
    publish(other.clone(), "o2").await;
    publish(x.clone(), "b2").await;

    let mut since = c
        .js_subscribe(&stream, &x, DeliverFrom::StartTime(t), HB)
        .await
        .unwrap();
    assert_eq!(payloads(&mut since, 2).await, ["b1", "b2"]);

    let mut new = c
        .js_subscribe(&stream, &x, DeliverFrom::New, HB)
        .await
        .unwrap();
    assert_quiet(&mut new).await;
    publish(x.clone(), "c1").await;
    assert_eq!(payloads(&mut new, 1).await, ["c1"]);
    assert_eq!(payloads(&mut all, 3).await, ["b1", "b2", "c1"]);
    assert_eq!(payloads(&mut since, 1).await, ["c1"]);

    let mut last = c
        .js_subscribe(
            &stream,
            &format!("{base}.>"),
            DeliverFrom::LastPerSubject,
            HB,
        )
        .await
        .unwrap();
    let mut got = payloads(&mut last, 2).await;
    got.sort();
    assert_eq!(got, ["c1", "o2"]);

    // Stream sequence 3 is a2 (o1 was 2).
    let mut from_seq = c
        .js_subscribe(&stream, &x, DeliverFrom::StartSequence(3), HB)
        .await
        .unwrap();
    assert_eq!(
        payloads(&mut from_seq, 5).await,
        ["a2", "a3", "b1", "b2", "c1"]
    );

    // Idle heartbeats keep an idle subscription alive without surfacing.
    for sub in [&mut all, &mut since, &mut new, &mut from_seq] {
        assert_quiet(sub).await;
    }
    publish(x.clone(), "d1").await;
    assert_eq!(payloads(&mut new, 1).await, ["d1"]);
}

#[tokio::test]
async fn jetstream_flow_control_is_answered() {
    let Some(url) = url() else { return };
    let c = Client::connect(&url, "veto-nats-test").await.unwrap();
    let stream = unique("VETO_TEST_FC");
    let _cleanup = delete_on_drop(&url, &stream);
    let subject = format!("{}.bulk", stream.to_lowercase());
    c.js_ensure_stream(
        &stream,
        &[&subject],
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await
    .unwrap();
    // About 8 MiB: the server asks for flow control every couple of MiB and
    // stops delivering until answered.
    let n = 1000;
    let body = vec![b'x'; 8192];
    for i in 0..n {
        c.publish(
            &subject,
            &[&i.to_string().into_bytes()[..], b":", &body].concat(),
        )
        .await
        .unwrap();
    }
    c.flush().await.unwrap();
    assert_eq!(stream_info(&c, &stream).await["state"]["messages"], n);

    // Unanswered flow control would stall delivery until a heartbeat
    // reports the stall: with a 5 s heartbeat, that would take over 5 s.
    let started = Instant::now();
    let mut sub = c
        .js_subscribe(&stream, &subject, DeliverFrom::All, Duration::from_secs(5))
        .await
        .unwrap();
    for i in 0..n {
        let m = next(&mut sub).await;
        assert!(
            m.payload.starts_with(format!("{i}:").as_bytes()),
            "message {i} out of order"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "delivery took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn large_payloads() {
    let Some(url) = url() else { return };
    let c = Client::connect(&url, "veto-nats-test").await.unwrap();
    let max = c.server_info().max_payload;
    assert!(max > 0);
    let subject = unique("veto.test.large").replace('_', ".");
    let five_mib: Vec<u8> = (0..5 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let err = c.publish(&subject, &five_mib).await.unwrap_err();
    assert!(
        matches!(err, NatsError::PayloadTooLarge { size, max: m } if size == five_mib.len() && m == max),
        "{err}"
    );
    // The limit counts the header block too.
    let err = c
        .publish_with_headers(&subject, &[("K", "v")], &five_mib[..max])
        .await
        .unwrap_err();
    assert!(matches!(err, NatsError::PayloadTooLarge { .. }), "{err}");

    // Exactly max_payload goes through and arrives intact.
    let mut sub = c.subscribe(&subject).await.unwrap();
    c.publish(&subject, &five_mib[..max]).await.unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], &five_mib[..max]);

    // A server configured for bigger messages: 5 MiB plain, with headers,
    // and through JetStream.
    let own = OwnServer::start(Some("max_payload: 8MB\n"));
    let c = Client::connect(&own.url(), "veto-nats-test").await.unwrap();
    assert_eq!(c.server_info().max_payload, 8 * 1024 * 1024);
    let mut sub = c.subscribe("big.>").await.unwrap();
    c.publish("big.plain", &five_mib).await.unwrap();
    c.publish_with_headers("big.hdr", &[("Nats-Msg-Id", "x")], &five_mib)
        .await
        .unwrap();
    let m = recv(&mut sub).await;
    assert_eq!(
        (m.subject.as_str(), m.payload.len()),
        ("big.plain", five_mib.len())
    );
    assert!(m.payload == five_mib);
    let m = recv(&mut sub).await;
    assert_eq!(m.header("Nats-Msg-Id"), Some("x"));
    assert!(m.payload == five_mib);

    c.js_ensure_stream("BIG", &["bigjs.>"], Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    c.js_publish("bigjs.a", "1", &five_mib, T).await.unwrap();
    let mut js = c
        .js_subscribe("BIG", "bigjs.>", DeliverFrom::All, HB)
        .await
        .unwrap();
    assert!(next(&mut js).await.payload == five_mib);
}

#[tokio::test]
async fn connection_loss_ends_subscriptions_and_fails_calls() {
    if url().is_none() {
        return;
    }
    let mut own = OwnServer::start(None);
    let c = Client::connect(&own.url(), "veto-nats-test").await.unwrap();
    let mut sub = c.subscribe("loss.>").await.unwrap();
    c.js_ensure_stream(
        "LOSS",
        &["lossjs.>"],
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await
    .unwrap();
    c.js_publish("lossjs.a", "1", b"before", T).await.unwrap();
    let mut js = c
        .js_subscribe("LOSS", "lossjs.>", DeliverFrom::All, HB)
        .await
        .unwrap();
    assert_eq!(&next(&mut js).await.payload[..], b"before");
    c.publish("loss.a", b"before").await.unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"before");

    // A request in flight when the connection drops fails promptly.
    let pending = tokio::spawn({
        let c = c.clone();
        async move {
            let _keep = c.subscribe("slow.x").await.unwrap();
            c.request("slow.x", &[], b"", Duration::from_secs(30)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    own.kill();

    assert!(timeout(T, sub.recv()).await.unwrap().is_none());
    assert!(matches!(
        timeout(T, js.next()).await.unwrap(),
        Err(NatsError::Disconnected)
    ));
    assert!(matches!(
        timeout(T, pending).await.unwrap().unwrap(),
        Err(NatsError::Disconnected)
    ));
    assert!(!c.is_connected());
    assert!(matches!(
        c.publish("loss.a", b"after").await,
        Err(NatsError::Disconnected)
    ));
    assert!(matches!(c.flush().await, Err(NatsError::Disconnected)));
    assert!(matches!(
        c.request("loss.a", &[], b"", T).await,
        Err(NatsError::Disconnected)
    ));
    assert!(matches!(
        c.subscribe("loss.b").await,
        Err(NatsError::Disconnected)
    ));
    assert!(matches!(
        c.js_publish("lossjs.a", "2", b"", T).await,
        Err(NatsError::Disconnected)
    ));

    // Nothing listening any more: connecting fails with a connect error.
    assert!(matches!(
        Client::connect(&own.url(), "veto-nats-test").await,
        Err(NatsError::Connect(_))
    ));
}

#[tokio::test]
async fn silent_server_is_noticed_by_missing_heartbeats() {
    if url().is_none() {
        return;
    }
    let own = OwnServer::start(None);
    let c = Client::connect(&own.url(), "veto-nats-test").await.unwrap();
    c.js_ensure_stream("HB", &["hb.>"], Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    let hb = Duration::from_millis(300);
    let mut js = c
        .js_subscribe("HB", "hb.>", DeliverFrom::New, hb)
        .await
        .unwrap();
    // Heartbeats alone keep it going.
    assert!(timeout(hb * 5, js.next()).await.is_err());

    // The server process freezes: TCP stays up, nothing arrives.
    own.signal("-STOP");
    let started = Instant::now();
    let err = timeout(T, js.next()).await.unwrap().unwrap_err();
    assert!(
        matches!(err, NatsError::HeartbeatTimeout(d) if d == hb * 2),
        "{err}"
    );
    assert!(
        started.elapsed() < hb * 4,
        "noticed after {:?}",
        started.elapsed()
    );
    own.signal("-CONT");
}

#[tokio::test]
async fn close_ends_subscriptions_cleanly() {
    let Some(url) = url() else { return };
    let c = Client::connect(&url, "veto-nats-test").await.unwrap();
    let stream = unique("VETO_TEST_CLOSE");
    let _cleanup = delete_on_drop(&url, &stream);
    let subject = format!("{}.x", stream.to_lowercase());
    c.js_ensure_stream(
        &stream,
        &[&subject],
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await
    .unwrap();
    let mut js = c
        .js_subscribe(&stream, &subject, DeliverFrom::All, HB)
        .await
        .unwrap();
    let mut sub = c.subscribe(&subject).await.unwrap();

    c.close();
    assert!(!c.is_connected());
    assert!(timeout(T, sub.recv()).await.unwrap().is_none());
    assert!(matches!(timeout(T, js.next()).await.unwrap(), Ok(None)));
    assert!(matches!(
        c.publish(&subject, b"").await,
        Err(NatsError::Disconnected)
    ));
}

#[tokio::test]
async fn connect_errors() {
    let Some(url) = url() else { return };
    assert!(matches!(
        Client::connect("tls://127.0.0.1:4222", "x").await,
        Err(NatsError::InvalidUrl { .. })
    ));
    // Bare host:port works too.
    let bare = url.trim_start_matches("nats://");
    let c = Client::connect(bare, "veto-nats-test").await.unwrap();
    c.flush().await.unwrap();
}
