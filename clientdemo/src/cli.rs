//! Command-line flags and environment variables of clientdemo, and the dialers built from them.
//!
//! The connection flags are global so they may follow the subcommand (`clientdemo publish --user bob ...`), the
//! way scripts tend to write them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use wsmq_core::Secret;
use wsmq_core::auth::Credentials;
use wsmq_core::dial::Dialer;
use wsmq_core::limits::{Limits, parse_duration};
use wsmq_core::protocol::SUBPROTOCOL_V1;
use wsmq_core::protocol::client::DEFAULT_HISTORY_LIMIT;
use wsmq_core::protocol::history::Epoch;
use wsmq_core::protocol::schedule::{Schedule, ScheduleError};
use wsmq_core::tls;

/// A demo client for wsmq: publish messages, subscribe to topics and watch them arrive.
///
/// Without a subcommand it starts an interactive prompt: `TOPIC MESSAGE` publishes, `sub TOPIC` and
/// `unsub TOPIC` manage subscriptions, `history TOPIC` lists its newest messages, `exit` quits.
#[derive(Debug, clap::Parser)]
#[command(name = "clientdemo", version)]
pub(crate) struct Cli {
    /// Where the services are and how to authenticate.
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    /// What to do; `None` is the interactive prompt.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The scriptable subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Publish MESSAGE (the words joined by spaces) to TOPIC, or each line of standard input as one message when
    /// no MESSAGE is given. Waits for every acknowledgement; exits with status 1 if any message failed.
    Publish {
        /// The topic to publish to.
        topic: String,
        /// The message; read from standard input, one message per line, when absent.
        message: Vec<String>,
        /// How long to wait for the publisher to confirm outstanding messages before giving up on them
        /// (e.g. `500ms`, `10s`, `1m`).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// When to deliver: `--delay 10s` (`90s`, `1h30m`, …) or `--deliver-at 2030-01-02T15:04:05Z` (RFC 3339).
        #[command(flatten)]
        when: When,
    },
    /// Subscribe to TOPIC(s) and print every message as one JSON object per line:
    /// `{"Topic":"...","Content":"...","Offset":N,"Epoch":"..."}`. After a reconnect each exact topic resumes
    /// after the last message printed.
    Subscribe {
        /// The topics to subscribe to.
        #[arg(required = true)]
        topics: Vec<String>,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Resume after this offset (the `Offset` of the last message you have; 0: the whole retained history).
        /// Exact topics only.
        #[arg(long, value_name = "N")]
        since: Option<u64>,
        /// The epoch of the `--since` offset (the `Epoch` printed with it).
        #[arg(long, value_name = "EPOCH", requires = "since")]
        epoch: Option<Epoch>,
    },
    /// Print the newest retained messages of TOPIC, oldest first, one JSON object per line with its `Offset`.
    History {
        /// The topic (exact).
        topic: String,
        /// How many messages, at most.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_HISTORY_LIMIT)]
        limit: usize,
        /// How long to wait for the answer (e.g. `500ms`, `10s`).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// Scheduled delivery of published messages: msgqueue keeps them until then (the publisher's `--max-delay`
/// bounds how far ahead).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub(crate) struct When {
    /// Deliver this long after publishing (sent as the message's `Delay`).
    #[arg(long, value_name = "DURATION", value_parser = checked_delay, conflicts_with = "deliver_at")]
    pub(crate) delay: Option<String>,
    /// Deliver at this time, RFC 3339 (sent as the message's `DeliverAt`).
    #[arg(long, value_name = "TIME", value_parser = checked_deliver_at)]
    pub(crate) deliver_at: Option<String>,
}

/// A `--delay` the publisher will accept, passed on as written.
fn checked_delay(value: &str) -> Result<String, ScheduleError> {
    Schedule::parse_delay(value).map(|_| value.to_owned())
}

/// A `--deliver-at` the publisher will accept, passed on as written.
fn checked_deliver_at(value: &str) -> Result<String, ScheduleError> {
    Schedule::parse_deliver_at(value).map(|_| value.to_owned())
}

/// How to reach and authenticate to the publisher and the subscriber.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnectionArgs {
    /// The publisher's URL (wss:// only).
    #[arg(
        long,
        global = true,
        env = "WSMQ_PUBLISHER_URL",
        value_name = "URL",
        default_value = "wss://localhost:8081"
    )]
    pub(crate) publisher_url: String,

    /// The subscriber's URL (wss:// only).
    #[arg(
        long,
        global = true,
        env = "WSMQ_SUBSCRIBER_URL",
        value_name = "URL",
        default_value = "wss://localhost:8082"
    )]
    pub(crate) subscriber_url: String,

    /// User name. The default `hello` (password `test`) is the development account of the all-in-one `wsmq`
    /// stack on loopback; real deployments configure their own users.
    #[arg(
        long,
        global = true,
        env = "WSMQ_USER",
        value_name = "USER",
        default_value = "hello"
    )]
    pub(crate) user: String,

    /// Password (prefer the environment variable: command lines are visible to other local users). The default
    /// `test` is the development password of the all-in-one `wsmq` stack on loopback.
    #[arg(
        long,
        global = true,
        env = "WSMQ_PASSWORD",
        value_name = "PASSWORD",
        default_value = "test",
        hide_env_values = true
    )]
    pub(crate) password: Secret,

    /// Data directory: TLS trusts its development CA (`<DATA_DIR>/tls/ca.pem`, created by the `wsmq` stack) and
    /// the interactive history is kept there.
    #[arg(
        long,
        global = true,
        env = "WSMQ_DATA_DIR",
        value_name = "DIR",
        default_value = "./.wsmq"
    )]
    pub(crate) data_dir: PathBuf,

    /// PEM CA certificate(s) the services' certificates must chain to, instead of the system roots and the
    /// development CA.
    #[arg(long, global = true, env = "WSMQ_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,

    /// Do not verify the services' TLS certificates. For testing only: anyone on the network path can then
    /// impersonate a service and read the password.
    #[arg(long, global = true)]
    pub(crate) insecure: bool,
}

/// Both services' dialers, sharing one TLS configuration.
#[derive(Debug, Clone)]
pub(crate) struct Dialers {
    /// Dials the publisher (`/publish`), offering `wsmq.v1` for acks.
    pub(crate) publisher: Dialer,
    /// Dials the subscriber (`/subscribe`), offering `wsmq.v1` for confirmations.
    pub(crate) subscriber: Dialer,
}

impl ConnectionArgs {
    /// Builds the dialers: TLS from --ca / --data-dir / --insecure, credentials from --user / --password.
    ///
    /// Fails on an unusable CA file, nothing to trust, or a URL that is not `wss://host[:port]`.
    pub(crate) fn dialers(&self) -> anyhow::Result<Dialers> {
        let tls = tls::client_config(self.ca.as_deref(), Some(&self.data_dir), self.insecure)
            .context("setting up TLS")?;
        let credentials = Credentials::new(self.user.clone(), self.password.clone());
        let ws_config = Limits::default().websocket_config();
        let dialer = |url: &str, flag: &str| -> anyhow::Result<Dialer> {
            Ok(Dialer::new(url, credentials.clone(), tls.clone())
                .with_context(|| format!("--{flag}"))?
                .with_subprotocol(SUBPROTOCOL_V1)
                .with_ws_config(ws_config))
        };
        Ok(Dialers {
            publisher: dialer(&self.publisher_url, "publisher-url")?,
            subscriber: dialer(&self.subscriber_url, "subscriber-url")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn connection_flags_may_follow_the_subcommand_and_password_stays_hidden() -> anyhow::Result<()>
    {
        let cli = Cli::try_parse_from([
            "clientdemo",
            "publish",
            "--user",
            "bob",
            "--password",
            "hunter2",
            "news",
            "hello",
            "world",
        ])?;
        assert_eq!(cli.connection.user, "bob");
        assert_eq!(cli.connection.password.expose(), "hunter2");
        assert!(matches!(
            &cli.command,
            Some(Command::Publish { topic, message, timeout, when })
                if topic == "news" && message == &["hello", "world"] && *timeout == Duration::from_secs(10)
                    && when.delay.is_none() && when.deliver_at.is_none()
        ));
        assert!(!format!("{cli:?}").contains("hunter2"));
        Ok(())
    }

    #[test]
    fn publish_takes_a_delay_or_a_delivery_time_but_not_both() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["clientdemo", "publish", "--delay", "1h30m", "news", "hi"])?;
        assert!(matches!(
            &cli.command,
            Some(Command::Publish { when, .. }) if when.delay.as_deref() == Some("1h30m")
        ));
        let at = [
            "clientdemo",
            "publish",
            "--deliver-at",
            "2030-01-02T15:04:05Z",
            "news",
            "hi",
        ];
        assert!(Cli::try_parse_from(at).is_ok());
        for bad in [
            &["clientdemo", "publish", "--delay", "soon", "news", "hi"][..],
            &[
                "clientdemo",
                "publish",
                "--deliver-at",
                "tomorrow",
                "news",
                "hi",
            ],
            &[
                "clientdemo",
                "publish",
                "--delay",
                "1s",
                "--deliver-at",
                "2030-01-02T15:04:05Z",
                "news",
                "hi",
            ],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn subscribe_needs_at_least_one_topic() {
        assert!(Cli::try_parse_from(["clientdemo", "subscribe"]).is_err());
    }
}
