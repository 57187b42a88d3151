//! The memory backend: nothing is persisted, every payload stays in the engine's RAM (bounded by `max_bytes`).
//!
//! For tests and benchmarks, where the disk would only add noise; a restart loses everything. Dead letters'
//! payloads are kept here, bounded by the engine's `max_dead_letters`.

use std::collections::BTreeMap;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::dead::DeadLetter;
use super::record::{GroupMark, Snapshot};
use super::storage::{Progress, Storage, StorageError};
use super::{DurableToken, Producer};

/// A backend that stores nothing: durability is immediate because there is none to wait for.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    dead: Mutex<BTreeMap<u64, Bytes>>,
}

impl Storage for MemoryStore {
    fn append_message(
        &self,
        _: u64,
        _: Option<Producer>,
        _: &[u8],
        _: &dyn Fn() -> Snapshot,
    ) -> Result<DurableToken, StorageError> {
        Ok(DurableToken::at(0))
    }

    fn append_acks(&self, _: u32, _: &mut [u64]) {}

    fn create_group(&self, _: &GroupMark) -> DurableToken {
        DurableToken::at(0)
    }

    fn drop_group(&self, _: u32) {}

    fn position(&self) -> DurableToken {
        DurableToken::at(0)
    }

    fn advance_floor(&self, _: u64) {}

    fn backlogged(&self) -> bool {
        false
    }

    fn no_space(&self) -> bool {
        false
    }

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

    fn reads_back(&self) -> bool {
        false
    }

    fn read_messages(
        &self,
        _: u32,
        _: u64,
        to: u64,
        _: usize,
        _: &mut Vec<(u64, Bytes)>,
    ) -> Result<u64, StorageError> {
        Ok(to)
    }

    fn progress(&self) -> Option<watch::Receiver<Progress>> {
        None
    }

    fn close(&self) {}
}
