//! Reliable-mode framing between wsmq services and msgqueue (`/pushmsg`, `/popmsg` with subprotocol `wsmq.v1`).
//!
//! Every WebSocket message is a binary frame holding one or more records, so that under load many pushes, acks
//! or deliveries share one frame (and one TLS record, one syscall) while an idle link still sends each record
//! at once. All integers are little-endian. See `docs/PROTOCOL.md` for the semantics of each record.
//!
//! ```text
//! /pushmsg  client → server   0x01 HELLO    producer:u64                      (first record, once)
//!                             0x02 PUSH     seq:u64 len:u32 payload[len]
//!                             0x03 PUSH_AT  seq:u64 due_ms:u64 len:u32 payload[len]   (deliver at due_ms)
//!                             0x04 PUSH_PLACED seq:u64 len:u32 payload[len]   (a PUSH whose place is reported)
//!           server → client   0x81 ACKED    upto:u64                          (cumulative, in push order)
//!                             0x82 REJECT   seq:u64 reason:u8
//!                             0x83 PLACED   seq:u64 epoch:u64 offset:u64      (before the ACKED covering seq)
//! /popmsg   client → server   0x11 CREDIT   n:u32
//!                             0x12 ACK      id:u64
//!                             0x13 NACK     id:u64 reason:u8               (cannot handle it: dead-letter it)
//!           server → client   0x91 DELIVER  id:u64 flags:u8 [epoch:u64 offset:u64] len:u32 payload[len]
//! ```
//!
//! DELIVER flags: bit 0 redelivered; bit 1 positioned: the message's place in its topic's history (epoch and
//! offset, see [`super::history`]) follows the flags.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::history::{Epoch, Position};

/// The most bytes a record adds around its payload (DELIVER: kind + id + flags + epoch + offset + len; PUSH_AT adds
/// less: kind + seq + due time + len).
pub const RECORD_OVERHEAD: usize = 1 + 8 + 1 + 16 + 4;

const HELLO: u8 = 0x01;
const PUSH: u8 = 0x02;
const PUSH_AT: u8 = 0x03;
const PUSH_PLACED: u8 = 0x04;
const CREDIT: u8 = 0x11;
const ACK: u8 = 0x12;
const NACK: u8 = 0x13;
const ACKED: u8 = 0x81;
const REJECT: u8 = 0x82;
const PLACED: u8 = 0x83;
const DELIVER: u8 = 0x91;

const FLAG_REDELIVERED: u8 = 0x01;
const FLAG_POSITIONED: u8 = 0x02;

/// Why msgqueue refused to store a push. The producer learns it per sequence number and must not retry the
/// same sequence number: a rejected push is simply not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The queue reached `--max-queue-bytes`; nothing already stored is dropped to make room.
    Full,
    /// The payload exceeds the queue's message size limit.
    TooLarge,
    /// The queue could not store the message (disk error, shutting down).
    Unavailable,
    /// The disk holding the queue's log is full; pushes are accepted again once space returns.
    NoSpace,
}

impl RejectReason {
    fn code(self) -> u8 {
        match self {
            Self::Full => 1,
            Self::TooLarge => 2,
            Self::Unavailable => 3,
            Self::NoSpace => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Full),
            2 => Some(Self::TooLarge),
            3 => Some(Self::Unavailable),
            4 => Some(Self::NoSpace),
            _ => None,
        }
    }

    /// A short human-readable name, used in error frames and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "queue full",
            Self::TooLarge => "message too large",
            Self::Unavailable => "queue unavailable",
            Self::NoSpace => "queue storage full",
        }
    }
}

/// Why a consumer refuses a delivery it can never handle. msgqueue moves the message to its dead letters with
/// this reason instead of redelivering it, so one poison message cannot stall the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// The payload exceeds what the consumer accepts.
    TooLarge,
    /// The payload is not a message the consumer understands.
    Invalid,
    /// The consumer failed to process it for another reason.
    Failed,
}

impl NackReason {
    /// The wire code of this reason.
    pub fn code(self) -> u8 {
        match self {
            Self::TooLarge => 1,
            Self::Invalid => 2,
            Self::Failed => 3,
        }
    }

    /// The reason for a wire code; `None` for a code this version does not know.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::TooLarge),
            2 => Some(Self::Invalid),
            3 => Some(Self::Failed),
            _ => None,
        }
    }

    /// A short human-readable name, used in the dead-letter listing and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too large for the consumer",
            Self::Invalid => "invalid for the consumer",
            Self::Failed => "failed in the consumer",
        }
    }
}

/// A record a producer sends on `/pushmsg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRecord {
    /// Names the producer; sequence numbers are per producer id, and the id survives reconnects so msgqueue can
    /// recognise retried pushes.
    Hello {
        /// Random per producer process, stable across its reconnects.
        producer: u64,
    },
    /// One message. `seq` strictly increases per producer.
    Push {
        /// Producer-assigned sequence number, used for dedup and acks.
        seq: u64,
        /// The message bytes, a zero-copy slice of the frame.
        payload: Bytes,
    },
    /// One message whose place in its topic's history the producer wants to know: msgqueue stores it as a PUSH
    /// and, once it is durable, sends a [`PushReply::Placed`] for it before the ACKED that covers it (none when
    /// the message got no place: it keeps no history, or it was a retry of a message already stored).
    PushPlaced {
        /// Producer-assigned sequence number, shared with PUSH records.
        seq: u64,
        /// The message bytes, a zero-copy slice of the frame.
        payload: Bytes,
    },
    /// One scheduled message: stored at once (acked like a PUSH, deduplicated by the same `seq`), put in the
    /// queue when `due_ms` comes.
    PushAt {
        /// Producer-assigned sequence number, shared with PUSH records.
        seq: u64,
        /// When to deliver, in milliseconds since the Unix epoch (msgqueue's clock).
        due_ms: u64,
        /// The message bytes, a zero-copy slice of the frame.
        payload: Bytes,
    },
}

/// A record msgqueue sends back on `/pushmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushReply {
    /// Where the PUSH_PLACED with this sequence number was stored in its topic's history; the ACKED covering it
    /// follows.
    Placed {
        /// Sequence number of the PUSH_PLACED.
        seq: u64,
        /// The message's epoch and offset in its topic.
        position: Position,
    },
    /// Every push on this connection with `seq <= upto` that was not rejected is durably stored.
    Acked {
        /// Highest sequence number covered.
        upto: u64,
    },
    /// The push with this sequence number was not stored.
    Reject {
        /// Sequence number of the refused push.
        seq: u64,
        /// Why it was refused.
        reason: RejectReason,
    },
}

/// A record a consumer sends on `/popmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopRecord {
    /// Allows msgqueue to send `n` more deliveries (the consumer's prefetch window).
    Credit {
        /// Additional deliveries allowed.
        n: u32,
    },
    /// The delivery with this id was handled and can be removed from the queue.
    Ack {
        /// Delivery id from [`Delivery::id`].
        id: u64,
    },
    /// The consumer can never handle this delivery: msgqueue dead-letters it and frees the slot, like an ack.
    Nack {
        /// Delivery id from [`Delivery::id`].
        id: u64,
        /// Why, kept with the dead letter.
        reason: NackReason,
    },
}

/// A message msgqueue hands to a consumer on `/popmsg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Identifies the delivery for [`PopRecord::Ack`]; stable across redeliveries of the same message.
    pub id: u64,
    /// Set when an earlier delivery of this message was not acked (its consumer went away or its lease expired).
    pub redelivered: bool,
    /// The message's place in its topic's history; `None` for a message without one (not a JSON envelope, or
    /// stored before msgqueue kept history).
    pub position: Option<Position>,
    /// The message bytes, a zero-copy slice of the frame.
    pub payload: Bytes,
}

/// A frame that does not follow this protocol. Receivers close the connection with 1002 (protocol error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A record kind this endpoint does not accept.
    #[error("unknown record kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The frame ends in the middle of a record.
    #[error("truncated record")]
    Truncated,
    /// A payload larger than the endpoint allows.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared payload length.
        len: usize,
        /// The endpoint's limit.
        max: usize,
    },
    /// A reject or nack record with a reason code this version does not know.
    #[error("unknown reason code {0}")]
    UnknownReason(u8),
    /// A frame with no records at all.
    #[error("empty frame")]
    Empty,
}

/// Encodes records into one frame buffer. Callers append records while more are ready and the frame stays
/// under their size budget, then [`FrameWriter::take`] the bytes for one WebSocket message.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: BytesMut,
}

impl FrameWriter {
    /// A writer whose buffer starts with `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(capacity),
        }
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no record has been written since the last take.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends a producer record.
    pub fn push_record(&mut self, record: &PushRecord) {
        match record {
            PushRecord::Hello { producer } => {
                self.buf.put_u8(HELLO);
                self.buf.put_u64_le(*producer);
            }
            PushRecord::Push { seq, payload } => self.push(*seq, payload),
            PushRecord::PushPlaced { seq, payload } => self.push_placed(*seq, payload),
            PushRecord::PushAt {
                seq,
                due_ms,
                payload,
            } => self.push_at(*seq, *due_ms, payload),
        }
    }

    /// Appends a PUSH_AT record (a message to deliver at `due_ms`, Unix milliseconds).
    pub fn push_at(&mut self, seq: u64, due_ms: u64, payload: &[u8]) {
        self.buf.put_u8(PUSH_AT);
        self.buf.put_u64_le(seq);
        self.buf.put_u64_le(due_ms);
        self.buf.put_u32_le(len_u32(payload.len()));
        self.buf.put_slice(payload);
    }

    /// Appends a PUSH record without building a [`PushRecord`].
    pub fn push(&mut self, seq: u64, payload: &[u8]) {
        self.seq_and_payload(PUSH, seq, payload);
    }

    /// Appends a PUSH_PLACED record (a PUSH whose place in its topic msgqueue reports).
    pub fn push_placed(&mut self, seq: u64, payload: &[u8]) {
        self.seq_and_payload(PUSH_PLACED, seq, payload);
    }

    /// A record of `kind` laid out as `seq:u64 len:u32 payload[len]` (PUSH and PUSH_PLACED).
    fn seq_and_payload(&mut self, kind: u8, seq: u64, payload: &[u8]) {
        self.buf.put_u8(kind);
        self.buf.put_u64_le(seq);
        self.buf.put_u32_le(len_u32(payload.len()));
        self.buf.put_slice(payload);
    }

    /// Appends a reply on `/pushmsg`.
    pub fn push_reply(&mut self, reply: PushReply) {
        match reply {
            PushReply::Acked { upto } => {
                self.buf.put_u8(ACKED);
                self.buf.put_u64_le(upto);
            }
            PushReply::Reject { seq, reason } => {
                self.buf.put_u8(REJECT);
                self.buf.put_u64_le(seq);
                self.buf.put_u8(reason.code());
            }
            PushReply::Placed { seq, position } => {
                self.buf.put_u8(PLACED);
                self.buf.put_u64_le(seq);
                self.buf.put_u64_le(position.epoch.0);
                self.buf.put_u64_le(position.offset);
            }
        }
    }

    /// Appends a consumer record.
    pub fn pop_record(&mut self, record: PopRecord) {
        match record {
            PopRecord::Credit { n } => {
                self.buf.put_u8(CREDIT);
                self.buf.put_u32_le(n);
            }
            PopRecord::Ack { id } => {
                self.buf.put_u8(ACK);
                self.buf.put_u64_le(id);
            }
            PopRecord::Nack { id, reason } => {
                self.buf.put_u8(NACK);
                self.buf.put_u64_le(id);
                self.buf.put_u8(reason.code());
            }
        }
    }

    /// Appends a delivery.
    pub fn deliver(
        &mut self,
        id: u64,
        redelivered: bool,
        position: Option<Position>,
        payload: &[u8],
    ) {
        self.buf.put_u8(DELIVER);
        self.buf.put_u64_le(id);
        let mut flags = if redelivered { FLAG_REDELIVERED } else { 0 };
        if position.is_some() {
            flags |= FLAG_POSITIONED;
        }
        self.buf.put_u8(flags);
        if let Some(position) = position {
            self.buf.put_u64_le(position.epoch.0);
            self.buf.put_u64_le(position.offset);
        }
        self.buf.put_u32_le(len_u32(payload.len()));
        self.buf.put_slice(payload);
    }

    /// Returns the frame built so far and starts a new one, keeping the allocation's spare capacity.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

/// Payloads are bounded by the WebSocket message limit (far below 4 GiB); saturating keeps this total.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Iterates the records of one received frame. Payloads are zero-copy slices of the frame.
#[derive(Debug)]
pub struct FrameReader {
    frame: Bytes,
    max_payload: usize,
    started: bool,
}

impl FrameReader {
    /// Reads `frame`, refusing payloads longer than `max_payload` bytes.
    pub fn new(frame: Bytes, max_payload: usize) -> Self {
        Self {
            frame,
            max_payload,
            started: false,
        }
    }

    fn begin(&mut self) -> Result<Option<u8>, FrameError> {
        if self.frame.is_empty() {
            return if self.started {
                Ok(None)
            } else {
                Err(FrameError::Empty)
            };
        }
        self.started = true;
        Ok(Some(self.frame.get_u8()))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.frame
            .try_get_u64_le()
            .map_err(|_| FrameError::Truncated)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.frame
            .try_get_u32_le()
            .map_err(|_| FrameError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        self.frame.try_get_u8().map_err(|_| FrameError::Truncated)
    }

    fn payload(&mut self) -> Result<Bytes, FrameError> {
        let len = self.u32()? as usize;
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if self.frame.len() < len {
            return Err(FrameError::Truncated);
        }
        Ok(self.frame.split_to(len))
    }

    /// The next record of a frame a producer sent, `Ok(None)` at the end.
    pub fn next_push(&mut self) -> Result<Option<PushRecord>, FrameError> {
        match self.begin()? {
            None => Ok(None),
            Some(HELLO) => Ok(Some(PushRecord::Hello {
                producer: self.u64()?,
            })),
            Some(kind @ (PUSH | PUSH_PLACED)) => {
                let seq = self.u64()?;
                let payload = self.payload()?;
                Ok(Some(if kind == PUSH {
                    PushRecord::Push { seq, payload }
                } else {
                    PushRecord::PushPlaced { seq, payload }
                }))
            }
            Some(PUSH_AT) => {
                let seq = self.u64()?;
                let due_ms = self.u64()?;
                let payload = self.payload()?;
                Ok(Some(PushRecord::PushAt {
                    seq,
                    due_ms,
                    payload,
                }))
            }
            Some(kind) => Err(FrameError::UnknownKind(kind)),
        }
    }

    /// The next reply in a frame msgqueue sent on `/pushmsg`, `Ok(None)` at the end.
    pub fn next_push_reply(&mut self) -> Result<Option<PushReply>, FrameError> {
        match self.begin()? {
            None => Ok(None),
            Some(ACKED) => Ok(Some(PushReply::Acked { upto: self.u64()? })),
            Some(REJECT) => {
                let seq = self.u64()?;
                let code = self.u8()?;
                let reason =
                    RejectReason::from_code(code).ok_or(FrameError::UnknownReason(code))?;
                Ok(Some(PushReply::Reject { seq, reason }))
            }
            Some(PLACED) => {
                let seq = self.u64()?;
                let epoch = Epoch(self.u64()?);
                let offset = self.u64()?;
                Ok(Some(PushReply::Placed {
                    seq,
                    position: Position { epoch, offset },
                }))
            }
            Some(kind) => Err(FrameError::UnknownKind(kind)),
        }
    }

    /// The next record of a frame a consumer sent, `Ok(None)` at the end.
    pub fn next_pop(&mut self) -> Result<Option<PopRecord>, FrameError> {
        match self.begin()? {
            None => Ok(None),
            Some(CREDIT) => Ok(Some(PopRecord::Credit { n: self.u32()? })),
            Some(ACK) => Ok(Some(PopRecord::Ack { id: self.u64()? })),
            Some(NACK) => {
                let id = self.u64()?;
                let code = self.u8()?;
                let reason = NackReason::from_code(code).ok_or(FrameError::UnknownReason(code))?;
                Ok(Some(PopRecord::Nack { id, reason }))
            }
            Some(kind) => Err(FrameError::UnknownKind(kind)),
        }
    }

    /// The next delivery in a frame msgqueue sent on `/popmsg`, `Ok(None)` at the end.
    pub fn next_delivery(&mut self) -> Result<Option<Delivery>, FrameError> {
        match self.begin()? {
            None => Ok(None),
            Some(DELIVER) => {
                let id = self.u64()?;
                let flags = self.u8()?;
                let position = if flags & FLAG_POSITIONED != 0 {
                    Some(Position {
                        epoch: Epoch(self.u64()?),
                        offset: self.u64()?,
                    })
                } else {
                    None
                };
                let payload = self.payload()?;
                Ok(Some(Delivery {
                    id,
                    redelivered: flags & FLAG_REDELIVERED != 0,
                    position,
                    payload,
                }))
            }
            Some(kind) => Err(FrameError::UnknownKind(kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<T>(
        frame: Bytes,
        max: usize,
        mut next: impl FnMut(&mut FrameReader) -> Result<Option<T>, FrameError>,
    ) -> Result<Vec<T>, FrameError> {
        let mut reader = FrameReader::new(frame, max);
        let mut out = Vec::new();
        while let Some(record) = next(&mut reader)? {
            out.push(record);
        }
        Ok(out)
    }

    #[test]
    fn push_records_round_trip_in_one_frame() {
        let records = vec![
            PushRecord::Hello { producer: 7 },
            PushRecord::Push {
                seq: 1,
                payload: Bytes::from_static(b"one"),
            },
            PushRecord::Push {
                seq: 2,
                payload: Bytes::new(),
            },
            PushRecord::PushAt {
                seq: 3,
                due_ms: 1_764_000_000_123,
                payload: Bytes::from_static(b"later"),
            },
            PushRecord::PushPlaced {
                seq: 4,
                payload: Bytes::from_static(b"where"),
            },
        ];
        let mut w = FrameWriter::default();
        records.iter().for_each(|r| w.push_record(r));
        let got = collect(w.take(), 16, FrameReader::next_push).unwrap();
        assert_eq!(got, records);
        assert!(w.is_empty());
    }

    #[test]
    fn a_push_at_record_is_read_whole_or_refused() {
        let mut w = FrameWriter::default();
        w.push_at(9, u64::MAX, b"due");
        let frame = w.take();
        assert_eq!(frame.len(), 1 + 8 + 8 + 4 + 3);
        assert!(
            frame.len() <= RECORD_OVERHEAD + 3,
            "within the largest record header"
        );
        assert_eq!(
            collect(frame.slice(..frame.len() - 1), 8, FrameReader::next_push),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            collect(frame.clone(), 2, FrameReader::next_push),
            Err(FrameError::TooLarge { len: 3, max: 2 })
        );
        // Only `/pushmsg` knows the record.
        assert_eq!(
            collect(frame, 8, FrameReader::next_pop),
            Err(FrameError::UnknownKind(PUSH_AT))
        );
    }

    #[test]
    fn replies_and_pop_records_round_trip() {
        let replies = [
            PushReply::Placed {
                seq: 9,
                position: Position {
                    epoch: Epoch(u64::MAX),
                    offset: 41,
                },
            },
            PushReply::Acked { upto: 9 },
            PushReply::Reject {
                seq: 10,
                reason: RejectReason::Full,
            },
            PushReply::Reject {
                seq: 11,
                reason: RejectReason::Unavailable,
            },
            PushReply::Reject {
                seq: 12,
                reason: RejectReason::NoSpace,
            },
        ];
        let mut w = FrameWriter::default();
        replies.iter().for_each(|r| w.push_reply(*r));
        assert_eq!(
            collect(w.take(), 0, FrameReader::next_push_reply).unwrap(),
            replies
        );

        let pops = [
            PopRecord::Credit { n: 64 },
            PopRecord::Ack { id: u64::MAX },
            PopRecord::Nack {
                id: 5,
                reason: NackReason::TooLarge,
            },
            PopRecord::Nack {
                id: 6,
                reason: NackReason::Failed,
            },
        ];
        pops.iter().for_each(|r| w.pop_record(*r));
        assert_eq!(collect(w.take(), 0, FrameReader::next_pop).unwrap(), pops);
    }

    #[test]
    fn deliveries_round_trip_with_their_flags_and_positions() {
        let position = Position {
            epoch: Epoch(u64::MAX),
            offset: 17,
        };
        let mut w = FrameWriter::default();
        w.deliver(3, false, None, b"a");
        w.deliver(4, true, Some(position), b"bb");
        let frame = w.take();
        assert_eq!(frame.len(), 2 * RECORD_OVERHEAD - 16 + 3);
        let got = collect(frame, 2, FrameReader::next_delivery).unwrap();
        assert_eq!(
            got,
            vec![
                Delivery {
                    id: 3,
                    redelivered: false,
                    position: None,
                    payload: Bytes::from_static(b"a")
                },
                Delivery {
                    id: 4,
                    redelivered: true,
                    position: Some(position),
                    payload: Bytes::from_static(b"bb")
                },
            ]
        );
    }

    #[test]
    fn malformed_frames_are_named_errors() {
        assert_eq!(
            collect(Bytes::new(), 8, FrameReader::next_push),
            Err(FrameError::Empty)
        );
        assert_eq!(
            collect(Bytes::from_static(&[0x7f]), 8, FrameReader::next_push),
            Err(FrameError::UnknownKind(0x7f))
        );
        let mut w = FrameWriter::default();
        w.push(1, b"hello");
        let frame = w.take();
        assert_eq!(
            collect(frame.slice(..frame.len() - 1), 8, FrameReader::next_push),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            collect(frame, 4, FrameReader::next_push),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        );
        assert_eq!(
            collect(
                Bytes::from_static(&[REJECT, 1, 0, 0, 0, 0, 0, 0, 0, 99]),
                0,
                FrameReader::next_push_reply
            ),
            Err(FrameError::UnknownReason(99))
        );
        assert_eq!(
            collect(
                Bytes::from_static(&[NACK, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
                0,
                FrameReader::next_pop
            ),
            Err(FrameError::UnknownReason(0))
        );
        // A consumer endpoint refuses producer records and vice versa.
        assert_eq!(
            collect(
                Bytes::from_static(&[HELLO, 0, 0, 0, 0, 0, 0, 0, 0]),
                0,
                FrameReader::next_pop
            ),
            Err(FrameError::UnknownKind(HELLO))
        );
    }
}
