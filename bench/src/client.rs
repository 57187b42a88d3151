//! Opening benchmark connections through core's [`Dialer`]: TCP (optionally from a chosen 127.0.0.x source
//! address), TLS, and the WebSocket upgrade with Basic auth and an optional subprotocol.
//!
//! The scenarios need two things on top of a plain dial, both provided by `Dialer`: the target address is
//! resolved once, not per connection ([`Dialer::resolve`]), and the socket's source address is bound before
//! connecting ([`Dialer::dial_from`]), so 10,000+ connections to one server port do not exhaust one source
//! address's ephemeral ports.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsmq_core::auth::Credentials;
use wsmq_core::dial::{ClientWs, DialError, Dialer};

use crate::cli::Common;

/// A benchmark client connection.
pub type Ws = ClientWs;

/// Read buffer of connections in scenarios with many connections: idle connections should cost little.
const SMALL_READ_BUFFER: usize = 4 * 1024;

/// One server endpoint: a dialer for its resolved address and the path the scenario connects to.
#[derive(Debug, Clone)]
pub struct Target {
    dialer: Dialer,
    path: &'static str,
    url: String,
}

impl Target {
    /// The full URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The dialer of the target's server (resolved once): for connections that are not WebSockets, and for a
    /// reconnecting `core::link::Link`.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The path the scenario connects to.
    pub fn path(&self) -> &'static str {
        self.path
    }
}

/// Credentials, trust and limits shared by every connection of a run.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<rustls::ClientConfig>,
    credentials: Credentials,
    ws_config: WebSocketConfig,
    timeout: Duration,
}

impl Connector {
    /// Builds TLS trust from `--ca`/`--insecure`/the data dir's dev CA and the Basic auth credentials.
    /// `many_connections` shrinks buffers so thousands of connections fit in memory.
    pub fn new(common: &Common, many_connections: bool) -> anyhow::Result<Self> {
        let tls = wsmq_core::tls::client_config(
            common.ca.as_deref(),
            Some(Path::new(&common.data_dir)),
            common.insecure,
        )?;
        let credentials = Credentials::new(common.user.clone(), common.password.clone());
        Ok(Self::from_parts(
            tls,
            credentials,
            many_connections,
            common.connect_timeout,
        ))
    }

    /// Builds a connector from ready parts (tests use their own TLS configuration).
    pub fn from_parts(
        tls: Arc<rustls::ClientConfig>,
        credentials: Credentials,
        many_connections: bool,
        timeout: Duration,
    ) -> Self {
        let mut ws_config = WebSocketConfig::default();
        if many_connections {
            ws_config = ws_config
                .read_buffer_size(SMALL_READ_BUFFER)
                .write_buffer_size(0);
        }
        Self {
            tls,
            credentials,
            ws_config,
            timeout,
        }
    }

    /// Resolves `base` (`wss://host[:port]`) once and appends `path`. Prefers IPv4 so 127.0.0.x source
    /// addresses can be used. Fails for anything but a `wss://` URL without a path, or a host that does not
    /// resolve.
    pub async fn target(&self, base: &str, path: &'static str) -> anyhow::Result<Target> {
        let dialer = Dialer::new(base, self.credentials.clone(), self.tls.clone())?
            .with_ws_config(self.ws_config)
            .with_connect_timeout(self.timeout)
            .resolve()
            .await?;
        let url = format!("{}{path}", dialer.url());
        Ok(Target { dialer, path, url })
    }

    /// Connects to `target`, from `source` if given, offering `subprotocol` if given; returns the socket
    /// and the subprotocol the server selected. Bounded by the connect timeout.
    pub async fn connect(
        &self,
        target: &Target,
        subprotocol: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<(Ws, Option<String>), ConnectError> {
        let dialed = match subprotocol {
            None => target.dialer.dial_from(target.path, source).await,
            Some(subprotocol) => {
                target
                    .dialer
                    .clone()
                    .with_subprotocol(subprotocol)
                    .dial_from(target.path, source)
                    .await
            }
        };
        dialed.map_err(|err| match err {
            DialError::SubprotocolRejected { .. } => ConnectError::SubprotocolRejected,
            other => ConnectError::Other(other.into()),
        })
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

/// Source address of connection `i` when spreading over `k` loopback addresses: 127.0.0.(1 + i % k).
/// `None` when `k` is 0 or the target is not IPv4 loopback (other sources could not reach it).
pub fn source_ip(i: usize, k: u8, target: &Target) -> Option<IpAddr> {
    let loopback_v4 = target
        .dialer
        .resolved_addr()
        .is_some_and(|addr| matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    if k == 0 || !loopback_v4 {
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
    use wsmq_core::Secret;
    use wsmq_core::protocol::PUBLISH_PATH;

    use super::*;

    fn connector() -> Connector {
        let tls = wsmq_core::tls::client_config(None, None, true).unwrap();
        let credentials = Credentials::new("bench", Secret::new("pw"));
        Connector::from_parts(tls, credentials, false, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn targets_resolve_wss_urls_and_refuse_others() {
        let connector = connector();
        let t = connector
            .target("wss://127.0.0.1:9", PUBLISH_PATH)
            .await
            .unwrap();
        assert_eq!(t.url(), "wss://127.0.0.1:9/publish");
        assert!(connector.target("ws://127.0.0.1:9", "/x").await.is_err());
    }

    #[tokio::test]
    async fn source_addresses_cycle_over_loopback_only() {
        let t = connector().target("wss://127.0.0.1:9", "/").await.unwrap();
        let ips: Vec<_> = (0..5).map(|i| source_ip(i, 3, &t)).collect();
        let ip = |d| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)));
        assert_eq!(ips, [ip(1), ip(2), ip(3), ip(1), ip(2)]);
        assert_eq!(source_ip(0, 0, &t), None);
    }
}
