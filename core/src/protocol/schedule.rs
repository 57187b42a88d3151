//! Scheduled delivery as a publisher accepts it: a `wsmq.v1` publish's `DeliverAt` (RFC 3339) or `Delay`
//! (`"90s"`, `"1h30m"`, or a number of seconds), and the HTTP API's `deliver_at` / `delay`, turned into one
//! absolute due time that msgqueue keeps (PUSH_AT, see [`super::queue`]).
//!
//! The rules, in one place for both surfaces: at most one of the two fields; a delay is not negative; a due time
//! at most [`PAST_TOLERANCE`] in the past (clock skew between a client and the publisher) or not in the future at
//! all means "deliver now" (a plain push); one further in the past is refused, as is one more than `max_delay`
//! ahead (`--max-delay`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How far in the past a `DeliverAt` may lie and still be delivered (at once) rather than refused: clients'
/// clocks are not exactly the publisher's.
pub const PAST_TOLERANCE: Duration = Duration::from_secs(5);

/// When a message should be delivered, as the client said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// At this instant (`DeliverAt`).
    At(SystemTime),
    /// This long after the publisher received it (`Delay`).
    After(Duration),
}

/// Why a message's scheduling fields were refused. The message is not published; its text is what the client
/// gets in the error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Both `DeliverAt` and `Delay` were given.
    #[error("give a delivery time or a delay, not both (DeliverAt or Delay; deliver_at or delay)")]
    Both,
    /// `Delay` is neither a duration string nor a non-negative number of seconds.
    #[error(
        "the delay must be a duration such as \"90s\" or \"1h30m\", or a number of seconds: {0}"
    )]
    BadDelay(String),
    /// `DeliverAt` is not an RFC 3339 timestamp string.
    #[error("the delivery time must be an RFC 3339 time such as \"2030-01-02T15:04:05Z\": {0}")]
    BadDeliverAt(String),
    /// `DeliverAt` lies further in the past than [`PAST_TOLERANCE`].
    #[error("the delivery time is {0:?} in the past")]
    Past(Duration),
    /// The due time is further ahead than the publisher's `--max-delay`.
    #[error("the delivery time is more than {} ahead (--max-delay)", humantime::format_duration(*.0))]
    TooFar(Duration),
}

impl Schedule {
    /// Reads the scheduling fields of a message: `Ok(None)` when neither is given (JSON `null` counts as
    /// absent). `Delay` is a duration string or a number of seconds; `DeliverAt` an RFC 3339 string.
    pub fn from_fields(
        deliver_at: Option<&RawValue>,
        delay: Option<&RawValue>,
    ) -> Result<Option<Self>, ScheduleError> {
        match (present(deliver_at), present(delay)) {
            (Some(_), Some(_)) => Err(ScheduleError::Both),
            (Some(at), None) => {
                let text: String = serde_json::from_str(at.get())
                    .map_err(|_| ScheduleError::BadDeliverAt("not a string".to_owned()))?;
                Self::parse_deliver_at(&text).map(Some)
            }
            (None, Some(delay)) => Self::parse_delay_json(delay.get()).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Parses an RFC 3339 time (any offset).
    pub fn parse_deliver_at(text: &str) -> Result<Self, ScheduleError> {
        let at = OffsetDateTime::parse(text.trim(), &Rfc3339)
            .map_err(|err| ScheduleError::BadDeliverAt(err.to_string()))?;
        Ok(Self::At(at.into()))
    }

    /// Parses a duration string: `"90s"`, `"10m"`, `"1h30m"`, `"500ms"`, `"2days"` (humantime's syntax).
    pub fn parse_delay(text: &str) -> Result<Self, ScheduleError> {
        humantime::parse_duration(text.trim())
            .map(Self::After)
            .map_err(|err| ScheduleError::BadDelay(err.to_string()))
    }

    /// A JSON `Delay`: a duration string or a non-negative number of seconds (fractions allowed).
    fn parse_delay_json(json: &str) -> Result<Self, ScheduleError> {
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::String(text)) => Self::parse_delay(&text),
            Ok(serde_json::Value::Number(number)) => number
                .as_f64()
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                .map(Self::After)
                .ok_or_else(|| ScheduleError::BadDelay(format!("{number} seconds"))),
            _ => Err(ScheduleError::BadDelay("not a string or number".to_owned())),
        }
    }

    /// The due time in milliseconds since the Unix epoch, or `None` for "deliver now" (not later than `now`,
    /// or at most [`PAST_TOLERANCE`] before it). Refuses a time further in the past or more than `max_delay`
    /// after `now`.
    pub fn due_ms(
        self,
        now: SystemTime,
        max_delay: Duration,
    ) -> Result<Option<u64>, ScheduleError> {
        let due = match self {
            Self::After(delay) if delay > max_delay => {
                return Err(ScheduleError::TooFar(max_delay));
            }
            Self::After(delay) => now + delay,
            Self::At(at) => at,
        };
        match due.duration_since(now) {
            Ok(ahead) if ahead > max_delay => Err(ScheduleError::TooFar(max_delay)),
            Ok(ahead) if ahead.is_zero() => Ok(None),
            Ok(_) => Ok(Some(unix_ms(due))),
            Err(past) if past.duration() <= PAST_TOLERANCE => Ok(None),
            Err(past) => Err(ScheduleError::Past(truncate_ms(past.duration()))),
        }
    }
}

/// A field that is there and not JSON `null`.
fn present(field: Option<&RawValue>) -> Option<&RawValue> {
    field.filter(|raw| raw.get().trim() != "null")
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn truncate_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn fields(
        deliver_at: Option<&str>,
        delay: Option<&str>,
    ) -> Result<Option<Schedule>, ScheduleError> {
        let (at, delay) = (deliver_at.map(raw), delay.map(raw));
        Schedule::from_fields(at.as_deref(), delay.as_deref())
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn delays_are_duration_strings_or_seconds() {
        for (json, expected) in [
            (r#""90s""#, Duration::from_secs(90)),
            (r#""10m""#, Duration::from_secs(600)),
            (r#""1h30m""#, Duration::from_secs(5400)),
            (r#""500ms""#, Duration::from_millis(500)),
            ("90", Duration::from_secs(90)),
            ("1.5", Duration::from_millis(1500)),
        ] {
            assert_eq!(
                fields(None, Some(json)),
                Ok(Some(Schedule::After(expected))),
                "{json}"
            );
        }
    }

    #[test]
    fn bad_delays_and_times_are_refused_with_the_field_named() {
        for json in [r#""soon""#, r#""-5s""#, "-1", "true", r#""""#, "[1]"] {
            let err = fields(None, Some(json)).unwrap_err();
            assert!(matches!(err, ScheduleError::BadDelay(_)), "{json}: {err}");
            assert!(err.to_string().starts_with("the delay"), "{err}");
        }
        for json in [
            r#""tomorrow""#,
            r#""2030-01-02 15:04:05""#,
            "1893456000",
            r#""2030-13-01T00:00:00Z""#,
        ] {
            let err = fields(Some(json), None).unwrap_err();
            assert!(
                matches!(err, ScheduleError::BadDeliverAt(_)),
                "{json}: {err}"
            );
            assert!(err.to_string().starts_with("the delivery time"), "{err}");
        }
    }

    #[test]
    fn both_fields_at_once_are_refused_and_null_means_absent() {
        assert_eq!(
            fields(Some(r#""2030-01-02T15:04:05Z""#), Some(r#""1s""#)),
            Err(ScheduleError::Both)
        );
        assert_eq!(fields(Some("null"), Some("null")), Ok(None));
        assert_eq!(fields(None, None), Ok(None));
    }

    #[test]
    fn deliver_at_accepts_any_offset() {
        let utc = fields(Some(r#""2030-01-02T15:04:05Z""#), None).unwrap();
        let paris = fields(Some(r#""2030-01-02T16:04:05+01:00""#), None).unwrap();
        assert_eq!(utc, paris);
        assert_eq!(
            utc,
            Some(Schedule::At(
                UNIX_EPOCH + Duration::from_secs(1_893_596_645)
            ))
        );
    }

    #[test]
    fn due_times_are_absolute_milliseconds_within_max_delay() {
        let now_ms = 1_800_000_000_000;
        assert_eq!(
            Schedule::After(Duration::from_millis(1500)).due_ms(now(), MAX),
            Ok(Some(now_ms + 1500))
        );
        assert_eq!(
            Schedule::At(now() + MAX).due_ms(now(), MAX),
            Ok(Some(now_ms + 30 * 24 * 3600 * 1000))
        );
        assert_eq!(
            Schedule::At(now() + MAX + Duration::from_millis(1)).due_ms(now(), MAX),
            Err(ScheduleError::TooFar(MAX))
        );
        assert_eq!(
            Schedule::After(Duration::from_secs(3601)).due_ms(now(), Duration::from_secs(3600)),
            Err(ScheduleError::TooFar(Duration::from_secs(3600)))
        );
        assert!(
            ScheduleError::TooFar(Duration::from_secs(3600))
                .to_string()
                .contains("1h")
        );
    }

    #[test]
    fn now_and_the_recent_past_mean_deliver_now_and_older_times_are_refused() {
        assert_eq!(Schedule::After(Duration::ZERO).due_ms(now(), MAX), Ok(None));
        assert_eq!(Schedule::At(now()).due_ms(now(), MAX), Ok(None));
        assert_eq!(
            Schedule::At(now() - PAST_TOLERANCE).due_ms(now(), MAX),
            Ok(None)
        );
        assert_eq!(
            Schedule::At(now() - Duration::from_secs(60)).due_ms(now(), MAX),
            Err(ScheduleError::Past(Duration::from_secs(60)))
        );
    }
}
