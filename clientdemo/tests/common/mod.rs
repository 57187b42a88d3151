//! A fake publisher and subscriber for clientdemo's tests, and helpers to run the real binary against them.
//!
//! Both fakes are `wsmq_core::server::serve` listeners on 127.0.0.1:0 sharing a dev PKI in a tempdir, which is
//! also the client's `--data-dir` so it trusts their CA. The fake publisher acks every message and forwards it
//! to the fake subscriber, except on topic `reject` (error frame) and `silent` (no answer at all). The fake
//! subscriber confirms `sub`/`unsub` (refusing `secret` as forbidden), reports each subscription to the test,
//! delivers matching messages (wildcard patterns included) and ends a subscription when the test revokes it.
//! Bounds and the listener under each fake come from `wsmq-testkit`.

#![allow(dead_code, unreachable_pub)]

pub mod stack;

use std::collections::HashSet;
use std::error::Error;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;
use wsmq_core::limits::Limits;
use wsmq_core::protocol::client::{
    Command as SubCommand, encode_ack, encode_error, encode_forbidden, encode_revoked,
    encode_subscribed, encode_unsubscribed,
};
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_core::server::{Accepted, Route};
use wsmq_core::topic::{Pattern, Topic};
use wsmq_testkit::config::{loopback, users};
use wsmq_testkit::server::{FakeServer, server_config};
pub use wsmq_testkit::{STEP, TestResult};

/// The user both fakes accept.
pub const USER: &str = "tester";
/// Its password.
pub const PASSWORD: &str = "s3cret pass";
/// Topic the fake publisher refuses with an error frame.
pub const REJECTED_TOPIC: &str = "reject";
/// Topic the fake publisher never answers.
pub const SILENT_TOPIC: &str = "silent";
/// Topic the fake subscriber refuses as forbidden.
pub const FORBIDDEN_TOPIC: &str = "secret";
/// The error the fake publisher sends for [`REJECTED_TOPIC`].
pub const REJECTION: &str = "rejected by the fake publisher";
/// Capacity of the feed between the fakes; tests publish a handful of messages.
const FEED_CAPACITY: usize = 64;
/// Capacity of the subscription reports to the test.
const REPORT_CAPACITY: usize = 64;

/// A message as it travels between the fakes.
pub type Published = (String, String);

/// A running fake publisher and subscriber.
pub struct FakeStack {
    /// The fake publisher's address.
    pub publisher: SocketAddr,
    /// The fake subscriber's address.
    pub subscriber: SocketAddr,
    /// Holds `tls/ca.pem`; pass it as the client's data dir.
    pub data_dir: tempfile::TempDir,
    /// Every message the fake publisher accepted; tests may also send here to make the subscriber deliver.
    pub feed: broadcast::Sender<Published>,
    /// Each topic the fake subscriber confirmed or refused, in order.
    pub subscriptions: mpsc::Receiver<String>,
    /// Sending on it makes the fake subscriber drop every connection, as a restart would.
    pub kick: broadcast::Sender<()>,
    /// Sending a topic on it makes the fake subscriber end that subscription, as an ACL reload would.
    pub revoke: broadcast::Sender<String>,
    servers: [FakeServer; 2],
}

impl Drop for FakeStack {
    fn drop(&mut self) {
        for server in &self.servers {
            server.shutdown.cancel();
        }
    }
}

/// What the fake subscriber's connections share.
#[derive(Clone)]
struct SubscriberShared {
    feed: broadcast::Sender<Published>,
    reports: mpsc::Sender<String>,
    kick: broadcast::Sender<()>,
    revoke: broadcast::Sender<String>,
}

impl FakeStack {
    /// Starts both fakes.
    pub async fn start() -> TestResult<FakeStack> {
        let data_dir = tempfile::tempdir()?;
        let users = users(USER, PASSWORD);
        let limits = Limits {
            drain_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (kick, _) = broadcast::channel(1);
        let (revoke, _) = broadcast::channel(REPORT_CAPACITY);
        let (reports, subscriptions) = mpsc::channel(REPORT_CAPACITY);

        let publisher_config = server_config(
            data_dir.path(),
            &users,
            limits.clone(),
            vec![Route::WebSocket {
                path: PUBLISH_PATH,
                subprotocols: &["wsmq.v1"],
            }],
        )?;
        let publisher_feed = feed.clone();
        let publisher = FakeServer::start(loopback(), publisher_config, move |accepted| {
            fake_publisher(accepted, publisher_feed.clone())
        })
        .await?;

        let subscriber_config = server_config(
            data_dir.path(),
            &users,
            limits,
            vec![Route::WebSocket {
                path: SUBSCRIBE_PATH,
                subprotocols: &["wsmq.v1"],
            }],
        )?;
        let shared = SubscriberShared {
            feed: feed.clone(),
            reports,
            kick: kick.clone(),
            revoke: revoke.clone(),
        };
        let subscriber = FakeServer::start(loopback(), subscriber_config, move |accepted| {
            fake_subscriber(accepted, shared.clone())
        })
        .await?;

        Ok(FakeStack {
            publisher: publisher.addr,
            subscriber: subscriber.addr,
            data_dir,
            feed,
            subscriptions,
            kick,
            revoke,
            servers: [publisher, subscriber],
        })
    }

    /// The client binary, configured (through the environment, as a user would) to use these fakes.
    pub fn client(&self) -> Command {
        clientdemo(
            &format!("wss://{}", self.publisher),
            &format!("wss://{}", self.subscriber),
            self.data_dir.path(),
            (USER, PASSWORD),
        )
    }

    /// Waits until the fake subscriber answered a subscription to `topic` (confirmed, or refused as forbidden).
    pub async fn subscribed(&mut self, topic: &str) -> TestResult {
        let wait = async {
            while let Some(subscribed) = self.subscriptions.recv().await {
                if subscribed == topic {
                    return Ok(());
                }
            }
            Err("the fake subscriber stopped".into())
        };
        tokio::time::timeout(STEP, wait)
            .await
            .map_err(|_| format!("no subscription to {topic:?} within {STEP:?}"))?
    }
}

/// The client binary, configured through the environment (as a user would) to use the services at these URLs
/// as `user` (name, password), trusting the development CA in `data_dir`; stdout and stderr piped.
pub fn clientdemo(
    publisher_url: &str,
    subscriber_url: &str,
    data_dir: &std::path::Path,
    (user, password): (&str, &str),
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clientdemo"));
    command
        .env("WSMQ_PUBLISHER_URL", publisher_url)
        .env("WSMQ_SUBSCRIBER_URL", subscriber_url)
        .env("WSMQ_USER", user)
        .env("WSMQ_PASSWORD", password)
        .env("WSMQ_DATA_DIR", data_dir)
        .env_remove("WSMQ_CA")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A publish frame as the fake publisher reads it.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "Topic")]
    topic: String,
    #[serde(rename = "Content")]
    content: String,
    #[serde(rename = "Id")]
    id: Box<RawValue>,
}

async fn fake_publisher(accepted: Accepted, feed: broadcast::Sender<Published>) {
    let Accepted {
        mut ws, shutdown, ..
    } = accepted;
    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => break,
            frame = ws.next() => frame,
        };
        let Some(Ok(Message::Text(text))) = frame else {
            break;
        };
        let Ok(incoming) = serde_json::from_str::<Incoming>(text.as_str()) else {
            let reply = encode_error("not a publish frame with an Id", None);
            if ws.send(text_frame(&reply)).await.is_err() {
                break;
            }
            continue;
        };
        let reply = match incoming.topic.as_str() {
            SILENT_TOPIC => continue,
            REJECTED_TOPIC => encode_error(REJECTION, Some(&incoming.id)),
            _ => {
                let _ = feed.send((incoming.topic, incoming.content));
                encode_ack(&incoming.id)
            }
        };
        if ws.send(text_frame(&reply)).await.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
}

async fn fake_subscriber(accepted: Accepted, shared: SubscriberShared) {
    let Accepted {
        mut ws, shutdown, ..
    } = accepted;
    let mut feed = shared.feed.subscribe();
    let mut kick = shared.kick.subscribe();
    let mut revoke = shared.revoke.subscribe();
    let mut topics: HashSet<String> = HashSet::new();
    loop {
        let reply = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = kick.recv() => return,
            revoked = revoke.recv() => match revoked {
                Ok(topic) if topics.remove(&topic) => text_frame(&encode_revoked(&topic)),
                Ok(_) => continue,
                Err(_) => break,
            },
            published = feed.recv() => match published {
                Ok((topic, content)) if topics.iter().any(|p| matches(p, &topic)) => {
                    Message::text(serde_json::json!({ "Topic": topic, "Content": content }).to_string())
                }
                Ok(_) => continue,
                Err(_) => break,
            },
            frame = ws.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    break;
                };
                let reply = match SubCommand::parse(text.as_str()) {
                    Ok(SubCommand::Subscribe(topic)) if topic == FORBIDDEN_TOPIC => {
                        let _ = shared.reports.try_send(topic.to_string());
                        encode_forbidden(&topic)
                    }
                    Ok(SubCommand::Subscribe(topic)) => {
                        topics.insert(topic.to_string());
                        let _ = shared.reports.try_send(topic.to_string());
                        encode_subscribed(&topic)
                    }
                    Ok(SubCommand::Unsubscribe(topic)) => {
                        topics.remove(topic.as_ref());
                        encode_unsubscribed(&topic)
                    }
                    Ok(
                        SubCommand::Resume { .. }
                        | SubCommand::History { .. }
                        | SubCommand::Ack { .. },
                    ) => {
                        encode_error("this fake subscriber keeps no history", None)
                    }
                    Err(err) => encode_error(&err.to_string(), None),
                };
                text_frame(&reply)
            }
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
}

/// Whether the subscription `pattern` (exact or wildcard) covers the published `topic`.
fn matches(pattern: &str, topic: &str) -> bool {
    match (Pattern::parse(pattern), Topic::parse(topic)) {
        (Ok(pattern), Ok(topic)) => pattern.matches(topic),
        _ => pattern == topic,
    }
}

/// A text frame holding an encoded server frame.
fn text_frame(frame: &[u8]) -> Message {
    Message::text(String::from_utf8_lossy(frame).into_owned())
}

/// Reads a child's stdout (or stderr) line by line, remembering what it saw for failure messages.
pub struct Output<R = ChildStdout> {
    lines: tokio::io::Lines<BufReader<R>>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Output {
    /// Takes the stdout of `child` (spawned with a piped stdout).
    pub fn of(child: &mut Child) -> TestResult<Output> {
        let stdout = child.stdout.take().ok_or("stdout is not piped")?;
        Ok(Output {
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        })
    }
}

impl Output<ChildStderr> {
    /// Takes the stderr of `child` (spawned with a piped stderr), where the scriptable commands report status.
    pub fn stderr_of(child: &mut Child) -> TestResult<Output<ChildStderr>> {
        let stderr = child.stderr.take().ok_or("stderr is not piped")?;
        Ok(Output {
            lines: BufReader::new(stderr).lines(),
            seen: Vec::new(),
        })
    }
}

impl<R: tokio::io::AsyncRead + Unpin> Output<R> {
    /// The next line, within [`STEP`].
    pub async fn line(&mut self) -> TestResult<String> {
        let line = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .map_err(|_| format!("no line within {STEP:?}; saw {:?}", self.seen))??
            .ok_or_else(|| format!("output ended; saw {:?}", self.seen))?;
        self.seen.push(line.clone());
        Ok(line)
    }

    /// Reads until a line containing each of `needles` has been seen (in any order), within [`STEP`].
    pub async fn expect_all(&mut self, needles: &[&str]) -> TestResult {
        let mut missing: Vec<&str> = needles.to_vec();
        let read = async {
            while !missing.is_empty() {
                let Some(line) = self.lines.next_line().await? else {
                    return Err("stdout ended".into());
                };
                missing.retain(|needle| !line.contains(needle));
                self.seen.push(line);
            }
            Ok::<(), Box<dyn Error + Send + Sync>>(())
        };
        match tokio::time::timeout(STEP, read).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("{err} before {needles:?}; saw {:?}", self.seen).into()),
            Err(_) => Err(format!("no {needles:?} within {STEP:?}; saw {:?}", self.seen).into()),
        }
    }

    /// Reads until a line containing `needle`.
    pub async fn expect(&mut self, needle: &str) -> TestResult {
        self.expect_all(&[needle]).await
    }
}

/// Waits for a child to exit, within [`STEP`], and returns its exit status and stderr.
pub async fn finish(child: Child) -> TestResult<(std::process::ExitStatus, String, String)> {
    let output = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .map_err(|_| format!("clientdemo did not exit within {STEP:?}"))??;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}
