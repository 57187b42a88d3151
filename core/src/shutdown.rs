//! Graceful shutdown: one [`CancellationToken`] from `main` down to every task.
//!
//! The pattern is detect → notify → wait: [`on_signal`] detects SIGINT/SIGTERM and cancels the token, every task
//! holds a clone and stops when it is cancelled, and servers wait for their connection tasks (a
//! `tokio_util::task::TaskTracker`) within a bounded drain time before returning.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled when the process receives SIGINT (Ctrl-C) or SIGTERM (what Docker and
/// systemd send).
///
/// Must be called inside a Tokio runtime. A second signal while draining is not intercepted, so the default
/// action (terminate) applies and an impatient operator can still stop the process.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM, only Ctrl-C will shut down");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
