//! The Redis engine: the queue as a stream in a shared Redis, so any number of msgqueue processes serve one queue
//! and keep no state of their own (they can be killed, added or moved freely).
//!
//! Mapping (each step one Lua script or command, so it is atomic in Redis):
//! - push: batches of pushes go to one appender task per process, which applies them with one script call per
//!   batch (`append.lua`: per-producer high-water marks for dedup, `XADD` with ids `0-<offset>`). A push is durable
//!   once Redis replied: with `appendfsync always` on the primary that means fsynced there.
//! - consumer groups are Redis consumer groups: `XREADGROUP` on a connection of the consumer's own (a blocking read
//!   must not stall other commands), `XACK`, and `XPENDING`/`XCLAIM` (`claim.lua`) for leases that ran out, which
//!   also buries messages delivered `max_deliveries` times; a consumer that goes away hands its deliveries back
//!   (`release.lua`).
//! - trimming: every process runs `sweep.lua` about once a second, which drops groups idle beyond the TTL and trims
//!   the log with `XTRIM MINID` below the slowest group's floor (never `MAXLEN`, which would drop unacked
//!   entries).
//!
//! All keys share the hash tag `{<prefix>}`, so a Redis Cluster keeps one queue on one shard (and several queues,
//! with different prefixes, spread over the shards).

mod append;
mod consumer;
mod schedule;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, Script, Value};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::queue::NackReason;

pub(crate) use consumer::RedisConsumer;

use super::history::{
    self, Epoch, HistoryMessage, HistoryPage, HistoryQuery, Position, Retention, plan,
};
use super::schedule::ScheduleMetrics;

use super::{
    ConsumeMode, DeadLetter, DeadReason, DurableToken, GroupName, GroupStats, Placement, Producer,
    PushError, Pushed, QueueError, QueueOptions, QueueStats, ReplayError, StartAt, now_ms,
};

/// Frames of pushes waiting for the appender; beyond it pushes are refused as full (backpressure).
const MAX_SUBMISSIONS: usize = 8192;
/// How often each process runs the housekeeping script and refreshes the stats it reports.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Retry delays after a failed Redis command.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Response timeout on the shared connection (scripts included; blocking reads use their own connections).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing waits for the last pushes and acks to reach Redis.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Acks and NACKs waiting to be sent to Redis; beyond it new ones are dropped (and counted): the messages are then
/// redelivered after their lease, at-least-once as always.
const MAX_UNSETTLED: usize = 1 << 20;
/// The consumer name under which deliveries of departed consumers wait to be claimed.
const RELEASED: &str = "wsmq-released";

/// Where the Redis backend keeps the queue.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    pub url: String,
    /// Names the queue's keys (`{<prefix>}:log`, …). The braces make it a Redis Cluster hash tag, so one queue
    /// lives on one shard; queues with different prefixes spread over the shards.
    pub prefix: String,
    /// PEM CA certificate(s) a `rediss://` server must chain to, instead of the system roots (a private CA).
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("ca", &self.ca)
            .finish()
    }
}

impl RedisConfig {
    /// The queue at `url` under the default prefix `wsmq`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "wsmq".to_owned(),
            ca: None,
        }
    }
}

/// `url` without its password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Why the Redis backend failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    /// The URL cannot be used (not `redis://` or `rediss://`, or malformed).
    #[error("invalid Redis URL {url}: {source}")]
    InvalidUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong with it.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// A command failed (Redis unreachable, an error reply).
    #[error("Redis at {url}: {source}")]
    Command {
        /// The URL, password removed.
        url: String,
        /// The client's error.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// The CA file for `rediss://` cannot be read.
    #[error("cannot read the Redis CA {path}: {source}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Redis answered something the engine does not understand (another program using the keys?).
    #[error("Redis at {url} gave an unexpected reply to {what}")]
    Reply {
        /// The URL, password removed.
        url: String,
        /// The command or script.
        what: &'static str,
    },
}

/// The queue's key names.
struct Keys {
    log: String,
    dead: String,
    marks: String,
    seen: String,
    /// Prefix of each process's batch counter (see `append`).
    appenders: String,
    /// Prefix of each topic's history state (epoch and newest offset).
    topic: String,
    /// Prefix of each topic's history stream.
    history: String,
    schedule: schedule::ScheduleKeys,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let tag = format!("{{{prefix}}}");
        Self {
            log: format!("{tag}:log"),
            dead: format!("{tag}:dead"),
            marks: format!("{tag}:producer:"),
            seen: format!("{tag}:seen"),
            appenders: format!("{tag}:appender:"),
            topic: format!("{tag}:topic:"),
            history: format!("{tag}:history:"),
            schedule: schedule::ScheduleKeys::new(&tag),
        }
    }
}

struct Scripts {
    append: Script,
    join: Script,
    claim: Script,
    bury: Script,
    release: Script,
    sweep: Script,
    history: Script,
    ack: Script,
    schedule: schedule::ScheduleScripts,
}

impl Scripts {
    fn new() -> Self {
        Self {
            append: Script::new(include_str!("append.lua")),
            join: Script::new(include_str!("join.lua")),
            claim: Script::new(include_str!("claim.lua")),
            bury: Script::new(include_str!("bury.lua")),
            release: Script::new(include_str!("release.lua")),
            sweep: Script::new(include_str!("sweep.lua")),
            history: Script::new(include_str!("history.lua")),
            ack: Script::new(include_str!("ack.lua")),
            schedule: schedule::ScheduleScripts::new(),
        }
    }
}

/// A frame's worth of pushes on its way to the appender.
struct Submission {
    items: Vec<Item>,
    token: u64,
}

/// One push on its way to Redis.
#[derive(Debug)]
struct Item {
    /// `None` for compat pushes, which are not deduplicated.
    producer: Option<Producer>,
    payload: Bytes,
    /// The topic whose history keeps the message, its retention, and where the appender writes the position
    /// Redis gives it; `None` when the message keeps no history.
    history: Option<(String, Retention, Placement)>,
}

/// How far the appender got.
#[derive(Debug, Clone, Copy, Default)]
struct Applied {
    /// Every submission with a token up to this one is in Redis.
    upto: u64,
    /// The appender stopped; tokens beyond `upto` will never be applied.
    closed: bool,
}

/// This process's counters (Redis holds the rest of the truth).
#[derive(Default)]
struct Counters {
    pushed: AtomicU64,
    duplicates: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    redelivered: AtomicU64,
    rejected_full: AtomicU64,
    dead_nacked: AtomicU64,
    dead_max_deliveries: AtomicU64,
    groups_dropped: AtomicU64,
}

/// What the last sweep read from Redis.
#[derive(Default)]
struct Snapshot {
    groups: Vec<GroupStats>,
    depth: u64,
    in_flight: u64,
    /// Memory Redis uses for the log (`MEMORY USAGE`), what `--max-queue-bytes` bounds.
    bytes: u64,
}

/// Acks and NACKs on their way to Redis.
#[derive(Default)]
struct Unsettled {
    acks: HashMap<Arc<str>, Vec<u64>>,
    nacks: Vec<(Arc<str>, u64, NackReason)>,
    len: usize,
}

/// Redis round trips, failures and reconnects, for `/metrics`.
#[derive(Clone)]
struct RedisMetrics {
    round_trip: Histogram,
    errors: Counter,
    reconnects: Counter,
    /// Acks or NACKs dropped because [`MAX_UNSETTLED`] were waiting.
    unsettled_dropped: Counter,
}

struct Shared {
    url: String,
    keys: Keys,
    options: QueueOptions,
    client: Client,
    conn: ConnectionManager,
    scripts: Scripts,
    /// The next token, held while submitting so tokens reach the appender in order.
    submit: Mutex<(u64, mpsc::Sender<Submission>)>,
    applied: watch::Sender<Applied>,
    /// Notified when the appender made room.
    space: Notify,
    ready: watch::Sender<bool>,
    /// Whether Redis ever answered, so a recovery counts as a reconnect and the first connection does not.
    connected_once: AtomicBool,
    closed: CancellationToken,
    /// Names this process's consumers uniquely among all msgqueue processes on the queue.
    instance: String,
    next_consumer: AtomicU64,
    /// Groups with consumers in this process, and how many.
    active: Mutex<HashMap<Arc<str>, usize>>,
    unsettled: Mutex<Unsettled>,
    settle: Notify,
    counters: Counters,
    snapshot: Mutex<Snapshot>,
    /// Set by the sweep while the log uses more than `max_bytes`: pushes are refused as full until it shrinks.
    full: AtomicBool,
    metrics: RedisMetrics,
    /// The schedule store's gauge (all processes' entries, as last counted) and lateness histogram.
    schedule_metrics: ScheduleMetrics,
    /// Notified when this process scheduled something, to wake its scheduler.
    schedule_changed: Notify,
    tasks: tokio_util::task::TaskTracker,
}

/// The Redis engine's handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisQueue {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("url", &self.shared.url)
            .field("log", &self.shared.keys.log)
            .finish_non_exhaustive()
    }
}

/// `duration` in whole milliseconds, as Redis takes times (saturating).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The stream id of offset `offset`.
fn entry_id(offset: u64) -> String {
    format!("0-{offset}")
}

/// The offset in a stream id `0-<offset>`.
fn parse_offset(id: &[u8]) -> Option<u64> {
    let id = std::str::from_utf8(id).ok()?;
    id.rsplit_once('-')?.1.parse().ok()
}

impl RedisQueue {
    /// Starts the engine on `config`: the appender, the settler and the sweeper run as tasks, and connect (and
    /// reconnect) to Redis by themselves, so an unreachable Redis delays readiness instead of failing the start.
    /// Must run inside a Tokio runtime.
    pub(crate) fn open(config: RedisConfig, options: QueueOptions) -> Result<Self, QueueError> {
        let url = redact(&config.url);
        let invalid = |source| RedisError::InvalidUrl {
            url: url.clone(),
            source: Arc::new(source),
        };
        let client = match &config.ca {
            None => Client::open(config.url.as_str()),
            Some(path) => {
                // Read once at start (msgqueue opens the queue on the blocking pool).
                let root = std::fs::read(path).map_err(|source| RedisError::Ca {
                    path: path.clone(),
                    source: Arc::new(source),
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                Client::build_with_tls(config.url.as_str(), certificates)
            }
        }
        .map_err(invalid)?;
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_max_delay(RETRY_MAX),
        )
        .map_err(invalid)?;
        let (tx, rx) = mpsc::channel(MAX_SUBMISSIONS);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let instance = format!("{:x}-{}", started, std::process::id());
        let shared = Arc::new(Shared {
            url,
            keys: Keys::new(&config.prefix),
            options,
            client,
            conn,
            scripts: Scripts::new(),
            submit: Mutex::new((0, tx)),
            applied: watch::Sender::new(Applied::default()),
            space: Notify::new(),
            ready: watch::Sender::new(false),
            connected_once: AtomicBool::new(false),
            closed: CancellationToken::new(),
            instance,
            next_consumer: AtomicU64::new(0),
            active: Mutex::new(HashMap::new()),
            unsettled: Mutex::new(Unsettled::default()),
            settle: Notify::new(),
            counters: Counters::default(),
            snapshot: Mutex::new(Snapshot::default()),
            full: AtomicBool::new(false),
            metrics: RedisMetrics {
                round_trip: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
                errors: Counter::default(),
                reconnects: Counter::default(),
                unsettled_dropped: Counter::default(),
            },
            schedule_metrics: ScheduleMetrics::default(),
            schedule_changed: Notify::new(),
            tasks: tokio_util::task::TaskTracker::new(),
        });
        shared.tasks.spawn(append::run(Arc::clone(&shared), rx));
        shared.tasks.spawn(run_settler(Arc::clone(&shared)));
        shared.tasks.spawn(run_sweeper(Arc::clone(&shared)));
        shared.tasks.close();
        Ok(Self { shared })
    }

    /// Hands a frame's pushes to the appender in one piece, so they are applied in order, all or none.
    pub(crate) fn push_batch<I>(&self, items: I, out: &mut Vec<Result<Pushed, PushError>>)
    where
        I: IntoIterator<Item = (Option<Producer>, Bytes)>,
    {
        let shared = &*self.shared;
        let max = shared.options.max_payload();
        let start = out.len();
        let mut batch = Vec::new();
        for (producer, payload) in items {
            let len = payload.len();
            if len > max {
                out.push(Err(PushError::TooLarge { len, max }));
                continue;
            }
            let history = history::topic_of(&payload)
                .map(|topic| (shared.options.history.retention(&topic), topic))
                .filter(|(retention, _)| retention.size > 0)
                .map(|(retention, topic)| (topic.into_owned(), retention, Placement::default()));
            // The token is filled in once the batch is submitted (or the slot becomes its refusal).
            out.push(Ok(Pushed::Submitted {
                durable: DurableToken::at(0),
                placement: history.as_ref().map(|(_, _, placement)| placement.clone()),
            }));
            batch.push(Item {
                producer,
                payload,
                history,
            });
        }
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let result = if shared.closed.is_cancelled() {
            Err(PushError::Closed)
        } else if shared.full.load(Ordering::Relaxed) {
            Err(PushError::Full)
        } else {
            let mut submit = shared.submit.lock();
            let token = submit.0 + 1;
            match submit.1.try_send(Submission {
                items: batch,
                token,
            }) {
                Ok(()) => {
                    submit.0 = token;
                    Ok(DurableToken::at(token))
                }
                Err(mpsc::error::TrySendError::Full(_)) => Err(PushError::Full),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
            }
        };
        if matches!(result, Err(PushError::Full)) {
            shared
                .counters
                .rejected_full
                .fetch_add(count, Ordering::Relaxed);
        }
        for slot in &mut out[start..] {
            if let Ok(Pushed::Submitted { durable, .. }) = slot {
                match &result {
                    Ok(token) => *durable = *token,
                    Err(err) => *slot = Err(err.clone()),
                }
            }
        }
    }

    /// Resolves once the appender has applied everything up to `token` in Redis.
    pub(crate) async fn wait_durable(&self, token: DurableToken) -> Result<(), QueueError> {
        let mut applied = self.shared.applied.subscribe();
        let applied = applied
            .wait_for(|a| a.upto >= token.log || a.closed)
            .await
            .map_err(|_| QueueError::Closed)?;
        if applied.upto >= token.log {
            Ok(())
        } else {
            Err(QueueError::Closed)
        }
    }

    /// Resolves once the appender has room and the log is within `max_bytes` again (or the queue closed).
    pub(crate) async fn wait_for_space(&self) {
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let shared = &*self.shared;
            let room =
                shared.submit.lock().1.capacity() > 0 && !shared.full.load(Ordering::Relaxed);
            if shared.closed.is_cancelled() || room {
                return;
            }
            notified.await;
        }
    }

    /// A consumer of group `name` whose group is created in the background (retrying while Redis is away).
    pub(crate) fn consumer(
        &self,
        name: &GroupName,
        start: StartAt,
        mode: ConsumeMode,
    ) -> RedisConsumer {
        RedisConsumer::start(Arc::clone(&self.shared), name, start, mode, None)
    }

    /// A consumer of group `name`, once the group exists in Redis.
    pub(crate) async fn join(
        &self,
        name: &GroupName,
        start: StartAt,
        mode: ConsumeMode,
    ) -> Result<RedisConsumer, QueueError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let consumer = RedisConsumer::start(Arc::clone(&self.shared), name, start, mode, Some(tx));
        rx.await.map_err(|_| QueueError::Closed)??;
        Ok(consumer)
    }

    /// Acks `ids` of group `group` (sent to Redis by the settler); returns how many were queued for it.
    pub(crate) fn ack(&self, group: &str, ids: &[u64]) -> usize {
        self.shared.settle_acks(&Arc::from(group), ids);
        ids.len()
    }

    /// NACKs `id` of group `group` (buried by the settler).
    pub(crate) fn nack(&self, group: &str, id: u64, reason: NackReason) -> bool {
        self.shared.settle_nack(&Arc::from(group), id, reason)
    }

    /// The dead letters in Redis, oldest first.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .shared
            .read_dead()
            .await?
            .into_iter()
            .map(|(_, letter, _)| letter)
            .collect())
    }

    /// Answers a history request for `topic` from its history in Redis.
    pub(crate) async fn history(
        &self,
        topic: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, QueueError> {
        // Ask for what the query wants if the client's epoch is current; the plan, made on what Redis answers,
        // decides, and only an epoch change (the client's offsets mean nothing) needs a second read.
        let wanted = match *query {
            HistoryQuery::Since { position, .. } => Read::From(position.offset + 1),
            HistoryQuery::Last { .. } => Read::Last,
            HistoryQuery::Unacked { .. } => Read::Unacked,
        };
        let (page, from) = self.read_history(topic, query, wanted).await?;
        if let Read::From(wanted) = wanted
            && from < wanted
        {
            return Ok(self.read_history(topic, query, Read::From(from)).await?.0);
        }
        Ok(page)
    }

    /// Acks the messages of `topic` up to `offset` in `epoch` (`None`: the current one); returns the topic's ack
    /// afterwards, or `None` for a topic without history.
    pub(crate) async fn ack_history(
        &self,
        topic: &str,
        epoch: Option<Epoch>,
        offset: u64,
    ) -> Result<Option<Position>, QueueError> {
        let shared = &*self.shared;
        let mut invocation = shared.scripts.ack.prepare_invoke();
        invocation
            .key(format!("{}{topic}", shared.keys.topic))
            .key(format!("{}{topic}", shared.keys.history))
            .arg(epoch.map(|e| e.to_string()).unwrap_or_default())
            .arg(offset);
        let (epoch, acked): (String, u64) = shared.invoke(&invocation, "ack").await?;
        Ok(epoch.parse::<Epoch>().ok().map(|epoch| Position {
            epoch,
            offset: acked,
        }))
    }

    /// One read of a topic's history. Returns the page and the first offset the plan wants.
    async fn read_history(
        &self,
        topic: &str,
        query: &HistoryQuery,
        read: Read,
    ) -> Result<(HistoryPage, u64), QueueError> {
        let shared = &*self.shared;
        let retention = shared.options.history.retention(topic);
        let mut invocation = shared.scripts.history.prepare_invoke();
        invocation
            .key(format!("{}{topic}", shared.keys.topic))
            .key(format!("{}{topic}", shared.keys.history))
            .arg(now_ms())
            .arg(millis(retention.ttl))
            .arg(match read {
                Read::From(_) => "from",
                Read::Last => "last",
                Read::Unacked => "unacked",
            })
            .arg(match read {
                Read::From(from) => from,
                Read::Last | Read::Unacked => 0,
            })
            .arg(query.limit());
        let (epoch, latest, first, entries, acked): (String, u64, u64, Vec<Value>, u64) =
            shared.invoke(&invocation, "history").await?;
        let epoch = epoch.parse::<Epoch>().unwrap_or(Epoch(0));
        let query = query.from_ack(epoch, acked);
        let (start, outcome) = plan(&query, epoch, first, latest);
        let messages = entries
            .into_iter()
            .filter_map(|entry| {
                let (id, mut fields) = split_entry(entry)?;
                let offset = parse_offset(id.as_bytes())?;
                let (payload, _) = entry_fields(&mut fields)?;
                let text = String::from_utf8(payload).ok()?;
                let message = serde_json::value::RawValue::from_string(text).ok()?;
                (offset >= start).then_some(HistoryMessage { offset, message })
            })
            .take(query.limit())
            .collect();
        let page = HistoryPage {
            epoch,
            latest,
            recovered: outcome.is_ok(),
            reason: outcome.err(),
            messages,
        };
        Ok((page, start))
    }

    /// Pushes dead letters back as new messages, then deletes them once the copies are in Redis.
    pub(crate) async fn replay(&self, ids: Option<&[u64]>) -> Result<usize, ReplayError> {
        let shared = &*self.shared;
        let letters = shared.read_dead().await?;
        let chosen: Vec<_> = letters
            .into_iter()
            .filter(|(_, letter, _)| ids.is_none_or(|ids| ids.contains(&letter.id)))
            .collect();
        if chosen.is_empty() {
            return Ok(0);
        }
        let mut out = Vec::with_capacity(chosen.len());
        self.push_batch(
            chosen.iter().map(|(_, _, payload)| (None, payload.clone())),
            &mut out,
        );
        let mut durable = None;
        for result in out {
            match result {
                Ok(pushed) => durable = durable.max(Some(pushed.durable())),
                Err(source) => {
                    return Err(ReplayError::Refused {
                        replayed: 0,
                        source,
                    });
                }
            }
        }
        if let Some(token) = durable {
            self.wait_durable(token).await?;
        }
        let entries: Vec<&str> = chosen.iter().map(|(entry, _, _)| entry.as_str()).collect();
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(&shared.keys.dead).arg(&entries);
        shared
            .query::<u64>(&cmd, "XDEL")
            .await
            .map_err(QueueError::from)?;
        tracing::info!(count = chosen.len(), "replayed dead letters");
        Ok(chosen.len())
    }

    /// This process's counters plus what the last sweep read from Redis.
    pub(crate) fn stats(&self) -> QueueStats {
        let shared = &*self.shared;
        let c = &shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let snapshot = shared.snapshot.lock();
        QueueStats {
            depth: snapshot.depth,
            bytes: snapshot.bytes,
            in_flight: snapshot.in_flight,
            consumers: shared.active.lock().values().sum(),
            pushed: get(&c.pushed),
            duplicates: get(&c.duplicates),
            delivered: get(&c.delivered),
            acked: get(&c.acked),
            redelivered: get(&c.redelivered),
            rejected_full: get(&c.rejected_full),
            dead_nacked: get(&c.dead_nacked),
            dead_max_deliveries: get(&c.dead_max_deliveries),
            groups_dropped: get(&c.groups_dropped),
            groups: snapshot.groups.clone(),
            ..QueueStats::default()
        }
    }

    /// The schedule store's metrics.
    pub(crate) fn schedule_metrics(&self) -> &ScheduleMetrics {
        &self.shared.schedule_metrics
    }

    /// Follows whether Redis answers.
    pub(crate) fn ready(&self) -> watch::Receiver<bool> {
        self.shared.ready.subscribe()
    }

    /// Registers Redis round-trip latency, errors and reconnects.
    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.shared.metrics;
        registry.register(
            "redis_round_trip_seconds",
            "Time from sending a command or script to Redis until its reply",
            m.round_trip.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis commands that failed (unreachable, timed out, or an error reply)",
            m.errors.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Times Redis answered again after a failure",
            m.reconnects.clone(),
        );
        registry.register(
            "redis_unsettled_dropped",
            "Acks or NACKs dropped because too many were waiting for Redis (the messages are redelivered)",
            m.unsettled_dropped.clone(),
        );
    }

    /// Stops taking pushes, applies what was submitted and sends pending acks (while Redis answers), and stops
    /// every task of the engine.
    pub(crate) async fn close(&self) {
        self.shared.closed.cancel();
        self.shared.space.notify_waiters();
        self.shared.settle.notify_one();
        if tokio::time::timeout(CLOSE_GRACE, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(url = %self.shared.url,
                "Redis did not answer while closing; pushes not applied yet were not acked (producers resend them)");
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("url", &self.url).finish()
    }
}

impl Shared {
    /// Runs `cmd` on the shared connection, timing it and following readiness.
    async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        what: &'static str,
    ) -> Result<T, RedisError> {
        let mut conn = self.conn.clone();
        self.timed(what, cmd.query_async::<T>(&mut conn)).await
    }

    /// Runs a script invocation on the shared connection, timing it and following readiness.
    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        what: &'static str,
    ) -> Result<T, RedisError> {
        let mut conn = self.conn.clone();
        self.timed(what, invocation.invoke_async::<T>(&mut conn))
            .await
    }

    /// Awaits one round trip to Redis (on any connection) and [observes](Shared::observe) it.
    async fn timed<T>(
        &self,
        what: &'static str,
        round_trip: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        let started = Instant::now();
        let result = round_trip.await;
        self.observe(started, result, what)
    }

    /// Records a round trip's time and outcome: a success makes the queue ready (counting a reconnect if it was
    /// not), a failure to reach Redis makes it unready.
    fn observe<T>(
        &self,
        started: Instant,
        result: redis::RedisResult<T>,
        what: &'static str,
    ) -> Result<T, RedisError> {
        match result {
            Ok(value) => {
                self.metrics
                    .round_trip
                    .observe(started.elapsed().as_secs_f64());
                let was_ready = self.ready.send_replace(true);
                let again = self.connected_once.swap(true, Ordering::Relaxed);
                if !was_ready && again {
                    self.metrics.reconnects.inc();
                    tracing::info!(url = %self.url, "Redis answers again");
                }
                Ok(value)
            }
            Err(err) => {
                self.metrics.errors.inc();
                if err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_timeout()
                {
                    self.ready.send_replace(false);
                }
                tracing::debug!(url = %self.url, what, %err, "Redis command failed");
                Err(RedisError::Command {
                    url: self.url.clone(),
                    source: Arc::new(err),
                })
            }
        }
    }

    fn settle_acks(&self, group: &Arc<str>, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        {
            let mut unsettled = self.unsettled.lock();
            if unsettled.len + ids.len() > MAX_UNSETTLED {
                self.metrics.unsettled_dropped.inc_by(ids.len() as u64);
                return;
            }
            unsettled.len += ids.len();
            unsettled
                .acks
                .entry(Arc::clone(group))
                .or_default()
                .extend_from_slice(ids);
        }
        self.settle.notify_one();
    }

    fn settle_nack(&self, group: &Arc<str>, id: u64, reason: NackReason) -> bool {
        {
            let mut unsettled = self.unsettled.lock();
            if unsettled.len >= MAX_UNSETTLED {
                self.metrics.unsettled_dropped.inc();
                return false;
            }
            unsettled.len += 1;
            unsettled.nacks.push((Arc::clone(group), id, reason));
        }
        self.settle.notify_one();
        true
    }

    /// Every dead letter: (its entry id in the dead-letter stream, the letter, its payload).
    async fn read_dead(&self) -> Result<Vec<(String, DeadLetter, Bytes)>, QueueError> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.keys.dead).arg("-").arg("+");
        let value: Value = self.query(&cmd, "XRANGE").await?;
        let bad = || RedisError::Reply {
            url: self.url.clone(),
            what: "XRANGE of the dead letters",
        };
        let Value::Array(entries) = value else {
            return Err(bad().into());
        };
        let mut letters = Vec::with_capacity(entries.len());
        for entry in entries {
            let (entry_id, fields) = split_entry(entry).ok_or_else(bad)?;
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| matches!(&pair[0], Value::BulkString(n) if n == name.as_bytes()))
                    .and_then(|pair| match pair.get(1) {
                        Some(Value::BulkString(v)) => Some(v.clone()),
                        _ => None,
                    })
            };
            let number = |v: Option<Vec<u8>>| {
                v.and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let id = field("id")
                .and_then(|id| parse_offset(&id))
                .ok_or_else(bad)?;
            let reason = match field("reason").as_deref() {
                Some(b"max") => DeadReason::MaxDeliveries,
                other => DeadReason::Nacked(
                    other
                        .and_then(|code| std::str::from_utf8(code).ok())
                        .and_then(|code| code.parse().ok())
                        .and_then(NackReason::from_code)
                        .unwrap_or(NackReason::Failed),
                ),
            };
            let payload = Bytes::from(field("p").unwrap_or_default());
            let letter = DeadLetter {
                id,
                reason,
                deliveries: number(field("deliveries"))
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                size: payload.len() as u64,
                time_ms: number(field("time")).unwrap_or(0),
                group: field("group")
                    .and_then(|g| String::from_utf8(g).ok())
                    .unwrap_or_default(),
            };
            letters.push((entry_id, letter, payload));
        }
        Ok(letters)
    }
}

/// Which entries of a history stream one read returns.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// From this offset on.
    From(u64),
    /// The newest.
    Last,
    /// After the topic's ack.
    Unacked,
}

/// Takes the payload and, for a message with history, its position from a log entry's fields (`p`, and `e`,
/// `o`); `None` when the entry has no payload (trimmed meanwhile).
fn entry_fields(fields: &mut [Value]) -> Option<(Vec<u8>, Option<Position>)> {
    let (mut payload, mut epoch, mut offset) = (None, None, None);
    for pair in fields.chunks_mut(2) {
        let [Value::BulkString(name), value] = pair else {
            continue;
        };
        match (name.as_slice(), value) {
            (b"p", Value::BulkString(bytes)) => payload = Some(std::mem::take(bytes)),
            (b"e", Value::BulkString(bytes)) => {
                epoch = std::str::from_utf8(bytes).ok()?.parse::<Epoch>().ok();
            }
            (b"o", Value::BulkString(bytes)) => {
                offset = std::str::from_utf8(bytes).ok()?.parse::<u64>().ok();
            }
            _ => {}
        }
    }
    let position = epoch
        .zip(offset)
        .map(|(epoch, offset)| Position { epoch, offset });
    Some((payload?, position))
}

/// Splits a stream entry `[id, [field, value, …]]` into its id and fields.
fn split_entry(entry: Value) -> Option<(String, Vec<Value>)> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = match parts.pop() {
        Some(Value::Array(fields)) => fields,
        _ => Vec::new(),
    };
    match parts.pop() {
        Some(Value::BulkString(id)) => Some((String::from_utf8(id).ok()?, fields)),
        _ => None,
    }
}

/// Waits before retrying a failed command; false once the queue is closing.
async fn back_off(closed: &CancellationToken, delay: &mut Duration) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(RETRY_MAX);
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = closed.cancelled() => false,
    }
}

/// Sends acks and NACKs to Redis in batches: one `XACK` per group, one script call per NACK. What fails (Redis
/// away) is kept and sent again after a backoff delay, so acks given while Redis restarts do not turn into
/// redeliveries; on close it is given up (the messages are then redelivered after their lease, at-least-once).
async fn run_settler(shared: Arc<Shared>) {
    let mut delay = RETRY_MIN;
    loop {
        let closing = tokio::select! {
            () = shared.settle.notified() => false,
            () = shared.closed.cancelled() => true,
        };
        let taken = std::mem::take(&mut *shared.unsettled.lock());
        let mut failed = Unsettled::default();
        for (group, ids) in taken.acks {
            let entries: Vec<String> = ids.iter().map(|&id| entry_id(id)).collect();
            for (chunk, offsets) in entries.chunks(4096).zip(ids.chunks(4096)) {
                let mut cmd = redis::cmd("XACK");
                cmd.arg(&shared.keys.log).arg(&*group).arg(chunk);
                match shared.query::<u64>(&cmd, "XACK").await {
                    Ok(n) => {
                        shared.counters.acked.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.len += offsets.len();
                        failed
                            .acks
                            .entry(Arc::clone(&group))
                            .or_default()
                            .extend_from_slice(offsets);
                    }
                }
            }
        }
        for (group, id, reason) in taken.nacks {
            let mut invocation = shared.scripts.bury.prepare_invoke();
            invocation
                .key(&shared.keys.log)
                .key(&shared.keys.dead)
                .arg(&*group)
                .arg(entry_id(id))
                .arg(reason.code())
                .arg(now_ms())
                .arg(shared.options.max_dead_letters);
            match shared.invoke::<u64>(&invocation, "bury").await {
                Ok(1) => {
                    shared.counters.dead_nacked.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%group, id, reason = reason.as_str(), "message became a dead letter");
                }
                Ok(_) => {}
                Err(_) => {
                    failed.len += 1;
                    failed.nacks.push((group, id, reason));
                }
            }
        }
        if closing {
            break;
        }
        if failed.len == 0 {
            delay = RETRY_MIN;
            continue;
        }
        {
            let mut unsettled = shared.unsettled.lock();
            unsettled.len += failed.len;
            for (group, ids) in failed.acks {
                unsettled.acks.entry(group).or_default().extend(ids);
            }
            unsettled.nacks.extend(failed.nacks);
        }
        if !back_off(&shared.closed, &mut delay).await {
            break;
        }
        shared.settle.notify_one();
    }
}

/// Runs the housekeeping script about once a second and keeps the stats it returns.
async fn run_sweeper(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.closed.cancelled() => break,
        }
        let active: Vec<Arc<str>> = shared.active.lock().keys().cloned().collect();
        let mut invocation = shared.scripts.sweep.prepare_invoke();
        invocation
            .key(&shared.keys.log)
            .key(&shared.keys.seen)
            .arg(now_ms())
            .arg(millis(shared.options.group_idle_ttl));
        for group in &active {
            invocation.arg(&**group);
        }
        let swept = tokio::select! {
            swept = shared.invoke::<Value>(&invocation, "sweep") => swept,
            () = shared.closed.cancelled() => break,
        };
        match swept {
            Ok(value) => {
                warned = false;
                shared.install_sweep(value);
            }
            Err(err) => {
                // The sweep is the heartbeat: whatever made it fail (unreachable, refused credentials, out of
                // memory), the queue is not ready.
                shared.ready.send_replace(false);
                if !warned {
                    warned = true;
                    tracing::warn!(%err, "Redis does not answer; not ready, retrying every second");
                }
            }
        }
    }
}

impl Shared {
    fn install_sweep(&self, value: Value) {
        let Value::Array(mut parts) = value else {
            return;
        };
        if parts.len() != 3 {
            return;
        }
        let bytes = match parts.pop() {
            Some(Value::Int(bytes)) => u64::try_from(bytes).unwrap_or(0),
            _ => 0,
        };
        let groups = match parts.pop() {
            Some(Value::Array(groups)) => groups,
            _ => Vec::new(),
        };
        if let Some(Value::Array(dropped)) = parts.pop() {
            for name in dropped {
                if let Value::BulkString(name) = name {
                    self.counters.groups_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %String::from_utf8_lossy(&name),
                        "dropped a consumer group without consumers for longer than --group-idle-ttl");
                }
            }
        }
        let active = self.active.lock();
        let mut snapshot = Snapshot {
            bytes,
            ..Snapshot::default()
        };
        let full = bytes > self.options.max_bytes;
        if self.full.swap(full, Ordering::Relaxed) && !full {
            self.space.notify_waiters();
        }
        for group in groups {
            let Value::Array(fields) = group else {
                continue;
            };
            let mut fields = fields.into_iter();
            let (Some(Value::BulkString(name)), Some(Value::Int(lag)), Some(Value::Int(pending))) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let name = String::from_utf8_lossy(&name).into_owned();
            let pending = u64::try_from(pending).unwrap_or(0);
            let lag = u64::try_from(lag).unwrap_or(0);
            snapshot.depth = snapshot.depth.max(lag + pending);
            snapshot.in_flight += pending;
            snapshot.groups.push(GroupStats {
                consumers: active.get(name.as_str()).copied().unwrap_or(0),
                name,
                lag: lag + pending,
                in_flight: pending,
                ..GroupStats::default()
            });
        }
        // Release `active` first: `stats` takes `snapshot`, then `active`; the other order could deadlock.
        drop(active);
        *self.snapshot.lock() = snapshot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_a_redis_url_never_reaches_logs_or_errors() {
        let config = RedisConfig::new("rediss://wsmq:hunter2@redis.example:6380/0");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("rediss://***@redis.example:6380/0"),
            "{shown}"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let err = RedisQueue::open(
            RedisConfig::new("http://user:hunter2@host"),
            QueueOptions::default(),
        )
        .expect_err("not a redis URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn stream_ids_carry_the_offset() {
        assert_eq!(entry_id(42), "0-42");
        assert_eq!(parse_offset(b"0-42"), Some(42));
        assert_eq!(parse_offset(b"garbage"), None);
    }
}
