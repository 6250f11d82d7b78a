//! The zoned run's report: the single-node report's keys, plus what the front door's
//! clients saw (attempts, availability, accept latency outside the fault windows), the
//! compensation counts, the faults made, and the work each replica did; and the goals it
//! must meet.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::demo::report::{Report, StoreState, percentile};

/// Availability the run must reach (accepted / attempted).
pub const AVAILABILITY_GOAL: f64 = 0.9995;
/// The accept latency's 99th percentile outside the fault windows must stay under this.
pub const ACCEPT_P99_GOAL_MS: u64 = 200;

/// The report; its JSON form is the run's last line (`compensated` and
/// `cancelled_after_recheck` come with the single-node keys).
#[derive(Debug, Clone, Serialize)]
pub struct ZoneReport {
    /// Everything the single-node demo reports.
    #[serde(flatten)]
    pub base: Report,
    /// HTTP requests made through the front door (first attempts and retries).
    pub attempted: u64,
    /// Requests answered with an accepted order / requests made.
    pub availability: f64,
    /// 99th percentile of the time from an order's first request to its acceptance, for
    /// orders outside every fault window.
    pub accept_p99_ms: u64,
    /// Zones cut off and healed.
    pub zone_cuts: u64,
    /// Broker nodes killed and started again.
    pub node_kills: u64,
    /// Replicas killed and started again.
    pub replica_kills: u64,
    /// Per service, per replica: messages (orders, for the order service) handled.
    pub replicas: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The 99th percentile of `samples` (start, latency) whose span meets no window.
pub fn p99_outside(samples: &[(Instant, Duration)], windows: &[(Instant, Instant)]) -> u64 {
    let mut ms: Vec<u64> = samples
        .iter()
        .filter(|(start, took)| {
            let end = *start + *took;
            !windows.iter().any(|(a, b)| *start < *b && end > *a)
        })
        .map(|(_, took)| u64::try_from(took.as_millis()).unwrap_or(u64::MAX))
        .collect();
    ms.sort_unstable();
    percentile(&ms, 99.0)
}

/// Accepted / attempted (1 when nothing was attempted).
pub fn availability(accepted: u64, attempted: u64) -> f64 {
    if attempted == 0 {
        1.0
    } else {
        accepted as f64 / attempted as f64
    }
}

impl ZoneReport {
    /// The goals missed (empty: the run passed). `state` is what the stores said at the
    /// end, to check the compensation counts against.
    pub fn missed(&self, state: &StoreState) -> Vec<String> {
        let mut missed = Vec::new();
        if self.base.lost > 0 {
            missed.push(format!("{} orders lost", self.base.lost));
        }
        if self.availability < AVAILABILITY_GOAL {
            missed.push(format!(
                "availability {:.5} < {AVAILABILITY_GOAL}",
                self.availability
            ));
        }
        if self.accept_p99_ms > ACCEPT_P99_GOAL_MS {
            missed.push(format!(
                "accept p99 {} ms > {ACCEPT_P99_GOAL_MS} ms outside the fault windows",
                self.accept_p99_ms
            ));
        }
        for (service, replicas) in &self.replicas {
            for (name, handled) in replicas {
                if *handled == 0 {
                    missed.push(format!("{service} replica {name} handled nothing"));
                }
            }
        }
        // Compensation, checked against the stores: every reservation taken from the
        // cached snapshot settled, each cancellation recorded as a cancelled decision
        // and told to the customer.
        if state.compensation_pending > 0 || state.compensation_errors > 0 {
            missed.push(format!(
                "cached decisions unsettled: {} pending, {} in error",
                state.compensation_pending, state.compensation_errors
            ));
        }
        let cancelled = self.base.cancelled_after_recheck;
        if state.cancelled_decisions != cancelled || state.cancellation_notices != cancelled {
            missed.push(format!(
                "{cancelled} cancelled after recheck, but {} decisions cancelled and {} customers told",
                state.cancelled_decisions, state.cancellation_notices
            ));
        }
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_inside_a_window_is_left_out() {
        let t0 = Instant::now();
        let s = |at: u64, ms: u64| (t0 + Duration::from_secs(at), Duration::from_millis(ms));
        let mut samples: Vec<_> = (0..200).map(|i| s(i % 10, 20)).collect();
        samples.push(s(20, 5_000));
        let window = (t0 + Duration::from_secs(19), t0 + Duration::from_secs(30));
        assert_eq!(p99_outside(&samples, &[window]), 20);
        assert_eq!(p99_outside(&samples, &[]), 20);
        samples.extend((0..10).map(|_| s(40, 900)));
        assert_eq!(p99_outside(&samples, &[window]), 900);
        assert!((availability(9995, 10_000) - 0.9995).abs() < 1e-12);
        assert_eq!(availability(0, 0), 1.0);
    }
}
