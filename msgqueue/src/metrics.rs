//! msgqueue's own metrics: the engine's counters, read at scrape time so the hot path pays nothing, and the
//! per-hop latency histograms the connection handlers record ([`HopLatency`]).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use wsmq_core::metrics::LatencyHistogram;

use crate::queue::{GroupStats, Queue, QueueStats};

/// Registers the queue's gauges (depth, bytes, in-flight leases, consumers, dead letters) and counters (pushed,
/// duplicates, delivered, acked, redelivered, lease expiries, full and no-space rejections, dead-lettered,
/// evicted and replayed dead letters, dropped groups) under `queue_`, and per consumer group (label `group`) its
/// lag in messages and bytes, consumers and redeliveries under `queue_group_`.
pub(crate) fn register(registry: &mut Registry, queue: Queue) {
    registry.register_collector(Box::new(QueueCollector { queue }));
}

/// Where time goes inside msgqueue, per message: how long a reliable push waits to be acked as durable, and how
/// long a delivery takes from being handed to a consumer's connection to being written to its socket.
#[derive(Clone, Debug, Default)]
pub(crate) struct HopLatency {
    /// Push frame read → its messages acked to the producer as durable (`push_duration_seconds`).
    pub(crate) push: LatencyHistogram,
    /// Delivery handed to a consumer's connection → written to its socket (`delivery_duration_seconds`).
    pub(crate) delivery: LatencyHistogram,
}

impl HopLatency {
    /// Creates the histograms and registers them in `registry` (prefixed `wsmq_msgqueue_`).
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let latency = Self::default();
        latency.push.register(
            registry,
            "push_duration",
            "Time from reading a reliable push frame to acking its messages as durable, per message stored",
        );
        latency.delivery.register(
            registry,
            "delivery_duration",
            "Time from handing deliveries to a consumer's connection to writing them to its socket, per delivery",
        );
        latency
    }
}

#[derive(Debug)]
struct QueueCollector {
    queue: Queue,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One metric family with a sample per consumer group.
fn per_group(
    encoder: &mut DescriptorEncoder<'_>,
    stats: &QueueStats,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    counter: bool,
    value: impl Fn(&GroupStats) -> u64,
) -> std::fmt::Result {
    if stats.groups.is_empty() {
        return Ok(());
    }
    let kind = if counter {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    for group in &stats.groups {
        let labels = [("group", group.name.as_str())];
        let sample = family.encode_family(&labels)?;
        let v = value(group);
        if counter {
            ConstCounter::new(v).encode(sample)?;
        } else {
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(sample)?;
        }
    }
    Ok(())
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = self.queue.stats();
        let e = &mut encoder;
        gauge(
            e,
            "queue_depth",
            "Messages stored and not yet acked",
            None,
            s.depth,
        )?;
        gauge(
            e,
            "queue",
            "Payload bytes stored and not yet acked",
            Some(&Unit::Bytes),
            s.bytes,
        )?;
        gauge(
            e,
            "queue_in_flight",
            "Deliveries leased to consumers and not yet acked",
            None,
            s.in_flight,
        )?;
        gauge(
            e,
            "queue_consumers",
            "Connected consumers",
            None,
            s.consumers as u64,
        )?;
        if let Some(history) = self.queue.history_stats() {
            gauge(
                e,
                "history_topics",
                "Topics with retained history",
                None,
                history.topics,
            )?;
            gauge(
                e,
                "history_messages",
                "Messages retained in topic history",
                None,
                history.messages,
            )?;
            gauge(
                e,
                "history",
                "Payload bytes retained in topic history",
                Some(&Unit::Bytes),
                history.bytes,
            )?;
            counter(
                e,
                "history_evicted",
                "Messages forgotten from topic history to stay within --history-max-bytes",
                history.evicted,
            )?;
        }
        counter(e, "queue_pushed", "Messages stored", s.pushed)?;
        counter(
            e,
            "queue_duplicates",
            "Retried pushes recognised as already stored",
            s.duplicates,
        )?;
        counter(
            e,
            "queue_delivered",
            "Deliveries handed to consumers, redeliveries included",
            s.delivered,
        )?;
        counter(e, "queue_acked", "Messages acked and removed", s.acked)?;
        counter(
            e,
            "queue_redelivered",
            "Deliveries of messages whose earlier delivery was not acked",
            s.redelivered,
        )?;
        counter(
            e,
            "queue_lease_expired",
            "Leases that ran out before their ack",
            s.lease_expired,
        )?;
        counter(
            e,
            "queue_rejected_full",
            "Pushes refused because the queue was full",
            s.rejected_full,
        )?;
        counter(
            e,
            "queue_rejected_no_space",
            "Pushes refused because the log's disk was full",
            s.rejected_no_space,
        )?;
        gauge(
            e,
            "queue_dead_letters",
            "Dead letters kept (GET /deadletters)",
            None,
            s.dead_letters,
        )?;
        counter(
            e,
            "queue_dead_nacked",
            "Messages dead-lettered because a consumer NACKed them",
            s.dead_nacked,
        )?;
        counter(
            e,
            "queue_dead_max_deliveries",
            "Messages dead-lettered after --max-deliveries deliveries without an ack",
            s.dead_max_deliveries,
        )?;
        counter(
            e,
            "queue_dead_evicted",
            "Dead letters dropped to stay within --max-dead-letters",
            s.dead_evicted,
        )?;
        counter(
            e,
            "queue_dead_replayed",
            "Dead letters pushed back into the queue",
            s.dead_replayed,
        )?;
        counter(
            e,
            "queue_groups_dropped",
            "Consumer groups dropped after --group-idle-ttl without a consumer",
            s.groups_dropped,
        )?;
        per_group(
            e,
            &s,
            "queue_group_lag",
            "Messages the group has not acked",
            None,
            false,
            |g| g.lag,
        )?;
        per_group(
            e,
            &s,
            "queue_group_lag",
            "Payload bytes of the messages the group has not acked",
            Some(&Unit::Bytes),
            false,
            |g| g.lag_bytes,
        )?;
        per_group(
            e,
            &s,
            "queue_group_consumers",
            "Consumers attached to the group",
            None,
            false,
            |g| g.consumers as u64,
        )?;
        per_group(
            e,
            &s,
            "queue_group_redelivered",
            "Deliveries in the group of messages whose earlier delivery was not acked",
            None,
            true,
            |g| g.redelivered,
        )?;
        Ok(())
    }
}
