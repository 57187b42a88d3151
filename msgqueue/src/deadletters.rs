//! The dead-letter endpoints on msgqueue's admin listener: list what the queue gave up on, and replay it.
//!
//! - `GET /deadletters`: a JSON array, oldest first, of `{"id", "reason", "deliveries", "size", "time_ms"}`
//!   (never the payload).
//! - `POST /deadletters/replay`: pushes every dead letter back into the queue (as new messages, at the back);
//!   `?id=3,7` replays only those. Answers `{"replayed": n}`, or 503 with the count and the reason when the queue
//!   refused one (full, disk full).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use wsmq_core::admin::AdminRoutes;
use wsmq_core::http::{RequestHead, Response};

use crate::queue::{Queue, ReplayError};

/// Path of the listing.
pub const LIST_PATH: &str = "/deadletters";
/// Path of the replay.
pub const REPLAY_PATH: &str = "/deadletters/replay";

const JSON: &str = "application/json";

/// The dead-letter routes of one queue.
pub(crate) struct DeadLetterRoutes {
    queue: Queue,
}

impl DeadLetterRoutes {
    pub(crate) fn new(queue: Queue) -> Arc<Self> {
        Arc::new(Self { queue })
    }
}

impl AdminRoutes for DeadLetterRoutes {
    fn respond(&self, head: &RequestHead) -> Option<BoxFuture<'static, Response>> {
        let response = match (head.path.as_str(), head.method.as_str()) {
            (LIST_PATH, "GET") => list(self.queue.clone()).boxed(),
            (REPLAY_PATH, "POST") => match parse_ids(&head.query) {
                Ok(ids) => replay(self.queue.clone(), ids).boxed(),
                Err(reason) => ready(Response::text(400, format!("{reason}\n"))),
            },
            (LIST_PATH, _) => {
                ready(Response::text(405, "method not allowed\n").header("Allow", "GET"))
            }
            (REPLAY_PATH, _) => {
                ready(Response::text(405, "method not allowed\n").header("Allow", "POST"))
            }
            _ => return None,
        };
        Some(response)
    }
}

fn ready(response: Response) -> BoxFuture<'static, Response> {
    futures_util::future::ready(response).boxed()
}

fn json(status: u16, value: &serde_json::Value) -> Response {
    Response::new(status).body(JSON, value.to_string().into_bytes())
}

async fn list(queue: Queue) -> Response {
    let letters = match queue.dead_letters().await {
        Ok(letters) => letters,
        Err(err) => {
            tracing::warn!(%err, "listing dead letters failed");
            return json(503, &serde_json::json!({ "error": err.to_string() }));
        }
    };
    let letters: Vec<serde_json::Value> = letters
        .iter()
        .map(|d| {
            serde_json::json!({
                "id": d.id,
                "reason": d.reason.as_str(),
                "deliveries": d.deliveries,
                "size": d.size,
                "time_ms": d.time_ms,
                "group": d.group,
            })
        })
        .collect();
    json(200, &serde_json::Value::Array(letters))
}

/// `id=3,7` (or `id=3&id=7`) → the ids; no `id` → all.
fn parse_ids(query: &str) -> Result<Option<Vec<u64>>, String> {
    let mut ids = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some(("id", values)) = pair.split_once('=') else {
            return Err(format!("unknown parameter {pair:?}: use ?id=1,2"));
        };
        for value in values.split(',').filter(|v| !v.is_empty()) {
            ids.push(
                value
                    .parse()
                    .map_err(|_| format!("invalid id {value:?}: expected a number"))?,
            );
        }
    }
    Ok((!ids.is_empty()).then_some(ids))
}

async fn replay(queue: Queue, ids: Option<Vec<u64>>) -> Response {
    match queue.replay(ids.as_deref()).await {
        Ok(replayed) => json(200, &serde_json::json!({ "replayed": replayed })),
        Err(ReplayError::Refused { replayed, source }) => json(
            503,
            &serde_json::json!({ "replayed": replayed, "error": source.to_string() }),
        ),
        Err(err @ ReplayError::Queue(_)) => {
            tracing::warn!(%err, "replaying dead letters failed");
            json(503, &serde_json::json!({ "error": err.to_string() }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_ids_come_from_the_query() {
        assert_eq!(parse_ids(""), Ok(None));
        assert_eq!(parse_ids("id=3,7"), Ok(Some(vec![3, 7])));
        assert_eq!(parse_ids("id=3&id=7"), Ok(Some(vec![3, 7])));
        assert!(parse_ids("id=x").is_err());
        assert!(parse_ids("all=1").is_err());
    }
}
