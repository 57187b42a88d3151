//! In the all-in-one binary a service that panics is not a silently dead part either: the whole stack stops
//! and `run` returns the failure, so the process exits non-zero. Its own test binary, because the injected fault
//! is process-wide.

mod common;

use common::{ALL, config};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use wsmq_core::supervise::{TaskFailure, inject_panic};
use wsmq_testkit::expect_within;

#[tokio::test]
async fn a_panic_in_msgqueue_stops_the_whole_stack_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let stack = wsmq::bind(config(dir.path(), ALL)).await.unwrap();
    let queue = stack.msgqueue_addr().unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(stack.run(shutdown.clone()));

    inject_panic("msgqueue");
    // msgqueue panics at its fault point on its next poll: at once if it has not run yet, else when this
    // connection wakes its accept loop (which may then be gone, hence no unwrap).
    let _connection = TcpStream::connect(queue).await;

    match expect_within("the stack to stop on its own", run)
        .await
        .unwrap()
    {
        Err(wsmq::Error::Panicked(TaskFailure { task, reason })) => {
            assert_eq!(task, "msgqueue");
            assert!(reason.contains("injected fault"), "{reason}");
        }
        other => panic!("expected msgqueue's panic, got {other:?}"),
    }
    assert!(!shutdown.is_cancelled(), "nobody asked it to stop");
}
