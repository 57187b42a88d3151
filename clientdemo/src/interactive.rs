//! The interactive prompt (ws-go's client, with line editing): `TOPIC MESSAGE` publishes, `sub TOPIC` /
//! `unsub TOPIC` manage subscriptions (`sub TOPIC since=N epoch=E` resumes), `history TOPIC` shows what a topic
//! retains, `exit` quits. After a reconnect every exact topic resumes after its last message shown.
//!
//! Three parts run side by side: the line editor on a blocking thread (rustyline reads the terminal
//! synchronously), one reconnecting link per service, and a printer thread that shows the links' events. On a
//! terminal the printer goes through rustyline's external printer, which redraws the prompt below each line; when
//! stdin is not a terminal (a pipe, tests) rustyline reads plain lines and events go straight to stdout.

#![allow(
    clippy::print_stdout,
    reason = "an interactive terminal client: printing to stdout is its job"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsmq_core::protocol::client::Command;
use wsmq_core::protocol::envelope::validate_topic;

use crate::cli::{Dialers, When};
use crate::link::{self, Event, Publication, PublisherClient, SubscriberClient, Subscription};

/// The prompt shown on a terminal.
const PROMPT: &str = "> ";
/// The history file inside the data directory.
const HISTORY_FILE: &str = "clientdemo_history";
/// How long `exit` waits for acks of messages still in flight before giving up on them.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Shown for `help` and for unparseable lines.
const HELP: &str = "commands: TOPIC MESSAGE (publish) | sub TOPIC [since=N epoch=E] | unsub TOPIC | \
                    history TOPIC [limit=N] | ack @INBOX OFFSET | help | exit";

/// Runs the prompt until `exit`, end of input or Ctrl-C, then closes both connections, waiting up to
/// [`EXIT_GRACE`] for outstanding acks.
///
/// Fails at once on a permanent connection error (credentials, certificate, URL); a service that is merely
/// down is retried in the background and reported.
pub(crate) async fn run(dialers: &Dialers, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let (first_publisher, first_subscriber) = tokio::join!(
        link::first_dial::<PublisherClient>(&dialers.publisher),
        link::first_dial::<SubscriberClient>(&dialers.subscriber),
    );
    let first_publisher = first_publisher.context("connecting to the publisher")?;
    let first_subscriber = first_subscriber.context("connecting to the subscriber")?;

    let mut editor = DefaultEditor::new().context("starting the line editor")?;
    let history = data_dir.join(HISTORY_FILE);
    // A missing history file is normal on the first run.
    let _ = editor.load_history(&history);
    let console = match editor.create_external_printer() {
        Ok(printer) => Console::Terminal(Box::new(printer)),
        Err(_) => Console::Plain,
    };

    let (events_tx, events_rx) = mpsc::channel(link::EVENT_QUEUE_CAPACITY);
    let (publish_tx, publish_rx) = mpsc::channel(link::COMMAND_QUEUE_CAPACITY);
    let (subscribe_tx, subscribe_rx) = mpsc::channel(link::COMMAND_QUEUE_CAPACITY);
    let stop = CancellationToken::new();
    let publisher = tokio::spawn(link::run(
        PublisherClient::default(),
        dialers.publisher.clone(),
        first_publisher,
        publish_rx,
        events_tx.clone(),
        stop.clone(),
    ));
    let subscriber = tokio::spawn(link::run(
        SubscriberClient::default(),
        dialers.subscriber.clone(),
        first_subscriber,
        subscribe_rx,
        events_tx,
        stop.clone(),
    ));
    let printer = std::thread::spawn(move || print_events(events_rx, console));

    println!("{HELP}");
    let prompt = Prompt {
        publish: publish_tx,
        subscribe: subscribe_tx,
        next_id: 1,
    };
    // The prompt's senders are dropped when it returns, which tells both links to finish and close.
    let read = tokio::task::spawn_blocking(move || prompt.read_lines(editor, history)).await;
    if let Ok(Err(err)) = &read {
        println!("error: {err}");
    }

    let mut links = std::pin::pin!(async {
        let _ = publisher.await;
        let _ = subscriber.await;
    });
    if tokio::time::timeout(EXIT_GRACE, &mut links).await.is_err() {
        println!("giving up on messages the publisher has not confirmed");
        stop.cancel();
        links.await;
    }
    // Both links have ended, so the event channel is closed and the printer drains it and returns.
    let _ = tokio::task::spawn_blocking(move || printer.join()).await;
    Ok(ExitCode::SUCCESS)
}

/// Where event lines go: above the prompt on a terminal, plain stdout otherwise.
enum Console {
    /// rustyline's printer, which redraws the prompt and the line being edited.
    Terminal(Box<dyn rustyline::ExternalPrinter + Send>),
    /// stdout, when stdin or stdout is not a terminal.
    Plain,
}

impl Console {
    fn print(&mut self, mut line: String) {
        line.push('\n');
        if let Console::Terminal(printer) = self
            && printer.print(line.clone()).is_ok()
        {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        // Nothing sensible is left to do when stdout itself is gone.
        let _ = stdout.write_all(line.as_bytes());
        let _ = stdout.flush();
    }
}

/// The printer thread: shows each event until every link has ended.
fn print_events(mut events: mpsc::Receiver<Event>, mut console: Console) {
    while let Some(event) = events.blocking_recv() {
        console.print(describe(&event));
    }
}

/// The line shown for an event.
fn describe(event: &Event) -> String {
    match event {
        Event::Connected { service, url } => format!("connected to the {service} at {url}"),
        Event::Disconnected { service, reason } => {
            format!("{service} disconnected ({reason}); reconnecting")
        }
        Event::Unreachable { service, reason } => {
            format!("{service} unreachable ({reason}); retrying")
        }
        Event::Message {
            topic,
            content,
            position: None,
        } => format!("<[{topic}] {content}"),
        Event::Message {
            topic,
            content,
            position: Some(position),
        } => format!("<[{topic} #{}] {content}", position.offset),
        Event::Resumed(resume) => resume.to_string(),
        Event::Acked { topic, offset } => format!("acked {topic} up to #{offset}"),
        Event::History {
            topic,
            latest,
            messages,
        } => {
            let mut text = format!(
                "history {topic}: {} message(s), newest offset {latest}",
                messages.len()
            );
            for (content, position) in messages {
                let offset = position.map_or_else(|| "?".to_owned(), |p| p.offset.to_string());
                text.push_str(&format!("\n  #{offset} {content}"));
            }
            text
        }
        Event::Ack { id } => format!("ack {id}"),
        Event::Refused {
            id: Some(id),
            message,
            ..
        } => format!("error: {id}: {message}"),
        Event::Refused {
            id: None,
            message,
            service,
        } => format!("error from the {service}: {message}"),
        Event::Subscribed(topic) => format!("subscribed {topic}"),
        Event::Unsubscribed(topic) => format!("unsubscribed {topic}"),
        Event::SubscriptionRefused { topic, reason } => {
            format!("error: sub {topic} refused: {reason}")
        }
        Event::SubscriptionEnded { topic, reason } => {
            format!("unsubscribed {topic} by the subscriber: {reason}")
        }
        Event::Lost { id } => format!(
            "error: {id}: connection lost before the ack (the message may or may not be stored)"
        ),
        Event::NotSent { id } => format!("error: {id}: not sent"),
        Event::Unexpected { service, frame } => format!("{service}: {frame}"),
    }
}

/// What the user typed.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// Publish `content` to `topic`.
    Publish {
        /// The topic.
        topic: &'a str,
        /// The rest of the line.
        content: &'a str,
    },
    /// `sub`, `unsub` or `history`, as the subscriber link takes it.
    Subscription(Subscription),
    /// `help`.
    Help,
    /// `exit` or `quit`.
    Exit,
    /// A blank line.
    Empty,
}

/// Parses a line; the error says what is wrong, for the user.
fn parse_line(line: &str) -> Result<Line<'_>, String> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (line, ""),
    };
    match (word, rest) {
        ("", _) => Ok(Line::Empty),
        ("exit" | "quit", "") => Ok(Line::Exit),
        ("help", "") => Ok(Line::Help),
        ("sub" | "unsub" | "history" | "ack", _) => subscription(line).map(Line::Subscription),
        (_, "") => Err(format!("no message after {word:?}; {HELP}")),
        (topic, content) => validate_topic(topic)
            .map(|()| Line::Publish { topic, content })
            .map_err(|err| format!("invalid topic {topic:?}: {err}")),
    }
}

/// Reads a `sub`/`unsub`/`history` line with the subscriber's own command syntax (`since=`, `epoch=`,
/// `limit=`), refusing here what the subscriber would refuse: resuming or asking the history of a pattern.
fn subscription(line: &str) -> Result<Subscription, String> {
    let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
    let command = Command::parse(&words).map_err(|err| match err {
        wsmq_core::protocol::client::CommandError::Unknown => format!("no topic; {HELP}"),
        err => err.to_string(),
    })?;
    let exact = |topic: &str| {
        if link::resumable(topic) {
            Ok(topic.to_owned())
        } else {
            Err(format!("{topic:?} is not one exact topic"))
        }
    };
    Ok(match command {
        Command::Subscribe(topic) => Subscription::Subscribe {
            topic: topic.into_owned(),
            since: None,
        },
        Command::Resume { topic, since } => Subscription::Subscribe {
            topic: exact(&topic)?,
            since: Some(since),
        },
        Command::Unsubscribe(topic) => Subscription::Unsubscribe(topic.into_owned()),
        Command::History { topic, limit } => Subscription::History {
            topic: exact(&topic)?,
            limit,
        },
        Command::Ack { topic, offset, .. } => Subscription::Ack {
            topic: topic.into_owned(),
            offset,
        },
    })
}

/// The reading side: turns lines into link commands.
struct Prompt {
    publish: mpsc::Sender<Publication>,
    subscribe: mpsc::Sender<Subscription>,
    next_id: u64,
}

impl Prompt {
    /// Reads lines until `exit`, end of input or Ctrl-C; saves the history at the end. Blocking.
    fn read_lines(mut self, mut editor: DefaultEditor, history: PathBuf) -> anyhow::Result<()> {
        let result = loop {
            let line = match editor.readline(PROMPT) {
                Ok(line) => line,
                Err(ReadlineError::Eof | ReadlineError::Interrupted) => break Ok(()),
                Err(err) => break Err(anyhow::Error::new(err).context("reading input")),
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
            }
            match parse_line(&line) {
                Ok(Line::Exit) => break Ok(()),
                Ok(line) => self.handle(line),
                Err(problem) => println!("error: {problem}"),
            }
        };
        if let Some(dir) = history.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(err) = editor.save_history(&history) {
            println!("note: history not saved to {}: {err}", history.display());
        }
        result
    }

    fn handle(&mut self, line: Line<'_>) {
        match line {
            Line::Publish { topic, content } => {
                let id = format!("m-{}", self.next_id);
                self.next_id += 1;
                let publication = Publication {
                    id: id.clone(),
                    topic: topic.to_owned(),
                    content: content.to_owned(),
                    when: When::default(),
                };
                if self.publish.try_send(publication).is_err() {
                    println!("error: {id}: not sent, too many messages waiting for the publisher");
                }
            }
            Line::Subscription(command) => self.subscription(command),
            Line::Help => println!("{HELP}"),
            Line::Exit | Line::Empty => {}
        }
    }

    fn subscription(&self, command: Subscription) {
        if self.subscribe.try_send(command).is_err() {
            println!("error: too many subscription changes waiting for the subscriber; try again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsmq_core::protocol::history::Position;

    #[test]
    fn lines_parse_into_publish_subscribe_and_control_commands() {
        assert_eq!(
            parse_line("news hello  world"),
            Ok(Line::Publish {
                topic: "news",
                content: "hello  world"
            })
        );
        assert_eq!(
            parse_line(" sub news "),
            Ok(Line::Subscription(Subscription::Subscribe {
                topic: "news".into(),
                since: None
            }))
        );
        assert_eq!(
            parse_line("unsub news"),
            Ok(Line::Subscription(Subscription::Unsubscribe("news".into())))
        );
        assert_eq!(parse_line("exit"), Ok(Line::Exit));
        assert_eq!(parse_line("quit"), Ok(Line::Exit));
        assert_eq!(parse_line("help"), Ok(Line::Help));
        assert_eq!(parse_line("   "), Ok(Line::Empty));
    }

    #[test]
    fn resume_and_history_lines_take_the_subscribers_options() {
        assert_eq!(
            parse_line("sub  news since=7 epoch=ab"),
            Ok(Line::Subscription(Subscription::Subscribe {
                topic: "news".into(),
                since: Some(Position {
                    epoch: wsmq_core::protocol::history::Epoch(0xab),
                    offset: 7
                })
            }))
        );
        assert_eq!(
            parse_line("history news limit=3"),
            Ok(Line::Subscription(Subscription::History {
                topic: "news".into(),
                limit: 3
            }))
        );
        assert_eq!(
            parse_line("history news"),
            Ok(Line::Subscription(Subscription::History {
                topic: "news".into(),
                limit: wsmq_core::protocol::client::DEFAULT_HISTORY_LIMIT
            }))
        );
        assert_eq!(
            parse_line("ack @me 12"),
            Ok(Line::Subscription(Subscription::Ack {
                topic: "@me".into(),
                offset: 12
            }))
        );
        assert!(parse_line("ack news 12").is_err(), "only inboxes are acked");
    }

    #[test]
    fn bad_lines_are_explained() {
        for line in [
            "news",
            "sub",
            "sub a b",
            "unsub",
            "history",
            "sub news since=3",
            "sub news.* since=0",
            "history news.*",
            "history news limit=0",
        ] {
            assert!(parse_line(line).is_err(), "{line:?} accepted");
        }
    }

    #[test]
    fn events_read_like_ws_go_output() {
        let message = Event::Message {
            topic: "news".into(),
            content: "hi".into(),
            position: None,
        };
        assert_eq!(describe(&message), "<[news] hi");
        let positioned = Event::Message {
            topic: "news".into(),
            content: "hi".into(),
            position: Some(Position {
                epoch: wsmq_core::protocol::history::Epoch(1),
                offset: 5,
            }),
        };
        assert_eq!(describe(&positioned), "<[news #5] hi");
        assert_eq!(describe(&Event::Ack { id: "m-3".into() }), "ack m-3");
        let refused = Event::Refused {
            service: link::Service::Publisher,
            id: Some("m-4".into()),
            message: "queue full".into(),
        };
        assert_eq!(describe(&refused), "error: m-4: queue full");
        let refused = Event::SubscriptionRefused {
            topic: "news.secret".into(),
            reason: "forbidden".into(),
        };
        assert_eq!(
            describe(&refused),
            "error: sub news.secret refused: forbidden"
        );
        let ended = Event::SubscriptionEnded {
            topic: "news.*".into(),
            reason: "forbidden".into(),
        };
        assert_eq!(
            describe(&ended),
            "unsubscribed news.* by the subscriber: forbidden"
        );
    }
}
