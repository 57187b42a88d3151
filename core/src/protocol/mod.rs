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
pub mod queue;

/// The subprotocol a client offers in `Sec-WebSocket-Protocol` to speak wsmq's reliable protocol instead of
/// ws-go's. Anything new is negotiated this way so ws-go clients, which offer nothing, are never surprised.
pub const SUBPROTOCOL_V1: &str = "wsmq.v1";
