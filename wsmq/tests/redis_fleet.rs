//! msgqueue on Redis as operators run it: one `redis-server` (appendonly, appendfsync always), two msgqueue
//! processes on it, and a publisher and a subscriber process whose `--queue-url` lists both. One msgqueue is killed
//! (SIGKILL) mid-stream, then redis-server is killed and restarted mid-stream: every message the publisher acked
//! reaches the subscribed client.

mod common;

use std::collections::BTreeSet;

use common::process::{Process, free_ports};
use common::{client, next_frame, publish, subscribe};
use wsmq_core::dial::ClientWs;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_testkit::expect_within;
use wsmq_testkit::redis::RedisServer;

/// Publishes `ids` to `news` without waiting, and returns once `kill_after` of them are acked.
async fn publish_and_await_some(
    publisher: &mut ClientWs,
    ids: std::ops::Range<u64>,
    kill_after: usize,
) -> BTreeSet<u64> {
    for id in ids {
        publish(publisher, "news", &format!("m{id}"), id).await;
    }
    await_acks(publisher, BTreeSet::new(), kill_after).await
}

/// Reads acks until `want` ids are acked in all; any error frame fails the test.
async fn await_acks(
    publisher: &mut ClientWs,
    mut acked: BTreeSet<u64>,
    want: usize,
) -> BTreeSet<u64> {
    expect_within("publisher acks", async {
        while acked.len() < want {
            match next_frame(publisher).await {
                ServerFrame::Ack { id } => {
                    acked.insert(id.parse().expect("numeric id"));
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    })
    .await;
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_is_delivered_across_a_killed_msgqueue_and_a_redis_restart() {
    let dir = tempfile::tempdir().unwrap();
    wsmq_core::tls::ensure_dev_pki(dir.path()).unwrap();
    let mut redis = RedisServer::start().await.unwrap();
    let [
        queue_1,
        queue_2,
        publisher_port,
        subscriber_port,
        admin_1,
        admin_2,
        admin_3,
        admin_4,
    ] = free_ports::<8>();
    let queue_args = |port: u16| {
        vec![
            format!("--listen=127.0.0.1:{port}"),
            "--storage=redis".to_owned(),
            format!("--redis-url={}", redis.url()),
            // A killed instance's consumer held deliveries; they are claimed after this lease.
            "--lease-timeout=2s".to_owned(),
        ]
    };
    let first = Process::start("msgqueue", dir.path(), admin_1, &queue_args(queue_1)).await;
    let _second = Process::start("msgqueue", dir.path(), admin_2, &queue_args(queue_2)).await;
    let link = |listen: u16| {
        vec![
            format!("--queue-url=wss://localhost:{queue_1},wss://localhost:{queue_2}"),
            "--queue-user=hello".to_owned(),
            "--queue-password=test".to_owned(),
            format!("--listen=127.0.0.1:{listen}"),
        ]
    };
    let _publisher = Process::start("publisher", dir.path(), admin_3, &link(publisher_port)).await;
    let mut subscriber_args = link(subscriber_port);
    subscriber_args.push("--group=fleet".to_owned());
    let _subscriber = Process::start("subscriber", dir.path(), admin_4, &subscriber_args).await;

    let mut reader = client(dir.path(), subscriber_port, SUBSCRIBE_PATH).await;
    subscribe(&mut reader, "news").await;
    let mut publisher = client(dir.path(), publisher_port, PUBLISH_PATH).await;

    // A msgqueue instance dies mid-stream: the links move to the other one.
    let acked = publish_and_await_some(&mut publisher, 0..200, 20).await;
    first.kill().await;
    let acked = await_acks(&mut publisher, acked, 200).await;

    // Redis itself is killed and restarted mid-stream: pushes wait for it.
    for id in 200..400 {
        publish(&mut publisher, "news", &format!("m{id}"), id).await;
    }
    redis.kill().await.unwrap();
    redis.restart().await.unwrap();
    let acked = await_acks(&mut publisher, acked, 400).await;
    assert_eq!(acked, (0..400).collect::<BTreeSet<_>>());

    let mut delivered = BTreeSet::new();
    expect_within("every acked message delivered", async {
        while delivered.len() < acked.len() {
            match next_frame(&mut reader).await {
                ServerFrame::Message { content, .. } => {
                    let id: u64 = content.trim_start_matches('m').parse().expect("numeric");
                    delivered.insert(id);
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(delivered, acked);
}
