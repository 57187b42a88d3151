//! The history file of the disk backend (`<data-dir>/history/history.log`): what [`super::local::LocalHistory`]
//! keeps in RAM, appended record by record and read back once at start.
//!
//! Records are framed as in [`crate::queue::journal`] (`len | crc32 | kind | body`); a torn or corrupt record ends
//! the valid part (recovery truncates there). Appends only buffer (the caller holds the
//! history lock); one writer thread writes each buffered group with one `write` and fsyncs it per the queue's
//! `--fsync` policy, so pushes share fsyncs as they do on the log. The file only grows; once it is much larger than
//! what is retained, the history hands over a snapshot of everything retained and the writer replaces the file with
//! it (written to a temporary file, fsynced, renamed).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{BufMut, Bytes};
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::{Epoch, Position};
use crate::queue::storage::StorageError;
use crate::queue::{FsyncPolicy, journal};

const FILE_NAME: &str = "history.log";
const TMP_NAME: &str = "history.log.tmp";
/// A retained message.
const KIND_ENTRY: u8 = 1;
/// A topic with no message retained (written by snapshots only), so its epoch and latest offset survive.
const KIND_TOPIC: u8 = 2;
/// A topic's messages up to an offset were acked (inboxes).
const KIND_ACK: u8 = 3;

/// One record read back from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryRecord {
    /// A message of `topic` at `position`, stored at `at_ms`.
    Entry {
        topic: String,
        position: Position,
        at_ms: u64,
        payload: Bytes,
    },
    /// A topic's epoch and newest offset, when it retains no message.
    Topic {
        topic: String,
        epoch: Epoch,
        latest: u64,
        at_ms: u64,
    },
    /// The messages of `topic` up to `acked` in `epoch` were acked.
    Ack {
        topic: String,
        epoch: Epoch,
        acked: u64,
    },
}

/// Encodes an entry record onto `buf`.
pub(crate) fn encode_entry(
    buf: &mut Vec<u8>,
    topic: &str,
    position: Position,
    at_ms: u64,
    payload: &[u8],
) {
    encode(buf, KIND_ENTRY, |body| {
        body.put_u64_le(position.epoch.0);
        body.put_u64_le(position.offset);
        body.put_u64_le(at_ms);
        put_topic(body, topic);
        body.put_slice(payload);
    });
}

/// Encodes a topic record onto `buf`.
pub(crate) fn encode_topic(buf: &mut Vec<u8>, topic: &str, epoch: Epoch, latest: u64, at_ms: u64) {
    encode(buf, KIND_TOPIC, |body| {
        body.put_u64_le(epoch.0);
        body.put_u64_le(latest);
        body.put_u64_le(at_ms);
        put_topic(body, topic);
    });
}

/// Encodes an ack record onto `buf`.
pub(crate) fn encode_ack(buf: &mut Vec<u8>, topic: &str, epoch: Epoch, acked: u64) {
    encode(buf, KIND_ACK, |body| {
        body.put_u64_le(epoch.0);
        body.put_u64_le(acked);
        body.put_u64_le(0);
        put_topic(body, topic);
    });
}

/// One topic's part of a compaction snapshot. Taking it under the history's lock costs a reference count per
/// message (payloads are shared, not copied); the writer thread encodes it, so a large history is not encoded while
/// pushes wait for that lock.
#[derive(Debug)]
pub(crate) struct TopicSnapshot {
    pub(crate) topic: Box<str>,
    pub(crate) epoch: Epoch,
    pub(crate) latest: u64,
    /// When the topic's newest message was published.
    pub(crate) last_ms: u64,
    /// Its ack (inboxes; 0 otherwise).
    pub(crate) acked: u64,
    /// Its retained messages: offset, publish time, payload.
    pub(crate) entries: Vec<(u64, u64, Bytes)>,
}

/// Encodes a snapshot as the records that rebuild it: per topic its messages (or, with none, its epoch and latest
/// offset) and its ack.
fn encode_snapshot(topics: &[TopicSnapshot]) -> Vec<u8> {
    let payload: usize = topics
        .iter()
        .flat_map(|t| t.entries.iter().map(|(_, _, p)| p.len() + 64))
        .sum();
    let mut buf = Vec::with_capacity(payload + topics.len() * 64);
    for t in topics {
        if t.entries.is_empty() {
            encode_topic(&mut buf, &t.topic, t.epoch, t.latest, t.last_ms);
        }
        for (offset, at_ms, payload) in &t.entries {
            let position = Position {
                epoch: t.epoch,
                offset: *offset,
            };
            encode_entry(&mut buf, &t.topic, position, *at_ms, payload);
        }
        if t.acked > 0 {
            encode_ack(&mut buf, &t.topic, t.epoch, t.acked);
        }
    }
    buf
}

fn put_topic(body: &mut Vec<u8>, topic: &str) {
    // Topics are at most 256 bytes (`validate_topic`), so the length always fits.
    body.put_u16_le(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    body.put_slice(topic.as_bytes());
}

fn encode(buf: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    journal::frame(buf, |buf| {
        buf.put_u8(kind);
        body(buf);
    });
}

/// Decodes one record body (`kind + body`); `None` if it does not parse.
fn decode(record: &[u8]) -> Option<HistoryRecord> {
    let (&kind, mut body) = record.split_first()?;
    let mut word = || -> Option<u64> {
        let (head, rest) = body.split_first_chunk::<8>()?;
        body = rest;
        Some(u64::from_le_bytes(*head))
    };
    let (a, b, at_ms) = (word()?, word()?, word()?);
    let (len, rest) = body.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    if rest.len() < len {
        return None;
    }
    let (topic, payload) = rest.split_at(len);
    let topic = std::str::from_utf8(topic).ok()?.to_owned();
    match kind {
        KIND_ENTRY => Some(HistoryRecord::Entry {
            topic,
            position: Position {
                epoch: Epoch(a),
                offset: b,
            },
            at_ms,
            payload: Bytes::copy_from_slice(payload),
        }),
        KIND_TOPIC if payload.is_empty() => Some(HistoryRecord::Topic {
            topic,
            epoch: Epoch(a),
            latest: b,
            at_ms,
        }),
        KIND_ACK if payload.is_empty() => Some(HistoryRecord::Ack {
            topic,
            epoch: Epoch(a),
            acked: b,
        }),
        _ => None,
    }
}

/// How far the writer has got, in bytes appended since open.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Everything appended before this is durable per the fsync policy.
    pub(crate) durable: u64,
    /// Set when the writer failed; waiters get it instead of hanging.
    pub(crate) failed: Option<String>,
    /// Set when the writer flushed everything and exited.
    pub(crate) closed: bool,
}

#[derive(Debug, Default)]
struct Pending {
    /// Records appended and not yet taken by the writer.
    buf: Vec<u8>,
    /// Bytes appended since open (the unit of tokens).
    position: u64,
    /// A snapshot of everything retained that replaces the file before `buf` is written.
    snapshot: Option<Vec<TopicSnapshot>>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
    /// The file's current length, for deciding when to compact.
    file_len: AtomicU64,
}

/// The history file and its writer thread.
#[derive(Debug)]
pub(crate) struct HistoryFile {
    shared: Arc<Shared>,
}

impl HistoryFile {
    /// Opens (creating) the history file in `dir`, reads back every valid record (truncating a torn tail) and
    /// starts the writer. Blocking: call it off the async workers.
    pub(crate) fn open(
        dir: &Path,
        fsync: FsyncPolicy,
    ) -> Result<(Self, Vec<HistoryRecord>), StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io("cannot create", dir, e))?;
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| StorageError::io("cannot open", &path, e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| StorageError::io("cannot read", &path, e))?;
        let (records, valid) = read_records(&data);
        if valid < data.len() {
            tracing::warn!(
                path = %path.display(),
                position = valid,
                dropped_bytes = data.len() - valid,
                "history file ends in a torn or corrupt record; truncating"
            );
            file.set_len(valid as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageError::io("cannot truncate", &path, e))?;
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            progress: watch::Sender::new(Progress::default()),
            file_len: AtomicU64::new(valid as u64),
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            dir: dir.to_owned(),
            path,
            file,
            fsync,
            written: 0,
            synced: 0,
            last_sync: Instant::now(),
        };
        std::thread::Builder::new()
            .name("wsmq-history-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StorageError::io("cannot start the history writer for", dir, e))?;
        Ok((Self { shared }, records))
    }

    /// Buffers records encoded by `encode` and returns the token that becomes durable with them.
    pub(crate) fn append(&self, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let mut pending = self.shared.pending.lock();
        let before = pending.buf.len();
        encode(&mut pending.buf);
        pending.position += (pending.buf.len() - before) as u64;
        let position = pending.position;
        drop(pending);
        self.shared.wake.notify_one();
        position
    }

    /// A token covering everything appended so far.
    pub(crate) fn position(&self) -> u64 {
        self.shared.pending.lock().position
    }

    /// The file's length as last written.
    pub(crate) fn len(&self) -> u64 {
        self.shared.file_len.load(Ordering::Relaxed)
    }

    /// Replaces the file with `snapshot` (every record retained now): whatever was appended before is dropped
    /// from the buffer, since the snapshot holds what of it is still retained.
    pub(crate) fn compact(&self, snapshot: Vec<TopicSnapshot>) {
        let mut pending = self.shared.pending.lock();
        pending.buf.clear();
        pending.snapshot = Some(snapshot);
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// Waits until everything up to `token` is durable.
    pub(crate) async fn wait_durable(&self, token: u64) -> Result<(), StorageError> {
        let mut progress = self.shared.progress.subscribe();
        let progress = progress
            .wait_for(|p| p.durable >= token || p.failed.is_some() || p.closed)
            .await
            .map_err(|_| StorageError::WriterFailed("history writer stopped".into()))?;
        if progress.durable >= token {
            Ok(())
        } else {
            Err(StorageError::WriterFailed(
                progress
                    .failed
                    .clone()
                    .unwrap_or_else(|| "history file closed".into()),
            ))
        }
    }

    /// Asks the writer to write and fsync everything and exit.
    pub(crate) fn close(&self) {
        self.shared.pending.lock().closed = true;
        self.shared.wake.notify_one();
    }

    /// Resolves once the writer exited (after [`HistoryFile::close`]) or failed.
    pub(crate) async fn closed(&self) {
        let mut progress = self.shared.progress.subscribe();
        let _ = progress.wait_for(|p| p.closed || p.failed.is_some()).await;
    }
}

/// Parses records from the start of `data`; returns them and the length of the valid part.
fn read_records(data: &[u8]) -> (Vec<HistoryRecord>, usize) {
    let mut records = Vec::new();
    let mut valid = 0;
    for (end, body) in journal::frames(data) {
        let Some(record) = decode(body) else { break };
        records.push(record);
        valid = end;
    }
    (records, valid)
}

struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
    path: PathBuf,
    file: File,
    fsync: FsyncPolicy,
    /// Token position written to the file so far.
    written: u64,
    /// Token position fsynced so far.
    synced: u64,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self) {
        loop {
            let (buf, snapshot, position, closed) = {
                let mut pending = self.shared.pending.lock();
                while pending.buf.is_empty() && pending.snapshot.is_none() && !pending.closed {
                    self.shared.wake.wait(&mut pending);
                }
                let buf = std::mem::take(&mut pending.buf);
                (
                    buf,
                    pending.snapshot.take(),
                    pending.position,
                    pending.closed,
                )
            };
            if let Err(err) = self.write(snapshot, &buf, position, closed) {
                tracing::error!(%err, "history writer failed; pushes are refused");
                self.shared
                    .progress
                    .send_modify(|p| p.failed = Some(err.to_string()));
                return;
            }
            if closed {
                self.shared.progress.send_modify(|p| p.closed = true);
                return;
            }
        }
    }

    fn write(
        &mut self,
        snapshot: Option<Vec<TopicSnapshot>>,
        buf: &[u8],
        position: u64,
        closing: bool,
    ) -> Result<(), StorageError> {
        if let Some(snapshot) = snapshot {
            self.replace(&encode_snapshot(&snapshot))?;
        }
        if !buf.is_empty() {
            self.file
                .write_all(buf)
                .map_err(|e| StorageError::io("cannot write", &self.path, e))?;
            self.shared
                .file_len
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        self.written = position;
        let sync = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => closing || self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => closing,
        };
        if sync && self.synced < self.written {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io("cannot fsync", &self.path, e))?;
            self.synced = self.written;
            self.last_sync = Instant::now();
        }
        let durable = match self.fsync {
            FsyncPolicy::Always => self.synced,
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => self.written,
        };
        self.shared.progress.send_modify(|p| p.durable = durable);
        Ok(())
    }

    /// Replaces the history file with `snapshot`.
    fn replace(&mut self, snapshot: &[u8]) -> Result<(), StorageError> {
        self.file = journal::replace(&self.dir, &self.path, &self.dir.join(TMP_NAME), snapshot)?;
        self.shared
            .file_len
            .store(snapshot.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, offset: u64, payload: &'static [u8]) -> HistoryRecord {
        HistoryRecord::Entry {
            topic: topic.into(),
            position: Position {
                epoch: Epoch(9),
                offset,
            },
            at_ms: 1000 + offset,
            payload: Bytes::from_static(payload),
        }
    }

    fn encode_all(records: &[HistoryRecord]) -> Vec<u8> {
        let mut buf = Vec::new();
        for record in records {
            match record {
                HistoryRecord::Entry {
                    topic,
                    position,
                    at_ms,
                    payload,
                } => encode_entry(&mut buf, topic, *position, *at_ms, payload),
                HistoryRecord::Topic {
                    topic,
                    epoch,
                    latest,
                    at_ms,
                } => encode_topic(&mut buf, topic, *epoch, *latest, *at_ms),
                HistoryRecord::Ack {
                    topic,
                    epoch,
                    acked,
                } => encode_ack(&mut buf, topic, *epoch, *acked),
            }
        }
        buf
    }

    #[test]
    fn records_read_back_up_to_a_torn_tail() {
        let records = vec![
            entry("news", 1, b"one"),
            HistoryRecord::Topic {
                topic: "quiet".into(),
                epoch: Epoch(3),
                latest: 12,
                at_ms: 5,
            },
            entry("news", 2, b"two"),
            HistoryRecord::Ack {
                topic: "news".into(),
                epoch: Epoch(9),
                acked: 1,
            },
        ];
        let data = encode_all(&records);
        assert_eq!(read_records(&data), (records.clone(), data.len()));
        let (read, valid) = read_records(&data[..data.len() - 1]);
        assert_eq!(read, records[..3]);
        assert!(valid < data.len() - 1);
        let mut corrupt = data.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(read_records(&corrupt).0, records[..3]);
    }

    #[test]
    fn appends_become_durable_and_survive_a_reopen_and_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (file, recovered) = HistoryFile::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert!(recovered.is_empty());
        let records = [entry("a", 1, b"x"), entry("a", 2, b"y")];
        let token = file.append(|buf| buf.extend(encode_all(&records)));
        runtime.block_on(file.wait_durable(token)).unwrap();
        file.close();
        runtime.block_on(file.closed());
        let (file, recovered) = HistoryFile::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(recovered, records);
        // Topic `a` with only its second message retained, and topic `q` with none (its position survives).
        file.compact(vec![
            TopicSnapshot {
                topic: "a".into(),
                epoch: Epoch(9),
                latest: 2,
                last_ms: 1002,
                acked: 0,
                entries: vec![(2, 1002, Bytes::from_static(b"y"))],
            },
            TopicSnapshot {
                topic: "q".into(),
                epoch: Epoch(4),
                latest: 7,
                last_ms: 5,
                acked: 0,
                entries: Vec::new(),
            },
        ]);
        let token = file.append(|buf| buf.extend(encode_all(&[entry("b", 1, b"z")])));
        runtime.block_on(file.wait_durable(token)).unwrap();
        file.close();
        runtime.block_on(file.closed());
        let (_file, recovered) = HistoryFile::open(dir.path(), FsyncPolicy::Always).unwrap();
        let quiet = HistoryRecord::Topic {
            topic: "q".into(),
            epoch: Epoch(4),
            latest: 7,
            at_ms: 5,
        };
        assert_eq!(recovered, [entry("a", 2, b"y"), quiet, entry("b", 1, b"z")]);
    }
}
