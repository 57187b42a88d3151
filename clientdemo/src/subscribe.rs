//! `clientdemo subscribe`: prints every message on the given topics as one JSON object per line, for scripts
//! (`jq`, `head`, tests). Status goes to stderr so stdout holds messages only.

#![allow(
    clippy::print_stderr,
    reason = "status and errors go to stderr so stdout carries only messages"
)]

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::envelope::validate_topic;

use crate::cli::Dialers;
use crate::link::{self, Event, SubscriberClient};

/// One output line, with ws-go's field names.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "Topic")]
    topic: &'a str,
    #[serde(rename = "Content")]
    content: &'a str,
}

/// Subscribes to `topics` and prints messages until `count` messages were printed, Ctrl-C, or stdout closes.
///
/// Reconnects (and resubscribes) when the subscriber restarts. Fails on an invalid topic or a permanent
/// connection error (credentials, certificate, URL).
pub(crate) async fn run(
    dialers: &Dialers,
    topics: Vec<String>,
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
        SubscriberClient::new(topics),
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
                Some(Event::Message { topic, content }) => {
                    if commands.is_none() {
                        continue;
                    }
                    if print_line(&topic, &content).is_err() {
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

/// Writes one message as a JSON line and flushes, so a reader sees it at once. Fails when stdout is closed.
fn print_line(topic: &str, content: &str) -> std::io::Result<()> {
    let mut json = serde_json::to_vec(&Line { topic, content })?;
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
        Event::Message { .. } | Event::Ack { .. } | Event::Lost { .. } | Event::NotSent { .. } => {}
    }
}
