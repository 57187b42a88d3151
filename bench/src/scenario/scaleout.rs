//! `scaleout`: one topic held by many subscriber connections spread over several subscriber instances (separate
//! processes, as an operator runs them once one process is not enough), with the load generator split the same
//! way: one worker process per instance, since one process may hold only ~19,000 sockets here.
//!
//! The coordinator (what the user starts) starts the workers (this same binary, with hidden flags), waits until
//! every worker's connections have subscribed, publishes the messages through one publisher connection and
//! merges what the workers saw: every connection must get every message, in order. Timestamps are readings of
//! the machine's monotonic clock, so latencies span processes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use futures_util::SinkExt as _;
use indicatif::ProgressBar;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};

use super::conns::vm_rss_bytes;
use super::e2e::{receive, topic_name};
use super::{Ctx, open_many, settle_if_unconfirmed, subscribe};
use crate::cli::{NamedPid, ScaleoutArgs};
use crate::client::{Connector, source_ip};
use crate::payload::{Clock, Counts, STAMP_LEN, Stamp, Tracker, encode_publish};
use crate::report::{Latencies, LatencySummary, Report, per_second};

/// The line a worker prints once all its connections have subscribed.
const READY: &str = "ready";
/// How often a worker checks whether all its deliveries are in.
const DRAIN_TICK: Duration = Duration::from_millis(20);

/// Runs `scaleout`: the coordinator, or (with the hidden `--worker`) one of its workers.
pub async fn run(ctx: &Ctx, args: ScaleoutArgs) -> anyhow::Result<Report> {
    ensure!(
        !args.instances.is_empty(),
        "--instances needs at least one URL"
    );
    ensure!(args.per_instance > 0, "--per-instance must be at least 1");
    match args.worker {
        Some(index) => work(ctx, &args, index).await,
        None => coordinate(ctx, &args).await,
    }
}

/// One worker: connects `--per-instance` subscribers to instance `index`, says [`READY`], counts deliveries
/// until all arrived or the coordinator says stop (a line or EOF on stdin), and reports as JSON.
async fn work(ctx: &Ctx, args: &ScaleoutArgs, index: usize) -> anyhow::Result<Report> {
    let url = args
        .instances
        .get(index)
        .ok_or_else(|| anyhow!("worker {index} has no instance URL"))?;
    let run_id = args.run_id.context("a worker needs --run-id")?;
    let clock = Clock::from_origin(args.clock_origin.context("a worker needs --clock-origin")?);
    ctx.check_connections(args.per_instance)?;
    let connector = Connector::new(&ctx.common, true)?;
    let target = connector.target(url, SUBSCRIBE_PATH).await?;

    let connect_start = clock.nanos();
    let subscribers = ctx
        .phase(
            "connect subscribers",
            open_many(ctx, args.per_instance, &ProgressBar::hidden(), |k| {
                subscribe(
                    connector.clone(),
                    target.clone(),
                    topic_name(0),
                    args.subscribe_mode,
                    source_ip(k, args.source_ips, &target),
                )
            }),
        )
        .await??;
    let connect_nanos = clock.nanos() - connect_start;
    let confirmed = subscribers.iter().all(|s| s.confirmed);
    settle_if_unconfirmed(&subscribers, args.settle).await;

    let latency = Latencies::default();
    let unique = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut receivers = JoinSet::new();
    for subscriber in subscribers {
        receivers.spawn(receive(
            subscriber.ws,
            Tracker::new(run_id, &[args.messages]),
            latency.buffer(),
            clock,
            Arc::clone(&unique),
            stop.clone(),
        ));
    }
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("{READY}\n").as_bytes()).await?;
    stdout.flush().await?;

    let expected = args.per_instance as u64 * args.messages;
    let all_in = async {
        while unique.load(Ordering::Relaxed) < expected {
            tokio::time::sleep(DRAIN_TICK).await;
        }
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    tokio::select! {
        () = all_in => {}
        _ = stdin.next_line() => {}
    }
    stop.cancel();

    let mut counts = Counts::default();
    let mut last_receive = 0;
    let mut disconnects = 0u64;
    while let Some(done) = receivers.join_next().await {
        let received = done?;
        counts.add(&received.counts);
        last_receive = last_receive.max(received.last_receive_nanos);
        disconnects += u64::from(received.disconnected);
    }
    let mut report = Report::new("scaleout-worker");
    report.add("instance", url);
    report.add("connections", args.per_instance);
    report.add("confirmed", confirmed);
    report.add("connect_secs", connect_nanos as f64 / 1e9);
    report.add("counts", counts);
    report.add("last_receive_nanos", last_receive);
    report.add("disconnects", disconnects);
    report.add("latency_histogram", latency.recorded());
    Ok(report)
}

/// A started worker: its stdin (to say stop; closed once its report is in, which ends the worker's pending read
/// of it so the process can exit) and its stdout lines.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// The worker's next stdout line; an error when it exited without one.
    async fn line(&mut self) -> anyhow::Result<String> {
        self.lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("a scaleout worker exited early (its log is above)"))
    }
}

/// The coordinator: starts the workers, publishes once they are ready, merges their reports.
async fn coordinate(ctx: &Ctx, args: &ScaleoutArgs) -> anyhow::Result<Report> {
    let run_id: u32 = rand::random();
    let clock = Clock::start();
    let rss_idle = rss(&args.rss).await?;
    let mut workers = Vec::with_capacity(args.instances.len());
    for index in 0..args.instances.len() {
        workers.push(start_worker(ctx, index, run_id, clock)?);
    }
    let subscribe_start = clock.nanos();
    ctx.phase("connect subscribers", async {
        for worker in &mut workers {
            let line = worker.line().await?;
            if line != READY {
                bail!("a scaleout worker said {line:?} instead of {READY:?}");
            }
        }
        anyhow::Ok(())
    })
    .await??;
    let subscribe_nanos = clock.nanos() - subscribe_start;
    let rss_connected = rss(&args.rss).await?;

    let connector = Connector::new(&ctx.common, false)?;
    let target = connector
        .target(&ctx.common.publisher_url, PUBLISH_PATH)
        .await?;
    let (mut publisher, _) = connector.connect(&target, None, None).await?;
    let publish_start = clock.nanos();
    let mut frame = Vec::new();
    for seq in 0..args.messages {
        let stamp = Stamp {
            run: run_id,
            sender: 0,
            seq,
            sent_nanos: clock.nanos(),
        };
        encode_publish(&mut frame, &topic_name(0), &stamp, args.size, None);
        publisher
            .feed(Message::text(String::from_utf8(frame.clone())?))
            .await?;
    }
    publisher.flush().await?;
    let publish_end = clock.nanos();

    let mut reports = Vec::with_capacity(workers.len());
    let drained = tokio::time::timeout(args.drain_timeout, async {
        for worker in &mut workers {
            reports.push(worker.line().await?);
        }
        anyhow::Ok(())
    })
    .await;
    let drained = match drained {
        Ok(result) => {
            result?;
            true
        }
        Err(_) => {
            for worker in &mut workers[reports.len()..] {
                if let Some(stdin) = worker.stdin.as_mut() {
                    stdin.write_all(b"stop\n").await?;
                    stdin.flush().await?;
                }
            }
            let rest = reports.len();
            ctx.phase("collect worker reports", async {
                for worker in &mut workers[rest..] {
                    reports.push(worker.line().await?);
                }
                anyhow::Ok(())
            })
            .await??;
            false
        }
    };
    let _ = publisher.close(None).await;
    for worker in &mut workers {
        drop(worker.stdin.take());
        worker.child.wait().await?;
    }

    let merged = Merged::of(&reports)?;
    let connections = args.per_instance * args.instances.len();
    let expected = connections as u64 * args.messages;
    let mut report = Report::new("scaleout");
    report.add("instances", args.instances.len());
    report.add("connections", connections);
    report.add("subscriptions_confirmed", merged.confirmed);
    report.add("subscribe_secs", subscribe_nanos as f64 / 1e9);
    report.add("message_bytes", args.size.max(STAMP_LEN));
    report.add("published", args.messages);
    report.add(
        "publish_rate_per_s",
        per_second(args.messages, publish_end - publish_start),
    );
    report.add("expected", expected);
    report.add("delivered", merged.counts.unique);
    report.add("lost", expected.saturating_sub(merged.counts.unique));
    report.add("duplicates", merged.counts.duplicates);
    report.add("reordered", merged.counts.reordered);
    report.add("foreign", merged.counts.foreign);
    report.add("drained", drained);
    report.add("subscriber_disconnects", merged.disconnects);
    report.add(
        "delivered_per_s",
        per_second(
            merged.counts.unique,
            merged.last_receive.saturating_sub(publish_start),
        ),
    );
    report.add("latency", merged.latency);
    if !args.rss.is_empty() {
        report.add("rss_idle_bytes", &rss_idle);
        report.add("rss_connected_bytes", &rss_connected);
        let grown: i64 = rss_connected
            .values()
            .zip(rss_idle.values())
            .map(|(&after, &before)| after as i64 - before as i64)
            .sum();
        // Signed: a process may give memory back, which the reader should see.
        report.add(
            "rss_bytes_per_connection",
            grown as f64 / connections as f64,
        );
    }
    Ok(report)
}

/// Starts worker `index`: this binary with the user's flags plus the hidden worker flags.
fn start_worker(ctx: &Ctx, index: usize, run_id: u32, clock: Clock) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("finding wsmq-bench's own executable")?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .arg(format!("--worker={index}"))
        .arg(format!("--run-id={run_id}"))
        .arg(format!("--clock-origin={}", clock.origin()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if !ctx.common.json {
        command.arg("--json");
    }
    let mut child = command.spawn().context("starting a scaleout worker")?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("a scaleout worker has no stdin or stdout pipe");
    };
    Ok(Worker {
        child,
        stdin: Some(stdin),
        lines: BufReader::new(stdout).lines(),
    })
}

/// The workers' reports, added up.
struct Merged {
    counts: Counts,
    confirmed: bool,
    disconnects: u64,
    last_receive: u64,
    latency: LatencySummary,
}

impl Merged {
    fn of(reports: &[String]) -> anyhow::Result<Self> {
        let latencies = Latencies::default();
        let mut merged = Self {
            counts: Counts::default(),
            confirmed: true,
            disconnects: 0,
            last_receive: 0,
            latency: LatencySummary::default(),
        };
        for line in reports {
            let report: Value = serde_json::from_str(line)
                .with_context(|| format!("a scaleout worker's report is not JSON: {line}"))?;
            let field = |name: &str| {
                report
                    .get(name)
                    .ok_or_else(|| anyhow!("a scaleout worker's report lacks {name}"))
            };
            let counts: Counts = serde_json::from_value(field("counts")?.clone())?;
            merged.counts.add(&counts);
            merged.confirmed &= field("confirmed")?.as_bool().unwrap_or(false);
            merged.disconnects += field("disconnects")?.as_u64().unwrap_or(0);
            merged.last_receive = merged
                .last_receive
                .max(field("last_receive_nanos")?.as_u64().unwrap_or(0));
            let recorded: Vec<(u64, u64)> =
                serde_json::from_value(field("latency_histogram")?.clone())?;
            latencies.record_counts(&recorded);
        }
        merged.latency = latencies.summary();
        Ok(merged)
    }
}

/// Resident memory of each watched process, by name.
async fn rss(pids: &[NamedPid]) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut rss = BTreeMap::new();
    for NamedPid { name, pid } in pids {
        let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
            .await
            .with_context(|| format!("reading /proc/{pid}/status ({name})"))?;
        let bytes = vm_rss_bytes(&status).ok_or_else(|| anyhow!("no VmRSS for {name} ({pid})"))?;
        rss.insert(name.clone(), bytes);
    }
    Ok(rss)
}
