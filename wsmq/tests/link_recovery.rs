//! Link recovery with the default settings: after msgqueue was down long enough for the reconnect backoff to reach
//! its cap, the publisher's and the subscriber's links are back (a message waiting in the publisher is acked and
//! delivered) well within a second of msgqueue listening again.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::time::Instant;
use tungstenite::Message;
mod common;

use common::{Running, client, config, next_frame, publish, start_edges};
use wsmq::Service;
use wsmq_core::dial::ClientWs;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};

/// How long msgqueue stays down: several times what the default backoff needs to reach its cap.
const OUTAGE: Duration = Duration::from_secs(3);
/// Outages in a row; the links never stay up long enough in between to count as healthy.
const OUTAGES: u64 = 3;
/// The issue asks for 0.5 s; this leaves room for a loaded 2-core machine (the old 5 s and 10 s caps miss it).
const RECOVERY_BOUND: Duration = Duration::from_secs(1);

/// Waits until message `id` is acked to the publishing client and delivered to the subscribing one.
async fn acked_and_delivered(publisher: &mut ClientWs, subscriber: &mut ClientWs, id: u64) {
    assert_eq!(
        next_frame(publisher).await,
        ServerFrame::Ack { id: id.to_string() }
    );
    // A delivery msgqueue did not see acked before it stopped comes again first (at-least-once): skip those.
    loop {
        match next_frame(subscriber).await {
            ServerFrame::Message { content, .. } if content == format!("m{id}") => return,
            ServerFrame::Message { content, .. } => {
                let earlier: u64 = content.trim_start_matches('m').parse().unwrap();
                assert!(earlier < id, "m{earlier} delivered before m{id}");
            }
            other => panic!("subscriber sent {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_back_within_a_second_of_msgqueue_after_a_long_outage() {
    let dir = tempfile::tempdir().unwrap();
    let queue = wsmq::bind(config(dir.path(), &[Service::Msgqueue]))
        .await
        .unwrap();
    let queue_port = queue.msgqueue_addr().unwrap().port();
    let mut queue_running = Some(Running::start(queue));

    // The edges with every link setting at its default, as an operator runs them.
    let (edges_running, pub_port, sub_port) = start_edges(dir.path(), queue_port).await;

    let mut subscriber = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscriber.send(Message::text("sub t")).await.unwrap();
    assert_eq!(
        next_frame(&mut subscriber).await,
        ServerFrame::Subscribed("t".into())
    );
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    publish(&mut publisher, "t", "m0", 0).await;
    acked_and_delivered(&mut publisher, &mut subscriber, 0).await;

    for id in 1..=OUTAGES {
        if let Some(running) = queue_running.take() {
            running.stop().await;
        }
        // Sent while msgqueue is down: the publisher holds it until its link is back.
        publish(&mut publisher, "t", &format!("m{id}"), id).await;
        tokio::time::sleep(OUTAGE).await;
        let mut again = config(dir.path(), &[Service::Msgqueue]);
        again.msgqueue_listen = format!("127.0.0.1:{queue_port}").parse().unwrap();
        let queue = wsmq::bind(again).await.unwrap();
        let back = Instant::now();
        queue_running = Some(Running::start(queue));
        acked_and_delivered(&mut publisher, &mut subscriber, id).await;
        let recovery = back.elapsed();
        assert!(
            recovery <= RECOVERY_BOUND,
            "outage {id}: links took {recovery:?} to recover after msgqueue was back"
        );
    }

    edges_running.stop().await;
    if let Some(running) = queue_running {
        running.stop().await;
    }
}
