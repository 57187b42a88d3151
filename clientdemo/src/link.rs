//! Reconnecting connections to the publisher and the subscriber, shared by every clientdemo mode.
//!
//! A link is one task that owns its WebSocket. Input arrives on a bounded command channel; everything worth
//! showing leaves as an [`Event`] on a bounded event channel, so the terminal, the JSON printer and the ack
//! counter are plain consumers. When its service goes away a link tells the consumer, waits a jittered backoff and
//! reconnects, replaying what the new connection needs (subscriptions, unsent messages). It ends when its command
//! channel closes and nothing is outstanding, or at once when `stop` is cancelled.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use futures_util::stream::SplitStream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::dial::{ClientWs, DialError, Dialer};
use wsmq_core::limits::Limits;
use wsmq_core::link::{self as reconnecting, ConnectError, Flow, Start};
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_core::ws::{self, Outbox, Reader};

use crate::cli::When;

/// Events queued from the links to the consumer that shows them; a full queue makes the links wait, and so stop
/// reading their sockets (TCP backpressure towards the services).
pub(crate) const EVENT_QUEUE_CAPACITY: usize = 256;
/// User commands queued towards a link; the interactive prompt reports a full queue instead of waiting.
pub(crate) const COMMAND_QUEUE_CAPACITY: usize = 64;
/// Frames queued towards a connection's writer task; a full queue makes the link wait (backpressure).
const OUTBOX_CAPACITY: usize = 64;
/// Most published messages that may be unsent or awaiting their ack; at the limit the link stops taking new
/// ones, so a publisher that never answers cannot make the client grow without bound.
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// First reconnection delay cap; it doubles per failed attempt.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Largest reconnection delay, short enough that a restarted service is noticed within seconds.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Close reason sent when the client is done.
const CLOSE_REASON: &str = "client done";

/// Which service a link talks to, for messages to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// The publisher (`/publish`).
    Publisher,
    /// The subscriber (`/subscribe`).
    Subscriber,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Publisher => "publisher",
            Service::Subscriber => "subscriber",
        })
    }
}

/// Something a link reports to its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A connection is up (first time or after a reconnect).
    Connected {
        /// The service.
        service: Service,
        /// Its base URL.
        url: String,
    },
    /// An established connection ended; the link reconnects.
    Disconnected {
        /// The service.
        service: Service,
        /// Why, as far as the client can tell.
        reason: String,
    },
    /// A reconnection attempt failed (reported once per distinct reason, not per attempt).
    Unreachable {
        /// The service.
        service: Service,
        /// The dial error.
        reason: String,
    },
    /// A message arrived on a subscribed topic.
    Message {
        /// Its topic.
        topic: String,
        /// Its content.
        content: String,
    },
    /// The publisher confirmed the message with this id is durably stored.
    Ack {
        /// The message id.
        id: String,
    },
    /// A service refused something: a published message (with its id) or a subscription command.
    Refused {
        /// The service.
        service: Service,
        /// The message id, when the refusal is about a published message.
        id: Option<String>,
        /// The service's reason.
        message: String,
    },
    /// The subscriber confirmed a subscription.
    Subscribed(String),
    /// The subscriber confirmed an unsubscription.
    Unsubscribed(String),
    /// The subscriber refused a subscription (e.g. `forbidden` by the client's permissions); it is not retried.
    SubscriptionRefused {
        /// The topic or pattern of the refused `sub`.
        topic: String,
        /// The subscriber's reason.
        reason: String,
    },
    /// The subscriber ended a subscription on its own (permissions reloaded); it is not resubscribed.
    SubscriptionEnded {
        /// The topic or pattern no longer subscribed.
        topic: String,
        /// The subscriber's reason.
        reason: String,
    },
    /// The connection ended after this message was sent but before its ack: it may or may not be stored.
    Lost {
        /// The message id.
        id: String,
    },
    /// The client stopped before this message could be sent at all.
    NotSent {
        /// The message id.
        id: String,
    },
    /// A frame the client does not understand, shown raw.
    Unexpected {
        /// The service.
        service: Service,
        /// The frame's text.
        frame: String,
    },
}

/// One message to publish; `id` comes back in its ack or error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publication {
    /// The `Id` the publisher echoes, e.g. `m-3`.
    pub(crate) id: String,
    /// The topic.
    pub(crate) topic: String,
    /// The content.
    pub(crate) content: String,
    /// When to deliver it (at once by default).
    pub(crate) when: When,
}

/// A subscription change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscription {
    /// Start receiving the topic.
    Subscribe(String),
    /// Stop receiving the topic.
    Unsubscribe(String),
}

/// Whether a failed first dial is worth retrying: wrong credentials, an untrusted certificate, a wrong URL or
/// path, or a service that does not speak `wsmq.v1` will not fix themselves, so the client reports them and exits.
pub(crate) fn is_permanent(err: &DialError) -> bool {
    match err {
        DialError::InvalidUrl { .. }
        | DialError::TlsVerification { .. }
        | DialError::Unauthorized { .. }
        | DialError::SubprotocolRejected { .. } => true,
        // 429: the server throttles failed logins from this address; it passes.
        DialError::HttpStatus { status, .. } => matches!(status, 400..=499) && *status != 429,
        DialError::Timeout { .. }
        | DialError::Io { .. }
        | DialError::Tls { .. }
        | DialError::Handshake { .. } => false,
    }
}

/// Dials a link's first connection, so a mistake in the settings ends the program at once instead of being
/// retried forever: `Err` for a [permanent](is_permanent) failure, `Ok(None)` for one the link should retry.
pub(crate) async fn first_dial<C: ServiceClient>(
    dialer: &Dialer,
) -> Result<Option<ClientWs>, DialError> {
    match dialer.dial(C::PATH).await {
        Ok((ws, _)) => Ok(Some(ws)),
        Err(err) if is_permanent(&err) => Err(err),
        Err(_) => Ok(None),
    }
}

/// The client side of one service (publisher or subscriber): what differs between the two links, mainly the state a
/// reconnect must replay. Not `core::link::Protocol`, which [`ServiceLink`] implements on top of it.
pub(crate) trait ServiceClient: Send + Sync + 'static {
    /// What the user asks the link to do.
    type Command: Send + 'static;
    /// The service, for events.
    const SERVICE: Service;
    /// The WebSocket path.
    const PATH: &'static str;

    /// Records a command and returns the frame to send, if `online` and there is one.
    fn command(&mut self, command: Self::Command, online: bool) -> Option<Message>;
    /// Frames a fresh connection must send first (subscriptions, messages queued while offline).
    fn connected(&mut self) -> Vec<Message>;
    /// Decodes a text frame from the service.
    fn frame(&mut self, text: &str) -> Vec<Event>;
    /// The connection was lost: what became of outstanding work.
    fn disconnected(&mut self) -> Vec<Event>;
    /// The link stops for good: what becomes of everything outstanding.
    fn abandon(&mut self) -> Vec<Event>;
    /// Whether another command may be taken now (bounded in-flight work).
    fn can_take_command(&self) -> bool;
    /// Whether nothing is outstanding, so a link whose input ended may close.
    fn is_idle(&self) -> bool;
}

/// Publisher side: messages not yet sent and messages awaiting their ack.
#[derive(Debug, Default)]
pub(crate) struct PublisherClient {
    unsent: VecDeque<Publication>,
    pending: VecDeque<String>,
}

/// The `wsmq.v1` publish frame; field names as ws-go's envelope.
#[derive(Serialize)]
struct WirePublish<'a> {
    #[serde(rename = "Topic")]
    topic: &'a str,
    #[serde(rename = "Content")]
    content: &'a str,
    #[serde(rename = "Id")]
    id: &'a str,
    #[serde(rename = "Delay", skip_serializing_if = "Option::is_none")]
    delay: Option<&'a str>,
    #[serde(rename = "DeliverAt", skip_serializing_if = "Option::is_none")]
    deliver_at: Option<&'a str>,
}

impl PublisherClient {
    fn send(&mut self, publication: &Publication) -> Option<Message> {
        self.pending.push_back(publication.id.clone());
        let wire = WirePublish {
            topic: &publication.topic,
            content: &publication.content,
            id: &publication.id,
            delay: publication.when.delay.as_deref(),
            deliver_at: publication.when.deliver_at.as_deref(),
        };
        serde_json::to_string(&wire)
            .ok()
            .map(|text| Message::Text(text.into()))
    }

    /// Removes `id` from the pending list; it is usually the oldest.
    fn settle(&mut self, id: &str) {
        if let Some(index) = self.pending.iter().position(|pending| pending == id) {
            self.pending.remove(index);
        }
    }
}

/// The publisher echoes ids as raw JSON; ours are strings, shown without quotes.
fn decode_id(raw: &str) -> String {
    serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned())
}

impl ServiceClient for PublisherClient {
    type Command = Publication;
    const SERVICE: Service = Service::Publisher;
    const PATH: &'static str = PUBLISH_PATH;

    fn command(&mut self, publication: Publication, online: bool) -> Option<Message> {
        if online {
            self.send(&publication)
        } else {
            self.unsent.push_back(publication);
            None
        }
    }

    fn connected(&mut self) -> Vec<Message> {
        let unsent: Vec<Publication> = self.unsent.drain(..).collect();
        unsent.iter().filter_map(|p| self.send(p)).collect()
    }

    fn frame(&mut self, text: &str) -> Vec<Event> {
        let event = match ServerFrame::parse(text) {
            Some(ServerFrame::Ack { id }) => {
                let id = decode_id(&id);
                self.settle(&id);
                Event::Ack { id }
            }
            Some(ServerFrame::Error { message, id }) => {
                let id = id.map(|id| decode_id(&id));
                if let Some(id) = &id {
                    self.settle(id);
                }
                Event::Refused {
                    service: Self::SERVICE,
                    id,
                    message,
                }
            }
            _ => Event::Unexpected {
                service: Self::SERVICE,
                frame: text.to_owned(),
            },
        };
        vec![event]
    }

    fn disconnected(&mut self) -> Vec<Event> {
        self.pending
            .drain(..)
            .map(|id| Event::Lost { id })
            .collect()
    }

    fn abandon(&mut self) -> Vec<Event> {
        let mut events = self.disconnected();
        events.extend(self.unsent.drain(..).map(|p| Event::NotSent { id: p.id }));
        events
    }

    fn can_take_command(&self) -> bool {
        self.unsent.len() + self.pending.len() < MAX_IN_FLIGHT
    }

    fn is_idle(&self) -> bool {
        self.unsent.is_empty() && self.pending.is_empty()
    }
}

/// Subscriber side: the topics to (re)subscribe on every connection.
#[derive(Debug, Default)]
pub(crate) struct SubscriberClient {
    topics: BTreeSet<String>,
}

impl SubscriberClient {
    /// A subscriber link that subscribes to `topics` as soon as it connects.
    pub(crate) fn new(topics: impl IntoIterator<Item = String>) -> Self {
        Self {
            topics: topics.into_iter().collect(),
        }
    }
}

impl ServiceClient for SubscriberClient {
    type Command = Subscription;
    const SERVICE: Service = Service::Subscriber;
    const PATH: &'static str = SUBSCRIBE_PATH;

    fn command(&mut self, command: Subscription, online: bool) -> Option<Message> {
        let text = match command {
            Subscription::Subscribe(topic) => {
                let text = format!("sub {topic}");
                self.topics.insert(topic);
                text
            }
            Subscription::Unsubscribe(topic) => {
                let text = format!("unsub {topic}");
                self.topics.remove(&topic);
                text
            }
        };
        online.then(|| Message::Text(text.into()))
    }

    fn connected(&mut self) -> Vec<Message> {
        self.topics
            .iter()
            .map(|topic| Message::Text(format!("sub {topic}").into()))
            .collect()
    }

    fn frame(&mut self, text: &str) -> Vec<Event> {
        let event = match ServerFrame::parse(text) {
            Some(ServerFrame::Message { topic, content }) => Event::Message { topic, content },
            Some(ServerFrame::Subscribed(topic)) => Event::Subscribed(topic),
            Some(ServerFrame::Unsubscribed(topic)) => Event::Unsubscribed(topic),
            Some(ServerFrame::SubscriptionRefused { topic, reason }) => {
                // Subscribing again after a reconnect would only be refused again.
                self.topics.remove(&topic);
                Event::SubscriptionRefused { topic, reason }
            }
            Some(ServerFrame::SubscriptionEnded { topic, reason }) => {
                self.topics.remove(&topic);
                Event::SubscriptionEnded { topic, reason }
            }
            Some(ServerFrame::Error { message, id }) => Event::Refused {
                service: Self::SERVICE,
                id: id.map(|id| decode_id(&id)),
                message,
            },
            Some(ServerFrame::Ack { .. }) | None => Event::Unexpected {
                service: Self::SERVICE,
                frame: text.to_owned(),
            },
        };
        vec![event]
    }

    fn disconnected(&mut self) -> Vec<Event> {
        Vec::new()
    }

    fn abandon(&mut self) -> Vec<Event> {
        Vec::new()
    }

    fn can_take_command(&self) -> bool {
        true
    }

    fn is_idle(&self) -> bool {
        true
    }
}

/// How a connection ended.
enum Ending {
    /// The link is done (input ended and nothing outstanding, stopped, or nobody listens any more).
    Done,
    /// The connection was lost; reconnect.
    Lost(String),
}

/// clientdemo's reconnecting link to one service: its [`ServiceClient`] plus the command and event channels, run by
/// the shared `core::link::Link` as its `Protocol`.
struct ServiceLink<C: ServiceClient> {
    client: C,
    commands: mpsc::Receiver<C::Command>,
    input_open: bool,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
    /// The last dial failure reported, so a service that stays down is reported once per distinct reason.
    last_failure: Option<String>,
}

/// Runs a link until its input ends with nothing outstanding, or `stop` is cancelled.
///
/// `first` is a connection the caller already made (it dials first itself, to fail fast on permanent errors);
/// without one the caller's dial failed and the link redials after a backoff delay. The link returns early if
/// the event receiver is dropped.
pub(crate) async fn run<C: ServiceClient>(
    client: C,
    dialer: Dialer,
    first: Option<ClientWs>,
    commands: mpsc::Receiver<C::Command>,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    let mut link = ServiceLink {
        client,
        commands,
        input_open: true,
        events,
        stop: stop.clone(),
        last_failure: None,
    };
    let start = match first {
        Some(ws) => Start::Connected(Box::new(ws)),
        None => Start::Retry,
    };
    let backoff = BackoffArgs {
        initial: BACKOFF_INITIAL,
        max: BACKOFF_MAX,
    };
    reconnecting::Link::new(dialer, backoff)
        .run(&mut link, start, &stop)
        .await;
    let abandoned = link.client.abandon();
    for event in abandoned {
        if !link.emit(event).await {
            break;
        }
    }
}

/// Turns "nobody listens any more" into the link's stop signal.
fn flow(listened: bool) -> Flow {
    if listened { Flow::Continue } else { Flow::Stop }
}

impl<C: ServiceClient> reconnecting::Protocol for ServiceLink<C> {
    type Error = String;

    fn path(&self) -> &str {
        C::PATH
    }

    async fn serve(&mut self, ws: ClientWs, _shutdown: &CancellationToken) -> Result<(), String> {
        match self.online(ws).await {
            Ending::Done => Ok(()),
            Ending::Lost(reason) => Err(reason),
        }
    }

    fn is_done(&self) -> bool {
        !self.input_open && self.client.is_idle()
    }

    /// Keeps taking commands while offline; they are recorded and replayed on the next connection.
    async fn offline(&mut self) -> Flow {
        if !(self.input_open && self.client.can_take_command()) {
            return std::future::pending().await;
        }
        match self.commands.recv().await {
            Some(command) => {
                self.client.command(command, false);
            }
            None => self.input_open = false,
        }
        Flow::Continue
    }

    async fn connected(&mut self, url: &str) -> Flow {
        self.last_failure = None;
        let connected = Event::Connected {
            service: C::SERVICE,
            url: url.to_owned(),
        };
        flow(self.emit(connected).await)
    }

    async fn unreachable(&mut self, err: &ConnectError, _attempts: u32) -> Flow {
        let reason = err.to_string();
        if self.last_failure.as_ref() == Some(&reason) {
            return Flow::Continue;
        }
        self.last_failure = Some(reason.clone());
        let event = Event::Unreachable {
            service: C::SERVICE,
            reason,
        };
        flow(self.emit(event).await)
    }

    async fn lost(&mut self, reason: String) -> Flow {
        let mut events = self.client.disconnected();
        events.push(Event::Disconnected {
            service: C::SERVICE,
            reason,
        });
        for event in events {
            if !self.emit(event).await {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }
}

impl<C: ServiceClient> ServiceLink<C> {
    /// Serves one connection until it ends; closes it with 1000 when the link is done.
    async fn online(&mut self, ws: ClientWs) -> Ending {
        let limits = Limits::default();
        let (mut reader, outbox, writer) =
            ws::split(ws, &limits, OUTBOX_CAPACITY, &CancellationToken::new());
        let ending = self.converse(&mut reader, &outbox).await;
        if matches!(ending, Ending::Done) {
            outbox.close(CloseCode::Normal, CLOSE_REASON);
            // Read on until the server answers our Close (bounded by the reader's close timeout).
            while let Ok(Some(_)) = reader.next().await {}
        }
        drop(outbox);
        let _ = writer.await;
        ending
    }

    async fn converse(
        &mut self,
        reader: &mut Reader<SplitStream<ClientWs>>,
        outbox: &Outbox,
    ) -> Ending {
        for frame in self.client.connected() {
            if outbox.send(frame).await.is_err() {
                return Ending::Lost("connection closed while sending".to_owned());
            }
        }
        loop {
            if !self.input_open && self.client.is_idle() {
                return Ending::Done;
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ending::Done,
                read = reader.next() => match read {
                    Ok(Some(Message::Text(text))) => {
                        for event in self.client.frame(text.as_str()) {
                            if !self.emit(event).await {
                                return Ending::Done;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ending::Lost("connection closed by the server".to_owned()),
                    Err(err) => return Ending::Lost(err.to_string()),
                },
                command = self.commands.recv(), if self.input_open && self.client.can_take_command() => {
                    match command {
                        Some(command) => {
                            if let Some(frame) = self.client.command(command, true)
                                && outbox.send(frame).await.is_err()
                            {
                                return Ending::Lost("connection closed while sending".to_owned());
                            }
                        }
                        None => self.input_open = false,
                    }
                }
            }
        }
    }

    /// Hands an event to the consumer; `false` when nobody listens any more.
    async fn emit(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(when: When) -> String {
        let publication = Publication {
            id: "m-1".into(),
            topic: "news".into(),
            content: "hi".into(),
            when,
        };
        match PublisherClient::default().send(&publication) {
            Some(Message::Text(text)) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    #[test]
    fn a_scheduled_publication_carries_delay_or_deliver_at_and_others_neither() {
        assert_eq!(
            sent(When::default()),
            r#"{"Topic":"news","Content":"hi","Id":"m-1"}"#
        );
        let delay = When {
            delay: Some("10s".into()),
            deliver_at: None,
        };
        assert_eq!(
            sent(delay),
            r#"{"Topic":"news","Content":"hi","Id":"m-1","Delay":"10s"}"#
        );
        let at = When {
            delay: None,
            deliver_at: Some("2030-01-02T15:04:05Z".into()),
        };
        assert_eq!(
            sent(at),
            r#"{"Topic":"news","Content":"hi","Id":"m-1","DeliverAt":"2030-01-02T15:04:05Z"}"#
        );
    }
}
