//! Frames in and out.
//!
//! The outer framing (type, channel, size, payload, frame-end) is ours, so that a frame's
//! size is checked against `frame_max` before a byte of it is buffered, and so that bodies
//! are slices of the read buffer rather than copies. Method arguments, content headers and
//! field tables are decoded and encoded by `amq-protocol`, except for the few methods on the
//! per-message path (`basic.publish`, `basic.deliver`, `basic.ack`/`nack` both ways), which
//! are written by hand here because they are simple and hot.

mod decode;
mod decode_guard;
mod encode;
#[cfg(test)]
mod tests;

pub(crate) use decode::decode_frame;
pub(crate) use encode::{encode_properties, put_heartbeat, put_method, put_publish, put_settle};

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::AMQPClass;
use bytes::Bytes;

use crate::error::{Error, Result};

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

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack { multiple: bool },
    Nack { multiple: bool, requeue: bool },
    Reject { requeue: bool },
}

impl Frame {
    /// The channel the frame is for (0 for the connection).
    pub(crate) fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _)
            | Frame::Deliver(c, _)
            | Frame::Header(c, _)
            | Frame::Body(c, _) => *c,
            Frame::Confirm { channel, .. } | Frame::BadHeader { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }

    /// The frame's type, for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Frame::Method(..) | Frame::Deliver(..) | Frame::Confirm { .. } => "method",
            Frame::Header(..) | Frame::BadHeader { .. } => "content header",
            Frame::Body(..) => "body",
            Frame::Heartbeat => "heartbeat",
        }
    }
}
