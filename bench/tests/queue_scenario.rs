//! The `queue` scenario end to end against an in-process msgqueue on port 0: every pushed message is acked,
//! delivered once, and the report carries the figures.

mod common;

use clap::Parser as _;
use common::{BOUND, Msgqueue, PASSWORD, USER};
use wsmq_bench::cli::Cli;

fn bench_cli(queue: &Msgqueue, password: &str, scenario: &[&str]) -> Cli {
    let mut args = vec![
        "wsmq-bench",
        "--queue-url",
        &queue.url,
        "--user",
        USER,
        "--password",
        password,
        "--data-dir",
        queue.data_dir(),
        "--json",
        "--duration-limit",
        "30s",
    ];
    args.extend_from_slice(scenario);
    Cli::try_parse_from(args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_scenario_delivers_every_acked_push_once_and_reports_it() {
    let queue = Msgqueue::start(&["--fsync", "always"]).await;
    let cli = bench_cli(
        &queue,
        PASSWORD,
        &[
            "queue",
            "--pushers",
            "2",
            "--poppers",
            "2",
            "--messages",
            "3001",
            "--window",
            "256",
            "--batch",
            "64",
            "--credit",
            "128",
        ],
    );
    let report = tokio::time::timeout(BOUND, wsmq_bench::scenario::run(cli))
        .await
        .expect("scenario finishes in time")
        .unwrap();

    let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).unwrap();
    assert_eq!(json["scenario"], "queue");
    for (key, want) in [
        ("pushed", 3001),
        ("acked", 3001),
        ("rejected", 0),
        ("delivered", 3001),
        ("lost", 0),
        ("duplicates", 0),
        ("foreign", 0),
    ] {
        assert_eq!(json[key], want, "{key} in {json}");
    }
    assert_eq!(json["drained"], true, "{json}");
    assert_eq!(json["ack_latency"]["count"], 3001, "{json}");
    assert_eq!(json["deliver_latency"]["count"], 3001, "{json}");
    assert!(json["acked_pushes_per_s"].as_f64().unwrap() > 0.0, "{json}");
    let p99 = json["ack_latency"]["p99_us"].as_f64().unwrap();
    assert!(
        p99 > 0.0 && p99 <= json["ack_latency"]["max_us"].as_f64().unwrap(),
        "{json}"
    );
    assert!(report.to_table().contains("acked_pushes_per_s"));
    queue.stop().await;
}

#[tokio::test]
async fn queue_scenario_fails_clearly_with_wrong_credentials() {
    let queue = Msgqueue::start(&["--storage", "memory"]).await;
    let cli = bench_cli(&queue, "wrong", &["queue", "--messages", "10"]);
    let err = tokio::time::timeout(BOUND, wsmq_bench::scenario::run(cli))
        .await
        .expect("scenario fails in time")
        .expect_err("wrong credentials fail the run");
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    queue.stop().await;
}
