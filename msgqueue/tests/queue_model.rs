//! Property test of the log and its consumer groups against a plain in-memory model, on the disk backend with tiny
//! segments and memory budget (so segments roll, get deleted and the backlog is read back), with crash-and-reopen
//! at random points: the queue is dropped without `close`, and whatever its last segment got after the last
//! durable push (lazily written acks) is cut at a random byte, as a crash can leave it. No durably acked push is
//! lost, and no group ever sees a gap or a reorder; a message comes again only if its ack may have been lost.

mod queue_common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use queue_common::disk;
use wsmq_msgqueue::queue::{
    ConsumeMode, Delivery, GroupName, Queue, QueueError, QueueOptions, StartAt, StorageError,
};

const GROUPS: [&str; 3] = ["default", "g1", "g2"];

#[derive(Debug, Clone)]
enum Op {
    /// Push this many messages and wait until they are durable (so they are acknowledged pushes).
    Push(u8),
    /// Attach a consumer to group `group`, take up to `take` deliveries, ack them if `ack`, detach.
    Consume { group: usize, take: u8, ack: bool },
    /// Drop the queue without closing it, cut what was written after the last durable push at this fraction
    /// (of 256) and open the directory again.
    Crash(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..40).prop_map(Op::Push),
        4 => (0..GROUPS.len(), 1u8..50, prop::bool::weighted(0.7))
            .prop_map(|(group, take, ack)| Op::Consume { group, take, ack }),
        1 => any::<u8>().prop_map(Op::Crash),
    ]
}

/// Deliveries without an ack after which the engine delivers a message alone (a suspected poison message).
const SUSPECT_AFTER: u32 = 2;

/// What the model knows about one message in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    status: Status,
    /// Deliveries since the last (re)open.
    deliveries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Not acked: must be delivered (again).
    Unacked,
    /// Acked, but the ack may not have been durable at a crash: it may come again, or not.
    MaybeAcked,
}

/// The model: for each group, the payload id of every message it has not (surely) acked, by payload id; payload
/// ids increase with push order, so they order the stream like offsets do.
#[derive(Debug, Default)]
struct Model {
    next_payload: u64,
    groups: Vec<BTreeMap<u64, Entry>>,
    /// Acks of each group not yet known durable (a later durable push makes them so).
    fresh_acks: Vec<Vec<u64>>,
}

const UNACKED: Entry = Entry {
    status: Status::Unacked,
    deliveries: 0,
};

fn options() -> QueueOptions {
    QueueOptions {
        segment_size: 512,
        memory_budget: 256,
        max_bytes: 64 * 1024 * 1024,
        // Dead letters are tested elsewhere; here a message stays until its group acks it.
        max_deliveries: 1_000_000,
        ..QueueOptions::default()
    }
}

/// Opens the queue in `dir`, retrying while a dropped predecessor's writer still holds the directory lock.
fn reopen(dir: &std::path::Path) -> Queue {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match Queue::open(disk(dir), options()) {
            Ok((queue, _)) => return queue,
            Err(QueueError::Storage(StorageError::Locked(_)))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("reopen: {err}"),
        }
    }
}

fn payload_id(delivery: &Delivery) -> u64 {
    std::str::from_utf8(&delivery.payload)
        .ok()
        .and_then(|s| s.strip_prefix('m'))
        .and_then(|s| s.parse().ok())
        .expect("payload made by this test")
}

/// Takes up to `want` deliveries; waits for exactly `want` when `exact`, otherwise until nothing comes for a
/// moment.
async fn collect(
    consumer: &mut wsmq_msgqueue::queue::Consumer,
    want: usize,
    exact: bool,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < want {
        let missing = want - out.len();
        let wait = if exact {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(50)
        };
        match tokio::time::timeout(wait, consumer.next_batch(missing, &mut out)).await {
            Ok(result) => result.expect("next_batch"),
            Err(_) if exact => panic!("expected {want} deliveries, got {}", out.len()),
            Err(_) => break,
        }
    }
    out
}

/// The last segment file and its length: everything in it up to there is durable once recorded after a
/// `wait_durable`.
fn durable_point(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let last = queue_common::segment_files(dir)
        .pop()
        .expect("a segment exists");
    let len = std::fs::metadata(&last).expect("stat").len();
    (last, len)
}

/// Waits until the dropped queue's writer released the directory, then cuts the last segment between its durable
/// point and its end.
fn tear(dir: &std::path::Path, durable: &(std::path::PathBuf, u64), fraction: u8) {
    let lock = std::fs::File::open(dir.join("LOCK")).expect("lock file");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lock.try_lock().is_err() {
        assert!(std::time::Instant::now() < deadline, "writer never let go");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(lock);
    let (path, durable_len) = durable;
    if queue_common::segment_files(dir).last() != Some(path) {
        return;
    }
    let len = std::fs::metadata(path).expect("stat").len();
    let cut = durable_len + (len.saturating_sub(*durable_len)) * u64::from(fraction) / 256;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(cut))
        .expect("cut the segment");
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut queue = reopen(dir.path());
    let mut model = Model {
        groups: vec![BTreeMap::new(); GROUPS.len()],
        fresh_acks: vec![Vec::new(); GROUPS.len()],
        ..Model::default()
    };
    // Every group exists before the first push, so each must get every message. The default group is joined
    // first: a default group nobody joined would be handed over to the first named group.
    for name in &GROUPS {
        let name: GroupName = name.parse().expect("group name");
        drop(
            queue
                .join(&name, StartAt::Tail, ConsumeMode::Acked)
                .await
                .expect("join"),
        );
    }
    let mut durable = durable_point(dir.path());
    for op in ops {
        match op {
            Op::Push(count) => {
                let mut last = None;
                for _ in 0..count {
                    let id = model.next_payload;
                    model.next_payload += 1;
                    let pushed = queue
                        .push(None, Bytes::from(format!("m{id}")))
                        .expect("push");
                    last = Some(pushed.durable());
                    for group in &mut model.groups {
                        group.insert(id, UNACKED);
                    }
                }
                if let Some(token) = last {
                    queue.wait_durable(token).await.expect("durable");
                    durable = durable_point(dir.path());
                    // Acks appended before this push are durable with it.
                    for acks in &mut model.fresh_acks {
                        acks.clear();
                    }
                }
            }
            Op::Consume { group, take, ack } => {
                let name: GroupName = GROUPS[group].parse().expect("group name");
                let mut consumer = queue
                    .join(&name, StartAt::Tail, ConsumeMode::Acked)
                    .await
                    .expect("join");
                let want = usize::from(take);
                consumer.grant(u32::from(take));
                let expected = &mut model.groups[group];
                let certain = expected.values().all(|e| e.status == Status::Unacked);
                // Returned messages come first, in order; a suspect goes out alone.
                let mut count = 0;
                for entry in expected.values() {
                    if count == want {
                        break;
                    }
                    if entry.deliveries >= SUSPECT_AFTER {
                        count = count.max(1);
                        break;
                    }
                    count += 1;
                }
                let got = if certain {
                    collect(&mut consumer, count, true).await
                } else {
                    collect(&mut consumer, want, false).await
                };
                let ids: Vec<u64> = got.iter().map(payload_id).collect();
                prop_assert!(
                    ids.windows(2).all(|w| w[0] < w[1]),
                    "group {} got a reorder: {ids:?}",
                    GROUPS[group]
                );
                for id in &ids {
                    prop_assert!(
                        expected.contains_key(id),
                        "group {} got {id}, which it had durably acked",
                        GROUPS[group]
                    );
                }
                let last = ids.last().copied();
                let suspect =
                    |entry: Option<&Entry>| entry.is_some_and(|e| e.deliveries >= SUSPECT_AFTER);
                let stopped_at_suspect = match last {
                    Some(l) => {
                        suspect(expected.get(&ids[0]))
                            || suspect(expected.range(l + 1..).next().map(|(_, e)| e))
                    }
                    None => suspect(expected.values().next()),
                };
                let complete = ids.len() < want && !stopped_at_suspect;
                for (&id, entry) in expected.iter() {
                    let passed = last.is_some_and(|l| id < l) || complete;
                    if passed && entry.status == Status::Unacked {
                        prop_assert!(
                            ids.contains(&id),
                            "group {} skipped {id}: got {ids:?}",
                            GROUPS[group]
                        );
                    }
                }
                // What was passed over but maybe acked was acked after all.
                expected.retain(|&id, entry| {
                    !(entry.status == Status::MaybeAcked
                        && !ids.contains(&id)
                        && (last.is_some_and(|l| id < l) || complete))
                });
                for &id in &ids {
                    let entry = expected.entry(id).or_insert(UNACKED);
                    entry.status = Status::Unacked;
                    entry.deliveries += 1;
                }
                if ack {
                    let delivery_ids: Vec<u64> = got.iter().map(|d| d.id).collect();
                    prop_assert_eq!(consumer.ack(&delivery_ids), delivery_ids.len());
                    for id in &ids {
                        expected.remove(id);
                    }
                    model.fresh_acks[group].extend(ids);
                }
                drop(consumer);
            }
            Op::Crash(fraction) => {
                drop(queue);
                tear(dir.path(), &durable, fraction);
                queue = reopen(dir.path());
                durable = durable_point(dir.path());
                // Delivery counts live in memory.
                for group in &mut model.groups {
                    for entry in group.values_mut() {
                        entry.deliveries = 0;
                    }
                }
                for (group, acks) in model.fresh_acks.iter_mut().enumerate() {
                    for id in acks.drain(..) {
                        model.groups[group].insert(
                            id,
                            Entry {
                                status: Status::MaybeAcked,
                                deliveries: 0,
                            },
                        );
                    }
                }
            }
        }
    }
    queue.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn groups_over_the_disk_log_lose_no_durable_push_and_see_no_gap_or_reorder_across_crashes(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(ops))?;
    }
}
