use std::time::Duration;

/// Everything that can go wrong talking to a NATS server.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server address could not be understood.
    #[error("invalid nats url `{url}`: {reason}")]
    InvalidUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TCP connection or the handshake failed.
    #[error("cannot connect to nats server: {0}")]
    Connect(#[source] std::io::Error),
    /// The server did not complete the handshake in time.
    #[error("timed out connecting to nats server")]
    ConnectTimeout,
    /// The server lacks something this client needs (TLS-only server, no headers).
    #[error("nats server is not usable: {0}")]
    Unsupported(&'static str),
    /// The server answered `-ERR` (during the handshake: refused the connection).
    #[error("nats server error: {0}")]
    Server(String),
    /// The server sent bytes that are not the NATS protocol, or too large a message.
    #[error("nats protocol error: {0}")]
    Protocol(String),
    /// The connection is closed (lost, or closed by this side); callers reconnect.
    #[error("nats connection closed")]
    Disconnected,
    /// A subject is empty, has whitespace or empty tokens, or wildcards where not allowed.
    #[error("invalid nats subject `{0}`")]
    InvalidSubject(String),
    /// A header name or value would break the header block.
    #[error("invalid nats header `{0}`")]
    InvalidHeader(String),
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The message is larger than the server accepts (`max_payload` from its INFO).
    #[error("message of {size} bytes exceeds the server's max_payload of {max} bytes")]
    PayloadTooLarge {
        /// Header block plus payload, in bytes.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// No reply arrived in time.
    #[error("timed out waiting for a reply on `{subject}`")]
    Timeout {
        /// The request subject.
        subject: String,
    },
    /// Nobody is subscribed to the request subject (for JetStream: no stream
    /// captures the subject, or JetStream is not enabled).
    #[error("no responders on `{subject}`")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// The JetStream API answered with an error.
    #[error("jetstream error {code}/{err_code}: {description}")]
    JetStream {
        /// HTTP-like status code.
        code: u16,
        /// JetStream's specific error code (0 if absent).
        err_code: u32,
        /// The server's description.
        description: String,
    },
    /// The JetStream API answered with something that is not the expected JSON.
    #[error("unexpected jetstream response: {0}")]
    JetStreamResponse(String),
    /// A push consumer sent nothing, not even an idle heartbeat, for this long.
    #[error("no jetstream message or heartbeat for {0:?}")]
    HeartbeatTimeout(Duration),
    /// The server ended the push consumer (status 409, e.g. `Consumer Deleted`).
    #[error("jetstream consumer stopped: {0}")]
    ConsumerStopped(String),
}
