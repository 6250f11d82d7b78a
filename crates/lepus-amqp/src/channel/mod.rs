//! Channels: the handle callers use, and the state the reader task updates.
//!
//! A [`Channel`] is a handle over one [`ChannelShared`], the state of one opening of a
//! channel id. Callers reach it through the handle ([`handle`], [`topology`]); the
//! reader task reaches it through the connection's channel table ([`dispatch`]), and
//! from there into what a frame means: a reply to a waiting call ([`state`]), a piece of
//! a message being assembled ([`content`]), a finished message for a consumer
//! ([`deliveries`]) or a confirm or return for a publish ([`confirms`], [`returns`]).

mod confirms;
pub(crate) mod consumer;
mod content;
mod deliveries;
mod dispatch;
mod handle;
mod options;
pub(crate) mod returns;
mod state;
mod topology;

pub use consumer::Consumer;
pub use handle::Channel;
pub use options::{
    Arguments, ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueueInfo, short_string,
};
pub(crate) use state::*;
