//! Topic history end to end: a client that drops and comes back with `sub <topic> since=<offset> epoch=<epoch>`
//! gets exactly what it missed, then live messages, with no gap and no duplicate at the seam; it is told when that
//! is impossible (beyond retention, another epoch); `history` shows a topic's newest messages. In process (msgqueue
//! on its own, so it can be configured and restarted, and the edges linked to it), and with the service binaries
//! for a SIGKILL of msgqueue and a restart of the subscriber (run `cargo build --bins` first, as for every process
//! test).

mod common;

use std::path::Path;

use common::process::{Process, free_ports};
use common::{api, client, next_frame, publish, start_edges};
use futures_util::SinkExt;
use tungstenite::Message;
use wsmq_core::dial::ClientWs;
use wsmq_core::limits::Limits;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::history::{Epoch, Position};
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_msgqueue::config::{QueueArgs, StorageKind};
use wsmq_testkit::config::{loopback, service_args, users};
use wsmq_testkit::expect_within;
use wsmq_testkit::service::ServiceTask;

/// msgqueue alone in this process, on `port` (0: any), with `storage` and `history_size` messages per topic.
async fn start_queue(
    dir: &Path,
    port: u16,
    storage: StorageKind,
    history_size: usize,
) -> (ServiceTask<wsmq_msgqueue::Error>, u16) {
    let mut service = service_args(dir, Some(users("hello", "test")), Limits::default());
    service.listen = if port == 0 {
        loopback()
    } else {
        format!("127.0.0.1:{port}").parse().unwrap()
    };
    service.admin_listen = loopback();
    let config = wsmq_msgqueue::Config {
        service,
        queue: QueueArgs {
            storage,
            history_size,
            ..QueueArgs::default()
        },
    };
    let bound = wsmq_msgqueue::bind(config).await.unwrap();
    let port = bound.local_addr().port();
    (ServiceTask::spawn(|shutdown| bound.run(shutdown)), port)
}

/// Publishes `contents` to `topic` and waits for every ack.
async fn publish_acked(publisher: &mut ClientWs, topic: &str, contents: &[String]) {
    for (id, content) in (0u64..).zip(contents) {
        publish(publisher, topic, content, id).await;
    }
    for _ in contents {
        match next_frame(publisher).await {
            ServerFrame::Ack { .. } => {}
            other => panic!("publisher sent {other:?}"),
        }
    }
}

fn contents(prefix: &str, range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Sends `frame` and returns the resume confirmation: (epoch, offset, recovered, reason).
async fn resume(ws: &mut ClientWs, frame: String) -> (Epoch, u64, bool, Option<String>) {
    ws.send(Message::text(frame)).await.unwrap();
    match next_frame(ws).await {
        ServerFrame::Resumed {
            epoch,
            offset,
            recovered,
            reason,
            ..
        } => (epoch, offset, recovered, reason),
        other => panic!("expected the resume confirmation, got {other:?}"),
    }
}

/// The next `n` messages as (content, position).
async fn messages(ws: &mut ClientWs, n: usize) -> Vec<(String, Position)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_frame(ws).await {
            ServerFrame::Message {
                content,
                position: Some(position),
                ..
            } => out.push((content, position)),
            other => panic!("expected a message with its position, got {other:?}"),
        }
    }
    out
}

fn offsets(got: &[(String, Position)]) -> Vec<u64> {
    got.iter().map(|(_, p)| p.offset).collect()
}

#[tokio::test]
async fn a_client_that_resumes_gets_exactly_what_it_missed_then_live_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, queue_port) = start_queue(dir.path(), 0, StorageKind::Disk, 100).await;
    let (edges, pub_port, sub_port) = start_edges(dir.path(), queue_port).await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;

    let mut first = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    let (_, offset, recovered, _) = resume(&mut first, "sub news since=0".into()).await;
    assert_eq!(
        (offset, recovered),
        (0, true),
        "a new topic has nothing to recover"
    );
    publish_acked(&mut publisher, "news", &contents("m", 1..=3)).await;
    let got = messages(&mut first, 3).await;
    assert_eq!(offsets(&got), [1, 2, 3]);
    let epoch = got[2].1.epoch;
    drop(first);

    publish_acked(&mut publisher, "news", &contents("m", 4..=6)).await;
    let mut back = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    let (same, offset, recovered, reason) =
        resume(&mut back, format!("sub news since=3 epoch={epoch}")).await;
    assert_eq!((same, offset, recovered, reason), (epoch, 6, true, None));
    let missed = messages(&mut back, 3).await;
    assert_eq!(
        missed.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["m4", "m5", "m6"]
    );
    assert_eq!(offsets(&missed), [4, 5, 6]);
    publish_acked(&mut publisher, "news", &contents("m", 7..=8)).await;
    let live = messages(&mut back, 2).await;
    assert_eq!(
        offsets(&live),
        [7, 8],
        "live after the recovered ones, none twice"
    );

    edges.stop().await;
    queue.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_while_messages_flow_has_no_gap_and_no_duplicate_at_the_seam() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, queue_port) = start_queue(dir.path(), 0, StorageKind::Disk, 1000).await;
    let (edges, pub_port, sub_port) = start_edges(dir.path(), queue_port).await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    let mut watcher = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    resume(&mut watcher, "sub flow since=0".into()).await;
    publish_acked(&mut publisher, "flow", &contents("f", 1..=50)).await;
    let epoch = messages(&mut watcher, 50).await[49].1.epoch;

    const TOTAL: u64 = 400;
    let flowing = tokio::spawn(async move {
        publish_acked(&mut publisher, "flow", &contents("f", 51..=TOTAL)).await;
        publisher
    });
    let mut resumer = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    let (_, _, recovered, _) =
        resume(&mut resumer, format!("sub flow since=50 epoch={epoch}")).await;
    assert!(recovered);
    let got = expect_within(
        "every message after 50",
        messages(&mut resumer, (TOTAL - 50) as usize),
    )
    .await;
    assert_eq!(offsets(&got), (51..=TOTAL).collect::<Vec<_>>());
    let _publisher = flowing.await.unwrap();

    edges.stop().await;
    queue.stop().await.unwrap();
}

#[tokio::test]
async fn a_resume_beyond_retention_or_across_an_epoch_change_says_what_was_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, queue_port) = start_queue(dir.path(), 0, StorageKind::Memory, 3).await;
    let (edges, pub_port, sub_port) = start_edges(dir.path(), queue_port).await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    let mut watcher = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    resume(&mut watcher, "sub t since=0".into()).await;
    publish_acked(&mut publisher, "t", &contents("x", 1..=6)).await;
    let epoch = messages(&mut watcher, 6).await[0].1.epoch;
    drop(watcher);

    // Three are retained (4..=6): a client at 1 missed 2 and 3 for good, and is told so with what remains.
    let mut late = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    let (_, _, recovered, reason) = resume(&mut late, format!("sub t since=1 epoch={epoch}")).await;
    assert_eq!((recovered, reason.as_deref()), (false, Some("expired")));
    assert_eq!(offsets(&messages(&mut late, 3).await), [4, 5, 6]);
    drop(late);

    // The memory backend loses history on restart: the topic starts a new epoch.
    queue.stop().await.unwrap();
    let (queue, _) = start_queue(dir.path(), queue_port, StorageKind::Memory, 3).await;
    publish_acked(&mut publisher, "t", &contents("y", 1..=1)).await;
    let mut after = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    let (new_epoch, _, recovered, reason) =
        resume(&mut after, format!("sub t since=6 epoch={epoch}")).await;
    assert_eq!(
        (recovered, reason.as_deref()),
        (false, Some("epoch_changed"))
    );
    assert_ne!(new_epoch, epoch);
    let got = messages(&mut after, 1).await;
    assert_eq!((got[0].0.as_str(), got[0].1.offset), ("y1", 1));

    edges.stop().await;
    queue.stop().await.unwrap();
}

#[tokio::test]
async fn history_shows_the_newest_messages_and_refuses_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, queue_port) = start_queue(dir.path(), 0, StorageKind::Disk, 100).await;
    let (edges, pub_port, sub_port) = start_edges(dir.path(), queue_port).await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    publish_acked(&mut publisher, "news", &contents("n", 1..=5)).await;
    let mut ws = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    ws.send(Message::text("history news limit=2"))
        .await
        .unwrap();
    match next_frame(&mut ws).await {
        ServerFrame::History {
            topic,
            latest,
            messages,
            ..
        } => {
            assert_eq!((topic.as_str(), latest), ("news", 5));
            let got: Vec<_> = messages
                .into_iter()
                .map(|m| match m {
                    ServerFrame::Message {
                        content, position, ..
                    } => (content, position.map(|p| p.offset)),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(got, [("n4".into(), Some(4)), ("n5".into(), Some(5))]);
        }
        other => panic!("expected history, got {other:?}"),
    }
    ws.send(Message::text("history news.* limit=2"))
        .await
        .unwrap();
    // The refusal names the topic, so the client knows which command it answers.
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::SubscriptionRefused { topic, reason } if topic == "news.*" && reason.contains("exact topic")
    ));
    ws.send(Message::text("sub news.* since=0")).await.unwrap();
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::SubscriptionRefused { topic, reason } if topic == "news.*" && reason.contains("cannot resume")
    ));

    edges.stop().await;
    queue.stop().await.unwrap();
}

#[tokio::test]
async fn the_publishers_http_api_reads_history_with_permissions_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, queue_port) = start_queue(dir.path(), 0, StorageKind::Disk, 100).await;
    let (edges, pub_port, _) = start_edges(dir.path(), queue_port).await;
    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    publish_acked(&mut publisher, "news", &contents("h", 1..=3)).await;
    let mut http = api(dir.path(), pub_port).await;

    let reply = http.get("/v1/history/news?limit=2").await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let page = reply.json();
    assert_eq!(page["latest"], 3);
    let offsets: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["message"]["Content"].clone(),
            )
        })
        .collect();
    assert_eq!(offsets, [(2, "h2".into()), (3, "h3".into())]);
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    let resumed = http
        .get(&format!("/v1/history/news?since=1&epoch={epoch}"))
        .await
        .unwrap()
        .json();
    assert_eq!(
        (
            resumed["recovered"].clone(),
            resumed["messages"].as_array().map(Vec::len)
        ),
        (true.into(), Some(2))
    );

    // Another user's inbox, a pattern, a bad query, another method.
    assert_eq!(http.get("/v1/history/%40bob").await.unwrap().status, 403);
    assert_eq!(http.get("/v1/history/news.*").await.unwrap().status, 400);
    assert_eq!(
        http.get("/v1/history/news?since=1").await.unwrap().status,
        400
    );
    assert_eq!(
        http.post_json("/v1/history/news", &[], "{}")
            .await
            .unwrap()
            .status,
        405
    );
    edges.stop().await;
    queue.stop().await.unwrap();
}

/// With the service binaries: msgqueue killed with SIGKILL and started again, and the subscriber restarted; the
/// client resumes where it was, on the same epoch, and gets what was published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_survives_a_sigkill_of_msgqueue_and_a_restart_of_the_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    wsmq_core::tls::ensure_dev_pki(dir.path()).unwrap();
    let [
        queue_port,
        pub_port,
        sub_port,
        queue_admin,
        pub_admin,
        sub_admin,
    ] = free_ports::<6>();
    let link = |listen: u16| {
        vec![
            format!("--queue-url=wss://localhost:{queue_port}"),
            "--queue-user=hello".into(),
            "--queue-password=test".into(),
            format!("--listen=127.0.0.1:{listen}"),
        ]
    };
    let queue_args = [format!("--listen=127.0.0.1:{queue_port}")];
    let queue = Process::start("msgqueue", dir.path(), queue_admin, &queue_args).await;
    let _publisher = Process::start("publisher", dir.path(), pub_admin, &link(pub_port)).await;
    let subscriber = Process::start("subscriber", dir.path(), sub_admin, &link(sub_port)).await;

    let mut publisher = client(dir.path(), pub_port, PUBLISH_PATH).await;
    let mut ws = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    resume(&mut ws, "sub news since=0".into()).await;
    publish_acked(&mut publisher, "news", &contents("k", 1..=5)).await;
    let had = messages(&mut ws, 5).await;
    let last = had[4].1;
    drop(ws);

    queue.kill().await;
    let _queue = Process::start("msgqueue", dir.path(), queue_admin, &queue_args).await;
    subscriber.kill().await;
    let _subscriber = Process::start("subscriber", dir.path(), sub_admin, &link(sub_port)).await;
    // The publisher's link reconnects on its own; its messages are acked once msgqueue is back.
    publish_acked(&mut publisher, "news", &contents("k", 6..=8)).await;

    let mut back = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    let (epoch, offset, recovered, _) = resume(
        &mut back,
        format!("sub news since={} epoch={}", last.offset, last.epoch),
    )
    .await;
    assert_eq!((epoch, offset, recovered), (last.epoch, 8, true));
    let got = messages(&mut back, 3).await;
    assert_eq!(
        got.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["k6", "k7", "k8"]
    );
}
