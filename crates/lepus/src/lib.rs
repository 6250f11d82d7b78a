//! lepus: RabbitMQ for services that must not crash, hang or lose messages.
//!
//! This crate is what applications depend on. Today it re-exports the engine,
//! [`lepus_amqp`]; the supervised client, the reliable publisher and consumer build on it.

pub use lepus_amqp as amqp;
