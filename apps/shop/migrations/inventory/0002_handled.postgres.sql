-- Message ids the consumers have handled (lepus's idempotency store), shared by every
-- replica of the service because it lives in the service's database.
CREATE TABLE handled (
    id         TEXT PRIMARY KEY,
    handled_ms BIGINT NOT NULL
);
CREATE INDEX handled_age ON handled (handled_ms);
