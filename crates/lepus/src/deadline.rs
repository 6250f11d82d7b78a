//! Deadlines from durations that may mean "never".
//!
//! `Instant::now() + Duration::MAX` panics on overflow, and `Duration::MAX` is what a
//! caller naturally passes for "no timeout". Every deadline in the toolkit is computed
//! here, saturating at a far-off instant instead.

use std::time::Duration;

use tokio::time::Instant;

/// About thirty years: as far as "never" needs to go (tokio's timers use the same bound).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + timeout`, or an instant decades away when that sum would overflow.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    deadline_from(Instant::now(), timeout)
}

/// `start + timeout`, saturating like [`deadline_after`].
pub(crate) fn deadline_from(start: Instant, timeout: Duration) -> Instant {
    start.checked_add(timeout.min(FAR_FUTURE)).unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_saturates_instead_of_panicking() {
        let now = Instant::now();
        let far = deadline_from(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            deadline_from(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
