//! What the per-hop latency histograms cost on the hot path: reading the clock, and recording into a
//! `LatencyHistogram` from one thread and from two at once (the services' two workers share each histogram).
//! Run with `cargo bench -p wsmq-core --bench latency` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use wsmq_core::metrics::LatencyHistogram;

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency");
    group.bench_function("clock_read", |b| b.iter(|| black_box(Instant::now())));
    let histogram = LatencyHistogram::default();
    let took = Duration::from_micros(250);
    group.bench_function("observe", |b| {
        b.iter(|| histogram.observe_n(black_box(took), black_box(1)));
    });
    group.bench_function("observe_contended", |b| {
        let other = histogram.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = stop.clone();
        let rival = std::thread::spawn(move || {
            while !running.load(std::sync::atomic::Ordering::Relaxed) {
                other.observe_n(took, 1);
            }
        });
        b.iter(|| histogram.observe_n(black_box(took), black_box(1)));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = rival.join();
    });
    group.finish();
}

criterion::criterion_group!(benches, latency);
criterion::criterion_main!(benches);
