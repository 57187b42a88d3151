//! `scaleout` against msgqueue, publisher and subscriber running in this process: the coordinator (the real
//! `wsmq-bench` binary) starts one worker process per instance URL, and every connection of every worker gets
//! every message once, in order; the workers exit once their reports are in.

mod common;

use std::time::Duration;

use common::{PASSWORD, Stack, USER};
use serde_json::Value;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_connection_gets_every_message_and_the_run_ends() {
    let stack = Stack::start().await;
    // The same instance twice: two worker processes, 2 × 20 connections.
    let instances = format!("{0},{0}", stack.subscriber_url);
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_wsmq-bench"))
            .args(["--json", "--duration-limit", "30s"])
            .args(["--publisher-url", &stack.publisher_url])
            .args(["--user", USER, "--password", PASSWORD])
            .args(["--data-dir", stack.queue.data_dir()])
            .args(["scaleout", "--instances", &instances])
            .args([
                "--per-instance",
                "20",
                "--messages",
                "5",
                "--source-ips",
                "4",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the run ends once every report is in")
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    for (key, want) in [
        ("connections", 40),
        ("expected", 200),
        ("delivered", 200),
        ("lost", 0),
        ("duplicates", 0),
        ("reordered", 0),
        ("subscriber_disconnects", 0),
    ] {
        assert_eq!(json[key], want, "{key} in {json}");
    }
    assert_eq!(json["drained"], true, "{json}");
    assert_eq!(json["latency"]["count"], 200, "{json}");
    stack.stop().await;
}
