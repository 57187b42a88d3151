//! `scheduled`: many messages scheduled for the same second. HTTP connections publish `--messages` messages to
//! `/v1/publish/batch`, each with `deliver_at` set to one whole second at least `--lead` ahead (so all are stored
//! before it falls due), and subscribers count the deliveries as in `e2e`. Reports how long after the due time the
//! first and the last message arrived (the stamp carries the due time, so the latency summary is each message's
//! lateness), plus loss and duplicates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wsmq_core::api_client::ApiClient;
use wsmq_core::protocol::PUBLISH_BATCH_API_PATH;

use super::e2e::{receive, topic_name};
use super::http::Setup;
use super::{Ctx, Subscriber};
use crate::cli::ScheduledArgs;
use crate::payload::{Clock, Counts, STAMP_LEN, Stamp, Tracker};
use crate::report::{Latencies, Report};

/// How often the drain phase checks whether everything arrived.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// Runs `scheduled`.
pub async fn run(ctx: &Ctx, args: ScheduledArgs) -> anyhow::Result<Report> {
    if args.connections == 0 || args.subscribers == 0 || args.batch == 0 {
        bail!("need at least one connection, subscriber and message per request");
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
        (0..args.subscribers).map(|_| topic_name(0)),
        args.subscribe_mode,
        args.settle,
    )
    .await?;

    // The due time: a whole second at least --lead ahead, on the wall clock (what msgqueue compares with) and on
    // the bench's monotonic clock (what deliveries are timed with).
    let clock = Clock::start();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let due_wall = Duration::from_secs((now + args.lead).as_secs() + 1);
    let due_nanos = clock.nanos() + u64::try_from((due_wall - now).as_nanos())?;
    let deliver_at = humantime::format_rfc3339(UNIX_EPOCH + due_wall).to_string();

    let lateness = Latencies::default();
    let unique = Arc::new(AtomicU64::new(0));
    let stop_receiving = CancellationToken::new();
    let mut receivers = JoinSet::new();
    for Subscriber { ws, .. } in subscribers {
        receivers.spawn(receive(
            ws,
            Tracker::new(run_id, &planned),
            lateness.buffer(),
            clock,
            Arc::clone(&unique),
            stop_receiving.clone(),
        ));
    }

    let args = Arc::new(args);
    let deliver_at: Arc<str> = deliver_at.into();
    let stop_publishing = CancellationToken::new();
    let mut senders = JoinSet::new();
    for (j, client) in clients.into_iter().enumerate() {
        senders.spawn(publish(
            client,
            j,
            Arc::clone(&args),
            planned[j],
            run_id,
            Arc::clone(&deliver_at),
            due_nanos,
            stop_publishing.clone(),
        ));
    }
    let mut published = 0;
    let truncated = ctx
        .join_within(
            "scheduling",
            &mut senders,
            &stop_publishing,
            || {},
            |n| published += n,
        )
        .await?;
    let scheduled_in = clock.nanos();
    if scheduled_in > due_nanos {
        tracing::warn!(
            "scheduling took past the due time; raise --lead (the figures then include the backlog)"
        );
    }
    let early = unique.load(Ordering::Relaxed);

    let expected = published * args.subscribers as u64;
    let drain_limit = (Duration::from_nanos(due_nanos.saturating_sub(clock.nanos()))
        + args.drain_timeout)
        .min(ctx.common.duration_limit);
    let drain = async {
        while unique.load(Ordering::Relaxed) < expected {
            tokio::time::sleep(DRAIN_TICK).await;
        }
    };
    let drained = tokio::time::timeout(drain_limit, drain).await.is_ok();
    stop_receiving.cancel();
    let mut counts = Counts::default();
    let mut last_receive = 0;
    while let Some(done) = receivers.join_next().await {
        let result = done?;
        counts.add(&result.counts);
        last_receive = last_receive.max(result.last_receive_nanos);
    }

    let mut report = Report::new("scheduled");
    report.add("connections", args.connections);
    report.add("messages_per_request", args.batch);
    report.add("subscribers", args.subscribers);
    report.add("message_bytes", args.size.max(STAMP_LEN));
    report.add("scheduled", published);
    report.add("scheduling_truncated_by_limit", truncated);
    report.add(
        "scheduling_s",
        Duration::from_nanos(scheduled_in).as_secs_f64(),
    );
    report.add("deliver_at", &*deliver_at);
    report.add("delivered_before_due", early);
    report.add("expected", expected);
    report.add("delivered", counts.unique);
    report.add("lost", expected.saturating_sub(counts.unique));
    report.add("duplicates", counts.duplicates);
    report.add("drained", drained);
    report.add(
        "all_delivered_after_due_s",
        Duration::from_nanos(last_receive.saturating_sub(due_nanos)).as_secs_f64(),
    );
    report.add("lateness", lateness.summary());
    Ok(report)
}

/// Schedules `count` messages as connection `j`, `--batch` per request; returns how many were accepted.
#[allow(clippy::too_many_arguments)]
async fn publish(
    mut client: ApiClient,
    j: usize,
    args: Arc<ScheduledArgs>,
    count: u64,
    run: u32,
    deliver_at: Arc<str>,
    due_nanos: u64,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let sender = u32::try_from(j).map_err(|_| anyhow!("too many connections"))?;
    let mut accepted = 0;
    let mut sent = 0u64;
    while sent < count && !stop.is_cancelled() {
        let n = (count - sent).min(args.batch as u64);
        let body = encode_request(&args, run, sender, sent, n, &deliver_at, due_nanos);
        let reply = tokio::select! {
            reply = client.post_json(PUBLISH_BATCH_API_PATH, &[], body) => reply.context("HTTP publish")?,
            () = stop.cancelled() => break,
        };
        if reply.status == 200 {
            let json = reply.json();
            let results = json["results"]
                .as_array()
                .ok_or_else(|| anyhow!("a batch answer without results"))?;
            accepted += results.iter().filter(|r| r.get("id").is_some()).count() as u64;
        } else {
            tracing::warn!(status = %reply.status, body = %String::from_utf8_lossy(&reply.body), "request refused");
        }
        sent += n;
    }
    Ok(accepted)
}

/// One batch request: messages `first..first + n` of `sender` for `deliver_at`, each stamped with the due time.
fn encode_request(
    args: &ScheduledArgs,
    run: u32,
    sender: u32,
    first: u64,
    n: u64,
    deliver_at: &str,
    due_nanos: u64,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(n as usize * (args.size.max(STAMP_LEN) + 96) + 16);
    body.extend_from_slice(b"{\"messages\":[");
    for seq in first..first + n {
        if seq > first {
            body.push(b',');
        }
        let stamp = Stamp {
            run,
            sender,
            seq,
            sent_nanos: due_nanos,
        };
        body.extend_from_slice(b"{\"topic\":\"");
        body.extend_from_slice(topic_name(0).as_bytes());
        body.extend_from_slice(b"\",\"deliver_at\":\"");
        body.extend_from_slice(deliver_at.as_bytes());
        body.extend_from_slice(b"\",\"content\":\"");
        stamp.encode_into(args.size, &mut body);
        body.extend_from_slice(b"\"}");
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: ScheduledArgs,
    }

    #[test]
    fn requests_schedule_every_message_for_the_same_time_stamped_with_it() {
        let args = Flags::parse_from(["x"]).args;
        let body = encode_request(&args, 7, 1, 10, 3, "2030-01-02T15:04:05Z", 99);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let messages = json["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        for (k, message) in messages.iter().enumerate() {
            assert_eq!(message["deliver_at"], "2030-01-02T15:04:05Z");
            let stamp = Stamp::decode(message["content"].as_str().unwrap().as_bytes()).unwrap();
            assert_eq!((stamp.seq, stamp.sent_nanos), (10 + k as u64, 99));
        }
    }
}
