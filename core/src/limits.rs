//! [`Limits`]: the resource limits every wsmq listener enforces, as CLI flags with env fallbacks.
//!
//! One struct shared by all services so an operator tunes message size, timeouts and connection caps with the
//! same flags everywhere, and so the defaults are safe without any flag: a slowloris client is dropped, a dead
//! peer is detected within about a minute and an idle connection costs only a few KiB.

use std::time::Duration;

use thiserror::Error;
use tungstenite::protocol::WebSocketConfig;

use crate::protocol::queue::RECORD_OVERHEAD;

/// Largest accepted WebSocket message by default (64 KiB), the same order as ws-go's messages.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Largest accepted WebSocket frame payload by default.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;
/// Concurrent connections per listener by default; the host allows 20,000 file descriptors per process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Connections in their handshake (TLS, HTTP head, authentication, upgrade) at once per listener by default.
pub const DEFAULT_MAX_HANDSHAKES: usize = 2048;
/// Connections in their handshake at once from one address (IPv6: one /64) by default: enough for a client
/// host opening a few hundred connections at once (`wsmq-bench` opens 256), a small share of the total.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 256;
/// WebSocket read buffer by default: the initial buffer and the most read from TLS per call; it grows on demand
/// to hold larger messages. tungstenite's 128 KiB default would cost 128 KiB per idle peer; with 1 KiB an idle
/// TLS WebSocket costs about 13.7 KiB server-side, most of it rustls state (see docs/PERFORMANCE.md).
pub const DEFAULT_WS_READ_BUFFER: usize = 1024;
/// Outgoing bytes buffered before tungstenite writes to the TLS stream by default; an explicit flush always
/// writes, so this only merges small messages into fewer TLS records.
pub const DEFAULT_WS_WRITE_BUFFER: usize = 8 * 1024;

/// Resource limits of one listener. Every field is a flag with an env fallback; [`Limits::default`] equals the
/// flag defaults, so code that builds a listener without a command line gets the same safe behaviour.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message accepted from a peer, in bytes; a larger one closes the connection with
    /// 1009 (message too big).
    #[arg(long, env = "WSMQ_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,

    /// Largest single WebSocket frame payload accepted from a peer, in bytes.
    #[arg(long, env = "WSMQ_MAX_FRAME_SIZE", default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    pub max_frame_size: usize,

    /// Time allowed for the TLS handshake, the HTTP request and the WebSocket upgrade together (e.g. "10s",
    /// "500ms"); a client that has not finished by then is dropped.
    #[arg(long, env = "WSMQ_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Concurrent upgraded connections accepted by one listener; beyond it clients get "503 Service
    /// Unavailable". Connections still in their handshake do not count (see --max-handshakes).
    #[arg(long, env = "WSMQ_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Connections that may be in their handshake (TLS, HTTP head, authentication, upgrade) at once; further
    /// connections are dropped at once until one finishes or hits --handshake-timeout. Half-open connections use
    /// these slots, never the --max-connections ones, so they cannot lock upgraded clients out.
    #[arg(long, env = "WSMQ_MAX_HANDSHAKES", default_value_t = DEFAULT_MAX_HANDSHAKES)]
    pub max_handshakes: usize,

    /// Connections that may be in their handshake at once from one client address (IPv6: one /64); further
    /// ones from that address are dropped at once, so one host cannot take every handshake slot.
    #[arg(long, env = "WSMQ_MAX_HANDSHAKES_PER_IP", default_value_t = DEFAULT_MAX_HANDSHAKES_PER_IP)]
    pub max_handshakes_per_ip: usize,

    /// Interval between keepalive pings sent to each WebSocket peer (e.g. "20s").
    #[arg(long, env = "WSMQ_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A peer from which nothing (not even a pong) arrived for this long is considered dead and disconnected
    /// (e.g. "60s"). Keep it a few ping intervals long.
    #[arg(long, env = "WSMQ_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// On shutdown, how long open connections get to finish before the listener gives up on them (e.g. "10s").
    #[arg(long, env = "WSMQ_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// WebSocket read buffer per connection, in bytes: allocated up front and the most read per call; it grows
    /// on demand for larger messages. Small keeps idle connections cheap. The subscriber's client connections use
    /// at most 128 bytes (their clients send only short commands).
    #[arg(long, env = "WSMQ_WS_READ_BUFFER", default_value_t = DEFAULT_WS_READ_BUFFER)]
    pub ws_read_buffer: usize,

    /// Outgoing WebSocket bytes collected before they are written to the TLS stream, in bytes; every flush
    /// writes regardless, so this only merges small messages into fewer TLS records.
    #[arg(long, env = "WSMQ_WS_WRITE_BUFFER", default_value_t = DEFAULT_WS_WRITE_BUFFER)]
    pub ws_write_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            handshake_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            ws_read_buffer: DEFAULT_WS_READ_BUFFER,
            ws_write_buffer: DEFAULT_WS_WRITE_BUFFER,
        }
    }
}

impl Limits {
    /// The tungstenite configuration for a connection under these limits: message and frame caps, and small
    /// buffers so an idle connection costs little beyond its TLS state.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.ws_read_buffer)
            .write_buffer_size(self.ws_write_buffer)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
    }

    /// The queue hop's limits under these settings (see [`QueueLimits`]).
    pub fn queue(&self) -> QueueLimits {
        QueueLimits {
            max_payload: self.max_message_size,
            max_frame: self.max_message_size.saturating_add(RECORD_OVERHEAD),
        }
    }
}

/// The size limits of the queue hop (`/pushmsg`, `/popmsg` and the links that dial them), derived from one
/// `--max-message-size` so that what msgqueue accepts, every consumer can take: a payload is at most
/// [`QueueLimits::max_payload`] bytes whichever way it was pushed, and one DELIVER (or PUSH) record carrying such a
/// payload always fits [`QueueLimits::max_frame`]. msgqueue, the publisher's link and the subscriber's link all
/// take their limits from here; a consumer configured smaller than msgqueue NACKs what it cannot take (the message
/// is dead-lettered) rather than failing its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Largest message payload, compat or reliable.
    pub max_payload: usize,
    /// Largest WebSocket message on the queue hop: one maximal payload plus its record header.
    pub max_frame: usize,
}

/// A payload over [`QueueLimits::max_payload`].
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[error("message of {len} bytes exceeds the limit of {max} bytes")]
pub struct PayloadTooLarge {
    /// The payload's size.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

impl QueueLimits {
    /// Checks one payload against the limit: every service calls this before it stores or forwards a message.
    pub fn check_payload(&self, len: usize) -> Result<(), PayloadTooLarge> {
        if len > self.max_payload {
            Err(PayloadTooLarge {
                len,
                max: self.max_payload,
            })
        } else {
            Ok(())
        }
    }
}

/// Why a duration flag was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    /// The value has no leading number, e.g. "s" or "".
    #[error("{0:?} is not a duration: expected a number with a unit, e.g. \"10s\" or \"500ms\"")]
    NoNumber(String),
    /// The unit is not one of ms, s, m, h.
    #[error("{0:?} has an unknown unit: use ms, s, m or h")]
    UnknownUnit(String),
    /// The value does not fit a duration.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a human-friendly duration: an integer followed by `ms`, `s`, `m` or `h` ("500ms", "10s", "2m");
/// a bare integer means seconds. Used as the clap value parser of every duration flag.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::NoNumber(value.to_owned()));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| DurationError::TooLarge(value.to_owned()))?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(DurationError::UnknownUnit(value.to_owned())),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::TooLarge(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn flag_defaults_equal_default_impl() {
        let cli = Cli::try_parse_from(["test"]).map(|cli| cli.limits);
        assert_eq!(cli.ok(), Some(Limits::default()));
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "test",
            "--handshake-timeout",
            "250ms",
            "--max-connections",
            "3",
        ]);
        let limits = cli.map(|cli| cli.limits).ok();
        assert_eq!(
            limits.as_ref().map(|l| l.handshake_timeout),
            Some(Duration::from_millis(250))
        );
        assert_eq!(limits.map(|l| l.max_connections), Some(3));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_durations_are_rejected() {
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::NoNumber(_))
        ));
        assert!(matches!(
            parse_duration("10parsecs"),
            Err(DurationError::UnknownUnit(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn a_max_size_message_fits_every_queue_frame_and_one_byte_more_is_refused() {
        use crate::protocol::queue::{FrameReader, FrameWriter};
        for size in [1024, DEFAULT_MAX_MESSAGE_SIZE, 1 << 20] {
            let limits = Limits {
                max_message_size: size,
                ..Limits::default()
            }
            .queue();
            let payload = vec![b'x'; limits.max_payload];
            let mut frame = FrameWriter::default();
            let position = crate::protocol::history::Position {
                epoch: crate::protocol::history::Epoch(u64::MAX),
                offset: u64::MAX,
            };
            frame.deliver(u64::MAX, true, Some(position), &payload);
            let deliver = frame.take();
            frame.push(u64::MAX, &payload);
            let push = frame.take();
            assert!(deliver.len() <= limits.max_frame && push.len() <= limits.max_frame);
            let delivered = FrameReader::new(deliver, limits.max_payload).next_delivery();
            assert_eq!(
                delivered.map(|d| d.map(|d| d.payload.len())),
                Ok(Some(size))
            );
            assert_eq!(limits.check_payload(size), Ok(()));
            assert_eq!(
                limits.check_payload(size + 1),
                Err(PayloadTooLarge {
                    len: size + 1,
                    max: size
                })
            );
        }
    }

    #[test]
    fn websocket_config_uses_small_buffers_and_caps() {
        let config = Limits::default().websocket_config();
        assert_eq!(config.read_buffer_size, DEFAULT_WS_READ_BUFFER);
        assert_eq!(config.max_message_size, Some(DEFAULT_MAX_MESSAGE_SIZE));
        assert_eq!(config.max_frame_size, Some(DEFAULT_MAX_FRAME_SIZE));
    }
}
