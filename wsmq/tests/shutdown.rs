//! Shutting the all-in-one stack down under load: every connected client is told why with a Close frame carrying
//! 1001 (going away), never left with a dropped or reset connection (1006).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
mod common;

use common::{ALL, client, config};
use wsmq_core::dial::ClientWs;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_testkit::expect_within;

/// Messages the publishing client sends at most: it stops earlier when the connection closes.
const MAX_MESSAGES: u64 = 2_000_000;
/// Publishing clients: each is a chance to catch a connection dropped with the client's data unread.
const PUBLISHERS: usize = 4;
/// Subscribing clients, all on the published topic.
const SUBSCRIBERS: usize = 2;
/// Acks to see before shutting down, so messages are flowing through every hop.
const ACKS_BEFORE_SHUTDOWN: u64 = 2_000;

/// How a client's connection ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The server sent a Close frame with this code, and the closing handshake finished without a reset.
    Closed(CloseCode),
    /// The connection was dropped or reset before the closing handshake finished (what clients report as 1006).
    Abnormal(String),
}

/// Reads until the server closes; counts acks and deliveries into `seen`.
async fn read_until_closed<S>(mut stream: S, seen: Arc<AtomicU64>) -> Ending
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                // tungstenite answers the Close; the server should then end the connection cleanly. A reset here
                // (the server dropped a socket with our data unread) can destroy the Close frame before a client
                // reads it.
                return loop {
                    match stream.next().await {
                        Some(Ok(_)) => continue,
                        // The server ends TCP once it has our Close reply, without a TLS close_notify; after the
                        // Close frames were exchanged no WebSocket client needs one.
                        Some(Err(tungstenite::Error::Io(err)))
                            if err.kind() == std::io::ErrorKind::UnexpectedEof =>
                        {
                            break Ending::Closed(frame.code);
                        }
                        Some(Err(err)) => {
                            break Ending::Abnormal(format!("after the Close frame: {err}"));
                        }
                        None => break Ending::Closed(frame.code),
                    }
                };
            }
            Some(Ok(Message::Close(None))) => {
                return Ending::Abnormal("Close without a code".into());
            }
            Some(Ok(Message::Text(text))) => {
                if matches!(
                    ServerFrame::parse(&text),
                    Some(ServerFrame::Ack { .. } | ServerFrame::Message { .. })
                ) {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Ending::Abnormal(format!("before a Close frame: {err}")),
            None => return Ending::Abnormal("ended before a Close frame".into()),
        }
    }
}

/// Subscribes a client to `topic` and waits for the confirmation.
async fn subscribed(data_dir: &Path, port: u16, topic: &str) -> ClientWs {
    let mut ws = client(data_dir, port, SUBSCRIBE_PATH).await;
    ws.send(Message::text(format!("sub {topic}")))
        .await
        .unwrap();
    loop {
        let frame = expect_within("confirmation", ws.next()).await;
        if let Some(Ok(Message::Text(text))) = frame
            && ServerFrame::parse(&text) == Some(ServerFrame::Subscribed(topic.into()))
        {
            return ws;
        }
    }
}

/// Publishes flat out until the server's close makes sending fail.
async fn publish_until_closed<S>(mut sink: S)
where
    S: futures_util::Sink<Message> + Unpin,
{
    for id in 0..MAX_MESSAGES {
        let frame = format!(r#"{{"Topic":"load","Content":"message {id}","Id":{id}}}"#);
        if sink.send(Message::text(frame)).await.is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_under_load_are_closed_with_going_away_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let stack = wsmq::bind(config(dir.path(), ALL)).await.unwrap();
    let (pub_port, sub_port) = (
        stack.publisher_addr().unwrap().port(),
        stack.subscriber_addr().unwrap().port(),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(stack.run(shutdown.clone()));

    let delivered = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let ws = subscribed(dir.path(), sub_port, "load").await;
        subscribers.push(tokio::spawn(read_until_closed(ws, Arc::clone(&delivered))));
    }
    let acked = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..PUBLISHERS {
        let (sink, stream) = client(dir.path(), pub_port, PUBLISH_PATH).await.split();
        publishers.push(tokio::spawn(read_until_closed(stream, Arc::clone(&acked))));
        senders.push(tokio::spawn(publish_until_closed(sink)));
    }

    expect_within("messages flowing", async {
        while acked.load(Ordering::Relaxed) < ACKS_BEFORE_SHUTDOWN
            || delivered.load(Ordering::Relaxed) == 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    shutdown.cancel();

    let mut endings = Vec::new();
    for (kind, task) in publishers
        .into_iter()
        .map(|t| ("publisher", t))
        .chain(subscribers.into_iter().map(|t| ("subscriber", t)))
    {
        endings.push((kind, expect_within("client closed", task).await.unwrap()));
    }
    for sender in senders {
        expect_within("sender stopped", sender).await.unwrap();
    }
    expect_within("stack stopped", running)
        .await
        .unwrap()
        .unwrap();
    for (kind, ending) in endings {
        assert_eq!(ending, Ending::Closed(CloseCode::Away), "a {kind} client");
    }
}
