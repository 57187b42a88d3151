//! Scale-out with separate processes, as an operator runs it: one msgqueue, one publisher and three subscriber
//! instances started from the service binaries. Each instance consumes in a consumer group of its own (the
//! default name differs per listen address), so every client of every instance gets every message, in publish
//! order. An instance killed with SIGKILL and started again resumes its group.
//!
//! The binaries come from the directory the `wsmq` binary was built into: `cargo test --workspace` builds them;
//! after changing a service, run `cargo build --bins` before `cargo test -p wsmq`.

mod common;

use std::path::Path;

use common::process::{Process, free_ports};
use common::{client, next_frame, publish, subscribe};
use wsmq_core::dial::ClientWs;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_testkit::expect_within;

const INSTANCES: usize = 3;

/// The fleet's ports: msgqueue, publisher and the subscriber instances, each with its admin port.
struct Ports {
    queue: u16,
    publisher: u16,
    subscribers: [u16; INSTANCES],
    admins: [u16; INSTANCES + 2],
}

impl Ports {
    fn new() -> Self {
        let p = free_ports::<{ 2 * INSTANCES + 4 }>();
        Self {
            queue: p[0],
            publisher: p[1],
            subscribers: std::array::from_fn(|i| p[2 + i]),
            admins: std::array::from_fn(|i| p[2 + INSTANCES + i]),
        }
    }

    fn link(&self) -> Vec<String> {
        vec![
            format!("--queue-url=wss://localhost:{}", self.queue),
            "--queue-user=hello".into(),
            "--queue-password=test".into(),
        ]
    }

    async fn subscriber(&self, i: usize, data_dir: &Path) -> Process {
        let mut args = self.link();
        args.push(format!("--listen=127.0.0.1:{}", self.subscribers[i]));
        Process::start("subscriber", data_dir, self.admins[2 + i], &args).await
    }
}

/// Publishes `contents` to `news` and waits for every ack (acked = stored in msgqueue).
async fn publish_all(publisher: &mut ClientWs, contents: impl IntoIterator<Item = String>) {
    let mut ids = Vec::new();
    for (id, content) in (0u64..).zip(contents) {
        publish(publisher, "news", &content, id).await;
        ids.push(id);
    }
    for id in ids {
        assert_eq!(
            next_frame(publisher).await,
            ServerFrame::Ack { id: id.to_string() }
        );
    }
}

async fn expect_news(ws: &mut ClientWs, contents: impl IntoIterator<Item = String>) {
    for content in contents {
        match next_frame(ws).await {
            ServerFrame::Message {
                topic,
                content: got,
                ..
            } => assert_eq!((topic.as_str(), got), ("news", content)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

fn batch(prefix: &str, n: usize) -> impl Iterator<Item = String> + Clone {
    let prefix = prefix.to_owned();
    (0..n).map(move |i| format!("{prefix}{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_of_every_subscriber_instance_gets_every_message_and_a_killed_instance_resumes()
 {
    let dir = tempfile::tempdir().unwrap();
    wsmq_core::tls::ensure_dev_pki(dir.path()).unwrap();
    let ports = Ports::new();
    let _queue = Process::start(
        "msgqueue",
        dir.path(),
        ports.admins[0],
        &[format!("--listen=127.0.0.1:{}", ports.queue)],
    )
    .await;
    let mut publisher_args = ports.link();
    publisher_args.push(format!("--listen=127.0.0.1:{}", ports.publisher));
    let _publisher =
        Process::start("publisher", dir.path(), ports.admins[1], &publisher_args).await;
    let mut instances = Vec::new();
    for i in 0..INSTANCES {
        instances.push(Some(ports.subscriber(i, dir.path()).await));
    }
    let mut clients = Vec::new();
    for &port in &ports.subscribers {
        let mut ws = client(dir.path(), port, SUBSCRIBE_PATH).await;
        subscribe(&mut ws, "news").await;
        clients.push(ws);
    }
    let mut publisher = client(dir.path(), ports.publisher, PUBLISH_PATH).await;

    publish_all(&mut publisher, batch("a", 30)).await;
    for ws in &mut clients {
        expect_news(ws, batch("a", 30)).await;
    }

    // Instance 1 dies; the others go on receiving everything.
    instances[1].take().unwrap().kill().await;
    publish_all(&mut publisher, batch("b", 10)).await;
    for i in [0, 2] {
        expect_news(&mut clients[i], batch("b", 10)).await;
    }

    // Started again on the same address, it has the same group name and resumes after its last ack: the
    // messages published while it was down are consumed by it (its client reconnects after the instance is
    // ready, so it may see some of them, in order), and everything published after the client is back arrives.
    instances[1] = Some(ports.subscriber(1, dir.path()).await);
    let mut back = client(dir.path(), ports.subscribers[1], SUBSCRIBE_PATH).await;
    subscribe(&mut back, "news").await;
    publish_all(&mut publisher, batch("c", 10)).await;
    let mut seen = Vec::new();
    expect_within("instance 1's client gets the c batch", async {
        while seen.last().map(String::as_str) != Some("c9") {
            match next_frame(&mut back).await {
                ServerFrame::Message { content, .. } => seen.push(content),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    })
    .await;
    // Deliveries it had not acked when it was killed come again (at least once): only before the b batch.
    let c_batch: Vec<String> = batch("c", 10).collect();
    assert!(
        seen.ends_with(&c_batch),
        "c batch last and in order: {seen:?}"
    );
    let before = &seen[..seen.len() - c_batch.len()];
    let first_b = before
        .iter()
        .position(|c| c.starts_with('b'))
        .unwrap_or(before.len());
    assert!(
        before[..first_b].iter().all(|c| c.starts_with('a')),
        "{seen:?}"
    );
    let b_batch: Vec<String> = batch("b", 10).collect();
    assert!(
        b_batch.ends_with(&before[first_b..]),
        "what it got of the b batch is its tail, in order: {seen:?}"
    );
    for i in [0, 2] {
        expect_news(&mut clients[i], batch("c", 10)).await;
    }
    clients[1] = back;
}
