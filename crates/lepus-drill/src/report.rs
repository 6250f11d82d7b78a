//! The table for people and the JSON line for machines.

use std::fmt::Write as _;

use serde::Serialize;

use crate::check::Row;

/// The recovery time lepus aims for: fault healed (or majority reachable) to the first
/// confirm.
pub const RECOVERY_TARGET_MS: u64 = 5_000;

/// The whole run, as the JSON line prints it.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// One row per scenario.
    pub scenarios: &'a [Row],
    /// Messages lost over all scenarios.
    pub lost: usize,
    /// Failed publishes over all scenarios.
    pub failed: usize,
}

impl<'a> Summary<'a> {
    /// Totals over `rows`.
    pub fn new(rows: &'a [Row]) -> Self {
        Summary {
            scenarios: rows,
            lost: rows.iter().map(|r| r.lost).sum(),
            failed: rows.iter().map(|r| r.failed).sum(),
        }
    }

    /// The JSON object on one line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn ms(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The human-readable table; a verdict per row (`ok`, or what is wrong) and notes for
/// recoveries slower than [`RECOVERY_TARGET_MS`].
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36} {:>7} {:>9} {:>6} {:>5} {:>5} {:>10} {:>8} {:>8}  verdict",
        "scenario", "sent", "confirmed", "failed", "lost", "dups", "recover_ms", "p99_ms", "max_ms"
    );
    for row in rows {
        let mut verdict = Vec::new();
        if row.lost > 0 {
            verdict.push(format!("LOST {}", row.lost));
        }
        if row.unanswered > 0 {
            verdict.push(format!("UNANSWERED {}", row.unanswered));
        }
        if row.failed > 0 {
            verdict.push(if row.failures_allowed {
                "failures allowed (majority unreachable or fault >= publish timeout)".to_owned()
            } else {
                "FAILED where it must not".to_owned()
            });
        }
        if row.recover_ms.is_none_or(|r| r > RECOVERY_TARGET_MS) {
            verdict.push(format!("recovery over {RECOVERY_TARGET_MS} ms"));
        }
        if verdict.is_empty() {
            verdict.push("ok".to_owned());
        }
        let _ = writeln!(
            out,
            "{:<36} {:>7} {:>9} {:>6} {:>5} {:>5} {:>10} {:>8} {:>8}  {}",
            row.name,
            row.sent,
            row.confirmed,
            row.failed,
            row.lost,
            row.duplicates,
            ms(row.recover_ms),
            row.publish_p99_ms,
            row.publish_max_ms,
            verdict.join("; ")
        );
        for reason in &row.failure_reasons {
            let _ = writeln!(out, "    failure: {reason}");
        }
    }
    out
}
