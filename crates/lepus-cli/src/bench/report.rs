//! What the benchmark shows: live progress once a second on stderr, and a summary at the
//! end (plain text, or one JSON object on stdout with `--json`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::verify::{SeqSet, verdict};
use super::{Ctx, consumer, producer};

/// An empty histogram for latencies up to an hour, in microseconds, with three
/// significant digits (clone it for each recorder).
pub(super) fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// A percentile of a histogram, `None` when it recorded nothing.
pub(super) fn percentile(h: &Histogram<u64>, q: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q))
}

/// Counters shared by producers, consumers and the progress line.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Messages handed to the publishers.
    pub sent: AtomicU64,
    /// Confirmed by the broker.
    pub confirmed: AtomicU64,
    /// Failed back to the producer (nack, unroutable, timeout).
    pub failed: AtomicU64,
    /// Deliveries of this run's messages (redeliveries included).
    pub consumed: AtomicU64,
    /// Microseconds since the start when the last delivery arrived.
    pub last_delivery_us: AtomicU64,
}

/// Counter values at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Snapshot {
    sent: u64,
    confirmed: u64,
    consumed: u64,
}

impl Counters {
    /// The current values.
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
        }
    }
}

/// One progress line: totals and the rates since `before`.
pub(super) fn progress_line(
    elapsed: Duration,
    now: Snapshot,
    before: Snapshot,
    dt: Duration,
    note: &str,
) -> String {
    let rate = |a: u64, b: u64| {
        let secs = dt.as_secs_f64().max(1e-3);
        (a.saturating_sub(b) as f64 / secs).round()
    };
    format!(
        "[{:>4}s] sent {} ({}/s)  confirmed {} ({}/s)  consumed {} ({}/s){note}",
        elapsed.as_secs(),
        now.sent,
        rate(now.sent, before.sent),
        now.confirmed,
        rate(now.confirmed, before.confirmed),
        now.consumed,
        rate(now.consumed, before.consumed),
    )
}

/// PerfTest's latency part of a progress line: consumer latency min, median, 75th, 95th
/// and 99th percentile since the last line (empty when nothing was consumed).
pub(super) fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return String::new();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    format!(
        "  latency min/median/75th/95th/99th {:.1}/{:.1}/{:.1}/{:.1}/{:.1} ms",
        ms(h.min()),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.75)),
        ms(h.value_at_quantile(0.95)),
        ms(h.value_at_quantile(0.99)),
    )
}

/// The benchmark's result. The first keys are the stable interface (`--json`); the rest
/// help to read a run under faults.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Summary {
    /// Publishes attempted.
    pub sent: u64,
    /// Confirmed by the broker.
    pub confirmed: u64,
    /// Deliveries of this run's messages, redeliveries included.
    pub consumed: u64,
    /// Confirmed and never consumed (`--verify` only).
    pub lost: Option<u64>,
    /// Deliveries beyond the first of a message (`--verify` only).
    pub duplicates: Option<u64>,
    /// Confirmed (sent, without confirms) messages per second of the publishing phase.
    pub publish_msgs_per_s: f64,
    /// Deliveries per second, first delivery to last.
    pub consume_msgs_per_s: f64,
    /// Send to confirm, median.
    pub confirm_latency_p50_us: Option<u64>,
    /// Send to confirm, 99th percentile.
    pub confirm_latency_p99_us: Option<u64>,
    /// Send to delivery, median.
    pub e2e_latency_p50_us: Option<u64>,
    /// Send to delivery, 99th percentile.
    pub e2e_latency_p99_us: Option<u64>,
    /// Publishes that failed (nacked, unroutable, timed out).
    pub failed: u64,
    /// Sent but neither confirmed nor failed when the run ended.
    pub unresolved: u64,
    /// Acknowledgements refused because their channel had died (the broker redelivers).
    pub ack_errors: u64,
    /// Messages the publishers sent again after a connection loss or a nack.
    pub republished: u64,
    /// Times the consumers subscribed again after losing their channel.
    pub resubscribes: u64,
    /// Reconnects of the client's publishing and consuming connections.
    pub reconnects: u64,
    /// Deliveries of messages from elsewhere (not this run's), ignored.
    pub foreign: u64,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// The queue used.
    pub queue: String,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
}

fn us(v: Option<u64>) -> String {
    match v {
        Some(v) if v >= 10_000 => format!("{:.1} ms", v as f64 / 1000.0),
        Some(v) => format!("{v} us"),
        None => "-".into(),
    }
}

impl Summary {
    /// The summary as lines of text.
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<20} {v}\n"));
        line("queue", self.queue.clone());
        line("sent", self.sent.to_string());
        line("confirmed", self.confirmed.to_string());
        line("failed", self.failed.to_string());
        if self.unresolved > 0 {
            line("unresolved", self.unresolved.to_string());
        }
        line("consumed", self.consumed.to_string());
        if let (Some(lost), Some(dups)) = (self.lost, self.duplicates) {
            line("lost", lost.to_string());
            line("duplicates", dups.to_string());
        }
        line("publish", format!("{:.0} msg/s", self.publish_msgs_per_s));
        line("consume", format!("{:.0} msg/s", self.consume_msgs_per_s));
        line(
            "confirm latency",
            format!(
                "p50 {}  p99 {}",
                us(self.confirm_latency_p50_us),
                us(self.confirm_latency_p99_us)
            ),
        );
        line(
            "end-to-end latency",
            format!(
                "p50 {}  p99 {}",
                us(self.e2e_latency_p50_us),
                us(self.e2e_latency_p99_us)
            ),
        );
        if self.republished + self.resubscribes + self.reconnects + self.ack_errors > 0 {
            line(
                "recovery",
                format!(
                    "{} reconnects, {} republished, {} resubscribes, {} ack errors",
                    self.reconnects, self.republished, self.resubscribes, self.ack_errors
                ),
            );
        }
        if self.foreign > 0 {
            line("foreign (ignored)", self.foreign.to_string());
        }
        line("duration", format!("{:.1} s", self.duration_s));
        if let Some(err) = &self.error {
            line("stopped early", err.clone());
        }
        out
    }
}

/// Merges what the producers and consumers recorded into the summary.
pub(super) fn summarize(
    ctx: &Ctx,
    queue: &str,
    producing_since: Instant,
    produced: &[producer::Outcome],
    consumed: Vec<consumer::Outcome>,
    reconnects: u64,
    duration: Duration,
) -> anyhow::Result<Summary> {
    let mut confirm_latency = latency_histogram()?;
    let mut e2e_latency = latency_histogram()?;
    for p in produced {
        confirm_latency.add(&p.confirm_latency)?;
    }
    for c in &consumed {
        e2e_latency.add(&c.e2e_latency)?;
    }
    let sent = ctx.counters.sent.load(Ordering::Relaxed);
    let confirmed = ctx.counters.confirmed.load(Ordering::Relaxed);
    let failed = ctx.counters.failed.load(Ordering::Relaxed);
    let total_consumed: u64 = consumed.iter().map(|c| c.consumed).sum();
    let ack_errors = consumed.iter().map(|c| c.ack_errors).sum();
    let foreign = consumed.iter().map(|c| c.foreign).sum();
    let resubscribes = consumed
        .iter()
        .map(|c| c.subscribes.saturating_sub(1))
        .sum();

    let secs = |d: Duration| d.as_secs_f64().max(1e-3);
    // Without confirms, what was sent is what counts, over the time it took to send it.
    let (published, last_published) = if produced.iter().any(|p| p.unconfirmed) {
        (sent, produced.iter().filter_map(|p| p.last_sent).max())
    } else {
        (
            confirmed,
            produced.iter().filter_map(|p| p.last_confirm).max(),
        )
    };
    let publish_rate = last_published
        .map(|last| published as f64 / secs(last.duration_since(producing_since)))
        .unwrap_or(0.0);
    let first = consumed.iter().filter_map(|c| c.first).min();
    let last = consumed.iter().filter_map(|c| c.last).max();
    let consume_rate = match (first, last) {
        (Some(first), Some(last)) if total_consumed > 1 => {
            total_consumed as f64 / secs(last.duration_since(first))
        }
        _ => 0.0,
    };
    let (lost, duplicates) = if ctx.verify {
        let confirmed_sets: Vec<SeqSet> = produced.iter().map(|p| p.confirmed.clone()).collect();
        let repeats = consumed.iter().map(|c| c.repeats).sum();
        let seen: Vec<Vec<SeqSet>> = consumed.into_iter().map(|c| c.seen).collect();
        let v = verdict(&confirmed_sets, &seen, repeats);
        (Some(v.lost), Some(v.duplicates))
    } else {
        (None, None)
    };
    Ok(Summary {
        sent,
        confirmed,
        consumed: total_consumed,
        lost,
        duplicates,
        publish_msgs_per_s: publish_rate.round(),
        consume_msgs_per_s: consume_rate.round(),
        confirm_latency_p50_us: percentile(&confirm_latency, 0.5),
        confirm_latency_p99_us: percentile(&confirm_latency, 0.99),
        e2e_latency_p50_us: percentile(&e2e_latency, 0.5),
        e2e_latency_p99_us: percentile(&e2e_latency, 0.99),
        failed,
        unresolved: if produced.iter().any(|p| p.unconfirmed) {
            0
        } else {
            sent.saturating_sub(confirmed + failed)
        },
        ack_errors,
        republished: produced.iter().map(|p| p.republished).sum(),
        resubscribes,
        reconnects,
        foreign,
        duration_s: (duration.as_secs_f64() * 10.0).round() / 10.0,
        queue: queue.to_owned(),
        error: ctx.abort_reason(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_of_an_empty_histogram_are_absent() {
        let mut h = latency_histogram().unwrap();
        assert_eq!(percentile(&h, 0.5), None);
        for v in 1..=100u64 {
            h.saturating_record(v * 10);
        }
        let p50 = percentile(&h, 0.5).unwrap_or(0);
        assert!((495..=505).contains(&p50), "{p50}");
    }

    #[test]
    fn the_latency_part_shows_percentiles_in_ms() {
        let mut h = latency_histogram().unwrap();
        assert_eq!(latency_line(&h), "");
        for v in 1..=100u64 {
            h.saturating_record(v * 1000);
        }
        let line = latency_line(&h);
        assert!(
            line.contains("min/median/75th/95th/99th 1.0/50.0/75.0/95.0/99.0 ms"),
            "{line}"
        );
    }

    #[test]
    fn progress_shows_rates() {
        let before = Snapshot {
            sent: 0,
            confirmed: 0,
            consumed: 0,
        };
        let now = Snapshot {
            sent: 2000,
            confirmed: 1000,
            consumed: 500,
        };
        let line = progress_line(
            Duration::from_secs(3),
            now,
            before,
            Duration::from_secs(2),
            "",
        );
        assert!(line.contains("sent 2000 (1000/s)"), "{line}");
        assert!(line.contains("consumed 500 (250/s)"), "{line}");
    }
}
