//! Consumer groups in the engine: the log is trimmed only below the slowest group, redelivery and dead letters stay
//! inside a group, and groups outlive the segments that recorded their creation.

mod queue_common;

use std::time::Duration;

use queue_common::{
    PATIENCE, open, push_durably, segment_files, seqs, small_options, stays_empty, take,
};
use wsmq_core::protocol::queue::NackReason;
use wsmq_msgqueue::queue::{ConsumeMode, GroupName, Queue, QueueOptions, StartAt};

fn group(name: &str) -> GroupName {
    name.parse().expect("valid group name")
}

fn ids(deliveries: &[wsmq_msgqueue::queue::Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.id).collect()
}

/// Polls `check` until it holds, failing after [`PATIENCE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test]
async fn trimming_waits_for_the_slowest_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        segment_size: 2048,
        ..small_options()
    };
    let (queue, _) = open(dir.path(), options);
    let mut slow = queue
        .join(&group("slow"), StartAt::Tail, ConsumeMode::Acked)
        .await
        .expect("join");
    let mut fast = queue
        .join(&group("fast"), StartAt::Tail, ConsumeMode::Acked)
        .await
        .expect("join");
    let mut default = queue.consumer(ConsumeMode::Acked);
    push_durably(&queue, 0, 400).await;
    let first_segment = segment_files(dir.path())[0].clone();
    assert!(segment_files(dir.path()).len() > 3, "several segments");
    for consumer in [&mut fast, &mut default] {
        consumer.grant(400);
        let got = take(consumer, 400).await;
        assert_eq!(consumer.ack(&ids(&got)), 400);
    }
    // Give the writer time to delete what it may: the slow group still needs the first segment.
    push_durably(&queue, 400, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        first_segment.exists(),
        "the slowest group pins the oldest segment"
    );

    slow.grant(401);
    let got = take(&mut slow, 401).await;
    assert_eq!(seqs(&got), (0..401).collect::<Vec<_>>());
    slow.ack(&ids(&got));
    eventually("the oldest segment is deleted", || !first_segment.exists()).await;
    queue.close().await;
}

#[tokio::test]
async fn redelivery_stays_inside_a_group() {
    let (queue, _) =
        Queue::open(wsmq_msgqueue::queue::Backend::Memory, small_options()).expect("open");
    let mut a1 = queue
        .join(&group("a"), StartAt::Tail, ConsumeMode::Acked)
        .await
        .expect("join");
    let mut b = queue
        .join(&group("b"), StartAt::Tail, ConsumeMode::Acked)
        .await
        .expect("join");
    push_durably(&queue, 0, 3).await;
    a1.grant(3);
    let first = take(&mut a1, 3).await;
    assert!(first.iter().all(|d| !d.redelivered));
    drop(a1);

    let mut a2 = queue
        .join(&group("a"), StartAt::Oldest, ConsumeMode::Acked)
        .await
        .expect("join");
    a2.grant(10);
    let again = take(&mut a2, 3).await;
    assert_eq!(seqs(&again), vec![0, 1, 2]);
    assert!(
        again.iter().all(|d| d.redelivered),
        "redelivered in group a"
    );
    a2.ack(&ids(&again));

    b.grant(10);
    let once = take(&mut b, 3).await;
    assert_eq!(seqs(&once), vec![0, 1, 2]);
    assert!(
        once.iter().all(|d| !d.redelivered),
        "group b is not affected"
    );
    assert!(stays_empty(&mut b).await);
    let stats = queue.stats();
    let redelivered = |name: &str| {
        stats
            .groups
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.redelivered)
    };
    assert_eq!((redelivered("a"), redelivered("b")), (Some(3), Some(0)));
}

#[tokio::test]
async fn a_message_one_group_nacks_is_a_dead_letter_there_and_still_delivered_to_the_others() {
    let (queue, _) =
        Queue::open(wsmq_msgqueue::queue::Backend::Memory, small_options()).expect("open");
    let mut picky = queue
        .join(&group("picky"), StartAt::Tail, ConsumeMode::Acked)
        .await
        .expect("join");
    let mut other = queue.consumer(ConsumeMode::Acked);
    push_durably(&queue, 0, 2).await;
    picky.grant(10);
    other.grant(10);
    let got = take(&mut picky, 2).await;
    assert!(picky.nack(got[0].id, NackReason::TooLarge));
    assert_eq!(picky.ack(&[got[1].id]), 1);
    let letters = queue.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, got[0].id);
    assert_eq!(letters[0].group, "picky", "a dead letter records its group");
    assert_eq!(seqs(&take(&mut other, 2).await), vec![0, 1]);
    let stats = queue.stats();
    let lag = |name: &str| stats.groups.iter().find(|g| g.name == name).map(|g| g.lag);
    assert_eq!(
        lag("picky"),
        Some(0),
        "a NACK settles the message for its group"
    );
    assert_eq!(
        lag("default"),
        Some(2),
        "the default group has not acked yet"
    );
}

#[tokio::test]
async fn a_group_outlives_the_segment_that_recorded_its_creation_and_resumes_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        segment_size: 1024,
        ..small_options()
    };
    {
        let (queue, _) = open(dir.path(), options.clone());
        let mut worker = queue
            .join(&group("worker"), StartAt::Tail, ConsumeMode::Acked)
            .await
            .expect("join");
        let mut default = queue.consumer(ConsumeMode::Acked);
        push_durably(&queue, 0, 300).await;
        worker.grant(300);
        default.grant(300);
        let got = take(&mut worker, 250).await;
        worker.ack(&ids(&got));
        let got = take(&mut default, 300).await;
        default.ack(&ids(&got));
        // Another segment, so the ones holding the creation record can go.
        push_durably(&queue, 300, 50).await;
        let got = take(&mut default, 50).await;
        default.ack(&ids(&got));
        let first = dir.path().join(format!("{:020}.log", 0));
        eventually("the first segment is deleted", || !first.exists()).await;
        queue.close().await;
    }
    let (queue, report) = open(dir.path(), options);
    let mut names = report.groups.clone();
    names.sort();
    assert_eq!(names, vec!["default".to_owned(), "worker".to_owned()]);
    let mut worker = queue
        .join(&group("worker"), StartAt::Tail, ConsumeMode::Acked)
        .await
        .expect("join");
    worker.grant(500);
    let got = take(&mut worker, 100).await;
    assert_eq!(seqs(&got), (250..350).collect::<Vec<_>>());
    assert!(stays_empty(&mut worker).await);
    let mut default = queue.consumer(ConsumeMode::Acked);
    default.grant(10);
    assert!(stays_empty(&mut default).await, "default acked everything");
    queue.close().await;
}

#[tokio::test]
async fn an_idle_group_is_dropped_and_no_longer_pins_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        segment_size: 1024,
        group_idle_ttl: Duration::from_millis(200),
        ..small_options()
    };
    let (queue, _) = open(dir.path(), options);
    let mut default = queue.consumer(ConsumeMode::Acked);
    drop(
        queue
            .join(&group("gone"), StartAt::Tail, ConsumeMode::Acked)
            .await
            .expect("join"),
    );
    push_durably(&queue, 0, 200).await;
    default.grant(200);
    let got = take(&mut default, 200).await;
    default.ack(&ids(&got));
    let first = dir.path().join(format!("{:020}.log", 0));
    assert!(first.exists(), "the idle group still pins the log");
    eventually("the idle group is dropped", || {
        queue.stats().groups.iter().all(|g| g.name != "gone")
    })
    .await;
    assert_eq!(queue.stats().groups_dropped, 1);
    push_durably(&queue, 200, 1).await;
    eventually("the first segment is deleted", || !first.exists()).await;
    queue.close().await;
}

#[tokio::test]
async fn a_group_starting_at_the_oldest_reads_a_backlog_beyond_the_memory_budget_back_from_disk_in_order()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = QueueOptions {
        memory_budget: 1024,
        segment_size: 4096,
        ..small_options()
    };
    let (queue, _) = open(dir.path(), options.clone());
    push_durably(&queue, 0, 500).await;
    let mut history = queue
        .join(&group("history"), StartAt::Oldest, ConsumeMode::Acked)
        .await
        .expect("join");
    let mut live = queue
        .join(&group("live"), StartAt::Tail, ConsumeMode::Acked)
        .await
        .expect("join");
    push_durably(&queue, 500, 20).await;
    history.grant(16);
    let mut next = 0;
    while next < 520 {
        let got = take(&mut history, 1).await;
        assert_eq!(seqs(&got), vec![next]);
        next += 1;
        assert!(queue.stats().memory_bytes <= options.memory_budget);
        history.ack(&ids(&got));
    }
    assert!(stays_empty(&mut history).await);
    live.grant(100);
    assert_eq!(
        seqs(&take(&mut live, 20).await),
        (500..520).collect::<Vec<_>>()
    );
    queue.close().await;
}
