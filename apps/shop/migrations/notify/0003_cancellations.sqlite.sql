-- Orders cancelled after the recheck of a decision taken from the cached stock: the
-- customer, told "confirmed" before, is told once more.
CREATE TABLE IF NOT EXISTS cancellations (
    order_id    TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    message     TEXT NOT NULL,
    sent_ms     INTEGER NOT NULL,
    traceparent TEXT NOT NULL
);
