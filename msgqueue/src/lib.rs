//! msgqueue: the durable, acked FIFO queue between wsmq's publisher and subscriber.
//!
//! Producers push on `/pushmsg`, consumers pop on `/popmsg`, both over TLS WebSockets with Basic auth, in ws-go's
//! compat mode or wsmq's reliable mode (see `docs/PROTOCOL.md`). [`queue`] is the engine (ordering, leases,
//! storage); [`push`] and [`pop`] translate between it and the wire; [`deadletters`] serves the dead letters on the
//! admin listener.

pub mod config;
pub mod deadletters;
mod history;
mod metrics;
mod pop;
mod push;
pub mod queue;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wsmq_core::admin::{AdminRoutes, Condition};
use wsmq_core::limits::{Limits, QueueLimits};
use wsmq_core::metrics::ListenerMetrics;
use wsmq_core::protocol::{POP_PATH, PUSH_PATH, SUBPROTOCOL_V1};
use wsmq_core::server::{Accepted, QueryCheck, Route};
use wsmq_core::service::{self, Service, Setup};
use wsmq_core::supervise::Supervisor;

pub use config::Config;
use queue::{Backend, Queue, QueueError, RecoveryReport};
use tokio::sync::watch;

/// Why msgqueue could not start or stopped: the reasons every service shares, plus its storage failing to open
/// or recover.
pub type Error = service::Error<QueueError>;

/// msgqueue with its listeners bound and its storage recovered, ready to [`Bound::run`]. Splitting `bind` from
/// `run` lets tests bind port 0 and learn the address before serving.
pub struct Bound(service::Bound<Msgqueue>);

/// msgqueue's own parts in the service skeleton: the queue engine and what each connection needs of it.
struct Msgqueue {
    queue: Queue,
    recovery: RecoveryReport,
    context: ConnectionContext,
    ready: Condition,
    /// For a backend that can be away (Redis): whether it answers, and the readiness condition following it.
    storage_ready: Option<(watch::Receiver<bool>, Condition)>,
}

/// Opens the queue storage (recovering what is on disk), loads TLS and users, and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let args = &config.service;
    let mut setup = Setup::new(Msgqueue::NAME, args)?;
    let (backend, options) = (
        config.queue.backend(&args.server.data_dir),
        config.queue.options(),
    );
    // Recovery reads the whole log: off the async workers (the blocking pool is inside the runtime, which the
    // Redis engine needs for its tasks).
    let (queue, recovery) = tokio::task::spawn_blocking(move || Queue::open(backend, options))
        .await
        .map_err(|_| Error::Service(QueueError::Closed))?
        .map_err(Error::Service)?;
    if let Backend::Redis(redis) = config.queue.backend(&args.server.data_dir) {
        tracing::info!(?redis, "queue kept in Redis; connecting in the background");
    } else {
        for cut in &recovery.truncated {
            tracing::warn!(segment = %cut.segment.display(), position = cut.position, dropped_bytes = cut.dropped_bytes,
                "truncated a torn or corrupt log tail");
        }
        tracing::info!(
            messages = recovery.messages,
            bytes = recovery.bytes,
            segments = recovery.segments,
            "queue recovered"
        );
    }
    metrics::register(&mut setup.registry, queue.clone());
    queue.register_metrics(&mut setup.registry);
    let latency = metrics::HopLatency::register(&mut setup.registry);
    let ready = setup.readiness.condition("listener");
    let storage_ready = queue
        .ready()
        .map(|watch| (watch, setup.readiness.condition("storage")));

    // Reliable frames carry up to one maximal payload plus its record header, so the WebSocket limit allows for
    // the header while payloads themselves (compat or reliable) stay within --max-message-size.
    let sizes = args.limits.queue();
    let mut limits = args.limits.clone();
    limits.max_message_size = sizes.max_frame;
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
        Route::Http {
            path_prefix: wsmq_core::protocol::history::HISTORY_API_PATH,
            handler: Arc::new(history::HistoryApi {
                queue: queue.clone(),
            }),
        },
    ];
    let context = ConnectionContext {
        queue: queue.clone(),
        metrics: setup.listener_metrics.clone(),
        latency,
        limits: limits.clone(),
        sizes,
    };
    let msgqueue = Msgqueue {
        queue,
        recovery,
        context,
        ready,
        storage_ready,
    };
    Ok(Bound(setup.bind(args, limits, routes, msgqueue).await?))
}

impl Bound {
    /// The WebSocket listener's address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.0.admin_addr()
    }

    /// What recovery found in the storage at start-up.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.0.service().recovery
    }

    /// The queue engine, for tests and the all-in-one binary's status output.
    pub fn queue(&self) -> &Queue {
        &self.0.service().queue
    }

    /// Serves until `shutdown` is cancelled, then drains connections (closing them with 1001), flushes and
    /// fsyncs the log, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.0.run(shutdown).await
    }
}

impl Service for Msgqueue {
    const NAME: &'static str = "msgqueue";
    const ADMIN_TASK: &'static str = "msgqueue admin listener";
    type Context = ConnectionContext;
    const QUERY_CHECK: Option<QueryCheck> = Some(pop::check_query);

    fn admin_routes(&self) -> Option<Arc<dyn AdminRoutes>> {
        Some(deadletters::DeadLetterRoutes::new(self.queue.clone()))
    }

    /// Watches the log writer (a thread), runs the scheduler (scheduled messages into the queue when due), and
    /// once the listener drained, closes the queue: flushes and fsyncs.
    fn start(
        self,
        supervisor: &Supervisor,
    ) -> (Self::Context, impl Future<Output = ()> + Send + 'static) {
        let queue = self.queue;
        supervisor.watch("log writer", {
            let queue = queue.clone();
            async move { queue.writer_died().await }
        });
        supervisor.spawn(
            "scheduler",
            queue::run_scheduler(queue.clone(), supervisor.token().clone()),
        );
        if let Some((mut answers, condition)) = self.storage_ready {
            supervisor.spawn("storage readiness", async move {
                loop {
                    condition.set_ready(*answers.borrow_and_update());
                    if answers.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        self.ready.set_ready(true);
        let ready = self.ready;
        let stop = async move {
            ready.set_ready(false);
            queue.close().await;
        };
        (self.context, stop)
    }

    async fn handle(context: Self::Context, accepted: Accepted) {
        if accepted.path == PUSH_PATH {
            push::handle(context, accepted).await;
        } else {
            pop::handle(context, accepted).await;
        }
    }
}

/// Binds and serves until `shutdown` is cancelled: what `main` calls.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// What msgqueue hands each connection.
#[derive(Clone)]
struct ConnectionContext {
    queue: Queue,
    metrics: ListenerMetrics,
    /// The per-hop latency histograms the handlers record.
    latency: metrics::HopLatency,
    limits: Limits,
    /// Payload and frame limits of the queue hop, shared with every consumer.
    sizes: QueueLimits,
}
