//! The failure record: what lepus writes into the headers of a message that failed, and
//! reads back, in one place.
//!
//! When a handler fails, the consumer sends a copy of the message to a wait queue or to
//! the dead-letter queue (see [`RetryPolicy`](crate::RetryPolicy)) with `x-lepus-*`
//! headers saying how often and why it failed. The consumer writes them, `lepus dlq`
//! lists and replays by them, and a service's own dead-letter handler reads them: all
//! three go through [`FailureRecord`], so the names and value types are decided here only.
//!
//! # Reading is lenient
//!
//! Headers travel through other tools and hands, so [`FailureRecord::from_headers`] never
//! fails. A field is `None` when its header is missing or holds a value of a type that
//! cannot mean it:
//!
//! - counts (`attempts`, `retries`, `replays`) accept any AMQP integer type; a negative
//!   count reads as `None`, one above `u32::MAX` as `u32::MAX`;
//! - times (ms since the Unix epoch) accept any integer type and AMQP timestamps (whose
//!   unit, by lepus's convention here, is also ms); a timestamp beyond `i64` is `None`;
//! - texts accept long and short strings; bytes that are not UTF-8 are replaced (`�`);
//!   a number or a table where text belongs is `None`.
//!
//! # Writing
//!
//! [`FailureRecord::write_into`] sets the headers of the fields that are `Some` (counts
//! and times as signed 64-bit integers, texts as long strings) and leaves the others as
//! they are in the table.

use lepus_amqp::{AMQPValue, FieldTable};

use crate::message::short;

pub use crate::clock::now_ms;

/// Failed handler invocations so far (all tiers).
pub const ATTEMPTS_HEADER: &str = "x-lepus-attempts";
/// Delay tiers passed so far.
pub const RETRIES_HEADER: &str = "x-lepus-retries";
/// When the first failure happened (ms since the Unix epoch).
pub const FIRST_FAILURE_HEADER: &str = "x-lepus-first-failure-ms";
/// When the last failure happened (ms since the Unix epoch).
pub const LAST_FAILURE_HEADER: &str = "x-lepus-last-failure-ms";
/// The last failure's text.
pub const LAST_ERROR_HEADER: &str = "x-lepus-last-error";
/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-lepus-original-exchange";
/// The routing key it was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-lepus-original-routing-key";
/// The work queue it failed on.
pub const ORIGINAL_QUEUE_HEADER: &str = "x-lepus-original-queue";
/// The consumer that gave up on it.
pub const CONSUMER_HEADER: &str = "x-lepus-consumer";
/// Why it was dead-lettered: [`REASON_REJECTED`] or [`REASON_RETRIES_EXHAUSTED`].
pub const REASON_HEADER: &str = "x-lepus-dead-letter-reason";
/// When `lepus dlq replay` last sent it back (ms since the Unix epoch).
pub const REPLAYED_AT_HEADER: &str = "x-lepus-replayed-at";
/// How many times `lepus dlq replay` has sent it back.
pub const REPLAY_COUNT_HEADER: &str = "x-lepus-replay-count";

/// The dead-letter reason of a permanent failure ([`Outcome::DeadLetter`](crate::Outcome)).
pub const REASON_REJECTED: &str = "rejected";
/// The dead-letter reason of a message that failed after its last delay tier.
pub const REASON_RETRIES_EXHAUSTED: &str = "retries-exhausted";

/// The `x-lepus-*` headers of a failed message, each `None` when absent or unreadable
/// (see the [module](self) for what reads as what).
///
/// ```
/// use lepus::amqp::FieldTable;
/// use lepus::failure::FailureRecord;
///
/// let mut headers = FieldTable::default();
/// let record = FailureRecord {
///     attempts: Some(3),
///     last_error: Some("card declined".into()),
///     ..FailureRecord::default()
/// };
/// record.write_into(&mut headers);
/// assert_eq!(FailureRecord::from_headers(Some(&headers)), record);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureRecord {
    /// Failed handler invocations so far ([`ATTEMPTS_HEADER`]).
    pub attempts: Option<u32>,
    /// Delay tiers passed so far ([`RETRIES_HEADER`]).
    pub retries: Option<u32>,
    /// The first failure, ms since the Unix epoch ([`FIRST_FAILURE_HEADER`]).
    pub first_failure_ms: Option<i64>,
    /// The last failure, ms since the Unix epoch ([`LAST_FAILURE_HEADER`]).
    pub last_failure_ms: Option<i64>,
    /// The last failure's text ([`LAST_ERROR_HEADER`]).
    pub last_error: Option<String>,
    /// The exchange it was first published to ([`ORIGINAL_EXCHANGE_HEADER`]).
    pub original_exchange: Option<String>,
    /// The routing key it was first published with ([`ORIGINAL_ROUTING_KEY_HEADER`]).
    pub original_routing_key: Option<String>,
    /// The work queue it failed on ([`ORIGINAL_QUEUE_HEADER`]).
    pub original_queue: Option<String>,
    /// The consumer that handled it last ([`CONSUMER_HEADER`]).
    pub consumer: Option<String>,
    /// Why it was dead-lettered ([`REASON_HEADER`]); `None` on its way through a tier.
    pub reason: Option<String>,
    /// Replays by `lepus dlq replay` ([`REPLAY_COUNT_HEADER`]).
    pub replays: Option<u32>,
    /// The last replay, ms since the Unix epoch ([`REPLAYED_AT_HEADER`]).
    pub replayed_at_ms: Option<i64>,
}

impl FailureRecord {
    /// Reads the record from a message's headers (`None`: a message without headers,
    /// whose record is empty). Never fails; see the [module](self).
    pub fn from_headers(headers: Option<&FieldTable>) -> Self {
        let text = |key| text(headers, key);
        let time = |key| time(headers, key);
        FailureRecord {
            attempts: count(headers, ATTEMPTS_HEADER),
            retries: count(headers, RETRIES_HEADER),
            first_failure_ms: time(FIRST_FAILURE_HEADER),
            last_failure_ms: time(LAST_FAILURE_HEADER),
            last_error: text(LAST_ERROR_HEADER),
            original_exchange: text(ORIGINAL_EXCHANGE_HEADER),
            original_routing_key: text(ORIGINAL_ROUTING_KEY_HEADER),
            original_queue: text(ORIGINAL_QUEUE_HEADER),
            consumer: text(CONSUMER_HEADER),
            reason: text(REASON_HEADER),
            replays: count(headers, REPLAY_COUNT_HEADER),
            replayed_at_ms: time(REPLAYED_AT_HEADER),
        }
    }

    /// Writes the fields that are `Some` into `headers`, replacing what was there; the
    /// headers of `None` fields are left alone.
    pub fn write_into(&self, headers: &mut FieldTable) {
        let mut put = |key: &str, value: Option<AMQPValue>| {
            if let Some(value) = value {
                headers.insert(short(key), value);
            }
        };
        let int = |v: Option<u32>| v.map(|v| AMQPValue::LongLongInt(v.into()));
        let ms = |v: Option<i64>| v.map(AMQPValue::LongLongInt);
        let text = |v: &Option<String>| v.as_deref().map(|s| AMQPValue::LongString(s.into()));
        put(ATTEMPTS_HEADER, int(self.attempts));
        put(RETRIES_HEADER, int(self.retries));
        put(FIRST_FAILURE_HEADER, ms(self.first_failure_ms));
        put(LAST_FAILURE_HEADER, ms(self.last_failure_ms));
        put(LAST_ERROR_HEADER, text(&self.last_error));
        put(ORIGINAL_EXCHANGE_HEADER, text(&self.original_exchange));
        put(
            ORIGINAL_ROUTING_KEY_HEADER,
            text(&self.original_routing_key),
        );
        put(ORIGINAL_QUEUE_HEADER, text(&self.original_queue));
        put(CONSUMER_HEADER, text(&self.consumer));
        put(REASON_HEADER, text(&self.reason));
        put(REPLAY_COUNT_HEADER, int(self.replays));
        put(REPLAYED_AT_HEADER, ms(self.replayed_at_ms));
    }

    /// Makes `headers` those of a replayed copy: the attempt and retry counters are
    /// removed (the consumer counts afresh), the replay count goes up by one (a missing
    /// or unreadable count reads as 0) and the replay time is set to `now_ms`. Every
    /// other header, the failure history included, stays as it was.
    pub fn stamp_replay(headers: &mut FieldTable, now_ms: i64) {
        let replays = count(Some(headers), REPLAY_COUNT_HEADER).unwrap_or(0);
        let mut table = std::mem::take(headers).inner().clone();
        table.remove(ATTEMPTS_HEADER);
        table.remove(RETRIES_HEADER);
        *headers = FieldTable::from(table);
        FailureRecord {
            replays: Some(replays.saturating_add(1)),
            replayed_at_ms: Some(now_ms),
            ..FailureRecord::default()
        }
        .write_into(headers);
    }

    /// Whether the message was dead-lettered (it has a reason).
    pub fn is_dead_lettered(&self) -> bool {
        self.reason.is_some()
    }
}

/// An integer header of any AMQP integer type, widened.
fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        _ => return None,
    })
}

/// A count header: `None` if missing, not an integer, or negative; saturated at
/// `u32::MAX`. Used on every delivery for the attempt number, so it reads one header.
pub(crate) fn count(headers: Option<&FieldTable>, key: &str) -> Option<u32> {
    let n = integer(headers?.inner().get(key)?)?;
    (n >= 0).then(|| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A time header in ms: any integer type, or a timestamp.
fn time(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    match headers?.inner().get(key)? {
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        other => integer(other).and_then(|n| i64::try_from(n).ok()),
    }
}

/// A text header: long or short string, not-UTF-8 bytes replaced.
fn text(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lepus_amqp::ShortString;

    fn full() -> FailureRecord {
        FailureRecord {
            attempts: Some(4),
            retries: Some(2),
            first_failure_ms: Some(1_700_000_000_000),
            last_failure_ms: Some(1_700_000_009_000),
            last_error: Some("stock service: timed out".into()),
            original_exchange: Some("shop".into()),
            original_routing_key: Some("order.created".into()),
            original_queue: Some("inventory".into()),
            consumer: Some("inventory-1".into()),
            reason: Some(REASON_RETRIES_EXHAUSTED.into()),
            replays: Some(1),
            replayed_at_ms: Some(1_700_000_100_000),
        }
    }

    #[test]
    fn a_record_round_trips_through_headers() {
        let mut headers = FieldTable::default();
        full().write_into(&mut headers);
        assert_eq!(headers.inner().len(), 12, "one header per field");
        assert_eq!(FailureRecord::from_headers(Some(&headers)), full());
        assert!(full().is_dead_lettered());
    }

    #[test]
    fn a_replay_stamp_clears_the_counters_and_counts_the_replay() {
        let mut headers = FieldTable::default();
        full().write_into(&mut headers);
        headers.insert(ShortString::from("x-other"), AMQPValue::Boolean(true));
        FailureRecord::stamp_replay(&mut headers, 7);
        let read = FailureRecord::from_headers(Some(&headers));
        assert_eq!((read.attempts, read.retries), (None, None));
        assert_eq!((read.replays, read.replayed_at_ms), (Some(2), Some(7)));
        // The history and other tools' headers stay.
        assert_eq!(read.original_queue, full().original_queue);
        assert_eq!(read.last_error, full().last_error);
        assert!(headers.contains_key("x-other"));
        // A message never replayed (or with an unreadable count) starts at one.
        let mut fresh = FieldTable::default();
        fresh.insert(
            ShortString::from(REPLAY_COUNT_HEADER),
            AMQPValue::LongString("x".into()),
        );
        FailureRecord::stamp_replay(&mut fresh, 8);
        assert_eq!(FailureRecord::from_headers(Some(&fresh)).replays, Some(1));
    }

    #[test]
    fn missing_headers_read_as_none_and_are_not_written() {
        assert_eq!(FailureRecord::from_headers(None), FailureRecord::default());
        let empty = FieldTable::default();
        assert_eq!(
            FailureRecord::from_headers(Some(&empty)),
            FailureRecord::default()
        );
        // None fields leave what is there alone, including headers of other tools.
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("x-other"), AMQPValue::Boolean(true));
        full().write_into(&mut headers);
        FailureRecord::default().write_into(&mut headers);
        assert_eq!(FailureRecord::from_headers(Some(&headers)), full());
        assert_eq!(
            headers.inner().get("x-other"),
            Some(&AMQPValue::Boolean(true))
        );
    }

    #[test]
    fn odd_and_mistyped_values_read_leniently() {
        let mut h = FieldTable::default();
        let mut set = |k: &str, v: AMQPValue| {
            h.insert(ShortString::from(k), v);
        };
        set(ATTEMPTS_HEADER, AMQPValue::ShortShortUInt(7));
        set(RETRIES_HEADER, AMQPValue::LongInt(-2));
        set(REPLAY_COUNT_HEADER, AMQPValue::LongLongInt(i64::MAX));
        set(FIRST_FAILURE_HEADER, AMQPValue::Timestamp(42));
        set(LAST_FAILURE_HEADER, AMQPValue::Timestamp(u64::MAX));
        set(
            REPLAYED_AT_HEADER,
            AMQPValue::LongString("yesterday".into()),
        );
        set(
            LAST_ERROR_HEADER,
            AMQPValue::LongString(vec![b'o', 0xff, b'k'].into()),
        );
        set(
            ORIGINAL_QUEUE_HEADER,
            AMQPValue::ShortString("orders".into()),
        );
        set(CONSUMER_HEADER, AMQPValue::LongLongInt(5));
        set(REASON_HEADER, AMQPValue::Boolean(true));
        let r = FailureRecord::from_headers(Some(&h));
        assert_eq!(r.attempts, Some(7), "any integer type");
        assert_eq!(r.retries, None, "a negative count is unknown");
        assert_eq!(r.replays, Some(u32::MAX), "a huge count saturates");
        assert_eq!(r.first_failure_ms, Some(42), "a timestamp is a time");
        assert_eq!(r.last_failure_ms, None, "a timestamp beyond i64");
        assert_eq!(r.replayed_at_ms, None, "text is not a time");
        assert_eq!(r.last_error.as_deref(), Some("o\u{fffd}k"), "not UTF-8");
        assert_eq!(r.original_queue.as_deref(), Some("orders"), "short string");
        assert_eq!(r.consumer, None, "a number is not text");
        assert_eq!(r.reason, None, "a boolean is not text");
        assert!(!r.is_dead_lettered());
    }

    #[test]
    fn counts_read_one_header() {
        let mut h = FieldTable::default();
        h.insert(ShortString::from(ATTEMPTS_HEADER), AMQPValue::ShortUInt(3));
        assert_eq!(count(Some(&h), ATTEMPTS_HEADER), Some(3));
        assert_eq!(count(Some(&h), RETRIES_HEADER), None);
        assert_eq!(count(None, ATTEMPTS_HEADER), None);
    }
}
