//! The `msgqueue` binary: parse flags, start logging, run until SIGINT/SIGTERM.

use clap::Parser;

/// wsmq msgqueue: a durable, acked FIFO queue over TLS WebSocket (`/pushmsg`, `/popmsg`).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: wsmq_msgqueue::Config,
    #[command(flatten)]
    log: wsmq_core::logging::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    wsmq_core::logging::init(cli.log.log_format);
    wsmq_msgqueue::run(cli.config, wsmq_core::shutdown::on_signal()).await?;
    Ok(())
}
