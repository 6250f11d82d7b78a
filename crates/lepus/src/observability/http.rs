//! HTTP endpoints a service mounts: `/metrics`, `/health/live`, `/health/ready`, `/health`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::health::{Health, HealthReport};
use crate::error::{Error, ErrorKind, Result};

#[derive(Clone)]
struct Endpoints {
    metrics: Option<PrometheusHandle>,
    health: Health,
}

/// A router with `/metrics` (Prometheus text, when a handle is given), `/health/live`
/// and `/health/ready` (200 or 503, with the report as JSON) and `/health`.
///
/// Merge it into a service's own axum router, or run it with [`serve`].
pub fn router(metrics: Option<PrometheusHandle>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(report))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(Endpoints { metrics, health })
}

async fn scrape(State(e): State<Endpoints>) -> Response {
    match e.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder installed\n").into_response(),
    }
}

fn json(status: StatusCode, report: &HealthReport) -> Response {
    let body = serde_json::to_string(report).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn report(State(e): State<Endpoints>) -> Response {
    json(StatusCode::OK, &e.health.report())
}

async fn live(State(e): State<Endpoints>) -> Response {
    let r = e.health.report();
    json(
        if r.live {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &r,
    )
}

async fn ready(State(e): State<Endpoints>) -> Response {
    let r = e.health.report();
    json(
        if r.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &r,
    )
}

/// Serves `router` on `addr` until `shutdown` is cancelled. Returns the bound address
/// (useful with port 0) once listening; the server runs on its own task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::with_source(ErrorKind::Config, format!("cannot listen on {addr}"), e)
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::with_source(ErrorKind::Config, "no local address", e))?;
    tokio::spawn(async move {
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "observability endpoint stopped");
        }
    });
    Ok(bound)
}
