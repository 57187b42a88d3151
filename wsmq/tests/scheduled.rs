//! Scheduled delivery end to end: a wsmq.v1 client publishes with `Delay`, a subscriber gets the message once it
//! is due (not before), and a message scheduled when msgqueue is killed with SIGKILL is still delivered after a
//! restart.
//!
//! The process test uses the service binaries: `cargo test --workspace` builds them; after changing a service,
//! run `cargo build --bins` before `cargo test -p wsmq`.

mod common;

use std::time::{Duration, Instant};

use common::process::{Process, free_ports};
use common::{client, next_frame, start_all, subscribe, without_position};
use futures_util::SinkExt;
use tungstenite::Message;
use wsmq_core::dial::ClientWs;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};

/// Publishes `content` to `news` with `Delay: delay` and waits for the ack (stored durably, scheduled).
async fn publish_later(publisher: &mut ClientWs, content: &str, delay: &str, id: u64) {
    let frame =
        serde_json::json!({ "Topic": "news", "Content": content, "Delay": delay, "Id": id });
    publisher
        .send(Message::text(frame.to_string()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(publisher).await,
        ServerFrame::Ack { id: id.to_string() }
    );
}

fn news(content: &str) -> ServerFrame {
    ServerFrame::Message {
        topic: "news".into(),
        content: content.into(),
        position: None,
    }
}

#[tokio::test]
async fn a_delayed_message_reaches_subscribers_once_it_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let (running, pub_port, sub_port) = start_all(dir.path()).await;
    let mut subscriber = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut subscriber, "news").await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;

    let published = Instant::now();
    publish_later(&mut publisher, "later", "1s", 1).await;
    common::publish(&mut publisher, "news", "now", 2).await;
    assert_eq!(
        next_frame(&mut publisher).await,
        ServerFrame::Ack { id: "2".into() }
    );
    assert_eq!(
        without_position(next_frame(&mut subscriber).await),
        news("now")
    );
    assert_eq!(
        without_position(next_frame(&mut subscriber).await),
        news("later")
    );
    let took = published.elapsed();
    assert!(took >= Duration::from_secs(1), "delivered after {took:?}");
    // Loose: a loaded two-core machine; on an idle one it is within 100 ms of the due time.
    assert!(took < Duration::from_secs(5), "delivered after {took:?}");
    drop((subscriber, publisher));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_scheduled_when_msgqueue_is_killed_is_delivered_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    wsmq_core::tls::ensure_dev_pki(dir.path()).unwrap();
    let [
        queue,
        publisher_port,
        subscriber_port,
        queue_admin,
        publisher_admin,
        subscriber_admin,
    ] = free_ports::<6>();
    let link = |listen: u16| {
        vec![
            format!("--queue-url=wss://localhost:{queue}"),
            "--queue-user=hello".into(),
            "--queue-password=test".into(),
            format!("--listen=127.0.0.1:{listen}"),
        ]
    };
    let queue_args = [format!("--listen=127.0.0.1:{queue}")];
    let msgqueue = Process::start("msgqueue", dir.path(), queue_admin, &queue_args).await;
    let _publisher = Process::start(
        "publisher",
        dir.path(),
        publisher_admin,
        &link(publisher_port),
    )
    .await;
    let _subscriber = Process::start(
        "subscriber",
        dir.path(),
        subscriber_admin,
        &link(subscriber_port),
    )
    .await;
    let mut subscriber = client(dir.path(), subscriber_port, SUBSCRIBE_PATH).await;
    subscribe(&mut subscriber, "news").await;
    let mut publisher = client(dir.path(), publisher_port, PUBLISH_PATH).await;

    publish_later(&mut publisher, "survives", "2s", 1).await;
    msgqueue.kill().await;
    // Down past the due time: it is delivered right after the restart.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _msgqueue = Process::start("msgqueue", dir.path(), queue_admin, &queue_args).await;
    assert_eq!(
        without_position(next_frame(&mut subscriber).await),
        news("survives")
    );
}
