//! [`SubscriberMetrics`]: what an operator watches on a subscriber — clients, subscriptions, deliveries,
//! messages nobody wanted, slow clients cut off, bad payloads and the health of the link to msgqueue.
//!
//! Each service instance owns its metrics (no global recorder), so the all-in-one binary can run several.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wsmq_core::metrics::LatencyHistogram;

/// The subscriber's own metrics. Cheap to clone (every field is an `Arc` inside); shared by the router, the
/// client sessions and the link. [`SubscriberMetrics::default`] gives unregistered metrics, for tests.
#[derive(Clone, Debug, Default)]
pub struct SubscriberMetrics {
    clients: Gauge,
    subscriptions: Gauge,
    delivered: Counter,
    unrouted: Counter,
    slow_client_disconnects: Counter,
    held_back: Counter,
    held_back_seconds: Counter<f64, AtomicU64>,
    dropped_oldest: Counter,
    invalid_payloads: Counter,
    unknown_commands: Counter,
    subscribe_forbidden: Counter,
    subscriptions_revoked: Counter,
    link_up: Gauge,
    link_reconnects: Counter,
    delivery_duration: LatencyHistogram,
}

impl SubscriberMetrics {
    /// Creates the metrics and registers them in `registry` (whose prefix names the service).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("clients", "Subscriber clients connected", m.clients.clone());
        registry.register(
            "subscriptions",
            "Topic subscriptions held by connected clients",
            m.subscriptions.clone(),
        );
        registry.register(
            "delivered",
            "Messages handed to a client's outbound queue",
            m.delivered.clone(),
        );
        registry.register(
            "unrouted",
            "Messages from msgqueue no client subscribed to (acked)",
            m.unrouted.clone(),
        );
        registry.register(
            "slow_client_disconnects",
            "Clients closed with 1013: their queue filled while the link did not wait for them, or they stayed behind for --slow-client-timeout",
            m.slow_client_disconnects.clone(),
        );
        registry.register(
            "held_back",
            "Times the link stopped taking deliveries from msgqueue: most clients were behind, or one behind was still writing",
            m.held_back.clone(),
        );
        registry.register(
            "held_back_seconds",
            "Time the link spent not taking deliveries from msgqueue (they waited there, durable)",
            m.held_back_seconds.clone(),
        );
        registry.register(
            "dropped_oldest",
            "Messages dropped from a full client queue under --slow-client drop-oldest",
            m.dropped_oldest.clone(),
        );
        registry.register(
            "invalid_payloads",
            "Messages from msgqueue that were not a valid envelope (acked and skipped)",
            m.invalid_payloads.clone(),
        );
        registry.register(
            "subscribe_forbidden",
            "Subscriptions refused because the client may not subscribe to the pattern (ACL or auth callout)",
            m.subscribe_forbidden.clone(),
        );
        registry.register(
            "subscriptions_revoked",
            "Live subscriptions ended because a reloaded ACL no longer allows them",
            m.subscriptions_revoked.clone(),
        );
        registry.register(
            "unknown_commands",
            "Client frames that were not a sub/unsub command",
            m.unknown_commands.clone(),
        );
        registry.register(
            "link_up",
            "1 while the link to msgqueue /popmsg is connected",
            m.link_up.clone(),
        );
        registry.register(
            "link_reconnects",
            "Times the link to msgqueue was lost and redialled",
            m.link_reconnects.clone(),
        );
        m.delivery_duration.register(
            registry,
            "delivery_duration",
            "Time from a message popped from msgqueue to its delivery written to a client's socket, per delivery (a message sent to 3 clients counts 3 times)",
        );
        m
    }

    /// The histogram every client's writer records its deliveries' latency in.
    pub(crate) fn delivery_latency(&self) -> &LatencyHistogram {
        &self.delivery_duration
    }

    /// Tracks a connected client until the returned guard is dropped, however its session ends.
    pub(crate) fn client_connected(&self) -> GaugeGuard {
        self.clients.inc();
        GaugeGuard(self.clients.clone())
    }

    pub(crate) fn subscription_added(&self) {
        self.subscriptions.inc();
    }

    pub(crate) fn subscriptions_removed(&self, n: usize) {
        self.subscriptions
            .dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn delivered(&self, n: usize) {
        self.delivered.inc_by(n as u64);
    }

    pub(crate) fn unrouted(&self, n: usize) {
        self.unrouted.inc_by(n as u64);
    }

    pub(crate) fn slow_client_disconnected(&self) {
        self.slow_client_disconnects.inc();
    }

    pub(crate) fn held_back(&self) {
        self.held_back.inc();
    }

    pub(crate) fn held_back_for(&self, held: Duration) {
        self.held_back_seconds.inc_by(held.as_secs_f64());
    }

    pub(crate) fn dropped_oldest(&self, n: usize) {
        self.dropped_oldest.inc_by(n as u64);
    }

    pub(crate) fn invalid_payload(&self) {
        self.invalid_payloads.inc();
    }

    pub(crate) fn subscribe_forbidden(&self) {
        self.subscribe_forbidden.inc();
    }

    pub(crate) fn subscription_revoked(&self) {
        self.subscriptions_revoked.inc();
    }

    /// Subscriptions refused as forbidden so far.
    pub fn subscribe_forbidden_total(&self) -> u64 {
        self.subscribe_forbidden.get()
    }

    /// Live subscriptions ended by an ACL reload so far.
    pub fn subscriptions_revoked_total(&self) -> u64 {
        self.subscriptions_revoked.get()
    }

    pub(crate) fn unknown_command(&self) {
        self.unknown_commands.inc();
    }

    pub(crate) fn link_state(&self, up: bool) {
        self.link_up.set(i64::from(up));
    }

    pub(crate) fn link_reconnect(&self) {
        self.link_reconnects.inc();
    }

    /// Messages handed to client queues so far.
    pub fn delivered_total(&self) -> u64 {
        self.delivered.get()
    }

    /// Messages acked without a recipient so far.
    pub fn unrouted_total(&self) -> u64 {
        self.unrouted.get()
    }

    /// Clients cut off for falling behind so far.
    pub fn slow_client_disconnects_total(&self) -> u64 {
        self.slow_client_disconnects.get()
    }

    /// Times the link held deliveries back for a congested client.
    pub fn held_back_total(&self) -> u64 {
        self.held_back.get()
    }

    /// Time the link held deliveries back so far.
    pub fn held_back_seconds_total(&self) -> f64 {
        self.held_back_seconds.get()
    }

    /// Invalid payloads skipped so far.
    pub fn invalid_payloads_total(&self) -> u64 {
        self.invalid_payloads.get()
    }

    /// Unknown client commands seen so far.
    pub fn unknown_commands_total(&self) -> u64 {
        self.unknown_commands.get()
    }

    /// Subscriptions currently held.
    pub fn subscriptions_current(&self) -> i64 {
        self.subscriptions.get()
    }

    /// Clients currently connected.
    pub fn clients_current(&self) -> i64 {
        self.clients.get()
    }

    /// Times the link was lost so far.
    pub fn link_reconnects_total(&self) -> u64 {
        self.link_reconnects.get()
    }
}

/// Decrements a gauge when dropped; keeps `clients` right on every exit path of a session.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
