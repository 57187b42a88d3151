//! `/pushmsg`: producers hand messages to the queue.
//!
//! Compat mode stores each text frame and answers nothing (at-most-once, as ws-go). Reliable mode decodes
//! batches of PUSH records, stores each frame as one batch (see `Queue::push_batch` for its locks), and a
//! separate acker task answers ACKED/REJECT in push order once the storage says the messages are durable, so that
//! the reader keeps reading while earlier frames wait for their group commit. A PUSH_PLACED is stored like a PUSH
//! and also gets a PLACED with its topic position, sent just before the ACKED that covers it. PUSH_AT records go
//! to the schedule store, which the reader awaits (scheduling is the rarer, latency-tolerant case); their acks
//! still go out in push order.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::metrics::LatencyHistogram;
use wsmq_core::protocol::queue::{FrameReader, FrameWriter, PushRecord, PushReply, RejectReason};
use wsmq_core::server::Accepted;
use wsmq_core::ws::{self, Outbox, ReadError, Reader};

use crate::ConnectionContext;
use crate::queue::{DurableToken, Producer, PushError, Pushed, Queue, ScheduledPush};

/// Frames whose replies may wait for durability at once. Bounds memory per producer: when the disk falls behind,
/// the reader stops reading and TCP pushes back on the producer.
const PENDING_FRAMES: usize = 64;
/// Outbound messages (reply frames) queued per connection.
const OUTBOX_CAPACITY: usize = 16;
/// Reply frames are small; this bounds how many replies are packed into one.
const REPLY_FRAME_BUDGET: usize = 16 * 1024;

/// Serves one `/pushmsg` connection until it closes.
pub(crate) async fn handle(conn: ConnectionContext, accepted: Accepted) {
    let peer = accepted.peer;
    let shutdown = accepted.shutdown.clone();
    let reliable = accepted.subprotocol.is_some();
    let (reader, outbox, writer) = ws::split(
        accepted.ws,
        &conn.limits,
        OUTBOX_CAPACITY,
        &accepted.shutdown,
    );
    let result = if reliable {
        reliable_push(&conn, reader, outbox).await
    } else {
        compat_push(&conn, reader, outbox).await
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "push connection ended");
    }
    ws::finish_writer(writer, &conn.limits, &shutdown).await;
}

/// Why a push connection ended early. Only logged; the peer learns through the close code.
#[derive(Debug, thiserror::Error)]
enum PushConnError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("queue unavailable: {0}")]
    Queue(PushError),
    #[error(transparent)]
    TooLarge(#[from] wsmq_core::limits::PayloadTooLarge),
}

pub(crate) type ConnReader = Reader<futures_util::stream::SplitStream<wsmq_core::server::ServerWs>>;

/// ws-go's protocol: every data frame is one message; nothing is sent back. A full queue stops the reading (the
/// producer's socket fills up) rather than dropping what was read.
async fn compat_push(
    conn: &ConnectionContext,
    mut reader: ConnReader,
    outbox: Outbox,
) -> Result<(), PushConnError> {
    while let Some(message) = reader.next().await? {
        let payload = match message {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(bytes) => bytes,
            _ => continue,
        };
        conn.metrics.received(payload.len());
        // The WebSocket limit leaves room for a reliable record header; a compat message gets no more than a
        // reliable payload, or no consumer could take it.
        if let Err(err) = conn.sizes.check_payload(payload.len()) {
            tracing::warn!(%err, "compat push over the message size limit, closing the connection");
            outbox.close(CloseCode::Size, "message too big");
            return Err(PushConnError::TooLarge(err));
        }
        loop {
            match conn.queue.push(None, payload.clone()) {
                Ok(_) => break,
                Err(PushError::Full | PushError::NoSpace) => {
                    tokio::select! {
                        () = conn.queue.wait_for_space(payload.len()) => {}
                        () = outbox.closer().closing() => return Ok(()),
                    }
                }
                Err(PushError::TooLarge { len, max }) => {
                    tracing::warn!(
                        len,
                        max,
                        "compat push larger than the whole queue capacity, not stored"
                    );
                    break;
                }
                Err(err) => {
                    outbox.close(CloseCode::Error, "queue unavailable");
                    return Err(PushConnError::Queue(err));
                }
            }
        }
    }
    Ok(())
}

/// One frame's worth of outcomes, waiting for durability before its replies go out.
struct Pending {
    /// When the frame was read: its messages' `push_duration_seconds` runs from here to their ACKED.
    received: Instant,
    /// Messages of the frame that were stored or recognised as duplicates: those the ACKED covers.
    acked: u64,
    /// Wait for this before replying (the highest token of the frame's accepted pushes).
    durable: Option<DurableToken>,
    /// Highest sequence number of the frame that was stored or recognised as a duplicate.
    acked_upto: Option<u64>,
    /// Refused pushes, in order.
    rejects: Vec<(u64, RejectReason)>,
    /// The stored PUSH_PLACED records of the frame: their positions are read once durable.
    placed: Vec<(u64, Pushed)>,
}

/// The kind of a push record, remembered per record of a frame until its outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Push,
    PushPlaced,
    PushAt,
}

/// wsmq's reliable protocol: HELLO, then batches of PUSH records; replies in push order once durable.
async fn reliable_push(
    conn: &ConnectionContext,
    mut reader: ConnReader,
    outbox: Outbox,
) -> Result<(), PushConnError> {
    let (pending_tx, pending_rx) = mpsc::channel(PENDING_FRAMES);
    let acker = tokio::spawn(run_acker(
        conn.queue.clone(),
        pending_rx,
        outbox.clone(),
        conn.latency.push.clone(),
    ));
    let result = read_pushes(conn, &mut reader, &outbox, pending_tx).await;
    // The acker ends once every pending frame is answered (the sender was dropped above).
    let _ = acker.await;
    result
}

async fn read_pushes(
    conn: &ConnectionContext,
    reader: &mut ConnReader,
    outbox: &Outbox,
    pending_tx: mpsc::Sender<Pending>,
) -> Result<(), PushConnError> {
    let mut producer: Option<u64> = None;
    let mut items: Vec<(Option<Producer>, Bytes)> = Vec::new();
    let mut scheduled: Vec<ScheduledPush> = Vec::new();
    // Each record's seq and kind, in frame order.
    let mut seqs: Vec<(u64, Kind)> = Vec::new();
    let mut results = Vec::new();
    while let Some(message) = reader.next().await? {
        let Message::Binary(frame) = message else {
            return Err(protocol_error(
                outbox,
                CloseCode::Unsupported,
                "text frames are not part of wsmq.v1",
            ));
        };
        conn.metrics.received(frame.len());
        let received = Instant::now();
        let mut records = FrameReader::new(frame, conn.sizes.max_payload);
        loop {
            match records.next_push() {
                Ok(None) => break,
                Ok(Some(PushRecord::Hello { producer: id })) => producer = Some(id),
                Ok(Some(PushRecord::Push { seq, payload })) => {
                    let id = producer_of(producer, outbox, "PUSH before HELLO")?;
                    items.push((Some(Producer { id, seq }), payload));
                    seqs.push((seq, Kind::Push));
                }
                Ok(Some(PushRecord::PushPlaced { seq, payload })) => {
                    let id = producer_of(producer, outbox, "PUSH_PLACED before HELLO")?;
                    items.push((Some(Producer { id, seq }), payload));
                    seqs.push((seq, Kind::PushPlaced));
                }
                Ok(Some(PushRecord::PushAt {
                    seq,
                    due_ms,
                    payload,
                })) => {
                    let id = producer_of(producer, outbox, "PUSH_AT before HELLO")?;
                    scheduled.push(ScheduledPush {
                        producer: Producer { id, seq },
                        due_ms,
                        payload,
                    });
                    seqs.push((seq, Kind::PushAt));
                }
                Err(err) => {
                    tracing::debug!(%err, "malformed push frame");
                    return Err(protocol_error(
                        outbox,
                        CloseCode::Protocol,
                        "malformed frame",
                    ));
                }
            }
        }
        if seqs.is_empty() {
            continue;
        }
        results.clear();
        conn.queue.push_batch(items.drain(..), &mut results);
        // Scheduled pushes are durable once this returns; the frame's ACKED still waits for its plain pushes.
        let schedule_results = if scheduled.is_empty() {
            Vec::new()
        } else {
            conn.queue.schedule(std::mem::take(&mut scheduled)).await
        };
        let (mut plain, mut later) = (results.iter(), schedule_results.iter());
        let mut pending = Pending {
            received,
            acked: 0,
            durable: None,
            acked_upto: None,
            rejects: Vec::new(),
            placed: Vec::new(),
        };
        for (seq, kind) in seqs.drain(..) {
            let outcome = if kind == Kind::PushAt {
                later.next().map(|r| r.as_ref().map(|_| None))
            } else {
                plain.next().map(|r| r.as_ref().map(Some))
            };
            match outcome.unwrap_or(Err(&PushError::Closed)) {
                Ok(pushed) => {
                    let durable = pushed.map(Pushed::durable);
                    if let Some(pushed) = pushed.filter(|_| kind == Kind::PushPlaced) {
                        pending.placed.push((seq, pushed.clone()));
                    }
                    pending.durable = pending.durable.max(durable);
                    pending.acked_upto = Some(seq);
                    pending.acked += 1;
                }
                Err(err) => pending.rejects.push((seq, reject_reason(err))),
            }
        }
        if pending.durable.is_none() && pending.acked_upto.is_none() {
            // Nothing of this frame was stored, so there is nothing to wait for: refuse at once, even while earlier
            // frames still wait for a full disk, so the producer learns why instead of waiting.
            let mut replies = FrameWriter::with_capacity(16 * pending.rejects.len());
            for &(seq, reason) in &pending.rejects {
                replies.push_reply(PushReply::Reject { seq, reason });
            }
            if !send(outbox, &mut replies).await {
                break;
            }
            continue;
        }
        if pending_tx.send(pending).await.is_err() {
            break;
        }
    }
    Ok(())
}

fn reject_reason(err: &PushError) -> RejectReason {
    match err {
        PushError::Full => RejectReason::Full,
        PushError::NoSpace => RejectReason::NoSpace,
        PushError::TooLarge { .. } => RejectReason::TooLarge,
        PushError::Closed | PushError::Storage(_) => RejectReason::Unavailable,
    }
}

/// The producer named by HELLO, which must come before any push.
fn producer_of(
    producer: Option<u64>,
    outbox: &Outbox,
    reason: &'static str,
) -> Result<u64, PushConnError> {
    producer.ok_or_else(|| protocol_error(outbox, CloseCode::Protocol, reason))
}

fn protocol_error(outbox: &Outbox, code: CloseCode, reason: &'static str) -> PushConnError {
    outbox.close(code, reason);
    PushConnError::Protocol(reason)
}

/// Answers pending frames in order. Everything already queued is answered together after one durability wait,
/// which is what makes group commit pay off: one fsync, one reply frame for many pushes.
async fn run_acker(
    queue: Queue,
    mut pending_rx: mpsc::Receiver<Pending>,
    outbox: Outbox,
    latency: LatencyHistogram,
) {
    let mut batch = Vec::new();
    let mut replies = FrameWriter::with_capacity(256);
    while pending_rx.recv_many(&mut batch, PENDING_FRAMES).await > 0 {
        let durable = batch.iter().filter_map(|p| p.durable).max();
        if let Some(token) = durable
            && let Err(err) = queue.wait_durable(token).await
        {
            // Nothing of this batch is acked: the producer resends after reconnecting, and msgqueue either stores
            // it (dedup covers what did reach the disk) or rejects it as unavailable.
            tracing::error!(%err, "messages could not be made durable; closing producer connection");
            outbox.close(CloseCode::Error, "queue storage failed");
            return;
        }
        // Durable now: the ACKED below is queued at once (written by the connection's writer right after).
        let durable_at = Instant::now();
        for pending in batch.drain(..) {
            latency.observe_n(
                durable_at.saturating_duration_since(pending.received),
                pending.acked,
            );
            for &(seq, reason) in &pending.rejects {
                replies.push_reply(PushReply::Reject { seq, reason });
            }
            for (seq, pushed) in &pending.placed {
                if let Some(position) = pushed.position() {
                    replies.push_reply(PushReply::Placed {
                        seq: *seq,
                        position,
                    });
                }
            }
            if let Some(upto) = pending.acked_upto {
                replies.push_reply(PushReply::Acked { upto });
            }
            if replies.len() >= REPLY_FRAME_BUDGET && !send(&outbox, &mut replies).await {
                return;
            }
        }
        if !replies.is_empty() && !send(&outbox, &mut replies).await {
            return;
        }
    }
}

async fn send(outbox: &Outbox, replies: &mut FrameWriter) -> bool {
    outbox.send(Message::Binary(replies.take())).await.is_ok()
}
