use super::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn node(model: u16, gpus: usize) -> Node {
    Node::new(model, 64_000, 256_000, (0..gpus).map(|_| Gpu::idle()).collect())
}

fn slice(milli: u32) -> Ask {
    Ask {
        cpu_milli: 1000,
        mem_mib: 1024,
        num_gpu: 1,
        gpu_milli: milli,
        gpu_mem_mib: 0,
        models: ModelSet::ANY,
        mig: false,
        tenant: 0,
    }
}

fn placer(nodes: Vec<Node>, policy: SharePolicy) -> Placer {
    let prio = (0..nodes.len()).collect();
    let typical = typical_workload(&[slice(250), slice(500), Ask::whole(1, ModelSet::ANY)], |_| String::new());
    Placer::new(nodes, prio, policy, &typical)
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn four_quarter_slices_fill_a_gpu_and_a_fifth_does_not_fit() {
    for policy in SharePolicy::ALL {
        let mut p = placer(vec![node(0, 1)], policy);
        for _ in 0..4 {
            let c = p.place(&slice(250), &mut rng()).expect("fits");
            assert_eq!(c.gpus, vec![0]);
        }
        assert_eq!(p.nodes()[0].gpus[0].free_milli, 0, "{policy:?}");
        assert!(p.place(&slice(250), &mut rng()).is_none(), "{policy:?}");
    }
}

#[test]
fn a_whole_gpu_needs_an_idle_one_and_a_gang_stays_on_one_node() {
    let mut p = placer(vec![node(0, 2), node(0, 2)], SharePolicy::BestFit);
    p.place(&slice(100), &mut rng()).unwrap();
    p.place(&slice(100), &mut StdRng::seed_from_u64(1)).unwrap();
    // Both slices went to node 0 GPU 0 (tightest), so node 0 has one idle GPU, node 1 two.
    let c = p.place(&Ask::whole(2, ModelSet::ANY), &mut rng()).unwrap();
    assert_eq!(c, Choice { node: 1, gpus: vec![0, 1] });
    assert!(p.place(&Ask::whole(2, ModelSet::ANY), &mut rng()).is_none());
    assert_eq!(p.place(&Ask::whole(1, ModelSet::ANY), &mut rng()).unwrap(), Choice { node: 0, gpus: vec![1] });
}

#[test]
fn models_cpu_and_memory_limit_where_an_ask_fits() {
    let mut p = placer(vec![node(0, 1), node(1, 1)], SharePolicy::Fgd);
    let only1 = Ask { models: ModelSet::only(1), ..slice(500) };
    assert_eq!(p.place(&only1, &mut rng()).unwrap().node, 1);
    let hungry = Ask { cpu_milli: 65_000, ..slice(100) };
    assert!(p.choose(&hungry, &mut rng()).is_none());
    let big_mem = Ask { mem_mib: 300_000, ..slice(100) };
    assert!(p.choose(&big_mem, &mut rng()).is_none());
    let cpu_only = Ask { num_gpu: 0, gpu_milli: 0, ..slice(0) };
    assert!(p.choose(&cpu_only, &mut rng()).is_some());
}

#[test]
fn mig_and_time_sliced_slices_never_share_a_gpu_and_memory_is_a_limit() {
    let mut gpu = Gpu::idle();
    gpu.free_mem_mib = 40_960;
    let mut p = placer(vec![Node::new(0, 64_000, 256_000, vec![gpu.clone(), gpu])], SharePolicy::BestFit);
    let mig = Ask { mig: true, gpu_mem_mib: 10_240, ..slice(142) };
    let shared = Ask { gpu_mem_mib: 10_240, ..slice(250) };
    let a = p.place(&mig, &mut rng()).unwrap();
    let b = p.place(&shared, &mut rng()).unwrap();
    assert_ne!(a.gpus, b.gpus);
    // Memory runs out before compute: four 10 GiB slices fill a 40 GiB GPU.
    let small_compute = Ask { gpu_mem_mib: 10_240, ..slice(10) };
    for _ in 0..3 {
        assert_eq!(p.place(&small_compute, &mut rng()).unwrap().gpus, b.gpus);
    }
    assert_eq!(p.nodes()[0].gpus[b.gpus[0] as usize].free_mem_mib, 0);
    let c = p.place(&Ask { mig: true, ..small_compute.clone() }, &mut rng()).unwrap();
    assert_eq!(c.gpus, a.gpus, "a MIG slice joins the MIG GPU");
    assert!(p.place(&small_compute, &mut rng()).is_none(), "no room left for a shared slice");
    let (ask, choice) = (Ask { mig: true, ..small_compute }, c);
    p.release(&ask, &choice);
    p.release(&mig, &a);
    assert!(p.nodes()[0].gpus[a.gpus[0] as usize].is_idle(), "an emptied GPU is open again");
}

#[test]
fn fgd_puts_a_slice_where_it_completes_a_gpu() {
    // GPU 0 of node 0 holds 750; a 250 slice completes it instead of cutting into idle GPU 1 or
    // the idle node 1, which node priority would otherwise prefer.
    let mut p = placer(vec![node(0, 1), node(0, 2)], SharePolicy::Fgd);
    let typical = typical_workload(&[slice(250), slice(750), Ask::whole(1, ModelSet::ANY)], |_| String::new());
    p = Placer::new(p.nodes.clone(), vec![0, 1], SharePolicy::Fgd, &typical);
    p.apply(&slice(750), &Choice { node: 1, gpus: vec![1] });
    let c = p.place(&slice(250), &mut rng()).unwrap();
    assert_eq!(c, Choice { node: 1, gpus: vec![1] });
}

#[test]
fn typical_workload_keeps_the_largest_groups_up_to_95_percent() {
    let mut tasks = vec![slice(500); 90];
    tasks.extend(vec![slice(250); 6]);
    tasks.extend(vec![Ask::whole(1, ModelSet::ANY); 4]);
    let t = typical_workload(&tasks, |_| String::new());
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].gpu_milli, 500);
    assert!((t[0].weight - 90.0 / 96.0).abs() < 1e-12);
}

#[test]
fn policy_names_round_trip() {
    for p in SharePolicy::ALL {
        assert_eq!(SharePolicy::parse(p.name()), Some(p));
    }
    assert_eq!(SharePolicy::parse("nope"), None);
}

fn arb_ask() -> impl Strategy<Value = Ask> {
    (0u32..4, prop_oneof![Just(1000u32), 50u32..1000], 0u64..20_000, 0u16..3).prop_map(|(n, milli, cpu, m)| {
        let num_gpu = n.min(if milli < 1000 { 1 } else { 3 });
        Ask {
            cpu_milli: cpu,
            mem_mib: cpu,
            num_gpu,
            gpu_milli: if num_gpu == 0 { 0 } else { milli },
            gpu_mem_mib: 0,
            models: if m == 0 { ModelSet::ANY } else { ModelSet::only(m - 1) },
            mig: false,
            tenant: 0,
        }
    })
}

fn arb_nodes() -> impl Strategy<Value = Vec<Node>> {
    prop::collection::vec((0u16..2, 1usize..5, 8_000u64..64_000), 1..8).prop_map(|v| {
        v.into_iter().map(|(m, g, cpu)| Node::new(m, cpu, cpu, (0..g).map(|_| Gpu::idle()).collect())).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For every policy: a placement takes only what was free, goes only where the ask fits, and
    /// nothing is refused while some node could take it.
    #[test]
    fn placements_are_feasible_and_complete(nodes in arb_nodes(), asks in prop::collection::vec(arb_ask(), 1..60), seed in 0u64..1000) {
        let typical = typical_workload(&asks, |_| String::new());
        for policy in SharePolicy::ALL {
            let prio: Vec<usize> = (0..nodes.len()).rev().collect();
            let mut p = Placer::new(nodes.clone(), prio, policy, &typical);
            let mut r = StdRng::seed_from_u64(seed);
            for ask in &asks {
                let before = p.nodes().to_vec();
                match p.place(ask, &mut r) {
                    Some(c) => {
                        let n = &before[c.node];
                        prop_assert!(n.feasible(ask));
                        prop_assert_eq!(c.gpus.len() as u32, ask.num_gpu);
                        let mut seen = c.gpus.clone();
                        seen.dedup();
                        prop_assert_eq!(seen.len(), c.gpus.len());
                        for &g in &c.gpus {
                            prop_assert!(n.gpus[g as usize].free_milli >= ask.gpu_milli);
                            if !ask.is_share() { prop_assert!(n.gpus[g as usize].is_idle()); }
                        }
                        let used: u64 = before.iter().zip(p.nodes()).map(|(a, b)| {
                            a.gpus.iter().zip(&b.gpus).map(|(x, y)| (x.free_milli - y.free_milli) as u64).sum::<u64>()
                        }).sum();
                        prop_assert_eq!(used, ask.demand());
                    }
                    None => prop_assert!(before.iter().all(|n| !n.feasible(ask)), "{:?} refused a feasible ask", policy),
                }
            }
        }
    }

    /// Scoring is a pure function of the fleet: the same sequence twice gives the same choices,
    /// and releasing everything restores the fleet.
    #[test]
    fn deterministic_and_release_restores(nodes in arb_nodes(), asks in prop::collection::vec(arb_ask(), 1..40)) {
        let typical = typical_workload(&asks, |_| String::new());
        for policy in SharePolicy::ALL {
            let run = || {
                let mut p = Placer::new(nodes.clone(), (0..nodes.len()).collect(), policy, &typical);
                let mut r = StdRng::seed_from_u64(3);
                let placed: Vec<_> = asks.iter().map(|a| p.place(a, &mut r)).collect();
                (placed, p)
            };
            let (a, mut p) = run();
            let (b, _) = run();
            prop_assert_eq!(&a, &b);
            for (ask, c) in asks.iter().zip(&a).rev() {
                if let Some(c) = c { p.release(ask, c); }
            }
            for (x, y) in p.nodes().iter().zip(&nodes) {
                prop_assert_eq!(x.cpu_free, y.cpu_free);
                prop_assert_eq!(&x.gpus, &y.gpus);
            }
        }
    }
}

#[test]
fn weighing_power_packs_slices_onto_gpus_already_lit() {
    let w = Watts { idle: 50.0, busy: 400.0 };
    let fleet = || (0..4).map(|_| node(0, 2)).collect::<Vec<_>>();
    assert_eq!(node_watts(&node(0, 2), w), 0.0, "a node with nothing on it is off");
    let run = |points_per_watt: f64| {
        let mut p = placer(fleet(), SharePolicy::FgdPack).with_power(vec![Some(w)], points_per_watt);
        for i in 0..8 {
            assert!(p.place(&slice(250), &mut rng()).is_some(), "slice {i}");
        }
        p.fleet_watts(&[Some(w)])
    };
    // Eight quarter slices fill two GPUs of one node: 2 x 400 W, and nothing else powered.
    assert_eq!(run(10.0), 800.0);
    // Of two empty nodes that tie for FGD, the one that draws less once woken, whatever the
    // priority order says.
    let hungry = Watts { idle: 100.0, busy: 700.0 };
    let per_model = vec![Some(hungry), Some(w)];
    let any = Ask { models: ModelSet::ANY, ..slice(500) };
    for policy in [SharePolicy::Fgd, SharePolicy::FgdPack] {
        let mut plain = placer(vec![node(0, 2), node(1, 2)], policy);
        assert_eq!(plain.place(&any, &mut rng()).unwrap().node, 0, "{policy:?}: the priority order decides");
        let mut weighed = placer(vec![node(0, 2), node(1, 2)], policy).with_power(per_model.clone(), 1.0);
        assert_eq!(weighed.place(&any, &mut rng()).unwrap().node, 1, "{policy:?}");
        assert_eq!(weighed.fleet_watts(&per_model), 450.0);
    }
    // One slice on a two-GPU node: one busy GPU and one idle one.
    let mut p = placer(vec![node(0, 2)], SharePolicy::Fgd);
    p.place(&slice(100), &mut rng()).unwrap();
    assert_eq!(p.fleet_watts(&[Some(w)]), 450.0);
}

#[test]
fn a_model_rank_sends_an_any_model_ask_to_the_best_ranked_model_that_fits() {
    // Model 1 ranks first (cheapest, say); the policy alone would pick either.
    for policy in SharePolicy::ALL {
        let mut p = placer(vec![node(0, 1), node(1, 1), node(0, 1)], policy).with_model_rank(vec![1, 0]);
        let c = p.place(&Ask::whole(1, ModelSet::ANY), &mut rng()).unwrap();
        assert_eq!(c.node, 1, "{policy:?}");
        // Model 1 is full: the next goes to model 0, chosen among its nodes by the policy.
        let c = p.place(&Ask::whole(1, ModelSet::ANY), &mut rng()).unwrap();
        assert_ne!(c.node, 1, "{policy:?}");
        // An ask for model 0 only is not moved by the rank.
        let c = p.place(&Ask::whole(1, ModelSet::only(0)), &mut rng()).unwrap();
        assert_ne!(c.node, 1, "{policy:?}");
    }
}

#[test]
fn fgd_cpu_keeps_a_cpu_poor_node_from_stranding_its_gpus() {
    // Typical tasks take one GPU and 8 cores. Node 0 has 8 cores per GPU, node 1 32.
    let typical_task = Ask { cpu_milli: 8_000, ..Ask::whole(1, ModelSet::ANY) };
    let typical = typical_workload(std::slice::from_ref(&typical_task), |_| String::new());
    let fleet = || {
        vec![
            Node::new(0, 32_000, 256_000, (0..4).map(|_| Gpu::idle()).collect()),
            Node::new(0, 128_000, 256_000, (0..4).map(|_| Gpu::idle()).collect()),
        ]
    };
    // A 14-core task on node 0 leaves CPU for two typical tasks beside three idle GPUs: one GPU
    // could never be sold. FGD does not see it (a typical task still fits), so the priority decides.
    let hungry = Ask { cpu_milli: 14_000, ..Ask::whole(1, ModelSet::ANY) };
    let choose = |policy| Placer::new(fleet(), vec![0, 1], policy, &typical).place(&hungry, &mut rng()).unwrap().node;
    assert_eq!(choose(SharePolicy::FgdPack), 0);
    assert_eq!(choose(SharePolicy::FgdCpu), 1);
    // A typical task strands nothing, so FgdCpu places it as FgdPack does.
    let mut p = Placer::new(fleet(), vec![0, 1], SharePolicy::FgdCpu, &typical);
    assert_eq!(p.place(&typical_task, &mut rng()).unwrap().node, 0);
}
