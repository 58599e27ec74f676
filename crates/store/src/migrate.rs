//! A small migration runner: numbered SQL files per backend, each applied once in a transaction.
//! sqlx's own migrator needs its proc-macro crate to embed files; this avoids that build cost.

use crate::{Backend, Result};
use sqlx::AnyPool;

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_foundation.sql")),
    (2, include_str!("../migrations/sqlite/0002_billing.sql")),
    (3, include_str!("../migrations/sqlite/0003_agents.sql")),
    (4, include_str!("../migrations/sqlite/0004_slices.sql")),
    (5, include_str!("../migrations/sqlite/0005_market.sql")),
    (6, include_str!("../migrations/sqlite/0006_reservations.sql")),
    (7, include_str!("../migrations/sqlite/0007_clusters.sql")),
    (8, include_str!("../migrations/sqlite/0008_warm_pools.sql")),
    (9, include_str!("../migrations/sqlite/0009_cluster_schedules.sql")),
    (10, include_str!("../migrations/sqlite/0010_cluster_autoscale.sql")),
    (11, include_str!("../migrations/sqlite/0011_instance_metrics.sql")),
    (12, include_str!("../migrations/sqlite/0012_pool_schedules.sql")),
    (13, include_str!("../migrations/sqlite/0013_gpu_samples.sql")),
    (14, include_str!("../migrations/sqlite/0014_leases.sql")),
    (15, include_str!("../migrations/sqlite/0015_keys_and_audit.sql")),
    (16, include_str!("../migrations/sqlite/0016_cluster_replicas.sql")),
    (17, include_str!("../migrations/sqlite/0017_instance_endpoint.sql")),
    (18, include_str!("../migrations/sqlite/0018_node_labels.sql")),
    (19, include_str!("../migrations/sqlite/0019_agent_key_node.sql")),
    (20, include_str!("../migrations/sqlite/0020_workload_spec.sql")),
    (21, include_str!("../migrations/sqlite/0021_volumes.sql")),
    (22, include_str!("../migrations/sqlite/0022_ssh_keys.sql")),
    (23, include_str!("../migrations/sqlite/0023_billing_accrual.sql")),
    (24, include_str!("../migrations/sqlite/0024_log_runs.sql")),
    (25, include_str!("../migrations/sqlite/0025_drain_deadline.sql")),
    (26, include_str!("../migrations/sqlite/0026_audit_written_ahead.sql")),
    (27, include_str!("../migrations/sqlite/0027_member_workloads.sql")),
    (28, include_str!("../migrations/sqlite/0028_image_affinity.sql")),
    (29, include_str!("../migrations/sqlite/0029_volumes_unsettled_by_tenant.sql")),
    (30, include_str!("../migrations/sqlite/0030_projects.sql")),
    (31, include_str!("../migrations/sqlite/0031_beat_seq.sql")),
    (32, include_str!("../migrations/sqlite/0032_instance_pages.sql")),
    (33, include_str!("../migrations/sqlite/0033_instances_by_name.sql")),
    (34, include_str!("../migrations/sqlite/0034_instances_noticed.sql")),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_foundation.sql")),
    (2, include_str!("../migrations/postgres/0002_billing.sql")),
    (3, include_str!("../migrations/postgres/0003_agents.sql")),
    (4, include_str!("../migrations/postgres/0004_slices.sql")),
    (5, include_str!("../migrations/postgres/0005_market.sql")),
    (6, include_str!("../migrations/postgres/0006_reservations.sql")),
    (7, include_str!("../migrations/postgres/0007_clusters.sql")),
    (8, include_str!("../migrations/postgres/0008_warm_pools.sql")),
    (9, include_str!("../migrations/postgres/0009_cluster_schedules.sql")),
    (10, include_str!("../migrations/postgres/0010_cluster_autoscale.sql")),
    (11, include_str!("../migrations/postgres/0011_instance_metrics.sql")),
    (12, include_str!("../migrations/postgres/0012_pool_schedules.sql")),
    (13, include_str!("../migrations/postgres/0013_gpu_samples.sql")),
    (14, include_str!("../migrations/postgres/0014_leases.sql")),
    (15, include_str!("../migrations/postgres/0015_keys_and_audit.sql")),
    (16, include_str!("../migrations/postgres/0016_cluster_replicas.sql")),
    (17, include_str!("../migrations/postgres/0017_instance_endpoint.sql")),
    (18, include_str!("../migrations/postgres/0018_node_labels.sql")),
    (19, include_str!("../migrations/postgres/0019_agent_key_node.sql")),
    (20, include_str!("../migrations/postgres/0020_workload_spec.sql")),
    (21, include_str!("../migrations/postgres/0021_volumes.sql")),
    (22, include_str!("../migrations/postgres/0022_ssh_keys.sql")),
    (23, include_str!("../migrations/postgres/0023_billing_accrual.sql")),
    (24, include_str!("../migrations/postgres/0024_log_runs.sql")),
    (25, include_str!("../migrations/postgres/0025_drain_deadline.sql")),
    (26, include_str!("../migrations/postgres/0026_audit_written_ahead.sql")),
    (27, include_str!("../migrations/postgres/0027_member_workloads.sql")),
    (28, include_str!("../migrations/postgres/0028_image_affinity.sql")),
    (29, include_str!("../migrations/postgres/0029_volumes_unsettled_by_tenant.sql")),
    (30, include_str!("../migrations/postgres/0030_projects.sql")),
    (31, include_str!("../migrations/postgres/0031_beat_seq.sql")),
    (32, include_str!("../migrations/postgres/0032_instance_pages.sql")),
    (33, include_str!("../migrations/postgres/0033_instances_by_name.sql")),
    (34, include_str!("../migrations/postgres/0034_instances_noticed.sql")),
];

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<()> {
    let steps = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let mut tx = pool.begin().await?;
    if backend == Backend::Postgres {
        // Several replicas may start at once; one migrates, the others wait for it.
        sqlx::query("SELECT 1 FROM pg_advisory_xact_lock(7364501)").execute(&mut *tx).await?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    for (version, sql) in steps {
        let mut tx = pool.begin().await?;
        if backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock(7364501)").execute(&mut *tx).await?;
        }
        let done: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(*version)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)")
            .bind(*version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration");
    }
    Ok(())
}
