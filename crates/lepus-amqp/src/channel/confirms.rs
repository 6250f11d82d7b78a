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
