//! Bounded waits: every await of a test has a bound, so a bug fails the test with the name of what it waited for
//! instead of hanging it.

use std::time::Duration;

use thiserror::Error;

/// Bound on every step of a test (a dial, a frame, a shutdown). Generous, because the tests run on loaded 2-core
/// machines: only a hung peer should ever reach it.
pub const STEP: Duration = Duration::from_secs(30);

/// How often [`eventually`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A bounded wait ran out: names what was awaited.
#[derive(Debug, Error)]
#[error("timed out after {bound:?} waiting for {what}")]
pub struct TimedOut {
    /// What the test waited for.
    pub what: String,
    /// How long it waited.
    pub bound: Duration,
}

/// Awaits `future` for at most [`STEP`]; the error names `what` (usable with `?` in any test result type).
pub async fn within<F: Future>(what: &str, future: F) -> Result<F::Output, TimedOut> {
    tokio::time::timeout(STEP, future)
        .await
        .map_err(|_| TimedOut {
            what: what.to_owned(),
            bound: STEP,
        })
}

/// [`within`] for tests that panic on failure instead of returning an error.
///
/// # Panics
/// When `future` does not complete within [`STEP`].
pub async fn expect_within<F: Future>(what: &str, future: F) -> F::Output {
    within(what, future)
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// Polls `condition` every few milliseconds until it holds, for at most [`STEP`]: for state that has no signal a
/// test can await (an admin route, a compat client that gets no confirmations).
pub async fn eventually<F, Fut>(what: &str, mut condition: F) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })
    .await
}
