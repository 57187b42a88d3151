//! The `wsmq` binary: the whole stack in one process, the one-command default.

use clap::Parser;

mod banner;

/// wsmq: msgqueue, publisher and subscriber in one process (TLS WebSockets on 8080/8081/8082).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: wsmq::Config,
    #[command(flatten)]
    log: wsmq_core::logging::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    wsmq_core::logging::init(cli.log.log_format);
    let shutdown = wsmq_core::shutdown::on_signal();
    let stack = wsmq::bind(cli.config).await?;
    banner::print(&stack);
    stack.run(shutdown).await?;
    Ok(())
}
