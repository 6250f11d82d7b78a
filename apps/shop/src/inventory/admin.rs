//! The inventory service's admin API (the stock service's mode and stock, the breaker's
//! state) and the breaker's history in the store.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::args;
use crate::breaker::BreakerStatus;
use crate::db::{Db, now_ms};
use crate::stock::StockMode;

/// Writes every breaker state change to the store.
pub(super) async fn record_breaker(
    db: Db,
    mut changes: tokio::sync::watch::Receiver<BreakerStatus>,
    cancel: CancellationToken,
) {
    let mut last = *changes.borrow_and_update();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
        let now = *changes.borrow_and_update();
        let mut events = Vec::new();
        for _ in last.trips..now.trips {
            events.push(("trip", "open"));
        }
        for _ in last.reopens..now.reopens {
            events.push(("reopen", "open"));
        }
        if events.is_empty() || now.state != crate::breaker::BreakerState::Open {
            events.push(("change", now.state.as_str()));
        }
        last = now;
        let mut result = Ok(0);
        for (kind, state) in events {
            result = db
                .execute(
                    "INSERT INTO breaker_events (kind, state, at_ms) VALUES ($1, $2, $3)",
                    args![kind, state, now_ms()],
                )
                .await;
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result {
            tracing::warn!(service = "inventory", error = %format!("{e:#}"), "recording a breaker change failed");
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct StockModeRequest {
    mode: StockMode,
    #[serde(default)]
    seconds: Option<f64>,
}

pub(super) async fn get_stock_mode(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "mode": ctx.warehouse.mode() }))
}

pub(super) async fn set_stock_mode(
    State(ctx): State<Arc<Ctx>>,
    body: Result<Json<StockModeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let Json(req) = body.map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()))?;
    let duration = match req.seconds {
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "seconds must be in (0, 3600]".into(),
            ));
        }
        None => None,
    };
    ctx.warehouse.set_mode(req.mode, duration);
    Ok(Json(
        serde_json::json!({ "mode": req.mode, "seconds": req.seconds }),
    ))
}

pub(super) async fn get_breaker(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let s = ctx.breaker.status();
    Json(serde_json::json!({ "state": s.state.as_str(), "trips": s.trips, "reopens": s.reopens }))
}

#[derive(Debug, Deserialize)]
pub(super) struct WarehouseStockRequest {
    sku: String,
    on_hand: i64,
}

/// `POST /admin/warehouse {"sku": ..., "on_hand": n}`: the stock service's stock of an
/// article changes behind the inventory's back (what makes a cached snapshot wrong).
pub(super) async fn set_warehouse_stock(
    State(ctx): State<Arc<Ctx>>,
    body: Result<Json<WarehouseStockRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let Json(req) = body.map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()))?;
    if req.sku.is_empty() || req.sku.len() > 64 || !(0..=1_000_000).contains(&req.on_hand) {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "sku must have 1 to 64 bytes and on_hand be in 0..=1000000".into(),
        ));
    }
    ctx.warehouse
        .set_on_hand(&req.sku, req.on_hand)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(
        serde_json::json!({ "sku": req.sku, "on_hand": req.on_hand }),
    ))
}
