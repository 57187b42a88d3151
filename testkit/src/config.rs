//! Test users and the flags every service shares, set for a service on loopback port 0 that keeps its state (and
//! development certificates) in a test's temp dir.

use std::net::SocketAddr;
use std::path::Path;

use wsmq_core::Secret;
use wsmq_core::auth::Credentials;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::config::{LinkArgs, ServerArgs, ServiceArgs};
use wsmq_core::limits::Limits;

/// `127.0.0.1:0`: where every test binds, so tests never collide on a port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A users list (`--users`) holding one `user` with `password`.
pub fn users(user: &str, password: &str) -> Secret {
    Secret::new(format!("{user}:{password}"))
}

/// Basic credentials of `user` with `password`.
pub fn credentials(user: &str, password: &str) -> Credentials {
    Credentials::new(user, Secret::new(password))
}

/// Server flags for a test: state and the development PKI in `data_dir` (so every service of a test sharing it
/// trusts the others), no certificate files, `users` as the only accounts (`None`: the development users).
pub fn server_args(data_dir: &Path, users: Option<Secret>) -> ServerArgs {
    ServerArgs {
        data_dir: data_dir.to_path_buf(),
        tls_cert: None,
        tls_key: None,
        users_file: None,
        users,
        allowed_origins: Vec::new(),
    }
}

/// Link flags for a test: msgqueue at `queue_url` as `user`, trusting the development CA of the service's data
/// dir (no `--ca`, never `--insecure`), reconnecting with `backoff`. A test of failover sets `queue_url` to its
/// list afterwards.
pub fn link_args(queue_url: String, user: &str, password: &str, backoff: BackoffArgs) -> LinkArgs {
    LinkArgs {
        queue_url: vec![queue_url],
        queue_user: Some(user.to_owned()),
        queue_password: Some(Secret::new(password)),
        ca: None,
        insecure: false,
        backoff,
    }
}

/// The flags every service shares, for a test: both listeners on loopback port 0, [`server_args`] and `limits`.
pub fn service_args(data_dir: &Path, users: Option<Secret>, limits: Limits) -> ServiceArgs {
    ServiceArgs {
        listen: loopback(),
        admin_listen: loopback(),
        server: server_args(data_dir, users),
        limits,
    }
}
