//! A minimal NATS client with the slice of JetStream that veto's scale-out
//! push needs (DESIGN.md section 7), written so the workspace needs no C
//! build and no second crypto library.
//!
//! - [`Client`]: one plain-TCP connection; publish (with headers), subscribe,
//!   request/reply, flush. A reader task parses the stream with a pure,
//!   bounded parser; a writer task serialises frames; a keepalive task PINGs.
//! - JetStream on [`Client`]: [`Client::js_ensure_stream`],
//!   [`Client::js_publish`] (de-duplicated by `Nats-Msg-Id`, giving a
//!   [`PubAck`]), and [`Client::js_subscribe`], an ephemeral push consumer
//!   ([`JsSubscription`]) that starts at a [`DeliverFrom`] point, answers
//!   flow control and treats missing heartbeats as a dead connection.
//!
//! Deliberate limits:
//! - **No TLS and no credentials.** Traffic is plain text; run NATS on
//!   loopback or a private network, or behind a TLS-terminating tunnel.
//!   A server that requires TLS is refused at connect.
//! - **No automatic reconnect.** When the connection drops, every
//!   subscription ends and every call returns [`NatsError::Disconnected`];
//!   callers connect again and resume from their own state.
//! - **No queue groups, pull consumers, acks or key-value.**
//! - Messages over [`ServerInfo::max_payload`] are refused before sending;
//!   messages over 64 MiB from the server close the connection.

mod client;
mod error;
mod jetstream;
mod proto;

pub use client::{Client, Subscription};
pub use error::NatsError;
pub use jetstream::{DeliverFrom, JsSubscription, PubAck};
pub use proto::{Message, ServerInfo};
