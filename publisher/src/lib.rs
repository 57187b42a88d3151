//! wsmq publisher: accepts messages from clients on `wss://…/publish`, validates them at the edge and pushes
//! them to msgqueue over one reliable, batching, reconnecting link.
//!
//! [`bind`] binds the listeners (tests pass port 0 and read the bound addresses), [`Bound::run`] serves until
//! the shutdown token is cancelled; [`run`] does both. Each instance owns its metrics and state, so several
//! services can run in one process.

pub mod api;
pub mod idempotency;
pub mod link;
pub mod metrics;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wsmq_core::access::AclWatcher;
use wsmq_core::admin::Readiness;
use wsmq_core::config::{AccessArgs, LinkArgs, ServiceArgs};
use wsmq_core::limits::parse_duration;
use wsmq_core::protocol::{API_PREFIX, PUBLISH_PATH, SUBPROTOCOL_V1};
use wsmq_core::server::{Accepted, Route};
use wsmq_core::service::{self, Service, Setup};
use wsmq_core::supervise::Supervisor;

use crate::api::PublishApi;
use crate::idempotency::{IdempotencyError, IdempotencyLimits, IdempotencyStore};
use crate::link::{LinkConfig, LinkTask, PushLink};
use crate::metrics::PublisherMetrics;
use crate::session::ConnectionContext;
use wsmq_core::history_client::{HISTORY_TIMEOUT, HistoryClient};

/// The publisher's configuration: every setting a flag with an env fallback. Public fields so the all-in-one
/// binary and tests can build it in code.
#[derive(clap::Args, Clone, Debug)]
#[command(
    mut_arg("listen", |arg| arg.default_value("0.0.0.0:8081").required(false)),
    mut_arg("admin_listen", |arg| arg.default_value("127.0.0.1:9081").required(false))
)]
pub struct Config {
    /// Listeners (ws-go's publisher used port 8081), TLS identity, data directory, client credentials and limits
    /// (also pings and idle timeout of the link).
    #[command(flatten)]
    pub service: ServiceArgs,

    /// Where msgqueue is and how to authenticate to it.
    #[command(flatten)]
    pub link: LinkArgs,

    /// Topic permissions (--acl-file) and the auth callout (--auth-url).
    #[command(flatten)]
    pub access: AccessArgs,

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

    /// The HTTP publish API (`POST /v1/publish`, `/v1/publish/batch`).
    #[command(flatten)]
    pub http: HttpApiArgs,

    /// Furthest ahead a message may be scheduled (`DeliverAt` / `Delay` in wsmq.v1, `deliver_at` / `delay` in
    /// the HTTP API), e.g. `30days`, `12h`, `90m`; later ones are refused.
    #[arg(long, env = "WSMQ_MAX_DELAY", default_value = "30days", value_parser = humantime::parse_duration)]
    pub max_delay: Duration,
}

/// Settings of the HTTP publish API.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpApiArgs {
    /// How long an `Idempotency-Key` is remembered: a retry with the same key (per user) within it gets the
    /// first answer and stores nothing (e.g. "5m"). Keys are kept in `<data-dir>/publisher/` across restarts.
    #[arg(long, env = "WSMQ_IDEMPOTENCY_TTL", default_value = "5m", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,

    /// Most `Idempotency-Key`s remembered; beyond it the oldest is forgotten before its TTL.
    #[arg(long, env = "WSMQ_IDEMPOTENCY_KEYS", default_value_t = 100_000)]
    pub idempotency_keys: usize,

    /// Most bytes of remembered answers (in memory and on disk); beyond it the oldest key is forgotten.
    #[arg(long, env = "WSMQ_IDEMPOTENCY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub idempotency_bytes: usize,

    /// Most messages in one `POST /v1/publish/batch`.
    #[arg(long, env = "WSMQ_HTTP_MAX_BATCH", default_value_t = 1000)]
    pub http_max_batch: usize,
}

impl Default for HttpApiArgs {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(300),
            idempotency_keys: 100_000,
            idempotency_bytes: 64 * 1024 * 1024,
            http_max_batch: 1000,
        }
    }
}

/// Why the publisher could not start or stopped serving: the idempotency key file is its own failure.
pub type Error = service::Error<IdempotencyError>;

/// A publisher whose listeners are bound but not yet serving.
pub struct Bound(service::Bound<Publisher>);

/// The publisher's own parts in the service skeleton: the link to msgqueue.
struct Publisher {
    metrics: PublisherMetrics,
    context: ConnectionContext,
    link_task: LinkTask,
    acl_watcher: Option<AclWatcher>,
}

/// Loads TLS and credentials, prepares the msgqueue link and binds both listeners. Nothing is served (and
/// msgqueue is not contacted) until [`Bound::run`].
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let args = &config.service;
    let (mut setup, access, acl_watcher) = Setup::edge(Publisher::NAME, args, &config.access)?;
    let dialers = config.link.dialers(
        &args.server.data_dir,
        Some(SUBPROTOCOL_V1),
        args.limits.websocket_config(),
    )?;
    let metrics = PublisherMetrics::register(&mut setup.registry);
    let link_config = LinkConfig {
        buffer_messages: config.link_buffer,
        buffer_bytes: config.link_buffer_bytes,
        batch_bytes: config.link_batch_bytes,
        backoff: config.link.backoff.clone(),
        limits: args.limits.clone(),
    };
    let queue_link = setup.readiness.condition("queue link");
    let history = Arc::new(HistoryClient::new(dialers.clone(), HISTORY_TIMEOUT));
    let (link, link_task) =
        PushLink::new(link_config, dialers, metrics.clone(), queue_link.clone());
    let limits = IdempotencyLimits {
        ttl: config.http.idempotency_ttl,
        max_keys: config.http.idempotency_keys,
        max_bytes: config.http.idempotency_bytes,
    };
    let data_dir = args.server.data_dir.clone();
    let idempotency =
        tokio::task::spawn_blocking(move || IdempotencyStore::open(&data_dir, limits))
            .await
            .map_err(|err| IdempotencyError::Io {
                path: args.server.data_dir.clone(),
                source: std::io::Error::other(err),
            })
            .and_then(|opened| opened)
            .map_err(service::Error::Service)?;
    let api = PublishApi {
        link: link.clone(),
        queue_link,
        limits: args.limits.clone(),
        max_batch: config.http.http_max_batch.max(1),
        metrics: metrics.clone(),
        idempotency,
        access: access.clone(),
        history,
        max_delay: config.max_delay,
    };
    let routes = vec![
        Route::WebSocket {
            path: PUBLISH_PATH,
            subprotocols: &[SUBPROTOCOL_V1],
        },
        Route::Http {
            path_prefix: API_PREFIX,
            handler: Arc::new(api),
        },
    ];
    let context = ConnectionContext {
        link,
        limits: args.limits.clone(),
        metrics: metrics.clone(),
        listener: setup.listener_metrics.clone(),
        access,
        max_delay: config.max_delay,
    };
    let publisher = Publisher {
        metrics,
        context,
        link_task,
        acl_watcher,
    };
    let limits = args.limits.clone();
    Ok(Bound(setup.bind(args, limits, routes, publisher).await?))
}

impl Bound {
    /// The address clients connect to (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.0.admin_addr()
    }

    /// This instance's metrics, for tests and embedding.
    pub fn metrics(&self) -> PublisherMetrics {
        self.0.service().metrics.clone()
    }

    /// This instance's readiness (false while the msgqueue link is down).
    pub fn readiness(&self) -> Readiness {
        self.0.readiness()
    }

    /// Serves clients until `shutdown` is cancelled. Then client connections close with 1001, and the link
    /// gets up to the drain timeout to have msgqueue ack what it still holds before it closes too.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.0.run(shutdown).await
    }
}

impl Service for Publisher {
    const NAME: &'static str = "publisher";
    const ADMIN_TASK: &'static str = "publisher admin listener";
    type Context = ConnectionContext;

    /// Runs the link; at shutdown it is not cancelled but given the drain timeout to have msgqueue ack what it
    /// holds, and only then cut.
    fn start(
        self,
        supervisor: &Supervisor,
    ) -> (Self::Context, impl Future<Output = ()> + Send + 'static) {
        if let Some(watcher) = self.acl_watcher {
            watcher.spawn(supervisor);
        }
        let drain_timeout = self.context.limits.drain_timeout;
        let link_stop = CancellationToken::new();
        let mut link = supervisor.spawn("publisher link", self.link_task.run(link_stop.clone()));
        let stop = async move {
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
        };
        (self.context, stop)
    }

    fn handle(
        context: Self::Context,
        accepted: Accepted,
    ) -> impl Future<Output = ()> + Send + 'static {
        session::handle(accepted, context)
    }
}

/// Binds and serves until `shutdown` is cancelled: what `main` and the all-in-one binary call.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}
