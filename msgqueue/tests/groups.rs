//! Consumer groups on `/popmsg` over real TLS WebSockets: every group gets every message, the consumers of one
//! group share it, groups resume after a restart, and a bad group is refused at the handshake.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tungstenite::Message;
use wsmq_core::dial::DialError;
use wsmq_core::protocol::POP_PATH;
use wsmq_core::protocol::queue::PushReply;
use wsmq_testkit::client::next_data;
use wsmq_testkit::expect_within;

/// Pushes seqs `from..=to` of producer `id` in frames of 50 and waits until all are acked.
async fn push_acked(mq: &Running, id: u64, from: u64, to: u64) {
    let mut producer = Producer::connect(&mq.dialer(true), id).await;
    let items: Vec<_> = (from..=to).map(|s| (s, payload(id, s))).collect();
    for chunk in items.chunks(50) {
        producer.push(chunk).await;
    }
    let replies = producer.until_settled(to).await;
    assert!(
        replies.iter().all(|r| matches!(r, PushReply::Acked { .. })),
        "{replies:?}"
    );
}

/// Takes `n` deliveries, acking each, and returns their seqs in arrival order.
async fn take_acked(consumer: &mut Consumer, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let d = consumer.next().await;
        seqs.push(parse_payload(&d.payload).1);
        consumer.ack(&[d.id]).await;
    }
    seqs
}

fn group_path(name: &str) -> String {
    format!("{POP_PATH}?group={name}")
}

#[tokio::test]
async fn two_groups_each_get_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut a = Consumer::connect_to(&mq.dialer(true), &group_path("a"), 64).await;
    let mut b = Consumer::connect_to(&mq.dialer(true), &group_path("b"), 64).await;
    push_acked(&mq, 1, 1, 300).await;
    let expected: Vec<u64> = (1..=300).collect();
    assert_eq!(
        expect_within("group a", take_acked(&mut a, 300)).await,
        expected
    );
    assert_eq!(
        expect_within("group b", take_acked(&mut b, 300)).await,
        expected
    );
    assert!(a.idle_for(Duration::from_millis(200)).await);
    assert!(b.idle_for(Duration::from_millis(200)).await);
    mq.stop().await;
}

#[tokio::test]
async fn consumers_of_one_group_share_its_messages_and_other_groups_still_get_all() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut shared = Vec::new();
    for _ in 0..2 {
        let dialer = mq.dialer(true);
        shared.push(tokio::spawn(async move {
            // A small window, so neither consumer can take the whole stream at once.
            let mut c = Consumer::connect_to(&dialer, &group_path("workers"), 4).await;
            let mut got = Vec::new();
            while let Ok(d) = tokio::time::timeout(Duration::from_secs(2), c.next()).await {
                got.push(parse_payload(&d.payload).1);
                tokio::time::sleep(Duration::from_millis(1)).await;
                c.ack(&[d.id]).await;
            }
            got
        }));
    }
    let mut audit = Consumer::connect_to(&mq.dialer(true), &group_path("audit"), 512).await;
    // Both workers are attached before the first push (joining a new group waits for it to be durable, and the
    // audit consumer connected after them).
    expect_within("workers joined", async {
        while mq
            .queue
            .stats()
            .groups
            .iter()
            .find(|g| g.name == "workers")
            .is_none_or(|g| g.consumers < 2)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    push_acked(&mq, 1, 1, 400).await;
    assert_eq!(
        expect_within("audit", take_acked(&mut audit, 400)).await,
        (1..=400).collect::<Vec<_>>()
    );
    let mut all = Vec::new();
    for worker in shared {
        let got = expect_within("worker", worker).await.unwrap();
        assert!(!got.is_empty(), "both consumers of the group take a share");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "each in push order");
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=400).collect::<Vec<_>>(),
        "the group got each message exactly once"
    );
    mq.stop().await;
}

#[tokio::test]
async fn a_group_resumes_after_its_last_ack_across_a_restart_and_misses_nothing_pushed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut resumer = Consumer::connect_to(&mq.dialer(true), &group_path("resumer"), 64).await;
    push_acked(&mq, 1, 1, 100).await;
    assert_eq!(
        expect_within("first part", take_acked(&mut resumer, 60)).await,
        (1..=60).collect::<Vec<_>>()
    );
    drop(resumer);
    // Pushed while the group has no consumer.
    push_acked(&mq, 1, 101, 150).await;
    mq.stop().await;

    let mq = Running::start(config(dir.path())).await;
    push_acked(&mq, 2, 1, 10).await;
    let mut resumer = Consumer::connect_to(&mq.dialer(true), &group_path("resumer"), 256).await;
    let mut got = Vec::new();
    while let Ok(d) = tokio::time::timeout(Duration::from_secs(1), resumer.next()).await {
        got.push(parse_payload(&d.payload));
        resumer.ack(&[d.id]).await;
    }
    let expected: Vec<(u64, u64)> = (61..=150)
        .map(|s| (1, s))
        .chain((1..=10).map(|s| (2, s)))
        .collect();
    // Acks are written lazily: one lost in the stop may come back as a redelivery, never as a gap.
    let first = expected.iter().position(|m| Some(m) == got.first());
    assert!(first.is_some(), "resumed inside what it had not acked");
    let tail: Vec<_> = got.iter().skip_while(|m| **m != (1, 61)).copied().collect();
    assert_eq!(tail, expected, "everything after the last ack, in order");
    mq.stop().await;
}

#[tokio::test]
async fn a_new_group_starts_at_the_tail_unless_it_asks_for_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    // A group reading from the start holds everything (it acks nothing here).
    let _first = Consumer::connect_to(&mq.dialer(true), &group_path("first"), 64).await;
    push_acked(&mq, 1, 1, 20).await;
    let mut late = Consumer::connect_to(&mq.dialer(true), &group_path("late"), 64).await;
    let mut oldest = Consumer::connect_to(
        &mq.dialer(true),
        &format!("{POP_PATH}?group=history&start=oldest"),
        64,
    )
    .await;
    push_acked(&mq, 1, 21, 30).await;
    assert_eq!(
        expect_within("late", take_acked(&mut late, 10)).await,
        (21..=30).collect::<Vec<_>>()
    );
    assert_eq!(
        expect_within("oldest", take_acked(&mut oldest, 30)).await,
        (1..=30).collect::<Vec<_>>(),
        "the first group has acked nothing, so everything is retained"
    );
    mq.stop().await;
}

#[tokio::test]
async fn a_compat_popper_and_a_reliable_popper_without_a_group_share_the_default_group() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let (mut compat, proto) = expect_within("dial compat", mq.dialer(false).dial(POP_PATH))
        .await
        .unwrap();
    assert_eq!(proto, None);
    expect_within("the compat popper joined the default group", async {
        while !mq
            .queue
            .stats()
            .groups
            .iter()
            .any(|g| g.name == "default" && g.consumers == 1)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    push_acked(&mq, 1, 1, 5).await;
    let mut other = Consumer::connect_to(&mq.dialer(true), &group_path("other"), 64).await;
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        if let Message::Text(text) = next_data(&mut compat).await.unwrap() {
            seqs.push(parse_payload(text.as_bytes()).1);
        }
    }
    assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
    let default = mq
        .queue
        .stats()
        .groups
        .into_iter()
        .find(|g| g.name == "default")
        .expect("default group");
    assert_eq!((default.consumers, default.lag), (1, 0));
    drop(compat);

    push_acked(&mq, 1, 6, 8).await;
    let mut reliable = Consumer::connect(&mq.dialer(true), 64).await;
    assert_eq!(
        expect_within("default group", take_acked(&mut reliable, 3)).await,
        vec![6, 7, 8]
    );
    assert_eq!(
        expect_within("other group", take_acked(&mut other, 3)).await,
        vec![6, 7, 8],
        "a group created after the first pushes starts at the tail"
    );
    mq.stop().await;
}

#[tokio::test]
async fn a_bad_group_or_unknown_parameter_is_refused_with_400_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let long = format!("group={}", "x".repeat(65));
    for query in [
        "group=",
        "group=a%20b",
        "group=a/b",
        long.as_str(),
        "start=newest",
        "prefetch=10",
        "group=a&group=b",
    ] {
        let err = mq
            .dialer(true)
            .dial(&format!("{POP_PATH}?{query}"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, DialError::HttpStatus { status: 400, .. }),
            "{query}: {err}"
        );
    }
    let good: HashSet<_> = mq
        .queue
        .stats()
        .groups
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(good, HashSet::from(["default".to_owned()]), "no group made");
    // The body says what is wrong.
    let tls = wsmq_core::tls::client_config(None, Some(dir.path()), false).unwrap();
    let creds = wsmq_core::auth::Credentials::new(USER, wsmq_core::Secret::new(PASSWORD));
    let request = format!(
        "GET /popmsg?group=no%20spaces HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        creds.basic_header()
    );
    let response = raw_https(&mq, &tls, &request).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("invalid group name"), "{response}");
    mq.stop().await;
}

#[tokio::test]
async fn a_group_idle_beyond_the_ttl_is_dropped_and_counted_and_comes_back_at_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue.group_idle_ttl = Duration::from_millis(300);
    let mq = Running::start(cfg).await;
    let mut keeper = Consumer::connect_to(&mq.dialer(true), &group_path("keeper"), 64).await;
    let idler = Consumer::connect_to(&mq.dialer(true), &group_path("idler"), 64).await;
    drop(idler);
    push_acked(&mq, 1, 1, 10).await;
    assert_eq!(
        expect_within("keeper", take_acked(&mut keeper, 10)).await,
        (1..=10).collect::<Vec<_>>()
    );
    let stats = expect_within("idle groups dropped", async {
        loop {
            let stats = mq.queue.stats();
            if stats.groups.iter().all(|g| g.name == "keeper") {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        stats.groups_dropped, 1,
        "idler (the never-read default group was handed over to keeper, not dropped idle)"
    );
    assert_eq!(stats.depth, 0, "nothing pins the log any more");
    let metrics = reqwest_metrics(&mq).await;
    for line in [
        "wsmq_msgqueue_queue_groups_dropped_total 1",
        "wsmq_msgqueue_queue_group_consumers{group=\"keeper\"} 1",
        "wsmq_msgqueue_queue_group_lag{group=\"keeper\"} 0",
        "wsmq_msgqueue_queue_group_lag_bytes{group=\"keeper\"} 0",
        "wsmq_msgqueue_queue_group_redelivered_total{group=\"keeper\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let mut idler = Consumer::connect_to(&mq.dialer(true), &group_path("idler"), 64).await;
    push_acked(&mq, 1, 11, 12).await;
    assert_eq!(
        expect_within("idler again", take_acked(&mut idler, 2)).await,
        vec![11, 12],
        "a dropped group that comes back starts at the tail"
    );
    mq.stop().await;
}

/// The admin listener's `/metrics` text.
async fn reqwest_metrics(mq: &Running) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(mq.admin).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    expect_within("metrics", tcp.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn max_queue_bytes_with_a_stalled_group_refuses_pushes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue.max_queue_bytes = 2_000;
    let mq = Running::start(cfg).await;
    let mut fast = Consumer::connect_to(&mq.dialer(true), &group_path("fast"), 1024).await;
    // A group whose consumer went away without acking: it is the stalled one.
    drop(Consumer::connect_to(&mq.dialer(true), &group_path("stalled"), 1024).await);
    let mut producer = Producer::connect(&mq.dialer(true), 1).await;
    let mut accepted = Vec::new();
    let mut refused = false;
    for seq in 1..=500u64 {
        producer.push(&[(seq, payload(1, seq))]).await;
        let replies = producer.until_settled(seq).await;
        if replies
            .iter()
            .any(|r| matches!(r, PushReply::Reject { seq: s, .. } if *s == seq))
        {
            refused = true;
            break;
        }
        accepted.push(seq);
        // The fast group keeps up and acks: only the stalled group holds the log.
        let d = fast.next().await;
        fast.ack(&[d.id]).await;
    }
    assert!(
        refused,
        "pushes are refused once the stalled group's backlog is full"
    );
    assert!(accepted.len() > 10, "{} accepted", accepted.len());
    assert!(mq.queue.stats().rejected_full >= 1);

    let mut stalled = Consumer::connect_to(&mq.dialer(true), &group_path("stalled"), 1024).await;
    assert_eq!(
        expect_within(
            "stalled group catches up",
            take_acked(&mut stalled, accepted.len())
        )
        .await,
        accepted,
        "everything accepted is still there, in order"
    );
    // A producer never reuses a refused seq.
    let next = *accepted.last().unwrap() + 2;
    producer.push(&[(next, payload(1, next))]).await;
    let replies = producer.until_settled(next).await;
    assert!(
        matches!(replies.last(), Some(PushReply::Acked { upto }) if *upto == next),
        "room again once the slowest group acked: {replies:?}"
    );
    mq.stop().await;
}

#[tokio::test]
async fn what_was_pushed_before_any_consumer_goes_to_the_first_group_and_the_default_group_is_gone()
{
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    push_acked(&mq, 1, 1, 5).await;
    let mut first = Consumer::connect_to(&mq.dialer(true), &group_path("first"), 64).await;
    assert_eq!(
        expect_within("first group", take_acked(&mut first, 5)).await,
        (1..=5).collect::<Vec<_>>(),
        "the first group takes over what waited for a consumer"
    );
    let stats = mq.queue.stats();
    let names: Vec<_> = stats.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["first"], "the default group no longer pins the log");
    assert_eq!(stats.groups_dropped, 0, "a hand-over is not an idle drop");

    // A popper without a group later starts the default group again, at the tail.
    let mut default = Consumer::connect(&mq.dialer(true), 64).await;
    push_acked(&mq, 1, 6, 7).await;
    assert_eq!(
        expect_within("default group again", take_acked(&mut default, 2)).await,
        vec![6, 7]
    );
    mq.stop().await;
}
