//! The queue's promises, checked the same way on every storage backend: memory, the disk log, and Redis (a real
//! `redis-server` started by the test, durable as in production). Each case is written once, against
//! [`Queue`]; the `conformance!` macro runs it on each backend. Cases that restart the queue run on the durable
//! backends only (the memory backend promises nothing across a restart).

mod queue_common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use queue_common::{PATIENCE, parse, payload, producer, seqs, small_options, stays_empty, take};
use tempfile::TempDir;
use wsmq_core::protocol::history::Unrecovered;
use wsmq_msgqueue::queue::{
    Backend, ConsumeMode, Consumer, DeadReason, Delivery, Epoch, GroupName, HistoryOptions,
    HistoryPage, HistoryQuery, Position, Producer, Queue, QueueOptions, RedisConfig, Retention,
    Scheduled, ScheduledPush, StartAt, run_scheduler,
};
use wsmq_testkit::TestResult;
use wsmq_testkit::redis::RedisServer;

/// Where a case's queue lives; opening it again reaches the same messages and groups.
enum Store {
    Memory,
    Disk(TempDir),
    Redis(Box<RedisServer>),
}

impl Store {
    fn memory() -> Self {
        Self::Memory
    }

    fn disk() -> Self {
        Self::Disk(TempDir::new().expect("temp dir"))
    }

    async fn redis() -> Self {
        Self::Redis(Box::new(
            RedisServer::start().await.expect("redis-server starts"),
        ))
    }

    fn open(&self, options: QueueOptions) -> Queue {
        let backend = match self {
            Self::Memory => Backend::Memory,
            Self::Disk(dir) => Backend::Disk {
                dir: dir.path().to_path_buf(),
            },
            Self::Redis(server) => Backend::Redis(RedisConfig::new(server.url())),
        };
        Queue::open(backend, options).expect("open queue").0
    }
}

fn group(name: &str) -> GroupName {
    name.parse().expect("valid group name")
}

fn options() -> QueueOptions {
    QueueOptions {
        lease_timeout: Duration::from_secs(30),
        ..small_options()
    }
}

/// Pushes reliable messages `first..first + count` of producer `id` in one batch and waits until durable.
async fn push(queue: &Queue, id: u64, first: u64, count: u64) {
    let items = (first..first + count).map(|seq| (seq, payload(id, seq)));
    push_payloads(queue, id, items.collect()).await;
}

async fn consumer(queue: &Queue, name: &str, start: StartAt, credit: u32) -> Consumer {
    let mut consumer = tokio::time::timeout(
        PATIENCE,
        queue.join(&group(name), start, ConsumeMode::Acked),
    )
    .await
    .expect("joined in time")
    .expect("joined");
    consumer.grant(credit);
    consumer
}

/// A queue on the Redis `server` (the Redis-only cases).
fn open_redis(server: &RedisServer, options: QueueOptions) -> Queue {
    Queue::open(Backend::Redis(RedisConfig::new(server.url())), options)
        .expect("open queue")
        .0
}

/// A connection of the test's own to the Redis `server`, to look at what the queue keeps there.
async fn redis_connection(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis-server")
}

fn ids(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.id).collect()
}

async fn messages_are_delivered_in_push_order_and_an_acked_message_is_not_delivered_again(
    store: Store,
) {
    let queue = store.open(options());
    let mut first = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    push(&queue, 1, 1, 50).await;
    let got = take(&mut first, 50).await;
    assert_eq!(seqs(&got), (1..=50).collect::<Vec<_>>());
    assert!(got.iter().all(|d| !d.redelivered));
    first.ack(&ids(&got));
    drop(first);
    let mut second = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    assert!(stays_empty(&mut second).await, "acked messages came back");
    queue.close().await;
}

async fn the_unacked_deliveries_of_a_consumer_that_goes_away_go_to_another(store: Store) {
    let queue = store.open(options());
    let mut first = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    let mut second = consumer(&queue, "g", StartAt::Oldest, 0).await;
    push(&queue, 1, 1, 10).await;
    let got = take(&mut first, 10).await;
    first.ack(&ids(&got[..4]));
    drop(first);
    second.grant(100);
    let again = take(&mut second, 6).await;
    assert_eq!(seqs(&again), (5..=10).collect::<Vec<_>>());
    assert!(again.iter().all(|d| d.redelivered));
    queue.close().await;
}

async fn a_delivery_whose_lease_runs_out_is_delivered_again(store: Store) {
    let queue = store.open(QueueOptions {
        lease_timeout: Duration::from_millis(300),
        ..options()
    });
    let mut only = consumer(&queue, "g", StartAt::Oldest, 10).await;
    push(&queue, 1, 1, 1).await;
    let got = take(&mut only, 1).await;
    assert!(!got[0].redelivered);
    let again = take(&mut only, 1).await;
    assert_eq!(again[0].id, got[0].id);
    assert!(again[0].redelivered);
    only.ack(&ids(&again));
    assert!(stays_empty(&mut only).await);
    queue.close().await;
}

async fn a_producer_retry_is_stored_once(store: Store) {
    let queue = store.open(options());
    let mut only = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    push(&queue, 7, 1, 10).await;
    // The producer lost its acks and resends everything, plus two new messages.
    push(&queue, 7, 1, 12).await;
    let got = take(&mut only, 12).await;
    assert_eq!(seqs(&got), (1..=12).collect::<Vec<_>>());
    assert!(stays_empty(&mut only).await, "a retry was stored twice");
    queue.close().await;
}

async fn every_group_gets_every_message_and_the_consumers_of_a_group_share_them(store: Store) {
    let queue = store.open(options());
    let mut shared_a = consumer(&queue, "shared", StartAt::Oldest, 1000).await;
    let mut shared_b = consumer(&queue, "shared", StartAt::Oldest, 1000).await;
    let mut alone = consumer(&queue, "alone", StartAt::Oldest, 1000).await;
    push(&queue, 1, 1, 60).await;
    let everything = take(&mut alone, 60).await;
    assert_eq!(seqs(&everything), (1..=60).collect::<Vec<_>>());
    let mut split = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
        while split.len() < 60 {
            tokio::select! {
                r = shared_a.next_batch(64, &mut from_a) => r.expect("next_batch"),
                r = shared_b.next_batch(64, &mut from_b) => r.expect("next_batch"),
            }
            split.append(&mut from_a);
            split.append(&mut from_b);
        }
    })
    .await
    .expect("the group's consumers get everything between them");
    let mut got = seqs(&split);
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=60).collect::<Vec<_>>(),
        "each message once in the group"
    );
    queue.close().await;
}

async fn a_new_group_starts_at_the_tail_unless_it_asks_for_the_oldest(store: Store) {
    let queue = store.open(options());
    let _keeper = consumer(&queue, "keeper", StartAt::Oldest, 0).await;
    push(&queue, 1, 1, 5).await;
    let mut tail = consumer(&queue, "tail", StartAt::Tail, 100).await;
    let mut oldest = consumer(&queue, "oldest", StartAt::Oldest, 100).await;
    push(&queue, 1, 6, 5).await;
    assert_eq!(
        seqs(&take(&mut tail, 5).await),
        (6..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&take(&mut oldest, 10).await),
        (1..=10).collect::<Vec<_>>()
    );
    queue.close().await;
}

async fn messages_pushed_before_any_consumer_joined_wait_for_the_default_group(store: Store) {
    let queue = store.open(options());
    push(&queue, 1, 1, 5).await;
    let mut default = queue.consumer(ConsumeMode::Acked);
    default.grant(100);
    assert_eq!(
        seqs(&take(&mut default, 5).await),
        (1..=5).collect::<Vec<_>>()
    );
    queue.close().await;
}

async fn the_first_named_group_takes_over_what_waited_for_a_default_group_nobody_read(
    store: Store,
) {
    let queue = store.open(options());
    push(&queue, 1, 1, 5).await;
    let mut first = consumer(&queue, "first", StartAt::Tail, 100).await;
    assert_eq!(
        seqs(&take(&mut first, 5).await),
        (1..=5).collect::<Vec<_>>()
    );
    queue.close().await;
}

async fn a_nacked_delivery_becomes_a_dead_letter_and_can_be_replayed(store: Store) {
    let queue = store.open(options());
    let mut only = consumer(&queue, "g", StartAt::Oldest, 10).await;
    push(&queue, 1, 1, 2).await;
    let got = take(&mut only, 2).await;
    assert!(only.nack(got[0].id, wsmq_core::protocol::queue::NackReason::Invalid));
    only.ack(&ids(&got[1..]));
    wsmq_testkit::eventually("the dead letter", || async {
        queue
            .dead_letters()
            .await
            .is_ok_and(|letters| letters.len() == 1)
    })
    .await
    .expect("a dead letter in time");
    let dead = queue.dead_letters().await.expect("dead letters");
    assert_eq!(dead[0].id, got[0].id);
    assert!(matches!(dead[0].reason, DeadReason::Nacked(_)));
    assert_eq!(queue.replay(None).await.expect("replay"), 1);
    let replayed = take(&mut only, 1).await;
    assert_eq!(parse(&replayed[0].payload), (1, 1));
    queue.close().await;
}

async fn a_message_delivered_max_deliveries_times_without_an_ack_becomes_a_dead_letter(
    store: Store,
) {
    let queue = store.open(QueueOptions {
        lease_timeout: Duration::from_millis(300),
        max_deliveries: 2,
        ..options()
    });
    let mut only = consumer(&queue, "g", StartAt::Oldest, 10).await;
    push(&queue, 1, 1, 2).await;
    // The consumer keeps failing on the first message (never acks it) but acks the second.
    let mut poison = None;
    let mut seen = 0;
    while seen < 2 {
        for delivery in take(&mut only, 1).await {
            if parse(&delivery.payload) == (1, 1) {
                poison = Some(delivery.id);
                seen += 1;
            } else {
                only.ack(&[delivery.id]);
            }
        }
    }
    // The consumer keeps waiting for deliveries meanwhile (as a pop connection does); the poison message must
    // not come a third time.
    let dead = tokio::time::timeout(PATIENCE, async {
        loop {
            assert!(
                stays_empty(&mut only).await,
                "delivered more than max_deliveries times"
            );
            let letters = queue.dead_letters().await.expect("dead letters");
            if !letters.is_empty() {
                return letters;
            }
        }
    })
    .await
    .expect("a dead letter in time");
    assert_eq!(dead.len(), 1);
    assert_eq!(Some(dead[0].id), poison);
    assert_eq!(dead[0].reason, DeadReason::MaxDeliveries);
    assert!(
        stays_empty(&mut only).await,
        "the dead letter was delivered again"
    );
    queue.close().await;
}

async fn a_compat_consumer_gets_each_message_once_and_settles_it_on_hand_out(store: Store) {
    let queue = store.open(options());
    let mut compat = queue.consumer(ConsumeMode::AutoAck);
    push(&queue, 1, 1, 600).await;
    let got = take(&mut compat, 600).await;
    assert_eq!(seqs(&got), (1..=600).collect::<Vec<_>>());
    drop(compat);
    let mut next = queue.consumer(ConsumeMode::AutoAck);
    assert!(
        stays_empty(&mut next).await,
        "auto-acked messages came back"
    );
    queue.close().await;
}

async fn a_group_resumes_after_its_last_ack_when_the_queue_restarts(store: Store) {
    let queue = store.open(options());
    let mut first = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    push(&queue, 1, 1, 20).await;
    let got = take(&mut first, 20).await;
    first.ack(&ids(&got[..10]));
    drop(first);
    queue.close().await;

    let queue = store.open(options());
    let mut again = consumer(&queue, "g", StartAt::Tail, 1000).await;
    push(&queue, 1, 21, 5).await;
    let rest = take(&mut again, 15).await;
    let mut got = seqs(&rest);
    got.sort_unstable();
    assert_eq!(got, (11..=25).collect::<Vec<_>>());
    assert!(stays_empty(&mut again).await);
    queue.close().await;
}

async fn dedup_marks_survive_a_restart(store: Store) {
    let queue = store.open(options());
    let mut only = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    push(&queue, 9, 1, 5).await;
    let got = take(&mut only, 5).await;
    only.ack(&ids(&got));
    drop(only);
    queue.close().await;

    let queue = store.open(options());
    push(&queue, 9, 1, 6).await;
    let mut only = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    assert_eq!(seqs(&take(&mut only, 1).await), vec![6]);
    assert!(stays_empty(&mut only).await);
    queue.close().await;
}

/// A ws-go envelope on `topic`, as the publisher stores it.
fn envelope(topic: &str, content: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!(r#"{{"Topic":"{topic}","Content":"{content}"}}"#))
}

/// Pushes `(producer seq, payload)` pairs of producer `id` in one batch and waits until durable.
async fn push_payloads(queue: &Queue, id: u64, items: Vec<(u64, bytes::Bytes)>) {
    push_placed(queue, id, items).await;
}

fn history_options(size: usize) -> QueueOptions {
    QueueOptions {
        history: HistoryOptions {
            retention: Retention {
                size,
                ttl: Duration::from_secs(3600),
            },
            inbox: Retention {
                size,
                ttl: Duration::from_secs(3600),
            },
            rules: vec!["quiet.=0".parse().expect("rule")],
            ..HistoryOptions::default()
        },
        ..options()
    }
}

async fn history(queue: &Queue, topic: &str, query: HistoryQuery) -> HistoryPage {
    tokio::time::timeout(PATIENCE, queue.history(topic, &query))
        .await
        .expect("history in time")
        .expect("history")
}

fn since(position: Position) -> HistoryQuery {
    HistoryQuery::Since {
        position,
        limit: 100,
    }
}

fn contents(page: &HistoryPage) -> Vec<(u64, String)> {
    page.messages
        .iter()
        .map(|m| {
            let value: serde_json::Value = serde_json::from_str(m.message.get()).expect("JSON");
            (
                m.offset,
                value["Content"].as_str().expect("content").to_owned(),
            )
        })
        .collect()
}

/// Seqs 1-5 of one producer: two messages of topic `a`, one of `b`, a payload that is not an envelope and one of a
/// topic that keeps no history (`quiet.`).
fn mixed_batch() -> Vec<(u64, bytes::Bytes)> {
    vec![
        (1, envelope("a", 1)),
        (2, envelope("b", 1)),
        (3, envelope("a", 2)),
        (4, bytes::Bytes::from_static(b"not an envelope")),
        (5, envelope("quiet.x", 1)),
    ]
}

/// After [`mixed_batch`]: seq 3 again (a retry, a duplicate) and a third message of topic `a`.
fn retry_batch() -> Vec<(u64, bytes::Bytes)> {
    vec![(3, envelope("a", 2)), (6, envelope("a", 3))]
}

async fn each_topic_numbers_its_messages_and_deliveries_carry_their_position(store: Store) {
    let queue = store.open(history_options(100));
    let mut only = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    push_payloads(&queue, 1, mixed_batch()).await;
    // A retry of seq 3 is a duplicate: it takes no offset.
    push_payloads(&queue, 1, retry_batch()).await;
    let got = take(&mut only, 6).await;
    let positions: Vec<_> = got.iter().map(|d| d.position.map(|p| p.offset)).collect();
    assert_eq!(
        positions,
        [Some(1), Some(1), Some(2), None, None, Some(3)],
        "offsets per topic; none for a payload that is not an envelope or a topic without history"
    );
    assert_eq!(
        &got[0].payload[..],
        &envelope("a", 1)[..],
        "delivered bytes are the stored envelope"
    );
    let epoch_a = got[0].position.expect("positioned").epoch;
    assert_eq!(got[2].position.expect("positioned").epoch, epoch_a);
    assert_eq!(got[5].position.expect("positioned").epoch, epoch_a);
    queue.close().await;
}

/// Pushes `(producer seq, payload)` pairs of producer `id` in one batch, waits until durable, and returns where
/// each push says it was placed.
async fn push_placed(
    queue: &Queue,
    id: u64,
    items: Vec<(u64, bytes::Bytes)>,
) -> Vec<Option<Position>> {
    let mut results = Vec::new();
    queue.push_batch(
        items
            .into_iter()
            .map(|(seq, payload)| (producer(id, seq), payload)),
        &mut results,
    );
    let mut positions = Vec::new();
    for result in results {
        let pushed = result.expect("push accepted");
        tokio::time::timeout(PATIENCE, queue.wait_durable(pushed.durable()))
            .await
            .expect("durable in time")
            .expect("durable");
        positions.push(pushed.position());
    }
    positions
}

async fn a_durable_push_tells_where_it_was_placed_in_its_topic(store: Store) {
    let queue = store.open(history_options(100));
    let mut only = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    let placed = push_placed(&queue, 1, mixed_batch()).await;
    let offsets: Vec<_> = placed.iter().map(|p| p.map(|p| p.offset)).collect();
    assert_eq!(offsets, [Some(1), Some(1), Some(2), None, None]);
    // A retry takes no new place, and does not pretend to know the original's.
    let retried = push_placed(&queue, 1, retry_batch()).await;
    assert_eq!(retried[0], None, "a duplicate is placed nowhere new");
    assert_eq!(retried[1].map(|p| p.offset), Some(3));
    let delivered = take(&mut only, 6).await;
    let told: Vec<_> = placed
        .into_iter()
        .chain(retried.into_iter().skip(1))
        .collect();
    let seen: Vec<_> = delivered.iter().map(|d| d.position).collect();
    assert_eq!(
        told, seen,
        "each push was told the position its delivery carries"
    );
    queue.close().await;
}

async fn history_answers_what_a_client_missed_or_says_why_it_cannot(store: Store) {
    let queue = store.open(history_options(3));
    push_payloads(
        &queue,
        1,
        (1..=5).map(|n| (n, envelope("news", n))).collect(),
    )
    .await;
    let newest = history(&queue, "news", HistoryQuery::Last { limit: 2 }).await;
    assert_eq!(contents(&newest), [(4, "4".into()), (5, "5".into())]);
    assert_eq!(newest.latest, 5);
    let epoch = newest.epoch;
    let resumed = history(&queue, "news", since(Position { epoch, offset: 3 })).await;
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(contents(&resumed), [(4, "4".into()), (5, "5".into())]);
    let caught_up = history(&queue, "news", since(Position { epoch, offset: 5 })).await;
    assert!(caught_up.recovered && caught_up.messages.is_empty());
    // Size 3 keeps offsets 3..=5: a client at 1 missed offset 2 for good.
    let expired = history(&queue, "news", since(Position { epoch, offset: 1 })).await;
    assert_eq!(
        (expired.recovered, expired.reason),
        (false, Some(Unrecovered::Expired))
    );
    assert_eq!(expired.messages.first().map(|m| m.offset), Some(3));
    let other = Epoch(epoch.0 ^ 1);
    let changed = history(
        &queue,
        "news",
        since(Position {
            epoch: other,
            offset: 4,
        }),
    )
    .await;
    assert_eq!(changed.reason, Some(Unrecovered::EpochChanged));
    assert_eq!(
        changed.messages.len(),
        3,
        "every retained message is news to the client"
    );
    let paged = history(
        &queue,
        "news",
        HistoryQuery::Since {
            position: Position { epoch, offset: 2 },
            limit: 2,
        },
    )
    .await;
    assert_eq!(contents(&paged), [(3, "3".into()), (4, "4".into())]);
    assert!(paged.more() && paged.recovered);
    let unknown = history(&queue, "never", HistoryQuery::Last { limit: 10 }).await;
    assert_eq!((unknown.latest, unknown.messages.len()), (0, 0));
    queue.close().await;
}

async fn a_replayed_dead_letter_is_a_new_message_of_its_topic(store: Store) {
    let queue = store.open(history_options(100));
    let mut only = consumer(&queue, "g", StartAt::Oldest, 10).await;
    push_payloads(
        &queue,
        1,
        vec![(1, envelope("t", 1)), (2, envelope("t", 2))],
    )
    .await;
    let got = take(&mut only, 2).await;
    assert!(only.nack(got[0].id, wsmq_core::protocol::queue::NackReason::Invalid));
    only.ack(&ids(&got[1..]));
    wsmq_testkit::eventually("the dead letter", || async {
        queue
            .dead_letters()
            .await
            .is_ok_and(|letters| letters.len() == 1)
    })
    .await
    .expect("a dead letter in time");
    assert_eq!(queue.replay(None).await.expect("replay"), 1);
    let replayed = take(&mut only, 1).await;
    assert_eq!(
        &replayed[0].payload[..],
        &envelope("t", 1)[..],
        "the message as published"
    );
    assert_eq!(
        replayed[0].position.map(|p| p.offset),
        Some(3),
        "a new offset in its topic"
    );
    queue.close().await;
}

async fn topic_history_and_offsets_survive_a_restart(store: Store) {
    let queue = store.open(history_options(100));
    push_payloads(
        &queue,
        1,
        (1..=3).map(|n| (n, envelope("news", n))).collect(),
    )
    .await;
    let before = history(&queue, "news", HistoryQuery::Last { limit: 10 }).await;
    queue.close().await;
    drop(queue);
    let queue = store.open(history_options(100));
    let after = history(
        &queue,
        "news",
        since(Position {
            epoch: before.epoch,
            offset: 1,
        }),
    )
    .await;
    assert!(after.recovered, "{after:?}");
    assert_eq!(contents(&after), [(2, "2".into()), (3, "3".into())]);
    // The first group takes over what waited for the default group: the three stored before, then the new one.
    let mut only = consumer(&queue, "late", StartAt::Oldest, 10).await;
    push_payloads(&queue, 2, vec![(1, envelope("news", 4))]).await;
    let got = take(&mut only, 4).await;
    let positions: Vec<_> = got.iter().map(|d| d.position).collect();
    let at = |offset| {
        Some(Position {
            epoch: before.epoch,
            offset,
        })
    };
    assert_eq!(positions, [at(1), at(2), at(3), at(4)]);
    queue.close().await;
}

async fn ack(queue: &Queue, topic: &str, epoch: Option<Epoch>, offset: u64) -> Option<Position> {
    tokio::time::timeout(PATIENCE, queue.ack_history(topic, epoch, offset))
        .await
        .expect("ack in time")
        .expect("ack")
}

const UNACKED: HistoryQuery = HistoryQuery::Unacked { limit: 100 };

async fn an_inbox_keeps_what_is_not_acked_and_an_ack_removes_messages_for_good(store: Store) {
    let queue = store.open(history_options(100));
    push_payloads(
        &queue,
        1,
        (1..=4).map(|n| (n, envelope("@alice", n))).collect(),
    )
    .await;
    let waiting = history(&queue, "@alice", UNACKED).await;
    assert_eq!(contents(&waiting).len(), 4);
    assert!(waiting.recovered);
    let epoch = waiting.epoch;
    assert_eq!(
        ack(&queue, "@alice", None, 2).await,
        Some(Position { epoch, offset: 2 })
    );
    let waiting = history(&queue, "@alice", UNACKED).await;
    assert_eq!(contents(&waiting), [(3, "3".into()), (4, "4".into())]);
    // An ack never moves back, another epoch's ack changes nothing, and one beyond the newest stops there.
    assert_eq!(
        ack(&queue, "@alice", None, 1).await.map(|p| p.offset),
        Some(2)
    );
    assert_eq!(
        ack(&queue, "@alice", Some(Epoch(epoch.0 ^ 1)), 4)
            .await
            .map(|p| p.offset),
        Some(2)
    );
    assert_eq!(
        ack(&queue, "@alice", Some(epoch), 99)
            .await
            .map(|p| p.offset),
        Some(4)
    );
    assert!(history(&queue, "@alice", UNACKED).await.messages.is_empty());
    push_payloads(&queue, 1, vec![(5, envelope("@alice", 5))]).await;
    assert_eq!(
        contents(&history(&queue, "@alice", UNACKED).await),
        [(5, "5".into())]
    );
    assert_eq!(ack(&queue, "@nobody", None, 1).await, None);
    queue.close().await;
}

async fn inbox_acks_survive_a_restart(store: Store) {
    let queue = store.open(history_options(100));
    push_payloads(
        &queue,
        1,
        (1..=3).map(|n| (n, envelope("@bob", n))).collect(),
    )
    .await;
    ack(&queue, "@bob", None, 1).await;
    queue.close().await;
    drop(queue);
    let queue = store.open(history_options(100));
    let waiting = history(&queue, "@bob", UNACKED).await;
    assert_eq!(contents(&waiting), [(2, "2".into()), (3, "3".into())]);
    queue.close().await;
}

/// Runs the queue's scheduler (what msgqueue runs as its "scheduler" part) until the guard is dropped.
fn start_scheduler(queue: &Queue) -> tokio_util::sync::DropGuard {
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(run_scheduler(queue.clone(), stop.clone()));
    stop.drop_guard()
}

/// Milliseconds since the Unix epoch, `after` from now.
fn unix_ms_in(after: Duration) -> u64 {
    let at = SystemTime::now() + after;
    u64::try_from(
        at.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// Schedules `(seq, due_ms)` of producer `id`, waiting until durable; the outcome of each.
async fn schedule(queue: &Queue, id: u64, items: &[(u64, u64)]) -> Vec<Scheduled> {
    let pushes = items
        .iter()
        .map(|&(seq, due_ms)| ScheduledPush {
            producer: Producer { id, seq },
            due_ms,
            payload: payload(id, seq),
        })
        .collect();
    tokio::time::timeout(PATIENCE, queue.schedule(pushes))
        .await
        .expect("scheduled in time")
        .into_iter()
        .map(|r| r.expect("scheduled"))
        .collect()
}

async fn scheduled_messages_reach_the_queue_at_their_due_time_in_due_then_publish_order(
    store: Store,
) {
    let queue = store.open(options());
    let _scheduler = start_scheduler(&queue);
    let mut only = consumer(&queue, "g", StartAt::Oldest, 100).await;
    let started = Instant::now();
    let (soon, later, last) = (
        unix_ms_in(Duration::from_millis(400)),
        unix_ms_in(Duration::from_millis(800)),
        unix_ms_in(Duration::from_millis(1200)),
    );
    let outcomes = schedule(
        &queue,
        1,
        &[(1, later), (2, later), (3, soon), (4, last), (5, later)],
    )
    .await;
    assert!(
        outcomes.iter().all(|o| *o == Scheduled::Stored),
        "{outcomes:?}"
    );
    assert!(stays_empty(&mut only).await, "delivered before it was due");
    let first = take(&mut only, 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(390),
        "due after 400 ms, delivered after {:?}",
        started.elapsed()
    );
    let rest = take(&mut only, 4).await;
    assert!(started.elapsed() >= Duration::from_millis(1190));
    assert_eq!(seqs(&first), [3]);
    assert_eq!(seqs(&rest), [1, 2, 5, 4]);
    assert!(stays_empty(&mut only).await, "delivered twice");
    queue.close().await;
}

async fn a_resent_scheduled_push_is_scheduled_once(store: Store) {
    let queue = store.open(options());
    let mut only = consumer(&queue, "g", StartAt::Oldest, 100).await;
    let due = unix_ms_in(Duration::from_millis(200));
    let items: Vec<_> = (1..=3).map(|seq| (seq, due)).collect();
    assert_eq!(schedule(&queue, 7, &items).await, [Scheduled::Stored; 3]);
    assert_eq!(schedule(&queue, 7, &items).await, [Scheduled::Duplicate; 3]);
    // A later seq is new again.
    assert_eq!(schedule(&queue, 7, &[(4, due)]).await, [Scheduled::Stored]);
    let _scheduler = start_scheduler(&queue);
    let got = take(&mut only, 4).await;
    assert_eq!(seqs(&got), [1, 2, 3, 4]);
    assert!(stays_empty(&mut only).await, "a retry was scheduled twice");
    queue.close().await;
}

async fn scheduled_messages_survive_a_restart_and_those_that_fell_due_meanwhile_go_out_at_once(
    store: Store,
) {
    let queue = store.open(options());
    let soon = unix_ms_in(Duration::from_millis(300));
    let far = unix_ms_in(Duration::from_secs(3600));
    schedule(&queue, 3, &[(1, soon), (2, far), (3, soon)]).await;
    queue.close().await;
    drop(queue);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let queue = store.open(options());
    let mut only = consumer(&queue, "g", StartAt::Oldest, 100).await;
    let opened = Instant::now();
    let _scheduler = start_scheduler(&queue);
    let got = take(&mut only, 2).await;
    assert_eq!(seqs(&got), [1, 3]);
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "past-due messages took {:?} after the restart",
        opened.elapsed()
    );
    assert!(stays_empty(&mut only).await, "the far one went out early");
    assert_eq!(
        schedule(&queue, 3, &[(2, far)]).await,
        [Scheduled::Duplicate],
        "the dedup marks of scheduled pushes survive the restart"
    );
    queue.close().await;
}

/// Every schedule store is bounded by `max_bytes` like the log: a scheduled push beyond it is refused as full, and
/// the same seq sent again once there is room is stored, not taken for a duplicate.
async fn a_full_schedule_refuses_and_takes_the_refused_seq_once_there_is_room(store: Store) {
    // Payloads large enough that Redis's own overhead on the log (which it bounds by `MEMORY USAGE`) stays small
    // beside them: `p1-<seq>` with the seq zero-padded, so `seqs` still reads it.
    const SIZE: usize = 60_000;
    let queue = store.open(QueueOptions {
        max_bytes: 4 * SIZE as u64,
        ..options()
    });
    let mut only = consumer(&queue, "g", StartAt::Oldest, 100).await;
    let due = unix_ms_in(Duration::from_millis(100));
    let pushes = |seqs: std::ops::RangeInclusive<u64>| -> Vec<ScheduledPush> {
        seqs.map(|seq| ScheduledPush {
            producer: Producer { id: 1, seq },
            due_ms: due,
            payload: bytes::Bytes::from(format!("p1-{seq:0>width$}", width = SIZE - 3)),
        })
        .collect()
    };
    // Four payloads fill the bound; the fifth does not fit.
    let results = queue.schedule(pushes(1..=5)).await;
    assert!(
        results[..4]
            .iter()
            .all(|r| matches!(r, Ok(Scheduled::Stored))),
        "{results:?}"
    );
    assert!(
        matches!(results[4], Err(wsmq_msgqueue::queue::PushError::Full)),
        "{results:?}"
    );
    let _scheduler = start_scheduler(&queue);
    let got = take(&mut only, 4).await;
    only.ack(&ids(&got));
    // The delivered ones leave the store just after the queue has them: retry while it is still full.
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            match queue.schedule(pushes(5..=5)).await.pop() {
                Some(Err(wsmq_msgqueue::queue::PushError::Full)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other.map(|r| r.map_err(|e| e.to_string())),
            }
        }
    })
    .await
    .expect("room in time");
    assert_eq!(
        outcome,
        Some(Ok(Scheduled::Stored)),
        "the refused seq is not a duplicate"
    );
    assert_eq!(seqs(&take(&mut only, 1).await), [5]);
    queue.close().await;
}

macro_rules! conformance {
    (all: [$($case:ident),* $(,)?], durable: [$($durable:ident),* $(,)?] $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() -> wsmq_testkit::TestResult {
                    super::$case(super::Store::memory()).await;
                    Ok(())
                }
            )*
        }
        mod disk {
            $(
                #[tokio::test]
                async fn $case() -> wsmq_testkit::TestResult {
                    super::$case(super::Store::disk()).await;
                    Ok(())
                }
            )*
            $(
                #[tokio::test]
                async fn $durable() -> wsmq_testkit::TestResult {
                    super::$durable(super::Store::disk()).await;
                    Ok(())
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() -> wsmq_testkit::TestResult {
                    super::$case(super::Store::redis().await).await;
                    Ok(())
                }
            )*
            $(
                #[tokio::test]
                async fn $durable() -> wsmq_testkit::TestResult {
                    super::$durable(super::Store::redis().await).await;
                    Ok(())
                }
            )*
        }
    };
}

conformance! {
    all: [
        messages_are_delivered_in_push_order_and_an_acked_message_is_not_delivered_again,
        the_unacked_deliveries_of_a_consumer_that_goes_away_go_to_another,
        a_delivery_whose_lease_runs_out_is_delivered_again,
        a_producer_retry_is_stored_once,
        every_group_gets_every_message_and_the_consumers_of_a_group_share_them,
        a_new_group_starts_at_the_tail_unless_it_asks_for_the_oldest,
        a_nacked_delivery_becomes_a_dead_letter_and_can_be_replayed,
        messages_pushed_before_any_consumer_joined_wait_for_the_default_group,
        the_first_named_group_takes_over_what_waited_for_a_default_group_nobody_read,
        a_message_delivered_max_deliveries_times_without_an_ack_becomes_a_dead_letter,
        a_compat_consumer_gets_each_message_once_and_settles_it_on_hand_out,
        each_topic_numbers_its_messages_and_deliveries_carry_their_position,
        a_durable_push_tells_where_it_was_placed_in_its_topic,
        history_answers_what_a_client_missed_or_says_why_it_cannot,
        an_inbox_keeps_what_is_not_acked_and_an_ack_removes_messages_for_good,
        a_replayed_dead_letter_is_a_new_message_of_its_topic,
        scheduled_messages_reach_the_queue_at_their_due_time_in_due_then_publish_order,
        a_resent_scheduled_push_is_scheduled_once,
        a_full_schedule_refuses_and_takes_the_refused_seq_once_there_is_room,
    ],
    durable: [
        a_group_resumes_after_its_last_ack_when_the_queue_restarts,
        dedup_marks_survive_a_restart,
        topic_history_and_offsets_survive_a_restart,
        inbox_acks_survive_a_restart,
        scheduled_messages_survive_a_restart_and_those_that_fell_due_meanwhile_go_out_at_once,
    ],
}

/// Redis itself killed (SIGKILL) and restarted: what it acked is still there, and the queue carries on.
#[tokio::test]
async fn acked_pushes_survive_a_redis_crash_and_the_queue_recovers() -> TestResult {
    let mut server = RedisServer::start().await?;
    let queue = open_redis(&server, options());
    let mut only = consumer(&queue, "g", StartAt::Oldest, 1000).await;
    push(&queue, 1, 1, 30).await;
    server.kill().await?;
    server.restart().await?;
    push(&queue, 1, 31, 10).await;
    let got = take(&mut only, 40).await;
    let mut seen = seqs(&got);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    queue.close().await;
    Ok(())
}

/// On Redis, `max_bytes` bounds the memory Redis uses for the log, as the sweep measures it about once a second:
/// once over it, pushes are refused as full (nothing stored is dropped) until consumers ack and the log is trimmed.
#[tokio::test]
async fn a_redis_log_over_max_bytes_refuses_pushes_until_acks_trim_it() -> TestResult {
    let server = RedisServer::start().await?;
    let queue = open_redis(
        &server,
        QueueOptions {
            max_bytes: 256 * 1024,
            ..options()
        },
    );
    let mut only = consumer(&queue, "g", StartAt::Oldest, 0).await;
    let big = bytes::Bytes::from(vec![b'x'; 4096]);
    let mut stored = 0;
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            match queue.push(None, big.clone()) {
                Ok(pushed) => {
                    queue.wait_durable(pushed.durable()).await.expect("durable");
                    stored += 1;
                }
                Err(wsmq_msgqueue::queue::PushError::Full) => return,
                Err(err) => panic!("unexpected {err}"),
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "never refused");
    assert!(
        stored >= 256 / 4,
        "refused before the log held max_bytes: {stored}"
    );
    // Everything stored is still delivered; acking it lets the sweep trim the log and pushes in again.
    only.grant(u32::try_from(stored).expect("small"));
    let got = take(&mut only, stored).await;
    only.ack(&ids(&got));
    tokio::time::timeout(PATIENCE, queue.wait_for_space(big.len()))
        .await
        .expect("room again after the acks");
    assert!(queue.push(None, big).is_ok());
    queue.close().await;
    Ok(())
}

/// A consumer left behind in a Redis group by a killed instance (nothing pending, idle beyond the group TTL) is
/// forgotten by the sweep, so groups do not collect dead consumers.
#[tokio::test]
async fn a_redis_consumer_left_behind_by_a_killed_instance_is_forgotten() -> TestResult {
    let server = RedisServer::start().await?;
    let queue = open_redis(
        &server,
        QueueOptions {
            group_idle_ttl: Duration::from_secs(1),
            ..options()
        },
    );
    // A live consumer here keeps the group (it takes nothing: no credit); the ghost took a message and acked it.
    let _live = consumer(&queue, "g", StartAt::Oldest, 0).await;
    push(&queue, 1, 1, 1).await;
    let mut conn = redis_connection(&server).await;
    // Every string in a reply (consumer names among them).
    fn strings(value: &::redis::Value) -> Vec<String> {
        match value {
            ::redis::Value::BulkString(bytes) => vec![String::from_utf8_lossy(bytes).into_owned()],
            ::redis::Value::Array(values) => values.iter().flat_map(strings).collect(),
            _ => Vec::new(),
        }
    }
    let consumers = |listed: ::redis::Value| strings(&listed).join(" ");
    let _: ::redis::Value = ::redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "g",
            "ghost",
            "COUNT",
            "1",
            "STREAMS",
            "{wsmq}:log",
            ">",
        ])
        .query_async(&mut conn)
        .await?;
    let acked: u64 = ::redis::cmd("XACK")
        .arg(&["{wsmq}:log", "g", "0-1"])
        .query_async(&mut conn)
        .await?;
    assert_eq!(acked, 1, "the ghost took the message");
    let listed: ::redis::Value = ::redis::cmd("XINFO")
        .arg(&["CONSUMERS", "{wsmq}:log", "g"])
        .query_async(&mut conn)
        .await?;
    let shown = consumers(listed);
    assert!(shown.contains("ghost"), "{shown}");
    wsmq_testkit::eventually("the ghost consumer is forgotten", || {
        let mut conn = conn.clone();
        async move {
            let listed: ::redis::RedisResult<::redis::Value> = ::redis::cmd("XINFO")
                .arg(&["CONSUMERS", "{wsmq}:log", "g"])
                .query_async(&mut conn)
                .await;
            listed.is_ok_and(|listed| !consumers(listed).contains("ghost"))
        }
    })
    .await?;
    queue.close().await;
    Ok(())
}

/// Acks given while Redis is away are sent once it is back, so the acked messages are not delivered again.
#[tokio::test]
async fn acks_given_while_redis_is_away_are_applied_once_it_is_back() -> TestResult {
    let mut server = RedisServer::start().await?;
    let queue = open_redis(&server, options());
    let mut first = consumer(&queue, "g", StartAt::Oldest, 100).await;
    push(&queue, 1, 1, 5).await;
    let got = take(&mut first, 5).await;
    server.kill().await?;
    first.ack(&ids(&got));
    server.restart().await?;
    let conn = redis_connection(&server).await;
    wsmq_testkit::eventually("the acks reach Redis", || {
        let mut conn = conn.clone();
        async move {
            let pending: ::redis::RedisResult<(
                u64,
                ::redis::Value,
                ::redis::Value,
                ::redis::Value,
            )> = ::redis::cmd("XPENDING")
                .arg(&["{wsmq}:log", "g"])
                .query_async(&mut conn)
                .await;
            pending.is_ok_and(|(count, ..)| count == 0)
        }
    })
    .await?;
    drop(first);
    let mut second = consumer(&queue, "g", StartAt::Oldest, 100).await;
    assert!(stays_empty(&mut second).await, "acked messages came back");
    queue.close().await;
    Ok(())
}

/// Redis itself killed (SIGKILL) and restarted while messages wait: what it acked is still scheduled and goes out.
#[tokio::test]
async fn scheduled_messages_survive_a_redis_crash() -> TestResult {
    let mut server = RedisServer::start().await?;
    let queue = open_redis(&server, options());
    let mut only = consumer(&queue, "g", StartAt::Oldest, 100).await;
    let due = unix_ms_in(Duration::from_millis(500));
    schedule(&queue, 1, &[(1, due), (2, due)]).await;
    server.kill().await?;
    server.restart().await?;
    let _scheduler = start_scheduler(&queue);
    let got = take(&mut only, 2).await;
    assert_eq!(seqs(&got), [1, 2]);
    queue.close().await;
    Ok(())
}

/// Several msgqueue processes share one schedule in Redis: each due message is pushed by exactly one of them.
#[tokio::test]
async fn msgqueue_processes_sharing_redis_push_each_due_message_once() -> TestResult {
    let server = RedisServer::start().await?;
    let queues: Vec<Queue> = (0..3).map(|_| open_redis(&server, options())).collect();
    let _schedulers: Vec<_> = queues.iter().map(start_scheduler).collect();
    let mut only = consumer(&queues[0], "g", StartAt::Oldest, 1000).await;
    let due = unix_ms_in(Duration::from_millis(300));
    for (i, queue) in queues.iter().enumerate() {
        let id = i as u64 + 1;
        let items: Vec<_> = (1..=100).map(|seq| (seq, due)).collect();
        schedule(queue, id, &items).await;
    }
    let got = take(&mut only, 300).await;
    let mut seen: Vec<_> = got.iter().map(|d| parse(&d.payload)).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 300, "a message was pushed twice or lost");
    assert!(stays_empty(&mut only).await, "a message was pushed twice");
    for queue in &queues {
        queue.close().await;
    }
    Ok(())
}
