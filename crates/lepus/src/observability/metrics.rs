//! Metric names and the handles lepus records through the `metrics` facade.
//!
//! Without a recorder installed (the `prometheus` feature's `install_prometheus`, or
//! any other `metrics` recorder the application installs) every call is a no-op. Labels
//! are exchange, queue, role and tier names: bounded by the application's topology, never
//! message ids. Handles are registered once per exchange or queue and reused, so the hot
//! path is an atomic add.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Messages written to a channel (republishes included), by exchange.
pub const PUBLISHED: &str = "lepus_published_total";
/// Messages the broker confirmed, by exchange.
pub const CONFIRMED: &str = "lepus_confirmed_total";
/// Messages the broker nacked, by exchange.
pub const NACKED: &str = "lepus_nacked_total";
/// Mandatory messages returned as unroutable, by exchange.
pub const RETURNED: &str = "lepus_returned_total";
/// Publishes failed back to the caller, by exchange and reason.
pub const PUBLISH_FAILED: &str = "lepus_publish_failed_total";
/// Messages waiting in publishers' buffers.
pub const PUBLISH_BUFFER_DEPTH: &str = "lepus_publish_buffer_depth";
/// Messages published and not yet confirmed.
pub const PUBLISH_IN_FLIGHT: &str = "lepus_publish_in_flight";
/// Times a publisher dropped its connection because nothing was confirmed for its stall
/// timeout (and sent what was unconfirmed again on the next connection).
pub const PUBLISH_STALLS: &str = "lepus_publish_stalls_total";
/// Time from publish to confirm, in seconds, by exchange.
pub const CONFIRM_LATENCY: &str = "lepus_confirm_latency_seconds";
/// Deliveries received, by queue.
pub const DELIVERED: &str = "lepus_delivered_total";
/// Messages acked after their handler succeeded, by queue.
pub const ACKED: &str = "lepus_acked_total";
/// Messages sent to a delay tier, by queue and tier.
pub const RETRIED: &str = "lepus_retried_total";
/// Messages moved to the dead-letter queue, by queue.
pub const DEAD_LETTERED: &str = "lepus_dead_lettered_total";
/// Failed handler invocations, by queue and kind (`error`, `panic`, `timeout`).
pub const HANDLER_FAILURES: &str = "lepus_handler_failures_total";
/// Time one handler invocation took, in seconds, by queue.
pub const HANDLER_DURATION: &str = "lepus_handler_duration_seconds";
/// Handlers running now, by queue.
pub const HANDLERS_IN_FLIGHT: &str = "lepus_handlers_in_flight";
/// Redeliveries skipped by the idempotency store, by queue.
pub const DEDUPLICATED: &str = "lepus_deduplicated_total";
/// 1 while the connection is up, by client (its name, `default` if unnamed) and role.
pub const CONNECTED: &str = "lepus_connected";
/// Connections lost, by role.
pub const RECONNECTS: &str = "lepus_reconnects_total";
/// Connection attempts, by role.
pub const CONNECT_ATTEMPTS: &str = "lepus_connect_attempts_total";
/// Time from losing a connection to having a new one, in seconds, by role.
pub const RECOVERY: &str = "lepus_recovery_seconds";
/// 1 while the broker blocks the connection (memory or disk alarm), by role.
pub const BLOCKED: &str = "lepus_blocked";

/// A publisher's handles for one exchange.
#[derive(Clone)]
pub(crate) struct PublishMetrics {
    pub(crate) published: Counter,
    pub(crate) confirmed: Counter,
    pub(crate) nacked: Counter,
    pub(crate) returned: Counter,
    pub(crate) latency: Histogram,
}

impl PublishMetrics {
    pub(crate) fn new(exchange: &str) -> Self {
        let label = exchange_label(exchange);
        Self {
            published: counter!(PUBLISHED, "exchange" => label.clone()),
            confirmed: counter!(CONFIRMED, "exchange" => label.clone()),
            nacked: counter!(NACKED, "exchange" => label.clone()),
            returned: counter!(RETURNED, "exchange" => label.clone()),
            latency: histogram!(CONFIRM_LATENCY, "exchange" => label),
        }
    }
}

/// Counts a publish failed back to its caller (a rare path: no cached handle).
pub(crate) fn publish_failed(exchange: &str, kind: crate::ErrorKind) {
    let reason = match kind {
        crate::ErrorKind::Unroutable => "unroutable",
        crate::ErrorKind::Nacked => "nacked",
        crate::ErrorKind::Timeout => "timeout",
        crate::ErrorKind::BufferFull => "buffer_full",
        crate::ErrorKind::TooLarge => "too_large",
        crate::ErrorKind::Closed | crate::ErrorKind::Failed => "closed",
        _ => "error",
    };
    counter!(PUBLISH_FAILED, "exchange" => exchange_label(exchange), "reason" => reason)
        .increment(1);
}

/// The default exchange has the empty name; show it as RabbitMQ's UI does.
fn exchange_label(exchange: &str) -> String {
    if exchange.is_empty() {
        "(default)".into()
    } else {
        exchange.to_owned()
    }
}

pub(crate) fn buffer_depth() -> Gauge {
    gauge!(PUBLISH_BUFFER_DEPTH)
}

pub(crate) fn in_flight() -> Gauge {
    gauge!(PUBLISH_IN_FLIGHT)
}

/// Counts a publisher stall (a rare path).
pub(crate) fn publish_stalled() {
    counter!(PUBLISH_STALLS).increment(1);
}

/// A consumer's handles.
#[derive(Clone)]
pub(crate) struct ConsumeMetrics {
    pub(crate) delivered: Counter,
    pub(crate) acked: Counter,
    pub(crate) retried: Vec<Counter>,
    pub(crate) dead_lettered: Counter,
    pub(crate) errors: Counter,
    pub(crate) panics: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) duration: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) deduplicated: Counter,
}

impl ConsumeMetrics {
    pub(crate) fn new(queue: &str, tiers: usize) -> Self {
        let q = queue.to_owned();
        let failures =
            |kind: &'static str| counter!(HANDLER_FAILURES, "queue" => q.clone(), "kind" => kind);
        Self {
            delivered: counter!(DELIVERED, "queue" => q.clone()),
            acked: counter!(ACKED, "queue" => q.clone()),
            retried: (1..=tiers)
                .map(|t| counter!(RETRIED, "queue" => q.clone(), "tier" => t.to_string()))
                .collect(),
            dead_lettered: counter!(DEAD_LETTERED, "queue" => q.clone()),
            errors: failures("error"),
            panics: failures("panic"),
            timeouts: failures("timeout"),
            duration: histogram!(HANDLER_DURATION, "queue" => q.clone()),
            in_flight: gauge!(HANDLERS_IN_FLIGHT, "queue" => q.clone()),
            deduplicated: counter!(DEDUPLICATED, "queue" => q),
        }
    }
}

/// A supervised connection's handles.
pub(crate) struct ConnectionMetrics {
    pub(crate) connected: Gauge,
    pub(crate) reconnects: Counter,
    pub(crate) attempts: Counter,
    pub(crate) recovery: Histogram,
    pub(crate) blocked: Gauge,
}

impl ConnectionMetrics {
    pub(crate) fn new(client: &str, role: &'static str) -> Self {
        let c = client.to_owned();
        Self {
            connected: gauge!(CONNECTED, "client" => c.clone(), "role" => role),
            reconnects: counter!(RECONNECTS, "client" => c.clone(), "role" => role),
            attempts: counter!(CONNECT_ATTEMPTS, "client" => c.clone(), "role" => role),
            recovery: histogram!(RECOVERY, "client" => c.clone(), "role" => role),
            blocked: gauge!(BLOCKED, "client" => c, "role" => role),
        }
    }
}
