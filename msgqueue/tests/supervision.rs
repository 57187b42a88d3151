//! A panic in msgqueue's log writer thread is not a silently dead part: pushes fail instead of hanging, msgqueue
//! drains and `run` returns the failure (so `main` exits non-zero and the orchestrator restarts it), and the
//! restarted queue recovers what was stored. Its own test binary, because the injected fault is process-wide.

mod common;

use bytes::Bytes;
use common::config;
use tokio_util::sync::CancellationToken;
use wsmq_core::supervise::{TaskFailure, inject_panic};
use wsmq_msgqueue::Error;
use wsmq_testkit::expect_within;

#[tokio::test]
async fn a_panicking_log_writer_stops_msgqueue_with_an_error_and_loses_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let bound = wsmq_msgqueue::bind(config(dir.path())).await.unwrap();
    let queue = bound.queue().clone();
    let run = tokio::spawn(bound.run(CancellationToken::new()));

    let stored = queue.push(None, Bytes::from_static(b"stored")).unwrap();
    expect_within(
        "the first push to be durable",
        queue.wait_durable(stored.durable()),
    )
    .await
    .unwrap();

    inject_panic("log writer");
    // This push wakes the writer, which writes it and then panics at the top of its next round.
    let _ = queue.push(None, Bytes::from_static(b"wakes the writer"));

    match expect_within("msgqueue to stop on its own", run)
        .await
        .unwrap()
    {
        Err(Error::Task(TaskFailure { task, reason })) => {
            assert_eq!(task, "log writer");
            assert!(reason.contains("injected fault"), "{reason}");
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    let refused = queue.push(None, Bytes::from_static(b"after the panic"));
    if let Ok(pushed) = refused {
        expect_within(
            "a push after the panic",
            queue.wait_durable(pushed.durable()),
        )
        .await
        .expect_err("nothing can be durable without a writer");
    }
    drop(queue);

    let restarted = wsmq_msgqueue::bind(config(dir.path())).await.unwrap();
    assert!(
        restarted.recovery().messages >= 1,
        "the durable message was lost: {:?}",
        restarted.recovery()
    );
}
