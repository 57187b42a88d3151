//! The client side of service links and tools: dial a `wss://` URL with Basic auth and an optional subprotocol.
//!
//! Errors separate what an operator must fix differently (wrong password, wrong CA, server down, wrong URL) and
//! never include the password, so reconnecting links can log them as they are.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::instrument;

use crate::auth::Credentials;

/// A client WebSocket over TLS, as returned by [`Dialer::dial`].
pub type ClientWs = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Default bound on TCP connect + TLS handshake + WebSocket upgrade.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a dial failed. The variants are what a reconnecting link needs to tell the operator apart.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL is not `wss://host[:port]`.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured (it never holds credentials: they are rejected).
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// TCP connect, TLS handshake and upgrade together took longer than the connect timeout.
    #[error("dialing {target} timed out after {timeout:?}")]
    Timeout {
        /// The URL being dialed.
        target: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The TCP connection failed or broke (server down, wrong port, network).
    #[error("cannot connect to {target}: {source}")]
    Io {
        /// The URL being dialed.
        target: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The server's certificate was rejected: it is not signed by a trusted CA or not valid for the host.
    #[error(
        "TLS certificate of {target} rejected: {source} (pass --ca with the CA that signed it)"
    )]
    TlsVerification {
        /// The URL being dialed.
        target: String,
        /// The verification error.
        source: rustls::Error,
    },
    /// The TLS handshake failed for another reason (protocol mismatch, not a TLS server, ...).
    #[error("TLS handshake with {target} failed: {source}")]
    Tls {
        /// The URL being dialed.
        target: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The server answered `401 Unauthorized`: wrong user or password.
    #[error("{target} rejected the credentials of user {user:?} (HTTP 401)")]
    Unauthorized {
        /// The URL being dialed.
        target: String,
        /// The user name that was refused.
        user: String,
    },
    /// The server answered the upgrade with another HTTP status (e.g. 404 wrong path, 503 at capacity).
    #[error("{target} refused the WebSocket upgrade with HTTP {status}")]
    HttpStatus {
        /// The URL being dialed.
        target: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The server did not accept the subprotocol we require (e.g. an older server without reliable mode).
    #[error("{target} did not accept subprotocol {offered:?}")]
    SubprotocolRejected {
        /// The URL being dialed.
        target: String,
        /// The subprotocol we offered.
        offered: String,
    },
    /// The WebSocket handshake failed otherwise (malformed response, connection closed mid-handshake).
    #[error("WebSocket handshake with {target} failed: {source}")]
    Handshake {
        /// The URL being dialed.
        target: String,
        /// The underlying error.
        source: tokio_tungstenite::tungstenite::Error,
    },
}

/// Everything needed to (re)connect to one server: parsed once, dialed as often as a link needs.
#[derive(Clone)]
pub struct Dialer {
    /// `wss://host:port`, without a trailing slash; paths are appended to it.
    base: String,
    host: String,
    port: u16,
    /// The server address pinned by [`Dialer::resolve`]; `None` resolves the host on every dial.
    addr: Option<SocketAddr>,
    server_name: rustls_pki_types::ServerName<'static>,
    credentials: Credentials,
    connector: TlsConnector,
    subprotocol: Option<String>,
    ws_config: WebSocketConfig,
    connect_timeout: Duration,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("url", &self.base)
            .field("user", &self.credentials.user)
            .field("subprotocol", &self.subprotocol)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Parses `url` (`wss://host[:port][/]`, port 443 by default; IPv6 as `[::1]`) and prepares TLS with `tls`.
    ///
    /// Fails for any other scheme (plain `ws://` is refused: credentials would travel in clear), for credentials
    /// or a path in the URL, and for a host that is not a valid DNS name or IP address. Defaults: no
    /// subprotocol, default WebSocket limits, [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(
        url: &str,
        credentials: Credentials,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Dialer, DialError> {
        let invalid = |reason| DialError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some(scheme) if scheme.eq_ignore_ascii_case("wss") => {}
            Some(scheme) if scheme.eq_ignore_ascii_case("ws") => {
                return Err(invalid("plain ws:// is not supported, use wss://"));
            }
            _ => return Err(invalid("the scheme must be wss://")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "credentials do not belong in the URL; use the user and password settings",
            ));
        }
        if !matches!(
            uri.path_and_query().map(|p| p.as_str()),
            None | Some("" | "/")
        ) {
            return Err(invalid(
                "the URL must not contain a path or query; services choose the path",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| invalid("the host is not a valid DNS name or IP address"))?;
        let port = authority.port_u16().unwrap_or(443);
        Ok(Dialer {
            base: format!("wss://{}:{port}", authority.host()),
            host,
            port,
            addr: None,
            server_name,
            credentials,
            connector: TlsConnector::from(tls),
            subprotocol: None,
            ws_config: WebSocketConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// Offers `subprotocol` (e.g. `wsmq.v1`) in the handshake; a server that does not select it fails the dial
    /// with [`DialError::SubprotocolRejected`].
    pub fn with_subprotocol(mut self, subprotocol: impl Into<String>) -> Self {
        self.subprotocol = Some(subprotocol.into());
        self
    }

    /// Sets the WebSocket limits (message and frame size, buffers) of dialed connections.
    pub fn with_ws_config(mut self, ws_config: WebSocketConfig) -> Self {
        self.ws_config = ws_config;
        self
    }

    /// Bounds the whole dial: TCP connect, TLS handshake and WebSocket upgrade.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Resolves the host once and dials that address from now on, preferring IPv4 (so 127.0.0.x source
    /// addresses can reach it), instead of resolving on every dial. For clients that open thousands of
    /// connections to one server (the bench); a reconnecting link keeps resolving so it follows DNS changes.
    ///
    /// Fails with [`DialError::Io`] when the name does not resolve.
    pub async fn resolve(mut self) -> Result<Self, DialError> {
        let lookup_error = |source| DialError::Io {
            target: self.base.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(lookup_error)?
            .collect();
        let addr = addrs
            .iter()
            .find(|addr| addr.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| {
                lookup_error(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the host resolves to no address",
                ))
            })?;
        self.addr = Some(addr);
        Ok(self)
    }

    /// The server address pinned by [`Dialer::resolve`], if any.
    pub fn resolved_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The server's base URL (`wss://host:port`), for logs.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Connects to `path` on the server (e.g. `/popmsg`) and returns the WebSocket and the subprotocol the
    /// server selected.
    ///
    /// Sends `Authorization: Basic` and, if configured, `Sec-WebSocket-Protocol`. TCP_NODELAY is set because
    /// links send small frames whose latency matters. Fails with a [`DialError`] that says what to fix.
    pub async fn dial(&self, path: &str) -> Result<(ClientWs, Option<String>), DialError> {
        self.dial_from(path, None).await
    }

    /// Like [`Dialer::dial`], but binds the local end of the connection to `source` first when given: a client
    /// opening 10,000+ connections to one server port spreads them over several 127.0.0.x addresses so one
    /// source address's ephemeral ports do not run out. A source that cannot reach the server fails with
    /// [`DialError::Io`].
    #[instrument(skip_all, fields(url = %self.base, path))]
    pub async fn dial_from(
        &self,
        path: &str,
        source: Option<IpAddr>,
    ) -> Result<(ClientWs, Option<String>), DialError> {
        let target = if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        };
        match tokio::time::timeout(self.connect_timeout, self.connect(&target, source)).await {
            Ok(result) => result,
            Err(_) => Err(DialError::Timeout {
                target,
                timeout: self.connect_timeout,
            }),
        }
    }

    /// Opens a TLS connection to the server with nothing on it yet, under the connect timeout: for HTTP API
    /// clients ([`crate::api_client`]), which speak HTTP/1.1 on it themselves.
    pub async fn connect_tls(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, DialError> {
        let target = self.base.clone();
        let connect = async {
            let io_error = |source| DialError::Io {
                target: target.clone(),
                source,
            };
            let tcp = self.tcp_connect(None).await.map_err(io_error)?;
            tcp.set_nodelay(true).map_err(io_error)?;
            self.connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|err| classify_tls_error(&target, err))
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(DialError::Timeout {
                target: target.clone(),
                timeout: self.connect_timeout,
            }),
        }
    }

    /// The credentials this dialer presents.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The `host[:port]` of the URL, as a `Host` header names it.
    pub fn authority(&self) -> &str {
        self.base.strip_prefix("wss://").unwrap_or(&self.base)
    }

    async fn connect(
        &self,
        target: &str,
        source: Option<IpAddr>,
    ) -> Result<(ClientWs, Option<String>), DialError> {
        let handshake_error = |source| DialError::Handshake {
            target: target.to_owned(),
            source,
        };
        let mut request = target.into_client_request().map_err(handshake_error)?;
        let mut authorization =
            HeaderValue::from_str(&self.credentials.basic_header()).map_err(|_| {
                DialError::InvalidUrl {
                    url: self.base.clone(),
                    reason: "the credentials cannot be encoded as an HTTP header",
                }
            })?;
        authorization.set_sensitive(true);
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization);
        if let Some(subprotocol) = &self.subprotocol {
            let value = HeaderValue::from_str(subprotocol).map_err(|_| DialError::InvalidUrl {
                url: self.base.clone(),
                reason: "the subprotocol is not a valid header value",
            })?;
            request
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }

        let tcp = self
            .tcp_connect(source)
            .await
            .map_err(|source| DialError::Io {
                target: target.to_owned(),
                source,
            })?;
        tcp.set_nodelay(true).map_err(|source| DialError::Io {
            target: target.to_owned(),
            source,
        })?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|err| classify_tls_error(target, err))?;
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, tls, Some(self.ws_config))
                .await
                .map_err(|err| self.classify_handshake_error(target, err))?;
        let negotiated = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok((ws, negotiated))
    }

    /// Opens the TCP connection: to the pinned address or the host's addresses, from `source` if given.
    async fn tcp_connect(&self, source: Option<IpAddr>) -> io::Result<TcpStream> {
        let Some(source) = source else {
            return match self.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((self.host.as_str(), self.port)).await,
            };
        };
        let addr = match self.addr {
            Some(addr) => addr,
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await?
                .find(|addr| addr.is_ipv4() == source.is_ipv4())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        "the host has no address of the source address's family",
                    )
                })?,
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(addr).await
    }

    fn classify_handshake_error(
        &self,
        target: &str,
        err: tokio_tungstenite::tungstenite::Error,
    ) -> DialError {
        use tokio_tungstenite::tungstenite::Error;
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        let target = target.to_owned();
        match err {
            Error::Http(response) if response.status().as_u16() == 401 => DialError::Unauthorized {
                target,
                user: self.credentials.user.clone(),
            },
            Error::Http(response) => DialError::HttpStatus {
                target,
                status: response.status().as_u16(),
            },
            Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)) => {
                DialError::SubprotocolRejected {
                    target,
                    offered: self.subprotocol.clone().unwrap_or_default(),
                }
            }
            Error::Io(source) => DialError::Io { target, source },
            source => DialError::Handshake { target, source },
        }
    }
}

/// The servers a reconnecting link may use, in the order it tries them: one [`Dialer`] per URL, never empty.
///
/// Several URLs name interchangeable instances of one service (msgqueue instances sharing a Redis): when one
/// fails, a [`crate::link::Link`] moves on to the next. A single dialer converts into a list of one.
#[derive(Debug, Clone)]
pub struct Dialers {
    dialers: Vec<Dialer>,
}

impl Dialers {
    /// `first`, then `rest`, in that order.
    pub fn new(first: Dialer, rest: impl IntoIterator<Item = Dialer>) -> Self {
        let mut dialers = vec![first];
        dialers.extend(rest);
        Self { dialers }
    }

    /// How many servers there are (at least one).
    pub fn count(&self) -> usize {
        self.dialers.len()
    }

    /// The server at `index` in the list, counting round it: index [`Dialers::count`] is the first again.
    pub fn get(&self, index: usize) -> &Dialer {
        &self.dialers[index % self.dialers.len()]
    }
}

impl From<Dialer> for Dialers {
    fn from(dialer: Dialer) -> Self {
        Self::new(dialer, [])
    }
}

impl fmt::Display for Dialers {
    /// The base URLs, comma-separated (as `--queue-url` takes them); they never hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, dialer) in self.dialers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(dialer.url())?;
        }
        Ok(())
    }
}

/// Separates "the certificate is not trusted" (fix the CA) from other TLS failures.
fn classify_tls_error(target: &str, err: io::Error) -> DialError {
    let target = target.to_owned();
    let rustls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(
            source
            @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) => DialError::TlsVerification {
            target,
            source: source.clone(),
        },
        _ => DialError::Tls {
            target,
            source: err,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use crate::protocol::PUSH_PATH;

    fn tls() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => Arc::new(
                builder
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            Err(err) => panic!("ring provider supports the default versions: {err}"),
        }
    }

    fn dialer(url: &str) -> Result<Dialer, DialError> {
        Dialer::new(url, Credentials::new("svc", Secret::new("pw")), tls())
    }

    #[test]
    fn wss_urls_are_parsed_with_default_and_explicit_ports() {
        let cases = [
            ("wss://localhost:8080", "wss://localhost:8080"),
            ("wss://localhost:8080/", "wss://localhost:8080"),
            ("WSS://example.com", "wss://example.com:443"),
            ("wss://127.0.0.1:9", "wss://127.0.0.1:9"),
            ("wss://[::1]:8080", "wss://[::1]:8080"),
        ];
        for (url, base) in cases {
            let parsed = dialer(url).map(|d| d.url().to_owned());
            assert_eq!(parsed.ok().as_deref(), Some(base), "{url}");
        }
    }

    #[test]
    fn non_wss_urls_paths_and_credentials_are_rejected() {
        for url in [
            "ws://localhost:8080",
            "https://localhost",
            "localhost:8080",
            "wss://user:pw@localhost:8080",
            "wss://localhost:8080/pushmsg",
            "not a url",
        ] {
            match dialer(url) {
                Err(DialError::InvalidUrl { reason, .. }) => assert!(!reason.is_empty()),
                other => panic!("{url} gave {other:?}"),
            }
        }
    }

    #[test]
    fn debug_shows_user_but_not_password() {
        let shown = format!("{:?}", dialer("wss://localhost:8080").ok());
        assert!(shown.contains("svc"), "{shown}");
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[tokio::test]
    async fn refused_connection_is_an_io_error() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        drop(listener);
        let result = dialer(&format!("wss://{addr}"))?.dial(PUSH_PATH).await;
        assert!(matches!(result, Err(DialError::Io { .. })), "{result:?}");
        Ok(())
    }

    #[tokio::test]
    async fn resolved_dialer_connects_from_the_chosen_source_address()
    -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dialer = dialer(&format!("wss://{addr}"))?
            .with_connect_timeout(Duration::from_secs(5))
            .resolve()
            .await?;
        assert_eq!(dialer.resolved_addr(), Some(addr));
        let source = IpAddr::from([127, 0, 0, 2]);
        // The listener never answers the TLS handshake: the dial ends when the accepted socket is dropped.
        let (dialed, accepted) = tokio::join!(dialer.dial_from(PUSH_PATH, Some(source)), async {
            let accepted = listener.accept().await;
            accepted.map(|(_, peer)| peer)
        });
        assert_eq!(accepted?.ip(), source);
        assert!(dialed.is_err(), "no TLS server, yet the dial succeeded");
        Ok(())
    }

    #[tokio::test]
    async fn server_that_never_answers_times_out() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dialer =
            dialer(&format!("wss://{addr}"))?.with_connect_timeout(Duration::from_millis(200));
        let result = dialer.dial("popmsg").await;
        match result {
            Err(DialError::Timeout { target, .. }) => {
                assert!(target.ends_with("/popmsg"), "{target}")
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(listener);
        Ok(())
    }
}
