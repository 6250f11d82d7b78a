//! W3C trace context (`traceparent`) carried in message headers, so one order keeps one
//! trace id across the three services and their logs.
//!
//! lepus propagates trace context itself (its `otel` feature): a publish inside a sampled
//! span carries that span's `traceparent`, and a handler runs inside a span whose parent
//! is the message's. The shop still keeps a context of its own, for two things lepus's
//! does not give it: every order gets a trace id in the logs and the store, sampled or
//! not (lepus only writes headers for sampled traces), and the outbox publishes long
//! after the request's span has ended, so the context is stored with the event and
//! becomes the parent of the relay's span ([`relay_span`]).

use std::collections::HashMap;

use lepus::Incoming;
use lepus::amqp::AMQPValue;
use opentelemetry::propagation::TextMapPropagator as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header (and HTTP header) name.
pub const TRACEPARENT: &str = "traceparent";

/// A trace id and the id of the span that caused this work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
}

impl TraceContext {
    /// A new trace (a new order).
    pub fn new_root() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            span_id: rand::random::<u64>().max(1),
        }
    }

    /// The same trace, a new span (a service passing the work on).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: rand::random::<u64>().max(1),
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else is `None`.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self { trace_id, span_id })
    }

    /// The context of a consumed message, or a new root if it carries none (a message
    /// from a producer that does not trace still gets a trace id in the logs).
    pub fn from_incoming(msg: &Incoming) -> Self {
        match msg.header(TRACEPARENT) {
            Some(AMQPValue::LongString(s)) => Self::parse(&s.to_string()),
            _ => None,
        }
        .unwrap_or_else(Self::new_root)
    }

    /// The `traceparent` value.
    pub fn header(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }

    /// The trace id as 32 hex digits (what the logs show).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// A span whose OpenTelemetry parent is `traceparent`: what lepus publishes inside it
/// carries the same trace id (lepus writes the publish span's own `traceparent` into the
/// message when tracing is on; when it is off, the header the caller set goes as is).
pub fn relay_span(traceparent: &str) -> tracing::Span {
    let span = tracing::info_span!("outbox.relay", trace_id = tracing::field::Empty);
    if span.is_disabled() {
        return span;
    }
    let carrier: HashMap<String, String> =
        HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
    if let Some(trace) = TraceContext::parse(traceparent) {
        span.record("trace_id", trace.trace_id());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.header());
        assert_eq!(parsed.as_ref(), Some(&root));
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_eq!(child.header().len(), 55);
    }

    #[test]
    fn rejects_malformed_headers() {
        for bad in [
            "",
            "00-abc",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-zz000000000000000000000000000001-0000000000000001-01",
            "00-00000000000000000000000000000001-0000000000000001",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }
}
