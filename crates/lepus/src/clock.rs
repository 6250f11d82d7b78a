//! The wall clock, in the unit the failure headers and the stores use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the unit of the `x-lepus-*-failure` headers. A clock
/// before 1970 reads 0; one past the year 292 million reads `i64::MAX`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
