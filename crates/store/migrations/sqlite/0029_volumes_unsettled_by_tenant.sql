-- A tenant's balance and budget reads add what its volumes accrued since their last posting: the
-- unsettled ones of that tenant, found without reading every tenant's.
CREATE INDEX volumes_unsettled_by_tenant ON volumes (tenant_id) WHERE settled = 0;
