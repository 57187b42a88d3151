//! The one service skeleton: how msgqueue, publisher and subscriber start, serve and stop.
//!
//! Every service loads its TLS identity and users, keeps a metrics registry and a readiness, binds a TLS
//! WebSocket listener and a plain admin listener, supervises its long-lived parts, serves until shutdown and then
//! drains. That is written once here; a service only says what is its own through [`Service`]: its parts (a link,
//! a log writer), what each connection gets ([`Service::Context`]) and how a connection is served. Start-up is
//! two steps so a service can add its own parts in between: [`Setup::new`] (TLS, users, registry, readiness),
//! then [`Setup::bind`]; [`Bound::run`] serves.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, AccessError, AclWatcher};
use crate::admin::{AdminRoutes, Readiness, serve_admin_with};
use crate::auth::{AuthError, Authenticator};
use crate::callout::{self, AuthCallout};
use crate::config::{AccessArgs, LinkConfigError, ServiceArgs};
use crate::limits::Limits;
use crate::metrics::ListenerMetrics;
use crate::server::{Accepted, QueryCheck, Route, ServeError, ServerConfig, serve};
use crate::supervise::{Supervisor, TaskFailure};
use crate::tls::TlsError;

/// A listener address could not be bound (in use, no permission) or its bound address read.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

/// Binds `addr` and returns the listener with the address it really got (the port, when `addr` asks for port 0,
/// as tests do).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((listener, local))
}

/// Why a service could not start or stopped serving: the same reasons for every service, plus `E`, what only
/// one service can fail on (msgqueue: its storage). Generic rather than boxed so callers can still match the
/// service's own error, and `Infallible` for services that have none, so they cannot produce that variant.
///
/// Each variant displays only what its cause says ([`Error::source`](std::error::Error::source) goes straight
/// to the cause's own source), so a rendered chain names each thing once.
#[derive(Debug, thiserror::Error)]
pub enum Error<E = Infallible> {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The TLS certificate or key could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No users, or an unreadable users file.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The ACL file could not be put in force.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The auth callout is misconfigured (not an https URL, unreadable --auth-ca).
    #[error(transparent)]
    Callout(#[from] callout::SetupError),
    /// The link to msgqueue is misconfigured (missing credentials, bad URL or CA).
    #[error(transparent)]
    Link(#[from] LinkConfigError),
    /// What only this service can fail on (msgqueue: opening or recovering its storage).
    #[error(transparent)]
    Service(E),
    /// The client listener failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A long-lived part (a link, the log writer, the admin listener) panicked or ended on its own; the service
    /// drained and stopped so that it can be restarted.
    #[error(transparent)]
    Task(#[from] TaskFailure),
}

/// What a service adds to the skeleton. The value is built by the service's `bind` and moved into
/// [`Bound::run`], which calls [`Service::start`] once, serves every connection with [`Service::handle`], and
/// awaits the stop future `start` returned once the listener has drained.
pub trait Service: Send + 'static {
    /// The service's name in logs and metric names (`wsmq_<NAME>_…`), e.g. `publisher`.
    const NAME: &'static str;
    /// The supervised admin listener's task name (`<NAME> admin listener`); task names are `'static`.
    const ADMIN_TASK: &'static str;
    /// What the service hands each connection: shared, cheap to clone.
    type Context: Clone + Send + Sync + 'static;
    /// Validates handshake query strings before the upgrade (msgqueue: the consumer group on `/popmsg`); `None`
    /// ignores them.
    const QUERY_CHECK: Option<QueryCheck> = None;

    /// Endpoints the service adds to its admin listener (msgqueue: the dead letters).
    fn admin_routes(&self) -> Option<Arc<dyn AdminRoutes>> {
        None
    }

    /// Starts the service's long-lived parts (a link, a watch on the log writer) under `supervisor`, whose
    /// token is cancelled at shutdown and on a part's failure. Returns what every connection gets, and a future
    /// that stops the parts, awaited after the listener drained (finish the link, flush the log).
    fn start(
        self,
        supervisor: &Supervisor,
    ) -> (Self::Context, impl Future<Output = ()> + Send + 'static);

    /// Serves one authenticated, upgraded connection until it ends or its shutdown token is cancelled.
    fn handle(
        context: Self::Context,
        accepted: Accepted,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// The first step of start-up: TLS and users loaded, an empty registry and readiness, for the service to add its
/// own parts, metrics and readiness conditions to before [`Setup::bind`].
#[derive(Debug)]
pub struct Setup {
    tls: Arc<rustls::ServerConfig>,
    auth: Authenticator,
    /// The service's metrics registry (prefix `wsmq_<name>`), served on the admin listener's `/metrics`.
    pub registry: Registry,
    /// The client listener's metrics, registered under `listener`.
    pub listener_metrics: ListenerMetrics,
    /// What `/readyz` reports; the service adds its conditions (e.g. "queue link").
    pub readiness: Readiness,
}

impl Setup {
    /// Loads the TLS identity (in development mode this creates the CA in `--data-dir` first, so a link built
    /// afterwards trusts it) and the users, and creates the registry of service `name`.
    pub fn new<E>(name: &'static str, args: &ServiceArgs) -> Result<Self, Error<E>> {
        let tls = args.server.tls_config()?;
        let auth = args.server.authenticator()?;
        Ok(Self::with_auth(name, tls, auth))
    }

    /// [`Setup::new`] for a client-facing edge: with `--auth-url` the auth callout decides on every connection
    /// instead of the users (which may then be absent; if set, they are not used for clients), and the ACL file,
    /// if any, is loaded. Returns the edge's [`Access`] for its connections and the ACL's reload task, to run
    /// under the service's supervisor ([`AclWatcher::spawn`]).
    pub fn edge<E>(
        name: &'static str,
        args: &ServiceArgs,
        access: &AccessArgs,
    ) -> Result<(Self, Access, Option<AclWatcher>), Error<E>> {
        let tls = args.server.tls_config()?;
        let auth = match access.callout() {
            Some(config) => {
                if args.server.users.is_some() || args.server.users_file.is_some() {
                    tracing::info!(
                        "--auth-url is set: client credentials are checked by the auth callout, not by --users/--users-file"
                    );
                }
                Authenticator::with_callout(AuthCallout::new(&config)?, name)
            }
            None => args.server.authenticator()?,
        };
        let (acl, watcher) = Access::load(access.acl_file.as_deref())?;
        Ok((Self::with_auth(name, tls, auth), acl, watcher))
    }

    fn with_auth(name: &'static str, tls: Arc<rustls::ServerConfig>, auth: Authenticator) -> Self {
        let mut registry = Registry::with_prefix(format!("wsmq_{name}"));
        let listener_metrics = ListenerMetrics::register(&mut registry, "listener");
        Self {
            tls,
            auth,
            registry,
            listener_metrics,
            readiness: Readiness::new(),
        }
    }

    /// Binds the client listener (serving `routes` under `limits`) and the admin listener of `args`, ready to
    /// [`Bound::run`] `service`.
    pub async fn bind<S: Service>(
        self,
        args: &ServiceArgs,
        limits: Limits,
        routes: Vec<Route>,
        service: S,
    ) -> Result<Bound<S>, BindError> {
        let (listener, local_addr) = bind(args.listen).await?;
        let (admin, admin_addr) = bind(args.admin_listen).await?;
        let mut server = ServerConfig::new(self.tls, self.auth, limits, routes);
        server.metrics = self.listener_metrics;
        server.allowed_origins = args.server.allowed_origins.clone();
        server.query_check = S::QUERY_CHECK;
        Ok(Bound {
            listener,
            admin,
            local_addr,
            admin_addr,
            server: Arc::new(server),
            registry: Arc::new(self.registry),
            readiness: self.readiness,
            service,
        })
    }
}

/// A service with both listeners bound, not yet serving. Splitting bind from run lets tests bind port 0 and
/// learn the addresses before anything is served.
#[derive(Debug)]
pub struct Bound<S> {
    listener: TcpListener,
    admin: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    server: Arc<ServerConfig>,
    registry: Arc<Registry>,
    readiness: Readiness,
    service: S,
}

impl<S: Service> Bound<S> {
    /// The client listener's address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// What `/readyz` reports.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The service's own parts, for its accessors (msgqueue's queue, a service's metrics).
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Serves until `shutdown` is cancelled or a supervised part fails. Then the listener closes its connections
    /// with 1001 and waits for them up to the drain timeout, the admin listener stops, and the service's parts
    /// stop. Returns the listener's error or the first failed part, once everything has stopped.
    pub async fn run<E>(self, shutdown: CancellationToken) -> Result<(), Error<E>> {
        // Logged before the admin listener logs its own address: tools that start a service and read the first
        // `addr` it logs (tests, scripts) get the client listener's.
        tracing::info!(addr = %self.local_addr, admin_addr = %self.admin_addr, "{} listening", S::NAME);
        let supervisor = Supervisor::new(&shutdown);
        let admin = supervisor.spawn(
            S::ADMIN_TASK,
            serve_admin_with(
                self.admin,
                self.registry,
                self.readiness,
                self.service.admin_routes(),
                supervisor.token().child_token(),
            ),
        );
        let (context, stop) = self.service.start(&supervisor);
        let served = serve(
            self.listener,
            self.server,
            move |accepted| S::handle(context.clone(), accepted),
            supervisor.token().clone(),
        )
        .await;
        supervisor.stop();
        stop.await;
        match admin.await {
            Ok(Some(Err(err))) => tracing::warn!(%err, "admin listener failed"),
            Err(err) => tracing::warn!(%err, "admin listener task failed"),
            Ok(_) => {}
        }
        tracing::info!("{} stopped", S::NAME);
        served?;
        Ok(supervisor.finish()?)
    }
}
