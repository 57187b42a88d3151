//! The `publisher` binary: parses flags, sets up logging and signal handling, and runs the service.

use clap::Parser;
use wsmq_core::logging::{self, LogArgs};

/// wsmq publisher: accepts messages on wss://HOST:8081/publish and pushes them to msgqueue.
#[derive(Parser, Debug)]
#[command(name = "publisher", version, about)]
struct Cli {
    #[command(flatten)]
    config: wsmq_publisher::Config,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log.log_format);
    let shutdown = wsmq_core::shutdown::on_signal();
    wsmq_publisher::run(cli.config, shutdown).await?;
    Ok(())
}
