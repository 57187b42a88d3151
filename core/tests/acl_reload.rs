//! `LiveAcl` reloads on file change: a rewritten file is put in force, an invalid one leaves the previous ACL.
//! (SIGHUP is tested in `acl_sighup.rs`, its own binary, so the signal cannot trigger the reloads tested here.)

mod acl_files;

use std::time::Duration;

use acl_files::{DEADLINE, can_publish, next_generation, until, write};
use tokio_util::sync::CancellationToken;
use wsmq_core::acl::LiveAcl;

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
