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

/// A subscriber command: `sub <topic>` / `unsub <topic>` as plain text, or ws-go's JSON form
/// `{"Topic": "<topic>", "Content": "sub"|"unsub"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// Start receiving messages published to the topic.
    Subscribe(Cow<'a, str>),
    /// Stop receiving messages published to the topic.
    Unsubscribe(Cow<'a, str>),
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
}

impl<'a> Command<'a> {
    /// Parses a text frame a subscriber client sent.
    pub fn parse(frame: &'a str) -> Result<Self, CommandError> {
        if frame.trim_start().starts_with('{') {
            let env = Envelope::parse_json(frame.as_bytes())?;
            return match &*env.content {
                "sub" => Ok(Self::Subscribe(env.topic)),
                "unsub" => Ok(Self::Unsubscribe(env.topic)),
                _ => Err(CommandError::Unknown),
            };
        }
        let (verb, topic) = frame
            .trim_end_matches(['\r', '\n'])
            .split_once(' ')
            .ok_or(CommandError::Unknown)?;
        let make: fn(Cow<'a, str>) -> Self = match verb {
            "sub" => Self::Subscribe,
            "unsub" => Self::Unsubscribe,
            _ => return Err(CommandError::Unknown),
        };
        validate_topic(topic)?;
        Ok(make(Cow::Borrowed(topic)))
    }
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
    Bytes::from(serde_json::json!({ "error": "forbidden", "topic": topic }).to_string())
}

/// `{"unsubscribed":"<topic>","reason":"forbidden"}`: a live subscription ended by the subscriber because
/// reloaded permissions no longer allow it (the connection stays open).
pub fn encode_revoked(topic: &str) -> Bytes {
    let topic = serde_json::Value::from(topic).to_string();
    Bytes::from(format!(
        r#"{{"unsubscribed":{topic},"reason":"forbidden"}}"#
    ))
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

#[derive(Deserialize)]
struct WireFrame<'a> {
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
            return Some(Self::Message {
                topic: env.topic.into_owned(),
                content: env.content.into_owned(),
            });
        }
        let wire: WireFrame<'_> = serde_json::from_str(frame).ok()?;
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
            Err(CommandError::Topic(TopicError::BadCharacter))
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
                content: "hi".into()
            })
        );
        assert_eq!(ServerFrame::parse("plain text"), None);
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
