//! How long a consumer waits before subscribing again.
//!
//! A session that fails at once (the queue was deleted, the broker keeps cancelling the
//! consumer) must not spin, so the pause grows with each such failure up to a cap. Many
//! consumers lose the same node at the same moment, so each pause is drawn at random
//! below its ceiling (full jitter) and they do not come back as one storm. A session that
//! stayed subscribed for a while was healthy: the failure after it is a new incident, and
//! the pause starts small again instead of staying at the cap for the process's life.

use std::time::Duration;

use crate::backoff::{Backoff, ReconnectPolicy};

/// The first pause's ceiling.
pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The largest pause.
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(5);
/// A session subscribed at least this long counts as healthy and resets the pause.
pub(super) const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// The pauses between sessions.
#[derive(Debug, Clone)]
pub(super) struct Pauses {
    delays: Backoff,
}

fn fresh() -> Backoff {
    ReconnectPolicy::default()
        .initial_delay(FIRST_PAUSE)
        .max_delay(MAX_PAUSE)
        .delays()
}

impl Pauses {
    pub(super) fn new() -> Self {
        Self { delays: fresh() }
    }

    /// The pause after a session that was subscribed for `subscribed` (`None` if it never
    /// subscribed).
    pub(super) fn after(&mut self, subscribed: Option<Duration>) -> Duration {
        if subscribed.is_some_and(|lasted| lasted >= HEALTHY_SESSION) {
            self.delays = fresh();
        }
        self.delays.next().unwrap_or(MAX_PAUSE)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_under_a_cap_with_jitter_and_reset_after_a_healthy_session() {
        let mut pauses = Pauses::new();
        // Sessions that fail at once: ceilings 100 ms, 200 ms, ... up to the cap.
        let failing: Vec<Duration> = (0..200)
            .map(|_| pauses.after(Some(Duration::from_millis(50))))
            .collect();
        let ceiling = |i: u32| FIRST_PAUSE.saturating_mul(1 << i.min(20)).min(MAX_PAUSE);
        for (i, pause) in failing.iter().enumerate() {
            assert!(*pause <= ceiling(i as u32), "pause {i}: {pause:?}");
        }
        // Jittered: past the cap the pauses spread over [0, cap], not all at the cap.
        let late = &failing[10..];
        assert!(late.iter().any(|p| *p < MAX_PAUSE / 2), "{late:?}");
        assert!(late.iter().any(|p| *p > MAX_PAUSE / 2), "{late:?}");
        // A session that never subscribed does not reset either.
        assert!((0..50).any(|_| pauses.after(None) > FIRST_PAUSE));
        // After a healthy session the next pause is below the first ceiling again, every
        // time.
        for _ in 0..50 {
            for _ in 0..10 {
                pauses.after(None);
            }
            assert!(pauses.after(Some(HEALTHY_SESSION)) <= FIRST_PAUSE);
        }
    }
}
