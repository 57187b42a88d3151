//! `e2e` and `fanout` against msgqueue, publisher and subscriber running in this process: every published
//! message reaches every subscriber of its topic once, and the report says so.

mod common;

use clap::Parser as _;
use common::{BOUND, PASSWORD, Stack, USER};
use serde_json::Value;
use wsmq_bench::cli::Cli;

async fn run_against(stack: &Stack, scenario: &[&str]) -> Value {
    let mut args = vec![
        "wsmq-bench",
        "--publisher-url",
        &stack.publisher_url,
        "--subscriber-url",
        &stack.subscriber_url,
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--data-dir",
        stack.queue.data_dir(),
        "--json",
        "--duration-limit",
        "30s",
    ];
    args.extend_from_slice(scenario);
    let cli = Cli::try_parse_from(args).unwrap();
    let report = tokio::time::timeout(BOUND, wsmq_bench::scenario::run(cli))
        .await
        .expect("scenario finishes in time")
        .unwrap();
    serde_json::from_str(&report.to_json_line()).unwrap()
}

fn assert_complete(json: &Value, expected: u64) {
    for (key, want) in [
        ("expected", expected),
        ("delivered", expected),
        ("lost", 0),
        ("duplicates", 0),
        ("reordered", 0),
        ("foreign", 0),
        ("subscriber_disconnects", 0),
    ] {
        assert_eq!(json[key], want, "{key} in {json}");
    }
    assert_eq!(json["subscriptions_confirmed"], true, "{json}");
    assert_eq!(json["latency"]["count"], expected, "{json}");
    assert!(json["delivered_per_s"].as_f64().unwrap() > 0.0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_delivers_each_message_to_every_subscriber_of_its_topic() {
    let stack = Stack::start().await;
    // 2 publishers round-robin over 2 topics; 4 subscribers, 2 per topic: every message reaches 2.
    let json = run_against(
        &stack,
        &[
            "e2e",
            "-p",
            "2",
            "-s",
            "4",
            "-t",
            "2",
            "-n",
            "600",
            "--rate",
            "3000",
            "--acks",
            "--ack-window",
            "16",
        ],
    )
    .await;
    assert_complete(&json, 1200);
    assert_eq!(json["acked"], 600, "{json}");
    assert_eq!(json["refused"], 0, "{json}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_from_spread_source_addresses_reaches_every_subscriber() {
    let stack = Stack::start().await;
    let json = run_against(
        &stack,
        &["fanout", "-s", "40", "-n", "20", "--source-ips", "4"],
    )
    .await;
    assert_complete(&json, 800);
    stack.stop().await;
}
