//! ws-go's message envelope, `{"Topic":"t","Content":"..."}`, parsed and validated at the edge.
//!
//! Publishers send it, msgqueue carries it as opaque bytes and subscribers deliver it unchanged. The publisher
//! validates once and re-encodes to the canonical form ([`Envelope::encode`]), so everything behind the edge
//! can trust the bytes and the subscriber can find the topic with one parse.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::schedule::{Schedule, ScheduleError};

/// Longest topic accepted, in bytes of UTF-8.
pub const MAX_TOPIC_LEN: usize = 256;

/// A message as ws-go clients know it: a topic and its content.
///
/// Borrows from the frame it was parsed from when the JSON holds no escapes, so validating at the edge costs
/// no allocation in the common case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Routing key; see [`validate_topic`] for what is allowed.
    pub topic: Cow<'a, str>,
    /// Opaque text delivered to subscribers.
    pub content: Cow<'a, str>,
}

/// Why an envelope or topic was refused. The message names the problem and never echoes the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The frame is not a JSON object of the expected shape.
    #[error("not a JSON envelope: {0}")]
    Json(String),
    /// The JSON object has no `Topic` field.
    #[error("missing Topic")]
    MissingTopic,
    /// The JSON object has no `Content` field.
    #[error("missing Content")]
    MissingContent,
    /// The plain form `topic content` had no space separating the two.
    #[error("expected `topic content`")]
    NoSeparator,
    /// The `Id` field is neither a string nor a number.
    #[error("Id must be a string or a number")]
    BadId,
    /// The topic breaks the rules of [`validate_topic`].
    #[error("invalid topic: {0}")]
    Topic(TopicError),
}

/// What is wrong with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topics must not be empty.
    #[error("empty")]
    Empty,
    /// Topics are at most [`MAX_TOPIC_LEN`] bytes.
    #[error("longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// Whitespace would make `sub topic` commands ambiguous; control characters corrupt terminals and logs.
    #[error("contains whitespace or a control character")]
    BadCharacter,
}

/// Checks a topic: 1..=[`MAX_TOPIC_LEN`] bytes of UTF-8 with no whitespace or control characters.
///
/// The same rule applies to publishing and subscribing, so a topic that can be published can be subscribed.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::BadCharacter);
    }
    Ok(())
}

impl<'a> Envelope<'a> {
    /// Parses a JSON envelope the way Go's `encoding/json` would: field names match case-insensitively
    /// (`topic`, `TOPIC`...), unknown fields are ignored, and the last duplicate wins. Both fields must be strings
    /// and the topic must be valid.
    pub fn parse_json(frame: &'a [u8]) -> Result<Self, EnvelopeError> {
        RawEnvelope::parse(frame)?.validate()
    }

    /// The topic of a JSON envelope: exactly what [`Envelope::parse_json`] returns as its topic, or its error.
    ///
    /// Routing (the subscriber) and history (msgqueue) need only the topic of every message. Messages a
    /// publisher forwards are in the canonical encoding ([`Envelope::encode`]); when neither string holds an
    /// escape, one scan finds the topic and checks the rest, and the JSON parser runs only for anything else.
    pub fn topic_of_json(frame: &'a [u8]) -> Result<Cow<'a, str>, EnvelopeError> {
        match canonical_topic(frame) {
            Some(topic) => Ok(Cow::Borrowed(topic)),
            None => Self::parse_json(frame).map(|envelope| envelope.topic),
        }
    }

    /// Parses the plain form `topic content` (split at the first space), for tools like websocat.
    pub fn parse_plain(frame: &'a str) -> Result<Self, EnvelopeError> {
        let (topic, content) = frame.split_once(' ').ok_or(EnvelopeError::NoSeparator)?;
        validate_topic(topic).map_err(EnvelopeError::Topic)?;
        Ok(Self {
            topic: Cow::Borrowed(topic),
            content: Cow::Borrowed(content),
        })
    }

    /// Parses what a publisher sent in a text frame: JSON when it starts with `{` (after leading whitespace),
    /// the plain form otherwise.
    pub fn parse_text(frame: &'a str) -> Result<Self, EnvelopeError> {
        if frame.trim_start().starts_with('{') {
            Self::parse_json(frame.as_bytes())
        } else {
            Self::parse_plain(frame)
        }
    }

    /// Encodes the canonical form `{"Topic":"..","Content":".."}`: what ws-go's subscribers expect to receive.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.topic.len() + self.content.len() + 26);
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Appends the canonical encoding to `buf`, for callers that batch many envelopes into one buffer.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        buf.put_slice(CANONICAL_TOPIC);
        write_json_string(buf, &self.topic);
        buf.put_slice(CANONICAL_CONTENT);
        write_json_string(buf, &self.content);
        buf.put_u8(b'}');
    }

    /// Copies borrowed fields so the envelope can outlive the frame it was parsed from.
    pub fn into_owned(self) -> Envelope<'static> {
        Envelope {
            topic: Cow::Owned(self.topic.into_owned()),
            content: Cow::Owned(self.content.into_owned()),
        }
    }
}

/// A publish request in `wsmq.v1` mode: an envelope plus the client's optional `Id`, which the publisher
/// echoes in its ack or error frame.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// The raw JSON of the `Id` field (a string or a number), if present, echoed back verbatim.
    pub id: Option<&'a RawValue>,
    /// The envelope, or why it is invalid. Kept apart from `id` so an error can still name the message.
    pub envelope: Result<Envelope<'a>, EnvelopeError>,
    /// `DeliverAt` / `Delay` (matched case-insensitively), or why they are invalid; `Ok(None)` when absent.
    /// Only `wsmq.v1` sessions look at it: compat clients' extra fields are ignored as ws-go did.
    pub schedule: Result<Option<Schedule>, ScheduleError>,
}

impl<'a> Publish<'a> {
    /// Parses a text frame like [`Envelope::parse_text`], also picking up a JSON `Id` field (matched
    /// case-insensitively). An `Id` that is neither a string nor a number is an error and is not echoed.
    pub fn parse_text(frame: &'a str) -> Self {
        if !frame.trim_start().starts_with('{') {
            return Self {
                id: None,
                envelope: Envelope::parse_plain(frame),
                schedule: Ok(None),
            };
        }
        match RawEnvelope::parse(frame.as_bytes()) {
            Err(err) => Self {
                id: None,
                envelope: Err(err),
                schedule: Ok(None),
            },
            Ok(mut raw) => {
                let id = raw.id.take();
                let schedule = Schedule::from_fields(raw.deliver_at.take(), raw.delay.take());
                let id_ok = id.is_none_or(|id| {
                    let first = id.get().as_bytes().first().copied().unwrap_or(b' ');
                    first == b'"' || first == b'-' || first.is_ascii_digit()
                });
                if id_ok {
                    Self {
                        id,
                        envelope: raw.validate(),
                        schedule,
                    }
                } else {
                    Self {
                        id: None,
                        envelope: Err(EnvelopeError::BadId),
                        schedule,
                    }
                }
            }
        }
    }
}

/// Keeps serde's position information but drops any quoted input it might contain, so error frames and logs
/// never carry a client's payload.
fn json_error_summary(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match err.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Data => "a field has the wrong type (Topic and Content must be strings)",
        Category::Eof => "unexpected end of input",
    };
    format!("{what} at line {} column {}", err.line(), err.column())
}

/// Writes `s` as a JSON string literal. Escapes only what JSON requires, like Go's encoder minus its HTML
/// escaping, which clients do not depend on.
fn write_json_string(buf: &mut BytesMut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.put_u8(b'"');
    let bytes = s.as_bytes();
    if !has_escapes(bytes) {
        buf.put_slice(bytes);
        buf.put_u8(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        buf.put_slice(&bytes[start..i]);
        if escape.is_empty() {
            buf.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            buf.put_slice(escape);
        }
        start = i + 1;
    }
    buf.put_slice(&bytes[start..]);
    buf.put_u8(b'"');
}

/// What the canonical encoding ([`Envelope::encode`]) writes before the topic's string and before the content's:
/// the encoder and [`canonical_topic`] share them.
const CANONICAL_TOPIC: &[u8] = b"{\"Topic\":";
const CANONICAL_CONTENT: &[u8] = b",\"Content\":";

/// The topic of `frame` when it is the canonical encoding `{"Topic":"..","Content":".."}` exactly, with no
/// escape or control character in either string, both valid UTF-8 and a valid topic: the JSON parser accepts such a
/// frame and returns this topic. `None` for anything else, which the parser then decides.
fn canonical_topic(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(CANONICAL_TOPIC)?.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| needs_escape(b))?;
    let (topic, rest) = rest.split_at(end);
    let content = rest
        .strip_prefix(b"\"")?
        .strip_prefix(CANONICAL_CONTENT)?
        .strip_prefix(b"\"")?
        .strip_suffix(b"\"}")?;
    if has_escapes(content) {
        return None;
    }
    std::str::from_utf8(content).ok()?;
    let topic = std::str::from_utf8(topic).ok()?;
    validate_topic(topic).ok()?;
    Some(topic)
}

/// Whether `b` cannot appear as itself inside a JSON string: a quote, a backslash or a control character.
fn needs_escape(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Whether any byte of `bytes` needs escaping in a JSON string. It scans to the end rather than stopping at the first
/// such byte, so the compiler vectorises it: message contents are checked whole on every hop.
fn has_escapes(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| any | needs_escape(b))
}

/// Field-by-field view of the JSON object, matched case-insensitively.
struct RawEnvelope<'a> {
    topic: Option<Cow<'a, str>>,
    content: Option<Cow<'a, str>>,
    id: Option<&'a RawValue>,
    deliver_at: Option<&'a RawValue>,
    delay: Option<&'a RawValue>,
}

impl<'a> RawEnvelope<'a> {
    fn parse(frame: &'a [u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(frame).map_err(|e| EnvelopeError::Json(json_error_summary(&e)))
    }

    fn validate(self) -> Result<Envelope<'a>, EnvelopeError> {
        let topic = self.topic.ok_or(EnvelopeError::MissingTopic)?;
        let content = self.content.ok_or(EnvelopeError::MissingContent)?;
        validate_topic(&topic).map_err(EnvelopeError::Topic)?;
        Ok(Envelope { topic, content })
    }
}

impl<'de> serde::Deserialize<'de> for RawEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawEnvelopeVisitor)
    }
}

struct RawEnvelopeVisitor;

impl<'de> Visitor<'de> for RawEnvelopeVisitor {
    type Value = RawEnvelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with Topic and Content")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = RawEnvelope {
            topic: None,
            content: None,
            id: None,
            deliver_at: None,
            delay: None,
        };
        // Keys as `CowStr`: serde's own `Cow<str>` would allocate every key of every message.
        while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
            if key.eq_ignore_ascii_case("topic") {
                out.topic = Some(map.next_value::<CowStr<'de>>()?.0);
            } else if key.eq_ignore_ascii_case("content") {
                out.content = Some(map.next_value::<CowStr<'de>>()?.0);
            } else if key.eq_ignore_ascii_case("id") {
                out.id = Some(map.next_value::<&'de RawValue>()?);
            } else if key.eq_ignore_ascii_case("deliverat") {
                out.deliver_at = Some(map.next_value::<&'de RawValue>()?);
            } else if key.eq_ignore_ascii_case("delay") {
                out.delay = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// A string that borrows from the input when it holds no escapes (serde's `Cow<str>` always allocates).
struct CowStr<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_topic_of_a_canonical_envelope_is_read_without_the_json_parser() {
        let frame = Envelope {
            topic: "news.eu".into(),
            content: "hello wörld".into(),
        }
        .encode();
        assert_eq!(canonical_topic(&frame), Some("news.eu"));
        assert_eq!(Envelope::topic_of_json(&frame).unwrap(), "news.eu");
        // Anything else goes to the parser, which decides as before.
        for frame in [
            r#"{"Topic":"a\"b","Content":"c"}"#,
            r#"{"Topic":"a","Content":"c\n"}"#,
            r#"{"Topic":"a","Content":"c","Topic":"b"}"#,
            r#"{"Topic":"a","Content":"c"} "#,
            r#"{"topic":"a","Content":"c"}"#,
            r#"{"Topic":"bad topic","Content":"c"}"#,
            "{\"Topic\":\"a\",\"Content\":\"tab\there\"}",
        ] {
            assert_eq!(canonical_topic(frame.as_bytes()), None, "{frame}");
        }
        assert_eq!(
            Envelope::topic_of_json(br#"{"Topic":"a","Content":"c","Topic":"b"}"#).unwrap(),
            "b"
        );
    }

    proptest! {
        /// Whatever the content (escapes or none, the two ways `write_json_string` takes), the encoding parses
        /// back to the same envelope, and its topic is read the same way by both readers.
        #[test]
        fn any_envelope_encodes_to_json_that_parses_back(topic in "[a-z.]{1,12}", content in "\\PC*|.*[\"\\\\\n\u{1}].*") {
            let envelope = Envelope { topic: topic.clone().into(), content: content.into() };
            let frame = envelope.encode();
            prop_assert_eq!(Envelope::parse_json(&frame).unwrap(), envelope);
            prop_assert_eq!(Envelope::topic_of_json(&frame).unwrap(), topic);
        }

        /// The fast path never changes an answer: on canonical-looking frames with any characters in either
        /// string (quotes, backslashes, control characters, non-ASCII, bytes that are not UTF-8), around the
        /// canonical layout or not, `topic_of_json` returns what `parse_json` does.
        #[test]
        fn topic_of_json_answers_as_parse_json_does(
            topic in proptest::collection::vec(
                prop_oneof![
                    20 => b'a'..=b'z',
                    2 => Just(b'.'),
                    1 => prop::sample::select(&[b'"', b'\\', b' ', 0x01, 0x7f, 0xc3, 0xa9, 0xff, b'*'][..]),
                ],
                0..8,
            ),
            content in proptest::collection::vec(
                prop_oneof![
                    20 => b' '..=b'~',
                    1 => prop::sample::select(&[b'"', b'\\', b'\n', 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xff, 0x80][..]),
                ],
                0..12,
            ),
            prefix in prop_oneof![
                6 => Just(&br#"{"Topic":""#[..]),
                1 => Just(&br#"{"topic":""#[..]),
                1 => Just(&br#" {"Topic":""#[..]),
            ],
            middle in prop_oneof![
                6 => Just(&br#"","Content":""#[..]),
                1 => Just(&br#"", "Content":""#[..]),
                1 => Just(&br#"","Content":"x"#[..]),
            ],
            suffix in prop_oneof![
                6 => Just(&br#""}"#[..]),
                1 => Just(&br#"" }"#[..]),
                1 => Just(&br#""}x"#[..]),
                1 => Just(&br#"","Topic":"b"}"#[..]),
            ],
        ) {
            let frame = [prefix, &topic, middle, &content, suffix].concat();
            let fast = Envelope::topic_of_json(&frame);
            let parsed = Envelope::parse_json(&frame).map(|envelope| envelope.topic);
            prop_assert_eq!(fast, parsed);
        }
    }

    #[test]
    fn parses_go_style_field_names_case_insensitively() {
        for frame in [
            r#"{"Topic":"news","Content":"hi"}"#,
            r#"{"topic":"news","content":"hi"}"#,
            r#"{"TOPIC":"news","cOnTeNt":"hi","Extra":[1,2]}"#,
        ] {
            let env = Envelope::parse_json(frame.as_bytes()).unwrap();
            assert_eq!((&*env.topic, &*env.content), ("news", "hi"), "{frame}");
        }
    }

    #[test]
    fn last_duplicate_field_wins_like_go() {
        let env = Envelope::parse_json(br#"{"Topic":"a","topic":"b","Content":""}"#).unwrap();
        assert_eq!(env.topic, "b");
    }

    #[test]
    fn unescaped_fields_borrow_from_the_frame() {
        let env = Envelope::parse_json(br#"{"Topic":"t","Content":"plain"}"#).unwrap();
        assert!(matches!(env.content, Cow::Borrowed(_)));
        let env = Envelope::parse_json(br#"{"Topic":"t","Content":"a\nb"}"#).unwrap();
        assert_eq!(env.content, "a\nb");
    }

    #[test]
    fn rejects_bad_envelopes_with_a_named_problem() {
        let cases: &[(&[u8], EnvelopeError)] = &[
            (br#"{"Content":"x"}"#, EnvelopeError::MissingTopic),
            (br#"{"Topic":"x"}"#, EnvelopeError::MissingContent),
            (
                br#"{"Topic":"","Content":"x"}"#,
                EnvelopeError::Topic(TopicError::Empty),
            ),
            (
                br#"{"Topic":"a b","Content":"x"}"#,
                EnvelopeError::Topic(TopicError::BadCharacter),
            ),
            (
                br#"{"Topic":"a\u0007","Content":"x"}"#,
                EnvelopeError::Topic(TopicError::BadCharacter),
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(&Envelope::parse_json(frame).unwrap_err(), want);
        }
        let long = format!(
            r#"{{"Topic":"{}","Content":"x"}}"#,
            "t".repeat(MAX_TOPIC_LEN + 1)
        );
        assert_eq!(
            Envelope::parse_json(long.as_bytes()).unwrap_err(),
            EnvelopeError::Topic(TopicError::TooLong)
        );
        assert!(matches!(
            Envelope::parse_json(b"not json"),
            Err(EnvelopeError::Json(_))
        ));
        assert!(matches!(
            Envelope::parse_json(br#"{"Topic":"t","Content":42}"#),
            Err(EnvelopeError::Json(_))
        ));
    }

    #[test]
    fn json_errors_never_echo_the_payload() {
        let err = Envelope::parse_json(br#"{"Topic":"t","Content":secret-value}"#).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn publish_picks_up_the_id_even_when_the_envelope_is_invalid() {
        let p = Publish::parse_text(r#"{"Topic":"t","Content":"c","Id":"m-1"}"#);
        assert_eq!(p.id.map(RawValue::get), Some(r#""m-1""#));
        assert!(p.envelope.is_ok());
        let p = Publish::parse_text(r#"{"id":42,"Topic":"bad topic","Content":"c"}"#);
        assert_eq!(p.id.map(RawValue::get), Some("42"));
        assert_eq!(
            p.envelope,
            Err(EnvelopeError::Topic(TopicError::BadCharacter))
        );
        let p = Publish::parse_text(r#"{"Id":{"x":1},"Topic":"t","Content":"c"}"#);
        assert!(p.id.is_none());
        assert_eq!(p.envelope, Err(EnvelopeError::BadId));
        let p = Publish::parse_text("t plain");
        assert!(p.id.is_none());
        assert_eq!(p.envelope.map(|e| e.content), Ok(Cow::Borrowed("plain")));
    }

    #[test]
    fn publish_reads_the_scheduling_fields_apart_from_the_envelope() {
        let publish = Publish::parse_text(r#"{"Topic":"t","Content":"c","delay":"90s","Id":1}"#);
        assert_eq!(
            publish.schedule,
            Ok(Some(Schedule::After(std::time::Duration::from_secs(90))))
        );
        assert_eq!(
            publish.envelope.unwrap().encode(),
            &br#"{"Topic":"t","Content":"c"}"#[..]
        );

        let publish = Publish::parse_text(
            r#"{"Topic":"t","Content":"c","DeliverAt":"2030-01-02T15:04:05Z","Delay":"1s"}"#,
        );
        assert_eq!(publish.schedule, Err(ScheduleError::Both));
        assert!(publish.envelope.is_ok(), "the envelope itself is fine");

        let publish = Publish::parse_text(r#"{"Topic":"t","Content":"c","DeliverAt":"soon"}"#);
        assert!(matches!(
            publish.schedule,
            Err(ScheduleError::BadDeliverAt(_))
        ));
        assert_eq!(Publish::parse_text("t plain text").schedule, Ok(None));
        assert_eq!(
            Publish::parse_text(r#"{"Topic":"t","Content":"c"}"#).schedule,
            Ok(None)
        );
    }

    #[test]
    fn topic_of_max_length_is_accepted() {
        assert_eq!(validate_topic(&"é".repeat(MAX_TOPIC_LEN / 2)), Ok(()));
    }

    #[test]
    fn plain_form_splits_at_the_first_space() {
        let env = Envelope::parse_text("news hello big world").unwrap();
        assert_eq!((&*env.topic, &*env.content), ("news", "hello big world"));
        assert_eq!(
            Envelope::parse_text("lonely").unwrap_err(),
            EnvelopeError::NoSeparator
        );
        assert_eq!(Envelope::parse_text("t ").unwrap().content, "");
    }

    #[test]
    fn encoding_is_canonical_and_round_trips() {
        let env = Envelope {
            topic: Cow::Borrowed("t\"q"),
            content: Cow::Borrowed("line\n\"quoted\" \\ \u{1} é"),
        };
        let bytes = env.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"Topic":"t\"q","Content":"line\n\"quoted\" \\ \u0001 é"}"#
        );
        assert_eq!(Envelope::parse_json(&bytes).unwrap(), env);
    }
}
