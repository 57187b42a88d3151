//! One publishing client connection on `/publish`: validates each message at the edge and hands the valid ones
//! to the msgqueue [`PushLink`] in the order they arrived.
//!
//! Two modes, chosen at the handshake. **Compat** (no subprotocol, ws-go clients): nothing is ever sent back;
//! invalid input is logged (never its payload) and counted. **`wsmq.v1`**: invalid input gets an error frame
//! naming the problem (and the message's `Id`), and a message carrying an `Id` is acked only once msgqueue has
//! stored it durably. Either way an invalid message never reaches msgqueue and the connection stays open.
//!
//! Acks are delivered by a per-session task that awaits the link's receipts in order, so the reader keeps
//! reading while earlier messages wait for msgqueue; the queue between them is bounded, which caps how many
//! unconfirmed messages one client can have outstanding.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wsmq_core::access::{Access, ConnectionAccess};
use wsmq_core::limits::Limits;
use wsmq_core::metrics::ListenerMetrics;
use wsmq_core::protocol::SUBPROTOCOL_V1;
use wsmq_core::protocol::client::{encode_ack, encode_error};
use wsmq_core::protocol::envelope::{EnvelopeError, Publish};
use wsmq_core::server::Accepted;
use wsmq_core::ws::{self, Outbox};

use crate::link::{Confirm, LinkClosed, PushLink, Receipt};
use crate::metrics::{InvalidReason, PublisherMetrics};

/// The error a `wsmq.v1` client gets for a message to a topic it may not publish to.
pub const FORBIDDEN: &str = "forbidden";
/// Frames queued towards one client (acks and errors) before the sender waits.
pub const CLIENT_OUTBOX: usize = 256;
/// Messages of one `wsmq.v1` client awaiting msgqueue's verdict; beyond it the session stops reading the client
/// until earlier messages are confirmed.
pub const MAX_UNCONFIRMED: usize = 1024;

/// What every session of one publisher shares; cloned into each connection task.
#[derive(Clone, Debug)]
pub struct ConnectionContext {
    /// The link to msgqueue.
    pub link: PushLink,
    /// The listener's limits (message size, pings, idle timeout).
    pub limits: Limits,
    /// Publisher metrics.
    pub metrics: PublisherMetrics,
    /// Listener metrics (messages and bytes in and out).
    pub listener: ListenerMetrics,
    /// Who may publish to what (the ACL file, if any).
    pub access: Access,
    /// `--max-delay`: furthest ahead a `wsmq.v1` message may be scheduled.
    pub max_delay: Duration,
}

/// A message waiting for msgqueue, with the `Id` (raw JSON) to echo when it is confirmed.
struct Unconfirmed {
    id: Option<Box<RawValue>>,
    receipt: Receipt,
}

/// Serves one client connection until it closes, fails, or the publisher shuts down; logs in the connection's
/// span (`core::server`: path, peer, user).
///
/// The set-up runs here, before the future exists: the connection's task keeps its future allocated for the
/// connection's life, and an `async fn` would keep its arguments (the whole `Accepted` and the context) in it a
/// second time (rust-lang/rust#62958).
pub fn handle(
    accepted: Accepted,
    context: ConnectionContext,
) -> impl Future<Output = ()> + Send + 'static {
    let reliable = accepted.subprotocol == Some(SUBPROTOCOL_V1);
    let (mut reader, outbox, writer) = ws::split(
        accepted.ws,
        &context.limits,
        CLIENT_OUTBOX,
        &accepted.shutdown,
    );
    let access = context
        .access
        .connection(&accepted.user, accepted.permissions);
    let shutdown = accepted.shutdown;
    let mut session = Session {
        context,
        outbox,
        confirmations: None,
        access,
    };
    let confirmer = reliable.then(|| session.start_confirmer());
    async move {
        let reading = session.read_loop(&mut reader, &shutdown).await;
        if let Some(confirmer) = confirmer {
            confirmer.abort();
        }
        let limits = session.context.limits.clone();
        drop(session);
        if reading == Reading::Stopped {
            // Nothing read now was acked, so a `wsmq.v1` client knows to send it again.
            reader.finish_closing().await;
        }
        ws::finish_writer(writer, &limits, &shutdown).await;
    }
}

struct Session {
    context: ConnectionContext,
    outbox: Outbox,
    /// `Some` in `wsmq.v1` mode: where receipts go to be turned into ack or error frames.
    confirmations: Option<mpsc::Sender<Unconfirmed>>,
    /// What this client may publish to.
    access: ConnectionAccess,
}

impl Session {
    fn start_confirmer(&mut self) -> JoinHandle<()> {
        let (sender, receiver) = mpsc::channel(MAX_UNCONFIRMED);
        self.confirmations = Some(sender);
        tokio::spawn(
            confirm(receiver, self.outbox.clone(), self.context.listener.clone()).in_current_span(),
        )
    }

    /// Reads and publishes until the connection ends, or until the publisher stops (shutdown, or its link
    /// ended), which starts closing with 1001. A message waiting for buffer space (backpressure) is abandoned only
    /// on shutdown; a client that merely closed still gets what it sent pushed.
    async fn read_loop<S>(
        &mut self,
        reader: &mut ws::Reader<S>,
        shutdown: &CancellationToken,
    ) -> Reading
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        loop {
            let message = match reader.next().await {
                Ok(Some(message)) => message,
                Ok(None) => return Reading::Ended,
                Err(err) => {
                    tracing::debug!(%err, "client connection ended");
                    return Reading::Ended;
                }
            };
            let outcome = match message {
                Message::Text(text) => {
                    self.context.listener.received(text.len());
                    tokio::select! {
                        outcome = self.publish(&text) => outcome,
                        () = shutdown.cancelled() => return Reading::Stopped,
                    }
                }
                Message::Binary(bytes) => {
                    self.context.listener.received(bytes.len());
                    self.refuse(
                        InvalidReason::Binary,
                        "binary frames are not accepted; send text",
                        None,
                    )
                    .await;
                    Ok(())
                }
                _ => Ok(()),
            };
            if outcome.is_err() {
                tracing::debug!("msgqueue link stopped; closing client connection");
                self.outbox.close(CloseCode::Away, "publisher stopping");
                return Reading::Stopped;
            }
        }
    }

    /// Validates one text frame and hands it to the link; invalid input is refused without reaching msgqueue.
    async fn publish(&mut self, text: &str) -> Result<(), LinkClosed> {
        let publish = Publish::parse_text(text);
        let envelope = match publish.envelope {
            Ok(envelope) => envelope,
            Err(err) => {
                self.refuse(invalid_reason(&err), &err.to_string(), publish.id)
                    .await;
                return Ok(());
            }
        };
        match self.access.may_publish(&envelope.topic) {
            Ok(true) => {}
            Ok(false) => {
                self.forbid(publish.id).await;
                return Ok(());
            }
            Err(problem) => {
                self.refuse(InvalidReason::Topic, &problem, publish.id)
                    .await;
                return Ok(());
            }
        }
        let payload = envelope.encode();
        if payload.len() > self.context.limits.max_message_size {
            let reason = format!(
                "message exceeds {} bytes",
                self.context.limits.max_message_size
            );
            self.refuse(InvalidReason::TooLarge, &reason, publish.id)
                .await;
            return Ok(());
        }
        // Scheduling is a wsmq.v1 feature: a compat client's DeliverAt or Delay is ignored, as ws-go did.
        let due_ms = match (&self.confirmations, publish.schedule) {
            (None, _) | (Some(_), Ok(None)) => None,
            (Some(_), Ok(Some(schedule))) => {
                match schedule.due_ms(SystemTime::now(), self.context.max_delay) {
                    Ok(due_ms) => due_ms,
                    Err(err) => {
                        self.refuse(InvalidReason::Schedule, &err.to_string(), publish.id)
                            .await;
                        return Ok(());
                    }
                }
            }
            (Some(_), Err(err)) => {
                self.refuse(InvalidReason::Schedule, &err.to_string(), publish.id)
                    .await;
                return Ok(());
            }
        };
        self.context.metrics.accepted();
        match &self.confirmations {
            Some(confirmations) => {
                let receipt = self
                    .context
                    .link
                    .push(payload, due_ms, Confirm::Stored)
                    .await?;
                let unconfirmed = Unconfirmed {
                    id: publish.id.map(ToOwned::to_owned),
                    receipt,
                };
                // Fails only when the confirmer has ended, i.e. the connection is going away.
                let _ = confirmations.send(unconfirmed).await;
                Ok(())
            }
            None => self.context.link.push_untracked(payload).await,
        }
    }

    /// Counts a message the client may not publish and, in `wsmq.v1` mode, tells it so (`forbidden`, with the
    /// message's `Id`); a compat client's is dropped, logged at debug only.
    async fn forbid(&self, id: Option<&RawValue>) {
        self.context.metrics.forbidden();
        if self.confirmations.is_some() {
            send_text(
                &self.outbox,
                &self.context.listener,
                encode_error(FORBIDDEN, id),
            )
            .await;
        } else {
            tracing::debug!("forbidden message from compat client dropped");
        }
    }

    /// Counts an invalid message and, in `wsmq.v1` mode, tells the client what is wrong with it.
    async fn refuse(&self, reason: InvalidReason, problem: &str, id: Option<&RawValue>) {
        self.context.metrics.invalid(reason);
        if self.confirmations.is_some() {
            send_text(
                &self.outbox,
                &self.context.listener,
                encode_error(problem, id),
            )
            .await;
        } else {
            tracing::debug!(
                reason = reason.as_str(),
                "invalid message from compat client dropped"
            );
        }
    }
}

/// Why [`Session::read_loop`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The connection is over (closing handshake done, peer gone, or a read error).
    Ended,
    /// The session stopped publishing while the client may still be sending; the connection is closing.
    Stopped,
}

/// Turns receipts into ack frames (messages with an `Id`) and error frames (rejected messages), in order.
async fn confirm(
    mut receiver: mpsc::Receiver<Unconfirmed>,
    outbox: Outbox,
    listener: ListenerMetrics,
) {
    while let Some(Unconfirmed { id, receipt }) = receiver.recv().await {
        let frame = match (receipt.outcome().await, &id) {
            (Ok(_), Some(id)) => encode_ack(id),
            (Ok(_), None) => continue,
            (Err(err), id) => encode_error(&err.to_string(), id.as_deref()),
        };
        if !send_text(&outbox, &listener, frame).await {
            break;
        }
    }
}

/// Queues a text frame to the client; false when the connection is gone.
async fn send_text(outbox: &Outbox, listener: &ListenerMetrics, frame: Bytes) -> bool {
    let len = frame.len();
    let Ok(text) = Utf8Bytes::try_from(frame) else {
        return true;
    };
    let sent = outbox.send(Message::Text(text)).await.is_ok();
    if sent {
        listener.sent(len);
    }
    sent
}

fn invalid_reason(err: &EnvelopeError) -> InvalidReason {
    match err {
        EnvelopeError::Json(_) | EnvelopeError::NoSeparator => InvalidReason::Malformed,
        EnvelopeError::MissingTopic | EnvelopeError::MissingContent => InvalidReason::MissingField,
        EnvelopeError::BadId => InvalidReason::Id,
        EnvelopeError::Topic(_) => InvalidReason::Topic,
    }
}

#[cfg(test)]
mod tests {
    /// Every connection's task keeps this future allocated for the connection's life: it holds the session and
    /// its read loop once, not the `Accepted` and the context a second time as an `async fn` would (which made
    /// the connection's task 3,712 bytes in release builds; it is 2,048 now).
    #[test]
    fn a_publish_sessions_future_holds_its_set_up_once() {
        fn output_size<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let session = output_size(super::handle);
        assert!(
            session <= 1856,
            "the session's future is {session} bytes (3,432 when it was an async fn)"
        );
    }
}
