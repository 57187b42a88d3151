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
use wsmq_core::history_client::HistoryClient;
use wsmq_core::limits::Limits;
use wsmq_core::protocol::client::{
    Command, encode_acked, encode_error, encode_forbidden, encode_history, encode_positioned,
    encode_resumed, encode_revoked, encode_subscribed, encode_topic_error, encode_unsubscribed,
};
use wsmq_core::protocol::history::{
    Epoch, HistoryPage, HistoryQuery, MAX_HISTORY_PAGE, Position, Unrecovered,
};
use wsmq_core::server::Accepted;
use wsmq_core::topic::{self, Compat, Pattern};
use wsmq_core::ws::{Closer, ReadError, Reader, finish_writer, run_writer};

use crate::router::{Client, Router};

/// Rounds of "history, then go live" a resume tries before it goes live regardless (each round catches up with
/// what was published during the previous one, so one or two are the rule).
const MAX_RESUME_ROUNDS: usize = 16;

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
    /// Topic history in msgqueue, for `sub … since=…` and `history`.
    pub(crate) history: Arc<HistoryClient>,
}

/// Serves one `/subscribe` connection until the client leaves, is cut off or the service shuts down.
/// Expected disconnects are logged at debug: they are not errors.
///
/// The set-up runs here, before the future exists, and the future captures only what the connection needs for its
/// life: an idle connection keeps that future allocated in its task, and an `async fn` would keep its arguments
/// (the whole [`Accepted`], upgraded stream included) in it a second time (rust-lang/rust#62958).
pub(crate) fn serve_client(
    accepted: Accepted,
    context: Arc<ConnectionContext>,
) -> impl Future<Output = ()> + Send + 'static {
    let connected = context.router.metrics().client_connected();
    let v1 = accepted.subprotocol.is_some();
    let (sink, stream) = accepted.ws.split();
    let shutdown = accepted.shutdown;
    let closer = Closer::new(&shutdown);
    let client = context.router.register(closer.clone(), v1);
    let writer = tokio::spawn(run_writer(
        sink,
        client.outgoing(),
        closer.clone(),
        context.limits.ping_interval,
    ));
    let mut reader = Reader::new(stream, closer, context.limits.idle_timeout);
    let mut session = Session {
        inbox: format!("@{}", accepted.user).into(),
        v1,
        subscriptions: HashMap::new(),
        access: context
            .access
            .connection(&accepted.user, accepted.permissions),
        context,
        client,
    };
    async move {
        // What is alive across an await stays allocated in every idle connection's task, so the read is taken
        // apart inside the `select!` and only the boxed command handling (a few KiB of future, history requests
        // included) is awaited after it.
        loop {
            let handling = tokio::select! {
                read = reader.next() => match read {
                    Ok(Some(message)) => Box::pin(session.handle(message)),
                    Ok(None) => {
                        tracing::debug!("client disconnected");
                        break;
                    }
                    Err(ReadError::Ws(err)) => {
                        tracing::debug!(%err, "client connection failed");
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(%err, "client disconnected");
                        break;
                    }
                },
                () = session.access.changed() => {
                    session.revoke_forbidden();
                    continue;
                }
            };
            handling.await;
        }
        session.leave_all();

        // The writer flushes what is queued, sends its Close frame and ends; one that a non-reading client holds
        // in a blocked write is aborted after a grace period.
        session.client.leave();
        finish_writer(writer, &session.context.limits, &shutdown).await;
        drop(connected);
    }
}

/// The command-handling state of one connection.
struct Session {
    context: Arc<ConnectionContext>,
    client: Arc<Client>,
    /// The connection's own inbox, `@<user>`.
    inbox: Box<str>,
    v1: bool,
    /// What the client subscribed to, as it wrote it: a pattern, or `None` for a legacy ws-go topic outside the
    /// token rules (matched exactly).
    subscriptions: HashMap<Box<str>, Option<Pattern>>,
    /// What the client may subscribe to.
    access: ConnectionAccess,
}

impl Session {
    async fn handle(&mut self, message: Message) {
        let Message::Text(text) = message else {
            self.refuse("binary frames are not commands; send `sub <topic>` as text");
            return;
        };
        match Command::parse(text.as_str()) {
            Ok(Command::Subscribe(topic)) if self.v1 && *topic == *self.inbox => {
                self.resume(
                    &topic,
                    HistoryQuery::Unacked {
                        limit: MAX_HISTORY_PAGE,
                    },
                )
                .await;
            }
            Ok(Command::Subscribe(topic)) => self.subscribe(&topic),
            Ok(Command::Resume { topic, since }) => {
                let query = HistoryQuery::Since {
                    position: since,
                    limit: MAX_HISTORY_PAGE,
                };
                self.resume(&topic, query).await;
            }
            Ok(Command::Ack {
                topic,
                offset,
                epoch,
            }) => self.ack(&topic, offset, epoch).await,
            Ok(Command::Unsubscribe(topic)) => self.unsubscribe(&topic),
            Ok(Command::History { topic, limit }) => self.history(&topic, limit).await,
            Err(err) => self.refuse(&err.to_string()),
        }
    }

    /// Checks a new subscription to `text` (its syntax, the permissions, the subscription limit) and returns its
    /// pattern (`None`: a legacy topic), or answers the refusal and returns `Err`.
    fn admit(&self, text: &str) -> Result<Option<Pattern>, ()> {
        let pattern = match topic::subscribed(text) {
            Ok(Compat::Strict(pattern)) => Some(pattern),
            Ok(Compat::Legacy(_)) if self.access.is_unrestricted() => None,
            Ok(Compat::Legacy(err)) => {
                self.refuse(&format!(
                    "invalid pattern `{text}`: {err} (required with topic permissions)"
                ));
                return Err(());
            }
            Err(err) => {
                self.refuse(&format!("invalid pattern `{text}`: {err}"));
                return Err(());
            }
        };
        if !self.allows(text, pattern.as_ref()) {
            self.context.router.metrics().subscribe_forbidden();
            if self.v1 {
                self.reply(encode_forbidden(text));
            } else {
                tracing::debug!("forbidden subscription of a compat client ignored");
            }
            return Err(());
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
            return Err(());
        }
        Ok(pattern)
    }

    fn subscribe(&mut self, text: &str) {
        if !self.subscriptions.contains_key(text) {
            let Ok(pattern) = self.admit(text) else {
                return;
            };
            match &pattern {
                Some(pattern) if !pattern.is_exact() => {
                    self.context.router.subscribe_pattern(pattern, &self.client);
                }
                _ => self.context.router.subscribe(text, &self.client),
            }
            self.subscriptions.insert(text.into(), pattern);
        }
        if self.v1 {
            self.reply(encode_subscribed(text));
        }
    }

    /// `sub <topic> since=…` (`first` is `Since`), or the user's own inbox (`first` is `Unacked`): sends the
    /// confirmation (recovered or why not), the retained messages after `since` (or after the inbox's ack), then
    /// makes the subscription live with no gap and no duplicate at the seam (see [`Router::finish_resume`]). A topic
    /// already subscribed is resumed afresh.
    async fn resume(&mut self, text: &str, first: HistoryQuery) {
        if !self.v1 {
            self.refuse("resuming needs wsmq.v1");
            return;
        }
        if let Some(pattern) = self.subscriptions.remove(text) {
            self.leave(text, pattern.as_ref());
        }
        let Ok(pattern) = self.admit(text) else {
            return;
        };
        let Some(pattern) = pattern.filter(Pattern::is_exact) else {
            self.refuse_topic(
                text,
                "cannot resume: resuming needs one exact topic, not a pattern",
            );
            return;
        };
        let router = &self.context.router;
        router.begin_resume(text);
        let mut position = match first {
            HistoryQuery::Since { position, .. } => position,
            HistoryQuery::Last { .. } | HistoryQuery::Unacked { .. } => Position {
                epoch: Epoch(0),
                offset: 0,
            },
        };
        let mut confirmed = false;
        for round in 0..MAX_RESUME_ROUNDS {
            let query = if round == 0 {
                first
            } else {
                HistoryQuery::Since {
                    position,
                    limit: MAX_HISTORY_PAGE,
                }
            };
            let page = match self.context.history.fetch(text, &query).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(topic = text, %err, "resuming without history");
                    if !confirmed {
                        let page = HistoryPage {
                            epoch: position.epoch,
                            latest: position.offset,
                            recovered: false,
                            reason: Some(Unrecovered::Unavailable),
                            messages: Vec::new(),
                        };
                        self.reply(encode_resumed(text, &page, position.offset));
                    }
                    break;
                }
            };
            if !confirmed {
                self.reply(encode_resumed(text, &page, page.latest));
                confirmed = true;
            }
            let frames: Vec<Utf8Bytes> = page
                .messages
                .iter()
                .filter_map(|m| {
                    let at = Position {
                        epoch: page.epoch,
                        offset: m.offset,
                    };
                    let frame = encode_positioned(m.message.get().as_bytes(), at)?;
                    Utf8Bytes::try_from(frame).ok()
                })
                .collect();
            if !self.client.offer_when_room(&frames, router.metrics()).await {
                router.abandon_resume(text);
                return;
            }
            // After the page the client is at its last message, or, with nothing retained after its offset, at
            // the topic's newest.
            position = Position {
                epoch: page.epoch,
                offset: page.messages.last().map_or(page.latest, |m| m.offset),
            };
            if page.more() {
                continue;
            }
            match router.finish_resume(text, &self.client, position) {
                Ok(()) => {
                    self.subscriptions.insert(text.into(), Some(pattern));
                    return;
                }
                Err(latest) => {
                    tracing::debug!(
                        topic = text,
                        ?latest,
                        "live messages went ahead during a resume; reading on"
                    );
                }
            }
        }
        // History could not be read, or the topic never held still: go live from here rather than not at all.
        if router.finish_resume(text, &self.client, position).is_err() {
            router.abandon_resume(text);
            self.context.router.subscribe(text, &self.client);
        }
        self.subscriptions.insert(text.into(), Some(pattern));
    }

    /// `history <topic> limit=N`: the newest retained messages of a topic the client may subscribe to, in one
    /// frame of at most `--max-message-size` (older messages are left out to fit).
    async fn history(&mut self, text: &str, limit: usize) {
        if !self.v1 {
            self.refuse("history needs wsmq.v1");
            return;
        }
        let Some(pattern) = topic::exact(text) else {
            self.refuse_topic(text, "history needs one exact topic, not a pattern");
            return;
        };
        if !self.allows(text, Some(&pattern)) {
            self.context.router.metrics().subscribe_forbidden();
            self.reply(encode_forbidden(text));
            return;
        }
        match self
            .context
            .history
            .fetch(text, &HistoryQuery::Last { limit })
            .await
        {
            Ok(mut page) => {
                let mut frame = encode_history(text, &page);
                while frame.len() > self.context.limits.max_message_size
                    && !page.messages.is_empty()
                {
                    page.messages.remove(0);
                    frame = encode_history(text, &page);
                }
                self.reply(frame);
            }
            Err(err) => {
                tracing::warn!(topic = text, %err, "history request failed");
                self.reply(encode_topic_error(
                    text,
                    &format!("history unavailable: {err}"),
                ));
            }
        }
    }

    /// `ack @<user> <offset>`: the client handled its inbox's messages up to `offset`; msgqueue removes them for
    /// good (durably, before the confirmation). Only the inbox's own user may ack it.
    async fn ack(&mut self, text: &str, offset: u64, epoch: Option<Epoch>) {
        if !self.v1 {
            self.refuse("acks need wsmq.v1");
            return;
        }
        let allowed = Pattern::parse(text).is_ok_and(|p| self.allows(text, Some(&p)));
        if text != &*self.inbox && !allowed {
            self.context.router.metrics().subscribe_forbidden();
            self.reply(encode_forbidden(text));
            return;
        }
        match self.context.history.ack(text, epoch, offset).await {
            Ok(acked) => self.reply(encode_acked(text, acked.offset)),
            Err(err) => {
                tracing::warn!(topic = text, %err, "inbox ack failed");
                self.reply(encode_error(&format!("ack failed: {err}"), None));
            }
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
            .filter(|(text, pattern)| !self.allows(text, pattern.as_ref()))
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

    /// Whether the connection's permissions allow subscribing to `pattern`, written `text` (`None`: a legacy
    /// topic, allowed only without restrictions), see [`ConnectionAccess::may_subscribe`]. The permissions are those
    /// the session last resolved: a reload is taken in by [`Session::revoke_forbidden`], which then ends what this
    /// allowed under the old ones.
    fn allows(&self, text: &str, pattern: Option<&Pattern>) -> bool {
        match pattern {
            Some(pattern) => self.access.may_subscribe(text, pattern),
            None => self.access.is_unrestricted(),
        }
    }

    /// Removes one subscription from the index.
    fn leave(&self, text: &str, pattern: Option<&Pattern>) {
        match pattern {
            Some(pattern) if !pattern.is_exact() => {
                self.context
                    .router
                    .unsubscribe_pattern(pattern, &self.client);
            }
            _ => self.context.router.unsubscribe(text, &self.client),
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

    /// A refused command about `text`: an error frame naming the topic for `wsmq.v1`, ignored and counted for
    /// compat clients.
    fn refuse_topic(&self, text: &str, reason: &str) {
        self.context.router.metrics().unknown_command();
        if self.v1 {
            self.reply(encode_topic_error(text, reason));
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

#[cfg(test)]
mod tests {
    /// The size of what `f` returns (here: an async fn's future), without calling it.
    fn output_size<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every idle connection keeps its session future allocated in its task; command handling (history requests
    /// and all) is boxed so its few KiB exist only while a command is handled, and the set-up's arguments (the
    /// whole `Accepted`) are not kept in it. 8 KiB per idle connection is the target (docs/PERFORMANCE.md), and
    /// tokio allocates a task in steps of 128 bytes: up to 584 bytes here the connection's task (this future, the
    /// listener's span, permit and bookkeeping, tokio's header) takes 768; a few bytes more take 896.
    #[test]
    fn an_idle_sessions_future_holds_neither_command_handling_nor_its_set_up() {
        let session = output_size(super::serve_client);
        let handling = output_size(|s: &mut super::Session, m: tungstenite::Message| s.handle(m));
        assert!(
            session < handling && session <= 584,
            "serve_client's future is {session} bytes, command handling {handling}"
        );
    }

    /// The writer's future lives as long as the connection, and is as large as its largest step: up to 536
    /// bytes its task takes 640, a few bytes more take 768.
    #[test]
    fn a_connections_writer_task_fits_in_640_bytes() {
        let writer = writer_size();
        assert!(writer <= 536, "the writer's future is {writer} bytes");
    }

    fn writer_size() -> usize {
        type Sink =
            futures_util::stream::SplitSink<wsmq_core::server::ServerWs, tungstenite::Message>;
        fn size<R>(_: impl FnOnce(Sink, crate::router::ClientOutgoing) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        size(|sink, outgoing| {
            let closer = wsmq_core::ws::Closer::new(&tokio_util::sync::CancellationToken::new());
            wsmq_core::ws::run_writer(sink, outgoing, closer, std::time::Duration::ZERO)
        })
    }
}
