//! The `subscriber` binary: parses flags, sets up logging and signals, and runs the service until SIGINT/SIGTERM.

use clap::Parser;
use wsmq_core::logging::{self, LogArgs};

/// wsmq subscriber: delivers messages from msgqueue to WebSocket clients subscribed to their topic.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: wsmq_subscriber::Config,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log.log_format);
    let shutdown = wsmq_core::shutdown::on_signal();
    wsmq_subscriber::run(cli.config, shutdown).await?;
    Ok(())
}
