//! What every service serves besides its own API: `/health/live`, `/health/ready` and
//! `/metrics`, and the serving loop with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics_handle;

/// A readiness check: whether the service is ready, and details for the body.
pub type ReadyCheck = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// `/health/live`, `/health/ready` and `/metrics` for `service`.
pub fn ops_router(service: &'static str, ready: ReadyCheck) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(move || async move {
                axum::Json(serde_json::json!({ "service": service, "live": true }))
            }),
        )
        .route(
            "/health/ready",
            get(move || {
                let (ok, details) = ready();
                async move {
                    let body =
                        serde_json::json!({ "service": service, "ready": ok, "details": details });
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(body))
                }
            }),
        )
        .route("/metrics", get(metrics))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

/// Binds `addr` (port 0 for any free port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` until `cancel`, then lets open requests finish.
pub fn spawn_server(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(server = name, error = %e, "HTTP server failed");
        }
    })
}
