//! Fuzz entry point for msgqueue's log recovery: arbitrary segment files in a temporary directory, opened as a
//! disk queue.
//!
//! Raw bytes almost never pass a record's CRC, so the input is a small program that writes segment files: raw
//! bytes (torn tails, garbage), records with a correct header around fuzzer-chosen `kind + body` bytes (so the
//! decoder sees every shape), records with a wrong checksum, and the start of a new segment. The `cargo fuzz`
//! target calls [`log_recovery`], and `msgqueue/tests/fuzz_corpus.rs` replays the committed corpus through it on
//! stable.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use wsmq_msgqueue::queue::{
    Backend, ConsumeMode, FsyncPolicy, Pushed, Queue, QueueOptions, RecoveryReport,
};

/// How long one step of the check may wait on the queue; far above what a healthy queue needs.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the segment files `data` describes into a fresh directory, recovers them, and checks the queue.
///
/// Invariants: recovery never fails or panics on segment contents; it is idempotent (a second open truncates
/// nothing and finds the same messages); the next push gets the recovered next offset; every recovered message
/// and the new one are delivered, in offset order, with the recovered byte count; and once they are consumed a
/// reopen finds nothing left.
pub fn log_recovery(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temporary directory");
    write_segments(dir.path(), data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(check(dir.path()));
}

/// Interprets `data` as `op` bytes with operands and writes the segments (named by their base offset).
fn write_segments(dir: &Path, data: &[u8]) {
    let mut segments: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut base = 0;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            0 => {
                let (bytes, tail) = take_sized(rest, 1);
                segments.entry(base).or_default().extend_from_slice(bytes);
                rest = tail;
            }
            op @ (1 | 2) => {
                let (body, tail) = take_sized(rest, 2);
                let mut crc = crc32fast::hash(body);
                if op == 2 {
                    crc ^= 1;
                }
                let file = segments.entry(base).or_default();
                file.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_le_bytes());
                file.extend_from_slice(&crc.to_le_bytes());
                file.extend_from_slice(body);
                rest = tail;
            }
            _ => {
                let (bytes, tail) = rest.split_at(rest.len().min(8));
                let mut le = [0; 8];
                le[..bytes.len()].copy_from_slice(bytes);
                base = u64::from_le_bytes(le);
                segments.entry(base).or_default();
                rest = tail;
            }
        }
    }
    for (base, bytes) in segments {
        std::fs::write(dir.join(format!("{base:020}.log")), bytes).expect("write segment");
    }
}

/// Splits off a run whose length is given by the next `width` bytes (little-endian), clamped to what is left.
fn take_sized(data: &[u8], width: usize) -> (&[u8], &[u8]) {
    let (len, rest) = data.split_at(data.len().min(width));
    let len = len
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    rest.split_at(len.min(rest.len()))
}

fn open(dir: &Path) -> (Queue, RecoveryReport) {
    let options = QueueOptions {
        fsync: FsyncPolicy::Never,
        ..QueueOptions::default()
    };
    Queue::open(
        Backend::Disk {
            dir: dir.to_path_buf(),
        },
        options,
    )
    .expect("recovery must cope with any segment contents")
}

async fn check(dir: &Path) {
    let (queue, first) = open(dir);
    queue.close().await;
    let (queue, second) = open(dir);
    assert!(
        second.truncated.is_empty(),
        "a second recovery truncated again: {second:?}"
    );
    assert_eq!(
        (second.messages, second.bytes, second.next_offset),
        (first.messages, first.bytes, first.next_offset),
        "recovery is not idempotent"
    );

    let payload = Bytes::from_static(b"after recovery");
    let pushed = queue
        .push(None, payload.clone())
        .expect("a recovered queue accepts a push");
    let Pushed::Stored {
        offset, durable, ..
    } = pushed
    else {
        panic!("a compat push cannot be a duplicate");
    };
    assert_eq!(
        offset, first.next_offset,
        "the next push reuses or skips an offset"
    );
    tokio::time::timeout(STEP_TIMEOUT, queue.wait_durable(durable))
        .await
        .expect("durable in time")
        .expect("durable");

    let mut consumer = queue.consumer(ConsumeMode::AutoAck);
    let mut delivered = Vec::new();
    let want = usize::try_from(first.messages + 1).expect("message count fits");
    while delivered.len() < want {
        tokio::time::timeout(STEP_TIMEOUT, consumer.next_batch(64, &mut delivered))
            .await
            .expect("recovered messages are delivered in time")
            .expect("recovered messages can be read back");
    }
    assert_eq!(delivered.len(), want, "more deliveries than messages");
    assert!(
        delivered.windows(2).all(|pair| pair[0].id < pair[1].id),
        "deliveries out of offset order"
    );
    let (last, recovered) = delivered.split_last().expect("at least the new message");
    assert_eq!((last.id, &last.payload), (offset, &payload));
    let bytes: usize = recovered.iter().map(|d| d.payload.len()).sum();
    assert_eq!(bytes as u64, first.bytes, "recovered byte count is wrong");
    drop(consumer);
    queue.close().await;

    let (queue, last) = open(dir);
    assert!(last.truncated.is_empty(), "a clean close left a torn tail");
    assert_eq!(last.messages, 0, "consumed messages came back");
    queue.close().await;
}
