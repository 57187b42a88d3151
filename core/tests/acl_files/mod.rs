//! Helpers of the ACL reload tests (`acl_reload.rs`, `acl_sighup.rs`): ACL files of one publish rule, and waiting
//! for reloads with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use wsmq_core::acl::LiveAcl;
use wsmq_core::topic::Topic;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn can_publish(acl: &LiveAcl, user: &str, topic: &str) -> bool {
    acl.permissions(user)
        .can_publish(Topic::parse(topic).unwrap())
}

pub fn write(path: &Path, publish_allow: &str) {
    std::fs::write(
        path,
        format!("defaults.publish.allow = [{publish_allow:?}]\n"),
    )
    .unwrap();
}

pub async fn next_generation(acl: &LiveAcl, seen: u64) -> u64 {
    let mut generation = acl.generation();
    tokio::time::timeout(DEADLINE, generation.wait_for(|g| *g > seen))
        .await
        .expect("no reload within the deadline")
        .map(|g| *g)
        .unwrap()
}

pub async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
