//! The one reconnecting link: dial, serve the connection, and after a failure redial after a jittered backoff,
//! until the work is done or shutdown.
//!
//! Every long-lived client connection in wsmq (publisher → msgqueue `/pushmsg`, subscriber → msgqueue
//! `/popmsg`, clientdemo → publisher and subscriber) is a [`Link`] driving a [`Protocol`]: the protocol owns
//! what happens on a connection, the link owns when connections are made. So the rules below hold for all of
//! them:
//! - delays come from a [`BackoffArgs`] (the services pass their `--link-backoff-*` flags), with full jitter;
//! - the backoff starts over only after a connection proved healthy, i.e. lasted [`HEALTHY_AFTER`]: a peer
//!   that accepts and at once drops the link is redialled ever more slowly, not hammered at the initial delay;
//! - readiness (an optional [`Condition`]) is true exactly while a connection is up;
//! - given several servers ([`Dialers`], e.g. `--queue-url` listing two msgqueue instances), the link moves to
//!   the next one whenever a dial fails or a connection is lost, and waits a backoff delay only once a whole
//!   round over the list failed: failover to a live instance is immediate, a list of one behaves as before;
//! - failed dials are logged at warn on the 1st, 2nd, 4th, 8th… consecutive failure and at debug otherwise,
//!   because attempts come every few hundred ms while the peer is down.

use std::fmt;
use std::future::{self, Future};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use crate::admin::Condition;
use crate::backoff::BackoffArgs;
use crate::dial::{ClientWs, DialError, Dialer, Dialers};

/// A connection that lasted this long counts as healthy: the next failure starts the backoff over, even if the
/// connection never carried a message.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// Whether the link goes on after a hook; [`Flow::Stop`] ends it (e.g. nobody listens to its events any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// End the link now.
    Stop,
}

/// Why a connection could not be made; the link retries after a backoff delay.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The dial failed.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The server answered without selecting the subprotocol the link requires.
    #[error("{url} did not accept subprotocol {offered}; not a wsmq service?")]
    NotAccepted {
        /// The server's base URL.
        url: String,
        /// The subprotocol the link offered.
        offered: String,
    },
}

/// What one kind of link does on a connection; the [`Link`] decides when there is one.
///
/// The hooks with a default are for links that report to a user instead of a log (clientdemo) or keep
/// metrics (the services).
pub trait Protocol: Send {
    /// Why a connection ended other than by the link's own decision; logged or reported, then redialled.
    type Error: fmt::Display + Send;
    /// The WebSocket path (with its query, if any) the link dials.
    fn path(&self) -> &str;

    /// Serves one connection until it ends. `Ok` when the link is done (shutdown, or all work finished) and
    /// must not reconnect; `Err` when the connection was lost.
    fn serve(
        &mut self,
        ws: ClientWs,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether the link has nothing left to do and may end without connecting again; checked before every
    /// backoff delay and dial and after every [`Protocol::offline`] step.
    fn is_done(&self) -> bool {
        false
    }

    /// Work done while not connected (during backoff delays and dials), e.g. taking user commands. It must be
    /// cancel-safe: it is dropped whenever the delay or dial completes first.
    fn offline(&mut self) -> impl Future<Output = Flow> + Send {
        future::pending()
    }

    /// A connection is up (before [`Protocol::serve`]).
    fn connected(&mut self, url: &str) -> impl Future<Output = Flow> + Send {
        tracing::info!(url, path = self.path(), "link up");
        future::ready(Flow::Continue)
    }

    /// A dial failed; `attempts` counts consecutive failures. By default logged at warn on the 1st, 2nd,
    /// 4th… failure (see [`log_unreachable`]).
    fn unreachable(
        &mut self,
        err: &ConnectError,
        attempts: u32,
    ) -> impl Future<Output = Flow> + Send {
        log_unreachable(err, attempts);
        future::ready(Flow::Continue)
    }

    /// An established connection was lost; the link redials after a backoff delay.
    fn lost(&mut self, err: Self::Error) -> impl Future<Output = Flow> + Send {
        tracing::warn!(%err, "link lost, reconnecting");
        future::ready(Flow::Continue)
    }

    /// The link went up or down (for a link-state gauge).
    fn link_state(&self, _up: bool) {}

    /// The link is about to dial again after a failure: after a backoff delay, or at once to the next server (for
    /// a reconnect counter). Not called before the first dial of a [`Start::Dial`] link.
    fn redialing(&self) {}
}

/// Logs a failed dial at warn on the 1st, 2nd, 4th, 8th… consecutive failure, at debug otherwise.
pub fn log_unreachable(err: &ConnectError, attempts: u32) {
    if attempts.is_power_of_two() {
        tracing::warn!(%err, attempts, "cannot connect");
    } else {
        tracing::debug!(%err, attempts, "cannot connect");
    }
}

/// How a link's first connection comes about.
#[derive(Debug)]
pub enum Start {
    /// Dial at once (a service starting).
    Dial,
    /// The caller already connected to the first server (it dialed first itself to fail fast on settings that
    /// will never work).
    Connected(Box<ClientWs>),
    /// The caller's own first dial, to the first server, failed with an error worth retrying: go on with the next
    /// server, or with a backoff delay if there is no other.
    Retry,
}

/// How a link connects and paces its reconnections; run it with [`Link::run`].
#[derive(Debug, Clone)]
pub struct Link {
    dialers: Dialers,
    backoff: BackoffArgs,
    required_subprotocol: Option<String>,
    ready: Option<Condition>,
}

impl Link {
    /// A link dialing the servers of `dialers` (a single [`Dialer`] or several) and pacing redials with
    /// `backoff`.
    pub fn new(dialers: impl Into<Dialers>, backoff: BackoffArgs) -> Self {
        Self {
            dialers: dialers.into(),
            backoff,
            required_subprotocol: None,
            ready: None,
        }
    }

    /// Counts a connection whose server did not select `subprotocol` as a failed dial (the dialer should offer
    /// it, see [`Dialer::with_subprotocol`]).
    pub fn require_subprotocol(mut self, subprotocol: impl Into<String>) -> Self {
        self.required_subprotocol = Some(subprotocol.into());
        self
    }

    /// Keeps `ready` true exactly while a connection is up (a `/readyz` condition).
    pub fn with_readiness(mut self, ready: Condition) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Connects and serves connections until `protocol` says it is done, a hook returns [`Flow::Stop`], or
    /// `shutdown` is cancelled. Connection-wise it begins as `start` says, with the first server.
    #[instrument(skip_all, fields(urls = %self.dialers, path = protocol.path()))]
    pub async fn run<P: Protocol>(
        &self,
        protocol: &mut P,
        start: Start,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = self.backoff.backoff();
        let mut round = Round::new(self.dialers.count());
        let mut failed_dials = 0u32;
        let mut first_dial = matches!(start, Start::Dial);
        let mut first = match start {
            Start::Connected(ws) => Some(*ws),
            Start::Dial => None,
            Start::Retry => {
                round.failed();
                None
            }
        };
        loop {
            let dialer = self.dialers.get(round.current);
            let ws = match first.take() {
                Some(ws) => ws,
                None => {
                    if round.is_over() {
                        let delay = backoff.next_delay();
                        if offline(protocol, shutdown, tokio::time::sleep(delay))
                            .await
                            .is_none()
                        {
                            return;
                        }
                        round.restart();
                    }
                    if first_dial {
                        first_dial = false;
                    } else {
                        protocol.redialing();
                    }
                    let path = protocol.path().to_owned();
                    match offline(protocol, shutdown, self.connect(dialer, &path)).await {
                        None => return,
                        Some(Ok(ws)) => ws,
                        Some(Err(err)) => {
                            failed_dials = failed_dials.saturating_add(1);
                            round.failed();
                            if protocol.unreachable(&err, failed_dials).await == Flow::Stop {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            failed_dials = 0;
            self.set_up(protocol, true);
            if protocol.connected(dialer.url()).await == Flow::Stop {
                self.set_up(protocol, false);
                return;
            }
            let since = Instant::now();
            let served = protocol.serve(ws, shutdown).await;
            self.set_up(protocol, false);
            let Err(err) = served else { return };
            if since.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
                round.restart();
            }
            round.failed();
            if protocol.lost(err).await == Flow::Stop {
                return;
            }
            if self.dialers.count() > 1 {
                tracing::info!(
                    from = dialer.url(),
                    to = self.dialers.get(round.current).url(),
                    "moving to the next server"
                );
            }
        }
    }

    /// One dial of `dialer`, checked for the required subprotocol.
    async fn connect(&self, dialer: &Dialer, path: &str) -> Result<ClientWs, ConnectError> {
        let (ws, negotiated) = dialer.dial(path).await?;
        match &self.required_subprotocol {
            Some(required) if negotiated.as_deref() != Some(required.as_str()) => {
                Err(ConnectError::NotAccepted {
                    url: dialer.url().to_owned(),
                    offered: required.clone(),
                })
            }
            _ => Ok(ws),
        }
    }

    fn set_up<P: Protocol>(&self, protocol: &P, up: bool) {
        if let Some(ready) = &self.ready {
            ready.set_ready(up);
        }
        protocol.link_state(up);
    }
}

/// Where a link stands in its list of servers: which one is next, and how many are left to try before a backoff
/// delay is due.
///
/// A failed dial and a lost connection both count as that server failing; a connection that proved healthy
/// ([`HEALTHY_AFTER`]) starts a new round. So with one server every failure is followed by a delay, as it always
/// was, and a list of servers that all accept and at once drop the link is still redialled ever more slowly.
#[derive(Debug)]
struct Round {
    /// Index (into [`Dialers`]) of the server to use next.
    current: usize,
    /// Servers not yet failed in this round; at 0 the round is over.
    untried: usize,
    servers: usize,
}

impl Round {
    fn new(servers: usize) -> Self {
        Self {
            current: 0,
            untried: servers,
            servers,
        }
    }

    /// The current server failed: move on to the next.
    fn failed(&mut self) {
        self.untried = self.untried.saturating_sub(1);
        self.current = (self.current + 1) % self.servers;
    }

    /// Every server failed since the round began: wait a backoff delay before the next dial.
    fn is_over(&self) -> bool {
        self.untried == 0
    }

    /// A new round: every server may be tried once more before the next delay.
    fn restart(&mut self) {
        self.untried = self.servers;
    }
}

/// Awaits `work` (a backoff delay or a dial) while running the protocol's offline work. `None` when the link
/// should end instead: shutdown, the protocol is done, or its offline work said stop.
async fn offline<P: Protocol, T>(
    protocol: &mut P,
    shutdown: &CancellationToken,
    work: impl Future<Output = T>,
) -> Option<T> {
    let mut work = std::pin::pin!(work);
    loop {
        if protocol.is_done() {
            return None;
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            out = &mut work => return Some(out),
            flow = protocol.offline() => if flow == Flow::Stop {
                return None;
            },
        }
    }
}
