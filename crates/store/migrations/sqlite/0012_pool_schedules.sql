-- A warm pool's size by time of day ("09:25-16:00 4 x A100-40GB, otherwise 0 x A100-40GB"),
-- so it is warm before the market opens; the market task applies it.
ALTER TABLE warm_pools ADD COLUMN schedule TEXT;
ALTER TABLE warm_pools ADD COLUMN utc_offset_min INTEGER NOT NULL DEFAULT 0;
