//! Frames in and out.
//!
//! The outer framing (type, channel, size, payload, frame-end) is ours, so that a frame's
//! size is checked against `frame_max` before a byte of it is buffered, and so that bodies
//! are slices of the read buffer rather than copies. Method arguments, content headers and
//! field tables are decoded and encoded by `amq-protocol`, except for the few methods on the
//! per-message path (`basic.publish`, `basic.deliver`, `basic.ack`/`nack` both ways), which
//! are written by hand here because they are simple and hot.

mod decode_guard;

use amq_protocol::frame::{AMQPContentHeader, WriteContext};
use amq_protocol::protocol::{AMQPClass, BasicProperties};
use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};

pub(crate) const FRAME_METHOD: u8 = 1;
pub(crate) const FRAME_HEADER: u8 = 2;
pub(crate) const FRAME_BODY: u8 = 3;
pub(crate) const FRAME_HEARTBEAT: u8 = 8;
pub(crate) const FRAME_END: u8 = 0xCE;
/// Type, channel and size before the payload, frame-end after it.
pub(crate) const FRAME_OVERHEAD: usize = 8;
const BASIC: u16 = 60;
const BASIC_PUBLISH: u16 = 40;
const BASIC_DELIVER: u16 = 60;
const BASIC_ACK: u16 = 80;
const BASIC_NACK: u16 = 120;
const BASIC_REJECT: u16 = 90;

/// The protocol header a client sends first.
pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A UTF-8 string that is a slice of a received frame: no allocation per delivery.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ShortStr(Bytes);

impl ShortStr {
    fn new(bytes: Bytes) -> Result<Self> {
        std::str::from_utf8(&bytes)
            .map_err(|_| Error::protocol("short string is not valid UTF-8"))?;
        Ok(Self(bytes))
    }

    pub(crate) fn copied(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // Validated in `new`; the fallback is unreachable but keeps this panic-free.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ShortStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The arguments of `basic.deliver`, `basic.return` or `basic.get-ok`: everything a
/// delivery needs before its content header and body arrive.
#[derive(Debug, Clone)]
pub(crate) struct DeliverArgs {
    pub consumer_tag: ShortStr,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
}

/// One decoded frame.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A method other than the hot ones below.
    Method(u16, Box<AMQPClass>),
    /// `basic.deliver`, decoded without allocating.
    Deliver(u16, DeliverArgs),
    /// `basic.ack` or `basic.nack` from the broker (publisher confirms).
    Confirm {
        channel: u16,
        delivery_tag: u64,
        multiple: bool,
        ack: bool,
    },
    /// A content header: the body size and the properties.
    Header(u16, Box<AMQPContentHeader>),
    /// A content header whose properties do not decode (or that the table guard refuses),
    /// with the body size it announces: the message is refused, the connection goes on.
    BadHeader {
        channel: u16,
        body_size: u64,
        error: Error,
    },
    /// A body frame, a slice of the read buffer.
    Body(u16, Bytes),
    Heartbeat,
}

/// Takes one frame from the front of `buf`, if a whole one is there.
///
/// Checks the size before waiting for the payload, so a peer cannot make us buffer more
/// than `frame_max` bytes for one frame.
pub(crate) fn decode_frame(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>> {
    let Some(head) = buf.get(..7) else {
        return Ok(None);
    };
    let kind = head.first().copied().unwrap_or_default();
    let channel = u16::from_be_bytes([
        head.get(1).copied().unwrap_or_default(),
        head.get(2).copied().unwrap_or_default(),
    ]);
    let size = u32::from_be_bytes([
        head.get(3).copied().unwrap_or_default(),
        head.get(4).copied().unwrap_or_default(),
        head.get(5).copied().unwrap_or_default(),
        head.get(6).copied().unwrap_or_default(),
    ]) as usize;
    if kind == b'A' {
        return Err(Error::protocol(
            "the broker answered with a protocol header: it does not speak AMQP 0-9-1",
        ));
    }
    if size.saturating_add(FRAME_OVERHEAD) > frame_max {
        return Err(Error::new(
            ErrorKind::FrameTooLarge,
            format!("frame of {size} bytes exceeds frame_max {frame_max}"),
        ));
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    let end = buf.get(..1).and_then(|b| b.first().copied());
    buf.advance(1);
    if end != Some(FRAME_END) {
        return Err(Error::protocol(format!(
            "frame on channel {channel} does not end with 0xCE"
        )));
    }
    decode_payload(kind, channel, payload).map(Some)
}

fn decode_payload(kind: u8, channel: u16, payload: Bytes) -> Result<Frame> {
    match kind {
        FRAME_METHOD => decode_method(channel, payload),
        FRAME_HEADER => match decode_header(&payload) {
            Ok(header) => Ok(Frame::Header(channel, Box::new(header))),
            // The frame itself was well delimited: if its body size is readable, only this
            // message is bad, and the channel can refuse it and skip its body.
            Err(error) => match message_body_size(&payload) {
                Some(body_size) => Ok(Frame::BadHeader {
                    channel,
                    body_size,
                    error,
                }),
                None => Err(error),
            },
        },
        FRAME_BODY => Ok(Frame::Body(channel, payload)),
        FRAME_HEARTBEAT if channel == 0 => Ok(Frame::Heartbeat),
        FRAME_HEARTBEAT => Err(Error::protocol(format!(
            "heartbeat frame on channel {channel}"
        ))),
        other => Err(Error::protocol(format!("unknown frame type {other}"))),
    }
}

fn decode_header(payload: &[u8]) -> Result<AMQPContentHeader> {
    decode_guard::check_content_header(payload)?;
    let (rest, header) = amq_protocol::frame::parsing::parse_content_header(payload)
        .map_err(|e| Error::protocol(format!("malformed content header: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::protocol("trailing bytes after a content header"));
    }
    Ok(header)
}

/// The body size of a `basic` content header whose properties may not decode: class (2),
/// weight (2), then the size (8). `None` if even that is not there.
fn message_body_size(payload: &[u8]) -> Option<u64> {
    let class = u16::from_be_bytes(payload.get(..2)?.try_into().ok()?);
    if class != BASIC {
        return None;
    }
    Some(u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?))
}

/// A bounds-checked reader over a method payload.
struct Cursor(Bytes);

impl Cursor {
    fn u8(&mut self) -> Result<u8> {
        if self.0.is_empty() {
            return Err(truncated());
        }
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16> {
        if self.0.len() < 2 {
            return Err(truncated());
        }
        Ok(self.0.get_u16())
    }
    fn u64(&mut self) -> Result<u64> {
        if self.0.len() < 8 {
            return Err(truncated());
        }
        Ok(self.0.get_u64())
    }
    fn short_str(&mut self) -> Result<ShortStr> {
        let len = usize::from(self.u8()?);
        if self.0.len() < len {
            return Err(truncated());
        }
        ShortStr::new(self.0.split_to(len))
    }
    fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::protocol("trailing bytes after method arguments"))
        }
    }
}

fn truncated() -> Error {
    Error::protocol("method frame is truncated")
}

fn decode_method(channel: u16, payload: Bytes) -> Result<Frame> {
    let mut cur = Cursor(payload.clone());
    let class = cur.u16()?;
    let method = cur.u16()?;
    match (class, method) {
        (BASIC, BASIC_DELIVER) => {
            let consumer_tag = cur.short_str()?;
            let delivery_tag = cur.u64()?;
            let redelivered = cur.u8()? & 1 == 1;
            let exchange = cur.short_str()?;
            let routing_key = cur.short_str()?;
            cur.finish()?;
            Ok(Frame::Deliver(
                channel,
                DeliverArgs {
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange,
                    routing_key,
                },
            ))
        }
        (BASIC, BASIC_ACK) | (BASIC, BASIC_NACK) => {
            let delivery_tag = cur.u64()?;
            let multiple = cur.u8()? & 1 == 1;
            cur.finish()?;
            Ok(Frame::Confirm {
                channel,
                delivery_tag,
                multiple,
                ack: method == BASIC_ACK,
            })
        }
        _ => {
            if !decode_guard::sent_by_broker(class, method) {
                return Err(Error::protocol(format!(
                    "method {class}.{method} on channel {channel} is not one a broker sends"
                )));
            }
            decode_guard::check_method(&payload)?;
            let (rest, class) = amq_protocol::protocol::parse_class(&payload[..]).map_err(|e| {
                Error::protocol(format!(
                    "unknown or malformed method {class}.{method} on channel {channel}: {e}"
                ))
            })?;
            if !rest.is_empty() {
                return Err(Error::protocol("trailing bytes after method arguments"));
            }
            Ok(Frame::Method(channel, Box::new(class)))
        }
    }
}

/// Writes the frame envelope around a payload produced by `body`.
fn put_frame(out: &mut Vec<u8>, kind: u8, channel: u16, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let size = (out.len() - size_at - 4) as u32;
    if let Some(slot) = out.get_mut(size_at..size_at + 4) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    out.push(FRAME_END);
}

fn put_short_str(out: &mut Vec<u8>, s: &str) {
    // Callers validated the length; clamp rather than panic if one did not.
    let bytes = s.as_bytes();
    let len = bytes.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(bytes.get(..len).unwrap_or_default());
}

/// Encodes any method frame through `amq-protocol`.
pub(crate) fn put_method(out: &mut Vec<u8>, channel: u16, method: &AMQPClass) -> Result<()> {
    let scratch = WriteContext::from(Vec::with_capacity(64));
    let written = amq_protocol::protocol::gen_class(method)(scratch)
        .map_err(|e| Error::invalid(format!("cannot encode method: {e}")))?;
    let (payload, _) = written.into_inner();
    put_frame(out, FRAME_METHOD, channel, |o| {
        o.extend_from_slice(&payload)
    });
    Ok(())
}

/// Encodes `basic.ack`, `basic.nack` or `basic.reject` for a delivery.
pub(crate) fn put_settle(out: &mut Vec<u8>, channel: u16, tag: u64, settle: Settle) {
    put_frame(out, FRAME_METHOD, channel, |o| {
        o.extend_from_slice(&BASIC.to_be_bytes());
        let (method, bits) = match settle {
            Settle::Ack { multiple } => (BASIC_ACK, u8::from(multiple)),
            Settle::Nack { multiple, requeue } => {
                (BASIC_NACK, u8::from(multiple) | (u8::from(requeue) << 1))
            }
            Settle::Reject { requeue } => (BASIC_REJECT, u8::from(requeue)),
        };
        o.extend_from_slice(&method.to_be_bytes());
        o.extend_from_slice(&tag.to_be_bytes());
        o.push(bits);
    });
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack { multiple: bool },
    Nack { multiple: bool, requeue: bool },
    Reject { requeue: bool },
}

/// Encodes the property list of a content header (flags, then values) into `scratch`.
pub(crate) fn encode_properties(properties: &BasicProperties, scratch: &mut Vec<u8>) -> Result<()> {
    scratch.clear();
    let ctx = WriteContext::from(std::mem::take(scratch));
    let written = amq_protocol::protocol::basic::gen_properties(properties)(ctx)
        .map_err(|e| Error::invalid(format!("cannot encode message properties: {e}")))?;
    *scratch = written.into_inner().0;
    Ok(())
}

/// Encodes a whole `basic.publish`: method, content header, body frames split at
/// `frame_max`. `scratch` is a reusable buffer for the properties.
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_publish(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    channel: u16,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: usize,
) -> Result<()> {
    encode_properties(properties, scratch)?;
    if scratch.len() + 14 + FRAME_OVERHEAD > frame_max {
        return Err(Error::new(
            ErrorKind::FrameTooLarge,
            format!(
                "message properties of {} bytes do not fit in frame_max {frame_max}",
                scratch.len()
            ),
        ));
    }
    out.reserve(body.len() + scratch.len() + exchange.len() + routing_key.len() + 64);
    put_frame(out, FRAME_METHOD, channel, |o| {
        o.extend_from_slice(&BASIC.to_be_bytes());
        o.extend_from_slice(&BASIC_PUBLISH.to_be_bytes());
        o.extend_from_slice(&0u16.to_be_bytes());
        put_short_str(o, exchange);
        put_short_str(o, routing_key);
        o.push(u8::from(mandatory));
    });
    put_frame(out, FRAME_HEADER, channel, |o| {
        o.extend_from_slice(&BASIC.to_be_bytes());
        o.extend_from_slice(&0u16.to_be_bytes());
        o.extend_from_slice(&(body.len() as u64).to_be_bytes());
        o.extend_from_slice(scratch);
    });
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in body.chunks(chunk) {
        put_frame(out, FRAME_BODY, channel, |o| o.extend_from_slice(piece));
    }
    Ok(())
}

/// Encodes a heartbeat frame.
pub(crate) fn put_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    fn roundtrip(method: AMQPClass) -> Frame {
        let mut out = Vec::new();
        put_method(&mut out, 3, &method).unwrap();
        let mut buf = BytesMut::from(&out[..]);
        let frame = decode_frame(&mut buf, 4096).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    }

    #[test]
    fn deliver_fast_path_matches_the_generic_encoder() {
        let frame = roundtrip(AMQPClass::Basic(basic::AMQPMethod::Deliver(
            basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into(),
            },
        )));
        let Frame::Deliver(3, args) = frame else {
            panic!("not a deliver: {frame:?}")
        };
        assert_eq!(args.consumer_tag.as_str(), "ctag");
        assert_eq!(args.delivery_tag, 42);
        assert!(args.redelivered);
        assert_eq!(&*args.exchange, "ex");
        assert_eq!(&*args.routing_key, "rk");
    }

    #[test]
    fn settle_encodes_like_amq_protocol() {
        let mut ours = Vec::new();
        put_settle(
            &mut ours,
            7,
            99,
            Settle::Nack {
                multiple: true,
                requeue: false,
            },
        );
        let mut theirs = Vec::new();
        put_method(
            &mut theirs,
            7,
            &AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 99,
                multiple: true,
                requeue: false,
            })),
        )
        .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn publish_splits_the_body_at_frame_max() {
        let mut out = Vec::new();
        let body = vec![7u8; 10_000];
        put_publish(
            &mut out,
            &mut Vec::new(),
            1,
            "",
            "q",
            false,
            &BasicProperties::default(),
            &body,
            4096,
        )
        .unwrap();
        // A broker never sends basic.publish: decode from the content header on.
        let method_len = u32::from_be_bytes(out[3..7].try_into().unwrap()) as usize + 8;
        let mut buf = BytesMut::from(&out[method_len..]);
        let mut bodies = Vec::new();
        while let Some(frame) = decode_frame(&mut buf, 4096).unwrap() {
            if let Frame::Body(_, b) = frame {
                assert!(b.len() <= 4096 - FRAME_OVERHEAD);
                bodies.push(b);
            }
        }
        assert_eq!(bodies.len(), 3);
        assert_eq!(bodies.concat(), body);
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 1, 0, 0][..]);
        let err = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    }

    /// A content header frame on channel 1: class 60, body size 5, headers flag, `table`.
    fn header_frame(table: &[u8]) -> BytesMut {
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x20, 0x00];
        payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
        payload.extend_from_slice(table);
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_HEADER, 1, |o| o.extend_from_slice(&payload));
        BytesMut::from(&out[..])
    }

    #[test]
    fn an_undecodable_header_refuses_the_message_not_the_frame_stream() {
        // An unknown field type 'Z' in the headers: the guard refuses it.
        let mut buf = header_frame(&[1, b'k', b'Z', 0]);
        buf.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
        match decode_frame(&mut buf, 4096).unwrap().unwrap() {
            Frame::BadHeader {
                channel: 1,
                body_size: 5,
                error,
            } => assert_eq!(error.kind(), ErrorKind::Protocol),
            other => panic!("expected a refused header, got {other:?}"),
        }
        // The stream is still in step: the next frame decodes.
        assert!(matches!(
            decode_frame(&mut buf, 4096).unwrap(),
            Some(Frame::Heartbeat)
        ));
        // Too short to carry a body size: the framing is lost, a connection error.
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_HEADER, 1, |o| {
            o.extend_from_slice(&[0, 60, 0])
        });
        let mut buf = BytesMut::from(&out[..]);
        assert_eq!(
            decode_frame(&mut buf, 4096).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn missing_frame_end_is_a_protocol_error() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }
}

#[cfg(test)]
mod nesting {
    use super::*;

    /// A hostile broker could nest field tables as deep as one frame allows.
    pub(super) fn nested_headers_frame(depth: usize) -> Vec<u8> {
        // content header: class 60, weight 0, size 0, flags: headers only (bit 13).
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x00];
        // Lengths: build from the inside out.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..depth {
            let mut t = vec![0u8, b'F'];
            t.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            t.extend_from_slice(&inner);
            inner = t;
        }
        payload.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        payload.extend_from_slice(&inner);
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_HEADER, 1, |o| o.extend_from_slice(&payload));
        out
    }

    #[test]
    fn deeply_nested_tables_do_not_overflow_the_stack() {
        let frame = nested_headers_frame(20_000);
        let mut check = BytesMut::from(&frame[..]);
        match decode_frame(&mut check, 1 << 20).unwrap().unwrap() {
            Frame::BadHeader {
                channel: 1,
                body_size: 0,
                error,
            } => assert_eq!(error.kind(), ErrorKind::Protocol),
            other => panic!("expected a refused header, got {other:?}"),
        }
        let mut buf = BytesMut::from(&frame[..]);
        let result = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || decode_frame(&mut buf, 1 << 20).map(|_| ()))
            .unwrap()
            .join();
        assert!(result.is_ok(), "decoding panicked or overflowed");
    }
}
