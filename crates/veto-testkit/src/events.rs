//! A server-sent event stream read through [`veto_core::SseParser`].

#![allow(
    clippy::panic,
    reason = "a test kit: a stream that fails fails the test there, with what went wrong"
)]

use std::time::Duration;

use veto_core::wire::EventKind;

/// A server-sent event stream read through [`veto_core::SseParser`].
pub struct EventStream {
    resp: reqwest::Response,
    parser: veto_core::SseParser,
    ready: std::collections::VecDeque<veto_core::SseEvent>,
}

impl EventStream {
    /// Opens `GET {url}` as an event stream (`Last-Event-ID` when given).
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            ctype.starts_with("text/event-stream"),
            "content type `{ctype}`"
        );
        Self {
            resp,
            parser: veto_core::SseParser::new(64 << 20),
            ready: Default::default(),
        }
    }

    /// The last event id seen, as a reconnect sends it in `Last-Event-ID`.
    pub fn last_id(&self) -> Option<&str> {
        self.parser.last_id()
    }

    /// The next event about the revocation state (a delta, checkpoint or
    /// snapshot: issuer key set events, which come at the start of every
    /// stream and on key changes, are skipped), or a panic after `timeout`
    /// or at the end of the stream.
    pub async fn next(&mut self, timeout: Duration) -> veto_core::SseEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next_any(left).await;
            if e.event != EventKind::Issuers.as_str() {
                return e;
            }
        }
    }

    /// The next event of any kind, or a panic after `timeout` or at the
    /// end of the stream.
    pub async fn next_any(&mut self, timeout: Duration) -> veto_core::SseEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {timeout:?}"))
                .unwrap_or_else(|e| panic!("event stream failed: {e}"))
                .unwrap_or_else(|| panic!("event stream ended"));
            let events = self
                .parser
                .feed(&chunk)
                .unwrap_or_else(|e| panic!("bad event stream: {e}"));
            self.ready.extend(events);
        }
    }

    /// The next event that is not of kind `skip` (such as heartbeat checkpoints).
    pub async fn next_except(&mut self, skip: EventKind, timeout: Duration) -> veto_core::SseEvent {
        loop {
            let e = self.next(timeout).await;
            if e.event != skip.as_str() {
                return e;
            }
        }
    }
}
