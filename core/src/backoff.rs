//! Exponential backoff with full jitter, for links that reconnect after a failure.
//!
//! Full jitter (a uniformly random delay between zero and the exponential cap) spreads out clients that lost
//! their server at the same moment, so a restarted msgqueue is not hit by all of them at once.

use std::time::Duration;

use crate::limits::parse_duration;

/// Default of `--link-backoff-initial`.
pub const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
/// Default of `--link-backoff-max`. Small on purpose: a link must be back within half a second of msgqueue, and
/// only a few services ever dial it (clients never do), so frequent attempts while it is down cost nothing.
pub const DEFAULT_MAX: Duration = Duration::from_millis(250);

/// How a service's link to msgqueue paces its reconnection attempts; one pair of flags for every service.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct BackoffArgs {
    /// First delay cap before reconnecting to msgqueue (e.g. "100ms"); doubles per failed attempt, with full
    /// jitter.
    #[arg(long = "link-backoff-initial", env = "WSMQ_LINK_BACKOFF_INITIAL", default_value = "100ms", value_parser = parse_duration)]
    pub initial: Duration,

    /// Largest delay cap between reconnection attempts to msgqueue: the link is back at most this long (plus a
    /// handshake) after msgqueue is.
    #[arg(long = "link-backoff-max", env = "WSMQ_LINK_BACKOFF_MAX", default_value = "250ms", value_parser = parse_duration)]
    pub max: Duration,
}

impl Default for BackoffArgs {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            initial: DEFAULT_INITIAL,
            max: DEFAULT_MAX,
        }
    }
}

impl BackoffArgs {
    /// A fresh [`Backoff`] with these delays.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial, self.max)
    }
}

/// Delays between reconnection attempts: attempt `n` waits a random time in `[0, min(max, initial * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose cap starts at `initial` and doubles per attempt up to `max` (`max` below `initial` is
    /// raised to `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay to wait before the next attempt; each call raises the cap for the following one.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=cap_nanos))
    }

    /// Starts over from `initial`; call it once a connection has proved healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of the next delay.
    fn cap(&self) -> Duration {
        // 2^31 times any non-zero initial delay exceeds every sensible max, so larger exponents change nothing.
        let factor = 1u32 << self.attempt.min(31);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        backoff: BackoffArgs,
    }

    #[test]
    fn flag_defaults_are_the_documented_constants() {
        let cli = Cli::try_parse_from(["svc"]);
        assert_eq!(cli.map(|c| c.backoff).ok(), Some(BackoffArgs::default()));
        let cli = Cli::try_parse_from(["svc", "--link-backoff-max", "2s"]);
        assert_eq!(
            cli.map(|c| c.backoff.max).ok(),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn default_cap_lets_a_link_return_within_half_a_second() {
        let mut backoff = BackoffArgs::default().backoff();
        for _ in 0..1_000 {
            assert!(backoff.next_delay() <= Duration::from_millis(500));
        }
    }

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn cap_doubles_per_attempt_until_max() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        let mut caps = Vec::new();
        for _ in 0..10 {
            caps.push(backoff.cap().as_millis());
            backoff.next_delay();
        }
        assert_eq!(
            caps,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
    }

    #[test]
    fn delays_stay_within_cap_and_are_jittered() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        let mut delays = Vec::new();
        for _ in 0..200 {
            let cap = backoff.cap();
            let delay = backoff.next_delay();
            assert!(delay <= cap, "{delay:?} > {cap:?}");
            delays.push(delay);
        }
        delays.sort();
        delays.dedup();
        assert!(
            delays.len() > 150,
            "delays are not random: {} distinct of 200",
            delays.len()
        );
    }

    #[test]
    fn reset_starts_over_from_initial() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        for _ in 0..8 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.cap(), INITIAL);
        assert!(backoff.next_delay() <= INITIAL);
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut backoff = Backoff::new(
            Duration::from_secs(u64::MAX / 4),
            Duration::from_secs(u64::MAX / 2),
        );
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(u64::MAX / 2));
        }
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_delay(), Duration::ZERO);
    }
}
