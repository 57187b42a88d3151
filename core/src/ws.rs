//! Per-connection WebSocket plumbing shared by every service: a writer task fed by a bounded outbox, keepalive
//! pings, an idle-detecting reader and an orderly close.
//!
//! A connection is split into a [`Reader`] the handler loops over and an [`Outbox`] any task can send through;
//! one writer task ([`run_writer`]) owns the socket's write half. The writer feeds every message that is ready
//! and then flushes once, so a busy connection batches writes into few TLS records while an idle one adds no
//! latency. Closing is one [`Closer`] shared by all three: the reader asks for 1009 on an oversize message, the
//! service for 1008 or 1013, shutdown for 1001, and the writer sends that code and ends. Everything is generic
//! over `Stream`/`Sink`, so it is tested over in-memory channels.
//!
//! Control replies are bounded like data. tungstenite answers every ping (and a Close) from its read path by
//! appending the reply to its write buffer, which is unbounded, and keeps reading while the socket does not take
//! the bytes; a peer that floods pings and never reads would grow that buffer without limit. So the [`Reader`]
//! counts the reply bytes it makes tungstenite owe, the writer flushes them and records what it flushed, and a
//! peer that lets more than [`MAX_OWED_REPLY_BYTES`] pile up unread is closed with 1008
//! ([`ReadError::NotReading`]); its writer gives up its blocked write at once, so the connection ends within
//! [`CLOSE_TIMEOUT`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, Sleep};
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::limits::Limits;
use crate::metrics::LatencyHistogram;

/// Most messages the writer feeds before it flushes, so one flood of sends cannot delay the flush (and the
/// peer's first bytes) indefinitely.
pub const WRITE_BATCH_LIMIT: usize = 512;
/// How long closing may take: flushing queued messages plus our Close frame, then waiting for the peer's
/// Close reply. A peer that does not answer is dropped after it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of control replies (pongs, the Close reply) a peer may leave unread before it is closed with 1008:
/// the size of one default maximum message, so replies cost no more than the data a connection may buffer.
pub const MAX_OWED_REPLY_BYTES: u64 = 64 * 1024;

/// The close reason sent when the service shuts down.
const SHUTDOWN_REASON: &str = "server shutting down";
/// Frame header of a pong (payloads are at most 125 bytes; a client's pong also has a 4-byte mask).
const PONG_HEADER_BYTES: u64 = 6;
/// The close reason sent to a peer that does not read its control replies.
const NOT_READING_REASON: &str = "peer does not read";

/// Decides how a connection closes; shared (cheap clone) by the reader, the writer, the service and shutdown.
///
/// The first [`Closer::close`] wins; when the shutdown token given to [`Closer::new`] is cancelled first, the
/// code is 1001 (going away).
#[derive(Clone, Debug)]
pub struct Closer {
    inner: Arc<CloserInner>,
}

#[derive(Debug)]
struct CloserInner {
    closing: CancellationToken,
    /// Set when the peer is known not to read: the writer stops waiting for a blocked write. A flag and a
    /// [`Notify`] inside this allocation rather than a second token, which would cost every connection one more.
    abandoned: AtomicBool,
    abandoned_wake: Notify,
    /// The first close requested: its code and reason.
    frame: Mutex<Option<(CloseCode, &'static str)>>,
    /// Reply bytes tungstenite was made to owe (by the reader) and those known flushed (by the writer).
    replies: ReplyDebt,
}

/// Bytes of control replies owed to the peer against those the writer has flushed since.
#[derive(Debug, Default)]
struct ReplyDebt {
    owed: AtomicU64,
    flushed: AtomicU64,
    /// Wakes the writer to flush owed replies.
    flush_wanted: Notify,
}

impl Closer {
    /// A closer that also starts closing (with 1001) when `shutdown` is cancelled.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            inner: Arc::new(CloserInner {
                closing: shutdown.child_token(),
                abandoned: AtomicBool::new(false),
                abandoned_wake: Notify::new(),
                frame: Mutex::new(None),
                replies: ReplyDebt::default(),
            }),
        }
    }

    /// Asks the writer to send a Close frame with `code` and `reason` and end. Later calls are ignored, so the
    /// first cause is what the peer sees. Reasons must stay under 123 bytes (a control frame limit).
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        {
            let mut frame = self.inner.frame.lock();
            if frame.is_none() && !self.inner.closing.is_cancelled() {
                *frame = Some((code, reason));
            }
        }
        self.inner.closing.cancel();
    }

    /// Closes with 1008 because the peer does not read, and makes the writer drop a write it is blocked in.
    fn abandon(&self) {
        self.close(CloseCode::Policy, NOT_READING_REASON);
        self.inner.abandoned.store(true, Ordering::Release);
        self.inner.abandoned_wake.notify_waiters();
    }

    /// Resolves once [`Closer::abandon`] was called.
    async fn abandoned(&self) {
        let wake = self.inner.abandoned_wake.notified();
        let mut wake = std::pin::pin!(wake);
        // Registered before the flag is read, so an `abandon` in between still wakes it.
        wake.as_mut().enable();
        if !self.inner.abandoned.load(Ordering::Acquire) {
            wake.await;
        }
    }

    /// Records a control reply of `bytes` that tungstenite has queued, asks the writer to flush it, and returns
    /// the reply bytes owed and not yet known flushed.
    fn owe_reply(&self, bytes: u64) -> u64 {
        let replies = &self.inner.replies;
        let owed = replies.owed.fetch_add(bytes, Ordering::AcqRel) + bytes;
        replies.flush_wanted.notify_one();
        owed.saturating_sub(replies.flushed.load(Ordering::Acquire))
    }

    /// Whether closing has started (requested or shutdown).
    pub fn is_closing(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// Resolves once closing has started.
    pub async fn closing(&self) {
        self.inner.closing.cancelled().await;
    }

    /// The frame to send: the requested one, or 1001 when shutdown came first.
    fn frame(&self) -> CloseFrame {
        let (code, reason) = self
            .inner
            .frame
            .lock()
            .unwrap_or((CloseCode::Away, SHUTDOWN_REASON));
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

/// The sending side of a connection: a bounded queue to its writer task plus its [`Closer`]. Clone it into every
/// task that sends to this peer.
#[derive(Clone, Debug)]
pub struct Outbox {
    sender: mpsc::Sender<Queued>,
    closer: Closer,
}

/// A message boxed for the outbox queue: tokio's channel allocates its slots 32 at a time up front, and 32 boxes
/// cost 256 bytes per idle connection where 32 `Message`s cost 1.8 KiB.
#[derive(Debug)]
struct Queued(Box<Entry>);

/// What a [`Queued`] box holds: the message and, if its sender measures it, what to record once it is written.
#[derive(Debug)]
struct Entry {
    message: Message,
    written: Option<Written>,
}

impl From<Queued> for Message {
    fn from(queued: Queued) -> Message {
        queued.0.message
    }
}

/// A latency to record once a message reached the socket: `messages` messages (a frame may carry many) handed
/// out at `since`, recorded into `latency` after the flush that wrote them ([`Outbox::send_timed`]).
#[derive(Debug)]
pub struct Written {
    /// When the messages were handed to this connection.
    pub since: std::time::Instant,
    /// How many messages the frame carries.
    pub messages: u64,
    /// Where their latency is recorded.
    pub latency: LatencyHistogram,
}

/// The writer's side of an [`Outbox`]: yields its messages, and once they are flushed records the latency of
/// those sent with [`Outbox::send_timed`].
#[derive(Debug)]
struct OutboxQueue {
    receiver: mpsc::Receiver<Queued>,
    /// Timed messages yielded but not yet flushed; empty (unallocated) on connections nobody measures.
    unflushed: Vec<Written>,
}

impl OutboxQueue {
    fn take(&mut self, queued: Queued) -> Message {
        let Entry { message, written } = *queued.0;
        self.unflushed.extend(written);
        message
    }
}

impl Outgoing for OutboxQueue {
    async fn next(&mut self) -> Option<Message> {
        let queued = self.receiver.recv().await?;
        Some(self.take(queued))
    }

    fn ready(&mut self) -> Option<Message> {
        let queued = self.receiver.try_recv().ok()?;
        Some(self.take(queued))
    }

    fn flushed(&mut self) {
        if self.unflushed.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        for written in self.unflushed.drain(..) {
            written.latency.observe_n(
                now.saturating_duration_since(written.since),
                written.messages,
            );
        }
    }
}

/// Why a message could not be queued.
#[derive(Debug, Error)]
pub enum SendError {
    /// The queue is full: the peer reads slower than we send. Returned only by [`Outbox::try_send`].
    #[error("outbox full")]
    Full(Message),
    /// The writer has ended (the connection is closing or gone).
    #[error("connection closed")]
    Closed(Message),
}

impl Outbox {
    /// Queues a message, waiting while the queue is full (backpressure towards the producer).
    /// Fails only when the connection is gone.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        self.queue(message, None).await
    }

    /// Queues a message like [`Outbox::send`], and once the writer has flushed it to the socket records its
    /// latency as `written` says: how services measure "handed to this connection → written to its socket".
    pub async fn send_timed(&self, message: Message, written: Written) -> Result<(), SendError> {
        self.queue(message, Some(written)).await
    }

    async fn queue(&self, message: Message, written: Option<Written>) -> Result<(), SendError> {
        self.sender
            .send(Queued(Box::new(Entry { message, written })))
            .await
            .map_err(|err| SendError::Closed(err.0.into()))
    }

    /// Queues a message without waiting, for callers whose overflow policy is to drop or disconnect a slow peer.
    pub fn try_send(&self, message: Message) -> Result<(), SendError> {
        self.sender
            .try_send(Queued(Box::new(Entry {
                message,
                written: None,
            })))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(m) => SendError::Full(m.into()),
                mpsc::error::TrySendError::Closed(m) => SendError::Closed(m.into()),
            })
    }

    /// Closes the connection with `code` (e.g. 1008 policy violation, 1013 try again later); see
    /// [`Closer::close`].
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        self.closer.close(code, reason);
    }

    /// The connection's closer, e.g. for a task that must notice the connection is closing.
    pub fn closer(&self) -> &Closer {
        &self.closer
    }
}

/// Where a writer task ([`run_writer`]) takes its messages from: an [`Outbox`]'s bounded channel, or a service's
/// own bounded queue when a second hop through a channel would only cost a task wake-up per message (the
/// subscriber's writers drain each client's queue directly).
pub trait Outgoing: Send {
    /// Waits for the next message; `None` once nothing more will come, which closes the connection with 1000.
    /// Must be cancel-safe: the writer also waits for pings and closing.
    fn next(&mut self) -> impl Future<Output = Option<Message>> + Send;

    /// The next message if one is ready without waiting: the writer feeds these before flushing once.
    fn ready(&mut self) -> Option<Message>;

    /// Everything yielded so far has been written and flushed to the socket: a source that measures when its
    /// messages reach the peer (the per-hop latency metrics) records it here.
    fn flushed(&mut self) {}
}

impl<M: Into<Message> + Send> Outgoing for mpsc::Receiver<M> {
    async fn next(&mut self) -> Option<Message> {
        self.recv().await.map(Into::into)
    }

    fn ready(&mut self) -> Option<Message> {
        self.try_recv().ok().map(Into::into)
    }
}

/// The writer task: sends what `outbox` yields (every ready message, then one flush), pings every
/// `ping_interval`, and when `closer` starts closing (or `outbox` ends, e.g. every [`Outbox`] was dropped,
/// which closes with 1000) flushes what is already queued, sends the Close frame and returns.
///
/// Fails when writing to the peer fails; it then also starts closing, so the reader stops too.
///
/// A plain function returning the task's future, which lives as long as the connection: an `async fn` would keep
/// its arguments in it twice (rust-lang/rust#62958).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would keep its arguments twice in the connection-long future"
)]
pub fn run_writer<S, O>(
    mut sink: S,
    mut outbox: O,
    closer: Closer,
    ping_interval: Duration,
) -> impl Future<Output = Result<(), WsError>>
where
    S: Sink<Message, Error = WsError> + Unpin,
    O: Outgoing,
{
    async move {
        let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let replies = &closer.inner.replies;
        loop {
            let step = tokio::select! {
                biased;
                () = closer.closing() => break,
                // Before the outbox, so a peer that only receives still gets pings and answers them with pongs,
                // which is what keeps our reader from declaring it idle.
                _ = ping.tick() => Step::Ping,
                received = outbox.next() => match received {
                    Some(message) => Step::Send(message),
                    None => {
                        closer.close(CloseCode::Normal, "");
                        break;
                    }
                },
                // After the outbox: every step ends with a flush, which sends owed replies too.
                () = replies.flush_wanted.notified() => Step::FlushReplies,
            };
            // Every reply owed now is queued in tungstenite (or superseded by a later one), so once the flush that
            // ends this step completes, it has reached the socket.
            let owed = replies.owed.load(Ordering::Acquire);
            let write = async {
                match step {
                    Step::Ping => sink.send(Message::Ping(Bytes::new())).await,
                    Step::FlushReplies => sink.flush().await,
                    Step::Send(message) => write_batch(&mut sink, message, &mut outbox).await,
                }
            };
            let written = tokio::select! {
                written = write => written,
                () = closer.abandoned() => break,
            };
            if let Err(err) = written {
                closer.close(CloseCode::Error, "write failed");
                return Err(err);
            }
            replies.flushed.fetch_max(owed, Ordering::AcqRel);
            outbox.flushed();
        }
        let frame = closer.frame();
        let goodbye = async {
            while let Some(message) = outbox.ready() {
                sink.feed(message).await?;
            }
            sink.send(Message::Close(Some(frame))).await
        };
        if let Ok(Err(err)) = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await {
            // The peer closed first: tungstenite has queued its Close reply, which only a flush sends.
            tracing::debug!(%err, "sending close frame");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.flush()).await;
        }
        Ok(())
    }
}

/// What the writer does next.
enum Step {
    Ping,
    FlushReplies,
    Send(Message),
}

/// Feeds `first` and every message already queued (up to [`WRITE_BATCH_LIMIT`]), then flushes once.
///
/// Written against `Sink`'s poll methods rather than as an `async fn` over `feed` futures: the writer's future,
/// which every connection keeps allocated for its life, is as large as its largest step, and this one holds only
/// the message waiting for room.
fn write_batch<'a, S, O>(
    sink: &'a mut S,
    first: Message,
    outbox: &'a mut O,
) -> impl Future<Output = Result<(), WsError>> + 'a
where
    S: Sink<Message, Error = WsError> + Unpin,
    O: Outgoing,
{
    let mut waiting = Some(first);
    let mut fed = 0;
    std::future::poll_fn(move |cx| {
        while let Some(message) = waiting.take() {
            match sink.poll_ready_unpin(cx) {
                Poll::Pending => {
                    waiting = Some(message);
                    return Poll::Pending;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(())) => sink.start_send_unpin(message)?,
            }
            fed += 1;
            if fed < WRITE_BATCH_LIMIT {
                waiting = outbox.ready();
            }
        }
        sink.poll_flush_unpin(cx)
    })
}

/// Why [`Reader::next`] ended the connection.
#[derive(Debug, Error)]
pub enum ReadError {
    /// Nothing at all (not even a pong to our pings) arrived for the idle timeout: the peer is presumed dead.
    #[error("peer idle for {0:?}")]
    Idle(Duration),
    /// The peer sent a message or frame over the configured limit; the connection is closed with 1009.
    #[error("message exceeds the size limit")]
    TooBig,
    /// The peer left more than [`MAX_OWED_REPLY_BYTES`] of replies to its pings unread (it sends but does not
    /// read); the connection is closed with 1008.
    #[error("peer does not read the replies to its pings")]
    NotReading,
    /// The connection failed (I/O, TLS or WebSocket protocol error).
    #[error(transparent)]
    Ws(#[from] WsError),
}

/// The reading side of a connection: yields data messages, answers pings (tungstenite does), detects a dead
/// peer, and finishes the close handshake.
#[derive(Debug)]
pub struct Reader<S> {
    stream: S,
    closer: Closer,
    idle_timeout: Duration,
    last_seen: Instant,
    close_deadline: Option<Instant>,
    /// One timer for the connection's life, moved forward as messages arrive (a cheap atomic update in tokio)
    /// instead of a new timer registered per message.
    deadline: Pin<Box<Sleep>>,
}

impl<S> Reader<S>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// Wraps the read half of a connection.
    pub fn new(stream: S, closer: Closer, idle_timeout: Duration) -> Self {
        let last_seen = Instant::now();
        Self {
            stream,
            closer,
            idle_timeout,
            last_seen,
            close_deadline: None,
            deadline: Box::pin(tokio::time::sleep_until(last_seen + idle_timeout)),
        }
    }

    /// Reads and drops what the peer still sends after the service stopped reading it, until the closing
    /// handshake is over (the peer's Close, or [`CLOSE_TIMEOUT`] after closing began). A socket dropped with
    /// unread data makes the kernel reset the connection, which can destroy our Close frame before the peer reads
    /// it: it would see 1006 instead of the code we sent. Callers start closing first.
    pub async fn finish_closing(&mut self) {
        while let Ok(Some(_)) = self.next().await {}
    }

    /// The next Text or Binary message; `Ok(None)` once the connection has closed in an orderly way (the
    /// peer's Close, ours answered, or [`CLOSE_TIMEOUT`] after we started closing).
    ///
    /// Fails with [`ReadError::Idle`] when nothing arrived for the idle timeout, [`ReadError::TooBig`] for an
    /// oversize message, [`ReadError::Ws`] on connection errors; each failure also starts closing the
    /// connection with a fitting code, so the caller just returns.
    pub async fn next(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            if self.close_deadline.is_none() && self.closer.is_closing() {
                self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            }
            let deadline = self
                .close_deadline
                .unwrap_or(self.last_seen + self.idle_timeout);
            if self.deadline.deadline() != deadline {
                self.deadline.as_mut().reset(deadline);
            }
            let item = tokio::select! {
                item = self.stream.next() => item,
                () = &mut self.deadline => {
                    if self.close_deadline.is_some() {
                        return Ok(None);
                    }
                    self.closer.close(CloseCode::Away, "idle timeout");
                    return Err(ReadError::Idle(self.idle_timeout));
                }
                () = self.closer.closing(), if self.close_deadline.is_none() => continue,
            };
            self.last_seen = Instant::now();
            match item {
                None => return Ok(None),
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    return Ok(Some(message));
                }
                // The peer's Close: tungstenite queues the reply; reading on flushes it and ends the stream.
                Some(Ok(Message::Close(_))) => self.closer.close(CloseCode::Normal, ""),
                // tungstenite has queued a pong: the reply's frame header plus the ping's payload.
                Some(Ok(Message::Ping(payload))) => {
                    let owed = self
                        .closer
                        .owe_reply(PONG_HEADER_BYTES + payload.len() as u64);
                    if owed > MAX_OWED_REPLY_BYTES {
                        self.closer.abandon();
                        return Err(ReadError::NotReading);
                    }
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::Capacity(
                    CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
                ))) => {
                    self.closer.close(CloseCode::Size, "message too big");
                    return Err(ReadError::TooBig);
                }
                Some(Err(err)) => {
                    let code = match &err {
                        WsError::Utf8(_) => CloseCode::Invalid,
                        WsError::Protocol(_) => CloseCode::Protocol,
                        _ => CloseCode::Error,
                    };
                    self.closer.close(code, "");
                    return Err(ReadError::Ws(err));
                }
            }
        }
    }
}

/// What [`split`] returns: the reader to loop over, the outbox to send through, and the writer task, which the
/// handler should await before returning so the Close frame is flushed.
pub type Split<S> = (
    Reader<SplitStream<S>>,
    Outbox,
    JoinHandle<Result<(), WsError>>,
);

/// Waits for a connection's writer task to flush what is queued and its Close frame, then end. A peer that
/// stopped reading can hold the writer in a blocked write forever, so the wait is bounded: the idle timeout
/// normally (a live but slow peer gets that long to drain), [`CLOSE_TIMEOUT`] once `shutdown` is cancelled. After
/// that the task is aborted and the socket dropped. Callers drop their [`Outbox`]es first.
pub async fn finish_writer(
    mut writer: JoinHandle<Result<(), WsError>>,
    limits: &Limits,
    shutdown: &CancellationToken,
) {
    let grace = if shutdown.is_cancelled() {
        CLOSE_TIMEOUT
    } else {
        limits.idle_timeout.max(CLOSE_TIMEOUT)
    };
    match tokio::time::timeout(grace, &mut writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::debug!(%err, "writing to peer failed"),
        Ok(Err(err)) => tracing::warn!(%err, "writer task failed"),
        Err(_) => {
            writer.abort();
            tracing::debug!("peer never drained its socket, dropping it");
        }
    }
}

/// Splits an upgraded connection into a [`Reader`], an [`Outbox`] of `outbox_capacity` messages and a spawned
/// writer task, with pings and idle detection from `limits`; `shutdown` closes it with 1001.
pub fn split<S>(
    ws: S,
    limits: &Limits,
    outbox_capacity: usize,
    shutdown: &CancellationToken,
) -> Split<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send + 'static,
    SplitSink<S, Message>: Send,
{
    let (sink, stream) = ws.split();
    let closer = Closer::new(shutdown);
    let (sender, receiver) = mpsc::channel(outbox_capacity);
    let queue = OutboxQueue {
        receiver,
        unflushed: Vec::new(),
    };
    let writer = tokio::spawn(run_writer(
        sink,
        queue,
        closer.clone(),
        limits.ping_interval,
    ));
    let reader = Reader::new(stream, closer.clone(), limits.idle_timeout);
    (reader, Outbox { sender, closer }, writer)
}

#[cfg(test)]
mod tests {

    #[tokio::test(start_paused = true)]
    async fn a_writer_stuck_on_a_peer_that_never_reads_is_aborted_after_the_grace() {
        let limits = Limits {
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        for (shutdown, grace) in [(false, Duration::from_secs(60)), (true, CLOSE_TIMEOUT)] {
            let token = CancellationToken::new();
            if shutdown {
                token.cancel();
            }
            let writer = tokio::spawn(std::future::pending::<Result<(), WsError>>());
            let abort = writer.abort_handle();
            let start = Instant::now();
            finish_writer(writer, &limits, &token).await;
            assert_eq!(start.elapsed(), grace);
            tokio::task::yield_now().await;
            assert!(abort.is_finished(), "the stuck writer was aborted");
        }
    }

    use super::*;
    use std::task::{Context, Poll};

    /// What the fake sink saw, in order.
    #[derive(Debug, PartialEq)]
    enum Event {
        Sent(Message),
        Flushed,
    }

    /// A sink that records feeds and flushes, and can be made to fail.
    #[derive(Clone, Default)]
    struct RecordingSink {
        events: Arc<Mutex<Vec<Event>>>,
    }

    impl RecordingSink {
        fn take(&self) -> Vec<Event> {
            std::mem::take(&mut *self.events.lock())
        }
        fn push(&self, event: Event) {
            self.events.lock().push(event);
        }
    }

    impl Sink<Message> for RecordingSink {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.push(Event::Sent(item));
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            self.push(Event::Flushed);
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    fn text(s: &'static str) -> Message {
        Message::Text(s.into())
    }

    fn close(code: CloseCode, reason: &'static str) -> Message {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn writer_feeds_ready_messages_then_flushes_once() {
        let sink = RecordingSink::default();
        let (sender, receiver) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let closer = Closer::new(&shutdown);
        for m in ["a", "b", "c"] {
            assert!(sender.try_send(text(m)).is_ok());
        }
        let writer = tokio::spawn(run_writer(
            sink.clone(),
            receiver,
            closer,
            Duration::from_secs(20),
        ));
        tokio::task::yield_now().await;
        drop(sender);
        assert!(matches!(writer.await, Ok(Ok(()))));
        let expected = vec![
            Event::Sent(text("a")),
            Event::Sent(text("b")),
            Event::Sent(text("c")),
            Event::Flushed,
            Event::Sent(close(CloseCode::Normal, "")),
            Event::Flushed,
        ];
        assert_eq!(sink.take(), expected);
    }

    #[tokio::test]
    async fn timed_messages_are_recorded_after_the_flush_that_wrote_them() {
        let sink = RecordingSink::default();
        let (sender, receiver) = mpsc::channel(8);
        let closer = Closer::new(&CancellationToken::new());
        let outbox = Outbox {
            sender,
            closer: closer.clone(),
        };
        let latency = LatencyHistogram::default();
        for messages in [3, 2] {
            let written = Written {
                since: std::time::Instant::now(),
                messages,
                latency: latency.clone(),
            };
            assert!(outbox.send_timed(text("frame"), written).await.is_ok());
        }
        assert!(outbox.send(text("untimed")).await.is_ok());
        drop(outbox);
        let queue = OutboxQueue {
            receiver,
            unflushed: Vec::new(),
        };
        assert_eq!(
            latency.count(),
            0,
            "nothing is recorded before the writer ran"
        );
        let writer = run_writer(sink.clone(), queue, closer, Duration::from_secs(20));
        assert!(matches!(writer.await, Ok(())));
        assert_eq!(
            latency.count(),
            5,
            "each frame counts the messages it carries"
        );
        let events = sink.take();
        assert_eq!(events.get(3), Some(&Event::Flushed), "{events:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn writer_pings_every_interval() {
        let sink = RecordingSink::default();
        let (sender, receiver) = mpsc::channel::<Message>(8);
        let shutdown = CancellationToken::new();
        let writer = tokio::spawn(run_writer(
            sink.clone(),
            receiver,
            Closer::new(&shutdown),
            Duration::from_secs(5),
        ));
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let pings = sink
            .take()
            .into_iter()
            .filter(|e| *e == Event::Sent(Message::Ping(Bytes::new())))
            .count();
        assert_eq!(pings, 2);
        drop(sender);
        assert!(matches!(writer.await, Ok(Ok(()))));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_queued_messages_then_closes_with_going_away() {
        let sink = RecordingSink::default();
        let (sender, receiver) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let closer = Closer::new(&shutdown);
        shutdown.cancel();
        assert!(sender.try_send(text("last")).is_ok());
        assert!(matches!(
            run_writer(sink.clone(), receiver, closer, Duration::from_secs(20)).await,
            Ok(())
        ));
        let events = sink.take();
        assert_eq!(events.first(), Some(&Event::Sent(text("last"))));
        assert!(
            events.contains(&Event::Sent(close(CloseCode::Away, SHUTDOWN_REASON))),
            "{events:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_close_request_wins() {
        let sink = RecordingSink::default();
        let (_sender, receiver) = mpsc::channel::<Message>(8);
        let shutdown = CancellationToken::new();
        let closer = Closer::new(&shutdown);
        closer.close(CloseCode::Policy, "bad frame");
        closer.close(CloseCode::Again, "later");
        shutdown.cancel();
        assert!(matches!(
            run_writer(sink.clone(), receiver, closer, Duration::from_secs(20)).await,
            Ok(())
        ));
        assert!(
            sink.take()
                .contains(&Event::Sent(close(CloseCode::Policy, "bad frame")))
        );
    }

    /// An in-memory peer: the test pushes what the reader will receive.
    fn fake_stream() -> (
        mpsc::Sender<Result<Message, WsError>>,
        impl Stream<Item = Result<Message, WsError>> + Unpin,
    ) {
        let (sender, mut receiver) = mpsc::channel(8);
        (
            sender,
            futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn reader_yields_data_and_skips_control_frames() {
        let (peer, stream) = fake_stream();
        let closer = Closer::new(&CancellationToken::new());
        let mut reader = Reader::new(stream, closer.clone(), Duration::from_secs(60));
        for m in [
            Message::Pong(Bytes::new()),
            Message::Ping(Bytes::new()),
            text("hi"),
        ] {
            assert!(peer.send(Ok(m)).await.is_ok());
        }
        assert_eq!(reader.next().await.ok().flatten(), Some(text("hi")));
        assert!(!closer.is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_is_idle_after_timeout_but_pongs_keep_it_alive() {
        let (peer, stream) = fake_stream();
        let closer = Closer::new(&CancellationToken::new());
        let mut reader = Reader::new(stream, closer.clone(), Duration::from_secs(60));
        let keepalive = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                let _ = peer.send(Ok(Message::Pong(Bytes::new()))).await;
            }
            peer
        });
        let started = Instant::now();
        let result = reader.next().await;
        assert!(matches!(result, Err(ReadError::Idle(_))), "{result:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(180));
        assert!(closer.is_closing());
        drop(keepalive.await);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_whose_pongs_are_never_flushed_close_with_1008() {
        let (peer, stream) = fake_stream();
        let closer = Closer::new(&CancellationToken::new());
        let mut reader = Reader::new(stream, closer.clone(), Duration::from_secs(60));
        let ping = Message::Ping(Bytes::from(vec![0u8; 125]));
        let feeder =
            tokio::spawn(async move { while peer.send(Ok(ping.clone())).await.is_ok() {} });
        assert!(matches!(reader.next().await, Err(ReadError::NotReading)));
        assert_eq!(closer.frame().code, CloseCode::Policy);
        drop(reader);
        assert!(feeder.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pings_whose_pongs_the_writer_flushes_never_close() {
        let (peer, stream) = fake_stream();
        let sink = RecordingSink::default();
        let (_sender, receiver) = mpsc::channel::<Message>(8);
        let closer = Closer::new(&CancellationToken::new());
        let writer = tokio::spawn(run_writer(
            sink.clone(),
            receiver,
            closer.clone(),
            Duration::from_secs(20),
        ));
        let mut reader = Reader::new(stream, closer.clone(), Duration::from_secs(60));
        let pings = 4 * MAX_OWED_REPLY_BYTES / 131;
        let feeder = tokio::spawn(async move {
            for _ in 0..pings {
                if peer
                    .send(Ok(Message::Ping(Bytes::from(vec![0u8; 125]))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            peer.send(Ok(text("done"))).await.is_ok()
        });
        assert_eq!(reader.next().await.ok().flatten(), Some(text("done")));
        assert!(!closer.is_closing());
        assert!(sink.take().contains(&Event::Flushed));
        assert!(matches!(feeder.await, Ok(true)));
        closer.close(CloseCode::Normal, "");
        assert!(matches!(writer.await, Ok(Ok(()))));
    }

    #[tokio::test(start_paused = true)]
    async fn oversize_message_closes_with_1009() {
        let (peer, stream) = fake_stream();
        let closer = Closer::new(&CancellationToken::new());
        let mut reader = Reader::new(stream, closer.clone(), Duration::from_secs(60));
        let too_long = CapacityError::MessageTooLong {
            size: 100,
            max_size: 10,
        };
        assert!(peer.send(Err(WsError::Capacity(too_long))).await.is_ok());
        assert!(matches!(reader.next().await, Err(ReadError::TooBig)));
        assert_eq!(closer.frame().code, CloseCode::Size);
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_a_close_drains_what_the_peer_still_sends_until_its_close() {
        let (peer, stream) = fake_stream();
        let closer = Closer::new(&CancellationToken::new());
        let mut reader = Reader::new(stream, closer.clone(), Duration::from_secs(60));
        closer.close(CloseCode::Away, "stopping");
        for m in [text("late"), text("later"), Message::Close(None)] {
            assert!(peer.send(Ok(m)).await.is_ok());
        }
        // After its Close the peer's stream ends, as tungstenite's does once the handshake is over.
        drop(peer);
        let started = Instant::now();
        reader.finish_closing().await;
        assert!(
            started.elapsed() < CLOSE_TIMEOUT,
            "ended with the peer's stream, not the timeout"
        );
        assert!(
            matches!(reader.next().await, Ok(None)),
            "nothing the peer sent is left unread"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peer_close_ends_reading_and_closing_gives_up_after_timeout() {
        let (peer, stream) = fake_stream();
        let closer = Closer::new(&CancellationToken::new());
        let mut reader = Reader::new(stream, closer.clone(), Duration::from_secs(60));
        assert!(peer.send(Ok(Message::Close(None))).await.is_ok());
        let started = Instant::now();
        assert!(matches!(reader.next().await, Ok(None)));
        assert_eq!(started.elapsed(), CLOSE_TIMEOUT);
        assert_eq!(closer.frame().code, CloseCode::Normal);
    }
}
