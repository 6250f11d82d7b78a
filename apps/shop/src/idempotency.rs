//! Idempotent order creation: a client that retries `POST /orders` (a timeout, a
//! front door that re-sent the request to another replica) sends the same
//! `Idempotency-Key` header, and gets the first attempt's answer instead of a second
//! order.
//!
//! The key is a unique key in the order store, written in the same transaction as the
//! order and its outbox row, together with the request it was used for and the answer
//! given. A repeat of the same request is answered with the stored status and body, byte
//! for byte; the same key with a different request is refused with 422 (the key is
//! bound to its first request), as the HTTP idempotency-key draft advises. Writes to the
//! store are serialized on SQLite (an immediate transaction behind the service's one
//! connection); on PostgreSQL, where replicas write concurrently, the key's unique index
//! refuses the second of two concurrent first uses, whose transaction (and order) is
//! rolled back and which is then answered from the first. Never two orders.

use crate::args;
use crate::db::{DbResult, Session, now_ms};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header set on a replayed answer (`true`).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The longest key accepted, in bytes.
pub const MAX_KEY: usize = 200;

/// The key of a request: `Ok(None)` without the header, `Err` with why a present header
/// is unusable (empty, too long, not visible ASCII).
pub fn key(headers: &axum::http::HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "Idempotency-Key must be visible ASCII".to_string())?
        .trim();
    if text.is_empty() || text.len() > MAX_KEY {
        return Err(format!("Idempotency-Key must have 1 to {MAX_KEY} bytes"));
    }
    Ok(Some(text.to_string()))
}

/// What was answered the first time a key was used.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The request (canonical JSON) the key was first used with.
    pub request: String,
    /// The order it made.
    pub order_id: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The body answered (JSON).
    pub response: String,
}

/// The first use of `key`, if any.
pub async fn lookup(tx: &mut Session, key: &str) -> DbResult<Option<Stored>> {
    let Some(r) = tx
        .query_opt(
            "SELECT request, order_id, status, response FROM idempotency_keys WHERE key = $1",
            args![key],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Stored {
        request: r.text(0)?,
        order_id: r.text(1)?,
        status: u16::try_from(r.int(2)?).unwrap_or(201),
        response: r.text(3)?,
    }))
}

/// Records the first use of `key` inside the transaction that made the order.
pub async fn record(tx: &mut Session, key: &str, stored: &Stored) -> DbResult<()> {
    tx.execute(
        "INSERT INTO idempotency_keys (key, request, order_id, status, response, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            key,
            stored.request.as_str(),
            stored.order_id.as_str(),
            stored.status,
            stored.response.as_str(),
            now_ms()
        ],
    )
    .await
    .map(drop)
}
