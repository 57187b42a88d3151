//! The disk backend's schedule file, `schedule.journal` beside the segment files (not `.log`, which names
//! segments): an append-only list of records, written by a thread of its own (never on the async workers) and
//! fsynced before a scheduled push is acked (unless `--fsync never`). On open it is read back (a torn or corrupt
//! tail is cut off) and rewritten with only what is still scheduled; while running it is rewritten the same way
//! once most of it is garbage.
//!
//! ```text
//! record  len:u32 crc32(body):u32 body[len]                    (framed by crate::queue::journal)
//! body    0x01 PUT  n:u64 due_ms:u64 producer:u64 seq:u64 payload[..]
//!         0x02 DEL  n:u64
//!         0x03 MARK producer:u64 seq:u64        (a dedup mark kept across a rewrite)
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch};

use super::local::Marks;
use crate::queue::{StorageError, journal};

const FILE_NAME: &str = "schedule.journal";
const TEMP_NAME: &str = "schedule.journal.tmp";
const PUT: u8 = 0x01;
const DEL: u8 = 0x02;
const MARK: u8 = 0x03;
/// Writes queued for the writer thread; callers wait beyond it (backpressure).
const MAX_REQUESTS: usize = 256;
/// The file is rewritten once it holds this much more than what is still scheduled (and twice that).
const REWRITE_SLACK: u64 = 16 * 1024 * 1024;

/// One scheduled message as the file keeps it.
#[derive(Debug, Clone)]
pub(super) struct Put {
    pub(super) n: u64,
    pub(super) due_ms: u64,
    pub(super) producer: u64,
    pub(super) seq: u64,
    pub(super) payload: Bytes,
}

/// What the file held at open.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Entries still scheduled, in arrival order.
    pub(super) entries: Vec<Put>,
    /// The producers' dedup marks.
    pub(super) marks: Vec<(u64, u64)>,
}

/// Hands writes to the file's writer thread.
#[derive(Debug)]
pub(super) struct ScheduleFile {
    requests: parking_lot::Mutex<Option<mpsc::Sender<Request>>>,
    /// Set by the writer thread when it ends.
    stopped: watch::Receiver<bool>,
    path: PathBuf,
}

struct Request {
    puts: Vec<Put>,
    dels: Vec<u64>,
    done: oneshot::Sender<Result<(), StorageError>>,
}

impl ScheduleFile {
    /// Reads the file in `dir` back (creating it if missing), rewrites it compactly, and starts the writer thread.
    /// Blocks.
    pub(super) fn open(
        dir: &Path,
        fsync: bool,
        max_producers: usize,
    ) -> Result<(Self, Recovered), StorageError> {
        let path = dir.join(FILE_NAME);
        let mut mirror = Mirror::new(max_producers);
        match File::open(&path) {
            Ok(mut file) => {
                let mut data = Vec::new();
                file.read_to_end(&mut data)
                    .map_err(|e| StorageError::io("cannot read", &path, e))?;
                let (records, used) = decode(Bytes::from(data.clone()));
                if used < data.len() {
                    tracing::warn!(path = %path.display(), position = used, dropped_bytes = data.len() - used,
                        "cut a torn or corrupt tail off the schedule file");
                }
                records.into_iter().for_each(|r| mirror.apply(r));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("cannot open", &path, e)),
        }
        let file = mirror.rewrite(dir, &path)?;
        let mut entries: Vec<Put> = mirror.entries.values().cloned().collect();
        entries.sort_by_key(|p| p.n);
        let recovered = Recovered {
            entries,
            marks: mirror.marks.iter().collect(),
        };
        let (tx, rx) = mpsc::channel(MAX_REQUESTS);
        let (stopped_tx, stopped) = watch::channel(false);
        let writer = Writer {
            file,
            fsync,
            dir: dir.to_path_buf(),
            path: path.clone(),
            mirror,
        };
        std::thread::Builder::new()
            .name("schedule-writer".to_owned())
            .spawn(move || {
                writer.run(rx);
                stopped_tx.send_replace(true);
            })
            .map_err(|e| StorageError::io("cannot start the writer for", &path, e))?;
        Ok((
            Self {
                requests: parking_lot::Mutex::new(Some(tx)),
                stopped,
                path,
            },
            recovered,
        ))
    }

    /// Appends `puts` and `dels`; resolves once they are durable (per the fsync setting), after everything
    /// submitted before.
    pub(super) async fn write(&self, puts: Vec<Put>, dels: Vec<u64>) -> Result<(), StorageError> {
        let closed = || StorageError::WriterFailed(format!("{} is closed", self.path.display()));
        let Some(sender) = self.requests.lock().clone() else {
            return Err(closed());
        };
        let (done, answer) = oneshot::channel();
        sender
            .send(Request { puts, dels, done })
            .await
            .map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Appends `dels` without waiting for them to be durable (waiting only for room in the writer's queue): a
    /// removal lost in a crash only delivers the message again, which scheduled delivery allows.
    pub(super) async fn delete(&self, dels: Vec<u64>) -> Result<(), StorageError> {
        let closed = || StorageError::WriterFailed(format!("{} is closed", self.path.display()));
        let Some(sender) = self.requests.lock().clone() else {
            return Err(closed());
        };
        let (done, _) = oneshot::channel();
        let request = Request {
            puts: Vec::new(),
            dels,
            done,
        };
        sender.send(request).await.map_err(|_| closed())
    }

    /// Lets the writer finish what was submitted, and waits until it stopped.
    pub(super) async fn close(&self) {
        drop(self.requests.lock().take());
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

/// What is in the file, kept by the writer so it can rewrite it without asking anyone.
struct Mirror {
    entries: HashMap<u64, Put>,
    live_bytes: u64,
    marks: Marks,
}

impl Mirror {
    fn new(max_producers: usize) -> Self {
        Self {
            entries: HashMap::new(),
            live_bytes: 0,
            marks: Marks::new(max_producers),
        }
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Put(put) => {
                self.marks.take(put.producer, put.seq);
                self.live_bytes += record_len(&put) as u64;
                if let Some(old) = self.entries.insert(put.n, put) {
                    self.live_bytes -= record_len(&old) as u64;
                }
            }
            Record::Del(n) => {
                if let Some(old) = self.entries.remove(&n) {
                    self.live_bytes -= record_len(&old) as u64;
                }
            }
            Record::Mark(producer, seq) => {
                self.marks.take(producer, seq);
            }
        }
    }

    /// Writes the live entries and marks to a new file that replaces `path`, and returns it open for appending.
    fn rewrite(&self, dir: &Path, path: &Path) -> Result<File, StorageError> {
        let temp = dir.join(TEMP_NAME);
        let mut buf = BytesMut::new();
        for (producer, seq) in self.marks.iter() {
            encode(&mut buf, &Record::Mark(producer, seq));
        }
        let mut puts: Vec<&Put> = self.entries.values().collect();
        puts.sort_by_key(|p| p.n);
        for put in puts {
            encode(&mut buf, &Record::Put(put.clone()));
        }
        journal::replace(dir, path, &temp, &buf)
    }
}

/// The thread that owns the file.
struct Writer {
    file: File,
    fsync: bool,
    dir: PathBuf,
    path: PathBuf,
    mirror: Mirror,
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut batch = Vec::new();
        let mut buf = BytesMut::new();
        let mut file_bytes = self.mirror.live_bytes;
        let mut failed: Option<StorageError> = None;
        while requests.blocking_recv_many(&mut batch, MAX_REQUESTS) > 0 {
            buf.clear();
            for request in &batch {
                for put in &request.puts {
                    encode(&mut buf, &Record::Put(put.clone()));
                }
                for &n in &request.dels {
                    encode(&mut buf, &Record::Del(n));
                }
            }
            if failed.is_none()
                && let Err(err) = self.append(&buf)
            {
                tracing::error!(%err, "the schedule file cannot be written; scheduled pushes are refused");
                failed = Some(err);
            }
            file_bytes += buf.len() as u64;
            for request in batch.drain(..) {
                if failed.is_none() {
                    request
                        .puts
                        .into_iter()
                        .for_each(|p| self.mirror.apply(Record::Put(p)));
                    request
                        .dels
                        .into_iter()
                        .for_each(|n| self.mirror.apply(Record::Del(n)));
                }
                let _ = request.done.send(failed.clone().map_or(Ok(()), Err));
            }
            if failed.is_none() && file_bytes > REWRITE_SLACK + 2 * self.mirror.live_bytes {
                match self.mirror.rewrite(&self.dir, &self.path) {
                    Ok(file) => {
                        self.file = file;
                        file_bytes = self.mirror.live_bytes;
                    }
                    Err(err) => {
                        tracing::error!(%err, "cannot rewrite the schedule file");
                        failed = Some(err);
                    }
                }
            }
        }
        if failed.is_none() && !self.fsync {
            let _ = self.file.sync_all();
        }
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), StorageError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(buf)
            .and_then(|()| {
                if self.fsync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| StorageError::io("cannot write", &self.path, e))
    }
}

enum Record {
    Put(Put),
    Del(u64),
    Mark(u64, u64),
}

fn record_len(put: &Put) -> usize {
    8 + 1 + 32 + put.payload.len()
}

fn encode(buf: &mut BytesMut, record: &Record) {
    journal::frame(buf, |body| match record {
        Record::Put(put) => {
            body.put_u8(PUT);
            body.put_u64_le(put.n);
            body.put_u64_le(put.due_ms);
            body.put_u64_le(put.producer);
            body.put_u64_le(put.seq);
            body.put_slice(&put.payload);
        }
        Record::Del(n) => {
            body.put_u8(DEL);
            body.put_u64_le(*n);
        }
        Record::Mark(producer, seq) => {
            body.put_u8(MARK);
            body.put_u64_le(*producer);
            body.put_u64_le(*seq);
        }
    });
}

/// The records of `data` up to the first torn or corrupt one, and the bytes they use.
fn decode(data: Bytes) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut used = 0;
    for (end, body) in journal::frames(&data) {
        let mut body = data.slice_ref(body);
        let record = match (body.get_u8(), body.len()) {
            (PUT, n) if n >= 32 => Record::Put(Put {
                n: body.get_u64_le(),
                due_ms: body.get_u64_le(),
                producer: body.get_u64_le(),
                seq: body.get_u64_le(),
                payload: body,
            }),
            (DEL, 8) => Record::Del(body.get_u64_le()),
            (MARK, 16) => Record::Mark(body.get_u64_le(), body.get_u64_le()),
            _ => break,
        };
        records.push(record);
        used = end;
    }
    (records, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let mut buf = BytesMut::new();
        let put = Put {
            n: 1,
            due_ms: 5,
            producer: 7,
            seq: 9,
            payload: Bytes::from_static(b"hello"),
        };
        encode(&mut buf, &Record::Put(put));
        encode(&mut buf, &Record::Del(1));
        let whole = buf.len();
        encode(&mut buf, &Record::Mark(7, 10));
        let data = buf.freeze();
        let (records, used) = decode(data.slice(..data.len() - 1));
        assert_eq!((records.len(), used), (2, whole));
        let mut flipped = data.to_vec();
        flipped[whole + 9] ^= 1;
        let (records, used) = decode(Bytes::from(flipped));
        assert_eq!((records.len(), used), (2, whole));
        assert_eq!(decode(data.clone()).0.len(), 3);
    }
}
