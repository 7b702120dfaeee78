-- Per-client limits (the client table) and snapshots of bucket levels.
-- The same tables as the SQLite schema, in PostgreSQL's types.
CREATE TABLE IF NOT EXISTS clients (
    client_id    TEXT PRIMARY KEY NOT NULL,
    capacity     BIGINT NOT NULL CHECK (capacity >= 1),
    rate_per_sec DOUBLE PRECISION NOT NULL CHECK (rate_per_sec >= 0),
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Only buckets that were not full when snapshotted: a missing row means
-- "full", which is what a fresh bucket is.
CREATE TABLE IF NOT EXISTS bucket_states (
    client_key TEXT PRIMARY KEY NOT NULL,
    tokens     DOUBLE PRECISION NOT NULL,
    saved_at   BIGINT NOT NULL
);
