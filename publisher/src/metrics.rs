//! [`PublisherMetrics`]: what the publisher counts beyond core's listener metrics, so operators can see invalid
//! input at the edge, the acks coming back from msgqueue and the health of the link.
//!
//! Each publisher instance owns its metrics (no global recorder), so the all-in-one binary can run several
//! services in one process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wsmq_core::metrics::LatencyHistogram;

/// Why a client message was refused at the edge; the `reason` label of `messages_invalid_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum InvalidReason {
    /// Not JSON, not the plain `topic content` form, or a JSON field of the wrong type.
    Malformed,
    /// A JSON envelope without `Topic` or `Content`.
    MissingField,
    /// The topic breaks the topic rules.
    Topic,
    /// An `Id` that is neither a string nor a number.
    Id,
    /// The canonical message would exceed the message size limit.
    TooLarge,
    /// A binary frame: publishers send text.
    Binary,
    /// `DeliverAt` / `Delay` (or the HTTP API's `deliver_at` / `delay`) malformed, both given, too far in the
    /// past or beyond `--max-delay`.
    Schedule,
}

impl InvalidReason {
    /// The label value, snake_case as Prometheus label values conventionally are.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::MissingField => "missing_field",
            Self::Topic => "topic",
            Self::Id => "id",
            Self::TooLarge => "too_large",
            Self::Binary => "binary",
            Self::Schedule => "schedule",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvalidLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

/// The publisher's own metrics. Cheap to clone (each metric is an `Arc` inside); the link and every client
/// session hold a clone. [`PublisherMetrics::default`] gives unregistered metrics for tests.
#[derive(Clone, Debug, Default)]
pub struct PublisherMetrics {
    accepted: Counter,
    invalid: Family<InvalidLabels, Counter>,
    forbidden: Counter,
    acked: Counter,
    rejected: Counter,
    link_up: Gauge,
    link_reconnects: Counter,
    buffered: Gauge,
    http_requests: Family<StatusLabels, Counter>,
    idempotent_replays: Counter,
    publish_duration: LatencyHistogram,
}

impl PublisherMetrics {
    /// Creates the metrics and registers them in `registry` (whose prefix names the service).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "messages_accepted",
            "Valid client messages handed to the msgqueue link",
            metrics.accepted.clone(),
        );
        registry.register(
            "messages_invalid",
            "Client messages refused at the edge, by reason; they never reach msgqueue",
            metrics.invalid.clone(),
        );
        registry.register(
            "messages_forbidden",
            "Client messages to topics the client may not publish to (ACL or auth callout); dropped at the edge",
            metrics.forbidden.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages msgqueue confirmed as durably stored",
            metrics.acked.clone(),
        );
        registry.register(
            "messages_rejected",
            "Messages msgqueue refused to store",
            metrics.rejected.clone(),
        );
        registry.register(
            "link_up",
            "1 while the link to msgqueue is connected, 0 otherwise",
            metrics.link_up.clone(),
        );
        registry.register(
            "link_reconnects",
            "Attempts to (re)connect the link to msgqueue after a failure",
            metrics.link_reconnects.clone(),
        );
        registry.register(
            "link_buffered_messages",
            "Messages held by the link: queued or pushed but not yet acked",
            metrics.buffered.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP API requests answered after authentication, by status (401/429 are the listener's rejections)",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_idempotent_replays",
            "HTTP API requests answered with the stored answer of an earlier request with the same Idempotency-Key",
            metrics.idempotent_replays.clone(),
        );
        metrics.publish_duration.register(
            registry,
            "publish_duration",
            "Time from a client's publish handed to the link (WebSocket frame or HTTP API) to msgqueue's ack that it is stored durably, per message",
        );
        metrics
    }

    /// Records a message acked by msgqueue `took` after it was handed to the link.
    pub(crate) fn stored_after(&self, took: std::time::Duration) {
        self.publish_duration.observe_n(took, 1);
    }

    /// Counts an HTTP API answer with `status`.
    pub fn http_request(&self, status: u16) {
        self.http_requests
            .get_or_create(&StatusLabels { status })
            .inc();
    }

    /// HTTP API answers with `status` so far.
    pub fn http_request_count(&self, status: u16) -> u64 {
        self.http_requests
            .get_or_create(&StatusLabels { status })
            .get()
    }

    /// Counts an answer replayed for a repeated `Idempotency-Key`.
    pub fn idempotent_replay(&self) {
        self.idempotent_replays.inc();
    }

    /// Answers replayed for repeated `Idempotency-Key`s so far.
    pub fn idempotent_replay_count(&self) -> u64 {
        self.idempotent_replays.get()
    }

    /// Counts a valid message handed to the link.
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// Valid messages handed to the link so far (including one still waiting for buffer space).
    pub fn accepted_count(&self) -> u64 {
        self.accepted.get()
    }

    /// Counts a message dropped because its topic is not permitted to its client.
    pub fn forbidden(&self) {
        self.forbidden.inc();
    }

    /// Messages dropped as forbidden so far.
    pub fn forbidden_count(&self) -> u64 {
        self.forbidden.get()
    }

    /// Counts a message refused at the edge.
    pub fn invalid(&self, reason: InvalidReason) {
        self.invalid
            .get_or_create(&InvalidLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// How many messages were refused for `reason`; lets tests check that bad input was seen and counted.
    pub fn invalid_count(&self, reason: InvalidReason) -> u64 {
        self.invalid
            .get_or_create(&InvalidLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Counts `n` messages msgqueue acked.
    pub fn acked(&self, n: u64) {
        self.acked.inc_by(n);
    }

    /// Messages msgqueue acked so far.
    pub fn acked_count(&self) -> u64 {
        self.acked.get()
    }

    /// Counts a message msgqueue rejected.
    pub fn rejected(&self) {
        self.rejected.inc();
    }

    /// Records whether the link is connected.
    pub fn set_link_up(&self, up: bool) {
        self.link_up.set(i64::from(up));
    }

    /// Counts a reconnect attempt of the link.
    pub fn reconnect(&self) {
        self.link_reconnects.inc();
    }

    /// Messages currently held by the link (queued or unacked).
    pub fn buffered(&self) -> i64 {
        self.buffered.get()
    }

    /// The gauge of buffered messages, moved into each buffer slot so it stays right however the slot ends.
    pub(crate) fn buffered_gauge(&self) -> Gauge {
        self.buffered.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn metrics_are_exported_with_reason_labels() -> Result<(), std::fmt::Error> {
        let mut registry = Registry::with_prefix("wsmq_publisher");
        let metrics = PublisherMetrics::register(&mut registry);
        metrics.invalid(InvalidReason::Binary);
        metrics.acked(3);
        metrics.set_link_up(true);
        metrics.http_request(413);
        let mut text = String::new();
        encode(&mut text, &registry)?;
        assert!(
            text.contains("wsmq_publisher_messages_invalid_total{reason=\"binary\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wsmq_publisher_messages_acked_total 3"),
            "{text}"
        );
        assert!(text.contains("wsmq_publisher_link_up 1"), "{text}");
        assert!(
            text.contains("wsmq_publisher_http_requests_total{status=\"413\"} 1"),
            "{text}"
        );
        assert_eq!(metrics.invalid_count(InvalidReason::Binary), 1);
        Ok(())
    }
}
