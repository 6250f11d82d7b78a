//! The publish span: from `send` to the broker's confirm, and the trace context it puts
//! in the message's headers.
//!
//! The span's name and target live in `observability::trace`, which the telemetry
//! layer reads too; this file only builds the span, so observability never needs the
//! publisher.

use crate::message::Message;
use crate::observability::trace::{self, PUBLISH_SPAN, PUBLISH_SPAN_TARGET};

/// The publish span of `message`, with the trace context written into its headers if the
/// trace is sampled; a disabled span otherwise.
///
/// The attributes are recorded only once the trace is known to be sampled: the span of
/// an unsampled trace goes nowhere, and building them for every message would cost more
/// than the rest of the span.
pub(super) fn publish_span(message: &mut Message) -> tracing::Span {
    let span = tracing::info_span!(
        target: PUBLISH_SPAN_TARGET,
        PUBLISH_SPAN,
        otel.kind = "producer",
        messaging.system = tracing::field::Empty,
        messaging.operation = tracing::field::Empty,
        messaging.destination.name = tracing::field::Empty,
        messaging.rabbitmq.destination.routing_key = tracing::field::Empty,
        messaging.message.id = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    // Outside any trace (an outbox relay, say), a message that already carries a
    // `traceparent` continues that trace instead of starting a new one.
    if !trace::in_trace(&tracing::Span::current()) {
        trace::set_parent_from(&span, message.properties.headers().as_ref());
    }
    match trace::injected(&span, message.properties.headers().as_ref()) {
        Some(headers) => {
            message.properties = std::mem::take(&mut message.properties).with_headers(headers);
            span.record("messaging.system", "rabbitmq");
            span.record("messaging.operation", "publish");
            span.record("messaging.destination.name", message.exchange.as_str());
            span.record(
                "messaging.rabbitmq.destination.routing_key",
                message.routing_key.as_str(),
            );
            span.record(
                "messaging.message.id",
                message.message_id().unwrap_or_default(),
            );
            span
        }
        // Not sampled: nobody will see the span, so it ends here, on the thread that
        // made it, instead of living (and being freed elsewhere) until the confirm.
        None => tracing::Span::none(),
    }
}
