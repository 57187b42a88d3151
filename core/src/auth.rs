//! HTTP Basic authentication for every wsmq listener, checked at the WebSocket handshake.
//!
//! Users come from configuration only: an htpasswd-format file (bcrypt hashes; plaintext for development) and/or
//! a `user:password` list from the environment. Verification is built to survive hostile clients: plaintext
//! passwords are compared in constant time, an unknown user costs about as much as a known one, bcrypt runs on the
//! blocking pool (bounded by the CPU count) with successful checks cached so reconnect storms stay cheap, and
//! repeated failures from one address are answered ever more slowly. Passwords are never logged.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::Secret;

/// Prefix of the WebSocket subprotocol that carries credentials for browsers, which cannot set an
/// `Authorization` header on a WebSocket: `wsmq.auth.<base64url-no-pad(user:password)>`.
pub const AUTH_SUBPROTOCOL_PREFIX: &str = "wsmq.auth.";

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

/// Why the configured users could not be loaded. Messages name the file and line but never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file could not be read.
    #[error("cannot read users file {path}: {source}")]
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

/// Why a handshake was not authenticated; both are answered with `401 Unauthorized`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The client sent no credentials at all.
    #[error("no credentials presented")]
    Missing,
    /// Unknown user or wrong password (deliberately not distinguished).
    #[error("invalid credentials")]
    Invalid,
}

/// Checks credentials against the configured users. Cheap to clone: clones share users, cache and failure
/// tracking, so one instance serves a whole listener.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
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
    /// `peer` is the client address: after a few failures from one address (IPv6 grouped by /64) within a minute,
    /// each further failure is answered only after an increasing delay capped at a few seconds. Missing
    /// credentials are answered at once and not counted, since they guess nothing.
    pub async fn verify(
        &self,
        creds: Option<&Credentials>,
        peer: IpAddr,
    ) -> Result<String, AuthFailure> {
        let Some(creds) = creds else {
            return Err(AuthFailure::Missing);
        };
        if self.check(creds).await {
            return Ok(creds.user.clone());
        }
        let (failures, delay) = lock(&self.inner.failures).record(peer, Instant::now());
        tracing::debug!(user = %creds.user, %peer, failures, "authentication failed");
        if !delay.is_zero() {
            if failures == FREE_FAILURES + 1 {
                tracing::warn!(%peer, "repeated authentication failures, slowing down answers to this address");
            }
            tokio::time::sleep(delay).await;
        }
        Err(AuthFailure::Invalid)
    }

    async fn check(&self, creds: &Credentials) -> bool {
        let (stored, known) = match self.inner.users.get(&creds.user) {
            Some(stored) => (stored.clone(), true),
            None => (self.inner.decoy.clone(), false),
        };
        let matches = match stored {
            StoredPassword::Plain(digest) => {
                bool::from(sha256(creds.password.expose().as_bytes()).ct_eq(&digest))
            }
            StoredPassword::Bcrypt(hash) => {
                let key = cache_key(&creds.user, &creds.password);
                if known && lock(&self.inner.verified).is_fresh(&key, Instant::now()) {
                    return true;
                }
                let matches = self.bcrypt(creds.password.clone(), hash).await;
                if matches && known {
                    lock(&self.inner.verified).insert(key, Instant::now());
                }
                matches
            }
        };
        matches && known
    }

    async fn bcrypt(&self, password: Secret, hash: Arc<str>) -> bool {
        let Ok(slot) = self.inner.bcrypt_slots.acquire().await else {
            return false;
        };
        self.inner.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let outcome =
            tokio::task::spawn_blocking(move || bcrypt::verify(password.expose(), &hash)).await;
        drop(slot);
        match outcome {
            Ok(Ok(matches)) => matches,
            Ok(Err(err)) => {
                tracing::warn!(%err, "bcrypt verification failed");
                false
            }
            Err(err) => {
                tracing::warn!(%err, "bcrypt verification task did not complete");
                false
            }
        }
    }
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
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Authenticator {
            inner: Arc::new(Inner {
                users: self.users,
                decoy,
                bcrypt_slots: Semaphore::new(cpus),
                bcrypt_runs: AtomicU64::new(0),
                verified: Mutex::new(VerifiedCache::default()),
                failures: Mutex::new(FailureTracker::default()),
            }),
        })
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

/// Recent authentication failures per client address.
#[derive(Default)]
struct FailureTracker {
    by_addr: HashMap<IpAddr, Failures>,
}

struct Failures {
    count: u32,
    last: Instant,
}

impl FailureTracker {
    /// Counts a failure from `peer` and returns the failure count in the current window and how long to wait
    /// before answering it.
    fn record(&mut self, peer: IpAddr, now: Instant) -> (u32, Duration) {
        let addr = tracking_key(peer);
        if self.by_addr.len() >= FAILURE_TRACKER_CAPACITY && !self.by_addr.contains_key(&addr) {
            self.by_addr
                .retain(|_, f| now.duration_since(f.last) < FAILURE_WINDOW);
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
        });
        if now.duration_since(failures.last) >= FAILURE_WINDOW {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
        (failures.count, failure_delay(failures.count))
    }
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
/// controls a whole /64).
fn tracking_key(peer: IpAddr) -> IpAddr {
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

/// Locks a mutex that guards plain bookkeeping: a panic elsewhere cannot leave it in a state worth refusing.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn ipv6_peers_are_tracked_per_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(tracking_key(a), tracking_key(b));
        assert_ne!(tracking_key(a), tracking_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(tracking_key(mapped), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
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
