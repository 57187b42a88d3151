//! Test helpers: a fake msgqueue serving `/popmsg` in `wsmq.v1` (each link connection is handed to the test,
//! which scripts deliveries and reads acks and credit), a subscriber on 127.0.0.1:0 pointed at it, and
//! subscriber clients speaking ws-go's frames or `wsmq.v1`. Bounds, flags, the listener under the fake and the
//! clients' dialing come from `wsmq-testkit`.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::config::AccessArgs;
use wsmq_core::dial::ClientWs;
use wsmq_core::limits::Limits;
use wsmq_core::protocol::envelope::Envelope;
use wsmq_core::protocol::queue::{FrameReader, FrameWriter, NackReason, PopRecord};
use wsmq_core::protocol::{POP_PATH, SUBPROTOCOL_V1, SUBSCRIBE_PATH};
use wsmq_core::server::{Route, ServerWs};
use wsmq_subscriber::{Config, SlowClientPolicy, SubscriberMetrics};
pub use wsmq_testkit::TestResult;
use wsmq_testkit::admin::{await_readyz, http_status};
use wsmq_testkit::client::{close_code, connect, dialer, send_text};
use wsmq_testkit::config::{credentials, link_args, service_args, users};
use wsmq_testkit::server::{FakeServer, server_config};
use wsmq_testkit::service::ServiceTask;
use wsmq_testkit::within;
/// The subscriber's client user.
const CLIENT_USER: &str = "alice";
const CLIENT_PASSWORD: &str = "alice-pw";
/// The user the subscriber's link presents to the fake msgqueue.
const LINK_USER: &str = "subscriber";
const LINK_PASSWORD: &str = "link-pw";
/// Link connections the fake queue holds for the test before it must pick them up.
const FAKE_QUEUE_BACKLOG: usize = 4;

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
    server: FakeServer,
}

impl FakeQueue {
    /// Starts on `addr` (port 0 for a fresh one) with the dev PKI in `dir`.
    pub async fn start(dir: &std::path::Path, addr: SocketAddr) -> TestResult<Self> {
        let routes = vec![Route::WebSocket {
            path: POP_PATH,
            subprotocols: &[SUBPROTOCOL_V1],
        }];
        let link_users = users(LINK_USER, LINK_PASSWORD);
        let config = server_config(dir, &link_users, Limits::default(), routes)?;
        let (sender, connections) = mpsc::channel(FAKE_QUEUE_BACKLOG);
        let handler = move |accepted: wsmq_core::server::Accepted| {
            let sender = sender.clone();
            async move {
                if accepted.subprotocol == Some(SUBPROTOCOL_V1) {
                    let _ = sender.send(accepted.ws).await;
                }
            }
        };
        let server = FakeServer::start(addr, config, handler).await?;
        Ok(Self {
            addr: server.addr,
            connections,
            server,
        })
    }

    /// The next link connection the subscriber opens.
    pub async fn accept(&mut self) -> TestResult<QueueConn> {
        let ws = within("the next link connection", self.connections.recv())
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
        Ok(self.server.stop().await?)
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
            let message = within("a frame from the link", self.ws.next())
                .await?
                .ok_or("link closed")??;
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
            frame.deliver(*id, *redelivered, None, payload);
        }
        self.credit -= count;
        within(
            "a delivery to be sent",
            self.ws.send(Message::Binary(frame.take())),
        )
        .await??;
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
    service: ServiceTask<wsmq_subscriber::Error>,
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
    /// `--acl-file`, `--auth-url` and co.
    pub access: AccessArgs,
    /// `--link-backoff-initial` and `--link-backoff-max`.
    pub backoff: BackoffArgs,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefetch: 64,
            client_queue: 1024,
            slow_client: SlowClientPolicy::Close,
            slow_client_timeout: Duration::from_secs(2),
            max_subscriptions: 1024,
            access: AccessArgs::default(),
            backoff: BackoffArgs::default(),
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
        Self::start_linked(dir, &[queue], settings).await
    }

    /// Like [`Subscriber::start`], with `--queue-url` listing every queue of `queues`, in order.
    pub async fn start_linked(
        dir: &std::path::Path,
        queues: &[SocketAddr],
        settings: Settings,
    ) -> TestResult<Self> {
        let mut config = Config {
            service: service_args(
                dir,
                Some(users(CLIENT_USER, CLIENT_PASSWORD)),
                Limits {
                    drain_timeout: Duration::from_secs(3),
                    ..Limits::default()
                },
            ),
            link: link_args(String::new(), LINK_USER, LINK_PASSWORD, settings.backoff),
            max_subscriptions: settings.max_subscriptions,
            client_queue: settings.client_queue,
            slow_client: settings.slow_client,
            slow_client_timeout: settings.slow_client_timeout,
            prefetch: settings.prefetch,
            group: None,
            access: settings.access,
        };
        config.link.queue_url = queues
            .iter()
            .map(|queue| format!("wss://localhost:{}", queue.port()))
            .collect();
        let bound = wsmq_subscriber::bind(config).await?;
        let (addr, admin, metrics) = (bound.local_addr(), bound.admin_addr(), bound.metrics());
        Ok(Self {
            addr,
            admin,
            metrics,
            service: ServiceTask::spawn(|shutdown| bound.run(shutdown)),
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

    async fn client(&self, subprotocol: Option<&'static str>) -> TestResult<Client> {
        let url = format!("wss://localhost:{}", self.addr.port());
        let credentials = credentials(CLIENT_USER, CLIENT_PASSWORD);
        let dialer = dialer(&url, &self.dir, credentials, subprotocol)?;
        let ws = connect(&dialer, SUBSCRIBE_PATH, subprotocol).await?;
        Ok(Client { ws })
    }

    /// HTTP status of `GET path` on the admin listener.
    pub async fn admin_status(&self, path: &str) -> TestResult<u16> {
        Ok(http_status(self.admin, path).await?)
    }

    /// Waits (bounded) until `/readyz` answers `status`.
    pub async fn await_readyz(&self, status: u16) -> TestResult {
        Ok(await_readyz(self.admin, status).await?)
    }

    /// Waits (bounded) for the subscriber to stop without being asked, returning what `run` returned.
    pub async fn stopped_on_its_own(self) -> TestResult<Result<(), wsmq_subscriber::Error>> {
        Ok(self.service.stopped_on_its_own().await?)
    }

    /// Shuts the subscriber down and checks it stopped cleanly.
    pub async fn stop(self) -> TestResult {
        Ok(self.service.stop().await?)
    }
}

/// A subscriber client.
pub struct Client {
    /// The WebSocket.
    pub ws: ClientWs,
}

impl Client {
    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) -> TestResult {
        Ok(send_text(&mut self.ws, text).await?)
    }

    /// The next text frame.
    pub async fn recv(&mut self) -> TestResult<String> {
        loop {
            match within("a text frame", self.ws.next())
                .await?
                .ok_or("connection ended")??
            {
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
        Ok(close_code(&mut self.ws).await?)
    }
}
