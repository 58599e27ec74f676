-- The two queries projects add to the hot paths, on 100,000 instances (90,000 holding GPUs, 200
-- tenants, 7 projects each): the fair-share read a scheduling pass makes when requests of two
-- or more projects wait (`ProjectStore::project_shares`), and the count one create makes
-- against a project's quota (`projects::counted_milli`). Run with:
--   psql -h 127.0.0.1 -U postgres test -f scripts/project-queries-at-scale.sql
-- It works in a scratch schema and drops it.
DROP SCHEMA IF EXISTS project_queries_probe CASCADE;
CREATE SCHEMA project_queries_probe;
SET search_path = project_queries_probe;
CREATE TABLE instances (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, project TEXT NOT NULL, gpu_model TEXT NOT NULL,
    gpu_milli BIGINT NOT NULL, gpu_count BIGINT NOT NULL, state TEXT NOT NULL, created_at BIGINT NOT NULL,
    quota_held BIGINT NOT NULL DEFAULT 0);
INSERT INTO instances SELECT 'i-' || g, 't-' || (g % 200), 'p' || (g % 7), 'A100-40GB', 1000, 1 + g % 4,
    CASE WHEN g % 10 = 0 THEN 'terminated' ELSE 'running' END, g, 0 FROM generate_series(1, 100000) g;
-- The indexes the migrations make.
CREATE INDEX instances_by_state ON instances (state, created_at);
CREATE INDEX instances_by_project ON instances (tenant_id, project, gpu_model);
ANALYZE instances;
\timing on
SELECT count(*) AS projects_holding FROM (SELECT tenant_id, project, CAST(SUM(gpu_milli * gpu_count) AS BIGINT)
    FROM instances WHERE state IN ('provisioning', 'running', 'stopping') GROUP BY tenant_id, project) x;
SELECT count(*) AS projects_holding FROM (SELECT tenant_id, project, CAST(SUM(gpu_milli * gpu_count) AS BIGINT)
    FROM instances WHERE state IN ('provisioning', 'running', 'stopping') GROUP BY tenant_id, project) x;
SELECT CAST(COALESCE(SUM(gpu_milli * gpu_count), 0) AS BIGINT) AS counted FROM instances
    WHERE tenant_id = 't-7' AND project = 'p0' AND gpu_model = 'A100-40GB' AND quota_held = 0
    AND state IN ('pending', 'provisioning', 'running', 'stopping');
SELECT CAST(COALESCE(SUM(gpu_milli * gpu_count), 0) AS BIGINT) AS counted FROM instances
    WHERE tenant_id = 't-7' AND project = 'p0' AND gpu_model = 'A100-40GB' AND quota_held = 0
    AND state IN ('pending', 'provisioning', 'running', 'stopping');
\timing off
DROP SCHEMA project_queries_probe CASCADE;
