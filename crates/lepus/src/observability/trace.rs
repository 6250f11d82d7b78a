//! Distributed tracing through message headers, and one-call log setup.
//!
//! Spans are `tracing` spans bridged to OpenTelemetry by `tracing-opentelemetry`. On
//! publish, the W3C `traceparent` (and `tracestate`) of the publish span are written into
//! the message's headers; on consume, they become the parent of the `handle` span, which
//! is current while the handler runs, so anything the handler publishes continues the
//! same trace. Without a subscriber (or without the OpenTelemetry layer) spans are
//! disabled and nothing is injected: tracing costs nothing when it is off.

use lepus_amqp::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::{Error, ErrorKind, Result};
use crate::message::short;

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(short(key), AMQPValue::LongString(value.into()));
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

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

/// Writes `span`'s trace context into `headers` (nothing if tracing is off).
pub(crate) fn inject(span: &Span, headers: &mut FieldTable) -> bool {
    if span.is_disabled() {
        return false;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    record_ids(span);
    true
}

/// Makes the trace context in `headers` (if any) the parent of `span`, and records the
/// span's ids in its fields.
pub(crate) fn extract_into(span: &Span, headers: Option<&FieldTable>) {
    if span.is_disabled() {
        return;
    }
    set_parent_from(span, headers);
    record_ids(span);
}

/// Makes the trace context in `headers` (if any) the parent of `span`.
pub(crate) fn set_parent_from(span: &Span, headers: Option<&FieldTable>) {
    if let Some(headers) = headers {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
}

/// Whether `span` belongs to a trace (tracing is on and it has a valid context).
pub(crate) fn in_trace(span: &Span) -> bool {
    !span.is_disabled() && span.context().span().span_context().is_valid()
}

/// Copies the span's OpenTelemetry ids into its `trace_id`/`span_id` fields, so every
/// log line inside it carries them.
fn record_ids(span: &Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// The trace id of `span`, if tracing is on.
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One JSON object per line (for services).
    Json,
    /// Human-readable (for terminals).
    Pretty,
    /// JSON unless standard error is a terminal.
    #[default]
    Auto,
}

/// Keeps tracing running; flushes exported spans when dropped.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TelemetryGuard")
    }
}

/// Sets up logging and tracing for a service in one call: `RUST_LOG`-style filtering
/// (default `info`), JSON or pretty lines (JSON lines inside lepus's spans carry
/// `trace_id` and `span_id`), and OpenTelemetry spans with W3C propagation. With the
/// `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP.
pub fn init_telemetry(service: &str, format: LogFormat) -> Result<TelemetryGuard> {
    init_telemetry_with_writer(service, format, std::io::stderr)
}

/// Like [`init_telemetry`], writing log lines to `writer` (a file, say) instead of
/// standard error.
pub fn init_telemetry_with_writer<W>(
    service: &str,
    format: LogFormat,
    writer: W,
) -> Result<TelemetryGuard>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = tracer_provider(service)?;
    let tracer = provider.tracer("lepus");
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()
    };
    result.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot install the tracing subscriber: {e}"),
        )
    })?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(TelemetryGuard { provider })
}

/// A tracer provider that assigns ids (and exports, with the `otlp` feature).
pub fn tracer_provider(service: &str) -> Result<SdkTracerProvider> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    #[cfg(feature = "otlp")]
    let builder = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot build the OTLP exporter: {e}"),
                )
            })?;
        builder.with_batch_exporter(exporter)
    } else {
        builder
    };
    Ok(builder.build())
}
