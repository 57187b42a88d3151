//! The reconnecting link to msgqueue's `/popmsg` in reliable mode (`wsmq.v1`): credit-based flow control,
//! routing of each delivery, batched acks.
//!
//! The link grants msgqueue a window of `--prefetch` deliveries and, for every frame of deliveries it has
//! routed, answers with one frame holding an ACK per delivery plus one CREDIT for as many, so the window stays
//! full without ever exceeding it. A delivery is acked once it was offered to every current subscriber's queue
//! (offering never waits, see [`crate::router`]); deliveries nobody subscribes to are acked and counted as
//! unrouted, and a payload that is not a valid envelope is acked, logged without its content and counted (in
//! ws-go one such message killed the pop loop for everyone). A delivery larger than `--max-message-size` is
//! NACKed as too large, so msgqueue moves it to its dead letters. Unacked deliveries are msgqueue's to redeliver
//! when the link drops; the link redials with exponential backoff and jitter and reports not ready meanwhile.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::instrument;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, Utf8Bytes};
use wsmq_core::admin::Condition;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::dial::{ClientWs, Dialers};
use wsmq_core::link::{self, Flow, Protocol, Start};
use wsmq_core::protocol::SUBPROTOCOL_V1;
use wsmq_core::protocol::envelope::Envelope;
use wsmq_core::protocol::queue::{FrameError, FrameReader, FrameWriter, NackReason, PopRecord};
use wsmq_core::ws::CLOSE_TIMEOUT;

use crate::metrics::SubscriberMetrics;
use crate::router::Router;

/// Lower bound on how often clients that stay behind are swept, for very short `--slow-client-timeout`s.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(10);
/// Bytes reserved up front for an ack frame: one ACK record (9 bytes) per delivery of a typical frame.
const ACK_FRAME_CAPACITY: usize = 4 * 1024;

/// The subscriber's link to msgqueue's `/popmsg` (the pop side, hence the name: the reconnecting machinery itself
/// is [`wsmq_core::link::Link`]): everything it needs, built once by the service.
#[derive(Debug)]
pub(crate) struct PopLink {
    /// Dial the msgqueue instances (`--queue-url`, tried in turn) with the link credentials, offering `wsmq.v1`.
    pub(crate) dialers: Dialers,
    /// `/popmsg` with the consumer group's query.
    pub(crate) path: String,
    /// Where deliveries go.
    pub(crate) router: Router,
    /// Deliveries msgqueue may send ahead of our acks (`--prefetch`).
    pub(crate) prefetch: u32,
    /// Largest payload accepted in a delivery.
    pub(crate) max_payload: usize,
    /// Keepalive ping interval towards msgqueue.
    pub(crate) ping_interval: Duration,
    /// Silence from msgqueue longer than this means the link is dead.
    pub(crate) idle_timeout: Duration,
    /// Longest hold of deliveries, and longest a client may stay congested, before the clients still behind are
    /// cut off (`--slow-client-timeout`).
    pub(crate) slow_client_timeout: Duration,
    /// "queue link" readiness: true only while connected.
    pub(crate) ready: Condition,
    /// Reconnect delays (`--link-backoff-initial`, `--link-backoff-max`).
    pub(crate) backoff: BackoffArgs,
}

/// The link seen as the [`Protocol`] of a reconnecting link: consume deliveries on each connection.
struct Consuming<'a> {
    link: &'a PopLink,
    metrics: SubscriberMetrics,
}

impl Protocol for Consuming<'_> {
    type Error = LinkError;

    fn path(&self) -> &str {
        &self.link.path
    }

    /// Consumes until the connection fails; `Ok` only when `shutdown` ended it (the link then closes with 1001
    /// so msgqueue redelivers our unacked deliveries at once).
    async fn serve(&mut self, ws: ClientWs, shutdown: &CancellationToken) -> Result<(), LinkError> {
        self.link.consume(ws, shutdown).await
    }

    async fn connected(&mut self, url: &str) -> Flow {
        tracing::info!(url, "link to msgqueue up");
        Flow::Continue
    }

    async fn lost(&mut self, err: LinkError) -> Flow {
        self.metrics.link_reconnect();
        tracing::warn!(error = %err, "link to msgqueue lost, reconnecting");
        Flow::Continue
    }

    fn link_state(&self, up: bool) {
        self.metrics.link_state(up);
    }
}

/// Why one link connection ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connection failed: {0}")]
    Ws(#[from] tungstenite::Error),
    #[error("msgqueue sent an invalid frame: {0}")]
    Frame(#[from] FrameError),
    #[error("msgqueue sent a text frame on the reliable link")]
    UnexpectedText,
    #[error("msgqueue closed the link")]
    Closed,
    #[error("nothing received from msgqueue for {0:?}")]
    Idle(Duration),
}

impl PopLink {
    /// Keeps the link up until `shutdown`: dial, consume, and on any failure move on to the next msgqueue URL,
    /// redialling after a backoff delay once every URL failed ([`wsmq_core::link`]).
    #[instrument(skip_all, fields(queue = %self.dialers))]
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let link = link::Link::new(self.dialers.clone(), self.backoff.clone())
            .require_subprotocol(SUBPROTOCOL_V1)
            .with_readiness(self.ready.clone());
        let metrics = self.router.metrics().clone();
        link.run(
            &mut Consuming {
                link: &self,
                metrics,
            },
            Start::Dial,
            &shutdown,
        )
        .await;
        tracing::debug!("link stopped");
    }

    async fn consume(
        &self,
        mut ws: ClientWs,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let mut out = FrameWriter::with_capacity(ACK_FRAME_CAPACITY);
        let mut run = Run::default();
        out.pop_record(PopRecord::Credit { n: self.prefetch });
        ws.send(Message::Binary(out.take())).await?;

        let mut ping =
            tokio::time::interval_at(Instant::now() + self.ping_interval, self.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(self.sweep_period());
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        loop {
            if !shutdown.is_cancelled() && self.router.hold().is_some() {
                self.hold_back(&mut ws, &mut ping, &mut sweep, shutdown)
                    .await?;
                // Msgqueue's frames waited in the socket meanwhile; that is not silence on its part.
                last_seen = Instant::now();
                continue;
            }
            let received = tokio::select! {
                () = shutdown.cancelled() => {
                    let goodbye = CloseFrame { code: CloseCode::Away, reason: "subscriber shutting down".into() };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(goodbye))).await;
                    return Ok(());
                }
                _ = ping.tick() => {
                    ws.send(Message::Ping(Bytes::new())).await?;
                    continue;
                }
                _ = sweep.tick() => {
                    self.cut_behind();
                    continue;
                }
                received = tokio::time::timeout_at(last_seen + self.idle_timeout, ws.next()) => received,
            };
            let message = received
                .map_err(|_| LinkError::Idle(self.idle_timeout))?
                .ok_or(LinkError::Closed)??;
            last_seen = Instant::now();
            match message {
                Message::Binary(frame) => {
                    // Acks free slots in the window granted above; no further CREDIT is needed.
                    self.route_frame(frame, &mut out, &mut run)?;
                    ws.send(Message::Binary(out.take())).await?;
                }
                Message::Text(_) => return Err(LinkError::UnexpectedText),
                Message::Close(_) => return Err(LinkError::Closed),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Takes no deliveries while [`Router::hold`] says so: they stay in msgqueue (durable), and the window it
    /// granted us stays used. Ends when the hold is over, on shutdown (the caller then closes the link), or after
    /// `--slow-client-timeout` by cutting off the clients still behind. Pings keep flowing so msgqueue does not
    /// take the link for dead, and clients that stay behind are still swept.
    async fn hold_back(
        &self,
        ws: &mut ClientWs,
        ping: &mut tokio::time::Interval,
        sweep: &mut tokio::time::Interval,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let metrics = self.router.metrics();
        metrics.held_back();
        let started = Instant::now();
        let deadline = tokio::time::sleep(self.slow_client_timeout);
        tokio::pin!(deadline);
        let ended = loop {
            let relief = self.router.relief();
            tokio::pin!(relief);
            // Registered before asking, so a relief in between is not missed.
            relief.as_mut().enable();
            let Some(recheck) = self.router.hold() else {
                break Ok(());
            };
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = &mut relief => {}
                () = tokio::time::sleep(recheck) => {}
                () = &mut deadline => {
                    let cut = self.router.cut_congested();
                    tracing::info!(clients = cut, timeout = ?self.slow_client_timeout, "cut off clients that stayed behind");
                    break Ok(());
                }
                _ = ping.tick() => {
                    if let Err(err) = ws.send(Message::Ping(Bytes::new())).await {
                        break Err(err.into());
                    }
                }
                _ = sweep.tick() => self.cut_behind(),
            }
        };
        metrics.held_back_for(started.elapsed());
        ended
    }

    /// How often congested clients are checked for being behind for `--slow-client-timeout`.
    fn sweep_period(&self) -> Duration {
        (self.slow_client_timeout / 4).max(MIN_SWEEP_PERIOD)
    }

    /// Cuts off the clients congested, or congested and writing nothing, for `--slow-client-timeout`.
    fn cut_behind(&self) {
        let cut = self.router.cut_behind(self.slow_client_timeout);
        if cut > 0 {
            tracing::info!(clients = cut, timeout = ?self.slow_client_timeout, "cut off clients that stayed behind");
        }
    }

    /// Routes every delivery of one frame and appends an ACK for each to `out`. Consecutive deliveries of one
    /// topic are routed as one run (see [`Router::route_all`]); runs keep the frame's order, and the acks go out
    /// only after the whole frame was offered.
    fn route_frame(
        &self,
        frame: Bytes,
        out: &mut FrameWriter,
        run: &mut Run,
    ) -> Result<(), LinkError> {
        let metrics = self.router.metrics();
        // The frame itself is bounded by the link's WebSocket limit; an oversize payload in it is refused below,
        // not treated as a broken frame (which would drop the link and have it redelivered forever).
        let mut reader = FrameReader::new(frame, usize::MAX);
        run.popped = std::time::Instant::now();
        while let Some(delivery) = reader.next_delivery()? {
            if delivery.payload.len() > self.max_payload {
                metrics.invalid_payload();
                tracing::warn!(
                    id = delivery.id,
                    bytes = delivery.payload.len(),
                    max = self.max_payload,
                    "refusing a message over --max-message-size; msgqueue dead-letters it"
                );
                let reason = NackReason::TooLarge;
                out.pop_record(PopRecord::Nack {
                    id: delivery.id,
                    reason,
                });
                continue;
            }
            match parse_delivery(&delivery.payload) {
                Ok((topic, text)) => {
                    if run.topic != topic {
                        self.route_run(run);
                        run.topic.clear();
                        run.topic.push_str(&topic);
                    }
                    run.frames.push(text);
                    run.positions.push(delivery.position);
                }
                Err(reason) => {
                    metrics.invalid_payload();
                    tracing::warn!(id = delivery.id, bytes = delivery.payload.len(), %reason, "skipping invalid message");
                }
            }
            out.pop_record(PopRecord::Ack { id: delivery.id });
        }
        self.route_run(run);
        Ok(())
    }

    /// Offers the run collected so far and empties it; a run nobody subscribes to counts as unrouted.
    fn route_run(&self, run: &mut Run) {
        if run.frames.is_empty() {
            return;
        }
        if self
            .router
            .route_all(&run.topic, &run.frames, &run.positions, Some(run.popped))
            == 0
        {
            self.router.metrics().unrouted(run.frames.len());
        }
        run.frames.clear();
        run.positions.clear();
    }
}

/// Consecutive deliveries of one topic, collected from a frame so they are routed together. Reused across
/// frames so routing allocates nothing per delivery.
#[derive(Debug)]
struct Run {
    topic: String,
    frames: Vec<Utf8Bytes>,
    /// Each frame's place in the topic's history.
    positions: Vec<Option<wsmq_core::protocol::history::Position>>,
    /// When the frame the run comes from was read from msgqueue.
    popped: std::time::Instant,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            topic: String::new(),
            frames: Vec::new(),
            positions: Vec::new(),
            popped: std::time::Instant::now(),
        }
    }
}

/// The topic and text of one payload, or why it is not a message (the reason never echoes the payload).
fn parse_delivery(payload: &Bytes) -> Result<(std::borrow::Cow<'_, str>, Utf8Bytes), String> {
    let topic = Envelope::topic_of_json(payload).map_err(|err| err.to_string())?;
    let text = Utf8Bytes::try_from(payload.clone()).map_err(|_| "not UTF-8".to_owned())?;
    Ok((topic, text))
}
