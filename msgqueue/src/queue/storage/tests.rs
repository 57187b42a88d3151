//! The contract of [`Log`] and [`GroupStore`], run against both implementations: the memory log and the segment
//! log (with tiny segments, so rolls, snapshots and deletions happen within a few messages).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tokio::sync::Notify;

use super::{Entry, Log, Storage};
use crate::queue::log::{DiskLog, Recovered};
use crate::queue::memory::MemoryLog;
use crate::queue::record::{DEFAULT_GROUP_ID, GroupMark};
use crate::queue::{DurableToken, FsyncPolicy, Producer};

/// Segment size small enough that every few messages start a new segment.
const TINY_SEGMENT: u64 = 256;

/// A log under test and, for the segment log, its directory (kept alive as long as the log).
struct Subject {
    log: Box<dyn Storage>,
    dir: Option<tempfile::TempDir>,
}

impl Subject {
    fn memory() -> Self {
        Self {
            log: Box::new(MemoryLog::new(100)),
            dir: None,
        }
    }

    fn segments() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open_disk(dir.path());
        Self {
            log: Box::new(log),
            dir: Some(dir),
        }
    }

    fn both() -> [Self; 2] {
        [Self::memory(), Self::segments()]
    }

    fn name(&self) -> &'static str {
        if self.dir.is_some() {
            "segment log"
        } else {
            "memory log"
        }
    }

    /// Appends one entry per payload; returns the offsets the log assigned and the durability token.
    fn append(&self, payloads: &[Bytes]) -> (Vec<u64>, DurableToken) {
        let entries: Vec<Entry> = payloads
            .iter()
            .map(|payload| Entry {
                producer: None,
                payload: payload.clone(),
            })
            .collect();
        let appended = self.log.append(&entries).unwrap();
        let offsets = (appended.first..).take(payloads.len()).collect();
        (offsets, appended.durable)
    }

    /// Waits (with a deadline) until everything up to `token` is durable.
    fn wait_durable(&self, token: DurableToken) {
        let Some(mut progress) = self.log.progress() else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let waited = tokio::time::timeout(
                Duration::from_secs(20),
                progress.wait_for(|p| p.durable >= token.log || p.failed.is_some()),
            )
            .await;
            let progress = waited.expect("durability within 20 s").unwrap();
            assert!(progress.failed.is_none(), "{:?}", progress.failed);
        });
    }

    /// Reads everything from `from` on, in reads of at most `max_bytes`.
    fn read_all(&self, from: u64, max_bytes: usize) -> Vec<(u64, Bytes)> {
        let mut out = Vec::new();
        let mut next = from;
        loop {
            let before = out.len();
            next = self.log.read(next, u64::MAX, max_bytes, &mut out).unwrap();
            if out.len() == before {
                return out;
            }
        }
    }
}

fn open_disk(dir: &std::path::Path) -> (DiskLog, Recovered) {
    DiskLog::open(
        dir,
        FsyncPolicy::Always,
        TINY_SEGMENT,
        100,
        Arc::new(Notify::new()),
    )
    .unwrap()
}

/// Closes a segment log and waits until its writer has flushed and let go of the directory.
fn close_disk(log: Box<dyn Storage>) {
    log.close();
    if let Some(mut progress) = log.progress() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), progress.wait_for(|p| p.closed))
                .await
                .expect("closed within 20 s")
                .unwrap();
        });
    }
}

fn payloads(count: usize, len: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| Bytes::from(vec![u8::try_from(i % 251).unwrap(); len]))
        .collect()
}

#[test]
fn append_assigns_consecutive_offsets_across_appends() {
    for subject in Subject::both() {
        let (first, _) = subject.append(&payloads(3, 10));
        let (second, token) = subject.append(&payloads(2, 10));
        assert_eq!(first, [0, 1, 2], "{}", subject.name());
        assert_eq!(second, [3, 4], "{}", subject.name());
        subject.wait_durable(token);
    }
}

#[test]
fn read_starts_at_any_offset_and_stops_after_max_bytes() {
    for subject in Subject::both() {
        let written = payloads(10, 100);
        let (_, token) = subject.append(&written);
        subject.wait_durable(token);
        let mut out = Vec::new();
        let next = subject.log.read(4, u64::MAX, 250, &mut out).unwrap();
        let offsets: Vec<u64> = out.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            [4, 5, 6],
            "{}: stops once 250 bytes are read",
            subject.name()
        );
        assert_eq!(next, 7, "{}", subject.name());
        for (offset, payload) in &out {
            assert_eq!(payload, &written[usize::try_from(*offset).unwrap()]);
        }
        out.clear();
        subject.log.read(9, u64::MAX, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1, "{}: at least one message", subject.name());
        out.clear();
        assert_eq!(subject.log.read(10, u64::MAX, 1000, &mut out).unwrap(), 10);
        assert!(
            out.is_empty(),
            "{}: nothing beyond the tail",
            subject.name()
        );
    }
}

#[test]
fn trim_before_drops_what_every_group_acked_and_keeps_the_rest() {
    for subject in Subject::both() {
        let written = payloads(40, 60);
        let (_, token) = subject.append(&written);
        subject.wait_durable(token);
        subject.log.trim_before(25);
        // The segment log deletes whole segments on its writer thread: poll until it has.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let read = loop {
            let read = subject.read_all(0, 150);
            if read.first().is_some_and(|(o, _)| *o > 0) || std::time::Instant::now() > deadline {
                break read;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let first = read.first().map_or(40, |(o, _)| *o);
        assert!(
            first > 0,
            "{}: nothing below the floor was dropped",
            subject.name()
        );
        assert!(
            first <= 25,
            "{}: dropped a message at or above the floor",
            subject.name()
        );
        let offsets: Vec<u64> = read.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (first..40).collect::<Vec<_>>(),
            "{}",
            subject.name()
        );
        if subject.dir.is_none() {
            assert_eq!(first, 25, "the memory log trims exactly");
        }
    }
}

#[test]
fn a_retried_producer_seq_is_a_duplicate() {
    for subject in Subject::both() {
        let producer = Producer { id: 7, seq: 3 };
        assert!(!subject.log.is_duplicate(producer));
        let entry = Entry {
            producer: Some(producer),
            payload: Bytes::from_static(b"m"),
        };
        subject.log.append(&[entry]).unwrap();
        assert!(subject.log.is_duplicate(producer), "{}", subject.name());
        assert!(subject.log.is_duplicate(Producer { id: 7, seq: 2 }));
        assert!(!subject.log.is_duplicate(Producer { id: 7, seq: 4 }));
        assert!(!subject.log.is_duplicate(Producer { id: 8, seq: 3 }));
    }
}

#[test]
fn reopening_the_segment_log_keeps_what_was_durable() {
    let subject = Subject::segments();
    let written = payloads(30, 50);
    let (_, token) = subject.append(&written);
    let entry = Entry {
        producer: Some(Producer { id: 5, seq: 9 }),
        payload: Bytes::from_static(b"last"),
    };
    let last = subject.log.append(&[entry]).unwrap();
    subject.wait_durable(token.max(last.durable));
    let dir = subject.dir;
    close_disk(subject.log);

    let (log, recovered) = open_disk(dir.as_ref().unwrap().path());
    let reopened = Subject {
        log: Box::new(log),
        dir,
    };
    assert_eq!(recovered.next_offset, 31);
    let read = reopened.read_all(0, 500);
    let mut expected: Vec<(u64, Bytes)> = written
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p))
        .collect();
    expected.push((30, Bytes::from_static(b"last")));
    assert_eq!(read, expected);
    assert!(
        reopened.log.is_duplicate(Producer { id: 5, seq: 9 }),
        "dedup marks survive"
    );
    let (offsets, _) = reopened.append(&payloads(1, 5));
    assert_eq!(offsets, [31], "offsets continue after the recovered tail");
}

#[test]
fn segment_head_snapshots_carry_groups_and_dedup_marks_past_deleted_segments() {
    let subject = Subject::segments();
    let group = GroupMark {
        id: DEFAULT_GROUP_ID + 1,
        floor: 0,
        name: "audit".into(),
    };
    subject.log.create_group(&group);
    let entry = Entry {
        producer: Some(Producer { id: 1, seq: 1 }),
        payload: Bytes::from_static(b"first"),
    };
    subject.log.append(&[entry]).unwrap();
    let (_, _) = subject.append(&payloads(19, 40));
    // Both groups acked everything below 12; the snapshot of later segments must say so, since the acks and the
    // group's creation record are in segments that get deleted.
    let mut acked: Vec<u64> = (0..12).collect();
    subject.log.ack(DEFAULT_GROUP_ID, &mut acked.clone(), 12);
    subject.log.ack(group.id, &mut acked, 12);
    let (_, token) = subject.append(&payloads(20, 40));
    subject.wait_durable(token);
    subject.log.trim_before(12);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while subject
        .read_all(0, 10_000)
        .first()
        .is_some_and(|(o, _)| *o == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "segment 0 was never deleted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = subject.dir;
    close_disk(subject.log);

    let (log, recovered) = open_disk(dir.as_ref().unwrap().path());
    let names: Vec<&str> = recovered.groups.iter().map(|g| g.name.as_str()).collect();
    assert!(
        names.contains(&"audit"),
        "the group outlives its creation record: {names:?}"
    );
    for found in &recovered.groups {
        assert_eq!(found.first_unacked, 12, "{}", found.name);
        assert_eq!(found.messages, 28, "{}", found.name);
    }
    assert!(
        log.is_duplicate(Producer { id: 1, seq: 1 }),
        "the dedup mark outlives its message"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of appends and reads agrees with a plain vector of payloads, for both logs.
    #[test]
    fn reads_agree_with_a_plain_model(
        batches in prop::collection::vec(prop::collection::vec(0usize..120, 1..6), 1..12),
        reads in prop::collection::vec((0u64..80, 0u64..90, 1usize..400), 1..8),
    ) {
        for subject in Subject::both() {
            let mut model: Vec<Bytes> = Vec::new();
            let mut token = DurableToken::at(0);
            for batch in &batches {
                let batch: Vec<Bytes> = batch.iter().map(|&len| Bytes::from(vec![b'x'; len])).collect();
                let (offsets, durable) = subject.append(&batch);
                let expected: Vec<u64> = (model.len() as u64..).take(batch.len()).collect();
                prop_assert_eq!(offsets, expected);
                model.extend(batch);
                token = token.max(durable);
            }
            subject.wait_durable(token);
            for &(from, to, max_bytes) in &reads {
                let mut out = Vec::new();
                let next = subject.log.read(from, to, max_bytes, &mut out).unwrap();
                let start = usize::try_from(from).unwrap().min(model.len());
                let mut bytes = 0;
                let mut expected = Vec::new();
                let end = usize::try_from(to).unwrap().min(model.len());
                for (i, payload) in model.iter().enumerate().take(end).skip(start) {
                    expected.push((i as u64, payload.clone()));
                    bytes += payload.len();
                    if bytes >= max_bytes {
                        break;
                    }
                }
                // Stopped by the byte limit: after the last one read; otherwise at `to` or the tail.
                let expected_next = if bytes >= max_bytes {
                    expected.last().map_or(from, |(o, _)| o + 1)
                } else {
                    from.max(to.min(model.len() as u64))
                };
                prop_assert_eq!(&out, &expected, "{}", subject.name());
                prop_assert_eq!(next, expected_next, "{}", subject.name());
            }
        }
    }
}
