-- The order service: orders, their outbox, and the idempotency keys of POST /orders.
CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    customer        TEXT NOT NULL,
    email           TEXT NOT NULL,
    lines           TEXT NOT NULL,
    traceparent     TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    created_ms      BIGINT NOT NULL
);
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    request     TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    status      BIGINT NOT NULL,
    response    TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
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
