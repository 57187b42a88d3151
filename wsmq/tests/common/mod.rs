//! Shared by the stack's tests: a configuration on port 0 with a temp data dir, a running stack that stops on
//! demand, and a wsmq.v1 client. Bounds, flags, dialing and frame readers come from `wsmq-testkit`.

#![allow(dead_code, unreachable_pub)]

pub mod process;

use std::path::Path;

use futures_util::SinkExt;
use tungstenite::Message;
use wsmq::{Config, Service, Stack};
use wsmq_core::api_client::ApiClient;
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::config::AccessArgs;
use wsmq_core::dial::ClientWs;
use wsmq_core::protocol::SUBPROTOCOL_V1;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_testkit::client::{connect, dialer, next_text};
use wsmq_testkit::config::{credentials, link_args, loopback, server_args};
use wsmq_testkit::service::ServiceTask;
use wsmq_testkit::within;

/// The development user, which a stack on loopback accepts without configured users.
const DEV_USER: &str = "hello";
const DEV_PASSWORD: &str = "test";

pub const ALL: &[Service] = &[Service::Msgqueue, Service::Publisher, Service::Subscriber];

/// `services` on loopback port 0 with dev certificates and the dev users in `data_dir`; a link to msgqueue (for
/// stacks without it) authenticates as the dev user.
pub fn config(data_dir: &Path, services: &[Service]) -> Config {
    Config {
        msgqueue_listen: loopback(),
        publisher_listen: loopback(),
        subscriber_listen: loopback(),
        admin_port: 0,
        server: server_args(data_dir, None),
        services: services.to_vec(),
        link: link_args(
            "wss://localhost:8080".into(),
            DEV_USER,
            DEV_PASSWORD,
            BackoffArgs::default(),
        ),
        access: AccessArgs::default(),
    }
}

/// A stack serving in a task, stopped (and checked to stop cleanly) by [`Running::stop`].
pub struct Running(ServiceTask<wsmq::Error>);

impl Running {
    pub fn start(stack: Stack) -> Self {
        Self(ServiceTask::spawn(|shutdown| stack.run(shutdown)))
    }

    pub async fn stop(self) {
        self.0.stop().await.unwrap();
    }
}

/// Publisher and subscriber alone, linked to the msgqueue on `queue_port`, running; returns them with their
/// publisher and subscriber ports.
pub async fn start_edges(data_dir: &Path, queue_port: u16) -> (Running, u16, u16) {
    let mut edges_config = config(data_dir, &[Service::Publisher, Service::Subscriber]);
    edges_config.link.queue_url = vec![format!("wss://localhost:{queue_port}")];
    start_stack(wsmq::bind(edges_config).await.unwrap())
}

/// The whole stack in `data_dir`, running; returns it with its publisher and subscriber ports.
pub async fn start_all(data_dir: &Path) -> (Running, u16, u16) {
    start_stack(wsmq::bind(config(data_dir, ALL)).await.unwrap())
}

/// Runs a bound stack with a publisher and a subscriber; returns it with their ports.
pub fn start_stack(stack: Stack) -> (Running, u16, u16) {
    let (pub_port, sub_port) = (
        stack.publisher_addr().unwrap().port(),
        stack.subscriber_addr().unwrap().port(),
    );
    (Running::start(stack), pub_port, sub_port)
}

/// A wsmq.v1 client of the publisher or subscriber on `port`, as the dev user, trusting the dev CA in `data_dir`.
pub async fn client(data_dir: &Path, port: u16, path: &str) -> ClientWs {
    let url = format!("wss://localhost:{port}");
    let credentials = credentials(DEV_USER, DEV_PASSWORD);
    let dialer = dialer(&url, data_dir, credentials, Some(SUBPROTOCOL_V1)).unwrap();
    connect(&dialer, path, Some(SUBPROTOCOL_V1)).await.unwrap()
}

/// A keep-alive connection to the publisher's HTTP API on `port`, with the development credentials.
pub async fn api(data_dir: &Path, port: u16) -> ApiClient {
    let url = format!("wss://localhost:{port}");
    let dialer = dialer(&url, data_dir, credentials(DEV_USER, DEV_PASSWORD), None).unwrap();
    within("an API connection", ApiClient::connect(&dialer))
        .await
        .unwrap()
        .unwrap()
}

/// The next frame from publisher or subscriber, decoded; pings skipped. One bound covers the whole wait, so a
/// frame that never comes fails the test even while the server keeps pinging.
pub async fn next_frame(ws: &mut ClientWs) -> ServerFrame {
    let text = next_text(ws).await.unwrap();
    ServerFrame::parse(&text).unwrap_or_else(|| panic!("unknown frame {text}"))
}

/// `sub <topic>` as a wsmq.v1 client, waiting for the confirmation.
pub async fn subscribe(ws: &mut ClientWs, topic: &str) {
    ws.send(Message::text(format!("sub {topic}")))
        .await
        .unwrap();
    assert_eq!(next_frame(ws).await, ServerFrame::Subscribed(topic.into()));
}

/// Publishes `content` on `topic` as a wsmq.v1 client, with `id` for the ack.
pub async fn publish(ws: &mut ClientWs, topic: &str, content: &str, id: u64) {
    let frame = serde_json::json!({ "Topic": topic, "Content": content, "Id": id }).to_string();
    ws.send(Message::text(frame)).await.unwrap();
}

/// A frame without the position a delivered message carries in its topic, to compare messages by topic and content.
pub fn without_position(frame: ServerFrame) -> ServerFrame {
    match frame {
        ServerFrame::Message { topic, content, .. } => ServerFrame::Message {
            topic,
            content,
            position: None,
        },
        other => other,
    }
}
