//! `wsmq-core`: what every wsmq service shares and nothing service-specific.
//!
//! The services (`msgqueue`, `publisher`, `subscriber`) are thin layers over this crate: it owns the wire
//! protocol, TLS, authentication, the WebSocket listener with its limits, the client side of service links,
//! configuration flags, graceful shutdown and telemetry, so that all services behave alike and an operator
//! learns one set of flags.

pub mod protocol;
pub mod secret;
pub mod shutdown;

pub use secret::Secret;
