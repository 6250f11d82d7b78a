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

/// A valid byte stream for [`fuzz_decode`] to mutate: a delivery split over several body
/// frames, an empty-bodied delivery, confirms (single and multiple), a returned message,
/// `channel.flow`, `connection.blocked`, a delivery with undecodable headers (refused), a
/// heartbeat and a server-initiated channel close.
pub fn seed_frames() -> Vec<u8> {
    use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, connection};
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let method = |out: &mut Vec<u8>, ch: u16, m: AMQPClass| {
        let _ = codec::put_method(out, ch, &m);
    };
    let deliver = |tag: u64| {
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "c".into(),
            delivery_tag: tag,
            redelivered: false,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        }))
    };
    let props = BasicProperties::default()
        .with_message_id("id-1".into())
        .with_content_type("application/json".into());
    // A delivery whose 6000-byte body spans two frames at frame_max 4096.
    method(&mut out, 1, deliver(1));
    let mut publish = Vec::new();
    let body = vec![b'x'; 6000];
    let _ = codec::put_publish(
        &mut publish,
        &mut scratch,
        1,
        "ex",
        "rk",
        false,
        &props,
        &body,
        4096,
    );
    out.extend_from_slice(content_frames(&publish));
    method(&mut out, 1, deliver(2));
    let mut empty = Vec::new();
    let _ = codec::put_publish(
        &mut empty,
        &mut scratch,
        1,
        "",
        "",
        false,
        &props,
        b"",
        4096,
    );
    out.extend_from_slice(content_frames(&empty));
    let ack = |tag, multiple| {
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        }))
    };
    method(&mut out, 2, ack(1, false));
    method(&mut out, 2, ack(3, true));
    method(
        &mut out,
        2,
        AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "ex".into(),
            routing_key: "rk".into(),
        })),
    );
    let mut returned = Vec::new();
    let _ = codec::put_publish(
        &mut returned,
        &mut scratch,
        2,
        "ex",
        "rk",
        true,
        &props,
        b"r",
        4096,
    );
    out.extend_from_slice(content_frames(&returned));
    method(
        &mut out,
        2,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
    );
    method(
        &mut out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
            reason: "low on memory".into(),
        })),
    );
    // A delivery whose headers nest past the decoder's limit: refused (rejected) and its
    // body skipped, the connection goes on.
    method(&mut out, 1, deliver(3));
    let mut deep = amq_protocol::types::FieldTable::default();
    for _ in 0..40 {
        let mut outer = amq_protocol::types::FieldTable::default();
        outer.insert("n".into(), amq_protocol::types::AMQPValue::FieldTable(deep));
        deep = outer;
    }
    let mut refused = Vec::new();
    let _ = codec::put_publish(
        &mut refused,
        &mut scratch,
        1,
        "ex",
        "rk",
        false,
        &BasicProperties::default().with_headers(deep),
        b"refused",
        4096,
    );
    out.extend_from_slice(content_frames(&refused));
    codec::put_heartbeat(&mut out);
    method(
        &mut out,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 406,
            reply_text: "PRECONDITION_FAILED".into(),
            class_id: 50,
            method_id: 10,
        })),
    );
    out
}

/// The content header and body frames of an encoded publish (its method frame dropped).
fn content_frames(publish: &[u8]) -> &[u8] {
    let method_len = publish
        .get(3..7)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| {
            u32::from_be_bytes(b) as usize + codec::FRAME_OVERHEAD
        });
    publish.get(method_len..).unwrap_or_default()
}
