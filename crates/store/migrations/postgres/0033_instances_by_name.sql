-- Showing an instance by its name reads the instances of that name, not every instance of the
-- tenant.
CREATE INDEX instances_by_name ON instances (tenant_id, name);
