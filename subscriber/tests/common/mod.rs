//! Test helpers: a fake msgqueue serving `/popmsg` in `wsmq.v1` (each link connection is handed to the test,
//! which scripts deliveries and reads acks and credit), a subscriber on 127.0.0.1:0 pointed at it, and
//! subscriber clients speaking ws-go's frames or `wsmq.v1`.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::Secret;
use wsmq_core::auth::{Authenticator, Credentials};
use wsmq_core::config::{LinkArgs, ServerArgs, ServiceArgs};
use wsmq_core::dial::{ClientWs, Dialer};
use wsmq_core::limits::Limits;
use wsmq_core::protocol::envelope::Envelope;
use wsmq_core::protocol::queue::{FrameReader, FrameWriter, NackReason, PopRecord};
use wsmq_core::protocol::{POP_PATH, SUBPROTOCOL_V1, SUBSCRIBE_PATH};
use wsmq_core::server::{Route, ServerConfig, ServerWs, serve};
use wsmq_core::tls;
use wsmq_subscriber::{Config, SlowClientPolicy, SubscriberMetrics};

/// Result type of tests and helpers.
pub type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// Bound on every network step, so a hung peer fails the test instead of hanging it.
pub const STEP: Duration = Duration::from_secs(10);
/// The subscriber's client user.
const CLIENT_USER: &str = "alice";
const CLIENT_PASSWORD: &str = "alice-pw";
/// The user the subscriber's link presents to the fake msgqueue.
const LINK_USER: &str = "subscriber";
const LINK_PASSWORD: &str = "link-pw";
/// Link connections the fake queue holds for the test before it must pick them up.
const FAKE_QUEUE_BACKLOG: usize = 4;

/// Awaits `future` for at most [`STEP`].
pub async fn step<F: Future>(future: F) -> TestResult<F::Output> {
    Ok(tokio::time::timeout(STEP, future).await?)
}

/// The canonical envelope bytes the publisher would have pushed.
pub fn envelope(topic: &str, content: &str) -> Bytes {
    Envelope {
        topic: topic.into(),
        content: content.into(),
    }
    .encode()
}

/// A fake msgqueue: a real wsmq listener on `/popmsg` whose handler hands each link connection to the test.
pub struct FakeQueue {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: mpsc::Receiver<ServerWs>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl FakeQueue {
    /// Starts on `addr` (port 0 for a fresh one) with the dev PKI in `dir`.
    pub async fn start(dir: &std::path::Path, addr: SocketAddr) -> TestResult<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let tls = tls::server_config(None, None, dir)?;
        let auth = Authenticator::from_users(&Secret::new(format!("{LINK_USER}:{LINK_PASSWORD}")))?;
        let routes = vec![Route::WebSocket {
            path: POP_PATH,
            subprotocols: &[SUBPROTOCOL_V1],
        }];
        let config = ServerConfig::new(tls, auth, Limits::default(), routes);
        let (sender, connections) = mpsc::channel(FAKE_QUEUE_BACKLOG);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let handler = move |accepted: wsmq_core::server::Accepted| {
                let sender = sender.clone();
                async move {
                    if accepted.subprotocol == Some(SUBPROTOCOL_V1) {
                        let _ = sender.send(accepted.ws).await;
                    }
                }
            };
            let _ = serve(listener, std::sync::Arc::new(config), handler, token).await;
        });
        Ok(Self {
            addr,
            connections,
            shutdown,
            task,
        })
    }

    /// The next link connection the subscriber opens.
    pub async fn accept(&mut self) -> TestResult<QueueConn> {
        let ws = step(self.connections.recv())
            .await?
            .ok_or("fake queue stopped")?;
        Ok(QueueConn {
            ws,
            credit: 0,
            acked: BTreeSet::new(),
            nacked: BTreeMap::new(),
        })
    }

    /// Stops listening (established connections the test holds stay open) and frees the port.
    pub async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        step(self.task).await??;
        Ok(())
    }
}

/// One link connection as seen by the fake queue.
pub struct QueueConn {
    ws: ServerWs,
    /// Free slots in the link's window: CREDIT widens it, deliveries use slots, acks free them (msgqueue's
    /// window semantics).
    pub credit: i64,
    /// Delivery ids acked so far.
    pub acked: BTreeSet<u64>,
    /// Delivery ids refused (NACKed) so far, with the reason.
    pub nacked: BTreeMap<u64, NackReason>,
}

impl QueueConn {
    /// Reads one frame of records from the link, updating credit and acks.
    pub async fn read_records(&mut self) -> TestResult<Vec<PopRecord>> {
        loop {
            let message = step(self.ws.next()).await?.ok_or("link closed")??;
            let Message::Binary(frame) = message else {
                continue;
            };
            let mut reader = FrameReader::new(frame, 0);
            let mut records = Vec::new();
            while let Some(record) = reader.next_pop()? {
                match record {
                    PopRecord::Credit { n } => self.credit += i64::from(n),
                    PopRecord::Ack { id } => {
                        if self.acked.insert(id) {
                            self.credit += 1;
                        }
                    }
                    PopRecord::Nack { id, reason } => {
                        if self.nacked.insert(id, reason).is_none() {
                            self.credit += 1;
                        }
                    }
                }
                records.push(record);
            }
            return Ok(records);
        }
    }

    /// Reads until at least `n` credit is available.
    pub async fn await_credit(&mut self, n: i64) -> TestResult {
        while self.credit < n {
            self.read_records().await?;
        }
        Ok(())
    }

    /// Sends deliveries `(id, redelivered, payload)` in one frame, never beyond the granted credit.
    pub async fn deliver(&mut self, deliveries: &[(u64, bool, Bytes)]) -> TestResult {
        let count = i64::try_from(deliveries.len())?;
        assert!(
            self.credit >= count,
            "the fake queue must not exceed the link's credit"
        );
        let mut frame = FrameWriter::default();
        for (id, redelivered, payload) in deliveries {
            frame.deliver(*id, *redelivered, payload);
        }
        self.credit -= count;
        step(self.ws.send(Message::Binary(frame.take()))).await??;
        Ok(())
    }

    /// Reads until every id in `ids` was acked.
    pub async fn await_acks(&mut self, ids: impl IntoIterator<Item = u64>) -> TestResult {
        let ids: BTreeSet<u64> = ids.into_iter().collect();
        while !ids.is_subset(&self.acked) {
            self.read_records().await?;
        }
        Ok(())
    }
}

/// A running subscriber and what tests need to reach it.
pub struct Subscriber {
    /// Client listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Its metrics.
    pub metrics: SubscriberMetrics,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), wsmq_subscriber::Error>>,
    dir: std::path::PathBuf,
}

/// Test settings: small queues and short timeouts where a test needs them.
pub struct Settings {
    /// `--prefetch`.
    pub prefetch: u32,
    /// `--client-queue`.
    pub client_queue: usize,
    /// `--slow-client`.
    pub slow_client: SlowClientPolicy,
    /// `--slow-client-timeout`.
    pub slow_client_timeout: Duration,
    /// `--max-subscriptions`.
    pub max_subscriptions: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefetch: 64,
            client_queue: 1024,
            slow_client: SlowClientPolicy::Close,
            slow_client_timeout: Duration::from_secs(2),
            max_subscriptions: 1024,
        }
    }
}

impl Subscriber {
    /// Starts a subscriber on 127.0.0.1:0 linked to the fake queue at `queue`, sharing the dev PKI in `dir`.
    pub async fn start(
        dir: &std::path::Path,
        queue: SocketAddr,
        settings: Settings,
    ) -> TestResult<Self> {
        let config = Config {
            service: ServiceArgs {
                listen: "127.0.0.1:0".parse()?,
                admin_listen: "127.0.0.1:0".parse()?,
                server: ServerArgs {
                    data_dir: dir.to_path_buf(),
                    tls_cert: None,
                    tls_key: None,
                    users_file: None,
                    users: Some(Secret::new(format!("{CLIENT_USER}:{CLIENT_PASSWORD}"))),
                    allowed_origins: Vec::new(),
                },
                limits: Limits {
                    drain_timeout: Duration::from_secs(3),
                    ..Limits::default()
                },
            },
            link: LinkArgs {
                queue_url: format!("wss://localhost:{}", queue.port()),
                queue_user: Some(LINK_USER.into()),
                queue_password: Some(Secret::new(LINK_PASSWORD)),
                ca: None,
                insecure: false,
                backoff: wsmq_core::backoff::BackoffArgs::default(),
            },
            max_subscriptions: settings.max_subscriptions,
            client_queue: settings.client_queue,
            slow_client: settings.slow_client,
            slow_client_timeout: settings.slow_client_timeout,
            prefetch: settings.prefetch,
        };
        let bound = wsmq_subscriber::bind(config).await?;
        let (addr, admin, metrics) = (bound.local_addr(), bound.admin_addr(), bound.metrics());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        Ok(Self {
            addr,
            admin,
            metrics,
            shutdown,
            task,
            dir: dir.to_path_buf(),
        })
    }

    /// A client in `wsmq.v1` mode (confirmations and errors).
    pub async fn v1_client(&self) -> TestResult<Client> {
        self.client(Some(SUBPROTOCOL_V1)).await
    }

    /// A client speaking exactly ws-go's frames (no subprotocol).
    pub async fn compat_client(&self) -> TestResult<Client> {
        self.client(None).await
    }

    async fn client(&self, subprotocol: Option<&str>) -> TestResult<Client> {
        let tls = tls::client_config(None, Some(&self.dir), false)?;
        let credentials = Credentials::new(CLIENT_USER, Secret::new(CLIENT_PASSWORD));
        let mut dialer = Dialer::new(
            &format!("wss://localhost:{}", self.addr.port()),
            credentials,
            tls,
        )?;
        if let Some(subprotocol) = subprotocol {
            dialer = dialer.with_subprotocol(subprotocol);
        }
        let (ws, negotiated) = dialer.dial(SUBSCRIBE_PATH).await?;
        assert_eq!(negotiated.as_deref(), subprotocol);
        Ok(Client { ws })
    }

    /// HTTP status of `GET path` on the admin listener.
    pub async fn admin_status(&self, path: &str) -> TestResult<u16> {
        let mut tcp = step(TcpStream::connect(self.admin)).await??;
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        step(tcp.read_to_end(&mut response)).await??;
        let text = String::from_utf8_lossy(&response);
        let status = text.split(' ').nth(1).ok_or("no status line")?;
        Ok(status.parse()?)
    }

    /// Waits (bounded) until `/readyz` answers `status`.
    pub async fn await_readyz(&self, status: u16) -> TestResult {
        eventually(|| async {
            self.admin_status("/readyz")
                .await
                .is_ok_and(|s| s == status)
        })
        .await
    }

    /// Waits (bounded) for the subscriber to stop without being asked, returning what `run` returned.
    pub async fn stopped_on_its_own(self) -> TestResult<Result<(), wsmq_subscriber::Error>> {
        Ok(step(self.task).await??)
    }

    /// Shuts the subscriber down and checks it stopped cleanly.
    pub async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        step(self.task).await???;
        Ok(())
    }
}

/// Polls `condition` every few milliseconds until it holds, for at most [`STEP`]: for state that has no
/// signal a test can await (compat clients get no confirmations).
pub async fn eventually<F, Fut>(mut condition: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    step(async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A subscriber client.
pub struct Client {
    /// The WebSocket.
    pub ws: ClientWs,
}

impl Client {
    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) -> TestResult {
        step(self.ws.send(Message::text(text))).await??;
        Ok(())
    }

    /// The next text frame.
    pub async fn recv(&mut self) -> TestResult<String> {
        loop {
            match step(self.ws.next()).await?.ok_or("connection ended")?? {
                Message::Text(text) => return Ok(text.as_str().to_owned()),
                Message::Close(frame) => return Err(format!("closed: {frame:?}").into()),
                _ => {}
            }
        }
    }

    /// `sub <topic>` in wsmq.v1 mode, waiting for the confirmation.
    pub async fn subscribe(&mut self, topic: &str) -> TestResult {
        self.send(&format!("sub {topic}")).await?;
        assert_eq!(self.recv().await?, format!(r#"{{"subscribed":"{topic}"}}"#));
        Ok(())
    }

    /// Reads frames until a Close frame and returns its code (text frames before it are skipped).
    pub async fn close_code(&mut self) -> TestResult<CloseCode> {
        loop {
            match step(self.ws.next())
                .await?
                .ok_or("ended without a close frame")??
            {
                Message::Close(Some(frame)) => return Ok(frame.code),
                Message::Close(None) => return Err("close frame without a code".into()),
                _ => {}
            }
        }
    }
}
