//! Shared by the stack's tests: a configuration on port 0 with a temp data dir, and bounded waits.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use wsmq::{Config, Service};
use wsmq_core::Secret;
use wsmq_core::config::{LinkArgs, ServerArgs};

/// Bound on every await, so a bug fails a test instead of hanging CI.
pub const STEP: Duration = Duration::from_secs(30);

pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub const ALL: &[Service] = &[Service::Msgqueue, Service::Publisher, Service::Subscriber];

/// `services` on loopback port 0 with dev certificates and the dev users in `data_dir`; a link to msgqueue (for
/// stacks without it) authenticates as the dev user.
pub fn config(data_dir: &Path, services: &[Service]) -> Config {
    Config {
        msgqueue_listen: "127.0.0.1:0".parse().unwrap(),
        publisher_listen: "127.0.0.1:0".parse().unwrap(),
        subscriber_listen: "127.0.0.1:0".parse().unwrap(),
        admin_port: 0,
        server: ServerArgs {
            data_dir: data_dir.to_path_buf(),
            tls_cert: None,
            tls_key: None,
            users_file: None,
            users: None,
            allowed_origins: Vec::new(),
        },
        services: services.to_vec(),
        link: LinkArgs {
            queue_url: "wss://localhost:8080".into(),
            queue_user: Some("hello".into()),
            queue_password: Some(Secret::new("test")),
            ca: None,
            insecure: false,
            backoff: wsmq_core::backoff::BackoffArgs::default(),
        },
    }
}
