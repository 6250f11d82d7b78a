//! A circuit breaker: closed, open, half-open.
//!
//! Closed, calls go through and consecutive failures are counted; at the threshold the
//! breaker trips open and calls fail at once (the caller falls back) for `open_for`. Then
//! one probe call is let through (half-open): success closes the breaker, failure opens
//! it again for another `open_for`. Timeouts count as failures: a slow dependency is a
//! failing one, and waiting on it would stall the consumer.
//!
//! The half-open probe is held by a guard: a probe whose future is dropped before it
//! finishes (the caller's own timeout, a shutdown) releases its slot, so the next call
//! becomes the probe. Otherwise the breaker would wait for ever for a result that never
//! comes and refuse every call.
//!
//! No crate we found fits both tokio's paused clock in tests and a per-state watch for
//! the dashboard without pulling in a framework, so this is a small module of our own.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe call is allowed.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// How a breaker behaves.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that trip it.
    pub failure_threshold: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
    /// The deadline of each call.
    pub call_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(2),
            call_timeout: Duration::from_millis(200),
        }
    }
}

/// A state change, as watchers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStatus {
    /// The state now.
    pub state: BreakerState,
    /// Closed-to-open transitions so far.
    pub trips: u64,
    /// Half-open-to-open transitions so far (failed probes).
    pub reopens: u64,
}

/// Why a guarded call failed.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker is open: the call was not made.
    Open,
    /// The call took longer than the call timeout.
    Timeout,
    /// The call failed.
    Failed(E),
}

impl<E: std::fmt::Display> std::fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Open => f.write_str("circuit open"),
            CallError::Timeout => f.write_str("timed out"),
            CallError::Failed(e) => write!(f, "{e}"),
        }
    }
}

struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    probe_in_flight: bool,
}

/// A circuit breaker guarding one dependency.
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    status: watch::Sender<BreakerStatus>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker called `name` (the metrics label).
    pub fn new(name: &'static str, config: BreakerConfig) -> Self {
        metrics::gauge!("shop_breaker_state", "breaker" => name).set(0.0);
        Self {
            name,
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probe_in_flight: false,
            }),
            status: watch::channel(BreakerStatus {
                state: BreakerState::Closed,
                trips: 0,
                reopens: 0,
            })
            .0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current status.
    pub fn status(&self) -> BreakerStatus {
        *self.status.borrow()
    }

    /// Watches state changes.
    pub fn subscribe(&self) -> watch::Receiver<BreakerStatus> {
        self.status.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        metrics::gauge!("shop_breaker_state", "breaker" => self.name).set(to.gauge());
        self.status.send_modify(|s| {
            s.state = to;
            if to == BreakerState::Open {
                if from == BreakerState::Closed {
                    s.trips += 1;
                } else {
                    s.reopens += 1;
                }
            }
        });
        if to == BreakerState::Open && from == BreakerState::Closed {
            metrics::counter!("shop_breaker_trips_total", "breaker" => self.name).increment(1);
            tracing::warn!(
                breaker = self.name,
                failures = inner.failures,
                "circuit breaker tripped open"
            );
        } else {
            tracing::info!(
                breaker = self.name,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker state change"
            );
        }
    }

    /// Asks to make a call: `Some(probe)` if allowed (`probe` true for the half-open
    /// probe), `None` if the breaker is open.
    fn admit(&self) -> Option<bool> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Some(false),
            BreakerState::Open if inner.opened_at.elapsed() >= self.config.open_for => {
                self.set_state(&mut inner, BreakerState::HalfOpen);
                inner.probe_in_flight = true;
                Some(true)
            }
            BreakerState::Open => None,
            BreakerState::HalfOpen if !inner.probe_in_flight => {
                inner.probe_in_flight = true;
                Some(true)
            }
            BreakerState::HalfOpen => None,
        }
    }

    /// A probe that will never report: the next call may probe instead. The state stays
    /// half-open (a dropped call says nothing about the dependency).
    fn abandon_probe(&self) {
        let mut inner = self.lock();
        if inner.state == BreakerState::HalfOpen {
            inner.probe_in_flight = false;
        }
    }

    fn record(&self, ok: bool, probe: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
        }
        if ok {
            inner.failures = 0;
            // Only the probe closes a breaker: a call admitted before the trip that
            // succeeds late says nothing about the dependency now.
            if probe {
                self.set_state(&mut inner, BreakerState::Closed);
            }
            return;
        }
        inner.failures = inner.failures.saturating_add(1);
        let trip = match inner.state {
            BreakerState::Closed => inner.failures >= self.config.failure_threshold,
            BreakerState::HalfOpen => probe,
            BreakerState::Open => false,
        };
        if trip {
            inner.opened_at = Instant::now();
            self.set_state(&mut inner, BreakerState::Open);
        }
    }

    /// Runs `call` under the breaker and the call timeout.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let Some(probe) = self.admit() else {
            metrics::counter!("shop_breaker_calls_total", "breaker" => self.name, "result" => "rejected").increment(1);
            return Err(CallError::Open);
        };
        let mut admission = Admission {
            breaker: self,
            probe,
            reported: false,
        };
        let outcome = match tokio::time::timeout(self.config.call_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(CallError::Failed(e)),
            Err(_) => Err(CallError::Timeout),
        };
        let result = match &outcome {
            Ok(_) => "success",
            Err(CallError::Timeout) => "timeout",
            Err(_) => "failure",
        };
        metrics::counter!("shop_breaker_calls_total", "breaker" => self.name, "result" => result)
            .increment(1);
        self.record(outcome.is_ok(), probe);
        admission.reported = true;
        outcome
    }
}

/// Releases a probe slot whose call was dropped before it reported.
struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(2),
                call_timeout: Duration::from_millis(100),
            },
        )
    }

    async fn fail(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
        b.call(async { Err::<(), _>("down") }).await
    }

    async fn succeed(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
        b.call(async { Ok::<(), &str>(()) }).await
    }

    #[tokio::test(start_paused = true)]
    async fn trips_after_threshold_then_probes_and_closes() {
        let b = breaker();
        for _ in 0..2 {
            assert!(matches!(fail(&b).await, Err(CallError::Failed(_))));
        }
        assert_eq!(b.status().state, BreakerState::Closed);
        assert!(fail(&b).await.is_err());
        assert_eq!(b.status().state, BreakerState::Open);
        assert_eq!(b.status().trips, 1);
        // Open: calls are not made.
        assert!(matches!(succeed(&b).await, Err(CallError::Open)));
        tokio::time::advance(Duration::from_secs(2)).await;
        // The probe succeeds: closed again.
        assert!(succeed(&b).await.is_ok());
        assert_eq!(b.status().state, BreakerState::Closed);
        assert_eq!(b.status().trips, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_and_a_success_resets_the_count() {
        let b = breaker();
        assert!(fail(&b).await.is_err());
        assert!(fail(&b).await.is_err());
        assert!(succeed(&b).await.is_ok());
        assert!(fail(&b).await.is_err());
        assert!(fail(&b).await.is_err());
        assert_eq!(b.status().state, BreakerState::Closed);
        assert!(fail(&b).await.is_err());
        assert_eq!(b.status().state, BreakerState::Open);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(fail(&b).await, Err(CallError::Failed(_))));
        let s = b.status();
        assert_eq!((s.state, s.trips, s.reopens), (BreakerState::Open, 1, 1));
        // Still open right after the failed probe.
        assert!(matches!(succeed(&b).await, Err(CallError::Open)));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_time_out_and_count_as_failures() {
        let b = breaker();
        for _ in 0..3 {
            let slow = b
                .call(async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<(), &str>(())
                })
                .await;
            assert!(matches!(slow, Err(CallError::Timeout)));
        }
        assert_eq!(b.status().state, BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_the_next_call_probe() {
        let b = breaker();
        for _ in 0..3 {
            assert!(fail(&b).await.is_err());
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        // The caller gives up on the probe before the breaker's own timeout.
        let dropped = tokio::time::timeout(
            Duration::from_millis(10),
            b.call(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<(), &str>(())
            }),
        )
        .await;
        assert!(dropped.is_err(), "the probe was dropped");
        assert_eq!(b.status().state, BreakerState::HalfOpen);
        // The next call is the probe, and closes the breaker.
        assert!(succeed(&b).await.is_ok());
        assert_eq!(b.status().state, BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_probe_at_a_time() {
        let b = std::sync::Arc::new(breaker());
        for _ in 0..3 {
            assert!(fail(&b).await.is_err());
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = {
            let b = std::sync::Arc::clone(&b);
            tokio::spawn(async move {
                b.call(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<(), &str>(())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(b.status().state, BreakerState::HalfOpen);
        assert!(matches!(succeed(&b).await, Err(CallError::Open)));
        assert!(matches!(probe.await, Ok(Ok(()))));
        assert_eq!(b.status().state, BreakerState::Closed);
    }
}
