//! Shared by the stack's tests: a configuration on port 0 with a temp data dir, bounded waits, a running stack
//! that stops on demand, and a wsmq.v1 client.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use wsmq::{Config, Service, Stack};
use wsmq_core::Secret;
use wsmq_core::auth::Credentials;
use wsmq_core::config::{LinkArgs, ServerArgs};
use wsmq_core::dial::{ClientWs, Dialer};
use wsmq_core::protocol::SUBPROTOCOL_V1;
use wsmq_core::protocol::client::ServerFrame;

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

/// A stack serving in a task, stopped (and checked to stop cleanly) by [`Running::stop`].
pub struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), wsmq::Error>>,
}

impl Running {
    pub fn start(stack: Stack) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stack.run(shutdown.clone()));
        Self { shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        within("stack shutdown", self.task).await.unwrap().unwrap();
    }
}

/// Publisher and subscriber alone, linked to the msgqueue on `queue_port`, running; returns them with their
/// publisher and subscriber ports.
pub async fn start_edges(data_dir: &Path, queue_port: u16) -> (Running, u16, u16) {
    let mut edges_config = config(data_dir, &[Service::Publisher, Service::Subscriber]);
    edges_config.link.queue_url = format!("wss://localhost:{queue_port}");
    let edges = wsmq::bind(edges_config).await.unwrap();
    let (pub_port, sub_port) = (
        edges.publisher_addr().unwrap().port(),
        edges.subscriber_addr().unwrap().port(),
    );
    (Running::start(edges), pub_port, sub_port)
}

/// A wsmq.v1 client of the publisher or subscriber on `port`, as the dev user, trusting the dev CA in `data_dir`.
pub async fn client(data_dir: &Path, port: u16, path: &str) -> ClientWs {
    let tls = wsmq_core::tls::client_config(None, Some(data_dir), false).unwrap();
    let dialer = Dialer::new(
        &format!("wss://localhost:{port}"),
        Credentials::new("hello", Secret::new("test")),
        tls,
    )
    .unwrap()
    .with_subprotocol(SUBPROTOCOL_V1);
    within("dial", dialer.dial(path)).await.unwrap().0
}

/// The next frame from publisher or subscriber, decoded; pings skipped. One bound covers the whole wait, so a
/// frame that never comes fails the test even while the server keeps pinging.
pub async fn next_frame(ws: &mut ClientWs) -> ServerFrame {
    within("frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return ServerFrame::parse(&text)
                        .unwrap_or_else(|| panic!("unknown frame {text}"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
}
