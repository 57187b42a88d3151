//! `wsmq-bench`: a load generator for wsmq, and for any server speaking ws-go's protocol.
//!
//! Each scenario (see [`cli::Scenario`]) opens real TLS WebSocket connections with Basic auth, drives a
//! bounded amount of traffic, and returns a [`report::Report`]: throughput, loss/duplicate/order accounting
//! from a stamp in every message ([`payload`]), and latency percentiles from HDR histograms. The binary is a
//! thin wrapper so the scenarios can be tested in-process.

pub mod cli;
pub mod client;
pub mod payload;
pub mod report;
pub mod scenario;
