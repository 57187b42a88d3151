//! Consumer groups on `/popmsg`: the group a consumer reads in, where a group that does not exist yet starts, and
//! the handshake query that carries both (`/popmsg?group=<name>&start=oldest|tail`).
//!
//! msgqueue parses the query; the subscriber's link builds it. Every group gets every message and the consumers of
//! one group share its messages, so several subscriber instances each route everything when each has a group of
//! its own. A popper that names no group (every ws-go popper) is in the [`DEFAULT_GROUP`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::protocol::POP_PATH;

/// The group of every consumer that names none.
pub const DEFAULT_GROUP: &str = "default";

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 64;

/// A valid consumer group name: 1 to 64 bytes of `[A-Za-z0-9._-]` (safe in a URL query, a file name, a metric
/// label and a Redis key without escaping).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(Arc<str>);

/// A group name that is empty, longer than 64 bytes or holds a byte outside `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid group name {0:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -")]
pub struct InvalidGroupName(String);

impl GroupName {
    /// The [`DEFAULT_GROUP`].
    pub fn default_group() -> Self {
        Self(Arc::from(DEFAULT_GROUP))
    }

    /// A valid name made from arbitrary text (a host name, say): every byte outside the alphabet becomes `-`,
    /// the result is cut to 64 bytes, and empty text gives the default group.
    pub fn sanitized(text: &str) -> Self {
        let name: String = text
            .chars()
            .map(|c| if is_name_char(c) { c } else { '-' })
            .take(MAX_GROUP_NAME)
            .collect();
        if name.is_empty() {
            Self::default_group()
        } else {
            Self(Arc::from(name))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string, for tables keyed by it.
    pub fn shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl FromStr for GroupName {
    type Err = InvalidGroupName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty() && s.len() <= MAX_GROUP_NAME && s.chars().all(is_name_char) {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidGroupName(s.chars().take(80).collect()))
        }
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a group that does not exist yet starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// After the newest message: it gets what is pushed from now on.
    #[default]
    Tail,
    /// At the oldest message the queue still holds (what the slowest group has not acked).
    Oldest,
}

impl StartAt {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tail => "tail",
            Self::Oldest => "oldest",
        }
    }
}

/// What a consumer asks for on the `/popmsg` handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PopQuery {
    /// The group it reads in.
    pub group: Option<GroupName>,
    /// Where its group starts if it does not exist yet.
    pub start: StartAt,
}

/// A `/popmsg` query msgqueue refuses (answered `400` before the upgrade).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PopQueryError {
    /// The group name is not valid.
    #[error(transparent)]
    Group(#[from] InvalidGroupName),
    /// `start` is neither `oldest` nor `tail`.
    #[error("invalid start {0:?}: expected oldest or tail")]
    Start(String),
    /// A parameter appears twice.
    #[error("parameter {0:?} given twice")]
    Repeated(&'static str),
    /// A parameter `/popmsg` does not take.
    #[error("unknown parameter {0:?}: /popmsg takes group=<name> and start=oldest|tail")]
    Unknown(String),
}

impl PopQuery {
    /// Parses `group=<name>&start=oldest|tail` (both optional, each at most once, in any order).
    pub fn parse(query: &str) -> Result<Self, PopQueryError> {
        let mut parsed = Self::default();
        let mut start_seen = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "group" if parsed.group.is_some() => return Err(PopQueryError::Repeated("group")),
                "group" => parsed.group = Some(value.parse()?),
                "start" if start_seen => return Err(PopQueryError::Repeated("start")),
                "start" => {
                    start_seen = true;
                    parsed.start = match value {
                        "tail" => StartAt::Tail,
                        "oldest" => StartAt::Oldest,
                        _ => return Err(PopQueryError::Start(value.chars().take(64).collect())),
                    };
                }
                _ => return Err(PopQueryError::Unknown(key.chars().take(64).collect())),
            }
        }
        Ok(parsed)
    }

    /// The group, the default one when none is named.
    pub fn group(&self) -> GroupName {
        self.group.clone().unwrap_or_else(GroupName::default_group)
    }

    /// The path a consumer dials: `/popmsg`, with the query when it names a group or starts at the oldest.
    pub fn path(&self) -> String {
        let mut path = POP_PATH.to_owned();
        if let Some(group) = &self.group {
            path.push_str("?group=");
            path.push_str(group.as_str());
        }
        if self.start != StartAt::Tail {
            path.push(if self.group.is_some() { '&' } else { '?' });
            path.push_str("start=");
            path.push_str(self.start.as_str());
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pop_query_names_a_group_and_where_a_new_one_starts() {
        let query = PopQuery::parse("").unwrap();
        assert_eq!(
            (query.group().as_str(), query.start),
            ("default", StartAt::Tail)
        );
        let query = PopQuery::parse("group=sub-1.a_b&start=oldest").unwrap();
        assert_eq!(
            (query.group().as_str(), query.start),
            ("sub-1.a_b", StartAt::Oldest)
        );
        let query = PopQuery::parse("start=tail&group=x").unwrap();
        assert_eq!((query.group().as_str(), query.start), ("x", StartAt::Tail));
        for bad in [
            "group=",
            "group=a%20b",
            "group=a/b",
            "start=newest",
            "groups=x",
            "group=a&group=b",
            "start=tail&start=oldest",
            &format!("group={}", "x".repeat(65)),
        ] {
            assert!(PopQuery::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn the_dialled_path_parses_back_to_the_same_query() {
        for query in [
            PopQuery::default(),
            PopQuery {
                group: Some("host-8082".parse().unwrap()),
                start: StartAt::Tail,
            },
            PopQuery {
                group: None,
                start: StartAt::Oldest,
            },
            PopQuery {
                group: Some("g".parse().unwrap()),
                start: StartAt::Oldest,
            },
        ] {
            let path = query.path();
            let back = path.strip_prefix(POP_PATH).unwrap();
            let back = back.strip_prefix('?').unwrap_or(back);
            assert_eq!(PopQuery::parse(back).unwrap(), query, "{path}");
        }
        assert_eq!(PopQuery::default().path(), "/popmsg");
    }

    #[test]
    fn any_text_sanitizes_to_a_valid_group_name() {
        assert_eq!(
            GroupName::sanitized("web-1.example.com").as_str(),
            "web-1.example.com"
        );
        assert_eq!(GroupName::sanitized("a b/c:8082").as_str(), "a-b-c-8082");
        assert_eq!(GroupName::sanitized("").as_str(), DEFAULT_GROUP);
        let long = GroupName::sanitized(&"h".repeat(100));
        assert_eq!(long.as_str().len(), MAX_GROUP_NAME);
        assert!(long.as_str().parse::<GroupName>().is_ok());
    }
}
