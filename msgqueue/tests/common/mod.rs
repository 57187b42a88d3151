//! Test harness for msgqueue as a service: start it on port 0 with a dev PKI in a temp dir, and small clients that
//! speak compat and reliable mode over real TLS WebSockets. Bounds, flags and dialing come from `wsmq-testkit`.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tungstenite::Message;
use wsmq_core::dial::{ClientWs, Dialer};
use wsmq_core::limits::Limits;
use wsmq_core::protocol::queue::{Delivery, FrameReader, FrameWriter, PopRecord, PushReply};
use wsmq_core::protocol::{POP_PATH, PUSH_PATH, SUBPROTOCOL_V1};
use wsmq_msgqueue::config::{QueueArgs, StorageKind};
use wsmq_msgqueue::queue::FsyncPolicy;
use wsmq_msgqueue::{Bound, Config};
use wsmq_testkit::config::{credentials, service_args, users};
use wsmq_testkit::expect_within;
use wsmq_testkit::service::ServiceTask;

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret";

/// msgqueue on loopback port 0 with its log on disk in `data_dir`, fsyncing every write, [`USER`] its only user.
pub fn config(data_dir: &Path) -> Config {
    Config {
        service: service_args(data_dir, Some(users(USER, PASSWORD)), Limits::default()),
        queue: QueueArgs {
            storage: StorageKind::Disk,
            fsync: FsyncPolicy::Always,
            ..QueueArgs::default()
        },
    }
}

/// A msgqueue running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub queue: wsmq_msgqueue::queue::Queue,
    service: ServiceTask<wsmq_msgqueue::Error>,
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let data_dir = config.service.server.data_dir.clone();
        let bound: Bound = wsmq_msgqueue::bind(config).await.expect("msgqueue binds");
        let addr = bound.local_addr();
        let admin = bound.admin_addr();
        let queue = bound.queue().clone();
        Self {
            addr,
            admin,
            data_dir,
            queue,
            service: ServiceTask::spawn(|shutdown| bound.run(shutdown)),
        }
    }

    /// Graceful stop: drains connections and fsyncs the log.
    pub async fn stop(self) {
        self.service.stop().await.unwrap();
    }

    pub fn url(&self) -> String {
        format!("wss://localhost:{}", self.addr.port())
    }

    pub fn dialer(&self, subprotocol: bool) -> Dialer {
        dialer(&self.url(), &self.data_dir, subprotocol)
    }
}

/// A dialer of msgqueue at `url` as [`USER`], offering `wsmq.v1` when `subprotocol`, else compat (ws-go's pusher
/// and popper offer nothing).
pub fn dialer(url: &str, data_dir: &Path, subprotocol: bool) -> Dialer {
    let subprotocol = subprotocol.then_some(SUBPROTOCOL_V1);
    wsmq_testkit::client::dialer(url, data_dir, credentials(USER, PASSWORD), subprotocol).unwrap()
}

/// Reliable-mode producer: HELLO once, then PUSH frames; reads ACKED/REJECT replies.
pub struct Producer {
    pub ws: ClientWs,
    pub id: u64,
}

impl Producer {
    pub async fn connect(dialer: &Dialer, id: u64) -> Self {
        let (ws, proto) = expect_within("dial /pushmsg", dialer.dial(PUSH_PATH))
            .await
            .unwrap();
        assert_eq!(proto.as_deref(), Some(SUBPROTOCOL_V1));
        let mut p = Self { ws, id };
        let mut w = FrameWriter::default();
        w.push_record(&wsmq_core::protocol::queue::PushRecord::Hello { producer: id });
        p.ws.send(Message::Binary(w.take())).await.unwrap();
        p
    }

    /// Sends one frame holding every (seq, payload).
    pub async fn push(&mut self, items: &[(u64, Bytes)]) {
        let mut w = FrameWriter::default();
        for (seq, payload) in items {
            w.push(*seq, payload);
        }
        self.ws.send(Message::Binary(w.take())).await.unwrap();
    }

    /// Sends one frame holding a PUSH_PLACED for every (seq, payload).
    pub async fn push_placed(&mut self, items: &[(u64, Bytes)]) {
        let mut w = FrameWriter::default();
        for (seq, payload) in items {
            w.push_placed(*seq, payload);
        }
        self.ws.send(Message::Binary(w.take())).await.unwrap();
    }

    /// Reads replies until `seq` is acked (or rejected); returns every reply seen.
    pub async fn until_settled(&mut self, seq: u64) -> Vec<PushReply> {
        let mut seen = Vec::new();
        loop {
            let msg = expect_within("push reply", self.ws.next())
                .await
                .expect("connection open")
                .unwrap();
            let Message::Binary(frame) = msg else {
                continue;
            };
            let mut r = FrameReader::new(frame, 0);
            while let Some(reply) = r.next_push_reply().unwrap() {
                seen.push(reply);
                match reply {
                    PushReply::Acked { upto } if upto >= seq => return seen,
                    PushReply::Reject { seq: s, .. } if s == seq => return seen,
                    _ => {}
                }
            }
        }
    }
}

/// Reliable-mode consumer: grants credit, reads DELIVER records, acks.
pub struct Consumer {
    pub ws: ClientWs,
    pending: std::collections::VecDeque<Delivery>,
}

impl Consumer {
    pub async fn connect(dialer: &Dialer, credit: u32) -> Self {
        Self::connect_to(dialer, POP_PATH, credit).await
    }

    /// Like [`Consumer::connect`] on `path`, e.g. `/popmsg?group=a` for a consumer group.
    pub async fn connect_to(dialer: &Dialer, path: &str, credit: u32) -> Self {
        let (ws, proto) = expect_within("dial /popmsg", dialer.dial(path))
            .await
            .unwrap();
        assert_eq!(proto.as_deref(), Some(SUBPROTOCOL_V1));
        let mut c = Self {
            ws,
            pending: Default::default(),
        };
        c.send(&[PopRecord::Credit { n: credit }]).await;
        c
    }

    pub async fn send(&mut self, records: &[PopRecord]) {
        let mut w = FrameWriter::default();
        records.iter().for_each(|r| w.pop_record(*r));
        self.ws.send(Message::Binary(w.take())).await.unwrap();
    }

    pub async fn ack(&mut self, ids: &[u64]) {
        let records: Vec<_> = ids.iter().map(|&id| PopRecord::Ack { id }).collect();
        self.send(&records).await;
    }

    pub async fn next(&mut self) -> Delivery {
        loop {
            if let Some(d) = self.pending.pop_front() {
                return d;
            }
            let msg = expect_within("delivery", self.ws.next())
                .await
                .expect("connection open")
                .unwrap();
            if let Message::Binary(frame) = msg {
                let mut r = FrameReader::new(frame, usize::MAX);
                while let Some(d) = r.next_delivery().unwrap() {
                    self.pending.push_back(d);
                }
            }
        }
    }

    /// Waits briefly and reports whether anything at all was delivered (for "nothing more arrives" checks).
    pub async fn idle_for(&mut self, wait: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Binary(_)))) => return false,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return true,
            }
        }
    }
}

pub fn payload(producer: u64, seq: u64) -> Bytes {
    Bytes::from(format!("p{producer}-s{seq}"))
}

pub fn parse_payload(b: &[u8]) -> (u64, u64) {
    let s = std::str::from_utf8(b).unwrap();
    let (p, s) = s.trim_start_matches('p').split_once("-s").unwrap();
    (p.parse().unwrap(), s.parse().unwrap())
}

/// Sends `request` as raw bytes over TLS to `mq` and returns everything it answers before closing: for requests a
/// WebSocket client would never send (bad queries, missing headers).
pub async fn raw_https(
    mq: &Running,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    request: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(mq.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = expect_within("tls", connector.connect(name, tcp))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = expect_within("response", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
