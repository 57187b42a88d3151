//! Reconnecting connections to the publisher and the subscriber, shared by every clientdemo mode.
//!
//! A link is one task that owns its WebSocket. Input arrives on a bounded command channel; everything worth
//! showing leaves as an [`Event`] on a bounded event channel, so the terminal, the JSON printer and the ack
//! counter are plain consumers. When its service goes away a link tells the consumer, waits a jittered backoff and
//! reconnects, replaying what the new connection needs (subscriptions, unsent messages). It ends when its command
//! channel closes and nothing is outstanding, or at once when `stop` is cancelled.

use std::collections::{BTreeSet, HashMap, VecDeque};
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
use wsmq_core::protocol::history::{Epoch, Position};
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_core::topic;
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
        /// Its place in the topic's history, when the topic keeps one.
        position: Option<Position>,
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
    /// The subscriber confirmed a resumed subscription (`sub … since=…`, sent for `--since` and after every
    /// reconnect): the recovered messages follow as [`Event::Message`]s.
    Resumed(Resume),
    /// The subscriber confirmed an inbox ack: its messages up to `offset` are removed.
    Acked {
        /// The inbox.
        topic: String,
        /// The newest offset acked.
        offset: u64,
    },
    /// The subscriber answered a `history` request.
    History {
        /// The topic.
        topic: String,
        /// The topic's newest offset.
        latest: u64,
        /// The newest retained messages, oldest first, as (content, position).
        messages: Vec<(String, Option<Position>)>,
    },
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

/// The outcome of a resumed subscription, as the subscriber confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// The topic.
    pub(crate) topic: String,
    /// The last message the client had (offset 0: none).
    pub(crate) since: Position,
    /// The topic's epoch now.
    pub(crate) epoch: Epoch,
    /// The topic's newest offset when it was resumed: after the recovered messages the client is there.
    pub(crate) offset: u64,
    /// Whether the messages that follow are everything the client missed.
    pub(crate) recovered: bool,
    /// Why not, when `recovered` is false (`expired`, `epoch_changed`, `ahead`, `unavailable`).
    pub(crate) reason: Option<String>,
}

impl Resume {
    /// How many missed messages follow, when that is known: all of them (recovered) after a real offset.
    pub(crate) fn recovered_count(&self) -> Option<u64> {
        (self.recovered && self.since.offset > 0)
            .then(|| self.offset.saturating_sub(self.since.offset))
    }
}

impl fmt::Display for Resume {
    /// One line for the user: what was recovered, or that messages were missed and why.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Resume { topic, offset, .. } = self;
        if let Some(count) = self.recovered_count() {
            let after = self.since.offset;
            return write!(
                f,
                "resumed {topic} after offset {after}: recovered {count} missed message(s)"
            );
        }
        if self.recovered {
            return write!(
                f,
                "subscribed {topic} from its retained history (newest offset {offset})"
            );
        }
        let reason = self.reason.as_deref().unwrap_or("unknown");
        let why = match reason {
            "expired" => "they are no longer retained; what is follows",
            "epoch_changed" => "the topic's history was lost; what it holds now follows",
            "ahead" => "the offset is beyond the topic's newest message",
            "unavailable" => "the history could not be read; live messages follow",
            _ => "the subscriber did not say why",
        };
        write!(f, "resumed {topic}: messages missed ({reason}: {why})")
    }
}

/// A request to the subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subscription {
    /// Start receiving the topic; with `since`, first the retained messages after that position (offset 0: all
    /// of them).
    Subscribe {
        /// The topic or pattern (`since` needs an [exact](resumable) topic).
        topic: String,
        /// Where to resume from.
        since: Option<Position>,
    },
    /// Stop receiving the topic.
    Unsubscribe(String),
    /// Ask for the newest `limit` retained messages of the topic, once.
    History {
        /// The exact topic.
        topic: String,
        /// Most messages.
        limit: usize,
    },
    /// Ack the user's inbox up to `offset` (its messages are then removed for good).
    Ack {
        /// The inbox, `@<user>`.
        topic: String,
        /// The newest offset handled.
        offset: u64,
    },
}

/// Whether `topic` names one exact topic whose position can be resumed (not a pattern, not a legacy ws-go topic
/// outside the token rules), as the subscriber requires for `sub … since=` and `history`.
pub(crate) fn resumable(topic: &str) -> bool {
    topic::exact(topic).is_some()
}

/// The `sub` frame for `topic`, resuming after `since` when given.
fn sub_frame(topic: &str, since: Option<Position>) -> Message {
    let text = match since {
        None => format!("sub {topic}"),
        Some(Position { offset: 0, .. }) => format!("sub {topic} since=0"),
        Some(Position { epoch, offset }) => format!("sub {topic} since={offset} epoch={epoch}"),
    };
    Message::Text(text.into())
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

/// Subscriber side: the topics to (re)subscribe on every connection, where each exact topic is (so a reconnect
/// resumes it instead of missing what was published meanwhile), and the history requests awaiting their answer.
#[derive(Debug, Default)]
pub(crate) struct SubscriberClient {
    topics: BTreeSet<String>,
    /// The position of the last message received per exact subscribed topic (or the one to resume from first).
    positions: HashMap<String, Position>,
    /// History requests sent (or to send) and not answered yet, oldest first; sent again after a reconnect.
    histories: VecDeque<(String, usize)>,
}

impl SubscriberClient {
    /// A subscriber link that subscribes to `topics` as soon as it connects, resuming each after `since` when
    /// given (only exact topics can resume; the caller checks).
    pub(crate) fn new(topics: impl IntoIterator<Item = String>, since: Option<Position>) -> Self {
        let topics: BTreeSet<String> = topics.into_iter().collect();
        let positions = since
            .map(|since| topics.iter().map(|t| (t.clone(), since)).collect())
            .unwrap_or_default();
        Self {
            topics,
            positions,
            histories: VecDeque::new(),
        }
    }

    /// The `sub` frame that (re)subscribes `topic`: resuming from its last position when it has one.
    fn subscribe_frame(&self, topic: &str) -> Message {
        let since = self
            .positions
            .get(topic)
            .copied()
            .filter(|_| resumable(topic));
        sub_frame(topic, since)
    }

    /// Remembers where an exact subscribed topic is; never moves back within an epoch (a redelivery).
    fn advance(&mut self, topic: &str, position: Position) {
        if !self.topics.contains(topic) {
            return;
        }
        match self.positions.get_mut(topic) {
            Some(known) if known.epoch == position.epoch && known.offset >= position.offset => {}
            Some(known) => *known = position,
            None => {
                self.positions.insert(topic.to_owned(), position);
            }
        }
    }

    /// Takes in a resume's outcome. When nothing from the old position will follow, the position moves to where
    /// the topic is, so the next reconnect does not report the same loss again: an offset `ahead` of the topic
    /// moves to its newest offset; after an epoch change the client holds nothing of the new epoch (offset 0).
    fn resumed(&mut self, resume: &Resume) {
        let now = match resume.reason.as_deref() {
            Some("ahead") => resume.offset,
            Some("epoch_changed") => 0,
            _ => return,
        };
        if let Some(known) = self.positions.get_mut(&resume.topic) {
            *known = Position {
                epoch: resume.epoch,
                offset: now,
            };
        }
    }

    /// The frame asking for a topic's history.
    fn history_frame(topic: &str, limit: usize) -> Message {
        Message::Text(format!("history {topic} limit={limit}").into())
    }

    /// A history request was answered or refused: it is no longer outstanding.
    fn history_settled(&mut self, topic: Option<&str>) {
        match topic {
            Some(topic) => {
                if let Some(index) = self.histories.iter().position(|(t, _)| t == topic) {
                    self.histories.remove(index);
                }
            }
            None => {
                self.histories.pop_front();
            }
        }
    }
}

impl ServiceClient for SubscriberClient {
    type Command = Subscription;
    const SERVICE: Service = Service::Subscriber;
    const PATH: &'static str = SUBSCRIBE_PATH;

    fn command(&mut self, command: Subscription, online: bool) -> Option<Message> {
        let frame = match command {
            Subscription::Subscribe { topic, since } => {
                let frame = sub_frame(&topic, since);
                if let Some(since) = since {
                    self.positions.insert(topic.clone(), since);
                }
                self.topics.insert(topic);
                frame
            }
            Subscription::Unsubscribe(topic) => {
                let frame = Message::Text(format!("unsub {topic}").into());
                self.positions.remove(&topic);
                self.topics.remove(&topic);
                frame
            }
            Subscription::History { topic, limit } => {
                let frame = Self::history_frame(&topic, limit);
                self.histories.push_back((topic, limit));
                frame
            }
            Subscription::Ack { topic, offset } => {
                Message::Text(format!("ack {topic} {offset}").into())
            }
        };
        online.then_some(frame)
    }

    fn connected(&mut self) -> Vec<Message> {
        let subscriptions = self.topics.iter().map(|topic| self.subscribe_frame(topic));
        let histories = self
            .histories
            .iter()
            .map(|(topic, limit)| Self::history_frame(topic, *limit));
        subscriptions.chain(histories).collect()
    }

    fn frame(&mut self, text: &str) -> Vec<Event> {
        let event = match ServerFrame::parse(text) {
            Some(ServerFrame::Message {
                topic,
                content,
                position,
            }) => {
                if let Some(position) = position {
                    self.advance(&topic, position);
                }
                Event::Message {
                    topic,
                    content,
                    position,
                }
            }
            Some(ServerFrame::Subscribed(topic)) => Event::Subscribed(topic),
            Some(ServerFrame::Resumed {
                topic,
                epoch,
                offset,
                recovered,
                reason,
            }) => {
                let since = self.positions.get(&topic).copied().unwrap_or(Position {
                    epoch: Epoch(0),
                    offset: 0,
                });
                let resume = Resume {
                    topic,
                    since,
                    epoch,
                    offset,
                    recovered,
                    reason,
                };
                self.resumed(&resume);
                Event::Resumed(resume)
            }
            Some(ServerFrame::History {
                topic,
                latest,
                messages,
                ..
            }) => {
                self.history_settled(Some(&topic));
                let messages = messages
                    .into_iter()
                    .filter_map(|message| match message {
                        ServerFrame::Message {
                            content, position, ..
                        } => Some((content, position)),
                        _ => None,
                    })
                    .collect();
                Event::History {
                    topic,
                    latest,
                    messages,
                }
            }
            Some(ServerFrame::Unsubscribed(topic)) => Event::Unsubscribed(topic),
            Some(ServerFrame::SubscriptionRefused { topic, reason })
                if !self.topics.contains(&topic)
                    && self.histories.iter().any(|(t, _)| *t == topic) =>
            {
                // The same refusal answers a `history` the permissions do not allow.
                self.history_settled(Some(&topic));
                Event::Refused {
                    service: Self::SERVICE,
                    id: None,
                    message: format!("history {topic} refused: {reason}"),
                }
            }
            Some(ServerFrame::SubscriptionRefused { topic, reason }) => {
                // Subscribing again after a reconnect would only be refused again.
                self.topics.remove(&topic);
                self.positions.remove(&topic);
                Event::SubscriptionRefused { topic, reason }
            }
            Some(ServerFrame::SubscriptionEnded { topic, reason }) => {
                self.topics.remove(&topic);
                self.positions.remove(&topic);
                Event::SubscriptionEnded { topic, reason }
            }
            Some(ServerFrame::Error { message, id }) => {
                // Errors name no command; the subscriber answers in order, and every command this client sends
                // is checked first, so an error while a history request is outstanding is taken as its answer.
                self.history_settled(None);
                Event::Refused {
                    service: Self::SERVICE,
                    id: id.map(|id| decode_id(&id)),
                    message,
                }
            }
            Some(ServerFrame::Acked { topic, offset }) => Event::Acked { topic, offset },
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
        self.histories.len() < MAX_IN_FLIGHT
    }

    fn is_idle(&self) -> bool {
        self.histories.is_empty()
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

    const EPOCH: Epoch = Epoch(0xab);

    fn texts(frames: Vec<Message>) -> Vec<String> {
        frames
            .into_iter()
            .map(|frame| frame.into_text().map(|t| t.to_string()).unwrap_or_default())
            .collect()
    }

    fn delivered(client: &mut SubscriberClient, topic: &str, offset: u64) {
        let frame = format!(
            r#"{{"Topic":"{topic}","Content":"m{offset}","Offset":{offset},"Epoch":"{EPOCH}"}}"#
        );
        client.frame(&frame);
    }

    #[test]
    fn a_reconnect_resumes_exact_topics_after_their_last_message_and_patterns_plainly() {
        let mut client = SubscriberClient::new(["news".to_owned(), "news.*".to_owned()], None);
        assert_eq!(texts(client.connected()), ["sub news", "sub news.*"]);
        delivered(&mut client, "news", 4);
        delivered(&mut client, "news", 5);
        delivered(&mut client, "news.sport", 9);
        // A redelivered older message does not move the position back.
        delivered(&mut client, "news", 3);
        assert_eq!(
            texts(client.connected()),
            [
                "sub news since=5 epoch=00000000000000ab".to_owned(),
                "sub news.*".to_owned()
            ]
        );
    }

    #[test]
    fn since_applies_to_the_first_subscription_and_zero_asks_for_everything_retained() {
        let start = Position {
            epoch: Epoch(0),
            offset: 0,
        };
        let mut client = SubscriberClient::new(["a".to_owned()], Some(start));
        assert_eq!(texts(client.connected()), ["sub a since=0"]);
        let frame = client.command(
            Subscription::Subscribe {
                topic: "b".into(),
                since: Some(Position {
                    epoch: EPOCH,
                    offset: 2,
                }),
            },
            true,
        );
        assert_eq!(
            texts(frame.into_iter().collect()),
            ["sub b since=2 epoch=00000000000000ab"]
        );
        client.command(Subscription::Unsubscribe("b".into()), true);
        client.command(
            Subscription::Subscribe {
                topic: "b".into(),
                since: None,
            },
            true,
        );
        assert_eq!(
            texts(client.connected()),
            ["sub a since=0", "sub b"],
            "an unsubscribed topic forgets its position"
        );
    }

    #[test]
    fn a_lost_history_or_a_foreign_offset_is_reported_once_not_on_every_reconnect() {
        let mut client = SubscriberClient::new(["t".to_owned()], None);
        delivered(&mut client, "t", 6);
        let events = client.frame(
            r#"{"subscribed":"t","recovered":false,"epoch":"00000000000000cd","offset":1,"reason":"epoch_changed"}"#,
        );
        let [Event::Resumed(resume)] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(resume.since.offset, 6);
        assert!(
            resume
                .to_string()
                .contains("messages missed (epoch_changed")
        );
        assert_eq!(texts(client.connected()), ["sub t since=0"]);

        client.frame(r#"{"subscribed":"t","recovered":false,"epoch":"00000000000000cd","offset":1,"reason":"ahead"}"#);
        assert_eq!(
            texts(client.connected()),
            ["sub t since=1 epoch=00000000000000cd"]
        );
    }

    #[test]
    fn a_recovered_resume_counts_what_it_brings_back() {
        let mut client = SubscriberClient::new(["t".to_owned()], None);
        delivered(&mut client, "t", 3);
        let events = client
            .frame(r#"{"subscribed":"t","recovered":true,"epoch":"00000000000000ab","offset":6}"#);
        let [Event::Resumed(resume)] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(resume.recovered_count(), Some(3));
        assert_eq!(
            resume.to_string(),
            "resumed t after offset 3: recovered 3 missed message(s)"
        );
    }

    #[test]
    fn history_requests_are_outstanding_until_answered_or_refused_and_sent_again_after_a_reconnect()
    {
        let mut client = SubscriberClient::default();
        client.command(
            Subscription::History {
                topic: "t".into(),
                limit: 2,
            },
            false,
        );
        assert!(!client.is_idle());
        assert_eq!(texts(client.connected()), ["history t limit=2"]);
        let events = client.frame(
            r#"{"history":"t","epoch":"00000000000000ab","latest":5,"messages":[{"Topic":"t","Content":"m5","Offset":5,"Epoch":"00000000000000ab"}]}"#,
        );
        assert!(client.is_idle());
        client.command(
            Subscription::History {
                topic: "secret".into(),
                limit: 1,
            },
            true,
        );
        let refused = client.frame(r#"{"error":"forbidden","topic":"secret"}"#);
        assert!(client.is_idle(), "a refused history is answered");
        assert!(
            matches!(&refused[..], [Event::Refused { message, .. }] if message == "history secret refused: forbidden"),
            "{refused:?}"
        );
        assert_eq!(
            events,
            [Event::History {
                topic: "t".into(),
                latest: 5,
                messages: vec![(
                    "m5".into(),
                    Some(Position {
                        epoch: EPOCH,
                        offset: 5
                    })
                )],
            }]
        );
    }

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
