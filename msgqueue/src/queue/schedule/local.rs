//! The schedule store of the local engine: an ordered map in RAM, backed by the [schedule file](super::file)
//! for the disk backend. Entries are ordered by (due time, arrival number), so messages due at the same time go
//! out in the order they were scheduled.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::file::{Put, Recovered, ScheduleFile};
use super::{Due, DueKey, ScheduleMetrics, Scheduled, ScheduledPush};
use crate::queue::{FsyncPolicy, PushError, QueueError, QueueOptions, StorageError};

/// A local schedule store; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct LocalSchedule {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// `None` for the memory backend.
    file: Option<ScheduleFile>,
    /// Notified when an entry was added, so the scheduler can wake before its planned time.
    changed: Notify,
    max_payload: usize,
    metrics: ScheduleMetrics,
}

#[derive(Debug)]
struct State {
    /// Durable entries by (due time, arrival number).
    entries: BTreeMap<(u64, u64), Bytes>,
    /// Payload bytes of `entries` and of pushes being written: what `max_bytes` bounds.
    bytes: u64,
    max_bytes: u64,
    next: u64,
    marks: Marks,
}

/// The highest seq taken per producer, at most `cap` producers (the least recently seen is forgotten).
#[derive(Debug, Default)]
pub(super) struct Marks {
    seqs: HashMap<u64, (u64, u64)>,
    tick: u64,
    cap: usize,
}

impl Marks {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            ..Self::default()
        }
    }

    /// Whether `producer`'s push with `seq` was taken already (its seq is not above the mark).
    fn is_duplicate(&self, producer: u64, seq: u64) -> bool {
        self.seqs
            .get(&producer)
            .is_some_and(|&(mark, _)| mark != 0 && seq <= mark)
    }

    /// Records `producer`'s push; false if it is a duplicate (its seq is not above the mark).
    pub(super) fn take(&mut self, producer: u64, seq: u64) -> bool {
        self.tick += 1;
        let tick = self.tick;
        let mark = self.seqs.entry(producer).or_insert((0, tick));
        mark.1 = tick;
        if mark.0 != 0 && seq <= mark.0 {
            return false;
        }
        mark.0 = seq;
        if self.seqs.len() > self.cap
            && let Some((&oldest, _)) = self.seqs.iter().min_by_key(|(_, (_, seen))| *seen)
        {
            self.seqs.remove(&oldest);
        }
        true
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.seqs
            .iter()
            .map(|(&producer, &(seq, _))| (producer, seq))
    }
}

impl LocalSchedule {
    /// Opens the store: in RAM only (`dir` is `None`), or recovered from the schedule file in `dir`. Blocks
    /// (reads and rewrites the file): call it where the disk log is opened.
    pub(crate) fn open(
        dir: Option<&Path>,
        options: &QueueOptions,
        metrics: ScheduleMetrics,
    ) -> Result<Self, QueueError> {
        let (file, recovered) = match dir {
            None => (None, Recovered::default()),
            Some(dir) => {
                let fsync = !matches!(options.fsync, FsyncPolicy::Never);
                let (file, recovered) = ScheduleFile::open(dir, fsync, options.max_producers)?;
                (Some(file), recovered)
            }
        };
        let mut marks = Marks::new(options.max_producers);
        for (producer, seq) in recovered.marks {
            marks.take(producer, seq);
        }
        let mut entries = BTreeMap::new();
        let mut bytes = 0;
        let mut next = 0;
        for put in recovered.entries {
            bytes += put.payload.len() as u64;
            next = next.max(put.n + 1);
            entries.insert((put.due_ms, put.n), put.payload);
        }
        metrics
            .waiting
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    entries,
                    bytes,
                    max_bytes: options.max_bytes,
                    next,
                    marks,
                }),
                file,
                changed: Notify::new(),
                max_payload: options.max_payload(),
                metrics,
            }),
        })
    }

    /// Takes `items` into the store; resolves once the stored ones are durable (and a duplicate's original too).
    pub(crate) async fn schedule(
        &self,
        items: Vec<ScheduledPush>,
    ) -> Vec<Result<Scheduled, PushError>> {
        let inner = &*self.inner;
        let mut results = Vec::with_capacity(items.len());
        let mut puts = Vec::new();
        {
            let mut state = inner.state.lock();
            for item in items {
                let len = item.payload.len();
                if len > inner.max_payload {
                    results.push(Err(PushError::TooLarge {
                        len,
                        max: inner.max_payload,
                    }));
                    continue;
                }
                if state
                    .marks
                    .is_duplicate(item.producer.id, item.producer.seq)
                {
                    results.push(Ok(Scheduled::Duplicate));
                    continue;
                }
                // Checked before the mark is taken, so a refused seq is not mistaken for a stored one later.
                if state.bytes + len as u64 > state.max_bytes {
                    results.push(Err(PushError::Full));
                    continue;
                }
                state.marks.take(item.producer.id, item.producer.seq);
                state.bytes += len as u64;
                let n = state.next;
                state.next += 1;
                puts.push(Put {
                    n,
                    due_ms: item.due_ms,
                    producer: item.producer.id,
                    seq: item.producer.seq,
                    payload: item.payload,
                });
                results.push(Ok(Scheduled::Stored));
            }
        }
        if let Some(file) = &inner.file {
            // Also for a batch of duplicates only: the writer answers in order, so their originals are durable.
            if let Err(err) = file.write(puts.clone(), Vec::new()).await {
                let mut state = inner.state.lock();
                state.bytes -= puts.iter().map(|p| p.payload.len() as u64).sum::<u64>();
                drop(state);
                tracing::error!(%err, "cannot store scheduled messages");
                return results
                    .into_iter()
                    .map(|r| r.and(Err(PushError::Storage(err.clone()))))
                    .collect();
            }
        }
        if !puts.is_empty() {
            let mut state = inner.state.lock();
            for put in puts {
                state.entries.insert((put.due_ms, put.n), put.payload);
            }
            let waiting = state.entries.len();
            drop(state);
            inner
                .metrics
                .waiting
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            inner.changed.notify_one();
        }
        results
    }

    /// Appends up to `max` entries due at `now_ms` to `out`, in order, leaving them in the store; returns the due
    /// time of the first entry not taken.
    pub(crate) fn take_due(&self, now_ms: u64, max: usize, out: &mut Vec<Due>) -> Option<u64> {
        let state = self.inner.state.lock();
        let mut entries = state.entries.iter();
        for (&(due_ms, n), payload) in entries.by_ref() {
            if due_ms > now_ms || out.len() >= max {
                return Some(due_ms);
            }
            out.push(Due {
                key: DueKey::Local(due_ms, n),
                due_ms,
                payload: payload.clone(),
            });
        }
        None
    }

    /// Forgets delivered entries; the disk backend's removal is written behind (a crash before it is durable only
    /// delivers them again).
    pub(crate) async fn remove(&self, due: &[Due]) -> Result<(), StorageError> {
        let mut gone = Vec::with_capacity(due.len());
        {
            let mut state = self.inner.state.lock();
            for entry in due {
                if let DueKey::Local(due_ms, n) = entry.key
                    && let Some(payload) = state.entries.remove(&(due_ms, n))
                {
                    state.bytes -= payload.len() as u64;
                    gone.push(n);
                }
            }
            let waiting = state.entries.len();
            self.inner
                .metrics
                .waiting
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
        match &self.inner.file {
            Some(file) => file.delete(gone).await,
            None => Ok(()),
        }
    }

    /// Resolves when an entry was added (maybe due earlier than the scheduler planned to wake).
    pub(crate) async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    /// The store's metrics.
    pub(crate) fn metrics(&self) -> &ScheduleMetrics {
        &self.inner.metrics
    }

    /// Stops the file's writer after what was submitted (nothing to do for the memory backend).
    pub(crate) async fn close(&self) {
        if let Some(file) = &self.inner.file {
            file.close().await;
        }
    }
}
