use super::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{HashMap, HashSet};

fn region(s: &str) -> Region {
    Region::parse(s).unwrap()
}

fn node(id: &str, r: &str, model: GpuModel, total: u32, used: u32) -> NodeView {
    NodeView {
        id: NodeId::parse(id).unwrap(),
        region: region(r),
        generation: 7,
        state: NodeState::Ready,
        health: NodeHealth::Healthy,
        gpus: (0..total).map(|i| GpuView { allocated: i < used, ..GpuView::free(i, model) }).collect(),
        open_time_slicing: false,
        images: Vec::new(),
    }
}

fn want(id: &str, model: GpuModel, count: u32, r: Option<&str>) -> Pending {
    Pending {
        instance: InstanceId::parse(id).unwrap(),
        model,
        count,
        region: r.map(region),
        share: None,
        tenant: None,
        node: None,
        image: None,
    }
}

fn run(snapshot: &ClusterSnapshot, pending: &[Pending], policy: Policy) -> Plan {
    plan(snapshot, pending, policy, Timestamp(0), &mut StdRng::seed_from_u64(1))
}

#[test]
fn best_fit_prefers_the_tightest_node_and_lowest_indices() {
    let snap = ClusterSnapshot {
        nodes: vec![node("n-a", "eu-1", GpuModel::A100_40GB, 8, 0), node("n-b", "eu-1", GpuModel::A100_40GB, 4, 1)],
    };
    let plan = run(&snap, &[want("i-1", GpuModel::A100_40GB, 2, Some("eu-1"))], Policy::BestFit);
    assert_eq!(plan.placements.len(), 1);
    let p = &plan.placements[0];
    assert_eq!((p.node.as_str(), p.gpus.clone(), p.node_generation), ("n-b", vec![1, 2], 7));

    let spread = run(&snap, &[want("i-1", GpuModel::A100_40GB, 2, None)], Policy::Spread);
    assert_eq!(spread.placements[0].node.as_str(), "n-a");
}

#[test]
fn among_equally_good_nodes_one_holding_the_image_wins_and_says_so() {
    let with_image = |id: &str, used: u32| NodeView {
        images: vec!["ghcr.io/acme/trainer:3".into()],
        ..node(id, "eu-1", GpuModel::A100_40GB, 8, used)
    };
    let image = |id: &str, count: u32| Pending {
        image: Some("ghcr.io/acme/trainer:3".into()),
        ..want(id, GpuModel::A100_40GB, count, Some("eu-1"))
    };
    // Two empty nodes: whichever one the policy takes without an image, the image on the other
    // one moves the request there.
    let plain = ClusterSnapshot {
        nodes: vec![node("n-a", "eu-1", GpuModel::A100_40GB, 8, 0), node("n-b", "eu-1", GpuModel::A100_40GB, 8, 0)],
    };
    for policy in [Policy::BestFit, Policy::Spread, Policy::Fgd, Policy::FgdPack] {
        let first = run(&plain, &[image("i-1", 2)], policy).placements[0].clone();
        assert!(!first.image_cached, "{policy}");
        let other = if first.node.as_str() == "n-a" { "n-b" } else { "n-a" };
        let snap = ClusterSnapshot {
            nodes: plain
                .nodes
                .iter()
                .map(|n| if n.id.as_str() == other { with_image(other, 0) } else { n.clone() })
                .collect(),
        };
        let p = &run(&snap, &[image("i-1", 2)], policy).placements[0];
        assert_eq!((p.node.as_str(), p.image_cached), (other, true), "{policy}");
        // Another image, or none, changes nothing.
        let p = &run(&snap, &[want("i-2", GpuModel::A100_40GB, 2, Some("eu-1"))], policy).placements[0];
        assert_eq!((&p.node, p.image_cached), (&first.node, false), "{policy}");
    }
    // The policy comes first: best fit still takes the fuller node without the image.
    let snap = ClusterSnapshot { nodes: vec![node("n-a", "eu-1", GpuModel::A100_40GB, 8, 5), with_image("n-b", 0)] };
    let p = &run(&snap, &[image("i-3", 2)], Policy::BestFit).placements[0];
    assert_eq!((p.node.as_str(), p.image_cached), ("n-a", false));
}

#[test]
fn a_request_pinned_to_a_node_goes_there_or_waits_for_it() {
    let snap = ClusterSnapshot {
        nodes: vec![node("n-a", "eu-1", GpuModel::A100_40GB, 8, 0), node("n-b", "eu-1", GpuModel::A100_40GB, 4, 3)],
    };
    for policy in [Policy::BestFit, Policy::Spread, Policy::Random, Policy::Fgd, Policy::FgdPack] {
        let pinned = |id: &str, count: u32, n: &str| Pending {
            node: Some(NodeId::parse(n).unwrap()),
            ..want(id, GpuModel::A100_40GB, count, Some("eu-1"))
        };
        // Best fit alone would take n-b; the pin says n-a.
        let plan = run(&snap, &[pinned("i-1", 1, "n-a")], policy);
        assert_eq!(plan.placements[0].node.as_str(), "n-a", "{policy}");
        // n-b has one GPU free: two wait, even with n-a empty, and the reason counts n-b only.
        let plan = run(&snap, &[pinned("i-2", 2, "n-b")], policy);
        assert!(plan.placements.is_empty(), "{policy}");
        let r = &plan.unplaced[0].reason;
        assert_eq!((r.regions.len(), r.regions[0].nodes_with_model, r.regions[0].full), (1, 1, 1), "{policy}: {r}");
        // A pin to a node that is not in the fleet places nowhere.
        assert!(run(&snap, &[pinned("i-3", 1, "n-gone")], policy).placements.is_empty(), "{policy}");
    }
}

#[test]
fn explains_per_region_why_nothing_fits() {
    let mut cordoned = node("n-c", "eu-1", GpuModel::A100_40GB, 8, 0);
    cordoned.state = NodeState::Cordoned;
    let mut sick = node("n-d", "eu-1", GpuModel::A100_40GB, 8, 0);
    sick.health = NodeHealth::Unhealthy;
    let snap = ClusterSnapshot {
        nodes: vec![
            node("n-a", "eu-1", GpuModel::A100_40GB, 8, 7),
            node("n-b", "eu-1", GpuModel::A100_40GB, 8, 8),
            node("n-e", "us-1", GpuModel::A100_40GB, 1, 0),
            node("n-f", "us-1", GpuModel::T4, 8, 0),
            cordoned,
            sick,
        ],
    };
    let plan = run(&snap, &[want("i-1", GpuModel::A100_40GB, 2, None)], Policy::BestFit);
    assert!(plan.placements.is_empty());
    assert_eq!(
        plan.unplaced[0].reason.to_string(),
        "no node in eu-1 has 2 free A100-40GB: 2 full, 1 cordoned, 1 unhealthy; \
         no node in us-1 has 2 free A100-40GB: 1 too small"
    );
    let plan = run(&snap, &[want("i-2", GpuModel::H100_80GB, 1, Some("us-1"))], Policy::BestFit);
    assert_eq!(plan.unplaced[0].reason.to_string(), "no node in us-1 has H100-80GB GPUs");
}

#[test]
fn earlier_placements_in_a_plan_count_against_later_ones() {
    let snap = ClusterSnapshot { nodes: vec![node("n-a", "eu-1", GpuModel::T4, 4, 0)] };
    let pending: Vec<Pending> = (0..3).map(|i| want(&format!("i-{i}"), GpuModel::T4, 2, None)).collect();
    let plan = run(&snap, &pending, Policy::BestFit);
    assert_eq!(plan.placements.len(), 2);
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(plan.unplaced[0].reason.to_string(), "no node in eu-1 has 2 free T4: 1 full");
}

#[test]
fn a_wait_for_reserved_or_failed_gpus_says_so_not_full() {
    let mut reserved = node("n-r", "eu-1", GpuModel::H100_80GB, 8, 0);
    for g in &mut reserved.gpus {
        (g.allocated, g.reserved) = (true, true);
    }
    let mut failed = node("n-f", "eu-1", GpuModel::H100_80GB, 2, 1);
    failed.gpus[1].healthy = false;
    let busy = node("n-b", "eu-1", GpuModel::H100_80GB, 2, 2);
    let snap = ClusterSnapshot { nodes: vec![reserved, failed, busy] };
    let plan = run(&snap, &[want("i-1", GpuModel::H100_80GB, 1, Some("eu-1"))], Policy::BestFit);
    assert_eq!(
        plan.unplaced[0].reason.to_string(),
        "no node in eu-1 has 1 free H100-80GB: 1 full, 1 reserved, 1 with a failed GPU"
    );
}

const MODELS: [GpuModel; 3] = [GpuModel::T4, GpuModel::A100_40GB, GpuModel::H100_80GB];
const REGIONS: [&str; 2] = ["eu-1", "us-1"];

fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
    (0..2usize, 0..3usize, 1..=8u32, proptest::collection::vec((any::<bool>(), 0..10u8), 8), 0..4u8).prop_map(
        move |(r, m, total, used, st)| {
            let mut n = node(&format!("n-{i:04}"), REGIONS[r], MODELS[m], total, 0);
            for (g, (u, h)) in n.gpus.iter_mut().zip(used) {
                g.allocated = u;
                g.healthy = h != 0;
            }
            n.state = if st == 1 { NodeState::Cordoned } else { NodeState::Ready };
            n.health = if st == 2 { NodeHealth::Unhealthy } else { NodeHealth::Healthy };
            n.generation = i as i64;
            n
        },
    )
}

#[test]
fn four_quarter_slices_fill_an_a100_and_the_fifth_says_why() {
    let snap = ClusterSnapshot { nodes: vec![node("n-1", "eu-1", GpuModel::A100_40GB, 1, 0)] };
    let pending: Vec<Pending> =
        (1..=5).map(|i| slice_of(&format!("i-{i}"), GpuModel::A100_40GB, 25, 10240, Some("eu-1"))).collect();
    for policy in [Policy::FgdPack, Policy::BestFit, Policy::Spread] {
        let plan = run(&snap, &pending, policy);
        assert_eq!(plan.placements.len(), 4, "{policy}");
        assert!(plan.placements.iter().all(|p| p.gpus == vec![0]));
        assert_eq!(plan.unplaced.len(), 1);
        assert_eq!(plan.unplaced[0].reason.to_string(), "no A100-40GB in eu-1 has 25% / 10240 MiB free: 1 full");
    }
    // A whole-GPU request does not fit on a GPU that holds a slice.
    let mut sliced = snap.clone();
    sliced.nodes[0].gpus[0].slice_milli = 250;
    sliced.nodes[0].gpus[0].slice_mem_mib = 10240;
    let plan = run(&sliced, &[want("i-9", GpuModel::A100_40GB, 1, None)], Policy::BestFit);
    assert_eq!(plan.unplaced.len(), 1);
    let plan = run(&sliced, &pending[..1], Policy::BestFit);
    assert_eq!(plan.placements.len(), 1, "but another slice does");
}

fn arb_snapshot() -> impl Strategy<Value = ClusterSnapshot> {
    (0..12usize).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>()).prop_map(|nodes| ClusterSnapshot { nodes })
}

fn arb_pending() -> impl Strategy<Value = Vec<Pending>> {
    proptest::collection::vec((0..3usize, 1..=9u32, 0..3usize), 0..30).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (m, c, r))| want(&format!("i-{i}"), MODELS[m], c, if r == 2 { None } else { Some(REGIONS[r]) }))
            .collect()
    })
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    proptest::sample::select(vec![
        Policy::BestFit,
        Policy::Spread,
        Policy::Random,
        Policy::DotProduct,
        Policy::GpuClustering,
        Policy::GpuPacking,
        Policy::Fgd,
        Policy::FgdPack,
    ])
}

fn slice_of(id: &str, model: GpuModel, percent: u32, mem: u64, r: Option<&str>) -> Pending {
    let share = GpuShare::resolve(model, Some(percent), Some(mem), None).unwrap();
    Pending { share, ..want(id, model, 1, r) }
}

/// What a plan put on one GPU: slice milli, slice MiB, held whole, kinds of slices (MIG or not).
type Held = (u32, u64, bool, HashSet<bool>);

/// A mix of whole-GPU requests and slices (some MIG).
fn arb_mixed() -> impl Strategy<Value = Vec<Pending>> {
    proptest::collection::vec((0..3usize, 1..=4u32, 0..3usize, 0..4u32, 1..=99u32), 0..30).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (m, c, r, kind, pct))| {
                let region = if r == 2 { None } else { Some(REGIONS[r]) };
                let model = MODELS[m];
                let id = format!("i-{i}");
                match kind {
                    0 => want(&id, model, c, region),
                    1 if !model.mig_profiles().is_empty() => Pending {
                        share: GpuShare::resolve(model, None, None, Some(model.mig_profiles()[0].name)).unwrap(),
                        ..want(&id, model, 1, region)
                    },
                    _ => slice_of(&id, model, pct, model.memory_mib() * pct as u64 / 100, region),
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn plans_never_double_book_or_overcommit(
        snap in arb_snapshot(), pending in arb_pending(), policy in arb_policy(), seed in any::<u64>()
    ) {
        let plan = plan(&snap, &pending, policy, Timestamp(0), &mut StdRng::seed_from_u64(seed));
        let mut used = HashSet::new();
        prop_assert_eq!(plan.placements.len() + plan.unplaced.len(), pending.len());
        for pl in &plan.placements {
            let req = pending.iter().find(|p| p.instance == pl.instance).unwrap();
            let node = snap.nodes.iter().find(|n| n.id == pl.node).unwrap();
            prop_assert_eq!(pl.gpus.len() as u32, req.count);
            prop_assert_eq!(pl.node_generation, node.generation);
            prop_assert!(node.state == NodeState::Ready && node.health == NodeHealth::Healthy);
            prop_assert!(req.region.as_ref().is_none_or(|r| *r == node.region));
            for g in &pl.gpus {
                let gpu = node.gpus.iter().find(|x| x.index == *g).unwrap();
                prop_assert!(!gpu.allocated, "GPU {} of {} was already allocated", g, node.id);
                prop_assert!(gpu.healthy, "GPU {} of {} is unhealthy", g, node.id);
                prop_assert_eq!(gpu.model, req.model);
                prop_assert!(used.insert((node.id.clone(), *g)), "GPU {} of {} given twice", g, node.id);
            }
        }
    }

    /// With slices in the queue: per GPU, slices never exceed its compute or memory, never share
    /// a GPU with a whole allocation, and MIG and time-sliced slices never meet.
    #[test]
    fn slices_never_overcommit_a_gpu(
        snap in arb_snapshot(), pending in arb_mixed(), policy in arb_policy(), seed in any::<u64>()
    ) {
        let plan = plan(&snap, &pending, policy, Timestamp(0), &mut StdRng::seed_from_u64(seed));
        prop_assert_eq!(plan.placements.len() + plan.unplaced.len(), pending.len());
        let mut held: HashMap<(NodeId, u32), Held> = HashMap::new();
        for pl in &plan.placements {
            let req = pending.iter().find(|p| p.instance == pl.instance).unwrap();
            let node = snap.nodes.iter().find(|n| n.id == pl.node).unwrap();
            prop_assert!(index::schedulable(node));
            prop_assert!(req.region.as_ref().is_none_or(|r| *r == node.region));
            prop_assert_eq!(pl.gpus.len() as u32, req.count);
            for g in &pl.gpus {
                let gpu = node.gpus.iter().find(|x| x.index == *g).unwrap();
                prop_assert!(!gpu.allocated && gpu.healthy && gpu.model == req.model);
                let e = held.entry((node.id.clone(), *g)).or_insert((0, 0, false, HashSet::new()));
                match &req.share {
                    Some(s) => { e.0 += s.milli; e.1 += s.memory_mib; e.3.insert(s.mig.is_some()); }
                    None => { prop_assert!(!e.2 && e.0 == 0, "whole GPU {} given twice or over a slice", g); e.2 = true; }
                }
                prop_assert!(!(e.2 && e.0 > 0), "a slice and a whole allocation share GPU {}", g);
                prop_assert!(e.0 <= 1000 && e.1 <= req.model.memory_mib());
                prop_assert!(e.3.len() <= 1, "MIG and time-sliced slices share GPU {}", g);
            }
        }
    }

    #[test]
    fn same_input_same_plan(
        snap in arb_snapshot(), pending in arb_pending(), policy in arb_policy(), seed in any::<u64>()
    ) {
        let a = plan(&snap, &pending, policy, Timestamp(0), &mut StdRng::seed_from_u64(seed));
        let b = plan(&snap, &pending, policy, Timestamp(0), &mut StdRng::seed_from_u64(seed));
        prop_assert_eq!(a, b);
    }

    /// Best-fit does not depend on the order the store lists nodes in.
    #[test]
    fn best_fit_ignores_node_order(snap in arb_snapshot(), pending in arb_pending()) {
        let a = run(&snap, &pending, Policy::BestFit);
        let mut reversed = snap.clone();
        reversed.nodes.reverse();
        let b = run(&reversed, &pending, Policy::BestFit);
        prop_assert_eq!(a, b);
    }

    /// Whatever stays unplaced truly fits nowhere: no schedulable node in its region has enough
    /// free GPUs of its model left after the plan.
    #[test]
    fn unplaced_means_no_room(snap in arb_snapshot(), pending in arb_pending()) {
        let plan = run(&snap, &pending, Policy::BestFit);
        let mut taken: HashSet<(NodeId, u32)> = HashSet::new();
        for pl in &plan.placements { for g in &pl.gpus { taken.insert((pl.node.clone(), *g)); } }
        for u in &plan.unplaced {
            let req = pending.iter().find(|p| p.instance == u.instance).unwrap();
            // Only the free room at the end of the plan is checked: that is a lower bound.
            for n in snap.nodes.iter().filter(|n| index::schedulable(n)) {
                if req.region.as_ref().is_some_and(|r| *r != n.region) { continue; }
                let free = n.gpus.iter().filter(|g| g.model == req.model && !g.allocated && g.healthy
                    && !taken.contains(&(n.id.clone(), g.index))).count() as u32;
                prop_assert!(free < req.count, "{} left pending but {} has {} free", u.instance, n.id, free);
            }
        }
    }
}

/// Time slicing has no memory or fault isolation: one tenant's slices never join another's on a
/// GPU, in one pass or across passes, unless the node's pool is open to sharing; MIG slices may.
#[test]
fn time_sliced_gpus_are_never_shared_across_tenants() {
    use gpucloud_model::TenantId;
    let (a, b) = (TenantId::from_random(1), TenantId::from_random(2));
    let slice = |id: &str, t: &TenantId| Pending {
        tenant: Some(t.clone()),
        ..slice_of(id, GpuModel::A100_40GB, 25, 4096, None)
    };
    let mig = |id: &str, t: &TenantId| Pending {
        tenant: Some(t.clone()),
        share: GpuShare::resolve(GpuModel::A100_40GB, None, None, Some("1g.5gb")).unwrap(),
        ..want(id, GpuModel::A100_40GB, 1, None)
    };
    let one_gpu = || ClusterSnapshot { nodes: vec![node("n-1", "eu-1", GpuModel::A100_40GB, 1, 0)] };
    for policy in [Policy::BestFit, Policy::Fgd, Policy::FgdPack] {
        // In one pass: A's two slices share the GPU, B's waits and says why.
        let pending = [slice("i-1", &a), slice("i-2", &b), slice("i-3", &a)];
        let p = run(&one_gpu(), &pending, policy);
        let placed: Vec<&str> = p.placements.iter().map(|x| x.instance.as_str()).collect();
        assert_eq!(placed, ["i-1", "i-3"], "{policy:?}");
        let why = p.unplaced[0].reason.to_string();
        assert!(why.contains("1 time-shared by other tenants"), "{policy:?}: {why}");
        // Across passes: the GPU already holds A's slice.
        let mut snap = one_gpu();
        let g = &mut snap.nodes[0].gpus[0];
        (g.slice_milli, g.slice_mem_mib, g.slice_tenant) = (250, 4096, Some(a.clone()));
        assert!(run(&snap, &[slice("i-4", &b)], policy).placements.is_empty(), "{policy:?}");
        assert_eq!(run(&snap, &[slice("i-5", &a)], policy).placements.len(), 1, "{policy:?}");
        // A pool open to sharing takes both tenants.
        snap.nodes[0].open_time_slicing = true;
        assert_eq!(run(&snap, &[slice("i-4", &b)], policy).placements.len(), 1, "{policy:?}");
        // MIG slices are isolated by the hardware: two tenants may share a MIG GPU.
        let p = run(&one_gpu(), &[mig("i-6", &a), mig("i-7", &b)], policy);
        assert_eq!(p.placements.len(), 2, "{policy:?}: {:?}", p.unplaced);
    }
}

#[test]
fn an_operator_weighing_power_keeps_an_empty_node_dark() {
    // n-a is empty, n-b has one of its two GPUs in use; plain FGD takes n-a (its fragmentation
    // score ties and n-a comes first), weighing power lights n-b's idle GPU instead of waking n-a.
    let snap = ClusterSnapshot {
        nodes: vec![node("n-a", "eu-1", GpuModel::H100_80GB, 2, 0), node("n-b", "eu-1", GpuModel::H100_80GB, 2, 1)],
    };
    let ask = [want("i-1", GpuModel::H100_80GB, 1, None)];
    let placed = |power: PowerWeight| {
        let plan = plan_weighing_power(&snap, &ask, Policy::Fgd, power, Timestamp(0), &mut StdRng::seed_from_u64(1));
        plan.placements[0].node.as_str().to_string()
    };
    assert_eq!(placed(PowerWeight::default()), "n-a");
    assert_eq!(placed(PowerWeight::from_points(5.0).unwrap()), "n-b");
    assert!(PowerWeight::from_points(-1.0).is_err() && PowerWeight::from_points(f64::NAN).is_err());
}
