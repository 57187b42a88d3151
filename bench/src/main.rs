//! `wsmq-bench` entry point: parse flags, log to stderr, run the scenario, print its report to stdout.

use std::io::Write as _;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use wsmq_bench::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.common.json;
    let report = wsmq_bench::scenario::run(cli).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", report.to_json_line())?;
    } else {
        write!(out, "{}", report.to_table())?;
    }
    Ok(())
}
