//! Seeing what lepus does: Prometheus metrics, traces through message headers, JSON logs,
//! and health endpoints.
//!
//! ```no_run
//! # async fn demo(client: lepus::Client) -> lepus::Result<()> {
//! use lepus::observability::{self, Health, LogFormat};
//!
//! let _telemetry = observability::init_telemetry("billing", LogFormat::Json)?;
//! let metrics = observability::install_prometheus()?;
//! let health = Health::new(&client);
//! let app = observability::router(Some(metrics), health);
//! observability::serve("127.0.0.1:9000".parse().unwrap(), app, client.shutdown_token()).await?;
//! # Ok(()) }
//! ```

mod health;
mod http;
mod json;
pub mod metrics;
pub(crate) mod trace;

pub use health::{Health, HealthReport};
pub use http::{router, serve};
pub use metrics::install_prometheus;
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use trace::{
    DEFAULT_SAMPLE_RATIO, LogFormat, Telemetry, TelemetryGuard, init_telemetry,
    init_telemetry_with_writer, json_log_layer, otel_layer, ratio_sampler, trace_id,
    tracer_provider, tracer_provider_with,
};
