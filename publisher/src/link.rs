//! The publisher's reliable link to msgqueue `/pushmsg`: one per process, shared by every client connection.
//!
//! Client sessions hand messages to [`PushLink`]; a single [`LinkTask`] owns the WebSocket to msgqueue, gives each
//! message the next sequence number and keeps it until msgqueue's cumulative ACKED covers it (or a REJECT names
//! it). Under load it drains whatever is queued into one frame up to a byte budget; when idle each message
//! leaves at once (no flush timer). When msgqueue goes away the task reconnects with exponential backoff and
//! jitter and resends every unacked message in order with the same sequence numbers (msgqueue dedups).
//!
//! Memory is bounded by two semaphores, one counting messages and one counting bytes. A session takes its
//! permits before its message enters the link and they are released only when the message is acked or
//! rejected, so while msgqueue is unreachable the buffer fills up and then sessions wait for permits: they stop
//! reading their sockets (backpressure) instead of growing memory or dropping messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use wsmq_core::admin::Condition;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::dial::{ClientWs, Dialers};
use wsmq_core::limits::Limits;
use wsmq_core::link::{self, Flow, Protocol, Start};
use wsmq_core::protocol::history::Position;
use wsmq_core::protocol::queue::{
    FrameError, FrameReader, FrameWriter, PushRecord, PushReply, RECORD_OVERHEAD, RejectReason,
};
use wsmq_core::protocol::{PUSH_PATH, SUBPROTOCOL_V1};
use wsmq_core::ws::{self, Outbox, ReadError, Reader};

use crate::metrics::PublisherMetrics;

/// Frames queued between the link and its socket writer. Small: the link batches records into frames itself,
/// so a few frames in flight keep the socket busy while bounding memory.
const OUTBOX_FRAMES: usize = 8;

/// How the link buffers, batches and reconnects.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Most messages held at once (queued for msgqueue or pushed and not yet acked); at least 1.
    pub buffer_messages: usize,
    /// Most payload bytes held at once; a single message larger than this still passes, alone.
    pub buffer_bytes: usize,
    /// Byte budget of one frame to msgqueue; a single record larger than this is sent in a frame of its own.
    pub batch_bytes: usize,
    /// Reconnect delays (`--link-backoff-initial`, `--link-backoff-max`), with full jitter.
    pub backoff: BackoffArgs,
    /// Ping interval and idle timeout of the link's WebSocket.
    pub limits: Limits,
}

/// Why a client's message was not confirmed as published: what the session reports to a `wsmq.v1` client.
/// (Not msgqueue's own `PushError`, which is why its queue refused a push.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PublishError {
    /// msgqueue refused it (full, too large, unavailable); it was not stored and is not retried.
    #[error("msgqueue rejected the message: {}", .0.as_str())]
    Rejected(RejectReason),
    /// The publisher stopped before msgqueue confirmed the message; it may or may not be stored.
    #[error("publisher stopped before msgqueue confirmed the message")]
    Stopped,
}

/// What identifies a message msgqueue stored: the publisher's producer id (random per process) and the
/// message's sequence number under it, the pair msgqueue deduplicates on. Shown as `<producer hex>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    /// The link's producer id.
    pub producer: u64,
    /// The message's sequence number.
    pub seq: u64,
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.producer, self.seq)
    }
}

/// What msgqueue is asked to confirm about a tracked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// That it is stored (a PUSH): the cheapest, what `/publish` sessions ask.
    Stored,
    /// That it is stored and where in its topic's history (a PUSH_PLACED): what the HTTP API answers with. A
    /// scheduled message gets its place only when it is delivered, so it is confirmed as stored alone.
    Placed,
}

/// msgqueue's confirmation of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    /// The message's id under this publisher.
    pub id: MessageId,
    /// Its place in its topic's history, with [`Confirm::Placed`] when msgqueue gave it one (a topic that keeps
    /// history, a message stored now rather than recognised as a retry).
    pub position: Option<Position>,
}

/// Why [`PushLink::try_push`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TryPushError {
    /// The buffer is full (msgqueue is slow or unreachable); [`PushLink::push`] would wait.
    #[error("the publisher's buffer towards msgqueue is full")]
    Full,
    /// The link has stopped.
    #[error(transparent)]
    Closed(#[from] LinkClosed),
}

/// The link task has ended (the publisher is shutting down), so no message can enter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the msgqueue link has stopped")]
pub struct LinkClosed;

/// Why a connection to msgqueue ended; logged, then the link reconnects.
#[derive(Debug, Error)]
enum ConnectionError {
    #[error("msgqueue closed the connection")]
    Closed,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("malformed reply from msgqueue: {0}")]
    Frame(#[from] FrameError),
    #[error("msgqueue sent a text frame on a reliable link")]
    UnexpectedText,
}

/// Where msgqueue's verdict on one message goes.
type Verdict = oneshot::Sender<Result<Confirmed, PublishError>>;

/// Resolves when msgqueue has acked or rejected one message.
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Result<Confirmed, PublishError>>);

impl Receipt {
    /// Waits for msgqueue's verdict; [`PublishError::Stopped`] when the link ended first.
    pub async fn outcome(self) -> Result<Confirmed, PublishError> {
        self.0.await.unwrap_or(Err(PublishError::Stopped))
    }
}

/// The sessions' handle to the publisher's link to msgqueue's `/pushmsg` (the push side, hence the name: the
/// reconnecting machinery itself is [`wsmq_core::link::Link`]): cheap to clone, one per client connection.
#[derive(Clone, Debug)]
pub struct PushLink {
    submissions: mpsc::Sender<Submission>,
    messages: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes_permits: usize,
    buffered: Gauge,
}

/// A message on its way to msgqueue with the buffer space it occupies.
#[derive(Debug)]
struct Submission {
    payload: Bytes,
    /// When msgqueue should deliver it (Unix ms), for a scheduled message.
    due_ms: Option<u64>,
    confirm: Confirm,
    done: Option<Verdict>,
    slot: Slot,
}

/// Buffer space held by one message until msgqueue acks or rejects it; dropping it frees the space.
#[derive(Debug)]
struct Slot {
    /// When the message was handed to the link: its `publish_duration_seconds` runs from here to the ack.
    handed: Instant,
    _message: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    buffered: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.buffered.dec();
    }
}

/// A message pushed (or about to be pushed) under a sequence number, kept until msgqueue answers for it.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    payload: Bytes,
    due_ms: Option<u64>,
    confirm: Confirm,
    /// Set by msgqueue's PLACED, which comes before the ACKED covering the message.
    position: Option<Position>,
    done: Option<Verdict>,
    slot: Slot,
}

impl PushLink {
    /// Creates the link handle and the task that must be run (with [`LinkTask::run`]) for messages to move.
    pub fn new(
        config: LinkConfig,
        dialers: Dialers,
        metrics: PublisherMetrics,
        ready: Condition,
    ) -> (PushLink, LinkTask) {
        let buffer_messages = config.buffer_messages.clamp(1, Semaphore::MAX_PERMITS);
        let max_bytes_permits = config
            .buffer_bytes
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (submissions, receiver) = mpsc::channel(buffer_messages);
        let link = PushLink {
            submissions,
            messages: Arc::new(Semaphore::new(buffer_messages)),
            bytes: Arc::new(Semaphore::new(max_bytes_permits)),
            max_bytes_permits,
            buffered: metrics.buffered_gauge(),
        };
        let task = LinkTask {
            submissions: receiver,
            carry: None,
            dialers,
            config,
            producer: rand::random(),
            next_seq: 1,
            unacked: VecDeque::new(),
            frame: FrameWriter::default(),
            draining: false,
            metrics,
            ready,
        };
        (link, task)
    }

    /// Hands a message to the link and returns a [`Receipt`] for msgqueue's verdict. Waits while the buffer is
    /// full (this is the backpressure that stops a session from reading its socket). With `due_ms` (Unix ms)
    /// msgqueue keeps it until then (PUSH_AT); the receipt still resolves once it is stored.
    pub async fn push(
        &self,
        payload: Bytes,
        due_ms: Option<u64>,
        confirm: Confirm,
    ) -> Result<Receipt, LinkClosed> {
        let (done, receipt) = oneshot::channel();
        self.submit(payload, due_ms, confirm, Some(done)).await?;
        Ok(Receipt(receipt))
    }

    /// Hands a message to the link when nobody waits for the verdict (compat clients); a rejection is only
    /// logged and counted. Waits while the buffer is full.
    pub async fn push_untracked(&self, payload: Bytes) -> Result<(), LinkClosed> {
        self.submit(payload, None, Confirm::Stored, None).await
    }

    /// Hands a message to the link if its buffer has room now, without waiting: for callers that answer "try
    /// again later" rather than hold a client (the HTTP API while msgqueue is unreachable). `due_ms` as for
    /// [`PushLink::push`].
    pub fn try_push(
        &self,
        payload: Bytes,
        due_ms: Option<u64>,
        confirm: Confirm,
    ) -> Result<Receipt, TryPushError> {
        let handed = Instant::now();
        let refused = |err| match err {
            TryAcquireError::Closed => TryPushError::Closed(LinkClosed),
            TryAcquireError::NoPermits => TryPushError::Full,
        };
        let message = self.messages.clone().try_acquire_owned().map_err(refused)?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.cost(&payload))
            .map_err(refused)?;
        let (done, receipt) = oneshot::channel();
        let submission = Submission {
            payload,
            due_ms,
            confirm,
            done: Some(done),
            slot: self.slot(message, bytes, handed),
        };
        // A message permit is held for every queued submission and the queue holds as many as there are
        // permits, so it has room unless the link has stopped.
        self.submissions
            .try_send(submission)
            .map_err(|_| TryPushError::Closed(LinkClosed))?;
        Ok(Receipt(receipt))
    }

    async fn submit(
        &self,
        payload: Bytes,
        due_ms: Option<u64>,
        confirm: Confirm,
        done: Option<Verdict>,
    ) -> Result<(), LinkClosed> {
        // Waiting for buffer space (backpressure) counts towards the publish latency.
        let handed = Instant::now();
        let message = self
            .messages
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LinkClosed)?;
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(&payload))
            .await
            .map_err(|_| LinkClosed)?;
        let slot = self.slot(message, bytes, handed);
        self.submissions
            .send(Submission {
                payload,
                due_ms,
                confirm,
                done,
                slot,
            })
            .await
            .map_err(|_| LinkClosed)
    }

    /// The byte permits a payload takes.
    fn cost(&self, payload: &Bytes) -> u32 {
        u32::try_from(payload.len().clamp(1, self.max_bytes_permits)).unwrap_or(u32::MAX)
    }

    /// The buffer space of one message, counted in the gauge while it exists.
    fn slot(
        &self,
        message: OwnedSemaphorePermit,
        bytes: OwnedSemaphorePermit,
        handed: Instant,
    ) -> Slot {
        self.buffered.inc();
        Slot {
            handed,
            _message: message,
            _bytes: bytes,
            buffered: self.buffered.clone(),
        }
    }
}

/// The task owning the connection to msgqueue and every message not yet acked.
#[derive(Debug)]
pub struct LinkTask {
    submissions: mpsc::Receiver<Submission>,
    /// A submission taken from the queue that did not fit the previous frame; it starts the next one.
    carry: Option<Submission>,
    /// The msgqueue instances (`--queue-url`), tried in turn.
    dialers: Dialers,
    config: LinkConfig,
    producer: u64,
    next_seq: u64,
    unacked: VecDeque<InFlight>,
    frame: FrameWriter,
    /// Every [`PushLink`] handle is gone (the service is stopping): push nothing new, finish once all is acked.
    draining: bool,
    metrics: PublisherMetrics,
    ready: Condition,
}

impl LinkTask {
    /// Connects to msgqueue and keeps the link up, moving on to the next msgqueue URL when one fails and
    /// reconnecting with backoff once every URL failed ([`wsmq_core::link`]), until
    /// `shutdown` is cancelled or every [`PushLink`] handle has been dropped and everything submitted has been acked
    /// (a graceful drain). Messages still unacked when it returns get [`PublishError::Stopped`].
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(producer = self.producer, "msgqueue link starting");
        let link = link::Link::new(self.dialers.clone(), self.config.backoff.clone())
            .require_subprotocol(SUBPROTOCOL_V1)
            .with_readiness(self.ready.clone());
        link.run(&mut Pushing(&mut self), Start::Dial, &shutdown)
            .await;
        tracing::info!(unacked = self.unacked.len(), "msgqueue link stopped");
    }

    /// True once no message can arrive any more and none is waiting for msgqueue.
    fn is_drained(&self) -> bool {
        self.unacked.is_empty()
            && self.carry.is_none()
            && self.submissions.is_closed()
            && self.submissions.is_empty()
    }

    /// Runs one connection: HELLO, resend everything unacked, then push new messages and apply replies.
    /// `Ok` when it ended because of shutdown.
    async fn connected(
        &mut self,
        ws: ClientWs,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError> {
        let (mut reader, outbox, writer) =
            ws::split(ws, &self.config.limits, OUTBOX_FRAMES, shutdown);
        let result = self.exchange(&mut reader, &outbox, shutdown).await;
        outbox.close(CloseCode::Normal, "");
        drop(outbox);
        if let Ok(Err(err)) = writer.await {
            tracing::debug!(%err, "msgqueue link writer ended");
        }
        result
    }

    async fn exchange<S>(
        &mut self,
        reader: &mut Reader<S>,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError>
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        self.frame.push_record(&PushRecord::Hello {
            producer: self.producer,
        });
        self.send_frame(outbox).await?;
        self.resend_unacked(outbox).await?;
        loop {
            let closing = outbox.closer().is_closing();
            tokio::select! {
                biased;
                read = reader.next() => match read? {
                    Some(Message::Binary(frame)) => self.apply_replies(frame)?,
                    Some(_) => return Err(ConnectionError::UnexpectedText),
                    None if shutdown.is_cancelled() || self.is_drained() => return Ok(()),
                    None => return Err(ConnectionError::Closed),
                },
                submission = next_submission(&mut self.carry, &mut self.submissions), if !closing && !self.draining => {
                    match submission {
                        Some(submission) => self.push_batch(submission, outbox).await?,
                        // Every `PushLink` handle is gone: the service is stopping. Wait for the last acks.
                        None => self.draining = true,
                    }
                },
            }
            if self.draining && self.unacked.is_empty() {
                outbox.close(CloseCode::Away, "publisher stopping");
            }
        }
    }

    /// After a reconnect: every message not yet acked, in order, with its original sequence number.
    async fn resend_unacked(&mut self, outbox: &Outbox) -> Result<(), ConnectionError> {
        let budget = self.config.batch_bytes;
        let resend: Vec<(u64, Option<u64>, Confirm, Bytes)> = self
            .unacked
            .iter()
            .map(|m| (m.seq, m.due_ms, m.confirm, m.payload.clone()))
            .collect();
        for (seq, due_ms, confirm, payload) in resend {
            if !fits(&self.frame, payload.len(), budget) {
                self.send_frame(outbox).await?;
            }
            write_push(&mut self.frame, seq, due_ms, confirm, &payload);
        }
        if !self.frame.is_empty() {
            self.send_frame(outbox).await?;
        }
        Ok(())
    }

    /// Pushes `first` and whatever else is already queued, up to the frame budget, as one frame.
    async fn push_batch(
        &mut self,
        first: Submission,
        outbox: &Outbox,
    ) -> Result<(), ConnectionError> {
        let mut next = Some(first);
        while let Some(submission) = next.take() {
            if !fits(
                &self.frame,
                submission.payload.len(),
                self.config.batch_bytes,
            ) {
                self.carry = Some(submission);
                break;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            write_push(
                &mut self.frame,
                seq,
                submission.due_ms,
                submission.confirm,
                &submission.payload,
            );
            self.unacked.push_back(InFlight {
                seq,
                payload: submission.payload,
                due_ms: submission.due_ms,
                confirm: submission.confirm,
                position: None,
                done: submission.done,
                slot: submission.slot,
            });
            next = self.submissions.try_recv().ok();
        }
        self.send_frame(outbox).await
    }

    async fn send_frame(&mut self, outbox: &Outbox) -> Result<(), ConnectionError> {
        outbox
            .send(Message::Binary(self.frame.take()))
            .await
            .map_err(|_| ConnectionError::Closed)
    }

    /// Applies msgqueue's replies: ACKED completes every message up to `upto`, REJECT fails the one named, PLACED
    /// notes where the one named was stored.
    fn apply_replies(&mut self, frame: Bytes) -> Result<(), ConnectionError> {
        let mut replies = FrameReader::new(frame, 0);
        while let Some(reply) = replies.next_push_reply()? {
            match reply {
                PushReply::Acked { upto } => {
                    let mut acked = 0;
                    let now = Instant::now();
                    while let Some(message) = self.unacked.pop_front_if(|m| m.seq <= upto) {
                        self.metrics
                            .stored_after(now.saturating_duration_since(message.slot.handed));
                        if let Some(done) = message.done {
                            let _ = done.send(Ok(Confirmed {
                                id: MessageId {
                                    producer: self.producer,
                                    seq: message.seq,
                                },
                                position: message.position,
                            }));
                        }
                        acked += 1;
                    }
                    self.metrics.acked(acked);
                }
                PushReply::Placed { seq, position } => {
                    if let Some(message) = self.unacked.iter_mut().find(|m| m.seq == seq) {
                        message.position = Some(position);
                    }
                }
                PushReply::Reject { seq, reason } => {
                    let position = self.unacked.iter().position(|m| m.seq == seq);
                    if let Some(message) = position.and_then(|index| self.unacked.remove(index)) {
                        tracing::warn!(
                            seq,
                            reason = reason.as_str(),
                            "msgqueue rejected a message"
                        );
                        self.metrics.rejected();
                        if let Some(done) = message.done {
                            let _ = done.send(Err(PublishError::Rejected(reason)));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The link task seen as the [`Protocol`] of a reconnecting link (private, so its error type stays private).
struct Pushing<'a>(&'a mut LinkTask);

impl Protocol for Pushing<'_> {
    type Error = ConnectionError;

    fn path(&self) -> &str {
        PUSH_PATH
    }

    async fn serve(
        &mut self,
        ws: ClientWs,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError> {
        self.0.connected(ws, shutdown).await
    }

    fn is_done(&self) -> bool {
        self.0.is_drained()
    }

    async fn connected(&mut self, url: &str) -> Flow {
        tracing::info!(
            url,
            unacked = self.0.unacked.len(),
            "msgqueue link connected"
        );
        Flow::Continue
    }

    async fn lost(&mut self, err: ConnectionError) -> Flow {
        tracing::warn!(%err, unacked = self.0.unacked.len(), "msgqueue link lost");
        Flow::Continue
    }

    fn link_state(&self, up: bool) {
        self.0.metrics.set_link_up(up);
    }

    fn redialing(&self) {
        self.0.metrics.reconnect();
    }
}

/// The carried-over submission if any, else the next one from the queue. Cancel-safe: taking the carry
/// completes on the first poll.
async fn next_submission(
    carry: &mut Option<Submission>,
    submissions: &mut mpsc::Receiver<Submission>,
) -> Option<Submission> {
    match carry.take() {
        Some(submission) => Some(submission),
        None => submissions.recv().await,
    }
}

/// A PUSH record, a PUSH_PLACED when the message's place is asked for, or a PUSH_AT for a scheduled message.
fn write_push(
    frame: &mut FrameWriter,
    seq: u64,
    due_ms: Option<u64>,
    confirm: Confirm,
    payload: &[u8],
) {
    match (due_ms, confirm) {
        (Some(due_ms), _) => frame.push_at(seq, due_ms, payload),
        (None, Confirm::Placed) => frame.push_placed(seq, payload),
        (None, Confirm::Stored) => frame.push(seq, payload),
    }
}

/// Whether a PUSH record of `payload_len` bytes still fits the frame; an empty frame takes any record.
fn fits(frame: &FrameWriter, payload_len: usize, budget: usize) -> bool {
    frame.is_empty() || frame.len() + RECORD_OVERHEAD + payload_len <= budget
}
