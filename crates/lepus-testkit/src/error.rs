//! The one error type of the test kit.

use std::path::PathBuf;
use std::time::Duration;

/// Why a test-kit operation failed.
///
/// Every variant's message is meant to be read in a failing test's output: it names what
/// was attempted and, for a node that would not come up, includes the reason found in its
/// logs and the last lines of those logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// RabbitMQ's programs are not where Debian's `rabbitmq-server` package puts them.
    #[error("RabbitMQ is not installed ({} is missing): run scripts/broker install", path.display())]
    NotInstalled {
        /// The program that was looked for.
        path: PathBuf,
    },
    /// A file or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A node did not become ready.
    #[error("RabbitMQ node {node} did not start: {reason}\n{log_tail}")]
    Start {
        /// The node's name, such as `lepus-1a2b3c4d@localhost`.
        node: String,
        /// The cause found in the node's logs, or what was observed.
        reason: String,
        /// The last lines of the node's log files.
        log_tail: String,
    },
    /// Something did not finish in time.
    #[error("{what} did not finish within {timeout:?}{}", detail_suffix(detail))]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long was waited.
        timeout: Duration,
        /// Output collected before giving up (may be empty).
        detail: String,
    },
    /// A helper program (`rabbitmqctl`, `scripts/broker`, ...) exited with a failure.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line, for the message.
        command: String,
        /// How it exited.
        status: String,
        /// Its standard output and error.
        output: String,
    },
    /// A test certificate or key could not be made.
    #[error("{0}")]
    Certificate(String),
    /// The node is not running, or some other state makes the call impossible.
    #[error("{0}")]
    State(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", detail.trim())
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
