//! What a caller can see of a supervised connection: its state (connected, reconnecting
//! with the last error, failed) and the live connection with its generation.

use lepus_amqp::Connection;

use crate::error::Error;

/// Where a supervised connection is in its life.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connect is under way.
    Connecting,
    /// Connected to `host` (`host:port`), topology declared.
    Connected {
        /// The broker address in use.
        host: String,
    },
    /// The connection was lost (or never made); attempt `attempt` is next or under way.
    Reconnecting {
        /// Attempts since the last good connection, starting at 1.
        attempt: u32,
        /// Why the last connection or attempt failed: for a refused attempt, each
        /// endpoint (password masked) and how it failed.
        last_error: Error,
    },
    /// Closed by the application.
    Closed,
    /// Gave up: every endpoint failed in a way retrying cannot fix (wrong credentials,
    /// say), or the policy's limits were reached. The error names each endpoint and how
    /// it failed.
    Failed(Error),
}

impl ConnectionState {
    /// The state's name: `Connecting`, `Connected`, `Reconnecting`, `Closed` or `Failed`.
    pub fn name(&self) -> &'static str {
        match self {
            ConnectionState::Connecting => "Connecting",
            ConnectionState::Connected { .. } => "Connected",
            ConnectionState::Reconnecting { .. } => "Reconnecting",
            ConnectionState::Closed => "Closed",
            ConnectionState::Failed(_) => "Failed",
        }
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// Whether the supervisor has stopped for good.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ConnectionState::Closed | ConnectionState::Failed(_))
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionState::Connected { host } => write!(f, "Connected to {host}"),
            ConnectionState::Reconnecting {
                attempt,
                last_error,
            } => write!(
                f,
                "Reconnecting (attempt {attempt}): {}",
                last_error.report()
            ),
            ConnectionState::Failed(e) => write!(f, "Failed: {}", e.report()),
            other => f.write_str(other.name()),
        }
    }
}

/// A live connection and which one it is (generations only grow).
#[derive(Clone, Debug)]
pub struct Live {
    /// Increments on every new connection.
    pub generation: u64,
    /// The connection.
    pub connection: Connection,
}
