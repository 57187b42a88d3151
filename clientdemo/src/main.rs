//! clientdemo: the demo client of wsmq. Interactive by default (publish, subscribe, watch messages arrive);
//! `publish` and `subscribe` subcommands for scripts. See `clientdemo --help`.

mod cli;
mod interactive;
mod link;
mod publish;
mod subscribe;

use std::process::ExitCode;

use clap::Parser as _;
use wsmq_core::logging::{self, LogFormat};

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(LogFormat::Human);
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            #[allow(clippy::print_stderr, reason = "the one place a fatal error is shown")]
            {
                eprintln!("error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Dispatches to the chosen mode.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dialers = cli.connection.dialers()?;
    match cli.command {
        None => interactive::run(&dialers, &cli.connection.data_dir).await,
        Some(Command::Publish {
            topic,
            message,
            timeout,
            when,
        }) => publish::run(&dialers, topic, message, timeout, when).await,
        Some(Command::Subscribe {
            topics,
            count,
            since,
            epoch,
        }) => {
            let since = subscribe::start_position(&topics, since, epoch)?;
            subscribe::run(&dialers, topics, since, count).await
        }
        Some(Command::History {
            topic,
            limit,
            timeout,
        }) => subscribe::history(&dialers, topic, limit, timeout).await,
    }
}
