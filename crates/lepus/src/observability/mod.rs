//! Seeing what lepus does: Prometheus metrics, traces through message headers, JSON logs,
//! and health endpoints.
//!
//! What is here depends on lepus's features: [`Health`], the metric names and
//! [`trace_id`] always; trace propagation and `Telemetry` with `otel`;
//! `install_prometheus` with `prometheus`; `router` and `serve` with `http`.
//!
//! ```no_run
//! # // Needs the `otel` and `http` features.
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
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "otel")]
mod json;
pub mod metrics;
#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "otel")]
mod telemetry;
pub(crate) mod trace;

pub use health::{Health, HealthReport};
#[cfg(feature = "http")]
pub use http::{router, serve};
#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus::PrometheusHandle;
#[cfg(feature = "prometheus")]
pub use prometheus::install_prometheus;
#[cfg(feature = "otel")]
pub use telemetry::{
    DEFAULT_SAMPLE_RATIO, LogFormat, Telemetry, TelemetryGuard, init_telemetry,
    init_telemetry_with_writer, json_log_layer, otel_layer, ratio_sampler, tracer_provider,
    tracer_provider_with,
};
pub use trace::trace_id;
