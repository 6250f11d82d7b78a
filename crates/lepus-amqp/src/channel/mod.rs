//! Channels: the handle callers use, the state the reader task updates, consumers and
//! the matching of returned messages to their publishes.

pub(crate) mod consumer;
mod handle;
pub(crate) mod returns;
mod state;

pub use consumer::Consumer;
pub use handle::{
    Arguments, Channel, ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueueInfo, short_string,
};
pub(crate) use state::*;
