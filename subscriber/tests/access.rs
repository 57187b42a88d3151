//! The subscriber's topic permissions, wildcard subscriptions and auth callout, against a fake msgqueue and real
//! WebSocket clients: denied subscriptions in both modes, revocation on an ACL reload without dropping the
//! connection, `*` and `>` routing (each message once), bad patterns and bad ACL files, and the callout (allow
//! with permissions, deny, server down) with Basic credentials and bearer tokens.

mod common;

use std::path::{Path, PathBuf};

use common::{FakeQueue, Settings, Subscriber, TestResult, envelope};
use wsmq_core::config::AccessArgs;
use wsmq_core::protocol::SUBSCRIBE_PATH;
use wsmq_testkit::auth_server::AuthServer;
use wsmq_testkit::client::{Handshake, handshake};
use wsmq_testkit::{eventually, within};

/// Writes an ACL file by writing a new file and renaming it over the old one (what operators should do).
fn write_acl(dir: &Path, text: &str) -> TestResult<PathBuf> {
    let path = dir.join("acl.toml");
    let next = dir.join("acl.toml.next");
    std::fs::write(&next, text)?;
    std::fs::rename(&next, &path)?;
    Ok(path)
}

/// A fake queue and a subscriber with `access`, and the queue's side of the link.
async fn setup(
    dir: &Path,
    access: AccessArgs,
) -> TestResult<(FakeQueue, Subscriber, common::QueueConn)> {
    let mut queue = FakeQueue::start(dir, "127.0.0.1:0".parse()?).await?;
    let settings = Settings {
        access,
        ..Settings::default()
    };
    let subscriber = Subscriber::start(dir, queue.addr, settings).await?;
    let mut link = queue.accept().await?;
    link.await_credit(1).await?;
    Ok((queue, subscriber, link))
}

fn acl(path: PathBuf) -> AccessArgs {
    AccessArgs {
        acl_file: Some(path),
        ..AccessArgs::default()
    }
}

#[tokio::test]
async fn wildcard_subscriptions_receive_every_matching_topic_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_queue, subscriber, mut link) = setup(dir.path(), AccessArgs::default()).await?;
    let mut wild = subscriber.v1_client().await?;
    wild.subscribe("news.*").await?;
    wild.subscribe("news.>").await?;
    wild.subscribe("news.sport").await?;
    let mut exact = subscriber.v1_client().await?;
    exact.subscribe("news.weather").await?;

    link.deliver(&[
        (1, false, envelope("news.sport", "one")),
        (2, false, envelope("news.weather", "two")),
        (3, false, envelope("news.sport.live", "three")),
        (4, false, envelope("sport", "nobody")),
        (5, false, envelope("news", "nobody either")),
        (6, false, envelope("news.end", "last")),
    ])
    .await?;
    for expected in [
        r#"{"Topic":"news.sport","Content":"one"}"#,
        r#"{"Topic":"news.weather","Content":"two"}"#,
        r#"{"Topic":"news.sport.live","Content":"three"}"#,
        r#"{"Topic":"news.end","Content":"last"}"#,
    ] {
        assert_eq!(wild.recv().await?, expected, "each message exactly once");
    }
    assert_eq!(
        exact.recv().await?,
        r#"{"Topic":"news.weather","Content":"two"}"#
    );
    exact.subscribe("after").await?;
    link.await_acks(1..=6).await?;
    assert_eq!(subscriber.metrics.unrouted_total(), 2);

    wild.send("unsub news.>").await?;
    assert_eq!(wild.recv().await?, r#"{"unsubscribed":"news.>"}"#);
    link.deliver(&[
        (7, false, envelope("news.sport.live", "gone")),
        (8, false, envelope("news.x", "still")),
    ])
    .await?;
    assert_eq!(
        wild.recv().await?,
        r#"{"Topic":"news.x","Content":"still"}"#
    );
    subscriber.stop().await
}

#[tokio::test]
async fn a_misplaced_wildcard_in_sub_gets_a_clear_error_and_legacy_topics_still_work() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let (_queue, subscriber, mut link) = setup(dir.path(), AccessArgs::default()).await?;
    let mut client = subscriber.v1_client().await?;
    client.send("sub news.>.live").await?;
    assert_eq!(
        client.recv().await?,
        r#"{"error":"invalid pattern `news.>.live`: `>` must be the last token"}"#
    );
    client.send("sub @alice.>").await?;
    let error = client.recv().await?;
    assert!(error.contains("inbox"), "{error}");
    // A ws-go topic outside the token rules is still an exact topic without an ACL.
    client.subscribe("a..b").await?;
    link.deliver(&[(1, false, envelope("a..b", "legacy"))])
        .await?;
    assert_eq!(
        client.recv().await?,
        r#"{"Topic":"a..b","Content":"legacy"}"#
    );
    subscriber.stop().await
}

const NEWS_ACL: &str = r#"
[users.alice]
subscribe.allow = ["news.>"]
subscribe.deny = ["news.secret"]
"#;

#[tokio::test]
async fn a_denied_subscription_is_an_error_in_v1_and_ignored_and_counted_in_compat() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write_acl(dir.path(), NEWS_ACL)?;
    let (_queue, subscriber, mut link) = setup(dir.path(), acl(path)).await?;

    let mut v1 = subscriber.v1_client().await?;
    for denied in ["news.secret", "news.*", "weather", ">", "a..b"] {
        v1.send(&format!("sub {denied}")).await?;
        let answer = v1.recv().await?;
        if denied == "a..b" {
            assert!(
                answer.contains("required with topic permissions"),
                "{answer}"
            );
        } else {
            assert_eq!(
                answer,
                format!(r#"{{"error":"forbidden","topic":"{denied}"}}"#)
            );
        }
    }
    v1.subscribe("news.sport").await?;

    let mut compat = subscriber.compat_client().await?;
    compat.send("sub news.secret").await?;
    compat.send("sub news.sport").await?;
    eventually("the compat client's forbidden sub counted", || async {
        subscriber.metrics.subscribe_forbidden_total() == 5
    })
    .await?;
    eventually("both allowed subscriptions", || async {
        subscriber.metrics.subscriptions_current() == 2
    })
    .await?;

    link.deliver(&[
        (1, false, envelope("news.secret", "hidden")),
        (2, false, envelope("news.sport", "visible")),
    ])
    .await?;
    let visible = r#"{"Topic":"news.sport","Content":"visible"}"#;
    assert_eq!(v1.recv().await?, visible);
    assert_eq!(compat.recv().await?, visible);
    link.await_acks([1, 2]).await?;
    assert_eq!(subscriber.metrics.unrouted_total(), 1);
    subscriber.stop().await
}

#[tokio::test]
async fn an_acl_reload_ends_revoked_subscriptions_and_keeps_the_connection() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write_acl(
        dir.path(),
        r#"
[users.alice]
subscribe.allow = ["news.>"]
"#,
    )?;
    let (_queue, subscriber, mut link) = setup(dir.path(), acl(path)).await?;
    let mut v1 = subscriber.v1_client().await?;
    v1.subscribe("news.sport").await?;
    v1.subscribe("news.weather").await?;
    v1.subscribe("news.*").await?;
    let mut compat = subscriber.compat_client().await?;
    compat.send("sub news.sport").await?;
    eventually("four subscriptions", || async {
        subscriber.metrics.subscriptions_current() == 4
    })
    .await?;

    write_acl(
        dir.path(),
        r#"
[users.alice]
subscribe.allow = ["news.weather"]
"#,
    )?;
    // One bound over both frames: `recv` alone restarts its bound on every ping the server sends.
    let mut revoked = within("both revocations", async {
        TestResult::Ok(vec![v1.recv().await?, v1.recv().await?])
    })
    .await??;
    revoked.sort();
    assert_eq!(
        revoked,
        [
            r#"{"unsubscribed":"news.*","reason":"forbidden"}"#,
            r#"{"unsubscribed":"news.sport","reason":"forbidden"}"#,
        ]
    );
    eventually("the compat client's subscription revoked too", || async {
        subscriber.metrics.subscriptions_revoked_total() == 3
    })
    .await?;

    link.deliver(&[
        (1, false, envelope("news.sport", "revoked")),
        (2, false, envelope("news.weather", "kept")),
    ])
    .await?;
    assert_eq!(
        v1.recv().await?,
        r#"{"Topic":"news.weather","Content":"kept"}"#,
        "the connection is still open and keeps what is still allowed"
    );
    link.await_acks([1, 2]).await?;
    v1.send("sub news.sport").await?;
    assert_eq!(
        v1.recv().await?,
        r#"{"error":"forbidden","topic":"news.sport"}"#
    );
    compat.send("sub news.weather").await?;
    link.deliver(&[(3, false, envelope("news.weather", "compat"))])
        .await?;
    assert_eq!(
        compat.recv().await?,
        r#"{"Topic":"news.weather","Content":"compat"}"#
    );
    subscriber.stop().await
}

#[tokio::test]
async fn a_bad_acl_file_stops_the_subscriber_at_start_naming_file_and_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write_acl(
        dir.path(),
        "[users.alice]\nsubscribe.allow = [\"news.>.x\"]\n",
    )?;
    let queue = FakeQueue::start(dir.path(), "127.0.0.1:0".parse()?).await?;
    let settings = Settings {
        access: acl(path),
        ..Settings::default()
    };
    let error = match Subscriber::start(dir.path(), queue.addr, settings).await {
        Ok(_) => return Err("a subscriber with an invalid ACL file started".into()),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("acl.toml:2") && error.contains("`>` must be the last token"),
        "{error}"
    );
    Ok(())
}

/// A client of `subscriber` offering `wsmq.v1` and, as a browser does, credentials as a subprotocol; checks the
/// credential subprotocol is never echoed.
async fn browser_client(
    subscriber: &Subscriber,
    dir: &Path,
    credential_subprotocol: &str,
) -> TestResult<Result<common::Client, u16>> {
    let offer = format!("wsmq.v1, {credential_subprotocol}");
    let headers = [("sec-websocket-protocol", offer.as_str())];
    Ok(
        match handshake(subscriber.addr.port(), dir, SUBSCRIBE_PATH, &headers).await? {
            Handshake::Upgraded(ws, chosen) => {
                assert_eq!(chosen.as_deref(), Some("wsmq.v1"));
                Ok(common::Client { ws: *ws })
            }
            Handshake::Refused(status) => Err(status),
        },
    )
}

/// The HTTP status a handshake with `authorization` got, or 101.
async fn handshake_status(
    subscriber: &Subscriber,
    dir: &Path,
    authorization: &str,
) -> TestResult<u16> {
    let headers = [("authorization", authorization)];
    Ok(
        match handshake(subscriber.addr.port(), dir, SUBSCRIBE_PATH, &headers).await? {
            Handshake::Upgraded(..) => 101,
            Handshake::Refused(status) => status,
        },
    )
}

fn callout(server: &AuthServer) -> AccessArgs {
    AccessArgs {
        auth_url: Some(server.url.clone()),
        auth_ca: Some(server.ca.clone()),
        ..AccessArgs::default()
    }
}

#[tokio::test]
async fn the_auth_callout_admits_with_its_permissions_denies_with_401_and_answers_503_when_down()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let server = AuthServer::start(dir.path(), |request| {
        let allowed = request["password"] == "alice-pw" || request["token"] == "tok-bob";
        let reply = if !allowed {
            r#"{"allow":false,"reason":"unknown account"}"#
        } else if request["token"] == "tok-bob" {
            r#"{"allow":true,"user":"bob","permissions":{"subscribe":{"allow":["@{user}","news.>"]}}}"#
        } else {
            r#"{"allow":true,"permissions":{"subscribe":{"allow":["chat.>"]}}}"#
        };
        (200, reply.to_owned())
    })
    .await?;
    let (_queue, subscriber, mut link) = setup(dir.path(), callout(&server)).await?;

    // Basic credentials (the test users' own), with the permissions the callout sent.
    let mut alice = subscriber.v1_client().await?;
    alice.subscribe("chat.room1").await?;
    alice.send("sub news.sport").await?;
    assert_eq!(
        alice.recv().await?,
        r#"{"error":"forbidden","topic":"news.sport"}"#
    );
    let body = server.requests.lock()[0].clone();
    assert_eq!(body["user"], "alice");
    assert_eq!(body["service"], "subscriber");

    // A bearer token in the header: the callout names the user.
    assert_eq!(
        handshake_status(&subscriber, dir.path(), "Bearer tok-wrong").await?,
        401
    );
    assert_eq!(
        handshake_status(&subscriber, dir.path(), "Bearer tok-bob").await?,
        101
    );
    // A bearer token offered as a subprotocol, as the browser page does; `{user}` is the callout's user.
    let mut bob = browser_client(&subscriber, dir.path(), "wsmq.bearer.tok-bob")
        .await?
        .map_err(|status| format!("refused with {status}"))?;
    // Its own inbox is resumed from what it has not acked; this fake msgqueue keeps no history, so the inbox is
    // subscribed live and the client told it may have missed messages.
    bob.send("sub @bob").await?;
    let confirmation: serde_json::Value = serde_json::from_str(&bob.recv().await?)?;
    assert_eq!(
        (
            &confirmation["subscribed"],
            &confirmation["recovered"],
            &confirmation["reason"]
        ),
        (
            &serde_json::json!("@bob"),
            &serde_json::json!(false),
            &serde_json::json!("unavailable")
        )
    );
    bob.send("sub @alice").await?;
    assert_eq!(
        bob.recv().await?,
        r#"{"error":"forbidden","topic":"@alice"}"#
    );
    assert!(
        server
            .requests
            .lock()
            .iter()
            .any(|request| request["token"] == "tok-bob" && request["user"] == ""),
        "a bearer token is sent as `token`, with no user"
    );

    // The application's server goes down: new connections get 503, open ones keep working.
    server.stop().await;
    assert_eq!(
        handshake_status(&subscriber, dir.path(), "Bearer tok-new").await?,
        503
    );
    link.deliver(&[
        (1, false, envelope("chat.room1", "still here")),
        (2, false, envelope("@bob", "for bob")),
    ])
    .await?;
    assert_eq!(
        alice.recv().await?,
        r#"{"Topic":"chat.room1","Content":"still here"}"#
    );
    assert_eq!(bob.recv().await?, r#"{"Topic":"@bob","Content":"for bob"}"#);
    subscriber.stop().await
}

#[tokio::test]
async fn a_bearer_token_without_an_auth_callout_is_refused_with_401() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_queue, subscriber, _link) = setup(dir.path(), AccessArgs::default()).await?;
    assert_eq!(
        handshake_status(&subscriber, dir.path(), "Bearer some-token").await?,
        401
    );
    let refused = browser_client(&subscriber, dir.path(), "wsmq.bearer.some-token").await?;
    assert_eq!(refused.err(), Some(401));
    subscriber.stop().await
}
