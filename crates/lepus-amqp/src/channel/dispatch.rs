//! The frames the reader hands to a channel: methods the broker sends on its own
//! (`channel.close`, `channel.flow`, `basic.cancel`), replies to our synchronous
//! methods, and the pieces of content.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic, channel};

use super::consumer::ConsumerEnd;
use super::content::ContentKind;
use super::state::{ChannelShared, Expect, Reply, Waiter, method_name};
use crate::codec::{self, DeliverArgs, Frame, ShortStr};
use crate::error::{Error, ErrorKind, Result};

impl ChannelShared {
    /// Handles one frame for this channel. An `Err` is a connection-level protocol error.
    pub(crate) fn handle(self: &Arc<Self>, frame: Frame) -> Result<()> {
        match frame {
            Frame::Method(_, method) => self.handle_method(*method),
            Frame::Deliver(_, args) => self.start_content(ContentKind::Deliver(args)),
            Frame::Confirm {
                delivery_tag,
                multiple,
                ack,
                ..
            } => {
                self.handle_confirm(delivery_tag, multiple, ack);
                Ok(())
            }
            Frame::Header(_, header) => self.handle_header(header),
            Frame::BadHeader {
                body_size, error, ..
            } => self.handle_bad_header(body_size, error),
            Frame::Body(_, bytes) => self.handle_body(bytes),
            Frame::Heartbeat => Ok(()),
        }
    }

    /// A method frame other than the hot ones the codec decodes on its own.
    ///
    /// First the methods the broker sends on its own initiative (they must be answered or
    /// acted on whatever we are waiting for), then the content methods, which start a
    /// message; anything else is the reply to the oldest synchronous method we sent.
    pub(super) fn handle_method(self: &Arc<Self>, method: AMQPClass) -> Result<()> {
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                let err =
                    Error::from_reply(close.reply_code, close.reply_text.as_str(), true, false);
                self.close_with(err);
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                // The id is free once close-ok is queued; frames queued before it were
                // discarded by the broker, frames after it belong to the next channel.
                let _ = self
                    .conn
                    .out
                    .push(|out, _| codec::put_method(out, self.id, &ok));
                self.conn.remove_channel(self.id, self.generation);
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                let waiter = self.lock().waiters.pop_front();
                self.close_with(Error::new(
                    ErrorKind::ChannelClosed,
                    format!("channel {} was closed by the application", self.id),
                ));
                self.conn.remove_channel(self.id, self.generation);
                if let Some(w) = waiter {
                    let _ = w.tx.send(Ok(Reply::Method(Box::new(AMQPClass::Channel(
                        channel::AMQPMethod::CloseOk(channel::CloseOk {}),
                    )))));
                }
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                self.lock().flow_active = flow.active;
                let ok = AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: flow.active,
                }));
                self.conn
                    .out
                    .push(|out, _| codec::put_method(out, self.id, &ok))
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                if let Some(slot) = self.lock().consumers.remove(cancel.consumer_tag.as_str()) {
                    slot.end(ConsumerEnd::Error(Error::new(
                        ErrorKind::ConsumerCancelled,
                        format!(
                            "the broker cancelled consumer {} (queue deleted or its node failed)",
                            cancel.consumer_tag
                        ),
                    )));
                }
                if !cancel.nowait {
                    let ok = AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: cancel.consumer_tag,
                    }));
                    self.conn
                        .out
                        .push(|out, _| codec::put_method(out, self.id, &ok))?;
                }
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Return(ret)) => {
                self.start_content(ContentKind::Return(ret))
            }
            AMQPClass::Basic(basic::AMQPMethod::GetOk(get)) => {
                let args = DeliverArgs {
                    consumer_tag: ShortStr::default(),
                    delivery_tag: get.delivery_tag,
                    redelivered: get.redelivered,
                    exchange: short_str(get.exchange.as_str()),
                    routing_key: short_str(get.routing_key.as_str()),
                };
                self.start_content(ContentKind::Get(args, get.message_count))
            }
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => {
                match self.lock().waiters.pop_front() {
                    Some(Waiter {
                        expect: Expect::Get,
                        tx,
                    }) => {
                        let _ = tx.send(Ok(Reply::Get(None)));
                        Ok(())
                    }
                    _ => Err(Error::protocol("basic.get-empty without a basic.get")),
                }
            }
            reply => self.handle_reply(reply),
        }
    }

    pub(super) fn handle_reply(&self, reply: AMQPClass) -> Result<()> {
        let mut st = self.lock();
        let Some(waiter) = st.waiters.pop_front() else {
            return Err(Error::protocol(format!(
                "channel {}: unexpected method {}",
                self.id,
                method_name(&reply)
            )));
        };
        let got = (reply.get_amqp_class_id(), reply.get_amqp_method_id());
        match waiter.expect {
            Expect::Method(class, method) if (class, method) == got => {
                let _ = waiter.tx.send(Ok(Reply::Method(Box::new(reply))));
                Ok(())
            }
            Expect::Consume(slot) => match reply {
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => {
                    st.consumers.insert(ok.consumer_tag.to_string(), slot);
                    let _ = waiter.tx.send(Ok(Reply::Method(Box::new(AMQPClass::Basic(
                        basic::AMQPMethod::ConsumeOk(ok),
                    )))));
                    Ok(())
                }
                other => Err(Error::protocol(format!(
                    "channel {}: expected basic.consume-ok, got {}",
                    self.id,
                    method_name(&other)
                ))),
            },
            _ => Err(Error::protocol(format!(
                "channel {}: reply {} does not answer the method sent",
                self.id,
                method_name(&reply)
            ))),
        }
    }
}

pub(super) fn short_str(s: &str) -> ShortStr {
    ShortStr::copied(s)
}
