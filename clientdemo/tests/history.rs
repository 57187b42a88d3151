//! clientdemo against the real services with topic history: a subscription that resumes by itself after the
//! subscriber went away and came back (recovering what was published meanwhile, once), `subscribe --since`,
//! `history`, and the prompt's `history` and `sub … since=`.

mod common;

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;

use common::stack::RealStack;
use common::{Output, STEP, TestResult};

/// A printed message: (content, offset, epoch).
type Printed = (String, u64, String);

/// Reads `n` JSON lines from clientdemo's stdout.
async fn printed(out: &mut Output, n: usize) -> TestResult<Vec<Printed>> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let line = out.line().await?;
        let json: Value = serde_json::from_str(&line)?;
        let (Some(content), Some(offset), Some(epoch)) = (
            json["Content"].as_str(),
            json["Offset"].as_u64(),
            json["Epoch"].as_str(),
        ) else {
            return Err(format!("a message without its position: {line}").into());
        };
        got.push((content.to_owned(), offset, epoch.to_owned()));
    }
    Ok(got)
}

fn contents(got: &[Printed]) -> Vec<&str> {
    got.iter().map(|(content, ..)| content.as_str()).collect()
}

fn offsets(got: &[Printed]) -> Vec<u64> {
    got.iter().map(|(_, offset, _)| *offset).collect()
}

/// Waits for the child to exit on its own, within [`STEP`]; fails unless it exits with success.
async fn exits_cleanly(
    mut child: Child,
    stderr: &Output<tokio::process::ChildStderr>,
) -> TestResult {
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .map_err(|_| "clientdemo did not exit")??;
    if !status.success() {
        return Err(format!("{status}; stderr so far {:?}", stderr.seen).into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_resumes_after_the_subscriber_comes_back_and_prints_what_it_missed_once()
-> TestResult {
    let mut stack = RealStack::start().await?;
    let mut child = stack
        .client()
        .args(["subscribe", "news", "--count", "5"])
        .spawn()?;
    let mut out = Output::of(&mut child)?;
    let mut status = Output::stderr_of(&mut child)?;
    status.expect("subscribed news").await?;
    stack.publish("news", &["m1", "m2"]).await?;
    let before = printed(&mut out, 2).await?;
    assert_eq!(offsets(&before), [1, 2]);

    stack.stop_subscriber().await?;
    status.expect("subscriber disconnected").await?;
    stack.publish("news", &["m3", "m4"]).await?;
    stack.start_subscriber().await?;
    status
        .expect("resumed news after offset 2: recovered 2 missed message(s)")
        .await?;
    let missed = printed(&mut out, 2).await?;
    stack.publish("news", &["m5"]).await?;
    let live = printed(&mut out, 1).await?;
    exits_cleanly(child, &status).await?;

    let all: Vec<Printed> = [before, missed, live].concat();
    assert_eq!(contents(&all), ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5], "no gap, no duplicate");
    assert!(
        all.iter().all(|(.., epoch)| *epoch == all[0].2),
        "one epoch: {all:?}"
    );
    stack.stop().await
}

#[tokio::test]
async fn history_prints_the_newest_messages_with_their_offsets() -> TestResult {
    let mut stack = RealStack::start().await?;
    stack.publish("news", &["a1", "a2", "a3"]).await?;
    let mut child = stack
        .client()
        .args(["history", "news", "--limit", "2"])
        .spawn()?;
    let mut out = Output::of(&mut child)?;
    let mut status = Output::stderr_of(&mut child)?;
    status
        .expect("history news: 2 message(s), newest offset 3")
        .await?;
    let got = printed(&mut out, 2).await?;
    assert_eq!(contents(&got), ["a2", "a3"]);
    assert_eq!(offsets(&got), [2, 3]);
    exits_cleanly(child, &status).await?;

    let refused = stack.client().args(["history", "news.*"]).output().await?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("history needs one exact topic"),
        "{refused:?}"
    );
    stack.stop().await
}

#[tokio::test]
async fn subscribe_since_prints_what_came_after_the_offset_then_live_messages() -> TestResult {
    let mut stack = RealStack::start().await?;
    stack.publish("news", &["s1", "s2", "s3"]).await?;
    let history = stack.client().args(["history", "news"]).output().await?;
    let first_line = String::from_utf8_lossy(&history.stdout)
        .lines()
        .next()
        .map(str::to_owned)
        .ok_or("no history printed")?;
    let epoch = serde_json::from_str::<Value>(&first_line)?["Epoch"]
        .as_str()
        .ok_or("no epoch")?
        .to_owned();

    let mut child = stack
        .client()
        .args([
            "subscribe",
            "news",
            "--since",
            "1",
            "--epoch",
            &epoch,
            "--count",
            "3",
        ])
        .spawn()?;
    let mut out = Output::of(&mut child)?;
    let mut status = Output::stderr_of(&mut child)?;
    status
        .expect("resumed news after offset 1: recovered 2 missed message(s)")
        .await?;
    let recovered = printed(&mut out, 2).await?;
    assert_eq!(contents(&recovered), ["s2", "s3"]);
    stack.publish("news", &["s4"]).await?;
    assert_eq!(offsets(&printed(&mut out, 1).await?), [4]);
    exits_cleanly(child, &status).await?;

    let mut child = stack
        .client()
        .args(["subscribe", "news", "--since", "0", "--count", "4"])
        .spawn()?;
    let mut out = Output::of(&mut child)?;
    let mut status = Output::stderr_of(&mut child)?;
    status
        .expect("subscribed news from its retained history (newest offset 4)")
        .await?;
    assert_eq!(
        contents(&printed(&mut out, 4).await?),
        ["s1", "s2", "s3", "s4"]
    );
    exits_cleanly(child, &status).await?;

    let refused = stack
        .client()
        .args(["subscribe", "news", "--since", "2"])
        .output()
        .await?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--since needs the --epoch"),
        "{refused:?}"
    );
    stack.stop().await
}

#[tokio::test]
async fn the_prompt_shows_history_and_resumes_a_topic_with_since() -> TestResult {
    let mut stack = RealStack::start().await?;
    stack.publish("news", &["p1", "p2", "p3"]).await?;
    let mut child = stack.client().stdin(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin is not piped")?;
    let mut out = Output::of(&mut child)?;

    stdin.write_all(b"history news limit=2\n").await?;
    out.expect("history news: 2 message(s), newest offset 3")
        .await?;
    out.expect("#2 p2").await?;
    out.expect("#3 p3").await?;

    stdin.write_all(b"sub news since=0\n").await?;
    out.expect("subscribed news from its retained history (newest offset 3)")
        .await?;
    out.expect_all(&["<[news #1] p1", "<[news #2] p2", "<[news #3] p3"])
        .await?;
    stack.publish("news", &["p4"]).await?;
    out.expect("<[news #4] p4").await?;

    drop(stdin);
    let status = tokio::time::timeout(STEP, child.wait()).await??;
    assert!(status.success(), "{status}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_reads_its_inbox_and_acked_messages_do_not_come_back() -> TestResult {
    let mut stack = RealStack::start().await?;
    stack.publish("@hello", &["i1", "i2"]).await?;
    let mut child = stack.client().stdin(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin is not piped")?;
    let mut out = Output::of(&mut child)?;
    stdin.write_all(b"sub @hello\n").await?;
    out.expect_all(&["<[@hello #1] i1", "<[@hello #2] i2"])
        .await?;
    stdin.write_all(b"ack @hello 2\n").await?;
    out.expect("acked @hello up to #2").await?;
    drop(stdin);
    let status = tokio::time::timeout(STEP, child.wait()).await??;
    assert!(status.success(), "{status}");

    // A new session: the acked messages are gone, a new one arrives.
    let mut child = stack.client().stdin(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin is not piped")?;
    let mut out = Output::of(&mut child)?;
    stdin.write_all(b"sub @hello\n").await?;
    stack.publish("@hello", &["i3"]).await?;
    out.expect("<[@hello #3] i3").await?;
    drop(stdin);
    let status = tokio::time::timeout(STEP, child.wait()).await??;
    assert!(status.success(), "{status}");
    assert!(
        !out.seen
            .iter()
            .any(|line| line.contains("] i1") || line.contains("] i2")),
        "acked messages came back: {:?}",
        out.seen
    );
    stack.stop().await
}
