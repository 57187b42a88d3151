//! Queue engine on the disk log: recovery, corrupt tails, dedup across restarts, segment deletion, bounded
//! memory and durability per fsync policy.

mod queue_common;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use queue_common::{
    PATIENCE, disk, open, parse, payload, producer, push_durably, segment_files, seqs,
    small_options, take,
};
use wsmq_msgqueue::queue::{
    ConsumeMode, FsyncPolicy, Pushed, Queue, QueueError, QueueOptions, StorageError,
};

#[tokio::test]
async fn reopening_recovers_exactly_the_unacked_messages_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, report) = open(dir.path(), small_options());
        assert_eq!(report.messages, 0);
        push_durably(&queue, 0, 20).await;
        let mut consumer = queue.consumer(ConsumeMode::Acked);
        consumer.grant(15);
        let got = take(&mut consumer, 15).await;
        let acked: Vec<u64> = got[..10]
            .iter()
            .map(|d| d.id)
            .filter(|id| ![3, 7].contains(id))
            .collect();
        assert_eq!(consumer.ack(&acked), 8);
        queue.close().await;
    }
    let (queue, report) = open(dir.path(), small_options());
    assert_eq!(report.messages, 12);
    assert_eq!(report.next_offset, 20);
    assert!(
        report.truncated.is_empty(),
        "a clean shutdown leaves nothing to truncate"
    );
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(100);
    let got = take(&mut consumer, 12).await;
    let expected: Vec<u64> = [3, 7].into_iter().chain(10..20).collect();
    assert_eq!(seqs(&got), expected);
    assert!(
        queue_common::stays_empty(&mut consumer).await,
        "nothing else was recovered"
    );
    let next = queue
        .push(None, Bytes::from_static(b"after"))
        .expect("push");
    assert!(matches!(next, Pushed::Stored { offset: 20, .. }));
}

/// Writes 10 messages durably in a fresh queue and returns the single segment file.
async fn ten_messages(dir: &Path) -> std::path::PathBuf {
    let (queue, _) = open(dir, small_options());
    push_durably(&queue, 0, 10).await;
    queue.close().await;
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

#[tokio::test]
async fn a_record_cut_short_is_truncated_and_reported_and_earlier_records_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = ten_messages(dir.path()).await;
    let len = std::fs::metadata(&segment).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(len - 3))
        .expect("cut the tail");

    let (queue, report) = open(dir.path(), small_options());
    assert_eq!(report.messages, 9);
    assert_eq!(report.truncated.len(), 1);
    let truncation = &report.truncated[0];
    assert_eq!(truncation.segment, segment);
    assert_eq!(truncation.position + truncation.dropped_bytes, len - 3);
    assert_eq!(
        std::fs::metadata(&segment).expect("stat").len(),
        truncation.position
    );
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(100);
    assert_eq!(
        seqs(&take(&mut consumer, 9).await),
        (0..9).collect::<Vec<_>>()
    );
    push_durably(&queue, 100, 1).await;
    queue.close().await;

    let (_, report) = open(dir.path(), small_options());
    assert!(
        report.truncated.is_empty(),
        "the repaired log reopens cleanly"
    );
    assert_eq!(report.messages, 10);
}

#[tokio::test]
async fn a_flipped_byte_truncates_from_the_corrupt_record_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = ten_messages(dir.path()).await;
    let mut bytes = std::fs::read(&segment).expect("read");
    let needle = b"p0-7";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("payload of message 7 is in the file");
    bytes[at + 3] ^= 0x55;
    std::fs::write(&segment, &bytes).expect("write back");

    let (queue, report) = open(dir.path(), small_options());
    assert_eq!(report.messages, 7);
    assert_eq!(report.truncated.len(), 1);
    assert!(report.truncated[0].position < at as u64);
    let mut consumer = queue.consumer(ConsumeMode::AutoAck);
    assert_eq!(
        seqs(&take(&mut consumer, 7).await),
        (0..7).collect::<Vec<_>>()
    );
    assert!(queue_common::stays_empty(&mut consumer).await);
}

#[tokio::test]
async fn fully_acked_segments_are_deleted_and_dedup_survives_their_deletion_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        segment_size: 512,
        ..small_options()
    };
    {
        let (queue, _) = open(dir.path(), options.clone());
        let mut last = None;
        for seq in 1..=40 {
            let pushed = queue.push(producer(7, seq), payload(7, seq)).expect("push");
            last = Some(pushed.durable());
        }
        let token = last.expect("pushed");
        queue.wait_durable(token).await.expect("durable");
        assert!(
            segment_files(dir.path()).len() > 3,
            "small segments roll over"
        );

        let mut consumer = queue.consumer(ConsumeMode::Acked);
        consumer.grant(100);
        let got = take(&mut consumer, 40).await;
        let ids: Vec<u64> = got.iter().map(|d| d.id).collect();
        assert_eq!(consumer.ack(&ids), 40);
        queue.close().await;
    }
    let remaining = segment_files(dir.path());
    assert_eq!(
        remaining.len(),
        1,
        "only the active segment is kept: {remaining:?}"
    );

    let (queue, report) = open(dir.path(), options);
    assert_eq!(report.messages, 0);
    for seq in [1, 20, 40] {
        assert!(
            matches!(
                queue.push(producer(7, seq), payload(7, seq)),
                Ok(Pushed::Duplicate { .. })
            ),
            "seq {seq} is remembered"
        );
    }
    assert!(matches!(
        queue.push(producer(7, 41), payload(7, 41)),
        Ok(Pushed::Stored { offset: 40, .. })
    ));
}

#[tokio::test]
async fn dedup_marks_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path(), small_options());
        for seq in 1..=3 {
            let pushed = queue.push(producer(9, seq), payload(9, seq)).expect("push");
            queue.wait_durable(pushed.durable()).await.expect("durable");
        }
        queue.close().await;
    }
    let (queue, report) = open(dir.path(), small_options());
    assert_eq!(report.messages, 3);
    assert!(matches!(
        queue.push(producer(9, 3), payload(9, 3)),
        Ok(Pushed::Duplicate { .. })
    ));
    assert!(matches!(
        queue.push(producer(9, 4), payload(9, 4)),
        Ok(Pushed::Stored { .. })
    ));
    assert_eq!(queue.stats().depth, 4);
}

#[tokio::test]
async fn a_backlog_far_beyond_the_memory_budget_is_delivered_in_order_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        memory_budget: 2048,
        segment_size: 8 * 1024,
        ..small_options()
    };
    let filler = "x".repeat(90);
    let big = |seq: u64| Bytes::from(format!("p0-{seq}-{filler}"));
    let (queue, _) = open(dir.path(), options.clone());
    let count = 300;
    let mut last = None;
    for seq in 0..count {
        last = Some(queue.push(None, big(seq)).expect("push").durable());
        assert!(queue.stats().memory_bytes <= options.memory_budget);
    }
    queue
        .wait_durable(last.expect("pushed"))
        .await
        .expect("durable");
    let stats = queue.stats();
    assert!(
        stats.bytes > 10 * options.memory_budget,
        "the backlog is many budgets large"
    );

    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(16);
    let mut next = 0;
    while next < count {
        let got = take(&mut consumer, 1).await;
        for delivery in &got {
            assert_eq!(delivery.payload, big(next));
            next += 1;
        }
        assert!(queue.stats().memory_bytes <= options.memory_budget);
        consumer.ack(&got.iter().map(|d| d.id).collect::<Vec<_>>());
    }
    queue.close().await;

    let (queue, report) = open(dir.path(), options);
    assert_eq!(report.messages, 0, "everything was acked");
    assert_eq!(queue.stats().depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushers_and_a_consumer_racing_the_writer_keep_fifo_with_a_tiny_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        memory_budget: 256,
        segment_size: 4096,
        fsync: FsyncPolicy::Never,
        ..small_options()
    };
    let (queue, _) = open(dir.path(), options);
    let mut pushers = Vec::new();
    for id in 0..4 {
        let queue = queue.clone();
        pushers.push(tokio::spawn(async move {
            for seq in 1..=500 {
                queue
                    .push(producer(id, seq), payload(id, seq))
                    .expect("push");
                if seq % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(32);
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut received = 0;
    while received < 2000 {
        let got = take(&mut consumer, 1).await;
        for delivery in &got {
            let (id, seq) = parse(&delivery.payload);
            assert_eq!(
                seq,
                last.insert(id, seq).unwrap_or(0) + 1,
                "producer {id} in order"
            );
        }
        received += got.len();
        consumer.ack(&got.iter().map(|d| d.id).collect::<Vec<_>>());
    }
    for pusher in pushers {
        pusher.await.expect("pusher");
    }
    assert_eq!(queue.stats().depth, 0);
}

/// Pushes one message under `policy` and checks `wait_durable` resolves and the record reached the file.
async fn durable_write(policy: FsyncPolicy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        fsync: policy,
        ..small_options()
    };
    let (queue, _) = open(dir.path(), options);
    let pushed = queue
        .push(None, Bytes::from_static(b"durable-marker"))
        .expect("push");
    tokio::time::timeout(PATIENCE, queue.wait_durable(pushed.durable()))
        .await
        .expect("wait_durable resolves")
        .expect("durable");
    let on_disk = |dir: &Path| {
        segment_files(dir).iter().any(|f| {
            std::fs::read(f)
                .expect("read")
                .windows(14)
                .any(|w| w == b"durable-marker")
        })
    };
    if policy != FsyncPolicy::Never {
        assert!(
            on_disk(dir.path()),
            "{policy}: written before wait_durable resolves"
        );
    }
    queue.close().await;
    assert!(on_disk(dir.path()), "{policy}: written by close");
}

#[tokio::test]
async fn wait_durable_resolves_under_fsync_always() {
    durable_write(FsyncPolicy::Always).await;
}

#[tokio::test]
async fn wait_durable_resolves_under_fsync_interval() {
    durable_write(FsyncPolicy::Interval(Duration::from_millis(20))).await;
}

#[tokio::test]
async fn wait_durable_resolves_at_once_under_fsync_never() {
    durable_write(FsyncPolicy::Never).await;
}

#[tokio::test]
async fn a_retry_of_a_stored_push_waits_for_the_originals_durability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), small_options());
    let original = queue.push(producer(1, 1), payload(1, 1)).expect("push");
    let retry = queue.push(producer(1, 1), payload(1, 1)).expect("retry");
    assert!(matches!(retry, Pushed::Duplicate { .. }));
    assert!(retry.durable() >= original.durable());
    queue.wait_durable(retry.durable()).await.expect("durable");
}

#[tokio::test]
async fn a_directory_in_use_cannot_be_opened_twice_until_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path(), small_options());
    let second = Queue::open(disk(dir.path()), small_options());
    assert!(
        matches!(second, Err(QueueError::Storage(StorageError::Locked(_)))),
        "{second:?}"
    );
    queue.close().await;
    open(dir.path(), small_options());
}

#[tokio::test]
async fn a_backlog_spread_over_many_segments_is_recovered_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        segment_size: 1024,
        ..small_options()
    };
    {
        let (queue, _) = open(dir.path(), options.clone());
        push_durably(&queue, 0, 300).await;
        let mut consumer = queue.consumer(ConsumeMode::Acked);
        consumer.grant(50);
        let first: Vec<u64> = take(&mut consumer, 50).await.iter().map(|d| d.id).collect();
        consumer.ack(&first);
        queue.close().await;
    }
    assert!(
        segment_files(dir.path()).len() > 5,
        "the backlog spans many segments"
    );
    let (queue, report) = open(dir.path(), options.clone());
    assert!(report.truncated.is_empty(), "{:?}", report.truncated);
    assert_eq!((report.messages, report.next_offset), (250, 300));
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(1000);
    let got = take(&mut consumer, 250).await;
    assert_eq!(seqs(&got), (50..300).collect::<Vec<_>>());
    queue.close().await;

    let (_, report) = open(dir.path(), options);
    assert!(report.truncated.is_empty());
    assert_eq!(report.messages, 250, "nothing was acked after the reopen");
}
