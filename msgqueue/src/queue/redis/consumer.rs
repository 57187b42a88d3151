//! A consumer on the Redis engine: one fetch task per consumer reads from its Redis consumer group on a connection
//! of its own (blocking reads there stall nothing else), within the consumer's credit, and hands deliveries over a
//! bounded channel, so [`RedisConsumer::next_batch`] is cancel-safe. When the consumer is dropped, the task hands
//! its unacked deliveries back to the group and removes the consumer from Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use wsmq_core::protocol::queue::NackReason;

use super::{
    RELEASED, RETRY_MIN, RedisError, Shared, back_off, entry_fields, entry_id, millis, now_ms,
    parse_offset, split_entry,
};
use crate::queue::{ConsumeMode, DEFAULT_GROUP, Delivery, GroupName, QueueError, StartAt};

/// Most entries asked for per read in acked mode. A read is a write in Redis (it adds to the group's pending list),
/// so under `appendfsync always` it waits for an fsync: large reads amortise it.
const BATCH: usize = 2048;
/// Most entries read ahead in compat (auto-ack) mode, where what is read is settled at once: what sits in the
/// channel when the consumer goes is lost (at-most-once), so little is read ahead.
const AUTOACK_BATCH: usize = 256;
/// How long one blocking read waits for new entries before the task looks for expired or released leases again.
const BLOCK: Duration = Duration::from_millis(250);
/// Idle time given to released deliveries: beyond any lease, so the next claim takes them.
const RELEASED_IDLE_MS: u64 = 1 << 40;

/// What the consumer holds and may hold, shared with its fetch task.
#[derive(Default)]
struct Credit {
    /// How many deliveries the consumer may hold unacked (grows with grants).
    window: u64,
    /// Deliveries held, with when they were read (a lease older than the timeout may be claimed by another
    /// consumer, so it stops counting against the window).
    held: HashMap<u64, Instant>,
}

/// A consumer of a Redis consumer group.
#[derive(Debug)]
pub(crate) struct RedisConsumer {
    shared: Arc<Shared>,
    group: Arc<str>,
    mode: ConsumeMode,
    credit: Arc<(Mutex<Credit>, Notify)>,
    rx: mpsc::Receiver<Result<Delivery, QueueError>>,
    /// Stops the fetch task when the consumer goes.
    _stop: DropGuard,
}

impl std::fmt::Debug for Credit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credit")
            .field("window", &self.window)
            .field("held", &self.held.len())
            .finish()
    }
}

impl RedisConsumer {
    /// Starts the fetch task; `joined` learns whether the group could be made sure of (else the task retries
    /// until Redis answers).
    pub(super) fn start(
        shared: Arc<Shared>,
        name: &GroupName,
        start: StartAt,
        mode: ConsumeMode,
        joined: Option<oneshot::Sender<Result<(), QueueError>>>,
    ) -> Self {
        let group: Arc<str> = Arc::from(name.as_str());
        let consumer = format!(
            "{}-{}",
            shared.instance,
            shared.next_consumer.fetch_add(1, Ordering::Relaxed)
        );
        let capacity = match mode {
            ConsumeMode::Acked => 2 * BATCH,
            ConsumeMode::AutoAck => AUTOACK_BATCH,
        };
        let (tx, rx) = mpsc::channel(capacity);
        let credit = Arc::new((Mutex::new(Credit::default()), Notify::new()));
        let stop = shared.closed.child_token();
        *shared.active.lock().entry(Arc::clone(&group)).or_default() += 1;
        let fetch = Fetch {
            shared: Arc::clone(&shared),
            group: Arc::clone(&group),
            consumer,
            start,
            mode,
            credit: Arc::clone(&credit),
            tx,
            stop: stop.clone(),
        };
        shared.tasks.spawn(fetch.run(joined));
        Self {
            shared,
            group,
            mode,
            credit,
            rx,
            _stop: stop.drop_guard(),
        }
    }

    pub(crate) fn mode(&self) -> ConsumeMode {
        self.mode
    }

    pub(crate) fn grant(&mut self, n: u32) {
        let (credit, notify) = &*self.credit;
        let mut credit = credit.lock();
        credit.window = credit.window.saturating_add(u64::from(n));
        notify.notify_one();
    }

    /// Waits for at least one delivery, then takes what else is ready, up to `max`. Cancel-safe: deliveries stay
    /// in the channel until taken.
    pub(crate) async fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        if max == 0 {
            return Ok(());
        }
        let first = self.rx.recv().await.ok_or(QueueError::Closed)??;
        out.push(first);
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(delivery) => out.push(delivery?),
                Err(_) => break,
            }
        }
        self.shared
            .counters
            .delivered
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Frees the window for the ids this consumer held and has the settler `XACK` all of them.
    pub(crate) fn ack(&self, ids: &[u64]) -> usize {
        let held = {
            let (credit, notify) = &*self.credit;
            let mut credit = credit.lock();
            let held = ids
                .iter()
                .filter(|id| credit.held.remove(id).is_some())
                .count();
            notify.notify_one();
            held
        };
        self.shared.settle_acks(&self.group, ids);
        held
    }

    /// Frees the window for `id` and has the settler bury it. False if this consumer did not hold it (it may still
    /// be buried if another consumer of the group does).
    pub(crate) fn nack(&self, id: u64, reason: NackReason) -> bool {
        let held = {
            let (credit, notify) = &*self.credit;
            let held = credit.lock().held.remove(&id).is_some();
            notify.notify_one();
            held
        };
        self.shared.settle_nack(&self.group, id, reason) && held
    }
}

/// The fetch task's state.
struct Fetch {
    shared: Arc<Shared>,
    group: Arc<str>,
    consumer: String,
    start: StartAt,
    mode: ConsumeMode,
    credit: Arc<(Mutex<Credit>, Notify)>,
    tx: mpsc::Sender<Result<Delivery, QueueError>>,
    stop: CancellationToken,
}

impl Fetch {
    async fn run(self, joined: Option<oneshot::Sender<Result<(), QueueError>>>) {
        let joined_ok = tokio::select! {
            ok = self.join(joined) => ok,
            () = self.stop.cancelled() => false,
        };
        if joined_ok {
            tokio::select! {
                () = self.fetch() => {}
                () = self.stop.cancelled() => {}
            }
        }
        self.leave().await;
    }

    /// Makes sure the group exists; with a `joined` waiter it reports the first failure, else it retries.
    async fn join(&self, mut joined: Option<oneshot::Sender<Result<(), QueueError>>>) -> bool {
        let shared = &*self.shared;
        let start = match self.start {
            StartAt::Tail => "$",
            StartAt::Oldest => "0",
        };
        let mut delay = RETRY_MIN;
        loop {
            let mut invocation = shared.scripts.join.prepare_invoke();
            invocation
                .key(&shared.keys.log)
                .key(&shared.keys.seen)
                .arg(&*self.group)
                .arg(start)
                .arg(now_ms())
                .arg(DEFAULT_GROUP);
            match shared.invoke::<u64>(&invocation, "join").await {
                Ok(created) => {
                    if created == 1 {
                        tracing::info!(group = %self.group, start, "created consumer group");
                    }
                    if let Some(joined) = joined.take() {
                        let _ = joined.send(Ok(()));
                    }
                    return true;
                }
                Err(err) => {
                    if let Some(joined) = joined.take() {
                        let _ = joined.send(Err(err.into()));
                        return false;
                    }
                    if !back_off(&shared.closed, &mut delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Reads within the credit until stopped, reconnecting its own connection after failures.
    async fn fetch(&self) {
        let shared = &*self.shared;
        let mut conn: Option<MultiplexedConnection> = None;
        let mut delay = RETRY_MIN;
        let mut next_claim = Instant::now();
        // After a failed read, Redis may have handed this consumer entries whose reply never arrived: they are in its
        // pending list, not in `held`. Read that list again (from this id on) before anything new.
        let mut own_pending: Option<String> = None;
        loop {
            let room = self.room().await;
            if conn.is_none() {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(None);
                match shared
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => conn = Some(c),
                    Err(err) => {
                        tracing::debug!(url = %shared.url, %err, "consumer cannot reach Redis");
                        shared.ready.send_replace(false);
                        if !back_off(&shared.closed, &mut delay).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let now = Instant::now();
            let result = if let Some(from) = &own_pending {
                self.read(c, room, Some(from)).await
            } else if self.mode == ConsumeMode::Acked && now >= next_claim {
                next_claim = now + BLOCK;
                self.claim(c, room).await
            } else {
                self.read(c, room, None).await
            };
            match result {
                Ok((deliveries, last)) => {
                    delay = RETRY_MIN;
                    if own_pending.is_some() {
                        own_pending = last;
                    }
                    for delivery in deliveries {
                        if self.tx.send(Ok(delivery)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(err) => {
                    conn = None;
                    if self.mode == ConsumeMode::Acked {
                        own_pending = Some("0".to_owned());
                    }
                    tracing::debug!(group = %self.group, %err, "consumer read failed");
                    if !back_off(&shared.closed, &mut delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits until the consumer may take more, and returns how many (at most a batch).
    async fn room(&self) -> usize {
        let (credit, notify) = &*self.credit;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let room = match self.mode {
                ConsumeMode::AutoAck => self.tx.capacity(),
                ConsumeMode::Acked => {
                    let mut credit = credit.lock();
                    let lease = self.shared.options.lease_timeout;
                    let now = Instant::now();
                    credit
                        .held
                        .retain(|_, read| now.duration_since(*read) < lease);
                    let held = credit.held.len() as u64;
                    usize::try_from(credit.window.saturating_sub(held))
                        .unwrap_or(usize::MAX)
                        .min(self.tx.capacity())
                }
            };
            if room > 0 {
                return room.min(BATCH);
            }
            match self.mode {
                // Room in the channel shows up when the consumer takes deliveries: wait for one slot. A closed
                // channel means the consumer is gone and this task is being stopped.
                ConsumeMode::AutoAck => match self.tx.reserve().await {
                    Ok(permit) => drop(permit),
                    Err(_) => std::future::pending().await,
                },
                ConsumeMode::Acked => {
                    let _ = tokio::time::timeout(BLOCK, notified).await;
                }
            }
        }
    }

    /// New entries for the group (blocking up to [`BLOCK`]), or with `from` this consumer's own pending entries
    /// after that id (not blocking; those it holds already are skipped). Also returns the last entry id read.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        count: usize,
        from: Option<&str>,
    ) -> Result<(Vec<Delivery>, Option<String>), RedisError> {
        let shared = &*self.shared;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&*self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if from.is_none() {
            cmd.arg("BLOCK").arg(millis(BLOCK));
        }
        if self.mode == ConsumeMode::AutoAck {
            cmd.arg("NOACK");
        }
        cmd.arg("STREAMS")
            .arg(&shared.keys.log)
            .arg(from.unwrap_or(">"));
        let value = shared
            .timed("XREADGROUP", cmd.query_async::<Value>(conn))
            .await?;
        let entries = match value {
            Value::Nil => return Ok((Vec::new(), None)),
            Value::Array(mut streams) => match streams.pop() {
                Some(Value::Array(mut stream)) if stream.len() == 2 => match stream.pop() {
                    Some(Value::Array(entries)) => entries,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let recovering = from.is_some();
        let (deliveries, last) = self.deliveries(entries, recovering, recovering);
        Ok((deliveries, last.map(entry_id)))
    }

    /// Entries of the group whose lease ran out or whose consumer went away (burying those delivered too often).
    async fn claim(
        &self,
        conn: &mut MultiplexedConnection,
        count: usize,
    ) -> Result<(Vec<Delivery>, Option<String>), RedisError> {
        let shared = &*self.shared;
        let options = &shared.options;
        let mut invocation = shared.scripts.claim.prepare_invoke();
        invocation
            .key(&shared.keys.log)
            .key(&shared.keys.dead)
            .arg(&*self.group)
            .arg(&self.consumer)
            .arg(millis(options.lease_timeout))
            .arg(count)
            .arg(options.max_deliveries)
            .arg(now_ms())
            .arg(options.max_dead_letters);
        let value = shared
            .timed("claim", invocation.invoke_async::<Value>(conn))
            .await?;
        let bad = || RedisError::Reply {
            url: shared.url.clone(),
            what: "claim",
        };
        let Value::Array(mut parts) = value else {
            return Err(bad());
        };
        let buried = match parts.pop() {
            Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            _ => return Err(bad()),
        };
        if buried > 0 {
            shared
                .counters
                .dead_max_deliveries
                .fetch_add(buried, Ordering::Relaxed);
            tracing::warn!(group = %self.group, count = buried,
                "messages delivered --max-deliveries times without an ack became dead letters");
        }
        let entries = match parts.pop() {
            Some(Value::Array(entries)) => entries,
            _ => return Err(bad()),
        };
        let (deliveries, _) = self.deliveries(entries, true, false);
        shared
            .counters
            .redelivered
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        Ok((deliveries, None))
    }

    /// Turns stream entries into deliveries, recording them as held (acked mode). With `skip_held` (re-reading its
    /// own pending list), an entry this consumer holds already is skipped: it was handed out. A claimed entry is
    /// delivered even if held: its lease ran out, so it goes out again. Also returns the offset of the last entry,
    /// delivered or not, to read on from.
    fn deliveries(
        &self,
        entries: Vec<Value>,
        redelivered: bool,
        skip_held: bool,
    ) -> (Vec<Delivery>, Option<u64>) {
        let now = Instant::now();
        let mut credit = self.credit.0.lock();
        let mut out = Vec::with_capacity(entries.len());
        let mut last = None;
        for entry in entries {
            let Some((id, mut fields)) = split_entry(entry) else {
                continue;
            };
            let Some(offset) = parse_offset(id.as_bytes()) else {
                continue;
            };
            last = Some(offset);
            // Fields are ["p", payload] and, for a message with history, ["e", epoch, "o", offset]; an entry
            // trimmed meanwhile has none and is skipped.
            let Some((payload, position)) = entry_fields(&mut fields) else {
                continue;
            };
            if self.mode == ConsumeMode::Acked
                && credit.held.insert(offset, now).is_some()
                && skip_held
            {
                continue;
            }
            out.push(Delivery {
                id: offset,
                payload: payload.into(),
                redelivered,
                position,
            });
        }
        (out, last)
    }

    /// The consumer went away: hand its deliveries back to the group (at once, not after the lease) and remove it
    /// from Redis. Retried briefly; if Redis stays away, its leases run out and are claimed as usual.
    async fn leave(&self) {
        let shared = &*self.shared;
        {
            let mut active = shared.active.lock();
            if let Some(n) = active.get_mut(&self.group) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&self.group);
                }
            }
        }
        for attempt in 0..3u32 {
            let mut invocation = shared.scripts.release.prepare_invoke();
            invocation
                .key(&shared.keys.log)
                .arg(&*self.group)
                .arg(&self.consumer)
                .arg(RELEASED_IDLE_MS)
                .arg(RELEASED);
            match shared.invoke::<u64>(&invocation, "release").await {
                Ok(released) => {
                    if released > 0 {
                        tracing::debug!(group = %self.group, released, "returned a departed consumer's leases");
                    }
                    return;
                }
                Err(_) if attempt < 2 => {
                    tokio::time::sleep(RETRY_MIN * 2u32.pow(attempt)).await;
                }
                Err(err) => {
                    tracing::warn!(group = %self.group, %err,
                        "could not return a departed consumer's leases; they are redelivered once they expire");
                }
            }
        }
    }
}
