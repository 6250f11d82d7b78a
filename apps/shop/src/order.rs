//! The order service: an HTTP API to place and read orders. An order and its
//! `order.created` event commit in one transaction (the outbox), so an order the
//! API accepted (201) is announced eventually even if the broker is down right now.
//!
//! `POST /orders` is idempotent under an `Idempotency-Key` header ([`idempotency`]), and
//! continues the trace of a `traceparent` header when the caller sends one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lepus::observability::{self, Health};
use lepus::{Client, Role};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::args;
use crate::db::{Db, DbError, DbResult, now_ms};
use crate::events::{ORDER_CREATED, OrderCreated, OrderLine, check_lines};
use crate::idempotency;
use crate::outbox::{self, Relay};
use crate::service::{Common, join_all, spawn_connection_gauges};
use crate::telemetry::metrics_handle;
use crate::trace::{TRACEPARENT, TraceContext};

/// The body of `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    /// Who orders.
    pub customer: String,
    /// Where to tell them.
    pub email: String,
    /// What.
    pub lines: Vec<OrderLine>,
}

/// The answer to `POST /orders` and `GET /orders/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderView {
    /// The order's id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Where to tell them.
    pub email: String,
    /// What.
    pub lines: Vec<OrderLine>,
    /// The order's trace id (find it in every service's logs).
    pub trace_id: String,
    /// `pending` until the broker confirmed `order.created`, then `published`.
    pub event: String,
    /// When it was accepted (ms since the Unix epoch).
    pub created_ms: i64,
}

struct AppState {
    db: Db,
    wake: Arc<Notify>,
}

/// A running order service.
pub struct OrderService {
    /// Its lepus client (one connection: it only publishes).
    pub client: Client,
    /// Its database.
    pub db: Db,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    /// Its messaging health.
    pub health: Health,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OrderService {
    /// Opens the store, connects, starts the relay and the API on `listen`.
    pub async fn start(
        common: &Common,
        listen: SocketAddr,
        cancel: CancellationToken,
    ) -> anyhow::Result<OrderService> {
        let db = Db::open(&common.database("order"), crate::db::migrate::ORDER).await?;
        let client = common.client(
            "order",
            crate::topology::order_topology(&common.names),
            true,
        )?;
        let relay = Relay::new(db.clone(), &client, common.names.exchange(), "order");
        let wake = relay.waker();
        let relay_publisher = relay.publisher().clone();
        let mut tasks = vec![tokio::spawn(relay.run(cancel.clone()))];
        tasks.push(spawn_connection_gauges(
            client.clone(),
            "order",
            &[(Role::Publish, "shared")],
            cancel.clone(),
        ));
        // Readiness is the broker connection, as for every service; the API keeps
        // accepting orders while it is down (the outbox holds their events).
        let health = Health::new(&client);
        health.watch_publisher(&relay_publisher);
        let app = Router::new()
            .route("/orders", post(place_order))
            .route("/orders/{id}", get(get_order))
            .with_state(Arc::new(AppState {
                db: db.clone(),
                wake,
            }))
            .merge(observability::router(
                Some(metrics_handle()),
                health.clone(),
            ));
        let addr = observability::serve(listen, app, cancel.clone()).await?;
        tracing::info!(service = "order", %addr, "order service listening");
        Ok(OrderService {
            client,
            db,
            addr,
            health,
            cancel,
            tasks,
        })
    }

    /// Whether its connection is up.
    pub fn ready(&self) -> bool {
        self.health.report().ready
    }

    /// Stops the API and the relay (unsent rows stay for the next start) and closes the
    /// client.
    pub async fn stop(self) {
        self.cancel.cancel();
        join_all(self.tasks, Duration::from_secs(10)).await;
        let _ = self.client.close(Duration::from_secs(5)).await;
    }
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn api_error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    (
        status,
        Json(serde_json::json!({ "error": message.to_string() })),
    )
}

fn validate(order: &NewOrder) -> Result<(), String> {
    if order.customer.trim().is_empty() || order.customer.len() > 200 {
        return Err("customer must have 1 to 200 bytes".into());
    }
    if order.email.trim().is_empty() || order.email.len() > 320 {
        return Err("email must have 1 to 320 bytes".into());
    }
    check_lines(&order.lines)
}

enum Placed {
    /// A new order.
    New(OrderView),
    /// The order of a key used before keys were stored with their answers.
    Keyed(OrderView),
    /// The answer given to the first use of the key, again.
    Replayed(idempotency::Stored),
    /// The key was first used with a different request.
    KeyReused,
}

async fn place_order(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(order) = body.map_err(|e| api_error(StatusCode::BAD_REQUEST, e.body_text()))?;
    validate(&order).map_err(|e| api_error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let key = idempotency::key(&headers).map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    // Continue the caller's trace (a gateway's, a front door's) when it sent one: the
    // order's trace id is then the caller's, and this service's work is a span of it.
    let trace = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .map_or_else(TraceContext::new_root, |parent| parent.child());
    let placed = place(&app.db, &order, key.as_deref(), &trace)
        .await
        .map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "storing an order failed");
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the order could not be stored",
            )
        })?;
    match placed {
        Placed::New(view) => {
            app.wake.notify_one();
            metrics::counter!("shop_orders_accepted_total").increment(1);
            tracing::info!(service = "order", trace_id = %view.trace_id, order_id = %view.order_id, "order accepted");
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        Placed::Keyed(view) => Ok((
            StatusCode::CREATED,
            [(
                HeaderName::from_static(idempotency::REPLAYED_HEADER),
                "true",
            )],
            Json(view),
        )
            .into_response()),
        Placed::Replayed(stored) => {
            metrics::counter!("shop_orders_replayed_total").increment(1);
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::CREATED);
            Ok((
                status,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (
                        HeaderName::from_static(idempotency::REPLAYED_HEADER),
                        "true",
                    ),
                ],
                stored.response,
            )
                .into_response())
        }
        Placed::KeyReused => Err(api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was already used with a different order",
        )),
    }
}

fn json_error(e: serde_json::Error) -> DbError {
    DbError::Other(format!("encoding JSON: {e}"))
}

/// Stores the order; a concurrent first use of the same key on another replica (the
/// key's unique index refused this one) is answered from that one.
async fn place(
    db: &Db,
    order: &NewOrder,
    key: Option<&str>,
    trace: &TraceContext,
) -> DbResult<Placed> {
    match insert_order(db, order, key, trace).await {
        Err(e) if key.is_some() && e.is_unique_violation() => {
            insert_order(db, order, key, trace).await
        }
        other => other,
    }
}

async fn insert_order(
    db: &Db,
    order: &NewOrder,
    key: Option<&str>,
    trace: &TraceContext,
) -> DbResult<Placed> {
    let mut tx = db.begin().await?;
    // The request as the key remembers it: what the order is, however the JSON was laid
    // out.
    let request = serde_json::to_string(order).map_err(json_error)?;
    if let Some(key) = key {
        if let Some(stored) = idempotency::lookup(&mut tx, key).await? {
            return Ok(if stored.request == request {
                Placed::Replayed(stored)
            } else {
                Placed::KeyReused
            });
        }
        // An order keyed before keys were stored with their answers.
        let existing = tx
            .query_opt(
                "SELECT id FROM orders WHERE idempotency_key = $1",
                args![key],
            )
            .await?;
        if let Some(row) = existing {
            let id = row.text(0)?;
            drop(tx);
            return read_order(db, &id)
                .await?
                .map(Placed::Keyed)
                .ok_or_else(|| DbError::Other(format!("order {id} vanished")));
        }
    }
    let order_id = uuid::Uuid::now_v7().to_string();
    let created_ms = now_ms();
    let event = OrderCreated {
        order_id: order_id.clone(),
        customer: order.customer.clone(),
        email: order.email.clone(),
        lines: order.lines.clone(),
        created_ms,
    };
    let payload = serde_json::to_string(&event).map_err(json_error)?;
    let lines = serde_json::to_string(&order.lines).map_err(json_error)?;
    let event_id = outbox::insert(&mut tx, ORDER_CREATED, &payload, &trace.header()).await?;
    tx.execute(
        "INSERT INTO orders (id, idempotency_key, customer, email, lines, traceparent, event_id, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        args![
            order_id.as_str(),
            key,
            order.customer.as_str(),
            order.email.as_str(),
            lines,
            trace.header(),
            event_id,
            created_ms
        ],
    )
    .await?;
    let view = OrderView {
        order_id,
        customer: order.customer.clone(),
        email: order.email.clone(),
        lines: order.lines.clone(),
        trace_id: trace.trace_id(),
        event: "pending".into(),
        created_ms,
    };
    if let Some(key) = key {
        let stored = idempotency::Stored {
            request,
            order_id: view.order_id.clone(),
            status: StatusCode::CREATED.as_u16(),
            response: serde_json::to_string(&view).map_err(json_error)?,
        };
        idempotency::record(&mut tx, key, &stored).await?;
    }
    tx.commit().await?;
    Ok(Placed::New(view))
}

async fn read_order(db: &Db, id: &str) -> DbResult<Option<OrderView>> {
    let Some(r) = db
        .query_opt(
            "SELECT o.id, o.customer, o.email, o.lines, o.traceparent, o.created_ms, x.sent_ms
             FROM orders o LEFT JOIN outbox x ON x.event_id = o.event_id WHERE o.id = $1",
            args![id],
        )
        .await?
    else {
        return Ok(None);
    };
    let lines = r.text(3)?;
    let traceparent = r.text(4)?;
    Ok(Some(OrderView {
        order_id: r.text(0)?,
        customer: r.text(1)?,
        email: r.text(2)?,
        lines: serde_json::from_str(&lines).unwrap_or_default(),
        trace_id: TraceContext::parse(&traceparent)
            .map(|t| t.trace_id())
            .unwrap_or_default(),
        event: if r.opt_int(6)?.is_some() {
            "published"
        } else {
            "pending"
        }
        .into(),
        created_ms: r.int(5)?,
    }))
}

async fn get_order(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let found = read_order(&app.db, &id)
        .await
        .map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    found
        .map(Json)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "no such order"))
}
