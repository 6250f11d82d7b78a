//! Logs, traces and metrics, set up the project's way: lepus's one-call telemetry (JSON
//! lines with trace ids, OpenTelemetry spans, W3C `traceparent` through message headers)
//! and one Prometheus recorder per process, so lepus's `lepus_*` metrics and the shop's
//! `shop_*` metrics appear on the same `/metrics` page.

use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use lepus::observability::{self, LogFormat, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Keeps tracing running; flushes spans when dropped.
pub enum TelemetryGuard {
    /// Set up by lepus (logs on stderr).
    Lepus(observability::TelemetryGuard),
    /// Set up here (logs in a file).
    File(opentelemetry_sdk::trace::SdkTracerProvider),
    /// A subscriber was already installed; nothing to keep.
    None,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let TelemetryGuard::File(provider) = self {
            let _ = provider.shutdown();
        }
    }
}

/// Installs logging and tracing for `service`: JSON lines on stderr through lepus's
/// helper, or, with `file`, the same layers writing to that file (the demo keeps its
/// terminal for progress and the report). A second call (tests) keeps the first setup.
pub fn init_logging(service: &str, file: Option<&Path>) -> anyhow::Result<TelemetryGuard> {
    let Some(path) = file else {
        return Ok(
            match observability::init_telemetry(service, LogFormat::Json) {
                Ok(guard) => TelemetryGuard::Lepus(guard),
                Err(_) => TelemetryGuard::None,
            },
        );
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let provider = observability::tracer_provider(service)?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("shop"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(Mutex::new(file)),
        )
        .try_init();
    if installed.is_err() {
        return Ok(TelemetryGuard::None);
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(TelemetryGuard::File(provider))
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing lepus's recorder on first use. If some
/// other recorder was installed first, the handle renders only what it records itself.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| match observability::install_prometheus() {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!(error = %e, "a metrics recorder was already installed");
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .build_recorder()
                    .handle()
            }
        })
        .clone()
}

/// Runs the recorder's periodic upkeep until `cancel`.
pub fn spawn_upkeep(cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    let handle = metrics_handle();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    })
}
