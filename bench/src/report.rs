//! Results: latency histograms shared by many connection tasks, percentile summaries, and the report printed as
//! a human table or as one line of JSON.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

/// Highest latency a histogram records exactly (one hour, in nanoseconds); larger values saturate.
const MAX_LATENCY_NANOS: u64 = 3_600_000_000_000;
/// Histogram precision: three significant digits, i.e. within 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Independent histograms, so thousands of receiver tasks rarely contend for one lock.
const SHARDS: usize = 8;
/// Samples a task buffers before taking a shard's lock.
const BUFFER_SAMPLES: usize = 512;

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: creation only fails for low < 1, high < 2 * low or precision > 5.
    Histogram::new_with_bounds(1, MAX_LATENCY_NANOS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Latency samples (nanoseconds) from many tasks. One histogram per task would cost hundreds of KiB each,
/// too much at 10,000 subscribers; tasks buffer samples and flush them into a few shared shards instead.
#[derive(Clone)]
pub struct Latencies {
    shards: Arc<[Mutex<Histogram<u64>>]>,
    next: Arc<AtomicUsize>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Latencies {
    /// A per-task buffer that flushes into one of the shards when full and when dropped.
    pub fn buffer(&self) -> LatencyBuffer {
        LatencyBuffer {
            sink: self.clone(),
            shard: self.next.fetch_add(1, Ordering::Relaxed) % SHARDS,
            samples: Vec::with_capacity(BUFFER_SAMPLES),
        }
    }

    /// All samples flushed so far, in one histogram.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            // Every shard has the same bounds, so adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }

    /// Every recorded value with its count, for sending a histogram to another process.
    pub fn recorded(&self) -> Vec<(u64, u64)> {
        self.merged()
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Adds what another process [recorded](Self::recorded).
    pub fn record_counts(&self, recorded: &[(u64, u64)]) {
        let mut shard = self.shards[0].lock();
        for &(nanos, count) in recorded {
            shard.saturating_record_n(nanos.max(1), count);
        }
    }

    /// Percentiles of all samples flushed so far.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.merged())
    }
}

/// Samples of one task on their way into [`Latencies`].
pub struct LatencyBuffer {
    sink: Latencies,
    shard: usize,
    samples: Vec<u64>,
}

impl LatencyBuffer {
    /// Records one latency in nanoseconds.
    pub fn record(&mut self, nanos: u64) {
        self.samples.push(nanos);
        if self.samples.len() >= BUFFER_SAMPLES {
            self.flush();
        }
    }

    /// Moves buffered samples into the shared histogram.
    pub fn flush(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let mut shard = self.sink.shards[self.shard].lock();
        for &nanos in &self.samples {
            shard.saturating_record(nanos.max(1));
        }
        drop(shard);
        self.samples.clear();
    }
}

impl Drop for LatencyBuffer {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Latency percentiles in microseconds, the unit the targets are stated in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        Self {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Events per second over `nanos` nanoseconds (0 when no time passed).
pub fn per_second(events: u64, nanos: u64) -> f64 {
    if nanos == 0 {
        0.0
    } else {
        events as f64 * 1e9 / nanos as f64
    }
}

/// A scenario's results: named values in the order they were added.
#[derive(Debug, Clone)]
pub struct Report {
    scenario: &'static str,
    rows: Vec<(Cow<'static, str>, Value)>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            rows: Vec::new(),
        }
    }

    /// Adds one value.
    pub fn add(&mut self, key: &'static str, value: impl Serialize) {
        self.rows.push((
            Cow::Borrowed(key),
            serde_json::to_value(value).unwrap_or(Value::Null),
        ));
    }

    /// The report of a `--repeat` run: how many runs, then for every figure that differs between runs its
    /// value per run and a verdict over them: the worst for latencies (the run with the highest p99), the median
    /// for rates (keys ending in `_per_s`), the sum for counts of things that went wrong (`lost`,
    /// `duplicates`, `reordered`), and every run's full report last.
    pub fn repeated(runs: &[Report]) -> Report {
        let Some(first) = runs.first() else {
            return Report::new("repeat");
        };
        let mut report = Report::new(first.scenario);
        report.add("runs", runs.len());
        for (key, value) in &first.rows {
            let values: Vec<&Value> = runs.iter().filter_map(|run| run.get(key)).collect();
            let p99 = |v: &Value| v.get("p99_us").and_then(Value::as_f64);
            if p99(value).is_some() {
                let worst = values
                    .iter()
                    .copied()
                    .max_by(|a, b| p99(a).unwrap_or(0.0).total_cmp(&p99(b).unwrap_or(0.0)));
                report.add_owned(format!("{key}_worst"), worst);
                let per_run: Vec<Option<f64>> = values.iter().map(|v| p99(v)).collect();
                report.add_owned(format!("{key}_p99_us_per_run"), per_run);
            } else if key.ends_with("_per_s") {
                let mut rates: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
                rates.sort_by(f64::total_cmp);
                report.add_owned(format!("{key}_median"), rates.get(rates.len() / 2));
                let per_run: Vec<Option<f64>> = values.iter().map(|v| v.as_f64()).collect();
                report.add_owned(format!("{key}_per_run"), per_run);
            } else if matches!(key.as_ref(), "lost" | "duplicates" | "reordered") {
                let total: u64 = values.iter().filter_map(|v| v.as_u64()).sum();
                report.add_owned(format!("{key}_total"), total);
            }
        }
        let all: Vec<Value> = runs
            .iter()
            .map(|run| serde_json::from_str(&run.to_json_line()).unwrap_or(Value::Null))
            .collect();
        report.add("run_reports", all);
        report
    }

    /// Adds one value under a key made at run time.
    fn add_owned(&mut self, key: String, value: impl Serialize) {
        self.rows.push((
            Cow::Owned(key),
            serde_json::to_value(value).unwrap_or(Value::Null),
        ));
    }

    /// The value stored under `key`, for callers and tests that check a figure.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.rows.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// One line of JSON: `{"scenario": .., <key>: <value>, ..}`.
    pub fn to_json_line(&self) -> String {
        let mut map = serde_json::Map::new();
        map.insert("scenario".into(), Value::from(self.scenario));
        for (key, value) in &self.rows {
            map.insert(key.to_string(), value.clone());
        }
        Value::Object(map).to_string()
    }

    /// A two-column table; latency summaries become one line of percentiles.
    pub fn to_table(&self) -> String {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("wsmq-bench {}\n", self.scenario);
        for (key, value) in &self.rows {
            let _ = writeln!(out, "  {key:<width$}  {}", human(value));
        }
        out
    }
}

fn human(value: &Value) -> String {
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(i), _) => group_thousands(i),
            (None, Some(f)) if f.abs() >= 100.0 => {
                let sign = if f < 0.0 { "-" } else { "" };
                format!("{sign}{}", group_thousands(f.abs().round() as u64))
            }
            (None, Some(f)) => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::Object(map) if map.contains_key("p99_us") => {
            let get = |k: &str| map.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            format!(
                "p50 {} · p90 {} · p99 {} · p99.9 {} · max {}  ({} samples)",
                micros(get("p50_us")),
                micros(get("p90_us")),
                micros(get("p99_us")),
                micros(get("p999_us")),
                micros(get("max_us")),
                group_thousands(get("count") as u64),
            )
        }
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread_are_where_expected() {
        let latencies = Latencies::default();
        let mut buf = latencies.buffer();
        for us in 1..=1_000u64 {
            buf.record(us * 1_000);
        }
        drop(buf);
        let s = latencies.summary();
        assert_eq!(s.count, 1_000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p90_us, 900.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert!(close(s.max_us, 1_000.0), "{s:?}");
    }

    #[test]
    fn samples_from_many_buffers_are_merged() {
        let latencies = Latencies::default();
        for _ in 0..20 {
            let mut buf = latencies.buffer();
            buf.record(5_000);
            buf.record(0);
        }
        let s = latencies.summary();
        assert_eq!(s.count, 40);
        assert!(s.max_us >= 4.99 && s.max_us <= 5.01, "{s:?}");
    }

    #[test]
    fn empty_histogram_summarises_to_zero_and_rates_handle_zero_time() {
        assert_eq!(
            LatencySummary::of(&new_histogram()),
            LatencySummary::default()
        );
        assert_eq!(per_second(10, 0), 0.0);
        assert_eq!(per_second(3_000, 1_500_000_000), 2_000.0);
    }

    #[test]
    fn report_renders_json_line_and_table() {
        let mut r = Report::new("queue");
        r.add("messages", 1_234_567u64);
        r.add("rate_per_s", 2_500.5f64);
        r.add("delta", -1_234.4f64);
        r.add(
            "latency",
            LatencySummary {
                count: 3,
                p50_us: 10.0,
                p90_us: 20.0,
                p99_us: 30.0,
                p999_us: 40.0,
                max_us: 50_000.0,
            },
        );
        let json: Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(json["scenario"], "queue");
        assert_eq!(json["messages"], 1_234_567);
        assert_eq!(json["latency"]["p99_us"], 30.0);
        assert!(!r.to_json_line().contains('\n'));
        let table = r.to_table();
        assert!(table.contains("1,234,567"), "{table}");
        assert!(table.contains("2,501"), "{table}");
        assert!(table.contains("-1,234"), "{table}");
        assert!(table.contains("p99 30 µs"), "{table}");
        assert!(table.contains("max 50.0 ms"), "{table}");
    }
}
