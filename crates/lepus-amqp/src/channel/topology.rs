//! Declaring, binding, purging and deleting exchanges and queues: the synchronous
//! methods of the `exchange` and `queue` classes, each one call and one reply.

use amq_protocol::protocol::{AMQPClass, exchange, queue};
use amq_protocol::types::FieldTable;

use super::Channel;
use super::name;
use super::options::{
    ExchangeDeclareOptions, ExchangeKind, QueueDeclareOptions, QueueDeleteOptions, QueueInfo,
};
use crate::error::{Error, Result};

impl Channel {
    /// Declares an exchange.
    pub async fn exchange_declare(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = exchange::Declare {
            exchange: name("exchange name", exchange)?,
            kind: name("exchange type", kind.as_str())?,
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Declare(method)))
            .await
    }

    /// Deletes an exchange.
    pub async fn exchange_delete(&self, exchange: &str, if_unused: bool) -> Result<()> {
        let method = exchange::Delete {
            exchange: name("exchange name", exchange)?,
            if_unused,
            nowait: false,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Delete(method)))
            .await
    }

    /// Binds exchange `destination` to exchange `source` (RabbitMQ's extension).
    pub async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = exchange::Bind {
            destination: name("exchange name", destination)?,
            source: name("exchange name", source)?,
            routing_key: name("routing key", routing_key)?,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Bind(method)))
            .await
    }

    /// Removes an exchange-to-exchange binding.
    pub async fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = exchange::Unbind {
            destination: name("exchange name", destination)?,
            source: name("exchange name", source)?,
            routing_key: name("routing key", routing_key)?,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Unbind(method)))
            .await
    }

    /// Declares a queue. An empty name asks the broker to choose one; the returned
    /// [`QueueInfo`] carries it.
    pub async fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<QueueInfo> {
        let method = queue::Declare {
            queue: name("queue name", queue)?,
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            nowait: false,
            arguments,
        };
        let reply = self
            .shared()
            .call_method(AMQPClass::Queue(queue::AMQPMethod::Declare(method)))
            .await?;
        match *reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(QueueInfo {
                name: ok.queue.to_string(),
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
            }),
            _ => Err(Error::protocol("queue.declare answered by another method")),
        }
    }

    /// Binds a queue to an exchange.
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = queue::Bind {
            queue: name("queue name", queue)?,
            exchange: name("exchange name", exchange)?,
            routing_key: name("routing key", routing_key)?,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Bind(method)))
            .await
    }

    /// Removes a queue binding.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = queue::Unbind {
            queue: name("queue name", queue)?,
            exchange: name("exchange name", exchange)?,
            routing_key: name("routing key", routing_key)?,
            arguments,
        };
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Unbind(method)))
            .await
    }

    /// Removes every ready message from a queue; returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32> {
        let method = queue::Purge {
            queue: name("queue name", queue)?,
            nowait: false,
        };
        let reply = self
            .shared()
            .call_method(AMQPClass::Queue(queue::AMQPMethod::Purge(method)))
            .await?;
        match *reply {
            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(ok)) => Ok(ok.message_count),
            _ => Err(Error::protocol("queue.purge answered by another method")),
        }
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32> {
        let method = queue::Delete {
            queue: name("queue name", queue)?,
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            nowait: false,
        };
        let reply = self
            .shared()
            .call_method(AMQPClass::Queue(queue::AMQPMethod::Delete(method)))
            .await?;
        match *reply {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Ok(ok.message_count),
            _ => Err(Error::protocol("queue.delete answered by another method")),
        }
    }
}
