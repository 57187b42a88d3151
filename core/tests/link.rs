//! The reconnecting link against real listeners: backoff, readiness, shutdown, and failover over a list of
//! servers.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Captured, TestResult, TestServer, good_credentials, start, test_limits};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsmq_core::admin::Readiness;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::dial::{ClientWs, Dialer, Dialers};
use wsmq_core::link::{Link, Protocol, Start};
use wsmq_core::logging::{self, LogFormat};

/// How long the flapping tests watch the link redial.
const WINDOW: Duration = Duration::from_secs(2);

/// A backoff no test waits out: a link that connects within a test's bound did so without a backoff delay.
const NEVER: BackoffArgs = BackoffArgs {
    initial: Duration::from_secs(3600),
    max: Duration::from_secs(3600),
};

/// A protocol whose connections end at once, as with a peer that accepts and then drops the link.
struct Flapping {
    connections: usize,
}

impl Flapping {
    /// Runs `link` with this protocol for [`WINDOW`], then stops it; returns the protocol to count connections.
    async fn run_for_window(link: &Link) -> Self {
        let mut flapping = Self { connections: 0 };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(WINDOW).await;
            stop.cancel();
        });
        link.run(&mut flapping, Start::Dial, &shutdown).await;
        flapping
    }
}

impl Protocol for Flapping {
    type Error = &'static str;

    fn path(&self) -> &str {
        "/echo"
    }

    async fn serve(
        &mut self,
        ws: ClientWs,
        _shutdown: &CancellationToken,
    ) -> Result<(), Self::Error> {
        drop(ws);
        self.connections += 1;
        Err("dropped")
    }
}

/// A protocol that reports each connection and holds it until shutdown.
struct Holding {
    up: mpsc::Sender<()>,
}

impl Protocol for Holding {
    type Error = &'static str;

    fn path(&self) -> &str {
        "/echo"
    }

    async fn serve(
        &mut self,
        ws: ClientWs,
        shutdown: &CancellationToken,
    ) -> Result<(), Self::Error> {
        let _ = self.up.send(()).await;
        shutdown.cancelled().await;
        drop(ws);
        Ok(())
    }
}

/// A protocol that reports the URL of each connection and serves it until the server ends it (a lost link) or
/// shutdown, counting redials.
struct Following {
    url: String,
    up: mpsc::Sender<String>,
    redials: AtomicUsize,
}

impl Protocol for Following {
    type Error = &'static str;

    fn path(&self) -> &str {
        "/echo"
    }

    fn redialing(&self) {
        self.redials.fetch_add(1, Ordering::Relaxed);
    }

    async fn connected(&mut self, url: &str) -> wsmq_core::link::Flow {
        self.url = url.to_owned();
        wsmq_core::link::Flow::Continue
    }

    async fn serve(
        &mut self,
        mut ws: ClientWs,
        shutdown: &CancellationToken,
    ) -> Result<(), Self::Error> {
        let _ = self.up.send(self.url.clone()).await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = ws.next() => match message {
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return Err("lost"),
                },
            }
        }
    }
}

/// A dialer for the `/echo` listener `server`, trusting its CA.
fn dialer_for(server: &TestServer) -> TestResult<Dialer> {
    Ok(Dialer::new(
        &format!("wss://localhost:{}", server.addr.port()),
        good_credentials(),
        server.client_tls.clone(),
    )?)
}

/// Runs `link` with [`Following`] in a task until `shutdown`; returns the URLs of its connections as they come,
/// and the task, which ends with the number of redials.
fn follow(
    link: Link,
    shutdown: &CancellationToken,
) -> (mpsc::Receiver<String>, tokio::task::JoinHandle<usize>) {
    let (up, connections) = mpsc::channel(4);
    let shutdown = shutdown.clone();
    let running = tokio::spawn(async move {
        let mut following = Following {
            url: String::new(),
            up,
            redials: AtomicUsize::new(0),
        };
        link.run(&mut following, Start::Dial, &shutdown).await;
        following.redials.into_inner()
    });
    (connections, running)
}

#[tokio::test]
async fn a_link_given_two_urls_connects_to_the_second_when_the_first_refuses_connections()
-> TestResult {
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let refused_port = refusing.local_addr()?.port();
    drop(refusing);
    let server = start(test_limits()).await?;
    let refused = Dialer::new(
        &format!("wss://localhost:{refused_port}"),
        good_credentials(),
        server.client_tls.clone(),
    )?;
    let live = dialer_for(&server)?;
    let live_url = live.url().to_owned();
    let link = Link::new(Dialers::new(refused, [live]), NEVER);
    let shutdown = CancellationToken::new();
    let (mut connections, running) = follow(link, &shutdown);

    let url = tokio::time::timeout(common::STEP, connections.recv()).await?;
    assert_eq!(
        url.as_deref(),
        Some(live_url.as_str()),
        "no backoff delay first"
    );
    shutdown.cancel();
    let redials = tokio::time::timeout(common::STEP, running).await??;
    assert_eq!(
        redials, 1,
        "the dial of the second URL counts as a reconnect"
    );
    server.stop().await
}

#[tokio::test]
async fn a_link_whose_server_goes_away_moves_to_the_next_at_once_and_logs_where() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    let (dispatch, _) = logging::dispatch(LogFormat::Json, Some("info"), move || writer.clone());
    // This test's thread only: the runtime of a `#[tokio::test]` runs every task of the test on it.
    let _logging = tracing::dispatcher::set_default(&dispatch);
    let first = start(test_limits()).await?;
    let second = start(test_limits()).await?;
    let (first_dialer, second_dialer) = (dialer_for(&first)?, dialer_for(&second)?);
    let (first_url, second_url) = (
        first_dialer.url().to_owned(),
        second_dialer.url().to_owned(),
    );
    let link = Link::new(Dialers::new(first_dialer, [second_dialer]), NEVER);
    let shutdown = CancellationToken::new();
    let (mut connections, running) = follow(link, &shutdown);

    let url = tokio::time::timeout(common::STEP, connections.recv()).await?;
    assert_eq!(
        url.as_deref(),
        Some(first_url.as_str()),
        "the list is tried in order"
    );
    first.stop().await?;
    let url = tokio::time::timeout(common::STEP, connections.recv()).await?;
    assert_eq!(
        url.as_deref(),
        Some(second_url.as_str()),
        "no backoff delay first"
    );
    shutdown.cancel();
    let redials = tokio::time::timeout(common::STEP, running).await??;
    assert_eq!(
        redials, 1,
        "moving to the second server counts as a reconnect"
    );
    let logs = captured.text();
    assert!(
        logs.lines()
            .any(|line| line.contains("moving to the next server")
                && line.contains(&format!(r#""from":"{first_url}""#))
                && line.contains(&format!(r#""to":"{second_url}""#))),
        "{logs}"
    );
    assert!(!logs.contains(common::PASSWORD), "{logs}");
    second.stop().await
}

#[tokio::test]
async fn servers_that_all_drop_every_connection_at_once_are_redialled_ever_more_slowly()
-> TestResult {
    let (first, second) = (start(test_limits()).await?, start(test_limits()).await?);
    let backoff = BackoffArgs {
        initial: Duration::from_millis(20),
        max: Duration::from_secs(2),
    };
    let link = Link::new(
        Dialers::new(dialer_for(&first)?, [dialer_for(&second)?]),
        backoff,
    );
    let flapping = Flapping::run_for_window(&link).await;
    // A backoff delay after each round over both servers: about twice the connections of one flapping server
    // (see below). Had each lost connection started a new round, the link would never wait: hundreds.
    assert!(
        (2..=40).contains(&flapping.connections),
        "{} connections",
        flapping.connections
    );
    first.stop().await?;
    second.stop().await
}

#[tokio::test]
async fn a_peer_that_drops_every_connection_at_once_is_redialled_ever_more_slowly() -> TestResult {
    let server = start(test_limits()).await?;
    let dialer = Dialer::new(
        &format!("wss://localhost:{}", server.addr.port()),
        good_credentials(),
        server.client_tls.clone(),
    )?;
    let backoff = BackoffArgs {
        initial: Duration::from_millis(20),
        max: Duration::from_secs(2),
    };
    let link = Link::new(dialer, backoff);
    let flapping = Flapping::run_for_window(&link).await;
    // Delay caps 20, 40, 80 … ms: about 8 connections fit the window. Had every connection reset the backoff,
    // the link would redial every 10 ms on average: well over 50.
    assert!(
        flapping.connections >= 2,
        "{} connections",
        flapping.connections
    );
    assert!(
        flapping.connections <= 20,
        "{} connections",
        flapping.connections
    );
    server.stop().await
}

#[tokio::test]
async fn readiness_holds_while_connected_and_the_link_ends_on_shutdown() -> TestResult {
    let server = start(test_limits()).await?;
    let dialer = Dialer::new(
        &format!("wss://localhost:{}", server.addr.port()),
        good_credentials(),
        server.client_tls.clone(),
    )?
    .with_subprotocol("wsmq.v1");
    let readiness = Readiness::new();
    let ready = readiness.condition("link");
    let link = Link::new(dialer, BackoffArgs::default())
        .require_subprotocol("wsmq.v1")
        .with_readiness(ready.clone());
    let (up, mut connected) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            link.run(&mut Holding { up }, Start::Dial, &shutdown).await;
        }
    });
    tokio::time::timeout(common::STEP, connected.recv()).await?;
    assert!(ready.is_ready(), "ready while connected");
    shutdown.cancel();
    tokio::time::timeout(common::STEP, running).await??;
    assert!(!ready.is_ready(), "not ready once stopped");
    server.stop().await
}
