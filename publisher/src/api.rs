//! The HTTP publish API, for application servers that do not keep a WebSocket: `POST /v1/publish` and
//! `POST /v1/publish/batch` on the same TLS listener as `/publish` (`core::server` routes the connection to hyper,
//! `core::http_api` authenticates each request; this module is the handler).
//!
//! Each message is validated exactly as on `/publish` (topic rule, `--max-message-size`), stored as the same
//! canonical envelope, and answered only once msgqueue acked it: 200 with the message's id, or a JSON error.
//! A batch is validated whole (one invalid message refuses the batch, naming its index), then pushed in order and
//! answered with one result per message. `Idempotency-Key` makes retries safe (see [`crate::idempotency`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use wsmq_core::access::{Access, ConnectionAccess};
use wsmq_core::admin::Condition;
use wsmq_core::history_client::HistoryClient;
use wsmq_core::http_api::{ApiHandler, ApiRequest, ApiResponse, error_response, json_response};
use wsmq_core::limits::Limits;
use wsmq_core::protocol::envelope::{Envelope, validate_topic};
use wsmq_core::protocol::history::HistoryQuery;
use wsmq_core::protocol::queue::RejectReason;
use wsmq_core::protocol::schedule::Schedule;
use wsmq_core::protocol::{PUBLISH_API_PATH, PUBLISH_BATCH_API_PATH};

use crate::idempotency::{Answer, Claim, IdempotencyStore, validate_key};
use crate::link::{Confirm, Confirmed, LinkClosed, PublishError, PushLink, Receipt, TryPushError};
use crate::metrics::{InvalidReason, PublisherMetrics};
use crate::session::FORBIDDEN;

/// The request header naming a retryable request.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer replayed for a repeated `Idempotency-Key`.
const REPLAYED: &str = "idempotent-replayed";
/// A batch body may be this many times `--max-message-size`.
const BATCH_BODY_FACTOR: usize = 16;
/// How long a request waits for buffer space while msgqueue is reachable but slower than the clients (beyond
/// it: 503). While msgqueue is unreachable and the buffer is full, the answer is 503 at once.
const BUFFER_WAIT: Duration = Duration::from_secs(5);

/// `GET /v1/history/<topic>`: the topic's retained messages with their offsets.
const HISTORY_PREFIX: &str = "/v1/history/";

/// The API handler: what each request needs, shared.
#[derive(Debug)]
pub struct PublishApi {
    /// The link to msgqueue.
    pub link: PushLink,
    /// Whether the link is up: with a full buffer, the difference between waiting and answering 503.
    pub queue_link: Condition,
    /// `--max-message-size` bounds each message and the bodies; a body must arrive within `--idle-timeout`.
    pub limits: Limits,
    /// Most messages in one batch (`--http-max-batch`).
    pub max_batch: usize,
    /// Publisher metrics (accepted and invalid messages, as on `/publish`).
    pub metrics: PublisherMetrics,
    /// The remembered `Idempotency-Key`s.
    pub idempotency: IdempotencyStore,
    /// Topic permissions (`--acl-file`), applied per request's user as on `/publish`.
    pub access: Access,
    /// msgqueue's topic history, for `GET /v1/history/<topic>`.
    pub history: Arc<HistoryClient>,
    /// `--max-delay`: furthest ahead a message may be scheduled.
    pub max_delay: Duration,
}

/// A refused request: its status and JSON error.
struct Refusal {
    status: StatusCode,
    message: String,
    details: Option<serde_json::Value>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: None,
        }
    }

    fn with(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    fn into_response(self) -> ApiResponse {
        error_response(self.status, &self.message, self.details)
    }
}

/// One message as a client sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    topic: String,
    content: String,
    /// A duration string (`"90s"`, `"1h30m"`) or a number of seconds.
    #[serde(default)]
    delay: Option<Box<RawValue>>,
    /// An RFC 3339 time.
    #[serde(default)]
    deliver_at: Option<Box<RawValue>>,
}

/// A validated message on its way to the link: the canonical envelope and, if scheduled, its due time.
#[derive(Debug)]
struct Outgoing {
    payload: Bytes,
    due_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    messages: Vec<MessageBody>,
}

impl ApiHandler for PublishApi {
    fn handle(self: Arc<Self>, request: ApiRequest) -> BoxFuture<'static, ApiResponse> {
        Box::pin(async move {
            let response = self
                .serve(request)
                .await
                .unwrap_or_else(Refusal::into_response);
            self.metrics.http_request(response.status().as_u16());
            response
        })
    }
}

impl PublishApi {
    async fn serve(&self, request: ApiRequest) -> Result<ApiResponse, Refusal> {
        let ApiRequest {
            request,
            user,
            permissions,
            ..
        } = request;
        if let Some(topic) = request.uri().path().strip_prefix(HISTORY_PREFIX) {
            let access = self.access.connection(&user, permissions);
            return self.history(&request, topic, &access).await;
        }
        let batch = match request.uri().path() {
            PUBLISH_API_PATH => false,
            PUBLISH_BATCH_API_PATH => true,
            _ => return Err(Refusal::new(StatusCode::NOT_FOUND, "not found")),
        };
        if request.method() != Method::POST {
            let mut response =
                Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Ok(response);
        }
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ));
        }
        let key = match request.headers().get(IDEMPOTENCY_KEY) {
            Some(value) => Some(
                validate_key(value.as_bytes())
                    .map_err(|err| Refusal::new(StatusCode::BAD_REQUEST, err.to_string()))?
                    .to_owned(),
            ),
            None => None,
        };
        let path = request.uri().path().to_owned();
        let limit = self.body_limit(batch);
        let reading = Limited::new(request.into_body(), limit).collect();
        let Ok(read) = tokio::time::timeout(self.limits.idle_timeout, reading).await else {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            ));
        };
        let body = match read {
            Ok(body) => body.to_bytes(),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                self.metrics.invalid(InvalidReason::TooLarge);
                return Err(
                    Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "body too large")
                        .with(json!({ "limit": limit })),
                );
            }
            Err(err) => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {err}"),
                ));
            }
        };
        let mut access = self.access.connection(&user, permissions);
        let payloads = if batch {
            self.batch_payloads(&body, &mut access)?
        } else {
            vec![self.payload(&body, &mut access)?]
        };
        let pending = match key {
            None => None,
            Some(key) => {
                let mut request = path.into_bytes();
                request.push(0);
                request.extend_from_slice(&body);
                match self.idempotency.claim(&user, &key, &request) {
                    Claim::New(pending) => Some(pending),
                    Claim::Replay(answer) => {
                        self.metrics.idempotent_replay();
                        return Ok(replay(answer));
                    }
                    Claim::InProgress => {
                        return Err(Refusal::new(
                            StatusCode::CONFLICT,
                            "a request with this Idempotency-Key is in progress",
                        ));
                    }
                    Claim::Mismatch => {
                        return Err(Refusal::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "this Idempotency-Key was used for a different request",
                        ));
                    }
                }
            }
        };
        let (status, body) = if batch {
            (StatusCode::OK, self.publish_batch(payloads).await?)
        } else {
            let [payload] = <[Outgoing; 1]>::try_from(payloads).map_err(|_| {
                Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "one message expected")
            })?;
            (StatusCode::OK, self.publish_one(payload).await?)
        };
        if let Some(pending) = pending {
            let answer = Answer {
                status: status.as_u16(),
                body: body.to_string(),
            };
            if let Err(err) = pending.complete(answer).await {
                tracing::warn!(%err, "idempotency key not persisted");
            }
        }
        Ok(json_response(status, &body))
    }

    fn body_limit(&self, batch: bool) -> usize {
        let max = self.limits.max_message_size;
        if batch {
            max.saturating_mul(BATCH_BODY_FACTOR)
        } else {
            // JSON escaping may make the body larger than the stored message, which is checked itself.
            max.saturating_mul(2).saturating_add(1024)
        }
    }

    fn payload(&self, body: &[u8], access: &mut ConnectionAccess) -> Result<Outgoing, Refusal> {
        let message: MessageBody = serde_json::from_slice(body).map_err(|err| {
            self.metrics.invalid(InvalidReason::Malformed);
            Refusal::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {err}"))
        })?;
        self.validate(message, access)
    }

    fn batch_payloads(
        &self,
        body: &[u8],
        access: &mut ConnectionAccess,
    ) -> Result<Vec<Outgoing>, Refusal> {
        let batch: BatchBody = serde_json::from_slice(body).map_err(|err| {
            self.metrics.invalid(InvalidReason::Malformed);
            Refusal::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {err}"))
        })?;
        if batch.messages.is_empty() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "messages must not be empty",
            ));
        }
        if batch.messages.len() > self.max_batch {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("at most {} messages per batch", self.max_batch),
            )
            .with(json!({ "limit": self.max_batch })));
        }
        batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| {
                self.validate(message, access).map_err(|refusal| {
                    let details = refusal.details.clone().unwrap_or_else(|| json!({}));
                    let details = merge(details, json!({ "index": index }));
                    refusal.with(details)
                })
            })
            .collect()
    }

    /// Checks one message as `/publish` does, encodes the canonical envelope and resolves its schedule.
    fn validate(
        &self,
        message: MessageBody,
        access: &mut ConnectionAccess,
    ) -> Result<Outgoing, Refusal> {
        let due_ms = Schedule::from_fields(message.deliver_at.as_deref(), message.delay.as_deref())
            .and_then(|schedule| match schedule {
                Some(schedule) => schedule.due_ms(SystemTime::now(), self.max_delay),
                None => Ok(None),
            })
            .map_err(|err| {
                self.metrics.invalid(InvalidReason::Schedule);
                Refusal::new(StatusCode::BAD_REQUEST, err.to_string())
            })?;
        if let Err(err) = validate_topic(&message.topic) {
            self.metrics.invalid(InvalidReason::Topic);
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("invalid topic: {err}"),
            ));
        }
        match access.may_publish(&message.topic) {
            Ok(true) => {}
            Ok(false) => {
                self.metrics.forbidden();
                return Err(Refusal::new(StatusCode::FORBIDDEN, FORBIDDEN)
                    .with(json!({ "topic": message.topic })));
            }
            Err(err) => {
                self.metrics.invalid(InvalidReason::Topic);
                return Err(Refusal::new(StatusCode::BAD_REQUEST, err));
            }
        }
        let payload = Envelope {
            topic: message.topic.into(),
            content: message.content.into(),
        }
        .encode();
        let max = self.limits.max_message_size;
        if payload.len() > max {
            self.metrics.invalid(InvalidReason::TooLarge);
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("message exceeds {max} bytes"),
            )
            .with(json!({ "limit": max })));
        }
        Ok(Outgoing { payload, due_ms })
    }

    async fn publish_one(&self, payload: Outgoing) -> Result<serde_json::Value, Refusal> {
        let receipt = self.push(payload).await?;
        let confirmed = receipt.outcome().await.map_err(publish_refusal)?;
        Ok(published(confirmed))
    }

    /// Pushes every message in order, then awaits each verdict: one result per message. Only a batch of which
    /// nothing could be pushed is refused as a whole.
    async fn publish_batch(&self, payloads: Vec<Outgoing>) -> Result<serde_json::Value, Refusal> {
        let mut receipts = Vec::with_capacity(payloads.len());
        for payload in payloads {
            match self.push(payload).await {
                Ok(receipt) => receipts.push(Ok(receipt)),
                Err(refusal) if receipts.is_empty() => return Err(refusal),
                Err(refusal) => receipts.push(Err(refusal)),
            }
        }
        let mut results = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            let result = match receipt {
                Ok(receipt) => receipt.outcome().await.map_err(publish_refusal),
                Err(refusal) => Err(refusal),
            };
            results.push(match result {
                Ok(confirmed) => published(confirmed),
                Err(refusal) => {
                    json!({ "error": refusal.message, "status": refusal.status.as_u16() })
                }
            });
        }
        Ok(json!({ "results": results }))
    }

    /// Hands a message to the link: at once if the buffer has room; with a full buffer, 503 at once while
    /// msgqueue is unreachable, else after waiting up to [`BUFFER_WAIT`] for room.
    async fn push(&self, message: Outgoing) -> Result<Receipt, Refusal> {
        let Outgoing { payload, due_ms } = message;
        let unavailable = |message: &str| {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, message).with(json!({ "retry": true }))
        };
        let receipt = match self.link.try_push(payload.clone(), due_ms, Confirm::Placed) {
            Ok(receipt) => receipt,
            Err(TryPushError::Closed(LinkClosed)) => {
                return Err(unavailable("the publisher is stopping"));
            }
            Err(TryPushError::Full) if !self.queue_link.is_ready() => {
                return Err(unavailable(
                    "msgqueue is unreachable and the publisher's buffer is full",
                ));
            }
            Err(TryPushError::Full) => {
                match tokio::time::timeout(
                    BUFFER_WAIT,
                    self.link.push(payload, due_ms, Confirm::Placed),
                )
                .await
                {
                    Ok(Ok(receipt)) => receipt,
                    Ok(Err(LinkClosed)) => return Err(unavailable("the publisher is stopping")),
                    Err(_) => return Err(unavailable("the publisher's buffer is full")),
                }
            }
        };
        self.metrics.accepted();
        Ok(receipt)
    }
}

/// The answer for a stored message: its id, and its topic offset and epoch when msgqueue placed it in the topic's
/// history (not for a scheduled message, placed only when delivered, nor a topic that keeps no history).
fn published(confirmed: Confirmed) -> serde_json::Value {
    let id = confirmed.id.to_string();
    match confirmed.position {
        Some(position) => json!({
            "id": id,
            "offset": position.offset,
            "epoch": position.epoch.to_string(),
        }),
        None => json!({ "id": id }),
    }
}

/// `base` (an object) with the fields of `extra` added.
fn merge(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

/// How msgqueue's refusal, or a stop, is answered.
fn publish_refusal(err: PublishError) -> Refusal {
    let status = match err {
        PublishError::Rejected(RejectReason::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::Rejected(RejectReason::NoSpace) => StatusCode::INSUFFICIENT_STORAGE,
        PublishError::Rejected(_) | PublishError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    Refusal::new(status, err.to_string())
}

/// Whether the `Content-Type` is JSON (`application/json`, parameters such as a charset allowed).
fn is_json(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The first answer given for a repeated `Idempotency-Key`.
fn replay(answer: Answer) -> ApiResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let body = serde_json::from_str(&answer.body).unwrap_or(serde_json::Value::Null);
    let mut response = json_response(status, &body);
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

impl PublishApi {
    /// `GET /v1/history/<topic>?since=&epoch=&limit=` (or `limit=` for the newest): the topic's retained messages
    /// from msgqueue, for a user who may subscribe to the topic (an inbox: its user alone, without permissions).
    async fn history(
        &self,
        request: &hyper::Request<hyper::body::Incoming>,
        topic: &str,
        access: &ConnectionAccess,
    ) -> Result<ApiResponse, Refusal> {
        if request.method() != Method::GET {
            let mut response =
                Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return Ok(response);
        }
        let bad = |message: String| Refusal::new(StatusCode::BAD_REQUEST, message);
        let topic = percent_encoding::percent_decode_str(topic)
            .decode_utf8()
            .map_err(|_| bad("topic is not UTF-8".into()))?;
        let Some(pattern) = wsmq_core::topic::exact(&topic) else {
            return Err(bad(format!("history needs one exact topic, not `{topic}`")));
        };
        let query = HistoryQuery::parse(request.uri().query().unwrap_or("")).map_err(bad)?;
        if !access.may_subscribe(&topic, &pattern) {
            return Err(
                Refusal::new(StatusCode::FORBIDDEN, "forbidden").with(json!({ "topic": topic }))
            );
        }
        match self.history.fetch(&topic, &query).await {
            Ok(page) => Ok(json_response(StatusCode::OK, &json!(page))),
            Err(err) => {
                tracing::warn!(%topic, %err, "history request failed");
                Err(
                    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "history unavailable")
                        .with(json!({ "retry": true })),
                )
            }
        }
    }
}
