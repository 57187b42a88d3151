//! Routing micro-benchmarks: what the subscriber's link spends per delivery between msgqueue's frame and the
//! clients' queues (topic lookup, offering the shared frame to each subscriber, the writer draining its queue).
//! They guard the hot path the `e2e` and `fanout` scenarios of `wsmq-bench` exercise end to end.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;
use wsmq_core::ws::{Closer, Outgoing};
use wsmq_subscriber::metrics::SubscriberMetrics;
use wsmq_subscriber::router::{Client, ClientOutgoing, Router, SlowClientPolicy};

/// A frame like the ones msgqueue delivers in the e2e scenario (a 64-byte content).
const FRAME: &str = r#"{"Topic":"bench","Content":"0123456789012345678901234567890123456789012345678901234567890123"}"#;

/// A router whose topic `bench` has `subscribers` clients, with a writer-side handle to drain each client's
/// queue, plus `other_topics` topics with one subscriber each so the lookup is not into a one-entry map.
fn setup(
    subscribers: usize,
    other_topics: usize,
    shutdown: &CancellationToken,
) -> (Router, Vec<(Arc<Client>, ClientOutgoing)>) {
    let router = Router::new(
        1 << 16,
        SlowClientPolicy::Close,
        SubscriberMetrics::default(),
    );
    let clients: Vec<_> = (0..subscribers)
        .map(|_| {
            let client = router.register(Closer::new(shutdown));
            router.subscribe("bench", &client);
            let outgoing = client.outgoing();
            (client, outgoing)
        })
        .collect();
    for topic in 0..other_topics {
        let client = router.register(Closer::new(shutdown));
        router.subscribe(&format!("topic-{topic}"), &client);
    }
    (router, clients)
}

fn route(c: &mut Criterion) {
    let shutdown = CancellationToken::new();
    let frame = Utf8Bytes::from_static(FRAME);
    let mut group = c.benchmark_group("route");
    for subscribers in [1usize, 16, 1000] {
        let (router, mut clients) = setup(subscribers, 1000, &shutdown);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("offer_and_drain", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    black_box(router.route(black_box("bench"), &frame));
                    for (_, outgoing) in &mut clients {
                        black_box(outgoing.ready());
                    }
                });
            },
        );
    }
    let (router, _clients) = setup(0, 1000, &shutdown);
    group.throughput(Throughput::Elements(1));
    group.bench_function("unrouted_lookup", |b| {
        b.iter(|| black_box(router.route(black_box("nobody-here"), &frame)));
    });
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
