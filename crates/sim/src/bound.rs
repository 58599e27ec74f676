//! How much GPU allocation any policy could reach on one run of the FGD experiment: an upper
//! bound from a linear program, and an achievable figure from an offline packer, so that the
//! best possible result is bracketed from both sides.
//!
//! Both solve the same relaxed problem: given every task that arrives in the run (the same
//! shuffled and inflated sequence the policies see) and the same nodes, choose any subset of the
//! tasks and a placement for them, CPU, memory and per-GPU shares respected, so as to hold as
//! much GPU as possible. A policy under the experiment's protocol places a subset of those tasks
//! feasibly, so its allocation can never exceed this problem's optimum. The protocol binds it
//! more (it must place each task on arrival, with no knowledge of what follows, and may not
//! refuse one that fits), so the bound is loose for an online policy by however much that costs.
//!
//! The upper bound is the optimum of a linear relaxation: tasks grouped into classes and nodes
//! into identical groups, with each group's CPU, memory and GPUs as capacity, strengthened by
//! dual feasible functions on every bin (one GPU for the shares, one node for CPU and memory).
//! A dual feasible function f maps item sizes so that items that fit in one bin have f-values
//! summing to at most one; writing a group's capacity with each f is a valid cut that the plain
//! capacity misses: two tasks of 0.6 of a GPU each need two GPUs.

use crate::trace::NodeRow;
use gpucloud_sched::share::{Ask, MILLI, ModelSet};
use std::collections::BTreeMap;

/// A class of identical GPU tasks (what the bound needs to tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Class {
    num_gpu: u32,
    gpu_milli: u32,
    cpu_milli: u64,
    mem_mib: u64,
    models: ModelSet,
}

/// A group of identical nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Group {
    model: u16,
    gpus: u32,
    cpu_milli: u64,
    mem_mib: u64,
}

/// Dual feasible functions on an item of `a` out of a bin of `cap` (0 < a <= cap), as fractions
/// of the bin. Each is valid: for items that fit together in one bin, the values sum to at most 1.
fn dual_feasible(a: u64, cap: u64) -> Vec<f64> {
    let x = a as f64 / cap as f64;
    let mut out = vec![x];
    // Items above 1 - e leave room only for items below e, which count 0; the rest count their size.
    for e in [5u64, 10, 15, 20, 25, 30, 35, 40, 45, 50] {
        let (lo, hi) = (cap * e, cap * (100 - e));
        let a100 = a * 100;
        out.push(if a100 > hi {
            1.0
        } else if a100 < lo {
            0.0
        } else {
            x
        });
    }
    // Rounding up to multiples of 1/k: floor((k + 1) x) / k, or x itself where (k + 1) x is whole.
    for k in 1..=10u64 {
        let num = (k + 1) * a;
        out.push(if num.is_multiple_of(cap) { x } else { (num / cap) as f64 / k as f64 });
    }
    out
}

fn fits(c: &Class, g: &Group) -> bool {
    c.models.allows(g.model) && c.num_gpu <= g.gpus && c.cpu_milli <= g.cpu_milli && c.mem_mib <= g.mem_mib
}

/// The bound, in milli-GPU: no placement of any subset of `tasks` on `nodes` holds more.
pub fn upper_bound(nodes: &[NodeRow], tasks: &[&Ask]) -> Result<f64, String> {
    relaxation(nodes, tasks).map(|r| r.0)
}

fn class_of(t: &Ask) -> Class {
    Class {
        num_gpu: t.num_gpu,
        gpu_milli: t.gpu_milli.min(MILLI),
        cpu_milli: t.cpu_milli,
        mem_mib: t.mem_mib,
        models: t.models,
    }
}

/// Classes the linear program keeps apart before CPU and memory are rounded.
const MAX_CLASSES: usize = 1500;

/// `c` with its CPU rounded down to a multiple of 250 x 2^level milli and its memory to one of
/// 256 x 2^level MiB (level 0: as asked).
fn coarse(c: Class, level: u32) -> Class {
    if level == 0 {
        return c;
    }
    let (cpu_step, mem_step) = (250u64 << level, 256u64 << level);
    Class { cpu_milli: c.cpu_milli / cpu_step * cpu_step, mem_mib: c.mem_mib / mem_step * mem_step, ..c }
}

fn group_of(n: &NodeRow) -> Group {
    Group { model: n.model, gpus: n.gpus, cpu_milli: n.cpu_milli, mem_mib: n.memory_mib }
}

/// What [`relaxation`] returns.
type Relaxed = (f64, Vec<(Class, Group, f64)>, u32);

/// The linear relaxation's optimum (milli-GPU), its solution (how many tasks of each class it
/// puts on each group of nodes), and the level its classes were rounded at ([`coarse`]).
fn relaxation(nodes: &[NodeRow], tasks: &[&Ask]) -> Result<Relaxed, String> {
    use microlp::{ComparisonOp, OptimizationDirection, Problem};
    let mut groups: BTreeMap<Group, u64> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.gpus > 0) {
        *groups.entry(group_of(n)).or_default() += 1;
    }
    // A trace whose tasks ask for many distinct amounts of CPU and memory would make the program
    // too big to solve quickly: those amounts are rounded down, coarser until the classes are
    // few. Asking for less only enlarges what fits, so the bound stays a bound.
    let mut level = 0;
    let classes = loop {
        let mut classes: BTreeMap<Class, u64> = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.num_gpu > 0 && t.gpu_milli > 0) {
            *classes.entry(coarse(class_of(t), level)).or_default() += 1;
        }
        if classes.len() <= MAX_CLASSES || level >= 16 {
            break classes;
        }
        level += 1;
    };
    let groups: Vec<(Group, u64)> = groups.into_iter().collect();
    let classes: Vec<(Class, u64)> = classes.into_iter().collect();

    let mut lp = Problem::new(OptimizationDirection::Maximize);
    // Per group: rows of (variable, coefficient) for each capacity it has.
    let rows_per_group = 3 * dual_feasible(1, 2).len();
    let mut assigned: Vec<(Class, Group, microlp::Variable)> = Vec::new();
    let mut rows: Vec<Vec<Vec<(microlp::Variable, f64)>>> = vec![vec![Vec::new(); rows_per_group]; groups.len()];
    for (c, count) in &classes {
        let gpu_f = dual_feasible(c.gpu_milli as u64, MILLI as u64);
        let mut vars = Vec::new();
        for (gi, (g, _)) in groups.iter().enumerate() {
            if !fits(c, g) {
                continue;
            }
            // Objective in whole GPUs keeps the coefficients near 1.
            let v = lp.add_var(c.num_gpu as f64 * c.gpu_milli as f64 / MILLI as f64, (0.0, *count as f64));
            vars.push(v);
            assigned.push((*c, *g, v));
            let cpu_f = if g.cpu_milli > 0 && c.cpu_milli > 0 {
                dual_feasible(c.cpu_milli, g.cpu_milli)
            } else {
                vec![0.0; gpu_f.len()]
            };
            let mem_f = if g.mem_mib > 0 && c.mem_mib > 0 {
                dual_feasible(c.mem_mib, g.mem_mib)
            } else {
                vec![0.0; gpu_f.len()]
            };
            let per = gpu_f.len();
            for (i, f) in gpu_f.iter().enumerate() {
                rows[gi][i].push((v, c.num_gpu as f64 * f));
            }
            for (i, f) in cpu_f.iter().enumerate() {
                rows[gi][per + i].push((v, *f));
            }
            for (i, f) in mem_f.iter().enumerate() {
                rows[gi][2 * per + i].push((v, *f));
            }
        }
        if vars.len() > 1 {
            let terms: Vec<_> = vars.iter().map(|&v| (v, 1.0)).collect();
            lp.add_constraint(&terms, ComparisonOp::Le, *count as f64);
        }
    }
    let per = rows_per_group / 3;
    for (gi, (g, n)) in groups.iter().enumerate() {
        for (r, terms) in rows[gi].iter().enumerate() {
            let terms: Vec<_> = terms.iter().copied().filter(|(_, f)| *f > 0.0).collect();
            if terms.is_empty() {
                continue;
            }
            // GPU rows: one bin per GPU; CPU and memory rows: one bin per node.
            let bins = if r < per { (*n * g.gpus as u64) as f64 } else { *n as f64 };
            lp.add_constraint(&terms, ComparisonOp::Le, bins);
        }
    }
    let outcome = lp.solve().map_err(|e| format!("the bound's linear program: {e}"))?;
    // A feasible but not optimal point would understate the bound, so only a proven optimum counts.
    if !outcome.is_optimal() {
        return Err(format!(
            "the bound's linear program stopped before the optimum ({:?})",
            outcome.termination_reason()
        ));
    }
    let solution = outcome.into_solution().map_err(|_| "the bound's linear program gave no solution".to_string())?;
    // Simplex rounding: the optimum is a sum of products of small integers and exact fractions,
    // so a part in 10^9 of slack keeps the bound on the safe side.
    let gpus = solution.objective() * (1.0 + 1e-9);
    let plan = assigned.into_iter().map(|(c, g, v)| (c, g, solution.var_value(v))).collect();
    Ok((gpus * MILLI as f64, plan, level))
}

/// What an offline packer that sees every arriving task at once places, in milli-GPU: the
/// best of six feasible packings, so a lower bound on the relaxed problem's optimum.
///
/// - Largest first (GPU count, then share, then CPU): a slice on the fitting GPU it leaves least
///   room on; a whole task on the node it leaves fewest idle GPUs on, or (balanced) the node it
///   leaves with CPU, memory and GPUs most in proportion.
/// - Guided by the linear relaxation, both ways: each task of a class goes, as far as the relaxation's
///   solution (rounded down) has room for its class on a group of nodes, to that group, largest
///   first as above; then every task left out is tried anywhere, largest first. The relaxation
///   sees which tasks to leave out when CPU binds, which a greedy order by size cannot.
pub fn offline_pack(nodes: &[NodeRow], tasks: &[&Ask]) -> u64 {
    offline_with(nodes, tasks, relaxation(nodes, tasks).ok().as_ref())
}

/// [`offline_pack`] with the relaxation already solved (None: it could not be).
fn offline_with(nodes: &[NodeRow], tasks: &[&Ask], relaxed: Option<&Relaxed>) -> u64 {
    let plain =
        pack(nodes, tasks, &|_| None, false)
            .max(pack(nodes, tasks, &|_| None, true))
            .max(fill(nodes, tasks, &|_| None));
    let Some((_, plan, level)) = relaxed else { return plain };
    // Per class: the groups the relaxation puts its tasks on and how many, handed out in arrival order.
    let mut quota: BTreeMap<Class, Vec<(Group, u64)>> = BTreeMap::new();
    for &(c, g, x) in plan {
        // The simplex's integral values come back within rounding of an integer.
        let n = (x + 1e-6).floor() as u64;
        if n > 0 {
            quota.entry(c).or_default().push((g, n));
        }
    }
    let mut target: Vec<Option<Group>> = Vec::with_capacity(tasks.len());
    for t in tasks {
        let slot = quota.get_mut(&coarse(class_of(t), *level)).and_then(|gs| gs.iter_mut().find(|(_, n)| *n > 0));
        target.push(slot.map(|(g, n)| {
            *n -= 1;
            *g
        }));
    }
    let guided = pack(nodes, tasks, &|i| target[i], false).max(pack(nodes, tasks, &|i| target[i], true)).max(fill(
        nodes,
        tasks,
        &|i| target[i],
    ));
    plain.max(guided)
}

/// Whole tasks as [`pack`] places them (balanced), then the slices GPU by GPU: each GPU takes the
/// largest slice that still fits it and its node's CPU and memory (the one asking least CPU
/// among equals), until none does. Choosing slices that complete a GPU is what a subset allows
/// and largest-first across the fleet misses: it gives every large slice a GPU of its own.
fn fill(nodes: &[NodeRow], tasks: &[&Ask], wanted: &dyn Fn(usize) -> Option<Group>) -> u64 {
    let is_share = |t: &Ask| t.num_gpu == 1 && t.gpu_milli < MILLI;
    let whole: Vec<&Ask> = tasks.iter().copied().filter(|t| t.num_gpu > 0 && t.gpu_milli > 0 && !is_share(t)).collect();
    let mut fleet = free_fleet(nodes);
    let mut placed = pack_on(&mut fleet, &whole, &|_| None, true);
    // Slices by (share, CPU, memory, index) per group they are meant for (None: any).
    type Slices = std::collections::BTreeSet<(u32, u64, u64, usize)>;
    let mut by_group: BTreeMap<Option<Group>, Slices> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate().filter(|(_, t)| is_share(t) && t.gpu_milli > 0) {
        by_group.entry(wanted(i)).or_default().insert((t.gpu_milli, t.cpu_milli, t.mem_mib, i));
    }
    // First each group's own slices on its nodes, then every slice left on any node.
    let mut fill_node = |n: &mut Free, left: &mut Slices| {
        for g in 0..n.gpus.len() {
            loop {
                let mut found = None;
                let mut below = n.gpus[g] + 1;
                while let Some(&(m, ..)) = left.range(..(below, 0, 0, 0)).next_back() {
                    found = left
                        .range((m, 0, 0, 0)..(m + 1, 0, 0, 0))
                        .take_while(|e| e.1 <= n.cpu)
                        .find(|e| e.2 <= n.mem && tasks[e.3].models.allows(n.group.model))
                        .copied();
                    if found.is_some() {
                        break;
                    }
                    below = m;
                }
                let Some(e) = found else { break };
                left.remove(&e);
                n.gpus[g] -= e.0;
                n.cpu -= e.1;
                n.mem -= e.2;
                placed += e.0 as u64;
            }
        }
    };
    for n in &mut fleet {
        if let Some(own) = by_group.get_mut(&Some(n.group)) {
            fill_node(n, own);
        }
    }
    let mut rest: Slices = by_group.into_values().flatten().collect();
    for n in &mut fleet {
        fill_node(n, &mut rest);
    }
    placed
}

/// Packs `tasks` largest first. Tasks `wanted` gives a group go first, each on that group if it
/// fits there; the rest (and those whose group had no room) then fit anywhere.
fn pack(nodes: &[NodeRow], tasks: &[&Ask], wanted: &dyn Fn(usize) -> Option<Group>, balance: bool) -> u64 {
    pack_on(&mut free_fleet(nodes), tasks, wanted, balance)
}

/// A node's free capacity while packing.
struct Free {
    group: Group,
    cpu: u64,
    mem: u64,
    gpus: Vec<u32>,
}

fn free_fleet(nodes: &[NodeRow]) -> Vec<Free> {
    nodes
        .iter()
        .map(|n| Free { group: group_of(n), cpu: n.cpu_milli, mem: n.memory_mib, gpus: vec![MILLI; n.gpus as usize] })
        .collect()
}

fn pack_on(fleet: &mut [Free], tasks: &[&Ask], wanted: &dyn Fn(usize) -> Option<Group>, balance: bool) -> u64 {
    let mut order: Vec<usize> = (0..tasks.len()).filter(|&i| tasks[i].num_gpu > 0 && tasks[i].gpu_milli > 0).collect();
    let size = |i: usize| {
        let t = tasks[i];
        std::cmp::Reverse((t.num_gpu, t.gpu_milli, t.cpu_milli, t.mem_mib))
    };
    order.sort_by_key(|&i| size(i));
    let guided: Vec<(usize, Group)> = order.iter().filter_map(|&i| Some((i, wanted(i)?))).collect();
    let mut placed_task = vec![false; tasks.len()];
    let mut placed = 0u64;
    let mut place = |i: usize, only: Option<Group>, fleet: &mut [Free]| -> bool {
        let t = tasks[i];
        let share = t.num_gpu == 1 && t.gpu_milli < MILLI;
        // (room left on the GPU, or how unevenly the node is left, then idle GPUs left; CPU
        // left; node; GPU). Balanced: a node whose CPU and memory run out while GPUs stay idle
        // strands them, so whole tasks go where CPU, memory and GPUs are left in proportion.
        let mut best: Option<(u64, u64, usize, usize)> = None;
        for (ni, n) in fleet.iter().enumerate() {
            if only.is_some_and(|g| g != n.group) {
                continue;
            }
            if !t.models.allows(n.group.model) || n.cpu < t.cpu_milli || n.mem < t.mem_mib {
                continue;
            }
            let cpu_left = n.cpu - t.cpu_milli;
            if share {
                for (gi, &f) in n.gpus.iter().enumerate() {
                    let Some(room) = f.checked_sub(t.gpu_milli) else { continue };
                    if best.is_none_or(|b| (room as u64, cpu_left) < (b.0, b.1)) {
                        best = Some((room as u64, cpu_left, ni, gi));
                    }
                }
            } else {
                let idle = n.gpus.iter().filter(|&&f| f == MILLI).count() as u32;
                if idle < t.num_gpu {
                    continue;
                }
                let idle_left = (idle - t.num_gpu) as u64;
                let first = if balance {
                    let g = idle_left as f64 / n.gpus.len() as f64;
                    let c = cpu_left as f64 / n.group.cpu_milli.max(1) as f64;
                    let m = (n.mem - t.mem_mib) as f64 / n.group.mem_mib.max(1) as f64;
                    // In thousandths, then idle GPUs left (best fit among equally even nodes).
                    (((c - g).abs() + (m - g).abs()) * 1000.0) as u64 * 100 + idle_left
                } else {
                    idle_left
                };
                if best.is_none_or(|b| (first, cpu_left) < (b.0, b.1)) {
                    best = Some((first, cpu_left, ni, 0));
                }
            }
        }
        let Some((_, _, ni, gi)) = best else { return false };
        let n = &mut fleet[ni];
        n.cpu -= t.cpu_milli;
        n.mem -= t.mem_mib;
        if share {
            n.gpus[gi] -= t.gpu_milli;
        } else {
            for f in n.gpus.iter_mut().filter(|f| **f == MILLI).take(t.num_gpu as usize) {
                *f = 0;
            }
        }
        placed += t.demand();
        true
    };
    for &(i, g) in &guided {
        placed_task[i] = place(i, Some(g), fleet);
    }
    for &i in &order {
        if !placed_task[i] {
            placed_task[i] = place(i, None, fleet);
        }
    }
    placed
}

/// What `policy` placed online, plus its failed tasks placed afterwards where its final fleet
/// still has room (largest first, balanced): feasible, so achievable offline, and never below
/// the policy itself.
pub fn refill(exp: &crate::fgd::Experiment, policy: gpucloud_sched::share::SharePolicy, seed: u64) -> u64 {
    let (_, _, nodes, failed) = exp.run_keeping(policy, seed, true);
    let mut fleet: Vec<Free> = exp
        .nodes
        .iter()
        .zip(&nodes)
        .map(|(row, n)| Free {
            group: group_of(row),
            cpu: n.cpu_free,
            mem: n.mem_free,
            gpus: n.gpus.iter().map(|g| if g.healthy { g.free_milli } else { 0 }).collect(),
        })
        .collect();
    let used: u64 = fleet
        .iter()
        .zip(exp.nodes)
        .map(|(f, r)| r.gpus as u64 * MILLI as u64 - f.gpus.iter().map(|&g| g as u64).sum::<u64>())
        .sum();
    let rest: Vec<&Ask> = failed.iter().map(|&i| &exp.trace.tasks[i].ask).collect();
    used + pack_on(&mut fleet, &rest, &|_| None, true)
}

/// One run's relaxed problem bracketed, in milli-GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bracket {
    /// GPU demand of every task that arrived.
    pub arrived: u64,
    /// What [`offline_pack`] placed.
    pub offline: u64,
    /// [`upper_bound`].
    pub upper: f64,
}

/// The bracket for the tasks `seed` makes arrive in `exp`.
pub fn bracket(exp: &crate::fgd::Experiment, seed: u64) -> Result<Bracket, String> {
    let (order, _) = exp.sequence(seed);
    let tasks: Vec<&Ask> = order.iter().map(|&i| &exp.trace.tasks[i].ask).collect();
    // One solve serves both sides: the bound, and the split that guides the offline packer.
    let relaxed = relaxation(exp.nodes, &tasks)?;
    let upper = relaxed.0;
    // The online policies' own packings, topped up, are achievable too: offline never reports
    // less than the best of them.
    use gpucloud_sched::share::SharePolicy;
    let online = [SharePolicy::Fgd, SharePolicy::FgdCpu].map(|p| refill(exp, p, seed));
    let offline = online.into_iter().fold(offline_with(exp.nodes, &tasks, Some(&relaxed)), u64::max);
    let arrived = tasks.iter().map(|t| t.demand()).sum();
    Ok(Bracket { arrived, offline, upper })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(gpus: u32, cpu: u64, mem: u64) -> NodeRow {
        NodeRow { name: String::new(), cpu_milli: cpu, memory_mib: mem, gpus, model: 0 }
    }

    fn task(num_gpu: u32, gpu_milli: u32, cpu: u64, mem: u64) -> Ask {
        Ask { cpu_milli: cpu, mem_mib: mem, gpu_milli, ..Ask::whole(num_gpu, ModelSet::ANY) }
    }

    /// The relaxed problem's optimum by trying every choice: each task left out, or on a node
    /// (and, for a share, on each GPU of it).
    fn optimum(nodes: &[NodeRow], tasks: &[Ask]) -> u64 {
        #[derive(Clone)]
        struct Free {
            cpu: u64,
            mem: u64,
            gpus: Vec<u32>,
        }
        fn go(i: usize, tasks: &[Ask], fleet: &mut Vec<Free>) -> u64 {
            let Some(t) = tasks.get(i) else { return 0 };
            let mut best = go(i + 1, tasks, fleet);
            for n in 0..fleet.len() {
                if fleet[n].cpu < t.cpu_milli || fleet[n].mem < t.mem_mib {
                    continue;
                }
                let saved = fleet[n].clone();
                fleet[n].cpu -= t.cpu_milli;
                fleet[n].mem -= t.mem_mib;
                if t.is_share() {
                    for g in 0..fleet[n].gpus.len() {
                        if fleet[n].gpus[g] >= t.gpu_milli {
                            fleet[n].gpus[g] -= t.gpu_milli;
                            best = best.max(t.demand() + go(i + 1, tasks, fleet));
                            fleet[n].gpus[g] += t.gpu_milli;
                        }
                    }
                } else {
                    let idle: Vec<usize> = (0..fleet[n].gpus.len()).filter(|&g| fleet[n].gpus[g] == MILLI).collect();
                    if idle.len() >= t.num_gpu as usize {
                        for &g in &idle[..t.num_gpu as usize] {
                            fleet[n].gpus[g] = 0;
                        }
                        best = best.max(t.demand() + go(i + 1, tasks, fleet));
                    }
                }
                fleet[n] = saved;
            }
            best
        }
        let mut fleet: Vec<Free> = nodes
            .iter()
            .map(|n| Free { cpu: n.cpu_milli, mem: n.memory_mib, gpus: vec![MILLI; n.gpus as usize] })
            .collect();
        go(0, tasks, &mut fleet)
    }

    fn check(nodes: &[NodeRow], tasks: &[Ask]) -> (u64, u64, f64) {
        let refs: Vec<&Ask> = tasks.iter().collect();
        let (opt, offline, upper) =
            (optimum(nodes, tasks), offline_pack(nodes, &refs), upper_bound(nodes, &refs).unwrap());
        assert!(offline <= opt, "offline {offline} > optimum {opt}");
        assert!(upper + 1e-6 >= opt as f64, "bound {upper} < optimum {opt} for {tasks:?} on {nodes:?}");
        (opt, offline, upper)
    }

    #[test]
    fn two_large_shares_need_two_gpus() {
        // Capacity alone would allow 1,000 milli (1.67 of the tasks); no GPU holds two of them.
        let (opt, offline, upper) = check(&[node(1, 64_000, 1 << 20)], &[task(1, 600, 1000, 1), task(1, 600, 1000, 1)]);
        assert_eq!((opt, offline), (600, 600));
        assert!((upper - 600.0).abs() < 1e-3, "{upper}");
    }

    #[test]
    fn cpu_can_bind_before_the_gpus_do() {
        // Two GPUs but CPU for one of the two tasks.
        let (opt, _, upper) = check(&[node(2, 16_000, 1 << 20)], &[task(1, 1000, 12_000, 1), task(1, 1000, 12_000, 1)]);
        assert_eq!(opt, 1000);
        assert!((upper - 1000.0).abs() < 1e-3, "{upper}");
    }

    #[test]
    fn shares_that_complete_each_other_fill_the_gpu() {
        let tasks =
            [task(1, 700, 1, 1), task(1, 300, 1, 1), task(1, 500, 1, 1), task(1, 500, 1, 1), task(2, 1000, 1, 1)];
        let (opt, offline, upper) = check(&[node(2, 64_000, 1 << 20), node(2, 64_000, 1 << 20)], &tasks);
        assert_eq!((opt, offline), (4000, 4000));
        assert!((upper - 4000.0).abs() < 1e-3, "{upper}");
    }

    #[test]
    fn a_task_that_fits_no_node_adds_nothing() {
        let (opt, offline, upper) = check(&[node(2, 8_000, 1 << 20)], &[task(4, 1000, 1, 1), task(1, 1000, 9_000, 1)]);
        assert_eq!((opt, offline, upper), (0, 0, 0.0));
    }

    #[test]
    fn many_distinct_requests_are_rounded_down_and_still_bound_the_packing() {
        let nodes: Vec<NodeRow> = (0..40).map(|_| node(8, 96_000, 400_000)).collect();
        let tasks: Vec<Ask> =
            (0..2_000u64).map(|i| task(1, 300 + (i % 7) as u32 * 100, 1_000 + i * 7, 1_000 + i)).collect();
        let refs: Vec<&Ask> = tasks.iter().collect();
        let (upper, _, level) = relaxation(&nodes, &refs).unwrap();
        assert!(level > 0, "2,000 distinct requests are more classes than the program keeps");
        let offline = offline_pack(&nodes, &refs);
        assert!(offline > 0 && upper >= offline as f64, "offline {offline} bound {upper}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_bound_is_never_below_the_optimum_nor_the_packer_above_it(
            nodes in prop::collection::vec((1u32..=2, 1u64..=4), 1..=2),
            tasks in prop::collection::vec((0u32..=2, 1u32..=10, 1u64..=3, 1u64..=3), 1..=6),
        ) {
            let nodes: Vec<NodeRow> = nodes.iter().map(|&(g, c)| node(g, c * 4000, c * 1000)).collect();
            let tasks: Vec<Ask> = tasks
                .iter()
                .map(|&(whole, tenth, cpu, mem)| match whole {
                    0 => task(1, tenth * 100, cpu * 2000, mem * 500),
                    n => task(n, 1000, cpu * 2000, mem * 500),
                })
                .collect();
            check(&nodes, &tasks);
        }
    }
}
