-- Per-client limits (the client table) and snapshots of bucket levels.
CREATE TABLE IF NOT EXISTS clients (
    client_id    TEXT PRIMARY KEY NOT NULL,
    capacity     INTEGER NOT NULL CHECK (capacity >= 1),
    rate_per_sec REAL NOT NULL CHECK (rate_per_sec >= 0),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- Only buckets that were not full when snapshotted: a missing row means
-- "full", which is what a fresh bucket is.
CREATE TABLE IF NOT EXISTS bucket_states (
    client_key TEXT PRIMARY KEY NOT NULL,
    tokens     REAL NOT NULL,
    saved_at   INTEGER NOT NULL
);
