//! Client-facing frames of the publisher and subscriber beyond the ws-go envelope: subscription commands (both
//! modes) and the `wsmq.v1` confirmation, ack and error frames.
//!
//! Everything here is JSON text so browsers and `websocat` can speak it. The server side encodes with the
//! `encode_*` functions; clients (clientdemo, bench) decode with [`ServerFrame::parse`].

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::envelope::{Envelope, EnvelopeError, TopicError, validate_topic};
use super::history::{Epoch, HistoryPage, MAX_HISTORY_PAGE, Position};

/// Messages a `history` command returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// A subscriber command: `sub <topic>` / `unsub <topic>` as plain text, or ws-go's JSON form
/// `{"Topic": "<topic>", "Content": "sub"|"unsub"}`; `wsmq.v1` adds `sub <topic> since=<offset> epoch=<epoch>`
/// (JSON: `"Since"` and `"Epoch"` fields) and `history <topic> [limit=<n>]` (JSON: Content `history`, `"Limit"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// Start receiving messages published to the topic.
    Subscribe(Cow<'a, str>),
    /// Receive the retained messages of the topic after `since`, then its live messages, with no gap and no
    /// duplicate in between.
    Resume {
        /// The topic (exact: a pattern spans topics, each with its own offsets).
        topic: Cow<'a, str>,
        /// The last message the client has (offset 0, any epoch: none).
        since: Position,
    },
    /// Stop receiving messages published to the topic.
    Unsubscribe(Cow<'a, str>),
    /// Send the newest `limit` retained messages of the topic, once.
    History {
        /// The topic.
        topic: Cow<'a, str>,
        /// Most messages (1 to [`MAX_HISTORY_PAGE`]).
        limit: usize,
    },
    /// `ack @<user> <offset> [epoch=<epoch>]`: the client handled its inbox's messages up to `offset`; they are
    /// removed and never delivered again.
    Ack {
        /// The inbox (`@<user>`).
        topic: Cow<'a, str>,
        /// The newest offset handled (everything up to it is acked).
        offset: u64,
        /// The epoch of that offset; `None`: the inbox's current one.
        epoch: Option<Epoch>,
    },
}

/// Why a subscriber command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Neither `sub`/`unsub` text nor a JSON envelope with Content `sub`/`unsub`.
    #[error("unknown command (expected `sub <topic>` or `unsub <topic>`)")]
    Unknown,
    /// A JSON command that is not a valid envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The topic breaks the topic rules.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// An option after the topic is unknown or has a bad value.
    #[error("{0}")]
    Option(String),
}

/// The options of a JSON command beyond the envelope (matched case-insensitively in their usual spellings).
#[derive(Deserialize, Default)]
struct JsonOptions<'a> {
    #[serde(default, alias = "Since")]
    since: Option<u64>,
    #[serde(default, borrow, alias = "Epoch")]
    epoch: Option<Cow<'a, str>>,
    #[serde(default, alias = "Limit")]
    limit: Option<usize>,
}

/// Builds a command from its verb, topic and options (`since`, `epoch`, `limit`), the same for both forms.
fn command<'a>(
    verb: &str,
    topic: Cow<'a, str>,
    since: Option<u64>,
    epoch: Option<&str>,
    limit: Option<usize>,
) -> Result<Command<'a>, CommandError> {
    let option = |text: &str| Err(CommandError::Option(text.to_owned()));
    match verb {
        "sub" if limit.is_some() => option("`limit` goes with `history`, not `sub`"),
        "sub" => match (since, epoch) {
            (None, None) => Ok(Command::Subscribe(topic)),
            (Some(0), None) => Ok(Command::Resume {
                topic,
                since: Position {
                    epoch: Epoch(0),
                    offset: 0,
                },
            }),
            (Some(offset), Some(epoch)) => match epoch.parse() {
                Ok(epoch) => Ok(Command::Resume {
                    topic,
                    since: Position { epoch, offset },
                }),
                Err(err) => option(&format!("{err}")),
            },
            _ => option("`since` needs the `epoch` of its offset (only `since=0` goes alone)"),
        },
        "unsub" if since.is_some() || epoch.is_some() || limit.is_some() => {
            option("`unsub` takes no options")
        }
        "unsub" => Ok(Command::Unsubscribe(topic)),
        "history" if since.is_some() || epoch.is_some() => {
            option("`history` takes only `limit`; resume with `sub <topic> since=…`")
        }
        "history" => match limit.unwrap_or(DEFAULT_HISTORY_LIMIT) {
            limit @ 1..=MAX_HISTORY_PAGE => Ok(Command::History { topic, limit }),
            _ => option(&format!("`limit` must be 1 to {MAX_HISTORY_PAGE}")),
        },
        _ => Err(CommandError::Unknown),
    }
}

impl<'a> Command<'a> {
    /// Parses a text frame a subscriber client sent.
    pub fn parse(frame: &'a str) -> Result<Self, CommandError> {
        if frame.trim_start().starts_with('{') {
            let env = Envelope::parse_json(frame.as_bytes())?;
            if !matches!(&*env.content, "sub" | "unsub" | "history") {
                return Err(CommandError::Unknown);
            }
            let options: JsonOptions<'_> = serde_json::from_str(frame)
                .map_err(|err| CommandError::Option(format!("bad option: {err}")))?;
            let verb = env.content.into_owned();
            return command(
                &verb,
                env.topic,
                options.since,
                options.epoch.as_deref(),
                options.limit,
            );
        }
        let (verb, rest) = frame
            .trim_end_matches(['\r', '\n'])
            .split_once(' ')
            .ok_or(CommandError::Unknown)?;
        if verb == "ack" {
            return parse_ack(rest);
        }
        if !matches!(verb, "sub" | "unsub" | "history") {
            return Err(CommandError::Unknown);
        }
        let mut words = rest.split(' ');
        let topic = words.next().unwrap_or_default();
        validate_topic(topic)?;
        let (mut since, mut epoch, mut limit) = (None, None, None);
        for word in words.filter(|w| !w.is_empty()) {
            let bad = || CommandError::Option(format!("unknown option `{word}`"));
            let (key, value) = word.split_once('=').ok_or_else(bad)?;
            let number = || {
                value
                    .parse()
                    .map_err(|_| CommandError::Option(format!("`{key}` must be a whole number")))
            };
            match key {
                "since" => since = Some(number()?),
                "epoch" => epoch = Some(value),
                "limit" => limit = Some(number()?),
                _ => return Err(bad()),
            }
        }
        command(
            verb,
            Cow::Borrowed(topic),
            since,
            epoch,
            limit.map(|n: u64| n as usize),
        )
    }
}

/// `@<user> <offset> [epoch=<epoch>]`, the rest of an `ack` command.
fn parse_ack(rest: &str) -> Result<Command<'_>, CommandError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let topic = words.next().unwrap_or_default();
    validate_topic(topic)?;
    if !topic.starts_with('@') {
        return Err(CommandError::Option(
            "only inboxes (`@<user>`) are acked".into(),
        ));
    }
    let offset = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| CommandError::Option("expected `ack @<user> <offset>`".into()))?;
    let epoch = match words.next() {
        None => None,
        Some(word) => match word.strip_prefix("epoch=").map(str::parse::<Epoch>) {
            Some(Ok(epoch)) => Some(epoch),
            Some(Err(err)) => return Err(CommandError::Option(err.to_string())),
            None => return Err(CommandError::Option(format!("unknown option `{word}`"))),
        },
    };
    if let Some(extra) = words.next() {
        return Err(CommandError::Option(format!("unknown option `{extra}`")));
    }
    Ok(Command::Ack {
        topic: Cow::Borrowed(topic),
        offset,
        epoch,
    })
}

/// `{"acked":"@<user>","offset":<offset>}`: the subscriber's confirmation that an inbox's messages up to `offset`
/// are acked (removed for good).
pub fn encode_acked(topic: &str, offset: u64) -> Bytes {
    Bytes::from(serde_json::json!({ "acked": topic, "offset": offset }).to_string())
}

/// `{"ack":<id>}`: the publisher's confirmation that msgqueue durably stored the message with this `Id`.
pub fn encode_ack(id: &RawValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(id.get().len() + 8);
    buf.put_slice(b"{\"ack\":");
    buf.put_slice(id.get().as_bytes());
    buf.put_u8(b'}');
    buf.freeze()
}

/// `{"error":"<message>","id":<id>}` (`id` only when the failed message carried one).
pub fn encode_error(message: &str, id: Option<&RawValue>) -> Bytes {
    let mut out = serde_json::Map::new();
    out.insert("error".into(), message.into());
    let mut text = serde_json::Value::Object(out).to_string();
    if let Some(id) = id {
        text.pop();
        text.push_str(",\"id\":");
        text.push_str(id.get());
        text.push('}');
    }
    Bytes::from(text)
}

/// `{"subscribed":"<topic>"}`: sent to `wsmq.v1` subscribers once a subscription is in place.
pub fn encode_subscribed(topic: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "subscribed": topic }).to_string())
}

/// `{"unsubscribed":"<topic>"}`: sent to `wsmq.v1` subscribers once a subscription is removed.
pub fn encode_unsubscribed(topic: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "unsubscribed": topic }).to_string())
}

/// `{"error":"forbidden","topic":"<topic>"}`: the subscriber's answer to a `sub` the client's permissions do not
/// allow.
pub fn encode_forbidden(topic: &str) -> Bytes {
    encode_topic_error(topic, "forbidden")
}

/// `{"error":"<message>","topic":"<topic>"}`: a command about `topic` was refused or failed; the topic tells the
/// client which of its commands the error answers.
pub fn encode_topic_error(topic: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message, "topic": topic }).to_string())
}

/// `{"unsubscribed":"<topic>","reason":"forbidden"}`: a live subscription ended by the subscriber because
/// reloaded permissions no longer allow it (the connection stays open).
pub fn encode_revoked(topic: &str) -> Bytes {
    let topic = serde_json::Value::from(topic).to_string();
    Bytes::from(format!(
        r#"{{"unsubscribed":{topic},"reason":"forbidden"}}"#
    ))
}

/// `{"subscribed":"<topic>","recovered":…,"epoch":"…","offset":…}` (plus `"reason"` when not recovered): the
/// confirmation of a `sub … since=…`, sent before the recovered messages.
pub fn encode_resumed(topic: &str, page: &HistoryPage, offset: u64) -> Bytes {
    let mut out = serde_json::json!({
        "subscribed": topic,
        "recovered": page.recovered,
        "epoch": page.epoch.to_string(),
        "offset": offset,
    });
    if let (Some(reason), Some(object)) = (page.reason, out.as_object_mut()) {
        object.insert("reason".into(), reason.as_str().into());
    }
    Bytes::from(out.to_string())
}

/// A stored envelope as a `wsmq.v1` client receives it: with `"Offset"` and `"Epoch"` after its fields (the
/// envelope is a JSON object, so the fields go before its closing brace). `None` if it does not end in `}`.
pub fn encode_positioned(envelope: &[u8], position: Position) -> Option<Bytes> {
    let end = envelope.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if envelope[end] != b'}' {
        return None;
    }
    // Written piece by piece: this runs for every delivery to a `wsmq.v1` client.
    let mut out = BytesMut::with_capacity(end + 56);
    out.put_slice(&envelope[..end]);
    out.put_slice(b",\"Offset\":");
    out.put_slice(itoa::Buffer::new().format(position.offset).as_bytes());
    out.put_slice(b",\"Epoch\":\"");
    out.put_slice(&position.epoch.hex());
    out.put_slice(b"\"}");
    Some(out.freeze())
}

/// `{"history":"<topic>","epoch":"…","latest":…,"messages":[…]}`: the answer to a `history` command, each message
/// as [`encode_positioned`] delivers it.
pub fn encode_history(topic: &str, page: &HistoryPage) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(b"{\"history\":");
    out.put_slice(serde_json::Value::from(topic).to_string().as_bytes());
    out.put_slice(
        format!(
            ",\"epoch\":\"{}\",\"latest\":{},\"messages\":[",
            page.epoch, page.latest
        )
        .as_bytes(),
    );
    let mut first = true;
    for message in &page.messages {
        let position = Position {
            epoch: page.epoch,
            offset: message.offset,
        };
        if let Some(frame) = encode_positioned(message.message.get().as_bytes(), position) {
            if !first {
                out.put_u8(b',');
            }
            first = false;
            out.put_slice(&frame);
        }
    }
    out.put_slice(b"]}");
    out.freeze()
}

/// A text frame a client receives from the publisher or subscriber, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// A delivered message.
    Message {
        /// The topic it was published to.
        topic: String,
        /// Its content.
        content: String,
        /// Its place in the topic's history (`wsmq.v1`, when the topic keeps history).
        position: Option<Position>,
    },
    /// The publisher stored the message with this `Id` (raw JSON: a quoted string or a number).
    Ack {
        /// Raw JSON text of the id.
        id: String,
    },
    /// Something went wrong; `id` names the message when the error is about one.
    Error {
        /// Human-readable reason.
        message: String,
        /// Raw JSON text of the id, if any.
        id: Option<String>,
    },
    /// The subscriber confirmed a subscription.
    Subscribed(String),
    /// The subscriber confirmed an unsubscription.
    Unsubscribed(String),
    /// The subscriber confirmed a `sub … since=…`: the recovered messages follow.
    Resumed {
        /// The topic.
        topic: String,
        /// The topic's epoch.
        epoch: Epoch,
        /// The topic's newest offset when it was subscribed: after the recovered messages, the client is here.
        offset: u64,
        /// Whether the messages that follow are everything the client missed.
        recovered: bool,
        /// Why not, when `recovered` is false (e.g. `expired`, `epoch_changed`).
        reason: Option<String>,
    },
    /// An inbox's messages up to `offset` are acked.
    Acked {
        /// The inbox.
        topic: String,
        /// The newest offset acked.
        offset: u64,
    },
    /// The answer to a `history` command.
    History {
        /// The topic.
        topic: String,
        /// The topic's epoch.
        epoch: Epoch,
        /// The topic's newest offset.
        latest: u64,
        /// The messages, oldest first, as they would be delivered.
        messages: Vec<ServerFrame>,
    },
    /// The subscriber refused a `sub` for `topic` (`{"error":"forbidden","topic":…}`): the client learns which of
    /// its subscriptions failed, and why.
    SubscriptionRefused {
        /// The topic or pattern of the refused `sub`.
        topic: String,
        /// The error, e.g. `forbidden`.
        reason: String,
    },
    /// The subscriber ended a live subscription on its own (`{"unsubscribed":…,"reason":"forbidden"}` after an ACL
    /// reload took the permission away): unlike [`ServerFrame::Unsubscribed`], nobody asked for it.
    SubscriptionEnded {
        /// The topic or pattern that is no longer subscribed.
        topic: String,
        /// Why, e.g. `forbidden`.
        reason: String,
    },
}

/// The position fields of a delivered `wsmq.v1` message.
#[derive(Deserialize)]
struct WirePosition {
    #[serde(rename = "Offset")]
    offset: u64,
    #[serde(rename = "Epoch")]
    epoch: Epoch,
}

#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    epoch: Option<Epoch>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    history: Option<String>,
    #[serde(default)]
    acked: Option<String>,
    #[serde(default)]
    latest: Option<u64>,
    #[serde(default, borrow)]
    messages: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    ack: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    subscribed: Option<String>,
    #[serde(default)]
    unsubscribed: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl ServerFrame {
    /// Decodes a frame; `None` when it is none of the known shapes (clients show such frames raw).
    pub fn parse(frame: &str) -> Option<Self> {
        if let Ok(env) = Envelope::parse_json(frame.as_bytes()) {
            let position = serde_json::from_str::<WirePosition>(frame)
                .ok()
                .map(|p| Position {
                    epoch: p.epoch,
                    offset: p.offset,
                });
            return Some(Self::Message {
                topic: env.topic.into_owned(),
                content: env.content.into_owned(),
                position,
            });
        }
        let wire: WireFrame<'_> = serde_json::from_str(frame).ok()?;
        if let (Some(topic), Some(epoch)) = (&wire.history, wire.epoch) {
            return Some(Self::History {
                topic: topic.clone(),
                epoch,
                latest: wire.latest.unwrap_or(0),
                messages: wire
                    .messages
                    .iter()
                    .filter_map(|m| Self::parse(m.get()))
                    .collect(),
            });
        }
        if let (Some(topic), Some(offset)) = (&wire.acked, wire.offset) {
            return Some(Self::Acked {
                topic: topic.clone(),
                offset,
            });
        }
        if let (Some(topic), Some(recovered), Some(epoch)) =
            (&wire.subscribed, wire.recovered, wire.epoch)
        {
            return Some(Self::Resumed {
                topic: topic.clone(),
                epoch,
                offset: wire.offset.unwrap_or(0),
                recovered,
                reason: wire.reason,
            });
        }
        if let Some(id) = wire.ack {
            return Some(Self::Ack {
                id: id.get().to_owned(),
            });
        }
        if let Some(message) = wire.error {
            if let (None, Some(topic)) = (wire.id, wire.topic) {
                return Some(Self::SubscriptionRefused {
                    topic,
                    reason: message,
                });
            }
            return Some(Self::Error {
                message,
                id: wire.id.map(|id| id.get().to_owned()),
            });
        }
        if let Some(topic) = wire.subscribed {
            return Some(Self::Subscribed(topic));
        }
        let topic = wire.unsubscribed?;
        Some(match wire.reason {
            Some(reason) => Self::SubscriptionEnded { topic, reason },
            None => Self::Unsubscribed(topic),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn parses_text_and_ws_go_json_commands() {
        assert_eq!(
            Command::parse("sub news").unwrap(),
            Command::Subscribe("news".into())
        );
        assert_eq!(
            Command::parse("unsub news\r\n").unwrap(),
            Command::Unsubscribe("news".into())
        );
        assert_eq!(
            Command::parse(r#"{"Topic":"news","Content":"sub"}"#).unwrap(),
            Command::Subscribe("news".into())
        );
        assert_eq!(
            Command::parse(r#"{"topic":"news","content":"unsub"}"#).unwrap(),
            Command::Unsubscribe("news".into())
        );
    }

    #[test]
    fn refuses_unknown_commands_and_bad_topics() {
        assert_eq!(Command::parse("subscribe news"), Err(CommandError::Unknown));
        assert_eq!(Command::parse("sub"), Err(CommandError::Unknown));
        assert_eq!(
            Command::parse(r#"{"Topic":"t","Content":"hello"}"#),
            Err(CommandError::Unknown)
        );
        assert_eq!(
            Command::parse("sub a b"),
            Err(CommandError::Option("unknown option `b`".into()))
        );
        assert_eq!(
            Command::parse("sub "),
            Err(CommandError::Topic(TopicError::Empty))
        );
        assert!(matches!(
            Command::parse("{oops"),
            Err(CommandError::Envelope(_))
        ));
    }

    #[test]
    fn server_frames_round_trip() {
        let id = raw(r#""m-1""#);
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_ack(&id)).unwrap()),
            Some(ServerFrame::Ack {
                id: r#""m-1""#.into()
            })
        );
        let err = encode_error("queue \"full\"", Some(&raw("7")));
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&err).unwrap()),
            Some(ServerFrame::Error {
                message: "queue \"full\"".into(),
                id: Some("7".into())
            })
        );
        let err = encode_error("bad", None);
        assert_eq!(std::str::from_utf8(&err).unwrap(), r#"{"error":"bad"}"#);
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_subscribed("t")).unwrap()),
            Some(ServerFrame::Subscribed("t".into()))
        );
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_unsubscribed("t")).unwrap()),
            Some(ServerFrame::Unsubscribed("t".into()))
        );
        assert_eq!(
            ServerFrame::parse(r#"{"Topic":"t","Content":"hi"}"#),
            Some(ServerFrame::Message {
                topic: "t".into(),
                content: "hi".into(),
                position: None,
            })
        );
        assert_eq!(ServerFrame::parse("plain text"), None);
    }

    const POSITION: Position = Position {
        epoch: Epoch(0xab),
        offset: 7,
    };

    #[test]
    fn resume_and_history_commands_parse_in_both_forms() {
        let resume = Command::Resume {
            topic: "news".into(),
            since: POSITION,
        };
        assert_eq!(Command::parse("sub news since=7 epoch=ab").unwrap(), resume);
        assert_eq!(
            Command::parse(
                r#"{"Topic":"news","Content":"sub","Since":7,"Epoch":"00000000000000ab"}"#
            )
            .unwrap(),
            resume
        );
        assert_eq!(
            Command::parse("sub news since=0").unwrap(),
            Command::Resume {
                topic: "news".into(),
                since: Position {
                    epoch: Epoch(0),
                    offset: 0
                }
            }
        );
        assert_eq!(
            Command::parse("history news limit=5").unwrap(),
            Command::History {
                topic: "news".into(),
                limit: 5
            }
        );
        assert_eq!(
            Command::parse(r#"{"topic":"news","content":"history"}"#).unwrap(),
            Command::History {
                topic: "news".into(),
                limit: DEFAULT_HISTORY_LIMIT
            }
        );
    }

    #[test]
    fn inbox_acks_parse_and_their_confirmation_decodes_back() {
        assert_eq!(
            Command::parse("ack @alice 17").unwrap(),
            Command::Ack {
                topic: "@alice".into(),
                offset: 17,
                epoch: None
            }
        );
        assert_eq!(
            Command::parse("ack @alice 17 epoch=ab").unwrap(),
            Command::Ack {
                topic: "@alice".into(),
                offset: 17,
                epoch: Some(Epoch(0xab))
            }
        );
        for (frame, expected) in [
            ("ack news 1", "only inboxes"),
            ("ack @alice", "expected `ack @<user> <offset>`"),
            ("ack @alice x", "expected `ack @<user> <offset>`"),
            ("ack @alice 1 limit=2", "unknown option `limit=2`"),
        ] {
            match Command::parse(frame) {
                Err(CommandError::Option(message)) => {
                    assert!(message.contains(expected), "{frame}: {message}");
                }
                other => panic!("{frame}: {other:?}"),
            }
        }
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_acked("@alice", 17)).unwrap()),
            Some(ServerFrame::Acked {
                topic: "@alice".into(),
                offset: 17
            })
        );
    }

    #[test]
    fn bad_resume_and_history_options_say_what_is_wrong() {
        for (frame, expected) in [
            (
                "sub news since=7",
                "`since` needs the `epoch` of its offset",
            ),
            ("sub news since=x epoch=1", "`since` must be a whole number"),
            (
                "sub news since=7 epoch=zz",
                "epoch must be 1 to 16 hex digits",
            ),
            ("sub news limit=3", "`limit` goes with `history`"),
            ("history news limit=0", "`limit` must be 1 to 1000"),
            ("history news since=1", "`history` takes only `limit`"),
            ("unsub news since=1", "`unsub` takes no options"),
        ] {
            match Command::parse(frame) {
                Err(CommandError::Option(message)) => {
                    assert!(message.contains(expected), "{frame}: {message}");
                }
                other => panic!("{frame}: {other:?}"),
            }
        }
    }

    #[test]
    fn positioned_messages_resumes_and_history_decode_back() {
        let envelope = br#"{"Topic":"t","Content":"hi"}"#;
        let frame = encode_positioned(envelope, POSITION).unwrap();
        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            r#"{"Topic":"t","Content":"hi","Offset":7,"Epoch":"00000000000000ab"}"#
        );
        let message = ServerFrame::Message {
            topic: "t".into(),
            content: "hi".into(),
            position: Some(POSITION),
        };
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&frame).unwrap()),
            Some(message.clone())
        );
        assert_eq!(encode_positioned(b"not json", POSITION), None);
        let page = HistoryPage {
            epoch: POSITION.epoch,
            latest: 9,
            recovered: false,
            reason: Some(super::super::history::Unrecovered::Expired),
            messages: vec![super::super::history::HistoryMessage {
                offset: 7,
                message: raw(r#"{"Topic":"t","Content":"hi"}"#),
            }],
        };
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_resumed("t", &page, 9)).unwrap()),
            Some(ServerFrame::Resumed {
                topic: "t".into(),
                epoch: POSITION.epoch,
                offset: 9,
                recovered: false,
                reason: Some("expired".into())
            })
        );
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_history("t", &page)).unwrap()),
            Some(ServerFrame::History {
                topic: "t".into(),
                epoch: POSITION.epoch,
                latest: 9,
                messages: vec![message]
            })
        );
    }

    #[test]
    fn refused_and_ended_subscriptions_keep_their_topic_and_reason() {
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_forbidden("news.*")).unwrap()),
            Some(ServerFrame::SubscriptionRefused {
                topic: "news.*".into(),
                reason: "forbidden".into()
            })
        );
        assert_eq!(
            ServerFrame::parse(std::str::from_utf8(&encode_revoked("@alice")).unwrap()),
            Some(ServerFrame::SubscriptionEnded {
                topic: "@alice".into(),
                reason: "forbidden".into()
            })
        );
    }
}
