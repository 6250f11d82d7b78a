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

/// What the rest of the machine did during a phase: the CPU of the broker processes
/// named with `--broker-pid` (their every thread, from `/proc/PID/stat`), and how busy
/// all cores were (`/proc/stat`). With both, a phase tells what saturated: a broker near
/// the machine's free capacity is CPU-bound, a machine at 100% busy is shared.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadSnapshot {
    /// utime + stime of the watched processes, in clock ticks.
    broker_ticks: u64,
    /// Busy and total ticks of all cores (`/proc/stat`'s first line).
    machine_busy: u64,
    machine_total: u64,
}

/// Broker CPU and machine load over one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// CPU of the watched broker processes, percent of one core (200 = two cores).
    pub broker_cpu_pct: f64,
    /// Their CPU time per message, microseconds.
    pub broker_cpu_us_per_msg: f64,
    /// How busy the machine's cores were, percent of all of them (everyone's work).
    pub machine_busy_pct: f64,
}

/// Clock ticks per second of `/proc`'s CPU counters (`USER_HZ`; 100 on Linux).
const USER_HZ: f64 = 100.0;

impl LoadSnapshot {
    /// Reads the counters now. A process that has gone away counts as zero.
    pub fn take(pids: &[u32]) -> LoadSnapshot {
        let broker_ticks = pids
            .iter()
            .map(|&pid| process_ticks(pid).unwrap_or(0))
            .sum();
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        LoadSnapshot {
            broker_ticks,
            machine_busy,
            machine_total,
        }
    }

    /// The load between `self` (earlier) and `later`, over `wall`, for `messages`.
    pub fn until(&self, later: &LoadSnapshot, wall: Duration, messages: u64) -> Load {
        let broker_s = later.broker_ticks.saturating_sub(self.broker_ticks) as f64 / USER_HZ;
        let total = later.machine_total.saturating_sub(self.machine_total) as f64;
        let busy = later.machine_busy.saturating_sub(self.machine_busy) as f64;
        Load {
            broker_cpu_pct: 100.0 * broker_s / wall.as_secs_f64().max(1e-9),
            broker_cpu_us_per_msg: broker_s * 1e6 / (messages.max(1) as f64),
            machine_busy_pct: if total > 0.0 {
                100.0 * busy / total
            } else {
                0.0
            },
        }
    }
}

/// utime + stime of process `pid` (all its threads), from `/proc/PID/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) ticks of all cores: total is every column of `/proc/stat`'s `cpu` line
/// but guest time (already in user), busy is total less idle and iowait.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let cols: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|c| c.parse().ok())
        .collect();
    let total: u64 = cols.iter().sum();
    let idle = cols.get(3).copied().unwrap_or(0) + cols.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}
