//! When to try again: exponential backoff with full jitter, a cap, and optional limits.
//!
//! A backoff is an iterator of delays. Full jitter (each delay drawn uniformly from zero to
//! the exponential ceiling) spreads a fleet of clients that lost the same broker at the same
//! moment, so their reconnects do not arrive as one storm.

use std::time::Duration;

use rand::Rng;

/// First delay ceiling.
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Largest delay ceiling.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);
/// How long a connection must stay up before its loss starts a fresh backoff.
pub const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// How a supervised connection retries.
///
/// ```
/// use std::time::Duration;
/// use lepus::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::default()
///     .max_delay(Duration::from_millis(500))
///     .max_attempts(20);
/// let delays: Vec<_> = policy.delays().take(5).collect();
/// assert!(delays.iter().all(|d| *d <= Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ReconnectPolicy {
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) retry_unrecoverable: bool,
    pub(crate) healthy_after: Duration,
}

impl Default for ReconnectPolicy {
    /// 100 ms doubling up to 10 s, full jitter, no limit on attempts or time, and errors
    /// that retrying cannot fix (wrong credentials, refused vhost, rejected certificate)
    /// on every endpoint end in `Failed` at once. A connection counts as healthy (and its
    /// loss starts a fresh backoff) after [`DEFAULT_HEALTHY_AFTER`].
    fn default() -> Self {
        Self {
            initial_delay: DEFAULT_INITIAL_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            max_attempts: None,
            max_elapsed: None,
            retry_unrecoverable: false,
            healthy_after: DEFAULT_HEALTHY_AFTER,
        }
    }
}

impl ReconnectPolicy {
    /// The ceiling of the first delay; later ceilings double.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay.max(Duration::from_millis(1));
        self
    }

    /// The largest ceiling.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Give up after this many failed attempts in a row (an attempt tries every
    /// endpoint once; a connection lost before it was healthy is a failed attempt too).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Give up when a reconnect (or the first connect) has taken this long.
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// Keep retrying even errors that retrying cannot fix (e.g. while credentials are
    /// being rotated). Off by default.
    pub fn retry_unrecoverable(mut self, retry: bool) -> Self {
        self.retry_unrecoverable = retry;
        self
    }

    /// How long a connection must stay up to count as healthy. Losing a healthy
    /// connection starts over: the next attempt is immediate, and the delays, the attempt
    /// count and the elapsed time begin anew. A connection lost sooner (one the broker
    /// closes while the topology is declared, say) is a failed attempt like a refused
    /// connect: it waits its delay and counts toward the limits.
    pub fn healthy_after(mut self, uptime: Duration) -> Self {
        self.healthy_after = uptime;
        self
    }

    /// The delays before attempts 2, 3, ... (the first attempt is immediate).
    pub fn delays(&self) -> Backoff {
        Backoff {
            ceiling: self.initial_delay,
            max: self.max_delay,
        }
    }
}

/// An endless iterator of jittered delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    max: Duration,
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.ceiling.min(self.max);
        self.ceiling = self.ceiling.saturating_mul(2);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(rand::rng().random_range(0..=nanos)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_under_it() {
        let policy = ReconnectPolicy::default()
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(80));
        let delays: Vec<_> = policy.delays().take(200).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        // Past the cap, delays are spread over [0, cap]: some land in the top half.
        assert!(delays[10..].iter().any(|d| *d > Duration::from_millis(40)));
        assert!(delays[..2].iter().all(|d| *d <= Duration::from_millis(20)));
    }
}
