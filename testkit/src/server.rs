//! A real `wsmq_core::server` listener with a handler of the test's own: how a test fakes a neighbour (msgqueue
//! for the publisher and subscriber, both edges for clientdemo) or drives the listener itself.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wsmq_core::auth::Authenticator;
use wsmq_core::limits::Limits;
use wsmq_core::server::{Accepted, Route, ServeError, ServerConfig, serve};
use wsmq_core::{Secret, tls};

use crate::wait::within;

/// A listener config as a service builds it: the development PKI in `data_dir` (created on first use, so clients
/// trusting that dir's CA accept it), `users` (`user:password` lines) as the only accounts, `limits`, `routes`.
pub fn server_config(
    data_dir: &Path,
    users: &Secret,
    limits: Limits,
    routes: Vec<Route>,
) -> anyhow::Result<ServerConfig> {
    let tls = tls::server_config(None, None, data_dir)?;
    let auth = Authenticator::from_users(users)?;
    Ok(ServerConfig::new(tls, auth, limits, routes))
}

/// A listener serving in a task until [`FakeServer::stop`].
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to shut it down (what [`FakeServer::stop`] does).
    pub shutdown: CancellationToken,
    /// The `serve` task.
    pub task: JoinHandle<Result<(), ServeError>>,
}

impl FakeServer {
    /// Binds `addr` (port 0 for a fresh port, or the port of a stopped server to restart it there) and serves
    /// `config` with `handler`.
    pub async fn start<H, F>(
        addr: SocketAddr,
        config: ServerConfig,
        handler: H,
    ) -> anyhow::Result<Self>
    where
        H: Fn(Accepted) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::new(config), handler, shutdown.clone()));
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    /// Shuts the listener down (its connections drain) and checks that `serve` ended cleanly, within the bound.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        within("the fake server to stop", self.task).await???;
        Ok(())
    }
}
