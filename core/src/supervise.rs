//! Supervision of a service's long-lived parts: a panic or an unexpected end is never a silently dead part.
//!
//! Each service runs a few parts that must live as long as it does: the link to msgqueue, the admin listener,
//! msgqueue's log writer. If one panics or stops on its own, the service would keep accepting clients while
//! doing nothing useful. A [`Supervisor`] turns that into a fatal error instead: it logs the failure once at
//! error level, cancels the service's token so the service drains as on SIGTERM, and makes `run` return the
//! failure, so `main` exits non-zero and the orchestrator restarts the process. Restarting the part in-process
//! is deliberately not attempted: after a panic its state, and the state it shared, is unknown.
//!
//! Tests inject a panic into a named part with [`inject_panic`] (feature `fault-injection`, enabled only as a
//! dev-dependency feature, so release builds carry no hook).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A supervised part that panicked or ended while the service was not stopping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} {reason}")]
pub struct TaskFailure {
    /// The part, e.g. `publisher link`.
    pub task: &'static str,
    /// What happened, e.g. `panicked: index out of bounds`.
    pub reason: String,
}

impl TaskFailure {
    /// A failure for a panic whose payload is `panic` (what `catch_unwind` or a `JoinError` hands back).
    pub fn panicked(task: &'static str, panic: &(dyn Any + Send)) -> Self {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("non-string panic payload");
        Self {
            task,
            reason: format!("panicked: {message}"),
        }
    }
}

/// Runs `future` to completion, turning a panic inside it into a [`TaskFailure`] logged at error level.
///
/// For futures that are awaited rather than spawned, e.g. whole services in the all-in-one binary.
pub async fn catch_panic<F: Future>(
    task: &'static str,
    future: F,
) -> Result<F::Output, TaskFailure> {
    let future = with_fault_point(task, future);
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| {
            let failure = TaskFailure::panicked(task, &*panic);
            tracing::error!(task, reason = %failure.reason, "task failed");
            failure
        })
}

/// Watches the long-lived parts of one service run. Cheap to clone; clones watch the same run.
#[derive(Debug, Clone)]
pub struct Supervisor {
    stop: CancellationToken,
    failure: Arc<Mutex<Option<TaskFailure>>>,
}

impl Supervisor {
    /// A supervisor for a service that stops when `shutdown` is cancelled.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            stop: shutdown.child_token(),
            failure: Arc::default(),
        }
    }

    /// The token the service serves with: cancelled on shutdown and on the first failure, so a failed part
    /// drains the whole service.
    pub fn token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Marks the service as stopping: parts that end from now on are expected to.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Spawns a part that must run until the service stops. If it panics, or returns before [`Supervisor::stop`]
    /// (or shutdown), that is a failure. The handle yields the part's output, `None` if it panicked.
    pub fn spawn<F>(&self, task: &'static str, future: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let supervisor = self.clone();
        tokio::spawn(async move {
            match AssertUnwindSafe(with_fault_point(task, future))
                .catch_unwind()
                .await
            {
                Ok(output) => {
                    if !supervisor.stop.is_cancelled() {
                        supervisor.fail(TaskFailure {
                            task,
                            reason: "ended unexpectedly".into(),
                        });
                    }
                    Some(output)
                }
                Err(panic) => {
                    supervisor.fail(TaskFailure::panicked(task, &*panic));
                    None
                }
            }
        })
    }

    /// Watches a part that is not a task (a thread, say) through `died`, a future that resolves with the reason
    /// if the part dies. Dropped quietly when the service stops.
    pub fn watch<F>(&self, task: &'static str, died: F) -> JoinHandle<()>
    where
        F: Future<Output = String> + Send + 'static,
    {
        let supervisor = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                reason = died => supervisor.fail(TaskFailure { task, reason }),
                () = supervisor.stop.cancelled() => {}
            }
        })
    }

    /// Records a failure: logged at error level, the service is told to stop, and the first failure is what
    /// [`Supervisor::finish`] returns.
    pub fn fail(&self, failure: TaskFailure) {
        tracing::error!(task = failure.task, reason = %failure.reason, "task failed, stopping the service");
        self.failure.lock().get_or_insert(failure);
        self.stop.cancel();
    }

    /// The first failure, if any part failed: what `run` returns once the service has drained.
    pub fn finish(&self) -> Result<(), TaskFailure> {
        match self.failure.lock().take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// Checks the fault hook for `task` each time the future is polled, so a test can make a running part panic.
/// Without the `fault-injection` feature the check compiles to nothing.
fn with_fault_point<F: Future>(task: &'static str, future: F) -> impl Future<Output = F::Output> {
    let mut future = Box::pin(future);
    std::future::poll_fn(move |cx| {
        fault_point(task);
        future.as_mut().poll(cx)
    })
}

#[cfg(any(test, feature = "fault-injection"))]
static ARMED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Makes the part named `task` panic the next time it reaches its fault point (a supervised task: its next
/// poll). One-shot. Test builds only (feature `fault-injection`).
#[cfg(any(test, feature = "fault-injection"))]
pub fn inject_panic(task: &'static str) {
    ARMED.lock().push(task);
}

/// A place where a test can make the part named `task` panic (see [`inject_panic`]); parts that are not
/// supervised tasks, like msgqueue's log writer thread, call it in their loop. A no-op in release builds.
#[cfg(any(test, feature = "fault-injection"))]
pub fn fault_point(task: &'static str) {
    let armed = {
        let mut armed = ARMED.lock();
        armed
            .iter()
            .position(|&t| t == task)
            .map(|i| armed.swap_remove(i))
    };
    if armed.is_some() {
        panic!("injected fault in {task}");
    }
}

/// A place where a test can make the part named `task` panic; without the `fault-injection` feature it does
/// nothing.
#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub fn fault_point(_task: &'static str) {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_stops_the_service_with_its_message() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(&shutdown);
        let handle = supervisor.spawn("doomed", async {
            tokio::task::yield_now().await;
            panic!("boom");
        });
        assert_eq!(handle.await.ok(), Some(None));
        assert!(
            supervisor.token().is_cancelled(),
            "service not told to stop"
        );
        assert!(
            !shutdown.is_cancelled(),
            "the caller's token is not ours to cancel"
        );
        assert_eq!(
            supervisor.finish(),
            Err(TaskFailure {
                task: "doomed",
                reason: "panicked: boom".into()
            })
        );
    }

    #[tokio::test]
    async fn a_task_ending_early_is_a_failure_but_not_after_stop() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(&shutdown);
        let early = supervisor.spawn("quitter", async { 7 });
        assert_eq!(early.await.ok(), Some(Some(7)));
        assert_eq!(
            supervisor.finish().map_err(|f| f.reason),
            Err("ended unexpectedly".into())
        );

        let supervisor = Supervisor::new(&shutdown);
        let token = supervisor.token().clone();
        let on_time = supervisor.spawn("worker", async move { token.cancelled().await });
        shutdown.cancel();
        assert_eq!(on_time.await.ok(), Some(Some(())));
        assert_eq!(supervisor.finish(), Ok(()));
    }

    #[tokio::test]
    async fn the_first_failure_wins_and_watchers_report_dead_parts() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(&shutdown);
        let watcher = supervisor.watch("writer thread", async { "died".to_owned() });
        watcher.await.ok();
        supervisor.fail(TaskFailure {
            task: "later",
            reason: "consequence".into(),
        });
        assert_eq!(
            supervisor.finish().map_err(|f| f.task),
            Err("writer thread")
        );

        let supervisor = Supervisor::new(&shutdown);
        let watcher = supervisor.watch("idle thread", std::future::pending());
        supervisor.stop();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("watcher ends when the service stops")
            .ok();
        assert_eq!(supervisor.finish(), Ok(()));
    }

    #[tokio::test]
    async fn catch_panic_turns_a_panic_into_an_error() {
        assert_eq!(catch_panic("calm", async { 1 }).await, Ok(1));
        let failed = catch_panic("service", async { panic!("{}", String::from("owned")) }).await;
        assert_eq!(failed.map_err(|f| f.reason), Err("panicked: owned".into()));
    }

    #[tokio::test]
    async fn an_injected_fault_panics_a_running_task_once() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(&shutdown);
        let (tick, mut ticks) = tokio::sync::mpsc::channel::<()>(1);
        let task = supervisor.spawn("unit-test ticker", async move {
            while ticks.recv().await.is_some() {}
        });
        tick.send(()).await.expect("task running");
        inject_panic("unit-test ticker");
        // The armed hook fires on the task's next poll, i.e. when it is woken by the next tick.
        let _ = tick.send(()).await;
        assert_eq!(task.await.ok(), Some(None));
        assert_eq!(
            supervisor.finish(),
            Err(TaskFailure {
                task: "unit-test ticker",
                reason: "panicked: injected fault in unit-test ticker".into()
            })
        );
        fault_point("unit-test ticker");
    }
}
