//! The start-up banner: what a newcomer needs to use the stack, printed once to stdout.

#![allow(
    clippy::print_stdout,
    reason = "the banner is this binary's user interface"
)]

use wsmq::{CredentialSource, Stack};

/// Prints the URLs, the CA to trust, where credentials come from, and how to try it.
pub(crate) fn print(stack: &Stack) {
    let url = |addr: std::net::SocketAddr| {
        let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
            "localhost".to_owned()
        } else {
            addr.ip().to_string()
        };
        format!("wss://{host}:{}", addr.port())
    };
    println!("wsmq is running");
    if let Some(addr) = stack.msgqueue_addr() {
        println!("  msgqueue    {}/pushmsg  {}/popmsg", url(addr), url(addr));
    }
    if let Some(addr) = stack.publisher_addr() {
        println!("  publisher   {}/publish", url(addr));
    }
    if let Some(addr) = stack.subscriber_addr() {
        println!("  subscriber  {}/subscribe", url(addr));
        println!(
            "  browser     {}/  (trust the CA below, or accept the certificate warning)",
            url(addr).replacen("wss", "https", 1)
        );
    }
    if let Some(ca) = &stack.ca_file {
        println!(
            "  TLS CA      {} (development CA: clients verify with --ca or --data-dir)",
            ca.display()
        );
    }
    match stack.credentials {
        CredentialSource::DevUsers => {
            println!("  credentials hello:test (development users, loopback only)")
        }
        CredentialSource::Configured => println!("  credentials from --users / --users-file"),
        CredentialSource::AuthCallout => {
            println!("  credentials checked by the auth callout (--auth-url)")
        }
    }
    println!("  try it      cargo run --release --bin clientdemo   (then: sub news / news hello)");
    println!("  stop        Ctrl-C (graceful: nothing acked is lost)");
}
