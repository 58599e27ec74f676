-- Scale a cluster out while its members' GPUs stay above up_pct utilization for for_s seconds,
-- in while they stay below down_pct (one member at a time, within min..max).
ALTER TABLE clusters ADD COLUMN autoscale_up_pct INTEGER;
ALTER TABLE clusters ADD COLUMN autoscale_down_pct INTEGER;
ALTER TABLE clusters ADD COLUMN autoscale_for_s INTEGER;
