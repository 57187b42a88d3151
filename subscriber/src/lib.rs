//! wsmq subscriber: serves `/subscribe` over TLS WebSockets and routes messages popped from msgqueue to the
//! clients subscribed to their topic.
//!
//! [`bind`] checks the configuration and binds the listeners (tests pass port 0 and read the bound
//! addresses); [`Bound::run`] then serves clients, keeps the link to msgqueue up and serves the admin
//! endpoints until shutdown. The modules: [`router`] (topic index and per-client queues), `session` (one client
//! connection), `link` (reliable consumer link to msgqueue), [`metrics`].

pub mod metrics;
pub mod router;

mod link;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wsmq_core::access::AclWatcher;
use wsmq_core::admin::Readiness;
use wsmq_core::config::{AccessArgs, LinkArgs, ServiceArgs};
use wsmq_core::limits::parse_duration;
use wsmq_core::protocol::group::{GroupName, PopQuery, StartAt};
use wsmq_core::protocol::{SUBPROTOCOL_V1, SUBSCRIBE_PATH};
use wsmq_core::server::{Accepted, Route};
use wsmq_core::service::{self, Service, Setup};
use wsmq_core::supervise::Supervisor;

pub use metrics::SubscriberMetrics;
pub use router::{Router, SlowClientPolicy};

use link::PopLink;
use session::ConnectionContext;

/// The browser client served at `/`: subscribe and publish from a web page. Self-contained (inline JS and CSS, no
/// build step, no CDN); it authenticates on its WebSockets with a `wsmq.auth.*` subprotocol because browsers cannot
/// set an Authorization header there.
const PAGE: &[u8] = include_bytes!("page/index.html");
/// Smallest message limit of the link to msgqueue, which batches many deliveries into one frame; the link
/// allows at least this, or one maximum-size delivery, whichever is larger.
pub const LINK_MIN_FRAME: usize = 1024 * 1024;
/// Initial read buffer of the link, and the most it reads per call: it is one busy connection, unlike the many
/// mostly idle client ones. One TLS record's plaintext (16 KiB): tungstenite zero-fills the whole read size before
/// every read, so 64 KiB cost a 64 KiB `memset` for each small frame read at low rates (3.7 % of the process's
/// instructions at 3,000 msg/s), while TLS hands over at most a record or two per read anyway.
const LINK_READ_BUFFER: usize = 16 * 1024;
/// Most read buffer of a client connection (`--ws-read-buffer` may only lower it): clients of `/subscribe` send
/// nothing but short commands, and the buffer grows for a longer message anyway, so each of the many mostly idle
/// connections keeps only this much.
const CLIENT_READ_BUFFER: usize = 128;

/// The subscriber's configuration: flags with `WSMQ_*` environment fallbacks. Public fields so the
/// all-in-one binary and tests can build it in code.
#[derive(clap::Args, Clone, Debug)]
#[command(
    mut_arg("listen", |arg| arg.default_value("0.0.0.0:8082").required(false)),
    mut_arg("admin_listen", |arg| arg.default_value("127.0.0.1:9082").required(false))
)]
pub struct Config {
    /// Listeners (`/subscribe` and the browser page; the admin one), TLS identity, users, data directory and
    /// limits.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// Where msgqueue is and how to authenticate to it.
    #[command(flatten)]
    pub link: LinkArgs,

    /// Topic permissions (--acl-file) and the auth callout (--auth-url).
    #[command(flatten)]
    pub access: AccessArgs,

    /// Topics one client connection may subscribe to at once; wsmq.v1 clients get an error beyond it.
    #[arg(long, env = "WSMQ_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,

    /// Messages queued per client. From half of it the client is behind; a full queue closes it (1013) unless most
    /// clients are behind, in which case deliveries wait in msgqueue. Keep it at least twice --prefetch so a burst
    /// never overflows a client that keeps up.
    #[arg(long, env = "WSMQ_CLIENT_QUEUE", default_value_t = 4096)]
    pub client_queue: usize,

    /// What to do with a client that falls behind: close it with 1013 when its queue fills while most clients keep
    /// up (deliveries wait for it only while most clients are behind), or drop its oldest queued message (never
    /// holding anyone back).
    #[arg(long, env = "WSMQ_SLOW_CLIENT", value_enum, default_value_t = SlowClientPolicy::Close)]
    pub slow_client: SlowClientPolicy,

    /// The longest deliveries wait in msgqueue for clients that are behind, and the longest a client that is behind
    /// may write nothing, before it is closed with 1013.
    #[arg(long, env = "WSMQ_SLOW_CLIENT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub slow_client_timeout: Duration,

    /// Deliveries msgqueue may send ahead of the subscriber's acks (the credit window).
    #[arg(long, env = "WSMQ_PREFETCH", default_value_t = 1024)]
    pub prefetch: u32,

    /// Consumer group this instance reads msgqueue in. Every group gets every message, so instances in groups of
    /// their own each route everything to their clients (instances sharing a group would split the stream). The
    /// default, `<host name>-<listen port>`, differs between instances on one host (ports) and between containers
    /// (host names) and stays the same across restarts, so a restarted instance resumes after its last ack.
    /// 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    #[arg(long, env = "WSMQ_GROUP")]
    pub group: Option<GroupName>,
}

/// The group of an instance started without `--group`: `<host name>-<listen port>`, made a valid name.
pub fn instance_group(listen: SocketAddr) -> GroupName {
    let host = rustix::system::uname();
    let host = host.nodename().to_string_lossy();
    GroupName::sanitized(&format!("{host}-{}", listen.port()))
}

/// Why the subscriber could not start or stopped serving.
pub type Error = service::Error;

/// A subscriber whose configuration was checked and whose listeners are bound, ready to [`Bound::run`].
#[derive(Debug)]
pub struct Bound(service::Bound<Subscriber>);

/// The subscriber's own parts in the service skeleton: the link that pops from msgqueue into the router.
#[derive(Debug)]
struct Subscriber {
    link: PopLink,
    context: Arc<ConnectionContext>,
    metrics: SubscriberMetrics,
    acl_watcher: Option<AclWatcher>,
}

/// Checks `config` (TLS, users, link credentials) and binds the client and admin listeners.
///
/// Fails on an unusable configuration or an address that cannot be bound, before anything is served.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let args = &config.service;
    let (mut setup, access, acl_watcher) = Setup::edge(Subscriber::NAME, args, &config.access)?;
    let link_frame = args.limits.queue().max_frame.max(LINK_MIN_FRAME);
    let link_ws = args
        .limits
        .websocket_config()
        .read_buffer_size(LINK_READ_BUFFER)
        .max_message_size(Some(link_frame))
        .max_frame_size(Some(link_frame));
    let dialers = config
        .link
        .dialers(&args.server.data_dir, Some(SUBPROTOCOL_V1), link_ws)?;

    let metrics = SubscriberMetrics::register(&mut setup.registry);
    let router = Router::new(config.client_queue, config.slow_client, metrics.clone());
    let routes = vec![
        Route::WebSocket {
            path: SUBSCRIBE_PATH,
            subprotocols: &[SUBPROTOCOL_V1],
        },
        Route::Page {
            path: "/",
            content_type: "text/html; charset=utf-8",
            body: PAGE,
        },
    ];
    let group = config
        .group
        .clone()
        .unwrap_or_else(|| instance_group(args.listen));
    tracing::info!(%group, "consuming in consumer group");
    let pop = PopQuery {
        group: Some(group),
        start: StartAt::Tail,
    };
    let history = Arc::new(wsmq_core::history_client::HistoryClient::new(
        dialers.clone(),
        wsmq_core::history_client::HISTORY_TIMEOUT,
    ));
    let link = PopLink {
        dialers,
        path: pop.path(),
        router: router.clone(),
        prefetch: config.prefetch.max(1),
        slow_client_timeout: config.slow_client_timeout,
        max_payload: args.limits.queue().max_payload,
        ping_interval: args.limits.ping_interval,
        idle_timeout: args.limits.idle_timeout,
        ready: setup.readiness.condition("queue link"),
        backoff: config.link.backoff.clone(),
    };
    let context = ConnectionContext {
        router,
        limits: args.limits.clone(),
        max_subscriptions: config.max_subscriptions,
        access,
        history,
    };
    let subscriber = Subscriber {
        link,
        context: Arc::new(context),
        metrics,
        acl_watcher,
    };
    let mut limits = args.limits.clone();
    limits.ws_read_buffer = limits.ws_read_buffer.min(CLIENT_READ_BUFFER);
    Ok(Bound(setup.bind(args, limits, routes, subscriber).await?))
}

impl Bound {
    /// The client listener's address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.0.admin_addr()
    }

    /// The subscriber's metrics, for tests and embedding binaries (also exported on `/metrics`).
    pub fn metrics(&self) -> SubscriberMetrics {
        self.0.service().metrics.clone()
    }

    /// Whether the subscriber is ready (the link to msgqueue is up), as `/readyz` reports it.
    pub fn readiness(&self) -> Readiness {
        self.0.readiness()
    }

    /// Serves until `shutdown` is cancelled: clients on `/subscribe`, the link to msgqueue and the admin
    /// endpoints. Open client connections are closed with 1001 and drained within the drain timeout.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.0.run(shutdown).await
    }
}

impl Service for Subscriber {
    const NAME: &'static str = "subscriber";
    const ADMIN_TASK: &'static str = "subscriber admin listener";
    type Context = Arc<ConnectionContext>;

    /// Runs the link until the service stops; it is stopped with the service (what it has not acked,
    /// msgqueue redelivers).
    fn start(
        self,
        supervisor: &Supervisor,
    ) -> (Self::Context, impl Future<Output = ()> + Send + 'static) {
        if let Some(watcher) = self.acl_watcher {
            watcher.spawn(supervisor);
        }
        let link = supervisor.spawn(
            "subscriber link",
            self.link.run(supervisor.token().child_token()),
        );
        let stop = async move {
            if let Err(err) = link.await {
                tracing::warn!(%err, "link task failed");
            }
        };
        (self.context, stop)
    }

    fn handle(
        context: Self::Context,
        accepted: Accepted,
    ) -> impl Future<Output = ()> + Send + 'static {
        session::serve_client(accepted, context)
    }
}

/// Binds and runs the subscriber until `shutdown` is cancelled; see [`bind`] and [`Bound::run`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_without_a_group_are_named_after_the_host_and_the_listen_port() {
        let a = instance_group("0.0.0.0:8082".parse().unwrap());
        let b = instance_group("0.0.0.0:8083".parse().unwrap());
        assert!(a.as_str().ends_with("-8082"), "{a}");
        assert_ne!(a, b, "instances on one host differ by port");
        assert_eq!(
            a,
            instance_group("127.0.0.1:8082".parse().unwrap()),
            "stable: the same port gives the same name whatever the address"
        );
        assert!(a.as_str().parse::<GroupName>().is_ok());
    }
}
