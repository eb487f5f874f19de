//! Against a scripted fake server on loopback: handshake failures and the
//! JetStream control messages a real server sends only under conditions
//! that are hard to arrange (stalls, consumer deletion, oversized frames).
//! Needs no NATS installation, so it always runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "tests and benchmarks: a failed step fails the run"
)]

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;
use tokio::time::timeout;
use veto_nats::{Client, DeliverFrom, NatsError};

const T: Duration = Duration::from_secs(5);
const INFO: &str = "INFO {\"server_id\":\"FAKE\",\"version\":\"2.9.10\",\"proto\":1,\"headers\":true,\"max_payload\":1048576,\"jetstream\":true} \r\n";

/// One client connection as the server sees it.
struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

/// A client operation: its control line and, for PUB/HPUB, its body.
#[derive(Debug)]
struct Op {
    line: String,
    body: Vec<u8>,
}

impl Op {
    fn args(&self) -> Vec<&str> {
        self.line.split_whitespace().collect()
    }
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    async fn op(&mut self) -> Op {
        let mut line = String::new();
        let n = timeout(T, self.rd.read_line(&mut line))
            .await
            .expect("client sent nothing")
            .unwrap();
        assert!(n > 0, "client closed the connection");
        let line = line.trim_end().to_owned();
        let mut body = Vec::new();
        if line.starts_with("PUB ") || line.starts_with("HPUB ") {
            let size: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
            body.resize(size + 2, 0);
            self.rd.read_exact(&mut body).await.unwrap();
            body.truncate(size);
        }
        Op { line, body }
    }

    /// The next op that is not the client's own keepalive or housekeeping.
    async fn op_skipping_subs(&mut self) -> Op {
        loop {
            let op = self.op().await;
            if !op.line.starts_with("SUB ") && !op.line.starts_with("UNSUB ") {
                return op;
            }
        }
    }
}

async fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", l.local_addr().unwrap());
    (l, url)
}

async fn accept(l: &TcpListener) -> Conn {
    let (s, _) = l.accept().await.unwrap();
    let (rd, wr) = s.into_split();
    Conn {
        rd: BufReader::new(rd),
        wr,
    }
}

/// Accepts and completes the handshake; returns the connection after the
/// client's request-inbox SUB.
async fn handshake(l: &TcpListener) -> Conn {
    let mut c = accept(l).await;
    c.send(INFO.as_bytes()).await;
    let connect = c.op().await;
    assert!(connect.line.starts_with("CONNECT {"), "{connect:?}");
    let v: serde_json::Value = serde_json::from_str(&connect.line["CONNECT ".len()..]).unwrap();
    assert_eq!(v["headers"], true);
    assert_eq!(v["no_responders"], true);
    assert_eq!(v["lang"], "rust");
    assert_eq!(c.op().await.line, "PING");
    c.send(b"PONG\r\n").await;
    let sub = c.op().await;
    assert!(
        sub.line.starts_with("SUB _INBOX.") && sub.line.ends_with(".* 1"),
        "{sub:?}"
    );
    c
}

#[tokio::test]
async fn handshake_failures_are_reported() {
    let (l, url) = listen().await;

    // Authorization refused.
    let server = tokio::spawn(async move {
        let mut c = accept(&l).await;
        c.send(INFO.as_bytes()).await;
        c.op().await;
        c.send(b"-ERR 'Authorization Violation'\r\n").await;
        // TLS required.
        let mut c = accept(&l).await;
        c.send(b"INFO {\"headers\":true,\"tls_required\":true,\"max_payload\":1}\r\n")
            .await;
        // Not NATS at all.
        let mut c = accept(&l).await;
        c.send(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        // Silent.
        let _c = accept(&l).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let err = Client::connect(&url, "t").await.unwrap_err();
    assert!(
        matches!(&err, NatsError::Server(m) if m == "Authorization Violation"),
        "{err}"
    );
    let err = Client::connect(&url, "t").await.unwrap_err();
    assert!(matches!(err, NatsError::Unsupported(_)), "{err}");
    let err = Client::connect(&url, "t").await.unwrap_err();
    assert!(matches!(err, NatsError::Protocol(_)), "{err}");
    let err = Client::connect(&url, "t").await.unwrap_err();
    assert!(matches!(err, NatsError::ConnectTimeout), "{err}");
    server.abort();
}

#[tokio::test]
async fn server_ping_is_answered_and_info_updates_apply() {
    let (l, url) = listen().await;
    let server = tokio::spawn(async move {
        let mut c = handshake(&l).await;
        c.send(b"PING\r\n").await;
        assert_eq!(c.op().await.line, "PONG");
        c.send(b"INFO {\"headers\":true,\"max_payload\":10}\r\n+OK\r\n")
            .await;
        // The client's flush.
        assert_eq!(c.op().await.line, "PING");
        c.send(b"PONG\r\n").await;
        c
    });
    let client = Client::connect(&url, "t").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.flush().await.unwrap();
    assert_eq!(client.server_info().max_payload, 10);
    assert!(matches!(
        client.publish("a", b"eleven byte").await,
        Err(NatsError::PayloadTooLarge { size: 11, max: 10 })
    ));
    let _c = server.await.unwrap();
}

#[tokio::test]
async fn oversized_message_from_server_closes_the_connection() {
    let (l, url) = listen().await;
    let server = tokio::spawn(async move {
        let mut c = handshake(&l).await;
        let sub = c.op().await;
        assert_eq!(sub.line, "SUB big 2");
        c.send(b"MSG big 2 4\r\nfine\r\n").await;
        c.send(b"MSG big 2 100000000\r\n").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let client = Client::connect(&url, "t").await.unwrap();
    let mut sub = client.subscribe("big").await.unwrap();
    assert_eq!(
        &timeout(T, sub.recv()).await.unwrap().unwrap().payload[..],
        b"fine"
    );
    assert!(timeout(T, sub.recv()).await.unwrap().is_none());
    assert!(!client.is_connected());
    server.abort();
}

/// The server side of `js_subscribe`: answers the consumer-create request
/// and returns the deliver subject and its sid.
async fn create_consumer(c: &mut Conn) -> (String, String) {
    let sub = c.op().await;
    let args = sub.args();
    assert_eq!(args[0], "SUB");
    let (deliver, sid) = (args[1].to_owned(), args[2].to_owned());
    let create = c.op_skipping_subs().await;
    let args = create.args();
    assert_eq!(&args[..2], ["PUB", "$JS.API.CONSUMER.CREATE.S"]);
    let req: serde_json::Value = serde_json::from_slice(&create.body).unwrap();
    let cfg = &req["config"];
    assert_eq!(cfg["deliver_subject"], deliver.as_str());
    assert_eq!(cfg["flow_control"], true);
    assert_eq!(cfg["ack_policy"], "none");
    assert_eq!(cfg["idle_heartbeat"], 200_000_000);
    assert_eq!(cfg["filter_subject"], "s.>");
    assert_eq!(cfg["deliver_policy"], "by_start_time");
    assert_eq!(cfg["opt_start_time"], "2001-09-09T01:46:40.000000000Z");
    let reply =
        format!("{{\"type\":\"x\",\"stream_name\":\"S\",\"name\":\"C1\",\"config\":{cfg}}}");
    c.send(format!("MSG {} 1 {}\r\n{reply}\r\n", args[2], reply.len()).as_bytes())
        .await;
    (deliver, sid)
}

fn hmsg(subject: &str, sid: &str, reply: &str, headers: &str, payload: &str) -> Vec<u8> {
    let total = headers.len() + payload.len();
    format!(
        "HMSG {subject} {sid} {reply} {} {total}\r\n{headers}{payload}\r\n",
        headers.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn push_consumer_control_messages() {
    let (l, url) = listen().await;
    let server = tokio::spawn(async move {
        let mut c = handshake(&l).await;
        let (deliver, sid) = create_consumer(&mut c).await;
        let data = |n: &str| {
            hmsg(
                "s.a",
                &sid,
                &format!("$JS.ACK.S.C1.1.{n}.{n}.0.0"),
                "NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n",
                &format!("data-{n}"),
            )
        };
        let heartbeat =
            "NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1\r\nNats-Last-Stream: 1\r\n\r\n";
        let stalled = "NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 2\r\nNats-Last-Stream: 2\r\nNats-Consumer-Stalled: $JS.FC.S.C1.stall\r\n\r\n";
        let fc = "NATS/1.0 100 FlowControl Request\r\n\r\n";

        c.send(&data("1")).await;
        c.send(&hmsg(&deliver, &sid, "", heartbeat, "")).await;
        c.send(&hmsg(&deliver, &sid, "$JS.FC.S.C1.fc1", fc, ""))
            .await;
        c.send(&data("2")).await;
        // The client answers flow control once it has consumed data-1.
        let answer = c.op_skipping_subs().await;
        assert_eq!(answer.line, "PUB $JS.FC.S.C1.fc1 0");
        c.send(&hmsg(&deliver, &sid, "", stalled, "")).await;
        c.send(&data("3")).await;
        let answer = c.op_skipping_subs().await;
        assert_eq!(answer.line, "PUB $JS.FC.S.C1.stall 0");
        // Silence for longer than two heartbeats.
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.send(&hmsg(
            &deliver,
            &sid,
            "",
            "NATS/1.0 409 Consumer Deleted\r\n\r\n",
            "",
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    });

    let client = Client::connect(&url, "t").await.unwrap();
    let start = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let mut js = client
        .js_subscribe(
            "S",
            "s.>",
            DeliverFrom::StartTime(start),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert_eq!(js.consumer_name(), "C1");
    for n in 1..=3 {
        let m = timeout(T, js.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(m.payload, format!("data-{n}").as_bytes());
        assert_eq!(m.header("Nats-Msg-Id"), Some("x"));
        assert_eq!(m.status, None);
    }
    let err = timeout(T, js.next()).await.unwrap().unwrap_err();
    assert!(matches!(err, NatsError::HeartbeatTimeout(_)), "{err}");
    let err = timeout(T, js.next()).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, NatsError::ConsumerStopped(d) if d == "Consumer Deleted"),
        "{err}"
    );
    server.abort();
}
