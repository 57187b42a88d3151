//! The reconnecting link against a real listener: backoff, readiness and shutdown.

mod common;

use std::time::Duration;

use common::{TestResult, good_credentials, start, test_limits};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsmq_core::admin::Readiness;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::dial::{ClientWs, Dialer};
use wsmq_core::link::{Link, Protocol, Start};

/// How long the flapping test watches the link redial.
const WINDOW: Duration = Duration::from_secs(2);

/// A protocol whose connections end at once, as with a peer that accepts and then drops the link.
struct Flapping {
    connections: usize,
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
    let mut flapping = Flapping { connections: 0 };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(WINDOW).await;
        stop.cancel();
    });
    link.run(&mut flapping, Start::Dial, &shutdown).await;
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
