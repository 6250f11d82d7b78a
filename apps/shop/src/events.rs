//! The events the services exchange (JSON bodies) and their routing keys.

use serde::{Deserialize, Serialize};

/// Routing key of an accepted order.
pub const ORDER_CREATED: &str = "order.created";
/// Routing key of a reservation.
pub const INVENTORY_RESERVED: &str = "inventory.reserved";
/// Routing key of a rejection.
pub const INVENTORY_REJECTED: &str = "inventory.rejected";

/// Routing key of a reservation decided from the cached stock snapshot, to be settled
/// by the compensator (the compensation queue's binding).
pub const INVENTORY_COMPENSATE: &str = "inventory.compensate";
/// Routing key of an order cancelled because the recheck found too little stock.
pub const INVENTORY_CANCELLED: &str = "inventory.cancelled";

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The article.
    pub sku: String,
    /// How many.
    pub qty: i64,
}

/// `order.created`: published by the order service through its outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    /// The order's id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Where to tell them.
    pub email: String,
    /// What.
    pub lines: Vec<OrderLine>,
    /// When the order service accepted it (ms since the Unix epoch).
    pub created_ms: i64,
}

/// `inventory.compensate`: a reservation made from the cached snapshot, for the
/// compensator to take from the stock service once it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compensate {
    /// The order's id.
    pub order_id: String,
    /// What was reserved.
    pub lines: Vec<OrderLine>,
    /// Who ordered.
    pub customer: String,
    /// Where to tell them if it is cancelled.
    pub email: String,
    /// When the order was accepted (ms since the Unix epoch).
    pub created_ms: i64,
}

/// `inventory.reserved` / `inventory.rejected` / `inventory.cancelled`: published by the
/// inventory service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDecision {
    /// The order's id.
    pub order_id: String,
    /// `reserved`, `rejected` or `cancelled` (after the recheck of a cached decision).
    pub status: String,
    /// Why, for a rejection.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who ordered.
    pub customer: String,
    /// Where to tell them.
    pub email: String,
    /// When the order was accepted (ms since the Unix epoch), for latency.
    pub created_ms: i64,
    /// `live` (the stock service answered) or `cache` (the breaker was open).
    pub source: String,
}

/// Validates an order's lines: what the API refuses and what a consumer dead-letters.
pub fn check_lines(lines: &[OrderLine]) -> Result<(), String> {
    if lines.is_empty() || lines.len() > 20 {
        return Err(format!("an order needs 1 to 20 lines, not {}", lines.len()));
    }
    for line in lines {
        if line.sku.is_empty() || line.sku.len() > 64 {
            return Err("a sku must have 1 to 64 bytes".into());
        }
        if !(1..=1000).contains(&line.qty) {
            return Err(format!(
                "quantity {} of {} is not in 1..=1000",
                line.qty, line.sku
            ));
        }
    }
    Ok(())
}
