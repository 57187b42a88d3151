//! Dead letters: messages the queue gave up delivering (a consumer NACKed them, or they were delivered
//! `max_deliveries` times without an ack), kept with the reason so an operator can inspect and replay them.
//!
//! The engine keeps this index (no payloads) in RAM, bounded by `max_dead_letters`; the payloads live in the
//! storage backend (the disk log's `dead/` file, or RAM for the memory backend). A dead letter is made durable
//! before the ack that removes its message from the queue, so a crash can duplicate it but never lose it.

use std::collections::BTreeMap;

use wsmq_core::protocol::queue::NackReason;

use super::record::DeadHeader;

/// Code of [`DeadReason::MaxDeliveries`] in the dead-letter file.
const MAX_DELIVERIES_CODE: u8 = 16;

/// Why a message became a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// A consumer refused it (NACK) with this reason.
    Nacked(NackReason),
    /// It was delivered `max_deliveries` times and never acked (its consumers kept failing on it).
    MaxDeliveries,
}

impl DeadReason {
    /// A short human-readable name, used in the admin listing and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nacked(reason) => reason.as_str(),
            Self::MaxDeliveries => "delivered too often without an ack",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Nacked(reason) => reason.code(),
            Self::MaxDeliveries => MAX_DELIVERIES_CODE,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            MAX_DELIVERIES_CODE => Self::MaxDeliveries,
            other => Self::Nacked(NackReason::from_code(other).unwrap_or(NackReason::Failed)),
        }
    }
}

/// What the queue knows about one dead letter (the payload stays in storage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message's offset (its delivery id) when it died; replay gives it a new one.
    pub id: u64,
    /// Why it died.
    pub reason: DeadReason,
    /// How often it had been delivered.
    pub deliveries: u32,
    /// Payload bytes.
    pub size: u64,
    /// When it died, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The consumer group that gave up on it (other groups may still have delivered it).
    pub group: String,
}

impl DeadLetter {
    /// A dead letter dying now.
    pub(crate) fn now(
        id: u64,
        reason: DeadReason,
        deliveries: u32,
        size: usize,
        group: &str,
    ) -> Self {
        let time_ms = super::now_ms();
        Self {
            id,
            reason,
            deliveries,
            size: size as u64,
            time_ms,
            group: group.to_owned(),
        }
    }

    pub(crate) fn header(&self) -> DeadHeader {
        DeadHeader {
            id: self.id,
            reason: self.reason.code(),
            deliveries: self.deliveries,
            time_ms: self.time_ms,
            group: self.group.clone(),
        }
    }

    pub(crate) fn from_record(header: &DeadHeader, size: usize) -> Self {
        Self {
            id: header.id,
            reason: DeadReason::from_code(header.reason),
            deliveries: header.deliveries,
            size: size as u64,
            time_ms: header.time_ms,
            group: header.group.clone(),
        }
    }
}

/// The engine's bounded index of dead letters, oldest (lowest id) first.
#[derive(Debug, Default)]
pub(crate) struct DeadIndex {
    letters: BTreeMap<u64, DeadLetter>,
}

impl DeadIndex {
    pub(crate) fn new(recovered: Vec<DeadLetter>) -> Self {
        Self {
            letters: recovered.into_iter().map(|d| (d.id, d)).collect(),
        }
    }

    /// Adds `letter`; returns the ids evicted (oldest first) to stay within `cap`.
    pub(crate) fn insert(&mut self, letter: DeadLetter, cap: usize) -> Vec<u64> {
        self.letters.insert(letter.id, letter);
        let mut evicted = Vec::new();
        while self.letters.len() > cap.max(1) {
            match self.letters.pop_first() {
                Some((id, _)) => evicted.push(id),
                None => break,
            }
        }
        evicted
    }

    pub(crate) fn list(&self) -> Vec<DeadLetter> {
        self.letters.values().cloned().collect()
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.letters.contains_key(&id)
    }

    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.letters.remove(&id).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.letters.len()
    }
}
