//! wsmq services running in the test process on port 0, with their development PKI in a temp dir.

// Each test binary uses part of this harness.
#![allow(dead_code)]

use std::time::Duration;

use clap::Parser;
use wsmq_testkit::service::ServiceTask;

/// Bound on a whole scenario run of the bench (longer than a single step's `wsmq_testkit::STEP`).
pub(crate) const BOUND: Duration = Duration::from_secs(60);
/// The only user the test msgqueue knows.
pub(crate) const USER: &str = "bench";
/// Its password.
pub(crate) const PASSWORD: &str = "pw";

#[derive(Parser)]
struct MsgqueueFlags {
    #[command(flatten)]
    config: wsmq_msgqueue::Config,
}

/// msgqueue serving `wss://localhost:<port>` until [`Msgqueue::stop`].
pub(crate) struct Msgqueue {
    /// `wss://localhost:<port>`.
    pub(crate) url: String,
    /// Holds the dev CA the bench trusts through `--data-dir`.
    pub(crate) dir: tempfile::TempDir,
    service: ServiceTask<wsmq_msgqueue::Error>,
}

impl Msgqueue {
    /// Starts msgqueue with `extra` flags (e.g. `--fsync always`) on top of port 0 and the test user.
    pub(crate) async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap().to_owned();
        let users = format!("{USER}:{PASSWORD}");
        let mut args = vec![
            "msgqueue",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--users",
            &users,
        ];
        args.extend_from_slice(extra);
        let config = MsgqueueFlags::try_parse_from(args).unwrap().config;
        let bound = wsmq_msgqueue::bind(config).await.unwrap();
        let port = bound.local_addr().port();
        Self {
            url: format!("wss://localhost:{port}"),
            dir,
            service: ServiceTask::spawn(|shutdown| bound.run(shutdown)),
        }
    }

    /// The data dir, to pass as the bench's `--data-dir`.
    pub(crate) fn data_dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Graceful stop, bounded.
    pub(crate) async fn stop(self) {
        self.service.stop().await.expect("msgqueue stops cleanly");
    }
}

#[derive(Parser)]
struct PublisherFlags {
    #[command(flatten)]
    config: wsmq_publisher::Config,
}

#[derive(Parser)]
struct SubscriberFlags {
    #[command(flatten)]
    config: wsmq_subscriber::Config,
}

/// msgqueue, publisher and subscriber in this process, sharing one data dir (so they trust each other's
/// development certificates), each on port 0.
pub(crate) struct Stack {
    /// msgqueue, which also owns the data dir.
    pub(crate) queue: Msgqueue,
    /// `wss://localhost:<port>` of the publisher.
    pub(crate) publisher_url: String,
    /// `wss://localhost:<port>` of the subscriber.
    pub(crate) subscriber_url: String,
    publisher: ServiceTask<wsmq_publisher::Error>,
    subscriber: ServiceTask<wsmq_subscriber::Error>,
}

impl Stack {
    /// Starts the three services; the link users are the test user.
    pub(crate) async fn start() -> Self {
        let queue = Msgqueue::start(&["--storage", "memory"]).await;
        let users = format!("{USER}:{PASSWORD}");
        let flags = |name: &'static str| {
            vec![
                name.to_owned(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin-listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                queue.data_dir().to_owned(),
                "--users".into(),
                users.clone(),
                "--queue-url".into(),
                queue.url.clone(),
                "--queue-user".into(),
                USER.into(),
                "--queue-password".into(),
                PASSWORD.into(),
            ]
        };
        let publisher = PublisherFlags::try_parse_from(flags("publisher"))
            .unwrap()
            .config;
        let publisher = wsmq_publisher::bind(publisher).await.unwrap();
        let publisher_url = format!("wss://localhost:{}", publisher.local_addr().port());
        let publisher = ServiceTask::spawn(|shutdown| publisher.run(shutdown));
        let subscriber = SubscriberFlags::try_parse_from(flags("subscriber"))
            .unwrap()
            .config;
        let subscriber = wsmq_subscriber::bind(subscriber).await.unwrap();
        let subscriber_url = format!("wss://localhost:{}", subscriber.local_addr().port());
        let subscriber = ServiceTask::spawn(|shutdown| subscriber.run(shutdown));
        Self {
            queue,
            publisher_url,
            subscriber_url,
            publisher,
            subscriber,
        }
    }

    /// Stops the publisher and subscriber, then msgqueue, each bounded.
    pub(crate) async fn stop(self) {
        let (publisher, subscriber) = tokio::join!(self.publisher.stop(), self.subscriber.stop());
        publisher.expect("publisher stops cleanly");
        subscriber.expect("subscriber stops cleanly");
        self.queue.stop().await;
    }
}
