//! End to end: msgqueue, publisher and subscriber in this process on port 0 with development certificates,
//! driven by real TLS WebSocket clients the way applications use them.

use std::collections::HashSet;

use futures_util::SinkExt;
use tungstenite::Message;
mod common;

use common::{
    ALL, Running, api, client, config, next_frame, publish, start_all, start_edges, subscribe,
    without_position,
};
use wsmq::Service;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{
    PUBLISH_API_PATH, PUBLISH_BATCH_API_PATH, PUBLISH_PATH, PUSH_PATH, SUBSCRIBE_PATH,
};
use wsmq_testkit::client::{Handshake, dialer, handshake};
use wsmq_testkit::config::credentials;
use wsmq_testkit::expect_within;

fn message(topic: &str, content: &str) -> ServerFrame {
    ServerFrame::Message {
        topic: topic.into(),
        content: content.into(),
        position: None,
    }
}

#[tokio::test]
async fn published_messages_reach_subscribers_in_order_and_unsub_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let (running, pub_port, sub_port) = start_all(dir.path()).await;

    let mut news = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut news, "news").await;
    let mut sport = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut sport, "sport").await;

    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    for i in 0..100 {
        publish(&mut publisher, "news", &format!("n{i}"), i).await;
    }
    publish(&mut publisher, "sport", "goal", 100).await;
    for i in 0..=100u64 {
        assert_eq!(
            next_frame(&mut publisher).await,
            ServerFrame::Ack { id: i.to_string() }
        );
    }
    for i in 0..100 {
        assert_eq!(
            without_position(next_frame(&mut news).await),
            message("news", &format!("n{i}")),
            "per-publisher order"
        );
    }
    assert_eq!(
        without_position(next_frame(&mut sport).await),
        message("sport", "goal")
    );

    news.send(Message::text("unsub news")).await.unwrap();
    assert_eq!(
        next_frame(&mut news).await,
        ServerFrame::Unsubscribed("news".into())
    );
    news.send(Message::text("sub other")).await.unwrap();
    assert_eq!(
        next_frame(&mut news).await,
        ServerFrame::Subscribed("other".into())
    );
    publish(&mut publisher, "news", "after-unsub", 200).await;
    publish(&mut publisher, "other", "marker", 201).await;
    // Delivery is in order, so the marker arriving first proves the unsubscribed message never came.
    assert_eq!(
        without_position(next_frame(&mut news).await),
        message("other", "marker")
    );

    running.stop().await;
}

#[tokio::test]
async fn messages_published_over_http_reach_subscribers_in_order_at_the_offsets_the_answers_gave() {
    let dir = tempfile::tempdir().unwrap();
    let (running, pub_port, sub_port) = start_all(dir.path()).await;
    let mut news = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut news, "news").await;

    let mut api = api(dir.path(), pub_port).await;
    let reply = api
        .post_json(PUBLISH_API_PATH, &[], r#"{"topic":"news","content":"one"}"#)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.json()["id"].is_string(), "{reply:?}");
    let mut answered = vec![reply.json()];
    let batch =
        r#"{"messages":[{"topic":"news","content":"two"},{"topic":"news","content":"three"}]}"#;
    let reply = api
        .post_json(PUBLISH_BATCH_API_PATH, &[], batch)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["results"].as_array().map(Vec::len), Some(2));
    answered.extend(
        reply.json()["results"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );

    for (content, answer) in ["one", "two", "three"].into_iter().zip(answered) {
        let frame = next_frame(&mut news).await;
        let ServerFrame::Message {
            position: Some(position),
            ..
        } = &frame
        else {
            panic!("a positioned message: {frame:?}");
        };
        assert_eq!(
            (
                answer["offset"].as_u64(),
                answer["epoch"].as_str().map(str::to_owned)
            ),
            (Some(position.offset), Some(position.epoch.to_string())),
            "the API answered with the place the subscriber sees"
        );
        assert_eq!(without_position(frame), message("news", content));
    }
    running.stop().await;
}

#[tokio::test]
async fn restarting_msgqueue_mid_stream_loses_no_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    // msgqueue on its own, so it can be stopped and started again on the same port.
    let queue = wsmq::bind(config(dir.path(), &[Service::Msgqueue]))
        .await
        .unwrap();
    let queue_port = queue.msgqueue_addr().unwrap().port();
    let mut queue_running = Running::start(queue);

    let (edges_running, pub_port, sub_port) = start_edges(dir.path(), queue_port).await;

    let mut subscriber = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut subscriber, "t").await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;

    const TOTAL: u64 = 300;
    let mut acked = HashSet::new();
    for i in 0..TOTAL {
        publish(&mut publisher, "t", &format!("m{i}"), i).await;
        if i == TOTAL / 3 {
            // Restart msgqueue (graceful stop: fsync always, so everything acked is on disk) while messages flow.
            queue_running.stop().await;
            let mut again = config(dir.path(), &[Service::Msgqueue]);
            again.msgqueue_listen = format!("127.0.0.1:{queue_port}").parse().unwrap();
            queue_running = Running::start(wsmq::bind(again).await.unwrap());
        }
    }
    while (acked.len() as u64) < TOTAL {
        match next_frame(&mut publisher).await {
            ServerFrame::Ack { id } => {
                acked.insert(id.parse::<u64>().unwrap());
            }
            other => panic!("publisher sent {other:?}"),
        }
    }
    // Every acked message arrives (at least once: a redelivery after the restart is allowed).
    let mut seen = HashSet::new();
    while (seen.len() as u64) < TOTAL {
        match next_frame(&mut subscriber).await {
            ServerFrame::Message { content, .. } => {
                seen.insert(content.trim_start_matches('m').parse::<u64>().unwrap());
            }
            other => panic!("subscriber sent {other:?}"),
        }
    }
    assert_eq!(seen, acked);

    edges_running.stop().await;
    queue_running.stop().await;
}

/// The issue's reproduction: one 65,537-byte compat frame on msgqueue's /pushmsg with the link credentials used
/// to stop all delivery for good (the subscriber's link refused it, reconnected and got it again, forever).
#[tokio::test]
async fn an_oversize_compat_push_to_msgqueue_does_not_stop_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let stack = wsmq::bind(config(dir.path(), ALL)).await.unwrap();
    let (queue_port, pub_port, sub_port) = (
        stack.msgqueue_addr().unwrap().port(),
        stack.publisher_addr().unwrap().port(),
        stack.subscriber_addr().unwrap().port(),
    );
    let running = Running::start(stack);
    let mut subscriber = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut subscriber, "news").await;

    let compat = dialer(
        &format!("wss://localhost:{queue_port}"),
        dir.path(),
        credentials("hello", "test"),
        None,
    )
    .unwrap();
    let (mut pusher, _) = expect_within("dial /pushmsg", compat.dial(PUSH_PATH))
        .await
        .unwrap();
    let oversize = format!(r#"{{"Topic":"news","Content":"{}"}}"#, "x".repeat(65_508));
    assert_eq!(oversize.len(), 65_537);
    pusher.send(Message::text(oversize)).await.unwrap();

    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    publish(&mut publisher, "news", "after", 1).await;
    assert_eq!(
        next_frame(&mut publisher).await,
        ServerFrame::Ack { id: "1".into() }
    );
    assert_eq!(
        without_position(next_frame(&mut subscriber).await),
        message("news", "after")
    );
    running.stop().await;
}

#[tokio::test]
async fn dev_credentials_are_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), ALL);
    cfg.publisher_listen = "0.0.0.0:0".parse().unwrap();
    let err = wsmq::bind(cfg).await.err().expect("refused");
    assert!(matches!(err, wsmq::Error::DevUsersOffLoopback(_)), "{err}");
}

#[tokio::test]
async fn a_second_stack_on_the_same_data_dir_is_refused_naming_the_directory_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = wsmq::bind(config(dir.path(), &[Service::Msgqueue]))
        .await
        .unwrap();
    let running = Running::start(first);
    let err = wsmq::bind(config(dir.path(), ALL))
        .await
        .err()
        .expect("a second stack on the same data dir is refused");
    let mut chain = vec![err.to_string()];
    let mut cause = std::error::Error::source(&err);
    while let Some(err) = cause {
        chain.push(err.to_string());
        cause = err.source();
    }
    let chain = chain.join("\n");
    let queue_dir = dir.path().join("queue").display().to_string();
    assert_eq!(chain.matches(&queue_dir).count(), 1, "{chain}");
    assert!(chain.starts_with("msgqueue failed"), "{chain}");
    running.stop().await;
}

#[tokio::test]
async fn with_the_auth_callout_the_dev_users_are_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = wsmq_testkit::auth_server::AuthServer::start(dir.path(), |_| {
        (200, r#"{"allow":false,"reason":"not today"}"#.to_owned())
    })
    .await
    .unwrap();
    let mut cfg = config(dir.path(), ALL);
    cfg.access.auth_url = Some(endpoint.url.clone());
    cfg.access.auth_ca = Some(endpoint.ca.clone());
    let stack = wsmq::bind(cfg).await.unwrap();
    assert_eq!(stack.credentials, wsmq::CredentialSource::AuthCallout);
    let ports = [
        stack.msgqueue_addr().unwrap().port(),
        stack.publisher_addr().unwrap().port(),
    ];
    let running = Running::start(stack);
    let dev = [("authorization", "Basic aGVsbG86dGVzdA==")]; // hello:test
    for (port, path) in ports.into_iter().zip([PUSH_PATH, PUBLISH_PATH]) {
        let answer = handshake(port, dir.path(), path, &dev).await.unwrap();
        assert!(
            matches!(answer, Handshake::Refused(401)),
            "hello:test must not open {path}"
        );
    }
    let asked = endpoint.requests.lock().clone();
    assert_eq!(
        asked.len(),
        1,
        "only the publisher asks the callout: {asked:?}"
    );
    assert_eq!(asked[0]["user"], "hello");
    running.stop().await;
}

#[tokio::test]
async fn msgqueue_alone_with_the_auth_callout_neither_creates_nor_announces_the_dev_users() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &[Service::Msgqueue]);
    cfg.access.auth_url = Some("https://127.0.0.1:9/auth".into());
    let stack = wsmq::bind(cfg).await.unwrap();
    assert_ne!(stack.credentials, wsmq::CredentialSource::DevUsers);
    let port = stack.msgqueue_addr().unwrap().port();
    let running = Running::start(stack);
    let dev = [("authorization", "Basic aGVsbG86dGVzdA==")]; // hello:test
    let answer = handshake(port, dir.path(), PUSH_PATH, &dev).await.unwrap();
    assert!(matches!(answer, Handshake::Refused(401)));
    running.stop().await;
}
