//! `/v1/history/<topic>` on msgqueue's listener: a topic's retained messages with their offsets, for the
//! subscriber (a client's `sub <topic> since=…`, its inbox, and the `history` command) and other services of the
//! deployment. Authenticated like every connection to msgqueue (its users are the services).
//!
//! - `GET` with `since=<offset>&epoch=<epoch>[&limit=<n>]` resumes, with `after=acked[&limit=<n>]` returns what an
//!   inbox's user has not acked, with `limit=<n>` the newest messages.
//! - `POST` with `ack=<offset>[&epoch=<epoch>]` acks an inbox's messages up to `offset`, durably before the answer.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use wsmq_core::http_api::{ApiHandler, ApiRequest, ApiResponse, error_response, json_response};
use wsmq_core::protocol::envelope::validate_topic;
use wsmq_core::protocol::history::{Epoch, HISTORY_API_PATH, HistoryQuery};

use crate::queue::{Queue, QueueError};

/// Serves history requests from the queue's history.
#[derive(Debug)]
pub(crate) struct HistoryApi {
    pub(crate) queue: Queue,
}

impl ApiHandler for HistoryApi {
    fn handle(self: Arc<Self>, request: ApiRequest) -> BoxFuture<'static, ApiResponse> {
        Box::pin(async move {
            let request = request.request;
            let Some(topic) = request
                .uri()
                .path()
                .strip_prefix(HISTORY_API_PATH)
                .and_then(|rest| rest.strip_prefix('/'))
            else {
                return error_response(StatusCode::NOT_FOUND, "not found", None);
            };
            let Ok(topic) = percent_decode_str(topic).decode_utf8() else {
                return error_response(StatusCode::BAD_REQUEST, "topic is not UTF-8", None);
            };
            if let Err(err) = validate_topic(&topic) {
                let message = format!("invalid topic: {err}");
                return error_response(StatusCode::BAD_REQUEST, &message, None);
            }
            let query = request.uri().query().unwrap_or("");
            match *request.method() {
                Method::GET => self.read(&topic, query).await,
                Method::POST => self.ack(&topic, query).await,
                _ => {
                    let mut response =
                        error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None);
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                    response
                }
            }
        })
    }
}

impl HistoryApi {
    /// `GET`: a page of the topic's history.
    async fn read(&self, topic: &str, query: &str) -> ApiResponse {
        let query = match HistoryQuery::parse(query) {
            Ok(query) => query,
            Err(err) => return error_response(StatusCode::BAD_REQUEST, &err, None),
        };
        let page = match self.queue.history(topic, &query).await {
            Ok(page) => page,
            Err(err) => return unavailable(topic, &err),
        };
        match serde_json::to_vec(&page) {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(err) => {
                let message = format!("encoding the history: {err}");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, &message, None)
            }
        }
    }

    /// `POST …?ack=<offset>[&epoch=<epoch>]`: answers `{"epoch":…,"acked":…}`, the topic's ack afterwards.
    async fn ack(&self, topic: &str, query: &str) -> ApiResponse {
        let (mut offset, mut epoch) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ack", value)) if offset.is_none() => offset = Some(value),
                Some(("epoch", value)) if epoch.is_none() => epoch = Some(value),
                _ => {
                    let message = "expected ack=<offset>[&epoch=<epoch>]";
                    return error_response(StatusCode::BAD_REQUEST, message, None);
                }
            }
        }
        let Some(Ok(offset)) = offset.map(str::parse::<u64>) else {
            return error_response(StatusCode::BAD_REQUEST, "ack must be a whole number", None);
        };
        let epoch = match epoch.map(str::parse::<Epoch>) {
            None => None,
            Some(Ok(epoch)) => Some(epoch),
            Some(Err(err)) => {
                return error_response(StatusCode::BAD_REQUEST, &err.to_string(), None);
            }
        };
        match self.queue.ack_history(topic, epoch, offset).await {
            Ok(Some(acked)) => json_response(
                StatusCode::OK,
                &serde_json::json!({ "epoch": acked.epoch.to_string(), "acked": acked.offset }),
            ),
            Ok(None) => error_response(StatusCode::NOT_FOUND, "the topic has no history", None),
            Err(err) => unavailable(topic, &err),
        }
    }
}

/// The storage failed: 503, to be retried.
fn unavailable(topic: &str, err: &QueueError) -> ApiResponse {
    tracing::warn!(%topic, %err, "history request failed");
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "history unavailable",
        Some(serde_json::json!({ "retry": true })),
    )
}
