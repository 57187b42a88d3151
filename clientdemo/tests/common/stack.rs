//! The real services for clientdemo's history tests: msgqueue and the publisher in one in-process stack, the
//! subscriber in another, so the subscriber can be stopped and started again on its port (as a restart or a
//! network drop looks to the client) while messages are published. A wsmq.v1 publisher client publishes and waits
//! for each ack, so a message is stored (with its offset) before the test goes on.

use std::net::SocketAddr;
use std::path::Path;

use futures_util::SinkExt;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsmq::{Config, Service};
use wsmq_core::backoff::BackoffArgs;
use wsmq_core::config::AccessArgs;
use wsmq_core::dial::ClientWs;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBPROTOCOL_V1};
use wsmq_testkit::client::{connect, dialer, next_text};
use wsmq_testkit::config::{credentials, link_args, loopback, server_args};

use super::{TestResult, clientdemo};

/// The development account a stack on loopback accepts.
const DEV_USER: &str = "hello";
const DEV_PASSWORD: &str = "test";

/// One in-process stack running in a task until stopped.
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), wsmq::Error>>,
}

impl Running {
    fn run(stack: wsmq::Stack) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stack.run(shutdown.clone()));
        Running { shutdown, task }
    }

    async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        tokio::time::timeout(super::STEP, self.task).await???;
        Ok(())
    }
}

/// msgqueue and the publisher, and a subscriber linked to them, with the development PKI and users in a temp dir.
pub struct RealStack {
    /// Holds the PKI, msgqueue's log and clientdemo's trust.
    pub dir: tempfile::TempDir,
    core: Option<Running>,
    subscriber: Option<Running>,
    msgqueue: SocketAddr,
    publisher: SocketAddr,
    /// The subscriber's address; it keeps its port across [`RealStack::restart_subscriber`].
    pub subscriber_addr: SocketAddr,
    /// A wsmq.v1 client of the publisher.
    publisher_ws: ClientWs,
    next_id: u64,
}

/// The stack configuration of `services` on loopback port 0, state in `dir`, linked to msgqueue at `queue_url`.
fn config(dir: &Path, services: &[Service], queue_url: String) -> Config {
    Config {
        msgqueue_listen: loopback(),
        publisher_listen: loopback(),
        subscriber_listen: loopback(),
        admin_port: 0,
        server: server_args(dir, None),
        services: services.to_vec(),
        link: link_args(queue_url, DEV_USER, DEV_PASSWORD, BackoffArgs::default()),
        access: AccessArgs::default(),
    }
}

impl RealStack {
    /// Starts msgqueue and the publisher, then the subscriber, and connects the publishing client.
    pub async fn start() -> TestResult<RealStack> {
        let dir = tempfile::tempdir()?;
        let core_config = config(
            dir.path(),
            &[Service::Msgqueue, Service::Publisher],
            "wss://localhost:8080".into(),
        );
        let core = wsmq::bind(core_config).await?;
        let msgqueue = core.msgqueue_addr().ok_or("no msgqueue")?;
        let publisher = core.publisher_addr().ok_or("no publisher")?;
        let core = Running::run(core);
        let subscriber_stack = Self::bind_subscriber(dir.path(), msgqueue, loopback()).await?;
        let subscriber_addr = subscriber_stack.subscriber_addr().ok_or("no subscriber")?;
        let publisher_ws = {
            let url = format!("wss://localhost:{}", publisher.port());
            let dialer = dialer(
                &url,
                dir.path(),
                credentials(DEV_USER, DEV_PASSWORD),
                Some(SUBPROTOCOL_V1),
            )?;
            connect(&dialer, PUBLISH_PATH, Some(SUBPROTOCOL_V1)).await?
        };
        Ok(RealStack {
            dir,
            core: Some(core),
            subscriber: Some(Running::run(subscriber_stack)),
            msgqueue,
            publisher,
            subscriber_addr,
            publisher_ws,
            next_id: 1,
        })
    }

    async fn bind_subscriber(
        dir: &Path,
        msgqueue: SocketAddr,
        listen: SocketAddr,
    ) -> TestResult<wsmq::Stack> {
        let mut config = config(
            dir,
            &[Service::Subscriber],
            format!("wss://localhost:{}", msgqueue.port()),
        );
        config.subscriber_listen = listen;
        Ok(wsmq::bind(config).await?)
    }

    /// Stops the subscriber: its clients are closed (1001) and reconnect.
    pub async fn stop_subscriber(&mut self) -> TestResult {
        if let Some(subscriber) = self.subscriber.take() {
            subscriber.stop().await?;
        }
        Ok(())
    }

    /// Starts the subscriber again on its port.
    pub async fn start_subscriber(&mut self) -> TestResult {
        let stack =
            Self::bind_subscriber(self.dir.path(), self.msgqueue, self.subscriber_addr).await?;
        self.subscriber = Some(Running::run(stack));
        Ok(())
    }

    /// Publishes each of `contents` to `topic` and waits for its ack (stored, with its offset).
    pub async fn publish(&mut self, topic: &str, contents: &[&str]) -> TestResult {
        for content in contents {
            let id = self.next_id;
            self.next_id += 1;
            let frame =
                serde_json::json!({ "Topic": topic, "Content": content, "Id": id }).to_string();
            self.publisher_ws.send(Message::text(frame)).await?;
            let answer = next_text(&mut self.publisher_ws).await?;
            match ServerFrame::parse(&answer) {
                Some(ServerFrame::Ack { .. }) => {}
                _ => return Err(format!("the publisher answered {answer}").into()),
            }
        }
        Ok(())
    }

    /// The client binary, configured to use this stack as the development user.
    pub fn client(&self) -> Command {
        clientdemo(
            &format!("wss://localhost:{}", self.publisher.port()),
            &format!("wss://localhost:{}", self.subscriber_addr.port()),
            self.dir.path(),
            (DEV_USER, DEV_PASSWORD),
        )
    }

    /// Stops both stacks and checks they ended cleanly.
    pub async fn stop(mut self) -> TestResult {
        self.stop_subscriber().await?;
        if let Some(core) = self.core.take() {
            core.stop().await?;
        }
        Ok(())
    }
}
