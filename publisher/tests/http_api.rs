//! The HTTP publish API (`POST /v1/publish`, `/v1/publish/batch`) on the publisher's TLS listener, against a
//! fake msgqueue: answers only once the queue stored the message, one result per batch message, a JSON error
//! with the right status for every bad request, idempotent retries (across a restart too), keep-alive, and the
//! WebSocket `/publish` on the same port still working.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{CLIENT_PASSWORD, CLIENT_USER, FakeQueue, Publisher, config};
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use serde_json::json;
use wsmq_core::api_client::{ApiClient, ApiReply};
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_API_PATH, PUBLISH_BATCH_API_PATH};
use wsmq_core::secret::Secret;
use wsmq_testkit::client::{next_text, send_text};
use wsmq_testkit::within;

/// Posts `body` to `path` within the bound.
async fn post(api: &mut ApiClient, path: &str, body: &str) -> anyhow::Result<ApiReply> {
    Ok(within("an API answer", api.post_json(path, &[], body.to_owned())).await??)
}

/// Posts `body` to `path` with an `Idempotency-Key`, within the bound.
async fn post_with_key(
    api: &mut ApiClient,
    path: &str,
    key: &str,
    body: &str,
) -> anyhow::Result<ApiReply> {
    let headers = [("Idempotency-Key", key)];
    Ok(within(
        "an API answer",
        api.post_json(path, &headers, body.to_owned()),
    )
    .await??)
}

/// The id msgqueue's `(producer, seq)` is shown as.
fn message_id(producer: u64, seq: u64) -> String {
    format!("{producer:016x}-{seq}")
}

/// The answer for a message the fake queue stored and placed (see [`common::fake_position`]).
fn placed(producer: u64, seq: u64) -> serde_json::Value {
    let position = common::fake_position(seq);
    json!({
        "id": message_id(producer, seq),
        "offset": position.offset,
        "epoch": position.epoch.to_string(),
    })
}

#[tokio::test]
async fn http_publish_is_answered_with_the_stored_id_and_topic_offset_only_once_the_queue_acked()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;
    let state = queue.state();
    state.hold_acks(true);

    let answer = tokio::spawn(async move {
        let reply = post(
            &mut api,
            PUBLISH_API_PATH,
            r#"{"topic":"news","content":"hello"}"#,
        )
        .await;
        (api, reply)
    });
    state
        .wait_for("the push", |seen| seen.stored.len() == 1)
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!answer.is_finished(), "answered before the queue acked");
    state.hold_acks(false);
    let (_api, reply) = within("the answer", answer).await??;
    let reply = reply?;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.headers["content-type"], "application/json");
    let (&(producer, seq), payload) = state
        .seen()
        .stored
        .iter()
        .next()
        .map(|(key, payload)| (key, payload.clone()))
        .ok_or_else(|| anyhow::anyhow!("nothing stored"))?;
    assert_eq!(reply.json(), placed(producer, seq));
    assert_eq!(
        reply.json()["epoch"],
        "000000000000feed",
        "an epoch is 16 hex digits"
    );
    assert!(
        state.seen().received.iter().all(|p| p.placed),
        "sent as PUSH_PLACED"
    );
    assert_eq!(payload, r#"{"Topic":"news","Content":"hello"}"#);
    assert_eq!(publisher.metrics.accepted_count(), 1);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_gets_one_result_per_message_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;

    let body = json!({ "messages": [
        { "topic": "a", "content": "1" },
        { "topic": "b", "content": "2" },
        { "topic": "a", "content": "3", "delay": null },
    ]});
    let reply = post(&mut api, PUBLISH_BATCH_API_PATH, &body.to_string()).await?;

    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let seen = queue.state();
    let ids: Vec<serde_json::Value> = seen
        .seen()
        .stored
        .keys()
        .map(|&(producer, seq)| placed(producer, seq))
        .collect();
    assert_eq!(reply.json(), json!({ "results": ids }));
    assert_eq!(
        seen.seen().stored_texts(),
        [
            r#"{"Topic":"a","Content":"1"}"#,
            r#"{"Topic":"b","Content":"2"}"#,
            r#"{"Topic":"a","Content":"3"}"#,
        ]
    );
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn http_delay_and_deliver_at_schedule_the_message_in_the_queue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        )
        .unwrap_or(0)
    };

    let before = now_ms();
    let at = std::time::SystemTime::now() + Duration::from_secs(3600);
    let body = json!({ "messages": [
        { "topic": "a", "content": "1", "delay": "10s" },
        { "topic": "a", "content": "2", "delay": 90 },
        { "topic": "a", "content": "3", "deliver_at": humantime::format_rfc3339_millis(at).to_string() },
        { "topic": "a", "content": "4" },
    ]});
    let reply = post(&mut api, PUBLISH_BATCH_API_PATH, &body.to_string()).await?;
    let after = now_ms();
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let received = queue.state().seen().received.clone();
    let dues: Vec<Option<u64>> = received.iter().map(|p| p.due_ms).collect();
    let in_range = |due: Option<u64>, delay: u64| {
        due.is_some_and(|due| (before + delay..=after + delay).contains(&due))
    };
    assert!(in_range(dues[0], 10_000), "{dues:?}");
    assert!(in_range(dues[1], 90_000), "{dues:?}");
    let at_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))?;
    assert_eq!(dues[2], Some(at_ms));
    assert_eq!(dues[3], None);
    assert_eq!(&received[0].payload[..], br#"{"Topic":"a","Content":"1"}"#);
    // A scheduled message is placed in its topic only when it is delivered: its answer has no offset.
    let placements: Vec<bool> = received.iter().map(|p| p.placed).collect();
    assert_eq!(placements, [false, false, false, true]);
    let results = reply.json()["results"].clone();
    let offsets: Vec<&serde_json::Value> = (0..4).map(|i| &results[i]["offset"]).collect();
    assert_eq!(
        offsets,
        [
            &serde_json::Value::Null,
            &serde_json::Value::Null,
            &serde_json::Value::Null,
            &json!(common::fake_position(received[3].seq).offset),
        ]
    );
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_their_status_and_a_json_error_and_store_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;

    let cases: [(&str, &str, StatusCode, &str); 14] = [
        (
            PUBLISH_API_PATH,
            "{not json",
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"topic":"t"}"#,
            StatusCode::BAD_REQUEST,
            "invalid JSON: missing field `content`",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"content":"c"}"#,
            StatusCode::BAD_REQUEST,
            "invalid JSON: missing field `topic`",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"topic":"t","content":7}"#,
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"topic":"a b","content":"c"}"#,
            StatusCode::BAD_REQUEST,
            "invalid topic: contains whitespace",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"topic":"","content":"c"}"#,
            StatusCode::BAD_REQUEST,
            "invalid topic: empty",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"topic":"t","content":"c","delay":"5 parsecs"}"#,
            StatusCode::BAD_REQUEST,
            "the delay must be a duration",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"topic":"t","content":"c","delay":5,"deliver_at":"2030-01-01T00:00:00Z"}"#,
            StatusCode::BAD_REQUEST,
            "give a delivery time or a delay, not both",
        ),
        (
            PUBLISH_API_PATH,
            r#"{"topic":"t","content":"c","deliver_at":"2001-01-01T00:00:00Z"}"#,
            StatusCode::BAD_REQUEST,
            "the delivery time is",
        ),
        (
            PUBLISH_BATCH_API_PATH,
            r#"{"messages":[{"topic":"ok","content":"1"},{"topic":"t","content":"2","delay":"999days"}]}"#,
            StatusCode::BAD_REQUEST,
            "the delivery time is more than",
        ),
        (
            PUBLISH_BATCH_API_PATH,
            r#"{"messages":[]}"#,
            StatusCode::BAD_REQUEST,
            "messages must not be empty",
        ),
        (
            PUBLISH_BATCH_API_PATH,
            r#"{"topic":"t","content":"c"}"#,
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            PUBLISH_BATCH_API_PATH,
            r#"{"messages":[{"topic":"ok","content":"1"},{"topic":" ","content":"2"}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid topic",
        ),
        ("/v1/nothing", "{}", StatusCode::NOT_FOUND, "not found"),
    ];
    for (path, body, status, error) in cases {
        let reply = post(&mut api, path, body).await?;
        assert_eq!(reply.status, status, "{path} {body}: {reply:?}");
        assert_eq!(reply.headers["content-type"], "application/json");
        let json = reply.json();
        let message = json["error"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(error),
            "{path} {body}: {message:?} does not start with {error:?}"
        );
    }
    let reply = post(
        &mut api,
        PUBLISH_BATCH_API_PATH,
        r#"{"messages":[{"topic":"ok","content":"1"},{"topic":" ","content":"2"}]}"#,
    )
    .await?;
    assert_eq!(reply.json()["index"], 1, "the bad message is named");

    let get = Request::builder()
        .method(Method::GET)
        .uri(PUBLISH_API_PATH)
        .header("Authorization", basic(CLIENT_USER, CLIENT_PASSWORD))
        .body(Full::new(Bytes::new()))?;
    let reply = within("GET", api.send(get)).await??;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "POST");
    assert_eq!(reply.json(), json!({ "error": "method not allowed" }));

    let text = Request::builder()
        .method(Method::POST)
        .uri(PUBLISH_API_PATH)
        .header("Authorization", basic(CLIENT_USER, CLIENT_PASSWORD))
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from_static(b"news hello")))?;
    let reply = within("text/plain", api.send(text)).await??;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        reply.json(),
        json!({ "error": "Content-Type must be application/json" })
    );

    let reply = post_with_key(
        &mut api,
        PUBLISH_API_PATH,
        "has space",
        r#"{"topic":"t","content":"c"}"#,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(!api.is_closed(), "errors keep the connection alive");

    assert!(queue.state().seen().stored.is_empty());
    assert_eq!(publisher.metrics.http_request_count(400), 15);
    assert_eq!(publisher.metrics.http_request_count(405), 1);
    assert_eq!(publisher.metrics.http_request_count(200), 0);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bodies_and_messages_over_the_size_limits_get_413() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let mut config = config(dir.path(), queue.addr());
    config.service.limits.max_message_size = 1024;
    config.http.http_max_batch = 3;
    let publisher = Publisher::start(config).await?;

    // A message that fits the body limit (2 × 1024 + 1024) but not the message limit once stored.
    let mut api = publisher.api(dir.path()).await?;
    let body = json!({ "topic": "t", "content": "x".repeat(1500) }).to_string();
    let reply = post(&mut api, PUBLISH_API_PATH, &body).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({ "error": "message exceeds 1024 bytes", "limit": 1024 })
    );

    let messages: Vec<_> = (0..4)
        .map(|i| json!({ "topic": "t", "content": i.to_string() }))
        .collect();
    let body = json!({ "messages": messages }).to_string();
    let reply = post(&mut api, PUBLISH_BATCH_API_PATH, &body).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({ "error": "at most 3 messages per batch", "limit": 3 })
    );

    // A body over the limit is not read to its end: the answer comes anyway.
    let body = json!({ "topic": "t", "content": "x".repeat(4000) }).to_string();
    let reply = post(&mut api, PUBLISH_API_PATH, &body).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({ "error": "body too large", "limit": 3072 })
    );

    assert!(queue.state().seen().stored.is_empty());
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401_with_a_challenge() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;

    let mut wrong = publisher
        .api_as(dir.path(), CLIENT_USER, "wrong-password")
        .await?;
    let reply = post(
        &mut wrong,
        PUBLISH_API_PATH,
        r#"{"topic":"t","content":"c"}"#,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"wsmq\"");
    assert_eq!(reply.json(), json!({ "error": "unauthorized" }));

    let mut api = publisher.api(dir.path()).await?;
    let anonymous = Request::builder()
        .method(Method::POST)
        .uri(PUBLISH_API_PATH)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"topic":"t","content":"c"}"#,
        )))?;
    let reply = within("anonymous", api.send(anonymous)).await??;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json(), json!({ "error": "unauthorized" }));

    assert!(queue.state().seen().stored.is_empty());
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn several_requests_share_one_keep_alive_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;

    for i in 0..5 {
        let body = json!({ "topic": "keep", "content": i.to_string() }).to_string();
        let reply = post(&mut api, PUBLISH_API_PATH, &body).await?;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {reply:?}");
    }
    assert!(!api.is_closed());
    assert_eq!(queue.state().seen().stored.len(), 5);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_first_answer_and_stores_once()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let mut config = config(dir.path(), queue.addr());
    config.service.server.users = Some(Secret::new(format!(
        "{CLIENT_USER}:{CLIENT_PASSWORD},other:other-password"
    )));
    let publisher = Publisher::start(config).await?;
    let mut api = publisher.api(dir.path()).await?;
    let body = r#"{"topic":"pay","content":"order 17"}"#;

    let first = post_with_key(&mut api, PUBLISH_API_PATH, "order-17", body).await?;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let retry = post_with_key(&mut api, PUBLISH_API_PATH, "order-17", body).await?;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.json(), first.json());
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(queue.state().seen().stored.len(), 1);

    let other_body = r#"{"topic":"pay","content":"order 18"}"#;
    let reused = post_with_key(&mut api, PUBLISH_API_PATH, "order-17", other_body).await?;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{reused:?}"
    );

    // Keys are per user: another user's same key is a new request.
    let mut other = publisher
        .api_as(dir.path(), "other", "other-password")
        .await?;
    let theirs = post_with_key(&mut other, PUBLISH_API_PATH, "order-17", body).await?;
    assert_eq!(theirs.status, StatusCode::OK);
    assert_ne!(theirs.json(), first.json());
    assert_eq!(queue.state().seen().stored.len(), 2);

    let batch = r#"{"messages":[{"topic":"pay","content":"a"},{"topic":"pay","content":"b"}]}"#;
    let first_batch = post_with_key(&mut api, PUBLISH_BATCH_API_PATH, "batch-1", batch).await?;
    let retried_batch = post_with_key(&mut api, PUBLISH_BATCH_API_PATH, "batch-1", batch).await?;
    assert_eq!(first_batch.status, StatusCode::OK);
    assert_eq!(retried_batch.json(), first_batch.json());
    assert_eq!(queue.state().seen().stored.len(), 4);
    assert_eq!(publisher.metrics.idempotent_replay_count(), 2);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn idempotency_keys_survive_a_publisher_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let body = r#"{"topic":"pay","content":"order 17"}"#;

    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;
    let first = post_with_key(&mut api, PUBLISH_API_PATH, "order-17", body).await?;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    drop(api);
    publisher.stop().await?;

    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;
    let retry = post_with_key(&mut api, PUBLISH_API_PATH, "order-17", body).await?;
    assert_eq!(retry.status, StatusCode::OK, "{retry:?}");
    assert_eq!(retry.json(), first.json());
    assert_eq!(queue.state().seen().stored.len(), 1);

    let fresh = post_with_key(&mut api, PUBLISH_API_PATH, "order-18", body).await?;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(queue.state().seen().stored.len(), 2);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn unreachable_queue_with_a_full_buffer_gets_503_at_once() -> anyhow::Result<()> {
    const BUFFER: usize = 2;
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let addr = queue.addr();
    let state = queue.stop().await?;
    let mut config = config(dir.path(), addr);
    config.link_buffer = BUFFER;
    let publisher = Publisher::start(config).await?;

    let mut waiting = Vec::new();
    for i in 0..BUFFER {
        let mut api = publisher.api(dir.path()).await?;
        waiting.push(tokio::spawn(async move {
            let body = json!({ "topic": "t", "content": i.to_string() }).to_string();
            post(&mut api, PUBLISH_API_PATH, &body).await
        }));
    }
    within("the buffer to fill", async {
        while publisher.metrics.buffered() < BUFFER as i64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let mut api = publisher.api(dir.path()).await?;
    let reply = post(
        &mut api,
        PUBLISH_API_PATH,
        r#"{"topic":"t","content":"late"}"#,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({ "error": "msgqueue is unreachable and the publisher's buffer is full", "retry": true })
    );

    // Once msgqueue is back, the requests that were taken are answered.
    let queue = FakeQueue::start_on(addr, dir.path(), state.clone()).await?;
    for answer in waiting {
        let reply = within("a buffered request", answer).await???;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(state.seen().stored.len(), BUFFER);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn websocket_publishing_keeps_working_on_the_api_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut api = publisher.api(dir.path()).await?;
    let mut ws = publisher.client(dir.path(), true).await?;

    let reply = post(
        &mut api,
        PUBLISH_API_PATH,
        r#"{"topic":"t","content":"http"}"#,
    )
    .await?;
    assert_eq!(reply.status, StatusCode::OK);
    send_text(&mut ws, r#"{"Topic":"t","Content":"ws","Id":1}"#).await?;
    assert_eq!(
        ServerFrame::parse(&next_text(&mut ws).await?),
        Some(ServerFrame::Ack { id: "1".into() })
    );
    assert_eq!(
        queue.state().seen().stored_texts(),
        [
            r#"{"Topic":"t","Content":"http"}"#,
            r#"{"Topic":"t","Content":"ws"}"#,
        ]
    );
    let placements: Vec<bool> = queue
        .state()
        .seen()
        .received
        .iter()
        .map(|p| p.placed)
        .collect();
    assert_eq!(
        placements,
        [true, false],
        "only the API asks msgqueue where a message was placed"
    );
    drop(ws);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

/// An `Authorization: Basic` value.
fn basic(user: &str, password: &str) -> String {
    wsmq_testkit::config::credentials(user, password).basic_header()
}

#[tokio::test]
async fn a_body_that_does_not_arrive_within_the_idle_timeout_gets_408() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let mut config = config(dir.path(), queue.addr());
    config.service.limits.idle_timeout = Duration::from_millis(300);
    let publisher = Publisher::start(config).await?;
    let url = format!("wss://127.0.0.1:{}", publisher.addr.port());
    let dialer = wsmq_testkit::client::dialer(
        &url,
        dir.path(),
        wsmq_testkit::config::credentials(CLIENT_USER, CLIENT_PASSWORD),
        None,
    )?;
    let mut tls = within("a TLS connection", dialer.connect_tls()).await??;
    let head = format!(
        "POST {PUBLISH_API_PATH} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"topic\":",
        basic(CLIENT_USER, CLIENT_PASSWORD)
    );
    tls.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    within("the answer", tls.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"the body did not arrive in time"}"#),
        "{answer}"
    );
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_api_connection_counts_against_the_connection_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let mut config = config(dir.path(), queue.addr());
    config.service.limits.max_connections = 1;
    let publisher = Publisher::start(config).await?;
    let mut api = publisher.api(dir.path()).await?;
    let reply = post(&mut api, PUBLISH_API_PATH, r#"{"topic":"t","content":"c"}"#).await?;
    assert_eq!(reply.status, StatusCode::OK);

    let refused = publisher.client(dir.path(), true).await;
    let err = refused
        .err()
        .map(|err| format!("{err:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("503"),
        "a second connection is refused: {err:?}"
    );
    let mut second = publisher.api(dir.path()).await?;
    let reply = within("an answer", second.post_json(PUBLISH_API_PATH, &[], "{}")).await??;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.headers["retry-after"], "1");

    drop(api);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn repeated_failed_logins_over_the_api_are_throttled_with_429() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = Publisher::start(config(dir.path(), queue.addr())).await?;
    let mut wrong = publisher
        .api_as(dir.path(), CLIENT_USER, "wrong-password")
        .await?;

    let throttled = within("a 429", async {
        for _ in 0..10 {
            let reply = wrong
                .post_json(PUBLISH_API_PATH, &[], r#"{"topic":"t","content":"c"}"#)
                .await?;
            match reply.status {
                StatusCode::UNAUTHORIZED => continue,
                StatusCode::TOO_MANY_REQUESTS => return anyhow::Ok(reply),
                other => anyhow::bail!("unexpected {other}: {reply:?}"),
            }
        }
        anyhow::bail!("never throttled")
    })
    .await??;
    assert!(
        throttled.headers.contains_key("retry-after"),
        "{throttled:?}"
    );
    assert_eq!(
        throttled.json(),
        json!({ "error": "too many failed logins, try again later" })
    );
    assert!(queue.state().seen().stored.is_empty());
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}
