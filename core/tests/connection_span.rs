//! Every log line a service writes about a connection carries the same fields: the listener opens one span per
//! connection and records the path and user once the connection is authenticated, and the handler runs inside it.
//!
//! Its own test binary: it installs the process-wide subscriber.

mod common;

use common::*;
use tracing_subscriber::util::SubscriberInitExt;
use wsmq_core::logging::{self, LogFormat};
use wsmq_core::server::Accepted;

#[tokio::test]
async fn a_handlers_logs_carry_the_path_peer_and_user_of_its_connection() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    let (dispatch, invalid) =
        logging::dispatch(LogFormat::Json, Some("info"), move || writer.clone());
    assert!(invalid.is_none());
    dispatch.try_init()?;

    let server = start_custom(
        test_limits(),
        |_| {},
        |accepted: Accepted| async move {
            tracing::info!("handler says hello");
            echo(accepted).await;
        },
    )
    .await?;
    let (ws, greeting) = server.ws_connect_good().await?;
    assert_eq!(greeting, "alice /echo compat");
    drop(ws);
    server.stop().await?;

    let logs = captured.text();
    let line = logs
        .lines()
        .find(|line| line.contains("handler says hello"))
        .ok_or_else(|| format!("the handler's line is missing:\n{logs}"))?;
    let record: serde_json::Value = serde_json::from_str(line)?;
    let span = &record["span"];
    assert_eq!(span["name"], "connection", "{line}");
    assert_eq!(span["path"], "/echo", "{line}");
    assert_eq!(span["user"], "alice", "{line}");
    assert!(
        span["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "{line}"
    );
    Ok(())
}
