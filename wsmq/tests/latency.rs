//! The per-hop latency histograms on `/metrics`: after traffic through the whole stack, each counts every
//! message that passed its hop (and a fan-out delivery once per client).

mod common;

use common::*;
use wsmq::Service;
use wsmq_core::protocol::client::ServerFrame;
use wsmq_core::protocol::{PUBLISH_PATH, SUBSCRIBE_PATH};
use wsmq_testkit::admin::request;
use wsmq_testkit::wait::eventually;

/// The value of the sample `name` (without labels) in the Prometheus text `metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn every_hop_histogram_counts_each_message_that_passed_it() {
    const MESSAGES: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let stack = wsmq::bind(config(dir.path(), ALL)).await.unwrap();
    let (pub_port, sub_port) = (
        stack.publisher_addr().unwrap().port(),
        stack.subscriber_addr().unwrap().port(),
    );
    let admin = |service| stack.admin_addr(service).unwrap();
    let (msgqueue, publisher, subscriber) = (
        admin(Service::Msgqueue),
        admin(Service::Publisher),
        admin(Service::Subscriber),
    );
    let running = Running::start(stack);

    let mut first = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut first, "hops").await;
    let mut second = client(dir.path(), sub_port, SUBSCRIBE_PATH).await;
    subscribe(&mut second, "hops").await;
    let mut producer = client(dir.path(), pub_port, PUBLISH_PATH).await;
    for id in 0..MESSAGES {
        publish(&mut producer, "hops", &format!("m{id}"), id).await;
    }
    for id in 0..MESSAGES {
        assert_eq!(
            next_frame(&mut producer).await,
            ServerFrame::Ack { id: id.to_string() }
        );
    }
    for subscriber in [&mut first, &mut second] {
        for _ in 0..MESSAGES {
            assert!(matches!(
                next_frame(subscriber).await,
                ServerFrame::Message { .. }
            ));
        }
    }

    // Each hop records after its own write or ack, which may land just after the client saw the result.
    let per_message = MESSAGES as f64;
    let expected = [
        (
            publisher,
            "wsmq_publisher_publish_duration_seconds",
            per_message,
        ),
        (msgqueue, "wsmq_msgqueue_push_duration_seconds", per_message),
        (
            msgqueue,
            "wsmq_msgqueue_delivery_duration_seconds",
            per_message,
        ),
        (
            subscriber,
            "wsmq_subscriber_delivery_duration_seconds",
            2.0 * per_message,
        ),
    ];
    for (admin, name, count) in expected {
        let count_name = format!("{name}_count");
        let inf_name = format!("{name}_bucket{{le=\"+Inf\"}}");
        eventually(&format!("{count_name} to reach {count}"), || async {
            let metrics = request(admin, "GET", "/metrics").await.unwrap().1;
            sample(&metrics, &count_name) == Some(count)
        })
        .await
        .unwrap();
        let metrics = request(admin, "GET", "/metrics").await.unwrap().1;
        assert_eq!(sample(&metrics, &inf_name), Some(count), "{metrics}");
        let sum = sample(&metrics, &format!("{name}_sum")).unwrap();
        assert!(sum > 0.0, "{name}: every hop takes some time: {metrics}");
    }
    running.stop().await;
}
