//! `conns`: open many idle subscriber connections, each subscribed to a topic; report the connect rate and,
//! from the server's RSS before and after (via `/proc/PID/status` or a Prometheus endpoint), the server
//! memory each connection costs.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::SUBSCRIBE_PATH;

use super::{Ctx, open_many, subscribe};
use crate::cli::ConnsArgs;
use crate::client::{Connector, source_ip};
use crate::payload::Clock;
use crate::report::{Report, per_second};

/// Largest `/metrics` response read.
const MAX_METRICS_BYTES: u64 = 16 << 20;
/// Bound on fetching `/metrics` once.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// The standard Prometheus process-collector metric for resident memory.
const RSS_METRIC: &str = "process_resident_memory_bytes";

/// Runs `conns`.
pub async fn run(ctx: &Ctx, args: ConnsArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.topics > 0, "--topics must be at least 1");
    ctx.check_connections(args.connections)?;
    let connector = Connector::new(&ctx.common, true)?;
    let target = connector
        .target(&ctx.common.subscriber_url, SUBSCRIBE_PATH)
        .await?;
    let rss_before = server_rss(&args).await?;

    let bar = ctx.progress(args.connections as u64, "connecting");
    let clock = Clock::start();
    let subscribers = ctx
        .phase(
            "connect",
            open_many(ctx, args.connections, &bar, |i| {
                subscribe(
                    connector.clone(),
                    target.clone(),
                    format!("bench-{}", i % args.topics),
                    args.subscribe_mode,
                    source_ip(i, args.source_ips, &target),
                )
            }),
        )
        .await??;
    let connect_nanos = clock.nanos();
    bar.finish_and_clear();
    let confirmed = subscribers.iter().all(|s| s.confirmed);

    // Idle connections still read, so they answer the server's pings during a long hold.
    let stop = CancellationToken::new();
    let mut holders = JoinSet::new();
    for sub in subscribers {
        let stop = stop.clone();
        let mut ws = sub.ws;
        holders.spawn(async move {
            loop {
                tokio::select! {
                    frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return false },
                    () = stop.cancelled() => break,
                }
            }
            let _ = ws.close(None).await;
            true
        });
    }
    let rss_after = server_rss(&args).await?;
    let hold = args.hold.min(ctx.common.duration_limit);
    tokio::time::sleep(hold).await;
    stop.cancel();
    let mut still_open = 0u64;
    ctx.phase("close", async {
        while let Some(done) = holders.join_next().await {
            if matches!(done, Ok(true)) {
                still_open += 1;
            }
        }
    })
    .await?;

    let mut report = Report::new("conns");
    report.add("connections", args.connections);
    report.add("topics", args.topics);
    report.add("subscriptions_confirmed", confirmed);
    report.add("connect_secs", connect_nanos as f64 / 1e9);
    report.add(
        "connects_per_s",
        per_second(args.connections as u64, connect_nanos),
    );
    report.add("held_secs", hold.as_secs_f64());
    report.add("open_after_hold", still_open);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.add("server_rss_before_bytes", before);
        report.add("server_rss_after_bytes", after);
        // Signed: memory freed by earlier runs can make the delta negative, which the reader should see.
        report.add(
            "server_bytes_per_connection",
            (after as f64 - before as f64) / args.connections.max(1) as f64,
        );
    }
    Ok(report)
}

/// The servers' resident memory in bytes: the sum over `--server-pid`s, else `--metrics-url`, else `None`.
async fn server_rss(args: &ConnsArgs) -> anyhow::Result<Option<u64>> {
    if !args.server_pid.is_empty() {
        let mut total = 0;
        for &pid in &args.server_pid {
            let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
                .await
                .with_context(|| format!("reading /proc/{pid}/status"))?;
            total += vm_rss_bytes(&status).ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
        }
        return Ok(Some(total));
    }
    match &args.metrics_url {
        Some(url) => {
            let body = tokio::time::timeout(METRICS_TIMEOUT, http_get(url))
                .await
                .map_err(|_| anyhow!("fetching {url} timed out"))??;
            metric_value(&body, RSS_METRIC)
                .map(|v| Some(v as u64))
                .ok_or_else(|| anyhow!("{url} has no {RSS_METRIC} metric"))
        }
        None => Ok(None),
    }
}

/// `VmRSS:   1234 kB` from `/proc/PID/status`, in bytes.
pub fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The value of an unlabelled sample `name value` in Prometheus text format.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (metric, value) = l.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

/// A minimal HTTP/1.0 GET of an `http://host:port/path` URL (the admin listeners are plain HTTP).
pub(crate) async fn http_get(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--metrics-url must be http://host:port/path"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream
        .take(MAX_METRICS_BYTES)
        .read_to_end(&mut response)
        .await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {url}"))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        bail!("{url} answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tmsgqueue\nVmPeak:\t  9999 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_bytes(status), Some(2048 * 1024));
        assert_eq!(vm_rss_bytes("Name: x\n"), None);
    }

    #[test]
    fn prometheus_samples_are_found_by_exact_name() {
        let body = "# HELP process_resident_memory_bytes RSS\n\
                    process_resident_memory_bytes_total 1\n\
                    process_resident_memory_bytes 4.5e6\n";
        assert_eq!(metric_value(body, RSS_METRIC), Some(4.5e6));
        assert_eq!(metric_value(body, "missing"), None);
    }
}
