//! A service (or any `run(shutdown)` future) running in a task of the test, stopped on demand and checked to
//! have ended cleanly.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::wait::within;

/// A spawned `run(shutdown)` whose result the test checks: [`ServiceTask::stop`] when the test stops it,
/// [`ServiceTask::stopped_on_its_own`] when the test expects it to stop by itself.
pub struct ServiceTask<E> {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), E>>,
}

impl<E> ServiceTask<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    /// Spawns `run` with a fresh shutdown token.
    pub fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self { shutdown, task }
    }

    /// Cancels the shutdown token and checks, within the bound, that `run` returned `Ok` (drained and stopped).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        within("the service to stop", self.task).await???;
        Ok(())
    }

    /// Waits (bounded) for `run` to end without being asked, returning what it returned.
    pub async fn stopped_on_its_own(self) -> anyhow::Result<Result<(), E>> {
        Ok(within("the service to stop on its own", self.task).await??)
    }
}
