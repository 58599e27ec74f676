//! Node rows: how a node and its GPUs (and their slices) are written and read back, shared by
//! the store's trait implementation in `sql.rs`.

use crate::sql::{corrupt, parse, unique_violation};
use crate::{Gpu, GpuSlice, NewNode, Node, NodeDriver, Result};
use gpucloud_model::{GpuModel, InstanceId, NodeHealth, NodeId, NodeState, Region, Timestamp};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;

/// Which nodes `load_nodes` reads.
pub(crate) enum Which<'a> {
    All,
    /// One, with its slices or without them.
    One(&'a NodeId, bool),
    Some(&'a [NodeId]),
}

/// A node and its GPUs in one transaction, driven by `driver` from its first row.
pub(crate) async fn insert_node_as(pool: &AnyPool, n: &NewNode, driver: &str, epoch: i64) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO nodes (id, name, region, state, health, generation, last_heartbeat, created_at, driver, epoch) \
         VALUES ($1, $2, $3, 'ready', 'unhealthy', 1, NULL, $4, $5, $6)",
    )
    .bind(n.id.to_string())
    .bind(&n.name)
    .bind(n.region.to_string())
    .bind(n.created_at.0)
    .bind(driver)
    .bind(epoch)
    .execute(&mut *tx)
    .await
    .map_err(|e| unique_violation(e, &format!("node '{}'", n.name)))?;
    for g in &n.gpus {
        sqlx::query("INSERT INTO gpus (node_id, idx, model, uuid, instance_id) VALUES ($1, $2, $3, $4, NULL)")
            .bind(n.id.to_string())
            .bind(g.index as i64)
            .bind(g.model.name())
            .bind(&g.uuid)
            .execute(&mut *tx)
            .await
            .map_err(|e| unique_violation(e, &format!("GPU {} of node '{}'", g.uuid, n.name)))?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn load_nodes(pool: &AnyPool, which: Which<'_>) -> Result<Vec<Node>> {
    let t = "nodes";
    // A statement shape per case rather than `($1 = '' OR id = $1)`, which would scan every GPU
    // row to read one node.
    let node_cols = "SELECT id, name, region, state, health, generation, last_heartbeat, created_at, driver, epoch, address, labels, drain_deadline, images FROM nodes";
    let gpu_cols = "SELECT node_id, idx, model, uuid, instance_id, healthy FROM gpus";
    let slice_cols = "SELECT s.node_id, s.idx, s.instance_id, s.milli, s.mem_mib, s.mig, i.tenant_id \
                      FROM gpu_slices s JOIN instances i ON i.id = s.instance_id";
    let (rows, gpu_rows, slice_rows) = match which {
        Which::One(id, slices) => (
            sqlx::query(&format!("{node_cols} WHERE id = $1")).bind(id.to_string()).fetch_all(pool).await?,
            sqlx::query(&format!("{gpu_cols} WHERE node_id = $1 ORDER BY idx"))
                .bind(id.to_string())
                .fetch_all(pool)
                .await?,
            if slices {
                sqlx::query(&format!("{slice_cols} WHERE s.node_id = $1 ORDER BY s.idx, s.instance_id"))
                    .bind(id.to_string())
                    .fetch_all(pool)
                    .await?
            } else {
                Vec::new()
            },
        ),
        Which::Some(ids) => {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let list = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let read = |sql: String| {
                let ids = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>();
                async move {
                    let mut q = sqlx::query(&sql);
                    for id in ids {
                        q = q.bind(id);
                    }
                    q.fetch_all(pool).await
                }
            };
            (
                read(format!("{node_cols} WHERE id IN ({list}) ORDER BY name")).await?,
                read(format!("{gpu_cols} WHERE node_id IN ({list}) ORDER BY node_id, idx")).await?,
                read(format!("{slice_cols} WHERE s.node_id IN ({list}) ORDER BY s.node_id, s.idx, s.instance_id"))
                    .await?,
            )
        }
        Which::All => (
            sqlx::query(&format!("{node_cols} ORDER BY name")).fetch_all(pool).await?,
            sqlx::query(&format!("{gpu_cols} ORDER BY node_id, idx")).fetch_all(pool).await?,
            sqlx::query(&format!("{slice_cols} ORDER BY s.node_id, s.idx, s.instance_id")).fetch_all(pool).await?,
        ),
    };
    let mut slices: HashMap<(String, i64), Vec<GpuSlice>> = HashMap::new();
    for r in &slice_rows {
        slices.entry((r.try_get(0)?, r.try_get(1)?)).or_default().push(GpuSlice {
            instance: parse("gpu_slices", &r.try_get::<String, _>(2)?)?,
            milli: r.try_get::<i64, _>(3)? as u32,
            memory_mib: r.try_get::<i64, _>(4)? as u64,
            mig: r.try_get::<i64, _>(5)? != 0,
            tenant: parse("gpu_slices", &r.try_get::<String, _>(6)?)?,
        });
    }
    let mut gpus: HashMap<String, Vec<Gpu>> = HashMap::new();
    for r in &gpu_rows {
        let node_id: String = r.try_get(0)?;
        let idx: i64 = r.try_get(1)?;
        let instance: Option<String> = r.try_get(4)?;
        let on_gpu = slices.remove(&(node_id.clone(), idx)).unwrap_or_default();
        gpus.entry(node_id).or_default().push(Gpu {
            slices: on_gpu,
            index: idx as u32,
            model: parse::<GpuModel>("gpus", &r.try_get::<String, _>(2)?)?,
            uuid: r.try_get(3)?,
            instance: instance.map(|i| parse::<InstanceId>("gpus", &i)).transpose()?,
            healthy: r.try_get::<i64, _>(5)? != 0,
        });
    }
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0)?;
            let region: String = r.try_get(2)?;
            let hb: Option<i64> = r.try_get(6)?;
            let driver: String = r.try_get(8)?;
            Ok(Node {
                id: parse(t, &id)?,
                driver: if driver == "agent" { NodeDriver::Agent } else { NodeDriver::Fake },
                epoch: r.try_get(9)?,
                name: r.try_get(1)?,
                region: Region::parse(&region).map_err(|e| corrupt(t, e))?,
                state: parse::<NodeState>(t, &r.try_get::<String, _>(3)?)?,
                health: parse::<NodeHealth>(t, &r.try_get::<String, _>(4)?)?,
                generation: r.try_get(5)?,
                last_heartbeat: hb.map(Timestamp),
                created_at: Timestamp(r.try_get(7)?),
                address: r.try_get(10)?,
                labels: r
                    .try_get::<Option<String>, _>(11)?
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                    .collect(),
                gpus: gpus.remove(&id).unwrap_or_default(),
                drain_deadline: r.try_get::<Option<i64>, _>(12)?.map(Timestamp),
                images: r
                    .try_get::<Option<String>, _>(13)?
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}
