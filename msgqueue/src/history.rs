//! `GET /v1/history/<topic>` on msgqueue's listener: a topic's retained messages with their offsets, for the
//! subscriber (a client's `sub <topic> since=…` and `history` commands) and other services of the deployment.
//! Authenticated like every connection to msgqueue (its users are the services); the query is
//! `since=<offset>&epoch=<epoch>[&limit=<n>]` to resume, or `limit=<n>` for the newest messages.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use wsmq_core::http_api::{ApiHandler, ApiRequest, ApiResponse, error_response};
use wsmq_core::protocol::envelope::validate_topic;
use wsmq_core::protocol::history::{HISTORY_API_PATH, HistoryQuery};

use crate::queue::Queue;

/// Serves history requests from the queue's history.
#[derive(Debug)]
pub(crate) struct HistoryApi {
    pub(crate) queue: Queue,
}

impl ApiHandler for HistoryApi {
    fn handle(self: Arc<Self>, request: ApiRequest) -> BoxFuture<'static, ApiResponse> {
        Box::pin(async move {
            let request = request.request;
            let path = request.uri().path();
            let Some(topic) = path
                .strip_prefix(HISTORY_API_PATH)
                .and_then(|rest| rest.strip_prefix('/'))
            else {
                return error_response(StatusCode::NOT_FOUND, "not found", None);
            };
            if request.method() != Method::GET {
                let mut response =
                    error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
                return response;
            }
            let Ok(topic) = percent_decode_str(topic).decode_utf8() else {
                return error_response(StatusCode::BAD_REQUEST, "topic is not UTF-8", None);
            };
            if let Err(err) = validate_topic(&topic) {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid topic: {err}"),
                    None,
                );
            }
            let query = match HistoryQuery::parse(request.uri().query().unwrap_or("")) {
                Ok(query) => query,
                Err(err) => return error_response(StatusCode::BAD_REQUEST, &err, None),
            };
            match self.queue.history(&topic, &query).await {
                Ok(page) => match serde_json::to_vec(&page) {
                    Ok(body) => {
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        response
                    }
                    Err(err) => error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("encoding the history: {err}"),
                        None,
                    ),
                },
                Err(err) => {
                    tracing::warn!(%topic, %err, "history request failed");
                    error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "history unavailable",
                        Some(serde_json::json!({ "retry": true })),
                    )
                }
            }
        })
    }
}
