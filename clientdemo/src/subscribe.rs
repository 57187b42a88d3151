//! `clientdemo subscribe`: prints every message on the given topics as one JSON object per line, for scripts
//! (`jq`, `head`, tests), with its offset and epoch when the topic keeps history. `--since` resumes from a position
//! (`--since 0`: the whole retained history); after a reconnect every exact topic resumes after the last message
//! printed. Status goes to stderr so stdout holds messages only. `clientdemo history` prints a topic's newest
//! retained messages the same way.

#![allow(
    clippy::print_stderr,
    reason = "status and errors go to stderr so stdout carries only messages"
)]

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::envelope::validate_topic;
use wsmq_core::protocol::history::{Epoch, MAX_HISTORY_PAGE, Position};

use crate::cli::Dialers;
use crate::link::{self, Event, SubscriberClient, Subscription};

/// One output line: ws-go's field names, plus the message's place in its topic as the subscriber sends it.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "Topic")]
    topic: &'a str,
    #[serde(rename = "Content")]
    content: &'a str,
    #[serde(rename = "Offset", skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(rename = "Epoch", skip_serializing_if = "Option::is_none")]
    epoch: Option<Epoch>,
}

/// Where `--since`/`--epoch` say to resume from; `None` without `--since`. Fails when a nonzero offset comes
/// without its epoch, or a topic cannot be resumed (a pattern).
pub(crate) fn start_position(
    topics: &[String],
    since: Option<u64>,
    epoch: Option<Epoch>,
) -> anyhow::Result<Option<Position>> {
    let position = match (since, epoch) {
        (None, _) => return Ok(None),
        (Some(0), epoch) => Position {
            epoch: epoch.unwrap_or(Epoch(0)),
            offset: 0,
        },
        (Some(offset), Some(epoch)) => Position { epoch, offset },
        (Some(_), None) => anyhow::bail!(
            "--since needs the --epoch of its offset (only --since 0, the whole retained history, goes alone)"
        ),
    };
    if let Some(topic) = topics.iter().find(|topic| !link::resumable(topic)) {
        anyhow::bail!("--since needs exact topics; {topic:?} is not one (a pattern?)");
    }
    Ok(Some(position))
}

/// Subscribes to `topics` (resuming after `since` when given) and prints messages until `count` messages were
/// printed, Ctrl-C, or stdout closes.
///
/// Reconnects when the subscriber restarts and resumes each exact topic after the last message printed. Fails
/// on an invalid topic or `--since`, or a permanent connection error (credentials, certificate, URL).
pub(crate) async fn run(
    dialers: &Dialers,
    topics: Vec<String>,
    since: Option<Position>,
    count: Option<u64>,
) -> anyhow::Result<ExitCode> {
    for topic in &topics {
        validate_topic(topic).with_context(|| format!("invalid topic {topic:?}"))?;
    }
    if count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let first = link::first_dial::<SubscriberClient>(&dialers.subscriber)
        .await
        .context("connecting to the subscriber")?;
    let (commands_tx, commands_rx) = mpsc::channel(link::COMMAND_QUEUE_CAPACITY);
    let (events_tx, mut events) = mpsc::channel(link::EVENT_QUEUE_CAPACITY);
    let link = tokio::spawn(link::run(
        SubscriberClient::new(topics, since),
        dialers.subscriber.clone(),
        first,
        commands_rx,
        events_tx,
        CancellationToken::new(),
    ));

    // Dropping the command sender is how the link learns to close the connection and end.
    let mut commands = Some(commands_tx);
    let mut printed: u64 = 0;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Message { topic, content, position }) => {
                    if commands.is_none() {
                        continue;
                    }
                    if print_line(&topic, &content, position).is_err() {
                        commands = None;
                        continue;
                    }
                    printed += 1;
                    if count == Some(printed) {
                        commands = None;
                    }
                }
                Some(event) => report(event),
                None => break,
            },
            _ = &mut ctrl_c, if commands.is_some() => commands = None,
        }
    }
    let _ = link.await;
    Ok(ExitCode::SUCCESS)
}

/// Prints the newest `limit` retained messages of `topic` as JSON lines, oldest first; fails when the subscriber
/// refuses the request or does not answer within `timeout`.
pub(crate) async fn history(
    dialers: &Dialers,
    topic: String,
    limit: usize,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if !link::resumable(&topic) {
        anyhow::bail!("history needs one exact topic, not {topic:?}");
    }
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        anyhow::bail!("--limit must be 1 to {MAX_HISTORY_PAGE}");
    }
    let first = link::first_dial::<SubscriberClient>(&dialers.subscriber)
        .await
        .context("connecting to the subscriber")?;
    let (commands, commands_rx) = mpsc::channel(1);
    let (events_tx, mut events) = mpsc::channel(link::EVENT_QUEUE_CAPACITY);
    let stop = CancellationToken::new();
    let link = tokio::spawn(link::run(
        SubscriberClient::default(),
        dialers.subscriber.clone(),
        first,
        commands_rx,
        events_tx,
        stop.clone(),
    ));
    // The link ends once the request is answered, as nothing else is outstanding and its input is closed.
    commands
        .send(Subscription::History {
            topic: topic.clone(),
            limit,
        })
        .await
        .context("the subscriber link ended")?;
    drop(commands);
    let mut answered = false;
    let wait = async {
        while let Some(event) = events.recv().await {
            match event {
                Event::History {
                    topic,
                    messages,
                    latest,
                    ..
                } => {
                    eprintln!(
                        "history {topic}: {} message(s), newest offset {latest}",
                        messages.len()
                    );
                    for (content, position) in &messages {
                        print_line(&topic, content, *position)?;
                    }
                    answered = true;
                }
                event => report(event),
            }
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(printed) => printed.context("writing to standard output")?,
        Err(_) => {
            eprintln!("error: no history from the subscriber within {timeout:?}");
            stop.cancel();
        }
    }
    let _ = link.await;
    Ok(if answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes one message as a JSON line and flushes, so a reader sees it at once. Fails when stdout is closed.
fn print_line(topic: &str, content: &str, position: Option<Position>) -> std::io::Result<()> {
    let line = Line {
        topic,
        content,
        offset: position.map(|p| p.offset),
        epoch: position.map(|p| p.epoch),
    };
    let mut json = serde_json::to_vec(&line)?;
    json.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&json)?;
    stdout.flush()
}

/// Shows a non-message event on stderr.
fn report(event: Event) {
    match event {
        Event::Subscribed(topic) => eprintln!("subscribed {topic}"),
        Event::Unsubscribed(topic) => eprintln!("unsubscribed {topic}"),
        Event::Resumed(resume) => eprintln!("{resume}"),
        Event::Acked { topic, offset } => eprintln!("acked {topic} up to #{offset}"),
        Event::SubscriptionRefused { topic, reason } => {
            eprintln!("error: sub {topic} refused: {reason}");
        }
        Event::SubscriptionEnded { topic, reason } => {
            eprintln!("unsubscribed {topic} by the subscriber: {reason}");
        }
        Event::Connected { service, url } => eprintln!("connected to the {service} at {url}"),
        Event::Disconnected { service, reason } => {
            eprintln!("{service} disconnected ({reason}); reconnecting");
        }
        Event::Unreachable { service, reason } => {
            eprintln!("{service} unreachable ({reason}); retrying");
        }
        Event::Refused {
            service, message, ..
        } => eprintln!("error from the {service}: {message}"),
        Event::Unexpected { service, frame } => {
            eprintln!("unexpected frame from the {service}: {frame}");
        }
        Event::Message { .. }
        | Event::History { .. }
        | Event::Ack { .. }
        | Event::Lost { .. }
        | Event::NotSent { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn since_needs_its_epoch_and_exact_topics_except_zero() {
        let news = topics(&["news", "sport"]);
        assert_eq!(start_position(&news, None, None).unwrap(), None);
        assert_eq!(
            start_position(&news, Some(0), None).unwrap(),
            Some(Position {
                epoch: Epoch(0),
                offset: 0
            })
        );
        assert_eq!(
            start_position(&news, Some(4), Some(Epoch(7))).unwrap(),
            Some(Position {
                epoch: Epoch(7),
                offset: 4
            })
        );
        let missing_epoch = start_position(&news, Some(4), None).unwrap_err();
        assert!(
            missing_epoch.to_string().contains("--epoch"),
            "{missing_epoch}"
        );
        let pattern = start_position(&topics(&["news", "news.*"]), Some(0), None).unwrap_err();
        assert!(
            pattern.to_string().contains("\"news.*\" is not one"),
            "{pattern}"
        );
    }
}
