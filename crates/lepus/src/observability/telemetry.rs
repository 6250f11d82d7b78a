//! One-call log and trace setup for a service, and the layers it is made of (the `otel`
//! feature). These items name `opentelemetry_sdk` types (`SdkTracer`, `Sampler`,
//! `SdkTracerProvider`), so they follow that crate's versions; the rest of lepus does not.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, ShouldSample};
use tracing::Subscriber;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::{Error, ErrorKind, Result};

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

/// The share of new traces sampled when neither the code nor `OTEL_TRACES_SAMPLER` says
/// otherwise: one in a hundred. A child span follows its parent's decision.
///
/// Every sampled publish puts a `traceparent` header on its message, which costs the
/// broker as much as the rest of lepus's tracing costs the client; tracing every message
/// of a busy queue takes away about a third of its throughput (bench/README.md has the
/// measurements). Traces that start elsewhere (an HTTP request, say) and arrive sampled
/// are always continued.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// Sets up logging and tracing for a service in one call: `RUST_LOG`-style filtering
/// (default `info`), JSON or pretty lines (JSON lines inside a span carry its
/// `trace_id` and `span_id`), and OpenTelemetry spans with W3C propagation, sampled as
/// [`tracer_provider`] says. With the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT`
/// set, spans are exported over OTLP. [`Telemetry`] has the other options.
pub fn init_telemetry(service: &str, format: LogFormat) -> Result<TelemetryGuard> {
    Telemetry::new(service).format(format).init()
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
    Telemetry::new(service).format(format).writer(writer).init()
}

/// Logging and tracing for a service, with every option: [`init_telemetry`] is
/// `Telemetry::new(service).format(format).init()`.
///
/// ```no_run
/// use lepus::observability::{LogFormat, Telemetry};
///
/// // Record every trace (a low-traffic service, or while debugging).
/// let _telemetry = Telemetry::new("billing")
///     .format(LogFormat::Json)
///     .sample_ratio(1.0)
///     .init()?;
/// # Ok::<(), lepus::Error>(())
/// ```
#[must_use = "nothing is set up until init() is called"]
pub struct Telemetry<W = fn() -> std::io::Stderr> {
    service: String,
    format: LogFormat,
    sample_ratio: Option<f64>,
    writer: W,
}

impl Telemetry {
    /// Telemetry for `service` (its OpenTelemetry `service.name`): JSON or pretty lines
    /// on standard error as [`LogFormat::Auto`] decides, sampled as [`tracer_provider`]
    /// says.
    pub fn new(service: &str) -> Self {
        Telemetry {
            service: service.to_owned(),
            format: LogFormat::Auto,
            sample_ratio: None,
            writer: std::io::stderr,
        }
    }
}

impl<W> Telemetry<W>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    /// How lines look.
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// The share of new traces to sample, from 0.0 to 1.0 (clamped), instead of
    /// `OTEL_TRACES_SAMPLER` or [`DEFAULT_SAMPLE_RATIO`]. Children follow their parent.
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = Some(ratio);
        self
    }

    /// Where lines go (a file, say) instead of standard error.
    pub fn writer<W2>(self, writer: W2) -> Telemetry<W2>
    where
        W2: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        Telemetry {
            service: self.service,
            format: self.format,
            sample_ratio: self.sample_ratio,
            writer,
        }
    }

    /// Installs the global subscriber and the W3C propagator. Fails if a global
    /// subscriber is already installed.
    pub fn init(self) -> Result<TelemetryGuard> {
        let provider = match self.sample_ratio {
            Some(ratio) => tracer_provider_with(&self.service, ratio_sampler(ratio))?,
            None => tracer_provider(&self.service)?,
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let json = match self.format {
            LogFormat::Json => true,
            LogFormat::Pretty => false,
            LogFormat::Auto => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let registry = tracing_subscriber::registry()
            .with(filter)
            .with(otel_layer(provider.tracer("lepus")));
        let result = if json {
            registry.with(json_log_layer(self.writer)).try_init()
        } else {
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(self.writer)
                        .with_filter(not_publish_span()),
                )
                .try_init()
        };
        result.map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                "cannot install the tracing subscriber",
                e,
            )
        })?;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(TelemetryGuard { provider })
    }
}

impl<W> std::fmt::Debug for Telemetry<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("service", &self.service)
            .field("format", &self.format)
            .field("sample_ratio", &self.sample_ratio)
            .finish_non_exhaustive()
    }
}

/// The layer that writes lepus's JSON lines to `writer`, for a subscriber of your own:
/// one object per line with the event's fields, the current span's name and fields,
/// and its OpenTelemetry `trace_id` and `span_id` when [`otel_layer`] is installed too.
///
/// lepus's `publish` span is left out: it lives from `send` to the broker's confirm but
/// is never entered, so no line is ever written inside it, and formatting its fields for
/// every message would be work for nothing.
pub fn json_log_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    super::json::layer(writer).with_filter(not_publish_span())
}

/// A filter for log layers that passes everything but lepus's `publish` span.
fn not_publish_span() -> FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    FilterFn::new(|meta| {
        !(meta.is_span()
            && meta.name() == super::trace::PUBLISH_SPAN
            && meta.target() == super::trace::PUBLISH_SPAN_TARGET)
    })
}

/// The OpenTelemetry layer as lepus sets it up, for a subscriber of your own: spans
/// become OpenTelemetry spans of `tracer`, without source locations, thread names or
/// busy/idle timings (each costs time on every message and tells little about it).
pub fn otel_layer<S>(tracer: SdkTracer) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
}

/// A parent-based sampler that samples `ratio` (clamped to 0.0..=1.0) of new traces.
pub fn ratio_sampler(ratio: f64) -> Sampler {
    let ratio = if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// A tracer provider that assigns ids (and exports, with the `otlp` feature). It samples
/// as `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` say, the OpenTelemetry
/// convention, or else [`DEFAULT_SAMPLE_RATIO`] of new traces.
pub fn tracer_provider(service: &str) -> Result<SdkTracerProvider> {
    if std::env::var_os("OTEL_TRACES_SAMPLER").is_some() {
        // The SDK reads the variables itself.
        provider(service, None::<Sampler>)
    } else {
        provider(service, Some(ratio_sampler(DEFAULT_SAMPLE_RATIO)))
    }
}

/// A tracer provider that samples with `sampler` (and exports, with the `otlp` feature).
pub fn tracer_provider_with(
    service: &str,
    sampler: impl ShouldSample + 'static,
) -> Result<SdkTracerProvider> {
    provider(service, Some(sampler))
}

fn provider(
    service: &str,
    sampler: Option<impl ShouldSample + 'static>,
) -> Result<SdkTracerProvider> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(sampler) = sampler {
        builder = builder.with_sampler(sampler);
    }
    #[cfg(feature = "otlp")]
    let builder = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| {
                Error::with_source(ErrorKind::Config, "cannot build the OTLP exporter", e)
            })?;
        builder.with_batch_exporter(exporter)
    } else {
        builder
    };
    Ok(builder.build())
}
