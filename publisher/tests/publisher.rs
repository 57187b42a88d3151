//! The publisher against a fake msgqueue: both client modes, validation at the edge, acks that wait for the
//! queue, and a link that survives the queue going away (or moves to the next one), buffers within bounds and
//! applies backpressure.

mod common;

use std::time::Duration;

use common::{FakeQueue, Publisher, REJECT_MARKER, assert_nothing_pending, config};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_publisher::metrics::InvalidReason;
use wsmq_testkit::client::{next_text, send_text};
use wsmq_testkit::within;

fn ack(id: &str) -> ServerFrame {
    ServerFrame::Ack { id: id.into() }
}

fn parse(frame: &str) -> anyhow::Result<ServerFrame> {
    ServerFrame::parse(frame).ok_or_else(|| anyhow::anyhow!("unknown frame {frame}"))
}

#[tokio::test]
async fn v1_message_with_id_is_acked_once_the_queue_stored_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    send_text(
        &mut client,
        r#"{"Topic":"news","Content":"hello","Id":"m-1"}"#,
    )
    .await?;
    assert_eq!(parse(&next_text(&mut client).await?)?, ack(r#""m-1""#));

    let seen = queue.state();
    assert_eq!(
        seen.seen().stored_texts(),
        [r#"{"Topic":"news","Content":"hello"}"#]
    );
    assert!(
        seen.seen().violations.is_empty(),
        "{:?}",
        seen.seen().violations
    );
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn compat_client_gets_nothing_back_and_stays_open() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), false).await?;

    // Exactly what ws-go's clients send, plus garbage in between that must not break anything.
    send_text(&mut client, r#"{"Topic":"news","Content":"one"}"#).await?;
    send_text(&mut client, "{this is not json").await?;
    client.send(Message::binary(vec![1u8, 2, 3])).await?;
    send_text(&mut client, r#"{"Topic":"news","Content":"two","Id":7}"#).await?;

    let state = queue.state();
    state
        .wait_for("both valid messages", |seen| seen.stored.len() == 2)
        .await?;
    assert_nothing_pending(&mut client).await?;
    assert_eq!(
        state.seen().stored_texts(),
        [
            r#"{"Topic":"news","Content":"one"}"#,
            r#"{"Topic":"news","Content":"two"}"#
        ]
    );
    assert_eq!(publisher.metrics.invalid_count(InvalidReason::Malformed), 1);
    assert_eq!(publisher.metrics.invalid_count(InvalidReason::Binary), 1);

    // Still open: another message goes through.
    send_text(&mut client, "news three").await?;
    state
        .wait_for("the third message", |seen| seen.stored.len() == 3)
        .await?;

    // Shutdown says goodbye with 1001 (going away).
    let stopping = tokio::spawn(publisher.stop());
    let close = within("the close frame", client.next()).await?;
    assert!(
        matches!(&close, Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away),
        "{close:?}"
    );
    // Reading on sends tungstenite's Close reply and ends the stream.
    let end = within("the end of the stream", client.next()).await?;
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    within("the publisher to stop", stopping).await???;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn lowercase_fields_and_the_plain_form_are_accepted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    send_text(&mut client, r#"{"topic":"news","content":"lower","id":1}"#).await?;
    send_text(&mut client, "news plain text with spaces").await?;
    send_text(
        &mut client,
        r#"{"TOPIC":"news","CONTENT":"upper \"quoted\"","ID":"x"}"#,
    )
    .await?;
    assert_eq!(parse(&next_text(&mut client).await?)?, ack("1"));
    assert_eq!(parse(&next_text(&mut client).await?)?, ack(r#""x""#));

    assert_eq!(
        queue.state().seen().stored_texts(),
        [
            r#"{"Topic":"news","Content":"lower"}"#,
            r#"{"Topic":"news","Content":"plain text with spaces"}"#,
            r#"{"Topic":"news","Content":"upper \"quoted\""}"#,
        ]
    );
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn invalid_input_gets_error_frames_and_never_reaches_the_queue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    let cases: [(&str, Option<&str>); 6] = [
        ("{not json", None),
        (r#"{"Content":"no topic","Id":5}"#, Some("5")),
        (
            r#"{"Topic":"bad topic","Content":"x","Id":"t"}"#,
            Some(r#""t""#),
        ),
        (r#"{"Topic":"","Content":"x"}"#, None),
        (r#"{"Topic":"news","Content":42}"#, None),
        ("no-separator", None),
    ];
    for (frame, want_id) in cases {
        send_text(&mut client, frame).await?;
        match parse(&next_text(&mut client).await?)? {
            ServerFrame::Error { message, id } => {
                assert_eq!(id.as_deref(), want_id, "{frame}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{frame}: expected an error, got {other:?}"),
        }
    }
    let long_topic = format!(r#"{{"Topic":"{}","Content":"x","Id":9}}"#, "t".repeat(257));
    send_text(&mut client, &long_topic).await?;
    assert!(
        matches!(parse(&next_text(&mut client).await?)?, ServerFrame::Error { id: Some(id), .. } if id == "9")
    );
    client
        .send(Message::binary(
            b"{\"Topic\":\"news\",\"Content\":\"bin\"}".to_vec(),
        ))
        .await?;
    assert!(matches!(
        parse(&next_text(&mut client).await?)?,
        ServerFrame::Error { id: None, .. }
    ));

    // The connection is still usable, and only the valid message ever reached the queue.
    send_text(
        &mut client,
        r#"{"Topic":"news","Content":"valid","Id":"ok"}"#,
    )
    .await?;
    assert_eq!(parse(&next_text(&mut client).await?)?, ack(r#""ok""#));
    assert_eq!(queue.state().seen().received.len(), 1);
    assert_eq!(publisher.metrics.invalid_count(InvalidReason::Topic), 3);
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn oversize_message_closes_the_connection_with_1009() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let mut config = config(dir.path(), queue.addr());
    config.service.limits.max_message_size = 1024;
    config.service.limits.max_frame_size = 1024;
    let publisher = Publisher::start(config).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    let big = format!(
        r#"{{"Topic":"news","Content":"{}","Id":1}}"#,
        "x".repeat(2000)
    );
    send_text(&mut client, &big).await?;
    let close = within("the close frame", async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await?;
    assert_eq!(close.map(|frame| frame.code), Some(CloseCode::Size));
    assert!(queue.state().seen().received.is_empty());
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn no_ack_arrives_before_the_queue_acked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let state = queue.state();
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    state.hold_acks(true);
    send_text(&mut client, r#"{"Topic":"news","Content":"held","Id":"h"}"#).await?;
    state
        .wait_for("the message to reach the queue", |seen| {
            seen.received.len() == 1
        })
        .await?;
    assert_nothing_pending(&mut client).await?;

    state.hold_acks(false);
    assert_eq!(parse(&next_text(&mut client).await?)?, ack(r#""h""#));
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn rejected_message_gets_an_error_naming_its_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    send_text(&mut client, r#"{"Topic":"news","Content":"before","Id":1}"#).await?;
    send_text(
        &mut client,
        &format!(r#"{{"Topic":"news","Content":"{REJECT_MARKER}","Id":2}}"#),
    )
    .await?;
    send_text(&mut client, r#"{"Topic":"news","Content":"after","Id":3}"#).await?;
    assert_eq!(parse(&next_text(&mut client).await?)?, ack("1"));
    match parse(&next_text(&mut client).await?)? {
        ServerFrame::Error { message, id } => {
            assert_eq!(id.as_deref(), Some("2"));
            assert!(message.contains("queue full"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(parse(&next_text(&mut client).await?)?, ack("3"));
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn queue_restart_mid_stream_loses_nothing_and_keeps_order() -> anyhow::Result<()> {
    const COUNT: usize = 300;
    const BATCH_BYTES: usize = 512;
    let dir = tempfile::tempdir()?;
    let mut queue = FakeQueue::start(dir.path()).await?;
    let state = queue.state();
    let mut config = config(dir.path(), queue.addr());
    config.link_batch_bytes = BATCH_BYTES;
    let publisher = Publisher::start(config).await?;
    let client = publisher.client(dir.path(), true).await?;
    let (mut sink, mut stream) = client.split();

    state.hold_acks(true);
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            let frame = format!(r#"{{"Topic":"seq","Content":"{i}","Id":{i}}}"#);
            sink.send(Message::text(frame)).await?;
        }
        anyhow::Ok(sink)
    });

    // Acks are held, so everything stored so far must be resent after each restart. The queue goes away twice
    // while messages are flowing and each time comes back on the same port with its storage.
    for (round, cut) in [COUNT / 4, COUNT / 2].into_iter().enumerate() {
        state
            .wait_for("the link and some messages", |seen| {
                seen.connections > round && seen.stored.len() >= cut
            })
            .await?;
        queue = queue.restart(dir.path()).await?;
    }
    state.hold_acks(false);

    for i in 0..COUNT {
        let frame = within("an ack", stream.next()).await?;
        let Some(Ok(Message::Text(text))) = frame else {
            anyhow::bail!("expected ack {i}, got {frame:?}")
        };
        assert_eq!(parse(&text)?, ack(&i.to_string()));
    }
    let _sink = within("the sender", sender).await???;

    {
        let seen = state.seen();
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert!(
            seen.connections >= 3,
            "the link reconnected after each restart"
        );
        assert!(seen.received.len() > COUNT, "unacked messages were resent");
        assert!(
            seen.largest_frame <= BATCH_BYTES,
            "frames stay within the batch budget"
        );
        let want: Vec<String> = (0..COUNT)
            .map(|i| format!(r#"{{"Topic":"seq","Content":"{i}"}}"#))
            .collect();
        assert_eq!(
            seen.stored_texts(),
            want,
            "every message stored once, in order"
        );
        let producers: std::collections::BTreeSet<u64> =
            seen.received.iter().map(|p| p.producer).collect();
        assert_eq!(producers.len(), 1, "the producer id survives reconnects");
        for pushed in &seen.received {
            let stored = seen.stored.get(&(pushed.producer, pushed.seq));
            assert_eq!(
                stored,
                Some(&pushed.payload),
                "a duplicate push reuses the seq of the original"
            );
        }
    }
    drop((_sink, stream));
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn unacked_messages_move_to_the_next_queue_when_the_connected_one_goes_away()
-> anyhow::Result<()> {
    const COUNT: usize = 50;
    let dir = tempfile::tempdir()?;
    let first = FakeQueue::start(dir.path()).await?;
    let second = FakeQueue::start(dir.path()).await?;
    let (first_state, second_state) = (first.state(), second.state());
    let mut config = config(dir.path(), first.addr());
    config.link.queue_url = [first.addr(), second.addr()]
        .map(|addr| format!("wss://127.0.0.1:{}", addr.port()))
        .to_vec();
    // Only an immediate failover reaches the second queue within the test's bounds.
    config.link.backoff = BackoffArgs {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    };
    first_state.hold_acks(true);
    let publisher = Publisher::start(config).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    for i in 0..COUNT {
        send_text(
            &mut client,
            &format!(r#"{{"Topic":"fo","Content":"{i}","Id":{i}}}"#),
        )
        .await?;
    }
    first_state
        .wait_for("every message on the first queue", |seen| {
            seen.stored.len() == COUNT
        })
        .await?;
    // The instance the link uses goes away with every message stored there but none acked.
    first.stop().await?;

    for i in 0..COUNT {
        assert_eq!(parse(&next_text(&mut client).await?)?, ack(&i.to_string()));
    }
    {
        let seen = second_state.seen();
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        let want: Vec<String> = (0..COUNT)
            .map(|i| format!(r#"{{"Topic":"fo","Content":"{i}"}}"#))
            .collect();
        assert_eq!(
            seen.stored_texts(),
            want,
            "the next queue got every unacked message, in order"
        );
    }
    drop(client);
    publisher.stop().await?;
    second.stop().await?;
    Ok(())
}

#[tokio::test]
async fn full_buffer_while_queue_is_down_stops_reading_clients() -> anyhow::Result<()> {
    const BUFFER: usize = 5;
    const COUNT: usize = 40;
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let addr = queue.addr();
    let state = queue.stop().await?;
    let mut config = config(dir.path(), addr);
    config.link_buffer = BUFFER;
    let publisher = Publisher::start(config).await?;
    let client = publisher.client(dir.path(), false).await?;
    let (mut sink, stream) = client.split();

    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            sink.send(Message::text(format!(
                r#"{{"Topic":"bp","Content":"{i}"}}"#
            )))
            .await?;
        }
        anyhow::Ok(sink)
    });

    // The buffer fills up, then exactly one more message is read and waits for space; nothing else is read.
    within("the buffer to fill", async {
        while publisher.metrics.buffered() < BUFFER as i64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publisher.metrics.buffered(), BUFFER as i64);
    assert_eq!(publisher.metrics.accepted_count(), BUFFER as u64 + 1);

    // The queue comes back: every message is delivered, in order, and the buffer drains.
    let queue = FakeQueue::start_on(addr, dir.path(), state.clone()).await?;
    state
        .wait_for("all messages", |seen| seen.stored.len() == COUNT)
        .await?;
    let want: Vec<String> = (0..COUNT)
        .map(|i| format!(r#"{{"Topic":"bp","Content":"{i}"}}"#))
        .collect();
    assert_eq!(state.seen().stored_texts(), want);
    assert!(
        state.seen().largest_batch >= BUFFER,
        "what queued up left in one frame"
    );
    let _sink = within("the sender", sender).await???;
    within("the buffer to drain", async {
        while publisher.metrics.buffered() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    drop((_sink, stream));
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn readyz_follows_the_queue_link() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let addr = queue.addr();
    let state = queue.stop().await?;
    let publisher = Publisher::start(config(dir.path(), addr)).await?;

    assert_eq!(publisher.admin_status("/healthz").await?, 200);
    assert_eq!(publisher.admin_status("/readyz").await?, 503);
    let queue = FakeQueue::start_on(addr, dir.path(), state).await?;
    publisher.wait_readyz(200).await?;
    let state = queue.stop().await?;
    publisher.wait_readyz(503).await?;
    let queue = FakeQueue::start_on(addr, dir.path(), state).await?;
    publisher.wait_readyz(200).await?;
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

#[tokio::test]
async fn a_v1_message_with_delay_or_deliver_at_goes_to_the_queue_with_its_due_time()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    let before = now_ms();
    send_text(
        &mut client,
        r#"{"Topic":"news","Content":"later","Delay":"1h30m","Id":1}"#,
    )
    .await?;
    assert_eq!(parse(&next_text(&mut client).await?)?, ack("1"));
    send_text(
        &mut client,
        r#"{"Topic":"news","Content":"at","DeliverAt":"2099-01-01T00:00:00+01:00","Id":2}"#,
    )
    .await?;
    assert!(
        matches!(
            parse(&next_text(&mut client).await?)?,
            ServerFrame::Error { .. }
        ),
        "beyond 30 days"
    );
    send_text(
        &mut client,
        r#"{"Topic":"news","Content":"now","Delay":0,"Id":3}"#,
    )
    .await?;
    assert_eq!(parse(&next_text(&mut client).await?)?, ack("3"));
    let after = now_ms();

    let received = queue.state().seen().received.clone();
    assert_eq!(received.len(), 2, "{received:?}");
    let due = received[0].due_ms.expect("the delayed one is a PUSH_AT");
    let delay = 90 * 60 * 1000;
    assert!((before + delay..=after + delay).contains(&due), "{due}");
    // The stored bytes are the plain envelope, without the scheduling fields.
    assert_eq!(
        &received[0].payload[..],
        br#"{"Topic":"news","Content":"later"}"#
    );
    assert_eq!(received[1].due_ms, None, "a zero delay is delivered now");
    assert!(
        !received[1].placed,
        "a session's push asks for no placement (a PUSH, not a PUSH_PLACED)"
    );
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_scheduling_fields_get_an_error_naming_the_problem_and_never_reach_the_queue()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let mut config = config(dir.path(), queue.addr());
    config.max_delay = Duration::from_secs(3600);
    let publisher = Publisher::start(config).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    let cases = [
        (
            r#"{"Topic":"t","Content":"c","Delay":"10s","DeliverAt":"2030-01-01T00:00:00Z","Id":1}"#,
            "not both",
        ),
        (
            r#"{"Topic":"t","Content":"c","Delay":"soon","Id":2}"#,
            "delay must be a duration",
        ),
        (
            r#"{"Topic":"t","Content":"c","Delay":-5,"Id":3}"#,
            "delay must be a duration",
        ),
        (
            r#"{"Topic":"t","Content":"c","DeliverAt":"tomorrow","Id":4}"#,
            "RFC 3339",
        ),
        (
            r#"{"Topic":"t","Content":"c","DeliverAt":"2001-01-01T00:00:00Z","Id":5}"#,
            "in the past",
        ),
        (
            r#"{"Topic":"t","Content":"c","Delay":"61m","Id":6}"#,
            "--max-delay",
        ),
    ];
    for (i, (frame, problem)) in cases.into_iter().enumerate() {
        send_text(&mut client, frame).await?;
        match parse(&next_text(&mut client).await?)? {
            ServerFrame::Error { message, id } => {
                assert_eq!(id, Some((i + 1).to_string()), "{frame}");
                assert!(message.contains(problem), "{frame}: {message}");
            }
            other => panic!("{frame}: expected an error, got {other:?}"),
        }
    }
    send_text(
        &mut client,
        r#"{"Topic":"t","Content":"c","Delay":"59m","Id":7}"#,
    )
    .await?;
    assert_eq!(parse(&next_text(&mut client).await?)?, ack("7"));
    assert_eq!(queue.state().seen().received.len(), 1);
    assert_eq!(publisher.metrics.invalid_count(InvalidReason::Schedule), 6);
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_compat_clients_scheduling_fields_are_ignored_as_before() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut client = publisher.client(dir.path(), false).await?;

    send_text(
        &mut client,
        r#"{"Topic":"news","Content":"one","Delay":"1h"}"#,
    )
    .await?;
    send_text(
        &mut client,
        r#"{"Topic":"news","Content":"two","Delay":"nonsense","DeliverAt":"x"}"#,
    )
    .await?;
    let state = queue.state();
    state
        .wait_for("both messages", |seen| seen.received.len() == 2)
        .await?;
    let received = state.seen().received.clone();
    assert!(received.iter().all(|p| p.due_ms.is_none()), "{received:?}");
    assert_eq!(
        state.seen().stored_texts(),
        [
            r#"{"Topic":"news","Content":"one"}"#,
            r#"{"Topic":"news","Content":"two"}"#
        ]
    );
    assert_nothing_pending(&mut client).await?;
    assert_eq!(publisher.metrics.invalid_count(InvalidReason::Schedule), 0);
    drop(client);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}
