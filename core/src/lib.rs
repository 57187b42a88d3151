//! `wsmq-core`: what every wsmq service shares and nothing service-specific.
//!
//! The services (`msgqueue`, `publisher`, `subscriber`) are thin layers over this crate: it owns the wire
//! protocol, TLS, authentication, the WebSocket listener with its limits, the client side of service links,
//! configuration flags, graceful shutdown and telemetry, so that all services behave alike and an operator
//! learns one set of flags.

pub mod access;
pub mod acl;
pub mod admin;
pub mod admission;
pub mod api_client;
pub mod auth;
pub mod backoff;
pub mod callout;
pub mod config;
pub mod dial;
pub mod history_client;
pub mod http;
pub mod http_api;
pub mod limits;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod supervise;
pub mod tls;
pub mod tls_stream;
pub mod topic;
pub mod ws;

pub use secret::Secret;
