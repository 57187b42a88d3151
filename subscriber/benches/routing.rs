//! Routing micro-benchmarks: what the subscriber's link spends per delivery between msgqueue's frame and the
//! clients' queues (topic lookup, offering the shared frame to each subscriber, the writer draining its queue).
//! They guard the hot path the `e2e` and `fanout` scenarios of `wsmq-bench` exercise end to end.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;
use wsmq_core::topic::Pattern;
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
            let client = router.register(Closer::new(shutdown), false);
            router.subscribe("bench", &client);
            let outgoing = client.outgoing();
            (client, outgoing)
        })
        .collect();
    for topic in 0..other_topics {
        let client = router.register(Closer::new(shutdown), false);
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

/// Issue 12's routing target: a message to a topic with 16 exact subscribers among 10,000 exact subscriptions,
/// without and then with 10,000 wildcard subscriptions elsewhere (half of them under the topic's own first token,
/// so the trie walk is not a single miss at the root; none matches, so both cases offer to the same 16 clients).
/// The wildcard case should cost at most twice the exact-only one.
fn wildcards(c: &mut Criterion) {
    let shutdown = CancellationToken::new();
    let frame = Utf8Bytes::from_static(FRAME);
    let mut group = c.benchmark_group("wildcards");
    let (router, mut clients) = setup(0, 10_000, &shutdown);
    for _ in 0..16 {
        let client = router.register(Closer::new(&shutdown), false);
        router.subscribe("bench.live", &client);
        let outgoing = client.outgoing();
        clients.push((client, outgoing));
    }
    let mut route_once = |b: &mut criterion::Bencher<'_>, router: &Router| {
        b.iter(|| {
            black_box(router.route(black_box("bench.live"), &frame));
            for (_, outgoing) in &mut clients {
                black_box(outgoing.ready());
            }
        });
    };
    group.throughput(Throughput::Elements(16));
    group.bench_function("exact_only", |b| route_once(b, &router));
    let mut wildcard_holders = Vec::new();
    for n in 0..10_000 {
        let client = router.register(Closer::new(&shutdown), false);
        let text = if n % 2 == 0 {
            format!("w{n}.>")
        } else {
            format!("bench.live.x{n}.*")
        };
        if let Ok(pattern) = Pattern::parse(&text) {
            router.subscribe_pattern(&pattern, &client);
        }
        wildcard_holders.push(client);
    }
    group.bench_function("with_10000_wildcards", |b| route_once(b, &router));
    group.finish();
}

criterion_group!(benches, route, wildcards);
criterion_main!(benches);
