//! `wsmq`: the one-command stack. msgqueue, publisher and subscriber run in one process, each on its own TLS
//! listener and usual port, chained over loopback exactly as separate processes would be (real TLS, real auth,
//! real reconnecting links), so what works here works when they are deployed apart.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, FromArgMatches};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wsmq_core::Secret;
use wsmq_core::config::{AccessArgs, LinkArgs, ServerArgs, ServiceArgs};
use wsmq_core::protocol::group::GroupName;
use wsmq_core::supervise::{TaskFailure, catch_panic};

/// Development credentials, as in ws-go. Accepted only while every listener is on loopback.
pub const DEV_USERS: &str = "hello:test";
/// The user the publisher and subscriber authenticate as towards the in-process msgqueue.
const LINK_USER: &str = "wsmq-link";

/// Which services this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// The durable queue (`/pushmsg`, `/popmsg`).
    Msgqueue,
    /// The publishing edge (`/publish`).
    Publisher,
    /// The subscribing edge (`/subscribe`, the browser page at `/`).
    Subscriber,
}

/// The all-in-one configuration. Per-service settings not listed here (limits, queue tuning, link tuning) come
/// from the services' own environment variables, e.g. `WSMQ_FSYNC`, `WSMQ_MAX_MESSAGE_SIZE`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// msgqueue's listener.
    #[arg(long, env = "WSMQ_MSGQUEUE_LISTEN", default_value = "127.0.0.1:8080")]
    pub msgqueue_listen: SocketAddr,
    /// publisher's listener.
    #[arg(long, env = "WSMQ_PUBLISHER_LISTEN", default_value = "127.0.0.1:8081")]
    pub publisher_listen: SocketAddr,
    /// subscriber's listener (also serves the browser page at `/`).
    #[arg(long, env = "WSMQ_SUBSCRIBER_LISTEN", default_value = "127.0.0.1:8082")]
    pub subscriber_listen: SocketAddr,
    /// First of three consecutive admin ports (/healthz, /readyz, /metrics) for msgqueue, publisher and
    /// subscriber; always on loopback.
    #[arg(long, env = "WSMQ_ADMIN_PORT", default_value_t = 9080)]
    pub admin_port: u16,
    /// Data directory, TLS identity, users and browser origins shared by all three listeners. Without users,
    /// the dev credentials `hello:test` are used, which is refused unless every listener is on loopback.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Which services to run (comma-separated). A publisher or subscriber without a local msgqueue reaches one
    /// through the --queue-* link flags.
    #[arg(
        long,
        env = "WSMQ_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_value = "msgqueue,publisher,subscriber"
    )]
    pub services: Vec<Service>,
    /// msgqueue to use when it is not run here.
    #[command(flatten)]
    pub link: LinkArgs,
    /// Topic permissions (--acl-file) and the auth callout (--auth-url) of both edges (publisher and
    /// subscriber); msgqueue is reached only by the edges and keeps its own users. With --auth-url the
    /// development users are not created.
    #[command(flatten)]
    pub access: AccessArgs,
}

/// Why the stack could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Dev credentials on a non-loopback listener would expose a known password to the network.
    #[error(
        "{0} is not a loopback address and no users are configured: the dev credentials hello:test are only \
         allowed on loopback. Set --users-file or --users (WSMQ_USERS_FILE / WSMQ_USERS)"
    )]
    DevUsersOffLoopback(SocketAddr),
    /// A service's settings could not be read from its environment variables.
    #[error("configuring {service}: {reason}")]
    Config {
        /// Which service.
        service: &'static str,
        /// What clap said, without its `error:` prefix and `--help` hint (which name no flag the operator
        /// gave: the value came from the environment).
        reason: String,
    },
    /// msgqueue failed to start or stopped with an error.
    #[error("msgqueue failed")]
    Msgqueue(#[from] wsmq_msgqueue::Error),
    /// publisher failed to start or stopped with an error.
    #[error("publisher failed")]
    Publisher(#[source] wsmq_publisher::Error),
    /// subscriber failed to start or stopped with an error.
    #[error("subscriber failed")]
    Subscriber(#[source] wsmq_subscriber::Error),
    /// A service panicked outside its supervised parts (e.g. in its accept loop).
    #[error(transparent)]
    Panicked(#[from] TaskFailure),
}

/// The stack with every selected listener bound, ready to [`Stack::run`].
pub struct Stack {
    msgqueue: Option<wsmq_msgqueue::Bound>,
    publisher: Option<wsmq_publisher::Bound>,
    subscriber: Option<wsmq_subscriber::Bound>,
    /// Where client credentials come from, for the banner.
    pub credentials: CredentialSource,
    /// The dev CA clients should trust, when dev TLS is in use.
    pub ca_file: Option<PathBuf>,
}

/// Where the clients' credentials come from (never the passwords themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The built-in development users.
    DevUsers,
    /// Configured users (file and/or list).
    Configured,
    /// The application's auth endpoint (`--auth-url`) decides on the edges' clients.
    AuthCallout,
}

/// A service's configuration as its own binary would read it with no flags: defaults, and the service's
/// environment variables for whatever the all-in-one does not set. The all-in-one then sets its part in code.
fn from_env<C: Args + FromArgMatches>(service: &'static str) -> Result<C, Error> {
    let command = C::augment_args(clap::Command::new(service).no_binary_name(true));
    command
        .try_get_matches_from(std::iter::empty::<String>())
        .and_then(|matches| C::from_arg_matches(&matches))
        .map_err(|err| Error::Config {
            service,
            reason: clap_reason(&err),
        })
}

/// The first line of a clap error, which says what is wrong, e.g. `invalid value 'x' for '--prefetch
/// <PREFETCH>': invalid digit found in string` (clap's own cause included, so it is not kept as a source too).
fn clap_reason(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// Resolves the configuration and binds every selected service. The publisher and subscriber get a random
/// per-process credential for their link to the in-process msgqueue.
pub async fn bind(config: Config) -> Result<Stack, Error> {
    let runs = |s| config.services.contains(&s);
    let listeners = [
        (Service::Msgqueue, config.msgqueue_listen),
        (Service::Publisher, config.publisher_listen),
        (Service::Subscriber, config.subscriber_listen),
    ];
    let configured = config.server.users.is_some() || config.server.users_file.is_some();
    // With the auth callout the application decides who connects: a known development password next to it
    // would be a second, unasked-for way in (to msgqueue, which the callout does not cover).
    let dev_users = !configured && config.access.auth_url.is_none();
    if dev_users
        && let Some((_, addr)) = listeners
            .iter()
            .find(|(s, addr)| runs(*s) && !addr.ip().is_loopback())
    {
        return Err(Error::DevUsersOffLoopback(*addr));
    }
    // Users from --users, or the dev users when nothing at all is configured (a users file alone stands alone,
    // and so does the auth callout).
    let server = ServerArgs {
        users: match (&config.server.users, dev_users) {
            (Some(users), _) => Some(users.clone()),
            (None, true) => Some(Secret::new(DEV_USERS)),
            (None, false) => None,
        },
        ..config.server.clone()
    };
    // Port 0 (tests) means an ephemeral port for each admin listener, not ports 1 and 2.
    let admin = |offset: u16| match config.admin_port {
        0 => SocketAddr::from(([127, 0, 0, 1], 0)),
        base => SocketAddr::from(([127, 0, 0, 1], base.saturating_add(offset))),
    };
    let service_args =
        |listen: SocketAddr, admin_listen: SocketAddr, defaults: ServiceArgs| ServiceArgs {
            listen,
            admin_listen,
            server: server.clone(),
            ..defaults
        };

    let link_password = random_password();
    let (msgqueue, local_queue) = if runs(Service::Msgqueue) {
        let defaults: wsmq_msgqueue::Config = from_env("msgqueue")?;
        let mut service = service_args(config.msgqueue_listen, admin(0), defaults.service);
        service.server.users = Some(with_link_user(
            service.server.users.as_ref(),
            &link_password,
        ));
        let bound = wsmq_msgqueue::bind(wsmq_msgqueue::Config {
            service,
            ..defaults
        })
        .await?;
        let port = bound.local_addr().port();
        (Some(bound), Some(port))
    } else {
        (None, None)
    };
    // The edges link to the in-process msgqueue with the generated credential, or else to the operator's.
    let link = |defaults: LinkArgs| match local_queue {
        Some(port) => local_link(port, &link_password, defaults),
        None => config.link.clone(),
    };

    let subscriber = if runs(Service::Subscriber) {
        let defaults: wsmq_subscriber::Config = from_env("subscriber")?;
        let subscriber = wsmq_subscriber::Config {
            service: service_args(config.subscriber_listen, admin(2), defaults.service),
            link: link(defaults.link),
            access: config.access.clone(),
            // Alone with its msgqueue, the subscriber reads in the default group, which holds what was pushed
            // before it connected; next to a remote msgqueue it is one instance among others.
            group: defaults
                .group
                .clone()
                .or_else(|| local_queue.is_some().then(GroupName::default_group)),
            ..defaults
        };
        Some(
            wsmq_subscriber::bind(subscriber)
                .await
                .map_err(Error::Subscriber)?,
        )
    } else {
        None
    };
    let publisher = if runs(Service::Publisher) {
        let defaults: wsmq_publisher::Config = from_env("publisher")?;
        let mut service = service_args(config.publisher_listen, admin(1), defaults.service);
        // The browser page is served by the subscriber and publishes here: allow the subscriber's origins.
        if let Some(port) = subscriber.as_ref().map(|s| s.local_addr().port()) {
            service.server.allowed_origins.extend([
                format!("https://localhost:{port}"),
                format!("https://127.0.0.1:{port}"),
            ]);
        }
        let publisher = wsmq_publisher::Config {
            service,
            link: link(defaults.link),
            access: config.access.clone(),
            ..defaults
        };
        Some(
            wsmq_publisher::bind(publisher)
                .await
                .map_err(Error::Publisher)?,
        )
    } else {
        None
    };
    let ca_file = config
        .server
        .tls_cert
        .is_none()
        .then(|| config.server.data_dir.join("tls").join("ca.pem"));
    Ok(Stack {
        msgqueue,
        publisher,
        subscriber,
        credentials: if config.access.auth_url.is_some()
            && (runs(Service::Publisher) || runs(Service::Subscriber))
        {
            CredentialSource::AuthCallout
        } else if dev_users {
            CredentialSource::DevUsers
        } else {
            CredentialSource::Configured
        },
        ca_file,
    })
}

/// msgqueue's users: the clients' `users` (if any) plus the edges' link user with `password`.
fn with_link_user(users: Option<&Secret>, password: &Secret) -> Secret {
    let link_user = format!("{LINK_USER}:{}", password.expose());
    Secret::new(match users {
        Some(users) => format!("{},{link_user}", users.expose()),
        None => link_user,
    })
}

/// An edge's link to the in-process msgqueue on `port` with the generated `password`; the rest (CA, backoff) as
/// the edge's own environment says.
fn local_link(port: u16, password: &Secret, defaults: LinkArgs) -> LinkArgs {
    LinkArgs {
        queue_url: vec![format!("wss://localhost:{port}")],
        queue_user: Some(LINK_USER.to_owned()),
        queue_password: Some(password.clone()),
        ..defaults
    }
}

/// 24 random bytes, base64url: the link credential lives only in this process's memory.
fn random_password() -> Secret {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Stack {
    /// msgqueue's bound address, if it runs here.
    pub fn msgqueue_addr(&self) -> Option<SocketAddr> {
        self.msgqueue.as_ref().map(wsmq_msgqueue::Bound::local_addr)
    }

    /// publisher's bound address, if it runs here.
    pub fn publisher_addr(&self) -> Option<SocketAddr> {
        self.publisher
            .as_ref()
            .map(wsmq_publisher::Bound::local_addr)
    }

    /// subscriber's bound address, if it runs here.
    pub fn subscriber_addr(&self) -> Option<SocketAddr> {
        self.subscriber
            .as_ref()
            .map(wsmq_subscriber::Bound::local_addr)
    }

    /// The admin listener (`/healthz`, `/readyz`, `/metrics`) of `service`, if it runs here.
    pub fn admin_addr(&self, service: Service) -> Option<SocketAddr> {
        match service {
            Service::Msgqueue => self.msgqueue.as_ref().map(wsmq_msgqueue::Bound::admin_addr),
            Service::Publisher => self
                .publisher
                .as_ref()
                .map(wsmq_publisher::Bound::admin_addr),
            Service::Subscriber => self
                .subscriber
                .as_ref()
                .map(wsmq_subscriber::Bound::admin_addr),
        }
    }

    /// Runs every service until `shutdown` is cancelled. The edges stop first (their clients are closed with
    /// 1001 and their links finish), then msgqueue drains and fsyncs, so nothing acked is lost on Ctrl-C. If one
    /// service fails, the others are shut down too and the first error is returned.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let edges_shutdown = shutdown.child_token();
        let queue_shutdown = CancellationToken::new();
        let mut edges: JoinSet<Result<(), Error>> = JoinSet::new();
        if let Some(p) = self.publisher {
            let token = edges_shutdown.clone();
            edges.spawn(async move {
                catch_panic("publisher", p.run(token))
                    .await?
                    .map_err(Error::Publisher)
            });
        }
        if let Some(s) = self.subscriber {
            let token = edges_shutdown.clone();
            edges.spawn(async move {
                catch_panic("subscriber", s.run(token))
                    .await?
                    .map_err(Error::Subscriber)
            });
        }
        let queue = self.msgqueue.map(|q| {
            let token = queue_shutdown.clone();
            let edges_stop = edges_shutdown.clone();
            tokio::spawn(async move {
                let result = catch_panic("msgqueue", q.run(token)).await;
                // msgqueue ending on its own (a failed part) ends the stack: the edges have nothing to link to.
                edges_stop.cancel();
                result?.map_err(Error::from)
            })
        });
        if edges.is_empty() {
            edges_shutdown.cancelled().await;
        }
        let mut first_error = None;
        while let Some(joined) = edges.join_next().await {
            // Any edge ending (error or not) ends the stack.
            edges_shutdown.cancel();
            if let Ok(Err(err)) = joined
                && first_error.is_none()
            {
                first_error = Some(err);
            }
        }
        queue_shutdown.cancel();
        if let Some(queue) = queue
            && let Ok(Err(err)) = queue.await
            && first_error.is_none()
        {
            first_error = Some(err);
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_password_that_starts_with_a_dash_is_taken_as_the_password() {
        let password = Secret::new("-rXc_Q");
        let defaults: wsmq_subscriber::Config = from_env("subscriber").unwrap();
        let link = local_link(8080, &password, defaults.link);
        assert_eq!(
            link.queue_password.as_ref().map(Secret::expose),
            Some("-rXc_Q")
        );
        assert_eq!(link.queue_user.as_deref(), Some(LINK_USER));
        assert_eq!(link.queue_url, ["wss://localhost:8080"]);
    }

    #[test]
    fn a_bad_environment_value_is_reported_once_naming_the_flag() {
        let command = wsmq_subscriber::Config::augment_args(
            clap::Command::new("subscriber").no_binary_name(true),
        );
        let err = command
            .try_get_matches_from(["--prefetch", "x"])
            .err()
            .unwrap();
        assert_eq!(
            clap_reason(&err),
            "invalid value 'x' for '--prefetch <PREFETCH>': invalid digit found in string"
        );
    }

    /// The default of flag `id` in configuration `C`, as `--help` shows it.
    fn default_of<C: Args>(id: &str) -> Option<String> {
        let command = C::augment_args(clap::Command::new("service"));
        let arg = command.get_arguments().find(|arg| arg.get_id() == id)?;
        let value = arg.get_default_values().first()?;
        Some(value.to_string_lossy().into_owned())
    }

    #[test]
    fn every_service_listens_on_its_usual_ports_by_default() {
        let defaults = [
            (
                default_of::<wsmq_msgqueue::Config>("listen"),
                default_of::<wsmq_msgqueue::Config>("admin_listen"),
            ),
            (
                default_of::<wsmq_publisher::Config>("listen"),
                default_of::<wsmq_publisher::Config>("admin_listen"),
            ),
            (
                default_of::<wsmq_subscriber::Config>("listen"),
                default_of::<wsmq_subscriber::Config>("admin_listen"),
            ),
        ];
        let expected =
            |listen: &str, admin: &str| (Some(listen.to_owned()), Some(admin.to_owned()));
        assert_eq!(
            defaults,
            [
                expected("0.0.0.0:8080", "127.0.0.1:9080"),
                expected("0.0.0.0:8081", "127.0.0.1:9081"),
                expected("0.0.0.0:8082", "127.0.0.1:9082"),
            ]
        );
    }

    #[test]
    fn msgqueue_accepts_the_clients_and_the_link_user() {
        let password = Secret::new("pw");
        let users = with_link_user(Some(&Secret::new("hello:test")), &password);
        assert_eq!(users.expose(), format!("hello:test,{LINK_USER}:pw"));
        let alone = with_link_user(None, &password);
        assert_eq!(alone.expose(), format!("{LINK_USER}:pw"));
    }
}
