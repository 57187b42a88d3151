//! Who may publish and subscribe to what: the `--acl-file`, resolved into [`Permissions`] once per connection,
//! and [`LiveAcl`], which reloads the file on SIGHUP and when it changes.
//!
//! Without an ACL file every authenticated client may publish and subscribe to everything (the edges use
//! [`Permissions::allow_all`]). With one, what no allow pattern permits is denied. The format (TOML; also in
//! docs/ACL.md):
//!
//! ```toml
//! # Users named in no [users.*] entry and in no group.
//! [defaults]
//! publish.allow = ["chat.>", "@*"]          # chat topics and every user's inbox
//! subscribe.allow = ["chat.>", "@{user}"]   # chat topics and their own inbox only
//!
//! [groups.services]
//! members = ["billing", "mailer"]
//! publish.allow = [">"]
//! subscribe.allow = ["jobs.>"]
//!
//! [users.alice]
//! publish.allow = ["chat.{user}.>", "@*"]
//! publish.deny = ["chat.alice.secret"]
//! subscribe.allow = ["chat.>", "@{user}"]
//! ```
//!
//! - **Who gets what.** A user's permissions are the union of their `[users.<name>]` entry and the entries of
//!   every group whose `members` names them (quote names with dots: `[users."bob@example.com"]`). A user with
//!   neither gets `[defaults]` (none at all if the file has no `[defaults]`); `[defaults]` is not added to named
//!   users.
//! - **Allow and deny.** Each entry has `publish` and `subscribe`, each with `allow` and `deny` lists of patterns
//!   (see [`crate::topic`]: `*` one token, `>` the rest, `@*` any inbox). Deny wins over allow.
//! - **Publishing** to a topic is allowed when an allow pattern matches it and no deny pattern does.
//! - **Subscribing** to a pattern is allowed when ONE allow pattern covers it (matches every topic it can match)
//!   and NO deny pattern overlaps it (could match a topic it matches). So allow `news.>` permits `sub news.*`,
//!   allow `news.sport` does not permit `sub news.*`, and allow `news.>` with deny `news.secret` refuses
//!   `sub news.*` (it would receive `news.secret`) while `sub news.sport` is fine. Coverage by several allow
//!   patterns together is not looked for: allow `news.*` and `news.*.>` do not permit `sub news.>`; write
//!   `news.>`.
//! - **`{user}`** stands for the connection's user name. It is a whole token (`chat.{user}.>`) or the whole
//!   inbox pattern `@{user}` (so "only alice may subscribe to `@alice`" is `subscribe.allow = ["@{user}"]` for
//!   everyone). A name that cannot fill it as one token (`{user}`: a name with `.`, `*`, `>` or a leading `@`;
//!   `@{user}`: a name with `*` or `>`) fails closed: an allow pattern then allows nothing, and a deny pattern
//!   denies everything in its direction (as `>` would). A name is never read as pattern syntax.
//!
//! Unknown keys are errors (a misspelt `pubish` must not silently allow nothing), and every error names the
//! file and line.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use toml::Spanned;

use crate::topic::{INBOX_PREFIX, Pattern, SEPARATOR, SyntaxError, Topic};

/// How often [`LiveAcl::watch`] looks at the file by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The placeholder for the connection's user name.
const USER: &str = "{user}";
/// The placeholder for the user's inbox.
const USER_INBOX: &str = "@{user}";

/// Why a pattern of an ACL (file or callout answer) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The pattern breaks the topic pattern rules.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// `{user}` inside a token (`chat.x{user}`), or an inbox pattern other than `@{user}`.
    #[error(
        "`{{user}}` must be a whole token (`chat.{{user}}.>`) or the whole inbox pattern `@{{user}}`"
    )]
    PlaceholderNotAToken,
    /// Braces that are not `{user}`, such as `{username}`.
    #[error("unknown placeholder: only `{{user}}` is replaced")]
    UnknownPlaceholder,
}

/// Why an ACL file was refused. Messages name the file and, where it applies, the line.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read ACL file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not TOML, or not in the ACL's shape (unknown key, wrong type).
    #[error("{path}:{line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A pattern is invalid.
    #[error("{path}:{line}: invalid pattern `{pattern}`: {source}")]
    Pattern {
        /// The file.
        path: PathBuf,
        /// 1-based line of the pattern.
        line: usize,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        source: TemplateError,
    },
}

/// One allow or deny pattern as written, possibly with `{user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    text: String,
    kind: TemplateKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateKind {
    /// No placeholder: the same pattern for everyone.
    Fixed(Pattern),
    /// `{user}` as one or more whole tokens.
    UserToken,
    /// `@{user}`.
    UserInbox,
}

impl Template {
    fn parse(text: &str) -> Result<Self, TemplateError> {
        let kind = if text == USER_INBOX {
            TemplateKind::UserInbox
        } else if text.contains(USER) {
            if text.starts_with(INBOX_PREFIX)
                || text.split(SEPARATOR).any(|t| t.contains(USER) && t != USER)
            {
                return Err(TemplateError::PlaceholderNotAToken);
            }
            check_braces(&text.replace(USER, ""))?;
            Pattern::parse(&text.replace(USER, "user"))?;
            TemplateKind::UserToken
        } else {
            check_braces(text)?;
            TemplateKind::Fixed(Pattern::parse(text)?)
        };
        Ok(Self {
            text: text.to_owned(),
            kind,
        })
    }

    /// The pattern for `user`. When the name cannot fill the placeholder this fails closed: `None` for an
    /// allow, everything (`>`) for a deny.
    fn resolve(&self, user: &str, deny: bool) -> Option<Pattern> {
        let filled = match &self.kind {
            TemplateKind::Fixed(pattern) => return Some(pattern.clone()),
            TemplateKind::UserToken => Topic::parse(user)
                .is_ok_and(|t| !t.is_inbox() && !user.contains(SEPARATOR))
                .then(|| Pattern::parse(&self.text.replace(USER, user)).ok())
                .flatten(),
            TemplateKind::UserInbox => Pattern::parse(&format!("{INBOX_PREFIX}{user}"))
                .ok()
                .filter(Pattern::is_exact),
        };
        filled.or_else(|| deny.then(Pattern::everything))
    }
}

fn check_braces(text: &str) -> Result<(), TemplateError> {
    if text.contains(['{', '}']) {
        return Err(TemplateError::UnknownPlaceholder);
    }
    Ok(())
}

/// The allow and deny templates of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rules {
    allow: Vec<Template>,
    deny: Vec<Template>,
}

impl Rules {
    fn extend(&mut self, other: &Rules) {
        self.allow.extend(other.allow.iter().cloned());
        self.deny.extend(other.deny.iter().cloned());
    }

    fn resolve(&self, user: &str) -> ResolvedRules {
        ResolvedRules {
            allow: self
                .allow
                .iter()
                .filter_map(|t| t.resolve(user, false))
                .collect(),
            deny: self
                .deny
                .iter()
                .filter_map(|t| t.resolve(user, true))
                .collect(),
        }
    }
}

/// The permissions of one user or group, or of one callout answer, before `{user}` is filled in.
///
/// Deserializes from the shape of one ACL entry, `{"publish": {"allow": [...], "deny": [...]}, "subscribe":
/// {...}}` (every part optional), which is also what the auth callout answers with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawEntry<String>")]
pub struct Entry {
    publish: Rules,
    subscribe: Rules,
}

impl Entry {
    /// The permissions of `user` under this entry: `{user}` filled in, so the connection checks plain patterns.
    pub fn resolve(&self, user: &str) -> Permissions {
        Permissions(Arc::new(Resolved {
            publish: Some(self.publish.resolve(user)),
            subscribe: Some(self.subscribe.resolve(user)),
        }))
    }

    fn extend(&mut self, other: &Entry) {
        self.publish.extend(&other.publish);
        self.subscribe.extend(&other.subscribe);
    }
}

impl TryFrom<RawEntry<String>> for Entry {
    type Error = TemplateError;

    fn try_from(raw: RawEntry<String>) -> Result<Self, TemplateError> {
        raw.compile(|_, error| error)
    }
}

/// What one connection may do. Resolved once per connection (see [`Acl::permissions`], [`Entry::resolve`]);
/// cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions(Arc<Resolved>);

#[derive(Debug, PartialEq, Eq)]
struct Resolved {
    /// `None`: everything allowed.
    publish: Option<ResolvedRules>,
    subscribe: Option<ResolvedRules>,
}

#[derive(Debug, PartialEq, Eq)]
struct ResolvedRules {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl Permissions {
    /// Everything allowed: what a connection gets when no ACL is configured (today's behaviour).
    pub fn allow_all() -> Self {
        Self(Arc::new(Resolved {
            publish: None,
            subscribe: None,
        }))
    }

    /// Whether publishing to `topic` is allowed: an allow pattern matches it and no deny pattern does.
    pub fn can_publish(&self, topic: Topic<'_>) -> bool {
        self.0.publish.as_ref().is_none_or(|rules| {
            rules.allow.iter().any(|p| p.matches(topic))
                && !rules.deny.iter().any(|p| p.matches(topic))
        })
    }

    /// Whether subscribing to `pattern` is allowed: one allow pattern covers every topic it can match and no deny
    /// pattern matches any of them. For an exact pattern this is the same test as [`Permissions::can_publish`]
    /// makes with the subscribe rules.
    pub fn can_subscribe(&self, pattern: &Pattern) -> bool {
        self.0.subscribe.as_ref().is_none_or(|rules| {
            rules.allow.iter().any(|p| p.covers(pattern))
                && !rules.deny.iter().any(|p| p.overlaps(pattern))
        })
    }
}

/// A parsed ACL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    defaults: Entry,
    /// Every user named in `[users.*]` or in a group's members, with the union of their entries.
    users: HashMap<String, Entry>,
}

impl Acl {
    /// Reads and parses the ACL file. Blocking: call it at start-up or on the blocking pool.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let source = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&source, path)
    }

    /// Parses an ACL from its TOML text; `path` only names the file in errors.
    pub fn parse(source: &str, path: &Path) -> Result<Self, AclError> {
        let line_of = |offset: usize| {
            1 + source
                .get(..offset)
                .map_or(0, |before| before.matches('\n').count())
        };
        let raw: RawFile = toml::from_str(source).map_err(|error| AclError::Format {
            path: path.to_owned(),
            line: error.span().map_or(1, |span| line_of(span.start)),
            message: error.message().to_owned(),
        })?;
        let compile = |entry: RawEntry<Spanned<String>>| {
            entry.compile(|text, source| AclError::Pattern {
                path: path.to_owned(),
                line: line_of(text.span().start),
                pattern: text.get_ref().clone(),
                source,
            })
        };
        let defaults = compile(raw.defaults)?;
        let mut users: HashMap<String, Entry> = HashMap::new();
        for (name, entry) in raw.users {
            users.entry(name).or_default().extend(&compile(entry)?);
        }
        for group in raw.groups.into_values() {
            let entry = compile(RawEntry {
                publish: group.publish,
                subscribe: group.subscribe,
            })?;
            for member in group.members {
                users.entry(member).or_default().extend(&entry);
            }
        }
        Ok(Self { defaults, users })
    }

    /// The permissions of `user`, with `{user}` filled in.
    pub fn permissions(&self, user: &str) -> Permissions {
        self.users.get(user).unwrap_or(&self.defaults).resolve(user)
    }
}

/// The ACL file's top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawEntry<Spanned<String>>,
    #[serde(default)]
    users: BTreeMap<String, RawEntry<Spanned<String>>>,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    members: Vec<String>,
    #[serde(default)]
    publish: RawRules<Spanned<String>>,
    #[serde(default)]
    subscribe: RawRules<Spanned<String>>,
}

/// One entry as written; `S` is `Spanned<String>` in a file (for line numbers) and `String` in JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "S: Deserialize<'de>"))]
struct RawEntry<S> {
    #[serde(default)]
    publish: RawRules<S>,
    #[serde(default)]
    subscribe: RawRules<S>,
}

impl<S> Default for RawEntry<S> {
    fn default() -> Self {
        Self {
            publish: RawRules::default(),
            subscribe: RawRules::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "S: Deserialize<'de>"))]
struct RawRules<S> {
    #[serde(default)]
    allow: Vec<S>,
    #[serde(default)]
    deny: Vec<S>,
}

impl<S> Default for RawRules<S> {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// A pattern's text as deserialized: with its position in a file, or plain.
trait PatternText {
    fn text(&self) -> &str;
}

impl PatternText for String {
    fn text(&self) -> &str {
        self
    }
}

impl PatternText for Spanned<String> {
    fn text(&self) -> &str {
        self.get_ref()
    }
}

impl<S: PatternText> RawEntry<S> {
    /// Compiles every template; `fail` turns an invalid one into the caller's error, with what `S` knows.
    fn compile<E>(self, fail: impl Fn(&S, TemplateError) -> E) -> Result<Entry, E> {
        let rules = |raw: RawRules<S>| -> Result<Rules, E> {
            let list = |texts: Vec<S>| {
                texts
                    .iter()
                    .map(|text| Template::parse(text.text()).map_err(|e| fail(text, e)))
                    .collect::<Result<Vec<_>, E>>()
            };
            Ok(Rules {
                allow: list(raw.allow)?,
                deny: list(raw.deny)?,
            })
        };
        Ok(Entry {
            publish: rules(self.publish)?,
            subscribe: rules(self.subscribe)?,
        })
    }
}

/// The ACL in force, reloaded from its file on SIGHUP and when the file changes (see [`LiveAcl::watch`]).
///
/// A cheap-clone handle. Connections resolve their [`Permissions`] from [`LiveAcl::permissions`] when they
/// start, and watch [`LiveAcl::generation`]: it changes after every reload that changed the ACL, so they can
/// resolve again and re-check their live subscriptions. A file that has become invalid (or unreadable) leaves
/// the previous ACL in force and is logged once at warn.
#[derive(Debug, Clone)]
pub struct LiveAcl(Arc<LiveInner>);

#[derive(Debug)]
struct LiveInner {
    path: PathBuf,
    current: ArcSwap<Acl>,
    /// The stamp of the file version last read (taken just before reading it), valid or not: the watcher
    /// reloads when the file's stamp differs from it.
    read: Mutex<Option<FileStamp>>,
    generation: watch::Sender<u64>,
    failed_reloads: AtomicU64,
}

/// What identifies one version of the file without reading it: modification time, length and inode (an editor
/// or a Kubernetes ConfigMap update replaces the file, a rewrite in place changes time and usually length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl LiveAcl {
    /// Loads the file at start-up; fails if it is unreadable or invalid. Blocking.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, AclError> {
        let path = path.into();
        let read = stamp(&path);
        let acl = Acl::load(&path)?;
        Ok(Self(Arc::new(LiveInner {
            path,
            current: ArcSwap::from_pointee(acl),
            read: Mutex::new(read),
            generation: watch::Sender::new(0),
            failed_reloads: AtomicU64::new(0),
        })))
    }

    /// The file this ACL is loaded from.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The ACL in force now.
    pub fn current(&self) -> Arc<Acl> {
        self.0.current.load_full()
    }

    /// The permissions of `user` under the ACL in force now.
    pub fn permissions(&self, user: &str) -> Permissions {
        self.0.current.load().permissions(user)
    }

    /// A receiver of the reload generation: it changes (and wakes `changed()`) after each reload that changed
    /// the ACL.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.0.generation.subscribe()
    }

    /// How many reloads failed (the file was unreadable or invalid) since start-up, for metrics.
    pub fn failed_reloads(&self) -> u64 {
        self.0.failed_reloads.load(Ordering::Relaxed)
    }

    /// Reads and parses the file again and puts it in force if it differs: `Ok(true)` if it changed, `Ok(false)`
    /// if it is the same; on error the previous ACL stays in force and the failure is counted. Blocking; logs
    /// nothing (the caller does).
    pub fn reload(&self) -> Result<bool, AclError> {
        *self.0.read.lock() = stamp(&self.0.path);
        let acl = Acl::load(&self.0.path).inspect_err(|_| {
            self.0.failed_reloads.fetch_add(1, Ordering::Relaxed);
        })?;
        if **self.0.current.load() == acl {
            return Ok(false);
        }
        self.0.current.store(Arc::new(acl));
        self.0.generation.send_modify(|generation| *generation += 1);
        Ok(true)
    }

    /// The reload task: reloads on SIGHUP and when the file's stamp (modification time, length, inode) has
    /// changed and then stayed the same for one `poll_interval` (so a file caught half-written is not loaded),
    /// until `shutdown`. Polling rather than inotify (`notify`): a stat per second costs nothing, needs no
    /// dependency, and sees every way a file is replaced (in place, by rename, by a ConfigMap's symlink swap, on
    /// network file systems) where inotify watches miss some. Fails only if the SIGHUP handler cannot be
    /// installed; it is installed before this returns, so a SIGHUP sent afterwards is never lost.
    pub fn watch(
        &self,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) -> io::Result<impl Future<Output = ()> + Send + 'static> {
        let mut hangup = signal(SignalKind::hangup())?;
        let live = self.clone();
        Ok(async move {
            let mut settle = Settle::default();
            let mut ticker = tokio::time::interval(poll_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = hangup.recv() => {
                        settle = Settle::default();
                        live.reload_logged("SIGHUP").await;
                    }
                    _ = ticker.tick() => {
                        let path = live.0.path.clone();
                        let Ok(now) = tokio::task::spawn_blocking(move || stamp(&path)).await else {
                            continue;
                        };
                        let read = *live.0.read.lock();
                        if settle.observe(now, read) {
                            live.reload_logged("file changed").await;
                        }
                    }
                }
            }
        })
    }

    async fn reload_logged(&self, cause: &'static str) {
        let live = self.clone();
        let path = self.0.path.display().to_string();
        match tokio::task::spawn_blocking(move || live.reload()).await {
            Ok(Ok(true)) => {
                let generation = *self.0.generation.borrow();
                tracing::info!(%path, cause, generation, "ACL reloaded");
            }
            Ok(Ok(false)) => tracing::debug!(%path, cause, "ACL unchanged"),
            Ok(Err(error)) => {
                tracing::warn!(%error, cause, "ACL not reloaded; the previous one stays in force");
            }
            Err(error) => tracing::error!(%error, %path, "ACL reload task failed"),
        }
    }
}

/// Decides when a changed file is loaded: once its stamp differs from the version last read and has stayed the
/// same for one poll, so a file caught half-written (truncated, then written) is not loaded.
#[derive(Debug, Default)]
struct Settle {
    /// A changed stamp seen at the previous poll, waiting to be seen again.
    pending: Option<Option<FileStamp>>,
}

impl Settle {
    /// Takes the stamp seen now and the one of the version last read; true when the file should be loaded.
    fn observe(&mut self, now: Option<FileStamp>, read: Option<FileStamp>) -> bool {
        let settled = now != read && self.pending == Some(now);
        self.pending = (now != read && !settled).then_some(now);
        settled
    }
}

/// The file's stamp, `None` if it cannot be read. Blocking (one `stat`).
fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(source: &str) -> Acl {
        Acl::parse(source, Path::new("acl.toml")).unwrap()
    }

    fn error(source: &str) -> String {
        Acl::parse(source, Path::new("acl.toml"))
            .unwrap_err()
            .to_string()
    }

    fn publish(permissions: &Permissions, topic: &str) -> bool {
        permissions.can_publish(Topic::parse(topic).unwrap())
    }

    fn subscribe(permissions: &Permissions, pattern: &str) -> bool {
        permissions.can_subscribe(&Pattern::parse(pattern).unwrap())
    }

    const EXAMPLE: &str = r#"
        [defaults]
        publish.allow = ["chat.>", "@*"]
        subscribe.allow = ["chat.>", "@{user}"]

        [groups.services]
        members = ["billing", "alice"]
        publish.allow = ["jobs.>"]
        subscribe.allow = ["jobs.*"]

        [users.alice]
        publish.allow = ["chat.{user}.>", "@*"]
        publish.deny = ["chat.alice.secret"]
        subscribe.allow = ["chat.>", "@{user}", "news.>"]
        subscribe.deny = ["news.secret"]
    "#;

    #[test]
    fn publish_table() {
        let acl = acl(EXAMPLE);
        let (alice, bob, billing) = (
            acl.permissions("alice"),
            acl.permissions("bob"),
            acl.permissions("billing"),
        );
        let table: &[(&Permissions, &str, bool)] = &[
            (&alice, "chat.alice.room", true),
            (&alice, "chat.alice.secret", false),
            (&alice, "chat.bob.room", false),
            (&alice, "@bob", true),
            (&alice, "jobs.mail", true),
            (&alice, "news", false),
            (&bob, "chat.anything.here", true),
            (&bob, "@alice", true),
            (&bob, "jobs.mail", false),
            (&billing, "jobs.mail.send", true),
            (&billing, "chat.x", false),
            (&billing, "@alice", false),
        ];
        for &(who, topic, expected) in table {
            assert_eq!(publish(who, topic), expected, "{who:?} publish {topic}");
        }
    }

    #[test]
    fn subscribe_table() {
        let acl = acl(EXAMPLE);
        let (alice, bob) = (acl.permissions("alice"), acl.permissions("bob"));
        let table: &[(&Permissions, &str, bool)] = &[
            (&alice, "@alice", true),
            (&alice, "@bob", false),
            (&alice, "@*", false),
            (&bob, "@bob", true),
            (&bob, "@alice", false),
            (&alice, "news.sport", true),
            (&alice, "news.>", false),
            (&alice, "news.*", false),
            (&alice, "news.sport.*", true),
            (&alice, "news.secret", false),
            (&alice, "jobs.mail", true),
            (&alice, "jobs.*", true),
            (&alice, "jobs.>", false),
            (&bob, "chat.*", true),
            (&bob, "chat.>", true),
            (&bob, ">", false),
            (&bob, "*", false),
        ];
        for &(who, pattern, expected) in table {
            assert_eq!(
                subscribe(who, pattern),
                expected,
                "{who:?} subscribe {pattern}"
            );
        }
    }

    #[test]
    fn wildcard_subscriptions_need_one_allow_that_covers_them() {
        let acl = acl(r#"defaults.subscribe.allow = ["news.>", "sport.results"]"#);
        let anyone = acl.permissions("anyone");
        assert!(subscribe(&anyone, "news.*"));
        assert!(subscribe(&anyone, "news.>"));
        assert!(!subscribe(&anyone, "sport.*"));
        assert!(!subscribe(&anyone, "*.results"));
        let split = self::acl(r#"defaults.subscribe.allow = ["news.*", "news.*.>"]"#);
        assert!(
            !subscribe(&split.permissions("x"), "news.>"),
            "union coverage is not looked for"
        );
    }

    #[test]
    fn without_an_acl_everything_is_allowed_and_with_one_nothing_unlisted() {
        let all = Permissions::allow_all();
        assert!(publish(&all, "any.topic") && subscribe(&all, ">") && subscribe(&all, "@*"));
        let empty = acl("");
        assert!(!publish(&empty.permissions("u"), "any"));
        assert!(!subscribe(&empty.permissions("u"), "any"));
        let publish_only = acl(r#"defaults.publish.allow = [">"]"#);
        assert!(publish(&publish_only.permissions("u"), "any"));
        assert!(!subscribe(&publish_only.permissions("u"), "any"));
    }

    #[test]
    fn deny_wins_over_allow_from_any_entry() {
        let acl = acl(r#"
            [users.carol]
            publish.allow = [">"]
            [groups.restricted]
            members = ["carol"]
            publish.deny = ["admin.>"]
            "#);
        let carol = acl.permissions("carol");
        assert!(publish(&carol, "chat.x"));
        assert!(!publish(&carol, "admin.reset"));
    }

    #[test]
    fn user_names_fill_whole_tokens_only_and_odd_names_fail_closed() {
        let acl = acl(r#"
            defaults.publish.allow = ["chat.{user}.>", "@{user}"]
            defaults.publish.deny = ["chat.{user}.secret", "@{user}"]
            defaults.subscribe.allow = ["@{user}", "chat.{user}"]
            "#);
        let dotted = acl.permissions("alice.smith");
        assert!(subscribe(&dotted, "@alice.smith"), "inboxes take any name");
        assert!(
            !subscribe(&dotted, "chat.alice.smith"),
            "a dotted name fills no token"
        );
        assert!(!publish(&dotted, "chat.alice.smith.x"));
        let star = acl.permissions("*");
        assert!(
            !subscribe(&star, "chat.*"),
            "a name is never pattern syntax"
        );
        assert!(!subscribe(&star, "@*"));
        let at = acl.permissions("@bob");
        assert!(!subscribe(&at, "chat.@bob"));
        // a deny template a name cannot fill denies everything in its direction
        let plain = self::acl(
            r#"
            defaults.publish.allow = [">"]
            defaults.publish.deny = ["chat.{user}.secret"]
            defaults.subscribe.allow = [">"]
            "#,
        );
        assert!(!publish(&plain.permissions("bob"), "chat.bob.secret"));
        assert!(publish(&plain.permissions("bob"), "chat.eve.secret"));
        assert!(!publish(&plain.permissions("a.b"), "chat.a.b.secret"));
        assert!(!publish(&plain.permissions("a.b"), "news"));
        assert!(subscribe(&plain.permissions("a.b"), "news"));
    }

    #[test]
    fn bad_files_are_refused_with_their_line() {
        let cases = [
            (
                "[defaults]\npublish.allow = [\"news.>.x\"]",
                "acl.toml:2: invalid pattern `news.>.x`: `>` must be the last token",
            ),
            (
                "[defaults]\n\npublish.alow = []",
                "acl.toml:3: unknown field `alow`",
            ),
            (
                "[users.a]\nsubscribe.allow = [\"chat.x{user}\"]",
                "acl.toml:2: invalid pattern `chat.x{user}`: `{user}` must be a whole token",
            ),
            (
                "[users.a]\nsubscribe.allow = [\"@{user}.x\"]",
                "must be a whole token",
            ),
            (
                "[users.a]\nsubscribe.allow = [\"chat.{username}\"]",
                "unknown placeholder",
            ),
            ("[groups.g]\npublish.allow = []", "missing field `members`"),
            ("[defaults]\npublish.allow = \"news\"", "acl.toml:2:"),
            ("[defaults\n", "acl.toml:1:"),
        ];
        for (source, expected) in cases {
            let message = error(source);
            assert!(message.contains(expected), "{source:?}: {message}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_file_text_is_parsed_or_refused_without_panicking(
            source in "(\\[?(defaults|users\\.a|groups\\.g)\\]?\n|(publish|subscribe)\\.(allow|deny) = \\[\"[a-c.*>@{}user]{0,12}\"\\]\n|members = \\[\"a\"\\]\n|\\PC{0,20}){0,6}",
        ) {
            if let Ok(acl) = Acl::parse(&source, Path::new("fuzz.toml")) {
                for user in ["a", "b.c", "*", "@x", ""] {
                    let permissions = acl.permissions(user);
                    permissions.can_publish(Topic::parse("a.b").unwrap());
                    permissions.can_subscribe(&Pattern::parse("a.>").unwrap());
                }
            }
        }
    }

    #[test]
    fn a_changed_file_is_loaded_once_its_stamp_has_settled() {
        let stamp = |len| {
            Some(FileStamp {
                modified: None,
                len,
                inode: 1,
            })
        };
        let (loaded, half_written, complete) = (stamp(10), stamp(3), stamp(20));
        let mut settle = Settle::default();
        assert!(!settle.observe(loaded, loaded), "unchanged");
        assert!(
            !settle.observe(half_written, loaded),
            "changed: wait one poll"
        );
        assert!(
            !settle.observe(complete, loaded),
            "changed again: wait again"
        );
        assert!(
            settle.observe(complete, loaded),
            "the same for one poll: load"
        );
        assert!(!settle.observe(complete, complete), "loaded");
        assert!(
            !settle.observe(None, complete),
            "the file vanished: wait one poll"
        );
        assert!(
            settle.observe(None, complete),
            "still gone: try it (and fail, keeping the ACL)"
        );
        assert!(!settle.observe(None, None), "tried");
    }

    #[test]
    fn entries_deserialize_from_json_as_the_callout_sends_them() {
        let entry: Entry = serde_json::from_str(
            r#"{"publish":{"allow":["chat.{user}.>"]},"subscribe":{"allow":["@{user}"],"deny":[]}}"#,
        )
        .unwrap();
        let dave = entry.resolve("dave");
        assert!(publish(&dave, "chat.dave.x") && !publish(&dave, "chat.eve.x"));
        assert!(subscribe(&dave, "@dave") && !subscribe(&dave, "@eve"));
        let bad = serde_json::from_str::<Entry>(r#"{"publish":{"allow":["a..b"]}}"#).unwrap_err();
        assert!(bad.to_string().contains("empty token"), "{bad}");
        assert!(serde_json::from_str::<Entry>(r#"{"publsh":{}}"#).is_err());
    }
}
