//! The scenarios and what they share: time-bounded phases, progress bars, opening many connections with
//! bounded concurrency, and subscriber connections (connect, subscribe, confirm).

pub mod chaos;
pub mod conns;
pub mod e2e;
pub mod fanout;
pub mod http;
pub mod queue;
pub mod resume;
pub mod scaleout;
pub mod scheduled;

use std::future::Future;
use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::SUBPROTOCOL_V1;
use wsmq_core::protocol::client::ServerFrame;

use crate::cli::{Common, Scenario, SubscribeMode};
use crate::client::{ConnectError, Connector, Target, Ws};
use crate::report::Report;

/// How often long sending phases update their progress bar.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// File descriptors kept free below the open-files limit (stdio, the runtime, files), so a 20,000 limit
/// allows 19,000 connections.
const FD_MARGIN: u64 = 1_000;

/// Runs one scenario to its report, or `--repeat` times to the report of every run.
pub async fn run(cli: crate::cli::Cli) -> anyhow::Result<Report> {
    let limit = crate::client::raise_open_files_limit();
    let ctx = Ctx {
        common: cli.common,
        open_files: limit,
    };
    let repeat = ctx.common.repeat;
    if repeat == 1 {
        return run_once(&ctx, cli.scenario).await;
    }
    if !matches!(
        cli.scenario,
        Scenario::E2e(_) | Scenario::Fanout(_) | Scenario::Queue(_)
    ) {
        bail!("--repeat applies to e2e, fanout and queue");
    }
    let mut runs = Vec::with_capacity(repeat as usize);
    for _ in 0..repeat {
        runs.push(run_once(&ctx, cli.scenario.clone()).await?);
    }
    Ok(Report::repeated(&runs))
}

async fn run_once(ctx: &Ctx, scenario: Scenario) -> anyhow::Result<Report> {
    match scenario {
        Scenario::E2e(args) => e2e::run(ctx, args).await,
        Scenario::Fanout(args) => fanout::run(ctx, args).await,
        Scenario::Conns(args) => conns::run(ctx, args).await,
        Scenario::Queue(args) => queue::run(ctx, args).await,
        Scenario::Chaos(args) => chaos::run(ctx, args).await,
        Scenario::Scaleout(args) => scaleout::run(ctx, args).await,
        Scenario::Http(args) => http::run(ctx, args).await,
        Scenario::Resume(args) => resume::run(ctx, args).await,
        Scenario::Scheduled(args) => scheduled::run(ctx, args).await,
    }
}

/// What every scenario gets: the common flags and the open-files limit in force.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Common flags.
    pub common: Common,
    /// The soft open-files limit after raising it (`None`: unlimited).
    pub open_files: Option<u64>,
}

impl Ctx {
    /// Fails early, with advice, when `connections` sockets would not fit under the open-files limit.
    pub fn check_connections(&self, connections: usize) -> anyhow::Result<()> {
        if let Some(limit) = self.open_files {
            let fits = limit.saturating_sub(FD_MARGIN);
            if connections as u64 > fits {
                bail!(
                    "{connections} connections exceed what the open-files limit ({limit}) allows ({fits}); \
                     run fewer per process"
                );
            }
        }
        Ok(())
    }

    /// A progress bar of `len` steps, hidden with `--json` or when stderr is not a terminal.
    pub fn progress(&self, len: u64, what: &'static str) -> ProgressBar {
        if self.common.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>14} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what);
        bar
    }

    /// Collects every task of a sending phase with `done`, calling `progress` every 100 ms, within
    /// `--duration-limit`. When the limit hits first, `stop` asks the tasks to end early and what they report is
    /// still collected: the run is reported as truncated (`true`) rather than failed.
    pub async fn join_within<T: 'static>(
        &self,
        phase: &str,
        tasks: &mut JoinSet<anyhow::Result<T>>,
        stop: &CancellationToken,
        mut progress: impl FnMut(),
        mut done: impl FnMut(T),
    ) -> anyhow::Result<bool> {
        let deadline = tokio::time::sleep(self.common.duration_limit);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(joined) => done(joined??),
                    None => return Ok(false),
                },
                _ = tick.tick() => progress(),
                () = &mut deadline => break,
            }
        }
        tracing::warn!("{phase} hit --duration-limit; reporting what was done");
        stop.cancel();
        while let Some(joined) = tasks.join_next().await {
            done(joined??);
        }
        Ok(true)
    }

    /// Runs `fut` within `--duration-limit`, failing with the phase's name when it takes longer.
    pub async fn phase<T>(&self, name: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
        tokio::time::timeout(self.common.duration_limit, fut)
            .await
            .map_err(|_| {
                anyhow!(
                    "phase {name:?} did not finish within --duration-limit {:?}",
                    self.common.duration_limit
                )
            })
    }
}

/// Opens `n` connections with `open(i)`, at most `--connect-concurrency` at once, in index order of the
/// result. The first failure aborts the rest.
pub async fn open_many<T, F, Fut>(
    ctx: &Ctx,
    n: usize,
    bar: &ProgressBar,
    open: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for i in 0..n {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let fut = open(i);
        tasks.spawn(async move {
            let result = fut.await;
            drop(permit);
            (i, result)
        });
        while let Some(done) = tasks.try_join_next() {
            let (i, result) = done?;
            slots[i] = Some(result.with_context(|| format!("connection {i}"))?);
            bar.inc(1);
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (i, result) = done?;
        slots[i] = Some(result.with_context(|| format!("connection {i}"))?);
        bar.inc(1);
    }
    slots
        .into_iter()
        .map(|slot| slot.ok_or_else(|| anyhow!("a connection task vanished")))
        .collect()
}

/// A subscriber connection that has subscribed to its topic.
pub struct Subscriber {
    /// The socket; messages for the topic may already be arriving.
    pub ws: Ws,
    /// Whether `wsmq.v1` was negotiated (so the subscription was confirmed).
    pub confirmed: bool,
}

/// Connects to the subscriber endpoint, subscribes to `topic` and, in `wsmq.v1`, waits for the confirmation.
/// In [`SubscribeMode::Auto`] a server that does not select `wsmq.v1` is spoken to in compat mode.
pub async fn subscribe(
    connector: Connector,
    target: Target,
    topic: String,
    mode: SubscribeMode,
    source: Option<IpAddr>,
) -> anyhow::Result<Subscriber> {
    let (mut ws, selected) = match mode {
        SubscribeMode::Compat => connector.connect(&target, None, source).await?,
        SubscribeMode::V1 => {
            connector
                .connect(&target, Some(SUBPROTOCOL_V1), source)
                .await?
        }
        SubscribeMode::Auto => {
            match connector
                .connect(&target, Some(SUBPROTOCOL_V1), source)
                .await
            {
                Err(ConnectError::SubprotocolRejected) => {
                    connector.connect(&target, None, source).await?
                }
                other => other?,
            }
        }
    };
    let confirmed = selected.as_deref() == Some(SUBPROTOCOL_V1);
    ws.send(Message::text(format!("sub {topic}"))).await?;
    if confirmed {
        loop {
            let frame = ws
                .next()
                .await
                .ok_or_else(|| anyhow!("subscriber closed before confirming {topic}"))??;
            let Message::Text(text) = frame else {
                continue;
            };
            match ServerFrame::parse(text.as_str()) {
                Some(ServerFrame::Subscribed(t)) if t == topic => break,
                Some(ServerFrame::Error { message, .. }) => {
                    bail!("subscribing to {topic} failed: {message}")
                }
                Some(ServerFrame::SubscriptionRefused { topic, reason }) => {
                    bail!("subscribing to {topic} was refused: {reason}")
                }
                _ => continue,
            }
        }
    }
    Ok(Subscriber { ws, confirmed })
}

/// Waits `settle` when some subscription could not be confirmed (compat mode has no confirmations).
pub async fn settle_if_unconfirmed(subscribers: &[Subscriber], settle: Duration) {
    if subscribers.iter().any(|s| !s.confirmed) {
        tracing::info!(
            ?settle,
            "compat mode: no subscription confirmations, settling"
        );
        tokio::time::sleep(settle).await;
    }
}
