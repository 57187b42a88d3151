//! One subscriber client connection on `/subscribe`: reads `sub`/`unsub` commands, keeps the client's entries
//! in the topic index, and moves frames from the client's bounded queue to its writer task.
//!
//! Two modes, chosen at the handshake: `wsmq.v1` clients get `{"subscribed":..}`/`{"unsubscribed":..}`
//! confirmations and `{"error":..}` frames; compat clients (ws-go, no subprotocol) get only messages, and their
//! unknown commands are ignored and counted, as ws-go did.
//!
//! A subscription is an exact topic or a wildcard pattern (`news.*`, `news.>`, see `wsmq_core::topic`), checked
//! against the connection's permissions (`wsmq_core::access`). When the ACL file is reloaded the session
//! resolves its permissions again and ends every live subscription they no longer allow (`wsmq.v1` clients are
//! told with `{"unsubscribed":..,"reason":"forbidden"}`); the connection stays open.
//!
//! The session task reads the socket and handles commands; the writer task (`wsmq_core::ws::run_writer`) drains
//! the client's queue in the router directly, a whole batch per lock and one flush per batch, and pings and
//! closes. When the writer stalls on a client that does not read, its queue fills and the slow-client policy of
//! [`crate::router`] applies, while this task keeps reading commands.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tungstenite::{Message, Utf8Bytes};
use wsmq_core::access::{Access, ConnectionAccess};
use wsmq_core::limits::Limits;
use wsmq_core::protocol::client::{
    Command, encode_error, encode_forbidden, encode_revoked, encode_subscribed, encode_unsubscribed,
};
use wsmq_core::server::Accepted;
use wsmq_core::topic::{self, Compat, Pattern};
use wsmq_core::ws::{Closer, ReadError, Reader, finish_writer, run_writer};

use crate::router::{Client, Router};

/// What every session needs besides its connection; shared by all sessions of a listener.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionContext {
    /// The topic index the session subscribes its client in.
    pub(crate) router: Router,
    /// Ping interval and idle timeout of client connections.
    pub(crate) limits: Limits,
    /// Topics one connection may hold at once (`--max-subscriptions`).
    pub(crate) max_subscriptions: usize,
    /// Who may subscribe to what (the ACL file, if any).
    pub(crate) access: Access,
}

/// Serves one `/subscribe` connection until the client leaves, is cut off or the service shuts down.
/// Expected disconnects are logged at debug: they are not errors.
pub(crate) async fn serve_client(accepted: Accepted, context: Arc<ConnectionContext>) {
    let router = &context.router;
    let _connected = router.metrics().client_connected();
    let v1 = accepted.subprotocol.is_some();
    let (sink, stream) = accepted.ws.split();
    let shutdown = accepted.shutdown;
    let closer = Closer::new(&shutdown);
    let client = router.register(closer.clone());
    let writer = tokio::spawn(run_writer(
        sink,
        client.outgoing(),
        closer.clone(),
        context.limits.ping_interval,
    ));
    let mut reader = Reader::new(stream, closer, context.limits.idle_timeout);
    let mut session = Session {
        context: &context,
        client: &client,
        v1,
        subscriptions: HashMap::new(),
        access: context
            .access
            .connection(&accepted.user, accepted.permissions),
    };

    let ended = loop {
        tokio::select! {
            read = reader.next() => match read {
                Ok(Some(message)) => session.handle(message),
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            },
            () = session.access.changed() => session.revoke_forbidden(),
        }
    };
    session.leave_all();
    match ended {
        Ok(()) => tracing::debug!("client disconnected"),
        Err(ReadError::Ws(err)) => tracing::debug!(%err, "client connection failed"),
        Err(err) => tracing::debug!(%err, "client disconnected"),
    }

    // The writer flushes what is queued, sends its Close frame and ends; one that a non-reading client holds in
    // a blocked write is aborted after a grace period.
    client.leave();
    finish_writer(writer, &context.limits, &shutdown).await;
}

/// The command-handling state of one connection.
struct Session<'a> {
    context: &'a ConnectionContext,
    client: &'a Arc<Client>,
    v1: bool,
    /// What the client subscribed to, as it wrote it: a pattern, or `None` for a legacy ws-go topic outside the
    /// token rules (matched exactly).
    subscriptions: HashMap<Box<str>, Option<Pattern>>,
    /// What the client may subscribe to.
    access: ConnectionAccess,
}

impl Session<'_> {
    fn handle(&mut self, message: Message) {
        let Message::Text(text) = message else {
            self.refuse("binary frames are not commands; send `sub <topic>` as text");
            return;
        };
        match Command::parse(text.as_str()) {
            Ok(Command::Subscribe(topic)) => self.subscribe(&topic),
            Ok(Command::Unsubscribe(topic)) => self.unsubscribe(&topic),
            Err(err) => self.refuse(&err.to_string()),
        }
    }

    fn subscribe(&mut self, text: &str) {
        if !self.subscriptions.contains_key(text) {
            let pattern = match topic::subscribed(text) {
                Ok(Compat::Strict(pattern)) => Some(pattern),
                Ok(Compat::Legacy(_)) if self.access.is_unrestricted() => None,
                Ok(Compat::Legacy(err)) => {
                    self.refuse(&format!(
                        "invalid pattern `{text}`: {err} (required with topic permissions)"
                    ));
                    return;
                }
                Err(err) => {
                    self.refuse(&format!("invalid pattern `{text}`: {err}"));
                    return;
                }
            };
            if !self.allows(pattern.as_ref()) {
                self.context.router.metrics().subscribe_forbidden();
                if self.v1 {
                    self.reply(encode_forbidden(text));
                } else {
                    tracing::debug!("forbidden subscription of a compat client ignored");
                }
                return;
            }
            if self.subscriptions.len() >= self.context.max_subscriptions {
                let limit = self.context.max_subscriptions;
                tracing::debug!(limit, "subscription refused: too many subscriptions");
                if self.v1 {
                    self.reply(encode_error(
                        &format!("too many subscriptions (limit {limit})"),
                        None,
                    ));
                }
                return;
            }
            match &pattern {
                Some(pattern) if !pattern.is_exact() => {
                    self.context.router.subscribe_pattern(pattern, self.client);
                }
                _ => self.context.router.subscribe(text, self.client),
            }
            self.subscriptions.insert(text.into(), pattern);
        }
        if self.v1 {
            self.reply(encode_subscribed(text));
        }
    }

    fn unsubscribe(&mut self, text: &str) {
        if let Some(pattern) = self.subscriptions.remove(text) {
            self.leave(text, pattern.as_ref());
        }
        if self.v1 {
            self.reply(encode_unsubscribed(text));
        }
    }

    /// The permissions changed (ACL reload): ends every subscription they no longer allow, telling `wsmq.v1`
    /// clients why; the connection stays open.
    fn revoke_forbidden(&mut self) {
        let revoked: Vec<Box<str>> = self
            .subscriptions
            .iter()
            .filter(|(_, pattern)| !self.allows(pattern.as_ref()))
            .map(|(text, _)| text.clone())
            .collect();
        for text in revoked {
            if let Some(pattern) = self.subscriptions.remove(&text) {
                self.leave(&text, pattern.as_ref());
                self.context.router.metrics().subscription_revoked();
                tracing::debug!(subscription = %text, "subscription revoked by an ACL reload");
                if self.v1 {
                    self.reply(encode_revoked(&text));
                }
            }
        }
    }

    /// Whether the connection's permissions allow subscribing to `pattern` (`None`: a legacy topic, allowed only
    /// without restrictions). The permissions are those the session last resolved: a reload is taken in by
    /// [`Session::revoke_forbidden`], which then ends what this allowed under the old ones.
    fn allows(&self, pattern: Option<&Pattern>) -> bool {
        match pattern {
            Some(pattern) => self.access.permissions().can_subscribe(pattern),
            None => self.access.is_unrestricted(),
        }
    }

    /// Removes one subscription from the index.
    fn leave(&self, text: &str, pattern: Option<&Pattern>) {
        match pattern {
            Some(pattern) if !pattern.is_exact() => {
                self.context
                    .router
                    .unsubscribe_pattern(pattern, self.client);
            }
            _ => self.context.router.unsubscribe(text, self.client),
        }
    }

    /// An unusable frame: an error frame for `wsmq.v1`, ignored and counted for compat clients (as ws-go).
    fn refuse(&self, reason: &str) {
        self.context.router.metrics().unknown_command();
        if self.v1 {
            self.reply(encode_error(reason, None));
        } else {
            tracing::debug!(reason, "ignoring client frame");
        }
    }

    fn reply(&self, frame: bytes::Bytes) {
        match Utf8Bytes::try_from(frame) {
            Ok(frame) => self.client.reply(frame, self.context.router.metrics()),
            Err(err) => tracing::warn!(%err, "reply frame is not UTF-8"),
        }
    }

    /// Removes every subscription of the connection from the index.
    fn leave_all(&mut self) {
        for (text, pattern) in std::mem::take(&mut self.subscriptions) {
            self.leave(&text, pattern.as_ref());
        }
    }
}
