//! msgqueue killed with SIGKILL under load (`--fsync always`): every acked message is delivered after a restart,
//! and none is stored twice even though the producer resends everything it was unsure about (and more).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wsmq_core::protocol::queue::PushReply;
use wsmq_testkit::expect_within;

/// Starts the real `msgqueue` binary on port 0 and returns it with the address it logged.
async fn spawn_msgqueue(data_dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msgqueue"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--fsync",
            "always",
        ])
        .args(["--log-format", "json"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("WSMQ_USERS", format!("{USER}:{PASSWORD}"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("msgqueue binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = expect_within("listening line", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = json.pointer("/fields/addr").and_then(|a| a.as_str()) {
                return addr.to_owned();
            }
        }
        panic!("msgqueue exited before listening");
    })
    .await;
    // Keep draining its log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = addr.rsplit(':').next().unwrap().to_owned();
    (child, format!("wss://localhost:{port}"))
}

#[tokio::test]
async fn sigkill_under_load_loses_no_acked_message_and_stores_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    wsmq_core::tls::ensure_dev_pki(dir.path()).unwrap();
    let (mut child, url) = spawn_msgqueue(dir.path()).await;

    const PRODUCER: u64 = 42;
    const BATCH: u64 = 20;
    let mut producer = Producer::connect(&dialer(&url, dir.path(), true), PRODUCER).await;
    let mut sent = 0u64;
    let mut acked = 0u64;
    // Push in a pipeline (several frames outstanding) so the kill lands while pushes are in flight.
    let killed_at = expect_within("load", async {
        loop {
            while sent < acked + 5 * BATCH {
                let items: Vec<_> = (sent + 1..=sent + BATCH)
                    .map(|s| (s, payload(PRODUCER, s)))
                    .collect();
                producer.push(&items).await;
                sent += BATCH;
            }
            for reply in producer.until_settled(acked + 1).await {
                if let PushReply::Acked { upto } = reply {
                    acked = acked.max(upto);
                }
            }
            if acked >= 2_000 {
                child.start_kill().unwrap();
                return acked;
            }
        }
    })
    .await;
    child.wait().await.unwrap();
    drop(producer);
    assert!(killed_at >= 2_000);

    // Restart on the same data dir; the producer resends everything it did not see acked, with the same seqs.
    let (_child, url) = spawn_msgqueue(dir.path()).await;
    let mut producer = Producer::connect(&dialer(&url, dir.path(), true), PRODUCER).await;
    // It also resends a few frames it had seen acked, so every run exercises dedup (group commit often acks
    // everything outstanding at once, leaving nothing unacked at the kill).
    let from = acked.saturating_sub(2 * BATCH) + 1;
    let resend: Vec<_> = (from..=sent).map(|s| (s, payload(PRODUCER, s))).collect();
    for chunk in resend.chunks(BATCH as usize) {
        producer.push(chunk).await;
    }
    let replies = producer.until_settled(sent).await;
    assert!(
        replies.iter().all(|r| matches!(r, PushReply::Acked { .. })),
        "{replies:?}"
    );

    let mut consumer = Consumer::connect(&dialer(&url, dir.path(), true), 512).await;
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut order = Vec::new();
    while let Ok(d) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        let (p, s) = parse_payload(&d.payload);
        assert_eq!(p, PRODUCER);
        *seen.entry(s).or_default() += 1;
        order.push(s);
        consumer.ack(&[d.id]).await;
    }
    let missing: Vec<_> = (1..=sent).filter(|s| !seen.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "lost {} messages, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: HashSet<_> = seen
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "delivered in push order"
    );
}

#[tokio::test]
async fn a_group_resumes_after_sigkill_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    wsmq_core::tls::ensure_dev_pki(dir.path()).unwrap();
    let (mut child, url) = spawn_msgqueue(dir.path()).await;
    const PRODUCER: u64 = 7;
    const PATH: &str = "/popmsg?group=survivor";
    let mut consumer = Consumer::connect_to(&dialer(&url, dir.path(), true), PATH, 64).await;
    let mut producer = Producer::connect(&dialer(&url, dir.path(), true), PRODUCER).await;
    let items: Vec<_> = (1..=1_000).map(|s| (s, payload(PRODUCER, s))).collect();
    for chunk in items.chunks(50) {
        producer.push(chunk).await;
    }
    producer.until_settled(1_000).await;
    // The group handles part of it, then the process is killed mid-stream.
    let mut handled = Vec::new();
    while handled.len() < 400 {
        let d = consumer.next().await;
        handled.push(parse_payload(&d.payload).1);
        consumer.ack(&[d.id]).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    drop((consumer, producer));

    let (_child, url) = spawn_msgqueue(dir.path()).await;
    // Pushed after the restart, before the group's consumer is back.
    let mut producer = Producer::connect(&dialer(&url, dir.path(), true), PRODUCER).await;
    let items: Vec<_> = (1_001..=1_100).map(|s| (s, payload(PRODUCER, s))).collect();
    producer.push(&items).await;
    producer.until_settled(1_100).await;
    let mut consumer = Consumer::connect_to(&dialer(&url, dir.path(), true), PATH, 256).await;
    let mut after = Vec::new();
    while let Ok(d) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        after.push(parse_payload(&d.payload).1);
        consumer.ack(&[d.id]).await;
    }
    assert_eq!(handled, (1..=400).collect::<Vec<_>>());
    // Acks are written lazily, so a few handled just before the kill may come again; nothing may be missing.
    let resumed_at = *after.first().expect("the group resumes");
    assert!(resumed_at <= 401, "resumed at {resumed_at}, after a gap");
    assert_eq!(
        after,
        (resumed_at..=1_100).collect::<Vec<_>>(),
        "everything after the last durable ack, in order, once"
    );
}
