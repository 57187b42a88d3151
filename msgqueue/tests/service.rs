//! msgqueue as a service: real TLS WebSocket clients in both modes against msgqueue bound to port 0.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::protocol::queue::{PushReply, RejectReason};
use wsmq_core::protocol::{POP_PATH, PUSH_PATH};
use wsmq_testkit::client::next_data;
use wsmq_testkit::expect_within;

#[tokio::test]
async fn many_pushers_and_poppers_keep_per_producer_order_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    const PRODUCERS: u64 = 4;
    const PER_PRODUCER: u64 = 500;
    const CONSUMERS: usize = 3;

    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let dialer = mq.dialer(true);
        consumers.push(tokio::spawn(async move {
            let mut c = Consumer::connect(&dialer, 64).await;
            let mut got = Vec::new();
            while let Ok(d) = tokio::time::timeout(Duration::from_secs(3), c.next()).await {
                got.push(parse_payload(&d.payload));
                c.ack(&[d.id]).await;
            }
            got
        }));
    }
    let mut producers = Vec::new();
    for id in 1..=PRODUCERS {
        let dialer = mq.dialer(true);
        producers.push(tokio::spawn(async move {
            let mut p = Producer::connect(&dialer, id).await;
            for chunk in (1..=PER_PRODUCER).collect::<Vec<_>>().chunks(50) {
                let items: Vec<_> = chunk.iter().map(|&s| (s, payload(id, s))).collect();
                p.push(&items).await;
            }
            let replies = p.until_settled(PER_PRODUCER).await;
            assert!(
                replies.iter().all(|r| matches!(r, PushReply::Acked { .. })),
                "{replies:?}"
            );
        }));
    }
    for p in producers {
        expect_within("producer", p).await.unwrap();
    }
    let mut all = Vec::new();
    for c in consumers {
        let got = expect_within("consumer", c).await.unwrap();
        // Each consumer sees each producer's messages in push order.
        let mut last: HashMap<u64, u64> = HashMap::new();
        for &(p, s) in &got {
            let prev = last.insert(p, s).unwrap_or(0);
            assert!(s > prev, "producer {p}: seq {s} after {prev}");
        }
        all.extend(got);
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, PRODUCERS * PER_PRODUCER, "no duplicates");
    assert_eq!(
        unique.len() as u64,
        PRODUCERS * PER_PRODUCER,
        "nothing lost"
    );
    mq.stop().await;
}

#[tokio::test]
async fn a_single_popper_sees_exactly_the_push_order() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut p = Producer::connect(&mq.dialer(true), 9).await;
    let items: Vec<_> = (1..=300).map(|s| (s, payload(9, s))).collect();
    for chunk in items.chunks(7) {
        p.push(chunk).await;
    }
    p.until_settled(300).await;
    let mut c = Consumer::connect(&mq.dialer(true), 1000).await;
    for s in 1..=300 {
        let d = c.next().await;
        assert_eq!(parse_payload(&d.payload), (9, s));
        assert!(!d.redelivered);
    }
    mq.stop().await;
}

#[tokio::test]
async fn unacked_messages_are_redelivered_after_the_popper_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut p = Producer::connect(&mq.dialer(true), 1).await;
    p.push(&[(1, payload(1, 1)), (2, payload(1, 2)), (3, payload(1, 3))])
        .await;
    p.until_settled(3).await;

    let mut first = Consumer::connect(&mq.dialer(true), 10).await;
    let d1 = first.next().await;
    let _d2 = first.next().await;
    let _d3 = first.next().await;
    first.ack(&[d1.id]).await;
    // The ack must reach msgqueue before the connection goes; a round trip through the credit path proves it.
    expect_within("ack applied", async {
        while mq.queue.stats().acked < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    drop(first);

    let mut second = Consumer::connect(&mq.dialer(true), 10).await;
    let r2 = second.next().await;
    let r3 = second.next().await;
    assert_eq!(
        (parse_payload(&r2.payload), parse_payload(&r3.payload)),
        ((1, 2), (1, 3))
    );
    assert!(r2.redelivered && r3.redelivered);
    second.ack(&[r2.id, r3.id]).await;
    assert!(
        second.idle_for(Duration::from_millis(300)).await,
        "nothing else is pending"
    );
    assert!(mq.queue.stats().redelivered >= 2);
    mq.stop().await;
}

#[tokio::test]
async fn retried_pushes_are_acked_again_but_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut p = Producer::connect(&mq.dialer(true), 77).await;
    p.push(&[(1, payload(77, 1)), (2, payload(77, 2))]).await;
    p.until_settled(2).await;
    drop(p);
    // The producer reconnects (same id) and resends what it is unsure about, plus a new message.
    let mut p = Producer::connect(&mq.dialer(true), 77).await;
    p.push(&[
        (1, payload(77, 1)),
        (2, payload(77, 2)),
        (3, payload(77, 3)),
    ])
    .await;
    let replies = p.until_settled(3).await;
    assert!(replies.iter().all(|r| matches!(r, PushReply::Acked { .. })));

    let mut c = Consumer::connect(&mq.dialer(true), 10).await;
    let got: Vec<_> = [c.next().await, c.next().await, c.next().await]
        .iter()
        .map(|d| parse_payload(&d.payload))
        .collect();
    assert_eq!(got, vec![(77, 1), (77, 2), (77, 3)]);
    assert!(
        c.idle_for(Duration::from_millis(300)).await,
        "no duplicate delivered"
    );
    assert_eq!(mq.queue.stats().duplicates, 2);
    mq.stop().await;
}

#[tokio::test]
async fn acked_messages_survive_an_in_process_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut p = Producer::connect(&mq.dialer(true), 5).await;
    let items: Vec<_> = (1..=100).map(|s| (s, payload(5, s))).collect();
    p.push(&items).await;
    p.until_settled(100).await;
    // Consume and ack the first 10 before the restart.
    let mut c = Consumer::connect(&mq.dialer(true), 10).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(c.next().await.id);
    }
    c.ack(&ids).await;
    expect_within("acks applied", async {
        while mq.queue.stats().acked < 10 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    drop((p, c));
    mq.stop().await;

    let mq = Running::start(config(dir.path())).await;
    let mut c = Consumer::connect(&mq.dialer(true), 200).await;
    for s in 11..=100 {
        assert_eq!(parse_payload(&c.next().await.payload), (5, s));
    }
    assert!(c.idle_for(Duration::from_millis(300)).await);
    mq.stop().await;
}

#[tokio::test]
async fn a_full_queue_rejects_reliable_pushes_and_keeps_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue.max_queue_bytes = 100;
    let mq = Running::start(cfg).await;
    let mut p = Producer::connect(&mq.dialer(true), 3).await;
    let big = Bytes::from(vec![b'x'; 40]);
    p.push(&[(1, big.clone()), (2, big.clone()), (3, big.clone())])
        .await;
    // Replies come in push order, rejects of a frame before the ack that covers its stored pushes.
    let replies = p.until_settled(2).await;
    assert!(
        replies.contains(&PushReply::Reject {
            seq: 3,
            reason: RejectReason::Full
        }),
        "{replies:?}"
    );
    assert!(
        replies.contains(&PushReply::Acked { upto: 2 }),
        "{replies:?}"
    );

    // Acking frees space: the next push is stored.
    let mut c = Consumer::connect(&mq.dialer(true), 10).await;
    let d = c.next().await;
    c.ack(&[d.id]).await;
    expect_within("space freed", async {
        while mq.queue.stats().acked < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    p.push(&[(4, big.clone())]).await;
    assert_eq!(
        p.until_settled(4).await.last(),
        Some(&PushReply::Acked { upto: 4 })
    );
    mq.stop().await;
}

#[tokio::test]
async fn a_push_placed_is_told_its_topic_position_before_the_ack_that_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut p = Producer::connect(&mq.dialer(true), 4).await;
    let news = |n: u32| Bytes::from(format!(r#"{{"Topic":"news","Content":"{n}"}}"#));
    p.push_placed(&[
        (1, news(1)),
        (2, Bytes::from_static(b"no envelope")),
        (3, news(2)),
    ])
    .await;
    p.push(&[(4, news(3))]).await;
    let mut replies = p.until_settled(4).await;
    replies.retain(|r| !matches!(r, PushReply::Acked { upto } if *upto < 4));
    let [
        PushReply::Placed {
            seq: 1,
            position: first,
        },
        PushReply::Placed {
            seq: 3,
            position: second,
        },
        PushReply::Acked { upto: 4 },
    ] = replies[..]
    else {
        panic!("a PLACED per placed envelope, then the ACKED: {replies:?}");
    };
    assert_eq!((first.offset, second.offset), (1, 2));
    assert_eq!(first.epoch, second.epoch);

    // Sent again (as after a lost link), it is a duplicate: acked, placed nowhere new.
    p.push_placed(&[(3, news(2))]).await;
    assert_eq!(p.until_settled(3).await, [PushReply::Acked { upto: 3 }]);
    mq.stop().await;
}

#[tokio::test]
async fn compat_clients_push_and_pop_raw_text_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let (mut pusher, proto) = mq.dialer(false).dial(PUSH_PATH).await.unwrap();
    assert_eq!(proto, None, "compat mode negotiates no subprotocol");
    for i in 0..5 {
        pusher
            .send(Message::text(format!(
                r#"{{"Topic":"t","Content":"m{i}"}}"#
            )))
            .await
            .unwrap();
    }
    let (mut popper, _) = mq.dialer(false).dial(POP_PATH).await.unwrap();
    for i in 0..5 {
        let msg = next_data(&mut popper).await.unwrap();
        assert_eq!(
            msg,
            Message::text(format!(r#"{{"Topic":"t","Content":"m{i}"}}"#))
        );
    }
    // At-most-once: what was handed out is gone from the queue.
    expect_within("auto-acked", async {
        while mq.queue.stats().depth != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    mq.stop().await;
}

#[tokio::test]
async fn a_full_queue_stops_reading_compat_pushers_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue.max_queue_bytes = 30;
    let mq = Running::start(cfg).await;
    let (mut pusher, _) = mq.dialer(false).dial(PUSH_PATH).await.unwrap();
    for i in 0..6 {
        pusher
            .send(Message::text(format!("message-{i}")))
            .await
            .unwrap();
    }
    expect_within("queue filled", async {
        while mq.queue.stats().depth < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        mq.queue.stats().depth,
        3,
        "only what fits is stored; the rest waits unread"
    );
    let (mut popper, _) = mq.dialer(false).dial(POP_PATH).await.unwrap();
    for i in 0..6 {
        let msg = next_data(&mut popper).await.unwrap();
        assert_eq!(msg, Message::text(format!("message-{i}")));
    }
    mq.stop().await;
}

#[tokio::test]
async fn malformed_reliable_frames_close_with_protocol_error_and_leave_the_queue_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let mut p = Producer::connect(&mq.dialer(true), 1).await;
    p.push(&[(1, payload(1, 1))]).await;
    p.until_settled(1).await;

    let cases: Vec<(&str, Message, CloseCode)> = vec![
        (
            "unknown record",
            Message::binary(vec![0x7f, 1, 2]),
            CloseCode::Protocol,
        ),
        (
            "truncated push",
            Message::binary(vec![0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 1]),
            CloseCode::Protocol,
        ),
        (
            "push before hello",
            Message::binary(vec![0x02, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            CloseCode::Protocol,
        ),
        ("text frame", Message::text("hello"), CloseCode::Unsupported),
    ];
    for (what, frame, code) in cases {
        let (mut ws, _) = mq.dialer(true).dial(PUSH_PATH).await.unwrap();
        ws.send(frame).await.unwrap();
        let close = loop {
            match expect_within(what, ws.next()).await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("{what}: expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(close.map(|f| f.code), Some(code), "{what}");
    }
    let (mut ws, _) = mq.dialer(true).dial(POP_PATH).await.unwrap();
    ws.send(Message::binary(vec![0x11, 1])).await.unwrap();
    assert!(
        matches!(expect_within("pop close", ws.next()).await, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Protocol)
    );

    let mut c = Consumer::connect(&mq.dialer(true), 10).await;
    assert_eq!(parse_payload(&c.next().await.payload), (1, 1));
    assert_eq!(mq.queue.stats().depth, 1);
    mq.stop().await;
}

#[tokio::test]
async fn oversize_messages_are_closed_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.service.limits.max_message_size = 1024;
    let mq = Running::start(cfg).await;
    let (mut ws, _) = mq.dialer(false).dial(PUSH_PATH).await.unwrap();
    ws.send(Message::text("x".repeat(4096))).await.unwrap();
    let close = loop {
        match expect_within("close", ws.next()).await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected close, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
    assert_eq!(mq.queue.stats().depth, 0);
    mq.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_401_and_plain_http_gets_400() {
    let dir = tempfile::tempdir().unwrap();
    let mq = Running::start(config(dir.path())).await;
    let tls = wsmq_core::tls::client_config(None, Some(dir.path()), false).unwrap();
    let bad = wsmq_core::dial::Dialer::new(
        &mq.url(),
        wsmq_core::auth::Credentials::new(USER, wsmq_core::Secret::new("wrong")),
        tls.clone(),
    )
    .unwrap();
    let err = bad.dial(PUSH_PATH).await.unwrap_err();
    assert!(
        matches!(err, wsmq_core::dial::DialError::Unauthorized { .. }),
        "{err}"
    );

    // Raw HTTPS requests: no credentials, and a plain GET without upgrade headers.
    for (request, status) in [
        (
            "GET /popmsg HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            "401",
        ),
        (
            &*format!(
                "GET /popmsg HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\n\r\n",
                base64_credentials()
            ),
            "400",
        ),
    ] {
        let response = raw_https(&mq, &tls, request).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{response}"
        );
        if status == "401" {
            assert!(
                response.contains("WWW-Authenticate: Basic realm=\"wsmq\""),
                "{response}"
            );
        }
    }
    mq.stop().await;
}

fn base64_credentials() -> String {
    let header =
        wsmq_core::auth::Credentials::new(USER, wsmq_core::Secret::new(PASSWORD)).basic_header();
    header.trim_start_matches("Basic ").to_owned()
}

/// `err` and its causes, one per line, as an operator sees them (anyhow's `Caused by:` list).
fn rendered_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut lines = vec![err.to_string()];
    let mut cause = err.source();
    while let Some(err) = cause {
        lines.push(err.to_string());
        cause = err.source();
    }
    lines.join("\n")
}

#[tokio::test]
async fn a_second_msgqueue_on_the_same_data_dir_is_refused_naming_the_directory_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = Running::start(config(dir.path())).await;
    let err = wsmq_msgqueue::bind(config(dir.path()))
        .await
        .err()
        .expect("a second msgqueue on the same data dir is refused");
    let chain = rendered_chain(&err);
    let queue_dir = dir.path().join("queue").display().to_string();
    assert_eq!(chain.matches(&queue_dir).count(), 1, "{chain}");
    assert!(chain.contains("in use by another queue"), "{chain}");
    first.stop().await;
}
