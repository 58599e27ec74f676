-- A drain with a deadline: past it, what still runs on the node is stopped (and waits for room
-- elsewhere) as a forced drain would. NULL: the drain waits for room however long it takes.
ALTER TABLE nodes ADD COLUMN drain_deadline BIGINT;
