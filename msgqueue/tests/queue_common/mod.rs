//! Helpers shared by the queue engine tests: payloads that say who pushed them, and bounded consumption.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use wsmq_msgqueue::queue::{
    Backend, Consumer, Delivery, Producer, Queue, QueueOptions, RecoveryReport,
};

/// Upper bound for anything a test waits on, so a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A payload naming its producer and sequence number, e.g. `p3-17`.
pub fn payload(producer: u64, seq: u64) -> Bytes {
    Bytes::from(format!("p{producer}-{seq}"))
}

/// Parses a payload made by [`payload`] back into (producer, seq).
pub fn parse(payload: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(payload).expect("payload is utf-8");
    let (producer, seq) = text
        .strip_prefix('p')
        .and_then(|rest| rest.split_once('-'))
        .expect("payload looks like p<producer>-<seq>");
    (
        producer.parse().expect("producer id"),
        seq.parse().expect("seq"),
    )
}

/// A reliable-mode producer mark.
pub fn producer(id: u64, seq: u64) -> Option<Producer> {
    Some(Producer { id, seq })
}

/// The disk backend in `dir`.
pub fn disk(dir: &Path) -> Backend {
    Backend::Disk {
        dir: dir.to_path_buf(),
    }
}

/// Options with small, test-friendly sizes.
pub fn small_options() -> QueueOptions {
    QueueOptions {
        max_bytes: 16 * 1024 * 1024,
        memory_budget: 1024 * 1024,
        segment_size: 64 * 1024,
        ..QueueOptions::default()
    }
}

/// Takes exactly `n` deliveries (batches of at most what is still missing), failing after [`PATIENCE`].
pub async fn take(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    tokio::time::timeout(PATIENCE, async {
        while out.len() < n {
            let missing = n - out.len();
            consumer
                .next_batch(missing, &mut out)
                .await
                .expect("next_batch");
        }
    })
    .await
    .expect("deliveries arrive in time");
    out
}

/// Whether `next_batch` stays empty for a short, bounded while (used to show that nothing is deliverable).
pub async fn stays_empty(consumer: &mut Consumer) -> bool {
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_millis(100),
        consumer.next_batch(16, &mut out),
    )
    .await
    .is_err()
        && out.is_empty()
}

/// The segment files in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Opens the disk queue in `dir` (created if missing).
pub fn open(dir: &Path, options: QueueOptions) -> (Queue, RecoveryReport) {
    Queue::open(disk(dir), options).expect("open disk queue")
}

/// Pushes compat messages `first..first + count` and waits until they are durable.
pub async fn push_durably(queue: &Queue, first: u64, count: u64) {
    let mut last = None;
    for seq in first..first + count {
        last = Some(queue.push(None, payload(0, seq)).expect("push").durable());
    }
    if let Some(token) = last {
        tokio::time::timeout(PATIENCE, queue.wait_durable(token))
            .await
            .expect("durable in time")
            .expect("durable");
    }
}

/// The sequence numbers of `deliveries`, in order.
pub fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| parse(&d.payload).1).collect()
}
