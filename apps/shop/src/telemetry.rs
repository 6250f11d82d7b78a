//! Logs, traces and metrics, set up the project's way: lepus's one-call telemetry (JSON
//! lines with trace ids, OpenTelemetry spans, W3C `traceparent` through message headers)
//! and one Prometheus recorder per process, so lepus's `lepus_*` metrics and the shop's
//! `shop_*` metrics appear on the same `/metrics` page.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::Context as _;
use lepus::observability::{self, LogFormat, PrometheusHandle};

/// Keeps tracing running; flushes spans when dropped.
pub enum TelemetryGuard {
    /// Set up by lepus.
    Lepus(observability::TelemetryGuard),
    /// A subscriber was already installed; nothing to keep.
    None,
}

/// Installs logging and tracing for `service` through lepus's helper: JSON lines on
/// stderr or, with `file`, in that file (the demo keeps its terminal for progress and the
/// report). A second call (tests) keeps the first setup. Orders are always traced: the
/// order service starts each order's trace sampled, and lepus continues a sampled trace
/// whatever its sampling ratio for new ones.
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
    Ok(
        match observability::init_telemetry_with_writer(service, LogFormat::Json, Mutex::new(file))
        {
            Ok(guard) => TelemetryGuard::Lepus(guard),
            Err(_) => TelemetryGuard::None,
        },
    )
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing lepus's recorder (which runs its own upkeep
/// thread) on first use. If some
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
