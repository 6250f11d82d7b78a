//! The load: orders placed through the order API at a steady rate, each with an
//! idempotency key so that a retried request never creates a second order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::httpc;
use crate::stock::CATALOG;

/// One order in this many has an address the mail gateway refuses (its event ends in the
/// notification service's dead-letter queue, with its reason in the headers).
pub const UNDELIVERABLE_EVERY: u64 = 97;
/// Requests in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// How long one order may keep being retried against the API.
const ORDER_DEADLINE: Duration = Duration::from_secs(60);

/// What the load generator did.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Orders sent (first attempts).
    pub sent: AtomicU64,
    /// Orders the API accepted.
    pub accepted: AtomicU64,
    /// Orders the API refused as invalid (should stay 0).
    pub refused: AtomicU64,
    /// Orders given up after `ORDER_DEADLINE` of failures (should stay 0).
    pub abandoned: AtomicU64,
    /// Requests that failed and were retried.
    pub retried_requests: AtomicU64,
    /// HTTP requests made, first attempts and retries.
    pub attempts: AtomicU64,
    /// Each accepted order: when its first request began, and how long until it was
    /// accepted (retries included: what the customer waited).
    pub accept_times: std::sync::Mutex<Vec<(tokio::time::Instant, Duration)>>,
    /// All orders sent and answered.
    pub done: AtomicBool,
    /// Accept latency of each accepted order, microseconds: from the moment the load's
    /// schedule meant to send it (start + i / rate, so a stall of the API or of the load
    /// itself is charged to every order scheduled during it) to the API's 2xx answer,
    /// retries included.
    pub accept_us: Mutex<Vec<u64>>,
}

impl LoadStats {
    /// The `p`-th percentile (0-100) of the accept latencies so far, milliseconds.
    pub fn accept_ms(&self, p: f64) -> f64 {
        let mut all = self
            .accept_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if all.is_empty() {
            return 0.0;
        }
        all.sort_unstable();
        let rank = ((p / 100.0) * all.len() as f64).ceil() as usize;
        let at = rank.clamp(1, all.len()) - 1;
        all.get(at).copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// The body of order `i`.
pub fn order_body(i: u64) -> serde_json::Value {
    let mut rng = rand::rng();
    let lines: Vec<serde_json::Value> = (0..rng.random_range(1..=3))
        .map(|_| {
            let (sku, _) = CATALOG
                .get(rng.random_range(0..CATALOG.len()))
                .copied()
                .unwrap_or(("lamp", 0));
            serde_json::json!({ "sku": sku, "qty": rng.random_range(1..=3) })
        })
        .collect();
    let email = if i % UNDELIVERABLE_EVERY == UNDELIVERABLE_EVERY - 1 {
        format!("customer-{i}.example.org")
    } else {
        format!("customer-{i}@example.org")
    };
    serde_json::json!({ "customer": format!("customer {i}"), "email": email, "lines": lines })
}

/// Places `count` orders at `rate` per second against the order API at `addr`.
pub async fn run(
    addr: SocketAddr,
    rate: f64,
    count: u64,
    stats: Arc<LoadStats>,
    cancel: CancellationToken,
) {
    let period = Duration::from_secs_f64(1.0 / rate.clamp(0.01, 10_000.0));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    // Order i is due at start + i / rate, whatever happened before it: an order sent
    // late (a busy machine, all permits taken) does not push back the ones after it, so
    // the rate asked for is the rate offered. (Delaying every later tick by each late
    // one, as an interval's `Delay` does, offered 21 orders/s for 25 on a loaded
    // machine.)
    let start = tokio::time::Instant::now();
    for i in 0..count {
        let scheduled = start + period.mul_f64(i as f64);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(scheduled) => {}
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let stats = Arc::clone(&stats);
        let cancel = cancel.clone();
        tasks.spawn(async move {
            place(addr, i, scheduled, &stats, &cancel).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    stats.done.store(true, Ordering::Release);
}

async fn place(
    addr: SocketAddr,
    i: u64,
    scheduled: tokio::time::Instant,
    stats: &LoadStats,
    cancel: &CancellationToken,
) {
    let body = order_body(i);
    let key = uuid::Uuid::now_v7().to_string();
    stats.sent.fetch_add(1, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + ORDER_DEADLINE;
    let mut pause = Duration::from_millis(100);
    let began = tokio::time::Instant::now();
    loop {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let result = httpc::request(
            addr,
            "POST",
            "/orders",
            Some(&body),
            &[("idempotency-key", key.as_str())],
            Duration::from_secs(10),
        )
        .await;
        match result {
            Ok(r) if r.status == 200 || r.status == 201 => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let took = scheduled.elapsed().as_micros();
                stats
                    .accept_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(u64::try_from(took).unwrap_or(u64::MAX));
                stats
                    .accept_times
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((began, began.elapsed()));
                return;
            }
            Ok(r) if (400..500).contains(&r.status) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(status = r.status, body = %r.text(), "the order API refused a generated order");
                return;
            }
            Ok(r) => tracing::warn!(status = r.status, "order API error; retrying"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "order API unreachable; retrying"),
        }
        stats.retried_requests.fetch_add(1, Ordering::Relaxed);
        if tokio::time::Instant::now() + pause >= deadline || cancel.is_cancelled() {
            stats.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
