//! What a client connection of an edge (publisher, subscriber) may do: the `--acl-file` in force (reloaded on
//! SIGHUP and file change, see [`crate::acl::LiveAcl`]) or the permissions the auth callout granted, resolved
//! once per connection and again whenever the ACL changes.
//!
//! Why a per-connection handle: permissions are checked on every publish and `sub`, so they are resolved once
//! (patterns with `{user}` filled in) rather than per message; a reload bumps the ACL's generation, and each
//! connection, watching it, resolves again and can end what it no longer may do (the subscriber's live
//! subscriptions) without being dropped. A connection the callout gave permissions keeps them: they replace the
//! file's for its whole life.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::acl::{AclError, DEFAULT_POLL_INTERVAL, LiveAcl, Permissions};
use crate::supervise::Supervisor;
use crate::topic::Pattern;

/// The edge's permission source, shared by its connections: cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `None` without `--acl-file`: everything allowed.
    acl: Option<LiveAcl>,
}

/// Why the ACL could not be put in force at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The ACL file is unreadable or invalid (the message names the file and line).
    #[error(transparent)]
    Acl(#[from] AclError),
    /// The SIGHUP handler for reloads could not be installed.
    #[error("cannot install the SIGHUP handler for ACL reloads")]
    Signal(#[source] io::Error),
}

/// The ACL's reload task, built at start-up and run under the service's supervisor.
pub struct AclWatcher {
    task: Pin<Box<dyn Future<Output = ()> + Send>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for AclWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclWatcher").finish_non_exhaustive()
    }
}

impl AclWatcher {
    /// Runs the reload task under `supervisor` until the service stops; its ending on its own is a failure.
    pub fn spawn(self, supervisor: &Supervisor) {
        let token = supervisor.token().clone();
        let stop = self.stop;
        let task = self.task;
        supervisor.spawn("acl reload", async move {
            let cancel = stop.clone();
            tokio::select! {
                () = task => {}
                () = token.cancelled() => cancel.cancel(),
            }
        });
    }
}

impl Access {
    /// Loads `acl_file` (blocking; at start-up) and prepares its reload task. `None`: everything allowed.
    /// Fails on an unreadable or invalid file, with the file and line in the message.
    pub fn load(acl_file: Option<&Path>) -> Result<(Self, Option<AclWatcher>), AccessError> {
        let Some(path) = acl_file else {
            return Ok((Self::default(), None));
        };
        let acl = LiveAcl::load(path)?;
        let stop = CancellationToken::new();
        let task = acl
            .watch(DEFAULT_POLL_INTERVAL, stop.clone())
            .map_err(AccessError::Signal)?;
        tracing::info!(path = %path.display(), "ACL loaded");
        let watcher = AclWatcher {
            task: Box::pin(task),
            stop,
        };
        Ok((Self { acl: Some(acl) }, Some(watcher)))
    }

    /// Whether an ACL file is in force (without one everything is allowed).
    pub fn is_restricted(&self) -> bool {
        self.acl.is_some()
    }

    /// The permissions of a new connection of `user`: `granted` (from the auth callout) if any, else the ACL
    /// file's, else everything.
    pub fn connection(&self, user: &str, granted: Option<Permissions>) -> ConnectionAccess {
        let (permissions, generation) = match (granted, &self.acl) {
            (Some(granted), _) => (granted, None),
            (None, Some(acl)) => (acl.permissions(user), Some(acl.generation())),
            (None, None) => (Permissions::allow_all(), None),
        };
        ConnectionAccess {
            acl: self.acl.clone(),
            user: user.to_owned(),
            generation,
            permissions,
        }
    }
}

/// One connection's permissions, re-resolved when the ACL file is reloaded.
#[derive(Debug)]
pub struct ConnectionAccess {
    acl: Option<LiveAcl>,
    user: String,
    /// `None` when the permissions cannot change (no ACL file, or granted by the callout).
    generation: Option<watch::Receiver<u64>>,
    permissions: Permissions,
}

impl ConnectionAccess {
    /// What the connection may do now.
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// The permissions now, resolved again first if the ACL changed since: for connections that consult them per
    /// message (one atomic load when nothing changed).
    pub fn current(&mut self) -> &Permissions {
        if let (Some(generation), Some(acl)) = (self.generation.as_mut(), &self.acl)
            && generation.has_changed().unwrap_or(false)
        {
            generation.mark_unchanged();
            self.permissions = acl.permissions(&self.user);
        }
        &self.permissions
    }

    /// Whether this connection may publish to `topic`; `Err` names what is wrong with a topic that is refused
    /// whatever the permissions (wildcard syntax), or that cannot be checked against an ACL (a legacy ws-go
    /// topic outside the token rules, see [`crate::topic::Compat`]). Every way of publishing (WebSocket, HTTP
    /// API) asks this.
    pub fn may_publish(&mut self, topic: &str) -> Result<bool, String> {
        let invalid = |err| format!("invalid topic: {err}");
        match crate::topic::published(topic).map_err(invalid)? {
            crate::topic::Compat::Strict(topic) => Ok(self.current().can_publish(topic)),
            crate::topic::Compat::Legacy(_) if self.is_unrestricted() => Ok(true),
            crate::topic::Compat::Legacy(err) => Err(format!(
                "{} (required with topic permissions)",
                invalid(err)
            )),
        }
    }

    /// Whether this connection may subscribe to `pattern`, written `text` (or read its history): what its
    /// permissions say. Without topic permissions everything is allowed except other users' inboxes: `@<other>`
    /// and the patterns that would include them (`*`, `>`, `@*`); an inbox is its user's alone.
    pub fn may_subscribe(&self, text: &str, pattern: &Pattern) -> bool {
        if self.is_unrestricted() {
            let foreign_inbox = text
                .strip_prefix('@')
                .is_some_and(|owner| owner != self.user);
            !(foreign_inbox || matches!(text, "*" | ">"))
        } else {
            self.permissions.can_subscribe(pattern)
        }
    }

    /// Whether everything is allowed (no ACL file and no permissions from the callout).
    pub fn is_unrestricted(&self) -> bool {
        self.permissions == Permissions::allow_all()
    }

    /// Resolves once the ACL has changed and the connection's permissions were resolved again; never when they
    /// cannot change. Cancel-safe: use it in a `select!` next to the connection's reads.
    pub async fn changed(&mut self) {
        let (Some(generation), Some(acl)) = (self.generation.as_mut(), &self.acl) else {
            return std::future::pending().await;
        };
        if generation.changed().await.is_err() {
            // The ACL is gone (the service is stopping): nothing will change any more.
            self.generation = None;
            return std::future::pending().await;
        }
        self.permissions = acl.permissions(&self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_permissions_an_inbox_is_its_users_alone() {
        let alice = Access::default().connection("alice", None);
        let may = |text: &str| alice.may_subscribe(text, &Pattern::parse(text).unwrap());
        assert!(may("@alice") && may("news") && may("news.>") && may("*.x"));
        assert!(!may("@bob") && !may("@alice.smith"));
        assert!(
            !may("@*") && !may("*") && !may(">"),
            "patterns reaching other inboxes"
        );
    }
}
