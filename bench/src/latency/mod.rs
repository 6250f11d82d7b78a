//! `--latency`: end-to-end and confirm latency at a fixed publish rate.
//!
//! Each client runs one publisher and one consumer on one durable queue in this process.
//! The publisher sends persistent messages in confirm mode at a fixed rate; every body
//! carries its sequence number and its *intended* send time (nanoseconds since an
//! `Instant` the whole process shares), and the consumer records, for each delivery, the
//! time from that intended moment to its arrival. So a stall anywhere (the publisher's
//! own call, the broker, the consumer) delays every message scheduled during it and shows
//! in the percentiles: no coordinated omission. Confirm latency is measured the same way,
//! from the intended send time to the confirm's arrival.
//!
//! The publisher is paced on a thread of its own (a blocking-pool thread driving the
//! publish loop with `Handle::block_on`), sleeping with `std::thread::sleep`, whose
//! wake-ups are tens of microseconds late, not tokio's millisecond timer wheel; a message
//! whose intended time has passed is sent at once. How late each send actually was is
//! recorded too (`send_lag`), to show the pacing kept up.
//!
//! The first `--warmup-secs` of messages are sent and checked but not recorded (the
//! consumer may still be subscribing, caches are cold).

mod clients;
mod report;

pub use report::LatencyResults;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use lepus_amqp::{Connection, FieldTable, QueueDeclareOptions, QueueDeleteOptions};

use crate::clients::{Client, Workload};
use crate::queues::QueueType;

/// Body bytes that carry the sequence number (0..8) and the intended send time (8..16).
pub const MIN_SIZE: usize = 16;

/// What one latency run does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Messages per second.
    pub rate: f64,
    /// Messages in all, warm-up included.
    pub count: u64,
    /// Messages at the start that are not recorded.
    pub warmup: u64,
    pub workload: Workload,
}

impl Plan {
    /// When message `seq` is meant to be sent, from the publisher's start.
    pub fn intended(&self, seq: u64) -> Duration {
        Duration::from_secs_f64(seq as f64 / self.rate)
    }

    pub fn recorded(&self, seq: u64) -> bool {
        seq >= self.warmup
    }
}

/// The clock the publisher stamps with and the consumer reads: one `Instant` for the
/// whole process (monotonic), so a body carries nanoseconds since it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

/// Writes `seq` and the intended send time into the first 16 bytes of `body`.
pub fn stamp(body: &mut [u8], seq: u64, intended_ns: u64) {
    if let Some(head) = body.get_mut(..8) {
        head.copy_from_slice(&seq.to_be_bytes());
    }
    if let Some(time) = body.get_mut(8..16) {
        time.copy_from_slice(&intended_ns.to_be_bytes());
    }
}

/// The sequence number and intended send time a body carries.
pub fn read_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let time = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
    Some((seq, time))
}

/// A histogram of microseconds, 1 us to 100 s, three significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000, 3).context("creating a histogram")
}

/// Records `ns` nanoseconds as microseconds (at least 1).
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// Sleeps on this (non-runtime) thread until `at`; returns how late the wake-up is.
pub fn pace(at: Instant) -> Duration {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
    Instant::now().saturating_duration_since(at)
}

/// The three distributions of one client run.
pub struct Measured {
    pub e2e: Histogram<u64>,
    pub confirm: Histogram<u64>,
    pub send_lag: Histogram<u64>,
}

/// Runs each client on a fresh queue per round, in rotating order.
pub struct LatencyRunner {
    url: Arc<str>,
    admin: Connection,
    queue_type: QueueType,
    timeout: Duration,
}

impl LatencyRunner {
    pub async fn new(url: Arc<str>, queue_type: QueueType, timeout: Duration) -> Result<Self> {
        let admin = Connection::open(&url)
            .await
            .context("cannot open the connection that manages the queues")?;
        Ok(LatencyRunner {
            url,
            admin,
            queue_type,
            timeout,
        })
    }

    pub async fn close(self) {
        let _ = self.admin.close().await;
    }

    pub async fn run(&self, client: Client, plan: Plan, round: usize) -> Result<Measured> {
        let queue = format!(
            "lepus-bench-latency-{}-r{round}-{}",
            client.name(),
            std::process::id()
        );
        let ch = self.admin.open_channel().await?;
        ch.queue_delete(&queue, QueueDeleteOptions::default())
            .await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(&queue, durable, self.queue_type.arguments())
            .await?;
        let clock = Clock::new();
        let result = tokio::time::timeout(
            self.timeout,
            clients::run(
                client,
                Arc::clone(&self.url),
                queue.clone(),
                plan,
                clock,
                &ch,
            ),
        )
        .await
        .unwrap_or_else(|_| bail_timeout(client));
        let info = ch
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = ch.queue_delete(&queue, QueueDeleteOptions::default()).await;
        let _ = ch.close().await;
        let measured =
            result.with_context(|| format!("{} failed in round {round}", client.name()))?;
        if let Ok(info) = info
            && info.message_count != 0
        {
            bail!(
                "{}: {} messages left in {queue} after the run",
                client.name(),
                info.message_count
            );
        }
        Ok(measured)
    }
}

fn bail_timeout(client: Client) -> Result<Measured> {
    bail!("{}: the latency run timed out", client.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back() {
        let mut body = vec![0u8; 20];
        stamp(&mut body, 7, 123_456_789);
        assert_eq!(read_stamp(&body), Some((7, 123_456_789)));
        assert_eq!(read_stamp(&body[..15]), None);
    }

    #[test]
    fn intended_times_follow_the_rate() {
        let plan = Plan {
            rate: 1000.0,
            count: 10,
            warmup: 2,
            workload: Workload {
                count: 10,
                size: 100,
                confirm: 10,
                prefetch: 10,
                multi_ack: 1,
            },
        };
        assert_eq!(plan.intended(0), Duration::ZERO);
        assert_eq!(plan.intended(1500), Duration::from_millis(1500));
        assert!(!plan.recorded(1));
        assert!(plan.recorded(2));
    }

    #[test]
    fn microseconds_are_recorded_at_least_one() {
        let mut h = histogram().unwrap();
        record(&mut h, 10);
        record(&mut h, 2_500_000);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= 2499 && h.max() <= 2501);
    }
}
