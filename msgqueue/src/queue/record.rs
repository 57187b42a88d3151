//! The on-disk record format of the segment log, and a windowed reader that walks records in a segment file.
//!
//! Every record is `len: u32 LE | crc32: u32 LE | kind: u8 | body`, where `len` counts `kind + body` and the CRC
//! covers the same bytes. A record that is cut short or fails its checksum marks the end of the valid part of a
//! segment: recovery truncates there.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use wsmq_core::protocol::group::MAX_GROUP_NAME;

use super::{DEFAULT_GROUP, Producer};

/// Bytes before a record's kind: length and checksum.
pub(crate) const HEADER_LEN: usize = 8;
/// Fixed part of a message body: offset, flags, producer id, seq.
const MESSAGE_FIXED: usize = 8 + 1 + 8 + 8;
/// Largest `kind + body` accepted; anything larger is treated as corruption rather than allocated.
pub(crate) const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;
/// Largest payload a message record can carry.
pub(crate) const MAX_PAYLOAD: usize = MAX_RECORD_LEN - 1 - MESSAGE_FIXED;
/// Runs per ack record (12 bytes each), far below [`MAX_RECORD_LEN`].
const MAX_ACK_RUNS: usize = 64 * 1024;
/// Producer marks a snapshot record can hold (16 bytes each), far below [`MAX_RECORD_LEN`].
pub(crate) const MAX_SNAPSHOT_PRODUCERS: usize = 1_000_000;
/// Offsets at or beyond this are corrupt: a queue needs 2^63 pushes to get there, and keeping every stored offset
/// (and next offset) below it means `offset + 1` can never overflow, whatever a damaged segment holds.
pub(crate) const OFFSET_LIMIT: u64 = 1 << 63;
/// How much a reader fetches per read syscall, so scanning costs one syscall per chunk, not per record.
const READ_CHUNK: usize = 256 * 1024;

const KIND_MESSAGE: u8 = 1;
const KIND_ACKS: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_DEAD: u8 = 4;
const KIND_DEAD_REMOVED: u8 = 5;
/// Acks of a consumer group other than `default` (whose acks keep the original [`KIND_ACKS`] form, so a data
/// directory stays readable both ways).
const KIND_GROUP_ACKS: u8 = 6;
/// A consumer group was created.
const KIND_GROUP: u8 = 7;
/// A consumer group was dropped (idle too long).
const KIND_GROUP_DROPPED: u8 = 8;
/// Every live group with its ack floor, written after the snapshot at the head of each segment.
const KIND_GROUPS: u8 = 9;
/// A dead letter of a group other than `default` (whose dead letters keep the original [`KIND_DEAD`] form).
const KIND_DEAD_IN_GROUP: u8 = 10;
/// The id of the group named `default`, which exists from the first open (a log written before groups existed
/// holds only its acks).
pub(crate) const DEFAULT_GROUP_ID: u32 = 0;
/// Fixed part of a dead-letter body: id, reason, deliveries, time.
const DEAD_FIXED: usize = 8 + 1 + 4 + 8;
const FLAG_PRODUCER: u8 = 1;

/// A decoded record borrowing its payload from the reader's buffer.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    /// A stored message with its offset and the producer mark it advances.
    Message {
        offset: u64,
        producer: Option<Producer>,
        payload: &'a [u8],
    },
    /// Acked offsets of a group as `(start, count)` runs.
    Acks(u32, Vec<(u64, u32)>),
    /// A group was created, starting at offset `start`.
    Group(GroupMark),
    /// A group was dropped.
    GroupDropped(u32),
    /// Every live group at the head of a segment.
    Groups(Vec<GroupMark>),
    /// State written at the head of every segment so deleting older segments loses nothing.
    Snapshot(Snapshot),
    /// A dead letter (only in the dead-letter file).
    Dead(DeadHeader, &'a [u8]),
    /// Dead letters replayed or evicted (only in the dead-letter file).
    DeadRemoved(Vec<u64>),
}

/// What a dead-letter record says about its message, besides the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadHeader {
    /// The message's offset when it died.
    pub(crate) id: u64,
    /// The reason's code (see `DeadReason`).
    pub(crate) reason: u8,
    /// Deliveries it had when it died.
    pub(crate) deliveries: u32,
    /// When it died, in milliseconds since the Unix epoch.
    pub(crate) time_ms: u64,
    /// The consumer group that gave up on it.
    pub(crate) group: String,
}

/// Encodes a dead-letter record.
pub(crate) fn encode_dead(buf: &mut Vec<u8>, header: &DeadHeader, payload: &[u8]) {
    let start = buf.len();
    buf.reserve(HEADER_LEN + 2 + DEAD_FIXED + header.group.len() + payload.len());
    buf.extend_from_slice(&[0; HEADER_LEN]);
    let in_group = header.group != DEFAULT_GROUP;
    buf.push(if in_group {
        KIND_DEAD_IN_GROUP
    } else {
        KIND_DEAD
    });
    buf.extend_from_slice(&header.id.to_le_bytes());
    buf.push(header.reason);
    buf.extend_from_slice(&header.deliveries.to_le_bytes());
    buf.extend_from_slice(&header.time_ms.to_le_bytes());
    if in_group {
        let name = &header.group.as_bytes()[..header.group.len().min(MAX_GROUP_NAME)];
        buf.push(name.len() as u8);
        buf.extend_from_slice(name);
    }
    buf.extend_from_slice(payload);
    finish(buf, start);
}

/// Encodes the removal of dead letters, split so no record comes near [`MAX_RECORD_LEN`].
pub(crate) fn encode_dead_removed(buf: &mut Vec<u8>, ids: &[u64]) {
    for chunk in ids.chunks(MAX_ACK_RUNS) {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.push(KIND_DEAD_REMOVED);
        for id in chunk {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        finish(buf, start);
    }
}

/// Queue state that must outlive the segments it was learned from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The offset the next message will get.
    pub(crate) next_offset: u64,
    /// Every offset below this is acked by the `default` group.
    pub(crate) floor: u64,
    /// Highest stored seq per producer id.
    pub(crate) producers: Vec<(u64, u64)>,
    /// Every live group with its floor, written as its own record after the snapshot; `None` in a log written
    /// before groups existed (only the `default` group, whose floor is `floor`).
    pub(crate) groups: Option<Vec<GroupMark>>,
}

/// A consumer group as the log remembers it: its id (unique over the log's life, so a dropped and recreated
/// group never inherits the acks of its predecessor), its name and its ack floor (for a creation record: where it
/// started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupMark {
    pub(crate) id: u32,
    pub(crate) floor: u64,
    pub(crate) name: String,
}

fn put_group(buf: &mut Vec<u8>, group: &GroupMark) {
    let name = &group.name.as_bytes()[..group.name.len().min(MAX_GROUP_NAME)];
    buf.extend_from_slice(&group.id.to_le_bytes());
    buf.extend_from_slice(&group.floor.to_le_bytes());
    buf.push(name.len() as u8);
    buf.extend_from_slice(name);
}

fn take_group(body: &mut Body<'_>) -> Option<GroupMark> {
    let id = body.u32()?;
    let floor = body.u64().filter(|&o| o < OFFSET_LIMIT)?;
    let len = usize::from(body.u8()?);
    let name = std::str::from_utf8(body.take(len)?).ok()?.to_owned();
    Some(GroupMark { id, floor, name })
}

/// Encodes the creation of a group starting at `group.floor`.
pub(crate) fn encode_group(buf: &mut Vec<u8>, group: &GroupMark) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.push(KIND_GROUP);
    put_group(buf, group);
    finish(buf, start);
}

/// Encodes the removal of group `id`.
pub(crate) fn encode_group_dropped(buf: &mut Vec<u8>, id: u32) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.push(KIND_GROUP_DROPPED);
    buf.extend_from_slice(&id.to_le_bytes());
    finish(buf, start);
}

/// Appends a record's header for a `kind + body` of `len` bytes already written at `buf[start + HEADER_LEN..]`.
fn finish(buf: &mut [u8], start: usize) {
    let body = &buf[start + HEADER_LEN..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a message record onto `buf`; the caller has checked `payload.len() <= MAX_PAYLOAD`.
pub(crate) fn encode_message(
    buf: &mut Vec<u8>,
    offset: u64,
    producer: Option<Producer>,
    payload: &[u8],
) {
    let start = buf.len();
    buf.reserve(HEADER_LEN + 1 + MESSAGE_FIXED + payload.len());
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.push(KIND_MESSAGE);
    buf.extend_from_slice(&offset.to_le_bytes());
    let (flags, id, seq) = match producer {
        Some(p) => (FLAG_PRODUCER, p.id, p.seq),
        None => (0, 0, 0),
    };
    buf.push(flags);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
    finish(buf, start);
}

/// Encodes acked offsets (any order) as runs, so the common case of contiguous acks costs a few bytes. Very
/// scattered acks are split over several records so none comes near [`MAX_RECORD_LEN`].
pub(crate) fn encode_acks(buf: &mut Vec<u8>, group: u32, offsets: &mut [u64]) {
    offsets.sort_unstable();
    let mut runs: Vec<(u64, u32)> = Vec::new();
    for &offset in offsets.iter() {
        match runs.last_mut() {
            Some((first, count)) if *first + u64::from(*count) > offset => {}
            Some((first, count)) if *first + u64::from(*count) == offset && *count < u32::MAX => {
                *count += 1;
            }
            _ => runs.push((offset, 1)),
        }
    }
    for chunk in runs.chunks(MAX_ACK_RUNS) {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        if group == DEFAULT_GROUP_ID {
            buf.push(KIND_ACKS);
        } else {
            buf.push(KIND_GROUP_ACKS);
            buf.extend_from_slice(&group.to_le_bytes());
        }
        for &(first, count) in chunk {
            buf.extend_from_slice(&first.to_le_bytes());
            buf.extend_from_slice(&count.to_le_bytes());
        }
        finish(buf, start);
    }
}

/// Encodes a snapshot record.
pub(crate) fn encode_snapshot(buf: &mut Vec<u8>, snapshot: &Snapshot) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.push(KIND_SNAPSHOT);
    buf.extend_from_slice(&snapshot.next_offset.to_le_bytes());
    buf.extend_from_slice(&snapshot.floor.to_le_bytes());
    let count = u32::try_from(snapshot.producers.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&count.to_le_bytes());
    for &(id, seq) in snapshot.producers.iter().take(count as usize) {
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
    }
    finish(buf, start);
    if let Some(groups) = &snapshot.groups {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.push(KIND_GROUPS);
        for group in groups {
            put_group(buf, group);
        }
        finish(buf, start);
    }
}

/// Little-endian cursor over a record body; `None` means the body is too short, i.e. corrupt.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
}

/// Decodes `kind + body` (already checksum-verified); `None` if it is malformed.
fn decode(bytes: &[u8]) -> Option<Record<'_>> {
    let mut body = Body(bytes);
    match body.u8()? {
        KIND_MESSAGE => {
            let offset = body.u64().filter(|&o| o < OFFSET_LIMIT)?;
            let flags = body.u8()?;
            let id = body.u64()?;
            let seq = body.u64()?;
            let producer = (flags & FLAG_PRODUCER != 0).then_some(Producer { id, seq });
            Some(Record::Message {
                offset,
                producer,
                payload: body.0,
            })
        }
        kind @ (KIND_ACKS | KIND_GROUP_ACKS) => {
            let group = if kind == KIND_ACKS {
                DEFAULT_GROUP_ID
            } else {
                body.u32()?
            };
            let mut runs = Vec::with_capacity(body.0.len() / 12);
            while !body.0.is_empty() {
                runs.push((body.u64()?, body.u32()?));
            }
            Some(Record::Acks(group, runs))
        }
        KIND_GROUP => {
            let group = take_group(&mut body)?;
            body.0.is_empty().then_some(Record::Group(group))
        }
        KIND_GROUP_DROPPED => {
            let id = body.u32()?;
            body.0.is_empty().then_some(Record::GroupDropped(id))
        }
        KIND_GROUPS => {
            let mut groups = Vec::new();
            while !body.0.is_empty() {
                groups.push(take_group(&mut body)?);
            }
            Some(Record::Groups(groups))
        }
        KIND_SNAPSHOT => {
            let next_offset = body.u64().filter(|&o| o < OFFSET_LIMIT)?;
            let floor = body.u64().filter(|&o| o <= next_offset)?;
            let count = body.u32()? as usize;
            if body.0.len() != count * 16 {
                return None;
            }
            let mut producers = Vec::with_capacity(count);
            for _ in 0..count {
                producers.push((body.u64()?, body.u64()?));
            }
            Some(Record::Snapshot(Snapshot {
                next_offset,
                floor,
                producers,
                groups: None,
            }))
        }
        kind @ (KIND_DEAD | KIND_DEAD_IN_GROUP) => {
            let (id, reason, deliveries, time_ms) =
                (body.u64()?, body.u8()?, body.u32()?, body.u64()?);
            let group = if kind == KIND_DEAD {
                DEFAULT_GROUP.to_owned()
            } else {
                let len = usize::from(body.u8()?);
                std::str::from_utf8(body.take(len)?).ok()?.to_owned()
            };
            let header = DeadHeader {
                id,
                reason,
                deliveries,
                time_ms,
                group,
            };
            Some(Record::Dead(header, body.0))
        }
        KIND_DEAD_REMOVED => {
            let mut ids = Vec::with_capacity(body.0.len() / 8);
            while !body.0.is_empty() {
                ids.push(body.u64()?);
            }
            Some(Record::DeadRemoved(ids))
        }
        _ => None,
    }
}

/// What [`SegmentReader::next`] found at the current position.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// A valid record and the position just after it.
    Record(Record<'a>, u64),
    /// The readable length ends here, exactly on a record boundary.
    End,
    /// The readable length ends inside a record (a torn write, or one still being written).
    Torn,
    /// The record at the current position fails its checksum or does not decode.
    Corrupt,
}

/// Reads records sequentially from one segment file through a reusable buffer window. The reader owns the file so
/// the window can never be mistaken for another file's bytes.
#[derive(Debug, Default)]
pub(crate) struct SegmentReader {
    file: Option<File>,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
}

impl SegmentReader {
    /// Switches to `file`, forgetting the previous file's window and releasing an oversized buffer.
    pub(crate) fn open(&mut self, file: File) {
        self.close();
        self.file = Some(file);
    }

    /// Drops the file and its window.
    pub(crate) fn close(&mut self) {
        self.file = None;
        if self.buf.capacity() > READ_CHUNK {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.buf_pos = 0;
    }

    /// Whether a file is open.
    pub(crate) fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Makes sure `file[pos..pos + need]` is in the window, reading at most up to `limit`; false if `limit` is
    /// reached first.
    fn ensure(&mut self, pos: u64, need: usize, limit: u64) -> io::Result<bool> {
        let end = pos + need as u64;
        if end > limit {
            return Ok(false);
        }
        if pos >= self.buf_pos && end <= self.buf_pos + self.buf.len() as u64 {
            return Ok(true);
        }
        let Some(file) = &self.file else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no segment open"));
        };
        let want = need
            .max(READ_CHUNK)
            .min(usize::try_from(limit - pos).unwrap_or(usize::MAX));
        self.buf.clear();
        self.buf.resize(want, 0);
        self.buf_pos = pos;
        if let Err(err) = file.read_exact_at(&mut self.buf, pos) {
            self.buf.clear();
            return Err(err);
        }
        Ok(true)
    }

    fn slice(&self, pos: u64, len: usize) -> &[u8] {
        let start = usize::try_from(pos - self.buf_pos).unwrap_or(usize::MAX);
        &self.buf[start..start + len]
    }

    /// Reads the record at `pos` of the open file, never looking at bytes at or beyond `limit` (the readable
    /// length).
    pub(crate) fn next(&mut self, pos: u64, limit: u64) -> io::Result<Step<'_>> {
        if pos >= limit {
            return Ok(Step::End);
        }
        if !self.ensure(pos, HEADER_LEN, limit)? {
            return Ok(Step::Torn);
        }
        let header = self.slice(pos, HEADER_LEN);
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD_LEN {
            return Ok(Step::Corrupt);
        }
        if !self.ensure(pos, HEADER_LEN + len, limit)? {
            return Ok(Step::Torn);
        }
        let body = self.slice(pos + HEADER_LEN as u64, len);
        if crc32fast::hash(body) != crc {
            return Ok(Step::Corrupt);
        }
        let after = pos + (HEADER_LEN + len) as u64;
        Ok(match decode(body) {
            Some(record) => Step::Record(record, after),
            None => Step::Corrupt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn records_round_trip_through_a_file() {
        let mut buf = Vec::new();
        encode_message(&mut buf, 7, Some(Producer { id: 3, seq: 9 }), b"hello");
        encode_acks(&mut buf, DEFAULT_GROUP_ID, &mut [5, 3, 4, 9]);
        encode_acks(&mut buf, 4, &mut [8]);
        let snapshot = Snapshot {
            next_offset: 10,
            floor: 3,
            producers: vec![(3, 9)],
            groups: None,
        };
        encode_snapshot(&mut buf, &snapshot);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&buf).unwrap();
        let limit = buf.len() as u64;
        let mut reader = SegmentReader::default();
        reader.open(file);
        let Step::Record(
            Record::Message {
                offset,
                producer,
                payload,
            },
            pos,
        ) = reader.next(0, limit).unwrap()
        else {
            panic!("expected a message");
        };
        assert_eq!(
            (offset, producer, payload),
            (7, Some(Producer { id: 3, seq: 9 }), &b"hello"[..])
        );
        let Step::Record(Record::Acks(group, runs), pos) = reader.next(pos, limit).unwrap() else {
            panic!("expected acks");
        };
        assert_eq!((group, runs), (DEFAULT_GROUP_ID, vec![(3, 3), (9, 1)]));
        let Step::Record(Record::Acks(group, runs), pos) = reader.next(pos, limit).unwrap() else {
            panic!("expected group acks");
        };
        assert_eq!((group, runs), (4, vec![(8, 1)]));
        let Step::Record(Record::Snapshot(read), pos) = reader.next(pos, limit).unwrap() else {
            panic!("expected a snapshot");
        };
        assert_eq!(read, snapshot);
        assert!(matches!(reader.next(pos, limit).unwrap(), Step::End));
    }

    #[test]
    fn dead_letter_records_round_trip() {
        let header = DeadHeader {
            id: 42,
            reason: 16,
            deliveries: 5,
            time_ms: 1_700_000_000_000,
            group: DEFAULT_GROUP.to_owned(),
        };
        let in_group = DeadHeader {
            group: "audit".to_owned(),
            ..header.clone()
        };
        let mut buf = Vec::new();
        encode_dead(&mut buf, &header, b"poison");
        encode_dead(&mut buf, &in_group, b"other");
        encode_dead_removed(&mut buf, &[42, 7]);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&buf).unwrap();
        let limit = buf.len() as u64;
        let mut reader = SegmentReader::default();
        reader.open(file);
        let Step::Record(Record::Dead(read, payload), pos) = reader.next(0, limit).unwrap() else {
            panic!("expected a dead letter");
        };
        assert_eq!((read, payload), (header, &b"poison"[..]));
        let Step::Record(Record::Dead(read, payload), pos) = reader.next(pos, limit).unwrap()
        else {
            panic!("expected a dead letter of a group");
        };
        assert_eq!((read, payload), (in_group, &b"other"[..]));
        let Step::Record(Record::DeadRemoved(ids), _) = reader.next(pos, limit).unwrap() else {
            panic!("expected a removal");
        };
        assert_eq!(ids, vec![42, 7]);
    }

    #[test]
    fn a_cut_record_is_torn_and_a_flipped_byte_is_corrupt() {
        let mut buf = Vec::new();
        encode_message(&mut buf, 1, None, b"payload");
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&buf).unwrap();
        let mut reader = SegmentReader::default();
        reader.open(file);
        assert!(matches!(
            reader.next(0, buf.len() as u64 - 1).unwrap(),
            Step::Torn
        ));
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&buf).unwrap();
        let mut reader = SegmentReader::default();
        reader.open(file);
        assert!(matches!(
            reader.next(0, buf.len() as u64).unwrap(),
            Step::Corrupt
        ));
    }

    #[test]
    fn offsets_a_queue_cannot_reach_are_corrupt() {
        let read = |buf: &[u8]| {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(buf).unwrap();
            let mut reader = SegmentReader::default();
            reader.open(file);
            matches!(reader.next(0, buf.len() as u64).unwrap(), Step::Record(..))
        };
        let message = |offset| {
            let mut buf = Vec::new();
            encode_message(&mut buf, offset, None, b"m");
            buf
        };
        let snapshot = |next_offset, floor| {
            let mut buf = Vec::new();
            let producers = Vec::new();
            encode_snapshot(
                &mut buf,
                &Snapshot {
                    next_offset,
                    floor,
                    producers,
                    groups: None,
                },
            );
            buf
        };
        assert!(read(&message(OFFSET_LIMIT - 1)));
        assert!(!read(&message(u64::MAX)), "offset + 1 would overflow");
        assert!(read(&snapshot(OFFSET_LIMIT - 1, 5)));
        assert!(
            !read(&snapshot(u64::MAX, 0)),
            "the next push would overflow"
        );
        assert!(!read(&snapshot(5, 6)), "a floor above the next offset");
    }

    #[test]
    fn a_reader_switched_to_another_file_never_serves_the_previous_files_bytes() {
        let file_with = |offset: u64, payload: &[u8]| {
            let mut buf = Vec::new();
            encode_message(&mut buf, offset, None, payload);
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&buf).unwrap();
            (file, buf.len() as u64)
        };
        let (first, first_len) = file_with(1, b"first file");
        let (second, second_len) = file_with(2, b"second");
        let mut reader = SegmentReader::default();
        reader.open(first);
        assert!(matches!(
            reader.next(0, first_len).unwrap(),
            Step::Record(..)
        ));
        reader.open(second);
        let Step::Record(
            Record::Message {
                offset, payload, ..
            },
            _,
        ) = reader.next(0, second_len).unwrap()
        else {
            panic!("expected the second file's message");
        };
        assert_eq!((offset, payload), (2, &b"second"[..]));
    }
}
