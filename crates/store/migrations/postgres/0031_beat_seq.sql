-- The number of the newest beat taken from the node's agent in its current registration
-- (epoch). A beat numbered no higher arrived late, after a newer one: it is refused, so that
-- what it no longer mentions is not taken for gone. NULL: no numbered beat yet (a new
-- registration clears it).
ALTER TABLE nodes ADD COLUMN beat_seq BIGINT;
