//! msgqueue's configuration: every setting a flag with an environment fallback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wsmq_core::config::ServiceArgs;
use wsmq_core::limits::parse_duration;

use crate::queue::{
    Backend, FsyncPolicy, HistoryOptions, HistoryRule, QueueOptions, RedisConfig, Retention,
};

/// Where msgqueue keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    /// Append-only segment files under `<data-dir>/queue/`: survives restarts and crashes.
    Disk,
    /// RAM only, lost on restart: for tests and benchmarks.
    Memory,
    /// A stream in a shared Redis (`--redis-url`): msgqueue keeps no state, so several instances serve one queue.
    Redis,
}

/// How the queue stores messages. Flattened into [`Config`].
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// Storage backend.
    #[arg(long, env = "WSMQ_STORAGE", value_enum, default_value_t = StorageKind::Disk)]
    pub storage: StorageKind,

    /// Redis to keep the queue in (`--storage redis`): `redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS. Prefer the environment variable when it carries a password. Durability is Redis's: configure it
    /// with `appendonly yes` and `appendfsync always` for an ack to mean fsynced there.
    #[arg(
        long,
        env = "WSMQ_REDIS_URL",
        value_name = "URL",
        hide_env_values = true,
        required_if_eq("storage", "redis")
    )]
    pub redis_url: Option<String>,

    /// Names the queue's Redis keys (`{PREFIX}:log`, …; the braces are a Redis Cluster hash tag). msgqueue
    /// instances with the same URL and prefix serve the same queue.
    #[arg(
        long,
        env = "WSMQ_REDIS_PREFIX",
        value_name = "PREFIX",
        default_value = "wsmq"
    )]
    pub redis_prefix: String,

    /// PEM CA certificate(s) that a `rediss://` Redis's certificate must chain to. Default: the system roots.
    #[arg(long, env = "WSMQ_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,

    /// When a pushed message counts as durable, and so when its producer is acked: `always` (fsync before the
    /// ack, group-committed so throughput stays high), `interval=MS` (fsync at most every MS milliseconds,
    /// ack after the write), `never` (leave flushing to the OS).
    #[arg(long, env = "WSMQ_FSYNC", default_value = "always")]
    pub fsync: FsyncPolicy,

    /// Capacity: message bytes the log holds for the slowest consumer group (what it has not acked). When full,
    /// reliable pushes are rejected with "queue full" and compat pushers are not read until there is room;
    /// nothing stored is ever dropped.
    #[arg(long, env = "WSMQ_MAX_QUEUE_BYTES", default_value_t = 1 << 30)]
    pub max_queue_bytes: u64,

    /// Message bytes kept in RAM; a larger backlog stays on disk and is read back in order.
    #[arg(long, env = "WSMQ_MEMORY_BUDGET", default_value_t = 64 << 20)]
    pub memory_budget: u64,

    /// How long a consumer may hold a delivery without acking before it is redelivered to another consumer.
    #[arg(long, env = "WSMQ_LEASE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lease_timeout: Duration,

    /// Size at which the log starts a new segment file; acked segments are deleted whole.
    #[arg(long, env = "WSMQ_SEGMENT_SIZE", default_value_t = 64 << 20)]
    pub segment_size: u64,

    /// Deliveries of one message without an ack (its consumer's link kept dropping, or its lease kept expiring)
    /// after which it becomes a dead letter instead of being delivered again, so it cannot block the queue.
    #[arg(long, env = "WSMQ_MAX_DELIVERIES", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,

    /// Dead letters kept (see `GET /deadletters` on the admin listener); beyond it the oldest is dropped.
    #[arg(long, env = "WSMQ_MAX_DEAD_LETTERS", default_value_t = 10_000)]
    pub max_dead_letters: usize,

    /// How long a consumer group (`/popmsg?group=…`, `default` included) may have no consumer before it is
    /// dropped, so an abandoned group cannot pin the log forever; if it comes back it starts at the tail.
    #[arg(long, env = "WSMQ_GROUP_IDLE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub group_idle_ttl: Duration,

    /// Newest messages kept per topic for resuming clients (`sub <topic> since=…`) and `history`; 0 keeps no
    /// history (messages then carry no offset).
    #[arg(long, env = "WSMQ_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// How long a topic's messages are kept in its history; a topic with nothing published for this long is
    /// forgotten, and its next message starts a new epoch.
    #[arg(long, env = "WSMQ_HISTORY_TTL", default_value = "1h", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// Messages an inbox (`@<user>`) keeps for its user until acked; beyond it the oldest unacked one is dropped.
    #[arg(long, env = "WSMQ_INBOX_SIZE", default_value_t = 1000)]
    pub inbox_size: usize,

    /// How long a message waits in an inbox for its user's ack (e.g. `168h`, 7 days).
    #[arg(long, env = "WSMQ_INBOX_TTL", default_value = "168h", value_parser = parse_duration)]
    pub inbox_ttl: Duration,

    /// History of the topics starting with PREFIX: SIZE messages, for TTL (default `--history-ttl`), e.g.
    /// `chat.=1000:24h`; repeat the flag for several prefixes (comma-separated in the environment); the longest
    /// matching prefix wins.
    #[arg(
        long = "history-rule",
        env = "WSMQ_HISTORY_RULES",
        value_name = "PREFIX=SIZE[:TTL]",
        value_delimiter = ','
    )]
    pub history_rules: Vec<HistoryRule>,

    /// Most bytes topic history keeps in RAM over all topics (memory and disk storage; payloads plus about 64
    /// bytes per message and 160 per topic). Beyond it the least recently published topics are forgotten, down
    /// to nine tenths of the bound, so that many topics cannot exhaust memory; their next message starts a new
    /// epoch. Inboxes count too: size it for the unacked messages you keep.
    #[arg(long, env = "WSMQ_HISTORY_MAX_BYTES", default_value_t = 256 << 20)]
    pub history_max_bytes: u64,
}

impl Default for QueueArgs {
    fn default() -> Self {
        let defaults = QueueOptions::default();
        Self {
            storage: StorageKind::Disk,
            redis_url: None,
            redis_prefix: "wsmq".to_owned(),
            redis_ca: None,
            fsync: defaults.fsync,
            max_queue_bytes: defaults.max_bytes,
            memory_budget: defaults.memory_budget,
            lease_timeout: defaults.lease_timeout,
            segment_size: defaults.segment_size,
            max_deliveries: defaults.max_deliveries,
            max_dead_letters: defaults.max_dead_letters,
            group_idle_ttl: defaults.group_idle_ttl,
            history_size: defaults.history.retention.size,
            history_ttl: defaults.history.retention.ttl,
            inbox_size: defaults.history.inbox.size,
            inbox_ttl: defaults.history.inbox.ttl,
            history_rules: defaults.history.rules,
            history_max_bytes: defaults.history.max_bytes,
        }
    }
}

impl QueueArgs {
    /// The backend, with disk segments in `<data_dir>/queue` (clap makes sure `--redis-url` is set for Redis).
    pub fn backend(&self, data_dir: &Path) -> Backend {
        match self.storage {
            StorageKind::Disk => Backend::Disk {
                dir: data_dir.join("queue"),
            },
            StorageKind::Memory => Backend::Memory,
            StorageKind::Redis => Backend::Redis(RedisConfig {
                url: self.redis_url.clone().unwrap_or_default(),
                prefix: self.redis_prefix.clone(),
                ca: self.redis_ca.clone(),
            }),
        }
    }

    /// The engine options these flags describe.
    pub fn options(&self) -> QueueOptions {
        QueueOptions {
            max_bytes: self.max_queue_bytes,
            memory_budget: self.memory_budget,
            lease_timeout: self.lease_timeout,
            fsync: self.fsync,
            segment_size: self.segment_size,
            max_deliveries: self.max_deliveries,
            max_dead_letters: self.max_dead_letters,
            group_idle_ttl: self.group_idle_ttl,
            history: HistoryOptions {
                retention: Retention {
                    size: self.history_size,
                    ttl: self.history_ttl,
                },
                inbox: Retention {
                    size: self.inbox_size,
                    ttl: self.inbox_ttl,
                },
                rules: self.history_rules.clone(),
                max_bytes: self.history_max_bytes,
            },
            ..QueueOptions::default()
        }
    }
}

/// Everything `msgqueue` needs to run.
#[derive(Debug, Clone, clap::Args)]
#[command(
    mut_arg("listen", |arg| arg.default_value("0.0.0.0:8080").required(false)),
    mut_arg("admin_listen", |arg| arg.default_value("127.0.0.1:9080").required(false))
)]
pub struct Config {
    /// Listeners (`/pushmsg`, `/popmsg` and the admin one), data directory, TLS identity, users and limits.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// Storage settings.
    #[command(flatten)]
    pub queue: QueueArgs,
}
