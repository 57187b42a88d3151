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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsmq_core::admin::{Readiness, serve_admin};
use wsmq_core::config::{LinkArgs, ServerArgs};
use wsmq_core::limits::{Limits, parse_duration};
use wsmq_core::metrics::ListenerMetrics;
use wsmq_core::protocol::{SUBPROTOCOL_V1, SUBSCRIBE_PATH};
use wsmq_core::server::{Route, ServerConfig, serve};
use wsmq_core::service;
use wsmq_core::supervise::Supervisor;

pub use metrics::SubscriberMetrics;
pub use router::{Router, SlowClientPolicy};

use link::PopLink;
use session::SessionSettings;

/// The browser client served at `/`: subscribe and publish from a web page. Self-contained (inline JS and CSS, no
/// build step, no CDN); it authenticates on its WebSockets with a `wsmq.auth.*` subprotocol because browsers cannot
/// set an Authorization header there.
const PAGE: &[u8] = include_bytes!("page/index.html");
/// Smallest message limit of the link to msgqueue, which batches many deliveries into one frame; the link
/// allows at least this, or one maximum-size delivery, whichever is larger.
pub const LINK_MIN_FRAME: usize = 1024 * 1024;
/// Initial read buffer of the link: it is one busy connection, unlike the many mostly idle client ones.
const LINK_READ_BUFFER: usize = 64 * 1024;

/// The subscriber's configuration: flags with `WSMQ_*` environment fallbacks. Public fields so the
/// all-in-one binary and tests can build it in code.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of the client WebSocket listener (wss, path /subscribe).
    #[arg(long, env = "WSMQ_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin listener (/healthz, /readyz, /metrics); loopback keeps it private.
    #[arg(long, env = "WSMQ_ADMIN_LISTEN", default_value = "127.0.0.1:9082")]
    pub admin_listen: SocketAddr,

    /// TLS identity, users and data directory of the listener.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Where msgqueue is and how to authenticate to it.
    #[command(flatten)]
    pub link: LinkArgs,

    /// Message sizes, timeouts and connection caps of the listener.
    #[command(flatten)]
    pub limits: Limits,

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
}

/// Why the subscriber could not start or stopped serving.
pub use wsmq_core::service::StartError as Error;

/// A subscriber whose configuration was checked and whose listeners are bound, ready to [`Bound::run`].
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    admin: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    server: Arc<ServerConfig>,
    link: PopLink,
    settings: Arc<SessionSettings>,
    registry: Arc<Registry>,
    readiness: Readiness,
    metrics: SubscriberMetrics,
}

/// Checks `config` (TLS, users, link credentials) and binds the client and admin listeners.
///
/// Fails on an unusable configuration or an address that cannot be bound, before anything is served.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let tls = config.server.tls_config()?;
    let auth = config.server.authenticator()?;
    let mut link_ws = config.limits.websocket_config();
    let link_frame = config.limits.queue().max_frame.max(LINK_MIN_FRAME);
    link_ws = link_ws
        .read_buffer_size(LINK_READ_BUFFER)
        .max_message_size(Some(link_frame))
        .max_frame_size(Some(link_frame));
    let dialer = config
        .link
        .dialer(&config.server.data_dir, Some(SUBPROTOCOL_V1), link_ws)?;

    let mut registry = Registry::with_prefix("wsmq_subscriber");
    let listener_metrics = ListenerMetrics::register(&mut registry, "listener");
    let metrics = SubscriberMetrics::register(&mut registry);
    let readiness = Readiness::new();
    let router = Router::new(config.client_queue, config.slow_client, metrics.clone());

    let (listener, local_addr) = service::bind(config.listen).await?;
    let (admin, admin_addr) = service::bind(config.admin_listen).await?;

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
    let mut server = ServerConfig::new(tls, auth, config.limits.clone(), routes);
    server.metrics = listener_metrics;
    server.allowed_origins = config.server.allowed_origins.clone();
    let link = PopLink {
        dialer,
        router: router.clone(),
        prefetch: config.prefetch.max(1),
        slow_client_timeout: config.slow_client_timeout,
        max_payload: config.limits.queue().max_payload,
        ping_interval: config.limits.ping_interval,
        idle_timeout: config.limits.idle_timeout,
        ready: readiness.condition("queue link"),
        backoff: config.link.backoff.clone(),
    };
    let settings = SessionSettings {
        router,
        limits: config.limits,
        max_subscriptions: config.max_subscriptions,
    };
    Ok(Bound {
        listener,
        admin,
        local_addr,
        admin_addr,
        server: Arc::new(server),
        link,
        settings: Arc::new(settings),
        registry: Arc::new(registry),
        readiness,
        metrics,
    })
}

impl Bound {
    /// The client listener's address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The subscriber's metrics, for tests and embedding binaries (also exported on `/metrics`).
    pub fn metrics(&self) -> SubscriberMetrics {
        self.metrics.clone()
    }

    /// Whether the subscriber is ready (the link to msgqueue is up), as `/readyz` reports it.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves until `shutdown` is cancelled: clients on `/subscribe`, the link to msgqueue and the admin
    /// endpoints. Open client connections are closed with 1001 and drained within the drain timeout.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let supervisor = Supervisor::new(&shutdown);
        let background = supervisor.token().child_token();
        let link = supervisor.spawn("subscriber link", self.link.run(background.clone()));
        let admin = supervisor.spawn(
            "subscriber admin listener",
            serve_admin(
                self.admin,
                self.registry,
                self.readiness,
                background.clone(),
            ),
        );
        let settings = self.settings;
        let served = serve(
            self.listener,
            self.server,
            move |accepted| session::serve_client(accepted, Arc::clone(&settings)),
            supervisor.token().clone(),
        )
        .await;
        supervisor.stop();
        background.cancel();
        if let Err(err) = link.await {
            tracing::warn!(%err, "link task failed");
        }
        match admin.await {
            Ok(Some(Err(err))) => tracing::warn!(%err, "admin listener failed"),
            Err(err) => tracing::warn!(%err, "admin task failed"),
            Ok(_) => {}
        }
        served?;
        Ok(supervisor.finish()?)
    }
}

/// Binds and runs the subscriber until `shutdown` is cancelled; see [`bind`] and [`Bound::run`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}
