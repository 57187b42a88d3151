//! Process-wide tracing setup shared by every wsmq binary: human-readable logs by default, JSON lines for log
//! collectors, filtered by `RUST_LOG` (default `info`). Logs go to stderr so tools can print data on stdout.
//!
//! Secrets never reach the logs, whatever `RUST_LOG` says: the crates that handle raw protocol bytes print them
//! at trace level (tungstenite logs a client's whole handshake request, `Authorization: Basic …` included, and
//! every frame), so their targets ([`CAPPED_TARGETS`]) are capped at debug by a filter that `RUST_LOG` cannot
//! lift. Our own code never formats credentials, request heads or headers (`Credentials`, `Secret` and
//! `RequestHead` redact them in `Debug`).

use tracing::Dispatch;
use tracing_subscriber::filter::{FilterExt, LevelFilter, ParseError, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Third-party targets (and their modules) never logged above debug: at trace level they print raw handshake
/// requests with their headers, TLS records or frame payloads.
pub const CAPPED_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "rustls",
    "tokio_rustls",
    "httparse",
];

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
    /// (e.g. `RUST_LOG=debug` or `RUST_LOG=wsmq_core=debug,info`; default `info`). Whatever the level, the
    /// protocol libraries that would print raw requests and frames are capped at debug, so no password is logged.
    #[arg(long, env = "WSMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Installs the global tracing subscriber built by [`dispatch`] from `RUST_LOG`, writing to stderr; `log`
/// records of dependencies are routed into it too.
///
/// Calling it again (tests, or the all-in-one binary starting several services) keeps the first subscriber. An
/// invalid `RUST_LOG` falls back to `info` with a warning rather than silencing the process.
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").ok();
    let (dispatch, invalid) = dispatch(format, directives.as_deref(), std::io::stderr);
    if dispatch.try_init().is_ok()
        && let Some(err) = invalid
    {
        tracing::warn!(%err, "ignoring invalid RUST_LOG, logging at info level");
    }
}

/// The subscriber every binary logs through: `directives` in `RUST_LOG` syntax (`None` or blank means `info`;
/// invalid ones fall back to `info` and the parse error is returned alongside), [`CAPPED_TARGETS`] capped at
/// debug whatever the directives say, lines in `format` written to `writer`. [`init`] installs it; tests build
/// it over a buffer to check what a given level would log.
pub fn dispatch<W>(
    format: LogFormat,
    directives: Option<&str>,
    writer: W,
) -> (Dispatch, Option<ParseError>)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, invalid) = match directives {
        Some(directives) if !directives.trim().is_empty() => match EnvFilter::try_new(directives) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new("info"), Some(err)),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(
            CAPPED_TARGETS
                .iter()
                .map(|target| (*target, LevelFilter::DEBUG)),
        );
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    let subscriber = Registry::default().with(output.with_filter(FilterExt::and(filter, caps)));
    (Dispatch::new(subscriber), invalid)
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
