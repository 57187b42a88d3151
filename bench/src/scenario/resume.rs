//! `resume`: many clients drop at once and come back together, each resuming its topic from its last offset
//! (`sub <topic> since=<offset> epoch=<epoch>`) after messages were published while they were away. Reports the
//! time until every client has recovered everything it missed, and checks that each got exactly the missed
//! messages, in order, none twice, with `recovered: true`.

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::history::Position;
use wsmq_core::protocol::{PUBLISH_PATH, SUBPROTOCOL_V1, SUBSCRIBE_PATH};

use super::{Ctx, open_many};
use crate::cli::ResumeArgs;
use crate::client::{Connector, Target, Ws, source_ip};
use crate::payload::Clock;
use crate::report::{Report, per_second};

/// Runs `resume`.
pub async fn run(ctx: &Ctx, args: ResumeArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.topics > 0 && args.clients > 0,
        "--topics and --clients must be at least 1"
    );
    ctx.check_connections(args.clients + 1)?;
    let connector = Connector::new(&ctx.common, true)?;
    let subscriber = connector
        .target(&ctx.common.subscriber_url, SUBSCRIBE_PATH)
        .await?;
    let publisher = connector
        .target(&ctx.common.publisher_url, PUBLISH_PATH)
        .await?;
    let run_id = std::process::id();
    let topic = move |i: usize| format!("bench-resume-{run_id}-{}", i % args.topics);

    // Every client subscribes once and learns where its topic is (the confirmation's epoch and offset).
    let bar = ctx.progress(args.clients as u64, "subscribing");
    let subscribing = Clock::start();
    let first = ctx
        .phase(
            "subscribe",
            open_many(ctx, args.clients, &bar, |i| {
                let (connector, target) = (connector.clone(), subscriber.clone());
                let source = source_ip(i, args.source_ips, &subscriber);
                let topic = topic(i);
                async move {
                    let mut ws = connect(&connector, &target, source).await?;
                    let (position, _) = resume(&mut ws, &topic, None).await?;
                    Ok((ws, position))
                }
            }),
        )
        .await??;
    bar.finish_and_clear();
    let first_nanos = subscribing.nanos();
    let positions: Vec<Position> = first.iter().map(|(_, p)| *p).collect();
    // All of them drop.
    for (mut ws, _) in first {
        let _ = ws.close(None).await;
    }

    // Messages are published while they are away.
    let mut ws = connector
        .connect(&publisher, Some(SUBPROTOCOL_V1), None)
        .await?
        .0;
    let total = args.topics as u64 * args.missed;
    ctx.phase("publish", async {
        let mut id = 0u64;
        for n in 0..args.missed {
            for t in 0..args.topics {
                let frame = serde_json::json!({
                    "Topic": topic(t),
                    "Content": format!("m{n}"),
                    "Id": id,
                });
                ws.feed(Message::text(frame.to_string())).await?;
                id += 1;
            }
        }
        ws.flush().await?;
        let mut acked = 0;
        while acked < total {
            let frame = ws
                .next()
                .await
                .ok_or_else(|| anyhow!("publisher closed"))??;
            if let Message::Text(text) = frame {
                match ServerFrame::parse(text.as_str()) {
                    Some(ServerFrame::Ack { .. }) => acked += 1,
                    Some(ServerFrame::Error { message, .. }) => bail!("publish refused: {message}"),
                    _ => {}
                }
            }
        }
        anyhow::Ok(())
    })
    .await??;

    // They all come back at once (as fast as --connect-concurrency lets them) and resume.
    let bar = ctx.progress(args.clients as u64, "resuming");
    let clock = Clock::start();
    let mut tasks = JoinSet::new();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(
        ctx.common.connect_concurrency.max(1),
    ));
    for (i, position) in positions.into_iter().enumerate() {
        let (connector, target) = (connector.clone(), subscriber.clone());
        let source = source_ip(i, args.source_ips, &subscriber);
        let topic = topic(i);
        let missed = args.missed;
        let permits = std::sync::Arc::clone(&permits);
        tasks.spawn(async move {
            let permit = permits.acquire_owned().await?;
            let mut ws = connect(&connector, &target, source).await?;
            drop(permit);
            let (_, recovered) = resume(&mut ws, &topic, Some(position)).await?;
            let got = read_positions(&mut ws, missed).await?;
            let expected: Vec<u64> = (position.offset + 1..=position.offset + missed).collect();
            let exact = recovered && got == expected;
            let _ = ws.close(None).await;
            anyhow::Ok((clock.nanos(), exact))
        });
    }
    let (mut slowest, mut exact) = (0u64, 0usize);
    ctx.phase("recover", async {
        while let Some(done) = tasks.join_next().await {
            let (nanos, ok) = done.context("a resuming client failed")??;
            slowest = slowest.max(nanos);
            exact += usize::from(ok);
            bar.inc(1);
        }
        anyhow::Ok(())
    })
    .await??;
    bar.finish_and_clear();

    let mut report = Report::new("resume");
    report.add("clients", args.clients);
    report.add("topics", args.topics);
    report.add("missed_per_topic", args.missed);
    report.add("clients_recovered_exactly", exact);
    report.add("all_recovered_secs", slowest as f64 / 1e9);
    // The same connections and subscriptions with nothing to recover: what the reconnects alone cost.
    report.add("first_connect_secs", first_nanos as f64 / 1e9);
    report.add(
        "recovered_messages_per_s",
        per_second(args.clients as u64 * args.missed, slowest),
    );
    if exact != args.clients {
        bail!(
            "{} of {} clients did not recover exactly what they missed",
            args.clients - exact,
            args.clients
        );
    }
    Ok(report)
}

async fn connect(
    connector: &Connector,
    target: &Target,
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<Ws> {
    let (ws, selected) = connector
        .connect(target, Some(SUBPROTOCOL_V1), source)
        .await?;
    anyhow::ensure!(
        selected.as_deref() == Some(SUBPROTOCOL_V1),
        "the subscriber does not speak wsmq.v1"
    );
    Ok(ws)
}

/// Subscribes to `topic` from `since` (`None`: from offset 0) and returns the topic's position from the
/// confirmation and whether it said `recovered`.
async fn resume(
    ws: &mut Ws,
    topic: &str,
    since: Option<Position>,
) -> anyhow::Result<(Position, bool)> {
    let command = match since {
        Some(p) => format!("sub {topic} since={} epoch={}", p.offset, p.epoch),
        None => format!("sub {topic} since=0"),
    };
    ws.send(Message::text(command)).await?;
    loop {
        let frame = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("subscriber closed before confirming {topic}"))??;
        let Message::Text(text) = frame else { continue };
        match ServerFrame::parse(text.as_str()) {
            Some(ServerFrame::Resumed {
                epoch,
                offset,
                recovered,
                ..
            }) => return Ok((Position { epoch, offset }, recovered)),
            Some(ServerFrame::Error { message, .. }) => bail!("resuming {topic} failed: {message}"),
            _ => {}
        }
    }
}

/// The offsets of the next `n` messages.
async fn read_positions(ws: &mut Ws, n: u64) -> anyhow::Result<Vec<u64>> {
    let mut got = Vec::with_capacity(n as usize);
    while (got.len() as u64) < n {
        let frame = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("subscriber closed during the recovery"))??;
        let Message::Text(text) = frame else { continue };
        if let Some(ServerFrame::Message {
            position: Some(position),
            ..
        }) = ServerFrame::parse(text.as_str())
        {
            got.push(position.offset);
        }
    }
    Ok(got)
}
