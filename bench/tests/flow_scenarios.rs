//! `e2e`, `fanout` and `http` against msgqueue, publisher and subscriber running in this process: every published
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_runs_repeated_report_every_run_and_the_worst_latency() {
    let stack = Stack::start().await;
    let json = run_against(
        &stack,
        &[
            "--repeat", "3", "e2e", "--compat", "-s", "2", "-n", "300", "--settle", "300ms",
        ],
    )
    .await;
    assert_eq!(json["runs"], 3, "{json}");
    let runs = json["run_reports"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{json}");
    for run in runs {
        // Compat subscribers get no confirmations; everything else is as complete as with wsmq.v1.
        assert_eq!(run["compat"], true, "{run}");
        assert_eq!(run["subscriptions_confirmed"], false, "{run}");
        assert_eq!(run["delivered"], 600, "{run}");
    }
    assert_eq!(json["lost_total"], 0, "{json}");
    assert_eq!(json["duplicates_total"], 0, "{json}");
    let p99s: Vec<f64> = json["latency_p99_us_per_run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let worst = p99s.iter().copied().fold(0.0, f64::max);
    assert_eq!(
        json["latency_worst"]["p99_us"].as_f64(),
        Some(worst),
        "{json}"
    );
    assert_eq!(json["delivered_per_s_per_run"].as_array().unwrap().len(), 3);
    assert!(
        json["delivered_per_s_median"].as_f64().unwrap() > 0.0,
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publishes_over_keep_alive_connections_and_every_message_is_delivered() {
    let stack = Stack::start().await;
    // 3 connections, batches of 7 (the last one shorter); 4 subscribers, 2 per topic: every message reaches 2.
    let json = run_against(
        &stack,
        &[
            "http", "-c", "3", "--batch", "7", "-n", "300", "-s", "4", "-t", "2",
        ],
    )
    .await;
    for (key, want) in [
        ("published", 300),
        ("refused", 0),
        ("requests", 45),
        ("expected", 600),
        ("delivered", 600),
        ("lost", 0),
        ("duplicates", 0),
        ("reordered", 0),
        ("foreign", 0),
    ] {
        assert_eq!(json[key], want, "{key} in {json}");
    }
    assert_eq!(json["request_latency"]["count"], 45, "{json}");
    assert!(json["published_per_s"].as_f64().unwrap() > 0.0, "{json}");

    let single = run_against(&stack, &["http", "-c", "2", "--batch", "1", "-n", "20"]).await;
    assert_eq!(single["published"], 20, "{single}");
    assert_eq!(single["delivered"], 20, "{single}");
    stack.stop().await;
}
