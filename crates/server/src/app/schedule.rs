use super::App;
use gpucloud_model::InstanceId;
use gpucloud_sched::{ClusterSnapshot, GpuView, NodeView, Pending, plan};
use gpucloud_store::{ApplyOutcome, NewPlacement, Node, NodeBatch, StoreError};
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};

/// At most this many pending instances are considered per pass; the rest wait for the next.
const PENDING_BATCH: u32 = 10_000;

/// What one scheduling pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub placed: usize,
    pub unplaced: usize,
    pub conflicts: usize,
}

pub fn snapshot_of(nodes: &[Node]) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes: nodes
            .iter()
            .map(|n| NodeView {
                id: n.id.clone(),
                region: n.region.clone(),
                generation: n.generation,
                state: n.state,
                health: n.health,
                gpus: n
                    .gpus
                    .iter()
                    .map(|g| GpuView {
                        index: g.index,
                        model: g.model,
                        allocated: g.instance.is_some(),
                        healthy: g.healthy,
                        slice_milli: g.slices.iter().map(|s| s.milli).sum(),
                        slice_mem_mib: g.slices.iter().map(|s| s.memory_mib).sum(),
                        mig: g.slices.iter().any(|s| s.mig),
                    })
                    .collect(),
            })
            .collect(),
    }
}

impl App {
    /// One reconcile pass: read the queue and the fleet, plan, apply per node with a generation
    /// check, and record why the rest waits. Nodes that changed meanwhile are re-planned on the
    /// next pass (run again at once when there were conflicts).
    pub async fn schedule_pass(&self) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        for _round in 0..4 {
            let pending = self.store.list_pending(PENDING_BATCH).await?;
            if pending.is_empty() {
                return Ok(report);
            }
            let nodes = self.store.list_nodes().await?;
            let snapshot = snapshot_of(&nodes);
            let queue: Vec<Pending> = pending
                .iter()
                .map(|i| Pending {
                    instance: i.id.clone(),
                    model: i.model,
                    count: i.count,
                    region: i.region.clone(),
                    share: i.share.clone(),
                })
                .collect();
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let plan = plan(&snapshot, &queue, self.config.policy, self.now(), &mut rng);

            let by_id: HashMap<&InstanceId, _> = pending.iter().map(|i| (&i.id, i)).collect();
            for u in &plan.unplaced {
                let reason = u.reason.to_string();
                if by_id.get(&u.instance).is_some_and(|i| i.pending_reason.as_deref() != Some(&reason)) {
                    self.store.set_pending_reason(&u.instance, Some(&reason)).await?;
                }
            }
            report.unplaced = plan.unplaced.len();

            let mut per_node: BTreeMap<_, (i64, Vec<NewPlacement>)> = BTreeMap::new();
            for p in &plan.placements {
                let inst = by_id[&p.instance];
                let generation = inst.generation;
                per_node.entry(p.node.clone()).or_insert_with(|| (p.node_generation, Vec::new())).1.push(
                    NewPlacement {
                        instance: p.instance.clone(),
                        instance_generation: generation,
                        gpus: p.gpus.clone(),
                        share: inst.share.clone(),
                        gpu_memory_mib: inst.model.memory_mib(),
                    },
                );
            }
            let batches: Vec<NodeBatch> = per_node
                .into_iter()
                .map(|(node, (node_generation, placements))| NodeBatch { node, node_generation, placements })
                .collect();
            let mut conflicts = 0;
            let outcomes = self.store.apply_plan(&batches, self.now()).await?;
            for (batch, outcome) in batches.iter().zip(outcomes) {
                match outcome {
                    ApplyOutcome::Applied { placed } => {
                        for id in &placed {
                            tracing::info!(instance = %id, node = %batch.node, "placed");
                        }
                        report.placed += placed.len();
                    }
                    ApplyOutcome::Conflict => conflicts += 1,
                }
            }
            report.conflicts += conflicts;
            if conflicts == 0 {
                break;
            }
        }
        Ok(report)
    }
}
