//! `chaos`: a fault run, Jepsen-style. msgqueue, publisher and subscriber run as separate processes (the release
//! binaries next to `wsmq-bench`) on free loopback ports with a fresh data directory. Reliable clients publish
//! and consume continuously while a seeded schedule SIGKILLs or SIGTERMs one service at a time at random moments
//! and starts it again. Afterwards every acked message is accounted for.
//!
//! **Clients.** Each publishing client speaks `wsmq.v1`, gives every message an `Id` (its sequence number) and
//! keeps it until it is acked; when its connection drops it reconnects and sends every unacked message again
//! (an `{"error":..}` reply also makes it send the message again). An acked message is one the system promised
//! to keep. One checking subscriber (`wsmq.v1`) subscribes to the topic and reconnects whenever it is cut off.
//! Every client (and the fence below) is a `wsmq_core::link::Link` with a short jittered backoff, like every
//! other reconnecting client in wsmq; failed dials while a service is down are logged at debug.
//!
//! **What must arrive.** A subscriber's client misses, by design, what is routed while it is not connected (there
//! is no history), and a subscriber killed with messages in a client's queue loses them for that client (msgqueue
//! already counts them as handed over). So "acked but never delivered" alone would blame the design, not a bug.
//! The checker instead counts an acked message as *covered* (it must arrive) when one checker connection was
//! subscribed before the message was first sent and later received a message first sent after that ack. The
//! reasoning: msgqueue dispatches in the order it accepted messages (redeliveries before newer ones) to the one
//! subscriber process, which routes and writes in that order; the later message was accepted after the ack, so
//! the covered message was routed before it, while that same connection was subscribed, and was written to it
//! first. A covered message that never arrived is **acked but lost** and must be 0. Acked messages that were
//! not covered and did not arrive are reported as **missed while away**. After the fault phase every service is
//! up, the publishers wait for their last acks, and one fence message is published and awaited, so the
//! messages acked last are covered too.
//!
//! Also reported: duplicates (client resends after a publisher restart and redeliveries are expected),
//! reorders (a first arrival below the highest sequence already seen from that client on the same checker
//! connection; resends after a publisher restart can cause them), and the faults per service and signal. The
//! run is bounded by `--duration`, `--max-kills` and `--settle`; every process listens on 127.0.0.1 only.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::dial::DialError;
use wsmq_core::link::{self, ConnectError, Flow, Link, Protocol, Start};
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::envelope::Envelope;
use wsmq_core::protocol::{PUBLISH_PATH, SUBPROTOCOL_V1, SUBSCRIBE_PATH};

use super::Ctx;
use super::conns::http_get;
use crate::cli::{ChaosArgs, ChaosService, DurationRange};
use crate::client::{Connector, Target, Ws};
use crate::payload::{Clock, STAMP_LEN, Stamp, encode_publish};
use crate::report::Report;

/// The topic every message is published to.
const TOPIC: &str = "chaos";
/// The user the publisher and subscriber present to msgqueue.
const LINK_USER: &str = "chaos-link";
/// Bound on a (re)started service becoming ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a SIGTERMed service draining and exiting before it is SIGKILLed.
const TERM_GRACE: Duration = Duration::from_secs(20);
/// How the clients pace their redials: the services restart within a second or so, so a short jittered delay
/// (about 50 ms on average) notices them soon without spinning.
const RECONNECT_BACKOFF: BackoffArgs = BackoffArgs {
    initial: Duration::from_millis(50),
    max: Duration::from_millis(100),
};
/// How often publishing clients send what is due.
const SEND_TICK: Duration = Duration::from_millis(2);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(20);
/// Lost ids listed in the report, at most.
const LOST_SAMPLE: usize = 20;

impl ChaosService {
    const ALL: [ChaosService; 3] = [
        ChaosService::Msgqueue,
        ChaosService::Publisher,
        ChaosService::Subscriber,
    ];

    fn name(self) -> &'static str {
        match self {
            ChaosService::Msgqueue => "msgqueue",
            ChaosService::Publisher => "publisher",
            ChaosService::Subscriber => "subscriber",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Runs `chaos`.
pub async fn run(ctx: &Ctx, args: ChaosArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.publishers > 0, "--publishers must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.sigterm_share),
        "--sigterm-share must be within 0..1"
    );
    let seed = args.seed.unwrap_or_else(rand::random);
    let (work, temp) = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new().prefix("wsmq-chaos-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let mut fleet = Fleet::new(ctx, &args, &work)?;
    fleet.start_all().await?;

    let mut common = ctx.common.clone();
    common.data_dir = fleet.data_dir();
    common.ca = None;
    let connector = Connector::new(&common, false)?;
    let pub_target = connector
        .target(&fleet.url(ChaosService::Publisher), PUBLISH_PATH)
        .await?;
    let sub_target = connector
        .target(&fleet.url(ChaosService::Subscriber), SUBSCRIBE_PATH)
        .await?;
    let clock = Clock::start();
    let run_id: u32 = rand::random();

    let fence_sender = u32::try_from(args.publishers)?;
    let stop_checking = CancellationToken::new();
    let checker = Arc::new(Checker::new(fence_sender));
    let checking = tokio::spawn(check(
        sub_target,
        clock,
        run_id,
        Arc::clone(&checker),
        stop_checking.clone(),
    ));
    // Publishing starts once the checker listens, so the first messages can be covered.
    ctx.phase("checker subscribes", async {
        while checker.connections.lock().is_empty() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await?;

    let stop_new = CancellationToken::new();
    let give_up = CancellationToken::new();
    let mut publishers = tokio::task::JoinSet::new();
    for j in 0..args.publishers {
        let client = PublishingClient {
            sender: u32::try_from(j)?,
            run: run_id,
            size: args.size,
            rate: args.rate / args.publishers as f64,
            window: args.window.max(1),
            clock,
            target: pub_target.clone(),
        };
        publishers.spawn(client.run(stop_new.clone(), give_up.clone()));
    }

    let faults = fleet.inject_faults(&args, seed, args.duration).await;
    stop_new.cancel();
    let settle = async {
        let mut outcomes = Vec::new();
        while let Some(joined) = publishers.join_next().await {
            outcomes.push(joined?);
        }
        outcomes.sort_by_key(|o| o.sender);
        anyhow::Ok(outcomes)
    };
    let settled = tokio::time::timeout(args.settle, settle).await;
    let outcomes = match settled {
        Ok(outcomes) => outcomes?,
        Err(_) => {
            tracing::warn!("publishers did not get every ack within --settle");
            give_up.cancel();
            let mut outcomes = Vec::new();
            while let Some(joined) = publishers.join_next().await {
                outcomes.push(joined?);
            }
            outcomes.sort_by_key(|o| o.sender);
            outcomes
        }
    };
    // The fence: sent after every ack above, so its arrival covers every message the checker was there for.
    let fence = publish_fence(&pub_target, run_id, fence_sender, clock, &args).await;
    let fence_seen = match &fence {
        Ok(()) => tokio::time::timeout(args.settle, async {
            while !checker.fence_seen.load(Ordering::Relaxed) {
                tokio::time::sleep(POLL).await;
            }
        })
        .await
        .is_ok(),
        Err(err) => {
            tracing::warn!(%err, "the fence message was not acked");
            false
        }
    };
    stop_checking.cancel();
    checking.await?;
    let faults = faults?;
    fleet.stop_all().await;

    let accounting = Accounting::of(&outcomes, &checker.connections.lock());
    let keep = accounting.acked_but_lost > 0;
    let mut report = Report::new("chaos");
    report.add("seed", seed);
    report.add("duration_secs", args.duration.as_secs_f64());
    report.add(
        "kill_every",
        format!("{:?}..{:?}", args.kill_every.min, args.kill_every.max),
    );
    report.add("publishers", args.publishers);
    report.add("rate_per_s", args.rate);
    report.add("kills", faults.by_service());
    report.add("kills_total", faults.total());
    report.add("published", accounting.published);
    report.add("acked", accounting.acked);
    report.add("unacked", accounting.unacked);
    report.add("refused", outcomes.iter().map(|o| o.refused).sum::<u64>());
    report.add("resent", outcomes.iter().map(|o| o.resent).sum::<u64>());
    report.add(
        "publisher_reconnects",
        outcomes.iter().map(|o| o.reconnects).sum::<u64>(),
    );
    report.add("checker_connections", checker.connections.lock().len());
    report.add("delivered", accounting.delivered);
    report.add("delivered_unacked", accounting.delivered_unacked);
    report.add("covered", accounting.covered);
    report.add("acked_but_lost", accounting.acked_but_lost);
    report.add("missed_while_away", accounting.missed_while_away);
    report.add("duplicates", accounting.duplicates);
    report.add("reordered", accounting.reordered);
    report.add("fence_delivered", fence_seen);
    report.add("lost_sample", &accounting.lost_sample);
    match (temp, keep) {
        (Some(temp), true) => report.add("work_dir_kept", temp.keep().display().to_string()),
        (Some(_), false) => {}
        (None, _) => report.add("work_dir", work.display().to_string()),
    }
    Ok(report)
}

/// The three service processes, their ports and how to (re)start them.
struct Fleet {
    bins: [PathBuf; 3],
    ports: [u16; 3],
    admin_ports: [u16; 3],
    work: PathBuf,
    users: String,
    link_password: String,
    msgqueue_args: Vec<String>,
    children: [Option<Child>; 3],
}

impl Fleet {
    fn new(ctx: &Ctx, args: &ChaosArgs, work: &Path) -> anyhow::Result<Self> {
        let bin_dir = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .ok_or_else(|| anyhow!("wsmq-bench has no parent directory"))?
                .to_path_buf(),
        };
        let bins = ChaosService::ALL.map(|s| bin_dir.join(s.name()));
        for bin in &bins {
            if !bin.is_file() {
                bail!(
                    "{} not found: build the services (cargo build --release --bins) or pass --bin-dir",
                    bin.display()
                );
            }
        }
        let ports = free_ports::<6>()?;
        std::fs::create_dir_all(work.join("logs"))?;
        Ok(Self {
            bins,
            ports: [ports[0], ports[1], ports[2]],
            admin_ports: [ports[3], ports[4], ports[5]],
            work: work.to_path_buf(),
            users: format!("{}:{}", ctx.common.user, ctx.common.password.expose()),
            link_password: format!("{:032x}", rand::random::<u128>()),
            msgqueue_args: args.msgqueue_arg.clone(),
            children: [None, None, None],
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.work.join("data")
    }

    fn url(&self, service: ChaosService) -> String {
        format!("wss://localhost:{}", self.ports[service.index()])
    }

    /// msgqueue first (it creates the development CA the others trust), then the edges.
    async fn start_all(&mut self) -> anyhow::Result<()> {
        for service in ChaosService::ALL {
            self.start(service).await?;
        }
        Ok(())
    }

    /// Starts `service` and waits until its `/readyz` answers 200 (for the edges: their link to msgqueue is up).
    async fn start(&mut self, service: ChaosService) -> anyhow::Result<()> {
        let i = service.index();
        let log_path = self
            .work
            .join("logs")
            .join(format!("{}.log", service.name()));
        let log = File::options().create(true).append(true).open(&log_path)?;
        let mut command = Command::new(&self.bins[i]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WSMQ_") {
                command.env_remove(key);
            }
        }
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.ports[i]))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_ports[i]))
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // Passwords go through the environment: command lines are visible to every local user.
        match service {
            ChaosService::Msgqueue => {
                command
                    .env(
                        "WSMQ_USERS",
                        format!("{},{LINK_USER}:{}", self.users, self.link_password),
                    )
                    .args(&self.msgqueue_args);
            }
            ChaosService::Publisher | ChaosService::Subscriber => {
                command
                    .env("WSMQ_USERS", &self.users)
                    .env("WSMQ_QUEUE_PASSWORD", &self.link_password)
                    .arg("--queue-url")
                    .arg(self.url(ChaosService::Msgqueue))
                    .arg("--queue-user")
                    .arg(LINK_USER);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bins[i].display()))?;
        self.children[i] = Some(child);
        let ready = format!("http://127.0.0.1:{}/readyz", self.admin_ports[i]);
        let waited = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                if let Some(child) = self.children[i].as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    bail!("{} exited with {status}", service.name());
                }
                if http_get(&ready).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        match waited {
            Ok(result) => result.with_context(|| format!("see {}", log_path.display())),
            Err(_) => bail!(
                "{} not ready within {READY_TIMEOUT:?}; see {}",
                service.name(),
                log_path.display()
            ),
        }
    }

    /// Sends `signal` to `service` and waits for it to exit (a SIGTERM that does not drain in time is followed
    /// by SIGKILL).
    async fn kill(&mut self, service: ChaosService, signal: Fault) -> anyhow::Result<()> {
        let Some(mut child) = self.children[service.index()].take() else {
            return Ok(());
        };
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| anyhow!("{} has already exited", service.name()))?;
        let sig = match signal {
            Fault::Kill => rustix::process::Signal::KILL,
            Fault::Term => rustix::process::Signal::TERM,
        };
        rustix::process::kill_process(pid, sig)
            .with_context(|| format!("signalling {}", service.name()))?;
        if tokio::time::timeout(TERM_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = service.name(),
                "did not exit within {TERM_GRACE:?} of SIGTERM; killing it"
            );
            child.kill().await?;
        }
        Ok(())
    }

    /// Until `duration` has passed (or `--max-kills`): wait a random `--kill-every`, signal the next service of
    /// a shuffled round, wait a random `--down-for`, start it again and wait until it is ready.
    async fn inject_faults(
        &mut self,
        args: &ChaosArgs,
        seed: u64,
        duration: Duration,
    ) -> anyhow::Result<Faults> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut faults = Faults::default();
        let deadline = tokio::time::Instant::now() + duration;
        let mut round: Vec<ChaosService> = Vec::new();
        while faults.total() < u64::from(args.max_kills) && !args.kill.is_empty() {
            let wait = random_in(&mut rng, args.kill_every);
            if tokio::time::Instant::now() + wait >= deadline {
                break;
            }
            tokio::time::sleep(wait).await;
            if round.is_empty() {
                round = args.kill.clone();
                round.dedup();
                round.shuffle(&mut rng);
            }
            let Some(service) = round.pop() else { break };
            let signal = if rng.random_bool(args.sigterm_share) {
                Fault::Term
            } else {
                Fault::Kill
            };
            tracing::info!(service = service.name(), ?signal, "fault");
            self.kill(service, signal).await?;
            faults.record(service, signal);
            tokio::time::sleep(random_in(&mut rng, args.down_for)).await;
            self.start(service).await?;
        }
        tokio::time::sleep_until(deadline).await;
        Ok(faults)
    }

    /// SIGTERM to every service (edges first), each waited for.
    async fn stop_all(&mut self) {
        for service in ChaosService::ALL.into_iter().rev() {
            if let Err(err) = self.kill(service, Fault::Term).await {
                tracing::warn!(%err, service = service.name(), "stopping");
            }
        }
    }
}

/// Loopback ports that were free a moment ago (bound to port 0, then released for the services).
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn random_in(rng: &mut StdRng, range: DurationRange) -> Duration {
    if range.max <= range.min {
        return range.min;
    }
    let min = u64::try_from(range.min.as_millis()).unwrap_or(u64::MAX);
    let max = u64::try_from(range.max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(min..=max))
}

/// One injected fault's signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL: no chance to drain or fsync.
    Kill,
    /// SIGTERM: the graceful path.
    Term,
}

/// Faults per service and signal.
#[derive(Debug, Default)]
struct Faults {
    counts: [[u64; 2]; 3],
}

/// One service's faults, as reported.
#[derive(Debug, Serialize)]
struct ServiceFaults {
    sigkill: u64,
    sigterm: u64,
}

impl Faults {
    fn record(&mut self, service: ChaosService, fault: Fault) {
        self.counts[service.index()][usize::from(fault == Fault::Term)] += 1;
    }

    fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    fn by_service(&self) -> HashMap<&'static str, ServiceFaults> {
        ChaosService::ALL
            .iter()
            .map(|s| {
                let [sigkill, sigterm] = self.counts[s.index()];
                (s.name(), ServiceFaults { sigkill, sigterm })
            })
            .collect()
    }
}

/// One reliable publishing client: its identity, pace and where it connects.
struct PublishingClient {
    sender: u32,
    run: u32,
    size: usize,
    rate: f64,
    window: usize,
    clock: Clock,
    target: Target,
}

/// What one publishing client did, per sequence number.
#[derive(Debug, Default)]
struct PublishOutcome {
    sender: u32,
    /// [`Clock`] time each message was first sent.
    sent_at: Vec<u64>,
    /// When each message was acked, if it was.
    acked_at: Vec<Option<u64>>,
    /// `{"error":..}` replies (the message was sent again).
    refused: u64,
    /// Messages sent again after a reconnect or an error.
    resent: u64,
    /// Connections after the first.
    reconnects: u64,
}

impl PublishOutcome {
    fn unacked(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked_at
            .iter()
            .enumerate()
            .filter(|(_, acked)| acked.is_none())
            .map(|(seq, _)| seq as u64)
    }
}

impl PublishingClient {
    /// Publishes at its rate until `stop_new`, then until everything it sent is acked (or `give_up`),
    /// reconnecting and resending whenever the publisher goes away.
    async fn run(self, stop_new: CancellationToken, give_up: CancellationToken) -> PublishOutcome {
        let link = chaos_link(&self.target);
        let mut publishing = Publishing {
            out: PublishOutcome {
                sender: self.sender,
                ..PublishOutcome::default()
            },
            start: self.clock.nanos(),
            client: self,
            stop_new,
            connected_once: false,
        };
        link.run(&mut publishing, Start::Dial, &give_up).await;
        publishing.out
    }

    /// One connection: sends `retry` first, then new messages as they fall due, while counting acks.
    async fn connection(
        &self,
        ws: Ws,
        mut retry: VecDeque<u64>,
        start: u64,
        out: &mut PublishOutcome,
        stop_new: &CancellationToken,
        give_up: &CancellationToken,
    ) -> anyhow::Result<()> {
        let (mut sink, mut stream) = ws.split();
        let mut outstanding = out.unacked().count();
        let mut tick = tokio::time::interval(SEND_TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut frame = Vec::with_capacity(self.size + 64);
        loop {
            if stop_new.is_cancelled() && outstanding == 0 {
                let _ = sink.close().await;
                return Ok(());
            }
            tokio::select! {
                biased;
                () = give_up.cancelled() => return Ok(()),
                received = stream.next() => {
                    let text = match received {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | None => bail!("the publisher closed the connection"),
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Err(err.into()),
                    };
                    match ServerFrame::parse(text.as_str()) {
                        Some(ServerFrame::Ack { id }) => {
                            let seq: usize = id.parse()?;
                            if let Some(acked) = out.acked_at.get_mut(seq)
                                && acked.is_none()
                            {
                                *acked = Some(self.clock.nanos());
                                outstanding = outstanding.saturating_sub(1);
                            }
                        }
                        Some(ServerFrame::Error { id: Some(id), .. }) => {
                            out.refused += 1;
                            let seq: u64 = id.parse()?;
                            retry.push_back(seq);
                            out.resent += 1;
                        }
                        other => bail!("unexpected frame from the publisher: {other:?}"),
                    }
                }
                _ = tick.tick() => {
                    while let Some(seq) = retry.pop_front() {
                        self.encode(&mut frame, seq, out.sent_at[seq as usize]);
                        sink.feed(Message::text(String::from_utf8(std::mem::take(&mut frame))?)).await?;
                    }
                    let elapsed = self.clock.nanos().saturating_sub(start);
                    let due = (elapsed as f64 / 1e9 * self.rate) as usize;
                    while !stop_new.is_cancelled() && out.sent_at.len() < due && outstanding < self.window {
                        let seq = out.sent_at.len() as u64;
                        let now = self.clock.nanos();
                        out.sent_at.push(now);
                        out.acked_at.push(None);
                        outstanding += 1;
                        self.encode(&mut frame, seq, now);
                        sink.feed(Message::text(String::from_utf8(std::mem::take(&mut frame))?)).await?;
                    }
                    sink.flush().await?;
                }
            }
        }
    }

    /// `{"Topic":"chaos","Content":"<stamp>","Id":seq}`; a resend carries the original send time.
    fn encode(&self, out: &mut Vec<u8>, seq: u64, sent_nanos: u64) {
        encode_message(out, self.run, self.sender, seq, sent_nanos, self.size);
    }
}

fn encode_message(
    out: &mut Vec<u8>,
    run: u32,
    sender: u32,
    seq: u64,
    sent_nanos: u64,
    size: usize,
) {
    let stamp = Stamp {
        run,
        sender,
        seq,
        sent_nanos,
    };
    encode_publish(out, TOPIC, &stamp, size.max(STAMP_LEN), Some(seq));
}

/// One publishing client on its link, with what it did so far.
struct Publishing {
    client: PublishingClient,
    out: PublishOutcome,
    /// [`Clock`] time the client started: messages fall due at its rate from here.
    start: u64,
    stop_new: CancellationToken,
    connected_once: bool,
}

impl Protocol for Publishing {
    type Error = anyhow::Error;

    fn path(&self) -> &str {
        self.client.target.path()
    }

    /// Sends every unacked message again, then new ones as they fall due.
    async fn serve(&mut self, ws: Ws, give_up: &CancellationToken) -> anyhow::Result<()> {
        let retry: VecDeque<u64> = self.out.unacked().collect();
        self.out.resent += retry.len() as u64;
        self.client
            .connection(
                ws,
                retry,
                self.start,
                &mut self.out,
                &self.stop_new,
                give_up,
            )
            .await
    }

    fn is_done(&self) -> bool {
        self.stop_new.is_cancelled() && self.out.unacked().next().is_none()
    }

    async fn connected(&mut self, _url: &str) -> Flow {
        tracing::debug!(sender = self.client.sender, "publishing client connected");
        if self.connected_once {
            self.out.reconnects += 1;
        }
        self.connected_once = true;
        Flow::Continue
    }

    async fn unreachable(&mut self, err: &ConnectError, attempts: u32) -> Flow {
        log_unreachable(err, attempts);
        Flow::Continue
    }

    async fn lost(&mut self, err: anyhow::Error) -> Flow {
        tracing::debug!(%err, "publisher connection ended");
        Flow::Continue
    }
}

/// The link every chaos client uses: it offers `wsmq.v1` and counts a server that does not select it as a
/// failed dial.
fn chaos_link(target: &Target) -> Link {
    let dialer = target.dialer().clone().with_subprotocol(SUBPROTOCOL_V1);
    Link::new(dialer, RECONNECT_BACKOFF).require_subprotocol(SUBPROTOCOL_V1)
}

/// Logs a failed dial at debug: the run kills services on purpose, so they are often unreachable. A server
/// that does not speak `wsmq.v1` is a mistake in the setup and is logged as core's links do (at warn, thinned
/// out).
fn log_unreachable(err: &ConnectError, attempts: u32) {
    match err {
        ConnectError::NotAccepted { .. }
        | ConnectError::Dial(DialError::SubprotocolRejected { .. }) => {
            link::log_unreachable(err, attempts);
        }
        ConnectError::Dial(_) => tracing::debug!(%err, attempts, "cannot connect"),
    }
}

/// The next text frame; `None` once `stop` is cancelled, an error when the connection ends.
async fn next_text(ws: &mut Ws, stop: &CancellationToken) -> anyhow::Result<Option<Utf8Bytes>> {
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => return Ok(None),
            frame = ws.next() => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(Some(text)),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("the connection closed"),
        }
    }
}

/// Publishes the fence (sequence 0 of an extra sender) and waits for its ack, reconnecting within --settle.
async fn publish_fence(
    target: &Target,
    run: u32,
    sender: u32,
    clock: Clock,
    args: &ChaosArgs,
) -> anyhow::Result<()> {
    let mut frame = Vec::new();
    encode_message(&mut frame, run, sender, 0, clock.nanos(), args.size);
    let mut fence = Fence {
        path: target.path(),
        message: String::from_utf8(frame)?,
        acked: false,
    };
    let link = chaos_link(target);
    let never = CancellationToken::new();
    // Timing out drops the link, and with it its connection.
    let _ = tokio::time::timeout(args.settle, link.run(&mut fence, Start::Dial, &never)).await;
    anyhow::ensure!(fence.acked, "no ack for the fence within --settle");
    Ok(())
}

/// The fence on its link: sent on every connection until it is acked.
struct Fence {
    path: &'static str,
    /// The encoded publish frame.
    message: String,
    acked: bool,
}

impl Protocol for Fence {
    type Error = anyhow::Error;

    fn path(&self) -> &str {
        self.path
    }

    async fn serve(&mut self, mut ws: Ws, shutdown: &CancellationToken) -> anyhow::Result<()> {
        ws.send(Message::text(self.message.clone())).await?;
        while let Some(text) = next_text(&mut ws, shutdown).await? {
            if let Some(ServerFrame::Ack { .. }) = ServerFrame::parse(text.as_str()) {
                self.acked = true;
                let _ = ws.close(None).await;
                break;
            }
        }
        Ok(())
    }

    async fn connected(&mut self, _url: &str) -> Flow {
        tracing::debug!("publishing the fence");
        Flow::Continue
    }

    async fn unreachable(&mut self, err: &ConnectError, attempts: u32) -> Flow {
        log_unreachable(err, attempts);
        Flow::Continue
    }

    async fn lost(&mut self, err: anyhow::Error) -> Flow {
        tracing::debug!(%err, "fence connection ended before its ack");
        Flow::Continue
    }
}

/// What the checking subscriber saw, shared with the scenario.
#[derive(Debug)]
struct Checker {
    /// One entry per subscribed connection, in order.
    connections: Mutex<Vec<CheckerConnection>>,
    /// The sender index of the fence message.
    fence_sender: u32,
    /// Whether the fence arrived.
    fence_seen: AtomicBool,
}

impl Checker {
    fn new(fence_sender: u32) -> Self {
        Self {
            connections: Mutex::new(Vec::new()),
            fence_sender,
            fence_seen: AtomicBool::new(false),
        }
    }

    /// Records a newly subscribed connection and returns its index.
    fn subscribed(&self, at: u64) -> usize {
        let mut connections = self.connections.lock();
        connections.push(CheckerConnection {
            subscribed_at: at,
            received: Vec::new(),
        });
        connections.len() - 1
    }

    /// Records a message received on connection `index` (only those of this run).
    fn receive(&self, index: usize, run: u32, text: &str) {
        let Some(stamp) = Envelope::parse_json(text.as_bytes())
            .ok()
            .and_then(|env| Stamp::decode(env.content.as_bytes()).ok())
            .filter(|stamp| stamp.run == run)
        else {
            return;
        };
        self.connections.lock()[index]
            .received
            .push((stamp.sender, stamp.seq, stamp.sent_nanos));
        if stamp.sender == self.fence_sender {
            self.fence_seen.store(true, Ordering::Relaxed);
        }
    }
}

/// One checker connection: when it was subscribed and what it received.
#[derive(Debug)]
struct CheckerConnection {
    subscribed_at: u64,
    /// `(sender, seq, first-sent time)` of every message, in arrival order.
    received: Vec<(u32, u64, u64)>,
}

/// Subscribes to the topic and records every message, reconnecting until `stop`.
async fn check(
    target: Target,
    clock: Clock,
    run: u32,
    checker: Arc<Checker>,
    stop: CancellationToken,
) {
    let mut checking = Checking {
        path: target.path(),
        clock,
        run,
        checker,
    };
    chaos_link(&target)
        .run(&mut checking, Start::Dial, &stop)
        .await;
}

/// The checking subscriber on its link: every connection subscribes and records what it receives.
struct Checking {
    path: &'static str,
    clock: Clock,
    run: u32,
    checker: Arc<Checker>,
}

impl Protocol for Checking {
    type Error = anyhow::Error;

    fn path(&self) -> &str {
        self.path
    }

    async fn serve(&mut self, mut ws: Ws, stop: &CancellationToken) -> anyhow::Result<()> {
        ws.send(Message::text(format!("sub {TOPIC}"))).await?;
        let subscribed = ServerFrame::Subscribed(TOPIC.into());
        loop {
            let Some(text) = next_text(&mut ws, stop).await? else {
                return Ok(());
            };
            if ServerFrame::parse(text.as_str()).as_ref() == Some(&subscribed) {
                break;
            }
        }
        let index = self.checker.subscribed(self.clock.nanos());
        while let Some(text) = next_text(&mut ws, stop).await? {
            self.checker.receive(index, self.run, text.as_str());
        }
        Ok(())
    }

    async fn connected(&mut self, _url: &str) -> Flow {
        tracing::debug!("checker connected");
        Flow::Continue
    }

    async fn unreachable(&mut self, err: &ConnectError, attempts: u32) -> Flow {
        log_unreachable(err, attempts);
        Flow::Continue
    }

    async fn lost(&mut self, err: anyhow::Error) -> Flow {
        tracing::debug!(%err, "checker connection ended, resubscribing");
        Flow::Continue
    }
}

/// The end-of-run figures (see the module documentation for what "covered" means).
#[derive(Debug, Default, PartialEq, Eq)]
struct Accounting {
    published: u64,
    acked: u64,
    unacked: u64,
    /// Acked messages that arrived at least once.
    delivered: u64,
    /// Messages never acked that arrived anyway (stored, but the ack was lost with a killed service).
    delivered_unacked: u64,
    covered: u64,
    acked_but_lost: u64,
    missed_while_away: u64,
    duplicates: u64,
    reordered: u64,
    /// `sender/seq` of the first lost messages.
    lost_sample: Vec<String>,
}

impl Accounting {
    fn of(outcomes: &[PublishOutcome], connections: &[CheckerConnection]) -> Self {
        let mut acc = Accounting::default();
        let mut deliveries: Vec<Vec<u32>> =
            outcomes.iter().map(|o| vec![0; o.sent_at.len()]).collect();
        // The latest first-send time received on any connection subscribed up to each one (connections are
        // in subscription order).
        let mut subscribed_at = Vec::with_capacity(connections.len());
        let mut latest_received = Vec::with_capacity(connections.len());
        let mut latest = 0u64;
        for connection in connections {
            let mut highest: HashMap<u32, u64> = HashMap::new();
            for &(sender, seq, sent) in &connection.received {
                latest = latest.max(sent);
                let Some(count) = deliveries
                    .get_mut(sender as usize)
                    .and_then(|d| d.get_mut(usize::try_from(seq).unwrap_or(usize::MAX)))
                else {
                    continue;
                };
                *count += 1;
                if *count > 1 {
                    acc.duplicates += 1;
                    continue;
                }
                let high = highest.entry(sender).or_insert(seq);
                if seq < *high {
                    acc.reordered += 1;
                } else {
                    *high = seq;
                }
            }
            subscribed_at.push(connection.subscribed_at);
            latest_received.push(latest);
        }
        for (outcome, delivered) in outcomes.iter().zip(&deliveries) {
            for (seq, (&sent, acked)) in outcome.sent_at.iter().zip(&outcome.acked_at).enumerate() {
                acc.published += 1;
                let arrived = delivered[seq] > 0;
                let Some(acked) = *acked else {
                    acc.unacked += 1;
                    acc.delivered_unacked += u64::from(arrived);
                    continue;
                };
                acc.acked += 1;
                // Connections subscribed before the message was first sent: did one of them receive a message
                // first sent after its ack?
                let before = subscribed_at.partition_point(|&at| at <= sent);
                let covered = before > 0 && latest_received[before - 1] > acked;
                acc.covered += u64::from(covered);
                match (arrived, covered) {
                    (true, _) => acc.delivered += 1,
                    (false, true) => {
                        acc.acked_but_lost += 1;
                        if acc.lost_sample.len() < LOST_SAMPLE {
                            acc.lost_sample.push(format!("{}/{seq}", outcome.sender));
                        }
                    }
                    (false, false) => acc.missed_while_away += 1,
                }
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(sender: u32, sent_at: Vec<u64>, acked_at: Vec<Option<u64>>) -> PublishOutcome {
        PublishOutcome {
            sender,
            sent_at,
            acked_at,
            ..PublishOutcome::default()
        }
    }

    #[test]
    fn a_covered_acked_message_that_never_arrived_is_lost_and_an_uncovered_one_is_missed() {
        // Sender 0 sends seq 0..4 at t = 10, 20, 30, 40, acked 5 later each.
        let outcomes = [outcome(
            0,
            vec![10, 20, 30, 40],
            vec![Some(15), Some(25), Some(35), None],
        )];
        let connections = [
            // Subscribed at 5; got seq 0 and seq 2 (first sent at 30 > seq 1's ack at 25): seq 1 is covered.
            CheckerConnection {
                subscribed_at: 5,
                received: vec![(0, 0, 10), (0, 2, 30)],
            },
            // Subscribed at 33, after seq 2 was sent: it cannot cover seq 2 even if it gets later messages.
            CheckerConnection {
                subscribed_at: 33,
                received: vec![(0, 0, 10), (1, 0, 100)],
            },
        ];
        let acc = Accounting::of(&outcomes, &connections);
        assert_eq!(
            acc,
            Accounting {
                published: 4,
                acked: 3,
                unacked: 1,
                delivered: 2,
                delivered_unacked: 0,
                // seq 2 arrived, but no connection subscribed before it was sent received anything sent after
                // its ack: it is not covered.
                covered: 2,
                acked_but_lost: 1,
                missed_while_away: 0,
                duplicates: 1,
                reordered: 0,
                lost_sample: vec!["0/1".into()],
            }
        );
    }

    #[test]
    fn messages_sent_while_the_checker_was_away_are_not_counted_as_lost() {
        let outcomes = [outcome(0, vec![10, 20], vec![Some(12), Some(22)])];
        let connections = [CheckerConnection {
            subscribed_at: 21,
            received: vec![(0, 1, 20), (1, 0, 50)],
        }];
        let acc = Accounting::of(&outcomes, &connections);
        assert_eq!(
            (acc.acked_but_lost, acc.missed_while_away, acc.delivered),
            (0, 1, 1)
        );
    }

    #[test]
    fn first_arrivals_below_the_highest_sequence_on_a_connection_are_reorders() {
        let outcomes = [outcome(0, vec![1, 2, 3], vec![Some(1), Some(2), Some(3)])];
        let connections = [CheckerConnection {
            subscribed_at: 0,
            received: vec![(0, 0, 1), (0, 2, 3), (0, 1, 2), (0, 2, 3)],
        }];
        let acc = Accounting::of(&outcomes, &connections);
        assert_eq!((acc.reordered, acc.duplicates, acc.delivered), (1, 1, 3));
    }

    #[test]
    fn the_shuffled_rounds_kill_every_service_once_per_round() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut round = ChaosService::ALL.to_vec();
        round.shuffle(&mut rng);
        round.sort_by_key(|s| s.index());
        assert_eq!(round, ChaosService::ALL);
    }
}
