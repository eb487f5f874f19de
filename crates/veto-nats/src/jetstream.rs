//! The slice of JetStream veto needs, over the request/reply API
//! (`$JS.API.…`): ensure a stream, publish with de-duplication, and
//! ephemeral push consumers with flow control and idle heartbeats.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::{Client, Subscription};
use crate::proto::{self, Message};
use crate::NatsError;

/// How long JetStream API calls (not publishes) wait for the server.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// JetStream's error code for creating a stream whose name exists with a
/// different configuration.
const STREAM_NAME_IN_USE: u32 = 10058;

/// The server's acknowledgement of a JetStream publish.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PubAck {
    /// The stream that stored the message.
    pub stream: String,
    /// Its sequence number in the stream (for a duplicate: the original's).
    pub seq: u64,
    /// True when a message with the same `Nats-Msg-Id` was stored within
    /// the stream's duplicate window, so this one was not stored again.
    #[serde(default)]
    pub duplicate: bool,
}

/// Where a new push consumer starts in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverFrom {
    /// Only messages stored after the consumer is created.
    New,
    /// Everything in the stream.
    All,
    /// Messages stored at or after this time (the server's clock).
    StartTime(SystemTime),
    /// The last message of each subject matching the filter, then new ones.
    LastPerSubject,
    /// Messages from this stream sequence number on.
    StartSequence(u64),
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct StreamInfo {
    config: Value,
}

#[derive(Deserialize)]
struct ConsumerInfo {
    name: String,
}

/// A push consumer's deliveries. Data messages only: flow-control requests
/// are answered and idle heartbeats swallowed inside [`JsSubscription::next`].
///
/// The consumer is ephemeral (memory storage, no acks): dropping this
/// unsubscribes, and the server deletes the consumer once its inactivity
/// threshold passes without interest.
#[derive(Debug)]
pub struct JsSubscription {
    sub: Subscription,
    stream: String,
    consumer: String,
    idle_heartbeat: Duration,
}

impl JsSubscription {
    /// The server-assigned consumer name.
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// The stream this consumer reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The next data message.
    ///
    /// `Ok(None)` once the client was closed by [`Client::close`] (or
    /// dropped). Errors: [`NatsError::Disconnected`] when the connection was
    /// lost, [`NatsError::HeartbeatTimeout`] when nothing at all (not even a
    /// heartbeat) arrived for twice the idle heartbeat (the connection or
    /// consumer is dead even if TCP has not noticed), and
    /// [`NatsError::ConsumerStopped`] when the server ended the consumer.
    /// After an error the subscription is no use: make a new one.
    pub async fn next(&mut self) -> Result<Option<Message>, NatsError> {
        let deadline = self.idle_heartbeat.saturating_mul(2);
        loop {
            let msg = match tokio::time::timeout(deadline, self.sub.recv()).await {
                Err(_) => return Err(NatsError::HeartbeatTimeout(deadline)),
                Ok(None) if self.sub.client().closed_by_user() => return Ok(None),
                Ok(None) => return Err(NatsError::Disconnected),
                Ok(Some(msg)) => msg,
            };
            match msg.status {
                None => return Ok(Some(msg)),
                Some(100) => self.answer_control(&msg).await?,
                Some(409) => {
                    return Err(NatsError::ConsumerStopped(
                        msg.description.unwrap_or_else(|| "status 409".to_owned()),
                    ))
                }
                Some(code) => tracing::debug!(code, "ignoring jetstream status message"),
            }
        }
    }

    /// A flow-control request carries a reply subject and must be answered
    /// once we have consumed everything before it (which is now: the
    /// channel is in order). A heartbeat carries `Nats-Consumer-Stalled`
    /// when the server is still waiting for an answer it never got.
    async fn answer_control(&self, msg: &Message) -> Result<(), NatsError> {
        let client = self.sub.client();
        if let Some(reply) = msg.reply.as_deref() {
            client.publish(reply, b"").await?;
        } else if let Some(stalled) = msg.header("Nats-Consumer-Stalled") {
            client.publish(stalled, b"").await?;
        }
        Ok(())
    }
}

/// Stream names go into API subjects, so they must be one plain token.
fn validate_stream_name(name: &str) -> Result<(), NatsError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b".*>/\\".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NatsError::InvalidArgument(format!(
            "stream name `{name}` must be one token without `.`, `*`, `>`, slashes or whitespace"
        )))
    }
}

/// Go's `time.Duration` in JSON: integer nanoseconds.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn parse_api<T: DeserializeOwned>(msg: &Message) -> Result<T, NatsError> {
    let v: Value = serde_json::from_slice(&msg.payload)
        .map_err(|e| NatsError::JetStreamResponse(e.to_string()))?;
    if let Some(err) = v.get("error") {
        let e: ApiError = serde_json::from_value(err.clone())
            .map_err(|e| NatsError::JetStreamResponse(e.to_string()))?;
        return Err(NatsError::JetStream {
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        });
    }
    serde_json::from_value(v).map_err(|e| NatsError::JetStreamResponse(e.to_string()))
}

/// Whether an existing stream config already has what we ask for.
fn config_matches(config: &Value, subjects: &[&str], dup: Duration, max_age: Duration) -> bool {
    let mut have: Vec<&str> = config["subjects"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut want = subjects.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    have == want
        && config["duplicate_window"].as_i64() == Some(nanos(dup))
        && config["max_age"].as_i64() == Some(nanos(max_age))
}

impl Client {
    async fn js_api<T: DeserializeOwned>(
        &self,
        subject: &str,
        body: &Value,
    ) -> Result<T, NatsError> {
        let payload = serde_json::to_vec(body)
            .map_err(|e| NatsError::InvalidArgument(format!("jetstream request: {e}")))?;
        let reply = self.request(subject, &[], &payload, API_TIMEOUT).await?;
        parse_api(&reply)
    }

    /// Creates file-backed stream `name` capturing `subjects`, or accepts an
    /// existing one. If it exists with other subjects, duplicate window or
    /// max age, those three are updated (the rest of its config is kept).
    /// `max_age` of zero means unlimited; a non-zero `max_age` must not be
    /// shorter than `duplicate_window` (the server refuses that).
    pub async fn js_ensure_stream(
        &self,
        name: &str,
        subjects: &[&str],
        duplicate_window: Duration,
        max_age: Duration,
    ) -> Result<(), NatsError> {
        validate_stream_name(name)?;
        for s in subjects {
            proto::validate_subject(s, true)?;
        }
        let config = json!({
            "name": name,
            "subjects": subjects,
            "retention": "limits",
            "storage": "file",
            "discard": "old",
            "num_replicas": 1,
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_msg_size": -1,
            "max_age": nanos(max_age),
            "duplicate_window": nanos(duplicate_window),
        });
        let created: Result<StreamInfo, _> = self
            .js_api(&format!("$JS.API.STREAM.CREATE.{name}"), &config)
            .await;
        match created {
            Ok(_) => return Ok(()),
            Err(NatsError::JetStream { err_code, .. }) if err_code == STREAM_NAME_IN_USE => {}
            Err(e) => return Err(e),
        }
        let info: StreamInfo = self
            .js_api(&format!("$JS.API.STREAM.INFO.{name}"), &json!({}))
            .await?;
        if config_matches(&info.config, subjects, duplicate_window, max_age) {
            return Ok(());
        }
        let mut updated = info.config;
        updated["subjects"] = json!(subjects);
        updated["duplicate_window"] = json!(nanos(duplicate_window));
        updated["max_age"] = json!(nanos(max_age));
        tracing::info!(stream = name, "updating jetstream stream configuration");
        let _: StreamInfo = self
            .js_api(&format!("$JS.API.STREAM.UPDATE.{name}"), &updated)
            .await?;
        Ok(())
    }

    /// Publishes to a stream with header `Nats-Msg-Id: <msg_id>` and waits up
    /// to `timeout` for the acknowledgement. Within the stream's duplicate
    /// window a repeated `msg_id` is acknowledged with `duplicate: true` and
    /// not stored again. Errors with [`NatsError::NoResponders`] when no
    /// stream captures `subject`.
    pub async fn js_publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<PubAck, NatsError> {
        if msg_id.is_empty() {
            return Err(NatsError::InvalidArgument(
                "jetstream message id must not be empty".into(),
            ));
        }
        let reply = self
            .request(subject, &[("Nats-Msg-Id", msg_id)], payload, timeout)
            .await?;
        parse_api(&reply)
    }

    /// Starts an ephemeral push consumer on `stream` for messages matching
    /// `filter_subject`, delivered from `start` in stream order without acks
    /// (`ack_policy: none`), with flow control and idle heartbeats every
    /// `idle_heartbeat` (at least 100 ms).
    pub async fn js_subscribe(
        &self,
        stream: &str,
        filter_subject: &str,
        start: DeliverFrom,
        idle_heartbeat: Duration,
    ) -> Result<JsSubscription, NatsError> {
        validate_stream_name(stream)?;
        proto::validate_subject(filter_subject, true)?;
        if idle_heartbeat < Duration::from_millis(100) {
            return Err(NatsError::InvalidArgument(
                "idle heartbeat must be at least 100ms".into(),
            ));
        }
        // Subscribe before the consumer exists so nothing it sends is lost.
        let deliver = self.new_inbox()?;
        let sub = self.subscribe(&deliver).await?;
        let mut config = json!({
            "deliver_subject": deliver,
            "ack_policy": "none",
            "replay_policy": "instant",
            "filter_subject": filter_subject,
            "flow_control": true,
            "idle_heartbeat": nanos(idle_heartbeat),
            "mem_storage": true,
            "num_replicas": 1,
            // How long the server keeps the consumer once nobody listens.
            "inactive_threshold": nanos(idle_heartbeat.saturating_mul(5).max(Duration::from_secs(5))),
        });
        match start {
            DeliverFrom::New => config["deliver_policy"] = json!("new"),
            DeliverFrom::All => config["deliver_policy"] = json!("all"),
            DeliverFrom::LastPerSubject => config["deliver_policy"] = json!("last_per_subject"),
            DeliverFrom::StartTime(t) => {
                config["deliver_policy"] = json!("by_start_time");
                config["opt_start_time"] = json!(rfc3339(t));
            }
            DeliverFrom::StartSequence(seq) => {
                config["deliver_policy"] = json!("by_start_sequence");
                config["opt_start_seq"] = json!(seq.max(1));
            }
        }
        let info: ConsumerInfo = self
            .js_api(
                &format!("$JS.API.CONSUMER.CREATE.{stream}"),
                &json!({ "stream_name": stream, "config": config }),
            )
            .await?;
        Ok(JsSubscription {
            sub,
            stream: stream.to_owned(),
            consumer: info.name,
            idle_heartbeat,
        })
    }
}

/// UTC RFC 3339 with nanoseconds, as JetStream's `opt_start_time` wants.
/// Times before 1970 are clamped to the epoch.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests and benchmarks: a failed step fails the run"
    )]

    use bytes::Bytes;

    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        let at = |s: u64, n: u32| rfc3339(UNIX_EPOCH + Duration::new(s, n));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(at(951_868_799, 5), "2000-02-29T23:59:59.000000005Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000000000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000000Z"
        );
        // Every day for 400 years round-trips through the calendar.
        let mut prev = (1969, 12, 31);
        for day in 0..146_097 {
            let cur = civil_from_days(day);
            let next_in_month = (prev.0, prev.1, prev.2 + 1);
            let next_month = if prev.1 == 12 {
                (prev.0 + 1, 1, 1)
            } else {
                (prev.0, prev.1 + 1, 1)
            };
            assert!(
                cur == next_in_month || cur == next_month,
                "{prev:?} -> {cur:?}"
            );
            prev = cur;
        }
    }

    fn reply(json: &str) -> Message {
        Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            headers: vec![],
            status: None,
            description: None,
            payload: Bytes::copy_from_slice(json.as_bytes()),
        }
    }

    #[test]
    fn api_responses() {
        let ack: PubAck = parse_api(&reply(r#"{"stream":"S","seq":7}"#)).unwrap();
        assert_eq!(
            ack,
            PubAck {
                stream: "S".into(),
                seq: 7,
                duplicate: false
            }
        );
        let ack: PubAck = parse_api(&reply(r#"{"stream":"S","seq":7,"duplicate":true}"#)).unwrap();
        assert!(ack.duplicate);
        let err = parse_api::<PubAck>(&reply(
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        ))
        .unwrap_err();
        assert!(matches!(
            err,
            NatsError::JetStream { code: 503, err_code: 10077, ref description } if description == "maximum messages exceeded"
        ));
        assert!(matches!(
            parse_api::<PubAck>(&reply("not json")),
            Err(NatsError::JetStreamResponse(_))
        ));
        assert!(matches!(
            parse_api::<PubAck>(&reply(r#"{"stream":"S"}"#)),
            Err(NatsError::JetStreamResponse(_))
        ));
    }

    #[test]
    fn stream_config_comparison() {
        let cfg =
            json!({"subjects": ["b", "a"], "duplicate_window": 120_000_000_000i64, "max_age": 0});
        let two_min = Duration::from_secs(120);
        assert!(config_matches(&cfg, &["a", "b"], two_min, Duration::ZERO));
        assert!(!config_matches(&cfg, &["a"], two_min, Duration::ZERO));
        assert!(!config_matches(
            &cfg,
            &["a", "b"],
            two_min / 2,
            Duration::ZERO
        ));
        assert!(!config_matches(&cfg, &["a", "b"], two_min, two_min));
    }

    #[test]
    fn stream_names() {
        validate_stream_name("VETO_SRL").unwrap();
        for bad in ["", "a.b", "a*", "a>", "a b", "a/b"] {
            assert!(validate_stream_name(bad).is_err(), "{bad}");
        }
    }
}
