//! Routing cost of wildcard subscriptions: one `PatternTrie` lookup with 10,000 exact subscriptions only, and
//! with 10,000 wildcard subscriptions added (issue 12's target: at most 2x the exact-only cost per message).
//! Run with `cargo bench -p wsmq-core --bench topic_trie` (add `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use wsmq_core::topic::{Pattern, PatternTrie, Topic};

const SUBSCRIPTIONS: usize = 10_000;

fn exact_only() -> PatternTrie<usize> {
    let mut trie = PatternTrie::new();
    for i in 0..SUBSCRIPTIONS {
        trie.insert(
            &Pattern::parse(&format!("sensors.t{i}.temperature")).unwrap(),
            i,
        );
    }
    trie
}

/// The exact subscriptions plus as many wildcard ones of three shapes: `sensors.t<i>.*` (matches the benchmarked
/// topic of its `i`), `sensors.*.humidity<i>` (a `*` branch with many literal children, matching nothing
/// benchmarked) and `alerts.t<i>.>` (another subtree).
fn mixed() -> PatternTrie<usize> {
    let mut trie = exact_only();
    for i in 0..SUBSCRIPTIONS {
        let pattern = match i % 3 {
            0 => format!("sensors.t{i}.*"),
            1 => format!("sensors.*.humidity{i}"),
            _ => format!("alerts.t{i}.>"),
        };
        trie.insert(&Pattern::parse(&pattern).unwrap(), SUBSCRIPTIONS + i);
    }
    trie
}

fn bench(c: &mut Criterion) {
    let texts: Vec<String> = (0..SUBSCRIPTIONS)
        .map(|i| format!("sensors.t{i}.temperature"))
        .collect();
    let topics: Vec<Topic<'_>> = texts.iter().map(|t| Topic::parse(t).unwrap()).collect();
    let mut group = c.benchmark_group("trie_lookup");
    group.throughput(Throughput::Elements(1));
    for (name, trie) in [
        ("exact_10k", exact_only()),
        ("exact_10k_wildcard_10k", mixed()),
    ] {
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 7919) % SUBSCRIPTIONS;
                let mut matched = 0;
                trie.for_each_match(black_box(topics[next]), |_| matched += 1);
                black_box(matched)
            })
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
