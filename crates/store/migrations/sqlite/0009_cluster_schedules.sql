-- A cluster's size schedule ("08:00-20:00 8 x RTX-6000-Ada, otherwise 4 x A40") and the UTC
-- offset its times are in; the market task applies it.
ALTER TABLE clusters ADD COLUMN schedule TEXT;
ALTER TABLE clusters ADD COLUMN utc_offset_min INTEGER NOT NULL DEFAULT 0;
