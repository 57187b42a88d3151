//! `clientdemo publish`: publishes one message, or each line of standard input, waits for every ack and reports
//! failures through the exit status, so scripts can rely on "exit 0" meaning "durably stored".

#![allow(
    clippy::print_stderr,
    reason = "reporting failures on stderr is this command's job; stdout stays free for scripts"
)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::envelope::validate_topic;

use crate::cli::{Dialers, When};
use crate::link::{self, Event, Publication, PublisherClient};

/// Publishes `words` joined by spaces to `topic`, or each non-empty line of stdin when `words` is empty, for
/// delivery `when` said (at once by default).
///
/// Succeeds with [`ExitCode::SUCCESS`] when every message was acknowledged, and with [`ExitCode::FAILURE`] when
/// any was refused, lost with its connection, or not confirmed within `timeout` of the last progress. Fails
/// outright on an invalid topic, a permanent connection error (credentials, certificate, URL) or unreadable stdin.
pub(crate) async fn run(
    dialers: &Dialers,
    topic: String,
    words: Vec<String>,
    timeout: Duration,
    when: When,
) -> anyhow::Result<ExitCode> {
    validate_topic(&topic).with_context(|| format!("invalid topic {topic:?}"))?;
    let first = link::first_dial::<PublisherClient>(&dialers.publisher)
        .await
        .context("connecting to the publisher")?;
    let (commands_tx, commands_rx) = mpsc::channel(link::COMMAND_QUEUE_CAPACITY);
    let (events_tx, mut events) = mpsc::channel(link::EVENT_QUEUE_CAPACITY);
    let stop = CancellationToken::new();
    let link = tokio::spawn(link::run(
        PublisherClient::default(),
        dialers.publisher.clone(),
        first,
        commands_rx,
        events_tx,
        stop.clone(),
    ));

    let mut input = Input::new(words);
    let mut commands = Some(commands_tx);
    let mut next: Option<String> = None;
    let mut tally = Tally::default();
    let mut last_progress = Instant::now();
    let mut timed_out = false;
    loop {
        if input.done && next.is_none() {
            commands = None;
        }
        let outstanding = tally.outstanding();
        tokio::select! {
            line = input.next(), if !input.done && next.is_none() => match line.context("reading standard input")? {
                Some(line) => next = Some(line),
                None => input.done = true,
            },
            permit = reserve(commands.as_ref()), if next.is_some() => {
                if let (Ok(permit), Some(content)) = (permit, next.take()) {
                    if outstanding == 0 {
                        last_progress = Instant::now();
                    }
                    tally.sent += 1;
                    permit.send(Publication {
                        id: format!("m-{}", tally.sent),
                        topic: topic.clone(),
                        content,
                        when: when.clone(),
                    });
                }
            }
            event = events.recv() => match event {
                Some(event) => {
                    if !timed_out && tally.record(event) {
                        last_progress = Instant::now();
                    }
                }
                None => break,
            },
            () = tokio::time::sleep_until(last_progress + timeout), if outstanding > 0 && !timed_out => {
                eprintln!("error: {outstanding} message(s) not confirmed by the publisher within {timeout:?}");
                tally.failed += outstanding;
                timed_out = true;
                input.done = true;
                next = None;
                stop.cancel();
            }
        }
    }
    let _ = link.await;
    if tally.failed > 0 {
        eprintln!("{} of {} message(s) failed", tally.failed, tally.sent);
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("published {} message(s)", tally.sent);
    Ok(ExitCode::SUCCESS)
}

/// Waits for room in the link's command queue; never resolves once the queue is closed.
async fn reserve(
    commands: Option<&mpsc::Sender<Publication>>,
) -> Result<mpsc::Permit<'_, Publication>, mpsc::error::SendError<()>> {
    match commands {
        Some(commands) => commands.reserve().await,
        None => std::future::pending().await,
    }
}

/// Where messages come from: the command line (one message) or stdin (one per line).
struct Input {
    message: Option<String>,
    stdin: Option<Lines<BufReader<Stdin>>>,
    done: bool,
}

impl Input {
    fn new(words: Vec<String>) -> Self {
        if words.is_empty() {
            Self {
                message: None,
                stdin: Some(BufReader::new(tokio::io::stdin()).lines()),
                done: false,
            }
        } else {
            Self {
                message: Some(words.join(" ")),
                stdin: None,
                done: false,
            }
        }
    }

    /// The next message; `None` at the end. Blank lines are skipped. Cancel-safe.
    async fn next(&mut self) -> std::io::Result<Option<String>> {
        let Some(lines) = &mut self.stdin else {
            return Ok(self.message.take());
        };
        while let Some(line) = lines.next_line().await? {
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if !line.is_empty() {
                return Ok(Some(line.to_owned()));
            }
        }
        Ok(None)
    }
}

/// Counts of sent and settled messages.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    acked: usize,
    failed: usize,
}

impl Tally {
    /// Messages sent and neither acknowledged nor failed.
    fn outstanding(&self) -> usize {
        self.sent.saturating_sub(self.acked + self.failed)
    }

    /// Accounts for an event and reports problems on stderr; `true` if it settled a message.
    fn record(&mut self, event: Event) -> bool {
        match event {
            Event::Ack { .. } => {
                self.acked += 1;
                true
            }
            Event::Refused {
                id: Some(id),
                message,
                ..
            } => {
                eprintln!("error: {id}: {message}");
                self.failed += 1;
                true
            }
            Event::Lost { id } => {
                eprintln!(
                    "error: {id}: connection lost before the publisher confirmed it (it may or may not be stored)"
                );
                self.failed += 1;
                true
            }
            Event::NotSent { id } => {
                eprintln!("error: {id}: not sent");
                self.failed += 1;
                true
            }
            Event::Refused {
                id: None,
                message,
                service,
            } => {
                eprintln!("error from the {service}: {message}");
                false
            }
            Event::Disconnected { service, reason } => {
                eprintln!("{service} disconnected ({reason}); reconnecting");
                false
            }
            Event::Unreachable { service, reason } => {
                eprintln!("{service} unreachable ({reason}); retrying");
                false
            }
            Event::Unexpected { service, frame } => {
                eprintln!("unexpected frame from the {service}: {frame}");
                false
            }
            Event::Connected { .. }
            | Event::Message { .. }
            | Event::Subscribed(_)
            | Event::Unsubscribed(_)
            | Event::Resumed(_)
            | Event::Acked { .. }
            | Event::History { .. }
            | Event::SubscriptionRefused { .. }
            | Event::SubscriptionEnded { .. } => false,
        }
    }
}
