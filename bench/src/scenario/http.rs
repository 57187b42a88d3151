//! `http`: the publisher's HTTP API under load. `--connections` keep-alive HTTP/1.1 connections each send one
//! request at a time, as fast as the answers come (`POST /v1/publish` with `--batch 1`, else
//! `/v1/publish/batch` with `--batch` messages per request), and subscribers count the deliveries from the
//! stamp in each message exactly as in `e2e`. Reports published/s (acked: an answer means msgqueue stored every
//! message of the request), request latency, and delivery loss, duplicates, order and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wsmq_core::api_client::ApiClient;
use wsmq_core::protocol::{PUBLISH_API_PATH, PUBLISH_BATCH_API_PATH, PUBLISH_PATH, SUBSCRIBE_PATH};

use super::e2e::{receive, topic_name};
use super::{Ctx, Subscriber, open_many, settle_if_unconfirmed, subscribe};
use crate::cli::HttpArgs;
use crate::client::{Connector, source_ip};
use crate::payload::{Clock, Counts, STAMP_LEN, Stamp, Tracker};
use crate::report::{Latencies, LatencyBuffer, Report, per_second};

/// How often the drain phase checks whether everything arrived.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// What one HTTP connection did.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    /// Messages in requests answered 200.
    published: u64,
    /// Messages in requests answered otherwise (or whose per-message result was an error).
    refused: u64,
    requests: u64,
}

/// What the scenarios driving the HTTP API (`http`, `scheduled`) connect before they publish.
pub(super) struct Setup {
    /// Tells this run's messages from others'.
    pub(super) run_id: u32,
    /// Messages each HTTP connection publishes (the total split evenly).
    pub(super) planned: Vec<u64>,
    /// Subscriber connections, subscribed.
    pub(super) subscribers: Vec<Subscriber>,
    /// Keep-alive connections to the publisher's API.
    pub(super) clients: Vec<ApiClient>,
}

impl Setup {
    /// Subscribes one connection per topic in `topics` and opens `connections` API connections, within
    /// `--duration-limit` per phase.
    pub(super) async fn connect(
        ctx: &Ctx,
        connections: usize,
        messages: u64,
        topics: impl ExactSizeIterator<Item = String>,
        mode: crate::cli::SubscribeMode,
        settle: Duration,
    ) -> anyhow::Result<Self> {
        let topics: Vec<String> = topics.collect();
        ctx.check_connections(connections + topics.len())?;
        let connector = Connector::new(&ctx.common, false)?;
        let sub_target = connector
            .target(&ctx.common.subscriber_url, SUBSCRIBE_PATH)
            .await?;
        let pub_target = connector
            .target(&ctx.common.publisher_url, PUBLISH_PATH)
            .await?;
        let c = connections as u64;
        let planned = (0..c)
            .map(|j| messages / c + u64::from(j < messages % c))
            .collect();
        let bar = ctx.progress(topics.len() as u64, "subscribing");
        let subscribers = ctx
            .phase(
                "connect subscribers",
                open_many(ctx, topics.len(), &bar, |i| {
                    subscribe(
                        connector.clone(),
                        sub_target.clone(),
                        topics[i].clone(),
                        mode,
                        source_ip(i, 0, &sub_target),
                    )
                }),
            )
            .await??;
        bar.finish_and_clear();
        settle_if_unconfirmed(&subscribers, settle).await;
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let client = ctx
                .phase(
                    "connect HTTP clients",
                    ApiClient::connect(pub_target.dialer()),
                )
                .await??;
            clients.push(client);
        }
        Ok(Self {
            run_id: rand::random(),
            planned,
            subscribers,
            clients,
        })
    }
}

/// Runs `http`.
pub async fn run(ctx: &Ctx, args: HttpArgs) -> anyhow::Result<Report> {
    if args.connections == 0 || args.subscribers == 0 || args.topics == 0 || args.batch == 0 {
        bail!("need at least one connection, subscriber, topic and message per request");
    }
    if !args.subscribers.is_multiple_of(args.topics) {
        bail!(
            "--subscribers must be a multiple of --topics, so every message has as many subscribers"
        );
    }
    let Setup {
        run_id,
        planned,
        subscribers,
        clients,
    } = Setup::connect(
        ctx,
        args.connections,
        args.messages,
        (0..args.subscribers).map(|i| topic_name(i % args.topics)),
        args.subscribe_mode,
        args.settle,
    )
    .await?;

    let clock = Clock::start();
    let delivery_latency = Latencies::default();
    let request_latency = Latencies::default();
    let unique = Arc::new(AtomicU64::new(0));
    let stop_receiving = CancellationToken::new();
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

    let expected_planned = planned.iter().sum::<u64>() * deliveries_per_message(&args);
    let bar = ctx.progress(expected_planned, "deliveries");
    let stop_publishing = CancellationToken::new();
    let args = Arc::new(args);
    let mut senders = JoinSet::new();
    for (j, client) in clients.into_iter().enumerate() {
        senders.spawn(publish(
            client,
            j,
            Arc::clone(&args),
            planned[j],
            run_id,
            clock,
            request_latency.buffer(),
            stop_publishing.clone(),
        ));
    }
    let publish_start = clock.nanos();
    let mut outcomes = vec![Outcome::default(); args.connections];
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

    let published: u64 = outcomes.iter().map(|o| o.published).sum();
    let refused: u64 = outcomes.iter().map(|o| o.refused).sum();
    let requests: u64 = outcomes.iter().map(|o| o.requests).sum();
    let expected = published * deliveries_per_message(&args);
    bar.set_length(expected);
    let drain_limit = args.drain_timeout.min(ctx.common.duration_limit);
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
    while let Some(done) = receivers.join_next().await {
        let result = done?;
        counts.add(&result.counts);
        last_receive = last_receive.max(result.last_receive_nanos);
    }

    let mut report = Report::new("http");
    report.add("connections", args.connections);
    report.add("messages_per_request", args.batch);
    report.add("subscribers", args.subscribers);
    report.add("topics", args.topics);
    report.add("message_bytes", args.size.max(STAMP_LEN));
    report.add("requests", requests);
    report.add("published", published);
    report.add("refused", refused);
    report.add("publish_truncated_by_limit", truncated);
    report.add(
        "published_per_s",
        per_second(published, publish_end - publish_start),
    );
    report.add(
        "requests_per_s",
        per_second(requests, publish_end - publish_start),
    );
    report.add("request_latency", request_latency.summary());
    report.add("expected", expected);
    report.add("delivered", counts.unique);
    report.add("lost", expected.saturating_sub(counts.unique));
    report.add("duplicates", counts.duplicates);
    report.add("reordered", counts.reordered);
    report.add("foreign", counts.foreign);
    report.add("drained", drained);
    report.add(
        "delivered_per_s",
        per_second(counts.unique, last_receive.saturating_sub(publish_start)),
    );
    report.add("latency", delivery_latency.summary());
    Ok(report)
}

/// Each message goes to topic `seq % topics` and subscriber `i` takes topic `i % topics`; the subscribers divide
/// evenly over the topics (checked), so every message reaches `subscribers / topics` of them.
fn deliveries_per_message(args: &HttpArgs) -> u64 {
    (args.subscribers / args.topics) as u64
}

/// Sends `count` messages as connection `j`, `--batch` per request, one request at a time.
#[allow(clippy::too_many_arguments)]
async fn publish(
    mut client: ApiClient,
    j: usize,
    args: Arc<HttpArgs>,
    count: u64,
    run: u32,
    clock: Clock,
    mut latency: LatencyBuffer,
    stop: CancellationToken,
) -> anyhow::Result<(usize, Outcome)> {
    let path = if args.batch == 1 {
        PUBLISH_API_PATH
    } else {
        PUBLISH_BATCH_API_PATH
    };
    let sender = u32::try_from(j).map_err(|_| anyhow!("too many connections"))?;
    let mut outcome = Outcome::default();
    let mut sent = 0u64;
    while sent < count && !stop.is_cancelled() {
        let n = (count - sent).min(args.batch as u64);
        let start = clock.nanos();
        let body = encode_request(&args, run, sender, sent, n, start);
        let reply = tokio::select! {
            reply = client.post_json(path, &[], body) => reply.context("HTTP publish")?,
            () = stop.cancelled() => break,
        };
        latency.record(clock.nanos().saturating_sub(start));
        outcome.requests += 1;
        if reply.status != 200 {
            tracing::warn!(status = %reply.status, body = %String::from_utf8_lossy(&reply.body), "request refused");
            outcome.refused += n;
        } else if args.batch == 1 {
            outcome.published += 1;
        } else {
            let json = reply.json();
            let results = json["results"]
                .as_array()
                .ok_or_else(|| anyhow!("a batch answer without results"))?;
            let ok = results.iter().filter(|r| r.get("id").is_some()).count() as u64;
            outcome.published += ok;
            outcome.refused += n - ok;
        }
        sent += n;
    }
    Ok((j, outcome))
}

/// The JSON body of one request: messages `first..first + n` of `sender`, each carrying its stamp.
fn encode_request(args: &HttpArgs, run: u32, sender: u32, first: u64, n: u64, now: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(n as usize * (args.size.max(STAMP_LEN) + 48) + 16);
    if args.batch > 1 {
        body.extend_from_slice(b"{\"messages\":[");
    }
    for seq in first..first + n {
        if seq > first {
            body.push(b',');
        }
        let stamp = Stamp {
            run,
            sender,
            seq,
            sent_nanos: now,
        };
        body.extend_from_slice(b"{\"topic\":\"");
        body.extend_from_slice(topic_name((seq % args.topics as u64) as usize).as_bytes());
        body.extend_from_slice(b"\",\"content\":\"");
        stamp.encode_into(args.size, &mut body);
        body.extend_from_slice(b"\"}");
    }
    if args.batch > 1 {
        body.extend_from_slice(b"]}");
    }
    body
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: HttpArgs,
    }

    #[test]
    fn batch_bodies_are_api_json_whose_contents_carry_the_stamps() {
        let args = Flags::parse_from(["x", "--batch", "3", "-t", "2"]).args;
        let body = encode_request(&args, 7, 1, 10, 3, 99);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let messages = json["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        for (k, message) in messages.iter().enumerate() {
            let seq = 10 + k as u64;
            assert_eq!(message["topic"], topic_name((seq % 2) as usize));
            let content = message["content"].as_str().unwrap();
            assert_eq!(content.len(), 64);
            let stamp = Stamp::decode(content.as_bytes()).unwrap();
            assert_eq!((stamp.run, stamp.sender, stamp.seq), (7, 1, seq));
        }
        let single = Flags::parse_from(["x", "--batch", "1"]).args;
        let body = encode_request(&single, 7, 0, 0, 1, 99);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["topic"], "bench-0");
    }
}
