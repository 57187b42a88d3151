//! `chaos` against the real service binaries: one kill of each service under reliable publishing loses no acked
//! message.
//!
//! The scenario starts `msgqueue`, `publisher` and `subscriber` as processes from the directory `wsmq-bench` was
//! built into, so they must be built too: `cargo test --workspace` builds them; after changing a service, run
//! `cargo build --bins` before `cargo test -p wsmq-bench`.

use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use serde_json::Value;
use wsmq_bench::cli::Cli;

/// Bound on the whole run: 15 s of faults, then settling.
const BOUND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_service_once_loses_no_acked_message() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wsmq-bench"))
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for service in ["msgqueue", "publisher", "subscriber"] {
        assert!(
            Path::new(&bin_dir).join(service).is_file(),
            "{bin_dir}/{service} is missing: run `cargo build --bins` first"
        );
    }
    let cli = Cli::try_parse_from([
        "wsmq-bench",
        "--json",
        "chaos",
        "--duration",
        "15s",
        "--kill-every",
        "2s..3s",
        "--down-for",
        "0s..500ms",
        "--max-kills",
        "3",
        "--rate",
        "500",
        "--settle",
        "30s",
        "--bin-dir",
        &bin_dir,
    ])
    .unwrap();
    let report = tokio::time::timeout(BOUND, wsmq_bench::scenario::run(cli))
        .await
        .expect("the chaos run finishes in time")
        .unwrap();
    let json: Value = serde_json::from_str(&report.to_json_line()).unwrap();

    for service in ["msgqueue", "publisher", "subscriber"] {
        let kills = &json["kills"][service];
        let total = kills["sigkill"].as_u64().unwrap() + kills["sigterm"].as_u64().unwrap();
        assert_eq!(total, 1, "{service} killed once: {json}");
    }
    assert_eq!(json["acked_but_lost"], 0, "{json}");
    assert_eq!(json["unacked"], 0, "every message acked in the end: {json}");
    assert_eq!(json["fence_delivered"], true, "{json}");
    let acked = json["acked"].as_u64().unwrap();
    let covered = json["covered"].as_u64().unwrap();
    // Most of the run the checker is subscribed, so most acked messages are checked, not excused.
    assert!(acked > 1_000 && covered * 2 > acked, "{json}");
}
