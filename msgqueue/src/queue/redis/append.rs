//! The appender: one task per msgqueue process that applies submitted pushes to Redis, many per script call
//! (`append.lua`), with a few calls in flight at once so Redis commits several batches per fsync.
//!
//! Pipelining must not reorder a producer's messages: dedup keeps a high-water mark per producer, so a batch
//! applied after a later one of the same producer would be taken for a retry and dropped. Each batch therefore
//! carries a number, and the script applies batch `n` only right after batch `n - 1` of this process (a counter in
//! Redis): a batch whose reply was lost is recognised as applied when sent again, and one that overtook an earlier
//! failed batch is refused and sent again after it. After any failure everything in flight is waited for and the
//! batches are resent one at a time, oldest first, until Redis takes them; pushes wait meanwhile (the bounded
//! submission queue then refuses new ones), and nothing is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;

use super::{
    Item, MAX_SUBMISSIONS, RETRY_MIN, RedisError, Shared, Submission, back_off, millis, now_ms,
};
use crate::queue::DEFAULT_GROUP;
use crate::queue::history::{Epoch, Position};

/// Pushes per script call: large enough that one round trip carries many messages.
const MAX_APPEND: usize = 2048;
/// Payload bytes per script call.
const MAX_APPEND_BYTES: usize = 4 << 20;
/// Script calls in flight at once.
const IN_FLIGHT: usize = 4;
/// How long a producer's dedup mark is kept after its last push: a retry later than this is stored again. Also
/// how long Redis remembers this process's batch counter after its last batch.
const DEDUP_TTL: Duration = Duration::from_secs(24 * 3600);

/// One script call's worth of pushes.
struct Batch {
    /// Its place in this process's sequence of batches (from 1).
    number: u64,
    items: Vec<Item>,
    /// The token of the last submission that ends in this batch: durable once the batch is applied.
    completes: Option<u64>,
}

/// What Redis said to a batch.
enum Outcome {
    /// Stored now (or, when resent, already before): `(stored, duplicates)`.
    Applied(u64, u64),
    /// An earlier batch of this process is missing: send that first.
    OutOfOrder,
    Failed(RedisError),
}

/// Applies submissions in order until the queue closes; then applies what was submitted while Redis answers,
/// and marks the rest as never to be applied.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Submission>) {
    let mut pending: VecDeque<Arc<Batch>> = VecDeque::new();
    let mut in_flight = FuturesOrdered::new();
    let mut launched = 0;
    let mut next_number = 1;
    let mut submissions = Vec::new();
    let mut delay = RETRY_MIN;
    let mut warned = false;
    // After a failure, batches go one at a time (and the oldest may be forced: see `apply`) until one is taken.
    let mut recovering = false;
    loop {
        if pending.is_empty() {
            let received = tokio::select! {
                n = rx.recv_many(&mut submissions, MAX_SUBMISSIONS) => n,
                () = shared.closed.cancelled() => {
                    rx.close();
                    rx.recv_many(&mut submissions, MAX_SUBMISSIONS).await
                }
            };
            if received == 0 {
                break;
            }
        } else {
            while submissions.len() < MAX_SUBMISSIONS
                && let Ok(submission) = rx.try_recv()
            {
                submissions.push(submission);
            }
        }
        cut(&mut submissions, &mut pending, &mut next_number);
        let window = if recovering { 1 } else { IN_FLIGHT };
        while in_flight.len() < window && launched < pending.len() {
            let force = recovering && launched == 0;
            in_flight.push_back(apply(
                Arc::clone(&shared),
                Arc::clone(&pending[launched]),
                force,
            ));
            launched += 1;
        }
        let Some(outcome) = in_flight.next().await else {
            continue;
        };
        match outcome {
            Outcome::Applied(stored, duplicates) => {
                let c = &shared.counters;
                c.pushed.fetch_add(stored, Ordering::Relaxed);
                c.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                launched -= 1;
                if let Some(batch) = pending.pop_front()
                    && let Some(token) = batch.completes
                {
                    shared.applied.send_modify(|a| a.upto = token);
                    shared.space.notify_waiters();
                }
                delay = RETRY_MIN;
                recovering = false;
                if warned {
                    warned = false;
                    tracing::info!(url = %shared.url, "pushes reach Redis again");
                }
            }
            Outcome::OutOfOrder | Outcome::Failed(_) => {
                if let Outcome::Failed(err) = &outcome
                    && !warned
                {
                    warned = true;
                    tracing::warn!(%err, "cannot store pushes in Redis; holding them back and retrying");
                }
                // What is still in flight may or may not be applied; resending tells.
                while in_flight.next().await.is_some() {}
                launched = 0;
                let gave_up = matches!(outcome, Outcome::Failed(_))
                    && !back_off(&shared.closed, &mut delay).await;
                if gave_up {
                    break;
                }
                recovering = true;
            }
        }
    }
    shared.applied.send_modify(|a| a.closed = true);
    shared.space.notify_waiters();
}

/// Cuts the received submissions into batches of at most [`MAX_APPEND`] pushes and [`MAX_APPEND_BYTES`].
fn cut(submissions: &mut Vec<Submission>, pending: &mut VecDeque<Arc<Batch>>, next: &mut u64) {
    let mut batch: Option<Batch> = None;
    let mut bytes = 0;
    for submission in submissions.drain(..) {
        for item in submission.items {
            let current = batch.get_or_insert_with(|| {
                bytes = 0;
                let number = *next;
                *next += 1;
                Batch {
                    number,
                    items: Vec::new(),
                    completes: None,
                }
            });
            bytes += item.payload.len();
            current.items.push(item);
            if current.items.len() >= MAX_APPEND || bytes >= MAX_APPEND_BYTES {
                pending.extend(batch.take().map(Arc::new));
            }
        }
        // The submission ends in the open batch, or (if that was just sealed) in the last sealed one.
        match batch.as_mut() {
            Some(open) => open.completes = Some(submission.token),
            None => {
                if let Some(last) = pending.back_mut().and_then(Arc::get_mut) {
                    last.completes = Some(submission.token);
                }
            }
        }
    }
    pending.extend(batch.map(Arc::new));
}

/// Runs `append.lua` for `batch`. `force` applies it whatever this process's counter in Redis says: only for the
/// oldest unapplied batch with nothing else in flight, when Redis lost the counter (wiped, or idle beyond its TTL).
async fn apply(shared: Arc<Shared>, batch: Arc<Batch>, force: bool) -> Outcome {
    let keys = &shared.keys;
    let mut invocation = shared.scripts.append.prepare_invoke();
    invocation
        .key(&keys.log)
        .key(&keys.marks)
        .key(&keys.seen)
        .key(format!("{}{}", keys.appenders, shared.instance))
        .arg(DEDUP_TTL.as_secs())
        .arg(now_ms())
        .arg(DEFAULT_GROUP)
        .arg(batch.number)
        .arg(u8::from(force))
        .arg(Epoch::random().to_string());
    invocation.key(&keys.topic).key(&keys.history);
    for item in &batch.items {
        match item.producer {
            Some(p) => invocation.arg(p.id).arg(p.seq),
            None => invocation.arg("").arg(0),
        };
        match &item.history {
            Some((topic, retention, _)) => invocation
                .arg(topic)
                .arg(retention.size)
                .arg(millis(retention.ttl)),
            None => invocation.arg("").arg(0).arg(0),
        };
        invocation.arg(&item.payload[..]);
    }
    match shared
        .invoke::<(i64, i64, Vec<(String, u64)>)>(&invocation, "append")
        .await
    {
        Ok((-1, _, _)) => Outcome::Applied(0, 0),
        Ok((-2, _, _)) => Outcome::OutOfOrder,
        Ok((stored, duplicates, placed)) => {
            place(&batch, &placed);
            Outcome::Applied(
                u64::try_from(stored).unwrap_or(0),
                u64::try_from(duplicates).unwrap_or(0),
            )
        }
        Err(err) => Outcome::Failed(err),
    }
}

/// Hands each pushed message with a topic the position `append.lua` gave it (`placed`, one per such message in
/// order; an empty epoch for a duplicate, which gets none). Done before the batch's token resolves, so whoever
/// waited for durability then finds it.
fn place(batch: &Batch, placed: &[(String, u64)]) {
    let placements = batch.items.iter().filter_map(|item| item.history.as_ref());
    for ((_, _, placement), (epoch, offset)) in placements.zip(placed) {
        if let Ok(epoch) = epoch.parse::<Epoch>() {
            placement.set(Position {
                epoch,
                offset: *offset,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::queue::redis::{RedisConfig, RedisQueue};
    use crate::queue::{Producer, QueueOptions};

    fn submission(token: u64, n: usize) -> Submission {
        Submission {
            items: (0..n)
                .map(|_| Item {
                    producer: None,
                    payload: Bytes::from_static(b"x"),
                    history: None,
                })
                .collect(),
            token,
        }
    }

    fn batch(number: u64, seqs: std::ops::RangeInclusive<u64>) -> Arc<Batch> {
        Arc::new(Batch {
            number,
            items: seqs
                .map(|seq| Item {
                    producer: Some(Producer { id: 1, seq }),
                    payload: Bytes::from(seq.to_string()),
                    history: None,
                })
                .collect(),
            completes: None,
        })
    }

    #[test]
    fn a_batch_completes_the_submissions_that_end_in_it() {
        let mut pending = VecDeque::new();
        let mut next = 1;
        let mut submissions = vec![
            submission(1, 3),
            submission(2, MAX_APPEND),
            submission(3, 1),
        ];
        cut(&mut submissions, &mut pending, &mut next);
        let shape: Vec<_> = pending
            .iter()
            .map(|b| (b.number, b.items.len(), b.completes))
            .collect();
        // Submission 2 is split: its end is in the second batch, which submission 3 also ends in.
        assert_eq!(shape, vec![(1, MAX_APPEND, Some(1)), (2, 4, Some(3))]);
        assert_eq!(next, 3);

        let mut submissions = vec![submission(4, MAX_APPEND), submission(5, 1)];
        cut(&mut submissions, &mut pending, &mut next);
        let tail: Vec<_> = pending
            .iter()
            .skip(2)
            .map(|b| (b.number, b.items.len(), b.completes))
            .collect();
        assert_eq!(tail, vec![(3, MAX_APPEND, Some(4)), (4, 1, Some(5))]);
    }

    #[tokio::test]
    async fn batches_apply_only_in_order_and_a_resent_batch_is_not_stored_twice() {
        let server = wsmq_testkit::redis::RedisServer::start()
            .await
            .expect("redis-server");
        let queue = RedisQueue::open(RedisConfig::new(server.url()), QueueOptions::default())
            .expect("open");
        let shared = Arc::clone(&queue.shared);
        let applied = |outcome: Outcome| match outcome {
            Outcome::Applied(stored, duplicates) => Some((stored, duplicates)),
            Outcome::OutOfOrder | Outcome::Failed(_) => None,
        };
        // Batch 2 overtook batch 1: refused, so batch 1's messages are not taken for retries afterwards.
        let second = batch(2, 4..=6);
        assert!(matches!(
            apply(Arc::clone(&shared), Arc::clone(&second), false).await,
            Outcome::OutOfOrder
        ));
        let first = batch(1, 1..=3);
        assert_eq!(
            applied(apply(Arc::clone(&shared), Arc::clone(&first), false).await),
            Some((3, 0))
        );
        // Batch 1 resent (its reply was lost): recognised, nothing stored again.
        assert_eq!(
            applied(apply(Arc::clone(&shared), first, false).await),
            Some((0, 0))
        );
        assert_eq!(
            applied(apply(Arc::clone(&shared), second, false).await),
            Some((3, 0))
        );
        // The counter lost (Redis wiped): a forced batch goes in and the sequence goes on from it.
        let mut conn = shared.conn.clone();
        let key = format!("{}{}", shared.keys.appenders, shared.instance);
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DEL");
        let fifth = batch(5, 7..=7);
        assert!(matches!(
            apply(Arc::clone(&shared), Arc::clone(&fifth), false).await,
            Outcome::OutOfOrder
        ));
        assert_eq!(
            applied(apply(Arc::clone(&shared), fifth, true).await),
            Some((1, 0))
        );
        let length: u64 = redis::cmd("XLEN")
            .arg(&shared.keys.log)
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        assert_eq!(length, 7);
        queue.close().await;
    }
}
