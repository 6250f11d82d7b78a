//! Client CPU time: user + system time of this whole process (every thread: tokio's
//! workers and any thread a client library starts of its own), from `getrusage`.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;

/// CPU time used by the process so far.
pub fn process_cpu() -> Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Ok(Duration::from_micros(u64::try_from(micros).unwrap_or(0)))
}

/// CLOCK_MONOTONIC in seconds: the clock `perf` timestamps samples with, so that a
/// profile can be cut to one phase with `perf report --time START,END`.
pub fn monotonic_secs() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}
