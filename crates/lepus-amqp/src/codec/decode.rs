//! Reading frames: the envelope by hand (size checked before buffering), the hot methods
//! by hand, everything else through `amq-protocol` behind the [`decode_guard`](super::decode_guard).

use amq_protocol::frame::AMQPContentHeader;
use bytes::{Buf, Bytes, BytesMut};

use super::decode_guard;
use super::{
    BASIC, BASIC_ACK, BASIC_DELIVER, BASIC_NACK, DeliverArgs, FRAME_BODY, FRAME_END, FRAME_HEADER,
    FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD, Frame, ShortStr,
};
use crate::error::{Error, ErrorKind, Result};

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
