//! Topic history: every message that is a JSON envelope gets the next offset of its topic when it is stored, and
//! the newest messages of each topic stay retained (`--history-size` messages, for `--history-ttl`, with
//! overrides per topic prefix) after every consumer group acked them, so a subscriber can resume a client from
//! its last offset or show a topic's last messages.
//!
//! Offsets are assigned where the push is stored, in the same atomic step, so the order of a topic's offsets is
//! the order of its messages in the log, and a deduplicated retry gets no offset of its own. The local engine
//! keeps history in [`local::LocalHistory`] (in RAM, with a file of its own under the disk backend); the Redis
//! engine keeps it in Redis (`append.lua`). Both answer queries through [`plan`], so they agree on every edge.

pub(crate) mod file;
pub(crate) mod local;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use wsmq_core::protocol::envelope::Envelope;
pub use wsmq_core::protocol::history::{
    Epoch, HistoryMessage, HistoryPage, HistoryQuery, Position, Unrecovered, plan,
};

/// How much of a topic's history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest messages kept per topic; 0 keeps no history for the topic (its messages get no offset either).
    pub size: usize,
    /// How long a message is kept; a topic with nothing published for this long is forgotten (its next message
    /// starts a new epoch).
    pub ttl: Duration,
}

/// A retention for the topics starting with `prefix` (`--history-rule PREFIX=SIZE[:TTL]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    /// Topics starting with this get this rule; the longest matching prefix wins.
    pub prefix: String,
    /// Newest messages kept per topic (0: no history).
    pub size: usize,
    /// How long they are kept; `None` keeps the default `--history-ttl`.
    pub ttl: Option<Duration>,
}

/// A `--history-rule` that does not read `PREFIX=SIZE[:TTL]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid history rule {0:?}: expected PREFIX=SIZE or PREFIX=SIZE:TTL, e.g. chat.=1000:24h")]
pub struct ParseHistoryRuleError(String);

impl FromStr for HistoryRule {
    type Err = ParseHistoryRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ParseHistoryRuleError(text.to_owned());
        let (prefix, rest) = text.split_once('=').ok_or_else(bad)?;
        let (size, ttl) = match rest.split_once(':') {
            Some((size, ttl)) => (
                size,
                Some(wsmq_core::limits::parse_duration(ttl).map_err(|_| bad())?),
            ),
            None => (rest, None),
        };
        let size = size.parse().map_err(|_| bad())?;
        if prefix.is_empty() || ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(bad());
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            size,
            ttl,
        })
    }
}

impl fmt::Display for HistoryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.prefix, self.size)?;
        match self.ttl {
            Some(ttl) => write!(f, ":{}s", ttl.as_secs()),
            None => Ok(()),
        }
    }
}

/// Which topics keep how much history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Retention of topics no rule matches.
    pub retention: Retention,
    /// Retention of inboxes (`@<user>`) no rule matches: their messages wait for their user's ack.
    pub inbox: Retention,
    /// Overrides per topic prefix.
    pub rules: Vec<HistoryRule>,
    /// Most bytes the local engine's history keeps in RAM (payloads plus a per-message and per-topic overhead);
    /// beyond it the least recently published topics are forgotten, so many topics cannot exhaust memory. Redis
    /// keeps history under its own `maxmemory`.
    pub max_bytes: u64,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            retention: Retention {
                size: 100,
                ttl: Duration::from_secs(3600),
            },
            inbox: Retention {
                size: 1000,
                ttl: Duration::from_secs(7 * 24 * 3600),
            },
            rules: Vec::new(),
            max_bytes: 256 << 20,
        }
    }
}

impl HistoryOptions {
    /// The retention of `topic`: the rule with the longest matching prefix, else the inbox retention for an inbox,
    /// else the default.
    pub fn retention(&self, topic: &str) -> Retention {
        let otherwise = if topic.starts_with('@') {
            self.inbox
        } else {
            self.retention
        };
        self.rules
            .iter()
            .filter(|rule| topic.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
            .map_or(otherwise, |rule| Retention {
                size: rule.size,
                ttl: rule.ttl.unwrap_or(otherwise.ttl),
            })
    }
}

/// The topic of a stored message, if it is a JSON envelope with a valid topic: only those get an offset and are
/// kept in history (a compat pusher may push anything; history then simply skips it).
pub(crate) fn topic_of(payload: &[u8]) -> Option<Cow<'_, str>> {
    if payload.first() != Some(&b'{') {
        return None;
    }
    Envelope::topic_of_json(payload).ok()
}

/// First byte of a stamped payload. A stored payload never starts with it otherwise: text frames are UTF-8 (where
/// 0xFF never occurs) and reliable producers push JSON envelopes.
const STAMP: u8 = 0xFF;
/// The stamp's layout version.
const STAMP_V1: u8 = 1;
/// Bytes a stamp puts before the payload: marker, version, epoch, offset.
pub(crate) const STAMP_LEN: usize = 2 + 8 + 8;

/// Prefixes `payload` with its position, as the local engine stores it: the log keeps the position with the
/// message through restarts and redeliveries without a record format of its own.
pub(crate) fn stamp(position: Position, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(STAMP_LEN + payload.len());
    out.put_u8(STAMP);
    out.put_u8(STAMP_V1);
    out.put_u64_le(position.epoch.0);
    out.put_u64_le(position.offset);
    out.put_slice(payload);
    out.freeze()
}

/// Splits a stored payload into its position (if stamped) and the message itself (a zero-copy slice).
pub(crate) fn unstamp(stored: Bytes) -> (Option<Position>, Bytes) {
    if stored.len() >= STAMP_LEN && stored[0] == STAMP && stored[1] == STAMP_V1 {
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&stored[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let position = Position {
            epoch: Epoch(word(2)),
            offset: word(10),
        };
        (Some(position), stored.slice(STAMP_LEN..))
    } else {
        (None, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_and_an_unstamped_payload_passes_through() {
        let position = Position {
            epoch: Epoch(u64::MAX - 3),
            offset: 42,
        };
        let stored = stamp(position, br#"{"Topic":"t","Content":"c"}"#);
        assert_eq!(stored.len(), STAMP_LEN + 27);
        assert_eq!(
            unstamp(stored),
            (
                Some(position),
                Bytes::from_static(br#"{"Topic":"t","Content":"c"}"#)
            )
        );
        let plain = Bytes::from_static(b"ws-go text");
        assert_eq!(unstamp(plain.clone()), (None, plain));
    }

    #[test]
    fn only_json_envelopes_with_a_valid_topic_have_a_topic() {
        assert_eq!(
            topic_of(br#"{"Topic":"news","Content":"x"}"#).as_deref(),
            Some("news")
        );
        assert_eq!(topic_of(b"news hello"), None);
        assert_eq!(topic_of(br#"{"Topic":"","Content":"x"}"#), None);
        assert_eq!(topic_of(br#"{"Content":"x"}"#), None);
    }

    #[test]
    fn the_longest_matching_rule_sets_the_retention() {
        let ttl = Duration::from_secs(60);
        let options = HistoryOptions {
            retention: Retention { size: 10, ttl },
            inbox: Retention { size: 5, ttl },
            rules: ["chat.=100", "chat.vip.=1000:24h", "tmp.=0"]
                .iter()
                .map(|rule| rule.parse().unwrap())
                .collect(),
            ..HistoryOptions::default()
        };
        assert_eq!(options.retention("news").size, 10);
        assert_eq!(options.retention("chat.room"), Retention { size: 100, ttl });
        let vip = options.retention("chat.vip.alice");
        assert_eq!((vip.size, vip.ttl), (1000, Duration::from_secs(86_400)));
        assert_eq!(options.retention("tmp.x").size, 0);
        assert_eq!(options.retention("@alice"), Retention { size: 5, ttl });
    }

    #[test]
    fn bad_rules_are_refused_with_the_expected_form() {
        for text in ["chat.", "=5", "chat.=x", "chat.=5:soon", "chat.=5:0s"] {
            let err = text.parse::<HistoryRule>().unwrap_err();
            assert!(err.to_string().contains("PREFIX=SIZE"), "{text}: {err}");
        }
    }
}
