//! Command-line flags shared by every service, so an operator learns them once.
//!
//! Each flag has an environment fallback (`WSMQ_*`). Every service `#[command(flatten)]`s [`ServiceArgs`] into its
//! configuration (and [`LinkArgs`] if it links to msgqueue) and adds only its own flags. Fields are public so the
//! all-in-one binary and tests can build them in code. Secret flags hide their environment value in `--help`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Secret;
use crate::auth::{AuthError, Authenticator, Credentials};
use crate::backoff::BackoffArgs;
use crate::callout;
use crate::dial::{DialError, Dialer, Dialers};
use crate::limits::{Limits, parse_duration};
use crate::tls::{self, TlsError};

/// What every service is started with: its two addresses, its listener's state, identity and users, and its
/// limits. The addresses have no default here because each service has its own usual ports; a service sets them
/// with `#[command(mut_arg("listen", …), mut_arg("admin_listen", …))]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address of the TLS WebSocket listener.
    #[arg(long, env = "WSMQ_LISTEN")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin listener (`/healthz`, `/readyz`, `/metrics`). Keep it on loopback or a
    /// private network: it has no authentication.
    #[arg(long, env = "WSMQ_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,

    /// Data directory, TLS identity, users and allowed origins of the listener.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Message sizes, timeouts and connection caps of the listener.
    #[command(flatten)]
    pub limits: Limits,
}

/// Settings of a service's own listener: where its state lives, its TLS identity and who may connect.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Directory for the service's state. Without --tls-cert/--tls-key a development CA and server certificate
    /// are created in <DATA_DIR>/tls/ (clients verify with <DATA_DIR>/tls/ca.pem); services sharing the
    /// directory trust each other automatically.
    #[arg(long, env = "WSMQ_DATA_DIR", default_value = "./.wsmq")]
    pub data_dir: PathBuf,

    /// PEM certificate chain (leaf first) served to clients. Requires --tls-key.
    #[arg(long, env = "WSMQ_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert. Requires --tls-cert.
    #[arg(long, env = "WSMQ_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// htpasswd-format users file: one `user:bcrypt-hash` per line (`htpasswd -B`), `user:password` in
    /// plaintext for development only, `#` comments. Combined with --users.
    #[arg(long, env = "WSMQ_USERS_FILE", value_name = "FILE")]
    pub users_file: Option<PathBuf>,

    /// Comma-separated `user:password` list of accepted clients (plaintext, so passwords cannot contain
    /// `,`; prefer --users-file in production). At least one user must be configured across both flags.
    #[arg(
        long,
        env = "WSMQ_USERS",
        value_name = "USER:PASSWORD,...",
        hide_env_values = true
    )]
    pub users: Option<Secret>,

    /// Browser origins allowed to open WebSockets here (comma-separated, e.g. `https://app.example.com`).
    /// Default: this listener's own origins (`https://localhost:PORT`, `https://127.0.0.1:PORT`). Guards against
    /// cross-site WebSocket hijacking; clients that send no Origin header (non-browsers) are not affected.
    #[arg(
        long,
        env = "WSMQ_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN,..."
    )]
    pub allowed_origins: Vec<String>,
}

impl ServerArgs {
    /// The listener's TLS configuration: --tls-cert/--tls-key, or the development PKI in --data-dir.
    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        tls::server_config(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            &self.data_dir,
        )
    }

    /// The listener's authenticator, from --users-file and/or --users; fails if neither defines a user.
    pub fn authenticator(&self) -> Result<Authenticator, AuthError> {
        Authenticator::load(self.users_file.as_deref(), self.users.as_ref())
    }
}

/// Who may do what on the client-facing edges (publisher and subscriber): topic permissions and the auth callout.
/// One struct flattened into both, so the all-in-one passes one value to both edges.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessArgs {
    /// TOML file of publish and subscribe permissions per user and group (docs/ACL.md). Reloaded on SIGHUP and
    /// when the file changes; an invalid file at start-up is an error, later it leaves the previous one in
    /// force. Without it every authenticated client may publish and subscribe to everything.
    #[arg(long, env = "WSMQ_ACL_FILE", value_name = "FILE")]
    pub acl_file: Option<PathBuf>,

    /// The application's auth endpoint (`https://…`): every new client connection's credentials (Basic or
    /// Bearer) are POSTed to it instead of being checked against --users/--users-file, and its answer may carry
    /// the connection's permissions (they replace the ACL file's). Needed for bearer tokens.
    #[arg(long, env = "WSMQ_AUTH_URL", value_name = "URL")]
    pub auth_url: Option<String>,

    /// PEM CA certificate(s) the auth endpoint's certificate must chain to. Default: the system roots.
    #[arg(long, env = "WSMQ_AUTH_CA", value_name = "FILE")]
    pub auth_ca: Option<PathBuf>,

    /// Time allowed for one auth callout, connect to last byte; without an answer in time the connection gets
    /// 503.
    #[arg(long, env = "WSMQ_AUTH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub auth_timeout: Duration,
}

impl Default for AccessArgs {
    /// No ACL file and no callout (everything allowed to authenticated users, as before), with the default
    /// callout timeout.
    fn default() -> Self {
        Self {
            acl_file: None,
            auth_url: None,
            auth_ca: None,
            auth_timeout: callout::DEFAULT_TIMEOUT,
        }
    }
}

impl AccessArgs {
    /// The auth callout's settings, if --auth-url is set.
    pub fn callout(&self) -> Option<callout::CalloutConfig> {
        self.auth_url.as_ref().map(|url| callout::CalloutConfig {
            ca: self.auth_ca.clone(),
            timeout: self.auth_timeout,
            ..callout::CalloutConfig::new(url)
        })
    }
}

/// Settings of a service's link to msgqueue: where it is and how to authenticate and verify it.
#[derive(Debug, Clone, clap::Args)]
pub struct LinkArgs {
    /// msgqueue URL (wss:// only). Several msgqueue instances sharing one Redis: list them all, comma-separated
    /// or by repeating the flag; the link moves to the next URL when one fails and waits a backoff delay only
    /// once all of them failed.
    #[arg(
        long,
        env = "WSMQ_QUEUE_URL",
        value_name = "URL,...",
        value_delimiter = ',',
        default_value = "wss://localhost:8080"
    )]
    pub queue_url: Vec<String>,

    /// User name presented to msgqueue.
    #[arg(long, env = "WSMQ_QUEUE_USER", value_name = "USER")]
    pub queue_user: Option<String>,

    /// Password presented to msgqueue (prefer the environment variable: command lines are visible to other
    /// local users).
    #[arg(
        long,
        env = "WSMQ_QUEUE_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub queue_password: Option<Secret>,

    /// PEM CA certificate(s) that msgqueue's certificate must chain to. Default: the system roots plus
    /// <DATA_DIR>/tls/ca.pem when it exists.
    #[arg(long, env = "WSMQ_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Do not verify msgqueue's TLS certificate. For testing only: anyone on the network path can impersonate
    /// msgqueue and read the credentials.
    #[arg(long, env = "WSMQ_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure: bool,

    /// How fast the link reconnects after losing msgqueue.
    #[command(flatten)]
    pub backoff: BackoffArgs,
}

/// Why a link to msgqueue could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum LinkConfigError {
    /// No user name to present.
    #[error("--queue-user (WSMQ_QUEUE_USER) is required to connect to {url}")]
    MissingUser {
        /// The msgqueue URLs, comma-separated.
        url: String,
    },
    /// No password to present.
    #[error("--queue-password (WSMQ_QUEUE_PASSWORD) is required to connect to {url}")]
    MissingPassword {
        /// The msgqueue URLs, comma-separated.
        url: String,
    },
    /// No URL at all, or an empty entry in the list (`a,,b`, a trailing comma).
    #[error(
        "--queue-url (WSMQ_QUEUE_URL) has an empty entry in {list:?}; separate URLs with single commas"
    )]
    EmptyUrl {
        /// The list as given, comma-separated.
        list: String,
    },
    /// The client TLS configuration failed (unreadable --ca, nothing trusted).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A URL of the list is not usable; the error names it. (Not a `source`: the message holds it already.)
    #[error("--queue-url (WSMQ_QUEUE_URL): {0}")]
    Url(DialError),
}

impl LinkArgs {
    /// A [`Dialer`] per msgqueue URL, in the order given: credentials from --queue-user/--queue-password, trust
    /// from --ca or the system roots plus the development CA in `data_dir`, offering `subprotocol` if given, with
    /// `ws_config` limits. Every URL is checked here, so a bad one fails at start, named in the error.
    ///
    /// Call it after [`ServerArgs::tls_config`]: in development mode that creates the CA in `data_dir` first, so
    /// a service started before msgqueue (sharing the directory) already trusts the CA msgqueue will use.
    pub fn dialers(
        &self,
        data_dir: &Path,
        subprotocol: Option<&str>,
        ws_config: WebSocketConfig,
    ) -> Result<Dialers, LinkConfigError> {
        let list = || self.queue_url.join(",");
        if self.queue_url.iter().any(|url| url.trim().is_empty()) {
            return Err(LinkConfigError::EmptyUrl { list: list() });
        }
        let user = self
            .queue_user
            .clone()
            .filter(|user| !user.is_empty())
            .ok_or_else(|| LinkConfigError::MissingUser { url: list() })?;
        let password = self
            .queue_password
            .clone()
            .filter(|password| !password.expose().is_empty())
            .ok_or_else(|| LinkConfigError::MissingPassword { url: list() })?;
        let credentials = Credentials::new(user, password);
        let tls = tls::client_config(self.ca.as_deref(), Some(data_dir), self.insecure)?;
        let dialer = |url: &String| -> Result<Dialer, LinkConfigError> {
            let dialer = Dialer::new(url.trim(), credentials.clone(), tls.clone())
                .map_err(LinkConfigError::Url)?
                .with_ws_config(ws_config);
            Ok(match subprotocol {
                Some(subprotocol) => dialer.with_subprotocol(subprotocol),
                None => dialer,
            })
        };
        let mut urls = self.queue_url.iter();
        let first = urls
            .next()
            .ok_or_else(|| LinkConfigError::EmptyUrl { list: list() })?;
        Ok(Dialers::new(
            dialer(first)?,
            urls.map(dialer).collect::<Result<Vec<_>, _>>()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        link: LinkArgs,
        #[command(flatten)]
        access: AccessArgs,
    }

    #[test]
    fn flags_are_parsed_and_secrets_hidden_from_debug() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from([
            "svc",
            "--data-dir",
            "/var/lib/wsmq",
            "--users",
            "alice:hunter2",
            "--queue-user",
            "svc",
            "--queue-password",
            "s3cret",
            "--insecure",
        ])?;
        assert_eq!(cli.server.data_dir, PathBuf::from("/var/lib/wsmq"));
        assert_eq!(
            cli.server.users.as_ref().map(Secret::expose),
            Some("alice:hunter2")
        );
        assert_eq!(cli.link.queue_url, ["wss://localhost:8080"]);
        assert_eq!(cli.access.auth_timeout, crate::callout::DEFAULT_TIMEOUT);
        assert!(cli.access.callout().is_none() && cli.access.acl_file.is_none());
        assert!(cli.link.insecure);
        let shown = format!("{cli:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        Ok(())
    }

    #[test]
    fn help_names_every_environment_variable() {
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "WSMQ_DATA_DIR",
            "WSMQ_TLS_CERT",
            "WSMQ_TLS_KEY",
            "WSMQ_USERS_FILE",
            "WSMQ_USERS",
            "WSMQ_QUEUE_URL",
            "WSMQ_QUEUE_USER",
            "WSMQ_QUEUE_PASSWORD",
            "WSMQ_CA",
            "WSMQ_INSECURE",
            "WSMQ_LINK_BACKOFF_INITIAL",
            "WSMQ_LINK_BACKOFF_MAX",
            "WSMQ_ACL_FILE",
            "WSMQ_AUTH_URL",
            "WSMQ_AUTH_CA",
            "WSMQ_AUTH_TIMEOUT",
        ] {
            assert!(help.contains(var), "--help does not mention {var}");
        }
    }

    #[test]
    fn dialer_requires_user_and_password() {
        let mut link = LinkArgs {
            queue_url: vec!["wss://localhost:8080".to_owned()],
            queue_user: None,
            queue_password: Some(Secret::new("pw")),
            ca: None,
            insecure: true,
            backoff: BackoffArgs::default(),
        };
        let data_dir = Path::new("unused");
        let missing_user = link.dialers(data_dir, None, WebSocketConfig::default());
        assert!(
            matches!(missing_user, Err(LinkConfigError::MissingUser { .. })),
            "{missing_user:?}"
        );
        link.queue_user = Some("svc".to_owned());
        link.queue_password = None;
        let missing_password = link.dialers(data_dir, None, WebSocketConfig::default());
        assert!(
            matches!(
                missing_password,
                Err(LinkConfigError::MissingPassword { .. })
            ),
            "{missing_password:?}"
        );
        link.queue_password = Some(Secret::new("pw"));
        let dialers = link.dialers(data_dir, Some("wsmq.v1"), WebSocketConfig::default());
        assert_eq!(
            dialers.map(|d| d.to_string()).ok().as_deref(),
            Some("wss://localhost:8080")
        );
        link.queue_url = vec!["ws://localhost:8080".to_owned()];
        let plain = link.dialers(data_dir, None, WebSocketConfig::default());
        assert!(
            matches!(
                plain,
                Err(LinkConfigError::Url(DialError::InvalidUrl { .. }))
            ),
            "{plain:?}"
        );
    }

    fn link_flags(args: &[&str]) -> Result<LinkArgs, clap::Error> {
        let argv = ["svc", "--queue-user", "svc", "--queue-password", "pw"];
        Cli::try_parse_from(argv.iter().chain(args)).map(|cli| cli.link)
    }

    #[test]
    fn queue_urls_are_taken_comma_separated_and_from_repeated_flags() -> Result<(), clap::Error> {
        let listed = link_flags(&["--queue-url", "wss://mq-1:8080,wss://mq-2:8080"])?;
        assert_eq!(listed.queue_url, ["wss://mq-1:8080", "wss://mq-2:8080"]);
        let repeated = link_flags(&[
            "--queue-url",
            "wss://mq-1:8080",
            "--queue-url",
            "wss://mq-2:8080,wss://mq-3:8080",
        ])?;
        assert_eq!(
            repeated.queue_url,
            ["wss://mq-1:8080", "wss://mq-2:8080", "wss://mq-3:8080"]
        );
        let dialers = repeated.dialers(Path::new("unused"), None, WebSocketConfig::default());
        assert_eq!(
            dialers.map(|d| d.to_string()).ok().as_deref(),
            Some("wss://mq-1:8080,wss://mq-2:8080,wss://mq-3:8080"),
            "every URL becomes a dialer, in the order given"
        );
        Ok(())
    }

    #[test]
    fn a_bad_url_in_the_list_fails_naming_it() -> Result<(), clap::Error> {
        let mut link = link_flags(&["--queue-url", "wss://mq-1:8080,ws://mq-2:8080"])?;
        link.insecure = true;
        let bad = link.dialers(Path::new("unused"), None, WebSocketConfig::default());
        let message = bad.as_ref().map(|_| ()).map_err(ToString::to_string);
        assert!(
            matches!(bad, Err(LinkConfigError::Url(DialError::InvalidUrl { ref url, .. })) if url == "ws://mq-2:8080"),
            "{message:?}"
        );
        let message = message.err().unwrap_or_default();
        assert!(
            message.contains("--queue-url") && message.contains("\"ws://mq-2:8080\""),
            "{message}"
        );

        let gap = link_flags(&["--queue-url", "wss://mq-1:8080,,wss://mq-2:8080"])?;
        let empty = gap.dialers(Path::new("unused"), None, WebSocketConfig::default());
        assert!(
            matches!(empty, Err(LinkConfigError::EmptyUrl { .. })),
            "{empty:?}"
        );
        Ok(())
    }
}
