//! Topic history: where a message sits in its topic (an epoch and an offset), and the history request msgqueue
//! answers (`GET /v1/history/<topic>` on its listener) for the subscriber's `sub <topic> since=` and `history`
//! commands.
//!
//! Every message published to a topic gets the next offset of that topic (1, 2, 3, …). The topic's epoch is a
//! random token chosen when msgqueue starts keeping the topic's history; it changes whenever that history is lost
//! (the memory backend restarted, the data wiped, the topic idle past its retention), so a client holding an
//! offset of an older epoch learns that its offset means nothing any more instead of silently missing messages.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// msgqueue's history route; `/` and the topic follow, percent-encoded.
pub const HISTORY_API_PATH: &str = "/v1/history";

/// The most messages one history answer carries; a longer recovery asks again from the last offset it got.
pub const MAX_HISTORY_PAGE: usize = 1000;

/// A message's place in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The topic's history generation (see [`Epoch`]).
    pub epoch: Epoch,
    /// 1 for the topic's first message, then one more per message.
    pub offset: u64,
}

/// A topic's history generation: 64 random bits, written as 16 lowercase hex digits on every wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl Epoch {
    /// A fresh random epoch, for a topic whose history starts now.
    pub fn random() -> Self {
        // Zero is never used, so a zeroed field cannot pass for a real epoch.
        Self(rand::random::<u64>().max(1))
    }

    /// The 16 lowercase hex digits the epoch is written as: what `Display` writes, without the formatting
    /// machinery, for encoders that put one in every delivery.
    pub fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0; 16];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

/// An epoch that is not 1 to 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("epoch must be 1 to 16 hex digits")]
pub struct BadEpoch;

impl std::str::FromStr for Epoch {
    type Err = BadEpoch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 {
            return Err(BadEpoch);
        }
        u64::from_str_radix(s, 16).map(Self).map_err(|_| BadEpoch)
    }
}

impl Serialize for Epoch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a history request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// Everything after `position` (a client resuming), at most `limit` messages from there on. Offset 0 (with
    /// any epoch, e.g. `0`) asks for the topic's whole retained history: the client has none of it.
    Since {
        /// The last message the client has.
        position: Position,
        /// Most messages in the answer.
        limit: usize,
    },
    /// The newest `limit` retained messages.
    Last {
        /// Most messages in the answer.
        limit: usize,
    },
    /// Everything after the topic's ack (an inbox: what its user has not acked yet), at most `limit` messages.
    Unacked {
        /// Most messages in the answer.
        limit: usize,
    },
}

impl HistoryQuery {
    /// The most messages the answer may hold.
    pub fn limit(&self) -> usize {
        match *self {
            Self::Since { limit, .. } | Self::Last { limit } | Self::Unacked { limit } => limit,
        }
    }

    /// The query as a resume from the topic's ack (`acked` in `epoch`) when it asks for what is unacked; any other
    /// query as it is. Backends answer [`HistoryQuery::Unacked`] through this and [`plan`].
    pub fn from_ack(self, epoch: Epoch, acked: u64) -> Self {
        match self {
            Self::Unacked { limit } => Self::Since {
                position: Position {
                    epoch,
                    offset: acked,
                },
                limit,
            },
            other => other,
        }
    }

    /// Parses the query string of a history request: `since=<offset>&epoch=<epoch>[&limit=<n>]`,
    /// `after=acked[&limit=<n>]` or `limit=<n>`. `limit` defaults to, and is capped at, [`MAX_HISTORY_PAGE`].
    pub fn parse(query: &str) -> Result<Self, String> {
        let (mut since, mut epoch, mut limit, mut after) = (None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "since" => &mut since,
                "epoch" => &mut epoch,
                "limit" => &mut limit,
                "after" => &mut after,
                other => return Err(format!("unknown parameter `{other}`")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("parameter `{key}` given twice"));
            }
        }
        let limit = match limit {
            None => MAX_HISTORY_PAGE,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n >= 1 => n.min(MAX_HISTORY_PAGE),
                _ => return Err("limit must be a whole number of at least 1".into()),
            },
        };
        match (since, epoch, after) {
            (None, None, Some("acked")) => Ok(Self::Unacked { limit }),
            (_, _, Some(_)) => Err("after takes only `acked`, without since and epoch".into()),
            (None, None, None) => Ok(Self::Last { limit }),
            (Some(offset), Some(epoch), None) => Ok(Self::Since {
                position: Position {
                    epoch: epoch.parse().map_err(|e: BadEpoch| e.to_string())?,
                    offset: offset
                        .parse()
                        .map_err(|_| "since must be a whole number".to_string())?,
                },
                limit,
            }),
            _ => Err("since and epoch go together".into()),
        }
    }

    /// The query string [`HistoryQuery::parse`] reads back.
    pub fn to_query(&self) -> String {
        match *self {
            Self::Since { position, limit } => format!(
                "since={}&epoch={}&limit={limit}",
                position.offset, position.epoch
            ),
            Self::Last { limit } => format!("limit={limit}"),
            Self::Unacked { limit } => format!("after=acked&limit={limit}"),
        }
    }
}

/// Why a resume could not recover everything the client missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrecovered {
    /// The topic's history was lost since the client's offset was given (another epoch): every retained message
    /// is newer than what the client has, but it may have missed more.
    EpochChanged,
    /// Messages after the client's offset are no longer retained (`--history-size` or `--history-ttl`).
    Expired,
    /// The client's offset is beyond the topic's newest message: it does not come from this topic's history.
    Ahead,
    /// The history could not be read (msgqueue unreachable): the client is subscribed live, and may have missed
    /// messages.
    Unavailable,
}

impl Unrecovered {
    /// The reason as clients see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::Expired => "expired",
            Self::Ahead => "ahead",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One retained message of a history answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// Its offset in the topic.
    pub offset: u64,
    /// The stored envelope, as JSON (history only keeps messages that are JSON envelopes).
    pub message: Box<RawValue>,
}

/// msgqueue's answer to a history request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The topic's current epoch.
    pub epoch: Epoch,
    /// The offset of the topic's newest message (0: nothing published in this epoch).
    pub latest: u64,
    /// For [`HistoryQuery::Since`]: whether the answer (with the pages after it) holds every message after the
    /// client's position. Always true for [`HistoryQuery::Last`].
    pub recovered: bool,
    /// Why not, when `recovered` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Unrecovered>,
    /// The messages, oldest first.
    pub messages: Vec<HistoryMessage>,
}

impl HistoryPage {
    /// Whether more retained messages follow the last one of this page (ask again from there).
    pub fn more(&self) -> bool {
        self.messages.last().is_some_and(|m| m.offset < self.latest)
    }
}

/// Decides which retained offsets answer `query` and whether that recovers the client, given the topic's
/// `epoch`, its retained offsets `first..=latest` (`first > latest` when nothing is retained) and its newest
/// offset `latest`. Returns the first offset to send and the outcome. Every backend answers through this, so they
/// agree on the edge cases.
pub fn plan(
    query: &HistoryQuery,
    epoch: Epoch,
    first: u64,
    latest: u64,
) -> (u64, Result<(), Unrecovered>) {
    match *query {
        HistoryQuery::Last { limit } => {
            let from = latest.saturating_sub(limit as u64 - 1).max(first);
            (from, Ok(()))
        }
        // Backends turn it into `Since` with [`HistoryQuery::from_ack`] first; from the start if they did not.
        HistoryQuery::Unacked { .. } => (first, Ok(())),
        HistoryQuery::Since { position, .. } => {
            if position.offset == 0 {
                // The client has nothing of the topic: any epoch will do, and it missed something only if the
                // topic's first message is gone.
                (
                    first,
                    if first <= 1 {
                        Ok(())
                    } else {
                        Err(Unrecovered::Expired)
                    },
                )
            } else if position.epoch != epoch {
                (first, Err(Unrecovered::EpochChanged))
            } else if position.offset > latest {
                (latest + 1, Err(Unrecovered::Ahead))
            } else if position.offset + 1 < first {
                (first, Err(Unrecovered::Expired))
            } else {
                (position.offset + 1, Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Epoch = Epoch(0xabc);

    #[test]
    fn an_epochs_hex_is_what_it_displays_as() {
        for epoch in [Epoch(1), E, Epoch(0x0123_4567_89ab_cdef), Epoch(u64::MAX)] {
            assert_eq!(epoch.hex(), format!("{:016x}", epoch.0).as_bytes());
            assert_eq!(epoch.to_string(), format!("{:016x}", epoch.0));
        }
    }

    fn since(offset: u64) -> HistoryQuery {
        HistoryQuery::Since {
            position: Position { epoch: E, offset },
            limit: 10,
        }
    }

    #[test]
    fn the_query_string_round_trips() {
        for query in [
            since(7),
            HistoryQuery::Last { limit: 3 },
            HistoryQuery::Unacked { limit: 4 },
        ] {
            assert_eq!(HistoryQuery::parse(&query.to_query()).unwrap(), query);
        }
        assert_eq!(
            HistoryQuery::parse("").unwrap(),
            HistoryQuery::Last {
                limit: MAX_HISTORY_PAGE
            }
        );
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (query, expected) in [
            ("since=1", "since and epoch go together"),
            ("since=x&epoch=1", "since must be a whole number"),
            ("since=1&epoch=xyz", "epoch must be 1 to 16 hex digits"),
            ("limit=0", "limit must be a whole number of at least 1"),
            ("limit=1&limit=2", "parameter `limit` given twice"),
            ("offset=1", "unknown parameter `offset`"),
            (
                "after=acked&since=1&epoch=1",
                "after takes only `acked`, without since and epoch",
            ),
            (
                "after=now",
                "after takes only `acked`, without since and epoch",
            ),
        ] {
            assert_eq!(HistoryQuery::parse(query).unwrap_err(), expected, "{query}");
        }
    }

    #[test]
    fn epochs_print_as_sixteen_hex_digits_and_parse_back() {
        assert_eq!(E.to_string(), "0000000000000abc");
        assert_eq!("0000000000000abc".parse::<Epoch>().unwrap(), E);
        assert!("12345678901234567".parse::<Epoch>().is_err());
    }

    #[test]
    fn a_resume_within_retention_recovers_from_the_next_offset() {
        assert_eq!(plan(&since(5), E, 3, 9), (6, Ok(())));
        assert_eq!(plan(&since(9), E, 3, 9), (10, Ok(())));
        // Exactly at the edge of what is retained: offset 2 was the last one dropped and the client has it.
        assert_eq!(plan(&since(2), E, 3, 9), (3, Ok(())));
    }

    #[test]
    fn a_resume_that_cannot_recover_says_why() {
        assert_eq!(plan(&since(1), E, 3, 9), (3, Err(Unrecovered::Expired)));
        assert_eq!(
            plan(&since(5), Epoch(1), 3, 9),
            (3, Err(Unrecovered::EpochChanged))
        );
        assert_eq!(plan(&since(12), E, 3, 9), (10, Err(Unrecovered::Ahead)));
    }

    #[test]
    fn offset_zero_means_from_the_start_of_any_epoch() {
        let zero = HistoryQuery::Since {
            position: Position {
                epoch: Epoch(0),
                offset: 0,
            },
            limit: 10,
        };
        assert_eq!(plan(&zero, E, 1, 9), (1, Ok(())));
        assert_eq!(plan(&zero, E, 1, 0), (1, Ok(())));
        assert_eq!(plan(&zero, E, 4, 9), (4, Err(Unrecovered::Expired)));
    }

    #[test]
    fn the_last_n_start_within_what_is_retained() {
        assert_eq!(plan(&HistoryQuery::Last { limit: 3 }, E, 1, 9), (7, Ok(())));
        assert_eq!(
            plan(&HistoryQuery::Last { limit: 30 }, E, 4, 9),
            (4, Ok(()))
        );
        assert_eq!(plan(&HistoryQuery::Last { limit: 3 }, E, 1, 0), (1, Ok(())));
    }
}
