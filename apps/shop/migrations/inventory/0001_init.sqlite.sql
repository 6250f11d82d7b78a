-- The inventory service: stock, one decision per order, the cached stock snapshot, the
-- checks of decisions taken from it, breaker history, its outbox and dead letters.
-- IF NOT EXISTS: stores made before migrations were versioned already have these.
CREATE TABLE IF NOT EXISTS stock (
    sku       TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0)
);
CREATE TABLE IF NOT EXISTS decisions (
    order_id    TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    reason      TEXT,
    source      TEXT NOT NULL,
    lines       TEXT NOT NULL,
    traceparent TEXT NOT NULL,
    decided_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stock_snapshot (
    sku     TEXT PRIMARY KEY,
    on_hand INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS compensation_checks (
    order_id    TEXT PRIMARY KEY,
    lines       TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    detail      TEXT,
    created_ms  INTEGER NOT NULL,
    resolved_ms INTEGER
);
CREATE TABLE IF NOT EXISTS breaker_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind   TEXT NOT NULL,
    state  TEXT NOT NULL,
    at_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS effects (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    effect   TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id  TEXT PRIMARY KEY,
    order_id    TEXT,
    queue       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    error       TEXT NOT NULL,
    body        TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_order ON dead_letters (order_id);
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
