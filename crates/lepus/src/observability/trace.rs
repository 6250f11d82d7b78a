//! Distributed tracing through message headers.
//!
//! Spans are `tracing` spans bridged to OpenTelemetry by `tracing-opentelemetry`. On
//! publish, the W3C `traceparent` (and a non-empty `tracestate`) of a sampled publish span
//! are written into the message's headers; on consume, they become the parent of the
//! `handle` span, which is current while the handler runs, so anything the handler
//! publishes continues the same trace. Without a subscriber (or without the OpenTelemetry
//! layer) spans are disabled and nothing is injected: tracing costs nothing when it is off.
//!
//! Sampling is decided at the head of a trace (see `tracer_provider`), and only sampled
//! traces travel in headers: a header costs the broker real work on every message, and an
//! unsampled trace would carry one only to say that it is not recorded. A consumer of an
//! untraced message therefore makes a sampling decision of its own; with the same ratio
//! everywhere that starts a few traces at a consumer instead of at the publisher.
//!
//! Without the `otel` feature the functions here keep their signatures and do nothing, so
//! the publisher and the consumer call them unconditionally.

use lepus_amqp::FieldTable;
use tracing::Span;

/// The name of the span of one publish, from `send` to the broker's confirm.
pub(crate) const PUBLISH_SPAN: &str = "publish";
/// The target of the publish span.
pub(crate) const PUBLISH_SPAN_TARGET: &str = "lepus::publisher";

#[cfg(feature = "otel")]
mod w3c {
    use lepus_amqp::{AMQPValue, FieldTable};
    use opentelemetry::propagation::{Extractor, Injector};

    use crate::message::short;

    pub(super) struct HeaderInjector<'a>(pub(super) &'a mut FieldTable);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            // An empty `tracestate` means the same as none, and costs a header.
            if value.is_empty() {
                return;
            }
            self.0
                .insert(short(key), AMQPValue::LongString(value.into()));
        }
    }

    pub(super) struct HeaderExtractor<'a>(pub(super) &'a FieldTable);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match self.0.inner().get(key)? {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str()),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            self.0.inner().keys().map(|k| k.as_str()).collect()
        }
    }
}

/// If `span` is sampled, a copy of `headers` (or a new table) with the span's trace
/// context written in; `None` if tracing is off or the trace is not sampled.
#[cfg(feature = "otel")]
pub(crate) fn injected(span: &Span, headers: Option<&FieldTable>) -> Option<FieldTable> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut headers = headers.cloned().unwrap_or_default();
    TraceContextPropagator::new().inject_context(&cx, &mut w3c::HeaderInjector(&mut headers));
    Some(headers)
}

/// Without `otel` nothing is injected.
#[cfg(not(feature = "otel"))]
pub(crate) fn injected(_span: &Span, _headers: Option<&FieldTable>) -> Option<FieldTable> {
    None
}

/// Makes the trace context in `headers` (if any) the parent of `span`.
pub(crate) fn extract_into(span: &Span, headers: Option<&FieldTable>) {
    if span.is_disabled() {
        return;
    }
    set_parent_from(span, headers);
}

/// Makes the trace context in `headers` (if any) the parent of `span`.
#[cfg(feature = "otel")]
pub(crate) fn set_parent_from(span: &Span, headers: Option<&FieldTable>) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if let Some(headers) = headers {
        if !headers.inner().contains_key("traceparent") {
            return;
        }
        let parent = TraceContextPropagator::new().extract(&w3c::HeaderExtractor(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
}

/// Without `otel` a message's trace context is left in its headers, unread.
#[cfg(not(feature = "otel"))]
pub(crate) fn set_parent_from(_span: &Span, _headers: Option<&FieldTable>) {}

/// Whether `span` belongs to a trace (tracing is on and it has a valid context).
pub(crate) fn in_trace(span: &Span) -> bool {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        !span.is_disabled() && span.context().span().span_context().is_valid()
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        false
    }
}

/// The trace id of `span`, if tracing is on (always `None` without the `otel` feature).
pub fn trace_id(span: &Span) -> Option<String> {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        None
    }
}
