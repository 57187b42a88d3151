//! msgqueue as a service on the Redis backend, against a real `redis-server`: several msgqueue instances serve one
//! queue, `/readyz` follows Redis, pushes are held back (not dropped) while Redis is away, and msgqueue starts
//! while Redis is still unreachable.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use common::{Consumer, Producer, Running, config};
use wsmq_core::protocol::queue::PushReply;
use wsmq_msgqueue::Config;
use wsmq_msgqueue::config::StorageKind;
use wsmq_testkit::TestResult;
use wsmq_testkit::admin::{await_readyz, request};
use wsmq_testkit::redis::RedisServer;

fn redis_config(data_dir: &Path, redis: &RedisServer) -> Config {
    let mut config = config(data_dir);
    config.queue.storage = StorageKind::Redis;
    config.queue.redis_url = Some(redis.url());
    config
}

fn items(first: u64, count: u64) -> Vec<(u64, Bytes)> {
    (first..first + count)
        .map(|seq| (seq, Bytes::from(format!("m{seq}"))))
        .collect()
}

fn acked_upto(replies: &[PushReply]) -> Option<u64> {
    replies.iter().rev().find_map(|reply| match reply {
        PushReply::Acked { upto } => Some(*upto),
        _ => None,
    })
}

#[tokio::test]
async fn two_msgqueue_instances_on_one_redis_serve_one_queue() -> TestResult {
    let redis = RedisServer::start().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = Running::start(redis_config(dir_a.path(), &redis)).await;
    let b = Running::start(redis_config(dir_b.path(), &redis)).await;

    // One group shared by a consumer on each instance, and a second group that gets everything.
    // Small windows, acked as they arrive, so neither consumer can take the whole stream alone.
    let mut on_a =
        Consumer::connect_to(&a.dialer(true), "/popmsg?group=shared&start=oldest", 10).await;
    let mut on_b =
        Consumer::connect_to(&b.dialer(true), "/popmsg?group=shared&start=oldest", 10).await;
    let mut all =
        Consumer::connect_to(&b.dialer(true), "/popmsg?group=all&start=oldest", 1000).await;

    let mut to_a = Producer::connect(&a.dialer(true), 1).await;
    let mut to_b = Producer::connect(&b.dialer(true), 2).await;
    to_a.push(&items(1, 50)).await;
    to_b.push(&items(51, 50)).await;
    assert_eq!(acked_upto(&to_a.until_settled(50).await), Some(50));
    assert_eq!(acked_upto(&to_b.until_settled(100).await), Some(100));

    let mut everything = BTreeSet::new();
    for _ in 0..100 {
        everything.insert(all.next().await.payload);
    }
    assert_eq!(
        everything.len(),
        100,
        "the second group got every message once"
    );

    let mut shared = Vec::new();
    let mut from_a = 0;
    while shared.len() < 100 {
        tokio::select! {
            d = on_a.next() => {
                from_a += 1;
                on_a.ack(&[d.id]).await;
                shared.push(d.payload);
            }
            d = on_b.next() => {
                on_b.ack(&[d.id]).await;
                shared.push(d.payload);
            }
        }
    }
    let distinct: BTreeSet<_> = shared.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        100,
        "each message once within the shared group"
    );
    assert!(
        from_a > 0 && from_a < 100,
        "both instances' consumers took part: {from_a} on A"
    );
    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test]
async fn readyz_follows_redis_and_pushes_wait_for_it_instead_of_being_dropped() -> TestResult {
    let mut redis = RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let queue = Running::start(redis_config(dir.path(), &redis)).await;
    await_readyz(queue.admin, 200).await?;

    let mut producer = Producer::connect(&queue.dialer(true), 7).await;
    producer.push(&items(1, 5)).await;
    assert_eq!(acked_upto(&producer.until_settled(5).await), Some(5));

    redis.kill().await?;
    await_readyz(queue.admin, 503).await?;
    producer.push(&items(6, 5)).await;
    redis.restart().await?;
    assert_eq!(acked_upto(&producer.until_settled(10).await), Some(10));
    await_readyz(queue.admin, 200).await?;

    let mut consumer = Consumer::connect_to(&queue.dialer(true), "/popmsg?start=oldest", 100).await;
    let mut got = BTreeSet::new();
    for _ in 0..10 {
        got.insert(consumer.next().await.payload);
    }
    assert_eq!(got.len(), 10, "every acked push was delivered");

    let (status, metrics) = request(queue.admin, "GET", "/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("wsmq_msgqueue_redis_round_trip_seconds_count"),
        "{metrics}"
    );
    let reconnects = metrics
        .lines()
        .find(|line| line.starts_with("wsmq_msgqueue_redis_reconnects_total "))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(reconnects.is_some_and(|n| n >= 1), "{metrics}");
    queue.stop().await;
    Ok(())
}

#[tokio::test]
async fn msgqueue_starts_while_redis_is_unreachable_and_becomes_ready_once_it_answers() -> TestResult
{
    let mut redis = RedisServer::start().await?;
    redis.kill().await?;
    let dir = tempfile::tempdir()?;
    let queue = Running::start(redis_config(dir.path(), &redis)).await;
    await_readyz(queue.admin, 503).await?;
    redis.restart().await?;
    await_readyz(queue.admin, 200).await?;
    queue.stop().await;
    Ok(())
}

#[tokio::test]
async fn msgqueue_authenticates_to_redis_with_the_password_in_the_url_and_never_shows_it()
-> TestResult {
    let redis = RedisServer::with_password("s3cr3t-redis").await?;
    let dir = tempfile::tempdir()?;
    let mut wrong = redis_config(dir.path(), &redis);
    wrong.queue.redis_url = Some(redis.url().replace("s3cr3t-redis", "not-it"));
    let refused = Running::start(wrong).await;
    await_readyz(refused.admin, 503).await?;
    let (_, metrics) = request(refused.admin, "GET", "/metrics").await?;
    assert!(!metrics.contains("not-it"), "{metrics}");
    refused.stop().await;

    let queue = Running::start(redis_config(dir.path(), &redis)).await;
    await_readyz(queue.admin, 200).await?;
    let mut producer = Producer::connect(&queue.dialer(true), 3).await;
    producer.push(&items(1, 3)).await;
    assert_eq!(acked_upto(&producer.until_settled(3).await), Some(3));
    queue.stop().await;
    Ok(())
}

#[tokio::test]
async fn msgqueue_reaches_a_tls_redis_whose_certificate_chains_to_redis_ca() -> TestResult {
    let dir = tempfile::tempdir()?;
    wsmq_core::tls::ensure_dev_pki(dir.path())?;
    let redis = RedisServer::with_tls(&dir.path().join("tls")).await?;

    // Without --redis-ca the development CA is not trusted: never ready.
    let untrusted = Running::start(redis_config(dir.path(), &redis)).await;
    await_readyz(untrusted.admin, 503).await?;
    untrusted.stop().await;

    let mut config = redis_config(dir.path(), &redis);
    config.queue.redis_ca = Some(dir.path().join("tls").join("ca.pem"));
    let queue = Running::start(config).await;
    await_readyz(queue.admin, 200).await?;
    let mut producer = Producer::connect(&queue.dialer(true), 4).await;
    producer.push(&items(1, 3)).await;
    assert_eq!(acked_upto(&producer.until_settled(3).await), Some(3));
    queue.stop().await;
    Ok(())
}
