//! The NATS client protocol as pure code: a [`Parser`] fed bytes that yields
//! server operations, and encoders for client operations. No sockets here, so
//! every framing case is tested by feeding bytes in any chunking.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::NatsError;

/// Longest control line accepted. `INFO` is the long one (a cluster lists
/// its `connect_urls`); everything else is a few hundred bytes at most.
pub(crate) const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Largest message accepted from the server, whatever it announces: the
/// reader buffers a whole message before dispatching it.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024 * 1024;

const CRLF: &[u8] = b"\r\n";
const HEADER_VERSION: &str = "NATS/1.0";

/// What the server says about itself in `INFO`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ServerInfo {
    /// The server's unique id.
    pub server_id: String,
    /// The server's configured name.
    pub server_name: String,
    /// The server's version, e.g. `2.9.10`.
    pub version: String,
    /// Protocol version; 1 means asynchronous INFO updates.
    pub proto: i32,
    /// Largest header block plus payload the server accepts in one message.
    pub max_payload: usize,
    /// Whether the server understands `HPUB`/`HMSG`.
    pub headers: bool,
    /// Whether JetStream is enabled.
    pub jetstream: bool,
    /// Whether the server insists on TLS (this client cannot do TLS).
    pub tls_required: bool,
    /// Whether the server wants credentials (this client sends none).
    pub auth_required: bool,
    /// Lame duck mode: the server is about to shut down.
    pub ldm: bool,
}

/// A message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// Where the publisher wants replies, if anywhere.
    pub reply: Option<String>,
    /// Headers in the order sent (names as sent; duplicates kept).
    pub headers: Vec<(String, String)>,
    /// Status code from the header block (`503` no responders, `100`
    /// heartbeat or flow control, `409` consumer gone); `None` for data.
    pub status: Option<u16>,
    /// Text after the status code, e.g. `Idle Heartbeat`.
    pub description: Option<String>,
    /// The payload.
    pub payload: Bytes,
}

impl Message {
    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One operation from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerOp {
    Info(Box<ServerInfo>),
    Msg { sid: u64, msg: Message },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// The control line of a `MSG`/`HMSG` whose body has not fully arrived.
#[derive(Debug)]
struct PendingMsg {
    subject: String,
    sid: u64,
    reply: Option<String>,
    header_len: usize,
    total_len: usize,
}

/// Incremental parser: append bytes to [`Parser::buffer_mut`], then call
/// [`Parser::next_op`] until it returns `None`. Any error is fatal to the
/// connection: after bad framing nothing that follows can be trusted.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: BytesMut,
    /// How much of `buf` has been searched for CRLF without finding one,
    /// so byte-at-a-time input is not rescanned quadratically.
    scanned: usize,
    pending: Option<PendingMsg>,
}

impl Parser {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The buffer to read socket data into.
    pub(crate) fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Make room for the next read: the rest of a pending message body
    /// (capped so a lying length cannot make us allocate it up front), or a
    /// normal read's worth.
    pub(crate) fn reserve_for_read(&mut self) {
        let want = match &self.pending {
            Some(p) => (p.total_len + 2)
                .saturating_sub(self.buf.len())
                .clamp(4096, 1024 * 1024),
            None => 32 * 1024,
        };
        self.buf.reserve(want);
    }

    #[cfg(test)]
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete operation, `Ok(None)` if more bytes are needed.
    pub(crate) fn next_op(&mut self) -> Result<Option<ServerOp>, NatsError> {
        loop {
            if let Some(p) = &self.pending {
                let need = p.total_len + CRLF.len();
                if self.buf.len() < need {
                    return Ok(None);
                }
                let Some(p) = self.pending.take() else {
                    return Ok(None);
                };
                let mut body = self.buf.split_to(need);
                if &body[p.total_len..] != CRLF {
                    return Err(protocol("message body not followed by CRLF"));
                }
                body.truncate(p.total_len);
                let body = body.freeze();
                let (status, description, headers) = if p.header_len > 0 {
                    parse_header_block(&body[..p.header_len])
                } else {
                    (None, None, Vec::new())
                };
                let msg = Message {
                    subject: p.subject,
                    reply: p.reply,
                    headers,
                    status,
                    description,
                    payload: body.slice(p.header_len..),
                };
                return Ok(Some(ServerOp::Msg { sid: p.sid, msg }));
            }

            let from = self.scanned.saturating_sub(1);
            let Some(pos) = find_crlf(&self.buf[from..]).map(|i| i + from) else {
                if self.buf.len() > MAX_CONTROL_LINE {
                    return Err(protocol("control line too long"));
                }
                self.scanned = self.buf.len();
                return Ok(None);
            };
            if pos > MAX_CONTROL_LINE {
                return Err(protocol("control line too long"));
            }
            let line = self.buf.split_to(pos + CRLF.len());
            self.scanned = 0;
            match parse_control_line(&line[..pos])? {
                Control::Op(op) => return Ok(Some(op)),
                Control::MsgHead(p) => self.pending = Some(p),
            }
        }
    }
}

enum Control {
    Op(ServerOp),
    MsgHead(PendingMsg),
}

fn protocol(what: &str) -> NatsError {
    NatsError::Protocol(what.to_owned())
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == CRLF)
}

fn parse_control_line(line: &[u8]) -> Result<Control, NatsError> {
    let (op, rest) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    let text = || String::from_utf8_lossy(rest).trim().to_owned();
    let op = op.to_ascii_uppercase();
    match op.as_slice() {
        b"MSG" => parse_msg_head(rest, false).map(Control::MsgHead),
        b"HMSG" => parse_msg_head(rest, true).map(Control::MsgHead),
        b"PING" => Ok(Control::Op(ServerOp::Ping)),
        b"PONG" => Ok(Control::Op(ServerOp::Pong)),
        b"+OK" => Ok(Control::Op(ServerOp::Ok)),
        b"-ERR" => {
            let t = text();
            let t = t
                .strip_prefix('\'')
                .and_then(|t| t.strip_suffix('\''))
                .map_or(t.clone(), str::to_owned);
            Ok(Control::Op(ServerOp::Err(t)))
        }
        b"INFO" => serde_json::from_slice::<ServerInfo>(rest)
            .map(|i| Control::Op(ServerOp::Info(Box::new(i))))
            .map_err(|e| NatsError::Protocol(format!("bad INFO: {e}"))),
        _ => Err(NatsError::Protocol(format!(
            "unknown operation `{}`",
            String::from_utf8_lossy(&op[..op.len().min(16)])
        ))),
    }
}

/// `MSG <subject> <sid> [reply] <#bytes>` or
/// `HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>`.
fn parse_msg_head(args: &[u8], with_headers: bool) -> Result<PendingMsg, NatsError> {
    let args: Vec<&[u8]> = args
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|a| !a.is_empty())
        .collect();
    let sizes = if with_headers { 2 } else { 1 };
    if args.len() != 2 + sizes && args.len() != 3 + sizes {
        return Err(protocol("wrong number of MSG arguments"));
    }
    let number = |a: &[u8]| -> Result<usize, NatsError> {
        std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| protocol("bad number in MSG"))
    };
    let n = args.len();
    let total_len = number(args[n - 1])?;
    let header_len = if with_headers {
        number(args[n - 2])?
    } else {
        0
    };
    if header_len > total_len {
        return Err(protocol("header size larger than message size"));
    }
    if total_len > MAX_MESSAGE {
        return Err(NatsError::Protocol(format!(
            "message of {total_len} bytes exceeds the {MAX_MESSAGE}-byte limit"
        )));
    }
    let sid = std::str::from_utf8(args[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| protocol("bad subscription id in MSG"))?;
    let reply = (n == 3 + sizes).then(|| String::from_utf8_lossy(args[2]).into_owned());
    Ok(PendingMsg {
        subject: String::from_utf8_lossy(args[0]).into_owned(),
        sid,
        reply,
        header_len,
        total_len,
    })
}

type HeaderBlock = (Option<u16>, Option<String>, Vec<(String, String)>);

/// `NATS/1.0[ <status>[ <description>]]\r\n(<name>: <value>\r\n)*\r\n`.
/// Lenient: headers come from any publisher, so a malformed line is skipped
/// rather than dropping the connection (the framing was already checked).
fn parse_header_block(block: &[u8]) -> HeaderBlock {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split("\r\n");
    let mut status = None;
    let mut description = None;
    if let Some(first) = lines.next() {
        if let Some(rest) = first.strip_prefix(HEADER_VERSION) {
            let rest = rest.trim();
            let (code, desc) = rest.split_once(' ').unwrap_or((rest, ""));
            if code.len() == 3 {
                status = code.parse::<u16>().ok();
            }
            let desc = desc.trim();
            if status.is_some() && !desc.is_empty() {
                description = Some(desc.to_owned());
            }
        }
    }
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    (status, description, headers)
}

/// The `CONNECT` options this client sends.
#[derive(Serialize)]
struct ConnectOptions<'a> {
    verbose: bool,
    pedantic: bool,
    tls_required: bool,
    headers: bool,
    no_responders: bool,
    name: &'a str,
    lang: &'a str,
    version: &'a str,
    protocol: u8,
    echo: bool,
}

/// `CONNECT {...}\r\nPING\r\n`: the PONG tells us the server accepted it.
pub(crate) fn encode_connect(name: &str) -> Result<Bytes, NatsError> {
    let opts = ConnectOptions {
        verbose: false,
        pedantic: false,
        tls_required: false,
        headers: true,
        no_responders: true,
        name,
        lang: "rust",
        version: env!("CARGO_PKG_VERSION"),
        protocol: 1,
        echo: true,
    };
    let json = serde_json::to_vec(&opts)
        .map_err(|e| NatsError::InvalidArgument(format!("connection name: {e}")))?;
    let mut b = BytesMut::with_capacity(json.len() + 16);
    b.put_slice(b"CONNECT ");
    b.put_slice(&json);
    b.put_slice(b"\r\nPING\r\n");
    Ok(b.freeze())
}

pub(crate) const PING: &[u8] = b"PING\r\n";
pub(crate) const PONG: &[u8] = b"PONG\r\n";

/// Bytes of the header block [`encode_pub`] would write for `headers`.
pub(crate) fn header_block_len(headers: &[(&str, &str)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    HEADER_VERSION.len()
        + 2
        + headers
            .iter()
            .map(|(k, v)| k.len() + 2 + v.len() + 2)
            .sum::<usize>()
        + 2
}

/// `PUB`, or `HPUB` when there are headers. Arguments must be validated.
pub(crate) fn encode_pub(
    subject: &str,
    reply: Option<&str>,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> Bytes {
    let hlen = header_block_len(headers);
    let total = hlen + payload.len();
    let mut b = BytesMut::with_capacity(subject.len() + 64 + total);
    b.put_slice(if hlen > 0 { b"HPUB " } else { b"PUB " });
    b.put_slice(subject.as_bytes());
    b.put_u8(b' ');
    if let Some(r) = reply {
        b.put_slice(r.as_bytes());
        b.put_u8(b' ');
    }
    if hlen > 0 {
        b.put_slice(hlen.to_string().as_bytes());
        b.put_u8(b' ');
    }
    b.put_slice(total.to_string().as_bytes());
    b.put_slice(CRLF);
    if hlen > 0 {
        b.put_slice(HEADER_VERSION.as_bytes());
        b.put_slice(CRLF);
        for (k, v) in headers {
            b.put_slice(k.as_bytes());
            b.put_slice(b": ");
            b.put_slice(v.as_bytes());
            b.put_slice(CRLF);
        }
        b.put_slice(CRLF);
    }
    b.put_slice(payload);
    b.put_slice(CRLF);
    b.freeze()
}

pub(crate) fn encode_sub(subject: &str, sid: u64) -> Bytes {
    Bytes::from(format!("SUB {subject} {sid}\r\n"))
}

pub(crate) fn encode_unsub(sid: u64) -> Bytes {
    Bytes::from(format!("UNSUB {sid}\r\n"))
}

/// Subjects are dot-separated non-empty tokens without whitespace or control
/// characters (anything else would corrupt the control line). `*` and `>`
/// are wildcards, allowed only where a subscription is meant; `>` only last.
pub(crate) fn validate_subject(subject: &str, wildcards: bool) -> Result<(), NatsError> {
    let bad = || NatsError::InvalidSubject(subject.to_owned());
    if subject.is_empty() || subject.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad());
    }
    let mut tokens = subject.split('.').peekable();
    while let Some(t) = tokens.next() {
        let last = tokens.peek().is_none();
        match t {
            "" => return Err(bad()),
            "*" if !wildcards => return Err(bad()),
            ">" if !wildcards || !last => return Err(bad()),
            _ => {}
        }
    }
    Ok(())
}

/// Header names are visible ASCII without `:`; values have no CR or LF.
pub(crate) fn validate_headers(headers: &[(&str, &str)]) -> Result<(), NatsError> {
    for (k, v) in headers {
        let name_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok {
            return Err(NatsError::InvalidHeader((*k).to_owned()));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(NatsError::InvalidHeader(format!("{k}: {v}")));
        }
    }
    Ok(())
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

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<ServerOp>, NatsError> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c);
            while let Some(op) = p.next_op()? {
                out.push(op);
            }
        }
        Ok(out)
    }

    /// Every way of cutting `input` into one-byte, two-part and random
    /// chunks must give the same operations as feeding it whole.
    fn assert_chunking_invariant(input: &[u8]) -> Vec<ServerOp> {
        let whole = parse_all(&[input]).unwrap();
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_all(&bytes).unwrap(), whole, "byte by byte");
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(parse_all(&[a, b]).unwrap(), whole, "cut at {cut}");
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50 {
            let mut chunks = Vec::new();
            let mut rest = input;
            while !rest.is_empty() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let n = ((seed >> 33) as usize % 7 + 1).min(rest.len());
                let (a, b) = rest.split_at(n);
                chunks.push(a);
                rest = b;
            }
            assert_eq!(parse_all(&chunks).unwrap(), whole, "random chunks");
        }
        whole
    }

    fn msg(subject: &str, reply: Option<&str>, payload: &[u8]) -> Message {
        Message {
            subject: subject.into(),
            reply: reply.map(Into::into),
            headers: vec![],
            status: None,
            description: None,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn stream_of_every_operation_in_any_chunking() {
        let input = b"INFO {\"server_id\":\"S\",\"version\":\"2.9.10\",\"max_payload\":1048576,\"headers\":true,\"jetstream\":true} \r\n\
+OK\r\n\
PING\r\n\
MSG foo.bar 9 11\r\nhello world\r\n\
MSG foo 10 _INBOX.x.1 0\r\n\r\n\
HMSG a.b 3 _INBOX.y 26 31\r\nNATS/1.0\r\nK: v1\r\nK: v2\r\n\r\nhello\r\n\
HMSG _INBOX.z.7 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n\
HMSG d 4 $JS.FC.s.c.1 36 36\r\nNATS/1.0 100 FlowControl Request\r\n\r\n\r\n\
PONG\r\n\
-ERR 'Permissions Violation for Publish to \"x\"'\r\n\
MSG bin 2 4\r\n\r\n\r\n\r\n";
        let ops = assert_chunking_invariant(input);
        let info = ServerInfo {
            server_id: "S".into(),
            version: "2.9.10".into(),
            max_payload: 1_048_576,
            headers: true,
            jetstream: true,
            ..ServerInfo::default()
        };
        let expected = vec![
            ServerOp::Info(Box::new(info)),
            ServerOp::Ok,
            ServerOp::Ping,
            ServerOp::Msg {
                sid: 9,
                msg: msg("foo.bar", None, b"hello world"),
            },
            ServerOp::Msg {
                sid: 10,
                msg: msg("foo", Some("_INBOX.x.1"), b""),
            },
            ServerOp::Msg {
                sid: 3,
                msg: Message {
                    headers: vec![("K".into(), "v1".into()), ("K".into(), "v2".into())],
                    ..msg("a.b", Some("_INBOX.y"), b"hello")
                },
            },
            ServerOp::Msg {
                sid: 1,
                msg: Message {
                    status: Some(503),
                    ..msg("_INBOX.z.7", None, b"")
                },
            },
            ServerOp::Msg {
                sid: 4,
                msg: Message {
                    status: Some(100),
                    description: Some("FlowControl Request".into()),
                    ..msg("d", Some("$JS.FC.s.c.1"), b"")
                },
            },
            ServerOp::Pong,
            ServerOp::Err("Permissions Violation for Publish to \"x\"".into()),
            // A payload that is itself CRLFs is framed by length, not by lines.
            ServerOp::Msg {
                sid: 2,
                msg: msg("bin", None, b"\r\n\r\n"),
            },
        ];
        assert_eq!(ops, expected);
    }

    #[test]
    fn heartbeat_with_headers_and_lowercase_ops() {
        let hdr = "NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 0\r\nNats-Last-Stream: 0\r\nNats-Consumer-Stalled: $JS.FC.a.b.c\r\n\r\n";
        let input = format!(
            "hmsg in.box 5 {} {}\r\n{hdr}\r\nping\r\n",
            hdr.len(),
            hdr.len()
        );
        let ops = assert_chunking_invariant(input.as_bytes());
        let ServerOp::Msg { sid: 5, msg } = &ops[0] else {
            panic!("{ops:?}")
        };
        assert_eq!(msg.status, Some(100));
        assert_eq!(msg.description.as_deref(), Some("Idle Heartbeat"));
        assert_eq!(msg.header("nats-consumer-stalled"), Some("$JS.FC.a.b.c"));
        assert!(msg.payload.is_empty());
        assert_eq!(ops[1], ServerOp::Ping);
    }

    #[test]
    fn incomplete_input_waits() {
        for partial in [
            &b"MSG a 1 5\r\nhel"[..],
            b"MSG a 1 5\r\nhello",
            b"MSG a 1 5\r\nhello\r",
            b"PIN",
            b"PING\r",
            b"INFO {\"a\":",
        ] {
            assert_eq!(parse_all(&[partial]).unwrap(), vec![], "{partial:?}");
        }
    }

    #[test]
    fn framing_errors_are_fatal() {
        for bad in [
            &b"MSG a 1 5\r\nhello!!"[..],
            b"MSG a 1\r\n",
            b"MSG a b c d e\r\n",
            b"MSG a x 5\r\n",
            b"MSG a 1 -5\r\n",
            b"HMSG a 1 10 5\r\n",
            b"HMSG a 1 5\r\n",
            b"FOO bar\r\n",
            b"INFO not-json\r\n",
        ] {
            assert!(
                matches!(parse_all(&[bad]), Err(NatsError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn oversized_messages_and_lines_are_refused_before_buffering() {
        let huge = format!("MSG a 1 {}\r\n", MAX_MESSAGE + 1);
        let err = parse_all(&[huge.as_bytes()]).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");

        let at_limit = format!("MSG a 1 {MAX_MESSAGE}\r\n");
        assert_eq!(parse_all(&[at_limit.as_bytes()]).unwrap(), vec![]);

        let long = vec![b'A'; MAX_CONTROL_LINE + 1];
        assert!(matches!(
            parse_all(&[&long]),
            Err(NatsError::Protocol(m)) if m.contains("too long")
        ));
    }

    #[test]
    fn header_block_parsing_is_lenient() {
        let (s, d, h) =
            parse_header_block(b"NATS/1.0 404 No Messages\r\nbad line\r\nA:b\r\n C : d e \r\n\r\n");
        assert_eq!(s, Some(404));
        assert_eq!(d.as_deref(), Some("No Messages"));
        assert_eq!(
            h,
            vec![("A".into(), "b".into()), ("C".into(), "d e".into())]
        );
        let (s, d, h) = parse_header_block(b"garbage");
        assert_eq!((s, d, h), (None, None, vec![]));
    }

    #[test]
    fn encoded_publish_parses_back_as_the_same_message() {
        let headers = [("Nats-Msg-Id", "42"), ("X", "a b")];
        let frame = encode_pub("s.t", Some("_INBOX.r"), &headers, b"body");
        let hlen = header_block_len(&headers);
        let head = format!("HPUB s.t _INBOX.r {hlen} {}\r\nNATS/1.0\r\n", hlen + 4);
        assert!(frame.starts_with(head.as_bytes()), "{frame:?}");
        // The server relays HPUB as HMSG with the same header block.
        let rest = &frame[head.len() - "NATS/1.0\r\n".len()..];
        let relayed = [
            format!("HMSG s.t 7 _INBOX.r {hlen} {}\r\n", hlen + 4).as_bytes(),
            rest,
        ]
        .concat();
        let ops = assert_chunking_invariant(&relayed);
        let ServerOp::Msg { sid: 7, msg } = &ops[0] else {
            panic!("{ops:?}")
        };
        assert_eq!(msg.header("nats-msg-id"), Some("42"));
        assert_eq!(msg.header("X"), Some("a b"));
        assert_eq!(&msg.payload[..], b"body");
        // NATS/1.0 CRLF, two header lines, blank line.
        assert_eq!(hlen, 10 + (11 + 2 + 2 + 2) + (1 + 2 + 3 + 2) + 2);

        assert_eq!(&encode_pub("a", None, &[], b"xy")[..], b"PUB a 2\r\nxy\r\n");
        assert_eq!(&encode_sub("a.>", 3)[..], b"SUB a.> 3\r\n");
        assert_eq!(&encode_unsub(3)[..], b"UNSUB 3\r\n");
    }

    #[test]
    fn connect_is_json_then_ping() {
        let c = encode_connect("svc \"a\"").unwrap();
        let s = std::str::from_utf8(&c).unwrap();
        let json = s
            .strip_prefix("CONNECT ")
            .and_then(|s| s.strip_suffix("\r\nPING\r\n"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["name"], "svc \"a\"");
        assert_eq!(v["headers"], true);
        assert_eq!(v["no_responders"], true);
        assert_eq!(v["verbose"], false);
        assert_eq!(v["protocol"], 1);
    }

    #[test]
    fn subject_and_header_validation() {
        for ok in ["a", "a.b", "$JS.API.STREAM.INFO.X", "_INBOX.abc.1"] {
            validate_subject(ok, false).unwrap();
        }
        for ok in ["a.*", "a.>", "*.b", ">"] {
            validate_subject(ok, true).unwrap();
            assert!(validate_subject(ok, false).is_err(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a\r\nPUB x 1",
            "a..b",
            ".a",
            "a.",
            "a.>.b",
            "a\tb",
        ] {
            assert!(validate_subject(bad, true).is_err(), "{bad:?}");
        }
        validate_headers(&[("Nats-Msg-Id", "x y: z")]).unwrap();
        for bad in [("", "v"), ("a b", "v"), ("a:b", "v"), ("a", "v\r\nX: y")] {
            assert!(validate_headers(&[bad]).is_err(), "{bad:?}");
        }
    }
}
