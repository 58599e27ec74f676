use crate::billing_rows::*;
use crate::migrate;
use crate::node_rows::{Which, insert_node_as, load_nodes};
use crate::{
    ApiKey, ApplyOutcome, Backend, IdempotencyBegin, Instance, InstanceChange, InstanceEvent, LogChunk, LostNode,
    NewInstance, NewNode, NewPlacement, Node, NodeBatch, Result, Staleness, Store, StoreError, Tenant,
};
use async_trait::async_trait;
use gpucloud_model::GpuShare;
use gpucloud_model::{
    GpuModel, InstanceId, InstanceState, NodeId, NodeState, OnQuota, Region, Role, StopTarget, TenantId, Timestamp,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Acquire, AnyPool, Executor, Row};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Once;

/// The SQL store. SQLite runs on a single connection: SQLite allows one writer at a time anyway,
/// and one connection turns lock contention into a queue instead of `SQLITE_BUSY` errors.
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    backend: Backend,
}

pub(crate) const INSTANCE_COLUMNS: &str = "id, tenant_id, name, region, gpu_model, gpu_count, command, state, \
    stop_target, node_id, generation, pending_reason, exit_code, created_at, updated_at, gpu_milli, gpu_mem_mib, \
    mig_profile, status_reason, cluster_id, cluster_rank, pool_id, tier, max_price_micros, env, job_id, attempt, running_since, notice_at, notice_ms, \
    notice_reason, preempt_at, checkpoint, checkpoint_at, endpoint, image, ports, progress, published, \
    volume_id, volume_mount, placement_note, project, quota_held, priority, \
    (SELECT n.region FROM nodes n WHERE n.id = COALESCE(instances.node_id, instances.ran_on)) AS ran_region, \
    COALESCE(instances.node_id, instances.ran_on) AS ran_node";

/// A pooled PostgreSQL connection idle at least this long is pinged before it is used again.
pub const PING_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

impl SqlStore {
    pub async fn open(url: &str) -> Result<SqlStore> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let (backend, pool) = if url.starts_with("sqlite:") {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                // A file cannot drop the connection: no round trip to check it first.
                .test_before_acquire(false)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers of the file (backups, sqlite3) coexist with the server;
                        // FULL sync makes every committed transaction survive a power cut. A 64 MiB
                        // page cache (the default is 2 MiB) keeps a large fleet's indexes in memory.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
                             PRAGMA cache_size = -65536;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&with_create_mode(url))
                .await?;
            (Backend::Sqlite, pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // A ping only before handing out a connection idle for a while (decision 0021):
            // pinging before every query doubled the round trips of a heartbeat, while one idle
            // across a database restart would fail the query it was given.
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_IDLE {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect(url)
                .await?;
            (Backend::Postgres, pool)
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        migrate::run(&pool, backend).await?;
        Ok(SqlStore { pool, backend })
    }

    /// For `gpucloud sim chaos`: with `Some(n)`, the next `n` rows written succeed and every
    /// write after them fails (the statement is aborted, so its transaction rolls back), as when
    /// the database runs out of disk or loses its primary in the middle of a request; `None`
    /// ends the fault. Reads keep working. SQLite only: the fault lives in temporary triggers on
    /// the store's one connection, so nothing of it reaches the database file.
    pub async fn fail_writes_after(&self, rows: Option<u32>) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Unsupported("write faults are simulated on SQLite only"));
        }
        let mut conn = self.pool.acquire().await?;
        let triggers: Vec<String> =
            sqlx::query("SELECT name FROM sqlite_temp_master WHERE type = 'trigger' AND name LIKE 'store_fault_%'")
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<std::result::Result<_, _>>()?;
        let Some(rows) = rows else {
            let mut sql = String::new();
            for t in &triggers {
                sql.push_str(&format!("DROP TRIGGER temp.\"{t}\";"));
            }
            sql.push_str("DROP TABLE IF EXISTS temp.store_fault;");
            conn.execute(sql.as_str()).await?;
            return Ok(());
        };
        let mut sql = String::from(
            "PRAGMA temp_store = MEMORY; \
             CREATE TEMP TABLE IF NOT EXISTS store_fault (rows INTEGER NOT NULL); \
             DELETE FROM temp.store_fault;",
        );
        sql.push_str(&format!("INSERT INTO temp.store_fault (rows) VALUES ({rows});"));
        if triggers.is_empty() {
            let tables: Vec<String> = sqlx::query(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?;
            for t in &tables {
                for op in ["INSERT", "UPDATE", "DELETE"] {
                    // Counted per row: a BEFORE trigger runs once for each row written.
                    sql.push_str(&format!(
                        "CREATE TEMP TRIGGER \"store_fault_{t}_{op}\" BEFORE {op} ON main.\"{t}\" BEGIN \
                         SELECT RAISE(ABORT, 'injected store fault: the database refuses writes') \
                         WHERE (SELECT rows FROM store_fault) <= 0; \
                         UPDATE store_fault SET rows = rows - 1; END;"
                    ));
                }
            }
        }
        conn.execute(sql.as_str()).await?;
        Ok(())
    }

    /// For `gpucloud sim chaos`'s checker: every instance placed on a node, with its GPUs, in one
    /// read rather than one a node.
    pub async fn placed_instances(&self) -> Result<Vec<Instance>> {
        self.instances_where("WHERE node_id IS NOT NULL ORDER BY node_id, created_at, id", None, GpuFilter::All).await
    }

    async fn gpus_of(&self, filter: GpuFilter<'_>) -> Result<HashMap<String, Vec<u32>>> {
        let q = match filter {
            // A slice's GPU comes from gpu_slices; an instance holds whole GPUs or one slice.
            GpuFilter::Instance(_) => {
                "SELECT instance_id, idx FROM gpus WHERE instance_id = $1 \
                 UNION ALL SELECT instance_id, idx FROM gpu_slices WHERE instance_id = $1 ORDER BY idx"
            }
            GpuFilter::Tenant(_) => {
                "SELECT g.instance_id, g.idx FROM gpus g JOIN instances i ON i.id = g.instance_id \
                 WHERE i.tenant_id = $1 \
                 UNION ALL SELECT s.instance_id, s.idx FROM gpu_slices s JOIN instances i ON i.id = s.instance_id \
                 WHERE i.tenant_id = $1 ORDER BY idx"
            }
            GpuFilter::Node(_) => {
                "SELECT instance_id, idx FROM gpus WHERE node_id = $1 AND instance_id IS NOT NULL \
                 UNION ALL SELECT instance_id, idx FROM gpu_slices WHERE node_id = $1 ORDER BY idx"
            }
            GpuFilter::All => {
                "SELECT instance_id, idx FROM gpus WHERE instance_id IS NOT NULL \
                 UNION ALL SELECT instance_id, idx FROM gpu_slices ORDER BY idx"
            }
        };
        let query = sqlx::query(q);
        let query = match filter {
            GpuFilter::Instance(v) | GpuFilter::Tenant(v) | GpuFilter::Node(v) => query.bind(v.to_string()),
            GpuFilter::All => query,
        };
        let mut out: HashMap<String, Vec<u32>> = HashMap::new();
        for row in query.fetch_all(&self.pool).await? {
            let id: String = row.try_get(0)?;
            let idx: i64 = row.try_get(1)?;
            out.entry(id).or_default().push(idx as u32);
        }
        Ok(out)
    }

    pub(crate) async fn instances_where(
        &self,
        clause: &str,
        bind: Option<String>,
        gpus: GpuFilter<'_>,
    ) -> Result<Vec<Instance>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances {clause}");
        let mut q = sqlx::query(&sql);
        if let Some(b) = bind {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut instances = rows.iter().map(instance_from_row).collect::<Result<Vec<_>>>()?;
        // Most heartbeats' nodes, and many tenants, hold no GPU: no second round trip for them.
        if !instances.iter().any(|i| i.state.holds_gpus()) {
            return Ok(instances);
        }
        let mut gpu_map = self.gpus_of(gpus).await?;
        for inst in instances.iter_mut().filter(|i| i.state.holds_gpus()) {
            inst.gpus = gpu_map.remove(inst.id.as_str()).unwrap_or_default();
        }
        Ok(instances)
    }

    /// A tenant's instances, oldest first, with their GPUs: of one project, after a cursor, of
    /// one name, as many as `limit`, each only when given. Reads what it returns, not the rest.
    async fn tenant_instances(
        &self,
        tenant: &TenantId,
        project: Option<&gpucloud_model::ProjectName>,
        after: Option<(Timestamp, &str)>,
        name: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<Instance>> {
        // Binds are numbered as they are pushed: the tenant, the cursor, the project, the name.
        let mut clause = String::from("WHERE tenant_id = $1");
        let mut n = 1;
        if after.is_some() {
            clause.push_str(" AND (created_at > $2 OR (created_at = $2 AND id > $3))");
            n = 3;
        }
        if project.is_some() {
            n += 1;
            clause.push_str(&format!(" AND project = ${n}"));
        }
        if name.is_some() {
            n += 1;
            clause.push_str(&format!(" AND name = ${n}"));
        }
        let limit = limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances {clause} ORDER BY created_at, id{limit}");
        let mut q = sqlx::query(&sql).bind(tenant.to_string());
        if let Some((at, id)) = after {
            q = q.bind(at.0).bind(id.to_string());
        }
        if let Some(p) = project {
            q = q.bind(p.as_str().to_string());
        }
        if let Some(name) = name {
            q = q.bind(name.to_string());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut instances = rows.iter().map(instance_from_row).collect::<Result<Vec<_>>>()?;
        let holding: Vec<String> =
            instances.iter().filter(|i| i.state.holds_gpus()).map(|i| i.id.to_string()).collect();
        if holding.is_empty() {
            return Ok(instances);
        }
        // The page's GPUs in one read, whatever the tenant holds elsewhere.
        let marks = (1..=holding.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT instance_id, idx FROM gpus WHERE instance_id IN ({marks}) \
             UNION ALL SELECT instance_id, idx FROM gpu_slices WHERE instance_id IN ({marks}) ORDER BY idx"
        );
        let mut q = sqlx::query(&sql);
        for id in &holding {
            q = q.bind(id.clone());
        }
        let mut gpus: HashMap<String, Vec<u32>> = HashMap::new();
        for row in q.fetch_all(&self.pool).await? {
            let id: String = row.try_get(0)?;
            let idx: i64 = row.try_get(1)?;
            gpus.entry(id).or_default().push(idx as u32);
        }
        for inst in instances.iter_mut().filter(|i| i.state.holds_gpus()) {
            inst.gpus = gpus.remove(inst.id.as_str()).unwrap_or_default();
        }
        Ok(instances)
    }
}

pub(crate) enum GpuFilter<'a> {
    Instance(&'a str),
    Tenant(&'a str),
    Node(&'a str),
    All,
}

fn with_create_mode(url: &str) -> String {
    if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

pub(crate) fn corrupt(table: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt { table, detail: detail.to_string() }
}

pub(crate) fn parse<T: FromStr>(table: &'static str, v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>().map_err(|e| corrupt(table, e))
}

pub(crate) fn unique_violation(e: sqlx::Error, what: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what.to_string()),
        _ => StoreError::Db(e),
    }
}

fn tenant_from_row(r: &AnyRow, off: usize) -> Result<Tenant> {
    Ok(Tenant {
        id: parse("tenants", &r.try_get::<String, _>(off)?)?,
        name: r.try_get(off + 1)?,
        role: parse::<Role>("tenants", &r.try_get::<String, _>(off + 2)?)?,
        created_at: Timestamp(r.try_get(off + 3)?),
    })
}

pub(crate) fn instance_from_row(r: &AnyRow) -> Result<Instance> {
    let t = "instances";
    let region: Option<String> = r.try_get("region")?;
    let stop_target: Option<String> = r.try_get("stop_target")?;
    let node_id: Option<String> = r.try_get("node_id")?;
    let exit_code: Option<i64> = r.try_get("exit_code")?;
    let milli = r.try_get::<i64, _>("gpu_milli")?;
    let share = (milli < 1000).then(|| -> Result<GpuShare> {
        Ok(GpuShare {
            milli: milli.clamp(1, 999) as u32,
            memory_mib: r.try_get::<i64, _>("gpu_mem_mib")?.max(0) as u64,
            mig: r.try_get("mig_profile")?,
        })
    });
    Ok(Instance {
        share: share.transpose()?,
        id: parse(t, &r.try_get::<String, _>("id")?)?,
        tenant_id: parse(t, &r.try_get::<String, _>("tenant_id")?)?,
        name: r.try_get("name")?,
        region: region.map(|v| Region::parse(&v).map_err(|e| corrupt(t, e))).transpose()?,
        model: parse::<GpuModel>(t, &r.try_get::<String, _>("gpu_model")?)?,
        count: r.try_get::<i64, _>("gpu_count")? as u32,
        command: r.try_get("command")?,
        state: parse::<InstanceState>(t, &r.try_get::<String, _>("state")?)?,
        stop_target: stop_target.map(|v| parse::<StopTarget>(t, &v)).transpose()?,
        node_id: node_id.map(|v| parse::<NodeId>(t, &v)).transpose()?,
        gpus: Vec::new(),
        generation: r.try_get("generation")?,
        pending_reason: r.try_get("pending_reason")?,
        status_reason: r.try_get("status_reason")?,
        placement_note: r.try_get("placement_note")?,
        exit_code: exit_code.map(|c| c as i32),
        created_at: Timestamp(r.try_get("created_at")?),
        updated_at: Timestamp(r.try_get("updated_at")?),
        sale: crate::market::sale_from_row(r)?,
        running_since: r.try_get::<Option<i64>, _>("running_since")?.map(Timestamp),
        notice: crate::market::notice_from_row(r)?,
        checkpoint: crate::market::checkpoint_from_row(r)?,
        endpoint: r.try_get("endpoint")?,
        progress: r.try_get("progress")?,
        published: crate::market::decode_published(r.try_get("published")?),
        ran_region: r
            .try_get::<Option<String>, _>("ran_region")?
            .map(|v| Region::parse(&v).map_err(|e| corrupt(t, e)))
            .transpose()?,
        ran_node: r.try_get::<Option<String>, _>("ran_node")?.map(|v| parse(t, &v)).transpose()?,
    })
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    async fn create_tenant(&self, t: &Tenant) -> Result<()> {
        sqlx::query("INSERT INTO tenants (id, name, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(t.id.to_string())
            .bind(&t.name)
            .bind(t.role.as_str())
            .bind(t.created_at.0)
            .execute(&self.pool)
            .await
            .map_err(|e| unique_violation(e, &format!("tenant '{}'", t.name)))?;
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, role, created_at FROM tenants WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| tenant_from_row(&r, 0)).transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT id, name, role, created_at FROM tenants ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| tenant_from_row(r, 0)).collect()
    }

    async fn insert_api_key(&self, k: &ApiKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, prefix, hash, created_at, name, scope, revoked_at, node_name, \
             project) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(k.id.to_string())
        .bind(k.tenant_id.to_string())
        .bind(&k.prefix)
        .bind(&k.hash)
        .bind(k.created_at.0)
        .bind(&k.name)
        .bind(k.scope.as_str())
        .bind(k.revoked_at.map(|t| t.0))
        .bind(k.node.as_deref())
        .bind(k.project.as_ref().map(|p| p.as_str().to_string()))
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, "api key"))?;
        Ok(())
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<(ApiKey, Tenant)>> {
        let row = sqlx::query(
            "SELECT t.id, t.name, t.role, t.created_at, k.id, k.prefix, k.hash, k.created_at, k.name, k.scope, k.revoked_at, k.node_name, \
             k.project FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let tenant = tenant_from_row(&r, 0)?;
        let key = crate::access::key_from_row(&r, 4, tenant.id.clone())?;
        Ok(Some((key, tenant)))
    }

    async fn insert_node(&self, n: &NewNode) -> Result<()> {
        insert_node_as(&self.pool, n, "fake", 0).await
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        load_nodes(&self.pool, Which::All).await
    }

    async fn get_node(&self, id: &NodeId) -> Result<Option<Node>> {
        Ok(load_nodes(&self.pool, Which::One(id, true)).await?.pop())
    }

    async fn get_node_bare(&self, id: &NodeId) -> Result<Option<Node>> {
        Ok(load_nodes(&self.pool, Which::One(id, false)).await?.pop())
    }

    async fn node_generations(&self) -> Result<Vec<(NodeId, i64)>> {
        let rows = sqlx::query("SELECT id, generation FROM nodes").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((parse("nodes", &r.try_get::<String, _>(0)?)?, r.try_get(1)?))).collect()
    }

    async fn nodes_by_id(&self, ids: &[NodeId]) -> Result<Vec<Node>> {
        let mut nodes = Vec::with_capacity(ids.len());
        // A bounded number of bind parameters a statement: both backends cap them.
        for chunk in ids.chunks(500) {
            nodes.extend(load_nodes(&self.pool, Which::Some(chunk)).await?);
        }
        Ok(nodes)
    }

    async fn list_regions(&self) -> Result<Vec<Region>> {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT region FROM nodes ORDER BY region").fetch_all(&self.pool).await?;
        names.iter().map(|r| Region::parse(r).map_err(|e| corrupt("nodes", e))).collect()
    }

    async fn set_node_state(&self, id: &NodeId, state: NodeState, drain_deadline: Option<Timestamp>) -> Result<bool> {
        let r =
            sqlx::query("UPDATE nodes SET state = $1, drain_deadline = $2, generation = generation + 1 WHERE id = $3")
                .bind(state.as_str())
                .bind(drain_deadline.filter(|_| state == NodeState::Draining).map(|t| t.0))
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_node_images(&self, id: &NodeId, images: &[String]) -> Result<()> {
        // The scheduler's cached view of a node is re-read when its generation moves, and images
        // break its ties: a change bumps it (agents report images only when they changed).
        let images = (!images.is_empty()).then(|| images.join("\n"));
        sqlx::query(
            "UPDATE nodes SET images = $1, generation = generation + 1 \
             WHERE id = $2 AND COALESCE(images, '') <> COALESCE($1, '')",
        )
        .bind(images)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_heartbeat(&self, id: &NodeId, at: Timestamp) -> Result<bool> {
        // A node that comes back healthy changes what the scheduler may use: bump its generation.
        let r = sqlx::query(
            "UPDATE nodes SET last_heartbeat = $1, health = 'healthy', \
             generation = CASE WHEN health = 'healthy' THEN generation ELSE generation + 1 END \
             WHERE id = $2",
        )
        .bind(at.0)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn register_agent_node(&self, n: &NewNode) -> Result<Node> {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM nodes WHERE name = $1").bind(&n.name).fetch_optional(&self.pool).await?;
        let id = match existing {
            Some(id) => {
                let id: NodeId = parse("nodes", &id)?;
                let known = self.get_node(&id).await?.ok_or_else(|| corrupt("nodes", "node vanished"))?;
                let same = known.gpus.len() == n.gpus.len()
                    && known
                        .gpus
                        .iter()
                        .zip(&n.gpus)
                        .all(|(a, b)| a.index == b.index && a.model == b.model && a.uuid == b.uuid);
                if !same || known.region != n.region {
                    return Err(StoreError::Conflict(format!(
                        "node '{}' with other GPUs or region (drain and remove it first, or use another name)",
                        n.name
                    )));
                }
                sqlx::query(
                    "UPDATE nodes SET driver = 'agent', epoch = epoch + 1, beat_seq = NULL, generation = generation + 1 \
                     WHERE id = $1",
                )
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
                id
            }
            // An agent's node is written as the agent's from its first row: a node seen as 'fake'
            // for a moment got an in-process fake agent too, whose epoch-less beats ran its
            // workloads a second time without their ports.
            None => {
                insert_node_as(&self.pool, n, "agent", 1).await?;
                n.id.clone()
            }
        };
        self.get_node(&id).await?.ok_or_else(|| corrupt("nodes", "node vanished"))
    }

    async fn set_gpu_health(&self, node: &NodeId, index: u32, healthy: bool) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT healthy FROM gpus WHERE node_id = $1 AND idx = $2")
            .bind(node.to_string())
            .bind(i64::from(index))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(current) = current else { return Ok(false) };
        if (current != 0) != healthy {
            sqlx::query("UPDATE gpus SET healthy = $1 WHERE node_id = $2 AND idx = $3")
                .bind(healthy as i64)
                .bind(node.to_string())
                .bind(i64::from(index))
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE nodes SET generation = generation + 1 WHERE id = $1")
                .bind(node.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn record_agent_heartbeat(&self, id: &NodeId, epoch: i64, seq: Option<i64>, at: Timestamp) -> Result<bool> {
        let q = match seq {
            // Taken only if numbered above the newest beat taken: one that arrives late is not.
            Some(_) => {
                "UPDATE nodes SET last_heartbeat = $1, health = 'healthy', \
                 generation = CASE WHEN health = 'healthy' THEN generation ELSE generation + 1 END, beat_seq = $4 \
                 WHERE id = $2 AND epoch = $3 AND (beat_seq IS NULL OR beat_seq < $4)"
            }
            None => {
                "UPDATE nodes SET last_heartbeat = $1, health = 'healthy', \
                 generation = CASE WHEN health = 'healthy' THEN generation ELSE generation + 1 END \
                 WHERE id = $2 AND epoch = $3"
            }
        };
        let mut q = sqlx::query(q).bind(at.0).bind(id.to_string()).bind(epoch);
        if let Some(seq) = seq {
            q = q.bind(seq);
        }
        Ok(q.execute(&self.pool).await?.rows_affected() == 1)
    }

    async fn append_logs(&self, instance: &InstanceId, chunks: &[LogChunk]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for c in chunks {
            sqlx::query(
                // The agent numbers a run's chunks from 1; they are filed after the earlier
                // runs' (a retried chunk lands on the same number and is dropped).
                "INSERT INTO instance_logs (instance_id, seq, at, data) \
                 SELECT $1, log_base + $2, $3, $4 FROM instances WHERE id = $1 \
                 ON CONFLICT (instance_id, seq) DO NOTHING",
            )
            .bind(instance.to_string())
            .bind(c.seq)
            .bind(c.at.0)
            .bind(&c.data)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn read_logs(&self, instance: &InstanceId, after_seq: i64, limit: u32) -> Result<Vec<LogChunk>> {
        let rows = sqlx::query(&format!(
            "SELECT seq, at, data FROM instance_logs WHERE instance_id = $1 AND seq > $2 ORDER BY seq LIMIT {limit}"
        ))
        .bind(instance.to_string())
        .bind(after_seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(LogChunk { seq: r.try_get(0)?, at: Timestamp(r.try_get(1)?), data: r.try_get(2)? }))
            .collect()
    }

    async fn mark_silent_nodes_lost(&self, cutoff: Timestamp, now: Timestamp) -> Result<Vec<LostNode>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM nodes WHERE health <> 'lost' AND last_heartbeat IS NOT NULL AND last_heartbeat < $1",
        )
        .bind(cutoff.0)
        .fetch_all(&self.pool)
        .await?;
        let mut lost = Vec::new();
        for id in ids {
            let mut tx = self.pool.begin().await?;
            // Re-checked inside the transaction: a heartbeat may have arrived since the scan.
            let row = sqlx::query(
                "SELECT last_heartbeat FROM nodes WHERE id = $1 AND health <> 'lost' AND last_heartbeat < $2",
            )
            .bind(&id)
            .bind(cutoff.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            let last: i64 = row.try_get(0)?;
            sqlx::query("UPDATE nodes SET health = 'lost', generation = generation + 1 WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE node_id = $1");
            let rows = sqlx::query(&sql).bind(&id).fetch_all(&mut *tx).await?;
            let mut instances = Vec::new();
            for r in &rows {
                let inst = instance_from_row(r)?;
                if !inst.state.holds_gpus() {
                    continue;
                }
                // Billing ends at the last sign of life, never before the interval began.
                let started: Option<i64> = sqlx::query_scalar(
                    "SELECT started_at FROM usage_intervals WHERE instance_id = $1 AND ended_at IS NULL",
                )
                .bind(inst.id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                let end = started.map_or(last, |s| s.max(last));
                sqlx::query("UPDATE usage_intervals SET ended_at = $1 WHERE instance_id = $2 AND ended_at IS NULL")
                    .bind(end)
                    .bind(inst.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                // One already on its way out ends where its user sent it: a terminate is not
                // undone by the node dying meanwhile.
                let to = match (inst.state, inst.stop_target) {
                    (InstanceState::Stopping, Some(StopTarget::Terminated)) => InstanceState::Terminated,
                    (InstanceState::Stopping, Some(StopTarget::Stopped)) => InstanceState::Stopped,
                    _ => InstanceState::Lost,
                };
                sqlx::query(
                    "UPDATE instances SET state = $3, stop_target = NULL, ran_on = node_id, node_id = NULL, \
                     generation = generation + 1, updated_at = $1 WHERE id = $2",
                )
                .bind(now.0)
                .bind(inst.id.to_string())
                .bind(to.as_str())
                .execute(&mut *tx)
                .await?;
                record_event(&mut tx, &inst.id, inst.generation + 1, Timestamp(end), Some(inst.state), to).await?;
                if to == InstanceState::Lost {
                    instances.push(inst.id);
                }
            }
            sqlx::query("UPDATE gpus SET instance_id = NULL WHERE node_id = $1").bind(&id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM gpu_slices WHERE node_id = $1").bind(&id).execute(&mut *tx).await?;
            tx.commit().await?;
            lost.push(LostNode { node: parse("nodes", &id)?, last_heartbeat: Timestamp(last), instances });
        }
        Ok(lost)
    }

    async fn insert_instance(&self, n: &NewInstance) -> Result<(Instance, bool)> {
        let mut tx = self.pool.begin().await?;
        let created = insert_instance_in(&mut tx, n).await?;
        tx.commit().await?;
        let found = if created {
            self.get_instance(Some(&n.tenant_id), &n.id).await?
        } else {
            let id: Option<String> =
                sqlx::query_scalar("SELECT id FROM instances WHERE tenant_id = $1 AND idempotency_key = $2")
                    .bind(n.tenant_id.to_string())
                    .bind(n.idempotency_key.clone().unwrap_or_default())
                    .fetch_optional(&self.pool)
                    .await?;
            match id {
                Some(id) => self.get_instance(Some(&n.tenant_id), &parse("instances", &id)?).await?,
                None => None,
            }
        };
        let inst = found.ok_or_else(|| corrupt("instances", format!("{} vanished after insert", n.id)))?;
        Ok((inst, created))
    }

    async fn insert_instances(&self, all: &[NewInstance]) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(all.len());
        for n in all {
            out.push(insert_instance_in(&mut tx, n).await?);
        }
        tx.commit().await?;
        Ok(out)
    }
    async fn get_instance(&self, tenant: Option<&TenantId>, id: &InstanceId) -> Result<Option<Instance>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND ($2 = '' OR tenant_id = $2)");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let mut inst = instance_from_row(&r)?;
        if inst.state.holds_gpus() {
            inst.gpus = self.gpus_of(GpuFilter::Instance(id.as_str())).await?.remove(id.as_str()).unwrap_or_default();
        }
        Ok(Some(inst))
    }

    async fn list_instances(&self, tenant: Option<&TenantId>) -> Result<Vec<Instance>> {
        match tenant {
            Some(t) => {
                self.instances_where(
                    "WHERE tenant_id = $1 ORDER BY created_at, id",
                    Some(t.to_string()),
                    GpuFilter::Tenant(t.as_str()),
                )
                .await
            }
            None => self.instances_where("ORDER BY created_at, id", None, GpuFilter::All).await,
        }
    }

    async fn instances_page(
        &self,
        tenant: &TenantId,
        project: Option<&gpucloud_model::ProjectName>,
        after: Option<(Timestamp, &str)>,
        limit: u32,
    ) -> Result<Vec<Instance>> {
        self.tenant_instances(tenant, project, after, None, Some(limit)).await
    }

    async fn instances_named(&self, tenant: &TenantId, name: &str) -> Result<Vec<Instance>> {
        self.tenant_instances(tenant, None, None, Some(name), None).await
    }

    async fn list_pending(&self, limit: u32) -> Result<Vec<Instance>> {
        let clause = format!("WHERE state = 'pending' AND quota_held = 0 ORDER BY created_at, id LIMIT {limit}");
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances {clause}");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn instances_in_states(&self, states: &[InstanceState]) -> Result<Vec<Instance>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        // The names come from the enum, not from input: inlined, not bound.
        let list: Vec<String> = states.iter().map(|s| format!("'{s}'")).collect();
        let clause = format!("WHERE state IN ({}) ORDER BY created_at, id", list.join(", "));
        self.instances_where(&clause, None, GpuFilter::All).await
    }

    async fn instances_on_node(&self, node: &NodeId) -> Result<Vec<Instance>> {
        self.instances_where(
            "WHERE node_id = $1 ORDER BY created_at, id",
            Some(node.to_string()),
            GpuFilter::Node(node.as_str()),
        )
        .await
    }

    async fn update_instance(
        &self,
        id: &InstanceId,
        expected_generation: i64,
        c: &InstanceChange,
    ) -> Result<Option<Instance>> {
        let mut tx = self.pool.begin().await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND generation = $2");
        let row = sqlx::query(&sql).bind(id.to_string()).bind(expected_generation).fetch_optional(&mut *tx).await?;
        let Some(row) = row else { return Ok(None) };
        let before = instance_from_row(&row)?;
        let node = before.node_id.as_ref().map(|n| n.to_string());
        // The guarded write comes first: under PostgreSQL a concurrent writer makes it match no
        // row, and then nothing else of ours is written.
        let keep_node = c.state.holds_gpus();
        // A run's preemption notice and start belong to that run: a new one starts clean.
        let updated = sqlx::query(
            "UPDATE instances SET state = $1, stop_target = $2, \
             exit_code = CASE WHEN $4 = 1 OR $1 = 'pending' THEN NULL ELSE COALESCE($3, exit_code) END, \
             ran_on = COALESCE(node_id, ran_on), \
             node_id = CASE WHEN $4 = 1 THEN node_id ELSE NULL END, generation = generation + 1, updated_at = $5, \
             running_since = CASE WHEN $4 = 0 THEN NULL WHEN $8 = 1 AND running_since IS NULL THEN $5 \
             ELSE running_since END, \
             notice_at = CASE WHEN $9 = 1 THEN NULL ELSE notice_at END, \
             notice_ms = CASE WHEN $9 = 1 THEN NULL ELSE notice_ms END, \
             notice_reason = CASE WHEN $9 = 1 THEN NULL ELSE notice_reason END, \
             preempt_at = CASE WHEN $9 = 1 THEN NULL ELSE preempt_at END \
             WHERE id = $6 AND generation = $7",
        )
        .bind(c.state.as_str())
        .bind(c.stop_target.map(|t| t.as_str().to_string()))
        .bind(c.exit_code.map(|v| v as i64))
        .bind(keep_node as i64)
        .bind(c.at.0)
        .bind(id.to_string())
        .bind(expected_generation)
        .bind(c.state.is_billable() as i64)
        .bind((c.state == InstanceState::Pending) as i64)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            // Another writer moved it between our read and our write (PostgreSQL runs these
            // concurrently): nothing of ours may be written.
            return Ok(None);
        }
        if c.state == InstanceState::Pending && !before.state.holds_gpus() && before.state != InstanceState::Pending {
            // A start: its GPUs count against its project's limit again.
            let milli = before.share.as_ref().map_or(u64::from(before.count) * 1000, |s| u64::from(s.milli));
            let p = &before.sale.project;
            crate::projects::admit_in(&mut tx, id, &before.tenant_id, p, before.model, milli, OnQuota::Fail).await?;
        }
        if InstanceState::opens_billing(Some(before.state), c.state) {
            open_interval(&mut tx, &before, expected_generation + 1, c.at).await?;
        } else if before.state.is_billable() && !c.state.is_billable() {
            sqlx::query("UPDATE usage_intervals SET ended_at = $1 WHERE instance_id = $2 AND ended_at IS NULL")
                .bind(c.at.0)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if c.state != before.state {
            record_event(&mut tx, id, expected_generation + 1, c.at, Some(before.state), c.state).await?;
        }
        if !keep_node && let Some(node) = node {
            let freed = sqlx::query("UPDATE gpus SET instance_id = NULL WHERE instance_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            let freed_slice = sqlx::query("DELETE FROM gpu_slices WHERE instance_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            if freed.rows_affected() + freed_slice.rows_affected() > 0 {
                sqlx::query("UPDATE nodes SET generation = generation + 1 WHERE id = $1")
                    .bind(node)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.get_instance(None, id).await
    }

    async fn apply_plan(&self, batches: &[NodeBatch], at: Timestamp) -> Result<Vec<ApplyOutcome>> {
        // One commit for the whole plan (one fsync on SQLite). A plan usually applies whole, so
        // first it is written as if it would: whole-GPU placements a few statements for the
        // whole plan, others node by node without savepoints (decision 0026). Should anything
        // have changed meanwhile, all of it is rolled back and applied again with a savepoint
        // per node, so a node that changed only loses its own batch.
        let mut tx = self.pool.begin().await?;
        let whole = batches.iter().all(|b| b.placements.iter().all(|p| p.volume.is_none() && p.share.is_none()));
        let optimistic =
            if whole { apply_bulk(&mut tx, batches, at).await? } else { apply_each(&mut tx, batches, at).await? };
        if let Some(outcomes) = optimistic {
            tx.commit().await?;
            return Ok(outcomes);
        }
        tx.rollback().await?;
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut savepoint = tx.begin().await?;
            let outcome = apply_batch(&mut savepoint, batch, at).await?;
            match outcome {
                ApplyOutcome::Applied { .. } => savepoint.commit().await?,
                ApplyOutcome::Conflict => savepoint.rollback().await?,
            }
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn set_pending_reason(&self, id: &InstanceId, reason: Option<&str>) -> Result<()> {
        // Not a state change: the generation stays, so it never races with one.
        sqlx::query("UPDATE instances SET pending_reason = $1 WHERE id = $2 AND state = 'pending'")
            .bind(reason.map(str::to_string))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_status_reason(&self, id: &InstanceId, reason: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE instances SET status_reason = $1 WHERE id = $2")
            .bind(reason.map(str::to_string))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn instance_events(&self, id: &InstanceId) -> Result<Vec<InstanceEvent>> {
        let rows = sqlx::query(
            "SELECT generation, at, from_state, to_state FROM instance_events WHERE instance_id = $1 ORDER BY generation",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let t = "instance_events";
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get(2)?;
                Ok(InstanceEvent {
                    generation: r.try_get(0)?,
                    at: Timestamp(r.try_get(1)?),
                    from: from.map(|f| parse::<InstanceState>(t, &f)).transpose()?,
                    to: parse::<InstanceState>(t, &r.try_get::<String, _>(3)?)?,
                })
            })
            .collect()
    }

    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        owner: &str,
        now: Timestamp,
        staleness: Staleness,
    ) -> Result<IdempotencyBegin> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (scope, key, fingerprint, owner, status, body, created_at) \
             VALUES ($1, $2, $3, $4, NULL, NULL, $5) ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(owner)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyBegin::Started);
        }
        let row = sqlx::query(
            "SELECT fingerprint, status, body, created_at, owner FROM idempotency WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            // Abandoned between our insert and read: treat as in progress; the client retries.
            return Ok(IdempotencyBegin::InProgress);
        };
        let fp: String = r.try_get(0)?;
        let status: Option<i64> = r.try_get(1)?;
        let body: Option<String> = r.try_get(2)?;
        let created: i64 = r.try_get(3)?;
        let holder: String = r.try_get(4)?;
        if fp != fingerprint {
            return Ok(IdempotencyBegin::Mismatch);
        }
        if let (Some(status), Some(body)) = (status, body) {
            return Ok(IdempotencyBegin::Replay { status: status as u16, body });
        }
        let limit = if holder == owner { staleness.own_ms } else { staleness.foreign_ms };
        if now.0 - created >= limit {
            // The request that took the key died without finishing: the retry takes it over.
            let took = sqlx::query(
                "UPDATE idempotency SET created_at = $1, owner = $2 \
                 WHERE scope = $3 AND key = $4 AND created_at = $5 AND owner = $6 AND status IS NULL",
            )
            .bind(now.0)
            .bind(owner)
            .bind(scope)
            .bind(key)
            .bind(created)
            .bind(&holder)
            .execute(&self.pool)
            .await?;
            if took.rows_affected() == 1 {
                return Ok(IdempotencyBegin::Started);
            }
        }
        Ok(IdempotencyBegin::InProgress)
    }

    async fn idempotency_finish(&self, scope: &str, key: &str, status: u16, body: &str) -> Result<()> {
        sqlx::query("UPDATE idempotency SET status = $1, body = $2 WHERE scope = $3 AND key = $4")
            .bind(status as i64)
            .bind(body)
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency WHERE scope = $1 AND key = $2 AND status IS NULL")
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_node_address(&self, id: &gpucloud_model::NodeId, address: Option<&str>) -> Result<()> {
        // Bumps the generation, as every change to what `Store::list_nodes` returns but the
        // heartbeat's time does: a cached view of the node is re-read.
        sqlx::query("UPDATE nodes SET address = $1, generation = generation + 1 WHERE id = $2")
            .bind(address.map(str::to_string))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_node_labels(
        &self,
        id: &gpucloud_model::NodeId,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let pairs: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        sqlx::query("UPDATE nodes SET labels = $1, generation = generation + 1 WHERE id = $2")
            .bind(crate::market::encode_env(&pairs))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_instance_endpoint(&self, id: &InstanceId, endpoint: &str) -> Result<()> {
        // Not a state change: the generation stays, so no reconciler's compare-and-set loses.
        sqlx::query("UPDATE instances SET endpoint = $1 WHERE id = $2")
            .bind(endpoint)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Every batch in turn, none isolated from the others: `None` as soon as one conflicts (the
/// caller rolls all of it back).
async fn apply_each(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batches: &[NodeBatch],
    at: Timestamp,
) -> Result<Option<Vec<ApplyOutcome>>> {
    let mut outcomes = Vec::with_capacity(batches.len());
    for batch in batches {
        match apply_batch(tx, batch, at).await? {
            ApplyOutcome::Conflict => return Ok(None),
            applied => outcomes.push(applied),
        }
    }
    Ok(Some(outcomes))
}

/// How much one statement of `apply_bulk` carries: at 2 bind parameters a node, 4 a placement
/// and 3 a GPU, well under both backends' limits (SQLite's is 32,766) whatever a node's size.
const BULK_NODES: usize = 250;
const BULK_GPUS: usize = 2_000;

/// `batches` cut into runs of at most `BULK_NODES` nodes and `BULK_GPUS` GPUs (a lone batch
/// larger than that stays whole).
fn bulk_chunks(batches: &[NodeBatch]) -> Vec<&[NodeBatch]> {
    let gpus = |b: &NodeBatch| b.placements.iter().map(|p| p.gpus.len().max(1)).sum::<usize>();
    let (mut chunks, mut start, mut held) = (Vec::new(), 0, 0);
    for (i, b) in batches.iter().enumerate() {
        let g = gpus(b);
        if i > start && (i - start == BULK_NODES || held + g > BULK_GPUS) {
            chunks.push(&batches[start..i]);
            (start, held) = (i, 0);
        }
        held += g;
    }
    if start < batches.len() {
        chunks.push(&batches[start..]);
    }
    chunks
}

/// Whole-GPU batches as four statements per `bulk_chunks` run instead of three per placement:
/// what `apply_batch` writes for each, with the same guards. `None` when any guard fails (a node
/// moved, a GPU was taken): which one is not worked out here, the caller rolls back and applies
/// node by node.
async fn apply_bulk(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batches: &[NodeBatch],
    at: Timestamp,
) -> Result<Option<Vec<ApplyOutcome>>> {
    let mut outcomes = Vec::with_capacity(batches.len());
    for chunk in bulk_chunks(batches) {
        let sql = format!(
            "UPDATE nodes SET generation = generation + 1 FROM (VALUES {}) AS v \
             WHERE nodes.id = v.column1 AND nodes.generation = v.column2 \
             AND nodes.state = 'ready' AND nodes.health = 'healthy'",
            placeholders(chunk.len(), 2, 1)
        );
        let mut q = sqlx::query(&sql);
        for b in chunk {
            q = q.bind(b.node.to_string()).bind(b.node_generation);
        }
        if q.execute(&mut **tx).await?.rows_affected() != chunk.len() as u64 {
            return Ok(None);
        }
        let placements: Vec<(&NodeBatch, &NewPlacement)> =
            chunk.iter().flat_map(|b| b.placements.iter().map(move |p| (b, p))).collect();
        let mut moved: HashSet<String> = HashSet::new();
        if !placements.is_empty() {
            let sql = format!(
                "UPDATE instances SET state = 'provisioning', node_id = v.column3, pending_reason = NULL, \
                 status_reason = NULL, exit_code = NULL, generation = generation + 1, updated_at = $1, \
                 placement_note = v.column4, \
                 log_base = COALESCE((SELECT MAX(l.seq) FROM instance_logs l WHERE l.instance_id = instances.id), 0) \
                 FROM (VALUES {}) AS v \
                 WHERE instances.id = v.column1 AND instances.state = 'pending' AND instances.quota_held = 0 \
                 AND instances.generation = v.column2 RETURNING instances.id",
                placeholders(placements.len(), 4, 2)
            );
            let mut q = sqlx::query(&sql).bind(at.0);
            for (b, p) in &placements {
                q = q
                    .bind(p.instance.to_string())
                    .bind(p.instance_generation)
                    .bind(b.node.to_string())
                    .bind(p.note.clone());
            }
            for r in q.fetch_all(&mut **tx).await? {
                moved.insert(r.try_get::<String, _>(0)?);
            }
        }
        // Those that left pending meanwhile (stopped, terminated) are skipped, as node by node.
        let taken: Vec<&(&NodeBatch, &NewPlacement)> =
            placements.iter().filter(|(_, p)| moved.contains(&p.instance.to_string())).collect();
        if !taken.is_empty() {
            let sql = format!(
                "INSERT INTO instance_events (instance_id, generation, at, from_state, to_state) VALUES {}",
                placeholders(taken.len(), 5, 1)
            );
            let mut q = sqlx::query(&sql);
            for (_, p) in &taken {
                q = q
                    .bind(p.instance.to_string())
                    .bind(p.instance_generation + 1)
                    .bind(at.0)
                    .bind(InstanceState::Pending.as_str())
                    .bind(InstanceState::Provisioning.as_str());
            }
            q.execute(&mut **tx).await?;
            let gpus: Vec<(&NodeBatch, &NewPlacement, u32)> =
                taken.iter().flat_map(|(b, p)| p.gpus.iter().map(move |g| (*b, *p, *g))).collect();
            if !gpus.is_empty() {
                let sql = format!(
                    "UPDATE gpus SET instance_id = v.column3 FROM (VALUES {}) AS v \
                     WHERE gpus.node_id = v.column1 AND gpus.idx = v.column2 \
                     AND gpus.instance_id IS NULL AND gpus.healthy = 1 \
                     AND NOT EXISTS (SELECT 1 FROM gpu_slices s WHERE s.node_id = gpus.node_id AND s.idx = gpus.idx)",
                    placeholders(gpus.len(), 3, 1)
                );
                let mut q = sqlx::query(&sql);
                for (b, p, g) in &gpus {
                    q = q.bind(b.node.to_string()).bind(i64::from(*g)).bind(p.instance.to_string());
                }
                if q.execute(&mut **tx).await?.rows_affected() != gpus.len() as u64 {
                    return Ok(None);
                }
            }
        }
        for b in chunk {
            let placed =
                b.placements.iter().filter(|p| moved.contains(&p.instance.to_string())).map(|p| p.instance.clone());
            outcomes.push(ApplyOutcome::Applied { placed: placed.collect() });
        }
    }
    Ok(Some(outcomes))
}

async fn apply_batch(tx: &mut sqlx::Transaction<'_, sqlx::Any>, b: &NodeBatch, at: Timestamp) -> Result<ApplyOutcome> {
    let node = b.node.to_string();
    let bumped = sqlx::query(
        "UPDATE nodes SET generation = generation + 1 \
         WHERE id = $1 AND generation = $2 AND state = 'ready' AND health = 'healthy'",
    )
    .bind(&node)
    .bind(b.node_generation)
    .execute(&mut **tx)
    .await?;
    if bumped.rows_affected() != 1 {
        return Ok(ApplyOutcome::Conflict);
    }
    let mut placed = Vec::new();
    for p in &b.placements {
        let moved = sqlx::query(
            "UPDATE instances SET state = 'provisioning', node_id = $1, pending_reason = NULL, status_reason = NULL, \
             exit_code = NULL, generation = generation + 1, updated_at = $2, placement_note = $5, \
             log_base = COALESCE((SELECT MAX(l.seq) FROM instance_logs l WHERE l.instance_id = $3), 0) \
             WHERE id = $3 AND state = 'pending' AND quota_held = 0 AND generation = $4",
        )
        .bind(&node)
        .bind(at.0)
        .bind(p.instance.to_string())
        .bind(p.instance_generation)
        .bind(p.note.clone())
        .execute(&mut **tx)
        .await?;
        if moved.rows_affected() != 1 {
            // It left pending meanwhile (stopped, terminated): skip it, keep the rest.
            continue;
        }
        let (from, to) = (Some(InstanceState::Pending), InstanceState::Provisioning);
        record_event(tx, &p.instance, p.instance_generation + 1, at, from, to).await?;
        if let Some(volume) = &p.volume {
            // Its data lives where it is first used; a plan made before it was bound elsewhere
            // loses its node's batch and is made again.
            sqlx::query("UPDATE volumes SET node_id = $1 WHERE id = $2 AND node_id IS NULL")
                .bind(&node)
                .bind(volume.to_string())
                .execute(&mut **tx)
                .await?;
            let here: Option<String> = sqlx::query_scalar("SELECT node_id FROM volumes WHERE id = $1")
                .bind(volume.to_string())
                .fetch_optional(&mut **tx)
                .await?
                .flatten();
            if here.as_deref() != Some(node.as_str()) {
                return Ok(ApplyOutcome::Conflict);
            }
        }
        if let Some(share) = &p.share {
            if !take_slice(tx, &node, p, share).await? {
                return Ok(ApplyOutcome::Conflict);
            }
            placed.push(p.instance.clone());
            continue;
        }
        let slots: Vec<String> = (0..p.gpus.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "UPDATE gpus SET instance_id = $1 WHERE node_id = $2 AND instance_id IS NULL AND healthy = 1 \
             AND NOT EXISTS (SELECT 1 FROM gpu_slices s WHERE s.node_id = gpus.node_id AND s.idx = gpus.idx) \
             AND idx IN ({})",
            slots.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(p.instance.to_string()).bind(&node);
        for idx in &p.gpus {
            q = q.bind(*idx as i64);
        }
        let took = q.execute(&mut **tx).await?;
        if took.rows_affected() != p.gpus.len() as u64 {
            return Ok(ApplyOutcome::Conflict);
        }
        placed.push(p.instance.clone());
    }
    Ok(ApplyOutcome::Applied { placed })
}

/// Takes a slice of one GPU if it still has room: not held whole, healthy, compute and memory
/// left, and no slice of the other kind (MIG vs time-sliced) on it.
async fn take_slice(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    node: &str,
    p: &NewPlacement,
    share: &GpuShare,
) -> Result<bool> {
    let [idx] = p.gpus[..] else {
        return Ok(false);
    };
    let took = sqlx::query(
        "INSERT INTO gpu_slices (instance_id, node_id, idx, milli, mem_mib, mig) \
         SELECT $1, $2, $3, $4, $5, $6 FROM gpus g \
         WHERE g.node_id = $2 AND g.idx = $3 AND g.instance_id IS NULL AND g.healthy = 1 \
         AND (SELECT COALESCE(SUM(milli), 0) FROM gpu_slices WHERE node_id = $2 AND idx = $3) + $4 <= 1000 \
         AND (SELECT COALESCE(SUM(mem_mib), 0) FROM gpu_slices WHERE node_id = $2 AND idx = $3) + $5 <= $7 \
         AND NOT EXISTS (SELECT 1 FROM gpu_slices WHERE node_id = $2 AND idx = $3 AND mig <> $6)",
    )
    .bind(p.instance.to_string())
    .bind(node)
    .bind(idx as i64)
    .bind(share.milli as i64)
    .bind(share.memory_mib as i64)
    .bind(share.mig.is_some() as i64)
    .bind(p.gpu_memory_mib as i64)
    .execute(&mut **tx)
    .await?;
    Ok(took.rows_affected() == 1)
}

async fn record_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &InstanceId,
    generation: i64,
    at: Timestamp,
    from: Option<InstanceState>,
    to: InstanceState,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO instance_events (instance_id, generation, at, from_state, to_state) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.to_string())
    .bind(generation)
    .bind(at.0)
    .bind(from.map(|f| f.as_str().to_string()))
    .bind(to.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts one instance (skipped when its tenant used its idempotency key before) with its first
/// event, inside the caller's transaction; true if it was created.
async fn insert_instance_in(tx: &mut sqlx::Transaction<'_, sqlx::Any>, n: &NewInstance) -> Result<bool> {
    let r = sqlx::query(
            "INSERT INTO instances (id, tenant_id, name, region, gpu_model, gpu_count, command, state, \
             stop_target, node_id, generation, pending_reason, exit_code, idempotency_key, created_at, updated_at, \
             gpu_milli, gpu_mem_mib, mig_profile, tier, max_price_micros, env, job_id, attempt, cluster_id, cluster_rank, \
             pool_id, image, ports, volume_id, volume_mount, project, priority) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', NULL, NULL, 1, NULL, NULL, $8, $9, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26) \
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
        )
        .bind(n.id.to_string())
        .bind(n.tenant_id.to_string())
        .bind(&n.name)
        .bind(n.region.as_ref().map(|r| r.to_string()))
        .bind(n.model.name())
        .bind(n.count as i64)
        .bind(&n.command)
        .bind(n.idempotency_key.clone())
        .bind(n.created_at.0)
        .bind(n.share.as_ref().map_or(1000, |s| s.milli as i64))
        .bind(n.share.as_ref().map_or(0, |s| s.memory_mib as i64))
        .bind(n.share.as_ref().and_then(|s| s.mig.clone()))
        .bind(n.sale.tier.as_str())
        .bind(n.sale.max_price.map(|m| m.micros()))
        .bind(crate::market::encode_env(&n.sale.env))
        .bind(n.sale.job.as_ref().map(|(j, _)| j.to_string()))
        .bind(n.sale.job.as_ref().map(|(_, a)| i64::from(*a)))
        .bind(n.sale.cluster.as_ref().map(|(c, _)| c.to_string()))
        .bind(n.sale.cluster.as_ref().map(|(_, r)| i64::from(*r)))
        .bind(n.sale.pool.as_ref().map(|p| p.to_string()))
        .bind(n.sale.image.clone())
        .bind(crate::market::encode_ports(&n.sale.ports))
        .bind(n.sale.volume.as_ref().map(|(v, _)| v.to_string()))
        .bind(n.sale.volume.as_ref().map(|(_, m)| m.to_string()))
        .bind(n.sale.project.as_str())
        .bind(n.sale.priority.as_str())
        .execute(&mut **tx)
        .await
        .map_err(|e| unique_violation(e, &format!("instance {}", n.id)))?;
    let created = r.rows_affected() == 1;
    if created {
        let milli = n.share.as_ref().map_or(u64::from(n.count) * 1000, |s| u64::from(s.milli));
        crate::projects::admit_in(tx, &n.id, &n.tenant_id, &n.sale.project, n.model, milli, n.sale.on_quota).await?;
        record_event(tx, &n.id, 1, n.created_at, None, InstanceState::Pending).await?;
        if let Some((volume, _)) = &n.sale.volume {
            // Taken in the same transaction: either the instance exists holding its volume, or
            // neither changed (a live instance holds it; the caller's transaction rolls back).
            let took = sqlx::query(&format!(
                "UPDATE volumes SET instance_id = $1 WHERE id = $2 AND deleted_at IS NULL AND {}",
                crate::volume::FREE
            ))
            .bind(n.id.to_string())
            .bind(volume.to_string())
            .execute(&mut **tx)
            .await?;
            if took.rows_affected() != 1 {
                return Err(StoreError::VolumeInUse(volume.clone()));
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(k: usize, placements: usize, gpus_each: u32) -> NodeBatch {
        let placements = (0..placements)
            .map(|p| NewPlacement {
                instance: InstanceId::from_random((k * 1000 + p) as u128),
                instance_generation: 1,
                gpus: (0..gpus_each).collect(),
                share: None,
                gpu_memory_mib: 0,
                volume: None,
                note: None,
            })
            .collect();
        NodeBatch { node: NodeId::from_random(k as u128), node_generation: 1, placements }
    }

    #[test]
    fn bulk_runs_stay_under_the_bind_limits_whatever_the_node_size() {
        for (nodes, placements, gpus_each) in [(600, 8, 1), (600, 1, 8), (100, 64, 1), (3, 1, 4000), (0, 0, 0)] {
            let batches: Vec<NodeBatch> = (0..nodes).map(|k| batch(k, placements, gpus_each)).collect();
            let chunks = bulk_chunks(&batches);
            assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), nodes, "every batch once, in order");
            for c in &chunks {
                let gpus: usize = c.iter().flat_map(|b| &b.placements).map(|p| p.gpus.len()).sum();
                let params = 2 * c.len() + 4 * c.iter().map(|b| b.placements.len()).sum::<usize>() + 3 * gpus;
                assert!(c.len() == 1 || (c.len() <= BULK_NODES && gpus <= BULK_GPUS), "{} nodes, {gpus} GPUs", c.len());
                assert!(c.len() == 1 || params < 32_766, "{params} bind parameters");
            }
        }
        let eight: Vec<NodeBatch> = (0..600).map(|k| batch(k, 8, 1)).collect();
        assert_eq!(bulk_chunks(&eight).iter().map(|c| c.len()).collect::<Vec<_>>(), vec![250, 250, 100]);
    }
}
