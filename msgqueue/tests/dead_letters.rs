//! Poison messages never block the queue: oversize compat pushes are refused at the edge, a NACKed delivery or
//! one delivered `--max-deliveries` times becomes a dead letter (durable, listed and replayable over the admin
//! listener), and the messages behind it are delivered.

mod common;
mod queue_common;

use std::time::Duration;

use bytes::Bytes;
use common::{Consumer, Producer, Running, config, payload};
use futures_util::SinkExt;
use queue_common::{disk, small_options, take};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::limits::Limits;
use wsmq_core::protocol::PUSH_PATH;
use wsmq_core::protocol::queue::{NackReason, PopRecord};
use wsmq_msgqueue::queue::{Backend, ConsumeMode, DeadReason, Queue, QueueOptions};
use wsmq_testkit::admin::request;
use wsmq_testkit::expect_within;

async fn dead_letters(mq: &Running) -> Vec<serde_json::Value> {
    let (status, body) = request(mq.admin, "GET", "/deadletters").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
}

/// The listing once it holds at least one dead letter (a NACK may still be on its way when the test asks).
async fn dead_letters_once_listed(mq: &Running) -> Vec<serde_json::Value> {
    expect_within("dead letter listed", async {
        loop {
            let listed = dead_letters(mq).await;
            if !listed.is_empty() {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_compat_push_over_the_message_limit_is_refused_with_1009_and_later_messages_are_delivered()
 {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let limit = Limits::default().queue().max_payload;

    // The issue's reproduction: one text frame of 65,537 bytes on compat /pushmsg.
    let (mut pusher, _) = expect_within("dial", mq.dialer(false).dial(PUSH_PATH))
        .await
        .unwrap();
    pusher
        .send(Message::Text("x".repeat(limit + 1).into()))
        .await
        .unwrap();
    let closed = expect_within("close after oversize push", async {
        loop {
            match futures_util::StreamExt::next(&mut pusher).await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await;
    assert_eq!(closed, Some(CloseCode::Size));

    let (mut pusher, _) = expect_within("dial", mq.dialer(false).dial(PUSH_PATH))
        .await
        .unwrap();
    pusher
        .send(Message::Text("x".repeat(limit).into()))
        .await
        .unwrap();
    pusher.send(Message::Text("after".into())).await.unwrap();
    let mut consumer = Consumer::connect(&mq.dialer(true), 8).await;
    let first = consumer.next().await;
    assert_eq!(
        first.payload.len(),
        limit,
        "a message of exactly the limit is stored"
    );
    let second = consumer.next().await;
    assert_eq!(second.payload, Bytes::from_static(b"after"));
    consumer.ack(&[first.id, second.id]).await;
    assert_eq!(
        mq.queue.stats().pushed,
        2,
        "the oversize push was not stored"
    );
    mq.stop().await;
}

#[tokio::test]
async fn a_nacked_delivery_becomes_a_dead_letter_that_is_listed_and_replayed_over_admin() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut producer = Producer::connect(&mq.dialer(true), 7).await;
    producer
        .push(&[(1, Bytes::from_static(b"poison")), (2, payload(7, 2))])
        .await;
    producer.until_settled(2).await;

    let mut consumer = Consumer::connect(&mq.dialer(true), 8).await;
    let poison = consumer.next().await;
    assert_eq!(poison.payload, Bytes::from_static(b"poison"));
    consumer
        .send(&[PopRecord::Nack {
            id: poison.id,
            reason: NackReason::Invalid,
        }])
        .await;
    let good = consumer.next().await;
    assert_eq!(good.payload, payload(7, 2));
    consumer.ack(&[good.id]).await;

    let listed = dead_letters_once_listed(&mq).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], poison.id);
    assert_eq!(listed[0]["reason"], NackReason::Invalid.as_str());
    assert_eq!(listed[0]["deliveries"], 1);
    assert_eq!(listed[0]["size"], 6);
    assert!(listed[0]["time_ms"].as_u64().unwrap() > 0);
    assert!(
        !listed[0].to_string().contains("poison"),
        "the listing never shows payloads"
    );
    assert_eq!(mq.queue.stats().dead_nacked, 1);
    let (status, metrics) = request(mq.admin, "GET", "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("wsmq_msgqueue_queue_dead_nacked_total 1"),
        "{metrics}"
    );
    assert!(
        consumer.idle_for(Duration::from_millis(200)).await,
        "the dead letter is not redelivered"
    );

    let (status, body) = request(mq.admin, "POST", "/deadletters/replay?id=99999")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"replayed":0}"#));
    let (status, body) = request(mq.admin, "POST", "/deadletters/replay")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"replayed":1}"#));
    let replayed = consumer.next().await;
    assert_eq!(replayed.payload, Bytes::from_static(b"poison"));
    assert!(
        replayed.id > good.id,
        "a replayed message goes to the back with a new id"
    );
    consumer.ack(&[replayed.id]).await;
    assert!(dead_letters(&mq).await.is_empty());
    let (status, _) = request(mq.admin, "GET", "/deadletters/replay")
        .await
        .unwrap();
    assert_eq!(status, 405);
    mq.stop().await;
}

#[tokio::test]
async fn a_compat_pushed_message_its_consumer_nacks_is_dead_lettered_and_the_next_one_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let (mut pusher, _) = expect_within("dial", mq.dialer(false).dial(PUSH_PATH))
        .await
        .unwrap();
    pusher
        .send(Message::Text("not for you".into()))
        .await
        .unwrap();
    pusher.send(Message::Text("next".into())).await.unwrap();

    let mut consumer = Consumer::connect(&mq.dialer(true), 8).await;
    let poison = consumer.next().await;
    assert_eq!(poison.payload, Bytes::from_static(b"not for you"));
    consumer
        .send(&[PopRecord::Nack {
            id: poison.id,
            reason: NackReason::TooLarge,
        }])
        .await;
    let next = consumer.next().await;
    assert_eq!(next.payload, Bytes::from_static(b"next"));
    consumer.ack(&[next.id]).await;
    let listed = dead_letters_once_listed(&mq).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (&listed[0]["id"], &listed[0]["reason"]),
        (
            &serde_json::json!(poison.id),
            &serde_json::json!(NackReason::TooLarge.as_str())
        )
    );
    mq.stop().await;
}

#[tokio::test]
async fn a_message_whose_consumers_keep_dropping_the_link_is_dead_lettered_after_max_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue.max_deliveries = 3;
    let mq = Running::start(cfg).await;
    let mut producer = Producer::connect(&mq.dialer(true), 1).await;
    producer
        .push(&[(1, payload(1, 1)), (2, payload(1, 2))])
        .await;
    producer.until_settled(2).await;

    let mut poison_deliveries = 0;
    let next = loop {
        assert!(
            poison_deliveries <= 3,
            "delivered more often than --max-deliveries"
        );
        // A consumer that takes one message and drops its link without acking, like a crashing subscriber.
        let mut consumer = Consumer::connect(&mq.dialer(true), 1).await;
        let delivery = consumer.next().await;
        if delivery.payload != payload(1, 1) {
            consumer.ack(&[delivery.id]).await;
            break delivery;
        }
        poison_deliveries += 1;
        drop(consumer);
    };
    assert_eq!(poison_deliveries, 3);
    assert_eq!(next.payload, payload(1, 2), "the queue moved on");
    let listed = dead_letters(&mq).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["reason"], DeadReason::MaxDeliveries.as_str());
    assert_eq!(listed[0]["deliveries"], 3);
    assert_eq!(mq.queue.stats().dead_max_deliveries, 1);
    mq.stop().await;
}

fn open(dir: &std::path::Path, options: QueueOptions) -> Queue {
    Queue::open(disk(dir), options).expect("open queue").0
}

#[tokio::test]
async fn dead_letters_survive_a_restart_of_the_disk_backend_and_replay_delivers_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), small_options());
    for text in ["poison", "fine"] {
        let pushed = queue
            .push(None, Bytes::from_static(text.as_bytes()))
            .unwrap();
        queue.wait_durable(pushed.durable()).await.unwrap();
    }
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(1);
    let poison = take(&mut consumer, 1).await.remove(0);
    assert!(queue.nack(poison.id, NackReason::TooLarge));
    drop(consumer);
    queue.close().await;
    drop(queue);

    let queue = open(dir.path(), small_options());
    let dead = queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].reason, dead[0].deliveries, dead[0].size),
        (poison.id, DeadReason::Nacked(NackReason::TooLarge), 1, 6)
    );
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(8);
    let only = take(&mut consumer, 1).await.remove(0);
    assert_eq!(
        only.payload,
        Bytes::from_static(b"fine"),
        "the dead letter is not delivered again"
    );
    consumer.ack(&[only.id]);
    assert_eq!(queue.replay(None).await.unwrap(), 1);
    let replayed = take(&mut consumer, 1).await.remove(0);
    assert_eq!(replayed.payload, Bytes::from_static(b"poison"));
    consumer.ack(&[replayed.id]);
    assert!(queue.dead_letters().await.unwrap().is_empty());
    drop(consumer);
    queue.close().await;
    drop(queue);

    // The replay is durable too: nothing dead and nothing left to deliver after another restart.
    let (queue, report) = Queue::open(disk(dir.path()), small_options()).unwrap();
    assert!(queue.dead_letters().await.unwrap().is_empty());
    assert_eq!(report.messages, 0);
    queue.close().await;
}

#[tokio::test]
async fn beyond_max_dead_letters_the_oldest_is_dropped_and_counted() {
    let queue = Queue::open(
        Backend::Memory,
        QueueOptions {
            max_dead_letters: 2,
            ..small_options()
        },
    )
    .unwrap()
    .0;
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(8);
    for n in 0..3u8 {
        queue.push(None, Bytes::from(vec![n])).unwrap();
        let delivery = take(&mut consumer, 1).await.remove(0);
        assert!(queue.nack(delivery.id, NackReason::Failed));
    }
    let ids: Vec<u64> = queue
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(queue.stats().dead_evicted, 1);
    assert_eq!(queue.replay(None).await.unwrap(), 2);
    let replayed = take(&mut consumer, 2).await;
    let payloads: Vec<&[u8]> = replayed.iter().map(|d| &d.payload[..]).collect();
    assert_eq!(payloads, vec![&[1u8][..], &[2u8][..]]);
}

#[tokio::test]
async fn a_nack_for_an_unknown_or_settled_delivery_changes_nothing() {
    let queue = Queue::open(Backend::Memory, small_options()).unwrap().0;
    queue.push(None, Bytes::from_static(b"m")).unwrap();
    let mut consumer = queue.consumer(ConsumeMode::Acked);
    consumer.grant(1);
    let delivery = take(&mut consumer, 1).await.remove(0);
    assert!(!queue.nack(delivery.id + 1, NackReason::Failed));
    assert_eq!(consumer.ack(&[delivery.id]), 1);
    assert!(!queue.nack(delivery.id, NackReason::Failed));
    assert!(queue.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn healthy_messages_that_shared_a_window_with_a_poison_message_are_not_dead_lettered_with_it()
{
    let queue = Queue::open(Backend::Memory, small_options()).unwrap().0;
    for text in ["poison", "b", "c"] {
        queue
            .push(None, Bytes::from_static(text.as_bytes()))
            .unwrap();
    }
    // A consumer that handles its deliveries in order, acking each, and crashes (drops without acking the
    // rest) whenever it reaches the poison message.
    let mut delivered_ok = Vec::new();
    let mut rounds = 0;
    while delivered_ok.len() < 2 {
        rounds += 1;
        assert!(rounds <= 20, "the queue does not move on");
        let mut consumer = queue.consumer(ConsumeMode::Acked);
        consumer.grant(8);
        // Takes what the window allows at once, as a subscriber's link does.
        let mut batch = Vec::new();
        expect_within("a batch", consumer.next_batch(8, &mut batch))
            .await
            .unwrap();
        for delivery in &batch {
            if delivery.payload == Bytes::from_static(b"poison") {
                break;
            }
            consumer.ack(&[delivery.id]);
            delivered_ok.push(delivery.payload.clone());
        }
    }
    assert_eq!(
        delivered_ok,
        vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]
    );
    let dead = queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "only the poison message is dead: {dead:?}");
    assert_eq!((dead[0].id, dead[0].deliveries), (0, 5));
}
