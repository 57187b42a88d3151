//! Consumer groups: each group reads the whole log at its own position and shares its messages among its
//! consumers (Redis Streams' vocabulary: a group has a cursor, a pending list of leased entries and an ack floor).
//!
//! A group takes the messages after its cursor from the engine's in-memory tail of the log, or, when it is so far
//! behind that the tail no longer holds them, from its read-ahead window, which the blocking pool fills from the
//! log. Leases, redelivery, delivery counts and dead letters are per group: a message redelivered in one group is
//! not redelivered in another.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::rangeset::RangeSet;
use super::storage::StorageError;

/// A leased delivery: the payload is kept for redelivery (leases are bounded by consumer credit).
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) owner: u64,
    pub(super) payload: Bytes,
    pub(super) deadline: Instant,
    /// Deliveries of this message in this group so far, this one included.
    pub(super) deliveries: u32,
}

/// A returned lease waiting for redelivery.
#[derive(Debug)]
pub(super) struct Returned {
    pub(super) payload: Bytes,
    pub(super) deliveries: u32,
}

impl From<Lease> for Returned {
    fn from(lease: Lease) -> Self {
        Self {
            payload: lease.payload,
            deliveries: lease.deliveries,
        }
    }
}

/// A read of the log that a group needs, to run on the blocking pool: `[from, to)` (what lies beyond `to` is in
/// the engine's in-memory tail), about `max_bytes` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadRequest {
    pub(super) group: u32,
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) max_bytes: usize,
}

/// Counters of one group, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct GroupCounters {
    pub(super) delivered: u64,
    pub(super) redelivered: u64,
    pub(super) acked: u64,
}

/// One consumer group's state.
#[derive(Debug)]
pub(super) struct Group {
    /// Unique over the log's life: a dropped group that comes back is a new group.
    pub(super) id: u32,
    pub(super) name: Arc<str>,
    /// The next offset to fetch from the log: everything below is leased, returned, acked, skipped or waiting in
    /// `ahead`.
    pub(super) next: u64,
    /// Offsets at or above `next` acked before a restart, skipped when read back.
    pub(super) skip: RangeSet,
    /// Messages read back from the log ahead of dispatch, in offset order, all below `next`.
    pub(super) ahead: VecDeque<(u64, Bytes)>,
    pub(super) ahead_bytes: u64,
    /// A read of the log for this group is running on the blocking pool.
    pub(super) reading: bool,
    /// The writer's position when a read found nothing yet: read again only once the writer moved on.
    pub(super) stalled_at: Option<u64>,
    /// The last read failed; consumers of the group get the error.
    pub(super) read_error: Option<StorageError>,
    /// Returned leases waiting for redelivery, dispatched before anything else.
    pub(super) redeliver: BTreeMap<u64, Returned>,
    pub(super) leases: BTreeMap<u64, Lease>,
    /// Lease deadlines in dispatch order (so also in deadline order); stale entries are skipped.
    pub(super) deadlines: VecDeque<(Instant, u64)>,
    /// Consumers with credit waiting for messages, woken one per message.
    pub(super) waiters: VecDeque<u64>,
    pub(super) consumers: usize,
    /// Since when the group has had no consumer.
    pub(super) idle_since: Option<Instant>,
    /// A consumer joined the group since the queue was opened.
    pub(super) joined: bool,
    /// Messages and payload bytes of the log (counted as [`super::State::log_messages`] and `log_bytes`) that
    /// this group has settled (acked, dead-lettered, or pushed before it started): its lag is the difference.
    pub(super) settled: u64,
    pub(super) settled_bytes: u64,
    pub(super) counters: GroupCounters,
}

impl Group {
    pub(super) fn new(id: u32, name: Arc<str>, next: u64, now: Instant) -> Self {
        Self {
            id,
            name,
            next,
            skip: RangeSet::default(),
            ahead: VecDeque::new(),
            ahead_bytes: 0,
            reading: false,
            stalled_at: None,
            read_error: None,
            redeliver: BTreeMap::new(),
            leases: BTreeMap::new(),
            deadlines: VecDeque::new(),
            waiters: VecDeque::new(),
            consumers: 0,
            idle_since: Some(now),
            joined: false,
            settled: 0,
            settled_bytes: 0,
            counters: GroupCounters::default(),
        }
    }

    /// The lowest offset the group may not have acked: the log may drop everything below it.
    pub(super) fn floor(&self) -> u64 {
        [
            self.redeliver.keys().next().copied(),
            self.leases.keys().next().copied(),
            self.ahead.front().map(|&(offset, _)| offset),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next)
        .min(self.next)
    }

    /// Whether anything is (or will be, once read back) dispatchable, given the log's end.
    pub(super) fn has_messages(&self, log_end: u64) -> bool {
        !self.redeliver.is_empty() || !self.ahead.is_empty() || self.next < log_end
    }

    /// Takes a leased or returned message out of the group; returns its payload and delivery count, and the
    /// owner of the lease, if it was leased.
    pub(super) fn take_unacked(&mut self, offset: u64) -> Option<(Returned, Option<u64>)> {
        if let Some(lease) = self.leases.remove(&offset) {
            let owner = lease.owner;
            return Some((lease.into(), Some(owner)));
        }
        self.redeliver.remove(&offset).map(|r| (r, None))
    }

    /// Returns every lease of consumer `owner` to the redelivery set; returns how many.
    pub(super) fn release(&mut self, owner: u64) -> usize {
        let owned: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.owner == owner)
            .map(|(&offset, _)| offset)
            .collect();
        for offset in &owned {
            if let Some(lease) = self.leases.remove(offset) {
                self.redeliver.insert(*offset, lease.into());
            }
        }
        owned.len()
    }

    /// Settles one message (acked, NACKed or dead): it no longer counts against the group's lag.
    pub(super) fn settle(&mut self, len: usize) {
        self.settled += 1;
        self.settled_bytes += len as u64;
    }

    /// Leases the message at `offset` (taken from the cursor or the returned messages) until `lease.deadline`.
    pub(super) fn lease(&mut self, offset: u64, lease: Lease) {
        self.deadlines.push_back((lease.deadline, offset));
        self.leases.insert(offset, lease);
    }

    /// Returns every lease whose deadline is at or before `now` to the returned messages (XAUTOCLAIM's job);
    /// returns the owner of each, whose credit the dispatcher frees.
    pub(super) fn reclaim_expired(&mut self, now: Instant) -> Vec<u64> {
        let mut owners = Vec::new();
        while let Some(&(deadline, offset)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self
                .leases
                .get(&offset)
                .is_some_and(|l| l.deadline == deadline)
                && let Some(lease) = self.leases.remove(&offset)
            {
                owners.push(lease.owner);
                self.redeliver.insert(offset, lease.into());
            }
        }
        // Deadlines of leases settled meanwhile stay queued until they come up; drop them when they pile up.
        if self.deadlines.len() > 2 * self.leases.len() + 1024 {
            let leases = &self.leases;
            self.deadlines.retain(|(deadline, offset)| {
                leases.get(offset).is_some_and(|l| l.deadline == *deadline)
            });
        }
        owners
    }

    /// The earliest lease deadline, when the next reclaim is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(deadline, _)| deadline)
    }

    /// Whether the group never took anything: no consumer joined it since the queue opened and its cursor never
    /// moved past offset 0.
    pub(super) fn never_read(&self) -> bool {
        !self.joined
            && self.next == 0
            && self.skip.is_empty()
            && self.ahead.is_empty()
            && self.leases.is_empty()
            && self.redeliver.is_empty()
    }

    /// The read of the log this group needs to keep its read-ahead filled, if any (its cursor is behind the
    /// engine's in-memory tail, which starts at `tail_start`), and marks it as running. `written` is the log's
    /// written position: a read that found nothing new is not retried before it moves.
    pub(super) fn read_request(
        &mut self,
        tail_start: u64,
        max_bytes: usize,
        written: u64,
    ) -> Option<ReadRequest> {
        let needed = self.next < tail_start
            && !self.reading
            && self.read_error.is_none()
            && self.ahead_bytes < max_bytes as u64 / 2
            && self.stalled_at != Some(written);
        if !needed {
            return None;
        }
        self.reading = true;
        self.stalled_at = None;
        Some(ReadRequest {
            group: self.id,
            from: self.next,
            to: tail_start,
            max_bytes,
        })
    }

    /// Takes in what a read of the log for `[from, ..)` returned, unless the group moved on meanwhile.
    pub(super) fn install(&mut self, from: u64, next: u64, read: &mut Vec<(u64, Bytes)>) -> usize {
        self.reading = false;
        if from != self.next {
            read.clear();
            return 0;
        }
        let mut added = 0;
        for (offset, payload) in read.drain(..) {
            if offset < self.next || self.skip.contains(offset) {
                continue;
            }
            self.ahead_bytes += payload.len() as u64;
            self.ahead.push_back((offset, payload));
            added += 1;
        }
        self.next = self.next.max(next);
        self.skip.remove_below(self.next);
        added
    }
}
