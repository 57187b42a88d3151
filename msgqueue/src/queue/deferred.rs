//! What the engine decides under its state lock but does only after letting go of it: storage work (acks, dead
//! letters, group records, trims) and log lines.
//!
//! The dispatcher's lock (the engine's `State`) never calls storage: it queues [`StorageOp`]s, takes a ticket for
//! them while still holding the lock, and applies them after releasing it, in ticket order ([`Sequencer`]), so
//! storage sees them exactly in the order the engine decided them (a dead letter before its ack, a group's creation
//! before its acks, a dead letter before its eviction). Applying only buffers (the segment log hands the records to
//! its writer thread), so waiting for one's turn is as short as waiting for a mutex.

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

use super::dead::DeadLetter;
use super::record::GroupMark;
use super::storage::Storage;
use super::{DurableToken, Inner};

/// One piece of storage work decided under the state lock.
#[derive(Debug)]
pub(super) enum StorageOp {
    /// Group `group` acked `offsets`; everything below `floor` is acked by it.
    Ack {
        group: u32,
        offsets: Vec<u64>,
        floor: u64,
    },
    /// A message became a dead letter (queued before its ack).
    Dead { letter: DeadLetter, payload: Bytes },
    /// Dead letters replayed or evicted.
    RemoveDead(Vec<u64>),
    /// A new consumer group; its token is what a joining consumer waits for.
    CreateGroup(GroupMark),
    /// A group is gone.
    DropGroup(u32),
    /// Every group acked everything below this offset.
    TrimBefore(u64),
}

impl StorageOp {
    /// Hands the op to storage; returns the token of a group creation.
    fn apply(self, storage: &dyn Storage) -> Option<DurableToken> {
        match self {
            Self::Ack {
                group,
                mut offsets,
                floor,
            } => storage.ack(group, &mut offsets, floor),
            Self::Dead { letter, payload } => storage.append_dead(&letter, &payload),
            Self::RemoveDead(ids) => storage.remove_dead(&ids),
            Self::CreateGroup(mark) => return Some(storage.create_group(&mark)),
            Self::DropGroup(id) => storage.drop_group(id),
            Self::TrimBefore(offset) => storage.trim_before(offset),
        }
        None
    }
}

/// Dead-lettering and dropped groups to log once the state lock is released (logging writes to stderr: never
/// under the lock).
#[derive(Debug, Default)]
pub(super) struct Unlogged {
    pub(super) letters: Vec<DeadLetter>,
    pub(super) evicted: usize,
    pub(super) dropped: Vec<Arc<str>>,
    /// A group that took over the never-read default group's messages.
    pub(super) took_over_default: Option<Arc<str>>,
}

impl Unlogged {
    /// Logs each new dead letter once, without its payload, and each dropped group.
    fn log(self, cap: usize) {
        for letter in &self.letters {
            tracing::warn!(
                id = letter.id,
                group = %letter.group,
                bytes = letter.size,
                deliveries = letter.deliveries,
                reason = letter.reason.as_str(),
                "message moved to the dead letters"
            );
        }
        if self.evicted > 0 {
            tracing::warn!(
                count = self.evicted,
                cap,
                "dropped the oldest dead letters to stay within --max-dead-letters"
            );
        }
        if let Some(group) = &self.took_over_default {
            tracing::info!(
                group = %group,
                "the first consumer group takes over what the default group held, which nobody had read; the default group is gone"
            );
        }
        for group in &self.dropped {
            tracing::warn!(
                group = %group,
                "dropped a consumer group that had no consumer for --group-idle-ttl; it starts at the tail if it comes back"
            );
        }
    }
}

/// Work queued under the state lock, by the state's side.
#[derive(Debug, Default)]
pub(super) struct Queued {
    pub(super) ops: Vec<StorageOp>,
    pub(super) unlogged: Unlogged,
    /// The ticket the next batch of ops gets.
    next_ticket: u64,
}

impl Queued {
    /// Takes what is queued, with a ticket when there is storage work. Call it under the state lock, then
    /// [`Deferred::finish`] once the lock is released.
    pub(super) fn take<'a>(&mut self, inner: &'a Inner) -> Deferred<'a> {
        self.take_with(inner, false)
    }

    /// Like [`Queued::take`], but takes a ticket even without storage work: once finished, every op decided before
    /// it has reached storage.
    pub(super) fn fence<'a>(&mut self, inner: &'a Inner) -> Deferred<'a> {
        self.take_with(inner, true)
    }

    fn take_with<'a>(&mut self, inner: &'a Inner, fence: bool) -> Deferred<'a> {
        let ops = std::mem::take(&mut self.ops);
        let ticket = (fence || !ops.is_empty()).then(|| {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            ticket
        });
        Deferred {
            inner,
            ops,
            ticket,
            unlogged: std::mem::take(&mut self.unlogged),
        }
    }
}

/// Storage work and log lines taken from under the state lock, to finish once it is released.
#[must_use = "finish it once the state lock is released"]
pub(super) struct Deferred<'a> {
    inner: &'a Inner,
    ops: Vec<StorageOp>,
    ticket: Option<u64>,
    unlogged: Unlogged,
}

impl Deferred<'_> {
    /// Applies the storage work in its turn and logs; returns the token of a group it created. Call it without
    /// the state lock.
    pub(super) fn finish(mut self) -> Option<DurableToken> {
        self.run()
    }

    fn run(&mut self) -> Option<DurableToken> {
        let mut created = None;
        if let Some(ticket) = self.ticket.take() {
            let ops = std::mem::take(&mut self.ops);
            let storage = &*self.inner.storage;
            self.inner.sequencer.run(ticket, || {
                for op in ops {
                    created = op.apply(storage).or(created);
                }
            });
        }
        std::mem::take(&mut self.unlogged).log(self.inner.options.max_dead_letters);
        created
    }
}

impl Drop for Deferred<'_> {
    /// A ticket must always be served, or every later one would wait forever.
    fn drop(&mut self) {
        self.run();
    }
}

/// Serves tickets in order: each holder runs once every earlier ticket has run.
#[derive(Debug, Default)]
pub(super) struct Sequencer {
    serving: Mutex<u64>,
    turn: Condvar,
}

impl Sequencer {
    /// Waits for `ticket`'s turn, runs `work`, then lets the next ticket go (also if `work` panics).
    fn run(&self, ticket: u64, work: impl FnOnce()) {
        struct Next<'a>(&'a Sequencer);
        impl Drop for Next<'_> {
            fn drop(&mut self) {
                *self.0.serving.lock() += 1;
                self.0.turn.notify_all();
            }
        }
        let mut serving = self.serving.lock();
        while *serving != ticket {
            self.turn.wait(&mut serving);
        }
        drop(serving);
        let _next = Next(self);
        work();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_run_in_order_whatever_order_their_holders_arrive_in() {
        let sequencer = Arc::new(Sequencer::default());
        let ran = Arc::new(Mutex::new(Vec::new()));
        let holders: Vec<_> = (0..4u64)
            .rev()
            .map(|ticket| {
                let sequencer = Arc::clone(&sequencer);
                let ran = Arc::clone(&ran);
                std::thread::spawn(move || sequencer.run(ticket, || ran.lock().push(ticket)))
            })
            .collect();
        for holder in holders {
            holder.join().unwrap();
        }
        assert_eq!(*ran.lock(), [0, 1, 2, 3]);
    }

    #[test]
    fn a_ticket_whose_work_panicked_still_lets_the_next_one_run() {
        let sequencer = Sequencer::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sequencer.run(0, || panic!("storage bug"));
        }));
        assert!(panicked.is_err());
        let mut ran = false;
        sequencer.run(1, || ran = true);
        assert!(ran);
    }
}
