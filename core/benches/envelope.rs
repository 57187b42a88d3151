//! Micro-benchmarks of the per-message protocol work every message pays at least once: the publisher parsing and
//! validating a ws-go envelope (JSON or plain `topic content`) and re-encoding it canonically, the subscriber
//! parsing it again to find the topic, and the binary framing between the services and msgqueue (a PUSH batch
//! written by the publisher, a DELIVER batch walked by the subscriber).
//!
//! They guard the end-to-end throughput targets of issue 5 against regressions that a load test would only show
//! as noise: an extra allocation or copy here is paid per message, on every hop. Run with
//! `cargo bench -p wsmq-core --bench envelope` (add `-- --quick` for a short run).

use std::error::Error;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use wsmq_core::protocol::envelope::{Envelope, Publish};
use wsmq_core::protocol::queue::{FrameReader, FrameWriter};

/// The topic of every benchmarked message: short, like most real routing keys.
const TOPIC: &str = "sensors.temperature";
/// Records per binary frame: a busy publisher or subscriber link batches about this many 64-byte messages.
const BATCH: usize = 256;

/// A content of `len` bytes that needs no JSON escaping: the common case, parsed without allocating.
fn plain_content(len: usize) -> String {
    "0123456789abcdef".chars().cycle().take(len).collect()
}

/// A content of `len` bytes with quotes, backslashes and newlines: the slower path that unescapes and re-escapes.
fn escaped_content(len: usize) -> String {
    "say \"hi\"\\\n\t".chars().cycle().take(len).collect()
}

/// The JSON frame a ws-go client publishes.
fn json_frame(content: &str) -> String {
    let envelope = Envelope {
        topic: TOPIC.into(),
        content: content.into(),
    };
    String::from_utf8_lossy(&envelope.encode()).into_owned()
}

/// The inputs of one size class, each named for the benchmark id.
fn cases() -> Vec<(&'static str, String)> {
    vec![
        ("64B", plain_content(64)),
        ("4KiB", plain_content(4096)),
        ("64B_escaped", escaped_content(64)),
    ]
}

/// What the publisher does per text frame: `Publish::parse_text`, for the JSON and the plain form.
fn publisher_parse(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    let mut group = c.benchmark_group("envelope/publisher_parse");
    for (name, content) in cases() {
        for (form, frame) in [
            ("json", json_frame(&content)),
            ("plain", format!("{TOPIC} {content}")),
        ] {
            Publish::parse_text(&frame).envelope?;
            group.throughput(Throughput::Bytes(frame.len() as u64));
            group.bench_with_input(BenchmarkId::new(form, name), &frame, |b, frame| {
                b.iter(|| Publish::parse_text(black_box(frame)));
            });
        }
    }
    group.finish();
    Ok(())
}

/// What the publisher forwards: the canonical encoding of the envelope it just parsed from the client's frame.
fn publisher_encode(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    let mut group = c.benchmark_group("envelope/encode");
    for (name, content) in cases() {
        let frame = json_frame(&content);
        let envelope = Envelope::parse_json(frame.as_bytes())?;
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &envelope, |b, e| {
            b.iter(|| black_box(e).encode());
        });
    }
    group.finish();
    Ok(())
}

/// What the subscriber does per delivered message: parse the canonical bytes to learn the topic.
fn subscriber_parse(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    let mut group = c.benchmark_group("envelope/subscriber_parse");
    for (name, content) in cases() {
        let frame = json_frame(&content).into_bytes();
        Envelope::parse_json(&frame)?;
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, frame| {
            b.iter(|| Envelope::parse_json(black_box(frame)));
        });
    }
    group.finish();
    Ok(())
}

/// Counts the deliveries in `frame`, or `None` if it does not parse: the check before benchmarking the walk.
fn count_deliveries(frame: &Bytes, max_payload: usize) -> Option<usize> {
    let mut reader = FrameReader::new(frame.clone(), max_payload);
    let mut n = 0;
    while reader.next_delivery().ok()?.is_some() {
        n += 1;
    }
    Some(n)
}

/// Counts the push records in `frame`, or `None` if it does not parse.
fn count_pushes(frame: &Bytes, max_payload: usize) -> Option<usize> {
    let mut reader = FrameReader::new(frame.clone(), max_payload);
    let mut n = 0;
    while reader.next_push().ok()?.is_some() {
        n += 1;
    }
    Some(n)
}

/// The binary framing of a batch of [`BATCH`] canonical 64-byte-content envelopes, in all four directions that
/// carry messages: PUSH written (publisher) and read (msgqueue), DELIVER written (msgqueue) and read (subscriber).
fn queue_framing(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    let payload = Envelope {
        topic: TOPIC.into(),
        content: plain_content(64).into(),
    }
    .encode();
    let max_payload = payload.len();
    let id = format!("{BATCH}x{}B", payload.len());
    let mut writer = FrameWriter::with_capacity(BATCH * (payload.len() + 16));
    for seq in 0..BATCH as u64 {
        writer.push(seq, &payload);
    }
    let push_frame = writer.take();
    for id in 0..BATCH as u64 {
        writer.deliver(id, false, None, &payload);
    }
    let deliver_frame = writer.take();
    if count_pushes(&push_frame, max_payload) != Some(BATCH)
        || count_deliveries(&deliver_frame, max_payload) != Some(BATCH)
    {
        return Err(format!("a test frame does not hold {BATCH} readable records").into());
    }

    let mut group = c.benchmark_group("queue_frame");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("push_write", &id), |b| {
        b.iter(|| {
            for seq in 0..BATCH as u64 {
                writer.push(seq, black_box(&payload));
            }
            writer.take()
        });
    });
    group.bench_function(BenchmarkId::new("push_read", &id), |b| {
        b.iter(|| {
            let mut reader = FrameReader::new(black_box(&push_frame).clone(), max_payload);
            while let Ok(Some(record)) = reader.next_push() {
                black_box(record);
            }
        });
    });
    group.bench_function(BenchmarkId::new("deliver_write", &id), |b| {
        b.iter(|| {
            for id in 0..BATCH as u64 {
                writer.deliver(id, false, None, black_box(&payload));
            }
            writer.take()
        });
    });
    group.bench_function(BenchmarkId::new("deliver_read", &id), |b| {
        b.iter(|| {
            let mut reader = FrameReader::new(black_box(&deliver_frame).clone(), max_payload);
            while let Ok(Some(delivery)) = reader.next_delivery() {
                black_box(delivery);
            }
        });
    });
    group.finish();
    Ok(())
}

/// Runs every benchmark; a benchmark whose input turns out invalid fails the run instead of measuring an error
/// path.
fn main() -> Result<(), Box<dyn Error>> {
    let mut c = Criterion::default().configure_from_args();
    publisher_parse(&mut c)?;
    publisher_encode(&mut c)?;
    subscriber_parse(&mut c)?;
    queue_framing(&mut c)?;
    c.final_summary();
    Ok(())
}
