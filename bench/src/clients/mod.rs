//! The clients under comparison, and what every one of them is asked to do.
//!
//! Each client has a module with two functions of the same shape:
//!
//! - `publish(url, queue, workload, phase) -> Result<u64>`: one connection, one channel in
//!   confirm mode; publishes `workload.count` persistent messages to `queue` with at most
//!   `workload.confirm` unconfirmed; returns how many the broker acked.
//! - `consume(url, queue, workload, phase) -> Result<u64>`: one connection, one channel
//!   with `basic.qos(prefetch)`; consumes `workload.count` messages with manual acks
//!   (`multiple` every `workload.multi_ack`, and one for the tail); returns how many.
//!
//! Both connect and set up before `phase.start()` and tear down after `phase.done()`, so
//! the measured interval holds only the work. Any surprise (a nack, a missing, duplicated,
//! reordered or redelivered message, a body of the wrong size, a stream that ends early)
//! is an error.
//!
//! The `lepus` row is the toolkit on top of the engine (a supervised client, the reliable
//! publisher and consumer); its two functions have the same shape, with a `lepus::Client`
//! in place of the connection.
//!
//! To add a row: a module here with those two functions and a variant of [`Client`].

pub mod amqprs;
pub mod lapin;
pub mod lepus;
pub mod lepus_amqp;

use std::sync::Arc;

use anyhow::{Result, bail};
use tokio::sync::Barrier;

/// One client library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    LepusAmqp,
    Lepus,
    Amqprs,
    Lapin,
}

impl Client {
    /// Every client, in the order of the first round.
    pub const ALL: [Client; 4] = [
        Client::LepusAmqp,
        Client::Lepus,
        Client::Amqprs,
        Client::Lapin,
    ];

    /// The name used on the command line, in tables and as the JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Client::LepusAmqp => "lepus-amqp",
            Client::Lepus => "lepus",
            Client::Amqprs => "amqprs",
            Client::Lapin => "lapin",
        }
    }

    pub fn from_name(name: &str) -> Result<Client> {
        match Client::ALL.into_iter().find(|c| c.name() == name) {
            Some(c) => Ok(c),
            None => bail!(
                "unknown client {name:?}; known: {}",
                Client::ALL.map(Client::name).join(", ")
            ),
        }
    }

    /// Runs one queue's publisher to completion.
    pub async fn publish(
        self,
        url: Arc<str>,
        queue: String,
        workload: Workload,
        phase: Arc<Phase>,
    ) -> Result<u64> {
        match self {
            Client::LepusAmqp => lepus_amqp::publish(&url, &queue, &workload, &phase).await,
            Client::Lepus => lepus::publish(&url, &queue, &workload, &phase).await,
            Client::Amqprs => amqprs::publish(&url, &queue, &workload, &phase).await,
            Client::Lapin => lapin::publish(&url, &queue, &workload, &phase).await,
        }
    }

    /// Runs one queue's consumer to completion.
    pub async fn consume(
        self,
        url: Arc<str>,
        queue: String,
        workload: Workload,
        phase: Arc<Phase>,
    ) -> Result<u64> {
        match self {
            Client::LepusAmqp => lepus_amqp::consume(&url, &queue, &workload, &phase).await,
            Client::Lepus => lepus::consume(&url, &queue, &workload, &phase).await,
            Client::Amqprs => amqprs::consume(&url, &queue, &workload, &phase).await,
            Client::Lapin => lapin::consume(&url, &queue, &workload, &phase).await,
        }
    }
}

/// What each connection does; the same for every client.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Messages per queue.
    pub count: u64,
    /// Body size in bytes.
    pub size: usize,
    /// Unconfirmed messages allowed per publishing connection.
    pub confirm: usize,
    /// `basic.qos` prefetch of each consumer.
    pub prefetch: u16,
    /// Ack with `multiple = true` every this many deliveries.
    pub multi_ack: u64,
}

impl Workload {
    /// A body of `size` bytes; [`Workload::stamp`] writes the sequence number into it.
    pub fn body(&self) -> Vec<u8> {
        vec![b'x'; self.size]
    }

    /// Writes `seq` into the first 8 bytes of `body` (when it has 8), so that the consumer
    /// can check that every message arrives once and in order.
    pub fn stamp(body: &mut [u8], seq: u64) {
        if let Some(head) = body.get_mut(..8) {
            head.copy_from_slice(&seq.to_be_bytes());
        }
    }

    /// Whether to ack (with `multiple`) after the `received`-th delivery (1-based).
    pub fn ack_now(&self, received: u64) -> bool {
        received.is_multiple_of(self.multi_ack) || received == self.count
    }
}

/// Checks one delivery: its size, that it was not redelivered, and that it is the
/// `expected`-th message published (0-based).
pub fn check_delivery(
    client: &str,
    queue: &str,
    workload: &Workload,
    expected: u64,
    body: &[u8],
    redelivered: bool,
) -> Result<()> {
    if body.len() != workload.size {
        bail!(
            "{client}: message {expected} on {queue} has {} bytes, expected {}",
            body.len(),
            workload.size
        );
    }
    if redelivered {
        bail!("{client}: message {expected} on {queue} was redelivered");
    }
    if let Some(head) = body.get(..8) {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(head);
        let seq = u64::from_be_bytes(seq);
        if seq != expected {
            bail!(
                "{client}: on {queue} message {seq} arrived where {expected} was expected (lost, duplicated or reordered)"
            );
        }
    }
    Ok(())
}

/// The two meeting points of one phase: every connection is set up before the clock
/// starts, and the clock stops when every connection has finished its work.
pub struct Phase {
    start: Barrier,
    done: Barrier,
}

impl Phase {
    /// A phase for `workers` tasks and the one task that holds the clock.
    pub fn new(workers: usize) -> Arc<Phase> {
        Arc::new(Phase {
            start: Barrier::new(workers + 1),
            done: Barrier::new(workers + 1),
        })
    }

    /// Waits until every task is ready; the clock starts then.
    pub async fn start(&self) {
        self.start.wait().await;
    }

    /// Waits until every task has finished its work; the clock stops then.
    pub async fn done(&self) {
        self.done.wait().await;
    }
}
