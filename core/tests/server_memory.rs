//! Measures the server's resident memory per idle TLS WebSocket connection (target: 8 KiB, see issue 5 and
//! docs/PERFORMANCE.md for where the bytes go).
//!
//! A measurement, not a check, so it is `#[ignore]`d. Run it in release mode:
//! `cargo test --release -p wsmq-core --test server_memory -- --ignored --nocapture`
//! The test re-runs its own binary as a child process that only serves (so the clients' memory is not
//! counted), opens the connections to it, and compares the child's VmRSS before and after. For a heap profile:
//! `WSMQ_MEMORY_CONNECTIONS=200 WSMQ_MEMORY_HOLD_SECS=30 WSMQ_MEMORY_WRAPPER="valgrind --tool=massif"` and,
//! while it holds, `vgdb --pid=CHILD detailed_snapshot /tmp/massif.snap`; `WSMQ_MEMORY_WRAPPER="env
//! LD_PRELOAD=..."` compares allocators.

mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{TestResult, good_credentials, start};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wsmq_core::dial::Dialer;
use wsmq_core::limits::Limits;
use wsmq_core::tls;

/// Set in the child's environment: run as the server.
const CHILD_ENV: &str = "WSMQ_MEMORY_SERVER_CHILD";
/// Idle connections opened for the measurement by default.
const CONNECTIONS: usize = 2_000;
/// Overrides [`CONNECTIONS`], e.g. 200 for a run under a heap profiler; capped at [`MAX_CONNECTIONS`].
const CONNECTIONS_ENV: &str = "WSMQ_MEMORY_CONNECTIONS";
/// The listener's default connection cap, below the 20,000 open files a process may have here.
const MAX_CONNECTIONS: usize = 10_000;
/// A command the server child is run under, split on spaces, e.g.
/// `valgrind --tool=massif --massif-out-file=/tmp/massif.out`: how the per-connection breakdown is profiled.
const WRAPPER_ENV: &str = "WSMQ_MEMORY_WRAPPER";
/// Handshakes in flight at once while connecting.
const CONNECT_CONCURRENCY: usize = 32;
/// Seconds to keep the connections open after measuring, e.g. for `vgdb --pid=CHILD detailed_snapshot FILE`.
const HOLD_ENV: &str = "WSMQ_MEMORY_HOLD_SECS";
/// Bound on the whole measurement.
const MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's resident set size in KiB, from /proc/self/status.
fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
async fn idle_connection_memory() -> TestResult {
    tokio::time::timeout(MEASUREMENT_TIMEOUT, measure()).await?
}

async fn measure() -> TestResult {
    let connections = match std::env::var(CONNECTIONS_ENV) {
        Ok(count) => count.parse::<usize>()?.min(MAX_CONNECTIONS),
        Err(_) => CONNECTIONS,
    };
    let wrapper = std::env::var(WRAPPER_ENV).unwrap_or_default();
    let mut wrapper = wrapper.split_whitespace();
    let mut server = match wrapper.next() {
        Some(program) => {
            let mut server = Command::new(program);
            server.args(wrapper).arg(std::env::current_exe()?);
            server
        }
        None => Command::new(std::env::current_exe()?),
    };
    let mut child = server
        .args([
            "--exact",
            "memory_server_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut to_child = child.stdin.take().ok_or("no child stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
    let mut read_value = async |prefix: &str| -> TestResult<u64> {
        while let Some(line) = from_child.next_line().await? {
            if let Some((_, value)) = line.split_once(prefix) {
                return Ok(value.trim().parse()?);
            }
        }
        Err(format!("child exited before printing {prefix}").into())
    };
    let port = read_value("PORT ").await?;

    to_child.write_all(b"rss\n").await?;
    let before = read_value("RSS ").await?;

    let client_tls = tls::client_config(None, None, true)?;
    let dialer = Arc::new(Dialer::new(
        &format!("wss://localhost:{port}"),
        good_credentials(),
        client_tls,
    )?);
    let slots = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut dials = JoinSet::new();
    for _ in 0..connections {
        let dialer = dialer.clone();
        let slots = slots.clone();
        dials.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let (mut ws, _) = dialer.dial("/echo").await?;
            common::next_text(&mut ws).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ws)
        });
    }
    let mut open = Vec::with_capacity(connections);
    while let Some(joined) = dials.join_next().await {
        open.push(joined??);
    }

    to_child.write_all(b"rss\n").await?;
    let after = read_value("RSS ").await?;
    let per_connection = (after.saturating_sub(before) as f64) * 1024.0 / connections as f64;
    writeln!(
        std::io::stdout(),
        "server VmRSS: {before} KiB idle, {after} KiB with {connections} idle TLS WebSocket connections \
         = {per_connection:.0} bytes ({:.1} KiB) per connection",
        per_connection / 1024.0
    )?;
    if let Ok(hold) = std::env::var(HOLD_ENV) {
        tokio::time::sleep(Duration::from_secs(hold.parse()?).min(MEASUREMENT_TIMEOUT / 2)).await;
    }
    drop(open);
    drop(to_child);
    child.wait().await?;
    Ok(())
}

/// The server side of [`idle_connection_memory`]; does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of idle_connection_memory"]
async fn memory_server_child() -> TestResult {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let limits = Limits {
        ping_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1200),
        ..Limits::default()
    };
    let server = start(limits).await?;
    writeln!(std::io::stdout(), "PORT {}", server.addr.port())?;
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        if command == "rss" {
            writeln!(std::io::stdout(), "RSS {}", vm_rss_kib().ok_or("no VmRSS")?)?;
        }
    }
    server.stop().await
}
