//! Entry points that feed arbitrary bytes through the engine's input path, for property
//! tests and fuzzers. Not part of the supported API.

use std::sync::Arc;

use bytes::BytesMut;

use crate::codec;
use crate::connection::ConnShared;

/// Decodes frames from `data` and applies them to a connection with channels 1 and 2
/// open, a consumer with tag `c` on channel 1 and confirms on channel 2, the way the
/// reader task does, until the bytes run out or an error closes the connection.
///
/// Returns how many frames were applied. Whatever the input, it must return (not panic,
/// not hang) and memory stays bounded by `frame_max` and the body limit.
pub fn fuzz_decode(data: &[u8]) -> usize {
    let conn = ConnShared::detached(4096, 64 * 1024);
    let _deliveries = conn.open_fuzz_channels();
    let mut buf = BytesMut::from(data);
    let mut applied = 0;
    while let Ok(Some(frame)) = codec::decode_frame(&mut buf, conn.frame_max) {
        if Arc::clone(&conn).dispatch_frame(frame).is_err() {
            break;
        }
        applied += 1;
    }
    applied
}
