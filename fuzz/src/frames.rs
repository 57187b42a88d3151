//! Fuzz entry points for what wsmq-core parses from the network: reliable-mode queue frames, ws-go envelopes,
//! subscriber commands and server frames, and the HTTP request head with its credentials.
//!
//! Each function takes arbitrary bytes, must never panic, and asserts the invariants that are cheap to check
//! (mostly that encoding what was parsed gives back what was parsed). The `cargo fuzz` targets call them, and
//! `core/tests/fuzz_corpus.rs` replays the committed corpus through the same functions on stable.

use bytes::Bytes;
use wsmq_core::Secret;
use wsmq_core::auth::{Credentials, Presented};
use wsmq_core::http::{self, HttpError, MAX_HEAD_SIZE};
use wsmq_core::protocol::client::{self, Command, ServerFrame};
use wsmq_core::protocol::envelope::{Envelope, Publish, validate_topic};
use wsmq_core::protocol::history::MAX_HISTORY_PAGE;
use wsmq_core::protocol::queue::{FrameError, FrameReader, FrameWriter};

/// Payload limit given to the frame reader: small, so the fuzzer reaches the `TooLarge` path easily.
const MAX_PAYLOAD: usize = 512;

/// Reads `data` as a frame in each of the four record directions (`/pushmsg` and `/popmsg`, each way).
///
/// Invariants: an empty frame is `Empty` and nothing else is; re-encoding the records read before the end (or
/// before the first error) reproduces the input byte for byte, or a prefix of it (deliveries: the same records
/// when read again, since unknown flag bits are dropped); no payload exceeds the limit.
pub fn queue_frame(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);

    let (pushes, end) = read_all(&frame, FrameReader::next_push);
    let mut writer = FrameWriter::default();
    pushes.iter().for_each(|r| writer.push_record(r));
    check_reencoding(data, &writer.take(), end.as_ref());

    let (replies, end) = read_all(&frame, FrameReader::next_push_reply);
    replies.iter().for_each(|r| writer.push_reply(*r));
    check_reencoding(data, &writer.take(), end.as_ref());

    let (pops, end) = read_all(&frame, FrameReader::next_pop);
    pops.iter().for_each(|r| writer.pop_record(*r));
    check_reencoding(data, &writer.take(), end.as_ref());

    let (deliveries, _) = read_all(&frame, FrameReader::next_delivery);
    for d in &deliveries {
        assert!(d.payload.len() <= MAX_PAYLOAD, "payload over the limit");
        writer.deliver(d.id, d.redelivered, d.position, &d.payload);
    }
    let again = writer.take();
    if !deliveries.is_empty() {
        let (reread, end) = read_all(&again, FrameReader::next_delivery);
        assert_eq!(end, None, "re-encoded deliveries must read cleanly");
        assert_eq!(reread, deliveries, "deliveries must survive re-encoding");
    }
}

/// Every record of `frame` until the end or the first error, and that error.
fn read_all<T>(
    frame: &Bytes,
    mut next: impl FnMut(&mut FrameReader) -> Result<Option<T>, FrameError>,
) -> (Vec<T>, Option<FrameError>) {
    let mut reader = FrameReader::new(frame.clone(), MAX_PAYLOAD);
    let mut records = Vec::new();
    loop {
        match next(&mut reader) {
            Ok(Some(record)) => records.push(record),
            Ok(None) => return (records, None),
            Err(err) => return (records, Some(err)),
        }
    }
}

fn check_reencoding(input: &[u8], encoded: &[u8], end: Option<&FrameError>) {
    assert_eq!(
        input.is_empty(),
        end == Some(&FrameError::Empty),
        "only an empty frame is Empty"
    );
    match end {
        None => assert_eq!(encoded, input, "a clean frame must re-encode to itself"),
        Some(_) => assert!(
            input.starts_with(encoded),
            "records read before an error must re-encode to a prefix of the frame"
        ),
    }
}

/// Parses `data` as a publisher's text frame in every way the publisher and subscriber do.
///
/// Invariants: a valid envelope has a valid topic, and its canonical encoding parses back to the same envelope;
/// an `Id` that `Publish` accepts is echoed in an ack frame that clients decode to the same raw id.
pub fn envelope(data: &[u8]) {
    if let Ok(env) = Envelope::parse_json(data) {
        check_envelope(&env);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(env) = Envelope::parse_text(text) {
        check_envelope(&env);
    }
    let publish = Publish::parse_text(text);
    if let Ok(env) = &publish.envelope {
        check_envelope(env);
    }
    if let Some(id) = publish.id {
        let ack = client::encode_ack(id);
        let ack = std::str::from_utf8(&ack).expect("an ack frame is UTF-8");
        assert_eq!(
            ServerFrame::parse(ack),
            Some(ServerFrame::Ack {
                id: id.get().to_owned()
            }),
            "an accepted Id must round-trip through the ack frame"
        );
    }
}

fn check_envelope(env: &Envelope<'_>) {
    assert_eq!(
        validate_topic(&env.topic),
        Ok(()),
        "accepted an invalid topic"
    );
    let encoded = env.encode();
    let reparsed = Envelope::parse_json(&encoded).expect("the canonical encoding must parse");
    assert_eq!(&reparsed, env, "the canonical encoding must round-trip");
    let text = std::str::from_utf8(&encoded).expect("the canonical encoding is UTF-8");
    assert_eq!(
        ServerFrame::parse(text),
        Some(ServerFrame::Message {
            topic: env.topic.clone().into_owned(),
            content: env.content.clone().into_owned(),
            position: None,
        }),
        "clients must decode a delivered envelope"
    );
}

/// Parses `data` as a subscriber client's command and as a frame a client receives.
///
/// Invariants: an accepted command names a valid topic, and the subscriber's confirmation of it decodes to the
/// same topic; any text survives the error frame that would carry it.
pub fn client_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Command::parse(text) {
        Ok(Command::Subscribe(topic)) => {
            assert_eq!(validate_topic(&topic), Ok(()), "accepted an invalid topic");
            let frame = client::encode_subscribed(&topic);
            assert_eq!(
                ServerFrame::parse(std::str::from_utf8(&frame).expect("UTF-8")),
                Some(ServerFrame::Subscribed(topic.into_owned()))
            );
        }
        Ok(Command::Unsubscribe(topic)) => {
            assert_eq!(validate_topic(&topic), Ok(()), "accepted an invalid topic");
            let frame = client::encode_unsubscribed(&topic);
            assert_eq!(
                ServerFrame::parse(std::str::from_utf8(&frame).expect("UTF-8")),
                Some(ServerFrame::Unsubscribed(topic.into_owned()))
            );
        }
        Ok(Command::Ack { topic, .. }) => {
            assert!(topic.starts_with('@'), "acked a topic that is not an inbox");
            assert_eq!(validate_topic(&topic), Ok(()), "accepted an invalid topic");
        }
        Ok(Command::Resume { topic, .. }) => {
            assert_eq!(validate_topic(&topic), Ok(()), "accepted an invalid topic");
        }
        Ok(Command::History { topic, limit }) => {
            assert_eq!(validate_topic(&topic), Ok(()), "accepted an invalid topic");
            assert!(
                (1..=MAX_HISTORY_PAGE).contains(&limit),
                "accepted a limit out of range"
            );
        }
        Err(_) => {}
    }
    let _ = ServerFrame::parse(text);
    let error = client::encode_error(text, None);
    assert_eq!(
        ServerFrame::parse(std::str::from_utf8(&error).expect("UTF-8")),
        Some(ServerFrame::Error {
            message: text.to_owned(),
            id: None
        }),
        "an error frame must carry any text"
    );
}

/// Parses `data` as an HTTP request head the way the listener does, then reads the credentials from it (and
/// from the raw bytes as a header value, which reaches the auth parsers more directly).
///
/// Invariants: a complete head consumed no more than it was given and no more than [`MAX_HEAD_SIZE`];
/// credentials that parse re-encode (as a header or a subprotocol token) to the same user and password.
pub fn http_head(data: &[u8]) {
    match http::parse_head(data) {
        Ok(Some((head, consumed))) => {
            assert!(consumed <= data.len(), "consumed more than the input");
            assert!(consumed <= MAX_HEAD_SIZE, "accepted an oversize head");
            let _ = head.has_token("connection", "upgrade");
            let _ = head.header("sec-websocket-key");
            if let Some(creds) = head
                .header("authorization")
                .and_then(Credentials::from_basic_header)
            {
                check_credentials(&creds);
            }
            if let Some(presented) = head
                .header("authorization")
                .and_then(Presented::from_authorization)
            {
                check_presented(&presented);
            }
            for offered in head
                .headers("sec-websocket-protocol")
                .flat_map(|v| v.split(','))
            {
                if let Some(creds) = Credentials::from_subprotocol_token(offered) {
                    check_credentials(&creds);
                }
                if let Some(presented) = Presented::from_subprotocol(offered) {
                    check_presented(&presented);
                }
            }
        }
        Ok(None) => {}
        Err(HttpError::Malformed(_) | HttpError::TooLarge) => {}
        Err(err) => panic!("parsing bytes cannot fail with {err}"),
    }
    if let Ok(value) = std::str::from_utf8(data) {
        if let Some(creds) = Credentials::from_basic_header(value) {
            check_credentials(&creds);
        }
        if let Some(creds) = Credentials::from_subprotocol_token(value) {
            check_credentials(&creds);
        }
    }
}

/// A parsed Basic credential is checked as such; a bearer token is never empty and never shown by `Debug`.
fn check_presented(presented: &Presented) {
    match presented {
        Presented::Basic(creds) => check_credentials(creds),
        Presented::Bearer(token) => {
            assert!(!token.expose().is_empty(), "accepted an empty bearer token");
            let shown = format!("{presented:?}");
            let placeholder = format!("{:?}", Presented::Bearer(Secret::new("x")));
            assert_eq!(shown, placeholder, "Debug shows something of the token");
        }
    }
}

fn check_credentials(creds: &Credentials) {
    assert!(!creds.user.is_empty(), "accepted an empty user name");
    for again in [
        Credentials::from_basic_header(&creds.basic_header()),
        Credentials::from_subprotocol_token(&creds.subprotocol_token()),
    ] {
        let again = again.expect("re-encoded credentials must parse");
        assert_eq!(again.user, creds.user);
        assert_eq!(again.password.expose(), creds.password.expose());
    }
}
