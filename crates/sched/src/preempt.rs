//! Which spot instances to preempt so that waiting on-demand work can run. Pure: the server
//! gives the fleet, the requests that fit nowhere, and the spot instances that could make room.
//!
//! For each waiting request in queue order, every node of its model (and region) is a way to
//! make room: its free GPUs, plus those of spot instances already under notice there (they are
//! leaving anyway: no new victim needed), plus as few new victims as it takes, cheapest first.
//! A victim's cost is the work it would lose: the time since its last checkpoint (or since it
//! started, without one). The node whose victims lose the least in total wins (then fewer victims,
//! then node order). Instances inside their minimum guaranteed runtime are never chosen. GPUs
//! promised to one request are not offered to the next.

use crate::{ClusterSnapshot, Pending};
use gpucloud_model::{GpuModel, InstanceId, NodeHealth, NodeId, NodeState};
use std::collections::HashSet;

/// A spot instance holding whole GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub instance: InstanceId,
    pub node: NodeId,
    pub model: GpuModel,
    pub gpus: u32,
    /// Work lost if preempted now, in ms.
    pub lost_work_ms: i64,
    /// Already under notice: its GPUs are on their way back.
    pub noticed: bool,
    /// Inside its minimum guaranteed runtime.
    pub protected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub victim: InstanceId,
    /// The request it makes room for.
    pub for_instance: InstanceId,
    pub node: NodeId,
    pub lost_work_ms: i64,
    /// How many spot instances on that node could have been chosen.
    pub considered: usize,
}

/// One way to make room: on node `ord`, GPUs coming back from spot instances, new victims, and
/// the noticed ones it counts on.
struct Room<'a> {
    cost: i64,
    ord: usize,
    from_spot: u32,
    chosen: Vec<&'a Candidate>,
    leaving: Vec<&'a Candidate>,
}

pub fn evictions(snapshot: &ClusterSnapshot, waiting: &[Pending], candidates: &[Candidate]) -> Vec<Eviction> {
    // Free whole GPUs per node and model, as requests claim them.
    let mut free: Vec<Vec<(GpuModel, u32)>> = snapshot
        .nodes
        .iter()
        .map(|n| {
            let mut per: Vec<(GpuModel, u32)> = Vec::new();
            for g in n.gpus.iter().filter(|g| g.healthy && !g.allocated && g.slice_milli == 0 && !g.mig) {
                match per.iter_mut().find(|(m, _)| *m == g.model) {
                    Some((_, c)) => *c += 1,
                    None => per.push((g.model, 1)),
                }
            }
            per
        })
        .collect();
    let mut taken: HashSet<&InstanceId> = HashSet::new();
    let mut out = Vec::new();
    for want in waiting.iter().filter(|w| w.share.is_none()) {
        let mut best: Option<Room> = None;
        for (ord, node) in snapshot.nodes.iter().enumerate() {
            if node.state != NodeState::Ready
                || node.health != NodeHealth::Healthy
                || want.region.as_ref().is_some_and(|r| *r != node.region)
                || want.node.as_ref().is_some_and(|n| *n != node.id)
                || !node.gpus.iter().any(|g| g.model == want.model)
            {
                continue;
            }
            let free_here = free[ord].iter().find(|(m, _)| *m == want.model).map_or(0, |(_, c)| *c);
            let here: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| c.node == node.id && c.model == want.model && !taken.contains(&c.instance))
                .collect();
            let leaving: Vec<&Candidate> = here.iter().copied().filter(|c| c.noticed).collect();
            let mut have = free_here + leaving.iter().map(|c| c.gpus).sum::<u32>();
            let mut open: Vec<&Candidate> = here.iter().copied().filter(|c| !c.noticed && !c.protected).collect();
            open.sort_by(|a, b| a.lost_work_ms.cmp(&b.lost_work_ms).then_with(|| a.instance.cmp(&b.instance)));
            let mut chosen = Vec::new();
            let mut cost = 0;
            for c in open {
                if have >= want.count {
                    break;
                }
                have += c.gpus;
                cost += c.lost_work_ms.max(0);
                chosen.push(c);
            }
            if have < want.count {
                continue;
            }
            let better = best.as_ref().is_none_or(|b| (cost, chosen.len()) < (b.cost, b.chosen.len()));
            if better {
                best = Some(Room { cost, ord, from_spot: have - free_here, chosen, leaving });
            }
        }
        let Some(Room { ord, from_spot, chosen, leaving, .. }) = best else { continue };
        let considered =
            candidates.iter().filter(|c| c.node == snapshot.nodes[ord].id && c.model == want.model).count();
        for c in leaving.iter().chain(&chosen) {
            taken.insert(&c.instance);
        }
        // The request uses the free GPUs first; what the leaving instances free beyond its need
        // stays free for the next request.
        if let Some((_, c)) = free[ord].iter_mut().find(|(m, _)| *m == want.model) {
            let use_free = (*c).min(want.count);
            *c = *c - use_free + from_spot.saturating_sub(want.count - use_free);
        } else {
            free[ord].push((want.model, from_spot.saturating_sub(want.count)));
        }
        for c in chosen {
            out.push(Eviction {
                victim: c.instance.clone(),
                for_instance: want.instance.clone(),
                node: c.node.clone(),
                lost_work_ms: c.lost_work_ms,
                considered,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GpuView, NodeView};
    use gpucloud_model::Region;
    use proptest::prelude::*;

    fn node(i: u32, gpus: u32, allocated: u32) -> NodeView {
        NodeView {
            id: NodeId::from_random(u128::from(i) + 1),
            region: Region::parse("r").unwrap(),
            generation: 1,
            state: NodeState::Ready,
            health: NodeHealth::Healthy,
            gpus: (0..gpus)
                .map(|g| GpuView { allocated: g < allocated, ..GpuView::free(g, GpuModel::A100_40GB) })
                .collect(),
            open_time_slicing: false,
            images: Vec::new(),
        }
    }

    fn want(i: u128, count: u32) -> Pending {
        Pending {
            instance: InstanceId::from_random(1000 + i),
            model: GpuModel::A100_40GB,
            count,
            region: None,
            share: None,
            tenant: None,
            node: None,
            image: None,
        }
    }

    fn cand(i: u128, node: &NodeView, gpus: u32, lost: i64) -> Candidate {
        Candidate {
            instance: InstanceId::from_random(i),
            node: node.id.clone(),
            model: GpuModel::A100_40GB,
            gpus,
            lost_work_ms: lost,
            noticed: false,
            protected: false,
        }
    }

    #[test]
    fn picks_the_least_lost_work_and_no_more_victims_than_needed() {
        let n1 = node(1, 4, 4);
        let n2 = node(2, 4, 3);
        let snap = ClusterSnapshot { nodes: vec![n1.clone(), n2.clone()] };
        let cands = vec![cand(1, &n1, 2, 5_000), cand(2, &n1, 2, 1_000), cand(3, &n2, 3, 60_000)];
        // Two GPUs: n1 by evicting cand 2 (1 s lost) beats n2 (60 s lost, one GPU free there).
        let e = evictions(&snap, &[want(1, 2)], &cands);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].victim, cands[1].instance);
        assert_eq!(e[0].considered, 2);
        // A protected instance is never chosen; one under notice counts as room already.
        let mut c2 = cands.clone();
        c2[1].protected = true;
        c2[0].noticed = true;
        assert!(evictions(&snap, &[want(1, 2)], &c2).is_empty());
        // Nothing can make room for 5 GPUs on a 4-GPU node.
        assert!(evictions(&snap, &[want(1, 5)], &cands).is_empty());
    }

    proptest! {
        /// Every eviction is needed: the chosen node lacked the GPUs without it, each victim is
        /// chosen once, and protected or noticed instances never are.
        #[test]
        fn evictions_are_minimal_and_respect_protection(
            nodes in proptest::collection::vec((1u32..9, 0u32..9), 1..5),
            cands in proptest::collection::vec((0usize..5, 1u32..5, 0i64..100_000, any::<bool>(), any::<bool>()), 0..12),
            wants in proptest::collection::vec(1u32..9, 1..4),
        ) {
            let snap = ClusterSnapshot {
                nodes: nodes.iter().enumerate().map(|(i, (g, a))| node(i as u32, *g, (*a).min(*g))).collect(),
            };
            let cands: Vec<Candidate> = cands.iter().enumerate().map(|(i, (n, g, lost, noticed, protected))| {
                let mut c = cand(i as u128 + 1, &snap.nodes[n % snap.nodes.len()], *g, *lost);
                c.noticed = *noticed;
                c.protected = *protected;
                c
            }).collect();
            let wants: Vec<Pending> = wants.iter().enumerate().map(|(i, c)| want(i as u128, *c)).collect();
            let e = evictions(&snap, &wants, &cands);
            let mut seen = HashSet::new();
            for ev in &e {
                prop_assert!(seen.insert(ev.victim.clone()), "victim chosen twice");
                let c = cands.iter().find(|c| c.instance == ev.victim).unwrap();
                prop_assert!(!c.noticed && !c.protected);
            }
            // For one request at a time: without its last (most expensive) victim it would not fit.
            for w in &wants {
                let mine: Vec<&Eviction> = e.iter().filter(|ev| ev.for_instance == w.instance).collect();
                if let Some(last) = mine.last() {
                    let ord = snap.nodes.iter().position(|n| n.id == last.node).unwrap();
                    let free = snap.nodes[ord].gpus.iter().filter(|g| !g.allocated).count() as u32;
                    let leaving: u32 = cands.iter().filter(|c| c.node == last.node && c.noticed).map(|c| c.gpus).sum();
                    let victims: u32 = mine.iter().map(|ev| cands.iter().find(|c| c.instance == ev.victim).unwrap().gpus).sum();
                    let last_gpus = cands.iter().find(|c| c.instance == last.victim).unwrap().gpus;
                    // Only meaningful for the first request, which sees the fleet unclaimed.
                    if w.instance == wants[0].instance {
                        prop_assert!(free + leaving + victims >= w.count);
                        prop_assert!(free + leaving + victims - last_gpus < w.count);
                    }
                }
            }
        }
    }
}
