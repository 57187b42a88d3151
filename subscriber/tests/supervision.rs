//! A panic in the subscriber's msgqueue link is not a silently dead part: the subscriber drains its clients and
//! `run` returns the failure, so `main` exits non-zero and the orchestrator restarts it. Its own test binary,
//! because the injected fault is process-wide.

mod common;

use common::{FakeQueue, Settings, Subscriber, TestResult, envelope};
use wsmq_core::supervise::{TaskFailure, inject_panic};
use wsmq_subscriber::Error;

#[tokio::test]
async fn a_panicking_link_stops_the_subscriber_with_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut queue = FakeQueue::start(dir.path(), "127.0.0.1:0".parse()?).await?;
    let subscriber = Subscriber::start(dir.path(), queue.addr, Settings::default()).await?;
    let mut link = queue.accept().await?;
    link.await_credit(1).await?;

    inject_panic("subscriber link");
    // A delivery wakes the link, which then panics at its fault point.
    link.deliver(&[(1, false, envelope("news", "wake the link"))])
        .await?;

    match subscriber.stopped_on_its_own().await? {
        Err(Error::Task(TaskFailure { task, reason })) => {
            assert_eq!(task, "subscriber link");
            assert!(reason.contains("injected fault"), "{reason}");
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    queue.stop().await
}
