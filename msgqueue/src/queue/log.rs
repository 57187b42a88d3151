//! The disk backend: an append-only log of segment files with group commit, recovery and segment deletion.
//!
//! It implements the [`Log`], [`GroupStore`] and [`DeadStore`] seam. Appends encode records into a shared pending
//! buffer under the log's own short lock, which also assigns offsets (so log order is offset order). One writer
//! thread swaps that buffer out, writes the whole group with one `write`, fsyncs once per the policy, and
//! publishes its progress on a `watch` channel that `wait_durable` and read-back wait on. Segments are named by
//! the first offset they may hold (`00000000000000000042.log`) and each starts with a snapshot record (next
//! offset, every live group with its ack floor, producer dedup marks), so a segment that only holds acked
//! messages can be deleted without losing anything the queue must remember. The log builds that snapshot itself
//! from what it was given: offsets it assigned, producers it appended for, groups created and dropped, and the
//! floor reported with each group's acks.
//!
//! Dead letters go to their own append-only file, `dead/dead.log`, in the same record format. The writer writes
//! (and fsyncs) the dead-letter buffer before each group, and the engine buffers a message's ack after its dead
//! letter, so an ack never becomes durable before the dead letter it depends on. The file is compacted at open.
//!
//! When the disk is full (`ENOSPC`, `EDQUOT`) the writer cuts the partial record it left, refuses new pushes
//! ([`Log::no_space`]) and retries the same write with a backoff until it succeeds: nothing accepted is
//! dropped, and pushes are accepted again as soon as space returns. Other I/O errors still stop the writer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{Notify, watch};

use super::dead::DeadLetter;
use super::dedup::Producers;
use super::rangeset::RangeSet;
use super::record::{self, DEFAULT_GROUP_ID, GroupMark, Record, SegmentReader, Snapshot, Step};
use super::storage::{
    Appended, DeadStore, Entry, GroupStore, Log, Progress, StorageError, is_no_space,
};
use super::{DEFAULT_GROUP, DurableToken, FsyncPolicy, Producer, Truncation};
use wsmq_core::supervise::{TaskFailure, fault_point};

/// Buffered-but-unwritten bytes beyond which pushes are refused until the writer catches up (the capacity of the
/// writer's queue).
const WRITE_BACKLOG_CAP: usize = 64 * 1024 * 1024;
/// Capacity the writer keeps in its spare buffer after a burst, so a past backlog does not pin its memory.
const SPARE_BUFFER_CAP: usize = 4 * 1024 * 1024;
/// How long lazily logged acks (and floor-driven deletions) may wait for a group to ride along with.
const LAZY_FLUSH: Duration = Duration::from_millis(100);
/// Segment file name suffix.
const SEGMENT_EXT: &str = "log";
/// File locked for the lifetime of the log so a second queue cannot open the same directory.
const LOCK_FILE: &str = "LOCK";
/// Subdirectory of the log directory holding the dead-letter file.
const DEAD_DIR: &str = "dead";
/// The dead-letter file.
const DEAD_FILE: &str = "dead.log";
/// First and longest pause between retries of a write that failed because the disk is full.
const NO_SPACE_RETRY_MIN: Duration = Duration::from_millis(20);
const NO_SPACE_RETRY_MAX: Duration = Duration::from_millis(500);
/// Read cursors kept between reads (about one per group reading its backlog back).
const READ_CURSORS: usize = 16;

/// One segment file as known to the writer and the reader.
#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    path: PathBuf,
    /// Bytes written so far (readers never look beyond).
    len: u64,
}

/// Work handed from the engine to the writer thread.
#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    /// Dead-letter records, written to the dead-letter file before `buf`.
    dead: Vec<u8>,
    /// `(position in buf, base offset)`: a new segment starts at that byte.
    rolls: Vec<(usize, u64)>,
    /// Logical log position (bytes appended since open) at the end of `buf`.
    position: u64,
    /// Size of the active segment including what is still in `buf`.
    segment_bytes: u64,
    /// Base offset of the active segment (after pending rolls).
    active_base: u64,
    floor: u64,
    /// The offset the next message gets.
    next_offset: u64,
    /// Dedup marks of the producers seen, for `is_duplicate` and the segment-head snapshots.
    producers: Producers,
    /// Every live group with its ack floor as last reported, for the segment-head snapshots. A floor reported
    /// late is lower than the group's real one, which recovery tolerates: acks written since are replayed, and
    /// older acks only cover offsets in segments already deleted.
    groups: BTreeMap<u32, GroupMark>,
    /// A message was appended: the writer should not wait for more.
    urgent: bool,
    /// The writer is asleep with nothing to do, so even a lazy append must wake it.
    idle: bool,
    closing: bool,
    failed: Option<String>,
}

/// State shared by the engine side and the writer thread.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    policy: FsyncPolicy,
    pending: Mutex<Pending>,
    wake: Condvar,
    segments: Mutex<Vec<Segment>>,
    progress: watch::Sender<Progress>,
    /// Notified when a backlog the writer was behind on has been taken, so refused pushers can retry.
    space: Arc<Notify>,
    /// `pending.buf` reached [`WRITE_BACKLOG_CAP`]; read on every push without taking the pending lock.
    backlogged: AtomicBool,
    /// The writer is retrying a write that failed for lack of space; pushes are refused meanwhile.
    no_space: AtomicBool,
    dead_path: PathBuf,
    /// Bytes of the dead-letter file written so far (readers never look beyond).
    dead_len: AtomicU64,
}

impl Shared {
    /// Reports a panicked writer thread like a failed one, so pushes and waiters get an error instead of
    /// hanging, and marks it as a panic, which `Queue::writer_died` turns into a stop of the service.
    fn writer_panicked(&self, failure: &TaskFailure) {
        tracing::error!(%failure, "log writer thread died; the queue no longer accepts pushes");
        let reason = failure.to_string();
        self.pending.lock().failed = Some(reason.clone());
        self.progress.send_modify(|p| {
            p.failed = Some(reason);
            p.panicked = true;
        });
        self.space.notify_waiters();
    }
}

/// Where the reader is in the log, so reading the backlog in order is a sequential scan.
#[derive(Debug, Default)]
struct ReadCursor {
    /// The offset the cursor position corresponds to (the next offset to look for).
    next: u64,
    base: u64,
    pos: u64,
    reader: SegmentReader,
}

/// What recovery found about one consumer group.
#[derive(Debug)]
pub(crate) struct RecoveredGroup {
    pub(crate) id: u32,
    pub(crate) name: String,
    /// Every offset below it is acked by the group.
    pub(crate) floor: u64,
    /// Unacked messages.
    pub(crate) messages: u64,
    /// Their payload bytes.
    pub(crate) bytes: u64,
    /// The lowest unacked offset (== `next_offset` when nothing is unacked).
    pub(crate) first_unacked: u64,
    /// One past the highest unacked offset (== `first_unacked` when nothing is unacked): offsets lost to a
    /// truncation at the very end must not look like messages still to be read back.
    pub(crate) unacked_end: u64,
    /// Acked offsets at or above `first_unacked`, to skip when reading the backlog back.
    pub(crate) acked: RangeSet,
}

/// What recovery found in the log.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) next_offset: u64,
    /// The live consumer groups.
    pub(crate) groups: Vec<RecoveredGroup>,
    /// The id the next new group gets (ids are never reused).
    pub(crate) next_group_id: u32,
    pub(crate) producers: Vec<(u64, u64)>,
    pub(crate) truncations: Vec<Truncation>,
    pub(crate) segments: usize,
    /// Dead letters in the dead-letter file.
    pub(crate) dead: Vec<DeadLetter>,
}

/// The durable segment-log backend.
#[derive(Debug)]
pub(crate) struct DiskLog {
    shared: Arc<Shared>,
    segment_size: u64,
    /// Where recent reads stopped, so a group reading its backlog back in order scans sequentially.
    cursors: Mutex<Vec<ReadCursor>>,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXT}"))
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, StorageError> {
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("cannot list", dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("cannot list", dir, e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        let Some(base) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&base| base < record::OFFSET_LIMIT)
        else {
            continue;
        };
        let len = entry
            .metadata()
            .map_err(|e| StorageError::io("cannot stat", &path, e))?
            .len();
        segments.push(Segment { base, path, len });
    }
    segments.sort_by_key(|s| s.base);
    Ok(segments)
}

fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("cannot open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::io("cannot lock", &path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("cannot fsync directory", dir, e))
}

fn open_segment(path: &Path) -> Result<File, StorageError> {
    File::open(path).map_err(|e| StorageError::io("cannot open", path, e))
}

/// A group's acks as recovery collects them.
#[derive(Debug)]
struct GroupScan {
    name: String,
    floor: u64,
    runs: Vec<(u64, u64)>,
}

/// Scans every segment, truncating each at its first torn or corrupt record, and rebuilds the queue's state.
fn recover(segments: &mut Vec<Segment>) -> Result<Recovered, StorageError> {
    let mut reader = SegmentReader::default();
    let mut next_offset = 0;
    let mut producers: HashMap<u64, u64> = HashMap::new();
    let mut truncations = Vec::new();
    let bases: Vec<u64> = segments.iter().map(|s| s.base).collect();
    // A log written before groups existed holds only the default group's acks; it exists from the first open.
    let mut groups: BTreeMap<u32, GroupScan> = BTreeMap::new();
    groups.insert(
        DEFAULT_GROUP_ID,
        GroupScan {
            name: DEFAULT_GROUP.to_owned(),
            floor: 0,
            runs: Vec::new(),
        },
    );
    let mut next_group_id = DEFAULT_GROUP_ID + 1;
    for (index, segment) in segments.iter_mut().enumerate() {
        let next_base = bases.get(index + 1).copied().unwrap_or(u64::MAX);
        reader.open(open_segment(&segment.path)?);
        let mut pos = 0;
        loop {
            let step = reader
                .next(pos, segment.len)
                .map_err(|e| StorageError::io("cannot read", &segment.path, e))?;
            match step {
                Step::Record(record, after) if fits(&record, segment.base, next_base) => {
                    match record {
                        Record::Message {
                            offset, producer, ..
                        } => {
                            next_offset = next_offset.max(offset + 1);
                            if let Some(p) = producer {
                                let mark = producers.entry(p.id).or_insert(p.seq);
                                *mark = (*mark).max(p.seq);
                            }
                        }
                        Record::Acks(id, runs) => {
                            if let Some(group) = groups.get_mut(&id) {
                                group.runs.extend(runs.into_iter().map(|(start, count)| {
                                    (start, start.saturating_add(u64::from(count)))
                                }));
                            }
                        }
                        Record::Snapshot(snapshot) => {
                            next_offset = next_offset.max(snapshot.next_offset);
                            if let Some(group) = groups.get_mut(&DEFAULT_GROUP_ID) {
                                group.floor = group.floor.max(snapshot.floor);
                            }
                            for (id, seq) in snapshot.producers {
                                let mark = producers.entry(id).or_insert(seq);
                                *mark = (*mark).max(seq);
                            }
                        }
                        Record::Groups(live) => {
                            // The list at a segment's head is authoritative: groups dropped in a deleted segment
                            // are absent from it.
                            groups.retain(|id, _| live.iter().any(|g| g.id == *id));
                            for mark in live {
                                next_group_id = next_group_id.max(mark.id.saturating_add(1));
                                let group = groups.entry(mark.id).or_insert(GroupScan {
                                    name: mark.name,
                                    floor: 0,
                                    runs: Vec::new(),
                                });
                                group.floor = group.floor.max(mark.floor);
                            }
                        }
                        Record::Group(mark) => {
                            next_group_id = next_group_id.max(mark.id.saturating_add(1));
                            groups.entry(mark.id).or_insert(GroupScan {
                                name: mark.name,
                                floor: mark.floor,
                                runs: Vec::new(),
                            });
                        }
                        Record::GroupDropped(id) => {
                            next_group_id = next_group_id.max(id.saturating_add(1));
                            groups.remove(&id);
                        }
                        // Dead letters live in their own file.
                        Record::Dead(..) | Record::DeadRemoved(_) => {}
                    }
                    pos = after;
                }
                Step::End => break,
                Step::Record(..) | Step::Torn | Step::Corrupt => {
                    truncate(&segment.path, pos)?;
                    tracing::warn!(segment = %segment.path.display(), position = pos,
                        dropped_bytes = segment.len - pos, "truncated a torn or corrupt log tail");
                    truncations.push(Truncation {
                        segment: segment.path.clone(),
                        position: pos,
                        dropped_bytes: segment.len - pos,
                    });
                    segment.len = pos;
                    break;
                }
            }
        }
    }
    // A segment is named by the next offset when it was started, so the queue got at least that far even if the
    // segment's head snapshot was torn.
    next_offset = next_offset.max(segments.last().map_or(0, |s| s.base));
    // Messages below the first segment were deleted because every group had acked them.
    let oldest = segments.first().map_or(0, |s| s.base);
    let mut found: Vec<RecoveredGroup> = groups
        .into_iter()
        .map(|(id, scan)| {
            let floor = scan.floor.clamp(oldest.min(next_offset), next_offset);
            let mut acked = RangeSet::default();
            // An ack of an offset not yet assigned was not written by this log; kept, it would swallow the
            // message that gets that offset next.
            for (start, end) in scan.runs {
                if start < next_offset {
                    acked.insert(start, end.min(next_offset));
                }
            }
            acked.remove_below(floor);
            RecoveredGroup {
                id,
                name: scan.name,
                floor,
                first_unacked: next_offset,
                unacked_end: floor,
                acked,
                messages: 0,
                bytes: 0,
            }
        })
        .collect();
    let global_floor = found.iter().map(|g| g.floor).min().unwrap_or(next_offset);
    delete_below(segments, global_floor)?;

    // Read-back delivers only offsets above the last one it passed; count the same way, or a damaged log
    // holding an offset twice or out of order would report messages no consumer can ever receive.
    let mut above = 0;
    for segment in segments.iter() {
        reader.open(open_segment(&segment.path)?);
        let mut pos = 0;
        while let Step::Record(record, after) = reader
            .next(pos, segment.len)
            .map_err(|e| StorageError::io("cannot read", &segment.path, e))?
        {
            if let Record::Message {
                offset, payload, ..
            } = record
                && offset >= above
            {
                above = offset + 1;
                for group in &mut found {
                    if offset >= group.floor && !group.acked.contains(offset) {
                        group.messages += 1;
                        group.bytes += payload.len() as u64;
                        group.first_unacked = group.first_unacked.min(offset);
                        group.unacked_end = group.unacked_end.max(offset + 1);
                    }
                }
            }
            pos = after;
        }
    }
    for group in &mut found {
        group.first_unacked = group.first_unacked.max(group.floor);
        group.unacked_end = group.unacked_end.max(group.first_unacked);
        group.acked.remove_below(group.first_unacked);
    }
    Ok(Recovered {
        next_offset,
        groups: found,
        next_group_id,
        producers: producers.into_iter().collect(),
        truncations,
        segments: segments.len(),
        dead: Vec::new(),
    })
}

/// Reads the dead-letter file (creating it if missing), truncating a torn tail, and compacts it when it holds
/// removed letters. Returns the live letters and the file's length.
fn recover_dead(dir: &Path) -> Result<(Vec<DeadLetter>, u64), StorageError> {
    let path = dir.join(DEAD_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .open(&path)
        .map_err(|e| StorageError::io("cannot open", &path, e))?;
    let mut len = file
        .metadata()
        .map_err(|e| StorageError::io("cannot stat", &path, e))?
        .len();
    let mut reader = SegmentReader::default();
    reader.open(open_segment(&path)?);
    let mut letters = std::collections::BTreeMap::new();
    let mut removed = false;
    let mut pos = 0;
    loop {
        match reader
            .next(pos, len)
            .map_err(|e| StorageError::io("cannot read", &path, e))?
        {
            Step::Record(record, after) => {
                match record {
                    Record::Dead(header, payload) => {
                        letters.insert(header.id, DeadLetter::from_record(&header, payload.len()));
                    }
                    Record::DeadRemoved(ids) => {
                        for id in ids {
                            removed |= letters.remove(&id).is_some();
                        }
                    }
                    _ => removed = true,
                }
                pos = after;
            }
            Step::End => break,
            Step::Torn | Step::Corrupt => {
                tracing::warn!(file = %path.display(), position = pos, dropped_bytes = len - pos,
                    "truncated a torn or corrupt dead-letter tail");
                truncate(&path, pos)?;
                len = pos;
                break;
            }
        }
    }
    if removed {
        len = compact_dead(dir, &path, len, &letters)?;
    }
    Ok((letters.into_values().collect(), len))
}

/// Rewrites the dead-letter file with only the letters in `live`; returns the new length.
fn compact_dead(
    dir: &Path,
    path: &Path,
    len: u64,
    live: &std::collections::BTreeMap<u64, DeadLetter>,
) -> Result<u64, StorageError> {
    let tmp = dir.join(format!("{DEAD_FILE}.tmp"));
    let file = File::create(&tmp).map_err(|e| StorageError::io("cannot create", &tmp, e))?;
    let mut out = BufWriter::new(file);
    let mut reader = SegmentReader::default();
    reader.open(open_segment(path)?);
    let mut buf = Vec::new();
    let mut written = 0;
    let mut pos = 0;
    while let Step::Record(record, after) = reader
        .next(pos, len)
        .map_err(|e| StorageError::io("cannot read", path, e))?
    {
        if let Record::Dead(header, payload) = record
            && live.contains_key(&header.id)
        {
            buf.clear();
            record::encode_dead(&mut buf, &header, payload);
            out.write_all(&buf)
                .map_err(|e| StorageError::io("cannot write", &tmp, e))?;
            written += buf.len() as u64;
        }
        pos = after;
    }
    out.into_inner()
        .map_err(|e| StorageError::io("cannot write", &tmp, e.into_error()))?
        .sync_all()
        .map_err(|e| StorageError::io("cannot fsync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StorageError::io("cannot rename", &tmp, e))?;
    sync_dir(dir)?;
    Ok(written)
}

/// The file operations [`append_whole`] needs: a seam so tests can inject a disk that fills up mid-write.
trait AppendFile: Write {
    fn sync_data(&self) -> std::io::Result<()>;
    fn set_len(&self, len: u64) -> std::io::Result<()>;
}

impl AppendFile for File {
    fn sync_data(&self) -> std::io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }
}

/// Appends `bytes` to `file`, whose valid part ends at `good_len`, and fsyncs if asked. On failure the partial
/// write is cut off again, so a retry appends whole records right after the last good one.
fn append_whole(
    file: &mut impl AppendFile,
    path: &Path,
    good_len: u64,
    bytes: &[u8],
    sync: bool,
) -> Result<(), StorageError> {
    let result = file
        .write_all(bytes)
        .map_err(|e| StorageError::io("cannot write", path, e))
        .and_then(|()| {
            if sync {
                file.sync_data()
                    .map_err(|e| StorageError::io("cannot fsync", path, e))
            } else {
                Ok(())
            }
        });
    if result.is_err() {
        file.set_len(good_len)
            .map_err(|e| StorageError::io("cannot cut a partial write from", path, e))?;
    }
    result
}

/// Whether a record agrees with its segment, named `base`, and the next one, starting at `next_base`: a segment
/// is started when the next offset reaches its base (and recovery never lets the next offset fall below the last
/// base), so its messages and its head snapshot lie between the two. A checksummed record that says otherwise was
/// not written by this log; recovery treats it as corrupt, or deleting segments once their messages are acked
/// would move the next offset backwards or bring acked messages back after the following restart.
fn fits(record: &Record<'_>, base: u64, next_base: u64) -> bool {
    match record {
        Record::Message { offset, .. } => (base..next_base).contains(offset),
        Record::Snapshot(snapshot) => (base..=next_base).contains(&snapshot.next_offset),
        // Dead-letter records belong in the dead-letter file; recovery of a segment ignores them.
        Record::Acks(..)
        | Record::Group(_)
        | Record::GroupDropped(_)
        | Record::Groups(_)
        | Record::Dead(..)
        | Record::DeadRemoved(_) => true,
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("cannot open for truncation", path, e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io("cannot truncate", path, e))
}

/// Deletes every segment but the last whose successor starts at or below `floor`: all its messages are acked.
fn delete_below(segments: &mut Vec<Segment>, floor: u64) -> Result<(), StorageError> {
    let keep_from = segments
        .windows(2)
        .take_while(|pair| pair[1].base <= floor)
        .count();
    for segment in segments.drain(..keep_from) {
        fs::remove_file(&segment.path)
            .map_err(|e| StorageError::io("cannot delete", &segment.path, e))?;
    }
    Ok(())
}

/// Reads messages in `[from, to)` from `segments` (starting at the cursor, which is in the first of them), until
/// about `max_bytes` of payload or the end of what is written; returns the offset to continue from.
fn scan(
    cursor: &mut ReadCursor,
    segments: &[Segment],
    from: u64,
    to: u64,
    max_bytes: usize,
    out: &mut Vec<(u64, Bytes)>,
) -> Result<u64, StorageError> {
    let mut next = from;
    let mut bytes = 0;
    for (index, segment) in segments.iter().enumerate() {
        if index > 0 {
            cursor.base = segment.base;
            cursor.pos = 0;
            cursor.reader.close();
        }
        if !cursor.reader.is_open() {
            cursor.reader.open(open_segment(&segment.path)?);
        }
        loop {
            let step = cursor
                .reader
                .next(cursor.pos, segment.len)
                .map_err(|e| StorageError::io("cannot read", &segment.path, e))?;
            match step {
                Step::Record(
                    Record::Message {
                        offset, payload, ..
                    },
                    after,
                ) => {
                    if offset >= to {
                        return Ok(to);
                    }
                    cursor.pos = after;
                    if offset < next {
                        continue;
                    }
                    next = offset + 1;
                    bytes += payload.len();
                    out.push((offset, Bytes::copy_from_slice(payload)));
                    if bytes >= max_bytes {
                        return Ok(next);
                    }
                }
                Step::Record(_, after) => cursor.pos = after,
                Step::End | Step::Torn => break,
                Step::Corrupt => {
                    return Err(StorageError::Corrupt {
                        path: segment.path.clone(),
                        position: cursor.pos,
                    });
                }
            }
        }
    }
    Ok(next)
}

impl DiskLog {
    /// Opens (creating if needed) the log in `dir`, recovers it and starts the writer thread. It remembers the
    /// dedup marks of at most `max_producers` producers.
    pub(crate) fn open(
        dir: &Path,
        policy: FsyncPolicy,
        segment_size: u64,
        max_producers: usize,
        space: Arc<Notify>,
    ) -> Result<(Self, Recovered), StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io("cannot create", dir, e))?;
        let lock = lock_dir(dir)?;
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            let path = segment_path(dir, 0);
            let mut buf = Vec::new();
            record::encode_snapshot(&mut buf, &Snapshot::default());
            let mut file =
                File::create(&path).map_err(|e| StorageError::io("cannot create", &path, e))?;
            file.write_all(&buf)
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageError::io("cannot write", &path, e))?;
            sync_dir(dir)?;
            segments.push(Segment {
                base: 0,
                path,
                len: buf.len() as u64,
            });
        }
        let mut recovered = recover(&mut segments)?;
        let dead_dir = dir.join(DEAD_DIR);
        fs::create_dir_all(&dead_dir)
            .map_err(|e| StorageError::io("cannot create", &dead_dir, e))?;
        let (dead, dead_len) = recover_dead(&dead_dir)?;
        recovered.dead = dead;
        let dead_path = dead_dir.join(DEAD_FILE);
        let dead_file = OpenOptions::new()
            .append(true)
            .open(&dead_path)
            .map_err(|e| StorageError::io("cannot open for append", &dead_path, e))?;
        let active = segments
            .last()
            .cloned()
            .ok_or_else(|| StorageError::WriterFailed("no segment left after recovery".into()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(|e| StorageError::io("cannot open for append", &active.path, e))?;
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            policy,
            pending: Mutex::new(Pending {
                segment_bytes: active.len,
                active_base: active.base,
                floor: recovered
                    .groups
                    .iter()
                    .map(|g| g.floor)
                    .min()
                    .unwrap_or(recovered.next_offset),
                next_offset: recovered.next_offset,
                producers: Producers::new(max_producers, std::mem::take(&mut recovered.producers)),
                groups: recovered
                    .groups
                    .iter()
                    .map(|g| {
                        let mark = GroupMark {
                            id: g.id,
                            floor: g.first_unacked,
                            name: g.name.clone(),
                        };
                        (g.id, mark)
                    })
                    .collect(),
                buf: Vec::new(),
                dead: Vec::new(),
                rolls: Vec::new(),
                position: 0,
                urgent: false,
                idle: false,
                closing: false,
                failed: None,
            }),
            wake: Condvar::new(),
            segments: Mutex::new(segments),
            progress,
            space,
            backlogged: AtomicBool::new(false),
            no_space: AtomicBool::new(false),
            dead_path,
            dead_len: AtomicU64::new(dead_len),
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            file,
            path: active.path,
            file_len: active.len,
            dead_file,
            dead_len,
            written: 0,
            synced: 0,
            last_sync: Instant::now(),
            deleted_floor: 0,
            lock: Some(lock),
        };
        std::thread::Builder::new()
            .name("wsmq-log-writer".into())
            .spawn(move || {
                let shared = Arc::clone(&writer.shared);
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| writer.run())) {
                    shared.writer_panicked(&TaskFailure::panicked("log writer", &*panic));
                }
            })
            .map_err(|e| StorageError::io("cannot start writer thread for", dir, e))?;
        let log = Self {
            shared,
            segment_size,
            cursors: Mutex::new(Vec::new()),
        };
        Ok((log, recovered))
    }

    /// Counts the records encoded into `pending.buf` since byte `before` into the log position and the active
    /// segment.
    fn grew(pending: &mut Pending, before: usize) {
        let added = (pending.buf.len() - before) as u64;
        pending.position += added;
        pending.segment_bytes += added;
    }

    /// Wakes the writer for work that should not wait (a message, a group record, a dead letter).
    fn urge(&self, pending: &mut Pending) {
        if !pending.urgent {
            pending.urgent = true;
            self.shared.wake.notify_one();
        }
    }

    /// What a new segment starts with: everything the log must remember once older segments are gone.
    fn snapshot(pending: &Pending) -> Snapshot {
        let next_offset = pending.next_offset;
        Snapshot {
            next_offset,
            floor: pending
                .groups
                .get(&DEFAULT_GROUP_ID)
                .map_or(next_offset, |g| g.floor),
            producers: pending.producers.snapshot(),
            groups: Some(pending.groups.values().cloned().collect()),
        }
    }
}

impl Drop for DiskLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl Log for DiskLog {
    fn append(&self, entries: &[Entry]) -> Result<Appended, StorageError> {
        let mut pending = self.shared.pending.lock();
        if let Some(err) = &pending.failed {
            return Err(StorageError::WriterFailed(err.clone()));
        }
        let first = pending.next_offset;
        for entry in entries {
            let offset = pending.next_offset;
            if pending.segment_bytes >= self.segment_size && offset > pending.active_base {
                let at = pending.buf.len();
                pending.rolls.push((at, offset));
                let snapshot = Self::snapshot(&pending);
                record::encode_snapshot(&mut pending.buf, &snapshot);
                let added = (pending.buf.len() - at) as u64;
                pending.position += added;
                pending.segment_bytes = added;
                pending.active_base = offset;
            }
            let before = pending.buf.len();
            record::encode_message(&mut pending.buf, offset, entry.producer, &entry.payload);
            Self::grew(&mut pending, before);
            pending.next_offset += 1;
            if let Some(producer) = entry.producer {
                pending.producers.record(producer);
            }
        }
        if pending.buf.len() >= WRITE_BACKLOG_CAP {
            self.shared.backlogged.store(true, Ordering::Relaxed);
        }
        self.urge(&mut pending);
        Ok(Appended {
            first,
            durable: DurableToken::at(pending.position),
        })
    }

    fn is_duplicate(&self, producer: Producer) -> bool {
        self.shared.pending.lock().producers.is_duplicate(producer)
    }

    fn position(&self) -> DurableToken {
        DurableToken::at(self.shared.pending.lock().position)
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
        let segments = self.shared.segments.lock().clone();
        let Some(target) = segments
            .iter()
            .rposition(|s| s.base <= from)
            .or((!segments.is_empty()).then_some(0))
        else {
            return Ok(from);
        };
        // Continue a sequential scan when `from` is ahead of a cursor in the same segment (offsets delivered from
        // memory in between are skipped); otherwise rescan the segment that holds `from`. The cursor is taken out
        // of the cache for the read, so concurrent readers never wait for each other.
        let mut cursor = {
            let mut cursors = self.cursors.lock();
            cursors
                .iter()
                .enumerate()
                .filter(|(_, c)| c.reader.is_open() && c.base == segments[target].base)
                .filter(|(_, c)| c.next <= from)
                .max_by_key(|(_, c)| c.next)
                .map(|(index, _)| index)
                .map(|index| cursors.swap_remove(index))
                .unwrap_or_default()
        };
        if !cursor.reader.is_open() {
            cursor.base = segments[target].base;
            cursor.pos = 0;
        }
        let result = scan(&mut cursor, &segments[target..], from, to, max_bytes, out);
        match result {
            Ok(next) => {
                cursor.next = next;
                let mut cursors = self.cursors.lock();
                if cursors.len() >= READ_CURSORS {
                    cursors.remove(0);
                }
                cursors.push(cursor);
            }
            Err(_) => cursor.reader.close(),
        }
        result
    }

    fn trim_before(&self, offset: u64) {
        let mut pending = self.shared.pending.lock();
        if offset > pending.floor {
            pending.floor = offset;
            if pending.idle {
                self.shared.wake.notify_one();
            }
        }
    }

    fn in_memory(&self) -> bool {
        false
    }

    fn backlogged(&self) -> bool {
        self.shared.backlogged.load(Ordering::Relaxed)
    }

    fn no_space(&self) -> bool {
        self.shared.no_space.load(Ordering::Relaxed)
    }

    fn progress(&self) -> Option<watch::Receiver<Progress>> {
        Some(self.shared.progress.subscribe())
    }

    fn close(&self) {
        let mut pending = self.shared.pending.lock();
        pending.closing = true;
        self.shared.wake.notify_one();
    }
}

impl GroupStore for DiskLog {
    fn create_group(&self, group: &GroupMark) -> DurableToken {
        let mut pending = self.shared.pending.lock();
        if pending.failed.is_none() && !pending.closing {
            let before = pending.buf.len();
            record::encode_group(&mut pending.buf, group);
            Self::grew(&mut pending, before);
            pending.groups.insert(group.id, group.clone());
            self.urge(&mut pending);
        }
        DurableToken::at(pending.position)
    }

    fn drop_group(&self, id: u32) {
        let mut pending = self.shared.pending.lock();
        pending.groups.remove(&id);
        if pending.failed.is_some() || pending.closing {
            return;
        }
        let before = pending.buf.len();
        record::encode_group_dropped(&mut pending.buf, id);
        Self::grew(&mut pending, before);
        self.urge(&mut pending);
    }

    fn ack(&self, group: u32, offsets: &mut [u64], floor: u64) {
        let mut pending = self.shared.pending.lock();
        if let Some(mark) = pending.groups.get_mut(&group) {
            mark.floor = mark.floor.max(floor);
        }
        if pending.failed.is_some() || pending.closing {
            return;
        }
        let before = pending.buf.len();
        record::encode_acks(&mut pending.buf, group, offsets);
        Self::grew(&mut pending, before);
        if pending.idle {
            self.shared.wake.notify_one();
        }
    }
}

impl DeadStore for DiskLog {
    fn append_dead(&self, letter: &DeadLetter, payload: &[u8]) {
        let mut pending = self.shared.pending.lock();
        if pending.failed.is_some() || pending.closing {
            return;
        }
        record::encode_dead(&mut pending.dead, &letter.header(), payload);
        self.urge(&mut pending);
    }

    fn remove_dead(&self, ids: &[u64]) {
        let mut pending = self.shared.pending.lock();
        if pending.failed.is_some() || pending.closing {
            return;
        }
        record::encode_dead_removed(&mut pending.dead, ids);
        if pending.idle {
            self.shared.wake.notify_one();
        }
    }

    fn read_dead(&self, ids: &[u64], out: &mut Vec<(u64, Bytes)>) -> Result<(), StorageError> {
        let path = &self.shared.dead_path;
        let len = self.shared.dead_len.load(Ordering::Acquire);
        let wanted: HashSet<u64> = ids.iter().copied().collect();
        let mut reader = SegmentReader::default();
        reader.open(open_segment(path)?);
        let mut pos = 0;
        while let Step::Record(record, after) = reader
            .next(pos, len)
            .map_err(|e| StorageError::io("cannot read", path, e))?
        {
            if let Record::Dead(header, payload) = record
                && wanted.contains(&header.id)
            {
                out.push((header.id, Bytes::copy_from_slice(payload)));
            }
            pos = after;
        }
        Ok(())
    }
}

/// The writer thread's own state: the active segment and how far it has got.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    path: PathBuf,
    /// Length of the active segment file up to the last whole write.
    file_len: u64,
    dead_file: File,
    dead_len: u64,
    written: u64,
    synced: u64,
    last_sync: Instant,
    deleted_floor: u64,
    /// The directory lock, released before reporting `closed` so the directory can be reopened at once.
    lock: Option<File>,
}

impl Writer {
    fn run(mut self) {
        let mut buf = Vec::new();
        let mut dead = Vec::new();
        let mut rolls = Vec::new();
        loop {
            fault_point("log writer");
            let (closing, floor, backlogged) = self.take(&mut buf, &mut dead, &mut rolls);
            if backlogged {
                self.shared.space.notify_waiters();
            }
            let result = self
                .until_space(|w| w.write_dead(&dead))
                .and_then(|()| self.write_group(&buf, &rolls))
                .and_then(|()| self.sync(closing))
                .and_then(|()| self.delete(floor));
            dead.clear();
            buf.clear();
            if buf.capacity() > SPARE_BUFFER_CAP {
                buf.shrink_to(SPARE_BUFFER_CAP);
            }
            rolls.clear();
            if let Err(err) = result {
                tracing::error!(%err, "log writer failed; the queue no longer accepts pushes");
                self.shared.pending.lock().failed = Some(err.to_string());
                self.lock.take();
                self.shared
                    .progress
                    .send_modify(|p| p.failed = Some(err.to_string()));
                self.shared.space.notify_waiters();
                return;
            }
            if closing {
                self.lock.take();
                self.shared.progress.send_modify(|p| p.closed = true);
                return;
            }
        }
    }

    /// Waits for work and swaps the pending buffers out; returns (closing, floor, whether it was backlogged).
    fn take(
        &mut self,
        buf: &mut Vec<u8>,
        dead: &mut Vec<u8>,
        rolls: &mut Vec<(usize, u64)>,
    ) -> (bool, u64, bool) {
        let mut pending = self.shared.pending.lock();
        loop {
            if pending.urgent || pending.closing {
                break;
            }
            let unsynced = match self.shared.policy {
                FsyncPolicy::Interval(every) if self.written > self.synced => {
                    Some(every.saturating_sub(self.last_sync.elapsed()))
                }
                _ => None,
            };
            let lazy = (!pending.buf.is_empty()
                || !pending.dead.is_empty()
                || pending.floor > self.deleted_floor)
                .then_some(LAZY_FLUSH);
            match unsynced.into_iter().chain(lazy).min() {
                Some(timeout) if timeout.is_zero() => break,
                Some(timeout) => {
                    if self.shared.wake.wait_for(&mut pending, timeout).timed_out() {
                        break;
                    }
                }
                None => {
                    pending.idle = true;
                    self.shared.wake.wait(&mut pending);
                    pending.idle = false;
                }
            }
        }
        pending.urgent = false;
        let backlogged = self.shared.backlogged.swap(false, Ordering::Relaxed);
        std::mem::swap(&mut pending.buf, buf);
        std::mem::swap(&mut pending.dead, dead);
        std::mem::swap(&mut pending.rolls, rolls);
        (pending.closing, pending.floor, backlogged)
    }

    /// Runs `op` until it succeeds or fails for another reason than a full disk. While the disk is full, pushes
    /// are refused and `op` is retried with a growing pause; on close the error is returned instead.
    fn until_space<T>(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut pause = NO_SPACE_RETRY_MIN;
        loop {
            match op(self) {
                Ok(value) => {
                    if self.shared.no_space.swap(false, Ordering::Relaxed) {
                        tracing::info!("log disk has space again; accepting pushes");
                        self.shared.space.notify_waiters();
                    }
                    return Ok(value);
                }
                Err(err @ StorageError::Io { .. }) if matches!(&err, StorageError::Io { source, .. } if is_no_space(source)) =>
                {
                    if !self.shared.no_space.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%err, "log disk full; refusing pushes until space returns");
                    }
                    let mut pending = self.shared.pending.lock();
                    if pending.closing {
                        return Err(err);
                    }
                    self.shared.wake.wait_for(&mut pending, pause);
                    pause = (pause * 2).min(NO_SPACE_RETRY_MAX);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Appends dead letters (and removals) to the dead-letter file and fsyncs it per the policy.
    fn write_dead(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let sync = self.shared.policy != FsyncPolicy::Never;
        append_whole(
            &mut self.dead_file,
            &self.shared.dead_path,
            self.dead_len,
            bytes,
            sync,
        )?;
        self.dead_len += bytes.len() as u64;
        self.shared.dead_len.store(self.dead_len, Ordering::Release);
        Ok(())
    }

    /// Writes one group: one `write` per segment it touches, each retried while the disk is full.
    fn write_group(&mut self, buf: &[u8], rolls: &[(usize, u64)]) -> Result<(), StorageError> {
        let mut start = 0;
        for &(at, base) in rolls {
            self.until_space(|w| w.write(&buf[start..at]))?;
            self.until_space(|w| w.roll(base))?;
            start = at;
        }
        self.until_space(|w| w.write(&buf[start..]))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        append_whole(&mut self.file, &self.path, self.file_len, bytes, false)?;
        self.file_len += bytes.len() as u64;
        self.written += bytes.len() as u64;
        if let Some(active) = self.shared.segments.lock().last_mut() {
            active.len += bytes.len() as u64;
        }
        Ok(())
    }

    fn roll(&mut self, base: u64) -> Result<(), StorageError> {
        if self.shared.policy != FsyncPolicy::Never {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io("cannot fsync", &self.path, e))?;
        }
        let path = segment_path(&self.shared.dir, base);
        self.file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| StorageError::io("cannot create", &path, e))?;
        if self.shared.policy != FsyncPolicy::Never {
            sync_dir(&self.shared.dir)?;
        }
        self.shared.segments.lock().push(Segment {
            base,
            path: path.clone(),
            len: 0,
        });
        self.path = path;
        self.file_len = 0;
        Ok(())
    }

    /// Fsyncs per the policy (always on close) and publishes progress.
    fn sync(&mut self, closing: bool) -> Result<(), StorageError> {
        let due = match self.shared.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if (due || closing) && self.synced < self.written {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io("cannot fsync", &self.path, e))?;
            self.synced = self.written;
            self.last_sync = Instant::now();
        }
        let durable = match self.shared.policy {
            FsyncPolicy::Always => self.synced,
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => self.written,
        };
        let written = self.written;
        self.shared.progress.send_if_modified(|p| {
            let changed = p.written != written || p.durable != durable;
            p.written = written;
            p.durable = durable;
            changed
        });
        Ok(())
    }

    /// Deletes segments that hold only acked messages.
    fn delete(&mut self, floor: u64) -> Result<(), StorageError> {
        if floor <= self.deleted_floor {
            return Ok(());
        }
        self.deleted_floor = floor;
        let doomed: Vec<Segment> = {
            let mut segments = self.shared.segments.lock();
            let count = segments
                .windows(2)
                .take_while(|pair| pair[1].base <= floor)
                .count();
            segments.drain(..count).collect()
        };
        for segment in doomed {
            fs::remove_file(&segment.path)
                .map_err(|e| StorageError::io("cannot delete", &segment.path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io;

    use super::*;

    /// An append-only file on a disk with `room` bytes: a write beyond it is cut short, the next one fails as
    /// full. The bytes sit in a cell because `set_len` takes `&self`, as on a real file.
    #[derive(Default)]
    struct FillingDisk {
        data: RefCell<Vec<u8>>,
        room: usize,
    }

    impl Write for FillingDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let data = self.data.get_mut();
            let n = buf.len().min(self.room.saturating_sub(data.len()));
            if n == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::StorageFull.into());
            }
            data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AppendFile for FillingDisk {
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            self.data.borrow_mut().truncate(len);
            Ok(())
        }
    }

    #[test]
    fn a_write_cut_short_by_a_full_disk_is_removed_and_the_retry_appends_whole_records() {
        let mut first = Vec::new();
        record::encode_message(&mut first, 0, None, b"stored before the disk filled");
        let mut second = Vec::new();
        record::encode_message(&mut second, 1, None, b"written once space returned");
        let mut disk = FillingDisk {
            room: first.len() + second.len() / 2,
            ..FillingDisk::default()
        };
        let path = Path::new("segment");

        assert!(append_whole(&mut disk, path, 0, &first, true).is_ok());
        let good = first.len() as u64;
        let failed = append_whole(&mut disk, path, good, &second, true);
        assert!(
            matches!(&failed, Err(StorageError::Io { source, .. }) if is_no_space(source)),
            "{failed:?}"
        );
        assert_eq!(
            *disk.data.get_mut(),
            first,
            "the partial record was cut off"
        );

        disk.room = usize::MAX;
        assert!(append_whole(&mut disk, path, good, &second, true).is_ok());
        assert_eq!(*disk.data.get_mut(), [first, second].concat());
    }

    #[test]
    fn recovery_counts_a_repeated_or_out_of_order_offset_once_as_read_back_delivers_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        record::encode_snapshot(&mut buf, &Snapshot::default());
        for offset in [0, 0, 4, 2] {
            record::encode_message(&mut buf, offset, None, b"m");
        }
        let path = segment_path(dir.path(), 0);
        fs::write(&path, &buf).unwrap();
        let mut segments = list_segments(dir.path()).unwrap();
        let recovered = recover(&mut segments).unwrap();
        let group = &recovered.groups[0];
        assert_eq!((group.messages, group.bytes), (2, 2));
        assert_eq!((group.first_unacked, group.unacked_end), (0, 5));

        let mut cursor = ReadCursor::default();
        let mut out = Vec::new();
        scan(&mut cursor, &segments, 0, 5, usize::MAX, &mut out).unwrap();
        let offsets: Vec<u64> = out.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(offsets, [0, 4], "read-back delivers what recovery counted");
    }

    #[test]
    fn a_log_written_before_groups_existed_recovers_its_unacked_messages_in_the_default_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Vec::new();
        record::encode_snapshot(&mut first, &Snapshot::default());
        for offset in 0..4 {
            record::encode_message(&mut first, offset, None, b"m");
        }
        record::encode_acks(&mut first, DEFAULT_GROUP_ID, &mut [0, 2]);
        fs::write(segment_path(dir.path(), 0), &first).unwrap();
        let mut second = Vec::new();
        let head = Snapshot {
            next_offset: 4,
            floor: 1,
            producers: vec![(9, 3)],
            groups: None,
        };
        record::encode_snapshot(&mut second, &head);
        record::encode_message(&mut second, 4, None, b"m");
        fs::write(segment_path(dir.path(), 4), &second).unwrap();

        let mut segments = list_segments(dir.path()).unwrap();
        let recovered = recover(&mut segments).unwrap();
        assert_eq!(recovered.groups.len(), 1);
        let group = &recovered.groups[0];
        assert_eq!(
            (group.id, group.name.as_str()),
            (DEFAULT_GROUP_ID, DEFAULT_GROUP)
        );
        assert_eq!((group.messages, group.first_unacked), (3, 1), "1, 3 and 4");
        assert!(group.acked.contains(2));
        assert_eq!(recovered.next_group_id, DEFAULT_GROUP_ID + 1);
        assert_eq!(recovered.producers, vec![(9, 3)]);
    }

    #[test]
    fn an_ack_of_an_offset_not_yet_assigned_does_not_swallow_the_next_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        record::encode_snapshot(&mut buf, &Snapshot::default());
        record::encode_message(&mut buf, 0, None, b"a");
        record::encode_acks(&mut buf, DEFAULT_GROUP_ID, &mut [1, 2, 3]);
        fs::write(segment_path(dir.path(), 0), &buf).unwrap();
        let mut segments = list_segments(dir.path()).unwrap();
        let recovered = recover(&mut segments).unwrap();
        assert_eq!(
            (recovered.next_offset, recovered.groups[0].messages),
            (1, 1)
        );
        assert!(
            !recovered.groups[0].acked.contains(1),
            "the next push would count as acked"
        );
    }

    #[test]
    fn a_message_below_its_segments_base_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        let head = Snapshot {
            next_offset: 7,
            ..Snapshot::default()
        };
        record::encode_snapshot(&mut buf, &head);
        let valid = buf.len() as u64;
        record::encode_message(&mut buf, 3, None, b"from elsewhere");
        fs::write(segment_path(dir.path(), 7), &buf).unwrap();
        let mut segments = list_segments(dir.path()).unwrap();
        let recovered = recover(&mut segments).unwrap();
        assert_eq!(recovered.truncations.len(), 1);
        assert_eq!(recovered.truncations[0].position, valid);
        assert_eq!(
            (recovered.next_offset, recovered.groups[0].messages),
            (7, 0)
        );
    }

    #[test]
    fn a_record_claiming_offsets_of_the_next_segment_is_truncated_and_recovery_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Vec::new();
        record::encode_snapshot(&mut first, &Snapshot::default());
        record::encode_message(&mut first, 0, None, b"a");
        let valid = first.len() as u64;
        record::encode_message(&mut first, 1 << 40, None, b"from elsewhere");
        fs::write(segment_path(dir.path(), 0), &first).unwrap();
        let mut second = Vec::new();
        let head = Snapshot {
            next_offset: 2,
            floor: 1,
            producers: Vec::new(),
            groups: None,
        };
        record::encode_snapshot(&mut second, &head);
        record::encode_message(&mut second, 2, None, b"b");
        fs::write(segment_path(dir.path(), 2), &second).unwrap();

        let mut segments = list_segments(dir.path()).unwrap();
        let recovered = recover(&mut segments).unwrap();
        assert_eq!(recovered.truncations.len(), 1);
        assert_eq!(recovered.truncations[0].position, valid);
        assert_eq!(
            (recovered.next_offset, recovered.groups[0].messages),
            (3, 1)
        );
        let mut segments = list_segments(dir.path()).unwrap();
        let again = recover(&mut segments).unwrap();
        assert!(again.truncations.is_empty());
        assert_eq!((again.next_offset, again.groups[0].messages), (3, 1));
    }
}
