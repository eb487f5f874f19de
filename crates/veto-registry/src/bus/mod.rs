//! The push channels, side by side: [`sse`] serves each subscriber over
//! HTTP; [`nats`] relays committed deltas to NATS JetStream through the
//! transactional outbox. Both take the authority's [`crate::event::Event`]s.

pub(crate) mod nats;
pub(crate) mod sse;
