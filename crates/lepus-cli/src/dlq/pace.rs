//! The rate limit of `lepus dlq replay --rate`: messages spaced evenly, no bursts.
//!
//! A replay feeds a work queue whose consumers are often the reason the messages failed
//! in the first place (a dependency that was down), so the limit errs on the gentle side:
//! a pause (a slow confirm, say) is not made up for afterwards with a burst.

use std::time::Duration;

use tokio::time::Instant;

/// The slowest rate accepted (one message a day), so the spacing stays a sane duration.
const MIN_RATE: f64 = 1.0 / 86_400.0;
/// The fastest rate accepted.
const MAX_RATE: f64 = 1e6;

/// Hands out send times `1 / rate` apart.
#[derive(Debug)]
pub(super) struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate` messages per second (see [`parse_rate`]).
    pub(super) fn new(rate: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / rate.clamp(MIN_RATE, MAX_RATE)),
            next: None,
        }
    }

    /// When the next message may go, given that it is `now`; books that slot.
    pub(super) fn slot(&mut self, now: Instant) -> Instant {
        let at = match self.next {
            Some(next) if next > now => next,
            _ => now,
        };
        self.next = Some(at + self.interval);
        at
    }
}

/// Parses `--rate`: messages per second, fractions allowed.
pub(super) fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of messages per second"))?;
    if !rate.is_finite() || !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(format!(
            "the rate must be between {MIN_RATE:.6} and {MAX_RATE} messages per second"
        ));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_evenly_spaced() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(10.0);
        let slots: Vec<_> = (0..4).map(|_| pacer.slot(t0) - t0).collect();
        let ms = Duration::from_millis;
        assert_eq!(slots, [ms(0), ms(100), ms(200), ms(300)]);
    }

    #[test]
    fn a_pause_is_not_made_up_with_a_burst() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(2.0);
        assert_eq!(pacer.slot(t0), t0);
        let late = t0 + Duration::from_secs(10);
        assert_eq!(pacer.slot(late), late);
        assert_eq!(pacer.slot(late), late + Duration::from_millis(500));
    }

    #[test]
    fn rates_parse_within_bounds() {
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate("200"), Ok(200.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1e9").is_err());
    }
}
