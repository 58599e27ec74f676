//! `plan()` through the slice placer: the snapshot becomes [`share::Node`]s (one per node and GPU
//! model, GPUs carrying what slices and whole allocations left free), the queue becomes asks, and
//! the typical workload FGD needs is what the queue and the fleet hold right now.

use crate::share::{self, Ask, Gpu, GpuMode, MILLI, ModelSet, Placer, SharePolicy};
use crate::{ClusterSnapshot, Pending, Placement, Plan, Unplaced, explain, index::schedulable};
use gpucloud_model::GpuModel;
use rand::RngCore;
use std::collections::HashMap;

fn model_id(m: GpuModel) -> u16 {
    GpuModel::ALL.iter().position(|x| *x == m).unwrap_or(0) as u16
}

/// Small numbers for the tenants of one pass: the placer compares tags, not ids.
#[derive(Default)]
struct Tags(HashMap<gpucloud_model::TenantId, u32>);

impl Tags {
    fn of(&mut self, t: &Option<gpucloud_model::TenantId>) -> u32 {
        let Some(t) = t else { return 0 };
        let next = self.0.len() as u32 + 1;
        *self.0.entry(t.clone()).or_insert(next)
    }
}

fn ask_of(p: &Pending, tags: &mut Tags) -> Ask {
    let models = ModelSet::only(model_id(p.model));
    match &p.share {
        Some(s) => Ask {
            cpu_milli: 0,
            mem_mib: 0,
            num_gpu: 1,
            gpu_milli: s.milli.clamp(1, MILLI),
            gpu_mem_mib: s.memory_mib,
            models,
            mig: s.mig.is_some(),
            // MIG slices are isolated by the hardware; time-sliced ones are kept per tenant.
            tenant: if s.mig.is_some() { 0 } else { tags.of(&p.tenant) },
        },
        None => Ask::whole(p.count, models),
    }
}

pub(crate) fn plan(
    snapshot: &ClusterSnapshot,
    pending: &[Pending],
    policy: SharePolicy,
    power: crate::PowerWeight,
    rng: &mut dyn RngCore,
) -> Plan {
    let mut order: Vec<usize> = (0..snapshot.nodes.len()).collect();
    order.sort_by(|&a, &b| snapshot.nodes[a].id.cmp(&snapshot.nodes[b].id));
    let mut nodes = Vec::new();
    // Placer node -> (snapshot ordinal, GPU index of each of its GPUs).
    let mut origin: Vec<(usize, Vec<u32>)> = Vec::new();
    let mut workload: Vec<Ask> = Vec::new();
    let mut tags = Tags::default();
    for &ord in &order {
        let n = &snapshot.nodes[ord];
        if !schedulable(n) {
            continue;
        }
        for model in GpuModel::ALL {
            let views: Vec<_> = n.gpus.iter().filter(|g| g.model == model).collect();
            if views.is_empty() {
                continue;
            }
            let models = ModelSet::only(model_id(model));
            let gpus = views
                .iter()
                .map(|g| Gpu {
                    free_milli: if g.allocated { 0 } else { MILLI.saturating_sub(g.slice_milli) },
                    free_mem_mib: if g.allocated { 0 } else { model.memory_mib().saturating_sub(g.slice_mem_mib) },
                    healthy: g.healthy,
                    mode: match (g.slice_milli > 0, g.mig) {
                        (false, _) => GpuMode::Open,
                        (true, false) if n.open_time_slicing => GpuMode::Shared(0),
                        (true, false) => GpuMode::Shared(tags.of(&g.slice_tenant)),
                        (true, true) => GpuMode::Mig,
                    },
                })
                .collect();
            let mut node = share::Node::new(model_id(model), 0, 0, gpus);
            node.open_sharing = n.open_time_slicing;
            for g in &views {
                let held = if g.allocated {
                    Some(Ask::whole(1, models))
                } else if g.slice_milli > 0 {
                    Some(Ask { gpu_milli: g.slice_milli.min(MILLI), mig: g.mig, ..Ask::whole(1, models) })
                } else {
                    None
                };
                if let Some(a) = held {
                    node.note_task(&a);
                    workload.push(a);
                }
            }
            nodes.push(node);
            origin.push((ord, views.iter().map(|g| g.index).collect()));
        }
    }
    let asks: Vec<Ask> = pending.iter().map(|p| ask_of(p, &mut tags)).collect();
    workload.extend(asks.iter().cloned());
    let typical = share::typical_workload(&workload, |a| format!("{:?}", a.models));
    let mut placer = Placer::new(nodes, (0..origin.len()).collect(), policy, &typical);
    if power.0 > 0 {
        placer = placer.with_power(crate::PowerWeight::catalogue(), power.points_per_watt());
    }
    let mut out = Plan::default();
    let mut waiting = Vec::new();
    // Per image asked for, the snapshot ordinals of the nodes holding it (one scan per image).
    let mut holders: HashMap<&str, std::collections::HashSet<usize>> = HashMap::new();
    for (p, ask) in pending.iter().zip(&asks) {
        let fits_region = |e: usize| {
            let node = &snapshot.nodes[origin[e].0];
            p.region.as_ref().is_none_or(|r| node.region == *r) && p.node.as_ref().is_none_or(|n| node.id == *n)
        };
        if p.count == 0 || (p.share.is_some() && p.count != 1) {
            waiting.push((p, ask));
            continue;
        }
        let holding = p.image.as_deref().map(|i| {
            &*holders.entry(i).or_insert_with(|| {
                let held = |n: &crate::NodeView| n.images.iter().any(|x| x == i);
                snapshot.nodes.iter().enumerate().filter(|(_, n)| held(n)).map(|(o, _)| o).collect()
            })
        });
        let has_image = |e: usize| holding.is_some_and(|h| h.contains(&origin[e].0));
        match placer.place_preferring(ask, &fits_region, &has_image, rng) {
            Some(c) => {
                let (ord, ref idx) = origin[c.node];
                let node = &snapshot.nodes[ord];
                out.placements.push(Placement {
                    instance: p.instance.clone(),
                    node: node.id.clone(),
                    node_generation: node.generation,
                    gpus: c.gpus.iter().map(|&i| idx[i as usize]).collect(),
                    image_cached: has_image(c.node),
                });
            }
            None => waiting.push((p, ask)),
        }
    }
    // A node has room when one of its per-model placer nodes could take the ask as the plan
    // leaves the fleet.
    let mut of_ord: HashMap<usize, Vec<usize>> = HashMap::new();
    for (e, (ord, _)) in origin.iter().enumerate() {
        of_ord.entry(*ord).or_default().push(e);
    }
    for (p, ask) in waiting {
        let has_room =
            |ord: usize| of_ord.get(&ord).is_some_and(|es| es.iter().any(|&e| placer.nodes()[e].feasible(ask)));
        let unowned = share::Ask { tenant: share::ANY_TENANT, ..ask.clone() };
        let beside_others =
            |ord: usize| of_ord.get(&ord).is_some_and(|es| es.iter().any(|&e| placer.nodes()[e].feasible(&unowned)));
        let reason = explain::explain(snapshot, &has_room, &beside_others, p);
        out.unplaced.push(Unplaced { instance: p.instance.clone(), reason });
    }
    out
}
