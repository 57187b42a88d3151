//! `LiveAcl` reloads: a rewritten file is put in force, an invalid one leaves the previous ACL, SIGHUP reloads at
//! once. Its own test binary, because the SIGHUP test signals the whole process.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wsmq_core::acl::LiveAcl;
use wsmq_core::topic::Topic;

const DEADLINE: Duration = Duration::from_secs(20);

fn can_publish(acl: &LiveAcl, user: &str, topic: &str) -> bool {
    acl.permissions(user)
        .can_publish(Topic::parse(topic).unwrap())
}

fn write(path: &Path, publish_allow: &str) {
    std::fs::write(
        path,
        format!("defaults.publish.allow = [{publish_allow:?}]\n"),
    )
    .unwrap();
}

async fn next_generation(acl: &LiveAcl, seen: u64) -> u64 {
    let mut generation = acl.generation();
    tokio::time::timeout(DEADLINE, generation.wait_for(|g| *g > seen))
        .await
        .expect("no reload within the deadline")
        .map(|g| *g)
        .unwrap()
}

async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_rewritten_file_is_put_in_force_and_an_invalid_one_keeps_the_previous_acl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.toml");
    write(&path, "news.>");
    let acl = LiveAcl::load(&path).unwrap();
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(
        acl.watch(Duration::from_millis(50), shutdown.clone())
            .unwrap(),
    );
    assert!(can_publish(&acl, "u", "news.x") && !can_publish(&acl, "u", "sport.x"));

    write(&path, "sport.results.>");
    assert_eq!(next_generation(&acl, 0).await, 1);
    assert!(!can_publish(&acl, "u", "news.x") && can_publish(&acl, "u", "sport.results.x"));

    std::fs::write(&path, "defaults.publish.allow = [\"news.>.x\"]\n").unwrap();
    until("the invalid file to be tried", || acl.failed_reloads() == 1).await;
    assert!(
        can_publish(&acl, "u", "sport.results.x"),
        "the previous ACL stays in force"
    );
    assert_eq!(*acl.generation().borrow(), 1);

    write(&path, "news.>");
    assert_eq!(next_generation(&acl, 1).await, 2);
    assert!(can_publish(&acl, "u", "news.x"));
    assert_eq!(acl.failed_reloads(), 1, "an invalid version is tried once");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, watcher)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn sighup_reloads_at_once_and_a_reload_that_changes_nothing_keeps_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.toml");
    write(&path, "a");
    let acl = LiveAcl::load(&path).unwrap();
    let shutdown = CancellationToken::new();
    // Polling once an hour: only the signal can make this reload happen within the test.
    let watcher = tokio::spawn(
        acl.watch(Duration::from_secs(3600), shutdown.clone())
            .unwrap(),
    );

    assert!(!acl.reload().unwrap(), "same file, nothing to do");
    assert_eq!(*acl.generation().borrow(), 0);

    write(&path, "b");
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
    assert_eq!(next_generation(&acl, 0).await, 1);
    assert!(can_publish(&acl, "u", "b") && !can_publish(&acl, "u", "a"));

    std::fs::remove_file(&path).unwrap();
    assert!(acl.reload().is_err(), "a missing file is an error");
    assert!(can_publish(&acl, "u", "b"), "and leaves the ACL in force");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, watcher)
        .await
        .unwrap()
        .unwrap();
}
