//! Test helpers: a fake msgqueue speaking the reliable `/pushmsg` protocol, a publisher started on port 0 in
//! front of it, and WebSocket clients that speak ws-go's frames or `wsmq.v1`.
//!
//! The fake queue keeps its "storage" in [`FakeState`], which survives [`FakeQueue::stop`] and
//! [`FakeQueue::restart`], like a durable queue restarted on the same port. Bounds, flags, the listener under the
//! fake and the client's dialing and frame readers come from `wsmq-testkit`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::api_client::ApiClient;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::config::AccessArgs;
use wsmq_core::dial::ClientWs;
use wsmq_core::limits::Limits;
use wsmq_core::protocol::history::{Epoch, Position};
use wsmq_core::protocol::queue::{FrameReader, FrameWriter, PushRecord, PushReply, RejectReason};
use wsmq_core::protocol::{PUBLISH_PATH, PUSH_PATH, SUBPROTOCOL_V1};
use wsmq_core::server::{Accepted, Route};
use wsmq_publisher::metrics::PublisherMetrics;
use wsmq_publisher::{Config, HttpApiArgs};
use wsmq_testkit::admin::{await_readyz, http_status};
use wsmq_testkit::client::{connect, dialer};
use wsmq_testkit::config::{credentials, link_args, loopback, service_args, users};
use wsmq_testkit::server::{FakeServer, server_config};
use wsmq_testkit::service::ServiceTask;
use wsmq_testkit::within;

/// Content that makes the fake queue answer REJECT (queue full) instead of storing the message.
pub(crate) const REJECT_MARKER: &str = "reject-me";

/// The publisher's account on the fake queue.
const LINK_USER: &str = "pub";
const LINK_PASSWORD: &str = "pub-password";
/// The clients' account on the publisher.
pub(crate) const CLIENT_USER: &str = "client";
pub(crate) const CLIENT_PASSWORD: &str = "client-password";

/// One PUSH as the fake queue received it.
#[derive(Clone, Debug)]
pub(crate) struct Pushed {
    /// Producer id from the connection's HELLO.
    pub(crate) producer: u64,
    /// Sequence number.
    pub(crate) seq: u64,
    /// Message bytes.
    pub(crate) payload: Bytes,
    /// The due time of a PUSH_AT (Unix ms); `None` for a PUSH.
    pub(crate) due_ms: Option<u64>,
    /// Whether it came as a PUSH_PLACED (answered with a PLACED at [`fake_position`]).
    pub(crate) placed: bool,
}

/// Where the fake queue says it placed a PUSH_PLACED message: epoch `0xfeed`, offset `100 + seq`.
pub(crate) fn fake_position(seq: u64) -> Position {
    Position {
        epoch: Epoch(0xfeed),
        offset: 100 + seq,
    }
}

/// What the fake queue saw and stored, shared across its restarts.
#[derive(Default, Debug)]
pub(crate) struct Seen {
    /// Every PUSH received, duplicates included, in arrival order.
    pub(crate) received: Vec<Pushed>,
    /// Stored messages by (producer, seq): each at most once.
    pub(crate) stored: BTreeMap<(u64, u64), Bytes>,
    /// Protocol rules the publisher broke (HELLO not first, seqs not increasing, a seq resent with new bytes).
    pub(crate) violations: Vec<String>,
    /// Connections accepted so far.
    pub(crate) connections: usize,
    /// Most PUSH records seen in one frame (batching under load).
    pub(crate) largest_batch: usize,
    /// Longest frame seen, in bytes (the batch byte budget).
    pub(crate) largest_frame: usize,
}

impl Seen {
    /// Stored payloads in sequence order, as text.
    pub(crate) fn stored_texts(&self) -> Vec<String> {
        self.stored
            .values()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

/// The fake queue's state: what it saw, plus a switch to hold back acks.
pub(crate) struct FakeState {
    seen: Mutex<Seen>,
    changed: watch::Sender<u64>,
    hold_acks: watch::Sender<bool>,
}

impl FakeState {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Seen::default()),
            changed: watch::Sender::new(0),
            hold_acks: watch::Sender::new(false),
        })
    }

    /// A snapshot lock of what the queue has seen.
    pub(crate) fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock()
    }

    fn update(&self, change: impl FnOnce(&mut Seen)) {
        change(&mut self.seen());
        self.changed.send_modify(|version| *version += 1);
    }

    /// Waits (bounded) until `condition` holds for what the queue has seen.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        condition: impl Fn(&Seen) -> bool,
    ) -> anyhow::Result<()> {
        let mut changed = self.changed.subscribe();
        within(what, async {
            loop {
                if condition(&self.seen()) {
                    return Ok(());
                }
                changed.changed().await?;
            }
        })
        .await?
    }

    /// While true, the queue stores pushes but sends no ACKED; setting it false releases the acks.
    pub(crate) fn hold_acks(&self, hold: bool) {
        self.hold_acks.send_replace(hold);
    }
}

/// A fake msgqueue on a loopback port, serving `/pushmsg` with subprotocol `wsmq.v1`.
pub(crate) struct FakeQueue {
    server: FakeServer,
    state: Arc<FakeState>,
}

impl FakeQueue {
    /// Starts a fake queue on a fresh port, with TLS from the dev PKI in `data_dir`.
    pub(crate) async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(loopback(), data_dir, FakeState::new()).await
    }

    /// Starts a fake queue on `addr` (e.g. the port of a stopped one) with existing state.
    pub(crate) async fn start_on(
        addr: SocketAddr,
        data_dir: &Path,
        state: Arc<FakeState>,
    ) -> anyhow::Result<Self> {
        let limits = Limits {
            drain_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let routes = vec![Route::WebSocket {
            path: PUSH_PATH,
            subprotocols: &[SUBPROTOCOL_V1],
        }];
        let config = server_config(data_dir, &users(LINK_USER, LINK_PASSWORD), limits, routes)?;
        let handler_state = state.clone();
        let handler = move |accepted: Accepted| serve_producer(accepted, handler_state.clone());
        let server = FakeServer::start(addr, config, handler).await?;
        Ok(Self { server, state })
    }

    /// Where the queue listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The state shared across restarts.
    pub(crate) fn state(&self) -> Arc<FakeState> {
        self.state.clone()
    }

    /// Stops listening and closes every connection (1001), returning the state for a restart.
    pub(crate) async fn stop(self) -> anyhow::Result<Arc<FakeState>> {
        self.server.stop().await?;
        Ok(self.state)
    }

    /// Stops and starts again on the same port with the same storage.
    pub(crate) async fn restart(self, data_dir: &Path) -> anyhow::Result<Self> {
        let addr = self.server.addr;
        let state = self.stop().await?;
        Self::start_on(addr, data_dir, state).await
    }
}

/// One producer connection of the fake queue: records every PUSH, checks the framing rules, stores each
/// (producer, seq) once, and answers ACKED (unless held) or REJECT for messages carrying [`REJECT_MARKER`].
async fn serve_producer(accepted: Accepted, state: Arc<FakeState>) {
    let mut ws = accepted.ws;
    let mut hold = state.hold_acks.subscribe();
    let mut producer = None;
    let mut last_seq = 0;
    let mut upto = 0;
    let mut acked = 0;
    state.update(|seen| seen.connections += 1);
    loop {
        let mut replies = FrameWriter::default();
        tokio::select! {
            () = accepted.shutdown.cancelled() => {
                let close = CloseFrame { code: CloseCode::Away, reason: "fake queue stopping".into() };
                let _ = ws.send(Message::Close(Some(close))).await;
                return;
            }
            held = hold.changed() => {
                if held.is_err() {
                    return;
                }
            }
            message = ws.next() => {
                let frame = match message {
                    Some(Ok(Message::Binary(frame))) => frame,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let frame_len = frame.len();
                let mut records = FrameReader::new(frame, usize::MAX);
                let mut batch = 0;
                loop {
                    let record = match records.next_push() {
                        Ok(Some(record)) => record,
                        Ok(None) => {
                            state.update(|seen| {
                                seen.largest_batch = seen.largest_batch.max(batch);
                                seen.largest_frame = seen.largest_frame.max(frame_len);
                            });
                            break;
                        }
                        Err(err) => {
                            state.update(|seen| seen.violations.push(format!("malformed frame: {err}")));
                            return;
                        }
                    };
                    let due_ms = match &record {
                        PushRecord::PushAt { due_ms, .. } => Some(*due_ms),
                        _ => None,
                    };
                    let placed = matches!(record, PushRecord::PushPlaced { .. });
                    match record {
                        PushRecord::Hello { producer: id } => {
                            if producer.replace(id).is_some() {
                                state.update(|seen| seen.violations.push("second HELLO".into()));
                            }
                        }
                        PushRecord::Push { seq, payload }
                        | PushRecord::PushPlaced { seq, payload }
                        | PushRecord::PushAt { seq, payload, .. } => {
                            let Some(id) = producer else {
                                state.update(|seen| seen.violations.push("PUSH before HELLO".into()));
                                return;
                            };
                            if seq <= last_seq {
                                state.update(|seen| seen.violations.push(format!("seq {seq} after {last_seq}")));
                            }
                            last_seq = seq;
                            batch += 1;
                            let reject = payload.windows(REJECT_MARKER.len()).any(|w| w == REJECT_MARKER.as_bytes());
                            if reject {
                                if !*hold.borrow() && upto > acked {
                                    replies.push_reply(PushReply::Acked { upto });
                                    acked = upto;
                                }
                                replies.push_reply(PushReply::Reject { seq, reason: RejectReason::Full });
                            } else {
                                if placed {
                                    replies.push_reply(PushReply::Placed { seq, position: fake_position(seq) });
                                }
                                upto = seq;
                            }
                            state.update(|seen| {
                                seen.received.push(Pushed { producer: id, seq, payload: payload.clone(), due_ms, placed });
                                if reject {
                                    return;
                                }
                                let stored = seen.stored.entry((id, seq)).or_insert_with(|| payload.clone());
                                if *stored != payload {
                                    seen.violations.push(format!("seq {seq} resent with different bytes"));
                                }
                            });
                        }
                    }
                }
            }
        }
        if !*hold.borrow() && upto > acked {
            replies.push_reply(PushReply::Acked { upto });
            acked = upto;
        }
        if !replies.is_empty() && ws.send(Message::Binary(replies.take())).await.is_err() {
            return;
        }
    }
}

/// A publisher under test and what is needed to stop it.
pub(crate) struct Publisher {
    /// Client listener address.
    pub(crate) addr: SocketAddr,
    /// Admin listener address.
    pub(crate) admin: SocketAddr,
    /// Its metrics.
    pub(crate) metrics: PublisherMetrics,
    service: ServiceTask<wsmq_publisher::Error>,
}

/// A publisher configuration for tests: port 0, dev PKI in `data_dir`, quick reconnects, pointed at `queue`.
pub(crate) fn config(data_dir: &Path, queue: SocketAddr) -> Config {
    Config {
        service: service_args(
            data_dir,
            Some(users(CLIENT_USER, CLIENT_PASSWORD)),
            Limits {
                drain_timeout: Duration::from_secs(2),
                ..Limits::default()
            },
        ),
        link: link_args(
            format!("wss://127.0.0.1:{}", queue.port()),
            LINK_USER,
            LINK_PASSWORD,
            BackoffArgs {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
        ),
        link_buffer: 10_000,
        link_buffer_bytes: 16 * 1024 * 1024,
        link_batch_bytes: 64 * 1024,
        http: HttpApiArgs::default(),
        access: AccessArgs::default(),
        max_delay: Duration::from_secs(30 * 24 * 3600),
    }
}

impl Publisher {
    /// Binds and runs a publisher with `config`.
    pub(crate) async fn start(config: Config) -> anyhow::Result<Self> {
        let bound = wsmq_publisher::bind(config).await?;
        let (addr, admin, metrics) = (bound.local_addr(), bound.admin_addr(), bound.metrics());
        Ok(Self {
            addr,
            admin,
            metrics,
            service: ServiceTask::spawn(|shutdown| bound.run(shutdown)),
        })
    }

    /// Shuts the publisher down and checks it ended cleanly.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.service.stop().await
    }

    /// Waits (bounded) for the publisher to stop without being asked, returning what `run` returned.
    #[allow(
        dead_code,
        reason = "only tests/supervision.rs expects a publisher to stop on its own"
    )]
    pub(crate) async fn stopped_on_its_own(
        self,
    ) -> anyhow::Result<Result<(), wsmq_publisher::Error>> {
        self.service.stopped_on_its_own().await
    }

    /// Opens a client WebSocket to `/publish`: `wsmq.v1` when `v1`, else compat mode (exactly what a ws-go
    /// client offers: no subprotocol).
    pub(crate) async fn client(&self, data_dir: &Path, v1: bool) -> anyhow::Result<ClientWs> {
        let url = format!("wss://127.0.0.1:{}", self.addr.port());
        let subprotocol = v1.then_some(SUBPROTOCOL_V1);
        let dialer = dialer(
            &url,
            data_dir,
            credentials(CLIENT_USER, CLIENT_PASSWORD),
            subprotocol,
        )?;
        connect(&dialer, PUBLISH_PATH, subprotocol).await
    }

    /// Opens a keep-alive connection to the HTTP API as the test client user.
    #[allow(dead_code, reason = "only tests/http_api.rs uses the HTTP API")]
    pub(crate) async fn api(&self, data_dir: &Path) -> anyhow::Result<ApiClient> {
        self.api_as(data_dir, CLIENT_USER, CLIENT_PASSWORD).await
    }

    /// Opens a keep-alive connection to the HTTP API presenting `user` and `password`.
    #[allow(dead_code, reason = "only tests/http_api.rs uses the HTTP API")]
    pub(crate) async fn api_as(
        &self,
        data_dir: &Path,
        user: &str,
        password: &str,
    ) -> anyhow::Result<ApiClient> {
        let url = format!("wss://127.0.0.1:{}", self.addr.port());
        let dialer = dialer(&url, data_dir, credentials(user, password), None)?;
        Ok(within("an API connection", ApiClient::connect(&dialer)).await??)
    }

    /// The HTTP status of `GET path` on the admin listener.
    pub(crate) async fn admin_status(&self, path: &str) -> anyhow::Result<u16> {
        http_status(self.admin, path).await
    }

    /// Waits (bounded, polling the admin listener) until `/readyz` answers `status`.
    pub(crate) async fn wait_readyz(&self, status: u16) -> anyhow::Result<()> {
        await_readyz(self.admin, status).await
    }
}

/// Proves nothing but control frames is queued towards the client: sends a Ping and requires the Pong to be
/// the next frame. Everything the publisher queued before the Pong would arrive first.
pub(crate) async fn assert_nothing_pending(ws: &mut ClientWs) -> anyhow::Result<()> {
    within(
        "a ping",
        ws.send(Message::Ping(Bytes::from_static(b"probe"))),
    )
    .await??;
    within("the pong", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(data))) if data == "probe" => return Ok(()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected only a pong, got {other:?}"),
            }
        }
    })
    .await?
}
