//! A panic in the publisher's msgqueue link is not a silently dead part: the publisher drains its clients and
//! `run` returns the failure, so `main` exits non-zero and the orchestrator restarts it. Its own test binary,
//! because the injected fault is process-wide.

#[allow(dead_code)]
mod common;

use common::{FakeQueue, Publisher, config};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsmq_core::supervise::{TaskFailure, inject_panic};
use wsmq_publisher::Error;
use wsmq_testkit::client::send_text;
use wsmq_testkit::within;

#[tokio::test]
async fn a_panicking_link_stops_the_publisher_with_an_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    publisher.wait_readyz(200).await?;
    let mut client = publisher.client(dir.path(), true).await?;

    inject_panic("publisher link");
    // The next message wakes the link, which then panics at its fault point.
    send_text(
        &mut client,
        r#"{"Topic":"t","Content":"wake the link","Id":1}"#,
    )
    .await?;

    match publisher.stopped_on_its_own().await? {
        Err(Error::Task(TaskFailure { task, reason })) => {
            assert_eq!(task, "publisher link");
            assert!(reason.contains("injected fault"), "{reason}");
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    // Its clients were drained, not left on a publisher that can no longer deliver.
    within("the client to be closed", async {
        while let Some(Ok(message)) = client.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await?;
    queue.stop().await?;
    Ok(())
}
