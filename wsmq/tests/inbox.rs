//! Inboxes end to end (store and forward): every user has an inbox `@<user>`; any authenticated client may
//! publish to it, only its user may subscribe to it. Messages wait while the user is offline, are delivered in order
//! when the user subscribes, and are removed only when the user's client acks them: unacked ones come back after a
//! reconnect, acked ones never do, and what waits longer than `--inbox-ttl` is dropped.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Running, config, next_frame, publish};
use futures_util::SinkExt;
use tungstenite::Message;
use wsmq::Service;
use wsmq_core::Secret;
use wsmq_core::dial::ClientWs;
use wsmq_core::limits::Limits;
use wsmq_core::protocol::SUBPROTOCOL_V1;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_msgqueue::config::QueueArgs;
use wsmq_testkit::client::{connect, dialer};
use wsmq_testkit::config::{credentials, loopback, service_args, users};
use wsmq_testkit::service::ServiceTask;

/// msgqueue (disk) with inboxes kept for `inbox_ttl`, and publisher and subscriber whose users are alice and bob.
struct Stack {
    queue: ServiceTask<wsmq_msgqueue::Error>,
    edges: Running,
    publisher: u16,
    subscriber: u16,
}

impl Stack {
    async fn start(dir: &Path, inbox_ttl: Duration) -> Self {
        let mut service = service_args(dir, Some(users("hello", "test")), Limits::default());
        service.listen = loopback();
        let bound = wsmq_msgqueue::bind(wsmq_msgqueue::Config {
            service,
            queue: QueueArgs {
                inbox_ttl,
                ..QueueArgs::default()
            },
        })
        .await
        .unwrap();
        let queue_port = bound.local_addr().port();
        let queue = ServiceTask::spawn(|shutdown| bound.run(shutdown));
        let mut edges = config(dir, &[Service::Publisher, Service::Subscriber]);
        edges.link.queue_url = vec![format!("wss://localhost:{queue_port}")];
        edges.server.users = Some(Secret::new("alice:alice-pw,bob:bob-pw"));
        let edges = wsmq::bind(edges).await.unwrap();
        let (publisher, subscriber) = (
            edges.publisher_addr().unwrap().port(),
            edges.subscriber_addr().unwrap().port(),
        );
        Self {
            queue,
            edges: Running::start(edges),
            publisher,
            subscriber,
        }
    }

    async fn stop(self) {
        self.edges.stop().await;
        self.queue.stop().await.unwrap();
    }
}

/// A wsmq.v1 client of `port` as `user` (whose password is `<user>-pw`).
async fn client_as(dir: &Path, port: u16, path: &str, user: &str) -> ClientWs {
    let url = format!("wss://localhost:{port}");
    let credentials = credentials(user, &format!("{user}-pw"));
    let dialer = dialer(&url, dir, credentials, Some(SUBPROTOCOL_V1)).unwrap();
    connect(&dialer, path, Some(SUBPROTOCOL_V1)).await.unwrap()
}

/// bob publishes `contents` to alice's inbox and waits until each is stored.
async fn send_to_alice(bob: &mut ClientWs, contents: &[&str]) {
    for (id, content) in (0u64..).zip(contents) {
        publish(bob, "@alice", content, id).await;
    }
    for _ in contents {
        assert!(matches!(next_frame(bob).await, ServerFrame::Ack { .. }));
    }
}

/// `sub @alice` as alice: the confirmation, then the contents and offsets of the `n` waiting messages.
async fn open_inbox(alice: &mut ClientWs, n: usize) -> Vec<(String, u64)> {
    alice.send(Message::text("sub @alice")).await.unwrap();
    match next_frame(alice).await {
        ServerFrame::Resumed {
            topic, recovered, ..
        } => assert_eq!((topic.as_str(), recovered), ("@alice", true)),
        other => panic!("expected the inbox confirmation, got {other:?}"),
    }
    next_messages(alice, n).await
}

async fn next_messages(ws: &mut ClientWs, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_frame(ws).await {
            ServerFrame::Message {
                content,
                position: Some(position),
                ..
            } => out.push((content, position.offset)),
            other => panic!("expected an inbox message, got {other:?}"),
        }
    }
    out
}

async fn ack(alice: &mut ClientWs, offset: u64) {
    alice
        .send(Message::text(format!("ack @alice {offset}")))
        .await
        .unwrap();
    assert_eq!(
        next_frame(alice).await,
        ServerFrame::Acked {
            topic: "@alice".into(),
            offset
        }
    );
}

fn contents(got: &[(String, u64)]) -> Vec<&str> {
    got.iter().map(|(c, _)| c.as_str()).collect()
}

#[tokio::test]
async fn messages_wait_for_an_offline_user_and_only_acked_ones_are_gone_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), Duration::from_secs(3600)).await;
    let mut bob = client_as(dir.path(), stack.publisher, PUBLISH_PATH, "bob").await;
    send_to_alice(&mut bob, &["one", "two", "three"]).await;

    let mut alice = client_as(dir.path(), stack.subscriber, SUBSCRIBE_PATH, "alice").await;
    let waiting = open_inbox(&mut alice, 3).await;
    assert_eq!(contents(&waiting), ["one", "two", "three"], "in order");
    ack(&mut alice, waiting[1].1).await;
    drop(alice);

    // "three" was not acked: it comes back after a reconnect; "one" and "two" never do.
    let mut alice = client_as(dir.path(), stack.subscriber, SUBSCRIBE_PATH, "alice").await;
    let again = open_inbox(&mut alice, 1).await;
    assert_eq!(contents(&again), ["three"]);
    send_to_alice(&mut bob, &["four"]).await;
    let live = next_messages(&mut alice, 1).await;
    assert_eq!(
        contents(&live),
        ["four"],
        "live once the waiting ones are out"
    );
    ack(&mut alice, live[0].1).await;
    drop(alice);

    let mut alice = client_as(dir.path(), stack.subscriber, SUBSCRIBE_PATH, "alice").await;
    open_inbox(&mut alice, 0).await;
    send_to_alice(&mut bob, &["five"]).await;
    assert_eq!(contents(&next_messages(&mut alice, 1).await), ["five"]);
    stack.stop().await;
}

#[tokio::test]
async fn another_user_can_neither_read_nor_ack_an_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), Duration::from_secs(3600)).await;
    let mut bob = client_as(dir.path(), stack.subscriber, SUBSCRIBE_PATH, "bob").await;
    for command in [
        "sub @alice",
        "sub @alice since=0",
        "history @alice",
        "ack @alice 1",
        "sub @*",
        "sub >",
        "sub *",
    ] {
        bob.send(Message::text(command)).await.unwrap();
        match next_frame(&mut bob).await {
            ServerFrame::SubscriptionRefused { reason, .. } => {
                assert_eq!(reason, "forbidden", "{command}");
            }
            other => panic!("{command}: expected a refusal, got {other:?}"),
        }
    }
    bob.send(Message::text("sub @bob")).await.unwrap();
    assert!(matches!(
        next_frame(&mut bob).await,
        ServerFrame::Resumed { .. }
    ));
    stack.stop().await;
}

#[tokio::test]
async fn inbox_messages_older_than_the_inbox_ttl_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), Duration::from_secs(1)).await;
    let mut bob = client_as(dir.path(), stack.publisher, PUBLISH_PATH, "bob").await;
    send_to_alice(&mut bob, &["stale"]).await;
    // The retention is a matter of time: wait it out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut alice = client_as(dir.path(), stack.subscriber, SUBSCRIBE_PATH, "alice").await;
    alice.send(Message::text("sub @alice")).await.unwrap();
    assert!(matches!(
        next_frame(&mut alice).await,
        ServerFrame::Resumed { .. }
    ));
    send_to_alice(&mut bob, &["fresh"]).await;
    assert_eq!(
        contents(&next_messages(&mut alice, 1).await),
        ["fresh"],
        "the stale message is gone"
    );
    stack.stop().await;
}
