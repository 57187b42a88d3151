//! `/popmsg`: consumers take messages from the queue, each in a consumer group named on the handshake URL
//! (`/popmsg?group=<name>&start=oldest|tail`; no `group` is the `default` group, as every ws-go popper).
//!
//! Compat mode hands each message out as one text frame and counts it delivered at that moment (at-most-once, as
//! ws-go). Reliable mode leases deliveries within the consumer's credit window, packs as many as are ready into
//! one frame, and removes a message only when the consumer acks it; the engine redelivers leases of a consumer
//! that goes away.

use std::time::Instant;

use tokio::select;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::protocol::group::PopQuery;
use wsmq_core::protocol::queue::{FrameReader, FrameWriter, PopRecord, RECORD_OVERHEAD};
use wsmq_core::server::Accepted;
use wsmq_core::ws::{self, Outbox, ReadError, Written};

use crate::ConnectionContext;
use crate::push::ConnReader;
use crate::queue::{ConsumeMode, Consumer, Delivery, QueueError};

/// Outbound frames queued per connection. Reliable deliveries are bounded by the credit window anyway; in compat
/// mode this is how many messages can be lost with a dying connection (at-most-once).
const OUTBOX_CAPACITY: usize = 32;
/// Most deliveries taken from the engine per batch.
const BATCH: usize = 256;

/// Serves one `/popmsg` connection until it closes.
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
    let mode = if reliable {
        ConsumeMode::Acked
    } else {
        ConsumeMode::AutoAck
    };
    // The listener checked the query before the upgrade (`check_query`).
    let pop = PopQuery::parse(&accepted.query).unwrap_or_default();
    let (group, start) = (pop.group(), pop.start);
    let joined = tokio::select! {
        joined = conn.queue.join(&group, start, mode) => joined,
        () = outbox.closer().closing() => return,
    };
    let result = match joined {
        Ok(consumer) => serve_consumer(&conn, consumer, reader, &outbox, reliable).await,
        Err(err) => {
            outbox.close(CloseCode::Away, "queue closed");
            Err(err.into())
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %group, %err, "pop connection ended");
    }
    drop(outbox);
    ws::finish_writer(writer, &conn.limits, &shutdown).await;
}

/// Validates the query of a `/popmsg` handshake before the upgrade (a `core::server::QueryCheck`): a bad group
/// name, an unknown parameter or value is answered `400` with the reason. Other paths take no parameters and
/// ignore them, as they always did.
pub(crate) fn check_query(path: &str, query: &str) -> Result<(), String> {
    if path == wsmq_core::protocol::POP_PATH {
        PopQuery::parse(query)
            .map(|_| ())
            .map_err(|err| err.to_string())
    } else {
        Ok(())
    }
}

/// Why a pop connection ended early. Only logged; the peer learns through the close code.
#[derive(Debug, thiserror::Error)]
enum PopConnError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Runs the connection: reads credit and acks (reliable) or just keeps the connection alive (compat), and sends
/// whatever the consumer's window lets the engine hand out. Dropping `consumer` at the end returns unacked leases
/// to the queue.
async fn serve_consumer(
    conn: &ConnectionContext,
    mut consumer: Consumer,
    mut reader: ConnReader,
    outbox: &Outbox,
    reliable: bool,
) -> Result<(), PopConnError> {
    let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
    let mut acks: Vec<u64> = Vec::new();
    let mut frame = FrameWriter::with_capacity(4096);
    let frame_budget = conn
        .limits
        .max_message_size
        .saturating_sub(RECORD_OVERHEAD)
        .max(1);
    loop {
        select! {
            message = reader.next() => {
                let Some(message) = message? else { return Ok(()) };
                if !reliable {
                    continue;
                }
                let Message::Binary(data) = message else {
                    outbox.close(CloseCode::Unsupported, "text frames are not part of wsmq.v1");
                    return Err(PopConnError::Protocol("text frame"));
                };
                conn.metrics.received(data.len());
                let mut records = FrameReader::new(data, 0);
                loop {
                    match records.next_pop() {
                        Ok(None) => break,
                        Ok(Some(PopRecord::Credit { n })) => consumer.grant(n),
                        Ok(Some(PopRecord::Ack { id })) => acks.push(id),
                        Ok(Some(PopRecord::Nack { id, reason })) => {
                            consumer.nack(id, reason);
                        }
                        Err(err) => {
                            tracing::debug!(%err, "malformed pop frame");
                            outbox.close(CloseCode::Protocol, "malformed frame");
                            return Err(PopConnError::Protocol("malformed frame"));
                        }
                    }
                }
                if !acks.is_empty() {
                    consumer.ack(&acks);
                    acks.clear();
                }
            }
            result = consumer.next_batch(BATCH, &mut batch) => {
                if let Err(err) = result {
                    outbox.close(CloseCode::Away, "queue closed");
                    return Err(err.into());
                }
                // `delivery_duration_seconds` runs from here to the flush that writes each delivery.
                let handed = Instant::now();
                if reliable {
                    send_reliable(conn, outbox, &mut batch, &mut frame, frame_budget, handed).await?;
                } else {
                    send_compat(conn, outbox, &mut batch, handed).await?;
                }
            }
            () = outbox.closer().closing() => return Ok(()),
        }
    }
}

/// Packs deliveries into frames of at most `budget` bytes (a single larger message still goes alone).
async fn send_reliable(
    conn: &ConnectionContext,
    outbox: &Outbox,
    batch: &mut Vec<Delivery>,
    frame: &mut FrameWriter,
    budget: usize,
    handed: Instant,
) -> Result<(), PopConnError> {
    let mut in_frame = 0;
    for delivery in batch.drain(..) {
        if !frame.is_empty() && frame.len() + RECORD_OVERHEAD + delivery.payload.len() > budget {
            let message = Message::Binary(frame.take());
            send_timed(conn, outbox, message, handed, in_frame).await?;
            in_frame = 0;
        }
        frame.deliver(
            delivery.id,
            delivery.redelivered,
            delivery.position,
            &delivery.payload,
        );
        in_frame += 1;
    }
    if !frame.is_empty() {
        let message = Message::Binary(frame.take());
        send_timed(conn, outbox, message, handed, in_frame).await?;
    }
    Ok(())
}

/// Queues one frame of `deliveries` deliveries handed out at `handed`; the writer records their
/// `delivery_duration_seconds` once it flushed the frame.
async fn send_timed(
    conn: &ConnectionContext,
    outbox: &Outbox,
    message: Message,
    handed: Instant,
    deliveries: u64,
) -> Result<(), PopConnError> {
    conn.metrics.sent(message.len());
    let written = Written {
        since: handed,
        messages: deliveries,
        latency: conn.latency.delivery.clone(),
    };
    outbox
        .send_timed(message, written)
        .await
        .map_err(|_| PopConnError::Protocol("connection closed"))
}

/// One text frame per message, as ws-go's subscriber expects. A payload that is not UTF-8 (possible only when a
/// reliable producer pushed binary data) goes out as a binary frame rather than being mangled.
async fn send_compat(
    conn: &ConnectionContext,
    outbox: &Outbox,
    batch: &mut Vec<Delivery>,
    handed: Instant,
) -> Result<(), PopConnError> {
    for delivery in batch.drain(..) {
        let message = match tungstenite::Utf8Bytes::try_from(delivery.payload.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(delivery.payload),
        };
        send_timed(conn, outbox, message, handed, 1).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pop_path_checks_its_query() {
        assert!(check_query("/pushmsg", "anything=1").is_ok());
        assert!(check_query("/popmsg", "group=").is_err());
    }
}
