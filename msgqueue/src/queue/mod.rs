//! The queue engine: a durable, acked FIFO of opaque messages with leases, redelivery, producer dedup and
//! bounded memory, over a pluggable [storage backend](storage::Storage).
//!
//! Every stored message gets a monotonically increasing `u64` offset, which is also its delivery id. Messages are
//! dispatched in offset order (returned leases first). A delivered message is leased to its consumer until acked;
//! a lease whose consumer goes away or does not ack within the lease timeout goes back to the front of the queue.
//!
//! The local engine (`LocalQueue`, memory and disk) is cut in three layers:
//! - the **log** (`storage.rs`: `Log` + `GroupStore` + `DeadStore`, implemented by `memory.rs`
//!   and the segment log `log.rs`): assigns offsets, keeps producer dedup marks, makes messages, group
//!   records and dead letters durable, reads back, trims below the slowest group's floor. Snapshots and dedup
//!   records are its private business.
//! - the **groups** (`group.rs`): per consumer group a cursor, read-ahead, pending leased deliveries (leases,
//!   returned messages, delivery counts), reclaiming expired leases, its ack floor and lag; the minimum floor over
//!   groups is what the log is trimmed below.
//! - the **dispatcher** (`State` here and `consumer.rs`): consumers' credit windows, waiters and batching, the
//!   in-memory tail of the log that groups take from, dead-lettering, and the registry of groups (join, leave,
//!   idle groups dropped).
//!
//! What runs under which lock:
//! - `State`'s lock (groups and dispatcher together) is taken once per batch and never held across `.await`. It
//!   never calls storage: acks, dead letters, group records and trims decided under it are queued and handed to
//!   storage after it is released, in the order they were decided (`deferred.rs`).
//! - A push batch holds `Inner::appending` (never taken under the state lock) from its dedup checks through the
//!   topic history's numbering and the log's append (which only buffers: the segment log hands the records to its
//!   writer thread) to putting the messages into the tail, for which it takes the state lock briefly: offsets,
//!   topic positions and the tail follow one order while dispatch goes on during the append.
//! - Disk reads (read-ahead of a group behind the tail, dead letters) run on the blocking pool without any engine
//!   lock; recovery runs in `spawn_blocking` before the engine exists.
//!
//! What remains of the re-cut: groups and dispatcher are separate modules but share `State`'s one lock, and the
//! steps that span both (`State::fill`, `ack_in`, `create_group`, `sweep`) are methods of `State`; a push takes
//! that lock twice per batch (capacity check, then tail).
//!
//! The engine counts deliveries per message: a message delivered `max_deliveries` times without an ack, or one a
//! consumer NACKs, becomes a [dead letter](dead) instead of blocking the queue (counts start again from zero after
//! a restart, so a poison message costs at most `max_deliveries` deliveries per process lifetime). A message
//! returned unacked twice is delivered alone from then on, so only the poison message itself reaches the limit.

mod consumer;
mod dead;
mod dedup;
mod deferred;
mod group;
mod handle;
pub mod history;
mod journal;
mod log;
mod memory;
mod rangeset;
mod record;
mod redis;
mod schedule;
mod storage;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use consumer::{ConsumeMode, Delivery};
pub use handle::{Consumer, Queue};
pub use history::local::HistoryStats;
pub use history::{
    Epoch, HistoryOptions, HistoryPage, HistoryQuery, HistoryRule, Position, Retention,
};

use consumer::LocalConsumer;
pub use dead::{DeadLetter, DeadReason};
pub use redis::{RedisConfig, RedisError};
pub use schedule::{Scheduled, ScheduledPush, run as run_scheduler};
pub use storage::StorageError;
pub use wsmq_core::protocol::group::{DEFAULT_GROUP, GroupName, InvalidGroupName, StartAt};

use dead::DeadIndex;
use deferred::{Queued, Sequencer, StorageOp};
use group::{Group, Lease, ReadRequest};
use record::GroupMark;
use storage::{Entry, Storage};

/// Largest payload one read of the log brings back into a group's read-ahead.
const READ_CHUNK: u64 = 1024 * 1024;
/// How often pushes look for groups idle beyond `--group-idle-ttl`.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Unacked deliveries after which a message is a suspect: it is delivered alone, to a consumer holding nothing
/// else, so a consumer that keeps failing on it does not use up the delivery counts of the healthy messages that
/// happened to share its window.
const SUSPECT_AFTER: u32 = 2;

/// Where the queue keeps its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// RAM only: for tests and benchmarks; a restart loses everything.
    Memory,
    /// The durable segment log in `dir` (created if missing).
    Disk {
        /// Directory holding the segment files; one queue per directory.
        dir: PathBuf,
    },
    /// A stream in a shared Redis (or a Redis-compatible server): msgqueue keeps no state of its own, so several
    /// msgqueue processes can serve one queue.
    Redis(RedisConfig),
}

/// When the disk log fsyncs, i.e. what a producer's ack promises (the `--fsync` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Ack after fsync; concurrent pushes share one fsync (group commit). Survives power loss.
    #[default]
    Always,
    /// Ack after the write reaches the OS; fsync at most this often. Survives a process crash; a power loss may
    /// lose up to the interval.
    Interval(Duration),
    /// Ack at once; write but never fsync explicitly. Fastest; a crash may lose recent messages.
    Never,
}

/// The `--fsync` value was not `always`, `interval=MS` or `never`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid fsync policy {0:?}: expected always, interval=MS or never")]
pub struct ParseFsyncPolicyError(String);

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => s
                .strip_prefix("interval=")
                .and_then(|ms| ms.parse::<u64>().ok())
                .filter(|&ms| ms > 0)
                .map(|ms| Self::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| ParseFsyncPolicyError(s.to_owned())),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Interval(every) => write!(f, "interval={}", every.as_millis()),
            Self::Never => f.write_str("never"),
        }
    }
}

/// Tuning of a queue; `Default` gives production-safe values.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Capacity in unacked payload bytes; pushes beyond it get [`PushError::Full`].
    pub max_bytes: u64,
    /// Payload bytes of not-yet-delivered messages kept in RAM; the rest is read back from disk when dispatch
    /// reaches it (disk backend only), so memory stays bounded however large the backlog.
    pub memory_budget: u64,
    /// How long a consumer may hold a delivery without acking before it is redelivered.
    pub lease_timeout: Duration,
    /// Durability of producer acks (disk backend).
    pub fsync: FsyncPolicy,
    /// Segment file size at which the log starts a new file; deletion works per segment.
    pub segment_size: u64,
    /// Producer ids whose dedup marks are remembered (at most a million); beyond it the least recently seen is
    /// forgotten, and a retry from a forgotten producer would be stored again.
    pub max_producers: usize,
    /// Deliveries of one message without an ack after which it becomes a dead letter instead of being delivered
    /// again (at least 1).
    pub max_deliveries: u32,
    /// Dead letters kept; beyond it the oldest is dropped (and counted).
    pub max_dead_letters: usize,
    /// How long a consumer group may have no consumer before it is dropped, so it stops pinning the log.
    pub group_idle_ttl: Duration,
    /// Which topics keep how much history.
    pub history: HistoryOptions,
}

impl QueueOptions {
    /// The largest payload either engine stores: within `max_bytes` and what one log record can hold.
    pub(crate) fn max_payload(&self) -> usize {
        usize::try_from(self.max_bytes)
            .unwrap_or(usize::MAX)
            .min(record::MAX_PAYLOAD)
    }
}

/// Milliseconds since the Unix epoch, for the times stored with dead letters and in Redis (0 if the clock is
/// before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024 * 1024,
            memory_budget: 64 * 1024 * 1024,
            lease_timeout: Duration::from_secs(30),
            fsync: FsyncPolicy::Always,
            segment_size: 64 * 1024 * 1024,
            max_producers: 10_000,
            max_deliveries: 5,
            max_dead_letters: 10_000,
            group_idle_ttl: Duration::from_secs(3600),
            history: HistoryOptions::default(),
        }
    }
}

/// Identifies a reliable-mode push for dedup.
///
/// A producer uses strictly increasing `seq` values per `id` and retries a message with its original seq. A push
/// whose seq is at or below the highest seq already stored for that id is a [`Pushed::Duplicate`]. Hence a
/// producer must not reuse a seq that was rejected (e.g. `Full`) once a later seq has been stored: it retries
/// rejected messages in order before sending newer ones (a batch stops at its first rejection for this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Producer {
    /// The producer's stable id (survives its reconnects).
    pub id: u64,
    /// Sequence number of this message within the producer.
    pub seq: u64,
}

/// Names a log position (and, in the local engine, a history file position appended with it);
/// [`Queue::wait_durable`] resolves once everything up to it is durable. Both parts grow in push order, so the
/// larger of two tokens covers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurableToken {
    log: u64,
    history: u64,
}

impl DurableToken {
    /// A position in the log alone.
    pub(crate) fn at(log: u64) -> Self {
        Self { log, history: 0 }
    }
}

/// The outcome of an accepted push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Stored as a new message.
    Stored {
        /// The message's offset (its future delivery id).
        offset: u64,
        /// Await with [`Queue::wait_durable`] before acking the producer.
        durable: DurableToken,
        /// Its place in its topic's history; `None` when the topic keeps none (or the message is no envelope).
        position: Option<Position>,
    },
    /// A retry of an already stored (producer, seq): ack again, it is not stored twice.
    Duplicate {
        /// Covers the original too, so the retry is acked only once the original is durable.
        durable: DurableToken,
    },
    /// Handed to a log that assigns offsets and recognises duplicates itself when it applies the batch (the Redis
    /// backend, shared by several msgqueue processes): the offset is not known yet.
    Submitted {
        /// Await with [`Queue::wait_durable`] before acking the producer.
        durable: DurableToken,
        /// Filled in with the message's place in its topic when the log applies it; `None` when the topic keeps
        /// no history.
        placement: Option<Placement>,
    },
}

impl Pushed {
    /// The token to wait on before acking the producer, whichever the outcome.
    pub fn durable(&self) -> DurableToken {
        match *self {
            Self::Stored { durable, .. }
            | Self::Duplicate { durable }
            | Self::Submitted { durable, .. } => durable,
        }
    }

    /// The message's place in its topic's history, once [`Pushed::durable`] is: `None` when it got none (no
    /// history for its topic, a duplicate, or a log that applied it without saying where, see [`Placement`]).
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::Stored { position, .. } => *position,
            Self::Duplicate { .. } => None,
            Self::Submitted { placement, .. } => placement.as_ref().and_then(Placement::get),
        }
    }
}

/// Where a submitted push lands in its topic, filled in by the log that applies it (before its durability token
/// resolves). It stays empty if the log applied the push without saying where (a batch whose reply was lost and
/// that was recognised as applied when sent again).
#[derive(Debug, Clone, Default)]
pub struct Placement(Arc<OnceLock<Position>>);

impl Placement {
    /// The position, once the log has applied the push.
    pub fn get(&self) -> Option<Position> {
        self.0.get().copied()
    }

    /// Records the position the log assigned.
    pub(crate) fn set(&self, position: Position) {
        let _ = self.0.set(position);
    }
}

impl PartialEq for Placement {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Placement {}

/// Why a push was refused; nothing was stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PushError {
    /// Capacity (`max_bytes`) reached, or the log writer is too far behind: retry after
    /// [`Queue::wait_for_space`].
    #[error("queue is full")]
    Full,
    /// The payload can never fit (larger than `max_bytes` or the record limit).
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The queue is shutting down.
    #[error("queue is closed")]
    Closed,
    /// The log's disk is full: retry after [`Queue::wait_for_space`], which resolves once the log could write
    /// again.
    #[error("queue storage is full")]
    NoSpace,
    /// The log cannot store anything any more.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a replay of dead letters stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the dead letters or waiting for the replayed copies failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The queue refused a replayed message; the ones before it were replayed.
    #[error("replayed {replayed}, then the queue refused the next: {source}")]
    Refused {
        /// Dead letters replayed before the refusal.
        replayed: usize,
        /// Why the push was refused.
        source: PushError,
    },
}

/// Why a queue operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The queue is shutting down.
    #[error("queue is closed")]
    Closed,
    /// The backend failed (opening, recovering, writing or reading back).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Redis backend failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// Where recovery cut a segment short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte position of the first torn or corrupt record (the new file length).
    pub position: u64,
    /// Bytes removed.
    pub dropped_bytes: u64,
}

/// What [`Queue::open`] found, for the startup log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unacked messages recovered (they will be delivered again).
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// The offset the next push gets.
    pub next_offset: u64,
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Torn or corrupt tails that were truncated (empty after a clean shutdown).
    pub truncated: Vec<Truncation>,
    /// The consumer groups recovered.
    pub groups: Vec<String>,
}

/// A point-in-time view for metrics and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages the slowest consumer group has not acked (waiting or leased).
    pub depth: u64,
    /// Their payload bytes (what `max_bytes` limits).
    pub bytes: u64,
    /// Messages leased to consumers and not yet acked.
    pub in_flight: u64,
    /// Payload bytes of undelivered messages held in RAM (at most about `memory_budget` for the disk backend;
    /// the rest of the backlog is on disk only).
    pub memory_bytes: u64,
    /// Attached consumers.
    pub consumers: usize,
    /// Total messages stored since open.
    pub pushed: u64,
    /// Total retried pushes recognised as duplicates.
    pub duplicates: u64,
    /// Total deliveries, redeliveries included.
    pub delivered: u64,
    /// Total messages acked (AutoAck deliveries included).
    pub acked: u64,
    /// Total redeliveries of returned leases.
    pub redelivered: u64,
    /// Total leases returned because they were not acked in time.
    pub lease_expired: u64,
    /// Total pushes refused with `Full`.
    pub rejected_full: u64,
    /// Total pushes refused with `NoSpace`.
    pub rejected_no_space: u64,
    /// Dead letters kept now.
    pub dead_letters: u64,
    /// Total messages that became dead letters because a consumer NACKed them.
    pub dead_nacked: u64,
    /// Total messages that became dead letters after `max_deliveries` deliveries.
    pub dead_max_deliveries: u64,
    /// Total dead letters dropped because more than `max_dead_letters` were kept.
    pub dead_evicted: u64,
    /// Total dead letters replayed into the queue.
    pub dead_replayed: u64,
    /// Total consumer groups dropped after `group_idle_ttl` without a consumer.
    pub groups_dropped: u64,
    /// Each consumer group.
    pub groups: Vec<GroupStats>,
}

/// A point-in-time view of one consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// Messages of the log the group has not acked (waiting, read ahead or leased).
    pub lag: u64,
    /// Their payload bytes.
    pub lag_bytes: u64,
    /// Attached consumers.
    pub consumers: usize,
    /// Deliveries leased to its consumers and not yet acked.
    pub in_flight: u64,
    /// Total deliveries, redeliveries included.
    pub delivered: u64,
    /// Total redeliveries.
    pub redelivered: u64,
    /// Total messages acked (AutoAck deliveries included).
    pub acked: u64,
}

/// A consumer's dispatch state.
#[derive(Debug)]
struct Slot {
    mode: ConsumeMode,
    /// The id of the consumer's group.
    group: u32,
    window: u64,
    in_flight: u64,
    notify: Arc<Notify>,
    /// Queued in its group's waiters.
    waiting: bool,
    /// Blocked on its window; wake it when a lease of its own goes away.
    wants_credit: bool,
}

/// Everything mutable, behind one lock.
#[derive(Debug)]
struct State {
    closed: bool,
    next_offset: u64,
    /// The newest messages in RAM: exactly the offsets `[tail_start, next_offset)`. Groups take from here; a group
    /// behind `tail_start` reads the log back instead.
    tail: VecDeque<(u64, Bytes)>,
    tail_bytes: u64,
    tail_start: u64,
    /// Messages and payload bytes appended to the log, counted from an arbitrary base; a group's lag is these
    /// minus what it settled.
    log_messages: u64,
    log_bytes: u64,
    groups: Vec<Group>,
    next_group_id: u32,
    consumers: HashMap<u64, Slot>,
    next_consumer: u64,
    floor_reported: u64,
    /// A push was refused for lack of space, so frees must notify space waiters.
    full: bool,
    /// When idle groups are looked for next.
    next_sweep: Instant,
    dead: DeadIndex,
    /// Storage work and log lines decided under the lock, done by the caller once it has let go of it.
    queued: Queued,
    /// The log keeps its payloads in RAM itself ([`storage::Log::in_memory`]).
    in_memory: bool,
    stats: QueueStats,
}

/// What one dispatch attempt achieved.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Delivered,
    NoCredit,
    Empty,
    /// Messages exist but are not written to the log yet, so they cannot be read back.
    AwaitWrite,
}

impl State {
    fn group(&self, id: u32) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    fn group_mut(&mut self, id: u32) -> Option<&mut Group> {
        self.groups.iter_mut().find(|g| g.id == id)
    }

    fn group_named(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| &*g.name == name)
    }

    /// Messages of the slowest group not yet acked, and their bytes: what `max_bytes` bounds.
    fn backlog(&self) -> (u64, u64) {
        self.groups
            .iter()
            .map(|g| {
                (
                    self.log_messages.saturating_sub(g.settled),
                    self.log_bytes.saturating_sub(g.settled_bytes),
                )
            })
            .fold((0, 0), |(m, b), (gm, gb)| (m.max(gm), b.max(gb)))
    }

    /// The lowest offset some group may not have acked: everything below it can be forgotten by the log.
    fn floor(&self) -> u64 {
        self.groups
            .iter()
            .map(Group::floor)
            .min()
            .unwrap_or(self.next_offset)
    }

    /// The ack floor of group `id` (the tail for a group that is gone).
    fn group_floor(&self, id: u32) -> u64 {
        self.group(id).map_or(self.next_offset, Group::floor)
    }

    fn report_floor(&mut self) {
        let floor = self.floor();
        if floor > self.floor_reported {
            self.floor_reported = floor;
            self.queued.ops.push(StorageOp::TrimBefore(floor));
        }
    }

    /// Drops tail messages no group needs from RAM, and (when the log can read them back) the oldest beyond half
    /// the memory budget; the other half is for the groups' read-ahead.
    fn trim_tail(&mut self, budget: u64) {
        let reads_back = !self.in_memory;
        let needed = self
            .groups
            .iter()
            .map(|g| g.next)
            .min()
            .unwrap_or(self.next_offset);
        while let Some((offset, payload)) = self.tail.front() {
            if *offset >= needed && !(reads_back && self.tail_bytes > budget / 2) {
                break;
            }
            self.tail_bytes -= payload.len() as u64;
            self.tail_start = offset + 1;
            self.tail.pop_front();
        }
    }

    fn wake_group(&mut self, group: u32, mut count: usize) {
        while count > 0 {
            let Some(id) = self.group_mut(group).and_then(|g| g.waiters.pop_front()) else {
                return;
            };
            if let Some(slot) = self.consumers.get_mut(&id)
                && slot.waiting
            {
                slot.waiting = false;
                slot.notify.notify_one();
                count -= 1;
            }
        }
    }

    /// Wakes up to `count` waiting consumers in every group (new messages are for all of them).
    fn wake_waiters(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        for index in 0..self.groups.len() {
            let id = self.groups[index].id;
            if !self.groups[index].waiters.is_empty() {
                self.wake_group(id, count);
            }
        }
    }

    /// Takes consumer `id` off its group's waiter list (it is about to dispatch, or gone), so wake-ups go to
    /// consumers that are really waiting.
    fn unregister(&mut self, id: u64) -> bool {
        let Some(slot) = self.consumers.get_mut(&id) else {
            return false;
        };
        let was_waiting = std::mem::take(&mut slot.waiting);
        let group = slot.group;
        if was_waiting && let Some(g) = self.group_mut(group) {
            g.waiters.retain(|&w| w != id);
        }
        was_waiting
    }

    /// One lease of `owner` went away: free its credit and wake it if it was blocked on credit.
    fn release_credit(&mut self, owner: u64) {
        if let Some(slot) = self.consumers.get_mut(&owner) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if slot.wants_credit {
                slot.wants_credit = false;
                slot.notify.notify_one();
            }
        }
    }

    /// Returns expired leases of every group to redelivery and wakes as many waiters.
    fn expire(&mut self, now: Instant) {
        for index in 0..self.groups.len() {
            let group = &mut self.groups[index];
            let expired = group.reclaim_expired(now);
            let id = group.id;
            self.stats.lease_expired += expired.len() as u64;
            let count = expired.len();
            for owner in expired {
                self.release_credit(owner);
            }
            self.wake_group(id, count);
        }
    }

    /// The earliest lease deadline of `group`.
    fn next_deadline(&self, group: u32) -> Option<Instant> {
        self.group(group).and_then(Group::next_deadline)
    }

    /// Removes a message acked by `group`; returns whether it was unacked.
    fn remove_acked(&mut self, group: u32, offset: u64) -> bool {
        let Some((payload, _)) = self.take_unacked(group, offset) else {
            return false;
        };
        self.stats.acked += 1;
        if let Some(g) = self.group_mut(group) {
            g.counters.acked += 1;
            g.settle(payload.len());
        }
        true
    }

    /// Takes a leased or returned message out of `group`; returns its payload and delivery count.
    fn take_unacked(&mut self, group: u32, offset: u64) -> Option<(Bytes, u32)> {
        let (returned, owner) = self.group_mut(group)?.take_unacked(offset)?;
        if let Some(owner) = owner {
            self.release_credit(owner);
        }
        Some((returned.payload, returned.deliveries))
    }

    /// Turns a message already taken out of `group` into a dead letter: stores it (durably before the ack that
    /// follows) and queues it for logging in `unlogged`.
    fn bury(
        &mut self,
        options: &QueueOptions,
        group: u32,
        offset: u64,
        payload: &Bytes,
        deliveries: u32,
        reason: DeadReason,
    ) {
        let name = self.group(group).map_or(DEFAULT_GROUP, |g| &*g.name);
        let letter = DeadLetter::now(offset, reason, deliveries, payload.len(), name);
        self.queued.unlogged.letters.push(letter.clone());
        match reason {
            DeadReason::Nacked(_) => self.stats.dead_nacked += 1,
            DeadReason::MaxDeliveries => self.stats.dead_max_deliveries += 1,
        }
        self.queued.ops.push(StorageOp::Dead {
            letter: letter.clone(),
            payload: payload.clone(),
        });
        if let Some(g) = self.group_mut(group) {
            g.settle(payload.len());
        }
        let floor = self.group_floor(group);
        self.queued.ops.push(StorageOp::Ack {
            group,
            offsets: vec![offset],
            floor,
        });
        let evicted = self.dead.insert(letter, options.max_dead_letters);
        if !evicted.is_empty() {
            self.queued.unlogged.evicted += evicted.len();
            self.stats.dead_evicted += evicted.len() as u64;
            self.queued.ops.push(StorageOp::RemoveDead(evicted));
        }
    }

    /// The read-ahead size per read: a quarter of the memory budget shared by the groups reading back.
    fn read_chunk(&self, budget: u64) -> usize {
        let groups = self.groups.len().max(1) as u64;
        usize::try_from((budget / 4 / groups).clamp(1, READ_CHUNK)).unwrap_or(usize::MAX)
    }

    /// The next message of `group` from its read-ahead or the tail; `Err` says why there is none.
    fn fetch(&mut self, index: usize) -> Result<(u64, Bytes), Fill> {
        let group = &mut self.groups[index];
        if let Some((offset, payload)) = group.ahead.pop_front() {
            group.ahead_bytes -= payload.len() as u64;
            return Ok((offset, payload));
        }
        if group.next >= self.next_offset {
            return Err(Fill::Empty);
        }
        if group.next >= self.tail_start {
            let at = usize::try_from(group.next - self.tail_start).unwrap_or(usize::MAX);
            let Some((offset, payload)) = self.tail.get(at) else {
                return Err(Fill::Empty);
            };
            group.next = offset + 1;
            return Ok((*offset, payload.clone()));
        }
        // Behind the tail: the blocking pool reads it back.
        Err(Fill::AwaitWrite)
    }

    /// The read the group at `index` needs to keep its read-ahead filled, if any, and marks it as running.
    fn want_read(&mut self, index: usize, budget: u64, written: u64) -> Option<ReadRequest> {
        let max_bytes = self.read_chunk(budget);
        let tail_start = self.tail_start;
        self.groups[index].read_request(tail_start, max_bytes, written)
    }

    /// Hands up to `max` messages (and what credit allows) to consumer `id` from its group, in offset order.
    /// Returns what it achieved and a read of the log to start for the group's read-ahead.
    fn fill(
        &mut self,
        options: &QueueOptions,
        id: u64,
        max: usize,
        written: u64,
        out: &mut Vec<Delivery>,
    ) -> Result<(Fill, Option<ReadRequest>), StorageError> {
        let Some(slot) = self.consumers.get(&id) else {
            return Ok((Fill::Empty, None));
        };
        let mode = slot.mode;
        let group_id = slot.group;
        let Some(index) = self.groups.iter().position(|g| g.id == group_id) else {
            return Ok((Fill::Empty, None));
        };
        if let Some(err) = self.groups[index].read_error.take() {
            return Err(err);
        }
        let limit = match mode {
            ConsumeMode::Acked => {
                let credit = slot.window.saturating_sub(slot.in_flight);
                if credit == 0 {
                    return Ok((Fill::NoCredit, None));
                }
                max.min(usize::try_from(credit).unwrap_or(usize::MAX))
            }
            ConsumeMode::AutoAck => max,
        };
        let deadline = Instant::now() + options.lease_timeout;
        let mut delivered = 0;
        let mut auto_acked = Vec::new();
        let mut outcome = Fill::Empty;
        let mut buried = false;
        let mut alone = false;
        let in_flight = slot.in_flight;
        while delivered < limit {
            let group = &mut self.groups[index];
            let (offset, payload, deliveries) =
                if let Some((offset, returned)) = group.redeliver.pop_first() {
                    if mode == ConsumeMode::Acked
                        && returned.deliveries >= options.max_deliveries.max(1)
                    {
                        let reason = DeadReason::MaxDeliveries;
                        let (payload, count) = (returned.payload, returned.deliveries);
                        self.bury(options, group_id, offset, &payload, count, reason);
                        buried = true;
                        continue;
                    }
                    if mode == ConsumeMode::Acked && returned.deliveries >= SUSPECT_AFTER {
                        if delivered > 0 || in_flight > 0 {
                            // It goes out alone: after this batch, or once this consumer's leases are settled.
                            group.redeliver.insert(offset, returned);
                            if delivered == 0 {
                                outcome = Fill::NoCredit;
                            }
                            break;
                        }
                        alone = true;
                    }
                    (offset, returned.payload, returned.deliveries)
                } else {
                    match self.fetch(index) {
                        Ok((offset, payload)) => (offset, payload, 0),
                        Err(Fill::AwaitWrite) => {
                            let group = &self.groups[index];
                            if !group.reading && group.stalled_at == Some(written) {
                                outcome = Fill::AwaitWrite;
                            }
                            break;
                        }
                        Err(_) => break,
                    }
                };
            let redelivered = deliveries > 0;
            let group = &mut self.groups[index];
            match mode {
                ConsumeMode::Acked => {
                    let lease = Lease {
                        owner: id,
                        payload: payload.clone(),
                        deadline,
                        deliveries: deliveries.saturating_add(1),
                    };
                    group.lease(offset, lease);
                }
                ConsumeMode::AutoAck => {
                    group.settle(payload.len());
                    group.counters.acked += 1;
                    self.stats.acked += 1;
                    auto_acked.push(offset);
                }
            }
            group.counters.delivered += 1;
            group.counters.redelivered += u64::from(redelivered);
            self.stats.delivered += 1;
            self.stats.redelivered += u64::from(redelivered);
            let (position, payload) = history::unstamp(payload);
            out.push(Delivery {
                id: offset,
                payload,
                redelivered,
                position,
            });
            delivered += 1;
            if alone {
                break;
            }
        }
        let read = self.want_read(index, options.memory_budget, written);
        if buried {
            self.report_floor();
        }
        if delivered == 0 {
            return Ok((outcome, read));
        }
        if let Some(slot) = self.consumers.get_mut(&id)
            && mode == ConsumeMode::Acked
        {
            slot.in_flight += delivered as u64;
        }
        if !auto_acked.is_empty() {
            let floor = self.groups[index].floor();
            self.queued.ops.push(StorageOp::Ack {
                group: group_id,
                offsets: auto_acked,
                floor,
            });
        }
        self.trim_tail(options.memory_budget);
        self.report_floor();
        Ok((Fill::Delivered, read))
    }

    /// Creates group `name` (it must not exist) starting at `start`; returns its id. Its creation record is queued
    /// for storage; [`deferred::Deferred::finish`] returns its token.
    fn create_group(&mut self, name: Arc<str>, start: StartAt, now: Instant) -> u32 {
        let id = self.next_group_id;
        self.next_group_id += 1;
        let at = match start {
            StartAt::Tail => self.next_offset,
            StartAt::Oldest if !self.in_memory => self.floor().min(self.floor_reported),
            StartAt::Oldest => self.tail_start,
        };
        let mut group = Group::new(id, name, at, now);
        // Its lag: everything from `at` on. Exact for the memory backend (the tail holds it all); for the disk
        // log, the backlog of the slowest group, which starts at the same place.
        let (messages, bytes) = if at == self.next_offset {
            (0, 0)
        } else if !self.in_memory {
            self.backlog()
        } else {
            (self.tail.len() as u64, self.tail_bytes)
        };
        group.settled = self.log_messages.saturating_sub(messages);
        group.settled_bytes = self.log_bytes.saturating_sub(bytes);
        self.queued.ops.push(StorageOp::CreateGroup(GroupMark {
            id,
            floor: at,
            name: group.name.to_string(),
        }));
        self.groups.push(group);
        id
    }

    /// Drops every group without consumers for `ttl` (none while the queue closes).
    fn sweep(&mut self, ttl: Duration, now: Instant) {
        self.next_sweep = now + SWEEP_EVERY.min(ttl);
        let before = self.groups.len();
        let mut dropped = Vec::new();
        self.groups.retain(|g| {
            let idle = g.consumers == 0 && g.idle_since.is_some_and(|since| now >= since + ttl);
            if idle {
                dropped.push((g.id, Arc::clone(&g.name)));
            }
            !idle
        });
        if self.groups.len() == before {
            return;
        }
        for (id, name) in dropped {
            self.queued.ops.push(StorageOp::DropGroup(id));
            self.stats.groups_dropped += 1;
            self.queued.unlogged.dropped.push(name);
        }
        self.trim_tail(u64::MAX);
        self.report_floor();
    }

    /// Whether the default group has never been read: it exists only because the queue was opened, holding
    /// what is pushed until the first consumer comes. (No consumer joined it since the queue opened and it never
    /// moved past offset 0; after a restart, a default group that had consumers but never acked anything counts as
    /// never read.) Then the first group created, whatever its name, takes
    /// that over (see [`Queue::join`]) instead of the default group pinning the log until it idles out.
    fn default_never_read(&self) -> bool {
        self.groups
            .iter()
            .any(|g| g.id == record::DEFAULT_GROUP_ID && g.never_read())
    }

    /// Removes the never-read default group once `taker` holds everything it held.
    fn hand_over_default(&mut self, taker: Arc<str>) {
        self.groups.retain(|g| g.id != record::DEFAULT_GROUP_ID);
        self.queued
            .ops
            .push(StorageOp::DropGroup(record::DEFAULT_GROUP_ID));
        self.queued.unlogged.took_over_default = Some(taker);
        self.trim_tail(u64::MAX);
        self.report_floor();
    }
}

/// The shared inside of a [`LocalQueue`] handle.
struct Inner {
    state: Mutex<State>,
    storage: Box<dyn Storage>,
    history: history::local::LocalHistory,
    options: QueueOptions,
    /// Notified when space frees up after a push was refused as full.
    space: Arc<Notify>,
    /// Held by a push batch from its dedup checks to putting its messages in the tail (taken before `state`,
    /// never the other way round), so log offsets, topic positions and the tail follow one order while the
    /// state lock is free for dispatch during the log's append.
    appending: Mutex<()>,
    /// Applies the storage work queued under the state lock in the order it was decided.
    sequencer: Sequencer,
    /// Replays run one at a time, so one dead letter is never replayed twice.
    replaying: tokio::sync::Mutex<()>,
}

/// The engine of the memory and disk backends: one process owns the log; cheap to clone, all clones share one
/// queue.
#[derive(Clone)]
pub(crate) struct LocalQueue {
    inner: Arc<Inner>,
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl LocalQueue {
    /// Opens a queue in RAM (`dir` is `None`) or on the segment log in `dir`, recovering a disk log (a torn or corrupt tail is truncated and reported, never
    /// a panic). Fails only if the directory or its files cannot be used. Blocking (recovery reads the whole
    /// log): async callers run it on the blocking pool.
    pub(crate) fn open(
        dir: Option<PathBuf>,
        options: QueueOptions,
    ) -> Result<(Self, RecoveryReport), QueueError> {
        let space = Arc::new(Notify::new());
        let (storage, recovered, history): (Box<dyn Storage>, Option<log::Recovered>, _) = match dir
        {
            None => (
                Box::new(memory::MemoryLog::new(options.max_producers)),
                None,
                history::local::LocalHistory::in_memory(options.history.clone()),
            ),
            Some(dir) => {
                let (log, recovered) = log::DiskLog::open(
                    &dir,
                    options.fsync,
                    options.segment_size,
                    options.max_producers,
                    Arc::clone(&space),
                )?;
                let history = history::local::LocalHistory::open(
                    options.history.clone(),
                    &dir.join("history"),
                    options.fsync,
                    now_ms(),
                )?;
                (Box::new(log), Some(recovered), history)
            }
        };
        Ok(Self::assemble(storage, recovered, history, options, space))
    }

    /// Builds the engine over an opened `storage` and what its recovery found.
    fn assemble(
        storage: Box<dyn Storage>,
        recovered: Option<log::Recovered>,
        history: history::local::LocalHistory,
        options: QueueOptions,
        space: Arc<Notify>,
    ) -> (Self, RecoveryReport) {
        let now = Instant::now();
        let mut report = RecoveryReport::default();
        let mut state = State {
            closed: false,
            next_offset: 0,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_start: 0,
            log_messages: 0,
            log_bytes: 0,
            groups: vec![Group::new(
                record::DEFAULT_GROUP_ID,
                Arc::from(DEFAULT_GROUP),
                0,
                now,
            )],
            next_group_id: record::DEFAULT_GROUP_ID + 1,
            consumers: HashMap::new(),
            next_consumer: 0,
            floor_reported: 0,
            full: false,
            next_sweep: now + SWEEP_EVERY.min(options.group_idle_ttl),
            dead: DeadIndex::default(),
            queued: Queued::default(),
            in_memory: storage.in_memory(),
            stats: QueueStats::default(),
        };
        if let Some(recovered) = recovered {
            let next = recovered.next_offset;
            state.next_offset = next;
            state.tail_start = next;
            state.next_group_id = recovered.next_group_id;
            // Lag is counted from a base at least as large as any group's backlog.
            state.log_messages = recovered
                .groups
                .iter()
                .map(|g| g.messages)
                .max()
                .unwrap_or(0);
            state.log_bytes = recovered.groups.iter().map(|g| g.bytes).max().unwrap_or(0);
            state.groups = recovered
                .groups
                .into_iter()
                .map(|found| {
                    let mut group =
                        Group::new(found.id, Arc::from(found.name), found.first_unacked, now);
                    group.skip = found.acked;
                    group.settled = state.log_messages - found.messages;
                    group.settled_bytes = state.log_bytes - found.bytes;
                    if found.unacked_end < next {
                        // Offsets lost to a truncation at the very end are not messages to read back.
                        group.skip.insert(found.unacked_end, next);
                    }
                    group
                })
                .collect();
            state.floor_reported = state.floor();
            state.dead = DeadIndex::new(recovered.dead);
            let (messages, bytes) = state.backlog();
            report = RecoveryReport {
                messages,
                bytes,
                next_offset: next,
                segments: recovered.segments,
                truncated: recovered.truncations,
                groups: state.groups.iter().map(|g| g.name.to_string()).collect(),
            };
        }
        let inner = Inner {
            state: Mutex::new(state),
            storage,
            history,
            options,
            space,
            appending: Mutex::new(()),
            sequencer: Sequencer::default(),
            replaying: tokio::sync::Mutex::new(()),
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            report,
        )
    }

    /// Stores one message. `producer` is `None` for compat (at-most-once) pushers, which skip dedup.
    pub(crate) fn push(
        &self,
        producer: Option<Producer>,
        payload: Bytes,
    ) -> Result<Pushed, PushError> {
        let mut out = Vec::with_capacity(1);
        self.push_batch([(producer, payload)], &mut out);
        out.pop().unwrap_or(Err(PushError::Closed))
    }

    /// Stores a batch (e.g. one WebSocket frame's worth) under one acquisition of the appending lock (and two short
    /// ones of the state lock: capacity before, tail after), appending one result per item to `out`. After a `Full`, `Closed` or storage error the remaining items fail the same way, so a producer's
    /// messages are never stored out of order; `TooLarge` fails only its own item.
    pub(crate) fn push_batch<I>(&self, items: I, out: &mut Vec<Result<Pushed, PushError>>)
    where
        I: IntoIterator<Item = (Option<Producer>, Bytes)>,
    {
        let inner = &*self.inner;
        // Topics are read before any lock: the parse is the costliest step of a push.
        let items: Vec<(Option<Producer>, Bytes)> = items.into_iter().collect();
        let topics: Vec<_> = items
            .iter()
            .map(|(_, payload)| history::topic_of(payload))
            .collect();
        let _appending = inner.appending.lock();
        let mut batch = {
            let mut state = inner.state.lock();
            let now = Instant::now();
            if now >= state.next_sweep && !state.closed {
                state.sweep(inner.options.group_idle_ttl, now);
            }
            let batch = Batch {
                closed: state.closed,
                used: state.backlog().1,
                ..Batch::default()
            };
            let deferred = state.queued.take(inner);
            drop(state);
            deferred.finish();
            batch
        };
        // The log, dedup and topic history are called here, without the state lock.
        let mut failure: Option<PushError> = None;
        let now_ms = now_ms();
        for ((producer, payload), topic) in items.iter().zip(&topics) {
            let result = match &failure {
                Some(err) => Err(err.clone()),
                None => push_one(
                    inner,
                    &mut batch,
                    *producer,
                    payload.clone(),
                    topic.as_deref(),
                    now_ms,
                ),
            };
            if let Err(err) = &result
                && !matches!(err, PushError::TooLarge { .. })
            {
                failure = Some(err.clone());
            }
            out.push(result);
        }
        let mut state = inner.state.lock();
        let stored = batch.stored.len();
        for (offset, payload) in batch.stored {
            let len = payload.len() as u64;
            state.next_offset = offset + 1;
            state.log_messages += 1;
            state.log_bytes += len;
            if state.tail.is_empty() {
                state.tail_start = offset;
            }
            state.tail_bytes += len;
            state.tail.push_back((offset, payload));
        }
        state.stats.pushed += stored as u64;
        state.stats.duplicates += batch.duplicates;
        state.stats.rejected_full += batch.rejected_full;
        state.stats.rejected_no_space += batch.rejected_no_space;
        if batch.rejected_full + batch.rejected_no_space > 0 {
            state.full = true;
        }
        if stored > 0 {
            state.trim_tail(inner.options.memory_budget);
            state.wake_waiters(stored);
        }
        let deferred = state.queued.take(inner);
        drop(state);
        deferred.finish();
    }

    /// Resolves once the record behind `token` is durable per the fsync policy: after its group's fsync
    /// (`always`), after its write (`interval`), at once (`never`, memory backend). Fails if the log writer failed
    /// or the queue closed before getting there.
    pub(crate) async fn wait_durable(&self, token: DurableToken) -> Result<(), QueueError> {
        if self.inner.options.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        self.inner.history.wait_durable(token.history).await?;
        let Some(mut progress) = self.inner.storage.progress() else {
            return Ok(());
        };
        let progress = progress
            .wait_for(|p| p.durable >= token.log || p.failed.is_some() || p.closed)
            .await
            .map_err(|_| QueueError::Closed)?;
        if progress.durable >= token.log {
            Ok(())
        } else if let Some(err) = &progress.failed {
            Err(StorageError::WriterFailed(err.clone()).into())
        } else {
            Err(QueueError::Closed)
        }
    }

    /// Resolves with the reason once the log's writer thread has died (panicked): nothing more can be made
    /// durable, so msgqueue stops with an error and is restarted, recovering its log. Never resolves while the
    /// writer lives, after a clean close, or for the memory backend, which has no writer.
    pub(crate) async fn writer_died(&self) -> String {
        if let Some(mut progress) = self.inner.storage.progress()
            && let Ok(progress) = progress.wait_for(|p| p.panicked).await
        {
            return progress.failed.clone().unwrap_or_default();
        }
        std::future::pending().await
    }

    /// Resolves when a payload of `len` bytes would fit (or the queue closed), for compat pushers that must stop
    /// reading rather than drop a message. A push may still find the queue full if others took the space; loop.
    pub(crate) async fn wait_for_space(&self, len: usize) {
        loop {
            let notified = self.inner.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let storage = &self.inner.storage;
                let writable = !storage.backlogged() && !storage.no_space();
                let mut state = self.inner.state.lock();
                let max = self.inner.options.max_bytes;
                let fits = state.backlog().1.saturating_add(len as u64) <= max || len as u64 > max;
                if state.closed || (fits && writable) {
                    return;
                }
                state.full = true;
            }
            notified.await;
        }
    }

    /// Attaches a consumer to the `default` group (created at the tail if it was dropped). In
    /// [`ConsumeMode::Acked`] it starts with no credit: call [`Consumer::grant`].
    pub(crate) fn consumer(&self, mode: ConsumeMode) -> LocalConsumer {
        self.attach(&GroupName::default_group(), StartAt::Tail, mode)
            .0
    }

    /// Attaches a consumer to group `name`, creating the group at `start` if it does not exist (`start` is
    /// ignored for an existing group: it resumes after its last ack). Resolves once a new group's creation is
    /// durable, so a crash cannot forget a group that already took messages.
    pub(crate) async fn join(
        &self,
        name: &GroupName,
        start: StartAt,
        mode: ConsumeMode,
    ) -> Result<LocalConsumer, QueueError> {
        let (consumer, created) = self.attach(name, start, mode);
        if let Some(token) = created {
            self.wait_durable(token).await?;
        }
        Ok(consumer)
    }

    fn attach(
        &self,
        name: &GroupName,
        start: StartAt,
        mode: ConsumeMode,
    ) -> (LocalConsumer, Option<DurableToken>) {
        let inner = &*self.inner;
        let mut state = inner.state.lock();
        let now = Instant::now();
        state.sweep(inner.options.group_idle_ttl, now);
        let (group, created) = match state.group_named(name.as_str()) {
            Some(group) => (group.id, false),
            None if state.default_never_read() => {
                let id = state.create_group(name.shared(), StartAt::Oldest, now);
                state.hand_over_default(name.shared());
                (id, true)
            }
            None => (state.create_group(name.shared(), start, now), true),
        };
        if let Some(g) = state.group_mut(group) {
            g.joined = true;
            g.consumers += 1;
            g.idle_since = None;
        }
        let id = state.next_consumer;
        state.next_consumer += 1;
        let notify = Arc::new(Notify::new());
        state.consumers.insert(
            id,
            Slot {
                mode,
                group,
                window: 0,
                in_flight: 0,
                notify: Arc::clone(&notify),
                waiting: false,
                wants_credit: false,
            },
        );
        let deferred = state.queued.take(inner);
        drop(state);
        let token = deferred.finish();
        // The creation record's token (the log's position covers it too, should the log have refused the record).
        let created = created.then(|| token.unwrap_or_else(|| inner.storage.position()));
        (
            LocalConsumer::new(self.clone(), id, group, mode, notify),
            created,
        )
    }

    /// Acks delivery ids of the `default` group; see [`Consumer::ack`].
    pub(crate) fn ack(&self, ids: &[u64]) -> usize {
        self.ack_in(record::DEFAULT_GROUP_ID, ids)
    }

    /// Acks delivery ids of group `group`; returns how many messages this settled. Idempotent: unknown or
    /// already acked ids are ignored; an id whose lease expired is still settled (at-least-once).
    fn ack_in(&self, group: u32, ids: &[u64]) -> usize {
        let inner = &*self.inner;
        let (count, notify_space, deferred) = {
            let mut acked = Vec::with_capacity(ids.len());
            let mut state = inner.state.lock();
            for &id in ids {
                if state.remove_acked(group, id) {
                    acked.push(id);
                }
            }
            if acked.is_empty() {
                return 0;
            }
            let floor = state.group_floor(group);
            let count = acked.len();
            state.queued.ops.push(StorageOp::Ack {
                group,
                offsets: acked,
                floor,
            });
            state.report_floor();
            (
                count,
                std::mem::take(&mut state.full),
                state.queued.take(inner),
            )
        };
        deferred.finish();
        if notify_space {
            inner.space.notify_waiters();
        }
        count
    }

    /// Refuses delivery `id` of the `default` group for good; see [`Consumer::nack`].
    pub(crate) fn nack(&self, id: u64, reason: wsmq_core::protocol::queue::NackReason) -> bool {
        self.nack_in(record::DEFAULT_GROUP_ID, id, reason)
    }

    /// Refuses delivery `id` of group `group` for good on behalf of a consumer (NACK): the message becomes a dead
    /// letter with `reason` and is settled for the group like an acked one. Returns false for an unknown or
    /// already settled id.
    fn nack_in(&self, group: u32, id: u64, reason: wsmq_core::protocol::queue::NackReason) -> bool {
        let inner = &*self.inner;
        let (notify_space, deferred) = {
            let mut state = inner.state.lock();
            let Some((payload, deliveries)) = state.take_unacked(group, id) else {
                return false;
            };
            let reason = DeadReason::Nacked(reason);
            state.bury(&inner.options, group, id, &payload, deliveries, reason);
            state.report_floor();
            let next = state.next_offset;
            if state.group(group).is_some_and(|g| g.has_messages(next)) {
                state.wake_group(group, 1);
            }
            (std::mem::take(&mut state.full), state.queued.take(inner))
        };
        deferred.finish();
        if notify_space {
            inner.space.notify_waiters();
        }
        true
    }

    /// The dead letters kept, oldest first (at most `max_dead_letters`).
    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.state.lock().dead.list()
    }

    /// Pushes dead letters back into the queue as new messages (new offsets, at the back, so every group gets
    /// them), then forgets them: those in `ids`, or all when `ids` is `None`. Unknown ids are ignored. A letter
    /// leaves the dead letters only once its new copy is durable, so a crash in between can duplicate it but never
    /// lose it. Stops at the first refused push (queue full, disk full) and reports it; what was replayed before
    /// stays replayed.
    pub(crate) async fn replay(&self, ids: Option<&[u64]>) -> Result<usize, ReplayError> {
        let inner = Arc::clone(&self.inner);
        let _one_at_a_time = inner.replaying.lock().await;
        let (wanted, fence) = {
            let mut state = inner.state.lock();
            let wanted: Vec<u64> = match ids {
                Some(ids) => ids
                    .iter()
                    .copied()
                    .filter(|&id| state.dead.contains(id))
                    .collect(),
                None => state.dead.list().iter().map(|d| d.id).collect(),
            };
            (wanted, state.queued.fence(&inner))
        };
        // The dead letters listed have been handed to storage once the fence's turn has come.
        fence.finish();
        if wanted.is_empty() {
            return Ok(0);
        }
        // A dead letter is written with the group that carries its ack; wait for it to reach the file.
        let written = inner.storage.position();
        self.wait_written(written).await?;
        let reader = Arc::clone(&inner);
        let payloads = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(wanted.len());
            reader.storage.read_dead(&wanted, &mut out).map(|()| out)
        })
        .await
        .map_err(|_| ReplayError::Queue(QueueError::Closed))?
        .map_err(|err| ReplayError::Queue(err.into()))?;
        let mut replayed = Vec::with_capacity(payloads.len());
        let mut refused = None;
        let mut durable = None;
        for (id, payload) in payloads {
            // A replayed letter is a new message: its old place in its topic is dropped and it gets a new one, as on
            // Redis, whose dead letters keep only the payload.
            let (_, payload) = history::unstamp(payload);
            match self.push(None, payload) {
                Ok(pushed) => {
                    durable = durable.max(Some(pushed.durable()));
                    replayed.push(id);
                }
                Err(err) => {
                    refused = Some(err);
                    break;
                }
            }
        }
        if let Some(token) = durable {
            self.wait_durable(token).await?;
        }
        if !replayed.is_empty() {
            let mut state = inner.state.lock();
            replayed.retain(|&id| state.dead.remove(id));
            state.stats.dead_replayed += replayed.len() as u64;
            state
                .queued
                .ops
                .push(StorageOp::RemoveDead(replayed.clone()));
            let deferred = state.queued.take(&inner);
            drop(state);
            deferred.finish();
        }
        tracing::info!(count = replayed.len(), "replayed dead letters");
        match refused {
            Some(err) => Err(ReplayError::Refused {
                replayed: replayed.len(),
                source: err,
            }),
            None => Ok(replayed.len()),
        }
    }

    /// Resolves once everything up to `token` is written to the OS (whatever the fsync policy).
    async fn wait_written(&self, token: DurableToken) -> Result<(), QueueError> {
        let Some(mut progress) = self.inner.storage.progress() else {
            return Ok(());
        };
        let progress = progress
            .wait_for(|p| p.written >= token.log || p.failed.is_some() || p.closed)
            .await
            .map_err(|_| QueueError::Closed)?;
        match &progress.failed {
            Some(err) if progress.written < token.log => {
                Err(StorageError::WriterFailed(err.clone()).into())
            }
            _ => Ok(()),
        }
    }

    /// Counters and gauges for metrics and readiness; also drops groups idle beyond `--group-idle-ttl`.
    pub(crate) fn stats(&self) -> QueueStats {
        let inner = &*self.inner;
        let mut state = inner.state.lock();
        let now = Instant::now();
        state.expire(now);
        if !state.closed {
            state.sweep(inner.options.group_idle_ttl, now);
        }
        let (depth, bytes) = state.backlog();
        let groups = state
            .groups
            .iter()
            .map(|g| GroupStats {
                name: g.name.to_string(),
                lag: state.log_messages.saturating_sub(g.settled),
                lag_bytes: state.log_bytes.saturating_sub(g.settled_bytes),
                consumers: g.consumers,
                in_flight: g.leases.len() as u64,
                delivered: g.counters.delivered,
                redelivered: g.counters.redelivered,
                acked: g.counters.acked,
            })
            .collect();
        let stats = QueueStats {
            depth,
            bytes,
            in_flight: state.groups.iter().map(|g| g.leases.len() as u64).sum(),
            memory_bytes: state.tail_bytes
                + state.groups.iter().map(|g| g.ahead_bytes).sum::<u64>(),
            consumers: state.consumers.len(),
            dead_letters: state.dead.len() as u64,
            groups,
            ..state.stats.clone()
        };
        let deferred = state.queued.take(inner);
        drop(state);
        deferred.finish();
        stats
    }

    /// Stops the queue: pushes and waiting consumers get `Closed`, and the log flushes and fsyncs everything
    /// written, then its writer thread exits. Idempotent.
    pub(crate) async fn close(&self) {
        {
            // No push batch is between its checks and its tail while `closed` is set.
            let _appending = self.inner.appending.lock();
            let mut state = self.inner.state.lock();
            state.closed = true;
            for slot in state.consumers.values() {
                slot.notify.notify_one();
            }
        }
        self.inner.space.notify_waiters();
        self.inner.storage.close();
        if let Some(mut progress) = self.inner.storage.progress() {
            let _ = progress.wait_for(|p| p.closed || p.failed.is_some()).await;
        }
        self.inner.history.close().await;
    }

    /// Answers a history request for `topic` from the history kept in RAM.
    pub(crate) fn history(&self, topic: &str, query: &HistoryQuery) -> HistoryPage {
        self.inner.history.query(topic, query, now_ms())
    }

    /// Acks a topic's messages up to `offset` (see [`Queue::ack_history`]) and waits until that is durable.
    pub(crate) async fn ack_history(
        &self,
        topic: &str,
        epoch: Option<Epoch>,
        offset: u64,
    ) -> Result<Option<Position>, QueueError> {
        let Some((acked, token)) = self.inner.history.ack(topic, epoch, offset) else {
            return Ok(None);
        };
        if self.inner.options.fsync != FsyncPolicy::Never {
            self.inner.history.wait_durable(token).await?;
        }
        Ok(Some(acked))
    }

    /// What the topic history holds.
    pub(crate) fn history_stats(&self) -> HistoryStats {
        self.inner.history.stats()
    }
}

/// What a push batch did, collected without the state lock and applied to the state in one go.
#[derive(Debug, Default)]
struct Batch {
    /// The queue was closed when the batch started (`close` waits for running batches).
    closed: bool,
    /// The slowest group's backlog in bytes, including what this batch stored so far.
    used: u64,
    /// The messages stored, in offset order, for the tail.
    stored: Vec<(u64, Bytes)>,
    duplicates: u64,
    rejected_full: u64,
    rejected_no_space: u64,
}

/// Stores one message of a batch: dedup, capacity, topic position, log append. Runs under `Inner::appending`,
/// without the state lock.
fn push_one(
    inner: &Inner,
    batch: &mut Batch,
    producer: Option<Producer>,
    payload: Bytes,
    topic: Option<&str>,
    now_ms: u64,
) -> Result<Pushed, PushError> {
    if batch.closed {
        return Err(PushError::Closed);
    }
    let options = &inner.options;
    let len = payload.len();
    let max = options.max_payload();
    if len > max {
        return Err(PushError::TooLarge { len, max });
    }
    if let Some(p) = producer
        && inner.storage.is_duplicate(p)
    {
        batch.duplicates += 1;
        let mut durable = inner.storage.position();
        durable.history = inner.history.position();
        return Ok(Pushed::Duplicate { durable });
    }
    if inner.storage.no_space() {
        batch.rejected_no_space += 1;
        return Err(PushError::NoSpace);
    }
    if batch.used + len as u64 > options.max_bytes || inner.storage.backlogged() {
        batch.rejected_full += 1;
        return Err(PushError::Full);
    }
    // The message's place in its topic is assigned here, in log order, and stored with it.
    let (payload, history, position) =
        match topic.and_then(|topic| inner.history.append(topic, &payload, now_ms)) {
            Some(retained) => (retained.stamped, retained.token, Some(retained.position)),
            None => (payload, 0, None),
        };
    let entry = Entry {
        producer,
        payload: payload.clone(),
    };
    let appended = inner.storage.append(std::slice::from_ref(&entry))?;
    let offset = appended.first;
    let mut durable = appended.durable;
    durable.history = history;
    batch.used += payload.len() as u64;
    batch.stored.push((offset, payload));
    Ok(Pushed::Stored {
        offset,
        durable,
        position,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{OnceLock, Weak};

    use super::*;
    use storage::{Appended, DeadStore, GroupStore, Log, Progress};
    use wsmq_core::protocol::queue::NackReason;

    /// The memory log, noting every call made while the engine's state lock is held.
    struct Watched {
        log: memory::MemoryLog,
        engine: Arc<OnceLock<Weak<Inner>>>,
        under_lock: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Watched {
        fn check(&self, call: &'static str) {
            if let Some(inner) = self.engine.get().and_then(Weak::upgrade)
                && inner.state.is_locked()
            {
                self.under_lock.lock().push(call);
            }
        }
    }

    impl Log for Watched {
        fn append(&self, entries: &[Entry]) -> Result<Appended, StorageError> {
            self.check("append");
            self.log.append(entries)
        }
        fn is_duplicate(&self, producer: Producer) -> bool {
            self.check("is_duplicate");
            self.log.is_duplicate(producer)
        }
        fn position(&self) -> DurableToken {
            self.check("position");
            self.log.position()
        }
        fn read(
            &self,
            from: u64,
            to: u64,
            max: usize,
            out: &mut Vec<(u64, Bytes)>,
        ) -> Result<u64, StorageError> {
            self.check("read");
            self.log.read(from, to, max, out)
        }
        fn trim_before(&self, offset: u64) {
            self.check("trim_before");
            self.log.trim_before(offset);
        }
        fn in_memory(&self) -> bool {
            self.log.in_memory()
        }
        fn backlogged(&self) -> bool {
            self.check("backlogged");
            self.log.backlogged()
        }
        fn no_space(&self) -> bool {
            self.check("no_space");
            self.log.no_space()
        }
        fn progress(&self) -> Option<tokio::sync::watch::Receiver<Progress>> {
            self.check("progress");
            self.log.progress()
        }
        fn close(&self) {
            self.check("close");
            self.log.close();
        }
    }

    impl GroupStore for Watched {
        fn create_group(&self, group: &GroupMark) -> DurableToken {
            self.check("create_group");
            self.log.create_group(group)
        }
        fn drop_group(&self, id: u32) {
            self.check("drop_group");
            self.log.drop_group(id);
        }
        fn ack(&self, group: u32, offsets: &mut [u64], floor: u64) {
            self.check("ack");
            self.log.ack(group, offsets, floor);
        }
    }

    impl DeadStore for Watched {
        fn append_dead(&self, letter: &DeadLetter, payload: &[u8]) {
            self.check("append_dead");
            self.log.append_dead(letter, payload);
        }
        fn remove_dead(&self, ids: &[u64]) {
            self.check("remove_dead");
            self.log.remove_dead(ids);
        }
        fn read_dead(&self, ids: &[u64], out: &mut Vec<(u64, Bytes)>) -> Result<(), StorageError> {
            self.check("read_dead");
            self.log.read_dead(ids, out)
        }
    }

    #[tokio::test]
    async fn storage_is_never_called_under_the_engines_state_lock() {
        let engine = Arc::new(OnceLock::new());
        let under_lock = Arc::new(Mutex::new(Vec::new()));
        let options = QueueOptions {
            max_deliveries: 1,
            max_dead_letters: 1,
            group_idle_ttl: Duration::from_millis(1),
            ..QueueOptions::default()
        };
        let storage = Watched {
            log: memory::MemoryLog::new(options.max_producers),
            engine: Arc::clone(&engine),
            under_lock: Arc::clone(&under_lock),
        };
        let history = history::local::LocalHistory::in_memory(options.history.clone());
        let space = Arc::new(Notify::new());
        let (queue, _) = LocalQueue::assemble(Box::new(storage), None, history, options, space);
        engine.set(Arc::downgrade(&queue.inner)).unwrap();

        // Pushes (with a retry), a group that joins and one that idles out, acks, NACKs (dead letters, one
        // evicted), auto-acks and a replay: every path that reaches storage.
        let mut consumer = queue.consumer(ConsumeMode::Acked);
        let producer = Producer { id: 1, seq: 1 };
        for seq in 1..=6 {
            queue
                .push(Some(Producer { seq, ..producer }), Bytes::from_static(b"m"))
                .unwrap();
        }
        queue
            .push(Some(producer), Bytes::from_static(b"m"))
            .unwrap();
        let name: GroupName = "audit".parse().unwrap();
        let mut audit = queue
            .join(&name, StartAt::Oldest, ConsumeMode::AutoAck)
            .await
            .unwrap();
        let mut out = Vec::new();
        audit.next_batch(10, &mut out).await.unwrap();
        drop(audit);
        consumer.grant(10);
        out.clear();
        consumer.next_batch(10, &mut out).await.unwrap();
        let ids: Vec<u64> = out.iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), 6);
        assert_eq!(consumer.ack(&ids[..3]), 3);
        assert!(consumer.nack(ids[3], NackReason::Failed));
        assert!(consumer.nack(ids[4], NackReason::Invalid));
        assert_eq!(queue.replay(None).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            queue.stats().groups_dropped,
            1,
            "the idle group was dropped"
        );
        drop(consumer);
        queue.close().await;

        let calls = under_lock.lock().clone();
        assert!(
            calls.is_empty(),
            "storage called under the state lock: {calls:?}"
        );
    }

    #[test]
    fn fsync_policy_parses_the_flag_values() {
        assert_eq!(
            "always".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Always
        );
        assert_eq!("never".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Never);
        assert_eq!(
            "interval=25".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Interval(Duration::from_millis(25))
        );
        for bad in ["", "sometimes", "interval=", "interval=0", "interval=x"] {
            assert!(
                bad.parse::<FsyncPolicy>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_millis(7)).to_string(),
            "interval=7"
        );
    }
}
