//! Consumers: credit-limited, cancel-safe batch dispatch from the queue, and lease return when a consumer goes.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::storage::{Progress, StorageError};
use super::{Fill, Queue, QueueError};

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
}

/// A consumer attached to a [`Queue`]. Dropping it returns its unacked leases to the front of the queue.
#[derive(Debug)]
pub struct Consumer {
    queue: Queue,
    id: u64,
    mode: ConsumeMode,
    notify: Arc<Notify>,
    progress: Option<watch::Receiver<Progress>>,
}

/// Deregisters a waiting consumer if `next_batch` is dropped mid-wait, and passes on a wake-up it may have
/// swallowed so no message sits while another consumer waits.
struct WaitGuard<'a> {
    queue: &'a Queue,
    id: u64,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.queue.inner.state.lock();
        if !state.unregister(self.id) && state.has_messages() {
            state.wake_waiters(1);
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

impl Consumer {
    pub(super) fn new(queue: Queue, id: u64, mode: ConsumeMode, notify: Arc<Notify>) -> Self {
        let progress = queue.inner.storage.progress();
        Self {
            queue,
            id,
            mode,
            notify,
            progress,
        }
    }

    /// The settlement mode this consumer was created with.
    pub fn mode(&self) -> ConsumeMode {
        self.mode
    }

    /// Widens the consumer's window by `n`: in Acked mode it may hold that many more deliveries unacked (a
    /// prefetch window; acks free slots again). Ignored in AutoAck mode, where `next_batch`'s `max` bounds a batch.
    pub fn grant(&mut self, n: u32) {
        let mut state = self.queue.inner.state.lock();
        if let Some(slot) = state.consumers.get_mut(&self.id) {
            slot.window = slot.window.saturating_add(u64::from(n));
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
        if max == 0 {
            return Ok(());
        }
        let Self {
            queue,
            id,
            mode,
            notify,
            progress,
        } = self;
        let inner = &*queue.inner;
        let mut guard = WaitGuard {
            queue,
            id: *id,
            armed: false,
        };
        loop {
            if let Some(progress) = progress.as_mut() {
                progress.mark_unchanged();
            }
            let (wait, unlogged) = {
                let mut state = inner.state.lock();
                if state.closed {
                    guard.armed = false;
                    return Err(QueueError::Closed);
                }
                state.unregister(*id);
                state.expire(Instant::now());
                let filled = state.fill(&*inner.storage, &inner.options, *id, max, out);
                let unlogged = std::mem::take(&mut state.unlogged);
                let cap = inner.options.max_dead_letters;
                let wait = match filled {
                    Err(err) => {
                        guard.armed = false;
                        drop(state);
                        unlogged.log(cap);
                        return Err(err.into());
                    }
                    Ok(Fill::Delivered) => {
                        guard.armed = false;
                        if state.has_messages() {
                            state.wake_waiters(1);
                        }
                        // AutoAck deliveries free capacity at once: let refused pushers retry.
                        let freed =
                            *mode == ConsumeMode::AutoAck && std::mem::take(&mut state.full);
                        drop(state);
                        unlogged.log(cap);
                        if freed {
                            inner.space.notify_waiters();
                        }
                        return Ok(());
                    }
                    Ok(Fill::NoCredit) => {
                        if let Some(slot) = state.consumers.get_mut(id) {
                            slot.wants_credit = true;
                        }
                        Wait::Notified(state.deadlines.front().map(|&(deadline, _)| deadline))
                    }
                    Ok(Fill::Empty) => {
                        if let Some(slot) = state.consumers.get_mut(id)
                            && !slot.waiting
                        {
                            slot.waiting = true;
                            state.waiters.push_back(*id);
                        }
                        guard.armed = true;
                        Wait::Notified(state.deadlines.front().map(|&(deadline, _)| deadline))
                    }
                    Ok(Fill::AwaitWrite) => Wait::Written,
                };
                (wait, unlogged)
            };
            // Logged here, with the state lock released.
            unlogged.log(inner.options.max_dead_letters);
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

    /// Acks delivery ids; see [`Queue::ack`]. Returns how many messages this removed.
    pub fn ack(&self, ids: &[u64]) -> usize {
        self.queue.ack(ids)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let mut state = self.queue.inner.state.lock();
        let Some(slot) = state.consumers.remove(&self.id) else {
            return;
        };
        let id = self.id;
        if slot.waiting {
            state.waiters.retain(|&w| w != id);
        }
        let owned: Vec<u64> = state
            .leases
            .iter()
            .filter(|(_, lease)| lease.owner == id)
            .map(|(&offset, _)| offset)
            .collect();
        for offset in &owned {
            if let Some(lease) = state.leases.remove(offset) {
                state.redeliver.insert(*offset, lease.into());
            }
        }
        if state.has_messages() {
            state.wake_waiters(owned.len().max(1));
        }
    }
}
