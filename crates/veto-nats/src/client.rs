//! The connection: one reader task (parses, dispatches, answers PING), one
//! writer task (drains a frame queue onto the socket, coalescing small
//! frames), one keepalive task. Shared state lives in [`Shared`]; all three
//! tasks stop on one shutdown signal, after which every subscription's
//! channel is closed and every call returns [`NatsError::Disconnected`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::proto::{self, Message, Parser, ServerInfo, ServerOp};
use crate::NatsError;

const DEFAULT_PORT: u16 = 4222;
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the client PINGs the server, and how long it waits for PONG,
/// so that a silently dead TCP connection is noticed without traffic.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the writer task before publishers wait.
const WRITE_QUEUE: usize = 1024;
/// Writes coalesce small frames up to this size.
const WRITE_BATCH: usize = 64 * 1024;
/// Messages buffered per subscription. When a subscriber falls this far
/// behind, the reader waits for it (it does not drop messages): every
/// subscription on the connection then waits, and if it lasts the server
/// cuts the connection as a slow consumer, which callers see as a
/// disconnect rather than as silent loss.
const SUBSCRIPTION_BUFFER: usize = 1024;
/// Subscription id of the shared request inbox.
const REQUEST_SID: u64 = 1;

/// A connection to one NATS server. Cheap to clone; the connection closes
/// when the last clone and the last [`Subscription`] are dropped, or on
/// [`Client::close`].
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Closes the connection when the last [`Client`] clone goes away. The
/// tasks hold [`Shared`], not this, so they do not keep the connection up.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shutdown("client dropped", true);
    }
}

enum Sink {
    Channel(mpsc::Sender<Message>),
    Requests,
}

pub(crate) struct Shared {
    writer: mpsc::Sender<Bytes>,
    subs: Mutex<HashMap<u64, Sink>>,
    requests: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    pongs: Mutex<VecDeque<oneshot::Sender<()>>>,
    next_sid: AtomicU64,
    next_token: AtomicU64,
    connected: AtomicBool,
    closed_by_user: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    info: Mutex<ServerInfo>,
    /// `_INBOX.<random>.`; request replies arrive on `<prefix><token>`.
    request_prefix: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks can panic half-way through an update.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Stop everything once; later calls do nothing. Dropping the senders
    /// ends every subscription and wakes every waiting request and flush.
    fn shutdown(&self, reason: &str, by_user: bool) {
        if !self.connected.swap(false, Ordering::SeqCst) {
            return;
        }
        if by_user {
            // Before the channels close, so whoever sees them closed sees this.
            self.closed_by_user.store(true, Ordering::SeqCst);
            tracing::debug!(reason, "nats connection closed");
        } else {
            tracing::warn!(reason, "nats connection lost");
        }
        self.shutdown_tx.send_replace(true);
        lock(&self.subs).clear();
        lock(&self.requests).clear();
        lock(&self.pongs).clear();
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    async fn send(&self, frame: Bytes) -> Result<(), NatsError> {
        if !self.is_connected() {
            return Err(NatsError::Disconnected);
        }
        self.writer
            .send(frame)
            .await
            .map_err(|_| NatsError::Disconnected)
    }

    async fn flush(&self) -> Result<(), NatsError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pongs).push_back(tx);
        // Checked after registering so that a concurrent shutdown either
        // sees our waiter (and drops it) or we see it.
        self.send(Bytes::from_static(proto::PING)).await?;
        rx.await.map_err(|_| NatsError::Disconnected)
    }
}

/// A subscription's stream of messages; unsubscribes when dropped.
pub struct Subscription {
    client: Client,
    sid: u64,
    subject: String,
    rx: mpsc::Receiver<Message>,
}

impl Subscription {
    /// The next message; `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The subject (possibly with wildcards) this subscription listens on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("sid", &self.sid)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let shared = &self.client.handle.shared;
        lock(&shared.subs).remove(&self.sid);
        if !shared.is_connected() {
            return;
        }
        // Drop cannot wait; if the queue is full, hand the UNSUB to a task.
        // Without a runtime it is lost, and the server's messages for this
        // sid are discarded by the reader.
        let frame = proto::encode_unsub(self.sid);
        if let Err(mpsc::error::TrySendError::Full(frame)) = shared.writer.try_send(frame) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let writer = shared.writer.clone();
                rt.spawn(async move {
                    let _ = writer.send(frame).await;
                });
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `nats://host:port` (or bare `host:port`; the port
    /// defaults to 4222) over plain TCP, announcing itself as `name`.
    ///
    /// Fails if the server requires TLS or lacks header support, or answers
    /// the handshake with `-ERR` (e.g. an authorization violation: this
    /// client sends no credentials). Gives up after 5 seconds.
    pub async fn connect(url: &str, name: &str) -> Result<Client, NatsError> {
        let addr = parse_url(url)?;
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_to(&addr, name))
            .await
            .map_err(|_| NatsError::ConnectTimeout)?
    }

    async fn connect_to(addr: &str, name: &str) -> Result<Client, NatsError> {
        let stream = TcpStream::connect(addr).await.map_err(NatsError::Connect)?;
        stream.set_nodelay(true).map_err(NatsError::Connect)?;
        let (mut rd, mut wr) = stream.into_split();
        let mut parser = Parser::new();

        let info = match read_op(&mut rd, &mut parser).await? {
            ServerOp::Info(info) => with_defaults(*info),
            ServerOp::Err(e) => return Err(NatsError::Server(e)),
            _ => return Err(NatsError::Protocol("expected INFO first".into())),
        };
        if info.tls_required {
            return Err(NatsError::Unsupported(
                "it requires tls, which this client does not implement",
            ));
        }
        if !info.headers {
            return Err(NatsError::Unsupported("it does not support headers"));
        }

        wr.write_all(&proto::encode_connect(name)?)
            .await
            .map_err(NatsError::Connect)?;
        loop {
            match read_op(&mut rd, &mut parser).await? {
                ServerOp::Pong => break,
                ServerOp::Err(e) => return Err(NatsError::Server(e)),
                ServerOp::Ping => wr
                    .write_all(proto::PONG)
                    .await
                    .map_err(NatsError::Connect)?,
                _ => {}
            }
        }

        let (writer, write_rx) = mpsc::channel(WRITE_QUEUE);
        let (shutdown_tx, _) = watch::channel(false);
        let request_prefix = format!("{}.", new_inbox_name()?);
        let shared = Arc::new(Shared {
            writer,
            subs: Mutex::new(HashMap::from([(REQUEST_SID, Sink::Requests)])),
            requests: Mutex::new(HashMap::new()),
            pongs: Mutex::new(VecDeque::new()),
            next_sid: AtomicU64::new(REQUEST_SID + 1),
            next_token: AtomicU64::new(1),
            connected: AtomicBool::new(true),
            closed_by_user: AtomicBool::new(false),
            shutdown_tx,
            info: Mutex::new(info),
            request_prefix,
        });
        tokio::spawn(write_loop(
            Arc::clone(&shared),
            wr,
            write_rx,
            shared.shutdown_tx.subscribe(),
        ));
        tokio::spawn(read_loop(
            Arc::clone(&shared),
            rd,
            parser,
            shared.shutdown_tx.subscribe(),
        ));
        tokio::spawn(keepalive(
            Arc::clone(&shared),
            shared.shutdown_tx.subscribe(),
        ));
        let sub = proto::encode_sub(&format!("{}*", shared.request_prefix), REQUEST_SID);
        let client = Client {
            handle: Arc::new(Handle { shared }),
        };
        client.shared().send(sub).await?;
        Ok(client)
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Whether the connection is up. Once false it stays false: there is no
    /// automatic reconnect; make a new [`Client`].
    pub fn is_connected(&self) -> bool {
        self.shared().is_connected()
    }

    /// Whether the connection was closed by [`Client::close`] (rather than lost).
    pub(crate) fn closed_by_user(&self) -> bool {
        self.shared().closed_by_user.load(Ordering::SeqCst)
    }

    /// The server's latest `INFO`.
    pub fn server_info(&self) -> ServerInfo {
        lock(&self.shared().info).clone()
    }

    /// Closes the connection now. Frames not yet written are dropped: call
    /// [`Client::flush`] first to be sure the server has them.
    pub fn close(&self) {
        self.shared().shutdown("closed by caller", true);
    }

    /// A fresh, unguessable inbox subject `_INBOX.<random>`.
    pub fn new_inbox(&self) -> Result<String, NatsError> {
        new_inbox_name()
    }

    /// Publishes `payload` to `subject` (no wildcards).
    pub async fn publish(&self, subject: &str, payload: &[u8]) -> Result<(), NatsError> {
        self.publish_full(subject, None, &[], payload).await
    }

    /// Publishes with headers (`HPUB`). Header names are visible ASCII
    /// without `:`; values must not contain CR or LF.
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), NatsError> {
        self.publish_full(subject, None, headers, payload).await
    }

    /// Publishes with a reply subject, for hand-rolled request patterns.
    pub async fn publish_with_reply(
        &self,
        subject: &str,
        reply: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), NatsError> {
        self.publish_full(subject, Some(reply), headers, payload)
            .await
    }

    async fn publish_full(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), NatsError> {
        proto::validate_subject(subject, false)?;
        if let Some(r) = reply {
            proto::validate_subject(r, false)?;
        }
        proto::validate_headers(headers)?;
        let size = proto::header_block_len(headers) + payload.len();
        let max = lock(&self.shared().info).max_payload;
        if size > max {
            return Err(NatsError::PayloadTooLarge { size, max });
        }
        self.shared()
            .send(proto::encode_pub(subject, reply, headers, payload))
            .await
    }

    /// Waits until the server has processed everything sent so far (a
    /// PING/PONG round trip). There is no timeout of its own; a dead
    /// connection is noticed by the keepalive within about 40 seconds.
    pub async fn flush(&self) -> Result<(), NatsError> {
        self.shared().flush().await
    }

    /// Subscribes to `subject` (wildcards `*` and `>` allowed).
    pub async fn subscribe(&self, subject: &str) -> Result<Subscription, NatsError> {
        proto::validate_subject(subject, true)?;
        let shared = self.shared();
        let sid = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        lock(&shared.subs).insert(sid, Sink::Channel(tx));
        let sub = Subscription {
            client: self.clone(),
            sid,
            subject: subject.to_owned(),
            rx,
        };
        // `send` checks `connected` after the insert: see `Shared::flush`.
        shared.send(proto::encode_sub(subject, sid)).await?;
        Ok(sub)
    }

    /// Publishes a request and waits up to `timeout` for the first reply.
    /// A `503` status reply becomes [`NatsError::NoResponders`].
    pub async fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message, NatsError> {
        let shared = self.shared();
        let token = shared
            .next_token
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let reply = format!("{}{token}", shared.request_prefix);
        let (tx, rx) = oneshot::channel();
        lock(&shared.requests).insert(token.clone(), tx);
        let _cleanup = RemoveRequest {
            shared,
            token: &token,
        };
        self.publish_full(subject, Some(&reply), headers, payload)
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(NatsError::Timeout {
                subject: subject.to_owned(),
            }),
            Ok(Err(_)) => Err(NatsError::Disconnected),
            Ok(Ok(msg)) if msg.status == Some(503) => Err(NatsError::NoResponders {
                subject: subject.to_owned(),
            }),
            Ok(Ok(msg)) => Ok(msg),
        }
    }
}

/// Forgets a request's reply slot however the request ends (reply,
/// timeout, error, or the caller dropping the future).
struct RemoveRequest<'a> {
    shared: &'a Shared,
    token: &'a str,
}

impl Drop for RemoveRequest<'_> {
    fn drop(&mut self) {
        lock(&self.shared.requests).remove(self.token);
    }
}

/// Servers always announce `max_payload`; if one does not, assume the
/// server default rather than refusing every publish.
fn with_defaults(mut info: ServerInfo) -> ServerInfo {
    if info.max_payload == 0 {
        info.max_payload = DEFAULT_MAX_PAYLOAD;
    }
    info
}

pub(crate) fn new_inbox_name() -> Result<String, NatsError> {
    let mut raw = [0u8; 16];
    getrandom::getrandom(&mut raw)
        .map_err(|e| NatsError::InvalidArgument(format!("no randomness for inbox: {e}")))?;
    let mut s = String::with_capacity(7 + 32);
    s.push_str("_INBOX.");
    for b in raw {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// `nats://host:port`, `host:port` or `host` → `host:port`.
fn parse_url(url: &str) -> Result<String, NatsError> {
    let bad = |reason| NatsError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("nats") => rest,
        Some(_) => return Err(bad("only nats:// is supported (plain tcp, no tls)")),
        None => url,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(bad("credentials are not supported"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', ',']) || rest.contains(char::is_whitespace)
    {
        return Err(bad("expected host:port"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("expected host:port"))?,
            ),
        };
        (format!("[{host}]"), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" || host.contains(':') && !host.starts_with('[') {
        return Err(bad("expected host:port"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
    };
    Ok(format!("{host}:{port}"))
}

async fn read_op(rd: &mut OwnedReadHalf, parser: &mut Parser) -> Result<ServerOp, NatsError> {
    loop {
        if let Some(op) = parser.next_op()? {
            return Ok(op);
        }
        parser.reserve_for_read();
        let n = rd
            .read_buf(parser.buffer_mut())
            .await
            .map_err(NatsError::Connect)?;
        if n == 0 {
            return Err(NatsError::Connect(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection during the handshake",
            )));
        }
    }
}

async fn closed(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shut down.
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn read_loop(
    shared: Arc<Shared>,
    mut rd: OwnedReadHalf,
    mut parser: Parser,
    mut stop: watch::Receiver<bool>,
) {
    let reason = loop {
        match parser.next_op() {
            Err(e) => break e.to_string(),
            Ok(Some(op)) => {
                tokio::select! {
                    () = closed(&mut stop) => return,
                    r = handle_op(&shared, op) => if let Err(reason) = r { break reason },
                }
                continue;
            }
            Ok(None) => {}
        }
        parser.reserve_for_read();
        tokio::select! {
            () = closed(&mut stop) => return,
            r = rd.read_buf(parser.buffer_mut()) => match r {
                Ok(0) => break "server closed the connection".to_owned(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
        }
    };
    shared.shutdown(&reason, false);
}

async fn handle_op(shared: &Shared, op: ServerOp) -> Result<(), String> {
    match op {
        ServerOp::Msg { sid, msg } => dispatch(shared, sid, msg).await,
        ServerOp::Ping => shared
            .send(Bytes::from_static(proto::PONG))
            .await
            .map_err(|e| e.to_string())?,
        ServerOp::Pong => {
            if let Some(waiter) = lock(&shared.pongs).pop_front() {
                let _ = waiter.send(());
            }
        }
        ServerOp::Ok => {}
        // Fatal errors are followed by the server closing the connection;
        // the others (e.g. a permissions violation) only concern one op.
        ServerOp::Err(e) => tracing::warn!(error = %e, "nats server error"),
        ServerOp::Info(info) => {
            if info.ldm {
                tracing::warn!(server = %info.server_id, "nats server entering lame duck mode");
            }
            *lock(&shared.info) = with_defaults(*info);
        }
    }
    Ok(())
}

async fn dispatch(shared: &Shared, sid: u64, msg: Message) {
    let sink = match lock(&shared.subs).get(&sid) {
        None => return, // unsubscribed; the server had it in flight
        Some(Sink::Channel(tx)) => Some(tx.clone()),
        Some(Sink::Requests) => None,
    };
    match sink {
        // Err means the subscription was dropped meanwhile: nothing to do.
        Some(tx) => {
            let _ = tx.send(msg).await;
        }
        None => {
            let waiter = msg
                .subject
                .strip_prefix(&shared.request_prefix)
                .and_then(|token| lock(&shared.requests).remove(token));
            if let Some(waiter) = waiter {
                let _ = waiter.send(msg);
            }
        }
    }
}

async fn write_loop(
    shared: Arc<Shared>,
    mut wr: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Bytes>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = BytesMut::with_capacity(WRITE_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            () = closed(&mut stop) => break,
            f = frames.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH {
            match frames.try_recv() {
                Ok(f) => batch.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            () = closed(&mut stop) => break,
            r = wr.write_all(&batch) => r,
        };
        if let Err(e) = written {
            shared.shutdown(&format!("write failed: {e}"), false);
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn keepalive(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = closed(&mut stop) => return,
            () = tokio::time::sleep(PING_INTERVAL) => {}
        }
        match tokio::time::timeout(PING_TIMEOUT, shared.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                shared.shutdown("no PONG from server", false);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests and benchmarks: a failed step fails the run"
    )]

    use super::*;

    #[test]
    fn urls() {
        for (url, addr) in [
            ("nats://127.0.0.1:4222", "127.0.0.1:4222"),
            ("NATS://host:1/", "host:1"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("localhost", "localhost:4222"),
            ("nats://[::1]:4223", "[::1]:4223"),
            ("[::1]", "[::1]:4222"),
        ] {
            assert_eq!(parse_url(url).unwrap(), addr, "{url}");
        }
        for bad in [
            "tls://h:1",
            "ws://h:1",
            "nats://u:p@h:1",
            "",
            "nats://",
            "h:port",
            "h:70000",
            "h:1/path",
            "a:1,b:2",
            "::1",
            "[::1",
        ] {
            assert!(
                matches!(parse_url(bad), Err(NatsError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn inboxes_are_unique_and_valid_subjects() {
        let a = new_inbox_name().unwrap();
        let b = new_inbox_name().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "_INBOX.".len() + 32);
        proto::validate_subject(&a, false).unwrap();
    }
}
