//! The wire protocol: what travels inside WebSocket frames between clients and services.
//!
//! Two modes exist on every endpoint, chosen at the handshake:
//! - **compat** (no subprotocol negotiated): exactly ws-go's frames, so existing clients keep working.
//!   [`envelope`] holds the `{"Topic": .., "Content": ..}` JSON envelope they use.
//! - **reliable** (subprotocol [`SUBPROTOCOL_V1`]): what wsmq's own services speak to msgqueue, with producer
//!   sequence numbers, durable acks, delivery ids and credit. [`queue`] holds that binary framing.
//!
//! `docs/PROTOCOL.md` is the prose version of this module; keep the two in step.

pub mod client;
pub mod envelope;
pub mod group;
pub mod history;
pub mod queue;
pub mod schedule;

/// The subprotocol a client offers in `Sec-WebSocket-Protocol` to speak wsmq's reliable protocol instead of
/// ws-go's. Anything new is negotiated this way so ws-go clients, which offer nothing, are never surprised.
pub const SUBPROTOCOL_V1: &str = "wsmq.v1";

/// msgqueue's producer endpoint: the publisher's link pushes each published message here and waits for the
/// durable ack (ws-go's path, kept so ws-go producers still connect).
pub const PUSH_PATH: &str = "/pushmsg";

/// msgqueue's consumer endpoint: the subscriber's link pops deliveries from here and acks them once routed
/// (ws-go's path).
pub const POP_PATH: &str = "/popmsg";

/// The publisher's client endpoint: clients send `{"Topic", "Content"}` envelopes here (ws-go's path).
pub const PUBLISH_PATH: &str = "/publish";

/// The publisher's HTTP API (same port as [`PUBLISH_PATH`]): every path under it is served by hyper.
pub const API_PREFIX: &str = "/v1";

/// HTTP API: `POST` one message as `{"topic", "content"}`, answered once msgqueue stored it.
pub const PUBLISH_API_PATH: &str = "/v1/publish";

/// HTTP API: `POST` several messages as `{"messages": [...]}`, one result per message.
pub const PUBLISH_BATCH_API_PATH: &str = "/v1/publish/batch";

/// The subscriber's client endpoint: clients register topics and receive messages here (ws-go's path).
pub const SUBSCRIBE_PATH: &str = "/subscribe";
