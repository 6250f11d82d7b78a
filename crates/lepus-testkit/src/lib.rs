//! Real RabbitMQ nodes for tests.
//!
//! lepus promises behaviour under broker failures, and only a real broker fails the way a
//! real broker does, so tests run against RabbitMQ itself (Debian's `rabbitmq-server`,
//! installed by `scripts/broker install`) rather than a mock:
//!
//! - [`Broker`]: a node of its own for one test, which the test may kill (`kill -9`),
//!   stop, restart on the same ports with its data, pause (SIGSTOP, for heartbeat tests),
//!   or drive with `rabbitmqctl`.
//! - [`Cluster`]: several such nodes joined into one cluster, for failover tests.
//! - [`Lab`]: a cluster with each node in a zone of its own (a network namespace on a
//!   private bridge), for partitions: a zone cut off, two zones cut apart, healed again.
//! - [`shared_broker`] / [`shared_tls_broker`]: for tests that only need *a* broker. They
//!   use the node `scripts/test` starts once for the whole run when its URL is in the
//!   environment, and otherwise start a node of their own.
//! - [`CertificateAuthority`]: test certificates (a CA, server and client certificates,
//!   expired or for the wrong host) for TLS tests, made in process.
//! - `lepus-broker` ([`cli`]): the command line behind `scripts/broker`, which starts
//!   nodes on fixed ports that outlive it and finds them again through a state file per
//!   node; it shares every step (configuration, boot, wait, kill, restart, cluster join)
//!   with [`Broker`].
//! - [`proxy::FaultProxy`]: a TCP fault proxy to put between a client and a node, with
//!   latency, bandwidth limits, blackholes, resets and closes switched at run time.
//! - `wait_until` and `blocking` (the `tokio` feature): waiting in async tests on a
//!   condition with a deadline, and on blocking work such as starting a node.
//! - [`unique_name`]: a fresh queue or exchange name per test, so tests sharing a broker
//!   never see each other's messages.
//!
//! Many test binaries and nextest processes may run at once: each node gets free ports
//! chosen by the kernel (and new ones if another process takes one first), a unique name,
//! and a temporary directory with its own Erlang cookie. Every wait is bounded, and a node
//! that does not come up is reported with the reason and the tail of its log.
//!
//! A node takes about five seconds to start on a two-core machine.

mod broker;
mod certs;
pub mod cli;
mod cluster;
mod diagnose;
mod error;
mod node;
mod process;
pub mod proxy;
mod shared;
mod state;
mod tls;
#[cfg(feature = "tokio")]
mod wait;
pub mod zones;

pub use broker::{Broker, BrokerBuilder, DEFAULT_START_TIMEOUT};
pub use certs::{CertSpec, CertificateAuthority, IssuedCert, Validity};
pub use cluster::Cluster;
pub use error::Error;
pub use shared::{
    AMQP_URL_ENV, AMQPS_URL_ENV, SharedBroker, TLS_DIR_ENV, shared_broker, shared_tls_broker,
};
pub use state::STATE_FILE;
pub use tls::{CLIENT_CERT_USER, ServerTls, TlsFiles};
#[cfg(feature = "tokio")]
pub use wait::{POLL_INTERVAL, blocking, wait_until};
pub use zones::{Endpoint, Lab, LabBuilder};

/// `prefix` followed by a random suffix, e.g. `orders-3f9a0c1d2b4e`: a queue or exchange
/// name no other test uses.
///
/// ```
/// let a = lepus_testkit::unique_name("orders");
/// let b = lepus_testkit::unique_name("orders");
/// assert!(a.starts_with("orders-"));
/// assert_ne!(a, b);
/// ```
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}
