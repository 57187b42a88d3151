//! The storage seam under the queue engine: what a backend (memory, the disk log, later a distributed engine)
//! must do, and the types the two sides exchange.
//!
//! The log assigns nothing the engine has not decided, but owns everything about files: records, segments, the
//! snapshot at each segment's head, recovery. Consumer groups appear here only as ids with acked offsets and a
//! creation or removal, which maps onto a distributed log as well (Redis Streams: XADD for `append_message`,
//! XGROUP CREATE/DESTROY for groups, XACK for `append_acks`, XRANGE for `read_messages`, XTRIM MINID for
//! `advance_floor`).
//!
//! The engine calls the append methods while holding its state lock, in offset order, so they must only buffer
//! work (the disk log hands it to its writer thread) and never wait on I/O. [`Storage::read_messages`] and
//! [`Storage::read_dead`] block on I/O: the engine calls them on the blocking pool, never under its lock.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::dead::DeadLetter;
use super::record::{GroupMark, Snapshot};
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

/// A queue storage backend. Implementations buffer appends and make them durable asynchronously; the engine
/// learns about durability through [`Storage::progress`].
pub(crate) trait Storage: Send + Sync {
    /// Buffers a message record; the token becomes durable once the record is. If the current segment is full,
    /// a new one is started first, headed by `snapshot()`, so older segments can be deleted without losing state.
    fn append_message(
        &self,
        offset: u64,
        producer: Option<Producer>,
        payload: &[u8],
        snapshot: &dyn Fn() -> Snapshot,
    ) -> Result<DurableToken, StorageError>;

    /// Buffers an ack record of consumer group `group` for `offsets` (any order; sorted in place). Lazy: it is
    /// written with the next write and never waited for, since a lost ack only causes a redelivery.
    fn append_acks(&self, group: u32, offsets: &mut [u64]);

    /// Records a new consumer group starting at `group.floor`; the token becomes durable once the group is (a
    /// consumer joins only then, so a crash cannot forget a group that already took messages).
    fn create_group(&self, group: &GroupMark) -> DurableToken;

    /// Records that group `id` is gone (its acks no longer hold anything back) and forgets its read position.
    fn drop_group(&self, id: u32);

    /// A token covering everything appended so far, for acking a duplicate push only once its original is durable.
    fn position(&self) -> DurableToken;

    /// Every offset below `floor` is acked by every group: storage may delete what holds only those.
    fn advance_floor(&self, floor: u64);

    /// Whether so much is buffered but not yet written that pushes should be refused for now.
    fn backlogged(&self) -> bool;

    /// Whether the disk is full: pushes are refused until the writer managed to write again.
    fn no_space(&self) -> bool;

    /// Buffers a dead letter with its payload. It is made durable before any ack buffered after this call, so
    /// the engine appends the message's ack right after it.
    fn append_dead(&self, letter: &DeadLetter, payload: &[u8]);

    /// Buffers the removal of dead letters (replayed or evicted).
    fn remove_dead(&self, ids: &[u64]);

    /// Appends to `out` the payloads of the dead letters in `ids` that are stored (written so far), in file order.
    /// Blocking: call it off the async workers.
    fn read_dead(&self, ids: &[u64], out: &mut Vec<(u64, Bytes)>) -> Result<(), StorageError>;

    /// Whether payloads can be read back, so the engine may drop them from memory beyond its budget.
    fn reads_back(&self) -> bool;

    /// Appends to `out` the stored messages with offsets in `[from, to)`, in offset order, stopping after about
    /// `max_bytes` of payload (at least one message) or at what is written so far. Returns the offset to continue
    /// from. `reader` (a group id) keeps its own position, so consecutive reads of one group scan sequentially.
    /// Blocking: call it off the async workers and without the engine's lock.
    fn read_messages(
        &self,
        reader: u32,
        from: u64,
        to: u64,
        max_bytes: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> Result<u64, StorageError>;

    /// Writer progress, or `None` when appends are durable (as far as this backend can make them) immediately.
    fn progress(&self) -> Option<watch::Receiver<Progress>>;

    /// Asks the backend to flush and fsync everything and stop its background work; completion is reported
    /// through [`Progress::closed`].
    fn close(&self);
}
