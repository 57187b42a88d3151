//! Test helpers for the listener: a server on 127.0.0.1:0 with a dev PKI in a tempdir and an echo handler, and
//! clients that speak raw HTTP over TLS or WebSocket with full control over the headers. Shared helpers (bounds,
//! the fake listener, frame readers) come from `wsmq-testkit`.

#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use wsmq_core::auth::Credentials;
pub use wsmq_core::dial::ClientWs;
use wsmq_core::limits::Limits;
use wsmq_core::metrics::ListenerMetrics;
use wsmq_core::server::{Accepted, Route, ServeError, ServerConfig};
use wsmq_core::{tls, ws};
use wsmq_testkit::config::{credentials, users};
use wsmq_testkit::server::{FakeServer, server_config};
use wsmq_testkit::within;
pub use wsmq_testkit::{STEP, TestResult};

/// The one user the test server knows.
pub const USER: &str = "alice";
/// Alice's password.
pub const PASSWORD: &str = "correct horse";
/// The page the test server serves at `/`.
pub const PAGE: &[u8] = b"<!doctype html><title>wsmq</title>";

/// The test server's routes: an echo WebSocket at `/echo` speaking `wsmq.v1`, and a page at `/`.
pub fn routes() -> Vec<Route> {
    vec![
        Route::WebSocket {
            path: "/echo",
            subprotocols: &["wsmq.v1"],
        },
        Route::Page {
            path: "/",
            content_type: "text/html; charset=utf-8",
            body: PAGE,
        },
    ]
}

/// Limits for tests: short timeouts so failures show fast.
pub fn test_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

/// A running listener and what a test needs to talk to it.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to shut it down.
    pub shutdown: CancellationToken,
    /// The `serve` task.
    pub task: JoinHandle<Result<(), ServeError>>,
    /// The listener's metrics.
    pub metrics: ListenerMetrics,
    /// Trusts the dev CA.
    pub client_tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

/// Starts a listener with `limits`, the [`routes`] and an echo handler.
pub async fn start(limits: Limits) -> TestResult<TestServer> {
    start_with(limits, |_| {}).await
}

/// Like [`start`], letting the test adjust the config (origins, routes) first.
pub async fn start_with(
    limits: Limits,
    adjust: impl FnOnce(&mut ServerConfig),
) -> TestResult<TestServer> {
    start_custom(limits, adjust, echo).await
}

/// Like [`start_with`], with a handler of the test's own.
pub async fn start_custom<H, F>(
    limits: Limits,
    adjust: impl FnOnce(&mut ServerConfig),
    handler: H,
) -> TestResult<TestServer>
where
    H: Fn(Accepted) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir()?;
    let mut config = server_config(dir.path(), &users(USER, PASSWORD), limits, routes())?;
    let pki = tls::ensure_dev_pki(dir.path())?;
    let client_tls = tls::client_config(Some(&pki.ca_cert), None, false)?;
    adjust(&mut config);
    let metrics = config.metrics.clone();
    let FakeServer {
        addr,
        shutdown,
        task,
    } = FakeServer::start(wsmq_testkit::config::loopback(), config, handler).await?;
    Ok(TestServer {
        addr,
        shutdown,
        task,
        metrics,
        client_tls,
        _dir: dir,
    })
}

/// The test handler: greets with `"<user> <path> <subprotocol or compat>"`, then echoes every message until the
/// peer or the server closes. Uses the shared `ws` plumbing, as services do.
pub async fn echo(accepted: Accepted) {
    let limits = test_limits();
    let (mut reader, outbox, writer) = ws::split(accepted.ws, &limits, 16, &accepted.shutdown);
    let greeting = format!(
        "{} {} {}",
        accepted.user,
        accepted.path,
        accepted.subprotocol.unwrap_or("compat")
    );
    if outbox.send(Message::Text(greeting.into())).await.is_ok() {
        while let Ok(Some(message)) = reader.next().await {
            if outbox.send(message).await.is_err() {
                break;
            }
        }
    }
    drop(outbox);
    let _ = writer.await;
}

/// Basic credentials of the test user.
pub fn good_credentials() -> Credentials {
    credentials(USER, PASSWORD)
}

/// Credentials with a wrong password.
pub fn wrong_credentials() -> Credentials {
    credentials(USER, "wrong")
}

impl TestServer {
    /// TCP + TLS to the server, verifying its certificate for `localhost`.
    pub async fn tls_connect(&self) -> TestResult<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.tls_over(tcp).await
    }

    /// A plain TCP connection to the server from `source` (any address in 127.0.0.0/8), sending nothing.
    pub async fn tcp_connect_from(&self, source: IpAddr) -> TestResult<TcpStream> {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        Ok(within("a TCP connection", socket.connect(self.addr)).await??)
    }

    /// TLS over an already connected TCP stream, verifying the certificate for `localhost`.
    pub async fn tls_over(&self, tcp: TcpStream) -> TestResult<TlsStream<TcpStream>> {
        let connector = TlsConnector::from(self.client_tls.clone());
        let tls = within(
            "the TLS handshake",
            connector.connect(ServerName::try_from("localhost")?, tcp),
        )
        .await??;
        Ok(tls)
    }

    /// Sends a raw HTTP request head over TLS and returns the whole response (the server closes after it), or
    /// just the head of a `101 Switching Protocols`.
    pub async fn raw_request(&self, head: &str) -> TestResult<String> {
        self.raw_request_within(head, STEP).await
    }

    /// [`Self::raw_request`] with one bound on the whole exchange (connect, TLS, request, response), for tests
    /// that start many handshakes at once, which can take longer than [`STEP`] on a loaded machine.
    pub async fn raw_request_within(&self, head: &str, bound: Duration) -> TestResult<String> {
        let exchange = async {
            let tcp = TcpStream::connect(self.addr).await?;
            let connector = TlsConnector::from(self.client_tls.clone());
            let mut tls = connector
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            tls.write_all(head.as_bytes()).await?;
            let mut response = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let n = tls.read(&mut chunk).await?;
                response.extend_from_slice(&chunk[..n]);
                let switching = response.starts_with(b"HTTP/1.1 101 ")
                    && response.windows(4).any(|w| w == b"\r\n\r\n");
                if n == 0 || switching {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        String::from_utf8_lossy(&response).into_owned(),
                    );
                }
            }
        };
        tokio::time::timeout(bound, exchange).await?
    }

    /// A WebSocket upgrade request for `path` with the given extra headers (no credentials unless given).
    pub fn upgrade_request(&self, path: &str, headers: &[(&'static str, String)]) -> String {
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            self.addr.port()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    /// Opens a WebSocket to `path` with extra request headers; returns it with the server's response.
    pub async fn ws_connect(
        &self,
        path: &str,
        headers: &[(&'static str, String)],
    ) -> Result<(ClientWs, tungstenite::handshake::client::Response), tungstenite::Error> {
        let tls = self
            .tls_connect()
            .await
            .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e)))?;
        let mut request =
            format!("wss://localhost:{}{path}", self.addr.port()).into_client_request()?;
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            request.headers_mut().append(*name, value);
        }
        let connect = tokio_tungstenite::client_async_with_config(request, tls, None);
        tokio::time::timeout(STEP, connect)
            .await
            .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e)))?
    }

    /// Opens an authenticated WebSocket to `/echo` from `source` (in 127.0.0.0/8) and reads the greeting.
    pub async fn ws_connect_good_from(&self, source: IpAddr) -> TestResult<(ClientWs, String)> {
        let tls = self.tls_over(self.tcp_connect_from(source).await?).await?;
        let mut request =
            format!("wss://localhost:{}/echo", self.addr.port()).into_client_request()?;
        request.headers_mut().append(
            "Authorization",
            HeaderValue::from_str(&good_credentials().basic_header())?,
        );
        let connect = tokio_tungstenite::client_async_with_config(request, tls, None);
        let (mut ws, _) = within("the upgrade", connect).await??;
        let greeting = next_text(&mut ws).await?;
        Ok((ws, greeting))
    }

    /// Opens an authenticated WebSocket to `/echo` and reads the greeting.
    pub async fn ws_connect_good(&self) -> TestResult<(ClientWs, String)> {
        let auth = ("Authorization", good_credentials().basic_header());
        let (mut ws, _) = self.ws_connect("/echo", &[auth]).await?;
        let greeting = next_text(&mut ws).await?;
        Ok((ws, greeting))
    }

    /// Cancels the server and waits for `serve` to return.
    pub async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        within("the server to stop", self.task).await???;
        Ok(())
    }
}

pub use wsmq_testkit::client::next_text;

/// Reads until the server's Close frame and returns its code as a number, skipping data and pings.
pub async fn close_code(ws: &mut ClientWs) -> TestResult<u16> {
    Ok(wsmq_testkit::client::close_code(ws).await?.into())
}

/// Sends a text message and reads the echo.
pub async fn round_trip(ws: &mut ClientWs, text: &str) -> TestResult<String> {
    within("a send", ws.send(Message::Text(text.into()))).await??;
    Ok(next_text(ws).await?)
}

/// The status code of a raw HTTP response.
pub fn status(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

/// Everything logged, shared by every writer the tracing subscriber makes: for tests that read their own logs.
#[derive(Clone, Default)]
pub struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}
