//! The memory log: nothing is persisted, every payload stays in RAM (bounded by the engine's `max_bytes`).
//!
//! For tests and benchmarks, where the disk would only add noise; a restart loses everything. It holds the
//! messages from the lowest floor over the groups to the tail (the same `Bytes` the engine's tail holds, so no
//! copy), dedup marks, and dead letters' payloads (bounded by the engine's `max_dead_letters`). Durability is
//! immediate because there is none to wait for.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::dead::DeadLetter;
use super::dedup::Producers;
use super::record::GroupMark;
use super::storage::{Appended, DeadStore, Entry, GroupStore, Log, Progress, StorageError};
use super::{DurableToken, Producer};

/// What the memory log holds, behind one short lock.
#[derive(Debug)]
struct Messages {
    /// The retained messages: exactly the offsets `[next - entries.len(), next)`.
    entries: VecDeque<Bytes>,
    /// The offset the next append gets.
    next: u64,
    producers: Producers,
}

/// A log in RAM.
#[derive(Debug)]
pub(crate) struct MemoryLog {
    messages: Mutex<Messages>,
    dead: Mutex<BTreeMap<u64, Bytes>>,
}

impl MemoryLog {
    /// An empty log remembering at most `max_producers` producers' dedup marks.
    pub(crate) fn new(max_producers: usize) -> Self {
        Self {
            messages: Mutex::new(Messages {
                entries: VecDeque::new(),
                next: 0,
                producers: Producers::new(max_producers, Vec::new()),
            }),
            dead: Mutex::default(),
        }
    }
}

impl Log for MemoryLog {
    fn append(&self, entries: &[Entry]) -> Result<Appended, StorageError> {
        let mut messages = self.messages.lock();
        let first = messages.next;
        for entry in entries {
            if let Some(producer) = entry.producer {
                messages.producers.record(producer);
            }
            messages.entries.push_back(entry.payload.clone());
        }
        messages.next += entries.len() as u64;
        Ok(Appended {
            first,
            durable: DurableToken::at(0),
        })
    }

    fn is_duplicate(&self, producer: Producer) -> bool {
        self.messages.lock().producers.is_duplicate(producer)
    }

    fn position(&self) -> DurableToken {
        DurableToken::at(0)
    }

    fn read(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<u64, StorageError> {
        if from >= to {
            return Ok(from);
        }
        let messages = self.messages.lock();
        let start = messages.next - messages.entries.len() as u64;
        let mut next = from.max(start);
        let mut bytes = 0;
        let skip = usize::try_from(next - start).unwrap_or(usize::MAX);
        let take = usize::try_from(to.saturating_sub(next)).unwrap_or(usize::MAX);
        for payload in messages.entries.iter().skip(skip).take(take) {
            out.push((next, payload.clone()));
            next += 1;
            bytes += payload.len();
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(next.min(to))
    }

    fn trim_before(&self, offset: u64) {
        let mut messages = self.messages.lock();
        let start = messages.next - messages.entries.len() as u64;
        let drop = usize::try_from(offset.saturating_sub(start)).unwrap_or(usize::MAX);
        let drop = drop.min(messages.entries.len());
        messages.entries.drain(..drop);
    }

    fn in_memory(&self) -> bool {
        true
    }

    fn backlogged(&self) -> bool {
        false
    }

    fn no_space(&self) -> bool {
        false
    }

    fn progress(&self) -> Option<watch::Receiver<Progress>> {
        None
    }

    fn close(&self) {}
}

impl GroupStore for MemoryLog {
    fn create_group(&self, _: &GroupMark) -> DurableToken {
        DurableToken::at(0)
    }

    fn drop_group(&self, _: u32) {}

    fn ack(&self, _: u32, _: &mut [u64], _: u64) {}
}

impl DeadStore for MemoryLog {
    fn append_dead(&self, letter: &DeadLetter, payload: &[u8]) {
        self.dead
            .lock()
            .insert(letter.id, Bytes::copy_from_slice(payload));
    }

    fn remove_dead(&self, ids: &[u64]) {
        let mut dead = self.dead.lock();
        for id in ids {
            dead.remove(id);
        }
    }

    fn read_dead(&self, ids: &[u64], out: &mut Vec<(u64, Bytes)>) -> Result<(), StorageError> {
        let dead = self.dead.lock();
        out.extend(
            ids.iter()
                .filter_map(|id| dead.get(id).map(|p| (*id, p.clone()))),
        );
        Ok(())
    }
}
