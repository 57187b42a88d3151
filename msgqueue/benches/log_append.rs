//! Micro-benchmarks of msgqueue's storage hot path: pushing messages into the disk log (one at a time and as one
//! frame's batch) and a full push → pop → ack cycle through the queue engine, on the memory and the disk backend.
//!
//! The disk log runs with `--fsync never`, so the figures are the engine's and the log's own cost (state lock,
//! dedup, record encoding into the writer's buffer) rather than the disk's: they guard the msgqueue throughput
//! targets of issue 5, where this work is paid once per message under the queue's single lock. Only the
//! timed sections push; the queue is drained between them untimed, so memory and disk use stay bounded however
//! long criterion runs. Run with `cargo bench -p wsmq-msgqueue --bench log_append` (add `-- --quick` for a short
//! run).

use std::error::Error;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use wsmq_msgqueue::queue::{
    Backend, ConsumeMode, Consumer, Delivery, FsyncPolicy, Producer, PushError, Pushed, Queue,
    QueueOptions,
};

/// Messages pushed per frame in the batch benchmarks: what a busy publisher link sends in one WebSocket message.
const BATCH: usize = 256;
/// Single pushes between two untimed drains, so the queue never holds more than this.
const DRAIN_EVERY: u64 = 1024;
/// Segment size of the benchmark log: small, so acked segments are deleted often and the log stays small on disk.
const SEGMENT_SIZE: u64 = 8 * 1024 * 1024;
/// Longest wait for a delivery or for space before the run is declared stuck and fails.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// The producer id of every benchmark push: reliable mode, as the publisher pushes.
const PRODUCER: u64 = 7;

/// Everything an error inside a benchmark closure is turned into, so `main` can report it.
type BenchError = Box<dyn Error>;

/// A queue with one attached consumer, the runtime its async calls run on and, for the disk backend, the
/// directory holding the log.
struct Fixture {
    rt: Runtime,
    queue: Queue,
    consumer: Consumer,
    next_seq: u64,
    deliveries: Vec<Delivery>,
    ids: Vec<u64>,
    pushed: Vec<Result<Pushed, PushError>>,
    /// Removed only after the queue has closed and its writer thread has flushed and exited.
    dir: Option<TempDir>,
}

impl Fixture {
    /// Opens a queue with fsync `never` on the disk log in a fresh temporary directory (`disk`) or in memory, with
    /// one consumer of `mode` granted a batch of credit.
    fn open(disk: bool, mode: ConsumeMode) -> Result<Self, BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let dir = disk.then(tempfile::tempdir).transpose()?;
        let backend = match &dir {
            Some(dir) => Backend::Disk {
                dir: dir.path().to_path_buf(),
            },
            None => Backend::Memory,
        };
        let options = QueueOptions {
            fsync: FsyncPolicy::Never,
            segment_size: SEGMENT_SIZE,
            ..QueueOptions::default()
        };
        let (queue, _) = Queue::open(backend, options)?;
        let mut consumer = queue.consumer(mode);
        consumer.grant(BATCH as u32);
        Ok(Self {
            rt,
            queue,
            consumer,
            next_seq: 1,
            deliveries: Vec::with_capacity(BATCH),
            ids: Vec::with_capacity(BATCH),
            pushed: Vec::with_capacity(BATCH),
            dir,
        })
    }

    /// The producer identity of the next push.
    fn next_producer(&mut self) -> Option<Producer> {
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(Producer { id: PRODUCER, seq })
    }

    /// Waits, bounded, until a push of `len` bytes would fit again after the log writer fell behind.
    fn wait_for_space(&self, len: usize) -> Result<(), BenchError> {
        self.rt
            .block_on(async {
                tokio::time::timeout(STUCK_AFTER, self.queue.wait_for_space(len)).await
            })
            .map_err(|_| "the log writer did not catch up".into())
    }

    /// Pushes `count` single messages, timing only the pushes (a `Full` from a writer backlog is waited out
    /// untimed and retried).
    fn timed_pushes(&mut self, count: u64, payload: &Bytes) -> Result<Duration, BenchError> {
        let mut elapsed = Duration::ZERO;
        let mut start = Instant::now();
        let mut done = 0;
        while done < count {
            let producer = self.next_producer();
            match self.queue.push(producer, payload.clone()) {
                Ok(Pushed::Stored { .. } | Pushed::Submitted { .. }) => done += 1,
                Err(PushError::Full) => {
                    elapsed += start.elapsed();
                    self.next_seq -= 1;
                    self.wait_for_space(payload.len())?;
                    start = Instant::now();
                }
                Ok(Pushed::Duplicate { .. }) => {
                    return Err("a fresh sequence number was a duplicate".into());
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(elapsed + start.elapsed())
    }

    /// Pushes one frame's worth of messages with one `push_batch` and checks every one was stored.
    fn push_batch(&mut self, payload: &Bytes) -> Result<(), BenchError> {
        let first = self.next_seq;
        self.next_seq += BATCH as u64;
        let items = (first..first + BATCH as u64)
            .map(|seq| (Some(Producer { id: PRODUCER, seq }), payload.clone()));
        self.pushed.clear();
        self.queue.push_batch(items, &mut self.pushed);
        match self
            .pushed
            .iter()
            .find(|r| !matches!(r, Ok(Pushed::Stored { .. })))
        {
            None => Ok(()),
            Some(Err(err)) => Err(err.clone().into()),
            Some(Ok(_)) => Err("a fresh sequence number was a duplicate".into()),
        }
    }

    /// Takes `count` deliveries off the queue (acking them in Acked mode), failing if they do not arrive in time.
    fn pop(&mut self, count: u64) -> Result<(), BenchError> {
        let mut left = count;
        while left > 0 {
            self.deliveries.clear();
            let max = usize::try_from(left).unwrap_or(usize::MAX).min(BATCH);
            let batch = self.consumer.next_batch(max, &mut self.deliveries);
            self.rt
                .block_on(async { tokio::time::timeout(STUCK_AFTER, batch).await })
                .map_err(|_| "pushed messages were not delivered")??;
            left = left.saturating_sub(self.deliveries.len() as u64);
            if self.consumer.mode() == ConsumeMode::Acked {
                self.ids.clear();
                self.ids.extend(self.deliveries.iter().map(|d| d.id));
                self.consumer.ack(&self.ids);
            }
        }
        Ok(())
    }

    /// Closes the queue (the log flushes and its writer exits), then removes the log directory.
    fn close(self) -> Result<(), BenchError> {
        let Self {
            rt,
            queue,
            consumer,
            dir,
            ..
        } = self;
        drop(consumer);
        rt.block_on(queue.close());
        if let Some(dir) = dir {
            dir.close()?;
        }
        Ok(())
    }
}

/// Pushing single messages into the disk log, 64 B and 4 KiB.
fn single_push(c: &mut Criterion) -> Result<(), BenchError> {
    let mut group = c.benchmark_group("disk_log/push");
    group.throughput(Throughput::Elements(1));
    for size in [64, 4096] {
        let payload = Bytes::from(vec![b'x'; size]);
        let mut fixture = Fixture::open(true, ConsumeMode::AutoAck)?;
        let mut failure = None;
        group.bench_function(BenchmarkId::from_parameter(format!("{size}B")), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 && failure.is_none() {
                    let n = left.min(DRAIN_EVERY);
                    match fixture
                        .timed_pushes(n, &payload)
                        .and_then(|t| fixture.pop(n).map(|()| t))
                    {
                        Ok(t) => elapsed += t,
                        Err(err) => failure = Some(err),
                    }
                    left -= n;
                }
                elapsed
            });
        });
        fixture.close()?;
        if let Some(err) = failure {
            return Err(err);
        }
    }
    group.finish();
    Ok(())
}

/// Pushing a frame's batch of 64 B messages into the disk log under one lock acquisition (the group the writer
/// then commits with one write).
fn batch_push(c: &mut Criterion) -> Result<(), BenchError> {
    let mut group = c.benchmark_group("disk_log/push_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    let payload = Bytes::from(vec![b'x'; 64]);
    let mut fixture = Fixture::open(true, ConsumeMode::AutoAck)?;
    let mut failure = None;
    group.bench_function(BenchmarkId::from_parameter(format!("{BATCH}x64B")), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                if failure.is_some() {
                    break;
                }
                let start = Instant::now();
                let pushed = fixture.push_batch(&payload);
                elapsed += start.elapsed();
                if let Err(err) = pushed.and_then(|()| fixture.pop(BATCH as u64)) {
                    failure = Some(err);
                }
            }
            elapsed
        });
    });
    group.finish();
    fixture.close()?;
    failure.map_or(Ok(()), Err)
}

/// A reliable-mode round trip through the engine: push a batch, deliver it to a consumer, ack it.
fn push_pop_ack(c: &mut Criterion) -> Result<(), BenchError> {
    let mut group = c.benchmark_group("queue/push_pop_ack");
    group.throughput(Throughput::Elements(BATCH as u64));
    let payload = Bytes::from(vec![b'x'; 64]);
    for (backend, disk) in [("memory", false), ("disk", true)] {
        let mut fixture = Fixture::open(disk, ConsumeMode::Acked)?;
        let mut failure = None;
        group.bench_function(BenchmarkId::new(backend, format!("{BATCH}x64B")), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    if let Err(err) = fixture
                        .push_batch(&payload)
                        .and_then(|()| fixture.pop(BATCH as u64))
                    {
                        failure = Some(err);
                        break;
                    }
                }
                start.elapsed()
            });
        });
        fixture.close()?;
        if let Some(err) = failure {
            return Err(err);
        }
    }
    group.finish();
    Ok(())
}

/// Runs every benchmark; a queue error fails the run instead of being measured.
fn main() -> Result<(), BenchError> {
    let mut c = Criterion::default().configure_from_args();
    single_push(&mut c)?;
    batch_push(&mut c)?;
    push_pop_ack(&mut c)?;
    c.final_summary();
    Ok(())
}
