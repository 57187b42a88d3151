//! HTTP Basic authentication for every wsmq listener, checked at the WebSocket handshake.
//!
//! Users come from configuration only: an htpasswd-format file (bcrypt hashes; plaintext for development) and/or
//! a `user:password` list from the environment. Verification is built to survive hostile clients: plaintext
//! passwords are compared in constant time, an unknown user costs about as much as a known one, bcrypt runs on the
//! blocking pool (bounded by the CPU count) with successful checks cached so reconnect storms stay cheap, and
//! failures are limited per source address across all its connections: after a small burst, an address (IPv6: a
//! /64) gets one more password check per [`FAILURE_INTERVAL`], however many connections it opens in parallel;
//! further attempts are refused with `429` without checking anything. Passwords are never logged.
//!
//! With an auth callout ([`Authenticator::with_callout`], `--auth-url`) the application's server decides instead
//! of the users: Basic credentials and bearer tokens (`Authorization: Bearer …`, or a `wsmq.bearer.<token>`
//! subprotocol for browsers) are sent to it, its denials count in the same per-address throttle, and its grant
//! may carry the connection's permissions. Without a callout a bearer token is refused: there is nothing to check
//! it against. Tokens are never logged either.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::Secret;
use crate::acl::Permissions;
use crate::callout::{AuthCallout, CalloutError, CalloutRequest, Credential, Unavailable};

/// Prefix of the WebSocket subprotocol that carries credentials for browsers, which cannot set an
/// `Authorization` header on a WebSocket: `wsmq.auth.<base64url-no-pad(user:password)>`.
pub const AUTH_SUBPROTOCOL_PREFIX: &str = "wsmq.auth.";

/// Prefix of the WebSocket subprotocol that carries a bearer token for browsers: `wsmq.bearer.<token>` (the
/// token must be made of characters allowed in a subprotocol name, as URL-safe base64 and JWTs are).
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "wsmq.bearer.";

/// How long a successful bcrypt check is remembered, so reconnecting clients skip the expensive hash.
const VERIFIED_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// Most remembered successful checks; beyond it the entry closest to expiry is forgotten.
const VERIFIED_CACHE_CAPACITY: usize = 4096;
/// Failures from one address are counted until it has been quiet for this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures within the window that are answered at full speed (typos happen).
const FREE_FAILURES: u32 = 5;
/// Delay of the first slowed-down failure; it doubles with each further one.
const FAILURE_BASE_DELAY: Duration = Duration::from_millis(250);
/// Upper bound of the per-failure delay, so a legitimate user behind the same address is not locked out.
const FAILURE_MAX_DELAY: Duration = Duration::from_secs(4);
/// Once an address has used up its [`FREE_FAILURES`], it gets one more password check per interval, counted
/// across all its connections: at most 0.25 guesses per second per address (IPv6: per /64) in the long run.
pub const FAILURE_INTERVAL: Duration = Duration::from_secs(4);
/// Most addresses whose failures are tracked; beyond it the longest-quiet address is forgotten.
const FAILURE_TRACKER_CAPACITY: usize = 10_000;

/// A user name and password presented by a client, or sent by one of our own clients.
///
/// `Debug` shows the user but never the password.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The user name (not secret; it appears in logs).
    pub user: String,
    /// The password.
    pub password: Secret,
}

impl Credentials {
    /// Wraps a user name and password, e.g. from configuration flags.
    pub fn new(user: impl Into<String>, password: Secret) -> Self {
        Self {
            user: user.into(),
            password,
        }
    }

    /// Parses an `Authorization` header value of the form `Basic base64(user:password)`.
    ///
    /// Returns `None` for any other scheme, bad base64, non-UTF-8 content or a missing `:`. The password may
    /// itself contain `:` (only the first one separates).
    pub fn from_basic_header(value: &str) -> Option<Credentials> {
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        Self::from_decoded(STANDARD.decode(encoded.trim()).ok()?)
    }

    /// Parses the browser form `wsmq.auth.<base64url-no-pad(user:password)>` offered as a WebSocket subprotocol.
    ///
    /// Returns `None` if the prefix is missing or the token does not decode to `user:password`.
    pub fn from_subprotocol_token(token: &str) -> Option<Credentials> {
        let encoded = token.trim().strip_prefix(AUTH_SUBPROTOCOL_PREFIX)?;
        Self::from_decoded(URL_SAFE_NO_PAD.decode(encoded).ok()?)
    }

    /// The `Authorization` header value our clients send: `Basic base64(user:password)`.
    pub fn basic_header(&self) -> String {
        format!("Basic {}", STANDARD.encode(self.joined()))
    }

    /// The subprotocol token a browser offers instead of the header; see [`AUTH_SUBPROTOCOL_PREFIX`].
    pub fn subprotocol_token(&self) -> String {
        format!(
            "{AUTH_SUBPROTOCOL_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.joined())
        )
    }

    fn joined(&self) -> String {
        format!("{}:{}", self.user, self.password.expose())
    }

    fn from_decoded(decoded: Vec<u8>) -> Option<Credentials> {
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        if user.is_empty() {
            return None;
        }
        Some(Credentials::new(user, Secret::new(password)))
    }
}

/// What a client presented at the handshake: a user name and password, or a bearer token. `Debug` shows no
/// secret.
#[derive(Clone, Debug)]
pub enum Presented {
    /// HTTP Basic credentials (or the `wsmq.auth.…` subprotocol).
    Basic(Credentials),
    /// A bearer token (`Authorization: Bearer …` or the `wsmq.bearer.…` subprotocol).
    Bearer(Secret),
}

impl Presented {
    /// Parses an `Authorization` header value, `Basic …` or `Bearer <token>`; `None` for anything else.
    pub fn from_authorization(value: &str) -> Option<Presented> {
        if let Some(basic) = Credentials::from_basic_header(value) {
            return Some(Self::Basic(basic));
        }
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
            .then(|| Self::Bearer(Secret::new(token)))
    }

    /// Parses a credential-carrying subprotocol offer: `wsmq.auth.<base64url(user:password)>` or
    /// `wsmq.bearer.<token>`; `None` for any other subprotocol.
    pub fn from_subprotocol(offered: &str) -> Option<Presented> {
        if let Some(basic) = Credentials::from_subprotocol_token(offered) {
            return Some(Self::Basic(basic));
        }
        let token = offered.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX)?;
        (!token.is_empty()).then(|| Self::Bearer(Secret::new(token)))
    }

    /// Whether a subprotocol offer carries credentials (and must never be echoed or negotiated).
    pub fn is_credential_subprotocol(offered: &str) -> bool {
        offered.starts_with(AUTH_SUBPROTOCOL_PREFIX)
            || offered.starts_with(BEARER_SUBPROTOCOL_PREFIX)
    }
}

/// Who an authenticated connection is, and the permissions the auth callout gave it, if any (they replace the
/// ACL file's for this connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name (not secret; it appears in logs).
    pub user: String,
    /// Permissions from the auth callout's grant; `None`: the ACL file applies (or everything, without one).
    pub permissions: Option<Permissions>,
}

/// Why a handshake was refused at the authentication step, and so which answer it gets.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Missing or invalid credentials (401) or a throttled address (429).
    #[error(transparent)]
    Auth(#[from] AuthFailure),
    /// A bearer token reached a listener without an auth callout (401): nothing could check it.
    #[error("bearer tokens are only accepted with an auth callout (--auth-url)")]
    BearerWithoutCallout,
    /// The auth callout said no (401), with the application's reason if it gave one.
    #[error("denied by the auth service: {}", .0.as_deref().unwrap_or("no reason given"))]
    Denied(Option<String>),
    /// The auth callout gave no usable answer (503); connections already open are not affected.
    #[error("auth service unavailable: {0}")]
    Unavailable(#[source] Unavailable),
    /// The auth callout allowed a bearer token without naming its user (503: the application's reply is not
    /// usable).
    #[error("the auth service allowed a bearer token without naming its `user`")]
    NoUserForToken,
}

/// The auth callout as one listener uses it.
#[derive(Clone, Debug)]
struct Callout {
    client: AuthCallout,
    /// `publisher` or `subscriber`, sent with each request.
    service: &'static str,
}

/// Why the configured users could not be loaded. Messages name the file and line but never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file could not be read.
    #[error("cannot read users file {path}")]
    Read {
        /// The users file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An entry is not `user:password` or `user:bcrypt-hash`.
    #[error("{origin}, {unit} {number}: {reason}")]
    Malformed {
        /// Where the entry comes from (the file path or the flag).
        origin: String,
        /// `line` for a file, `entry` for the comma-separated list.
        unit: &'static str,
        /// 1-based line or entry number.
        number: usize,
        /// What is wrong, without the entry's content.
        reason: &'static str,
    },
    /// The same user name appears twice, which would make the effective password ambiguous.
    #[error("{origin}, {unit} {number}: user {user:?} is already defined")]
    DuplicateUser {
        /// Where the second definition comes from.
        origin: String,
        /// `line` or `entry`.
        unit: &'static str,
        /// 1-based line or entry number.
        number: usize,
        /// The user name.
        user: String,
    },
    /// Neither the users file nor the users list defined a user; credentials never come from code.
    #[error("no users configured: set --users-file (WSMQ_USERS_FILE) or --users (WSMQ_USERS)")]
    NoUsers,
}

/// Why a handshake was not authenticated: `Missing` and `Invalid` are answered with `401 Unauthorized`,
/// `Throttled` with `429 Too Many Requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The client sent no credentials at all.
    #[error("no credentials presented")]
    Missing,
    /// Unknown user or wrong password (deliberately not distinguished).
    #[error("invalid credentials")]
    Invalid,
    /// The client's address has failed too often recently; the credentials were not checked.
    #[error("too many failed logins from this address, retry in {retry_after:?}")]
    Throttled {
        /// When the address may try again.
        retry_after: Duration,
    },
}

/// Checks credentials against the configured users. Cheap to clone: clones share users, cache and failure
/// tracking, so one instance serves a whole listener.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
    /// With `--auth-url`: the application decides instead of the users.
    callout: Option<Callout>,
}

struct Inner {
    users: HashMap<String, StoredPassword>,
    /// Hash checked for unknown users so they cost as much as known ones.
    decoy: StoredPassword,
    /// Bounds concurrent bcrypt computations to the CPU count.
    bcrypt_slots: Semaphore,
    bcrypt_runs: AtomicU64,
    verified: Mutex<VerifiedCache>,
    failures: Mutex<FailureTracker>,
}

#[derive(Clone)]
enum StoredPassword {
    Bcrypt(Arc<str>),
    /// SHA-256 of the plaintext password, so comparisons have a fixed length.
    Plain([u8; 32]),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.inner.users.len())
            .field("callout", &self.callout)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads users from an htpasswd-format file and/or a comma-separated `user:password` list.
    ///
    /// File lines are `user:$2y$...` (also `$2b$`, `$2a$`) bcrypt hashes or, for development, `user:password` in
    /// plaintext (a warning is logged once); `#` comments and blank lines are skipped, and whitespace around a
    /// line is ignored. Fails if the file cannot be read, a line is malformed (the error names the line, not its
    /// content), a user is defined twice, or no user is defined at all.
    pub fn load(
        users_file: Option<&Path>,
        users: Option<&Secret>,
    ) -> Result<Authenticator, AuthError> {
        let mut table = UserTable::default();
        if let Some(path) = users_file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: path.to_owned(),
                source,
            })?;
            let origin = path.display().to_string();
            for (index, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                table.add(line, &origin, "line", index + 1)?;
            }
        }
        if let Some(users) = users {
            table.add_list(users)?;
        }
        table.build()
    }

    /// Builds an authenticator from a comma-separated `user:password` list (the `--users` flag), e.g. for tests
    /// and the all-in-one binary. Fails on a malformed entry, a duplicate user or an empty list.
    pub fn from_users(users: &Secret) -> Result<Authenticator, AuthError> {
        let mut table = UserTable::default();
        table.add_list(users)?;
        table.build()
    }

    /// An authenticator that asks the application's auth endpoint about every connection (`--auth-url`) instead
    /// of checking configured users; `service` (`publisher` or `subscriber`) is sent with each request. Denials
    /// count in the per-address login throttle as wrong passwords do.
    pub fn with_callout(callout: AuthCallout, service: &'static str) -> Authenticator {
        Authenticator {
            inner: Arc::new(Inner::new(HashMap::new(), StoredPassword::Plain([0; 32]))),
            callout: Some(Callout {
                client: callout,
                service,
            }),
        }
    }

    /// Whether connections are decided by the auth callout (for its metrics).
    pub fn uses_callout(&self) -> bool {
        self.callout.is_some()
    }

    /// Authenticates what a client presented at the handshake: against the configured users, or with the auth
    /// callout when there is one. `origin` is the handshake's `Origin` header, sent to the callout.
    pub async fn authenticate(
        &self,
        presented: Option<&Presented>,
        peer: SocketAddr,
        origin: Option<&str>,
    ) -> Result<Identity, Refused> {
        let Some(callout) = &self.callout else {
            let credentials = match presented {
                None => None,
                Some(Presented::Basic(credentials)) => Some(credentials),
                Some(Presented::Bearer(_)) => return Err(Refused::BearerWithoutCallout),
            };
            let user = self.verify(credentials, peer.ip()).await?;
            return Ok(Identity {
                user,
                permissions: None,
            });
        };
        let Some(presented) = presented else {
            return Err(AuthFailure::Missing.into());
        };
        if let Some(retry_after) = self
            .inner
            .failures
            .lock()
            .throttled(peer.ip(), Instant::now())
        {
            return Err(AuthFailure::Throttled { retry_after }.into());
        }
        let (user, credential) = match presented {
            Presented::Basic(credentials) => (
                credentials.user.as_str(),
                Credential::Password(&credentials.password),
            ),
            Presented::Bearer(token) => ("", Credential::Token(token)),
        };
        let request = CalloutRequest {
            user,
            credential,
            remote_addr: peer,
            origin,
            service: callout.service,
        };
        match callout.client.authorize(&request).await {
            Ok(grant) => {
                let user = match (grant.user, presented) {
                    (Some(user), _) => user,
                    (None, Presented::Basic(credentials)) => credentials.user.clone(),
                    (None, Presented::Bearer(_)) => return Err(Refused::NoUserForToken),
                };
                Ok(Identity {
                    user,
                    permissions: grant.permissions,
                })
            }
            Err(CalloutError::Denied(reason)) => {
                self.failed(peer.ip(), user).await;
                Err(Refused::Denied(reason))
            }
            Err(CalloutError::Unavailable(why)) => Err(Refused::Unavailable(why)),
        }
    }

    /// How many users are configured (for the startup log line).
    pub fn user_count(&self) -> usize {
        self.inner.users.len()
    }

    /// How many bcrypt computations have run, including decoys for unknown users. Exported so operators (and
    /// tests) can see that the cache absorbs reconnect storms.
    pub fn bcrypt_verifications(&self) -> u64 {
        self.inner.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// Verifies a client's credentials and returns the authenticated user name.
    ///
    /// `peer` is the client address (IPv6 grouped by /64). After a few failures from it (five), it gets
    /// one more check per [`FAILURE_INTERVAL`] across all its connections; attempts beyond that fail with
    /// [`AuthFailure::Throttled`] without a password check (and without bcrypt), except credentials verified
    /// recently, which only their owner can present. Each failure past the free ones is also answered after an
    /// increasing delay capped at a few seconds. Missing credentials are answered at once and not counted, since
    /// they guess nothing.
    pub async fn verify(
        &self,
        creds: Option<&Credentials>,
        peer: IpAddr,
    ) -> Result<String, AuthFailure> {
        let Some(creds) = creds else {
            return Err(AuthFailure::Missing);
        };
        match self.check(creds, peer).await {
            Checked::Match => return Ok(creds.user.clone()),
            Checked::Throttled(retry_after) => {
                tracing::debug!(user = %creds.user, %peer, ?retry_after, "authentication throttled");
                return Err(AuthFailure::Throttled { retry_after });
            }
            Checked::NoMatch => {}
        }
        self.failed(peer, &creds.user).await;
        Err(AuthFailure::Invalid)
    }

    /// Counts a failed login from `peer` in the throttle and waits the delay it earns.
    async fn failed(&self, peer: IpAddr, user: &str) {
        let (failures, delay) = self.inner.failures.lock().record(peer, Instant::now());
        tracing::debug!(user, %peer, failures, "authentication failed");
        if !delay.is_zero() {
            if failures == FREE_FAILURES + 1 {
                tracing::warn!(%peer, "repeated authentication failures, slowing down answers to this address");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Checks `creds` unless `peer` is throttled. The throttle is consulted right before the comparison (for
    /// bcrypt: after waiting for a bcrypt slot), so attempts that queued up in parallel are stopped as soon as the
    /// failures of the first ones are recorded.
    async fn check(&self, creds: &Credentials, peer: IpAddr) -> Checked {
        let (stored, known) = match self.inner.users.get(&creds.user) {
            Some(stored) => (stored.clone(), true),
            None => (self.inner.decoy.clone(), false),
        };
        let throttled = || self.inner.failures.lock().throttled(peer, Instant::now());
        let matches = match stored {
            StoredPassword::Plain(digest) => {
                if let Some(retry_after) = throttled() {
                    return Checked::Throttled(retry_after);
                }
                bool::from(sha256(creds.password.expose().as_bytes()).ct_eq(&digest))
            }
            StoredPassword::Bcrypt(hash) => {
                let key = cache_key(&creds.user, &creds.password);
                if known && self.inner.verified.lock().is_fresh(&key, Instant::now()) {
                    return Checked::Match;
                }
                let Some(matches) = self.bcrypt(creds.password.clone(), hash, throttled).await
                else {
                    return Checked::Throttled(throttled().unwrap_or(FAILURE_INTERVAL));
                };
                if matches && known {
                    self.inner.verified.lock().insert(key, Instant::now());
                }
                matches
            }
        };
        if matches && known {
            Checked::Match
        } else {
            Checked::NoMatch
        }
    }

    /// Runs bcrypt on the blocking pool once a slot is free, unless `throttled` says no by then (`None`).
    async fn bcrypt(
        &self,
        password: Secret,
        hash: Arc<str>,
        throttled: impl Fn() -> Option<Duration>,
    ) -> Option<bool> {
        let Ok(slot) = self.inner.bcrypt_slots.acquire().await else {
            return Some(false);
        };
        if throttled().is_some() {
            return None;
        }
        self.inner.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let outcome =
            tokio::task::spawn_blocking(move || bcrypt::verify(password.expose(), &hash)).await;
        drop(slot);
        Some(match outcome {
            Ok(Ok(matches)) => matches,
            Ok(Err(err)) => {
                tracing::warn!(%err, "bcrypt verification failed");
                false
            }
            Err(err) => {
                tracing::warn!(%err, "bcrypt verification task did not complete");
                false
            }
        })
    }
}

/// The outcome of one credential check.
enum Checked {
    Match,
    NoMatch,
    /// Not checked: the address must wait this long.
    Throttled(Duration),
}

/// Users being collected from the configuration sources.
#[derive(Default)]
struct UserTable {
    users: HashMap<String, StoredPassword>,
    plaintext: usize,
}

impl UserTable {
    fn add_list(&mut self, users: &Secret) -> Result<(), AuthError> {
        for (index, entry) in users.expose().split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            self.add(entry, "--users (WSMQ_USERS)", "entry", index + 1)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        entry: &str,
        origin: &str,
        unit: &'static str,
        number: usize,
    ) -> Result<(), AuthError> {
        let malformed = |reason| AuthError::Malformed {
            origin: origin.to_owned(),
            unit,
            number,
            reason,
        };
        let (user, password) = entry.split_once(':').ok_or_else(|| {
            malformed("expected `user:password` or `user:bcrypt-hash` (no `:` found)")
        })?;
        if user.is_empty() {
            return Err(malformed("empty user name"));
        }
        if password.is_empty() {
            return Err(malformed("empty password"));
        }
        let stored = if ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|p| password.starts_with(p))
        {
            password
                .parse::<bcrypt::HashParts>()
                .map_err(|_| malformed("malformed bcrypt hash"))?;
            StoredPassword::Bcrypt(Arc::from(password))
        } else if password.starts_with('$') || password.starts_with("{SHA}") {
            return Err(malformed(
                "unsupported password hash: use bcrypt (`htpasswd -B`) or, for development, plaintext not starting with `$`",
            ));
        } else {
            self.plaintext += 1;
            StoredPassword::Plain(sha256(password.as_bytes()))
        };
        if self.users.contains_key(user) {
            return Err(AuthError::DuplicateUser {
                origin: origin.to_owned(),
                unit,
                number,
                user: user.to_owned(),
            });
        }
        self.users.insert(user.to_owned(), stored);
        Ok(())
    }

    fn build(self) -> Result<Authenticator, AuthError> {
        if self.users.is_empty() {
            return Err(AuthError::NoUsers);
        }
        if self.plaintext > 0 {
            tracing::warn!(
                users = self.plaintext,
                "plaintext passwords configured; use bcrypt hashes (`htpasswd -B`) in a users file in production"
            );
        }
        let decoy = self
            .users
            .values()
            .filter_map(|stored| match stored {
                StoredPassword::Bcrypt(hash) => Some(hash),
                StoredPassword::Plain(_) => None,
            })
            .max_by_key(|hash| {
                hash.parse::<bcrypt::HashParts>()
                    .map_or(0, |parts| parts.get_cost())
            })
            .map_or(StoredPassword::Plain([0; 32]), |hash| {
                StoredPassword::Bcrypt(hash.clone())
            });
        Ok(Authenticator {
            inner: Arc::new(Inner::new(self.users, decoy)),
            callout: None,
        })
    }
}

impl Inner {
    fn new(users: HashMap<String, StoredPassword>, decoy: StoredPassword) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            users,
            decoy,
            bcrypt_slots: Semaphore::new(cpus),
            bcrypt_runs: AtomicU64::new(0),
            verified: Mutex::new(VerifiedCache::default()),
            failures: Mutex::new(FailureTracker::default()),
        }
    }
}

/// Successful bcrypt checks, keyed by SHA-256(user, 0, password) so the cache never holds a password.
#[derive(Default)]
struct VerifiedCache {
    expires: HashMap<[u8; 32], Instant>,
}

impl VerifiedCache {
    fn is_fresh(&mut self, key: &[u8; 32], now: Instant) -> bool {
        match self.expires.get(key) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                self.expires.remove(key);
                false
            }
            None => false,
        }
    }

    fn insert(&mut self, key: [u8; 32], now: Instant) {
        if self.expires.len() >= VERIFIED_CACHE_CAPACITY && !self.expires.contains_key(&key) {
            self.expires.retain(|_, expiry| *expiry > now);
            if self.expires.len() >= VERIFIED_CACHE_CAPACITY
                && let Some(oldest) = self
                    .expires
                    .iter()
                    .min_by_key(|(_, expiry)| **expiry)
                    .map(|(k, _)| *k)
            {
                self.expires.remove(&oldest);
            }
        }
        self.expires.insert(key, now + VERIFIED_CACHE_TTL);
    }
}

/// Recent authentication failures per client address, and the throttle they lead to.
///
/// The throttle is a generic cell rate algorithm: each failure pushes the address's `due` time one
/// [`FAILURE_INTERVAL`] further into the future (from now at the earliest), and an address whose `due` lies more
/// than [`FREE_FAILURES`] - 1 intervals ahead is throttled until it no longer does. That allows a burst of
/// [`FREE_FAILURES`] failures, then one per interval, whatever the number of connections.
#[derive(Default)]
struct FailureTracker {
    by_addr: HashMap<IpAddr, Failures>,
}

struct Failures {
    count: u32,
    last: Instant,
    due: Instant,
}

impl FailureTracker {
    /// How long `peer` must still wait before its credentials are checked again, or `None` if they may be now.
    fn throttled(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.by_addr.get(&source_key(peer))?;
        let allowed_from = failures.due.checked_sub(burst_window())?;
        (allowed_from > now).then(|| allowed_from - now)
    }

    /// Counts a failure from `peer` and returns the failure count in the current window and how long to wait
    /// before answering it.
    fn record(&mut self, peer: IpAddr, now: Instant) -> (u32, Duration) {
        let addr = source_key(peer);
        if self.by_addr.len() >= FAILURE_TRACKER_CAPACITY && !self.by_addr.contains_key(&addr) {
            self.by_addr
                .retain(|_, f| now.duration_since(f.last) < FAILURE_WINDOW || f.due > now);
            if self.by_addr.len() >= FAILURE_TRACKER_CAPACITY
                && let Some(quietest) = self
                    .by_addr
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(a, _)| *a)
            {
                self.by_addr.remove(&quietest);
            }
        }
        let failures = self.by_addr.entry(addr).or_insert(Failures {
            count: 0,
            last: now,
            due: now,
        });
        if now.duration_since(failures.last) >= FAILURE_WINDOW {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
        failures.due = failures.due.max(now) + FAILURE_INTERVAL;
        (failures.count, failure_delay(failures.count))
    }
}

/// How far ahead an address's `due` time may lie before it is throttled: room for the free failures.
fn burst_window() -> Duration {
    FAILURE_INTERVAL.saturating_mul(FREE_FAILURES.saturating_sub(1))
}

/// Delay before answering the `count`-th failure in a window: none for the first few, then doubling up to a cap.
fn failure_delay(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES - 1).min(16);
    FAILURE_BASE_DELAY
        .saturating_mul(1 << doublings)
        .min(FAILURE_MAX_DELAY)
}

/// Groups addresses the way an attacker obtains them: one IPv4 address, or one IPv6 /64 (a single host usually
/// controls a whole /64). Used for the login throttle and the per-address handshake limit.
pub(crate) fn source_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn cache_key(user: &str, password: &Secret) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    hasher.update([0u8]);
    hasher.update(password.expose().as_bytes());
    hasher.finalize().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials::new(user, Secret::new(password))
    }

    #[test]
    fn basic_header_round_trips_and_keeps_colons_in_password() {
        let original = creds("alice", "pa:ss:word");
        let parsed = Credentials::from_basic_header(&original.basic_header());
        let parsed = parsed.map(|c| (c.user, c.password.expose().to_owned()));
        assert_eq!(parsed, Some(("alice".to_owned(), "pa:ss:word".to_owned())));
        let lowercase = format!("basic {}", STANDARD.encode("bob:x"));
        assert_eq!(
            Credentials::from_basic_header(&lowercase).map(|c| c.user),
            Some("bob".to_owned())
        );
    }

    #[test]
    fn malformed_basic_headers_are_rejected() {
        for header in [
            "Basic !!!not-base64!!!",
            &format!("Basic {}", STANDARD.encode("no-colon-here")),
            &format!("Basic {}", STANDARD.encode(":password-without-user")),
            &format!("Bearer {}", STANDARD.encode("alice:secret")),
            "Basic",
            "",
        ] {
            assert!(
                Credentials::from_basic_header(header).is_none(),
                "accepted {header:?}"
            );
        }
    }

    #[test]
    fn subprotocol_token_round_trips_and_requires_prefix() {
        let original = creds("carol", "p@ss:w/rd+?");
        let token = original.subprotocol_token();
        assert!(token.starts_with(AUTH_SUBPROTOCOL_PREFIX));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{token}"
        );
        let parsed =
            Credentials::from_subprotocol_token(&token).map(|c| c.password.expose().to_owned());
        assert_eq!(parsed.as_deref(), Some("p@ss:w/rd+?"));
        assert!(
            Credentials::from_subprotocol_token(token.trim_start_matches(AUTH_SUBPROTOCOL_PREFIX))
                .is_none()
        );
        assert!(Credentials::from_subprotocol_token("wsmq.auth.%%%").is_none());
    }

    #[test]
    fn bearer_tokens_come_from_the_header_or_the_subprotocol() {
        let token = |presented: Option<Presented>| match presented {
            Some(Presented::Bearer(token)) => Some(token.expose().to_owned()),
            _ => None,
        };
        assert_eq!(
            token(Presented::from_authorization("Bearer abc.def-1")).as_deref(),
            Some("abc.def-1")
        );
        assert_eq!(
            token(Presented::from_authorization("bearer  xyz ")).as_deref(),
            Some("xyz")
        );
        assert_eq!(token(Presented::from_authorization("Bearer ")), None);
        assert_eq!(
            token(Presented::from_subprotocol("wsmq.bearer.tok_1")).as_deref(),
            Some("tok_1")
        );
        assert_eq!(token(Presented::from_subprotocol("wsmq.bearer.")), None);
        assert!(matches!(
            Presented::from_authorization(&creds("a", "b").basic_header()),
            Some(Presented::Basic(_))
        ));
        assert!(Presented::is_credential_subprotocol("wsmq.bearer.x"));
        assert!(Presented::is_credential_subprotocol("wsmq.auth.x"));
        assert!(!Presented::is_credential_subprotocol("wsmq.v1"));
        let shown = format!("{:?}", Presented::from_subprotocol("wsmq.bearer.s3cr3t"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn debug_output_never_contains_the_password() {
        let shown = format!("{:?}", creds("alice", "hunter2"));
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn failure_delay_starts_after_free_failures_doubles_and_is_capped() {
        let delays: Vec<u64> = (1..=12)
            .map(|n| failure_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [0, 0, 0, 0, 0, 250, 500, 1000, 2000, 4000, 4000, 4000]
        );
        assert_eq!(failure_delay(u32::MAX), FAILURE_MAX_DELAY);
    }

    #[test]
    fn throttle_allows_a_burst_then_one_failure_per_interval() {
        let mut tracker = FailureTracker::default();
        let start = Instant::now();
        let mut checked = 0;
        let mut now = start;
        // An attacker retrying every 100 ms for a minute, as if from many parallel connections.
        while now < start + Duration::from_secs(60) {
            if tracker.throttled(PEER, now).is_none() {
                tracker.record(PEER, now);
                checked += 1;
            }
            now += Duration::from_millis(100);
        }
        assert_eq!(checked, FREE_FAILURES as usize + 60 / 4 - 1);
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(tracker.throttled(other, now), None);
        let retry = tracker.throttled(PEER, start + Duration::from_secs(59));
        assert!(retry.is_some_and(|r| r <= FAILURE_INTERVAL), "{retry:?}");
    }

    #[test]
    fn ipv6_peers_are_tracked_per_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(mapped), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn users_list_parses_and_rejects_duplicates_and_empty() {
        let auth = Authenticator::from_users(&Secret::new(" alice:one , bob:t:w:o ,"));
        assert_eq!(auth.map(|a| a.user_count()).ok(), Some(2));
        let dup = Authenticator::from_users(&Secret::new("alice:one,alice:two"));
        assert!(
            matches!(dup, Err(AuthError::DuplicateUser { number: 2, .. })),
            "{dup:?}"
        );
        assert!(matches!(
            Authenticator::from_users(&Secret::new(" , ")),
            Err(AuthError::NoUsers)
        ));
        assert!(matches!(
            Authenticator::load(None, None),
            Err(AuthError::NoUsers)
        ));
    }

    #[test]
    fn verified_cache_expires_and_stays_bounded() {
        let mut cache = VerifiedCache::default();
        let start = Instant::now();
        cache.insert([1; 32], start);
        assert!(cache.is_fresh(&[1; 32], start + Duration::from_secs(1)));
        assert!(!cache.is_fresh(&[1; 32], start + VERIFIED_CACHE_TTL));
        for i in 0..(VERIFIED_CACHE_CAPACITY + 10) {
            let mut key = [0; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.insert(key, start);
        }
        assert_eq!(cache.expires.len(), VERIFIED_CACHE_CAPACITY);
    }

    #[test]
    fn failure_tracker_stays_bounded_and_forgets_quiet_addresses() {
        let mut tracker = FailureTracker::default();
        let start = Instant::now();
        for i in 0..(FAILURE_TRACKER_CAPACITY as u32 + 10) {
            tracker.record(IpAddr::V4(Ipv4Addr::from(i)), start);
        }
        assert_eq!(tracker.by_addr.len(), FAILURE_TRACKER_CAPACITY);
        for _ in 0..FREE_FAILURES + 3 {
            tracker.record(PEER, start);
        }
        assert_eq!(
            tracker.record(PEER, start + FAILURE_WINDOW),
            (1, Duration::ZERO)
        );
    }
}
