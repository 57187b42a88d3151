//! When the log's disk fills up, reliable pushes are refused with "queue storage full", nothing stored is lost,
//! and msgqueue accepts pushes again by itself once space returns. Runs msgqueue on a 2 MiB tmpfs mounted by the
//! test, so it needs root (CI runs as root); without it the test fails and says so.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{Consumer, Producer, Running, config};
use futures_util::StreamExt;
use tungstenite::Message;
use wsmq_core::protocol::queue::{FrameReader, PushReply, RejectReason};
use wsmq_msgqueue::queue::{Backend, Queue, QueueOptions};
use wsmq_testkit::expect_within;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("cannot run mount");
        assert!(
            output.status.success(),
            "the disk-full test must mount a tmpfs and so needs root (CI runs as root): mount failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a test that failed with msgqueue's files still open leaves no mount behind either.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `dir/filler` until the file system is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if let Err(err) = file.write_all(&chunk) {
            assert_eq!(err.raw_os_error(), Some(28), "expected ENOSPC, got {err}");
            return path;
        }
    }
}

/// Reads replies for up to `wait` after the last one, recording the highest ACKED and every REJECT.
async fn replies(
    producer: &mut Producer,
    acked_upto: &mut u64,
    rejected: &mut Vec<(u64, RejectReason)>,
    wait: Duration,
) {
    while let Ok(Some(Ok(message))) = tokio::time::timeout(wait, producer.ws.next()).await {
        let Message::Binary(frame) = message else {
            continue;
        };
        let mut reader = FrameReader::new(frame, 0);
        while let Some(reply) = reader.next_push_reply().unwrap() {
            match reply {
                PushReply::Acked { upto } => *acked_upto = (*acked_upto).max(upto),
                PushReply::Reject { seq, reason } => rejected.push((seq, reason)),
                PushReply::Placed { seq, .. } => panic!("PLACED for {seq}, which was a PUSH"),
            }
        }
    }
}

fn message(seq: u64) -> Bytes {
    // Larger than a page, so a write on a full tmpfs fails part-way and leaves a partial record to cut.
    let mut payload = format!("m{seq:06}-").into_bytes();
    payload.resize(9000, b'.');
    Bytes::from(payload)
}

#[tokio::test]
async fn a_full_disk_refuses_pushes_keeps_what_was_stored_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("data"), "2m");
    let mq = Running::start(config(&mount.path)).await;
    let mut producer = Producer::connect(&mq.dialer(true), 1).await;
    let (mut acked_upto, mut rejected) = (0, Vec::new());

    producer.push(&[(1, message(1))]).await;
    producer.until_settled(1).await;
    let filler = fill(&mount.path);

    // Push until msgqueue refuses: the first pushes are taken into the writer's buffer, whose write then fails.
    let mut seq = 1;
    expect_within("a push is refused as storage full", async {
        while rejected.is_empty() {
            seq += 1;
            producer.push(&[(seq, message(seq))]).await;
            replies(
                &mut producer,
                &mut acked_upto,
                &mut rejected,
                Duration::from_millis(50),
            )
            .await;
        }
    })
    .await;
    assert!(
        rejected
            .iter()
            .all(|&(_, reason)| reason == RejectReason::NoSpace),
        "{rejected:?}"
    );
    assert_eq!(mq.queue.stats().rejected_no_space, rejected.len() as u64);
    let refused_at = seq;
    assert!(acked_upto < refused_at);

    // Space returns: what was accepted is written and acked, and new pushes are accepted again.
    std::fs::remove_file(filler).unwrap();
    expect_within("accepted again after space returned", async {
        loop {
            seq += 1;
            producer.push(&[(seq, message(seq))]).await;
            let before = rejected.len();
            replies(
                &mut producer,
                &mut acked_upto,
                &mut rejected,
                Duration::from_millis(100),
            )
            .await;
            if rejected.len() == before && acked_upto == seq {
                return;
            }
        }
    })
    .await;

    let refused: BTreeSet<u64> = rejected.iter().map(|&(s, _)| s).collect();
    let stored: BTreeSet<u64> = (1..=acked_upto).filter(|s| !refused.contains(s)).collect();
    assert!(
        stored.len() >= 3,
        "some pushes were acked before and after the disk filled"
    );
    let mut consumer = Consumer::connect(&mq.dialer(true), 1024).await;
    let mut delivered = BTreeSet::new();
    while delivered.len() < stored.len() {
        let delivery = consumer.next().await;
        assert_eq!(delivery.payload.len(), 9000);
        let seq: u64 = std::str::from_utf8(&delivery.payload[1..7])
            .unwrap()
            .parse()
            .unwrap();
        delivered.insert(seq);
        consumer.ack(&[delivery.id]).await;
    }
    assert_eq!(
        delivered, stored,
        "every acked message is delivered, nothing refused is"
    );
    assert!(consumer.idle_for(Duration::from_millis(200)).await);
    drop(consumer);
    drop(producer);
    mq.stop().await;

    // The log the writer retried through is intact: partial records were cut before each retry, so recovery
    // finds no torn or corrupt record and nothing unacked.
    let backend = Backend::Disk {
        dir: mount.path.join("queue"),
    };
    let (queue, report) = Queue::open(backend, QueueOptions::default()).unwrap();
    assert!(report.truncated.is_empty(), "{report:?}");
    assert_eq!(report.messages, 0);
    queue.close().await;
    drop(queue);
    drop(mount);
}
