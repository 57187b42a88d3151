//! Command-line flags of `wsmq-bench`: settings shared by every scenario, then one subcommand per scenario.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wsmq_core::Secret;
use wsmq_core::limits::parse_duration;

/// `wsmq-bench <scenario> [flags]`: measures wsmq, or any server speaking ws-go's protocol, over wss.
#[derive(Debug, Parser)]
#[command(name = "wsmq-bench", version, about)]
pub struct Cli {
    /// Where to connect and how to report.
    #[command(flatten)]
    pub common: Common,

    /// What to measure.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Settings every scenario shares: endpoints, credentials, trust, output and the time bound.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Publisher base URL (`/publish` is appended).
    #[arg(
        long,
        global = true,
        env = "WSMQ_PUBLISHER_URL",
        default_value = "wss://localhost:8081"
    )]
    pub publisher_url: String,

    /// Subscriber base URL (`/subscribe` is appended).
    #[arg(
        long,
        global = true,
        env = "WSMQ_SUBSCRIBER_URL",
        default_value = "wss://localhost:8082"
    )]
    pub subscriber_url: String,

    /// msgqueue base URL (`/pushmsg` and `/popmsg` are appended).
    #[arg(
        long,
        global = true,
        env = "WSMQ_QUEUE_URL",
        default_value = "wss://localhost:8080"
    )]
    pub queue_url: String,

    /// User for HTTP Basic auth on every connection.
    #[arg(long, global = true, env = "WSMQ_USER", default_value = "hello")]
    pub user: String,

    /// Password for HTTP Basic auth (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long,
        global = true,
        env = "WSMQ_PASSWORD",
        default_value = "test",
        hide_default_value = true
    )]
    pub password: Secret,

    /// Data directory whose development CA (`<data-dir>/tls/ca.pem`) is trusted, as the services do.
    #[arg(long, global = true, env = "WSMQ_DATA_DIR", default_value = "./.wsmq")]
    pub data_dir: PathBuf,

    /// CA certificate (PEM) that signed the servers' certificates, instead of the system roots + dev CA.
    #[arg(long, global = true, env = "WSMQ_CA")]
    pub ca: Option<PathBuf>,

    /// Skip certificate verification (testing only; a warning is logged).
    #[arg(long, global = true)]
    pub insecure: bool,

    /// Print one line of JSON instead of a table (and no progress bar).
    #[arg(long, global = true)]
    pub json: bool,

    /// Run the scenario this many times in a row (e2e, fanout, queue) and report, besides every run, the worst of
    /// each latency and the median of each rate: a single run hides the spikes.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// Upper bound on every phase (connect, subscribe, run, drain, hold): a stuck server cannot hang the tool.
    #[arg(long, global = true, default_value = "120s", value_parser = parse_duration)]
    pub duration_limit: Duration,

    /// Bound on one connection attempt (TCP + TLS + upgrade).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Connections being opened at once during connect phases.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Publishers → subscribers through publisher, msgqueue and subscriber: throughput, loss, order, latency.
    E2e(E2eArgs),
    /// One publisher, one topic, many subscribers spread over 127.0.0.x source addresses.
    Fanout(FanoutArgs),
    /// Many idle subscriber connections: connect rate and server memory per connection.
    Conns(ConnsArgs),
    /// msgqueue alone in reliable mode: acked pushes/s, push→ack and push→deliver latency.
    Queue(QueueArgs),
    /// A fault run: msgqueue, publisher and subscriber as separate processes, killed and restarted at random
    /// moments under reliable publishing and consuming, then an accounting of acked-but-lost messages.
    Chaos(ChaosArgs),
    /// Several subscriber instances (separate processes) holding one topic over many connections, the load
    /// split over one worker process per instance: does every client of every instance get every message.
    Scaleout(ScaleoutArgs),
    /// The publisher's HTTP API: keep-alive HTTP/1.1 connections publishing as fast as they are answered,
    /// deliveries counted by subscribers as in e2e.
    Http(HttpArgs),
    /// Many clients drop at once, messages are published, and they all come back resuming from their last
    /// offset: time until every client recovered exactly what it missed.
    Resume(ResumeArgs),
    /// Scheduled delivery: `--messages` messages scheduled (HTTP API, `deliver_at`) for the same second; how long
    /// after it until every subscriber got every message.
    Scheduled(ScheduledArgs),
}

/// `resume` flags.
#[derive(Debug, Clone, Copy, Args)]
pub struct ResumeArgs {
    /// Clients (subscriber connections) that drop and resume (at most ~19,000 per process).
    #[arg(long, short = 'c', default_value_t = 10_000)]
    pub clients: usize,

    /// Topics; client `i` follows topic `i % T`.
    #[arg(long, short = 't', default_value_t = 100)]
    pub topics: usize,

    /// Messages published to every topic while the clients are away (each client recovers this many; keep it
    /// within msgqueue's `--history-size`).
    #[arg(long, short = 'm', default_value_t = 100)]
    pub missed: u64,

    /// Spread client connections over source addresses 127.0.0.1 ..= 127.0.0.K (0: let the OS choose).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
}

/// `scheduled` flags.
#[derive(Debug, Clone, Args)]
pub struct ScheduledArgs {
    /// Keep-alive HTTP/1.1 connections scheduling the messages, one batch request at a time each.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub connections: usize,

    /// Messages per batch request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,

    /// Messages scheduled in total, all for the same second.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub messages: u64,

    /// Subscriber connections, all on one topic.
    #[arg(long, short = 's', default_value_t = 1)]
    pub subscribers: usize,

    /// Content size of each message in bytes (at least the 48-byte stamp).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub size: usize,

    /// The due time is the first whole second at least this far ahead: time enough to schedule everything.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub lead: Duration,

    /// Subscriber protocol.
    #[arg(long, value_enum, default_value_t = SubscribeMode::Auto)]
    pub subscribe_mode: SubscribeMode,

    /// In compat mode, how long to wait after subscribing before publishing (no confirmations exist).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,

    /// How long to wait after the due time for the deliveries.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// `http` flags.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Keep-alive HTTP/1.1 connections to the publisher's API, each with one request in flight at a time.
    #[arg(long, short = 'c', default_value_t = 8)]
    pub connections: usize,

    /// Messages per request: 1 posts each to `/v1/publish`, more posts them to `/v1/publish/batch`.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,

    /// Messages published in total (split evenly across connections).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub messages: u64,

    /// Subscriber connections (subscriber `i` subscribes topic `i % T`; a multiple of the topics).
    #[arg(long, short = 's', default_value_t = 1)]
    pub subscribers: usize,

    /// Topics (message `k` of a connection goes to topic `k % T`).
    #[arg(long, short = 't', default_value_t = 1)]
    pub topics: usize,

    /// Content size of each message in bytes (at least the 48-byte stamp).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub size: usize,

    /// Subscriber protocol.
    #[arg(long, value_enum, default_value_t = SubscribeMode::Auto)]
    pub subscribe_mode: SubscribeMode,

    /// In compat mode, how long to wait after subscribing before publishing (no confirmations exist).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,

    /// How long to wait after the last answer for outstanding deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// Which topic publisher `j` sends its `k`-th message to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopicMode {
    /// Topic `(j + k) % T`: every publisher feeds every topic.
    RoundRobin,
    /// Topic `j % T`: each publisher owns one topic.
    Fixed,
}

/// Whether subscribers offer `wsmq.v1` (to get subscription confirmations) or speak ws-go's compat protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubscribeMode {
    /// Offer `wsmq.v1`; fall back to compat if the server does not select it.
    Auto,
    /// Always `wsmq.v1`: wait for `{"subscribed":..}` confirmations.
    V1,
    /// Never offer a subprotocol: wait `--settle` after subscribing instead of for confirmations.
    Compat,
}

/// Flags of the message-flow scenarios (`e2e` and `fanout`) that both share.
#[derive(Debug, Clone, Args)]
pub struct FlowArgs {
    /// Content size of each message in bytes (at least the 48-byte stamp).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub size: usize,

    /// Total publish rate in messages/s, paced evenly; max rate when absent.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Publish with `wsmq.v1` and an `Id` per message, and count the publisher's acks.
    #[arg(long)]
    pub acks: bool,

    /// Speak ws-go's protocol on both sides, as ws-go clients and independent tools do: no subprotocol offered
    /// by publishers or subscribers (`--subscribe-mode compat`, no `--acks`).
    #[arg(long, conflicts_with_all = ["acks", "subscribe_mode"])]
    pub compat: bool,

    /// With `--acks`: unacked messages a publisher may have outstanding.
    #[arg(long, default_value_t = 4096)]
    pub ack_window: usize,

    /// Subscriber protocol.
    #[arg(long, value_enum, default_value_t = SubscribeMode::Auto)]
    pub subscribe_mode: SubscribeMode,

    /// In compat mode, how long to wait after subscribing before publishing (no confirmations exist).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,

    /// How long to wait after the last publish for outstanding deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Spread client connections over source addresses 127.0.0.1 ..= 127.0.0.K (0: let the OS choose).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
}

/// `e2e` flags.
#[derive(Debug, Clone, Args)]
pub struct E2eArgs {
    /// Publisher connections.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub publishers: usize,

    /// Subscriber connections (subscriber `i` subscribes topic `i % T`).
    #[arg(long, short = 's', default_value_t = 1)]
    pub subscribers: usize,

    /// Topics.
    #[arg(long, short = 't', default_value_t = 1)]
    pub topics: usize,

    /// Messages published in total (split evenly across publishers).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub messages: u64,

    /// How publishers choose topics.
    #[arg(long, value_enum, default_value_t = TopicMode::RoundRobin)]
    pub topic_mode: TopicMode,

    /// Slow subscribers: connections that subscribe and then never read, to measure what a client that stopped
    /// reading costs the others (their own deliveries are not counted).
    #[command(flatten)]
    pub slow: SlowArgs,

    /// Message flow settings.
    #[command(flatten)]
    pub flow: FlowArgs,
}

/// Which topic the slow subscribers of `e2e` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowTopic {
    /// The first topic of the measured subscribers (`bench-0`).
    Same,
    /// A topic of their own (`bench-T`) that the publishers feed as one more topic in their rotation.
    Other,
}

/// `e2e` flags for subscriber connections that never read.
#[derive(Debug, Clone, Args)]
pub struct SlowArgs {
    /// Subscriber connections that complete the handshake, subscribe, then never read.
    #[arg(long, default_value_t = 0)]
    pub slow_subscribers: usize,

    /// Open the slow subscribers one every this long from the start of publishing (the first at once) instead
    /// of all before it.
    #[arg(long, value_parser = parse_duration)]
    pub slow_join_every: Option<Duration>,

    /// The topic the slow subscribers take.
    #[arg(long, value_enum, default_value_t = SlowTopic::Same)]
    pub slow_topic: SlowTopic,

    /// Make the slow subscribers read one frame every this long instead of never: clients that read, but more
    /// slowly than their messages arrive.
    #[arg(long, value_parser = parse_duration)]
    pub slow_read_every: Option<Duration>,
}

/// `fanout` flags.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscriber connections, all on one topic (at most ~19,000 per process: the open-files limit).
    #[arg(long, short = 's', default_value_t = 10_000)]
    pub subscribers: usize,

    /// Messages published.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub messages: u64,

    /// Message flow settings.
    #[command(flatten)]
    pub flow: FlowArgs,
}

/// `conns` flags.
#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    /// Idle subscriber connections to open.
    #[arg(long, short = 'c', default_value_t = 10_000)]
    pub connections: usize,

    /// Topics the connections subscribe to (connection `i` takes topic `i % T`).
    #[arg(long, short = 't', default_value_t = 100)]
    pub topics: usize,

    /// How long to hold the connections open before closing them.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,

    /// PID of a server process whose VmRSS is read before and after (repeatable; RSS is summed).
    #[arg(long)]
    pub server_pid: Vec<u32>,

    /// Prometheus endpoint (`http://host:port/metrics`) exposing `process_resident_memory_bytes`.
    #[arg(long)]
    pub metrics_url: Option<String>,

    /// Subscriber protocol.
    #[arg(long, value_enum, default_value_t = SubscribeMode::Auto)]
    pub subscribe_mode: SubscribeMode,

    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.K (0: let the OS choose).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
}

/// `queue` flags.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Pusher connections (each a producer with its own id).
    #[arg(long, short = 'p', default_value_t = 1)]
    pub pushers: usize,

    /// Popper connections.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub poppers: usize,

    /// Messages pushed in total (split evenly across pushers).
    #[arg(long, short = 'n', default_value_t = 200_000)]
    pub messages: u64,

    /// Payload size in bytes (at least the 48-byte stamp).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub size: usize,

    /// Unacked pushes a pusher keeps in flight (pipelining window).
    #[arg(long, default_value_t = 8192)]
    pub window: usize,

    /// Most PUSH records packed into one frame.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,

    /// Credit (prefetch window) each popper grants.
    #[arg(long, default_value_t = 4096)]
    pub credit: u32,

    /// How long to wait after the last ack for outstanding deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// A service `chaos` starts as its own process and may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum ChaosService {
    /// The durable queue.
    Msgqueue,
    /// The publishing edge.
    Publisher,
    /// The subscribing edge.
    Subscriber,
}

/// `chaos` flags.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// How long to publish while injecting faults; then the run settles and is accounted.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time from one fault to the next: uniformly random in `MIN..MAX` (e.g. `2s..6s`).
    #[arg(long, default_value = "2s..6s", value_parser = parse_duration_range)]
    pub kill_every: DurationRange,

    /// How long a killed service stays down before it is started again: uniformly random in `MIN..MAX`.
    #[arg(long, default_value = "0s..1s", value_parser = parse_duration_range)]
    pub down_for: DurationRange,

    /// Share of faults that are SIGTERM (graceful drain); the others are SIGKILL.
    #[arg(long, default_value_t = 0.5)]
    pub sigterm_share: f64,

    /// Seed of the fault schedule (order of services, signals, delays); random when absent. Reported, so a run
    /// can be repeated with the same schedule (timing on a busy machine still varies).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Services to kill (comma-separated). Each round kills every one of them once, in a random order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "msgqueue,publisher,subscriber"
    )]
    pub kill: Vec<ChaosService>,

    /// Most faults in the run, whatever the duration.
    #[arg(long, default_value_t = 10_000)]
    pub max_kills: u32,

    /// Publishing client connections (`wsmq.v1`, each with its own sequence of ids).
    #[arg(long, short = 'p', default_value_t = 2)]
    pub publishers: usize,

    /// Total publish rate in messages/s.
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,

    /// Unacked messages one publishing client may have outstanding.
    #[arg(long, default_value_t = 512)]
    pub window: usize,

    /// Content size of each message in bytes (at least the 48-byte stamp).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub size: usize,

    /// After the fault phase: how long to wait for the last acks and deliveries.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Directory holding the `msgqueue`, `publisher` and `subscriber` binaries. Default: the directory of
    /// `wsmq-bench` itself (`target/release/` after `cargo build --release --bins`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// Extra flag for msgqueue (repeatable), e.g. `--msgqueue-arg=--fsync --msgqueue-arg=interval=100` to see
    /// what a weaker durability setting loses.
    #[arg(long, allow_hyphen_values = true)]
    pub msgqueue_arg: Vec<String>,

    /// Directory for the services' data and logs, kept after the run. Default: a temporary directory, removed
    /// unless an acked message was lost.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// A range of durations, `MIN..MAX` on the command line (a single duration means exactly that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    /// Shortest.
    pub min: Duration,
    /// Longest.
    pub max: Duration,
}

/// Why a duration range did not parse.
#[derive(Debug, thiserror::Error)]
pub enum DurationRangeError {
    /// One side is not a duration.
    #[error(transparent)]
    Duration(#[from] wsmq_core::limits::DurationError),
    /// `MIN` is above `MAX`.
    #[error("the range {0:?} is empty: its start is after its end")]
    Empty(String),
}

/// Parses `2s..6s` (or `3s`).
pub fn parse_duration_range(value: &str) -> Result<DurationRange, DurationRangeError> {
    let (min, max) = match value.split_once("..") {
        Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
        None => {
            let exact = parse_duration(value)?;
            (exact, exact)
        }
    };
    if min > max {
        return Err(DurationRangeError::Empty(value.to_owned()));
    }
    Ok(DurationRange { min, max })
}

/// `scaleout` flags.
#[derive(Debug, Clone, Args)]
pub struct ScaleoutArgs {
    /// Base URLs of the subscriber instances (comma-separated); one worker process connects to each.
    #[arg(long, value_delimiter = ',', required = true)]
    pub instances: Vec<String>,

    /// Subscriber connections per instance, all on one topic (one worker process holds them, so at most the
    /// open-files limit minus a margin: 19,000 at 20,000).
    #[arg(long, default_value_t = 19_000)]
    pub per_instance: usize,

    /// Messages published, back to back, once every connection has subscribed.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub messages: u64,

    /// Content size of each message in bytes (at least the 48-byte stamp).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub size: usize,

    /// Subscriber protocol.
    #[arg(long, value_enum, default_value_t = SubscribeMode::Auto)]
    pub subscribe_mode: SubscribeMode,

    /// In compat mode, how long to wait after subscribing before publishing (no confirmations exist).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,

    /// How long to wait after the last publish for outstanding deliveries.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Spread each worker's connections over source addresses 127.0.0.1 ..= 127.0.0.K (0: let the OS choose).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,

    /// A service process whose resident memory is reported before and after connecting, as NAME=PID
    /// (repeatable), e.g. `--rss subscriber-1=4242`.
    #[arg(long = "rss", value_parser = parse_named_pid)]
    pub rss: Vec<NamedPid>,

    /// Internal: run as the worker for instance I (the coordinator starts these).
    #[arg(long, hide = true)]
    pub worker: Option<usize>,

    /// Internal: the coordinator's run id, so workers recognise its messages.
    #[arg(long, hide = true, requires = "worker")]
    pub run_id: Option<u32>,

    /// Internal: the coordinator's clock origin, so latencies span processes.
    #[arg(long, hide = true, requires = "worker")]
    pub clock_origin: Option<u64>,
}

/// A process to watch, named for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPid {
    /// Name in the report.
    pub name: String,
    /// Process id.
    pub pid: u32,
}

/// `--rss` was not `NAME=PID`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("expected NAME=PID, got {0:?}")]
pub struct ParseNamedPidError(String);

/// Parses `NAME=PID`.
pub fn parse_named_pid(value: &str) -> Result<NamedPid, ParseNamedPidError> {
    value
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .and_then(|(name, pid)| {
            Some(NamedPid {
                name: name.to_owned(),
                pid: pid.parse().ok()?,
            })
        })
        .ok_or_else(|| ParseNamedPidError(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_ranges_parse_and_refuse_empty_ones() {
        let range = parse_duration_range("250ms..2s").ok();
        assert_eq!(
            range,
            Some(DurationRange {
                min: Duration::from_millis(250),
                max: Duration::from_secs(2)
            })
        );
        let exact = parse_duration_range("3s").ok();
        assert_eq!(
            exact.map(|r| (r.min, r.max)),
            Some((Duration::from_secs(3), Duration::from_secs(3)))
        );
        assert!(parse_duration_range("5s..1s").is_err());
        assert!(parse_duration_range("x..1s").is_err());
    }
}
