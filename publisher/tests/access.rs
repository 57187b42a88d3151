//! The publisher's topic permissions and auth callout against a fake msgqueue and real WebSocket clients: a
//! forbidden publish in both modes, wildcard syntax refused as a topic, an ACL reload taking effect on an open
//! connection, and a bearer token decided by the auth callout, whose permissions apply.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};

use common::{FakeQueue, Publisher, assert_nothing_pending, config};
use wsmq_core::config::AccessArgs;
use wsmq_core::protocol::PUBLISH_PATH;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_publisher::metrics::InvalidReason;
use wsmq_testkit::auth_server::AuthServer;
use wsmq_testkit::client::{Handshake, handshake, next_text, send_text};
use wsmq_testkit::eventually;

fn parse(frame: &str) -> anyhow::Result<ServerFrame> {
    ServerFrame::parse(frame).ok_or_else(|| anyhow::anyhow!("unknown frame {frame}"))
}

fn ack(id: &str) -> ServerFrame {
    ServerFrame::Ack { id: id.into() }
}

fn error(message: &str, id: &str) -> ServerFrame {
    ServerFrame::Error {
        message: message.into(),
        id: Some(id.into()),
    }
}

/// Writes the ACL file as operators should: a new file renamed over the old one.
fn write_acl(dir: &Path, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("acl.toml");
    let next = dir.join("acl.toml.next");
    std::fs::write(&next, text)?;
    std::fs::rename(&next, &path)?;
    Ok(path)
}

/// A publisher linked to `queue` with `access`.
async fn publisher(dir: &Path, queue: &FakeQueue, access: AccessArgs) -> anyhow::Result<Publisher> {
    let mut config = config(dir, queue.addr());
    config.access = access;
    Publisher::start(config).await
}

fn acl(path: PathBuf) -> AccessArgs {
    AccessArgs {
        acl_file: Some(path),
        ..AccessArgs::default()
    }
}

#[tokio::test]
async fn a_forbidden_publish_is_an_error_in_v1_and_dropped_and_counted_in_compat()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write_acl(
        dir.path(),
        r#"
[users.client]
publish.allow = ["chat.>"]
publish.deny = ["chat.admin"]
"#,
    )?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = publisher(dir.path(), &queue, acl(path)).await?;

    let mut v1 = publisher.client(dir.path(), true).await?;
    send_text(
        &mut v1,
        r#"{"Topic":"chat.admin","Content":"x","Id":"m-1"}"#,
    )
    .await?;
    assert_eq!(
        parse(&next_text(&mut v1).await?)?,
        error("forbidden", r#""m-1""#)
    );
    send_text(&mut v1, r#"{"Topic":"news","Content":"x","Id":2}"#).await?;
    assert_eq!(parse(&next_text(&mut v1).await?)?, error("forbidden", "2"));
    send_text(
        &mut v1,
        r#"{"Topic":"chat.room","Content":"ok","Id":"m-3"}"#,
    )
    .await?;
    assert_eq!(parse(&next_text(&mut v1).await?)?, ack(r#""m-3""#));

    let mut compat = publisher.client(dir.path(), false).await?;
    send_text(&mut compat, "chat.admin secret").await?;
    send_text(&mut compat, r#"{"Topic":"chat.room","Content":"compat"}"#).await?;
    let state = queue.state();
    state
        .wait_for("both allowed messages", |seen| seen.stored.len() == 2)
        .await?;
    assert_nothing_pending(&mut compat).await?;
    assert_eq!(
        state.seen().stored_texts(),
        [
            r#"{"Topic":"chat.room","Content":"ok"}"#,
            r#"{"Topic":"chat.room","Content":"compat"}"#
        ]
    );
    assert_eq!(publisher.metrics.forbidden_count(), 3);
    drop((v1, compat));
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_topic_with_wildcard_tokens_is_refused_and_legacy_topics_still_pass() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = publisher(dir.path(), &queue, AccessArgs::default()).await?;
    let mut v1 = publisher.client(dir.path(), true).await?;
    for (topic, id) in [("news.*", 1), ("news.>", 2), ("@*", 3)] {
        send_text(
            &mut v1,
            &format!(r#"{{"Topic":"{topic}","Content":"x","Id":{id}}}"#),
        )
        .await?;
        assert_eq!(
            parse(&next_text(&mut v1).await?)?,
            error(
                "invalid topic: `*` and `>` are wildcards for subscriptions, not part of a topic",
                &id.to_string()
            )
        );
    }
    send_text(&mut v1, r#"{"Topic":"a..b","Content":"legacy","Id":4}"#).await?;
    assert_eq!(parse(&next_text(&mut v1).await?)?, ack("4"));
    let mut compat = publisher.client(dir.path(), false).await?;
    send_text(&mut compat, "news.> dropped").await?;
    eventually("the compat client's wildcard topic counted", || async {
        publisher.metrics.invalid_count(InvalidReason::Topic) == 4
    })
    .await?;
    assert_eq!(
        queue.state().seen().stored_texts(),
        [r#"{"Topic":"a..b","Content":"legacy"}"#]
    );
    drop((v1, compat));
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_acl_reload_changes_what_an_open_connection_may_publish() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write_acl(dir.path(), "[users.client]\npublish.allow = [\"chat.>\"]\n")?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = publisher(dir.path(), &queue, acl(path)).await?;
    let mut v1 = publisher.client(dir.path(), true).await?;
    send_text(&mut v1, r#"{"Topic":"chat.a","Content":"x","Id":0}"#).await?;
    assert_eq!(parse(&next_text(&mut v1).await?)?, ack("0"));

    write_acl(dir.path(), "[users.client]\npublish.allow = [\"news.>\"]\n")?;
    // The reload lands within a few seconds; the same connection keeps publishing meanwhile.
    let mut id = 0;
    let forbidden = loop {
        id += 1;
        anyhow::ensure!(id < 400, "the reloaded ACL never took effect");
        send_text(
            &mut v1,
            &format!(r#"{{"Topic":"chat.a","Content":"x","Id":{id}}}"#),
        )
        .await?;
        match parse(&next_text(&mut v1).await?)? {
            ServerFrame::Ack { .. } => {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            other => break other,
        }
    };
    assert_eq!(forbidden, error("forbidden", &id.to_string()));
    send_text(&mut v1, r#"{"Topic":"news.a","Content":"x","Id":"n"}"#).await?;
    assert_eq!(parse(&next_text(&mut v1).await?)?, ack(r#""n""#));
    drop(v1);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_bearer_token_is_decided_by_the_auth_callout_whose_permissions_apply()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = AuthServer::start(dir.path(), |request| {
        if request["token"] == "tok-app" && request["service"] == "publisher" {
            let reply = r#"{"allow":true,"user":"app","permissions":{"publish":{"allow":["@*"]}}}"#;
            (200, reply.to_owned())
        } else {
            (200, r#"{"allow":false}"#.to_owned())
        }
    })
    .await?;
    let queue = FakeQueue::start(dir.path()).await?;
    let access = AccessArgs {
        auth_url: Some(server.url.clone()),
        auth_ca: Some(server.ca.clone()),
        ..AccessArgs::default()
    };
    let publisher = publisher(dir.path(), &queue, access).await?;
    let port = publisher.addr.port();

    let denied = handshake(
        port,
        dir.path(),
        PUBLISH_PATH,
        &[("authorization", "Bearer nope")],
    )
    .await?;
    assert!(matches!(denied, Handshake::Refused(401)));
    let headers = [
        ("authorization", "Bearer tok-app"),
        ("sec-websocket-protocol", "wsmq.v1"),
    ];
    let Handshake::Upgraded(mut ws, chosen) =
        handshake(port, dir.path(), PUBLISH_PATH, &headers).await?
    else {
        anyhow::bail!("the token was refused");
    };
    assert_eq!(chosen.as_deref(), Some("wsmq.v1"));
    send_text(&mut ws, r#"{"Topic":"@bob","Content":"hi","Id":1}"#).await?;
    assert_eq!(parse(&next_text(&mut ws).await?)?, ack("1"));
    send_text(&mut ws, r#"{"Topic":"chat","Content":"hi","Id":2}"#).await?;
    assert_eq!(parse(&next_text(&mut ws).await?)?, error("forbidden", "2"));
    drop(ws);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_http_api_applies_the_acl_per_request_user() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write_acl(
        dir.path(),
        r#"
[users.client]
publish.allow = ["chat.>"]
"#,
    )?;
    let queue = FakeQueue::start(dir.path()).await?;
    let publisher = publisher(dir.path(), &queue, acl(path)).await?;
    let mut api = publisher.api(dir.path()).await?;
    let json = [("Content-Type", "application/json")];

    let denied = api
        .post_json("/v1/publish", &json, r#"{"topic":"news","content":"x"}"#)
        .await?;
    assert_eq!(denied.status, 403, "{:?}", denied.json());
    assert_eq!(denied.json()["error"], "forbidden");
    assert_eq!(denied.json()["topic"], "news");
    // A batch with one forbidden message is refused as a whole, naming it.
    let batch = api
        .post_json(
            "/v1/publish/batch",
            &json,
            r#"{"messages":[{"topic":"chat.a","content":"1"},{"topic":"news","content":"2"}]}"#,
        )
        .await?;
    assert_eq!(batch.status, 403, "{:?}", batch.json());
    assert_eq!(batch.json()["index"], 1);

    let allowed = api
        .post_json(
            "/v1/publish",
            &json,
            r#"{"topic":"chat.room","content":"ok"}"#,
        )
        .await?;
    assert_eq!(allowed.status, 200, "{:?}", allowed.json());
    let state = queue.state();
    state
        .wait_for("the allowed message", |seen| !seen.stored.is_empty())
        .await?;
    assert_eq!(
        state.seen().stored_texts(),
        [r#"{"Topic":"chat.room","Content":"ok"}"#]
    );
    assert_eq!(publisher.metrics.forbidden_count(), 2);
    drop(api);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_http_api_takes_a_bearer_token_decided_by_the_auth_callout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = AuthServer::start(dir.path(), |request| {
        if request["token"] == "tok-app" {
            let reply = r#"{"allow":true,"user":"app","permissions":{"publish":{"allow":["@*"]}}}"#;
            (200, reply.to_owned())
        } else {
            (
                200,
                r#"{"allow":false,"reason":"unknown token"}"#.to_owned(),
            )
        }
    })
    .await?;
    let queue = FakeQueue::start(dir.path()).await?;
    let access = AccessArgs {
        auth_url: Some(server.url.clone()),
        auth_ca: Some(server.ca.clone()),
        ..AccessArgs::default()
    };
    let publisher = publisher(dir.path(), &queue, access).await?;
    let mut api = publisher.api(dir.path()).await?;
    let publish = |token: &'static str, topic: &'static str| {
        hyper::Request::builder()
            .method("POST")
            .uri("/v1/publish")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                r#"{{"topic":"{topic}","content":"hi"}}"#
            ))))
    };

    let denied = api.send(publish("nope", "@bob")?).await?;
    assert_eq!(denied.status, 401, "{:?}", denied.json());
    assert!(
        denied.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown token")),
        "{:?}",
        denied.json()
    );
    let allowed = api.send(publish("tok-app", "@bob")?).await?;
    assert_eq!(allowed.status, 200, "{:?}", allowed.json());
    let forbidden = api.send(publish("tok-app", "chat")?).await?;
    assert_eq!(forbidden.status, 403, "the callout's permissions apply");
    // API requests are counted with the handshakes' callouts.
    let (_, metrics) = wsmq_testkit::admin::request(publisher.admin, "GET", "/metrics").await?;
    for line in [
        r#"wsmq_publisher_listener_auth_callouts_total{outcome="denied"} 1"#,
        r#"wsmq_publisher_listener_auth_callouts_total{outcome="allowed"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    server.stop().await;
    drop(api);
    publisher.stop().await?;
    queue.stop().await?;
    Ok(())
}
