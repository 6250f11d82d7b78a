//! The checker: per message id, what the publisher was told against what the consumer
//! handled and what is still queued.
//!
//! A message is **lost** if the broker confirmed it and it was neither handled nor found
//! in the queue afterwards. A **duplicate** is a handler run beyond the first for one id
//! (the consumer has an idempotency store, so there should be none). A **failed**
//! publish was handed back to the caller; it is no loss (the caller knows), but it is a
//! failure users see, so it must not happen while a majority of nodes stays reachable
//! and the fault is shorter than the publish timeout.

use std::time::Duration;

use serde::Serialize;

use crate::record::{Snapshot, Told};

/// When the fault was, and from when recovery is measured.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When the fault began, after the scenario started.
    pub start: Duration,
    /// When it ended (healed, restarted, resumed).
    pub end: Duration,
    /// Where recovery is measured from: the fault's start when a majority of nodes
    /// stayed reachable from the client, else its end.
    pub recover_from: Duration,
}

/// One scenario's result: a row of the table and of the JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The scenario, with its queue type: `kill-leader-node/quorum`.
    pub name: String,
    /// Messages handed to the publisher.
    pub sent: usize,
    /// Confirmed by the broker.
    pub confirmed: usize,
    /// Handed back as failed.
    pub failed: usize,
    /// Confirmed, and neither handled nor queued afterwards.
    pub lost: usize,
    /// Handler runs beyond the first for an id.
    pub duplicates: u64,
    /// From the fault (or its end, see [`Window::recover_from`]) to the first confirm of
    /// a message sent after the fault began; `None` if none came.
    pub recover_ms: Option<u64>,
    /// 99th percentile of send-to-confirm time of confirmed messages.
    pub publish_p99_ms: u64,
    /// Largest send-to-confirm time.
    pub publish_max_ms: u64,
    /// Messages without an answer at the end (should be none: every publish has a
    /// deadline).
    pub unanswered: usize,
    /// Failed publishes that reached the queue anyway (no loss; the caller retries and
    /// the idempotency store absorbs the copy).
    pub failed_but_delivered: usize,
    /// Whether failures are acceptable for this scenario (majority unreachable from the
    /// client, or the fault longer than the publish timeout).
    pub failures_allowed: bool,
    /// The fault's start and end, after the scenario started.
    pub fault_ms: (u64, u64),
    /// The first failure reasons, for the report.
    pub failure_reasons: Vec<String>,
}

impl Row {
    /// Whether this row fails the drill: anything lost, unanswered, or failed where it
    /// must not.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.unanswered == 0 && (self.failed == 0 || self.failures_allowed)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Compares, per id, and summarises.
pub fn check(name: &str, snap: &Snapshot, window: Window, failures_allowed: bool) -> Row {
    let mut row = Row {
        name: name.to_owned(),
        sent: snap.sent.len(),
        confirmed: 0,
        failed: 0,
        lost: 0,
        duplicates: 0,
        recover_ms: None,
        publish_p99_ms: 0,
        publish_max_ms: 0,
        unanswered: 0,
        failed_but_delivered: 0,
        failures_allowed,
        fault_ms: (millis(window.start), millis(window.end)),
        failure_reasons: snap.failures.clone(),
    };
    let mut latencies = Vec::with_capacity(snap.sent.len());
    let mut first_after: Option<Duration> = None;
    for sent in &snap.sent {
        let delivered = sent.handled > 0 || sent.queued > 0;
        row.duplicates += u64::from(sent.handled.saturating_sub(1));
        match sent.told {
            Told::Confirmed { at } => {
                row.confirmed += 1;
                if !delivered {
                    row.lost += 1;
                }
                latencies.push(at.saturating_sub(sent.at));
                if sent.at >= window.start && at >= window.recover_from {
                    first_after = Some(first_after.map_or(at, |t| t.min(at)));
                }
            }
            Told::Failed { .. } => {
                row.failed += 1;
                if delivered {
                    row.failed_but_delivered += 1;
                }
            }
            Told::Pending => row.unanswered += 1,
        }
    }
    row.recover_ms = first_after.map(|at| millis(at.saturating_sub(window.recover_from)));
    latencies.sort_unstable();
    if let Some(max) = latencies.last() {
        row.publish_max_ms = millis(*max);
        // Nearest rank: the smallest value with at least 99% at or below it.
        let rank = (latencies.len() * 99).div_ceil(100).max(1);
        if let Some(p99) = latencies.get(rank - 1) {
            row.publish_p99_ms = millis(*p99);
        }
    }
    row
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::record::Recorder;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_lost_duplicates_failures_and_recovery() {
        let rec = Recorder::new("t");
        let ids: Vec<(usize, String)> = (0..5).map(|_| rec.next()).collect();
        rec.told(0, Ok(())); // confirmed and handled twice: one duplicate
        rec.handled(&ids[0].1);
        rec.handled(&ids[0].1);
        rec.told(1, Ok(())); // confirmed, never seen again: lost
        rec.told(2, Ok(())); // confirmed, still queued: fine
        rec.queued(&ids[2].1);
        rec.told(3, Err("nack".into())); // failed, but it reached the queue
        rec.queued(&ids[3].1);
        // 4: never answered
        rec.handled("other-7");
        let snap = rec.snapshot();
        let window = Window {
            start: Duration::ZERO,
            end: Duration::ZERO,
            recover_from: Duration::ZERO,
        };
        let row = check("x", &snap, window, false);
        assert_eq!(
            (
                row.sent,
                row.confirmed,
                row.failed,
                row.lost,
                row.duplicates
            ),
            (5, 3, 1, 1, 1)
        );
        assert_eq!((row.unanswered, row.failed_but_delivered), (1, 1));
        assert_eq!(snap.foreign, 1);
        assert!(!row.passed());
        assert!(row.recover_ms.is_some());
    }

    #[test]
    fn recovery_counts_only_messages_sent_after_the_fault() {
        let mut snap = Snapshot::default();
        let sent = |at, confirmed| crate::record::Sent {
            at: ms(at),
            told: Told::Confirmed { at: ms(confirmed) },
            handled: 1,
            queued: 0,
        };
        // Sent before the fault, confirmed right after it: not a recovery.
        snap.sent.push(sent(900, 1_010));
        // Sent during the fault, confirmed 4 s after it began.
        snap.sent.push(sent(1_500, 5_000));
        snap.sent.push(sent(1_600, 5_100));
        let window = Window {
            start: ms(1_000),
            end: ms(3_000),
            recover_from: ms(1_000),
        };
        let row = check("x", &snap, window, false);
        assert_eq!(row.recover_ms, Some(4_000));
        assert_eq!(row.publish_max_ms, 3_500);
        assert_eq!(row.publish_p99_ms, 3_500);
        assert!(row.passed());
    }
}
