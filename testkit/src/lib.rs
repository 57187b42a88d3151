//! Helpers shared by the tests of every wsmq crate, so each crate's `tests/common` keeps only what is specific to
//! it (its fakes of its neighbours, its protocol's clients).
//!
//! - [`wait`]: one bound on every await ([`STEP`]), so a hung peer fails a test instead of hanging CI.
//! - [`config`]: test users and the shared server and link flags of a service on loopback port 0.
//! - [`server`]: a real `wsmq_core::server` listener with a handler of the test's own, to fake a neighbour.
//! - [`client`]: dialing a service as a test client, and reading the next frame of a kind.
//! - [`admin`]: requests to the admin listener (`/readyz`, `/healthz`, msgqueue's `/deadletters`).
//! - [`auth_server`]: a real HTTPS auth-callout endpoint answering as the test decides.
//! - [`redis`]: a real `redis-server` on its own port and directory, killed and restarted on demand.
//! - [`service`]: a service running in a task of the test, stopped on demand and checked to end cleanly.
//!
//! Helpers return [`anyhow::Result`], which converts into [`TestResult`] with `?`, so tests of either style use
//! them; [`expect_within`] is for tests that panic instead.

pub mod admin;
pub mod auth_server;
pub mod client;
pub mod config;
pub mod redis;
pub mod server;
pub mod service;
pub mod wait;

pub use wait::{STEP, TimedOut, eventually, expect_within, within};

/// Result type of tests and helpers that return boxed errors.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
