//! Opening benchmark connections: TCP (optionally from a chosen 127.0.0.x source address), TLS, and the
//! WebSocket upgrade with Basic auth and an optional subprotocol.
//!
//! This is core's `Dialer` path with one addition the scenarios need: binding the socket's source address
//! before connecting, so 10,000+ connections to one server port do not exhaust one source address's
//! ephemeral ports. The target address is resolved once, not per connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsmq_core::auth::Credentials;

use crate::cli::Common;

/// A benchmark client connection.
pub type Ws = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Read buffer of connections in scenarios with many connections: idle connections should cost little.
const SMALL_READ_BUFFER: usize = 4 * 1024;

/// One server endpoint: its URL for requests, the resolved address and the TLS name.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    addr: SocketAddr,
    server_name: rustls_pki_types::ServerName<'static>,
}

impl Target {
    /// Resolves `base` (`wss://host[:port]`) once and appends `path`. Prefers IPv4 so 127.0.0.x source
    /// addresses can be used.
    pub async fn resolve(base: &str, path: &str) -> anyhow::Result<Self> {
        let uri: Uri = base
            .parse()
            .with_context(|| format!("invalid URL {base:?}"))?;
        if !uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("wss"))
        {
            bail!("{base:?}: only wss:// URLs are supported");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("{base:?}: no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
        let server_name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
        Ok(Self {
            url: format!("wss://{}:{port}{path}", authority.host()),
            addr,
            server_name,
        })
    }

    /// The full URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Credentials, trust and limits shared by every connection of a run.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    authorization: HeaderValue,
    ws_config: WebSocketConfig,
    timeout: Duration,
}

impl Connector {
    /// Builds TLS trust from `--ca`/`--insecure`/the data dir's dev CA and the Basic auth header.
    /// `many_connections` shrinks buffers so thousands of connections fit in memory.
    pub fn new(common: &Common, many_connections: bool) -> anyhow::Result<Self> {
        let tls = wsmq_core::tls::client_config(
            common.ca.as_deref(),
            Some(Path::new(&common.data_dir)),
            common.insecure,
        )?;
        let credentials = Credentials::new(common.user.clone(), common.password.clone());
        Self::from_parts(tls, &credentials, many_connections, common.connect_timeout)
    }

    /// Builds a connector from ready parts (tests use their own TLS configuration).
    pub fn from_parts(
        tls: Arc<rustls::ClientConfig>,
        credentials: &Credentials,
        many_connections: bool,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut authorization = HeaderValue::from_str(&credentials.basic_header())
            .map_err(|_| anyhow!("the credentials cannot be sent as an HTTP header"))?;
        authorization.set_sensitive(true);
        let mut ws_config = WebSocketConfig::default();
        if many_connections {
            ws_config = ws_config
                .read_buffer_size(SMALL_READ_BUFFER)
                .write_buffer_size(0);
        }
        Ok(Self {
            tls: TlsConnector::from(tls),
            authorization,
            ws_config,
            timeout,
        })
    }

    /// Connects to `target`, from `source` if given, offering `subprotocol` if given; returns the socket
    /// and the subprotocol the server selected. Bounded by the connect timeout.
    pub async fn connect(
        &self,
        target: &Target,
        subprotocol: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<(Ws, Option<String>), ConnectError> {
        tokio::time::timeout(
            self.timeout,
            self.connect_inner(target, subprotocol, source),
        )
        .await
        .map_err(|_| ConnectError::Other(anyhow!("connecting to {} timed out", target.url)))?
    }

    async fn connect_inner(
        &self,
        target: &Target,
        subprotocol: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<(Ws, Option<String>), ConnectError> {
        let mut request = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Other(e.into()))?;
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        if let Some(protocol) = subprotocol {
            let value = HeaderValue::from_str(protocol)
                .map_err(|_| ConnectError::Other(anyhow!("bad subprotocol {protocol:?}")))?;
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        let tcp = tcp_connect(target.addr, source)
            .await
            .with_context(|| format!("connecting to {}", target.url))?;
        let tls = self
            .tls
            .connect(target.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", target.url))?;
        match tokio_tungstenite::client_async_with_config(request, tls, Some(self.ws_config)).await
        {
            Ok((ws, response)) => {
                let selected = response
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Ok((ws, selected))
            }
            Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(_))) => {
                Err(ConnectError::SubprotocolRejected)
            }
            Err(WsError::Http(response)) => Err(ConnectError::Other(anyhow!(
                "{} refused the upgrade with HTTP {}",
                target.url,
                response.status()
            ))),
            Err(err) => Err(ConnectError::Other(
                anyhow::Error::new(err).context(format!("WebSocket handshake with {}", target.url)),
            )),
        }
    }
}

/// Why a connection failed: the caller falls back to compat mode on the first kind.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server did not select the subprotocol we offered (a ws-go server, say).
    #[error("the server did not select the offered subprotocol")]
    SubprotocolRejected,
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Source address of connection `i` when spreading over `k` loopback addresses: 127.0.0.(1 + i % k).
/// `None` when `k` is 0 or the target is not IPv4 loopback (other sources could not reach it).
pub fn source_ip(i: usize, k: u8, target: &Target) -> Option<IpAddr> {
    if k == 0 || !matches!(target.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
        return None;
    }
    let last = 1 + (i % usize::from(k)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// Raises the soft open-files limit to the hard limit and returns it, so a run can hold as many connections
/// as the machine allows (each connection is a file descriptor).
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%err, "cannot raise the open-files limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targets_resolve_wss_urls_and_refuse_others() {
        let t = Target::resolve("wss://127.0.0.1:9", "/publish")
            .await
            .unwrap();
        assert_eq!(t.url(), "wss://127.0.0.1:9/publish");
        assert!(Target::resolve("ws://127.0.0.1:9", "/x").await.is_err());
    }

    #[tokio::test]
    async fn source_addresses_cycle_over_loopback_only() {
        let t = Target::resolve("wss://127.0.0.1:9", "/").await.unwrap();
        let ips: Vec<_> = (0..5).map(|i| source_ip(i, 3, &t)).collect();
        let ip = |d| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)));
        assert_eq!(ips, [ip(1), ip(2), ip(3), ip(1), ip(2)]);
        assert_eq!(source_ip(0, 0, &t), None);
    }
}
