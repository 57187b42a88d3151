//! msgqueue: the durable, acked FIFO queue between wsmq's publisher and subscriber.
//!
//! Producers push on `/pushmsg`, consumers pop on `/popmsg`, both over TLS WebSockets with Basic auth, in ws-go's
//! compat mode or wsmq's reliable mode (see `docs/PROTOCOL.md`). [`queue`] is the engine (ordering, leases,
//! storage); [`push`] and [`pop`] translate between it and the wire; [`deadletters`] serves the dead letters on the
//! admin listener.

pub mod config;
pub mod deadletters;
mod metrics;
mod pop;
mod push;
pub mod queue;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsmq_core::admin::{Readiness, serve_admin_with};
use wsmq_core::auth::AuthError;
use wsmq_core::limits::QueueLimits;
use wsmq_core::metrics::ListenerMetrics;
use wsmq_core::protocol::{POP_PATH, PUSH_PATH, SUBPROTOCOL_V1};
use wsmq_core::server::{Accepted, Route, ServeError, ServerConfig, serve};
use wsmq_core::service::{self, BindError};
use wsmq_core::supervise::{Supervisor, TaskFailure};
use wsmq_core::tls::TlsError;

pub use config::Config;
use queue::{Queue, QueueError, RecoveryReport};

/// Why msgqueue could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener or the admin listener failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// TLS certificate or key unusable.
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsError),
    /// No usable users configured.
    #[error("users: {0}")]
    Auth(#[from] AuthError),
    /// The queue storage could not be opened or recovered.
    #[error("queue storage: {0}")]
    Queue(#[from] QueueError),
    /// The listener failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A long-lived part (the log writer, the admin listener) panicked or ended on its own; msgqueue drained
    /// and stopped so that it can be restarted and recover its log.
    #[error(transparent)]
    Task(#[from] TaskFailure),
}

/// msgqueue with its listeners bound and its storage recovered, ready to [`Bound::run`]. Splitting `bind` from
/// `run` lets tests bind port 0 and learn the address before serving.
pub struct Bound {
    listener: TcpListener,
    admin: TcpListener,
    server: Arc<ServerConfig>,
    queue: Queue,
    registry: Arc<Registry>,
    readiness: Readiness,
    recovery: RecoveryReport,
    sizes: QueueLimits,
}

/// Opens the queue storage (recovering what is on disk), loads TLS and users, and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let tls = config.server.tls_config()?;
    let auth = config.server.authenticator()?;
    let (backend, options) = (
        config.queue.backend(&config.server.data_dir),
        config.queue.options(),
    );
    // Recovery reads the whole log: off the async workers.
    let (queue, recovery) = tokio::task::spawn_blocking(move || Queue::open(backend, options))
        .await
        .map_err(|_| QueueError::Closed)??;
    if !recovery.truncated.is_empty() {
        for cut in &recovery.truncated {
            tracing::warn!(segment = %cut.segment.display(), position = cut.position, dropped_bytes = cut.dropped_bytes,
                "truncated a torn or corrupt log tail");
        }
    }
    tracing::info!(
        messages = recovery.messages,
        bytes = recovery.bytes,
        segments = recovery.segments,
        "queue recovered"
    );

    let mut registry = Registry::with_prefix("wsmq_msgqueue");
    let listener_metrics = ListenerMetrics::register(&mut registry, "listener");
    metrics::register(&mut registry, queue.clone());
    let readiness = Readiness::new();

    // Reliable frames carry up to one maximal payload plus its record header, so the WebSocket limit allows for
    // the header while payloads themselves (compat or reliable) stay within --max-message-size.
    let queue_limits = config.limits.queue();
    let mut limits = config.limits.clone();
    limits.max_message_size = queue_limits.max_frame;
    limits.max_frame_size = limits.max_frame_size.max(limits.max_message_size);
    let routes = vec![
        Route::WebSocket {
            path: PUSH_PATH,
            subprotocols: &[SUBPROTOCOL_V1],
        },
        Route::WebSocket {
            path: POP_PATH,
            subprotocols: &[SUBPROTOCOL_V1],
        },
    ];
    let mut server = ServerConfig::new(tls, auth, limits, routes);
    server.metrics = listener_metrics;
    server.allowed_origins = config.server.allowed_origins.clone();
    server.query_check = Some(pop::check_query);

    let (listener, _) = service::bind(config.listen).await?;
    let (admin, _) = service::bind(config.admin_listen).await?;
    Ok(Bound {
        listener,
        admin,
        server: Arc::new(server),
        queue,
        registry: Arc::new(registry),
        readiness,
        recovery,
        sizes: queue_limits,
    })
}

impl Bound {
    /// The WebSocket listener's address (the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// What recovery found in the storage at start-up.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The queue engine, for tests and the all-in-one binary's status output.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Serves until `shutdown` is cancelled, then drains connections (closing them with 1001), flushes and
    /// fsyncs the log, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Bound {
            listener,
            admin,
            server,
            queue,
            registry,
            readiness,
            sizes,
            ..
        } = self;
        if let (Ok(addr), Ok(admin_addr)) = (listener.local_addr(), admin.local_addr()) {
            tracing::info!(%addr, %admin_addr, "msgqueue listening on /pushmsg and /popmsg");
        }
        let supervisor = Supervisor::new(&shutdown);
        let stop = supervisor.token().clone();
        let ready = readiness.condition("listener");
        let routes = deadletters::DeadLetterRoutes::new(queue.clone());
        let admin_task = supervisor.spawn(
            "msgqueue admin listener",
            serve_admin_with(admin, registry, readiness, Some(routes), stop.clone()),
        );
        supervisor.watch("log writer", {
            let queue = queue.clone();
            async move { queue.writer_died().await }
        });
        ready.set_ready(true);

        let handler_queue = queue.clone();
        let handler_metrics = server.metrics.clone();
        let handler_limits = server.limits.clone();
        let result = serve(
            listener,
            server,
            move |accepted: Accepted| {
                let queue = handler_queue.clone();
                let metrics = handler_metrics.clone();
                let limits = handler_limits.clone();
                async move {
                    let conn = Connection {
                        queue,
                        metrics,
                        limits,
                        sizes,
                    };
                    if accepted.path == PUSH_PATH {
                        push::handle(conn, accepted).await;
                    } else {
                        pop::handle(conn, accepted).await;
                    }
                }
            },
            stop,
        )
        .await;
        supervisor.stop();
        ready.set_ready(false);
        queue.close().await;
        if let Ok(Some(Err(err))) = admin_task.await {
            tracing::warn!(%err, "admin listener failed");
        }
        tracing::info!("msgqueue stopped");
        result?;
        Ok(supervisor.finish()?)
    }
}

/// Binds and serves until `shutdown` is cancelled: what `main` calls.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// What every connection handler needs from the service.
#[derive(Clone)]
struct Connection {
    queue: Queue,
    metrics: ListenerMetrics,
    limits: wsmq_core::limits::Limits,
    /// Payload and frame limits of the queue hop, shared with every consumer.
    sizes: QueueLimits,
}
