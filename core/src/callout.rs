//! The auth callout (`--auth-url`): the edge asks the application's own server whether a new connection may
//! open, and with which permissions, so the application stays the one place that knows its users.
//!
//! On each new connection the edge POSTs JSON to the URL:
//!
//! ```json
//! {"user": "alice", "password": "…", "remote_addr": "203.0.113.7:51234",
//!  "origin": "https://app.example", "service": "subscriber"}
//! ```
//!
//! (`token` instead of `password` for a bearer token; `origin` is `null` without an `Origin` header) and expects
//! `200` with
//!
//! ```json
//! {"allow": true, "cache_ttl_secs": 60,
//!  "permissions": {"publish": {"allow": ["chat.{user}.>"]}, "subscribe": {"allow": ["@{user}"]}}}
//! ```
//!
//! or `{"allow": false, "reason": "…"}`. A reply may name the `user` the connection acts as (a bearer token has no
//! user name of its own: the request's `user` is then empty and the reply must name one). `permissions` has the shape of one ACL entry ([`crate::acl`]); without it
//! the connection gets what the ACL file (or its absence) gives the user.
//!
//! Why it is built this way:
//! - **Failure is explicit.** [`CalloutError::Denied`] (the application said no: 401/403 at the edge) is kept
//!   apart from [`CalloutError::Unavailable`] (no usable answer: server down, timeout, not `200`, a reply that is
//!   too large or not in the contract: 503, existing connections untouched). Nothing is guessed from a bad reply.
//! - **Bounded.** One timeout covers connect, TLS, request and reply; at most `max_concurrent` requests are in
//!   flight and one more fails at once as `Unavailable` instead of queueing (a connect storm must not pile up
//!   waiting tasks in front of a slow application); replies are read up to [`MAX_REPLY_BYTES`].
//! - **Cheap on reconnects.** A positive answer is cached for the `cache_ttl_secs` it carries (none: not cached;
//!   capped by `max_cache_ttl`), in an LRU of `cache_capacity` entries, keyed by a SHA-256 of the user, the
//!   secret, the service and the Origin under a random per-process key: the cache never holds a secret, and its
//!   keys are worthless outside the process. Denials are never cached. The same credentials from another address
//!   reuse the answer; an application that decides by address answers with no `cache_ttl_secs`.
//! - **TLS verified.** The client is hyper 1 with hyper-util's pooled client and hyper-rustls over the same rustls
//!   (ring) configuration as the service links ([`crate::tls::client_config`]: `--ca` or the system roots), so
//!   there is one TLS stack and one trust rule in the process; reqwest would bring its own TLS set-up and a
//!   second copy of most of this stack for a single POST. Only `https` URLs are accepted.
//! - **Secrets stay secret.** The password or token is held as a [`Secret`], written only into the request body
//!   and never logged; errors never contain the body.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lru::LruCache;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::Secret;
use crate::acl::{Entry, Permissions};
use crate::tls::{self, TlsError};

/// How long one callout may take by default, connect to last byte of the reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Callouts in flight at once by default.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Positive answers kept by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// Longest time a positive answer is reused by default, whatever `cache_ttl_secs` says.
pub const DEFAULT_MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Largest reply read; a larger one is `Unavailable` (a permissions entry is a few hundred bytes).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Longest `reason` kept from a denial, in characters, so an application cannot flood logs or clients.
const MAX_REASON_CHARS: usize = 200;
/// Longest user name a reply may set.
const MAX_USER_BYTES: usize = 256;
/// Idle pooled connections to the application's server are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the application's auth endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutConfig {
    /// The endpoint, `https://…` (`--auth-url`).
    pub url: String,
    /// CA certificates (PEM) to trust instead of the system roots, as `--ca` does for links.
    pub ca: Option<PathBuf>,
    /// Time allowed for one callout, connect to last byte of the reply.
    pub timeout: Duration,
    /// Callouts in flight at once; one more fails at once as `Unavailable`.
    pub max_concurrent: usize,
    /// Positive answers cached at most (least recently used evicted first); 0 disables the cache.
    pub cache_capacity: usize,
    /// Cap on the `cache_ttl_secs` of a reply.
    pub max_cache_ttl: Duration,
}

impl CalloutConfig {
    /// The endpoint with the default limits and the system roots.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca: None,
            timeout: DEFAULT_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_cache_ttl: DEFAULT_MAX_CACHE_TTL,
        }
    }
}

/// Why the callout client could not be built (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--auth-url` is not a URL.
    #[error("invalid --auth-url: {0}")]
    Url(#[from] hyper::http::uri::InvalidUri),
    /// `--auth-url` is not `https://host…`: credentials are never sent in clear.
    #[error("--auth-url must be an https:// URL with a host")]
    NotHttps,
    /// `max_concurrent` is 0, so no callout could ever be made.
    #[error("the auth callout needs at least one concurrent request")]
    NoConcurrency,
    /// The trust roots could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why a connection was not let in.
#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    /// The application refused the credentials, with its reason if it gave one (at most 200 characters, control
    /// characters removed, as it may end up in a log line or a close frame).
    #[error("denied by the auth service: {}", .0.as_deref().unwrap_or("no reason given"))]
    Denied(Option<String>),
    /// No usable answer: the connection cannot be decided now (HTTP 503 at the edge).
    #[error("auth service unavailable: {0}")]
    Unavailable(#[from] Unavailable),
}

/// Why there is no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// `max_concurrent` callouts are already in flight.
    #[error("too many auth callouts in flight")]
    Overloaded,
    /// No complete reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The request could not be made (connection refused, TLS failure, connection closed).
    #[error("request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The server answered with a status other than 200.
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    /// The reply body is larger than [`MAX_REPLY_BYTES`].
    #[error("reply larger than {MAX_REPLY_BYTES} bytes")]
    ReplyTooLarge,
    /// Reading the reply body failed.
    #[error("reading the reply failed: {0}")]
    Body(String),
    /// The reply's `user` is empty, longer than 256 bytes or holds whitespace or control characters.
    #[error(
        "invalid reply: `user` must be 1 to 256 bytes without whitespace or control characters"
    )]
    BadUser,
    /// The reply is not the contract's JSON (including an invalid permission pattern).
    #[error("invalid reply: {0}")]
    BadReply(#[source] serde_json::Error),
}

/// The secret a client presented.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// An HTTP Basic (or `wsmq.auth.…`) password.
    Password(&'a Secret),
    /// A bearer token (`Authorization: Bearer …` or `wsmq.bearer.…`).
    Token(&'a Secret),
}

/// What the edge knows about a new connection. `Debug` shows no secret.
#[derive(Debug, Clone, Copy)]
pub struct CalloutRequest<'a> {
    /// The user name the client presented; empty for a bearer token.
    pub user: &'a str,
    /// Its password or token.
    pub credential: Credential<'a>,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The `Origin` header of a browser connection.
    pub origin: Option<&'a str>,
    /// The service asked for access: `publisher` or `subscriber`.
    pub service: &'a str,
}

/// A connection let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user the connection acts as when the reply named one (`user`); a bearer token has no user of its own,
    /// so its reply must name it.
    pub user: Option<String>,
    /// The permissions the application sent, `{user}` filled in; `None` when it sent none, so the edge applies
    /// its ACL file (or allows everything without one).
    pub permissions: Option<Permissions>,
}

/// The auth callout client: a cheap-clone handle with its connection pool, concurrency bound and cache.
#[derive(Clone)]
pub struct AuthCallout(Arc<Inner>);

struct Inner {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    timeout: Duration,
    max_cache_ttl: Duration,
    permits: Semaphore,
    cache: Option<Mutex<LruCache<[u8; 32], Cached>>>,
    cache_key: [u8; 32],
}

struct Cached {
    expires: Instant,
    grant: Grant,
}

impl std::fmt::Debug for AuthCallout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCallout")
            .field("url", &self.0.url)
            .field("timeout", &self.0.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    remote_addr: String,
    origin: Option<&'a str>,
    service: &'a str,
}

#[derive(Deserialize)]
struct WireReply {
    allow: bool,
    #[serde(default)]
    permissions: Option<Entry>,
    #[serde(default)]
    cache_ttl_secs: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl AuthCallout {
    /// Builds the client: checks the URL and loads the trust roots. Blocking (reads CA files): call it at
    /// start-up.
    pub fn new(config: &CalloutConfig) -> Result<Self, SetupError> {
        let url: Uri = config.url.parse()?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(SetupError::NotHttps);
        }
        if config.max_concurrent == 0 {
            return Err(SetupError::NoConcurrency);
        }
        let mut tls_config = (*tls::client_config(config.ca.as_deref(), None, false)?).clone();
        // hyper-rustls sets ALPN itself from the HTTP versions enabled.
        tls_config.alpn_protocols.clear();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Ok(Self(Arc::new(Inner {
            client,
            url,
            timeout: config.timeout,
            max_cache_ttl: config.max_cache_ttl,
            permits: Semaphore::new(config.max_concurrent),
            cache: NonZeroUsize::new(config.cache_capacity).map(|n| Mutex::new(LruCache::new(n))),
            cache_key: rand::random(),
        })))
    }

    /// Asks the application whether this connection may open (or answers from the cache).
    pub async fn authorize(&self, request: &CalloutRequest<'_>) -> Result<Grant, CalloutError> {
        let key = self.cache_key(request);
        if let Some(grant) = self.cached(&key) {
            return Ok(grant);
        }
        let _permit = self
            .0
            .permits
            .try_acquire()
            .map_err(|_| Unavailable::Overloaded)?;
        let reply = tokio::time::timeout(self.0.timeout, self.ask(request))
            .await
            .map_err(|_| Unavailable::Timeout(self.0.timeout))??;
        if !reply.allow {
            let reason = reply.reason.map(|reason| {
                reason
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_REASON_CHARS)
                    .collect()
            });
            return Err(CalloutError::Denied(reason));
        }
        if let Some(user) = &reply.user
            && (user.is_empty()
                || user.len() > MAX_USER_BYTES
                || user.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(Unavailable::BadUser.into());
        }
        let user = reply.user.as_deref().unwrap_or(request.user);
        let grant = Grant {
            permissions: reply.permissions.map(|entry| entry.resolve(user)),
            user: reply.user,
        };
        if let Some(ttl) = reply.cache_ttl_secs.filter(|ttl| *ttl > 0) {
            self.remember(key, Duration::from_secs(ttl), &grant);
        }
        Ok(grant)
    }

    async fn ask(&self, request: &CalloutRequest<'_>) -> Result<WireReply, Unavailable> {
        let (password, token) = match request.credential {
            Credential::Password(secret) => (Some(secret.expose()), None),
            Credential::Token(secret) => (None, Some(secret.expose())),
        };
        let body = serde_json::to_vec(&WireRequest {
            user: request.user,
            password,
            token,
            remote_addr: request.remote_addr.to_string(),
            origin: request.origin,
            service: request.service,
        })
        .map_err(Unavailable::BadReply)?;
        let mut http_request = Request::new(Full::new(Bytes::from(body)));
        *http_request.method_mut() = Method::POST;
        *http_request.uri_mut() = self.0.url.clone();
        http_request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self
            .0
            .client
            .request(http_request)
            .await
            .map_err(Unavailable::Request)?;
        if response.status() != StatusCode::OK {
            return Err(Unavailable::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    Unavailable::ReplyTooLarge
                } else {
                    Unavailable::Body(error.to_string())
                }
            })?
            .to_bytes();
        serde_json::from_slice(&body).map_err(Unavailable::BadReply)
    }

    /// SHA-256 over the per-process key and every input the answer may depend on, each length-prefixed so no
    /// two different inputs hash the same bytes.
    fn cache_key(&self, request: &CalloutRequest<'_>) -> [u8; 32] {
        let (kind, secret) = match request.credential {
            Credential::Password(secret) => (b"password".as_slice(), secret),
            Credential::Token(secret) => (b"token".as_slice(), secret),
        };
        let mut hash = Sha256::new();
        hash.update(self.0.cache_key);
        for part in [
            request.user.as_bytes(),
            kind,
            secret.expose().as_bytes(),
            request.service.as_bytes(),
            request.origin.unwrap_or("\0none").as_bytes(),
        ] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Grant> {
        let mut cache = self.0.cache.as_ref()?.lock();
        match cache.get(key) {
            Some(entry) if entry.expires > Instant::now() => Some(entry.grant.clone()),
            Some(_) => {
                cache.pop(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: [u8; 32], ttl: Duration, grant: &Grant) {
        if let Some(cache) = &self.0.cache {
            let expires = Instant::now() + ttl.min(self.0.max_cache_ttl);
            cache.lock().put(
                key,
                Cached {
                    expires,
                    grant: grant.clone(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_with_a_host_are_accepted() {
        for url in [
            "http://app.example/auth",
            "https:///auth",
            "app.example/auth",
            "ftp://x/",
        ] {
            assert!(
                matches!(
                    AuthCallout::new(&CalloutConfig::new(url)),
                    Err(SetupError::NotHttps | SetupError::Url(_))
                ),
                "{url}"
            );
        }
        let config = CalloutConfig {
            max_concurrent: 0,
            ..CalloutConfig::new("https://app.example/auth")
        };
        assert!(matches!(
            AuthCallout::new(&config),
            Err(SetupError::NoConcurrency)
        ));
    }

    #[test]
    fn requests_never_show_the_secret() {
        let secret = Secret::new("hunter2");
        let request = CalloutRequest {
            user: "alice",
            credential: Credential::Token(&secret),
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            origin: None,
            service: "publisher",
        };
        assert!(!format!("{request:?}").contains("hunter2"));
    }

    #[test]
    fn the_cache_key_depends_on_every_input_and_on_the_process_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = CalloutConfig {
            ca: Some(tls::ensure_dev_pki(dir.path()).unwrap().ca_cert),
            ..CalloutConfig::new("https://app.example/auth")
        };
        let (a, b) = (
            AuthCallout::new(&config).unwrap(),
            AuthCallout::new(&config).unwrap(),
        );
        let (one, two) = (Secret::new("one"), Secret::new("two"));
        let base = CalloutRequest {
            user: "alice",
            credential: Credential::Password(&one),
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            origin: None,
            service: "publisher",
        };
        let variants = [
            CalloutRequest {
                user: "bob",
                ..base
            },
            CalloutRequest {
                credential: Credential::Password(&two),
                ..base
            },
            CalloutRequest {
                credential: Credential::Token(&one),
                ..base
            },
            CalloutRequest {
                origin: Some("https://x"),
                ..base
            },
            CalloutRequest {
                service: "subscriber",
                ..base
            },
        ];
        for variant in variants {
            assert_ne!(a.cache_key(&base), a.cache_key(&variant), "{variant:?}");
        }
        let other_address = CalloutRequest {
            remote_addr: "127.0.0.2:9".parse().unwrap(),
            ..base
        };
        assert_eq!(a.cache_key(&base), a.cache_key(&other_address));
        assert_ne!(
            a.cache_key(&base),
            b.cache_key(&base),
            "keys are per process"
        );
    }
}
