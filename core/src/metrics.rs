//! [`ListenerMetrics`]: the Prometheus metrics every wsmq listener exports, so dashboards and alerts work the
//! same for all services.
//!
//! The listener counts connections and rejections itself; the message and byte counters are for the service's
//! connection handlers, which know what a message is. Services register their own metrics (queue depth, acks,
//! redeliveries) into the same [`Registry`]. The process metrics ([`process_registry`]) keep their conventional
//! unprefixed names so standard dashboards and `wsmq-bench conns --metrics-url` find them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

/// Why the listener refused a connection before handing it to the service; the `reason` label of
/// `connections_rejected_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    /// Missing or wrong credentials (401).
    Auth,
    /// The connection limit was reached (503).
    Limit,
    /// The `Origin` header is not allowed (403): a cross-site WebSocket hijacking attempt.
    Origin,
    /// Unknown path (404).
    NotFound,
    /// Not a valid HTTP request or WebSocket upgrade (400/405).
    BadRequest,
    /// TLS, request and upgrade did not finish within the handshake timeout.
    HandshakeTimeout,
    /// The TLS handshake failed (plain-text bytes, garbage, a client that distrusts our certificate).
    Tls,
    /// Too many connections were in their handshake (in total or from the client's address): dropped unanswered.
    HandshakeLimit,
    /// The client's address failed to log in too often recently; answered `429` without checking (see
    /// `crate::auth`).
    Throttled,
    /// The auth callout gave no usable answer (503).
    AuthUnavailable,
}

impl RejectReason {
    /// The label value: snake_case, as Prometheus label values conventionally are.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Limit => "limit",
            Self::Origin => "origin",
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Tls => "tls",
            Self::HandshakeLimit => "handshake_limit",
            Self::Throttled => "throttled",
            Self::AuthUnavailable => "auth_unavailable",
        }
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: RejectReason,
}

/// What one auth callout answered; the `outcome` label of `auth_callouts_total` (cached answers included).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CalloutOutcome {
    /// The connection was let in.
    Allowed,
    /// The application refused it.
    Denied,
    /// No usable answer (server down, timeout, bad reply, too many in flight).
    Unavailable,
}

impl CalloutOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Unavailable => "unavailable",
        }
    }
}

impl EncodeLabelValue for CalloutOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CalloutLabels {
    outcome: CalloutOutcome,
}

/// How long auth callouts take, 1 ms to about 4 s.
#[derive(Clone, Debug)]
struct CalloutLatency(Histogram);

impl Default for CalloutLatency {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 2.0, 13)))
    }
}

/// Metrics of one listener: cheap to clone (every field is an `Arc` inside), shared by the accept loop and all
/// connection handlers. [`ListenerMetrics::default`] gives unregistered metrics, for tests or callers that do
/// not export them.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    connections_open: Gauge,
    connections_accepted: Counter,
    connections_rejected: Family<RejectLabels, Counter>,
    messages_received: Counter,
    messages_sent: Counter,
    bytes_received: Counter,
    bytes_sent: Counter,
    callouts: Family<CalloutLabels, Counter>,
    callout_latency: CalloutLatency,
}

impl ListenerMetrics {
    /// Creates the metrics and registers them under `prefix` (e.g. `listener`), so the service's registry
    /// prefix plus this one name them, e.g. `wsmq_msgqueue_listener_connections_open`.
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix(prefix);
        registry.register(
            "connections_open",
            "Open WebSocket connections handed to the service",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "WebSocket connections that completed TLS, authentication and upgrade",
            metrics.connections_accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections refused before the upgrade, by reason",
            metrics.connections_rejected.clone(),
        );
        registry.register(
            "messages_received",
            "Messages received from peers",
            metrics.messages_received.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages sent to peers",
            metrics.messages_sent.clone(),
        );
        registry.register_with_unit(
            "received",
            "Message payload bytes received from peers",
            Unit::Bytes,
            metrics.bytes_received.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Message payload bytes sent to peers",
            Unit::Bytes,
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "auth_callouts",
            "Auth callouts by outcome (answers from the callout's cache included)",
            metrics.callouts.clone(),
        );
        registry.register_with_unit(
            "auth_callout_duration",
            "Time the auth step took for connections decided by the auth callout",
            Unit::Seconds,
            metrics.callout_latency.0.clone(),
        );
        metrics
    }

    /// Records one auth callout's outcome and how long it took.
    pub fn callout(&self, outcome: CalloutOutcome, took: std::time::Duration) {
        self.callouts
            .get_or_create(&CalloutLabels { outcome })
            .inc();
        self.callout_latency.0.observe(took.as_secs_f64());
    }

    /// How many auth callouts had `outcome` so far.
    pub fn callouts(&self, outcome: CalloutOutcome) -> u64 {
        self.callouts
            .get_or_create(&CalloutLabels { outcome })
            .get()
    }

    /// Counts a connection refused before the upgrade.
    pub fn reject(&self, reason: RejectReason) {
        self.connections_rejected
            .get_or_create(&RejectLabels { reason })
            .inc();
    }

    /// How many connections were refused for `reason` so far; lets tests and health checks see why clients fail.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.connections_rejected
            .get_or_create(&RejectLabels { reason })
            .get()
    }

    /// Counts an accepted connection and tracks it as open until the returned guard is dropped, so the gauge
    /// stays right however the handler ends.
    pub fn open_connection(&self) -> OpenConnection {
        self.connections_accepted.inc();
        self.connections_open.inc();
        OpenConnection {
            gauge: self.connections_open.clone(),
        }
    }

    /// WebSocket connections currently open.
    pub fn open(&self) -> i64 {
        self.connections_open.get()
    }

    /// Counts one message of `bytes` payload bytes received from a peer.
    pub fn received(&self, bytes: usize) {
        self.messages_received.inc();
        self.bytes_received.inc_by(bytes as u64);
    }

    /// Counts one message of `bytes` payload bytes sent to a peer.
    pub fn sent(&self, bytes: usize) {
        self.messages_sent.inc();
        self.bytes_sent.inc_by(bytes as u64);
    }
}

/// Keeps `connections_open` incremented while alive; returned by [`ListenerMetrics::open_connection`].
#[derive(Debug)]
pub struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Upper bound of the first latency bucket: 10 µs, about the cost of one hop inside a process.
const LATENCY_FIRST_BOUND_NANOS: u64 = 10_000;
/// Latency buckets: 10 µs doubling up to 10.5 s (10 µs × 2^20), then `+Inf`.
const LATENCY_BUCKETS: usize = 21;

/// A per-hop latency histogram (seconds, buckets from 10 µs doubling to 10.5 s): how long messages take from one
/// point of a service to another, so operators and the bench can see where the time goes.
///
/// prometheus-client's [`Histogram`] takes a mutex per observation and records one value at a time; this one is a
/// few relaxed atomic adds, and records the messages of a frame that share one latency (acked by one fsync,
/// written by one flush) with one update ([`LatencyHistogram::observe_n`]), so the hot path pays almost nothing.
/// Cheap to clone (an `Arc` inside); [`LatencyHistogram::default`] is unregistered, for tests.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<LatencyCounts>);

/// The counts behind a [`LatencyHistogram`]: per bucket (not cumulative; the encoder sums them) and the sum.
#[derive(Debug, Default)]
struct LatencyCounts {
    /// `buckets[i]` counts latencies in (bound(i-1), bound(i)]; the last one everything above 10.5 s.
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records `n` messages that each took `took`.
    pub fn observe_n(&self, took: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let above_first = nanos.saturating_sub(1) / LATENCY_FIRST_BOUND_NANOS;
        let index = usize::try_from(u64::BITS - above_first.leading_zeros())
            .map_or(LATENCY_BUCKETS, |i| i.min(LATENCY_BUCKETS));
        self.0.buckets[index].fetch_add(n, Ordering::Relaxed);
        self.0
            .sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    /// Records `n` messages that each took from `since` until now.
    pub fn observe_since(&self, since: Instant, n: u64) {
        self.observe_n(since.elapsed(), n);
    }

    /// Messages recorded so far (the histogram's `_count`).
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    /// Registers the histogram under `name` (with the unit `seconds` appended, as Prometheus names durations).
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register_with_unit(name, help, Unit::Seconds, self.clone());
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut bound = LATENCY_FIRST_BOUND_NANOS as f64 / 1e9;
        let mut buckets = [(0.0, 0); LATENCY_BUCKETS + 1];
        let mut count = 0;
        for (slot, counted) in buckets.iter_mut().zip(&self.0.buckets) {
            let n = counted.load(Ordering::Relaxed);
            count += n;
            *slot = (bound, n);
            bound *= 2.0;
        }
        buckets[LATENCY_BUCKETS].0 = f64::INFINITY;
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// An unprefixed registry with the process's own metrics, read at each scrape: today
/// `process_resident_memory_bytes`, the name the Prometheus client libraries use, so per-connection memory can be
/// watched (and measured by `wsmq-bench conns`) without access to the host. Empty where it cannot be read.
pub(crate) fn process_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessMemory));
    registry
}

/// Collects `process_resident_memory_bytes` when scraped.
#[derive(Debug)]
struct ProcessMemory;

impl Collector for ProcessMemory {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(bytes) = resident_memory_bytes() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "process_resident_memory",
            "Resident set size of the process",
            Some(&Unit::Bytes),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The process's resident set size: the second field of `/proc/self/statm` (pages) times the page size.
#[cfg(target_os = "linux")]
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(u64::try_from(rustix::param::page_size()).ok()?)
}

/// Not available off Linux: the metric is left out rather than reported wrong.
#[cfg(not(target_os = "linux"))]
fn resident_memory_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn metrics_are_exported_under_the_prefix() -> Result<(), std::fmt::Error> {
        let mut registry = Registry::with_prefix("wsmq_test");
        let metrics = ListenerMetrics::register(&mut registry, "listener");
        metrics.reject(RejectReason::HandshakeTimeout);
        metrics.received(10);
        let guard = metrics.open_connection();
        let mut text = String::new();
        encode(&mut text, &registry)?;
        assert!(
            text.contains("wsmq_test_listener_connections_open 1"),
            "{text}"
        );
        assert!(text.contains(
            "wsmq_test_listener_connections_rejected_total{reason=\"handshake_timeout\"} 1"
        ));
        assert!(
            text.contains("wsmq_test_listener_received_bytes_total 10"),
            "{text}"
        );
        drop(guard);
        assert_eq!(metrics.open(), 0);
        assert_eq!(metrics.rejected(RejectReason::HandshakeTimeout), 1);
        Ok(())
    }

    #[test]
    fn latency_histogram_buckets_from_10_microseconds_to_10_seconds() -> Result<(), std::fmt::Error>
    {
        let mut registry = Registry::with_prefix("wsmq_test");
        let latency = LatencyHistogram::default();
        latency.register(&mut registry, "hop_duration", "test hop");
        latency.observe_n(Duration::from_micros(10), 3);
        latency.observe_n(Duration::from_micros(11), 1);
        latency.observe_n(Duration::from_millis(1), 2);
        latency.observe_n(Duration::from_secs(60), 1);
        latency.observe_n(Duration::from_secs(60), 0);
        assert_eq!(latency.count(), 7);
        let mut text = String::new();
        encode(&mut text, &registry)?;
        assert!(
            text.contains("# TYPE wsmq_test_hop_duration_seconds histogram"),
            "{text}"
        );
        for sample in [
            "wsmq_test_hop_duration_seconds_bucket{le=\"0.00001\"} 3",
            "wsmq_test_hop_duration_seconds_bucket{le=\"0.00002\"} 4",
            // 1 ms falls into (640 µs, 1.28 ms].
            "wsmq_test_hop_duration_seconds_bucket{le=\"0.00064\"} 4",
            "wsmq_test_hop_duration_seconds_bucket{le=\"0.00128\"} 6",
            "wsmq_test_hop_duration_seconds_bucket{le=\"10.48576\"} 6",
            "wsmq_test_hop_duration_seconds_bucket{le=\"+Inf\"} 7",
            "wsmq_test_hop_duration_seconds_count 7",
        ] {
            assert!(text.contains(sample), "{sample} not in {text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("wsmq_test_hop_duration_seconds_sum "))
            .ok_or(std::fmt::Error)?
            .parse()
            .map_err(|_| std::fmt::Error)?;
        assert!((sum - 60.002041).abs() < 1e-9, "{sum}");
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_resident_memory_is_exported_unprefixed() -> Result<(), Box<dyn std::error::Error>> {
        let mut text = String::new();
        encode(&mut text, &process_registry())?;
        let value: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
            .ok_or_else(|| format!("no sample in {text}"))?
            .parse()?;
        assert!(value > 0.0, "{text}");
        assert!(
            text.contains("# TYPE process_resident_memory_bytes gauge"),
            "{text}"
        );
        Ok(())
    }
}
