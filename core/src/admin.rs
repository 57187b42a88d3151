//! The admin listener: plain HTTP on a loopback address with `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! Kept apart from the TLS service port so probes and scrapers need no certificate or password, and bound to
//! loopback by default so it is not exposed. [`Readiness`] is how a service says it can take traffic (listener
//! bound, queue link up); `/healthz` only says the process is alive. A service may add its own endpoints
//! ([`AdminRoutes`], e.g. msgqueue's dead letters).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{RequestHead, Response, read_request_head};
use crate::metrics::process_registry;

/// Admin requests served at once; more wait in the accept queue. Scrapers and probes need a handful.
pub const ADMIN_MAX_CONNECTIONS: usize = 16;
/// Time allowed for one admin request from accept to the end of the response.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(250);
/// The Prometheus text exposition content type that prometheus-client's text encoder produces.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the service is ready for traffic: the conjunction of named conditions, each set by the part of the
/// service that owns it. Cheap to clone; with no conditions it is ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<Vec<Condition>>>,
}

/// One named readiness condition, e.g. "listener" or "queue link"; starts not ready.
#[derive(Clone, Debug)]
pub struct Condition {
    name: &'static str,
    ready: Arc<AtomicBool>,
}

impl Condition {
    /// Marks the condition ready or not (e.g. not ready while the queue link reconnects).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the condition is currently met.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Readiness {
    /// A readiness with no conditions yet (ready until one is added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition that starts not ready and returns its handle for the owner to update.
    pub fn condition(&self, name: &'static str) -> Condition {
        let condition = Condition {
            name,
            ready: Arc::new(AtomicBool::new(false)),
        };
        self.conditions.lock().push(condition.clone());
        condition
    }

    /// Whether every condition is ready.
    pub fn is_ready(&self) -> bool {
        self.conditions.lock().iter().all(Condition::is_ready)
    }

    /// Names of the conditions not met yet, for the `/readyz` body and logs.
    pub fn not_ready(&self) -> Vec<&'static str> {
        self.conditions
            .lock()
            .iter()
            .filter(|c| !c.is_ready())
            .map(|c| c.name)
            .collect()
    }
}

/// Endpoints a service adds to its admin listener next to the built-in ones. Each request is offered to them
/// first; they answer within the admin request timeout.
pub trait AdminRoutes: Send + Sync + 'static {
    /// The response to `head`, or `None` when its path is not one of these routes.
    fn respond(&self, head: &RequestHead) -> Option<BoxFuture<'static, Response>>;
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled, then waits briefly for requests in
/// flight. Accept errors are logged and retried, never returned. `/metrics` holds `registry` plus the process's
/// resident memory (`process_resident_memory_bytes`, Linux only).
pub async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_admin_with(listener, registry, readiness, None, shutdown).await
}

/// [`serve_admin`] plus a service's own `routes`.
pub async fn serve_admin_with(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    routes: Option<Arc<dyn AdminRoutes>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let registries = Arc::new([registry, Arc::new(process_registry())]);
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "admin accept failed, retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let registries = registries.clone();
        let readiness = readiness.clone();
        let routes = routes.clone();
        tracker.spawn(async move {
            if tokio::time::timeout(
                ADMIN_REQUEST_TIMEOUT,
                answer(stream, &*registries, &readiness, routes.as_deref()),
            )
            .await
            .is_err()
            {
                tracing::debug!("admin request timed out");
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(ADMIN_REQUEST_TIMEOUT, tracker.wait()).await;
    Ok(())
}

/// Reads one request and answers it.
async fn answer(
    mut stream: TcpStream,
    registries: &[Arc<Registry>],
    readiness: &Readiness,
    routes: Option<&dyn AdminRoutes>,
) {
    let response = match read_request_head(&mut stream).await {
        Ok((head, _)) if let Some(respond) = routes.and_then(|r| r.respond(&head)) => respond.await,
        Ok((head, _)) if head.method != "GET" => {
            Response::text(405, "method not allowed\n").header("Allow", "GET")
        }
        Ok((head, _)) => route(&head.path, registries, readiness),
        Err(err) => {
            tracing::debug!(%err, "bad admin request");
            Response::text(400, "bad request\n")
        }
    };
    let written = async {
        response.write_to(&mut stream).await?;
        stream.shutdown().await
    };
    if let Err(err) = written.await {
        tracing::debug!(%err, "writing admin response");
    }
}

/// The response for `GET path`; `/metrics` concatenates `registries` into one exposition.
fn route(path: &str, registries: &[Arc<Registry>], readiness: &Readiness) -> Response {
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let waiting = readiness.not_ready();
            if waiting.is_empty() {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, format!("not ready: {}\n", waiting.join(", ")))
            }
        }
        "/metrics" => {
            let mut text = String::new();
            let encoded = registries
                .iter()
                .try_for_each(|registry| encode_registry(&mut text, registry))
                .and_then(|()| encode_eof(&mut text));
            match encoded {
                Ok(()) => Response::new(200).body(METRICS_CONTENT_TYPE, text.into_bytes()),
                Err(err) => {
                    tracing::warn!(%err, "encoding metrics");
                    Response::text(500, "cannot encode metrics\n")
                }
            }
        }
        _ => Response::text(404, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_condition() {
        let readiness = Readiness::new();
        assert!(readiness.is_ready());
        let listener = readiness.condition("listener");
        let link = readiness.condition("queue link");
        assert_eq!(readiness.not_ready(), vec!["listener", "queue link"]);
        listener.set_ready(true);
        assert!(!readiness.is_ready());
        link.set_ready(true);
        assert!(readiness.is_ready());
        link.set_ready(false);
        assert_eq!(readiness.not_ready(), vec!["queue link"]);
    }
}
