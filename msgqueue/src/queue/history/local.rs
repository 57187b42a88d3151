//! Topic history of the local engine: per topic its epoch, its newest offset and its retained messages, in RAM,
//! written through to a [`HistoryFile`] under the disk backend (read back at start). The engine calls
//! [`LocalHistory::append`] with its state lock held, in log order, so offsets follow the log; queries take only
//! the history's own lock, never the engine's.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::file::{self, HistoryFile, HistoryRecord, TopicSnapshot};
use super::{
    Epoch, HistoryMessage, HistoryOptions, HistoryPage, HistoryQuery, Position, Retention, plan,
};
use crate::queue::FsyncPolicy;
use crate::queue::storage::StorageError;

/// How often expired messages and idle topics are dropped (and the file checked for compaction).
const MAINTAIN_EVERY_MS: u64 = 1000;
/// The file is rewritten once it is larger than this and than twice what is retained.
const COMPACT_ABOVE: u64 = 64 * 1024 * 1024;
/// What a retained message costs in RAM besides its payload (its entry, its slot, the payload's handle), counted
/// against `--history-max-bytes`.
const ENTRY_OVERHEAD: u64 = 64;
/// What a topic with history costs in RAM besides its messages (its state, its map slot, its name).
const TOPIC_OVERHEAD: u64 = 160;

#[derive(Debug)]
struct Entry {
    offset: u64,
    at_ms: u64,
    payload: Bytes,
}

#[derive(Debug)]
struct Topic {
    epoch: Epoch,
    latest: u64,
    /// When the newest message was published.
    last_ms: u64,
    entries: VecDeque<Entry>,
    /// Every message up to this offset was acked (inboxes; 0 for other topics).
    acked: u64,
}

impl Topic {
    fn new() -> Self {
        Self {
            epoch: Epoch::random(),
            latest: 0,
            last_ms: 0,
            entries: VecDeque::new(),
            acked: 0,
        }
    }

    /// Moves the ack to `acked` (never back, never beyond the newest message) and drops what it covers; returns
    /// the payload bytes and messages dropped.
    fn ack(&mut self, acked: u64) -> (u64, u64) {
        self.acked = self.acked.max(acked.min(self.latest));
        let (mut bytes, mut messages) = (0, 0);
        while let Some(front) = self.entries.front()
            && front.offset <= self.acked
        {
            bytes += front.payload.len() as u64;
            messages += 1;
            self.entries.pop_front();
        }
        (bytes, messages)
    }

    /// Payload bytes of the retained messages.
    fn payload_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.payload.len() as u64).sum()
    }

    /// What the topic counts against `--history-max-bytes` (see [`Topics::footprint`]).
    fn footprint(&self) -> u64 {
        self.payload_bytes() + self.entries.len() as u64 * ENTRY_OVERHEAD + TOPIC_OVERHEAD
    }

    /// Drops what is beyond `retention` at `now_ms`; returns the payload bytes dropped.
    fn trim(&mut self, retention: Retention, now_ms: u64) -> u64 {
        let oldest = now_ms.saturating_sub(millis(retention.ttl));
        let mut dropped = 0;
        while let Some(front) = self.entries.front()
            && (self.entries.len() > retention.size || front.at_ms < oldest)
        {
            dropped += front.payload.len() as u64;
            self.entries.pop_front();
        }
        dropped
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Topics {
    map: HashMap<Box<str>, Topic>,
    /// Payload bytes retained over all topics.
    bytes: u64,
    /// Messages retained over all topics.
    messages: u64,
    /// Messages dropped to stay within `--history-max-bytes`, since start.
    evicted: u64,
    next_maintenance_ms: u64,
}

impl Topics {
    /// What history holds in RAM, as counted against `--history-max-bytes`.
    fn footprint(&self) -> u64 {
        self.bytes + self.messages * ENTRY_OVERHEAD + self.map.len() as u64 * TOPIC_OVERHEAD
    }

    /// Forgets the least recently published topics, their messages and their positions, until history is back
    /// to nine tenths of `max_bytes` (so that a bound reached under steady load is not scanned for again at once).
    /// A forgotten topic's next message starts a new epoch, as after an idle timeout: clients that resume in the
    /// old one learn their history is gone. One pass over the topics, under the history's lock.
    fn evict(&mut self, max_bytes: u64) {
        let target = max_bytes - max_bytes / 10;
        let footprint = self.footprint();
        if footprint <= max_bytes {
            return;
        }
        let mut by_age: Vec<(u64, u64)> = self
            .map
            .values()
            .map(|t| (t.last_ms, t.footprint()))
            .collect();
        by_age.sort_unstable();
        let mut left = footprint;
        let mut cutoff = 0;
        for (last_ms, held) in by_age {
            if left <= target {
                break;
            }
            left -= held;
            cutoff = last_ms;
        }
        let (mut evicted, mut freed, mut inboxes) = (0, 0, 0);
        self.map.retain(|topic, state| {
            if state.last_ms > cutoff {
                return true;
            }
            evicted += state.entries.len() as u64;
            freed += state.payload_bytes();
            if topic.starts_with('@')
                && state.entries.back().is_some_and(|e| e.offset > state.acked)
            {
                inboxes += 1;
            }
            false
        });
        self.messages -= evicted;
        self.bytes -= freed;
        self.evicted += evicted;
        tracing::warn!(
            evicted,
            inboxes,
            topics = self.map.len(),
            max_bytes,
            "topic history reached --history-max-bytes; the least recently published topics were forgotten"
        );
    }
}

/// What history holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Topics with history.
    pub topics: u64,
    /// Messages retained.
    pub messages: u64,
    /// Payload bytes retained.
    pub bytes: u64,
    /// Messages dropped to stay within `--history-max-bytes`, since start.
    pub evicted: u64,
}

/// A message history just retained: what [`LocalHistory::append`] hands back to the push that stores it.
pub(crate) struct Retained {
    /// The message stamped with its position: what the log stores (history keeps a slice of the same bytes, not a
    /// copy).
    pub(crate) stamped: Bytes,
    /// Its place in its topic.
    pub(crate) position: Position,
    /// The history file token that becomes durable with it (0 without a file).
    pub(crate) token: u64,
}

/// The local engine's topic history.
#[derive(Debug)]
pub(crate) struct LocalHistory {
    options: HistoryOptions,
    topics: Arc<Mutex<Topics>>,
    file: Option<HistoryFile>,
}

impl LocalHistory {
    /// History in RAM only (the memory backend): lost on restart, so every topic starts a new epoch.
    pub(crate) fn in_memory(options: HistoryOptions) -> Self {
        Self {
            options,
            topics: Arc::default(),
            file: None,
        }
    }

    /// History written through to `dir`, reading back what it holds. Blocking: call it off the async workers.
    pub(crate) fn open(
        options: HistoryOptions,
        dir: &Path,
        fsync: FsyncPolicy,
        now_ms: u64,
    ) -> Result<Self, StorageError> {
        let (file, records) = HistoryFile::open(dir, fsync)?;
        let mut topics = Topics::default();
        for record in records {
            match record {
                HistoryRecord::Entry {
                    topic,
                    position,
                    at_ms,
                    payload,
                } => {
                    let state = topics.map.entry(topic.into()).or_insert_with(Topic::new);
                    if state.epoch != position.epoch || position.offset <= state.latest {
                        // A newer epoch of the topic (its history was dropped and started again).
                        state.entries.clear();
                        state.epoch = position.epoch;
                        state.acked = 0;
                    }
                    state.latest = position.offset;
                    state.last_ms = at_ms;
                    state.entries.push_back(Entry {
                        offset: position.offset,
                        at_ms,
                        payload,
                    });
                }
                HistoryRecord::Topic {
                    topic,
                    epoch,
                    latest,
                    at_ms,
                } => {
                    let state = topics.map.entry(topic.into()).or_insert_with(Topic::new);
                    state.entries.clear();
                    state.epoch = epoch;
                    state.latest = latest;
                    state.last_ms = at_ms;
                    state.acked = 0;
                }
                HistoryRecord::Ack {
                    topic,
                    epoch,
                    acked,
                } => {
                    if let Some(state) = topics.map.get_mut(topic.as_str())
                        && state.epoch == epoch
                    {
                        state.ack(acked);
                    }
                }
            }
        }
        let history = Self {
            options,
            topics: Arc::new(Mutex::new(topics)),
            file: Some(file),
        };
        history.maintain(&mut history.topics.lock(), now_ms);
        Ok(history)
    }

    /// Gives the next message of `topic` its position and retains it; `None` if the topic keeps no history.
    pub(crate) fn append(&self, topic: &str, payload: &[u8], now_ms: u64) -> Option<Retained> {
        let retention = self.options.retention(topic);
        if retention.size == 0 {
            return None;
        }
        let mut topics = self.topics.lock();
        if now_ms >= topics.next_maintenance_ms {
            self.maintain(&mut topics, now_ms);
        }
        let topics = &mut *topics;
        let state = match topics.map.get_mut(topic) {
            Some(state) => state,
            None => topics.map.entry(topic.into()).or_insert_with(Topic::new),
        };
        state.latest += 1;
        state.last_ms = now_ms;
        let position = Position {
            epoch: state.epoch,
            offset: state.latest,
        };
        let stamped = super::stamp(position, payload);
        let payload = stamped.slice(super::STAMP_LEN..);
        topics.bytes += payload.len() as u64;
        topics.messages += 1;
        let token = self.file.as_ref().map_or(0, |file| {
            file.append(|buf| file::encode_entry(buf, topic, position, now_ms, &payload))
        });
        state.entries.push_back(Entry {
            offset: position.offset,
            at_ms: now_ms,
            payload,
        });
        let before = state.entries.len();
        let dropped = state.trim(retention, now_ms);
        topics.messages -= (before - state.entries.len()) as u64;
        topics.bytes -= dropped;
        topics.evict(self.options.max_bytes);
        Some(Retained {
            stamped,
            position,
            token,
        })
    }

    /// Answers a history request for `topic`.
    pub(crate) fn query(&self, topic: &str, query: &HistoryQuery, now_ms: u64) -> HistoryPage {
        let retention = self.options.retention(topic);
        let oldest = now_ms.saturating_sub(millis(retention.ttl));
        let topics = self.topics.lock();
        let Some(state) = topics.map.get(topic) else {
            let (_, outcome) = plan(query, Epoch(0), 1, 0);
            return HistoryPage {
                epoch: Epoch(0),
                latest: 0,
                recovered: outcome.is_ok(),
                reason: outcome.err(),
                messages: Vec::new(),
            };
        };
        let live = state.entries.iter().filter(|e| e.at_ms >= oldest);
        let first = live.clone().next().map_or(state.latest + 1, |e| e.offset);
        let query = query.from_ack(state.epoch, state.acked);
        let (from, outcome) = plan(&query, state.epoch, first, state.latest);
        let messages = live
            .filter(|e| e.offset >= from)
            .take(query.limit())
            .filter_map(|e| {
                let text = std::str::from_utf8(&e.payload).ok()?;
                Some(HistoryMessage {
                    offset: e.offset,
                    message: RawValue::from_string(text.to_owned()).ok()?,
                })
            })
            .collect();
        HistoryPage {
            epoch: state.epoch,
            latest: state.latest,
            recovered: outcome.is_ok(),
            reason: outcome.err(),
            messages,
        }
    }

    /// Acks the messages of `topic` up to `offset` in `epoch` (`None`: the current one): they are dropped and no
    /// [`HistoryQuery::Unacked`] returns them again. Returns the topic's ack afterwards (unchanged for another epoch)
    /// and the file token that makes it durable, or `None` for a topic without history.
    pub(crate) fn ack(
        &self,
        topic: &str,
        epoch: Option<Epoch>,
        offset: u64,
    ) -> Option<(Position, u64)> {
        let mut topics = self.topics.lock();
        let topics = &mut *topics;
        let state = topics.map.get_mut(topic)?;
        let before = state.acked;
        if epoch.is_none_or(|epoch| epoch == state.epoch) {
            let (bytes, messages) = state.ack(offset);
            topics.bytes -= bytes;
            topics.messages -= messages;
        }
        let acked = Position {
            epoch: state.epoch,
            offset: state.acked,
        };
        let token = match &self.file {
            Some(file) if acked.offset > before => {
                file.append(|buf| file::encode_ack(buf, topic, acked.epoch, acked.offset))
            }
            Some(file) => file.position(),
            None => 0,
        };
        Some((acked, token))
    }

    /// What history holds now.
    pub(crate) fn stats(&self) -> HistoryStats {
        let topics = self.topics.lock();
        HistoryStats {
            topics: topics.map.len() as u64,
            messages: topics.messages,
            bytes: topics.bytes,
            evicted: topics.evicted,
        }
    }

    /// A file token covering everything appended so far (0 without a file).
    pub(crate) fn position(&self) -> u64 {
        self.file.as_ref().map_or(0, HistoryFile::position)
    }

    /// Waits until everything up to `token` is durable in the history file.
    pub(crate) async fn wait_durable(&self, token: u64) -> Result<(), StorageError> {
        match &self.file {
            Some(file) if token > 0 => file.wait_durable(token).await,
            _ => Ok(()),
        }
    }

    /// Writes out what is buffered and stops the file's writer.
    pub(crate) async fn close(&self) {
        if let Some(file) = &self.file {
            file.close();
            file.closed().await;
        }
    }

    /// Drops expired messages and topics idle past their retention, and compacts the file once it is mostly
    /// dropped records.
    fn maintain(&self, topics: &mut Topics, now_ms: u64) {
        topics.next_maintenance_ms = now_ms + MAINTAIN_EVERY_MS;
        let (mut messages, mut bytes) = (0, 0);
        topics.map.retain(|topic, state| {
            let retention = self.options.retention(topic);
            state.trim(retention, now_ms);
            messages += state.entries.len() as u64;
            bytes += state.payload_bytes();
            // An idle topic is forgotten: its next message starts a new epoch, which tells clients their offsets
            // of this one mean nothing any more.
            !state.entries.is_empty() || state.last_ms + millis(retention.ttl) > now_ms
        });
        topics.messages = messages;
        topics.bytes = bytes;
        topics.evict(self.options.max_bytes);
        let (messages, bytes) = (topics.messages, topics.bytes);
        let Some(file) = &self.file else { return };
        let len = file.len();
        if len > COMPACT_ABOVE && len > 2 * (bytes + messages * 64) {
            let snapshot = topics
                .map
                .iter()
                .map(|(topic, state)| TopicSnapshot {
                    topic: topic.clone(),
                    epoch: state.epoch,
                    latest: state.latest,
                    last_ms: state.last_ms,
                    acked: state.acked,
                    entries: state
                        .entries
                        .iter()
                        .map(|e| (e.offset, e.at_ms, e.payload.clone()))
                        .collect(),
                })
                .collect();
            file.compact(snapshot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    fn options(size: usize) -> HistoryOptions {
        HistoryOptions {
            retention: Retention {
                size,
                ttl: Duration::from_secs(10),
            },
            ..HistoryOptions::default()
        }
    }

    /// Appends and returns the position the message was stamped with, as the engine sees it.
    fn append(
        history: &LocalHistory,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Option<(Position, u64)> {
        history.append(topic, payload, now_ms).and_then(|retained| {
            let stamped = super::super::unstamp(retained.stamped).0?;
            assert_eq!(stamped, retained.position, "the stamp holds the position");
            Some((stamped, retained.token))
        })
    }

    fn offsets(page: &HistoryPage) -> Vec<u64> {
        page.messages.iter().map(|m| m.offset).collect()
    }

    fn envelope(n: u64) -> Vec<u8> {
        format!(r#"{{"Topic":"t","Content":"{n}"}}"#).into_bytes()
    }

    #[test]
    fn offsets_count_up_per_topic_and_the_newest_are_retained() {
        let history = LocalHistory::in_memory(options(3));
        for n in 1..=5 {
            let (position, _) = append(&history, "t", &envelope(n), T0).unwrap();
            assert_eq!(position.offset, n);
        }
        assert_eq!(append(&history, "u", &envelope(1), T0).unwrap().0.offset, 1);
        let page = history.query("t", &HistoryQuery::Last { limit: 10 }, T0);
        assert_eq!((offsets(&page), page.latest), (vec![3, 4, 5], 5));
        assert_eq!(
            page.messages[0].message.get(),
            r#"{"Topic":"t","Content":"3"}"#
        );
        let resume = HistoryQuery::Since {
            position: Position {
                epoch: page.epoch,
                offset: 3,
            },
            limit: 10,
        };
        let page = history.query("t", &resume, T0);
        assert!(page.recovered);
        assert_eq!(offsets(&page), vec![4, 5]);
        assert_eq!(history.stats().messages, 4);
    }

    /// A directory for a history file and a runtime to await its durability in.
    fn scratch() -> (tempfile::TempDir, tokio::runtime::Runtime) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (tempfile::tempdir().unwrap(), runtime)
    }

    /// The footprint history counts against `--history-max-bytes`.
    fn footprint(history: &LocalHistory) -> u64 {
        history.topics.lock().footprint()
    }

    #[test]
    fn beyond_max_bytes_the_least_recently_published_topics_are_forgotten() {
        // Room for about 100 topics of one small message each (some 260 bytes per topic).
        let max_bytes = 26_000;
        let history = LocalHistory::in_memory(HistoryOptions {
            max_bytes,
            ..options(100)
        });
        let mut first = Vec::new();
        for n in 0..200 {
            let (position, _) = append(&history, &format!("t{n}"), &envelope(n), T0 + n).unwrap();
            first.push(position);
            assert!(
                footprint(&history) <= max_bytes,
                "within the bound after topic {n}"
            );
        }
        let stats = history.stats();
        assert!(stats.evicted > 0, "{stats:?}");
        assert!(stats.topics < 200, "{stats:?}");
        // The newest topic kept its history; the oldest lost it, and its next message starts a new epoch.
        let newest = history.query("t199", &HistoryQuery::Last { limit: 10 }, T0 + 200);
        assert_eq!(offsets(&newest), vec![1]);
        let resume = HistoryQuery::Since {
            position: first[0],
            limit: 10,
        };
        let oldest = history.query("t0", &resume, T0 + 200);
        assert!(!oldest.recovered);
        let (again, _) = append(&history, "t0", &envelope(0), T0 + 201).unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first[0].epoch);
        // A topic published to all along is the most recent one: it keeps its messages while others go.
        for n in 0..300 {
            append(&history, "busy", &envelope(n), T0 + 300 + n).unwrap();
            append(&history, &format!("x{n}"), &envelope(n), T0 + 300 + n).unwrap();
        }
        let busy = history.query("busy", &HistoryQuery::Last { limit: 100 }, T0 + 600);
        assert_eq!(
            busy.messages.len(),
            100,
            "the busy topic keeps its newest 100"
        );
        assert!(footprint(&history) <= max_bytes);
    }

    #[test]
    fn a_reopened_history_larger_than_max_bytes_is_cut_to_the_bound() {
        let (dir, runtime) = scratch();
        let history =
            LocalHistory::open(options(100), dir.path(), FsyncPolicy::Always, T0).unwrap();
        for n in 0..100 {
            let (_, token) = append(&history, &format!("t{n}"), &envelope(n), T0 + n).unwrap();
            runtime.block_on(history.wait_durable(token)).unwrap();
        }
        runtime.block_on(history.close());
        let max_bytes = 10_000;
        let reopened = LocalHistory::open(
            HistoryOptions {
                max_bytes,
                ..options(100)
            },
            dir.path(),
            FsyncPolicy::Always,
            T0 + 100,
        )
        .unwrap();
        assert!(footprint(&reopened) <= max_bytes);
        let newest = reopened.query("t99", &HistoryQuery::Last { limit: 10 }, T0 + 100);
        assert_eq!(offsets(&newest), vec![1], "the newest topics are kept");
        assert!(reopened.stats().evicted > 0);
        runtime.block_on(reopened.close());
    }

    #[test]
    fn expired_messages_are_not_recovered_and_an_idle_topic_starts_a_new_epoch() {
        let history = LocalHistory::in_memory(options(100));
        let (first, _) = append(&history, "t", &envelope(1), T0).unwrap();
        append(&history, "t", &envelope(2), T0 + 9_000).unwrap();
        let since_first = HistoryQuery::Since {
            position: first,
            limit: 10,
        };
        // At T0 + 10.5 s the first message expired but not the second: the client with offset 1 misses nothing.
        let page = history.query("t", &since_first, T0 + 10_500);
        assert!(page.recovered);
        assert_eq!(offsets(&page), vec![2]);
        let since_zero = HistoryQuery::Since {
            position: Position {
                epoch: Epoch(0),
                offset: 0,
            },
            limit: 10,
        };
        let page = history.query("t", &since_zero, T0 + 10_500);
        assert_eq!(page.reason, Some(super::super::Unrecovered::Expired));
        // Long after: the topic is forgotten, its next message starts a new epoch at offset 1.
        let (later, _) = append(&history, "t", &envelope(3), T0 + 60_000).unwrap();
        assert_eq!(later.offset, 1);
        assert_ne!(later.epoch, first.epoch);
        let page = history.query("t", &since_first, T0 + 60_000);
        assert_eq!(page.reason, Some(super::super::Unrecovered::EpochChanged));
        assert_eq!(offsets(&page), vec![1]);
    }

    #[test]
    fn acked_messages_are_dropped_and_unacked_ones_answer_from_the_ack_after_a_reopen() {
        let (dir, runtime) = scratch();
        let history =
            LocalHistory::open(options(100), dir.path(), FsyncPolicy::Always, T0).unwrap();
        for n in 1..=4 {
            append(&history, "@alice", &envelope(n), T0).unwrap();
        }
        let (acked, token) = history.ack("@alice", None, 2).unwrap();
        runtime.block_on(history.wait_durable(token)).unwrap();
        assert_eq!(acked.offset, 2);
        let unacked = HistoryQuery::Unacked { limit: 10 };
        assert_eq!(offsets(&history.query("@alice", &unacked, T0)), vec![3, 4]);
        // Another epoch's ack, or one that goes back, changes nothing; beyond the newest stops at the newest.
        assert_eq!(
            history.ack("@alice", Some(Epoch(1)), 4).unwrap().0.offset,
            2
        );
        assert_eq!(history.ack("@alice", None, 1).unwrap().0.offset, 2);
        runtime.block_on(history.close());
        let reopened =
            LocalHistory::open(options(100), dir.path(), FsyncPolicy::Always, T0).unwrap();
        let page = reopened.query("@alice", &unacked, T0);
        assert_eq!((offsets(&page), page.recovered), (vec![3, 4], true));
        assert_eq!(reopened.ack("@alice", None, 99).unwrap().0.offset, 4);
        assert!(reopened.query("@alice", &unacked, T0).messages.is_empty());
        assert_eq!(reopened.stats().messages, 0);
        assert_eq!(reopened.ack("@nobody", None, 1), None);
    }

    #[test]
    fn a_topic_with_size_zero_keeps_no_history() {
        let history = LocalHistory::in_memory(options(0));
        assert_eq!(append(&history, "t", &envelope(1), T0), None);
        assert_eq!(history.stats(), HistoryStats::default());
    }

    #[test]
    fn history_on_disk_survives_a_reopen_with_its_epochs() {
        let (dir, runtime) = scratch();
        let history = LocalHistory::open(options(2), dir.path(), FsyncPolicy::Always, T0).unwrap();
        let mut last = None;
        for n in 1..=3 {
            let (position, token) = append(&history, "t", &envelope(n), T0).unwrap();
            runtime.block_on(history.wait_durable(token)).unwrap();
            last = Some(position);
        }
        runtime.block_on(history.close());
        let reopened = LocalHistory::open(options(2), dir.path(), FsyncPolicy::Always, T0).unwrap();
        let since = HistoryQuery::Since {
            position: Position {
                offset: 1,
                ..last.unwrap()
            },
            limit: 10,
        };
        let page = reopened.query("t", &since, T0);
        // Size 2 keeps 2 and 3; the client at offset 1 misses nothing.
        assert_eq!((offsets(&page), page.recovered), (vec![2, 3], true));
        assert_eq!(
            append(&reopened, "t", &envelope(4), T0).unwrap().0,
            Position {
                offset: 4,
                ..last.unwrap()
            }
        );
    }
}
