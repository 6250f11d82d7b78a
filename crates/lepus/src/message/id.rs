//! The message ids the publisher assigns: UUIDv7 (RFC 9562), monotonic per thread.
//!
//! The 48-bit Unix millisecond timestamp comes first, so ids sort by time; the other 74
//! bits (after the version and variant) are random when a new millisecond starts and
//! count up by one within it (the RFC's "monotonic random" method, section 6.2). So ids
//! made on one thread are strictly increasing, and making one costs a thread-local read
//! and an addition instead of 128 fresh random bits: the random draw happens once per
//! millisecond and thread, not per message. Unique across threads and processes by the
//! random start: two threads or hosts would have to draw the same 73 bits in the same
//! millisecond.

use std::cell::Cell;

use rand::Rng;

/// The 74 bits after the timestamp, version and variant.
const TAIL_BITS: u32 = 74;
const TAIL_MASK: u128 = (1 << TAIL_BITS) - 1;

thread_local! {
    /// The millisecond of the last id made on this thread, and its 74-bit tail.
    static LAST: Cell<(u64, u128)> = const { Cell::new((0, 0)) };
}

/// A new UUIDv7 for `unix_ms` (milliseconds since the Unix epoch), greater than every
/// id made on this thread before.
pub(crate) fn next(unix_ms: u64) -> uuid::Uuid {
    let (ms, tail) = LAST.with(|last| {
        let (last_ms, last_tail) = last.get();
        let next = if unix_ms > last_ms {
            // A new millisecond: a fresh random start, its top bit clear so counting up
            // within the millisecond never overflows into the next.
            (unix_ms, rand::rng().random::<u128>() & (TAIL_MASK >> 1))
        } else if last_tail < TAIL_MASK {
            // The same millisecond, or the clock went back: count on from the last id.
            (last_ms, last_tail + 1)
        } else {
            // 2^73 ids in one millisecond: borrow the next one.
            (last_ms.saturating_add(1), 0)
        };
        last.set(next);
        next
    });
    uuid::Uuid::from_u128(layout(ms, tail))
}

/// The id's 128 bits: `unix_ts_ms` (48), `ver` = 7 (4), `rand_a` (12), `var` = 0b10 (2),
/// `rand_b` (62).
fn layout(unix_ms: u64, tail: u128) -> u128 {
    let ms = u128::from(unix_ms) & ((1 << 48) - 1);
    let rand_a = (tail >> 62) & 0xfff;
    let rand_b = tail & ((1 << 62) - 1);
    (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::next;

    #[test]
    fn ids_are_version_7_and_strictly_increasing_within_and_across_milliseconds() {
        let mut last = next(1_700_000_000_000);
        let mut seen = HashSet::new();
        for i in 0..100_000u64 {
            // Ten thousand ids per millisecond, and once the clock going back.
            let ms = if i == 50_000 {
                1_700_000_000_000
            } else {
                1_700_000_000_001 + i / 10_000
            };
            let id = next(ms);
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert!(id > last, "{id} after {last}");
            assert!(seen.insert(id));
            last = id;
        }
    }

    #[test]
    fn the_timestamp_is_the_milliseconds_given() {
        let ms = 1_764_460_800_123u64;
        let id = next(ms);
        let (secs, nanos) = id.get_timestamp().map(|t| t.to_unix()).unwrap_or_default();
        assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), ms);
    }

    #[test]
    fn threads_draw_different_starts() {
        let ms = 1_800_000_000_000u64;
        let a = std::thread::spawn(move || next(ms)).join().unwrap();
        let b = std::thread::spawn(move || next(ms)).join().unwrap();
        assert_ne!(a, b);
    }
}
