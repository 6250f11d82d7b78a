//! Guards in front of `amq-protocol`'s decoder.
//!
//! Its field-table parser recurses once per nesting level, and one frame can nest tables
//! thousands deep: enough to overflow a task's stack, which aborts the process. Before a
//! payload is decoded we therefore (1) refuse methods a broker never sends, without
//! parsing them, and (2) walk every field table the remaining ones can carry with an
//! explicit depth limit. Real brokers nest a few levels (`x-death` is three).

use crate::error::{Error, Result};

/// Deeper than anything RabbitMQ produces, shallow enough for any stack.
pub(crate) const MAX_TABLE_DEPTH: usize = 32;

/// Whether a broker may send this method to a client.
pub(crate) fn sent_by_broker(class: u16, method: u16) -> bool {
    matches!(
        (class, method),
        (10, 10 | 20 | 30 | 41 | 50 | 51 | 60 | 61 | 71)
            | (20, 11 | 20 | 21 | 40 | 41)
            | (40, 11 | 21 | 31 | 51)
            | (50, 11 | 21 | 31 | 41 | 51)
            | (60, 11 | 21 | 30 | 31 | 50 | 60 | 71 | 72 | 80 | 111 | 120)
            | (85, 11)
            | (90, 11 | 21 | 31)
    )
}

/// Checks the tables of a method payload (class and method ids included).
pub(crate) fn check_method(payload: &[u8]) -> Result<()> {
    // connection.start: version (2 bytes), then server-properties.
    if payload.get(..4) == Some(&[0, 10, 0, 10]) {
        let rest = payload.get(6..).unwrap_or_default();
        return check_table(rest, 0).map(drop);
    }
    Ok(())
}

/// Checks the `headers` property of a content header payload.
pub(crate) fn check_content_header(payload: &[u8]) -> Result<()> {
    // class (2), weight (2), body size (8), property flags (2).
    let flags = match payload.get(12..14) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => return Ok(()), // too short: the decoder reports it
    };
    if flags & 1 != 0 {
        // A continuation of the flags word; 0-9-1 defines none for basic.
        return Err(Error::protocol("content header with extra property flags"));
    }
    if flags & (1 << 13) == 0 {
        return Ok(());
    }
    let mut at = 14;
    // content-type and content-encoding (bits 15, 14) come before headers.
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            let len = usize::from(*payload.get(at).ok_or_else(truncated)?);
            at += 1 + len;
        }
    }
    check_table(payload.get(at..).ok_or_else(truncated)?, 0).map(drop)
}

fn truncated() -> Error {
    Error::protocol("field table is truncated")
}

fn take(input: &[u8], n: usize) -> Result<(&[u8], &[u8])> {
    if input.len() < n {
        return Err(truncated());
    }
    Ok(input.split_at(n))
}

fn long_len(input: &[u8]) -> Result<(usize, &[u8])> {
    let (len, rest) = take(input, 4)?;
    let len = <[u8; 4]>::try_from(len).map_err(|_| truncated())?;
    Ok((u32::from_be_bytes(len) as usize, rest))
}

/// Walks a table (length-prefixed); returns the bytes after it.
fn check_table(input: &[u8], depth: usize) -> Result<&[u8]> {
    if depth >= MAX_TABLE_DEPTH {
        return Err(Error::protocol(format!(
            "field tables nested deeper than {MAX_TABLE_DEPTH} levels"
        )));
    }
    let (len, rest) = long_len(input)?;
    let (mut body, after) = take(rest, len)?;
    while !body.is_empty() {
        let (key_len, rest) = take(body, 1)?;
        let (_, rest) = take(rest, usize::from(key_len.first().copied().unwrap_or(0)))?;
        body = check_value(rest, depth)?;
    }
    Ok(after)
}

fn check_value(input: &[u8], depth: usize) -> Result<&[u8]> {
    let (kind, rest) = take(input, 1)?;
    let fixed = match kind.first().copied().unwrap_or(0) {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'V' => 0,
        b'S' | b'x' => {
            let (len, rest) = long_len(rest)?;
            return take(rest, len).map(|(_, after)| after);
        }
        b'F' => return check_table(rest, depth + 1),
        b'A' => {
            let (len, rest) = long_len(rest)?;
            let (mut items, after) = take(rest, len)?;
            while !items.is_empty() {
                items = check_value(items, depth + 1)?;
            }
            return Ok(after);
        }
        other => {
            return Err(Error::protocol(format!(
                "unknown field type {:?} in a table",
                char::from(other)
            )));
        }
    };
    take(rest, fixed).map(|(_, after)| after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shallow_tables_pass_and_deep_ones_fail() {
        let mut inner: Vec<u8> = Vec::new();
        for depth in 1..=40 {
            let mut t = vec![1u8, b'k', b'F'];
            t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            t.extend_from_slice(&inner);
            inner = t;
            let mut table = (inner.len() as u32).to_be_bytes().to_vec();
            table.extend_from_slice(&inner);
            let ok = check_table(&table, 0).is_ok();
            assert_eq!(ok, depth < MAX_TABLE_DEPTH, "depth {depth}");
        }
    }

    #[test]
    fn broker_methods() {
        assert!(sent_by_broker(60, 60));
        assert!(sent_by_broker(40, 51));
        assert!(!sent_by_broker(60, 40)); // basic.publish
        assert!(!sent_by_broker(40, 10)); // exchange.declare carries a table
    }
}
