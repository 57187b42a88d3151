//! `Idempotency-Key` for the HTTP API: a retry with the same key (per user) within the TTL gets the first
//! answer again and stores nothing.
//!
//! Why the publisher keeps the keys itself rather than making a key msgqueue's producer dedup key: msgqueue dedups
//! on `(producer, seq)` with sequence numbers that strictly increase on one link, so a key would need a producer
//! (and a link) of its own, and msgqueue's dedup window is not a TTL. A small table here is simpler and exact.
//!
//! The table is bounded in count and bytes (the oldest key is forgotten first) and survives restarts: every
//! answer is appended to `<data-dir>/publisher/idempotency.jsonl` by a writer thread (never on the async
//! workers), which fsyncs what it wrote before the client is answered, and rewrites the file without expired or
//! evicted keys once it holds twice the live ones. At start the file is read back (a torn last line is skipped).

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Answers queued for the writer thread before requests wait for it.
const WRITER_QUEUE: usize = 1024;
/// The file's name under `<data-dir>/publisher/`.
const FILE_NAME: &str = "idempotency.jsonl";

/// Why the key table could not be opened, or an answer not persisted.
#[derive(Debug, Error)]
pub enum IdempotencyError {
    /// Reading or writing the file failed.
    #[error("idempotency key file {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The writer thread has stopped (the publisher is stopping), so the answer is not persisted.
    #[error("the idempotency key writer has stopped")]
    WriterStopped,
    /// The writer could not append the answer to the file (logged there with the OS's reason); the key is
    /// remembered until the publisher restarts.
    #[error("the idempotency key could not be written to disk")]
    NotPersisted,
}

/// Why an `Idempotency-Key` header is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters")]
pub struct BadKey;

/// Checks an `Idempotency-Key` value.
pub fn validate_key(key: &[u8]) -> Result<&str, BadKey> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(u8::is_ascii_graphic) {
        return Err(BadKey);
    }
    std::str::from_utf8(key).map_err(|_| BadKey)
}

/// How many keys are kept and for how long.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyLimits {
    /// How long a key is remembered (`--idempotency-ttl`).
    pub ttl: Duration,
    /// Most keys remembered (`--idempotency-keys`).
    pub max_keys: usize,
    /// Most bytes of remembered answers (`--idempotency-bytes`).
    pub max_bytes: usize,
}

/// The answer given to the first request with a key, replayed to its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

/// What a request with a key may do.
#[derive(Debug)]
pub enum Claim {
    /// The key is new: publish, then [`Pending::complete`] with the answer.
    New(Pending),
    /// The key was answered before: send this again.
    Replay(Answer),
    /// A request with this key is being answered right now.
    InProgress,
    /// The key was used for a different request (another path or body).
    Mismatch,
}

/// One line of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    user: String,
    key: String,
    /// SHA-256 of the request's path and body, hex, so a key reused for another request is caught.
    request: String,
    /// Unix time in milliseconds after which the key is forgotten.
    expires_ms: u64,
    #[serde(flatten)]
    answer: Answer,
}

impl Record {
    fn cost(&self) -> usize {
        self.user.len() + self.key.len() + self.request.len() + self.answer.body.len() + 64
    }

    fn id(&self) -> (String, String) {
        (self.user.clone(), self.key.clone())
    }
}

/// The remembered keys: cheap to clone, shared by every API request.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    table: Arc<Mutex<Table>>,
    writer: mpsc::Sender<(Record, oneshot::Sender<Result<(), IdempotencyError>>)>,
    ttl: Duration,
}

#[derive(Debug)]
enum Entry {
    Pending,
    Done(Record),
}

/// Keys in insertion order (which is expiry order: the TTL is one for all), bounded in count and bytes.
#[derive(Debug)]
struct Table {
    entries: HashMap<(String, String), Entry>,
    order: VecDeque<(String, String)>,
    bytes: usize,
    limits: IdempotencyLimits,
}

impl Table {
    fn new(limits: IdempotencyLimits) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// Adds an answered key, forgetting the oldest ones beyond the bounds.
    fn insert(&mut self, record: Record) {
        let id = record.id();
        if let Some(Entry::Done(old)) = self.entries.remove(&id) {
            self.bytes -= old.cost();
            self.order.retain(|o| *o != id);
        }
        self.bytes += record.cost();
        self.order.push_back(id.clone());
        self.entries.insert(id, Entry::Done(record));
        while self.order.len() > self.limits.max_keys.max(1) || self.bytes > self.limits.max_bytes {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    /// Forgets keys whose time is up.
    fn expire(&mut self, now_ms: u64) {
        while let Some(oldest) = self.order.front() {
            match self.entries.get(oldest) {
                Some(Entry::Done(record)) if record.expires_ms > now_ms => break,
                _ => {
                    self.pop_oldest();
                }
            }
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let Some(id) = self.order.pop_front() else {
            return false;
        };
        if let Some(Entry::Done(record)) = self.entries.remove(&id) {
            self.bytes -= record.cost();
        }
        true
    }

    fn live(&self) -> impl Iterator<Item = &Record> {
        self.order
            .iter()
            .filter_map(|id| match self.entries.get(id) {
                Some(Entry::Done(record)) => Some(record),
                _ => None,
            })
    }
}

/// A request holding a new key: answered with [`Pending::complete`]; dropped unanswered (the request failed
/// before a decision), the key is free again.
#[derive(Debug)]
pub struct Pending {
    store: IdempotencyStore,
    user: String,
    key: String,
    request: String,
    done: bool,
}

impl Pending {
    /// Remembers `answer` for this key and waits until it is on disk, so a retry after a crash gets it too.
    pub async fn complete(mut self, answer: Answer) -> Result<(), IdempotencyError> {
        self.done = true;
        let expires_ms = now_ms().saturating_add(millis(self.store.ttl));
        let record = Record {
            user: std::mem::take(&mut self.user),
            key: std::mem::take(&mut self.key),
            request: std::mem::take(&mut self.request),
            expires_ms,
            answer,
        };
        let (written, on_disk) = oneshot::channel();
        let sent = self.store.writer.send((record.clone(), written)).await;
        self.store.table.lock().insert(record);
        sent.map_err(|_| IdempotencyError::WriterStopped)?;
        on_disk.await.map_err(|_| IdempotencyError::WriterStopped)?
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let id = (
                std::mem::take(&mut self.user),
                std::mem::take(&mut self.key),
            );
            let mut table = self.store.table.lock();
            if matches!(table.entries.get(&id), Some(Entry::Pending)) {
                table.entries.remove(&id);
            }
        }
    }
}

impl IdempotencyStore {
    /// Reads the keys remembered in `data_dir` (blocking: call from `spawn_blocking` or before the runtime
    /// serves), compacts the file and starts its writer thread.
    pub fn open(data_dir: &Path, limits: IdempotencyLimits) -> Result<Self, IdempotencyError> {
        let dir = data_dir.join("publisher");
        fs::create_dir_all(&dir).map_err(|source| IdempotencyError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let mut table = Table::new(limits);
        for record in read_records(&path)? {
            table.insert(record);
        }
        table.expire(now_ms());
        let live: VecDeque<Record> = table.live().cloned().collect();
        let file = rewrite(&path, &live)?;
        let (writer, requests) = mpsc::channel(WRITER_QUEUE);
        let mut thread = Writer {
            path,
            file,
            lines: live.len(),
            table: Table::new(limits),
        };
        for record in live {
            thread.table.insert(record);
        }
        std::thread::Builder::new()
            .name("idempotency-writer".into())
            .spawn(move || thread.run(requests))
            .map_err(|source| IdempotencyError::Io { path: dir, source })?;
        Ok(Self {
            table: Arc::new(Mutex::new(table)),
            writer,
            ttl: limits.ttl,
        })
    }

    /// Claims `key` of `user` for a request whose path and body are `request`.
    pub fn claim(&self, user: &str, key: &str, request: &[u8]) -> Claim {
        let fingerprint = hex(&Sha256::digest(request));
        let id = (user.to_owned(), key.to_owned());
        let mut table = self.table.lock();
        table.expire(now_ms());
        match table.entries.get(&id) {
            Some(Entry::Pending) => Claim::InProgress,
            Some(Entry::Done(record)) if record.request != fingerprint => Claim::Mismatch,
            Some(Entry::Done(record)) => Claim::Replay(record.answer.clone()),
            None => {
                table.entries.insert(id, Entry::Pending);
                Claim::New(Pending {
                    store: self.clone(),
                    user: user.to_owned(),
                    key: key.to_owned(),
                    request: fingerprint,
                    done: false,
                })
            }
        }
    }
}

/// The writer thread's state: the file and its own copy of the live keys, to rewrite the file from.
struct Writer {
    path: PathBuf,
    file: File,
    lines: usize,
    table: Table,
}

impl Writer {
    /// Appends answers as they come (several at once under load, with one fsync), until every store is gone.
    fn run(
        mut self,
        mut requests: mpsc::Receiver<(Record, oneshot::Sender<Result<(), IdempotencyError>>)>,
    ) {
        while let Some(first) = requests.blocking_recv() {
            let mut batch = vec![first];
            while let Ok(next) = requests.try_recv() {
                batch.push(next);
            }
            let written = self.append(batch.iter().map(|(record, _)| record));
            if let Err(err) = &written {
                tracing::error!(%err, "cannot persist idempotency keys");
            }
            for (record, done) in batch {
                self.table.insert(record);
                let _ = done.send(match &written {
                    Ok(()) => Ok(()),
                    Err(_) => Err(IdempotencyError::NotPersisted),
                });
            }
            if self.lines > 2 * self.table.order.len() + 1024 {
                self.compact();
            }
        }
    }

    fn append<'a>(&mut self, records: impl Iterator<Item = &'a Record>) -> Result<(), io::Error> {
        let mut buf = Vec::new();
        for record in records {
            serde_json::to_writer(&mut buf, record)?;
            buf.push(b'\n');
            self.lines += 1;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    fn compact(&mut self) {
        self.table.expire(now_ms());
        let live: Vec<Record> = self.table.live().cloned().collect();
        match rewrite(&self.path, &live) {
            Ok(file) => {
                self.file = file;
                self.lines = live.len();
            }
            Err(err) => tracing::warn!(%err, "cannot compact the idempotency key file"),
        }
    }
}

/// Every record of the file, in order; a line that does not parse (a torn last write) is skipped.
fn read_records(path: &Path) -> Result<Vec<Record>, IdempotencyError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(IdempotencyError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut records = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| IdempotencyError::Io {
            path: path.to_owned(),
            source,
        })?;
        match serde_json::from_slice::<Record>(&line) {
            Ok(record) => records.push(record),
            Err(err) => tracing::warn!(%err, "skipping an unreadable idempotency key record"),
        }
    }
    Ok(records)
}

/// Replaces the file by one holding `records` (written aside, fsynced, renamed) and opens it for appending.
fn rewrite<'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<File, IdempotencyError> {
    let io_error = |source| IdempotencyError::Io {
        path: path.to_owned(),
        source,
    };
    let aside = path.with_extension("jsonl.new");
    let mut buf = Vec::new();
    for record in records {
        serde_json::to_writer(&mut buf, record).map_err(|err| io_error(err.into()))?;
        buf.push(b'\n');
    }
    let mut file = File::create(&aside).map_err(io_error)?;
    file.write_all(&buf).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    fs::rename(&aside, path).map_err(io_error)?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error)?;
    }
    OpenOptions::new().append(true).open(path).map_err(io_error)
}

fn now_ms() -> u64 {
    millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IdempotencyLimits = IdempotencyLimits {
        ttl: Duration::from_secs(300),
        max_keys: 3,
        max_bytes: 1 << 20,
    };

    fn answer(body: &str) -> Answer {
        Answer {
            status: 200,
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn an_answered_key_is_replayed_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdempotencyStore::open(dir.path(), LIMITS).unwrap();
        let Claim::New(pending) = store.claim("alice", "k1", b"req") else {
            panic!("a new key is new");
        };
        assert!(matches!(
            store.claim("alice", "k1", b"req"),
            Claim::InProgress
        ));
        pending.complete(answer("{\"id\":1}")).await.unwrap();
        assert!(
            matches!(store.claim("alice", "k1", b"req"), Claim::Replay(a) if a == answer("{\"id\":1}"))
        );
        assert!(matches!(
            store.claim("alice", "k1", b"other"),
            Claim::Mismatch
        ));
        assert!(matches!(store.claim("bob", "k1", b"req"), Claim::New(_)));
        drop(store);

        let reopened = IdempotencyStore::open(dir.path(), LIMITS).unwrap();
        assert!(
            matches!(reopened.claim("alice", "k1", b"req"), Claim::Replay(a) if a == answer("{\"id\":1}"))
        );
    }

    #[test]
    fn an_unanswered_claim_frees_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdempotencyStore::open(dir.path(), LIMITS).unwrap();
        drop(store.claim("alice", "k1", b"req"));
        assert!(matches!(store.claim("alice", "k1", b"req"), Claim::New(_)));
    }

    #[tokio::test]
    async fn the_oldest_keys_are_forgotten_beyond_the_bound_and_expired_ones_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdempotencyStore::open(dir.path(), LIMITS).unwrap();
        for key in ["a", "b", "c", "d"] {
            let Claim::New(pending) = store.claim("u", key, b"r") else {
                panic!("new key");
            };
            pending.complete(answer(key)).await.unwrap();
        }
        assert!(matches!(store.claim("u", "a", b"r"), Claim::New(_)));
        assert!(matches!(store.claim("u", "d", b"r"), Claim::Replay(_)));
        drop(store);

        let fresh = tempfile::tempdir().unwrap();
        let expired = IdempotencyStore::open(
            fresh.path(),
            IdempotencyLimits {
                ttl: Duration::ZERO,
                ..LIMITS
            },
        )
        .unwrap();
        let Claim::New(pending) = expired.claim("u", "e", b"r") else {
            panic!("new key");
        };
        pending.complete(answer("e")).await.unwrap();
        assert!(matches!(expired.claim("u", "e", b"r"), Claim::New(_)));
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        assert!(validate_key(b"order-17").is_ok());
        assert_eq!(validate_key(b""), Err(BadKey));
        assert_eq!(validate_key(b"has space"), Err(BadKey));
        assert_eq!(validate_key(&[b'k'; MAX_KEY_LEN + 1]), Err(BadKey));
    }
}
