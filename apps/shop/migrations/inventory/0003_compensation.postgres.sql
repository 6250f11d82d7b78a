-- Compensation for real: the stock service's stock (simulated, kept here so that every
-- replica sees the same), from which live reservations and the compensator take.
CREATE TABLE warehouse_stock (
    sku     TEXT PRIMARY KEY,
    on_hand BIGINT NOT NULL CHECK (on_hand >= 0)
);
CREATE INDEX compensation_checks_status ON compensation_checks (status);
