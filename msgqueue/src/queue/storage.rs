//! The storage seam under the local queue engine, cut in three: a [`Log`] of messages, a [`GroupStore`] that
//! makes consumer groups durable, and a [`DeadStore`] for dead letters. The memory log ([`super::memory`]) and the
//! segment log ([`super::log`]) implement all three; the engine holds them as one [`Storage`].
//!
//! The log assigns offsets itself (consecutive, from where it recovered), recognises producer retries (it owns
//! the dedup marks, as it owns everything it needs to rebuild itself: segment-head snapshots and dedup records are
//! private to the segment log, built from what it was given) and trims below the floor the engine reports. A
//! consumer group is, to storage, an id with a name, a starting floor, acked offsets and its current ack floor;
//! everything about leases, credit and dispatch stays in the engine.
//!
//! How the seam maps onto Redis Streams, the next backend meant to implement it:
//! - [`Log::append`] → `XADD` (one per entry, pipelined), with [`Log::is_duplicate`] the per-producer
//!   high-water mark the Redis backend already keeps next to the stream (`redis/append.rs`);
//!   [`Log::read`] → `XRANGE from (to COUNT` (the byte limit becomes a count), [`Log::trim_before`] →
//!   `XTRIM MINID`, [`Log::progress`] → the replies of the pipelined `XADD`s (`WAITAOF` for durability).
//! - [`GroupStore::create_group`] → `XGROUP CREATE … <floor>`, [`GroupStore::drop_group`] → `XGROUP DESTROY`,
//!   [`GroupStore::ack`] → `XACK` (Redis derives the floor from its pending entries list itself; the floor argument
//!   is what the segment log needs for its snapshots). Reading for a group (`XREADGROUP`) and reclaiming expired
//!   leases (`XAUTOCLAIM`) are the engine's groups layer (`group.rs`) over [`Log::read`] here.
//!
//! Locking: the engine calls [`Log::append`] and [`Log::is_duplicate`] for a push batch under its appending lock,
//! in offset order, and the group and dead-letter methods after releasing its state lock, in the order it decided
//! them; never under the state lock. All of them only buffer work under the log's own short lock (the segment log
//! hands it to its writer thread) and never wait on I/O. [`Log::read`] and [`DeadStore::read_dead`] block on I/O:
//! the engine calls them on the blocking pool, without any lock of its own.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::dead::DeadLetter;
use super::record::GroupMark;
use super::{DurableToken, Producer};

/// Why storage failed. Cloneable so one failure can be reported to every push of a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// An I/O operation on the log failed; the queue stops accepting pushes because it can no longer promise
    /// durability.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A record read back after recovery failed its checksum: the file changed under the running queue.
    #[error("corrupt record in {path} at byte {position}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record.
        position: u64,
    },
    /// Another queue already uses the directory; two writers would corrupt the log.
    #[error("{0} is in use by another queue")]
    Locked(PathBuf),
    /// The log writer stopped after an earlier error; nothing more can be made durable.
    #[error("log writer failed: {0}")]
    WriterFailed(String),
}

/// Whether an I/O error means the disk (or the user's quota) is full: the writer retries those until space
/// returns instead of failing for good.
pub(crate) fn is_no_space(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl StorageError {
    /// Wraps an I/O error with what was being done and where.
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// How far the log writer has got, in logical log bytes since open (the unit of [`DurableToken`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Everything before this position has been handed to the OS.
    pub(crate) written: u64,
    /// Everything before this position is durable per the fsync policy.
    pub(crate) durable: u64,
    /// Set once when the writer fails; waiters then get the error instead of hanging.
    pub(crate) failed: Option<String>,
    /// Set when the writer has flushed everything and exited.
    pub(crate) closed: bool,
    /// Set when the writer thread panicked (`failed` holds the message): a bug, not an I/O condition, so the
    /// service stops rather than run on without durability.
    pub(crate) panicked: bool,
}

/// One message to append: who pushed it (for dedup) and its payload.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The reliable-mode producer and seq, recorded as its dedup mark; `None` for compat pushes.
    pub(crate) producer: Option<Producer>,
    /// The payload as stored (topic history's stamp included); the memory log keeps this very buffer.
    pub(crate) payload: Bytes,
}

/// What an append did: the offsets the log assigned and the token to wait on for their durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// The offset of the first entry; the others follow it consecutively.
    pub(crate) first: u64,
    /// Becomes durable (see [`Log::progress`]) once every entry of the append is.
    pub(crate) durable: DurableToken,
}

/// A durable, append-only log of messages that assigns offsets itself.
///
/// Appends only buffer (they run under the engine's lock); durability is reported through [`Log::progress`].
pub(crate) trait Log: Send + Sync {
    /// Appends `entries` in order and returns the offsets it assigned (consecutive from [`Appended::first`]) with
    /// a token that becomes durable once all of them are. Fails once the log can no longer store anything.
    fn append(&self, entries: &[Entry]) -> Result<Appended, StorageError>;

    /// Whether `producer`'s seq is at or below the highest seq already appended for its id: a retry, not to be
    /// stored again. Marks survive restarts, up to the log's cap of remembered producers.
    fn is_duplicate(&self, producer: Producer) -> bool;

    /// A token covering everything appended so far, for acking a duplicate push only once its original is durable.
    fn position(&self) -> DurableToken;

    /// Appends to `out` the retained messages with offsets in `[from, to)`, in offset order, stopping after about
    /// `max_bytes` of payload (at least one message) or at what is written so far. Returns the offset to continue
    /// from. Blocking: call it off the async workers and without the engine's lock.
    fn read(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<u64, StorageError>;

    /// Every group has acked every offset below `offset`: the log may drop what holds only those.
    fn trim_before(&self, offset: u64);

    /// Whether the log keeps its payloads in RAM itself, so dropping the engine's copy beyond its memory budget
    /// would save nothing: the engine then keeps its whole backlog in its own tail and never reads back.
    fn in_memory(&self) -> bool;

    /// Whether so much is buffered but not yet written that pushes should be refused for now.
    fn backlogged(&self) -> bool;

    /// Whether the disk is full: pushes are refused until the writer managed to write again.
    fn no_space(&self) -> bool;

    /// The watch of the tail: how far writing and durability got, or `None` when appends are durable (as far as
    /// this log can make them) immediately.
    fn progress(&self) -> Option<watch::Receiver<Progress>>;

    /// Asks the log to flush and fsync everything and stop its background work; completion is reported through
    /// [`Progress::closed`].
    fn close(&self);
}

/// Makes consumer groups durable: their creation, their acks and their removal. Where the records live is the
/// log's business (the segment log writes them into its segments).
pub(crate) trait GroupStore: Send + Sync {
    /// Records a new consumer group starting at `group.floor`; the token becomes durable once the group is (a
    /// consumer joins only then, so a crash cannot forget a group that already took messages).
    fn create_group(&self, group: &GroupMark) -> DurableToken;

    /// Records that group `id` is gone (its acks no longer hold anything back).
    fn drop_group(&self, id: u32);

    /// Records acks of group `group` for `offsets` (any order; sorted in place), after which every offset below
    /// `floor` is acked by the group. Lazy: written with the next write and never waited for, since a lost ack only
    /// causes a redelivery.
    fn ack(&self, group: u32, offsets: &mut [u64], floor: u64);
}

/// Keeps dead letters with their payloads until they are replayed or evicted.
pub(crate) trait DeadStore: Send + Sync {
    /// Buffers a dead letter with its payload. It is made durable before any ack buffered after this call, so
    /// the engine acks the message right after it.
    fn append_dead(&self, letter: &DeadLetter, payload: &[u8]);

    /// Buffers the removal of dead letters (replayed or evicted).
    fn remove_dead(&self, ids: &[u64]);

    /// Appends to `out` the payloads of the dead letters in `ids` that are stored (written so far), in file order.
    /// Blocking: call it off the async workers.
    fn read_dead(&self, ids: &[u64], out: &mut Vec<(u64, Bytes)>) -> Result<(), StorageError>;
}

/// Everything the local engine needs from its backend, as one object.
pub(crate) trait Storage: Log + GroupStore + DeadStore {}

impl<T: Log + GroupStore + DeadStore> Storage for T {}

#[cfg(test)]
mod tests;
