//! Consumers (the dispatcher side): credit-limited, cancel-safe batch dispatch from a consumer group, lease
//! return when a consumer goes, and the blocking-pool reads that keep a group's read-ahead filled. Nothing here
//! calls the log while holding the engine's lock: reads run on the blocking pool and install their result under
//! the lock afterwards.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::storage::{Progress, StorageError};
use super::{Fill, Inner, LocalQueue, QueueError, ReadRequest};

/// How deliveries to a consumer are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeMode {
    /// Reliable mode: each delivery is leased until acked, and the consumer holds at most its window unacked.
    Acked,
    /// Compat mode (ws-go's at-most-once): a message is acked the moment it is handed out and never redelivered.
    AutoAck,
}

/// One message handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message's offset; pass it to [`Consumer::ack`].
    pub id: u64,
    /// The opaque message.
    pub payload: Bytes,
    /// The message was delivered before and its lease came back (consumer gone or lease expired).
    pub redelivered: bool,
    /// The message's place in its topic's history; `None` for a message without one (not a JSON envelope, its
    /// topic keeps no history, or stored before msgqueue kept history).
    pub position: Option<super::Position>,
}

/// A consumer of the local engine, attached to a consumer group of a [`LocalQueue`]. Dropping it returns its unacked leases to the front of
/// its group.
#[derive(Debug)]
pub(crate) struct LocalConsumer {
    queue: LocalQueue,
    id: u64,
    group: u32,
    mode: ConsumeMode,
    notify: Arc<Notify>,
    progress: Option<watch::Receiver<Progress>>,
}

/// Deregisters a waiting consumer if `next_batch` is dropped mid-wait, and passes on a wake-up it may have
/// swallowed so no message sits while another consumer waits.
struct WaitGuard<'a> {
    queue: &'a LocalQueue,
    id: u64,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.queue.inner.state.lock();
        let next = state.next_offset;
        if !state.unregister(self.id)
            && let Some(group) = state.consumers.get(&self.id).map(|slot| slot.group)
            && state.group(group).is_some_and(|g| g.has_messages(next))
        {
            state.wake_group(group, 1);
        }
    }
}

/// What `next_batch` waits for after finding nothing to deliver.
enum Wait {
    /// A wake-up from a push, an ack or returned leases, or the earliest lease deadline.
    Notified(Option<Instant>),
    /// The log writer writing the backlog that is to be read back.
    Written,
}

impl LocalConsumer {
    pub(super) fn new(
        queue: LocalQueue,
        id: u64,
        group: u32,
        mode: ConsumeMode,
        notify: Arc<Notify>,
    ) -> Self {
        let progress = queue.inner.storage.progress();
        Self {
            queue,
            id,
            group,
            mode,
            notify,
            progress,
        }
    }

    /// The settlement mode this consumer was created with.
    pub(crate) fn mode(&self) -> ConsumeMode {
        self.mode
    }

    /// Widens the consumer's window by `n`: in Acked mode it may hold that many more deliveries unacked (a
    /// prefetch window; acks free slots again). Ignored in AutoAck mode, where `next_batch`'s `max` bounds a batch.
    pub(crate) fn grant(&mut self, n: u32) {
        let mut state = self.queue.inner.state.lock();
        if let Some(slot) = state.consumers.get_mut(&self.id) {
            slot.window = slot.window.saturating_add(u64::from(n));
        }
    }

    /// Waits until at least one message is available and the window allows, then appends up to `max` deliveries
    /// to `out` in offset order (returned leases first). Cancel-safe: if the future is dropped, nothing is lost.
    /// Fails with `Closed` once the queue is closed, or with a storage error if the backlog cannot be read back.
    pub(crate) async fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        if max == 0 {
            return Ok(());
        }
        let Self {
            queue,
            id,
            group,
            mode,
            notify,
            progress,
        } = self;
        let inner = &queue.inner;
        let mut guard = WaitGuard {
            queue,
            id: *id,
            armed: false,
        };
        loop {
            let written = match progress.as_mut() {
                Some(progress) => {
                    progress.mark_unchanged();
                    progress.borrow().written
                }
                None => 0,
            };
            let (wait, read, deferred) = {
                let mut state = inner.state.lock();
                if state.closed {
                    guard.armed = false;
                    return Err(QueueError::Closed);
                }
                state.unregister(*id);
                state.expire(Instant::now());
                let filled = state.fill(&inner.options, *id, max, written, out);
                let deferred = state.queued.take(inner);
                let (filled, read) = match filled {
                    Err(err) => {
                        guard.armed = false;
                        drop(state);
                        deferred.finish();
                        return Err(err.into());
                    }
                    Ok(filled) => filled,
                };
                let wait = match filled {
                    Fill::Delivered => {
                        guard.armed = false;
                        let next = state.next_offset;
                        if state.group(*group).is_some_and(|g| g.has_messages(next)) {
                            state.wake_group(*group, 1);
                        }
                        // AutoAck deliveries free capacity at once: let refused pushers retry.
                        let freed =
                            *mode == ConsumeMode::AutoAck && std::mem::take(&mut state.full);
                        drop(state);
                        deferred.finish();
                        if let Some(read) = read {
                            spawn_read(inner, read, written);
                        }
                        if freed {
                            inner.space.notify_waiters();
                        }
                        return Ok(());
                    }
                    Fill::NoCredit => {
                        if let Some(slot) = state.consumers.get_mut(id) {
                            slot.wants_credit = true;
                        }
                        Wait::Notified(state.next_deadline(*group))
                    }
                    Fill::Empty => {
                        if let Some(slot) = state.consumers.get_mut(id)
                            && !slot.waiting
                        {
                            slot.waiting = true;
                            if let Some(g) = state.group_mut(*group) {
                                g.waiters.push_back(*id);
                            }
                        }
                        guard.armed = true;
                        Wait::Notified(state.next_deadline(*group))
                    }
                    Fill::AwaitWrite => Wait::Written,
                };
                (wait, read, deferred)
            };
            // Storage work and logging happen here, with the state lock released.
            deferred.finish();
            if let Some(read) = read {
                spawn_read(inner, read, written);
            }
            match wait {
                Wait::Notified(Some(deadline)) => {
                    let _ = tokio::time::timeout_at(deadline, notify.notified()).await;
                }
                Wait::Notified(None) => notify.notified().await,
                Wait::Written => {
                    let Some(progress) = progress.as_mut() else {
                        return Err(QueueError::Closed);
                    };
                    if let Some(err) = &progress.borrow().failed {
                        return Err(StorageError::WriterFailed(err.clone()).into());
                    }
                    progress.changed().await.map_err(|_| QueueError::Closed)?;
                }
            }
        }
    }

    /// Acks delivery ids of this consumer's group (from any of its consumers). Returns how many messages this
    /// settled. Idempotent: unknown or already acked ids are ignored; an id whose lease expired is still settled
    /// (at-least-once).
    pub(crate) fn ack(&self, ids: &[u64]) -> usize {
        self.queue.ack_in(self.group, ids)
    }

    /// Refuses delivery `id` of this consumer's group for good (NACK): the message becomes a dead letter with
    /// `reason` and is settled for the group like an acked one; other groups are not affected. Returns false for
    /// an unknown or already settled id.
    pub(crate) fn nack(&self, id: u64, reason: wsmq_core::protocol::queue::NackReason) -> bool {
        self.queue.nack_in(self.group, id, reason)
    }
}

/// Reads what `read` asks for from the log on the blocking pool and installs it in the group's read-ahead, then
/// wakes the group's consumers. The read owns everything it needs, so a consumer that stops waiting loses nothing.
fn spawn_read(inner: &Arc<Inner>, read: ReadRequest, written: u64) {
    let inner = Arc::clone(inner);
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let result = inner
            .storage
            .read(read.from, read.to, read.max_bytes, &mut out);
        let mut state = inner.state.lock();
        let Some(group) = state.group_mut(read.group) else {
            return;
        };
        let woken = match result {
            Ok(next) => {
                let added = group.install(read.from, next, &mut out);
                if added == 0 && group.next == read.from {
                    group.stalled_at = Some(written);
                }
                added.max(1)
            }
            Err(err) => {
                group.reading = false;
                group.read_error = Some(err);
                group.waiters.len()
            }
        };
        state.wake_group(read.group, woken);
    });
}
impl Drop for LocalConsumer {
    fn drop(&mut self) {
        let mut state = self.queue.inner.state.lock();
        let Some(slot) = state.consumers.remove(&self.id) else {
            return;
        };
        let id = self.id;
        let now = Instant::now();
        let next = state.next_offset;
        let Some(group) = state.group_mut(slot.group) else {
            return;
        };
        if slot.waiting {
            group.waiters.retain(|&w| w != id);
        }
        group.consumers = group.consumers.saturating_sub(1);
        if group.consumers == 0 {
            group.idle_since = Some(now);
        }
        let returned = group.release(id);
        if group.has_messages(next) {
            state.wake_group(slot.group, returned.max(1));
        }
    }
}
