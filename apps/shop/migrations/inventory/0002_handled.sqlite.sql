-- Message ids the consumers have handled (lepus's idempotency store), shared by every
-- replica of the service because it lives in the service's database.
CREATE TABLE IF NOT EXISTS handled (
    id         TEXT PRIMARY KEY,
    handled_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS handled_age ON handled (handled_ms);
