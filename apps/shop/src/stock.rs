//! The stock-check dependency (a warehouse system), simulated.
//!
//! It answers how many units of an article are on hand, and gives them out: a
//! reservation takes units from it. Its stock lives in the inventory's database
//! (`warehouse_stock`) so that every replica of the inventory sees the same warehouse,
//! and a take commits with the decision it belongs to. Its behaviour is per process: an
//! operator (the demo, through the inventory service's admin endpoint) can make it slow
//! or failing for a while, which is what trips the inventory service's circuit breaker,
//! and can change an article's stock behind the inventory's back (goods found damaged,
//! sold through another channel), which is what makes a cached snapshot wrong.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::args;
use crate::db::{Db, DbResult, Session};

/// The articles and their initial stock: plenty of most, little of two, so that a run
/// sees rejections once those run out.
pub const CATALOG: &[(&str, i64)] = &[
    ("lamp", 5000),
    ("chair", 5000),
    ("table", 5000),
    ("mug", 5000),
    ("poster", 5000),
    ("rug", 5000),
    ("vase", 60),
    ("clock", 60),
];

/// How the dependency behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StockMode {
    /// Answers in a millisecond or two.
    Healthy,
    /// Answers after [`SLOW_DELAY`] (past any sensible timeout).
    Slow,
    /// Answers at once with an error.
    Failing,
}

impl StockMode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => StockMode::Slow,
            2 => StockMode::Failing,
            _ => StockMode::Healthy,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            StockMode::Healthy => 0,
            StockMode::Slow => 1,
            StockMode::Failing => 2,
        }
    }
}

/// How long a slow answer takes.
pub const SLOW_DELAY: Duration = Duration::from_secs(2);

/// The dependency failed.
#[derive(Debug, Clone)]
pub struct StockError(pub String);

impl std::fmt::Display for StockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The simulated warehouse.
#[derive(Debug)]
pub struct Warehouse {
    db: Db,
    mode: AtomicU8,
    healthy_again_at: Mutex<Option<Instant>>,
}

impl Warehouse {
    /// A healthy warehouse whose stock is in `db` (the inventory's store); stocked with
    /// [`CATALOG`] the first time.
    pub async fn open(db: Db) -> DbResult<Warehouse> {
        for (sku, n) in CATALOG {
            db.execute(
                "INSERT INTO warehouse_stock (sku, on_hand) VALUES ($1, $2)
                 ON CONFLICT (sku) DO NOTHING",
                args![*sku, *n],
            )
            .await?;
        }
        Ok(Self {
            db,
            mode: AtomicU8::new(0),
            healthy_again_at: Mutex::new(None),
        })
    }

    /// The current mode (a timed outage that has run out is healthy again).
    pub fn mode(&self) -> StockMode {
        let mut until = self
            .healthy_again_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|t| Instant::now() >= t) {
            *until = None;
            self.mode.store(0, Ordering::Relaxed);
        }
        StockMode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// Sets the mode, for `duration` if given (then healthy again), else until changed.
    pub fn set_mode(&self, mode: StockMode, duration: Option<Duration>) {
        let mut until = self
            .healthy_again_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *until = duration.map(|d| Instant::now() + d);
        self.mode.store(mode.as_u8(), Ordering::Relaxed);
        tracing::warn!(mode = ?mode, duration = ?duration, "stock service mode changed");
    }

    /// Units of `sku` on hand (0 for an unknown article).
    pub async fn on_hand(&self, sku: &str) -> Result<i64, StockError> {
        match self.mode() {
            StockMode::Healthy => tokio::time::sleep(Duration::from_millis(1)).await,
            StockMode::Slow => tokio::time::sleep(SLOW_DELAY).await,
            StockMode::Failing => {
                return Err(StockError("stock service unavailable (503)".into()));
            }
        }
        let row = self
            .db
            .query_opt(
                "SELECT on_hand FROM warehouse_stock WHERE sku = $1",
                args![sku],
            )
            .await
            .map_err(|e| StockError(format!("stock service: {e}")))?;
        match row {
            Some(r) => r.int(0).map_err(|e| StockError(e.to_string())),
            None => Ok(0),
        }
    }

    /// Sets the stock of `sku` (something outside the shop changed it).
    pub async fn set_on_hand(&self, sku: &str, on_hand: i64) -> DbResult<()> {
        self.db
            .execute(
                "INSERT INTO warehouse_stock (sku, on_hand) VALUES ($1, $2)
                 ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand",
                args![sku, on_hand],
            )
            .await
            .map(drop)
    }
}

/// Takes `qty` of `sku` from the warehouse inside `tx` (after the stock service answered
/// for it): false, and nothing taken, if it has fewer. Locks the row until `tx` ends.
pub async fn take(tx: &mut Session, sku: &str, qty: i64) -> DbResult<bool> {
    let n = tx
        .execute(
            "UPDATE warehouse_stock SET on_hand = on_hand - $1 WHERE sku = $2 AND on_hand >= $1",
            args![qty, sku],
        )
        .await?;
    Ok(n == 1)
}
