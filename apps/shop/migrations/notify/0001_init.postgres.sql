-- The notification service: one notification per order, and its dead letters.
CREATE TABLE notifications (
    order_id         TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    email            TEXT NOT NULL,
    message          TEXT NOT NULL,
    order_created_ms BIGINT NOT NULL,
    sent_ms          BIGINT NOT NULL,
    traceparent      TEXT NOT NULL
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
