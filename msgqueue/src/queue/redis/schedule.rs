//! The Redis engine's schedule store, shared by every msgqueue process on the queue: a sorted set by due time
//! (`{prefix}:schedule`), the payloads in a hash (`{prefix}:schedule:payload`), the entries a process has
//! claimed in a second sorted set scored by the end of their lease (`{prefix}:schedule:claimed`), and the payload
//! bytes held (`{prefix}:schedule:bytes`), bounded by `--max-queue-bytes` as the local stores are.
//!
//! `schedule_put.lua` takes scheduled pushes (with per-producer dedup marks of their own) while they fit,
//! `schedule_claim.lua` moves due entries to the claimed set (and returns expired claims to the schedule first),
//! so two processes never push the same entry while both live; the claiming process pushes them into the log and
//! then deletes them (`schedule_remove.lua`, which gives their bytes back). A process that dies in between leaves its claims to expire and be pushed again by another:
//! at-least-once.

use std::time::Duration;

use redis::Script;

use super::{RedisError, RedisQueue, millis};
use crate::queue::schedule::{Due, DueKey, Scheduled, ScheduledPush};
use crate::queue::{PushError, QueueError, now_ms};

/// How long a claim keeps other processes off an entry; renewed while the log is full.
pub(super) const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Seconds a producer's dedup mark of scheduled pushes is remembered (as for pushes).
const MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The schedule's key names.
pub(super) struct ScheduleKeys {
    due: String,
    claimed: String,
    payloads: String,
    marks: String,
    arrivals: String,
    bytes: String,
}

impl ScheduleKeys {
    pub(super) fn new(tag: &str) -> Self {
        Self {
            due: format!("{tag}:schedule"),
            claimed: format!("{tag}:schedule:claimed"),
            payloads: format!("{tag}:schedule:payload"),
            marks: format!("{tag}:schedule:producer:"),
            arrivals: format!("{tag}:schedule:arrivals"),
            bytes: format!("{tag}:schedule:bytes"),
        }
    }
}

/// The schedule's scripts.
pub(super) struct ScheduleScripts {
    put: Script,
    claim: Script,
    remove: Script,
}

impl ScheduleScripts {
    pub(super) fn new() -> Self {
        Self {
            put: Script::new(include_str!("schedule_put.lua")),
            claim: Script::new(include_str!("schedule_claim.lua")),
            remove: Script::new(include_str!("schedule_remove.lua")),
        }
    }
}

impl RedisQueue {
    /// Takes `items` into the schedule in one script call; resolves once Redis applied it.
    pub(crate) async fn schedule(
        &self,
        items: Vec<ScheduledPush>,
    ) -> Vec<Result<Scheduled, PushError>> {
        let shared = &*self.shared;
        let max = shared.options.max_payload();
        let mut results: Vec<Result<Scheduled, PushError>> = Vec::with_capacity(items.len());
        let keys = &shared.keys.schedule;
        let mut invocation = shared.scripts.schedule.put.prepare_invoke();
        invocation
            .key(&keys.due)
            .key(&keys.payloads)
            .key(&keys.marks)
            .key(&keys.arrivals)
            .key(&keys.bytes)
            .arg(MARK_TTL.as_secs())
            .arg(shared.options.max_bytes);
        let mut sent = 0;
        for item in &items {
            let len = item.payload.len();
            if len > max {
                results.push(Err(PushError::TooLarge { len, max }));
            } else {
                invocation
                    .arg(item.producer.id)
                    .arg(item.producer.seq)
                    .arg(item.due_ms)
                    .arg(&item.payload[..]);
                results.push(Ok(Scheduled::Stored));
                sent += 1;
            }
        }
        if sent == 0 {
            return results;
        }
        let outcome = if shared.closed.is_cancelled() {
            Err(PushError::Closed)
        } else {
            match shared.invoke::<Vec<i64>>(&invocation, "schedule").await {
                Ok(flags) if flags.len() == sent => Ok(flags),
                Ok(_) => Err(PushError::Closed),
                Err(err) => {
                    tracing::warn!(%err, "cannot schedule messages in Redis");
                    Err(PushError::Closed)
                }
            }
        };
        if outcome.is_ok() {
            shared.schedule_changed.notify_one();
        }
        let taken = results.iter_mut().filter(|result| result.is_ok());
        match outcome {
            Ok(flags) => {
                for (result, flag) in taken.zip(flags) {
                    match flag {
                        0 => *result = Ok(Scheduled::Duplicate),
                        2 => *result = Err(PushError::Full),
                        _ => {}
                    }
                }
            }
            Err(err) => taken.for_each(|result| *result = Err(err.clone())),
        }
        results
    }

    /// Claims up to `max` entries due at `now` for this process, appending them to `out`; returns when the
    /// scheduler should look again at the latest (the next due time or claim expiry), and sets the gauge of
    /// waiting entries.
    pub(crate) async fn take_due(
        &self,
        now: u64,
        max: usize,
        out: &mut Vec<Due>,
    ) -> Result<Option<u64>, QueueError> {
        let shared = &*self.shared;
        if shared.closed.is_cancelled() {
            return Err(QueueError::Closed);
        }
        let keys = &shared.keys.schedule;
        let mut invocation = shared.scripts.schedule.claim.prepare_invoke();
        invocation
            .key(&keys.due)
            .key(&keys.claimed)
            .key(&keys.payloads)
            .arg(now)
            .arg(now + millis(CLAIM_LEASE))
            .arg(max);
        let (wake, members, payloads, waiting) = shared
            .invoke::<(i64, Vec<String>, Vec<Vec<u8>>, i64)>(&invocation, "schedule claim")
            .await?;
        if members.len() != payloads.len() {
            return Err(RedisError::Reply {
                url: shared.url.clone(),
                what: "schedule claim",
            }
            .into());
        }
        for (member, payload) in members.into_iter().zip(payloads) {
            let due_ms = member
                .split('-')
                .next()
                .and_then(|due| due.parse().ok())
                .unwrap_or(now);
            out.push(Due {
                key: DueKey::Redis(member),
                due_ms,
                payload: payload.into(),
            });
        }
        shared.schedule_metrics.waiting.set(waiting);
        Ok(u64::try_from(wake).ok())
    }

    /// Resolves when this process scheduled something.
    pub(crate) async fn schedule_changed(&self) {
        self.shared.schedule_changed.notified().await;
    }

    /// Deletes delivered entries.
    pub(crate) async fn remove_due(&self, due: &[Due]) -> Result<(), QueueError> {
        let members = redis_members(due);
        if members.is_empty() {
            return Ok(());
        }
        let keys = &self.shared.keys.schedule;
        let mut invocation = self.shared.scripts.schedule.remove.prepare_invoke();
        invocation
            .key(&keys.claimed)
            .key(&keys.payloads)
            .key(&keys.bytes)
            .arg(&members);
        self.shared
            .invoke::<i64>(&invocation, "schedule remove")
            .await?;
        Ok(())
    }

    /// Extends this process's claims on entries it could not push yet (the log is full).
    pub(crate) async fn renew_due(&self, due: &[Due]) -> Result<(), QueueError> {
        let members = redis_members(due);
        if members.is_empty() {
            return Ok(());
        }
        let until = now_ms() + millis(CLAIM_LEASE);
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&self.shared.keys.schedule.claimed).arg("XX");
        for member in members {
            cmd.arg(until).arg(member);
        }
        self.shared.query::<()>(&cmd, "schedule renew").await?;
        Ok(())
    }
}

fn redis_members(due: &[Due]) -> Vec<&str> {
    due.iter()
        .filter_map(|entry| match &entry.key {
            DueKey::Redis(member) => Some(member.as_str()),
            DueKey::Local(..) => None,
        })
        .collect()
}
