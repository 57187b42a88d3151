//! Queue engine dispatch semantics: FIFO, leases and redelivery, credit, dedup, capacity, AutoAck.

mod queue_common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use queue_common::{PATIENCE, parse, payload, producer, small_options, stays_empty, take};
use wsmq_msgqueue::queue::{
    Backend, ConsumeMode, PushError, Pushed, Queue, QueueError, QueueOptions,
};

fn memory_queue(options: QueueOptions) -> Queue {
    Queue::open(Backend::Memory, options)
        .expect("open memory queue")
        .0
}

/// Pushes `count` messages for each of `producers` concurrently, in batches, and returns when all are stored.
async fn push_concurrently(queue: &Queue, producers: u64, count: u64) {
    let mut tasks = Vec::new();
    for id in 0..producers {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 1;
            let mut results = Vec::new();
            while seq <= count {
                let end = (seq + 9).min(count);
                let batch = (seq..=end).map(|s| (producer(id, s), payload(id, s)));
                results.clear();
                queue.push_batch(batch, &mut results);
                for result in &results {
                    assert!(matches!(result, Ok(Pushed::Stored { .. })), "{result:?}");
                }
                seq = end + 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("pusher task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_consumer_sees_every_producers_messages_in_push_order() {
    let queue = memory_queue(small_options());
    let pushers = {
        let queue = queue.clone();
        tokio::spawn(async move { push_concurrently(&queue, 8, 500).await })
    };
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(64);
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    let mut last_id = None;
    let mut received = 0;
    while received < 8 * 500 {
        let batch = take(&mut consumer, 1).await;
        for delivery in &batch {
            let (producer, seq) = parse(&delivery.payload);
            let previous = last_seq.insert(producer, seq).unwrap_or(0);
            assert_eq!(seq, previous + 1, "producer {producer} out of order");
            assert!(last_id < Some(delivery.id), "delivery ids follow offsets");
            last_id = Some(delivery.id);
            assert!(!delivery.redelivered);
        }
        received += batch.len();
        let ids: Vec<u64> = batch.iter().map(|d| d.id).collect();
        assert_eq!(consumer.ack(&ids), ids.len());
    }
    pushers.await.expect("pushers");
    let stats = queue.stats();
    assert_eq!(
        (stats.depth, stats.bytes, stats.pushed, stats.acked),
        (0, 0, 4000, 4000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_consumers_share_the_messages_each_delivered_once() {
    let queue = memory_queue(small_options());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(256);
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let mut consumer = queue.consumer(ConsumeMode::Acked);
        consumer.grant(16);
        let tx = tx.clone();
        consumers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                out.clear();
                match consumer.next_batch(8, &mut out).await {
                    Ok(()) => {}
                    Err(QueueError::Closed) => return,
                    Err(err) => panic!("consumer failed: {err}"),
                }
                for delivery in &out {
                    if tx.send(delivery.id).await.is_err() {
                        return;
                    }
                }
                let ids: Vec<u64> = out.iter().map(|d| d.id).collect();
                consumer.ack(&ids);
            }
        }));
    }
    drop(tx);
    push_concurrently(&queue, 4, 1000).await;
    let mut seen = HashSet::new();
    tokio::time::timeout(PATIENCE, async {
        while seen.len() < 4000 {
            let id = rx.recv().await.expect("consumers alive");
            assert!(seen.insert(id), "message {id} delivered twice");
        }
    })
    .await
    .expect("all messages delivered");
    queue.close().await;
    for consumer in consumers {
        consumer.await.expect("consumer task");
    }
    let stats = queue.stats();
    assert_eq!((stats.delivered, stats.redelivered), (4000, 0));
}

#[tokio::test]
async fn a_dropped_consumers_unacked_messages_go_to_the_front_and_are_redelivered() {
    let queue = memory_queue(small_options());
    for seq in 0..5 {
        queue.push(None, payload(0, seq)).expect("push");
    }
    let mut first = queue.consumer(ConsumeMode::Acked);
    first.grant(5);
    let taken = take(&mut first, 5).await;
    assert_eq!(first.ack(&[taken[1].id, taken[3].id]), 2);
    for seq in 5..7 {
        queue.push(None, payload(0, seq)).expect("push");
    }
    drop(first);

    let mut second = queue.consumer(ConsumeMode::Acked);
    second.grant(10);
    let got = take(&mut second, 5).await;
    let seqs: Vec<(u64, bool)> = got
        .iter()
        .map(|d| (parse(&d.payload).1, d.redelivered))
        .collect();
    assert_eq!(
        seqs,
        vec![(0, true), (2, true), (4, true), (5, false), (6, false)]
    );
    assert_eq!(queue.stats().redelivered, 3);
}

#[tokio::test(start_paused = true)]
async fn a_lease_not_acked_in_time_is_redelivered_and_a_late_ack_still_counts() {
    let options = QueueOptions {
        lease_timeout: Duration::from_secs(5),
        ..small_options()
    };
    let queue = memory_queue(options);
    queue.push(None, Bytes::from_static(b"slow")).expect("push");
    let mut slow = queue.consumer(ConsumeMode::Acked);
    slow.grant(1);
    let leased = take(&mut slow, 1).await;

    let mut other = queue.consumer(ConsumeMode::Acked);
    other.grant(1);
    let started = tokio::time::Instant::now();
    let redelivered = take(&mut other, 1).await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "redelivered only after the lease timeout"
    );
    assert_eq!(redelivered[0].id, leased[0].id);
    assert!(redelivered[0].redelivered);
    let stats = queue.stats();
    assert_eq!(
        (stats.lease_expired, stats.redelivered, stats.in_flight),
        (1, 1, 1)
    );

    assert_eq!(
        slow.ack(&[leased[0].id]),
        1,
        "the expired lease's ack still removes the message"
    );
    assert_eq!(other.ack(&[redelivered[0].id]), 0, "acks are idempotent");
    assert_eq!(queue.stats().depth, 0);
}

#[tokio::test]
async fn a_consumer_never_holds_more_than_its_window_unacked() {
    let queue = memory_queue(small_options());
    for seq in 0..5 {
        queue.push(None, payload(0, seq)).expect("push");
    }
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    assert!(stays_empty(&mut consumer).await, "no credit, no delivery");
    consumer.grant(2);
    let mut out = Vec::new();
    consumer.next_batch(10, &mut out).await.expect("next_batch");
    assert_eq!(out.len(), 2);
    assert!(stays_empty(&mut consumer).await, "window full");
    consumer.ack(&[out[0].id]);
    let more = take(&mut consumer, 1).await;
    assert_eq!(parse(&more[0].payload).1, 2);
    assert_eq!(queue.stats().in_flight, 2);
}

#[tokio::test]
async fn a_retried_producer_seq_is_acked_but_not_stored_twice() {
    let queue = memory_queue(small_options());
    assert!(matches!(
        queue.push(producer(1, 1), payload(1, 1)),
        Ok(Pushed::Stored { .. })
    ));
    assert!(matches!(
        queue.push(producer(1, 2), payload(1, 2)),
        Ok(Pushed::Stored { .. })
    ));
    assert!(matches!(
        queue.push(producer(1, 2), payload(1, 2)),
        Ok(Pushed::Duplicate { .. })
    ));
    assert!(matches!(
        queue.push(producer(1, 1), payload(1, 1)),
        Ok(Pushed::Duplicate { .. })
    ));
    assert!(matches!(
        queue.push(producer(2, 1), payload(2, 1)),
        Ok(Pushed::Stored { .. })
    ));
    let stats = queue.stats();
    assert_eq!((stats.depth, stats.pushed, stats.duplicates), (3, 3, 2));
}

#[tokio::test]
async fn pushes_are_refused_when_full_and_accepted_again_after_acks() {
    let options = QueueOptions {
        max_bytes: 100,
        ..small_options()
    };
    let queue = memory_queue(options);
    let ten = Bytes::from_static(b"0123456789");
    for _ in 0..10 {
        queue.push(None, ten.clone()).expect("fits");
    }
    assert!(matches!(
        queue.push(None, ten.clone()),
        Err(PushError::Full)
    ));
    assert!(matches!(
        queue.push(None, Bytes::from(vec![0; 101])),
        Err(PushError::TooLarge { len: 101, .. })
    ));
    let mut out = Vec::new();
    queue.push_batch(
        [
            (None, Bytes::from_static(b"x")),
            (None, Bytes::from_static(b"y")),
        ],
        &mut out,
    );
    assert!(
        out.iter().all(|r| matches!(r, Err(PushError::Full))),
        "a batch stops at Full: {out:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), queue.wait_for_space(10))
            .await
            .is_err(),
        "no space yet"
    );

    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.wait_for_space(10).await })
    };
    tokio::task::yield_now().await;
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(1);
    let delivery = take(&mut consumer, 1).await;
    assert!(
        matches!(queue.push(None, ten.clone()), Err(PushError::Full)),
        "a lease still occupies space"
    );
    consumer.ack(&[delivery[0].id]);
    tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("space waiter woken")
        .expect("waiter task");
    queue.push(None, ten).expect("space freed by the ack");
    assert_eq!(
        queue.stats().rejected_full,
        3,
        "items after the first Full of a batch are not pushed at all"
    );
}

#[tokio::test(start_paused = true)]
async fn auto_ack_deliveries_are_never_redelivered() {
    let options = QueueOptions {
        lease_timeout: Duration::from_secs(1),
        ..small_options()
    };
    let queue = memory_queue(options);
    for seq in 0..3 {
        queue.push(None, payload(0, seq)).expect("push");
    }
    let mut compat = queue.consumer(ConsumeMode::AutoAck);
    let got = take(&mut compat, 3).await;
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![0, 1, 2]);
    drop(compat);
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut reliable = queue.consumer(ConsumeMode::Acked);
    reliable.grant(10);
    assert!(stays_empty(&mut reliable).await);
    let stats = queue.stats();
    assert_eq!((stats.depth, stats.acked, stats.redelivered), (0, 3, 0));
}

#[tokio::test]
async fn a_closed_queue_refuses_pushes_and_ends_waiting_consumers() {
    let queue = memory_queue(small_options());
    let mut consumer = queue.consumer(ConsumeMode::AutoAck);
    let waiting = tokio::spawn(async move {
        let mut out = Vec::new();
        consumer.next_batch(1, &mut out).await
    });
    tokio::task::yield_now().await;
    queue.close().await;
    let result = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("consumer ends")
        .expect("task");
    assert!(matches!(result, Err(QueueError::Closed)));
    assert!(matches!(
        queue.push(None, Bytes::from_static(b"late")),
        Err(PushError::Closed)
    ));
}

#[tokio::test]
async fn a_cancelled_wait_loses_nothing_and_passes_the_wake_up_on() {
    let queue = memory_queue(small_options());
    let mut first = queue.consumer(ConsumeMode::Acked);
    first.grant(10);
    let mut second = queue.consumer(ConsumeMode::Acked);
    second.grant(10);
    assert!(
        stays_empty(&mut first).await,
        "first registers as a waiter, then its wait is dropped"
    );
    let waiting = tokio::spawn(async move {
        let mut out = Vec::new();
        second.next_batch(10, &mut out).await.map(|()| out)
    });
    tokio::task::yield_now().await;
    queue.push(None, Bytes::from_static(b"one")).expect("push");
    let out = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the live waiter gets the message")
        .expect("task")
        .expect("next_batch");
    assert_eq!(out.len(), 1);
}

/// Polls `future` exactly once.
async fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    tokio::time::timeout(Duration::ZERO, future).await.ok()
}

#[tokio::test(start_paused = true)]
async fn a_consumer_woken_by_a_lease_deadline_no_longer_swallows_wake_ups() {
    let options = QueueOptions {
        lease_timeout: Duration::from_secs(5),
        ..small_options()
    };
    let queue = memory_queue(options);
    queue.push(None, payload(0, 0)).expect("push");
    let mut holder = queue.consumer(ConsumeMode::Acked);
    holder.grant(1);
    take(&mut holder, 1).await;

    let (mut a, mut b) = (
        queue.consumer(ConsumeMode::Acked),
        queue.consumer(ConsumeMode::Acked),
    );
    a.grant(10);
    b.grant(10);
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    let mut wait_a = Box::pin(a.next_batch(10, &mut out_a));
    let mut wait_b = Box::pin(b.next_batch(10, &mut out_b));
    assert!(poll_once(&mut wait_a).await.is_none(), "a waits first");
    assert!(poll_once(&mut wait_b).await.is_none(), "then b");
    tokio::time::advance(Duration::from_secs(6)).await;
    let woken_by_deadline = poll_once(&mut wait_b).await;
    assert!(
        matches!(woken_by_deadline, Some(Ok(()))),
        "b takes the expired lease"
    );
    assert!(
        poll_once(&mut wait_a).await.is_none(),
        "a finds nothing and waits again"
    );

    queue.push(None, payload(0, 1)).expect("push");
    let got = poll_once(&mut wait_a).await;
    assert!(
        matches!(got, Some(Ok(()))),
        "the push wakes a, the only consumer still waiting"
    );
    drop(wait_a);
    drop(wait_b);
    assert_eq!(parse(&out_b[0].payload), (0, 0));
    assert_eq!(parse(&out_a[0].payload), (0, 1));
}

#[tokio::test]
async fn auto_ack_consumption_wakes_a_pusher_waiting_for_space() {
    let options = QueueOptions {
        max_bytes: 20,
        ..small_options()
    };
    let queue = memory_queue(options);
    let ten = Bytes::from_static(b"0123456789");
    queue.push(None, ten.clone()).expect("fits");
    queue.push(None, ten.clone()).expect("fits");
    assert!(matches!(
        queue.push(None, ten.clone()),
        Err(PushError::Full)
    ));
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.wait_for_space(10).await })
    };
    tokio::task::yield_now().await;
    let mut compat = queue.consumer(ConsumeMode::AutoAck);
    take(&mut compat, 1).await;
    tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("the pusher is woken by the auto-ack")
        .expect("waiter task");
    queue.push(None, ten).expect("space freed");
}
