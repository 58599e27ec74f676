-- A page of a tenant's instances is read by its cursor (created_at, id): with the id in the
-- index the page is an index range read, not a sort of every instance the tenant has.
CREATE INDEX instances_by_tenant_page ON instances (tenant_id, created_at, id);
DROP INDEX instances_by_tenant;
