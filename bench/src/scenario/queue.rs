//! `queue`: msgqueue alone in reliable mode. Pushers pipeline PUSH records (a window of unacked pushes, many
//! records per frame) and time each push until its ACKED; poppers grant credit, ack every delivery and time
//! each message from push to delivery. The fsync policy is whatever the server runs with.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::queue::{FrameReader, FrameWriter, PopRecord, PushRecord, PushReply};
use wsmq_core::protocol::{POP_PATH, PUSH_PATH, SUBPROTOCOL_V1};

use super::{Ctx, open_many};
use crate::cli::QueueArgs;
use crate::client::{Connector, Target, Ws};
use crate::payload::{Arrival, Clock, Counts, STAMP_LEN, Stamp, Tracker};
use crate::report::{Latencies, LatencyBuffer, Report, per_second};

/// Most bytes of records in one pushed frame, well under msgqueue's default 64 KiB message limit.
const MAX_FRAME_BYTES: usize = 48 * 1024;
/// Bytes a PUSH record adds to its payload (kind, seq, len).
const PUSH_OVERHEAD: usize = 1 + 8 + 4;
/// How often the drain phase checks whether everything arrived.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// Runs `queue`.
pub async fn run(ctx: &Ctx, args: QueueArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.pushers > 0 && args.poppers > 0,
        "need at least one pusher and one popper"
    );
    anyhow::ensure!(
        args.window > 0 && args.batch > 0 && args.credit > 0,
        "--window, --batch and --credit must be positive"
    );
    ctx.check_connections(args.pushers + args.poppers)?;
    let connector = Connector::new(&ctx.common, false)?;
    let push_target = connector.target(&ctx.common.queue_url, PUSH_PATH).await?;
    let pop_target = connector.target(&ctx.common.queue_url, POP_PATH).await?;
    let run_id: u32 = rand::random();
    let p = args.pushers as u64;
    let planned: Vec<u64> = (0..p)
        .map(|j| args.messages / p + u64::from(j < args.messages % p))
        .collect();

    let bar = ctx.progress((args.pushers + args.poppers) as u64, "connecting");
    let poppers = ctx
        .phase(
            "connect poppers",
            open_many(ctx, args.poppers, &bar, |_| {
                open_reliable(connector.clone(), pop_target.clone(), {
                    let mut w = FrameWriter::default();
                    w.pop_record(PopRecord::Credit { n: args.credit });
                    w
                })
            }),
        )
        .await??;
    let pushers = ctx
        .phase(
            "connect pushers",
            open_many(ctx, args.pushers, &bar, |_| {
                open_reliable(connector.clone(), push_target.clone(), {
                    let mut w = FrameWriter::default();
                    w.push_record(&PushRecord::Hello {
                        producer: rand::random(),
                    });
                    w
                })
            }),
        )
        .await??;
    bar.finish_and_clear();

    let clock = Clock::start();
    let ack_latency = Latencies::default();
    let deliver_latency = Latencies::default();
    let unique = Arc::new(AtomicU64::new(0));
    let stop_popping = CancellationToken::new();
    let mut pops = JoinSet::new();
    for ws in poppers {
        pops.spawn(pop(
            ws,
            Tracker::new(run_id, &planned),
            deliver_latency.buffer(),
            clock,
            Arc::clone(&unique),
            stop_popping.clone(),
        ));
    }

    let bar = ctx.progress(args.messages, "acked pushes");
    let stop_pushing = CancellationToken::new();
    let acked_total = Arc::new(AtomicU64::new(0));
    let mut pushes = JoinSet::new();
    for (j, ws) in pushers.into_iter().enumerate() {
        pushes.spawn(push(
            ws,
            Pusher {
                index: u32::try_from(j).unwrap_or(u32::MAX),
                count: planned[j],
                run: run_id,
                size: args.size,
                window: args.window,
                batch: args.batch,
            },
            clock,
            ack_latency.buffer(),
            Arc::clone(&acked_total),
            stop_pushing.clone(),
        ));
    }
    let mut outcomes = Vec::with_capacity(args.pushers);
    let truncated = ctx
        .join_within(
            "pushing",
            &mut pushes,
            &stop_pushing,
            || bar.set_position(acked_total.load(Ordering::Relaxed)),
            |outcome| outcomes.push(outcome),
        )
        .await?;
    bar.finish_and_clear();

    let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let rejected: u64 = outcomes.iter().map(|o| o.rejected).sum();
    let last_ack = outcomes.iter().map(|o| o.last_ack_nanos).max().unwrap_or(0);
    let drain_limit = args.drain_timeout.min(ctx.common.duration_limit);
    let drained = tokio::time::timeout(drain_limit, async {
        while unique.load(Ordering::Relaxed) < acked {
            tokio::time::sleep(DRAIN_TICK).await;
        }
    })
    .await
    .is_ok();
    stop_popping.cancel();
    let mut counts = Counts::default();
    let mut redelivered = 0;
    let mut last_delivery = 0;
    while let Some(done) = pops.join_next().await {
        let popped = done??;
        counts.add(&popped.counts);
        redelivered += popped.redelivered;
        last_delivery = last_delivery.max(popped.last_delivery_nanos);
    }

    let mut report = Report::new("queue");
    report.add("pushers", args.pushers);
    report.add("poppers", args.poppers);
    report.add("message_bytes", args.size.max(STAMP_LEN));
    report.add("window", args.window);
    report.add("batch", args.batch);
    report.add("credit", args.credit);
    report.add("pushed", sent);
    report.add("acked", acked);
    report.add("rejected", rejected);
    report.add("push_truncated_by_limit", truncated);
    report.add("acked_pushes_per_s", per_second(acked, last_ack));
    report.add("ack_latency", ack_latency.summary());
    report.add("delivered", counts.unique);
    report.add("lost", acked.saturating_sub(counts.unique));
    report.add("duplicates", counts.duplicates);
    report.add("redelivered", redelivered);
    report.add("reordered", counts.reordered);
    report.add("foreign", counts.foreign);
    report.add("drained", drained);
    report.add("delivered_per_s", per_second(counts.unique, last_delivery));
    report.add("deliver_latency", deliver_latency.summary());
    Ok(report)
}

/// Connects in reliable mode and sends the opening records (HELLO or CREDIT).
async fn open_reliable(
    connector: Connector,
    target: Target,
    mut opening: FrameWriter,
) -> anyhow::Result<Ws> {
    let (mut ws, selected) = connector
        .connect(&target, Some(SUBPROTOCOL_V1), None)
        .await?;
    if selected.as_deref() != Some(SUBPROTOCOL_V1) {
        bail!(
            "{} does not speak {SUBPROTOCOL_V1}: the queue scenario needs reliable mode",
            target.url()
        );
    }
    ws.send(Message::Binary(opening.take())).await?;
    Ok(ws)
}

/// What one pusher is asked to do.
#[derive(Debug, Clone, Copy)]
struct Pusher {
    index: u32,
    count: u64,
    run: u32,
    size: usize,
    window: usize,
    batch: usize,
}

/// What one pusher achieved.
#[derive(Debug, Clone, Copy, Default)]
struct PushOutcome {
    sent: u64,
    acked: u64,
    rejected: u64,
    last_ack_nanos: u64,
}

/// Pushes `count` stamped messages with at most `window` unacked, packing up to `batch` records per frame.
/// Wire sequence numbers are the stamp's sequence + 1.
async fn push(
    ws: Ws,
    job: Pusher,
    clock: Clock,
    latency: LatencyBuffer,
    acked_total: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<PushOutcome> {
    let (mut sink, stream) = ws.split();
    let window = Arc::new(Semaphore::new(job.window));
    let sent_at: Arc<[AtomicU64]> = (0..job.window).map(|_| AtomicU64::new(0)).collect();
    let reader = tokio::spawn(read_acks(
        stream,
        job.count,
        Arc::clone(&window),
        Arc::clone(&sent_at),
        clock,
        latency,
        acked_total,
        stop.clone(),
    ));
    let per_frame = job
        .batch
        .min(MAX_FRAME_BYTES / (PUSH_OVERHEAD + job.size.max(STAMP_LEN)))
        .max(1);
    let mut writer = FrameWriter::with_capacity(MAX_FRAME_BYTES);
    let mut payload = Vec::with_capacity(job.size.max(STAMP_LEN));
    let mut sent = 0u64;
    while sent < job.count {
        let first = tokio::select! {
            permit = window.acquire() => permit?,
            () = stop.cancelled() => break,
        };
        first.forget();
        let mut n = 1u64;
        let more = (job.count - sent - 1).min(per_frame as u64 - 1);
        while n <= more && window.try_acquire().map(|p| p.forget()).is_ok() {
            n += 1;
        }
        for _ in 0..n {
            let now = clock.nanos();
            payload.clear();
            Stamp {
                run: job.run,
                sender: job.index,
                seq: sent,
                sent_nanos: now,
            }
            .encode_into(job.size, &mut payload);
            sent_at[(sent % job.window as u64) as usize].store(now, Ordering::Release);
            writer.push(sent + 1, &payload);
            sent += 1;
        }
        sink.send(Message::Binary(writer.take()))
            .await
            .context("pushing")?;
    }
    let (acked, rejected, last_ack_nanos) = reader.await??;
    let _ = sink.close().await;
    Ok(PushOutcome {
        sent,
        acked,
        rejected,
        last_ack_nanos,
    })
}

/// Reads ACKED/REJECT until all `count` pushes are settled or `stop`; frees window slots and times each ack.
/// Returns (acked, rejected, time of the last ack).
#[allow(clippy::too_many_arguments)]
async fn read_acks(
    mut stream: SplitStream<Ws>,
    count: u64,
    window: Arc<Semaphore>,
    sent_at: Arc<[AtomicU64]>,
    clock: Clock,
    mut latency: LatencyBuffer,
    acked_total: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut acked, mut rejected, mut last_ack) = (0u64, 0u64, 0u64);
    let mut next = 1u64;
    let mut rejected_seqs = HashSet::new();
    while acked + rejected < count {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = stop.cancelled() => break,
        };
        let frame = match frame {
            Some(frame) => frame.context("reading acks")?,
            None => bail!(
                "msgqueue closed the push connection with {} pushes unsettled",
                count - acked - rejected
            ),
        };
        let Message::Binary(frame) = frame else {
            continue;
        };
        let now = clock.nanos();
        let mut reader = FrameReader::new(frame, 0);
        while let Some(reply) = reader
            .next_push_reply()
            .map_err(|e| anyhow!("bad reply from msgqueue: {e}"))?
        {
            match reply {
                PushReply::Acked { upto } => {
                    let mut freed = 0;
                    while next <= upto {
                        if !rejected_seqs.remove(&next) {
                            let at = sent_at[((next - 1) % sent_at.len() as u64) as usize]
                                .load(Ordering::Acquire);
                            latency.record(now.saturating_sub(at));
                            acked += 1;
                            freed += 1;
                        }
                        next += 1;
                    }
                    window.add_permits(freed);
                    acked_total.fetch_add(freed as u64, Ordering::Relaxed);
                    last_ack = now;
                }
                // The bench sends plain PUSH records, which get no PLACED.
                PushReply::Placed { .. } => {}
                PushReply::Reject { seq, reason } => {
                    tracing::debug!(seq, reason = reason.as_str(), "push rejected");
                    rejected_seqs.insert(seq);
                    rejected += 1;
                    window.add_permits(1);
                }
            }
        }
    }
    Ok((acked, rejected, last_ack))
}

/// What one popper saw.
struct Popped {
    counts: Counts,
    redelivered: u64,
    last_delivery_nanos: u64,
}

/// Reads deliveries until `stop`, acking each frame's deliveries in one frame and timing each from its push.
async fn pop(
    mut ws: Ws,
    mut tracker: Tracker,
    mut latency: LatencyBuffer,
    clock: Clock,
    unique: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<Popped> {
    let mut acks = FrameWriter::default();
    let (mut redelivered, mut last_delivery_nanos) = (0u64, 0u64);
    loop {
        let frame = tokio::select! {
            biased;
            frame = ws.next() => frame,
            () = stop.cancelled() => break,
        };
        let frame = match frame {
            Some(frame) => frame.context("reading deliveries")?,
            None => break,
        };
        let Message::Binary(frame) = frame else {
            continue;
        };
        let now = clock.nanos();
        let mut reader = FrameReader::new(frame, usize::MAX);
        while let Some(delivery) = reader
            .next_delivery()
            .map_err(|e| anyhow!("bad delivery frame: {e}"))?
        {
            acks.pop_record(PopRecord::Ack { id: delivery.id });
            redelivered += u64::from(delivery.redelivered);
            match Stamp::decode(&delivery.payload) {
                Ok(stamp) => {
                    if matches!(tracker.record(&stamp), Arrival::New | Arrival::Reordered) {
                        unique.fetch_add(1, Ordering::Relaxed);
                        latency.record(now.saturating_sub(stamp.sent_nanos));
                        last_delivery_nanos = now;
                    }
                }
                Err(_) => tracker.record_unstamped(),
            }
        }
        if !acks.is_empty() {
            ws.send(Message::Binary(acks.take()))
                .await
                .context("acking")?;
        }
    }
    let _ = ws.close(None).await;
    Ok(Popped {
        counts: tracker.counts(),
        redelivered,
        last_delivery_nanos,
    })
}
