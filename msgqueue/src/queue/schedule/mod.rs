//! Scheduled delivery: messages pushed with a due time (PUSH_AT) wait in a schedule store next to the queue and
//! are pushed into it, through the normal push path, when they fall due.
//!
//! - The store is durable like the queue it sits next to: in RAM for the memory backend, a file beside the disk
//!   log ([`file`]) for the disk backend, a sorted set plus a hash in Redis for the Redis backend (see
//!   `redis/schedule.rs`). A scheduled push is acked once the store has it durably.
//! - Producer dedup works as for PUSH: per producer, a scheduled push whose `seq` is at or below the highest seq
//!   the store took from that producer is a duplicate (acked, not scheduled twice). The store keeps its own marks.
//! - [`run`] (the scheduler) takes due entries in (due time, arrival) order, pushes them into the queue without a
//!   producer (dedup was done when they were scheduled), waits until they are durable there, and only then removes
//!   them from the store. A crash between the two delivers such a message twice: scheduled delivery is
//!   at-least-once. A queue that is full is waited for; a due message is never dropped for lack of room.

mod file;
mod local;

use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use wsmq_core::metrics::LatencyHistogram;

pub(crate) use local::LocalSchedule;

use super::{Producer, PushError, Queue, QueueError, now_ms};

/// Due entries moved into the queue per round.
const BATCH: usize = 4096;
/// Longest the scheduler sleeps without looking at the store again: other msgqueue processes sharing a Redis
/// store schedule messages this one is not told about, and a Redis that was away may come back.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Pause after the store failed (Redis away, say) before trying again.
const RETRY: Duration = Duration::from_millis(500);

/// One scheduled push as msgqueue's `/pushmsg` received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledPush {
    /// The producer and seq, for dedup.
    pub producer: Producer,
    /// When to deliver it, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The message.
    pub payload: Bytes,
}

/// The outcome of an accepted scheduled push; either way it is durable when [`Queue::schedule`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// Kept until it is due.
    Stored,
    /// A retry of a push the store already took: not scheduled twice.
    Duplicate,
}

/// An entry that fell due, taken from the store by [`run`] until it is [removed](Queue::schedule) once pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    /// Names the entry in its store.
    pub(crate) key: DueKey,
    /// When it was due (Unix ms), to measure how late it went out.
    pub(crate) due_ms: u64,
    /// The message.
    pub(crate) payload: Bytes,
}

/// Names an entry in its store: the arrival number of the local stores, the sorted-set member in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DueKey {
    /// (due time, arrival number) in a [`LocalSchedule`].
    Local(u64, u64),
    /// The member of the Redis sorted set.
    Redis(String),
}

/// The scheduler's metrics: how many messages wait, and how late due ones reached the queue.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScheduleMetrics {
    /// Scheduled messages not yet in the queue (in Redis: all processes', as last counted).
    pub(crate) waiting: Gauge,
    /// From each message's due time until it was durably in the queue.
    pub(crate) lateness: LatencyHistogram,
}

impl ScheduleMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "scheduled_messages",
            "Scheduled messages waiting for their due time",
            self.waiting.clone(),
        );
        self.lateness.register(
            registry,
            "scheduled_lateness",
            "How late scheduled messages reached the queue after their due time",
        );
    }
}

/// Moves due entries of `queue`'s schedule store into the queue until `shutdown`; the supervised part
/// "scheduler" of msgqueue. Returns early only if the queue closed.
pub async fn run(queue: Queue, shutdown: CancellationToken) {
    let mut due = Vec::with_capacity(BATCH);
    loop {
        due.clear();
        let now = now_ms();
        let next = match queue.take_due(now, BATCH, &mut due).await {
            Ok(next) => next,
            Err(QueueError::Closed) => return,
            Err(err) => {
                tracing::warn!(%err, "cannot read the scheduled messages; retrying");
                if sleep_or_stop(&shutdown, RETRY).await {
                    return;
                }
                continue;
            }
        };
        if due.is_empty() {
            let wait = next.map_or(IDLE_POLL, |at| {
                Duration::from_millis(at.saturating_sub(now)).min(IDLE_POLL)
            });
            tokio::select! {
                () = queue.schedule_changed() => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        match deliver(&queue, &due, &shutdown).await {
            Ok(()) => {}
            Err(QueueError::Closed) => return,
            Err(err) => {
                tracing::warn!(%err, count = due.len(), "cannot hand due messages to the queue; retrying");
                if sleep_or_stop(&shutdown, RETRY).await {
                    return;
                }
                continue;
            }
        }
        let metrics = queue.schedule_metrics();
        let delivered = now_ms();
        for entry in &due {
            metrics.lateness.observe_n(
                Duration::from_millis(delivered.saturating_sub(entry.due_ms)),
                1,
            );
        }
        if let Err(err) = queue.remove_due(&due).await {
            // Delivered but still in the store: they go out again (at-least-once) unless a retry removes them.
            tracing::warn!(%err, count = due.len(), "cannot remove delivered scheduled messages");
        }
    }
}

/// Pushes `due` into the queue in order and waits until it is durable there. A full queue is waited for (and the
/// entries' claim kept alive); a message the queue can never take is logged and skipped.
async fn deliver(
    queue: &Queue,
    due: &[Due],
    shutdown: &CancellationToken,
) -> Result<(), QueueError> {
    let mut results = Vec::with_capacity(due.len());
    let mut from = 0;
    let mut durable = None;
    while from < due.len() {
        results.clear();
        queue.push_batch(
            due[from..]
                .iter()
                .map(|entry| (None, entry.payload.clone())),
            &mut results,
        );
        let mut stored = 0;
        let mut blocked = None;
        for result in &results {
            match result {
                Ok(pushed) => {
                    durable = durable.max(Some(pushed.durable()));
                    stored += 1;
                }
                Err(PushError::TooLarge { len, max }) => {
                    tracing::error!(
                        len,
                        max,
                        "a scheduled message is larger than the queue takes; dropped"
                    );
                    stored += 1;
                }
                Err(err) => {
                    blocked = Some(err.clone());
                    break;
                }
            }
        }
        from += stored;
        match blocked {
            None => {}
            Some(PushError::Full | PushError::NoSpace) => {
                tokio::select! {
                    () = queue.wait_for_space(due[from].payload.len()) => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    () = shutdown.cancelled() => return Err(QueueError::Closed),
                }
                queue.renew_due(&due[from..]).await?;
            }
            Some(PushError::Closed) => return Err(QueueError::Closed),
            Some(PushError::Storage(err)) => return Err(QueueError::Storage(err)),
            Some(PushError::TooLarge { .. }) => {}
        }
    }
    if let Some(token) = durable {
        queue.wait_durable(token).await?;
    }
    Ok(())
}

/// Sleeps `pause`; true if `shutdown` came first.
async fn sleep_or_stop(shutdown: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => false,
        () = shutdown.cancelled() => true,
    }
}
