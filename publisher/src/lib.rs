//! wsmq publisher: accepts messages from clients on `wss://…/publish`, validates them at the edge and pushes
//! them to msgqueue over one reliable, batching, reconnecting link.
//!
//! [`bind`] binds the listeners (tests pass port 0 and read the bound addresses), [`Bound::run`] serves until
//! the shutdown token is cancelled; [`run`] does both. Each instance owns its metrics and state, so several
//! services can run in one process.

pub mod link;
pub mod metrics;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsmq_core::admin::{Readiness, serve_admin};
use wsmq_core::config::{LinkArgs, ServerArgs};
use wsmq_core::limits::Limits;
use wsmq_core::metrics::ListenerMetrics;
use wsmq_core::protocol::{PUBLISH_PATH, SUBPROTOCOL_V1};
use wsmq_core::server::{Route, ServerConfig, serve};
use wsmq_core::service;
use wsmq_core::supervise::Supervisor;

use crate::link::{LinkConfig, LinkTask, PushLink};
use crate::metrics::PublisherMetrics;
use crate::session::SessionContext;

/// The publisher's configuration: every setting a flag with an env fallback. Public fields so the all-in-one
/// binary and tests can build it in code.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address of the TLS WebSocket listener for publishing clients (ws-go's publisher used port 8081).
    #[arg(long, env = "WSMQ_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP admin listener (/healthz, /readyz, /metrics); loopback by default so it is
    /// not exposed.
    #[arg(long, env = "WSMQ_ADMIN_LISTEN", default_value = "127.0.0.1:9081")]
    pub admin_listen: SocketAddr,

    /// TLS identity, data directory and client credentials of the listener.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Where msgqueue is and how to authenticate to it.
    #[command(flatten)]
    pub link: LinkArgs,

    /// Message size, timeouts and connection cap of the listener (also pings and idle timeout of the link).
    #[command(flatten)]
    pub limits: Limits,

    /// Most messages held for msgqueue at once (queued, or pushed and not yet acked). When msgqueue is
    /// unreachable and this fills up, the publisher stops reading from clients until it recovers.
    #[arg(long, env = "WSMQ_LINK_BUFFER", default_value_t = 10_000)]
    pub link_buffer: usize,

    /// Most message bytes held for msgqueue at once; the byte counterpart of --link-buffer.
    #[arg(long, env = "WSMQ_LINK_BUFFER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub link_buffer_bytes: usize,

    /// Byte budget of one frame to msgqueue: under load queued messages are batched into frames up to this
    /// size. msgqueue's message size limit must allow it.
    #[arg(long, env = "WSMQ_LINK_BATCH_BYTES", default_value_t = 64 * 1024)]
    pub link_batch_bytes: usize,
}

/// Why the publisher could not start or stopped serving.
pub use wsmq_core::service::StartError as Error;

/// A publisher whose listeners are bound but not yet serving.
pub struct Bound {
    listener: TcpListener,
    admin: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    server: ServerConfig,
    registry: Registry,
    readiness: Readiness,
    metrics: PublisherMetrics,
    context: SessionContext,
    link_task: LinkTask,
}

/// Loads TLS and credentials, prepares the msgqueue link and binds both listeners. Nothing is served (and
/// msgqueue is not contacted) until [`Bound::run`].
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let tls = config.server.tls_config()?;
    let auth = config.server.authenticator()?;
    let dialer = config.link.dialer(
        &config.server.data_dir,
        Some(SUBPROTOCOL_V1),
        config.limits.websocket_config(),
    )?;
    let (listener, local_addr) = service::bind(config.listen).await?;
    let (admin, admin_addr) = service::bind(config.admin_listen).await?;

    let mut registry = Registry::with_prefix("wsmq_publisher");
    let listener_metrics = ListenerMetrics::register(&mut registry, "listener");
    let metrics = PublisherMetrics::register(&mut registry);
    let readiness = Readiness::new();
    let link_config = LinkConfig {
        buffer_messages: config.link_buffer,
        buffer_bytes: config.link_buffer_bytes,
        batch_bytes: config.link_batch_bytes,
        backoff: config.link.backoff.clone(),
        limits: config.limits.clone(),
    };
    let (link, link_task) = PushLink::new(
        link_config,
        dialer,
        metrics.clone(),
        readiness.condition("queue link"),
    );
    let routes = vec![Route::WebSocket {
        path: PUBLISH_PATH,
        subprotocols: &[SUBPROTOCOL_V1],
    }];
    let mut server = ServerConfig::new(tls, auth, config.limits.clone(), routes);
    server.metrics = listener_metrics.clone();
    server.allowed_origins = config.server.allowed_origins.clone();
    let context = SessionContext {
        link,
        limits: config.limits,
        metrics: metrics.clone(),
        listener: listener_metrics,
    };
    Ok(Bound {
        listener,
        admin,
        local_addr,
        admin_addr,
        server,
        registry,
        readiness,
        metrics,
        context,
        link_task,
    })
}

impl Bound {
    /// The address clients connect to (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// This instance's metrics, for tests and embedding.
    pub fn metrics(&self) -> PublisherMetrics {
        self.metrics.clone()
    }

    /// This instance's readiness (false while the msgqueue link is down).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves clients until `shutdown` is cancelled. Then client connections close with 1001, and the link
    /// gets up to the drain timeout to have msgqueue ack what it still holds before it closes too.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let drain_timeout = self.server.limits.drain_timeout;
        let supervisor = Supervisor::new(&shutdown);
        let admin_stop = supervisor.token().child_token();
        let link_stop = CancellationToken::new();
        let mut link = supervisor.spawn("publisher link", self.link_task.run(link_stop.clone()));
        let admin = supervisor.spawn(
            "publisher admin listener",
            serve_admin(
                self.admin,
                Arc::new(self.registry),
                self.readiness,
                admin_stop.clone(),
            ),
        );
        tracing::info!(addr = %self.local_addr, "publisher listening");
        let context = self.context;
        let served = serve(
            self.listener,
            Arc::new(self.server),
            move |accepted| session::handle(accepted, context.clone()),
            supervisor.token().clone(),
        )
        .await;
        supervisor.stop();
        admin_stop.cancel();
        if tokio::time::timeout(drain_timeout, &mut link)
            .await
            .is_err()
        {
            tracing::warn!(
                "msgqueue link did not drain in time; unacked messages are left to the clients to retry"
            );
            link_stop.cancel();
            let _ = link.await;
        }
        match admin.await {
            Ok(Some(Err(err))) => tracing::warn!(%err, "admin listener failed"),
            Err(err) => tracing::warn!(%err, "admin listener task failed"),
            Ok(_) => {}
        }
        served?;
        Ok(supervisor.finish()?)
    }
}

/// Binds and serves until `shutdown` is cancelled: what `main` and the all-in-one binary call.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}
