//! Process-wide tracing setup shared by every wsmq binary: human-readable logs by default, JSON lines for log
//! collectors, filtered by `RUST_LOG` (default `info`). Logs go to stderr so tools can print data on stdout.

use tracing_subscriber::EnvFilter;

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, for terminals.
    #[default]
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// The logging flag every service accepts (`#[command(flatten)]` it into the service's arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log output format: `human` for terminals, `json` for log collectors. Verbosity is set with `RUST_LOG`
    /// (e.g. `RUST_LOG=debug` or `RUST_LOG=wsmq_core=debug,info`; default `info`).
    #[arg(long, env = "WSMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Installs the global tracing subscriber.
///
/// Calling it again (tests, or the all-in-one binary starting several services) keeps the first subscriber. An
/// invalid `RUST_LOG` falls back to `info` with a warning rather than silencing the process.
pub fn init(format: LogFormat) {
    let (filter, invalid) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => match EnvFilter::try_new(&directives) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new("info"), Some(err)),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok()
        && let Some(err) = invalid
    {
        tracing::warn!(%err, "ignoring invalid RUST_LOG, logging at info level");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn log_format_defaults_to_human_and_accepts_json() -> Result<(), clap::Error> {
        assert_eq!(
            Cli::try_parse_from(["svc"])?.log.log_format,
            LogFormat::Human
        );
        let json = Cli::try_parse_from(["svc", "--log-format", "json"])?;
        assert_eq!(json.log.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["svc", "--log-format", "xml"]).is_err());
        Ok(())
    }

    #[test]
    fn init_twice_keeps_the_first_subscriber_without_panicking() {
        init(LogFormat::Human);
        init(LogFormat::Json);
        tracing::info!("still logging");
    }
}
