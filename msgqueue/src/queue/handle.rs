//! The queue as the services see it, whichever engine is behind it: the local engine (memory or the disk log,
//! owned by this process) or the Redis engine (a stream shared by several msgqueue processes). Both keep the same
//! promises (offset order per group, leases, redelivery, producer dedup, dead letters), so `/pushmsg`, `/popmsg`,
//! the admin routes and the conformance tests are written once against this handle.

use std::fmt;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use wsmq_core::protocol::queue::NackReason;

use super::consumer::LocalConsumer;
use super::redis::{RedisConsumer, RedisQueue};
use super::schedule::{Due, LocalSchedule, ScheduleMetrics, Scheduled, ScheduledPush};
use super::{
    Backend, ConsumeMode, DEFAULT_GROUP, DeadLetter, Delivery, DurableToken, Epoch, GroupName,
    HistoryPage, HistoryQuery, HistoryStats, LocalQueue, Position, Producer, PushError, Pushed,
    QueueError, QueueOptions, QueueStats, RecoveryReport, ReplayError, StartAt,
};

/// A handle to the queue; cheap to clone, all clones share one queue.
#[derive(Clone)]
pub struct Queue {
    engine: Engine,
    /// The local engine's schedule store (the Redis engine keeps its own in Redis).
    local_schedule: Option<LocalSchedule>,
}

#[derive(Clone)]
enum Engine {
    Local(LocalQueue),
    Redis(RedisQueue),
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.engine {
            Engine::Local(queue) => queue.fmt(f),
            Engine::Redis(queue) => queue.fmt(f),
        }
    }
}

impl Queue {
    /// Opens a queue on `backend`. The disk backend recovers its log first (a torn or corrupt tail is truncated
    /// and reported, never a panic) and fails only if the directory or its files cannot be used; this blocks, so
    /// async callers run it on the blocking pool. The Redis backend connects in the background, retrying until
    /// Redis answers (see [`Queue::ready`]); it must be opened inside a Tokio runtime.
    pub fn open(
        backend: Backend,
        options: QueueOptions,
    ) -> Result<(Self, RecoveryReport), QueueError> {
        let metrics = ScheduleMetrics::default();
        let (queue, report, schedule) = match backend {
            Backend::Memory => {
                let (queue, report) = LocalQueue::open(None, options.clone())?;
                let schedule = LocalSchedule::open(None, &options, metrics)?;
                (queue, report, schedule)
            }
            Backend::Disk { dir } => {
                // After the log, which locks the directory the schedule file shares.
                let (queue, report) = LocalQueue::open(Some(dir.clone()), options.clone())?;
                let schedule = LocalSchedule::open(Some(&dir), &options, metrics)?;
                (queue, report, schedule)
            }
            Backend::Redis(config) => {
                let queue = Self {
                    engine: Engine::Redis(RedisQueue::open(config, options)?),
                    local_schedule: None,
                };
                return Ok((queue, RecoveryReport::default()));
            }
        };
        let queue = Self {
            engine: Engine::Local(queue),
            local_schedule: Some(schedule),
        };
        Ok((queue, report))
    }

    /// Takes scheduled pushes (PUSH_AT) into the schedule store, deduplicating producers' retries as pushes are;
    /// resolves with one result per item once the accepted ones are durable. They reach the queue when due, moved
    /// by [`run_scheduler`](super::run_scheduler).
    pub async fn schedule(&self, items: Vec<ScheduledPush>) -> Vec<Result<Scheduled, PushError>> {
        match (&self.engine, &self.local_schedule) {
            (Engine::Redis(queue), _) => queue.schedule(items).await,
            (Engine::Local(_), Some(schedule)) => schedule.schedule(items).await,
            (Engine::Local(_), None) => items.iter().map(|_| Err(PushError::Closed)).collect(),
        }
    }

    /// Appends up to `max` entries due at `now_ms` to `out` (claimed for this process in Redis); returns when to
    /// look again at the latest, `None` if nothing waits.
    pub(crate) async fn take_due(
        &self,
        now_ms: u64,
        max: usize,
        out: &mut Vec<Due>,
    ) -> Result<Option<u64>, QueueError> {
        match (&self.engine, &self.local_schedule) {
            (Engine::Redis(queue), _) => queue.take_due(now_ms, max, out).await,
            (Engine::Local(_), Some(schedule)) => Ok(schedule.take_due(now_ms, max, out)),
            (Engine::Local(_), None) => Err(QueueError::Closed),
        }
    }

    /// Forgets entries that were pushed into the queue.
    pub(crate) async fn remove_due(&self, due: &[Due]) -> Result<(), QueueError> {
        match (&self.engine, &self.local_schedule) {
            (Engine::Redis(queue), _) => queue.remove_due(due).await,
            (Engine::Local(_), Some(schedule)) => Ok(schedule.remove(due).await?),
            (Engine::Local(_), None) => Ok(()),
        }
    }

    /// Keeps other msgqueue processes off due entries this one still holds (Redis); nothing to do locally.
    pub(crate) async fn renew_due(&self, due: &[Due]) -> Result<(), QueueError> {
        match &self.engine {
            Engine::Redis(queue) => queue.renew_due(due).await,
            Engine::Local(_) => Ok(()),
        }
    }

    /// Resolves when this process scheduled something (which may be due before the scheduler planned to wake).
    pub(crate) async fn schedule_changed(&self) {
        match (&self.engine, &self.local_schedule) {
            (Engine::Redis(queue), _) => queue.schedule_changed().await,
            (Engine::Local(_), Some(schedule)) => schedule.changed().await,
            (Engine::Local(_), None) => std::future::pending().await,
        }
    }

    /// The schedule store's metrics.
    pub(crate) fn schedule_metrics(&self) -> ScheduleMetrics {
        match (&self.engine, &self.local_schedule) {
            (Engine::Redis(queue), _) => queue.schedule_metrics().clone(),
            (Engine::Local(_), Some(schedule)) => schedule.metrics().clone(),
            (Engine::Local(_), None) => ScheduleMetrics::default(),
        }
    }

    /// Stores one message. `producer` is `None` for compat (at-most-once) pushers, which skip dedup.
    pub fn push(&self, producer: Option<Producer>, payload: Bytes) -> Result<Pushed, PushError> {
        let mut out = Vec::with_capacity(1);
        self.push_batch([(producer, payload)], &mut out);
        out.pop().unwrap_or(Err(PushError::Closed))
    }

    /// Stores a batch (e.g. one WebSocket frame's worth), appending one result per item to `out`. After a `Full`,
    /// `Closed` or storage error the remaining items fail the same way, so a producer's messages are never stored
    /// out of order; `TooLarge` fails only its own item.
    pub fn push_batch<I>(&self, items: I, out: &mut Vec<Result<Pushed, PushError>>)
    where
        I: IntoIterator<Item = (Option<Producer>, Bytes)>,
    {
        match &self.engine {
            Engine::Local(queue) => queue.push_batch(items, out),
            Engine::Redis(queue) => queue.push_batch(items, out),
        }
    }

    /// Resolves once the pushes behind `token` are durable: per the fsync policy for the disk log, once Redis
    /// applied them for the Redis backend. Fails if storage failed or the queue closed before getting there.
    pub async fn wait_durable(&self, token: DurableToken) -> Result<(), QueueError> {
        match &self.engine {
            Engine::Local(queue) => queue.wait_durable(token).await,
            Engine::Redis(queue) => queue.wait_durable(token).await,
        }
    }

    /// Answers a history request for `topic` (see [`super::history`]).
    pub async fn history(
        &self,
        topic: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, QueueError> {
        match &self.engine {
            Engine::Local(queue) => Ok(queue.history(topic, query)),
            Engine::Redis(queue) => queue.history(topic, query).await,
        }
    }

    /// Acks the messages of `topic` up to `offset` in `epoch` (`None`: the topic's current one), once durable: an
    /// inbox's user handled them, they are removed and [`HistoryQuery::Unacked`] never returns them again. Returns
    /// the topic's ack afterwards (unchanged for another epoch), or `None` for a topic without history.
    pub async fn ack_history(
        &self,
        topic: &str,
        epoch: Option<Epoch>,
        offset: u64,
    ) -> Result<Option<Position>, QueueError> {
        match &self.engine {
            Engine::Local(queue) => queue.ack_history(topic, epoch, offset).await,
            Engine::Redis(queue) => queue.ack_history(topic, epoch, offset).await,
        }
    }

    /// Resolves with the reason once the disk log's writer thread has died (panicked): nothing more can be made
    /// durable, so msgqueue stops with an error and is restarted. Never resolves while the writer lives, after a
    /// clean close, or for backends without a writer thread.
    pub async fn writer_died(&self) -> String {
        match &self.engine {
            Engine::Local(queue) => queue.writer_died().await,
            Engine::Redis(_) => std::future::pending().await,
        }
    }

    /// Resolves when a payload of `len` bytes would fit (or the queue closed), for compat pushers that must stop
    /// reading rather than drop a message. A push may still find the queue full if others took the space; loop.
    pub async fn wait_for_space(&self, len: usize) {
        match &self.engine {
            Engine::Local(queue) => queue.wait_for_space(len).await,
            Engine::Redis(queue) => queue.wait_for_space().await,
        }
    }

    /// Attaches a consumer to the `default` group (created at the tail if it was dropped). In
    /// [`ConsumeMode::Acked`] it starts with no credit: call [`Consumer::grant`].
    pub fn consumer(&self, mode: ConsumeMode) -> Consumer {
        Consumer(match &self.engine {
            Engine::Local(queue) => ConsumerEngine::Local(queue.consumer(mode)),
            Engine::Redis(queue) => ConsumerEngine::Redis(queue.consumer(
                &GroupName::default_group(),
                StartAt::Tail,
                mode,
            )),
        })
    }

    /// Attaches a consumer to group `name`, creating the group at `start` if it does not exist (`start` is
    /// ignored for an existing group: it resumes after its last ack). Resolves once a new group is durable, so a
    /// crash cannot forget a group that already took messages.
    pub async fn join(
        &self,
        name: &GroupName,
        start: StartAt,
        mode: ConsumeMode,
    ) -> Result<Consumer, QueueError> {
        Ok(Consumer(match &self.engine {
            Engine::Local(queue) => ConsumerEngine::Local(queue.join(name, start, mode).await?),
            Engine::Redis(queue) => ConsumerEngine::Redis(queue.join(name, start, mode).await?),
        }))
    }

    /// Acks delivery ids of the `default` group; see [`Consumer::ack`].
    pub fn ack(&self, ids: &[u64]) -> usize {
        match &self.engine {
            Engine::Local(queue) => queue.ack(ids),
            Engine::Redis(queue) => queue.ack(DEFAULT_GROUP, ids),
        }
    }

    /// Refuses delivery `id` of the `default` group for good; see [`Consumer::nack`].
    pub fn nack(&self, id: u64, reason: NackReason) -> bool {
        match &self.engine {
            Engine::Local(queue) => queue.nack(id, reason),
            Engine::Redis(queue) => queue.nack(DEFAULT_GROUP, id, reason),
        }
    }

    /// The dead letters kept, oldest first (at most `max_dead_letters`).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        match &self.engine {
            Engine::Local(queue) => Ok(queue.dead_letters()),
            Engine::Redis(queue) => queue.dead_letters().await,
        }
    }

    /// Pushes dead letters back into the queue as new messages (new offsets, at the back, so every group gets
    /// them), then forgets them: those in `ids`, or all when `ids` is `None`. Unknown ids are ignored. A letter
    /// leaves the dead letters only once its new copy is durable, so a crash in between can duplicate it but never
    /// lose it.
    pub async fn replay(&self, ids: Option<&[u64]>) -> Result<usize, ReplayError> {
        match &self.engine {
            Engine::Local(queue) => queue.replay(ids).await,
            Engine::Redis(queue) => queue.replay(ids).await,
        }
    }

    /// Counters and gauges for metrics and readiness. The Redis backend reports what it last read from Redis
    /// (refreshed every second) plus this process's own counters.
    pub fn stats(&self) -> QueueStats {
        match &self.engine {
            Engine::Local(queue) => queue.stats(),
            Engine::Redis(queue) => queue.stats(),
        }
    }

    /// What the topic history holds, for metrics; `None` for the Redis engine, whose history is in Redis.
    pub fn history_stats(&self) -> Option<HistoryStats> {
        match &self.engine {
            Engine::Local(queue) => Some(queue.history_stats()),
            Engine::Redis(_) => None,
        }
    }

    /// Whether the storage can be used right now, for `/readyz`: `None` when it always can (the local engine
    /// fails loudly instead), else a watch that follows the connection to Redis.
    pub fn ready(&self) -> Option<watch::Receiver<bool>> {
        match &self.engine {
            Engine::Local(_) => None,
            Engine::Redis(queue) => Some(queue.ready()),
        }
    }

    /// Registers the backend's own metrics (Redis round trips, errors, reconnects), if it has any, and the
    /// schedule store's.
    pub fn register_metrics(&self, registry: &mut Registry) {
        if let Engine::Redis(queue) = &self.engine {
            queue.register_metrics(registry);
        }
        self.schedule_metrics().register(registry);
    }

    /// Stops the queue: pushes and waiting consumers get `Closed`; the disk log flushes and fsyncs everything
    /// written, the Redis engine applies what was already submitted. Idempotent.
    pub async fn close(&self) {
        match &self.engine {
            Engine::Local(queue) => queue.close().await,
            Engine::Redis(queue) => queue.close().await,
        }
        if let Some(schedule) = &self.local_schedule {
            schedule.close().await;
        }
    }
}

/// A consumer attached to a consumer group of a [`Queue`]. Dropping it returns its unacked leases to its group.
#[derive(Debug)]
pub struct Consumer(ConsumerEngine);

#[derive(Debug)]
enum ConsumerEngine {
    Local(LocalConsumer),
    Redis(RedisConsumer),
}

impl Consumer {
    /// The settlement mode this consumer was created with.
    pub fn mode(&self) -> ConsumeMode {
        match &self.0 {
            ConsumerEngine::Local(consumer) => consumer.mode(),
            ConsumerEngine::Redis(consumer) => consumer.mode(),
        }
    }

    /// Widens the consumer's window by `n`: in Acked mode it may hold that many more deliveries unacked (a
    /// prefetch window; acks free slots again). Ignored in AutoAck mode, where `next_batch`'s `max` bounds a batch.
    pub fn grant(&mut self, n: u32) {
        match &mut self.0 {
            ConsumerEngine::Local(consumer) => consumer.grant(n),
            ConsumerEngine::Redis(consumer) => consumer.grant(n),
        }
    }

    /// Waits until at least one message is available and the window allows, then appends up to `max` deliveries
    /// to `out` in offset order (returned leases first). Cancel-safe: if the future is dropped, nothing is lost.
    /// Fails with `Closed` once the queue is closed, or with a storage error if the backlog cannot be read back.
    pub async fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        match &mut self.0 {
            ConsumerEngine::Local(consumer) => consumer.next_batch(max, out).await,
            ConsumerEngine::Redis(consumer) => consumer.next_batch(max, out).await,
        }
    }

    /// Acks delivery ids of this consumer's group (from any of its consumers). Returns how many of them this
    /// settled (the Redis backend counts the ones this consumer held; it settles the rest in Redis as well).
    /// Idempotent: unknown or already acked ids are ignored; an id whose lease expired is still settled
    /// (at-least-once).
    pub fn ack(&self, ids: &[u64]) -> usize {
        match &self.0 {
            ConsumerEngine::Local(consumer) => consumer.ack(ids),
            ConsumerEngine::Redis(consumer) => consumer.ack(ids),
        }
    }

    /// Refuses delivery `id` of this consumer's group for good (NACK): the message becomes a dead letter with
    /// `reason` and is settled for the group like an acked one; other groups are not affected. Returns false for
    /// an unknown or already settled id.
    pub fn nack(&self, id: u64, reason: NackReason) -> bool {
        match &self.0 {
            ConsumerEngine::Local(consumer) => consumer.nack(id, reason),
            ConsumerEngine::Redis(consumer) => consumer.nack(id, reason),
        }
    }
}
