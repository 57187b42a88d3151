//! The stamp every benchmark message carries, and the per-sender accounting of what arrived.
//!
//! A stamp is 48 ASCII hex digits: run id (8), sender id (8), sequence (16) and send time (16, nanoseconds
//! since the run's shared start [`Clock`]). ASCII keeps it valid inside a JSON string and a WebSocket text
//! frame; the run id lets receivers ignore messages left over from earlier runs (a durable queue keeps them).
//! The clock is the system's monotonic clock, which every process on the machine shares, so latency is receive
//! time minus send time even when senders and receivers are different processes (`scaleout`).

use rustix::time::{ClockId, clock_gettime};

/// Length of the encoded stamp; messages are padded with `.` up to their configured size.
pub const STAMP_LEN: usize = 48;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The shared time origin of one run: every timestamp is nanoseconds since it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: u64,
}

impl Clock {
    /// Starts the clock now.
    pub fn start() -> Self {
        Self {
            origin: monotonic_nanos(),
        }
    }

    /// The clock another process of the same run started: its [`Clock::origin`] is passed along.
    pub fn from_origin(origin: u64) -> Self {
        Self { origin }
    }

    /// The start as a reading of the machine's monotonic clock, for [`Clock::from_origin`].
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// Nanoseconds since the start (saturating at 0 for a start in another process's future).
    pub fn nanos(&self) -> u64 {
        monotonic_nanos().saturating_sub(self.origin)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock `Instant` reads, but as a number other processes can compare.
fn monotonic_nanos() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}

/// What a message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Random per bench process, so leftovers of other runs are recognised.
    pub run: u32,
    /// Index of the publisher or pusher that sent it.
    pub sender: u32,
    /// Per-sender sequence number, from 0.
    pub seq: u64,
    /// [`Clock::nanos`] when it was sent.
    pub sent_nanos: u64,
}

/// A publish frame whose content is `stamp` padded to `size` bytes: `{"Topic":…,"Content":"<stamp>"}`, plus
/// `,"Id":id` when the sender wants wsmq.v1 acks. Topics here are the bench's own, which need no JSON escaping.
pub fn encode_publish(out: &mut Vec<u8>, topic: &str, stamp: &Stamp, size: usize, id: Option<u64>) {
    out.clear();
    out.extend_from_slice(b"{\"Topic\":\"");
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(b"\",\"Content\":\"");
    stamp.encode_into(size, out);
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(format!(",\"Id\":{id}").as_bytes());
    }
    out.push(b'}');
}

/// Why bytes are not a stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// Fewer than [`STAMP_LEN`] bytes.
    #[error("message shorter than the {STAMP_LEN}-byte stamp")]
    TooShort,
    /// A byte that is not a lowercase hex digit.
    #[error("stamp is not hex")]
    NotHex,
}

impl Stamp {
    /// Appends the stamp padded to `size` bytes (or just the stamp when `size` is smaller).
    pub fn encode_into(&self, size: usize, out: &mut Vec<u8>) {
        put_hex(out, u64::from(self.run), 8);
        put_hex(out, u64::from(self.sender), 8);
        put_hex(out, self.seq, 16);
        put_hex(out, self.sent_nanos, 16);
        out.resize(out.len() + size.saturating_sub(STAMP_LEN), b'.');
    }

    /// Reads the stamp at the start of `bytes`; padding after it is ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, StampError> {
        let stamp = bytes.get(..STAMP_LEN).ok_or(StampError::TooShort)?;
        let (run, rest) = stamp.split_at(8);
        let (sender, rest) = rest.split_at(8);
        let (seq, sent) = rest.split_at(16);
        Ok(Self {
            run: u32::try_from(hex(run)?).map_err(|_| StampError::NotHex)?,
            sender: u32::try_from(hex(sender)?).map_err(|_| StampError::NotHex)?,
            seq: hex(seq)?,
            sent_nanos: hex(sent)?,
        })
    }
}

fn put_hex(out: &mut Vec<u8>, value: u64, digits: u32) {
    for shift in (0..digits).rev() {
        out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

fn hex(digits: &[u8]) -> Result<u64, StampError> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return Err(StampError::NotHex),
        };
        Ok(acc << 4 | u64::from(v))
    })
}

/// Loss, duplicate and order counts of one receiver (or, merged, of a whole run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Distinct messages received.
    pub unique: u64,
    /// Messages received again after their first arrival.
    pub duplicates: u64,
    /// First arrivals whose sequence is lower than one already seen from the same sender.
    pub reordered: u64,
    /// Messages of another run or sender, or not stamped at all.
    pub foreign: u64,
}

impl Counts {
    /// Adds another receiver's counts.
    pub fn add(&mut self, other: &Counts) {
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.foreign += other.foreign;
    }
}

/// What one receiver saw from every sender: a bitmap of sequences per sender and the highest one so far.
#[derive(Debug)]
pub struct Tracker {
    run: u32,
    senders: Vec<SenderState>,
    counts: Counts,
}

#[derive(Debug)]
struct SenderState {
    seen: Vec<u64>,
    len: u64,
    highest: Option<u64>,
}

/// How one arrival was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival, in order.
    New,
    /// First arrival, after a higher sequence of the same sender.
    Reordered,
    /// Seen before.
    Duplicate,
    /// Not one of this run's messages.
    Foreign,
}

impl Tracker {
    /// A tracker for run `run` whose sender `j` sends sequences `0..per_sender[j]`.
    pub fn new(run: u32, per_sender: &[u64]) -> Self {
        let senders = per_sender
            .iter()
            .map(|&len| SenderState {
                seen: vec![0; usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX)],
                len,
                highest: None,
            })
            .collect();
        Self {
            run,
            senders,
            counts: Counts::default(),
        }
    }

    /// Classifies and counts one arrival.
    pub fn record(&mut self, stamp: &Stamp) -> Arrival {
        let arrival = self.classify(stamp);
        match arrival {
            Arrival::New => self.counts.unique += 1,
            Arrival::Reordered => {
                self.counts.unique += 1;
                self.counts.reordered += 1;
            }
            Arrival::Duplicate => self.counts.duplicates += 1,
            Arrival::Foreign => self.counts.foreign += 1,
        }
        arrival
    }

    fn classify(&mut self, stamp: &Stamp) -> Arrival {
        if stamp.run != self.run {
            return Arrival::Foreign;
        }
        let Some(sender) = self.senders.get_mut(stamp.sender as usize) else {
            return Arrival::Foreign;
        };
        if stamp.seq >= sender.len {
            return Arrival::Foreign;
        }
        let (word, bit) = ((stamp.seq / 64) as usize, 1u64 << (stamp.seq % 64));
        if sender.seen[word] & bit != 0 {
            return Arrival::Duplicate;
        }
        sender.seen[word] |= bit;
        match sender.highest {
            Some(highest) if highest > stamp.seq => Arrival::Reordered,
            _ => {
                sender.highest = Some(stamp.seq);
                Arrival::New
            }
        }
    }

    /// Counts a message that carried no stamp at all.
    pub fn record_unstamped(&mut self) {
        self.counts.foreign += 1;
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(sender: u32, seq: u64) -> Stamp {
        Stamp {
            run: 7,
            sender,
            seq,
            sent_nanos: 0,
        }
    }

    #[test]
    fn stamp_round_trips_and_is_padded_to_size() {
        let s = Stamp {
            run: 0xdead_beef,
            sender: 3,
            seq: u64::MAX - 1,
            sent_nanos: 1_234_567_890,
        };
        let mut buf = Vec::new();
        s.encode_into(64, &mut buf);
        assert_eq!(buf.len(), 64);
        assert!(buf.is_ascii());
        assert_eq!(Stamp::decode(&buf), Ok(s));

        let mut short = Vec::new();
        s.encode_into(10, &mut short);
        assert_eq!(short.len(), STAMP_LEN);
        assert_eq!(Stamp::decode(&short), Ok(s));
    }

    #[test]
    fn a_publish_frame_carries_the_padded_stamp_and_an_id_only_when_asked() {
        let stamp = stamp(2, 7);
        let mut text = Vec::new();
        stamp.encode_into(STAMP_LEN + 2, &mut text);
        let text = String::from_utf8(text).unwrap();
        let mut out = Vec::new();
        encode_publish(&mut out, "bench-0", &stamp, STAMP_LEN + 2, None);
        assert_eq!(
            out,
            format!(r#"{{"Topic":"bench-0","Content":"{text}"}}"#).into_bytes()
        );
        encode_publish(&mut out, "bench-0", &stamp, STAMP_LEN + 2, Some(7));
        assert_eq!(
            out,
            format!(r#"{{"Topic":"bench-0","Content":"{text}","Id":7}}"#).into_bytes()
        );
    }

    #[test]
    fn malformed_stamps_are_refused() {
        assert_eq!(Stamp::decode(b"0123"), Err(StampError::TooShort));
        let mut buf = Vec::new();
        stamp(1, 2).encode_into(48, &mut buf);
        buf[20] = b'G';
        assert_eq!(Stamp::decode(&buf), Err(StampError::NotHex));
    }

    #[test]
    fn tracker_counts_loss_duplicates_and_reordering_per_sender() {
        let mut t = Tracker::new(7, &[5, 3]);
        let arrivals: Vec<Arrival> = [
            stamp(0, 0),
            stamp(0, 2),
            stamp(0, 1),
            stamp(0, 2),
            stamp(1, 1),
            stamp(1, 0),
            stamp(1, 3),
            Stamp {
                run: 8,
                ..stamp(0, 3)
            },
            stamp(2, 0),
        ]
        .iter()
        .map(|s| t.record(s))
        .collect();
        assert_eq!(
            arrivals,
            [
                Arrival::New,
                Arrival::New,
                Arrival::Reordered,
                Arrival::Duplicate,
                Arrival::New,
                Arrival::Reordered,
                Arrival::Foreign,
                Arrival::Foreign,
                Arrival::Foreign,
            ]
        );
        assert_eq!(
            t.counts(),
            Counts {
                unique: 5,
                duplicates: 1,
                reordered: 2,
                foreign: 3
            }
        );
    }

    #[test]
    fn sequences_beyond_64_use_further_bitmap_words() {
        let mut t = Tracker::new(7, &[200]);
        for seq in (0..200).rev() {
            t.record(&stamp(0, seq));
        }
        assert_eq!(t.counts().unique, 200);
        assert_eq!(t.counts().reordered, 199);
        assert_eq!(t.record(&stamp(0, 130)), Arrival::Duplicate);
    }
}
