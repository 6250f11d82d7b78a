//! Waiting in async tests (the `tokio` feature): on a condition with a deadline, and on
//! blocking work (starting or killing a node) off the runtime's worker threads.
//!
//! Every lepus test binary needs these; one copy here keeps their deadlines and messages
//! the same everywhere. Both fail the test by panicking, as an assertion does: they are
//! for tests only.

use std::time::Duration;

/// How often [`wait_until`] looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Waits until `condition` holds, looking every [`POLL_INTERVAL`]; fails the test,
/// naming `what`, if it does not within `timeout`. The condition may be async (it may
/// ask the broker) and is polled once more at the deadline.
///
/// ```no_run
/// # async fn demo(stats: std::sync::Arc<std::sync::atomic::AtomicU64>) {
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
///
/// lepus_testkit::wait_until("three messages", Duration::from_secs(10), || async {
///     stats.load(Ordering::Relaxed) == 3
/// })
/// .await;
/// # }
/// ```
#[allow(
    clippy::panic,
    reason = "a test helper fails the test like an assertion"
)]
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `f` (blocking work such as starting, killing or restarting a node) on tokio's
/// blocking pool and returns its result; a panic in `f` fails the calling test.
#[allow(
    clippy::panic,
    reason = "a test helper fails the test like an assertion"
)]
pub async fn blocking<T, F>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking test work did not finish: {e}"),
    }
}
