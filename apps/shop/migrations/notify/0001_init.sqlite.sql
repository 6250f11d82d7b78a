-- The notification service: one notification per order, and its dead letters.
-- IF NOT EXISTS: stores made before migrations were versioned already have these.
CREATE TABLE IF NOT EXISTS notifications (
    order_id         TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    email            TEXT NOT NULL,
    message          TEXT NOT NULL,
    order_created_ms INTEGER NOT NULL,
    sent_ms          INTEGER NOT NULL,
    traceparent      TEXT NOT NULL
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
