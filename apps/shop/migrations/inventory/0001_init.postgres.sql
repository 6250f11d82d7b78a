-- The inventory service: stock, one decision per order, the cached stock snapshot, the
-- checks of decisions taken from it, breaker history, its outbox and dead letters.
CREATE TABLE stock (
    sku       TEXT PRIMARY KEY,
    available BIGINT NOT NULL CHECK (available >= 0)
);
CREATE TABLE decisions (
    order_id    TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    reason      TEXT,
    source      TEXT NOT NULL,
    lines       TEXT NOT NULL,
    traceparent TEXT NOT NULL,
    decided_ms  BIGINT NOT NULL
);
CREATE TABLE stock_snapshot (
    sku     TEXT PRIMARY KEY,
    on_hand BIGINT NOT NULL,
    at_ms   BIGINT NOT NULL
);
CREATE TABLE compensation_checks (
    order_id    TEXT PRIMARY KEY,
    lines       TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    detail      TEXT,
    created_ms  BIGINT NOT NULL,
    resolved_ms BIGINT
);
CREATE TABLE breaker_events (
    id     BIGSERIAL PRIMARY KEY,
    kind   TEXT NOT NULL,
    state  TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE effects (
    id       BIGSERIAL PRIMARY KEY,
    order_id TEXT NOT NULL,
    effect   TEXT NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE TABLE dead_letters (
    message_id  TEXT PRIMARY KEY,
    order_id    TEXT,
    queue       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    error       TEXT NOT NULL,
    body        TEXT NOT NULL,
    recorded_ms BIGINT NOT NULL
);
CREATE INDEX dead_letters_order ON dead_letters (order_id);
CREATE TABLE outbox (
    seq         BIGSERIAL PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    routing_key TEXT NOT NULL,
    payload     TEXT NOT NULL,
    traceparent TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    sent_ms     BIGINT
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_ms IS NULL;
