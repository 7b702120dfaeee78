-- A client's rate as written when it was given as N/unit (`1000/day`):
-- the limiter computes its bucket from it exactly, and the admin API shows
-- it back. NULL: the rate was given as rate_per_sec. rate_per_sec is
-- filled either way (N/unit in tokens per second), so a reader that knows
-- only that column still sees the right rate to within an f64.
ALTER TABLE clients ADD COLUMN IF NOT EXISTS rate TEXT;
