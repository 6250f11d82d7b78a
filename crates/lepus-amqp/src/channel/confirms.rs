//! Publishing, and what comes back for it in confirm mode: `basic.ack`/`nack` and
//! `basic.return`.
//!
//! Every publish in confirm mode gets the next sequence number and a waiter in
//! [`ChanState::pending`], in publish order; the broker confirms by sequence number,
//! singly or "everything up to". A `mandatory` publish also keeps a fingerprint of its
//! content, so a returned message resolves the publish it came from (see `returns`).

use amq_protocol::protocol::{BasicProperties, basic};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::returns::{self, Fingerprint};
use super::state::{ChanState, ChannelShared};
use crate::codec::{self};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Confirmation, PublishConfirm, Returned};

pub(super) struct PendingConfirm {
    pub(super) seq: u64,
    pub(super) tx: oneshot::Sender<Result<Confirmation>>,
    /// For `mandatory` publishes: what a `basic.return` is matched against.
    pub(super) mandatory: Option<Fingerprint>,
    pub(super) returned: Option<Box<Returned>>,
}

impl ChannelShared {
    pub(crate) fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<PublishConfirm> {
        let mut st = self.lock();
        self.check_open(&st)?;
        if !st.flow_active {
            return Err(Error::new(
                ErrorKind::ChannelClosed,
                format!(
                    "the broker has paused publishing on channel {} (channel.flow)",
                    self.id
                ),
            ));
        }
        let frame_max = self.conn.frame_max;
        let track_return = mandatory && st.confirm_mode;
        let mut fingerprint = None;
        self.conn.out.push(|out, scratch| {
            codec::put_publish(
                out,
                scratch,
                self.id,
                exchange,
                routing_key,
                mandatory,
                properties,
                body,
                frame_max,
            )?;
            // `scratch` still holds the encoded properties.
            if track_return {
                fingerprint = Some(Fingerprint::new(exchange, routing_key, scratch, body));
            }
            Ok(())
        })?;
        if !st.confirm_mode {
            return Ok(PublishConfirm {
                rx: None,
                done: false,
            });
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        st.pending.push_back(PendingConfirm {
            seq,
            tx,
            mandatory: fingerprint,
            returned: None,
        });
        Ok(PublishConfirm {
            rx: Some(rx),
            done: false,
        })
    }

    pub(super) fn handle_return(
        &self,
        st: &mut ChanState,
        ret: basic::Return,
        properties: BasicProperties,
        body: Bytes,
    ) {
        let mut encoded = Vec::new();
        let fingerprint = codec::encode_properties(&properties, &mut encoded)
            .ok()
            .map(|()| {
                Fingerprint::new(
                    ret.exchange.as_str(),
                    ret.routing_key.as_str(),
                    &encoded,
                    &body,
                )
            });
        let returned = Box::new(Returned {
            reply_code: ret.reply_code,
            reply_text: ret.reply_text.to_string(),
            exchange: ret.exchange.to_string(),
            routing_key: ret.routing_key.to_string(),
            properties,
            body,
        });
        // See `returns`: matched by content, in publish order, not by the next ack.
        let index = fingerprint.and_then(|f| {
            returns::owner(
                f,
                st.pending
                    .iter()
                    .map(|p| (p.mandatory, p.returned.is_some())),
            )
        });
        let slot = index.and_then(|i| st.pending.get_mut(i));
        match slot {
            Some(p) => p.returned = Some(returned),
            None => tracing::warn!(
                channel = self.id,
                exchange = %returned.exchange,
                routing_key = %returned.routing_key,
                reply_text = %returned.reply_text,
                "unroutable message returned with no confirm waiting for it; dropped"
            ),
        }
    }

    pub(super) fn handle_confirm(&self, tag: u64, multiple: bool, ack: bool) {
        let mut st = self.lock();
        let resolve = |p: PendingConfirm| {
            let result = match (ack, p.returned) {
                (true, Some(ret)) => Confirmation::Returned(ret),
                (true, None) => Confirmation::Ack,
                (false, _) => Confirmation::Nack,
            };
            let _ = p.tx.send(Ok(result));
        };
        // The broker may confirm in any order (each queue confirms on its own), but
        // `multiple` means "every sequence number up to this one", and `pending` is
        // in sequence order: pop from the front. A single one is found by binary search.
        if multiple {
            while st.pending.front().is_some_and(|p| p.seq <= tag) {
                if let Some(p) = st.pending.pop_front() {
                    resolve(p);
                }
            }
        } else if let Some(p) = st
            .pending
            .binary_search_by_key(&tag, |p| p.seq)
            .ok()
            .and_then(|pos| st.pending.remove(pos))
        {
            resolve(p);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;

    use amq_protocol::protocol::{AMQPClass, BasicProperties, basic};
    use bytes::BytesMut;

    use crate::codec;
    use crate::connection::ConnShared;
    use crate::error::{Error, ErrorKind};
    use crate::message::Confirmation;

    /// The frames the broker sends to return `body` (published to `ex`/`rk`) on channel 2.
    fn return_frames(ex: &str, rk: &str, props: &BasicProperties, body: &[u8]) -> BytesMut {
        let mut out = Vec::new();
        codec::put_method(
            &mut out,
            2,
            &AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: ex.into(),
                routing_key: rk.into(),
            })),
        )
        .unwrap();
        let method_len = out.len();
        // A publish's content frames are the return's: encode one, keep all but its method.
        let mut publish = Vec::new();
        codec::put_publish(
            &mut publish,
            &mut Vec::new(),
            2,
            ex,
            rk,
            true,
            props,
            body,
            4096,
        )
        .unwrap();
        let publish_method_len =
            u32::from_be_bytes(publish[3..7].try_into().unwrap()) as usize + codec::FRAME_OVERHEAD;
        out.extend_from_slice(&publish[publish_method_len..]);
        assert!(out.len() > method_len);
        BytesMut::from(&out[..])
    }

    #[tokio::test]
    async fn a_publish_returned_before_its_ack_stays_returned_when_the_channel_closes() {
        let conn = ConnShared::detached(4096, 64 * 1024);
        let _deliveries = conn.open_fuzz_channels();
        let ch = conn.channel(2).unwrap();
        let props = BasicProperties::default().with_message_id("m-1".into());
        let returned = ch
            .publish("ex", "nowhere", true, &props, b"unroutable")
            .unwrap();
        let unanswered = ch
            .publish("ex", "somewhere", true, &props, b"routed")
            .unwrap();

        let mut frames = return_frames("ex", "nowhere", &props, b"unroutable");
        while let Some(frame) = codec::decode_frame(&mut frames, 4096).unwrap() {
            Arc::clone(&conn).dispatch_frame(frame).unwrap();
        }
        // The channel goes before the broker's ack for either publish arrived.
        ch.close_with(Error::new(ErrorKind::ChannelClosed, "connection lost"));

        match returned.await {
            Ok(Confirmation::Returned(r)) => {
                assert_eq!(&r.body[..], b"unroutable");
                assert_eq!(r.reply_code, 312);
            }
            other => panic!("the returned publish got {other:?}"),
        }
        // Nothing is known of the other one: it fails with the channel, as before.
        let err = unanswered.await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ChannelClosed);
    }
}
