//! The TLS WebSocket listener every wsmq service runs: accept, TLS, HTTP head, routing, origin check,
//! authentication (Basic against the users, or Basic and Bearer through the auth callout, see [`crate::auth`]),
//! subprotocol negotiation and the upgrade, under one handshake timeout and two separate limits: handshake slots
//! (in total and per client address, see [`crate::admission`]) for connections still in their handshake, and the
//! connection limit for upgraded ones, so half-open connections cannot lock real clients out.
//!
//! A connection whose first request is for a [`Route::Http`] is not upgraded but served as HTTP/1.1 by hyper
//! ([`crate::http_api`]) under the same slots and permit.
//!
//! The service only supplies a handler that receives an authenticated, upgraded [`Accepted`] connection. Like
//! mini-redis and axum: [`serve`] takes an already-bound listener (tests bind port 0), accept errors never end
//! it, each upgraded connection holds an owned semaphore permit, and shutdown is cancel → notify connections →
//! wait for them within the drain timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing::field::{Empty, display};
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::Role;

use crate::acl::Permissions;
use crate::admission::{HandshakeSlot, HandshakeSlots};
use crate::auth::{AuthFailure, Authenticator, Identity, Presented, Refused};
use crate::http::{HttpError, RequestHead, Response, read_request_head_raw};
use crate::http_api::{ApiConnection, ApiHandler};
use crate::limits::Limits;
use crate::metrics::{CalloutOutcome, ListenerMetrics, RejectReason};
use crate::tls_stream::{self, TlsStream};

/// An upgraded server-side connection: WebSocket over TLS over TCP. The TLS stream ([`TlsStream`], which
/// frees its buffers while the connection is idle) is boxed because its rustls state (over 1 KiB) would
/// otherwise be copied into every future that holds the connection, including handler arguments that stay
/// allocated for the connection's whole life.
pub type ServerWs = WebSocketStream<Box<TlsStream>>;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(250);
/// The realm in `WWW-Authenticate`.
const WWW_AUTHENTICATE: &str = "Basic realm=\"wsmq\"";

/// Something a listener serves at a path.
#[derive(Clone, Debug)]
pub enum Route {
    /// A WebSocket endpoint, e.g. `/pushmsg` speaking `["wsmq.v1"]`. A client offering none of `subprotocols`
    /// still connects, in compat mode ([`Accepted::subprotocol`] is `None`).
    WebSocket {
        /// The exact request path.
        path: &'static str,
        /// Subprotocols this endpoint speaks, in server preference order.
        subprotocols: &'static [&'static str],
    },
    /// A static page answered to `GET` without authentication (e.g. the subscriber's browser client; it
    /// authenticates on its WebSocket instead).
    Page {
        /// The exact request path.
        path: &'static str,
        /// The `Content-Type`, e.g. `text/html; charset=utf-8`.
        content_type: &'static str,
        /// The page.
        body: &'static [u8],
    },
    /// An HTTP API (e.g. the publisher's `/v1/publish`): a connection whose first request is under `path_prefix`
    /// is served by hyper with keep-alive, each request authenticated (see [`crate::http_api`]).
    Http {
        /// The path itself and every path below it (`/v1` serves `/v1/publish`), never `/v1x`.
        path_prefix: &'static str,
        /// Answers the authenticated requests.
        handler: Arc<dyn ApiHandler>,
    },
}

impl Route {
    /// Whether a request for `path` is served by this route.
    fn matches(&self, path: &str) -> bool {
        match self {
            Route::WebSocket { path: own, .. } | Route::Page { path: own, .. } => *own == path,
            Route::Http { path_prefix, .. } => path
                .strip_prefix(path_prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// Everything a listener needs besides its socket and handler.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TLS certificate and key (see `crate::tls::server_config`).
    pub tls: Arc<rustls::ServerConfig>,
    /// Checks the credentials of every WebSocket handshake.
    pub auth: Authenticator,
    /// Message sizes, timeouts and the connection cap.
    pub limits: Limits,
    /// What is served at which path; any other path gets 404.
    pub routes: Vec<Route>,
    /// Browser origins allowed to open WebSockets, e.g. `https://example.com:8082`. Empty means the listener's
    /// own origins (`https://localhost:PORT`, `https://127.0.0.1:PORT`, `https://[::1]:PORT`). Requests without
    /// an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Where connection counts and rejections are recorded.
    pub metrics: ListenerMetrics,
    /// Checks the query string of a WebSocket handshake (`path`, query without `?`) before the upgrade: an
    /// `Err` is answered `400` with its text as the body. `None` ignores queries.
    pub query_check: Option<QueryCheck>,
}

/// A service's validation of handshake query strings; see [`ServerConfig::query_check`].
pub type QueryCheck = fn(path: &str, query: &str) -> Result<(), String>;

impl ServerConfig {
    /// A configuration with the default origin allow-list and unregistered metrics; set the public fields to
    /// change either.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        auth: Authenticator,
        limits: Limits,
        routes: Vec<Route>,
    ) -> Self {
        Self {
            tls,
            auth,
            limits,
            routes,
            allowed_origins: Vec::new(),
            metrics: ListenerMetrics::default(),
            query_check: None,
        }
    }
}

/// An authenticated, upgraded connection handed to the service's handler.
pub struct Accepted {
    /// The WebSocket, configured with the listener's limits.
    pub ws: ServerWs,
    /// The client's address.
    pub peer: SocketAddr,
    /// The route path the client connected to, e.g. `/popmsg`.
    pub path: &'static str,
    /// The authenticated user name.
    pub user: String,
    /// Permissions the auth callout granted this connection; they replace the ACL file's. `None`: the ACL file
    /// applies (or everything is allowed without one).
    pub permissions: Option<Permissions>,
    /// The negotiated subprotocol, e.g. `Some("wsmq.v1")`; `None` is compat mode (plain frames, as ws-go).
    pub subprotocol: Option<&'static str>,
    /// The handshake's query string without `?` (empty when none), already accepted by
    /// [`ServerConfig::query_check`].
    pub query: String,
    /// Cancelled when the listener shuts down; the handler then closes the WebSocket with 1001 and returns.
    /// It is the listener's own token (a child per connection would cost every connection an allocation):
    /// handlers watch it and never cancel it.
    pub shutdown: CancellationToken,
}

/// Why [`serve`] could not run.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The listener's own address could not be read (needed for the default origin allow-list).
    #[error("reading the listener address: {0}")]
    LocalAddr(#[source] io::Error),
}

/// State shared by the accept loop and every connection task.
struct Shared<H> {
    config: Arc<ServerConfig>,
    origins: Vec<String>,
    /// Slots of upgraded connections (`--max-connections`), taken once the request head is read.
    connections: Arc<Semaphore>,
    handler: H,
}

/// Serves TLS WebSockets on `listener` until `shutdown` is cancelled, handing each accepted connection to
/// `handler` in its own task.
///
/// On shutdown it stops accepting, cancels every connection's [`Accepted::shutdown`] token and waits up to
/// `limits.drain_timeout` for the connection tasks, then returns `Ok`. Accept errors are logged and retried,
/// never returned; the only error is an unusable listener.
pub async fn serve<H, F>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    H: Fn(Accepted) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().map_err(ServeError::LocalAddr)?;
    let origins = if config.allowed_origins.is_empty() {
        own_origins(local.port())
    } else {
        config
            .allowed_origins
            .iter()
            .map(|o| normalize_origin(o))
            .collect()
    };
    let drain_timeout = config.limits.drain_timeout;
    let connections = Arc::new(Semaphore::new(
        config.limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let handshakes = HandshakeSlots::new(
        config.limits.max_handshakes,
        config.limits.max_handshakes_per_ip,
    );
    let shared = Arc::new(Shared {
        config,
        origins,
        connections,
        handler,
    });
    let tracker = TaskTracker::new();
    tracing::info!(addr = %local, "listening");

    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, %peer, "cannot set TCP_NODELAY");
        }
        let slot = match handshakes.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                shared.config.metrics.reject(RejectReason::HandshakeLimit);
                tracing::debug!(%peer, reason = %full, "dropping connection");
                continue;
            }
        };
        tracker.spawn(connection(
            shared.clone(),
            tcp,
            peer,
            slot,
            shutdown.clone(),
        ));
    }

    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tracker.len(),
            ?drain_timeout,
            "drain timeout elapsed, abandoning connections"
        );
    }
    tracing::info!(addr = %local, "listener stopped");
    Ok(())
}

/// A handshake that did not produce a WebSocket, and why (for the metric and the debug log).
struct Rejection {
    reason: RejectReason,
    detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl ToString) -> Self {
        Self {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// What a handshake admitted: a WebSocket for the service's handler, or an API connection served here.
enum Admitted {
    WebSocket(Upgraded),
    Http(HttpConnection),
}

/// A connection whose first request is for an API route, with everything read from it so far.
struct HttpConnection {
    api: ApiConnection,
    path: &'static str,
    tls: Box<TlsStream>,
    read: Vec<u8>,
    permit: OwnedSemaphorePermit,
}

/// A completed upgrade, ready for the handler, with its slot under the connection limit.
struct Upgraded {
    ws: ServerWs,
    path: &'static str,
    query: String,
    identity: Identity,
    subprotocol: Option<&'static str>,
    permit: OwnedSemaphorePermit,
}

/// One connection from accept to the end of its handler, in the one per-connection span of every service: `peer`
/// from the start, `path` and `user` once the connection is authenticated and upgraded, so every log line a
/// service writes about a connection (its handler runs inside this span) carries the same fields.
///
/// A plain function returning the task's future rather than an `async fn`: the task's future is allocated for the
/// connection's whole life, and an `async fn` keeps every argument in it twice (as captured and as moved into the
/// body, rust-lang/rust#62958), which `#[instrument]` doubles again. Here the future holds the boxed handshake
/// until it is over, then only the handler's future, the permit and the span.
fn connection<H, F>(
    shared: Arc<Shared<H>>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    H: Fn(Accepted) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let span = tracing::info_span!("connection", path = Empty, peer = %peer, user = Empty);
    // The handshake (TLS state, timers, request head) is boxed and freed once it is over. Combinators rather than
    // an `async` block, so the handler's future is polled where it was built instead of being moved into (and
    // also kept in) the block's state.
    let admission = Box::pin(admit(
        Arc::clone(&shared),
        tcp,
        peer,
        slot,
        shutdown.clone(),
    ));
    admission
        .then(move |admitted| match admitted {
            Some(admitted) => Either::Left(serve_admitted(&shared, admitted, peer, shutdown)),
            None => Either::Right(std::future::ready(())),
        })
        .instrument(span)
}

/// What serves an admitted connection: the handler's future (with the connection's permit and its place in the
/// open-connections gauge), or the HTTP API's boxed one.
fn serve_admitted<H, F>(
    shared: &Shared<H>,
    admitted: Admitted,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> Either<impl Future<Output = ()> + Send + use<H, F>, impl Future<Output = ()> + Send + use<H, F>>
where
    H: Fn(Accepted) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let open = shared.config.metrics.open_connection();
    match admitted {
        Admitted::WebSocket(upgraded) => {
            let (handler, permit) = hand_over(shared, upgraded, peer, shutdown);
            Either::Left(handler.map(move |()| drop((permit, open))))
        }
        Admitted::Http(http) => {
            tracing::Span::current().record("path", display(http.path));
            let limits = shared.config.limits.clone();
            Either::Right(Box::pin(async move {
                http.api.serve(http.tls, http.read, &limits, shutdown).await;
                drop(http.permit);
                drop(open);
            }))
        }
    }
}

/// Builds the handler's future for an upgraded connection, returned with the connection's permit.
fn hand_over<H, F>(
    shared: &Shared<H>,
    upgraded: Upgraded,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> (F, OwnedSemaphorePermit)
where
    H: Fn(Accepted) -> F,
{
    let span = tracing::Span::current();
    span.record("path", display(upgraded.path));
    span.record("user", display(&upgraded.identity.user));
    tracing::debug!(subprotocol = ?upgraded.subprotocol, "accepted");
    let handler = (shared.handler)(Accepted {
        ws: upgraded.ws,
        peer,
        path: upgraded.path,
        user: upgraded.identity.user,
        permissions: upgraded.identity.permissions,
        subprotocol: upgraded.subprotocol,
        query: upgraded.query,
        shutdown,
    });
    (handler, upgraded.permit)
}

/// Runs the handshake under the handshake timeout unless shutdown comes first, and records why a connection was
/// not upgraded. `None` means there is nothing for the handler: a page was served or the connection refused.
/// The handshake slot is given back when this returns.
async fn admit<H>(
    shared: Arc<Shared<H>>,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: HandshakeSlot,
    shutdown: CancellationToken,
) -> Option<Admitted> {
    let metrics = &shared.config.metrics;
    let handshake = tokio::time::timeout(
        shared.config.limits.handshake_timeout,
        handshake(&shared, tcp, peer),
    );
    let outcome = tokio::select! {
        outcome = handshake => outcome,
        () = shutdown.cancelled() => return None,
    };
    match outcome {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(rejection)) => {
            metrics.reject(rejection.reason);
            tracing::debug!(reason = rejection.reason.as_str(), detail = %rejection.detail, "connection rejected");
            None
        }
        Err(_elapsed) => {
            metrics.reject(RejectReason::HandshakeTimeout);
            tracing::debug!("handshake timed out");
            None
        }
    }
}

/// TLS, request head, routing, checks and upgrade. `Ok(None)` means a page was served.
async fn handshake<H>(
    shared: &Shared<H>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Option<Admitted>, Rejection> {
    let mut tls = tls_stream::accept(shared.config.tls.clone(), tcp)
        .await
        .map_err(|err| Rejection::new(RejectReason::Tls, err))?;
    let (head, mut read, head_len) = match read_request_head_raw(&mut tls).await {
        Ok(read) => read,
        Err(err @ (HttpError::Malformed(_) | HttpError::TooLarge)) => {
            return Err(refuse(
                &mut tls,
                Response::text(400, "bad request\n"),
                RejectReason::BadRequest,
                err,
            )
            .await);
        }
        Err(err) => return Err(Rejection::new(RejectReason::BadRequest, err)),
    };
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        let response = Response::text(503, "too many connections, try again later\n")
            .header("Retry-After", "1");
        return Err(refuse(
            &mut tls,
            response,
            RejectReason::Limit,
            "connection limit reached",
        )
        .await);
    };
    let Some(route) = shared.config.routes.iter().find(|r| r.matches(&head.path)) else {
        return Err(refuse(
            &mut tls,
            Response::text(404, "not found\n"),
            RejectReason::NotFound,
            "unknown path",
        )
        .await);
    };
    let (path, subprotocols) = match route {
        Route::WebSocket { path, subprotocols } => (*path, *subprotocols),
        Route::Page {
            content_type, body, ..
        } => {
            if head.method != "GET" {
                let response = Response::text(405, "method not allowed\n").header("Allow", "GET");
                return Err(refuse(
                    &mut tls,
                    response,
                    RejectReason::BadRequest,
                    "page method not GET",
                )
                .await);
            }
            let response = Response::new(200)
                .header("Cache-Control", "no-cache")
                .body(content_type, *body);
            if let Err(err) = respond(&mut tls, &response).await {
                tracing::debug!(%err, "serving page");
            }
            return Ok(None);
        }
        Route::Http {
            path_prefix,
            handler,
        } => {
            let api = ApiConnection {
                handler: handler.clone(),
                auth: shared.config.auth.clone(),
                metrics: shared.config.metrics.clone(),
                peer,
            };
            return Ok(Some(Admitted::Http(HttpConnection {
                api,
                path: path_prefix,
                tls: Box::new(tls),
                read,
                permit,
            })));
        }
    };
    let leftover = read.split_off(head_len);
    let Some(key) = upgrade_key(&head) else {
        let response = Response::text(400, "expected a WebSocket upgrade\n")
            .header("Sec-WebSocket-Version", "13");
        return Err(refuse(
            &mut tls,
            response,
            RejectReason::BadRequest,
            "no valid upgrade headers",
        )
        .await);
    };
    if let Some(origin) = head.header("origin")
        && !shared.origins.contains(&normalize_origin(origin))
    {
        let response = Response::text(403, "origin not allowed\n");
        return Err(refuse(
            &mut tls,
            response,
            RejectReason::Origin,
            format!("origin {origin:?} not allowed"),
        )
        .await);
    }
    let presented = presented(&head);
    let config = &shared.config;
    let authenticated = authenticate(
        &config.auth,
        &config.metrics,
        presented.as_ref(),
        peer,
        head.header("origin"),
    );
    let identity = match authenticated.await {
        Ok(identity) => identity,
        Err(refused) => {
            let (response, reason) = refusal(&refused);
            return Err(refuse(&mut tls, response, reason, refused).await);
        }
    };
    if let Some(check) = shared.config.query_check
        && let Err(problem) = check(path, &head.query)
    {
        let response = Response::text(400, format!("{problem}\n"));
        return Err(refuse(&mut tls, response, RejectReason::BadRequest, problem).await);
    }
    let subprotocol = offered_subprotocols(&head)
        .filter(|offered| !Presented::is_credential_subprotocol(offered))
        .find_map(|offered| {
            subprotocols
                .iter()
                .copied()
                .find(|spoken| *spoken == offered)
        });
    let mut response = Response::new(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", derive_accept_key(key.as_bytes()));
    if let Some(protocol) = subprotocol {
        response = response.header("Sec-WebSocket-Protocol", protocol);
    }
    response
        .write_to(&mut tls)
        .await
        .map_err(|err| Rejection::new(RejectReason::BadRequest, err))?;
    let config = shared.config.limits.websocket_config();
    let ws =
        WebSocketStream::from_partially_read(Box::new(tls), leftover, Role::Server, Some(config))
            .await;
    Ok(Some(Admitted::WebSocket(Upgraded {
        ws,
        path,
        query: head.query,
        identity,
        subprotocol,
        permit,
    })))
}

/// Answers with an error response, closes the connection and returns the rejection to record.
async fn refuse<S>(
    stream: &mut S,
    response: Response,
    reason: RejectReason,
    detail: impl ToString,
) -> Rejection
where
    S: tokio::io::AsyncWrite + Unpin,
{
    if let Err(err) = respond(stream, &response).await {
        tracing::debug!(%err, status = response.status(), "writing rejection");
    }
    Rejection::new(reason, detail)
}

/// Writes a final response and shuts the stream down (TLS close_notify, then FIN).
async fn respond<S>(stream: &mut S, response: &Response) -> io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    response.write_to(stream).await?;
    stream.shutdown().await
}

/// The `Sec-WebSocket-Key` of a valid upgrade request (RFC 6455 §4.2.1), or `None` if it is not one.
fn upgrade_key(head: &RequestHead) -> Option<&str> {
    let valid = head.method == "GET"
        && head.has_token("upgrade", "websocket")
        && head.has_token("connection", "upgrade")
        && head.header("sec-websocket-version") == Some("13");
    head.header("sec-websocket-key")
        .filter(|key| valid && !key.is_empty())
}

/// Every subprotocol the client offered, in its order of preference.
fn offered_subprotocols(head: &RequestHead) -> impl Iterator<Item = &str> {
    head.headers("sec-websocket-protocol")
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Credentials from the `Authorization` header (Basic or Bearer), or else from a `wsmq.auth.*` or
/// `wsmq.bearer.*` subprotocol (browsers cannot set headers on a WebSocket).
fn presented(head: &RequestHead) -> Option<Presented> {
    head.header("authorization")
        .and_then(Presented::from_authorization)
        .or_else(|| offered_subprotocols(head).find_map(Presented::from_subprotocol))
}

/// The authentication step of everything the listener serves (WebSocket handshakes and HTTP API requests): the
/// users, or the auth callout, timed and counted by outcome.
pub(crate) async fn authenticate(
    auth: &Authenticator,
    metrics: &ListenerMetrics,
    presented: Option<&Presented>,
    peer: SocketAddr,
    origin: Option<&str>,
) -> Result<Identity, Refused> {
    let started = tokio::time::Instant::now();
    let outcome = auth.authenticate(presented, peer, origin).await;
    if auth.uses_callout() {
        let counted = match &outcome {
            Ok(_) => Some(CalloutOutcome::Allowed),
            Err(Refused::Denied(_)) => Some(CalloutOutcome::Denied),
            Err(Refused::Unavailable(_) | Refused::NoUserForToken) => {
                Some(CalloutOutcome::Unavailable)
            }
            Err(Refused::Auth(_) | Refused::BearerWithoutCallout) => None,
        };
        if let Some(counted) = counted {
            metrics.callout(counted, started.elapsed());
        }
    }
    outcome
}

/// The answer to a refused authentication: 401 (with the reason when it is not about a password), 429 with
/// `Retry-After`, or 503 when the auth callout could not decide.
fn refusal(refused: &Refused) -> (Response, RejectReason) {
    let unauthorized = |text: String| {
        (
            Response::text(401, &text).header("WWW-Authenticate", WWW_AUTHENTICATE),
            RejectReason::Auth,
        )
    };
    match refused {
        Refused::Auth(AuthFailure::Throttled { retry_after }) => {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let response = Response::text(429, "too many failed logins, try again later\n")
                .header("Retry-After", seconds.max(1).to_string());
            (response, RejectReason::Throttled)
        }
        Refused::Auth(_) => unauthorized("unauthorized\n".to_owned()),
        Refused::BearerWithoutCallout | Refused::Denied(_) => {
            unauthorized(format!("unauthorized: {refused}\n"))
        }
        Refused::Unavailable(_) | Refused::NoUserForToken => (
            Response::text(503, "authentication service unavailable, try again later\n")
                .header("Retry-After", "1"),
            RejectReason::AuthUnavailable,
        ),
    }
}

/// The origins a browser shows for pages served by this listener itself.
fn own_origins(port: u16) -> Vec<String> {
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .map(|host| format!("https://{host}:{port}"))
        .collect()
}

/// Origins compare case-insensitively and without a trailing slash.
fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}
