//! `e2e`: publishers → publisher → msgqueue → subscriber → subscribers. Counts every delivery per publisher
//! per subscriber (loss, duplicates, reordering) and measures delivery latency from the stamp in each message.
//! `fanout` is the same flow with one publisher, one topic and many subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::envelope::Envelope;
use wsmq_core::protocol::{PUBLISH_PATH, SUBPROTOCOL_V1, SUBSCRIBE_PATH};

use super::{Ctx, Subscriber, open_many, settle_if_unconfirmed, subscribe};
use crate::cli::{E2eArgs, FlowArgs, SlowArgs, SlowTopic, TopicMode};
use crate::client::{Connector, Target, Ws, source_ip};
use crate::payload::{self, Clock, Counts, STAMP_LEN, Stamp, Tracker};
use crate::report::{Latencies, LatencyBuffer, Report, per_second};

/// Messages a max-rate publisher writes before one flush: one syscall carries many frames.
const PUBLISH_BATCH: u64 = 64;
/// How often the drain phase checks whether everything arrived (the figures come from receive stamps, not
/// from this tick).
const DRAIN_TICK: Duration = Duration::from_millis(10);
/// How long the end of a run reads each slow subscriber's backlog looking for the server's close frame.
const SLOW_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// The shape of one message-flow run.
#[derive(Debug, Clone)]
pub struct FlowPlan {
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections; subscriber `i` takes topic `i % topics`.
    pub subscribers: usize,
    /// Topics.
    pub topics: usize,
    /// Messages in total, split evenly across publishers.
    pub messages: u64,
    /// How publishers pick topics.
    pub topic_mode: TopicMode,
    /// Subscribers that never read, if any.
    pub slow: Option<SlowArgs>,
    /// Sizes, rate, acks, modes and timeouts.
    pub flow: FlowArgs,
}

impl FlowPlan {
    /// Messages publisher `j` sends: an even share, the first `messages % publishers` one more.
    pub fn per_publisher(&self) -> Vec<u64> {
        let p = self.publishers.max(1) as u64;
        (0..p)
            .map(|j| self.messages / p + u64::from(j < self.messages % p))
            .collect()
    }

    /// Topics the publishers feed: the subscribers' ones, plus the slow subscribers' own with `--slow-topic other`.
    pub fn published_topics(&self) -> usize {
        let own = self
            .slow
            .as_ref()
            .is_some_and(|slow| slow.slow_topic == SlowTopic::Other);
        self.topics.max(1) + usize::from(own)
    }

    /// The topic the slow subscribers take.
    pub fn slow_topic(&self) -> usize {
        match self.slow.as_ref().map(|slow| slow.slow_topic) {
            Some(SlowTopic::Other) => self.topics.max(1),
            _ => 0,
        }
    }

    /// Topic of publisher `j`'s message `k`.
    pub fn topic_of(&self, j: usize, k: u64) -> usize {
        let t = self.published_topics();
        match self.topic_mode {
            TopicMode::RoundRobin => ((j as u64 + k) % t as u64) as usize,
            TopicMode::Fixed => j % t,
        }
    }

    /// Deliveries expected when publisher `j` sent `sent[j]` messages: each message reaches every subscriber
    /// of its topic once.
    pub fn expected_deliveries(&self, sent: &[u64]) -> u64 {
        let t = self.published_topics();
        let mut per_topic = vec![0u64; t];
        for (j, &n) in sent.iter().enumerate() {
            match self.topic_mode {
                TopicMode::Fixed => per_topic[j % t] += n,
                TopicMode::RoundRobin => {
                    for (topic, count) in per_topic.iter_mut().enumerate() {
                        // k with (j + k) % t == topic: k ≡ topic - j (mod t), k in 0..n.
                        let first = ((topic + t - j % t) % t) as u64;
                        *count += if first < n {
                            (n - first).div_ceil(t as u64)
                        } else {
                            0
                        };
                    }
                }
            }
        }
        (0..self.subscribers)
            .map(|i| per_topic[i % self.topics.max(1)])
            .sum()
    }
}

/// Runs `e2e`.
pub async fn run(ctx: &Ctx, args: E2eArgs) -> anyhow::Result<Report> {
    let plan = FlowPlan {
        publishers: args.publishers,
        subscribers: args.subscribers,
        topics: args.topics,
        messages: args.messages,
        topic_mode: args.topic_mode,
        slow: (args.slow.slow_subscribers > 0).then_some(args.slow),
        flow: args.flow,
    };
    run_flow(ctx, "e2e", plan).await
}

pub(crate) fn topic_name(t: usize) -> String {
    format!("bench-{t}")
}

/// Connects, subscribes, publishes, drains and reports one message-flow run.
pub async fn run_flow(
    ctx: &Ctx,
    scenario: &'static str,
    mut plan: FlowPlan,
) -> anyhow::Result<Report> {
    if plan.flow.compat {
        plan.flow.subscribe_mode = crate::cli::SubscribeMode::Compat;
    }
    anyhow::ensure!(
        plan.publishers > 0 && plan.subscribers > 0 && plan.topics > 0,
        "need at least one publisher, subscriber and topic"
    );
    let slow_count = plan.slow.as_ref().map_or(0, |slow| slow.slow_subscribers);
    ctx.check_connections(plan.publishers + plan.subscribers + slow_count)?;
    let many = plan.publishers + plan.subscribers > 1_000;
    let connector = Connector::new(&ctx.common, many)?;
    let sub_target = connector
        .target(&ctx.common.subscriber_url, SUBSCRIBE_PATH)
        .await?;
    let pub_target = connector
        .target(&ctx.common.publisher_url, PUBLISH_PATH)
        .await?;
    let run_id: u32 = rand::random();
    let planned = plan.per_publisher();

    let bar = ctx.progress(plan.subscribers as u64, "subscribing");
    let connect_start = Clock::start();
    let subscribers = ctx
        .phase(
            "connect subscribers",
            open_many(ctx, plan.subscribers, &bar, |i| {
                subscribe(
                    connector.clone(),
                    sub_target.clone(),
                    topic_name(i % plan.topics),
                    plan.flow.subscribe_mode,
                    source_ip(i, plan.flow.source_ips, &sub_target),
                )
            }),
        )
        .await??;
    let connect_nanos = connect_start.nanos();
    bar.finish_and_clear();
    let confirmed = subscribers.iter().all(|s| s.confirmed);
    settle_if_unconfirmed(&subscribers, plan.flow.settle).await;

    let stop_receiving = CancellationToken::new();
    let slow_joiner = SlowJoiner {
        read_every: plan.slow.as_ref().and_then(|slow| slow.slow_read_every),
        stop: stop_receiving.clone(),
        connector: connector.clone(),
        target: sub_target.clone(),
        topic: topic_name(plan.slow_topic()),
        mode: plan.flow.subscribe_mode,
        first_source: plan.subscribers + plan.publishers,
        source_ips: plan.flow.source_ips,
    };
    let mut slow = Vec::new();
    let mut joining = None;
    if let Some(args) = &plan.slow {
        match args.slow_join_every {
            None => {
                slow = ctx
                    .phase(
                        "connect slow subscribers",
                        slow_joiner.open_all(args.slow_subscribers),
                    )
                    .await??;
            }
            Some(every) => joining = Some((args.slow_subscribers, every)),
        }
    }

    let publisher_mode = if plan.flow.acks {
        Some(SUBPROTOCOL_V1)
    } else {
        None
    };
    let bar = ctx.progress(plan.publishers as u64, "publishers");
    let publishers: Vec<Ws> = ctx
        .phase(
            "connect publishers",
            open_many(ctx, plan.publishers, &bar, |j| {
                let connector = connector.clone();
                let target = pub_target.clone();
                let source = source_ip(plan.subscribers + j, plan.flow.source_ips, &target);
                async move {
                    let (ws, selected) = connector.connect(&target, publisher_mode, source).await?;
                    if publisher_mode.is_some() && selected.as_deref() != Some(SUBPROTOCOL_V1) {
                        return Err(anyhow!(
                            "--acks needs a publisher that speaks {SUBPROTOCOL_V1}"
                        ));
                    }
                    Ok(ws)
                }
            }),
        )
        .await??;
    bar.finish_and_clear();

    let clock = Clock::start();
    let delivery_latency = Latencies::default();
    let ack_latency = Latencies::default();
    let unique = Arc::new(AtomicU64::new(0));
    let mut receivers = JoinSet::new();
    for Subscriber { ws, .. } in subscribers {
        receivers.spawn(receive(
            ws,
            Tracker::new(run_id, &planned),
            delivery_latency.buffer(),
            clock,
            Arc::clone(&unique),
            stop_receiving.clone(),
        ));
    }

    let expected_planned = plan.expected_deliveries(&planned);
    let bar = ctx.progress(expected_planned, "deliveries");
    let stop_publishing = CancellationToken::new();
    let mut senders = JoinSet::new();
    let plan = Arc::new(plan);
    for (j, ws) in publishers.into_iter().enumerate() {
        senders.spawn(publish(
            ws,
            j,
            Arc::clone(&plan),
            planned[j],
            run_id,
            clock,
            ack_latency.buffer(),
            stop_publishing.clone(),
        ));
    }
    let publish_start = clock.nanos();
    let joiner = joining
        .map(|(n, every)| tokio::spawn(slow_joiner.join_every(n, every, stop_receiving.clone())));
    let mut outcomes = vec![PublishOutcome::default(); plan.publishers];
    let truncated = ctx
        .join_within(
            "publishing",
            &mut senders,
            &stop_publishing,
            || bar.set_position(unique.load(Ordering::Relaxed)),
            |(j, outcome)| outcomes[j] = outcome,
        )
        .await?;
    let publish_end = clock.nanos();

    let sent: Vec<u64> = outcomes.iter().map(|o| o.sent).collect();
    let expected = plan.expected_deliveries(&sent);
    bar.set_length(expected);
    let drain_limit = plan.flow.drain_timeout.min(ctx.common.duration_limit);
    let drain = async {
        while unique.load(Ordering::Relaxed) < expected {
            bar.set_position(unique.load(Ordering::Relaxed));
            tokio::time::sleep(DRAIN_TICK).await;
        }
    };
    let drained = tokio::time::timeout(drain_limit, drain).await.is_ok();
    bar.finish_and_clear();
    stop_receiving.cancel();

    let mut counts = Counts::default();
    let mut last_receive = publish_start;
    let mut disconnects = 0u64;
    while let Some(done) = receivers.join_next().await {
        let result = done?;
        counts.add(&result.counts);
        disconnects += u64::from(result.disconnected);
        last_receive = last_receive.max(result.last_receive_nanos);
    }
    if let Some(joiner) = joiner {
        slow.extend(joiner.await?);
    }
    let slow_opened = slow.len();
    let slow_closed = count_slow_closures(slow).await;
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let refused: u64 = outcomes.iter().map(|o| o.errors).sum();
    let total_sent: u64 = sent.iter().sum();
    let deliver_nanos = last_receive.saturating_sub(publish_start);

    let mut report = Report::new(scenario);
    report.add("publishers", plan.publishers);
    report.add("subscribers", plan.subscribers);
    report.add("topics", plan.topics);
    report.add("message_bytes", plan.flow.size.max(STAMP_LEN));
    report.add("target_rate_per_s", plan.flow.rate);
    report.add("compat", plan.flow.compat);
    report.add("subscriptions_confirmed", confirmed);
    report.add("subscribe_secs", connect_nanos as f64 / 1e9);
    report.add("published", total_sent);
    report.add("publish_truncated_by_limit", truncated);
    report.add(
        "publish_rate_per_s",
        per_second(total_sent, publish_end - publish_start),
    );
    if plan.flow.acks {
        report.add("acked", acked);
        report.add("refused", refused);
        report.add("ack_latency", ack_latency.summary());
    }
    report.add("expected", expected);
    report.add("delivered", counts.unique);
    report.add("lost", expected.saturating_sub(counts.unique));
    report.add("duplicates", counts.duplicates);
    report.add("reordered", counts.reordered);
    report.add("foreign", counts.foreign);
    report.add("drained", drained);
    report.add("subscriber_disconnects", disconnects);
    if plan.slow.is_some() {
        report.add("slow_subscribers", slow_opened);
        report.add("slow_topic", topic_name(plan.slow_topic()));
        report.add("slow_closed_1013", slow_closed);
    }
    report.add("delivered_per_s", per_second(counts.unique, deliver_nanos));
    report.add("latency", delivery_latency.summary());
    Ok(report)
}

/// Opens the subscriber connections that never read, or read slowly.
struct SlowJoiner {
    /// Read one frame per this long (until `stop`) instead of never.
    read_every: Option<Duration>,
    stop: CancellationToken,
    connector: Connector,
    target: Target,
    topic: String,
    mode: crate::cli::SubscribeMode,
    /// Connection index of the first one, for spreading source addresses.
    first_source: usize,
    source_ips: u8,
}

impl SlowJoiner {
    /// Connects and subscribes slow subscriber `k`; from then on nothing reads it, or it reads slowly.
    async fn open(&self, k: usize) -> anyhow::Result<Slow> {
        let source = source_ip(self.first_source + k, self.source_ips, &self.target);
        let subscriber = subscribe(
            self.connector.clone(),
            self.target.clone(),
            self.topic.clone(),
            self.mode,
            source,
        )
        .await?;
        Ok(match self.read_every {
            None => Slow::Idle(Box::new(subscriber.ws)),
            Some(every) => Slow::Reading(tokio::spawn(read_slowly(
                subscriber.ws,
                every,
                self.stop.clone(),
            ))),
        })
    }

    /// Opens `n` slow subscribers one after the other.
    async fn open_all(&self, n: usize) -> anyhow::Result<Vec<Slow>> {
        let mut opened = Vec::with_capacity(n);
        for k in 0..n {
            opened.push(self.open(k).await.context("slow subscriber")?);
        }
        Ok(opened)
    }

    /// Opens `n` slow subscribers, the first at once and then one every `every`, until `stop`.
    async fn join_every(self, n: usize, every: Duration, stop: CancellationToken) -> Vec<Slow> {
        let mut opened = Vec::with_capacity(n);
        let mut tick = tokio::time::interval(every);
        for k in 0..n {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            match self.open(k).await {
                Ok(ws) => opened.push(ws),
                Err(err) => tracing::warn!(%err, "a slow subscriber could not join"),
            }
        }
        opened
    }
}

/// A slow subscriber: one that never reads, or one reading slowly ([`read_slowly`]) until the run ends.
enum Slow {
    Idle(Box<Ws>),
    Reading(tokio::task::JoinHandle<Result<bool, Ws>>),
}

/// Reads one frame per `every` until the server closes the connection (`Ok`: whether with 1013) or `stop`
/// (`Err`: the connection, still open).
async fn read_slowly(mut ws: Ws, every: Duration, stop: CancellationToken) -> Result<bool, Ws> {
    let mut tick = tokio::time::interval(every);
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => return Err(ws),
            frame = async {
                tick.tick().await;
                ws.next().await
            } => frame,
        };
        match frame {
            Some(Ok(Message::Close(close))) => {
                return Ok(close.is_some_and(|c| u16::from(c.code) == 1013));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(false),
        }
    }
}

/// Reads through each slow subscriber's backlog (bounded in time) and counts those the server closed with 1013
/// (try again later), the close a client that does not keep up gets.
async fn count_slow_closures(slow: Vec<Slow>) -> usize {
    let mut readers = JoinSet::new();
    for slow in slow {
        readers.spawn(async move {
            let mut ws = match slow {
                Slow::Idle(ws) => *ws,
                Slow::Reading(reading) => match reading.await {
                    Ok(Ok(closed)) => return closed,
                    Ok(Err(ws)) => ws,
                    Err(_) => return false,
                },
            };
            let closed = tokio::time::timeout(SLOW_CLOSE_LIMIT, async {
                while let Some(Ok(frame)) = ws.next().await {
                    if let Message::Close(close) = frame {
                        return close.is_some_and(|c| u16::from(c.code) == 1013);
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            drop(ws);
            closed
        });
    }
    let mut closed = 0;
    while let Some(done) = readers.join_next().await {
        closed += usize::from(done.unwrap_or(false));
    }
    closed
}

/// What one subscriber connection saw.
pub(crate) struct Received {
    pub(crate) counts: Counts,
    pub(crate) last_receive_nanos: u64,
    /// The server closed or broke the connection before the run ended.
    pub(crate) disconnected: bool,
}

/// Reads deliveries until `stop`, classifying each and recording its latency.
pub(crate) async fn receive(
    mut ws: Ws,
    mut tracker: Tracker,
    mut latency: LatencyBuffer,
    clock: Clock,
    unique: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Received {
    let mut last_receive_nanos = 0;
    let mut disconnected = false;
    loop {
        let frame = tokio::select! {
            biased;
            frame = ws.next() => frame,
            () = stop.cancelled() => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                let (code, reason) = close.map_or((None, String::new()), |c| {
                    (Some(u16::from(c.code)), c.reason.to_string())
                });
                tracing::warn!(?code, %reason, "the subscriber closed a bench connection");
                disconnected = true;
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                tracing::warn!(%err, "subscriber connection failed");
                disconnected = true;
                break;
            }
            None => {
                disconnected = !stop.is_cancelled();
                break;
            }
        };
        let now = clock.nanos();
        let stamp = Envelope::parse_json(text.as_bytes())
            .ok()
            .and_then(|env| Stamp::decode(env.content.as_bytes()).ok());
        let Some(stamp) = stamp else {
            // Confirmations and other control frames are not messages.
            if !matches!(
                ServerFrame::parse(text.as_str()),
                Some(ServerFrame::Subscribed(_))
            ) {
                tracker.record_unstamped();
            }
            continue;
        };
        if matches!(
            tracker.record(&stamp),
            crate::payload::Arrival::New | crate::payload::Arrival::Reordered
        ) {
            unique.fetch_add(1, Ordering::Relaxed);
            latency.record(now.saturating_sub(stamp.sent_nanos));
            last_receive_nanos = now;
        }
    }
    let _ = ws.close(None).await;
    Received {
        counts: tracker.counts(),
        last_receive_nanos,
        disconnected,
    }
}

/// What one publisher did.
#[derive(Debug, Clone, Copy, Default)]
struct PublishOutcome {
    sent: u64,
    acked: u64,
    errors: u64,
}

/// Publishes `count` messages as publisher `j`, paced to its share of `--rate` if given, with a window of
/// unacked messages when `--acks` is on. Stops early when `stop` is cancelled.
#[allow(clippy::too_many_arguments)]
async fn publish(
    ws: Ws,
    j: usize,
    plan: Arc<FlowPlan>,
    count: u64,
    run: u32,
    clock: Clock,
    ack_latency: LatencyBuffer,
    stop: CancellationToken,
) -> anyhow::Result<(usize, PublishOutcome)> {
    let (mut sink, stream) = ws.split();
    let acks = plan.flow.acks;
    let slots = if acks {
        plan.flow.ack_window.max(1)
    } else {
        PUBLISH_BATCH as usize
    };
    let window = Arc::new(Semaphore::new(if acks {
        slots
    } else {
        Semaphore::MAX_PERMITS
    }));
    let sent_at: Arc<[AtomicU64]> = (0..slots).map(|_| AtomicU64::new(0)).collect();
    let replies = Arc::new(ReplyCounts::default());
    let reader = tokio::spawn(read_replies(
        stream,
        Arc::clone(&window),
        Arc::clone(&sent_at),
        Arc::clone(&replies),
        clock,
        ack_latency,
    ));

    let per_publisher_rate = plan.flow.rate.map(|r| r / plan.publishers as f64);
    let mut sent = 0u64;
    let mut frame = Vec::with_capacity(plan.flow.size + 64);
    while sent < count && !stop.is_cancelled() {
        // With acks, a batch never asks for more window slots than exist.
        let mut allowed = (count - sent).min(PUBLISH_BATCH).min(slots as u64);
        if let Some(rate) = per_publisher_rate {
            let due = (clock.nanos() as f64 / 1e9 * rate) as u64;
            if due <= sent {
                let next = ((sent + 1) as f64 / rate * 1e9) as u64;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_nanos(next.saturating_sub(clock.nanos()))) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
            allowed = allowed.min(due - sent);
        }
        if acks {
            let permits = u32::try_from(allowed).unwrap_or(u32::MAX);
            let permit = tokio::select! {
                permit = window.acquire_many(permits) => permit?,
                () = stop.cancelled() => break,
            };
            permit.forget();
        }
        for _ in 0..allowed {
            let seq = sent;
            let now = clock.nanos();
            encode_publish(&mut frame, &plan, j, seq, run, now);
            if acks {
                sent_at[(seq % sent_at.len() as u64) as usize].store(now, Ordering::Release);
            }
            let text = String::from_utf8(std::mem::take(&mut frame))
                .map_err(|_| anyhow!("publish frame is not UTF-8"))?;
            sink.feed(Message::text(text)).await.context("publishing")?;
            sent += 1;
        }
        sink.flush().await.context("publishing")?;
    }
    if acks {
        // Wait for the outstanding acks (bounded by the caller's duration limit).
        let window_size = u32::try_from(plan.flow.ack_window.max(1)).unwrap_or(u32::MAX);
        tokio::select! {
            permit = window.acquire_many(window_size) => drop(permit?),
            () = stop.cancelled() => {}
        }
    }
    let _ = sink.close().await;
    reader.abort();
    let _ = reader.await;
    Ok((
        j,
        PublishOutcome {
            sent,
            acked: replies.acked.load(Ordering::Relaxed),
            errors: replies.errors.load(Ordering::Relaxed),
        },
    ))
}

/// `{"Topic":"bench-T","Content":"<stamp + padding>"}` plus `,"Id":seq` with `--acks`.
fn encode_publish(out: &mut Vec<u8>, plan: &FlowPlan, j: usize, seq: u64, run: u32, now: u64) {
    let stamp = Stamp {
        run,
        sender: u32::try_from(j).unwrap_or(u32::MAX),
        seq,
        sent_nanos: now,
    };
    let id = plan.flow.acks.then_some(seq);
    payload::encode_publish(
        out,
        &topic_name(plan.topic_of(j, seq)),
        &stamp,
        plan.flow.size,
        id,
    );
}

/// Replies a publisher received; shared because the reading task is aborted when publishing ends.
#[derive(Debug, Default)]
struct ReplyCounts {
    acked: AtomicU64,
    errors: AtomicU64,
}

/// Counts `{"ack":seq}` and `{"error":..}` replies, freeing a window slot for each, until the connection
/// closes or the task is aborted (the latency buffer flushes when dropped).
async fn read_replies(
    mut stream: SplitStream<Ws>,
    window: Arc<Semaphore>,
    sent_at: Arc<[AtomicU64]>,
    counts: Arc<ReplyCounts>,
    clock: Clock,
    mut latency: LatencyBuffer,
) {
    while let Some(Ok(frame)) = stream.next().await {
        let Message::Text(text) = frame else { continue };
        match ServerFrame::parse(text.as_str()) {
            Some(ServerFrame::Ack { id }) => {
                counts.acked.fetch_add(1, Ordering::Relaxed);
                if let Ok(seq) = id.parse::<u64>() {
                    let at = sent_at[(seq % sent_at.len() as u64) as usize].load(Ordering::Acquire);
                    latency.record(clock.nanos().saturating_sub(at));
                }
                window.add_permits(1);
            }
            Some(ServerFrame::Error { .. }) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                window.add_permits(1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        publishers: usize,
        subscribers: usize,
        topics: usize,
        messages: u64,
        topic_mode: TopicMode,
    ) -> FlowPlan {
        FlowPlan {
            publishers,
            subscribers,
            topics,
            messages,
            topic_mode,
            slow: None,
            flow: FlowArgs {
                size: 64,
                rate: None,
                acks: false,
                compat: false,
                ack_window: 16,
                subscribe_mode: crate::cli::SubscribeMode::Auto,
                settle: Duration::ZERO,
                drain_timeout: Duration::ZERO,
                source_ips: 0,
            },
        }
    }

    #[test]
    fn messages_are_split_evenly_across_publishers() {
        assert_eq!(
            plan(3, 1, 1, 10, TopicMode::Fixed).per_publisher(),
            [4, 3, 3]
        );
    }

    #[test]
    fn expected_deliveries_match_a_brute_force_count() {
        for mode in [TopicMode::RoundRobin, TopicMode::Fixed] {
            for (p, s, t, n) in [
                (1, 1, 1, 100),
                (4, 16, 4, 1001),
                (3, 5, 7, 50),
                (2, 3, 4, 1),
            ] {
                let plan = plan(p, s, t, n, mode);
                let sent = plan.per_publisher();
                let mut brute = 0u64;
                for (j, &count) in sent.iter().enumerate() {
                    for k in 0..count {
                        let topic = plan.topic_of(j, k);
                        brute += (0..s).filter(|i| i % t == topic).count() as u64;
                    }
                }
                assert_eq!(
                    plan.expected_deliveries(&sent),
                    brute,
                    "{mode:?} {p} {s} {t} {n}"
                );
            }
        }
    }

    #[test]
    fn slow_subscribers_on_their_own_topic_add_a_published_topic_nobody_measured_takes() {
        let mut p = plan(1, 4, 1, 10, TopicMode::RoundRobin);
        p.slow = Some(SlowArgs {
            slow_subscribers: 1,
            slow_join_every: None,
            slow_topic: SlowTopic::Other,
            slow_read_every: None,
        });
        assert_eq!((p.published_topics(), p.slow_topic()), (2, 1));
        assert_eq!(
            p.expected_deliveries(&[10]),
            4 * 5,
            "every other message is theirs"
        );
        p.slow.as_mut().unwrap().slow_topic = SlowTopic::Same;
        assert_eq!((p.published_topics(), p.slow_topic()), (1, 0));
        assert_eq!(p.expected_deliveries(&[10]), 4 * 10);
    }

    #[test]
    fn publish_frames_are_ws_go_envelopes_carrying_the_stamp() {
        let mut p = plan(2, 1, 2, 10, TopicMode::RoundRobin);
        p.flow.acks = true;
        let mut out = Vec::new();
        encode_publish(&mut out, &p, 1, 6, 9, 12_345);
        let text = std::str::from_utf8(&out).unwrap();
        let env = Envelope::parse_json(text.as_bytes()).unwrap();
        assert_eq!(env.topic, "bench-1");
        assert_eq!(env.content.len(), 64);
        let stamp = Stamp::decode(env.content.as_bytes()).unwrap();
        assert_eq!(
            (stamp.run, stamp.sender, stamp.seq, stamp.sent_nanos),
            (9, 1, 6, 12_345)
        );
        assert!(text.ends_with(",\"Id\":6}"), "{text}");
    }
}
