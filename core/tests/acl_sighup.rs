//! `LiveAcl` reloads on SIGHUP. Its own test binary: the signal goes to the whole process.

mod acl_files;

use std::time::Duration;

use acl_files::{DEADLINE, can_publish, next_generation, write};
use tokio_util::sync::CancellationToken;
use wsmq_core::acl::LiveAcl;

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
