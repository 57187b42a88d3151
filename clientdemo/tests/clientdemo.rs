//! The clientdemo binary against a fake publisher and subscriber: the scriptable `publish` and `subscribe`
//! commands and the interactive prompt driven through a pipe.

mod common;

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::broadcast;

use common::{
    FORBIDDEN_TOPIC, FakeStack, Output, PASSWORD, Published, REJECTED_TOPIC, REJECTION,
    SILENT_TOPIC, STEP, TestResult, finish,
};

/// Receives what the fake publisher accepted, within [`STEP`].
async fn accepted(feed: &mut broadcast::Receiver<Published>) -> TestResult<Published> {
    Ok(tokio::time::timeout(STEP, feed.recv()).await??)
}

async fn type_line(stdin: &mut ChildStdin, line: &str) -> TestResult {
    stdin.write_all(format!("{line}\n").as_bytes()).await?;
    stdin.flush().await?;
    Ok(())
}

#[tokio::test]
async fn publish_exits_zero_once_the_message_is_acked() -> TestResult {
    let stack = FakeStack::start().await?;
    let mut feed = stack.feed.subscribe();
    let child = stack
        .client()
        .args(["publish", "news", "hello", "world"])
        .spawn()?;
    let (status, _, stderr) = finish(child).await?;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(
        accepted(&mut feed).await?,
        ("news".to_owned(), "hello world".to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn publish_exits_non_zero_when_the_publisher_refuses_the_message() -> TestResult {
    let stack = FakeStack::start().await?;
    let child = stack
        .client()
        .args(["publish", REJECTED_TOPIC, "hello"])
        .spawn()?;
    let (status, _, stderr) = finish(child).await?;
    assert!(!status.success(), "a refused message must fail: {stderr}");
    assert!(stderr.contains(REJECTION), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn publish_sends_each_stdin_line_as_one_message_and_waits_for_all_acks() -> TestResult {
    let stack = FakeStack::start().await?;
    let mut feed = stack.feed.subscribe();
    let mut child = stack
        .client()
        .args(["publish", "lines"])
        .stdin(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin is not piped")?;
    stdin.write_all(b"one\ntwo words\r\n\nthree\n").await?;
    drop(stdin);
    let (status, _, stderr) = finish(child).await?;
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("published 3 message(s)"), "{stderr}");
    for expected in ["one", "two words", "three"] {
        assert_eq!(
            accepted(&mut feed).await?,
            ("lines".to_owned(), expected.to_owned())
        );
    }
    Ok(())
}

#[tokio::test]
async fn publish_fails_when_no_ack_arrives_within_the_timeout() -> TestResult {
    let stack = FakeStack::start().await?;
    let child = stack
        .client()
        .args(["publish", "--timeout", "300ms", SILENT_TOPIC, "anyone?"])
        .spawn()?;
    let (status, _, stderr) = finish(child).await?;
    assert!(
        !status.success(),
        "an unconfirmed message must fail: {stderr}"
    );
    assert!(stderr.contains("not confirmed"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn wrong_password_fails_at_once_with_a_clear_message() -> TestResult {
    let stack = FakeStack::start().await?;
    let child = stack
        .client()
        .env("WSMQ_PASSWORD", format!("not {PASSWORD}"))
        .args(["publish", "news", "hello"])
        .spawn()?;
    let (status, _, stderr) = finish(child).await?;
    assert!(!status.success());
    assert!(stderr.contains("rejected the credentials"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
    Ok(())
}

#[tokio::test]
async fn subscribe_prints_one_json_line_per_message_and_stops_after_count() -> TestResult {
    let mut stack = FakeStack::start().await?;
    let child = stack
        .client()
        .args(["subscribe", "news", "sports", "--count", "2"])
        .spawn()?;
    stack.subscribed("news").await?;
    stack.subscribed("sports").await?;
    for (topic, content) in [
        ("weather", "not subscribed"),
        ("news", "first \"quoted\""),
        ("sports", "second"),
        ("news", "third"),
    ] {
        stack.feed.send((topic.to_owned(), content.to_owned()))?;
    }
    let (status, stdout, stderr) = finish(child).await?;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            r#"{"Topic":"news","Content":"first \"quoted\""}"#,
            r#"{"Topic":"sports","Content":"second"}"#,
        ]
    );
    Ok(())
}

#[tokio::test]
async fn interactive_mode_publishes_subscribes_and_shows_acks_and_errors() -> TestResult {
    let stack = FakeStack::start().await?;
    let mut child = stack.client().stdin(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin is not piped")?;
    let mut out = Output::of(&mut child)?;
    out.expect_all(&["connected to the publisher", "connected to the subscriber"])
        .await?;

    type_line(&mut stdin, "sub news").await?;
    out.expect("subscribed news").await?;
    type_line(&mut stdin, "news hello there").await?;
    out.expect_all(&["ack m-1", "<[news] hello there"]).await?;
    type_line(&mut stdin, &format!("{REJECTED_TOPIC} please")).await?;
    out.expect(&format!("error: m-2: {REJECTION}")).await?;
    type_line(&mut stdin, "unsub news").await?;
    out.expect("unsubscribed news").await?;
    type_line(&mut stdin, "no-message-here").await?;
    out.expect("error: no message").await?;

    type_line(&mut stdin, "exit").await?;
    let (status, _, stderr) = finish(child).await?;
    assert!(status.success(), "{status}: {stderr}");
    Ok(())
}

#[tokio::test]
async fn interactive_mode_shows_wildcard_topics_refused_and_ended_subscriptions_plainly()
-> TestResult {
    let mut stack = FakeStack::start().await?;
    let mut child = stack.client().stdin(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin is not piped")?;
    let mut out = Output::of(&mut child)?;
    type_line(&mut stdin, "sub news.*").await?;
    out.expect("subscribed news.*").await?;
    stack.subscribed("news.*").await?;
    stack
        .feed
        .send(("news.sport".to_owned(), "goal".to_owned()))?;
    out.expect("<[news.sport] goal").await?;

    type_line(&mut stdin, &format!("sub {FORBIDDEN_TOPIC}")).await?;
    out.expect(&format!("error: sub {FORBIDDEN_TOPIC} refused: forbidden"))
        .await?;
    stack.revoke.send("news.*".to_owned())?;
    out.expect("unsubscribed news.* by the subscriber: forbidden")
        .await?;

    drop(stdin);
    let (status, _, stderr) = finish(child).await?;
    assert!(status.success(), "{status}: {stderr}");
    Ok(())
}

#[tokio::test]
async fn subscribe_reports_a_refused_subscription_with_its_topic_on_stderr() -> TestResult {
    let mut stack = FakeStack::start().await?;
    let child = stack
        .client()
        .args(["subscribe", "news", FORBIDDEN_TOPIC, "--count", "1"])
        .spawn()?;
    stack.subscribed("news").await?;
    stack.subscribed(FORBIDDEN_TOPIC).await?;
    stack.feed.send(("news".to_owned(), "only".to_owned()))?;
    let (status, stdout, stderr) = finish(child).await?;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stdout.trim(), r#"{"Topic":"news","Content":"only"}"#);
    assert!(
        stderr.contains(&format!("error: sub {FORBIDDEN_TOPIC} refused: forbidden")),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn interactive_mode_reconnects_and_resubscribes_when_the_subscriber_drops_it() -> TestResult {
    let mut stack = FakeStack::start().await?;
    let mut child = stack.client().stdin(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin is not piped")?;
    let mut out = Output::of(&mut child)?;
    type_line(&mut stdin, "sub news").await?;
    out.expect("subscribed news").await?;
    stack.subscribed("news").await?;

    stack.kick.send(())?;
    out.expect("subscriber disconnected").await?;
    out.expect("connected to the subscriber").await?;
    out.expect("subscribed news").await?;
    stack.subscribed("news").await?;
    stack
        .feed
        .send(("news".to_owned(), "after the restart".to_owned()))?;
    out.expect("<[news] after the restart").await?;

    drop(stdin);
    let (status, _, stderr) = finish(child).await?;
    assert!(
        status.success(),
        "end of input must exit cleanly: {status}: {stderr}"
    );
    Ok(())
}
