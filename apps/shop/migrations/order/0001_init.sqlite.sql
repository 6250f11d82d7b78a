-- The order service: orders, their outbox, and the idempotency keys of POST /orders.
-- IF NOT EXISTS: stores made before migrations were versioned already have these.
CREATE TABLE IF NOT EXISTS orders (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    customer        TEXT NOT NULL,
    email           TEXT NOT NULL,
    lines           TEXT NOT NULL,
    traceparent     TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    created_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key         TEXT PRIMARY KEY,
    request     TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    status      INTEGER NOT NULL,
    response    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    routing_key TEXT NOT NULL,
    payload     TEXT NOT NULL,
    traceparent TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    sent_ms     INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_ms IS NULL;
