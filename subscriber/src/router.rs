//! Topic routing: which connected clients receive a message, and each client's bounded outbound queue.
//!
//! The index maps a topic to its subscribers and an immutable snapshot of them (`Arc<[Arc<Client>]>`), rebuilt by
//! the first routing after a subscribe/unsubscribe. Routing clones that one `Arc` out of the map, drops the map
//! guard, and only then offers the frame to each client's queue, so no lock is ever held while a socket is written (ws-go held one
//! global mutex while writing to every client, so one slow client stalled all of them). Every recipient gets
//! the same `Utf8Bytes` (the envelope exactly as msgqueue delivered it): fan-out copies no payload.
//!
//! Offering never waits. A client holding half its queue (`--client-queue`) or more under
//! [`SlowClientPolicy::Close`] is *congested*. Slow clients cost only themselves: the link to msgqueue holds
//! deliveries back (they stay durable there, nothing is lost) only while [`Router::hold`] says so:
//!
//! - **The path is the bottleneck**: more than half of the connected clients are congested (a lone client at
//!   max rate is all of them). This is what keeps a subscriber that reads at max rate lossless.
//! - **A congested client is still writing**: its writer wrote a frame within [`STALLED_AFTER`], so it is only
//!   momentarily behind (clients of one busy topic take turns at that) and is waited for. A client that stopped
//!   reading has written nothing since its socket buffers filled, which at all but the highest rates was long
//!   before its queue reached half: it holds no one (at the highest rates, for less than [`STALLED_AFTER`] once).
//!
//! Otherwise the congested clients are a stalled minority: deliveries go on, and a client is cut off with 1013 (try
//! again later) the moment its queue is full. Two bounds cover the rest: a hold lasts at most
//! `--slow-client-timeout`, after which [`Router::cut_congested`] cuts the clients still congested; and
//! [`Router::cut_behind`] cuts a client congested for `--slow-client-timeout` without once catching up, or congested
//! and writing nothing for that long, whether or not anyone was held for it (one on a topic that went quiet would
//! otherwise count towards a majority forever). A client that reads, but more slowly than its messages arrive, is
//! waited for only while it still writes; over real sockets its writer stalls within one hold (the kernel reopens
//! a full socket buffer in large steps, so nothing is written for longer than the 20 ms rule allows), and it is
//! then cut like one that does not read. One that kept writing every few milliseconds while staying behind could
//! pace the others, for at most `--slow-client-timeout` at a time; a per-client budget of waiting would close that
//! gap, but measured end to end it never came into play, so it is not built. Under [`SlowClientPolicy::DropOldest`] a full queue drops its oldest frame
//! instead and never holds anyone back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, Utf8Bytes};
use wsmq_core::metrics::LatencyHistogram;
use wsmq_core::protocol::client::encode_positioned;
use wsmq_core::protocol::history::Position;
use wsmq_core::topic::{Pattern, PatternTrie, Topic};
use wsmq_core::ws::{Closer, Outgoing};

use crate::metrics::SubscriberMetrics;

/// What happens to a client that cannot keep up with its messages.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowClientPolicy {
    /// Close the client with 1013 (try again later) when its queue fills while most clients keep up, or when it
    /// writes nothing for `--slow-client-timeout`: it reconnects and knows it missed messages. Deliveries are held
    /// back in msgqueue only while most clients are behind, or for a brief catch-up (see [`crate::router`]).
    #[default]
    Close,
    /// Drop the client's oldest queued frame to make room: it stays connected but silently misses messages, which
    /// suits dashboards that only care about the latest values; it never holds other clients back.
    DropOldest,
}

/// A congested client whose writer wrote nothing for this long is *stalled* and holds no one back: a client that
/// keeps up but fell behind for a moment is still writing, one that stopped reading has written nothing since
/// its socket buffers filled, which is long before its queue is half full at all but the highest rates.
pub const STALLED_AFTER: Duration = Duration::from_millis(20);

/// How soon a hold of the bottleneck kind is re-checked without a relief, so clients that joined meanwhile (and
/// change the majority) are taken into account.
const MAJORITY_RECHECK: Duration = Duration::from_millis(10);

/// The close reason a slow client sees with code 1013.
const SLOW_CLIENT_REASON: &str = "slow consumer: outbound queue full";

/// A drained queue keeps its buffer for the next burst unless the buffer grew beyond this many frames, so a burst
/// does not leave every idle client holding a large allocation.
const RETAINED_CAPACITY: usize = 64;

/// One connected client as the router sees it: its outbound queue and how to close it. Public so the routing
/// benchmark and embedders can drive a [`Router`] without sockets.
#[derive(Debug)]
pub struct Client {
    id: u64,
    outbound: Mutex<Outbound>,
    ready: Notify,
    capacity: usize,
    policy: SlowClientPolicy,
    closer: Closer,
    congestion: Arc<Congestion>,
    /// When (on [`Congestion::now`]'s clock) the writer last took a frame, or frames arrived at an empty queue:
    /// how long the client has gone without writing anything it had to write.
    progress: AtomicU64,
    /// When the current congestion began (meaningful while congested).
    congested_since: AtomicU64,
    /// `delivery_duration_seconds`: popped from msgqueue → written to this client's socket.
    latency: LatencyHistogram,
    /// A `wsmq.v1` client: it receives messages with their `"Offset"` and `"Epoch"`.
    v1: bool,
    /// Per resumed topic, the last position it was sent from history: live messages up to it are skipped (the
    /// subscriber's own stream may lag behind what msgqueue's history already gave). A floor goes once a newer
    /// message passed it. Empty for almost every client, so routing only checks [`Client::has_floors`].
    floors: Mutex<Vec<(Box<str>, Position)>>,
    has_floors: AtomicBool,
    /// Notified whenever the writer takes the queue, for [`Client::offer_when_room`].
    drained: Notify,
}

/// One client's outbound frames, with the state that decides whether more may enter. ("Queue" is msgqueue's:
/// this is only the bounded buffer in front of one client's socket writer.)
#[derive(Debug, Default)]
struct Outbound {
    frames: VecDeque<Utf8Bytes>,
    /// When the deliveries among `frames` were popped from msgqueue, a stamp per routed run, oldest first
    /// (replies carry none).
    stamps: VecDeque<Popped>,
    /// Set once the client was cut off or left; it then accepts nothing more.
    cut_off: bool,
    /// Whether this client is in [`Congestion::congested`].
    congested: bool,
}

/// Which clients are congested, shared by the router and its clients; the link asks it whether to hold.
#[derive(Debug)]
struct Congestion {
    /// The origin of the clients' timestamps.
    epoch: Instant,
    /// Connected clients (registered, not yet cut off or gone): the whole a majority is taken of.
    clients: AtomicUsize,
    /// `congested.len()`, readable without the lock for the common "nobody is congested" case.
    count: AtomicUsize,
    /// The congested clients. An entry is removed when its client catches up, is cut off or leaves.
    congested: Mutex<Vec<Arc<Client>>>,
    /// Notified whenever a client stops being congested.
    relieved: Notify,
}

impl Default for Congestion {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            clients: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            congested: Mutex::new(Vec::new()),
            relieved: Notify::new(),
        }
    }
}

impl Congestion {
    /// Nanoseconds since the router was created.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A copy of the congested clients, so no lock is held while they are inspected or cut off.
    fn snapshot(&self) -> Vec<Arc<Client>> {
        self.congested.lock().clone()
    }

    /// Marks `client` (whose `outbound` is locked) congested from `now`.
    fn enter(&self, client: &Arc<Client>, outbound: &mut Outbound, now: u64) {
        if !outbound.congested {
            outbound.congested = true;
            client.congested_since.store(now, Ordering::Relaxed);
            self.congested.lock().push(Arc::clone(client));
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `client` (whose `outbound` is locked) is no longer congested.
    fn leave(&self, client: &Client, outbound: &mut Outbound) {
        if outbound.congested {
            outbound.congested = false;
            {
                let mut list = self.congested.lock();
                if let Some(at) = list.iter().position(|c| c.id == client.id) {
                    list.swap_remove(at);
                }
            }
            self.count.fetch_sub(1, Ordering::AcqRel);
            self.relieved.notify_waiters();
        }
    }

    /// Whether deliveries should be held back at `now`, and if so how soon to ask again (see the module doc).
    fn hold_at(&self, now: u64) -> Option<Duration> {
        let congested = self.count.load(Ordering::Acquire);
        if congested == 0 {
            return None;
        }
        if congested * 2 > self.clients.load(Ordering::Acquire) {
            return Some(MAJORITY_RECHECK);
        }
        let stalled_after = u64::try_from(STALLED_AFTER.as_nanos()).unwrap_or(u64::MAX);
        self.congested
            .lock()
            .iter()
            .map(|client| {
                client
                    .progress
                    .load(Ordering::Relaxed)
                    .saturating_add(stalled_after)
            })
            .filter(|&stalls_at| stalls_at > now)
            .min()
            .map(|stalls_at| Duration::from_nanos(stalls_at - now))
    }
}

/// `messages` deliveries of one run, popped from msgqueue at `at`: what a client's writer records in
/// `delivery_duration_seconds` once it has written them.
#[derive(Debug, Clone, Copy)]
struct Popped {
    at: Instant,
    messages: u64,
}

/// What offering a run of frames to one client did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Offered {
    /// Frames that went into the queue.
    queued: usize,
    /// Older frames dropped to make room (under [`SlowClientPolicy::DropOldest`]).
    dropped: usize,
    /// The queue overflowed under [`SlowClientPolicy::Close`]: the client is being cut off.
    overflowed: bool,
}

impl Offered {
    /// Updates the metrics; true when the client took the frames.
    fn count(self, metrics: &SubscriberMetrics) -> bool {
        if self.dropped > 0 {
            metrics.dropped_oldest(self.dropped);
        }
        if self.overflowed {
            metrics.slow_client_disconnected();
        }
        self.queued > 0
    }
}

impl Client {
    /// The queue length from which a client counts as congested.
    fn high_water(&self) -> usize {
        (self.capacity / 2).max(1)
    }

    /// Queues `frames` in order without waiting, applying the slow-client policy when the queue is full: one lock
    /// and at most one wake-up of the writer for the whole run, so a frame of many deliveries for one topic costs
    /// each subscriber one flush rather than one per message.
    ///
    /// `popped` (when the run left msgqueue) stamps the run for the client's delivery latency; replies and
    /// callers that measure nothing pass `None`.
    fn offer(self: &Arc<Self>, frames: &[Utf8Bytes], popped: Option<Instant>) -> Offered {
        let mut offered = Offered::default();
        {
            let mut outbound = self.outbound.lock();
            if outbound.cut_off {
                return offered;
            }
            if outbound.frames.is_empty() && !frames.is_empty() {
                // The writer has had nothing to write until now: its stall clock starts here.
                self.progress
                    .store(self.congestion.now(), Ordering::Relaxed);
            }
            for frame in frames {
                if outbound.frames.len() >= self.capacity {
                    match self.policy {
                        SlowClientPolicy::DropOldest => {
                            outbound.frames.pop_front();
                            offered.dropped += 1;
                            // The dropped frame is taken to be the oldest stamped delivery (a dropped reply
                            // would leave one delivery uncounted; replies are rare on a full queue).
                            if let Some(oldest) = outbound.stamps.front_mut() {
                                oldest.messages -= 1;
                                if oldest.messages == 0 {
                                    outbound.stamps.pop_front();
                                }
                            }
                        }
                        SlowClientPolicy::Close => {
                            self.cut_off(&mut outbound);
                            offered = Offered {
                                overflowed: true,
                                ..Offered::default()
                            };
                            break;
                        }
                    }
                }
                outbound.frames.push_back(frame.clone());
                offered.queued += 1;
            }
            if let Some(at) = popped
                && !offered.overflowed
                && offered.queued > 0
            {
                outbound.stamps.push_back(Popped {
                    at,
                    messages: offered.queued as u64,
                });
            }
            if !offered.overflowed
                && !outbound.congested
                && self.policy == SlowClientPolicy::Close
                && outbound.frames.len() >= self.high_water()
            {
                self.congestion
                    .enter(self, &mut outbound, self.congestion.now());
            }
        }
        if offered.overflowed {
            self.closer.close(CloseCode::Again, SLOW_CLIENT_REASON);
        } else if offered.queued > 0 {
            self.ready.notify_one();
        }
        offered
    }

    /// Stops accepting frames, forgets the queued ones and no longer holds the link back.
    fn cut_off(&self, outbound: &mut Outbound) {
        self.stop(outbound);
        outbound.frames = VecDeque::new();
        outbound.stamps = VecDeque::new();
        self.ready.notify_one();
    }

    /// Accepts nothing more and no longer counts as connected or congested.
    fn stop(&self, outbound: &mut Outbound) {
        if !outbound.cut_off {
            outbound.cut_off = true;
            self.congestion.clients.fetch_sub(1, Ordering::AcqRel);
        }
        self.congestion.leave(self, outbound);
    }

    /// Queues a reply to the client's own command (confirmation or error), under the same bound and policy as
    /// messages so a client that sends commands without reading cannot grow memory.
    pub(crate) fn reply(self: &Arc<Self>, frame: Utf8Bytes, metrics: &SubscriberMetrics) {
        self.offer(std::slice::from_ref(&frame), None)
            .count(metrics);
    }

    /// Moves every queued frame into the empty `into` (a swap: no copying) and their stamps to `stamps`, which
    /// relieves congestion. `false` once the client was cut off or left and nothing is left to write.
    fn take_all(&self, into: &mut VecDeque<Utf8Bytes>, stamps: &mut Vec<Popped>) -> bool {
        let mut outbound = self.outbound.lock();
        std::mem::swap(&mut outbound.frames, into);
        stamps.extend(outbound.stamps.drain(..));
        self.congestion.leave(self, &mut outbound);
        let more = !(outbound.cut_off && into.is_empty());
        drop(outbound);
        self.drained.notify_waiters();
        more
    }

    /// Queues `frames` (recovered history) without ever overflowing the queue: waits while it is half full
    /// (the writer taking it wakes this up). `false` if the client was cut off or left meanwhile.
    pub(crate) async fn offer_when_room(
        self: &Arc<Self>,
        frames: &[Utf8Bytes],
        metrics: &SubscriberMetrics,
    ) -> bool {
        let room = self.high_water().max(1);
        for chunk in frames.chunks(room) {
            loop {
                let drained = self.drained.notified();
                {
                    let outbound = self.outbound.lock();
                    if outbound.cut_off {
                        return false;
                    }
                    if outbound.frames.len() + chunk.len() <= self.capacity.max(room) {
                        drop(outbound);
                        if !self.offer(chunk, None).count(metrics) {
                            return false;
                        }
                        break;
                    }
                }
                drained.await;
            }
        }
        true
    }

    /// How many of `positions` (a run of `topic`, in offset order) the client already has from history: the
    /// leading ones at or below its floor for the topic. Drops the floor once the run goes beyond it.
    fn already_sent(&self, topic: &str, positions: &[Option<Position>]) -> usize {
        let mut floors = self.floors.lock();
        let Some(at) = floors.iter().position(|(t, _)| &**t == topic) else {
            return 0;
        };
        let floor = floors[at].1;
        let skip = positions
            .iter()
            .take_while(|p| p.is_some_and(|p| p.epoch == floor.epoch && p.offset <= floor.offset))
            .count();
        if skip < positions.len() {
            floors.swap_remove(at);
            self.has_floors.store(!floors.is_empty(), Ordering::Release);
        }
        skip
    }

    /// Sets the floor of `topic` (see [`Client::floors`]).
    fn set_floor(&self, topic: &str, position: Position) {
        let mut floors = self.floors.lock();
        floors.retain(|(t, _)| &**t != topic);
        floors.push((topic.into(), position));
        self.has_floors.store(true, Ordering::Release);
    }

    /// Forgets the floor of `topic` (unsubscribed).
    fn clear_floor(&self, topic: &str) {
        if self.has_floors.load(Ordering::Acquire) {
            let mut floors = self.floors.lock();
            floors.retain(|(t, _)| &**t != topic);
            self.has_floors.store(!floors.is_empty(), Ordering::Release);
        }
    }

    /// The writer is writing: restarts its stall clock.
    fn progressed(&self) {
        self.progress
            .store(self.congestion.now(), Ordering::Relaxed);
    }

    /// The session ended: nothing more is queued, what is queued is still written, and the client no longer
    /// holds the link back.
    pub fn leave(&self) {
        let mut outbound = self.outbound.lock();
        self.stop(&mut outbound);
        drop(outbound);
        self.ready.notify_one();
    }

    /// What the client's writer task sends: its queue, drained a whole batch at a time.
    pub fn outgoing(self: &Arc<Self>) -> ClientOutgoing {
        ClientOutgoing {
            client: Arc::clone(self),
            batch: VecDeque::new(),
            unwritten: Vec::new(),
        }
    }
}

/// A client's queue as its writer task sees it ([`Outgoing`]): the writer takes the whole queue in one lock and
/// feeds it frame by frame, so a busy client costs one lock and one wake-up per batch, not per message.
#[derive(Debug)]
pub struct ClientOutgoing {
    client: Arc<Client>,
    batch: VecDeque<Utf8Bytes>,
    /// Stamps of the deliveries taken into `batch` since the last flush that left it empty.
    unwritten: Vec<Popped>,
}

impl ClientOutgoing {
    /// Refills the batch from the client's queue when it is empty; `false` once the client is finished.
    fn refill(&mut self) -> bool {
        self.client.progressed();
        if !self.batch.is_empty() {
            return true;
        }
        if self.batch.capacity() > RETAINED_CAPACITY {
            self.batch = VecDeque::new();
        }
        self.client.take_all(&mut self.batch, &mut self.unwritten)
    }
}

impl Outgoing for ClientOutgoing {
    async fn next(&mut self) -> Option<Message> {
        loop {
            if !self.refill() {
                return None;
            }
            if let Some(frame) = self.batch.pop_front() {
                return Some(Message::Text(frame));
            }
            // A permit stored by `offer` or `leave` since the last take is kept, so no wake-up is lost.
            self.client.ready.notified().await;
        }
    }

    fn ready(&mut self) -> Option<Message> {
        self.refill();
        self.batch.pop_front().map(Message::Text)
    }

    /// Records the deliveries taken so far once all of them are written: a batch larger than one write step
    /// counts at the flush that finishes it, so the latency errs long, never short.
    fn flushed(&mut self) {
        if !self.batch.is_empty() || self.unwritten.is_empty() {
            return;
        }
        let now = Instant::now();
        for popped in self.unwritten.drain(..) {
            self.client
                .latency
                .observe_n(now.saturating_duration_since(popped.at), popped.messages);
        }
    }
}

/// `frames` with their positions added, as `wsmq.v1` clients receive them (a frame without a position, or one
/// that cannot take it, stays as it is).
fn with_positions(frames: &[Utf8Bytes], positions: &[Option<Position>]) -> Vec<Utf8Bytes> {
    frames
        .iter()
        .zip(positions.iter().chain(std::iter::repeat(&None)))
        .map(|(frame, position)| {
            position
                .and_then(|p| encode_positioned(frame.as_bytes(), p))
                .and_then(|bytes| Utf8Bytes::try_from(bytes).ok())
                .unwrap_or_else(|| frame.clone())
        })
        .collect()
}

/// One topic's subscribers. Changes are O(1) amortized (a push, or a swap-remove after a scan of pointers) and
/// only invalidate the snapshot; routing rebuilds the snapshot at most once per change, so 10,000 clients joining
/// or leaving one topic cost 10,000 cheap edits, not 10,000 copies of a 10,000-entry list.
#[derive(Debug, Default)]
struct Subscribers {
    clients: Vec<Arc<Client>>,
    /// What routing offers to, shared so no index lock is held while offering; `None` after a change.
    snapshot: Option<Arc<[Arc<Client>]>>,
    /// The position of the newest message routed to the topic, for clients resuming it.
    latest: Option<Position>,
    /// Clients recovering the topic's history right now: the entry stays (and tracks `latest`) meanwhile.
    resuming: usize,
}

impl Subscribers {
    fn snapshot(&mut self) -> Arc<[Arc<Client>]> {
        Arc::clone(
            self.snapshot
                .get_or_insert_with(|| Arc::from(self.clients.as_slice())),
        )
    }
}

/// The concurrent topic index shared by the link (which routes) and the client sessions (which subscribe).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Router {
    inner: Arc<RouterInner>,
}

/// A client stored under a wildcard pattern: compared by its id.
#[derive(Debug, Clone)]
struct Member(Arc<Client>);

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Member {}

impl std::hash::Hash for Member {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

#[derive(Debug)]
struct RouterInner {
    /// Exact subscriptions: one hash lookup per routed topic, as before wildcards.
    topics: DashMap<Box<str>, Subscribers>,
    /// Wildcard subscriptions (`news.*`, `news.>`), consulted only while `wildcards` is not zero.
    patterns: RwLock<PatternTrie<Member>>,
    /// Entries in `patterns`, readable without its lock.
    wildcards: AtomicUsize,
    congestion: Arc<Congestion>,
    next_client: AtomicU64,
    client_queue: usize,
    policy: SlowClientPolicy,
    metrics: SubscriberMetrics,
}

impl Router {
    /// An empty index whose clients get queues of `client_queue` frames (at least 1) handled by `policy`.
    pub fn new(client_queue: usize, policy: SlowClientPolicy, metrics: SubscriberMetrics) -> Self {
        Self {
            inner: Arc::new(RouterInner {
                topics: DashMap::new(),
                patterns: RwLock::new(PatternTrie::new()),
                wildcards: AtomicUsize::new(0),
                congestion: Arc::default(),
                next_client: AtomicU64::new(0),
                client_queue: client_queue.max(1),
                policy,
                metrics,
            }),
        }
    }

    /// Creates the routing side of a new client connection; `closer` is how the router cuts it off, `v1` whether
    /// it speaks `wsmq.v1` (and gets messages with their offsets).
    pub fn register(&self, closer: Closer, v1: bool) -> Arc<Client> {
        let congestion = &self.inner.congestion;
        congestion.clients.fetch_add(1, Ordering::AcqRel);
        Arc::new(Client {
            id: self.inner.next_client.fetch_add(1, Ordering::Relaxed),
            outbound: Mutex::new(Outbound::default()),
            ready: Notify::new(),
            capacity: self.inner.client_queue,
            policy: self.inner.policy,
            closer,
            progress: AtomicU64::new(congestion.now()),
            congested_since: AtomicU64::new(0),
            congestion: Arc::clone(congestion),
            latency: self.inner.metrics.delivery_latency().clone(),
            v1,
            floors: Mutex::new(Vec::new()),
            has_floors: AtomicBool::new(false),
            drained: Notify::new(),
        })
    }

    /// Starts a resume of `topic`: from now on the topic's newest routed position is tracked, so
    /// [`Router::finish_resume`] can tell whether live messages went beyond what history gave the client. Every
    /// call is paired with `finish_resume` or [`Router::abandon_resume`].
    pub fn begin_resume(&self, topic: &str) {
        self.inner.topics.entry(topic.into()).or_default().resuming += 1;
    }

    /// Makes `client` a live subscriber of `topic` once it was sent everything up to `sent` from history, unless
    /// a newer message of the same epoch was routed meanwhile: then that position is returned and the client
    /// needs the history after `sent` first. Live messages up to `sent` that reach the subscriber later (its
    /// own stream behind msgqueue's history) are skipped for this client.
    pub fn finish_resume(
        &self,
        topic: &str,
        client: &Arc<Client>,
        sent: Position,
    ) -> Result<(), Position> {
        let mut subscribers = self.inner.topics.entry(topic.into()).or_default();
        if let Some(latest) = subscribers.latest
            && latest.epoch == sent.epoch
            && latest.offset > sent.offset
        {
            return Err(latest);
        }
        client.set_floor(topic, sent);
        subscribers.resuming = subscribers.resuming.saturating_sub(1);
        subscribers.clients.push(Arc::clone(client));
        subscribers.snapshot = None;
        drop(subscribers);
        self.inner.metrics.subscription_added();
        Ok(())
    }

    /// Ends a resume that will not finish (the client left, or history was unavailable).
    pub fn abandon_resume(&self, topic: &str) {
        let emptied = match self.inner.topics.get_mut(topic) {
            Some(mut subscribers) => {
                subscribers.resuming = subscribers.resuming.saturating_sub(1);
                subscribers.clients.is_empty() && subscribers.resuming == 0
            }
            None => false,
        };
        if emptied {
            self.inner
                .topics
                .remove_if(topic, |_, s| s.clients.is_empty() && s.resuming == 0);
        }
    }

    /// Adds `client` to `topic`'s subscribers. The session calls it once per topic it holds.
    pub fn subscribe(&self, topic: &str, client: &Arc<Client>) {
        let mut subscribers = self.inner.topics.entry(topic.into()).or_default();
        subscribers.clients.push(Arc::clone(client));
        subscribers.snapshot = None;
        drop(subscribers);
        self.inner.metrics.subscription_added();
    }

    /// Removes `client` from `topic`'s subscribers, and the topic from the index once nobody is left.
    pub fn unsubscribe(&self, topic: &str, client: &Client) {
        client.clear_floor(topic);
        let emptied = match self.inner.topics.get_mut(topic) {
            Some(mut subscribers) => {
                if let Some(at) = subscribers.clients.iter().position(|c| c.id == client.id) {
                    subscribers.clients.swap_remove(at);
                    subscribers.snapshot = None;
                }
                subscribers.clients.is_empty() && subscribers.resuming == 0
            }
            None => return,
        };
        if emptied {
            // Someone may have subscribed since the guard was dropped; only an empty list goes.
            self.inner.topics.remove_if(topic, |_, subscribers| {
                subscribers.clients.is_empty() && subscribers.resuming == 0
            });
        }
        self.inner.metrics.subscriptions_removed(1);
    }

    /// Adds `client` under the wildcard `pattern` (an exact pattern goes through [`Router::subscribe`]).
    pub fn subscribe_pattern(&self, pattern: &Pattern, client: &Arc<Client>) {
        if self
            .inner
            .patterns
            .write()
            .insert(pattern, Member(Arc::clone(client)))
        {
            self.inner.wildcards.fetch_add(1, Ordering::AcqRel);
            self.inner.metrics.subscription_added();
        }
    }

    /// Removes `client` from under the wildcard `pattern`.
    pub fn unsubscribe_pattern(&self, pattern: &Pattern, client: &Arc<Client>) {
        if self
            .inner
            .patterns
            .write()
            .remove(pattern, &Member(Arc::clone(client)))
        {
            self.inner.wildcards.fetch_sub(1, Ordering::AcqRel);
            self.inner.metrics.subscriptions_removed(1);
        }
    }

    /// The clients whose wildcard patterns match `topic`, each once, ordered by id; empty (without a lock or an
    /// allocation) while nobody holds a wildcard subscription. A legacy topic outside the token rules matches
    /// no pattern.
    fn wildcard_recipients(&self, topic: &str) -> Vec<Arc<Client>> {
        if self.inner.wildcards.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let Ok(topic) = Topic::parse(topic) else {
            return Vec::new();
        };
        let mut recipients = Vec::new();
        self.inner
            .patterns
            .read()
            .for_each_match(topic, |member| recipients.push(Arc::clone(&member.0)));
        recipients.sort_unstable_by_key(|client| client.id);
        recipients.dedup_by_key(|client| client.id);
        recipients
    }

    /// Offers `frame` to every current subscriber of `topic` and returns how many queues took it (0: nobody
    /// subscribes). Never waits and never holds an index lock while offering.
    /// Unstamped: nothing is recorded in `delivery_duration_seconds` (for tests and benchmarks).
    pub fn route(&self, topic: &str, frame: &Utf8Bytes) -> usize {
        self.route_all(topic, std::slice::from_ref(frame), &[None], None)
    }

    /// Offers a run of frames of one `topic`, in order, to every current subscriber: each client is locked and
    /// woken once for the whole run. Returns how many clients took them (0: nobody subscribes).
    ///
    /// A client subscribed both exactly and by wildcard, or by several matching wildcards, gets the frames once.
    /// `popped` is when the frames came from msgqueue: each client's writer records the time from then until it
    /// wrote them (`delivery_duration_seconds`, once per delivery); `None` records nothing.
    ///
    /// `positions` holds each frame's place in its topic (as many as `frames`): `wsmq.v1` clients get the frames
    /// with `"Offset"` and `"Epoch"` added (built once per run, only if such a client is among the recipients).
    pub fn route_all(
        &self,
        topic: &str,
        frames: &[Utf8Bytes],
        positions: &[Option<Position>],
        popped: Option<Instant>,
    ) -> usize {
        let newest = positions.iter().rev().find_map(|p| *p);
        let exact = self.inner.topics.get_mut(topic).map(|mut subscribers| {
            if newest.is_some() {
                subscribers.latest = newest;
            }
            subscribers.snapshot()
        });
        let wildcard = self.wildcard_recipients(topic);
        if exact.is_none() && wildcard.is_empty() {
            return 0;
        }
        let mut reached = vec![false; wildcard.len()];
        let metrics = &self.inner.metrics;
        let (mut delivered, mut took) = (0, 0);
        let mut positioned: Option<Vec<Utf8Bytes>> = None;
        let mut offer = |client: &Arc<Client>| {
            let skip = if client.has_floors.load(Ordering::Acquire) {
                client.already_sent(topic, positions)
            } else {
                0
            };
            let frames = if client.v1 && newest.is_some() {
                positioned.get_or_insert_with(|| with_positions(frames, positions))
            } else {
                frames
            };
            let offered = client.offer(&frames[skip..], popped);
            delivered += offered.queued;
            took += usize::from(offered.count(metrics));
        };
        for client in exact.iter().flat_map(|recipients| recipients.iter()) {
            if !wildcard.is_empty()
                && let Ok(at) = wildcard.binary_search_by_key(&client.id, |c| c.id)
            {
                reached[at] = true;
            }
            offer(client);
        }
        for (client, reached) in wildcard.iter().zip(reached) {
            if !reached {
                offer(client);
            }
        }
        metrics.delivered(delivered);
        took
    }

    /// Whether the link should take no more deliveries for now, and if so within how long to ask again: while
    /// more than half of the clients are congested, or a congested one is still writing (not [`STALLED_AFTER`]),
    /// see the module doc. `None` (take deliveries) when no client is congested.
    pub(crate) fn hold(&self) -> Option<Duration> {
        let congestion = &self.inner.congestion;
        if congestion.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        congestion.hold_at(congestion.now())
    }

    /// Resolves at the next moment a congested client stops being congested; a hold then asks [`Router::hold`]
    /// again. Enable it before asking, so a relief in between is not missed.
    pub(crate) fn relief(&self) -> Notified<'_> {
        self.inner.congestion.relieved.notified()
    }

    /// Cuts off (1013) every client that is still congested: the link held deliveries back for the whole
    /// `--slow-client-timeout` and they did not catch up. Returns how many.
    pub(crate) fn cut_congested(&self) -> usize {
        self.cut_where(|_| true)
    }

    /// Cuts off (1013) every client that has been congested for `timeout`, or is congested and wrote nothing for
    /// `timeout`: it stopped reading or stays behind, held for or not. Returns how many.
    pub(crate) fn cut_behind(&self, timeout: Duration) -> usize {
        let congestion = &self.inner.congestion;
        if congestion.count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let now = congestion.now();
        self.cut_where(|client| {
            let since = client.congested_since.load(Ordering::Relaxed);
            let progress = client.progress.load(Ordering::Relaxed);
            now.saturating_sub(since.min(progress)) >= timeout
        })
    }

    /// Cuts off the congested clients for which `cut` is true.
    fn cut_where(&self, cut: impl Fn(&Client) -> bool) -> usize {
        let mut count = 0;
        for client in self.inner.congestion.snapshot() {
            let mut outbound = client.outbound.lock();
            if outbound.congested && cut(&client) {
                client.cut_off(&mut outbound);
                drop(outbound);
                client.closer.close(CloseCode::Again, SLOW_CLIENT_REASON);
                self.inner.metrics.slow_client_disconnected();
                count += 1;
            }
        }
        count
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.inner.topics.len()
    }

    /// The metrics this router updates, for the sessions that share it.
    pub(crate) fn metrics(&self) -> &SubscriberMetrics {
        &self.inner.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn router(capacity: usize, policy: SlowClientPolicy) -> Router {
        Router::new(capacity, policy, SubscriberMetrics::default())
    }

    fn congested(r: &Router) -> usize {
        r.inner.congestion.count.load(Ordering::Acquire)
    }

    fn nanos(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap()
    }

    fn drain(client: &Client) -> Vec<String> {
        let mut frames = VecDeque::new();
        client.take_all(&mut frames, &mut Vec::new());
        frames.iter().map(|f| f.as_str().to_owned()).collect()
    }

    const E: wsmq_core::protocol::history::Epoch = wsmq_core::protocol::history::Epoch(0xe);

    fn at(offset: u64) -> Option<Position> {
        Some(Position { epoch: E, offset })
    }

    fn envelopes(
        offsets: std::ops::RangeInclusive<u64>,
    ) -> (Vec<Utf8Bytes>, Vec<Option<Position>>) {
        offsets
            .map(|n| {
                (
                    Utf8Bytes::from(format!(r#"{{"Topic":"t","Content":"{n}"}}"#)),
                    at(n),
                )
            })
            .unzip()
    }

    #[test]
    fn v1_clients_get_each_message_with_its_position_and_compat_clients_as_stored() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let (v1, compat) = (
            r.register(Closer::new(&shutdown), true),
            r.register(Closer::new(&shutdown), false),
        );
        r.subscribe("t", &v1);
        r.subscribe("t", &compat);
        let (frames, positions) = envelopes(7..=7);
        assert_eq!(r.route_all("t", &frames, &positions, None), 2);
        assert_eq!(
            drain(&v1),
            [r#"{"Topic":"t","Content":"7","Offset":7,"Epoch":"000000000000000e"}"#]
        );
        assert_eq!(drain(&compat), [r#"{"Topic":"t","Content":"7"}"#]);
    }

    #[test]
    fn a_resume_goes_live_only_once_history_covered_what_was_routed_meanwhile() {
        let shutdown = CancellationToken::new();
        let r = router(16, SlowClientPolicy::Close);
        let (live, resuming) = (
            r.register(Closer::new(&shutdown), true),
            r.register(Closer::new(&shutdown), true),
        );
        r.subscribe("t", &live);
        r.begin_resume("t");
        let (frames, positions) = envelopes(1..=3);
        r.route_all("t", &frames, &positions, None);
        // History gave the client up to 2, but 3 was routed meanwhile: it must read history on first.
        assert_eq!(
            r.finish_resume("t", &resuming, at(2).unwrap()),
            Err(at(3).unwrap())
        );
        assert!(drain(&resuming).is_empty(), "not live yet");
        assert_eq!(r.finish_resume("t", &resuming, at(3).unwrap()), Ok(()));
        let (frames, positions) = envelopes(4..=4);
        r.route_all("t", &frames, &positions, None);
        assert_eq!(drain(&resuming).len(), 1);
        assert_eq!(drain(&live).len(), 4);
    }

    #[test]
    fn live_messages_a_resumed_client_already_got_from_history_are_skipped() {
        let shutdown = CancellationToken::new();
        let r = router(16, SlowClientPolicy::Close);
        let client = r.register(Closer::new(&shutdown), false);
        r.begin_resume("t");
        // The subscriber's own stream is behind: history already gave 1..=5.
        assert_eq!(r.finish_resume("t", &client, at(5).unwrap()), Ok(()));
        let (frames, positions) = envelopes(4..=6);
        r.route_all("t", &frames, &positions, None);
        assert_eq!(drain(&client), [r#"{"Topic":"t","Content":"6"}"#]);
        let (frames, positions) = envelopes(7..=7);
        r.route_all("t", &frames, &positions, None);
        assert_eq!(drain(&client).len(), 1);
    }

    #[test]
    fn an_abandoned_resume_leaves_no_topic_behind() {
        let r = router(4, SlowClientPolicy::Close);
        r.begin_resume("t");
        assert_eq!(r.topic_count(), 1);
        r.abandon_resume("t");
        assert_eq!(r.topic_count(), 0);
    }

    #[test]
    fn routes_to_every_subscriber_of_the_topic_only() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let (a, b, c) = (
            r.register(Closer::new(&shutdown), false),
            r.register(Closer::new(&shutdown), false),
            r.register(Closer::new(&shutdown), false),
        );
        r.subscribe("news", &a);
        r.subscribe("news", &b);
        r.subscribe("sport", &c);
        assert_eq!(r.route("news", &Utf8Bytes::from_static("n1")), 2);
        assert_eq!(r.route("weather", &Utf8Bytes::from_static("w1")), 0);
        assert_eq!(drain(&a), ["n1"]);
        assert_eq!(drain(&b), ["n1"]);
        assert!(drain(&c).is_empty());
    }

    #[test]
    fn overlapping_exact_and_wildcard_subscriptions_deliver_once() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let (a, b) = (
            r.register(Closer::new(&shutdown), false),
            r.register(Closer::new(&shutdown), false),
        );
        let pattern = |text| Pattern::parse(text).unwrap();
        r.subscribe("news.sport", &a);
        r.subscribe_pattern(&pattern("news.*"), &a);
        r.subscribe_pattern(&pattern("news.>"), &a);
        r.subscribe_pattern(&pattern("*.sport"), &b);
        assert_eq!(r.route("news.sport", &Utf8Bytes::from_static("s")), 2);
        assert_eq!(r.route("news.sport.live", &Utf8Bytes::from_static("l")), 1);
        assert_eq!(r.route("a..b", &Utf8Bytes::from_static("legacy")), 0);
        assert_eq!(drain(&a), ["s", "l"]);
        assert_eq!(drain(&b), ["s"]);
        assert_eq!(r.metrics().subscriptions_current(), 4);
        r.unsubscribe_pattern(&pattern("news.>"), &a);
        r.unsubscribe_pattern(&pattern("news.*"), &a);
        r.unsubscribe_pattern(&pattern("*.sport"), &b);
        assert_eq!(r.inner.wildcards.load(Ordering::Acquire), 0);
        assert_eq!(r.route("news.other", &Utf8Bytes::from_static("x")), 0);
        assert_eq!(r.metrics().subscriptions_current(), 1);
    }

    #[test]
    fn unsubscribe_stops_routing_and_forgets_empty_topics() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        assert_eq!(r.topic_count(), 1);
        r.unsubscribe("t", &a);
        assert_eq!(r.topic_count(), 0);
        assert_eq!(r.route("t", &Utf8Bytes::from_static("x")), 0);
        assert_eq!(r.metrics().subscriptions_current(), 0);
    }

    #[test]
    fn overflow_cuts_off_only_the_slow_client_under_close_policy() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let slow_closer = Closer::new(&shutdown);
        let (slow, fast) = (
            r.register(slow_closer.clone(), false),
            r.register(Closer::new(&shutdown), false),
        );
        r.subscribe("t", &slow);
        r.subscribe("t", &fast);
        for i in 0..3 {
            r.route("t", &Utf8Bytes::from(format!("m{i}")));
            drain(&fast);
        }
        assert!(slow_closer.is_closing());
        assert_eq!(r.metrics().slow_client_disconnects_total(), 1);
        assert_eq!(r.route("t", &Utf8Bytes::from_static("m3")), 1);
        assert_eq!(drain(&fast), ["m3"]);
        assert!(drain(&slow).is_empty());
    }

    #[test]
    fn overflow_drops_the_oldest_frame_under_drop_oldest_policy() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::DropOldest);
        let closer = Closer::new(&shutdown);
        let a = r.register(closer.clone(), false);
        r.subscribe("t", &a);
        for m in ["m1", "m2", "m3"] {
            assert_eq!(r.route("t", &Utf8Bytes::from(m)), 1);
        }
        assert_eq!(drain(&a), ["m2", "m3"]);
        assert!(!closer.is_closing());
    }
    #[test]
    fn a_client_at_half_its_queue_congests_until_its_writer_takes_the_queue() {
        let shutdown = CancellationToken::new();
        let r = router(4, SlowClientPolicy::Close);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        r.route("t", &Utf8Bytes::from_static("m1"));
        assert_eq!(congested(&r), 0);
        r.route("t", &Utf8Bytes::from_static("m2"));
        assert_eq!(
            congested(&r),
            1,
            "2 of 4 frames queued is the high-water mark"
        );
        assert_eq!(drain(&a), ["m1", "m2"]);
        assert_eq!(congested(&r), 0);
        assert_eq!(r.hold(), None);
    }

    #[test]
    fn cutting_congested_clients_closes_only_those_behind() {
        let shutdown = CancellationToken::new();
        let r = router(4, SlowClientPolicy::Close);
        let (slow_closer, fast_closer) = (Closer::new(&shutdown), Closer::new(&shutdown));
        let (slow, fast) = (
            r.register(slow_closer.clone(), false),
            r.register(fast_closer.clone(), false),
        );
        r.subscribe("t", &slow);
        r.subscribe("t", &fast);
        r.subscribe("u", &slow);
        for m in ["m1", "m2"] {
            r.route("t", &Utf8Bytes::from(m));
        }
        drain(&fast);
        assert_eq!(r.cut_congested(), 1, "a client in two topics is cut once");
        assert!(slow_closer.is_closing());
        assert!(!fast_closer.is_closing());
        assert_eq!(congested(&r), 0);
        assert_eq!(r.metrics().slow_client_disconnects_total(), 1);
        assert_eq!(r.route("t", &Utf8Bytes::from_static("m3")), 1);
    }

    #[test]
    fn drop_oldest_clients_never_hold_the_link_back() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::DropOldest);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        for m in ["m1", "m2", "m3"] {
            r.route("t", &Utf8Bytes::from(m));
        }
        assert_eq!(congested(&r), 0);
        assert_eq!(r.hold(), None);
    }

    #[test]
    fn a_client_that_leaves_stops_holding_the_link_back_and_takes_nothing_more() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        r.route("t", &Utf8Bytes::from_static("m1"));
        assert_eq!(congested(&r), 1);
        a.leave();
        assert_eq!(congested(&r), 0);
        assert_eq!(r.route("t", &Utf8Bytes::from_static("m2")), 0);
        assert_eq!(
            drain(&a),
            ["m1"],
            "what was queued before leaving is still written"
        );
    }

    #[tokio::test]
    async fn relieved_resolves_once_the_congested_writer_catches_up() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        r.route("t", &Utf8Bytes::from_static("m1"));
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.relief().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut writer = a.outgoing();
        assert_eq!(writer.next().await, Some(Message::text("m1")));
        waiting.await.expect("relieved");
    }

    #[tokio::test]
    async fn the_writer_source_ends_after_the_last_frame_of_a_client_that_left() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        r.route("t", &Utf8Bytes::from_static("m1"));
        r.route("t", &Utf8Bytes::from_static("m2"));
        let mut writer = a.outgoing();
        assert_eq!(writer.next().await, Some(Message::text("m1")));
        a.leave();
        assert_eq!(writer.ready(), Some(Message::text("m2")));
        assert_eq!(writer.next().await, None);
    }
    #[test]
    fn written_deliveries_count_in_the_latency_once_their_whole_batch_is_flushed() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::DropOldest);
        let latency = r.metrics().delivery_latency().clone();
        let (a, b) = (
            r.register(Closer::new(&shutdown), false),
            r.register(Closer::new(&shutdown), false),
        );
        r.subscribe("t", &a);
        r.subscribe("t", &b);
        let popped = Some(Instant::now());
        let run = ["m1", "m2"].map(Utf8Bytes::from_static);
        assert_eq!(r.route_all("t", &run, &[], popped), 2);
        a.reply(Utf8Bytes::from_static("reply"), r.metrics());
        let (mut a_out, mut b_out) = (a.outgoing(), b.outgoing());
        // a's queue of 2 dropped m1 for the reply: only m2 is a delivery to record there.
        assert_eq!(a_out.ready(), Some(Message::text("m2")));
        a_out.flushed();
        assert_eq!(latency.count(), 0, "half of a's batch is not written yet");
        assert_eq!(a_out.ready(), Some(Message::text("reply")));
        a_out.flushed();
        assert_eq!(latency.count(), 1);
        assert_eq!(b_out.ready(), Some(Message::text("m1")));
        assert_eq!(b_out.ready(), Some(Message::text("m2")));
        b_out.flushed();
        assert_eq!(latency.count(), 3, "one per delivery to each client");
        assert_eq!(r.route("t", &run[0]), 2);
        drain(&a);
        b_out.ready();
        b_out.flushed();
        assert_eq!(latency.count(), 3, "unstamped routing records nothing");
    }

    #[test]
    fn a_run_reaches_every_subscriber_in_order() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let (a, b) = (
            r.register(Closer::new(&shutdown), false),
            r.register(Closer::new(&shutdown), false),
        );
        r.subscribe("t", &a);
        r.subscribe("t", &b);
        let run = ["m1", "m2", "m3"].map(Utf8Bytes::from_static);
        assert_eq!(r.route_all("t", &run, &[], None), 2);
        assert_eq!(r.route_all("nobody", &run, &[], None), 0);
        assert_eq!(drain(&a), ["m1", "m2", "m3"]);
        assert_eq!(drain(&b), ["m1", "m2", "m3"]);
        assert_eq!(r.metrics().delivered_total(), 6);
    }

    #[test]
    fn a_run_that_overflows_a_client_cuts_it_off_under_close_policy() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let closer = Closer::new(&shutdown);
        let a = r.register(closer.clone(), false);
        r.subscribe("t", &a);
        let run = ["m1", "m2", "m3"].map(Utf8Bytes::from_static);
        assert_eq!(r.route_all("t", &run, &[], None), 0);
        assert!(closer.is_closing());
        assert!(drain(&a).is_empty());
        assert_eq!(congested(&r), 0);
        assert_eq!(r.metrics().slow_client_disconnects_total(), 1);
    }

    #[test]
    fn a_run_longer_than_the_queue_keeps_its_newest_frames_under_drop_oldest() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::DropOldest);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        let run = ["m1", "m2", "m3", "m4"].map(Utf8Bytes::from_static);
        assert_eq!(r.route_all("t", &run, &[], None), 1);
        assert_eq!(drain(&a), ["m3", "m4"]);
    }

    #[test]
    fn a_lone_congested_client_holds_deliveries_back_even_while_it_writes_nothing() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let a = r.register(Closer::new(&shutdown), false);
        r.subscribe("t", &a);
        r.route("t", &Utf8Bytes::from_static("m1"));
        a.progress.store(0, Ordering::Relaxed);
        let much_later = nanos(STALLED_AFTER * 100);
        assert!(
            r.inner.congestion.hold_at(much_later).is_some(),
            "the only client is all of them: the path is the bottleneck"
        );
        drain(&a);
        assert_eq!(r.hold(), None);
    }

    #[test]
    fn a_congested_minority_holds_deliveries_back_only_while_it_writes() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let clients: Vec<_> = (0..3)
            .map(|_| r.register(Closer::new(&shutdown), false))
            .collect();
        r.subscribe("t", &clients[0]);
        r.route("t", &Utf8Bytes::from_static("m1"));
        let stalled_after = nanos(STALLED_AFTER);
        let wrote = 10 * stalled_after;
        clients[0].progress.store(wrote, Ordering::Relaxed);
        assert_eq!(
            r.inner.congestion.hold_at(wrote + 1),
            Some(Duration::from_nanos(stalled_after - 1)),
            "held until it would count as stalled"
        );
        assert_eq!(r.inner.congestion.hold_at(wrote + stalled_after), None);
        // Two of three congested: the path is the bottleneck, stalled or not.
        r.subscribe("u", &clients[1]);
        r.route("u", &Utf8Bytes::from_static("m1"));
        assert!(r.inner.congestion.hold_at(wrote * 100).is_some());
    }

    #[test]
    fn clients_congested_or_writing_nothing_for_the_timeout_are_cut_off() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let closers: Vec<_> = (0..3).map(|_| Closer::new(&shutdown)).collect();
        let clients: Vec<_> = closers
            .iter()
            .map(|c| r.register(c.clone(), false))
            .collect();
        for client in &clients {
            r.subscribe("t", client);
        }
        r.route("t", &Utf8Bytes::from_static("m1"));
        assert_eq!(congested(&r), 3);
        let now = r.inner.congestion.now();
        // Writing nothing since long ago; behind since long ago while writing; both recent.
        clients[0].progress.store(0, Ordering::Relaxed);
        clients[1].progress.store(u64::MAX, Ordering::Relaxed);
        clients[1].congested_since.store(0, Ordering::Relaxed);
        clients[2].progress.store(u64::MAX, Ordering::Relaxed);
        clients[2]
            .congested_since
            .store(u64::MAX, Ordering::Relaxed);
        assert_eq!(r.cut_behind(Duration::from_nanos(now / 2)), 2);
        assert!(closers[0].is_closing() && closers[1].is_closing());
        assert!(!closers[2].is_closing());
        assert_eq!(congested(&r), 1);
        assert_eq!(r.metrics().slow_client_disconnects_total(), 2);
    }

    #[test]
    fn clients_that_left_or_were_cut_off_no_longer_count_towards_a_majority() {
        let shutdown = CancellationToken::new();
        let r = router(2, SlowClientPolicy::Close);
        let (a, b, c) = (
            r.register(Closer::new(&shutdown), false),
            r.register(Closer::new(&shutdown), false),
            r.register(Closer::new(&shutdown), false),
        );
        b.leave();
        c.leave();
        c.leave();
        assert_eq!(r.inner.congestion.clients.load(Ordering::Acquire), 1);
        r.subscribe("t", &a);
        r.route("t", &Utf8Bytes::from_static("m1"));
        a.progress.store(0, Ordering::Relaxed);
        assert!(
            r.inner
                .congestion
                .hold_at(nanos(STALLED_AFTER * 100))
                .is_some()
        );
    }
}
