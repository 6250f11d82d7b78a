//! Writing frames into the connection's write buffer. Every `put_*` appends whole frames
//! to `out` and never fails half-way through a frame it has started.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{AMQPClass, BasicProperties};

use super::{
    BASIC, BASIC_ACK, BASIC_NACK, BASIC_PUBLISH, BASIC_REJECT, FRAME_BODY, FRAME_END, FRAME_HEADER,
    FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD, Settle,
};
use crate::error::{Error, ErrorKind, Result};

/// Writes the frame envelope around a payload produced by `body`.
pub(super) fn put_frame(
    out: &mut Vec<u8>,
    kind: u8,
    channel: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
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
