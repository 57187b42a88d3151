//! What every service does to start: bind its listeners, and the errors starting can end in.
//!
//! msgqueue, publisher and subscriber all bind a TLS WebSocket listener and a plain admin listener before serving,
//! and fail to start for the same reasons; they share this instead of each spelling it out.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::auth::AuthError;
use crate::config::LinkConfigError;
use crate::server::ServeError;
use crate::supervise::TaskFailure;
use crate::tls::TlsError;

/// A listener address could not be bound (in use, no permission) or its bound address read.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
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

/// Why a service that links to msgqueue (publisher, subscriber) could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The TLS certificate or key could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No users, or an unreadable users file.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The link to msgqueue is misconfigured (missing credentials, bad URL or CA).
    #[error(transparent)]
    Link(#[from] LinkConfigError),
    /// The client listener failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A long-lived part (the link, the admin listener) panicked or ended on its own; the service drained and
    /// stopped so that it can be restarted.
    #[error(transparent)]
    Task(#[from] TaskFailure),
}
