//! What a dead-lettered message says about itself: the failure headers lepus's consumer
//! writes (`x-lepus-*`), read back into one summary, the filters that select messages by
//! them, and how the summary prints.
//!
//! The headers are read by [`FailureRecord`], leniently: a message that another tool
//! dead-lettered, or whose headers were edited by hand, still lists, with the fields it
//! lacks (or that hold a value of the wrong type) shown as unknown.

use std::collections::HashSet;

use lepus::FailureRecord;
use lepus::amqp::Delivery;
use serde_json::{Map, Value, json};

/// The longest error text shown in one line of `lepus dlq list`.
const LIST_ERROR_CHARS: usize = 200;

/// A dead-lettered message's identity and failure record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub message_id: Option<String>,
    /// The `x-lepus-*` headers, read by lepus (leniently: a field another tool left out
    /// or mistyped is unknown).
    pub failure: FailureRecord,
    pub body_size: usize,
    pub redelivered: bool,
}

impl DeadLetter {
    /// Reads the record from a delivery's properties and headers.
    pub(crate) fn from_delivery(delivery: &Delivery) -> Self {
        let props = delivery.properties();
        DeadLetter {
            message_id: props.message_id().as_ref().map(|m| m.as_str().to_owned()),
            failure: FailureRecord::from_headers(props.headers().as_ref()),
            body_size: delivery.body().len(),
            redelivered: delivery.redelivered(),
        }
    }

    /// The message id for messages meant for people (`-` when it has none).
    pub(crate) fn label(&self) -> String {
        match &self.message_id {
            Some(id) => one_line(id),
            None => "-".into(),
        }
    }

    /// The summary as JSON: every field, `null` when unknown, times both as ms and as
    /// RFC 3339 text.
    pub(crate) fn to_json(&self) -> Map<String, Value> {
        let value = json!({
            "message_id": self.message_id,
            "original_exchange": self.failure.original_exchange,
            "original_routing_key": self.failure.original_routing_key,
            "original_queue": self.failure.original_queue,
            "attempts": self.failure.attempts,
            "retries": self.failure.retries,
            "reason": self.failure.reason,
            "last_error": self.failure.last_error,
            "first_failure_ms": self.failure.first_failure_ms,
            "first_failure": self.failure.first_failure_ms.map(rfc3339_ms),
            "last_failure_ms": self.failure.last_failure_ms,
            "last_failure": self.failure.last_failure_ms.map(rfc3339_ms),
            "consumer": self.failure.consumer,
            "replay_count": self.failure.replays,
            "replayed_at_ms": self.failure.replayed_at_ms,
            "body_size": self.body_size,
            "redelivered": self.redelivered,
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// A few indented lines for a terminal, after a first line with `n` and the id.
    /// `now_ms` dates the "ago" hints.
    pub(crate) fn to_text(&self, n: u64, now_ms: i64) -> String {
        let or_unknown = |v: &Option<String>| match v {
            Some(s) => format!("'{}'", one_line(s)),
            None => "?".into(),
        };
        let mut out = format!(
            "#{n} {}{}\n",
            self.label(),
            if self.redelivered {
                " (redelivered)"
            } else {
                ""
            }
        );
        out.push_str(&format!(
            "   from queue {} (exchange {}, routing key {}), consumer {}\n",
            or_unknown(&self.failure.original_queue),
            or_unknown(&self.failure.original_exchange),
            or_unknown(&self.failure.original_routing_key),
            or_unknown(&self.failure.consumer),
        ));
        out.push_str(&format!(
            "   {} after {} attempts; body {} bytes",
            self.failure
                .reason
                .as_deref()
                .map(one_line)
                .unwrap_or_else(|| "dead-lettered".into()),
            self.failure
                .attempts
                .map(|a| a.to_string())
                .unwrap_or_else(|| "?".into()),
            self.body_size,
        ));
        if let Some(count) = self.failure.replays {
            out.push_str(&format!("; replayed {count} times before"));
        }
        out.push('\n');
        out.push_str(&format!(
            "   first failure {}, last failure {}\n",
            when(self.failure.first_failure_ms, now_ms),
            when(self.failure.last_failure_ms, now_ms),
        ));
        let error = self.failure.last_error.as_deref().unwrap_or("?");
        out.push_str(&format!(
            "   last error: {}",
            one_line(&truncate(error, LIST_ERROR_CHARS))
        ));
        out
    }
}

/// Which messages a `replay` or `move` acts on. Every given criterion must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Only these message ids (any, if empty).
    pub ids: HashSet<String>,
    /// Only this dead-letter reason, exactly.
    pub reason: Option<String>,
    /// Only messages whose last error contains this text (case-sensitive).
    pub error: Option<String>,
}

impl Filter {
    /// Whether `dl` is selected.
    pub(crate) fn matches(&self, dl: &DeadLetter) -> bool {
        let id_ok = self.ids.is_empty()
            || dl
                .message_id
                .as_ref()
                .is_some_and(|id| self.ids.contains(id));
        let reason_ok = self
            .reason
            .as_ref()
            .is_none_or(|r| dl.failure.reason.as_ref() == Some(r));
        let error_ok = self.error.as_ref().is_none_or(|needle| {
            dl.failure
                .last_error
                .as_ref()
                .is_some_and(|e| e.contains(needle.as_str()))
        });
        id_ok && reason_ok && error_ok
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2024-02-29T13:05:09.042Z`); the plain number when outside years 1970 to 9999.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    const LAST_MS_OF_9999: i64 = 253_402_300_799_999;
    if !(0..=LAST_MS_OF_9999).contains(&ms) {
        return format!("{ms} ms");
    }
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    let (year, month, day) = civil_date(days);
    let secs = in_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        in_day % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (for `days >= 0`). Counts in
/// 400-year cycles of 146,097 days starting on a March 1st, so that the leap day falls
/// at the end of each counted year.
fn civil_date(days: i64) -> (i64, i64, i64) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let cycle = z / 146_097;
    let day_of_cycle = z % 146_097;
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    // Months counted from March: 0 = March .. 11 = February.
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_cycle + cycle * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A time with how long ago it was, or `?`.
pub(crate) fn when(ms: Option<i64>, now_ms: i64) -> String {
    match ms {
        Some(ms) => format!("{} ({})", rfc3339_ms(ms), ago(now_ms.saturating_sub(ms))),
        None => "?".into(),
    }
}

/// A rough age: `42s ago`, `5m ago`, `3h ago`, `2d ago` (`in the future` for clock skew).
fn ago(ms: i64) -> String {
    if ms < 0 {
        return "in the future".into();
    }
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Text safe on one terminal line: control characters (newlines, escapes) escaped.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` characters of `s`, with `...` when cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", s.get(..end).unwrap_or(s)),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339_in_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_211_909_042), "2024-02-29T13:05:09.042Z");
        assert_eq!(rfc3339_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-5), "-5 ms");
        assert_eq!(rfc3339_ms(i64::MAX), format!("{} ms", i64::MAX));
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let (mut y, mut m, mut d) = civil_date(0);
        for days in 1..200_000 {
            let next = civil_date(days);
            let expected = if next.2 == 1 {
                if m == 12 {
                    (y + 1, 1, 1)
                } else {
                    (y, m + 1, 1)
                }
            } else {
                (y, m, d + 1)
            };
            assert_eq!(next, expected, "day {days}");
            (y, m, d) = next;
        }
    }

    #[test]
    fn ages_are_rough() {
        assert_eq!(ago(1500), "1s ago");
        assert_eq!(ago(125_000), "2m ago");
        assert_eq!(ago(7_200_000), "2h ago");
        assert_eq!(ago(3 * 86_400_000), "3d ago");
        assert_eq!(ago(-1), "in the future");
    }

    #[test]
    fn filters_combine_with_and() {
        let dl = DeadLetter {
            message_id: Some("m-1".into()),
            failure: FailureRecord {
                reason: Some("rejected".into()),
                last_error: Some("body is not the expected JSON".into()),
                ..FailureRecord::default()
            },
            ..DeadLetter::default()
        };
        assert!(Filter::default().matches(&dl));
        let by_id = Filter {
            ids: ["m-1".to_owned()].into(),
            ..Filter::default()
        };
        assert!(by_id.matches(&dl));
        assert!(
            !Filter {
                ids: ["m-2".to_owned()].into(),
                ..Filter::default()
            }
            .matches(&dl)
        );
        let both = Filter {
            reason: Some("rejected".into()),
            error: Some("JSON".into()),
            ..Filter::default()
        };
        assert!(both.matches(&dl));
        let wrong_reason = Filter {
            reason: Some("retries-exhausted".into()),
            ..both.clone()
        };
        assert!(!wrong_reason.matches(&dl));
        let mut no_error = dl.clone();
        no_error.failure.last_error = None;
        assert!(!both.matches(&no_error));
    }

    #[test]
    fn terminal_text_is_one_line() {
        assert_eq!(one_line("a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(truncate("héllo", 2), "hé...");
        assert_eq!(truncate("hé", 2), "hé");
    }
}
