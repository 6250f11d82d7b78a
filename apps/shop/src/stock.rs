//! The stock-check dependency (a warehouse system), simulated in process.
//!
//! It answers how many units of an article are on hand. An operator (the demo, through
//! the inventory service's admin endpoint) can make it slow or failing for a while, which
//! is what trips the inventory service's circuit breaker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

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
    on_hand: HashMap<String, i64>,
    mode: AtomicU8,
    healthy_again_at: Mutex<Option<Instant>>,
}

impl Default for Warehouse {
    fn default() -> Self {
        Self::new()
    }
}

impl Warehouse {
    /// A healthy warehouse holding [`CATALOG`].
    pub fn new() -> Self {
        Self {
            on_hand: CATALOG
                .iter()
                .map(|(s, n)| ((*s).to_string(), *n))
                .collect(),
            mode: AtomicU8::new(0),
            healthy_again_at: Mutex::new(None),
        }
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
            StockMode::Healthy => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(self.on_hand.get(sku).copied().unwrap_or(0))
            }
            StockMode::Slow => {
                tokio::time::sleep(SLOW_DELAY).await;
                Ok(self.on_hand.get(sku).copied().unwrap_or(0))
            }
            StockMode::Failing => Err(StockError("stock service unavailable (503)".into())),
        }
    }
}
