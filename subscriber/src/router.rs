//! Topic routing: which connected clients receive a message, and each client's bounded outbound queue.
//!
//! The index maps a topic to an immutable snapshot of its subscribers (`Arc<[Arc<Client>]>`), rebuilt on
//! subscribe/unsubscribe. Routing clones that one `Arc` out of the map, drops the map guard, and only then
//! offers the frame to each client's queue, so no lock is ever held while a socket is written (ws-go held one
//! global mutex while writing to every client, so one slow client stalled all of them). Every recipient gets
//! the same `Utf8Bytes` (the envelope exactly as msgqueue delivered it): fan-out copies no payload.
//!
//! Offering never waits. A client whose queue is full has fallen behind: under [`SlowClientPolicy::Close`] it
//! is closed with 1013 (try again later); under [`SlowClientPolicy::DropOldest`] its oldest queued frame is
//! dropped. Either way nobody else notices.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;
use tokio::sync::Notify;
use tungstenite::Utf8Bytes;
use tungstenite::protocol::frame::coding::CloseCode;
use wsmq_core::ws::Closer;

use crate::metrics::SubscriberMetrics;

/// What happens to a client whose outbound queue (`--client-queue`) is full when another frame arrives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowClientPolicy {
    /// Close the client with 1013 (try again later): it reconnects and knows it missed messages.
    #[default]
    Close,
    /// Drop the client's oldest queued frame to make room: it stays connected but silently misses messages,
    /// which suits dashboards that only care about the latest values.
    DropOldest,
}

/// The close reason a slow client sees with code 1013.
const SLOW_CLIENT_REASON: &str = "slow consumer: outbound queue full";

/// One connected client as the router sees it: its outbound queue and how to close it.
#[derive(Debug)]
pub(crate) struct Client {
    id: u64,
    queue: Mutex<Queue>,
    ready: Notify,
    capacity: usize,
    policy: SlowClientPolicy,
    closer: Closer,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    /// Set once the client overflowed under [`SlowClientPolicy::Close`]; it then accepts nothing more.
    cut_off: bool,
}

/// The result of offering a frame to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Queued,
    DroppedOldest,
    Overflowed,
    CutOff,
}

impl Client {
    /// Queues `frame` without waiting, applying the slow-client policy when the queue is full.
    fn offer(&self, frame: Utf8Bytes) -> Offer {
        let offer = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.cut_off {
                return Offer::CutOff;
            }
            if queue.frames.len() < self.capacity {
                queue.frames.push_back(frame);
                Offer::Queued
            } else {
                match self.policy {
                    SlowClientPolicy::DropOldest => {
                        queue.frames.pop_front();
                        queue.frames.push_back(frame);
                        Offer::DroppedOldest
                    }
                    SlowClientPolicy::Close => {
                        queue.cut_off = true;
                        queue.frames.clear();
                        Offer::Overflowed
                    }
                }
            }
        };
        match offer {
            Offer::Queued | Offer::DroppedOldest => self.ready.notify_one(),
            Offer::Overflowed => self.closer.close(CloseCode::Again, SLOW_CLIENT_REASON),
            Offer::CutOff => {}
        }
        offer
    }

    /// Queues a reply to the client's own command (confirmation or error), under the same bound and policy as
    /// messages so a client that sends commands without reading cannot grow memory.
    pub(crate) fn reply(&self, frame: Utf8Bytes, metrics: &SubscriberMetrics) {
        count_offer(self.offer(frame), metrics);
    }

    /// Takes the oldest queued frame, if any.
    pub(crate) fn pop(&self) -> Option<Utf8Bytes> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .frames
            .pop_front()
    }

    /// Whether a frame is waiting to be written.
    pub(crate) fn has_frames(&self) -> bool {
        !self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .frames
            .is_empty()
    }

    /// Resolves when a frame was queued since the last call (a wake-up that races with [`Client::pop`] is kept,
    /// not lost).
    pub(crate) async fn queued(&self) {
        self.ready.notified().await;
    }
}

/// Updates the metrics for one offer; true when the frame was handed to the client's queue.
fn count_offer(offer: Offer, metrics: &SubscriberMetrics) -> bool {
    match offer {
        Offer::Queued => true,
        Offer::DroppedOldest => {
            metrics.dropped_oldest();
            true
        }
        Offer::Overflowed => {
            metrics.slow_client_disconnected();
            false
        }
        Offer::CutOff => false,
    }
}

/// The concurrent topic index shared by the link (which routes) and the client sessions (which subscribe).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Router {
    inner: Arc<RouterInner>,
}

#[derive(Debug)]
struct RouterInner {
    topics: DashMap<Box<str>, Arc<[Arc<Client>]>>,
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
                next_client: AtomicU64::new(0),
                client_queue: client_queue.max(1),
                policy,
                metrics,
            }),
        }
    }

    /// Creates the routing side of a new client connection; `closer` is how the router cuts it off.
    pub(crate) fn register(&self, closer: Closer) -> Arc<Client> {
        Arc::new(Client {
            id: self.inner.next_client.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            capacity: self.inner.client_queue,
            policy: self.inner.policy,
            closer,
        })
    }

    /// Adds `client` to `topic`'s subscribers. The session calls it once per topic it holds.
    pub(crate) fn subscribe(&self, topic: &str, client: &Arc<Client>) {
        self.inner
            .topics
            .entry(topic.into())
            .and_modify(|list| *list = list.iter().cloned().chain([Arc::clone(client)]).collect())
            .or_insert_with(|| Arc::from([Arc::clone(client)]));
        self.inner.metrics.subscription_added();
    }

    /// Removes `client` from `topic`'s subscribers, and the topic from the index once nobody is left.
    pub(crate) fn unsubscribe(&self, topic: &str, client: &Client) {
        let emptied = match self.inner.topics.get_mut(topic) {
            Some(mut list) => {
                let kept: Arc<[Arc<Client>]> =
                    list.iter().filter(|c| c.id != client.id).cloned().collect();
                *list = kept;
                list.is_empty()
            }
            None => return,
        };
        if emptied {
            // Someone may have subscribed since the guard was dropped; only an empty list goes.
            self.inner
                .topics
                .remove_if(topic, |_, list| list.is_empty());
        }
        self.inner.metrics.subscriptions_removed(1);
    }

    /// Offers `frame` to every current subscriber of `topic` and returns how many queues took it (0: nobody
    /// subscribes). Never waits and never holds an index lock while offering.
    pub fn route(&self, topic: &str, frame: &Utf8Bytes) -> usize {
        let Some(recipients) = self.inner.topics.get(topic).map(|list| Arc::clone(&list)) else {
            return 0;
        };
        let handed = recipients
            .iter()
            .filter(|client| count_offer(client.offer(frame.clone()), &self.inner.metrics))
            .count();
        self.inner.metrics.delivered(handed);
        handed
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

    fn drain(client: &Client) -> Vec<String> {
        std::iter::from_fn(|| client.pop())
            .map(|f| f.as_str().to_owned())
            .collect()
    }

    #[test]
    fn routes_to_every_subscriber_of_the_topic_only() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let (a, b, c) = (
            r.register(Closer::new(&shutdown)),
            r.register(Closer::new(&shutdown)),
            r.register(Closer::new(&shutdown)),
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
    fn unsubscribe_stops_routing_and_forgets_empty_topics() {
        let shutdown = CancellationToken::new();
        let r = router(8, SlowClientPolicy::Close);
        let a = r.register(Closer::new(&shutdown));
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
            r.register(slow_closer.clone()),
            r.register(Closer::new(&shutdown)),
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
        let a = r.register(closer.clone());
        r.subscribe("t", &a);
        for m in ["m1", "m2", "m3"] {
            assert_eq!(r.route("t", &Utf8Bytes::from(m)), 1);
        }
        assert_eq!(drain(&a), ["m2", "m3"]);
        assert!(!closer.is_closing());
    }
}
