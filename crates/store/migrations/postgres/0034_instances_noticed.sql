-- The notice scan (twice a second) reads the instances under notice, few at any time, not
-- every live instance of the fleet.
CREATE INDEX instances_noticed ON instances (notice_at) WHERE notice_at IS NOT NULL;
