//! The order a queue is served in: priority class with aging, then fair share between projects,
//! then age. Pure: the caller gives the time and each project's current use.
//!
//! - **Aging.** A request's level is its class's rank (batch 0, default 1, production 2) plus one
//!   for each `aging_ms` it has waited, at most `MAX_BOOST` more. So a request that has waited
//!   `(MAX_BOOST) * aging_ms` is ahead of every request that has waited less than `aging_ms`, of
//!   any class: nothing starves behind a stream of fresh high-priority work. The cap keeps a
//!   long backlog from turning the queue into first-come-first-served, which would hand the
//!   GPUs to whichever project submits most.
//! - **Fair share.** Within a level, projects take turns by their use over their weight:
//!   repeatedly, the head of the project with the least `(used + queued ahead) / weight` goes
//!   next (ties: the older head). Counting what is queued ahead spreads one pass's placements
//!   across projects in proportion to their weights, not only the first.
//! - **Age.** Within a project, oldest first; ties by the order given.

use gpucloud_model::{Priority, ProjectName, TenantId, Timestamp};
use std::collections::BTreeMap;

/// The most levels waiting adds: enough for a batch request to pass fresh production work.
pub const MAX_BOOST: u32 = 3;

/// Whose share a request counts against.
pub type ShareKey = (TenantId, ProjectName);

/// A project's current use and its weight, in thousandths of a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Share {
    pub used_milli: u64,
    /// Its deserved share (a quota's `guaranteed`); 0 counts as one GPU, so projects without a
    /// guarantee share equally.
    pub weight_milli: u64,
}

/// What the order needs of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub priority: Priority,
    /// When it started waiting.
    pub since: Timestamp,
    /// Its project (`None`: shares with nobody, as trace tasks).
    pub project: Option<ShareKey>,
    /// What it asks for, in thousandths of a GPU.
    pub milli: u64,
}

/// A request's level at `now`: its class's rank plus its aging boost.
pub fn level(q: &Queued, now: Timestamp, aging_ms: i64) -> u32 {
    let waited = now.0.saturating_sub(q.since.0).max(0);
    let boost = if aging_ms > 0 { (waited / aging_ms).min(i64::from(MAX_BOOST)) as u32 } else { 0 };
    q.priority.rank() + boost
}

/// The indices of `queue` in the order to serve them.
pub fn order(queue: &[Queued], shares: &BTreeMap<ShareKey, Share>, now: Timestamp, aging_ms: i64) -> Vec<usize> {
    // Levels, highest first; within one, each project's requests oldest first.
    let mut levels: BTreeMap<std::cmp::Reverse<u32>, BTreeMap<Option<&ShareKey>, Vec<usize>>> = BTreeMap::new();
    for (i, q) in queue.iter().enumerate() {
        let l = level(q, now, aging_ms);
        levels.entry(std::cmp::Reverse(l)).or_default().entry(q.project.as_ref()).or_default().push(i);
    }
    let mut ahead: BTreeMap<Option<&ShareKey>, u64> = BTreeMap::new();
    let mut out = Vec::with_capacity(queue.len());
    for (_, mut projects) in levels {
        for list in projects.values_mut() {
            list.sort_by_key(|&i| (queue[i].since, i));
            list.reverse(); // popped from the back: oldest first
        }
        while !projects.is_empty() {
            // The project furthest below its share; its head goes next.
            let pick = projects
                .iter()
                .map(|(p, list)| {
                    let head = *list.last().expect("emptied projects are removed");
                    let share = p.and_then(|k| shares.get(k)).copied().unwrap_or_default();
                    let used = share.used_milli + ahead.get(p).copied().unwrap_or(0);
                    let weight = share.weight_milli.max(1000);
                    // used/weight compared without division: scaled to a common weight.
                    let load = u128::from(used) * 1_000_000 / u128::from(weight);
                    let unshared = p.is_none();
                    ((!unshared as u8, load, queue[head].since, head), *p)
                })
                .min_by_key(|(key, _)| *key)
                .map(|(_, p)| p)
                .expect("not empty");
            let list = projects.get_mut(&pick).expect("picked from the map");
            let i = list.pop().expect("not empty");
            out.push(i);
            *ahead.entry(pick).or_default() += queue[i].milli;
            if list.is_empty() {
                projects.remove(&pick);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(p: &str) -> ShareKey {
        (TenantId::from_random(7), ProjectName::parse(p).unwrap())
    }

    fn q(priority: Priority, since: i64, project: Option<&str>) -> Queued {
        Queued { priority, since: Timestamp(since), project: project.map(key), milli: 1000 }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn classes_first_then_projects_take_turns_then_age() {
        let queue = vec![
            q(Priority::Batch, 0, Some("a")),
            q(Priority::Default, 1, Some("a")),
            q(Priority::Default, 2, Some("a")),
            q(Priority::Default, 3, Some("b")),
            q(Priority::Production, 4, Some("b")),
        ];
        let shares = BTreeMap::new();
        // Production first (b's: it counts toward b's share); then within default the project
        // with less ahead goes first, a's older head breaking ties; batch last.
        assert_eq!(order(&queue, &shares, Timestamp(5), 10 * MIN), vec![4, 1, 2, 3, 0]);
        // a already holds 4 GPUs: b's default work goes before a's.
        let busy = BTreeMap::from([(key("a"), Share { used_milli: 4000, weight_milli: 0 })]);
        assert_eq!(order(&queue, &busy, Timestamp(5), 10 * MIN), vec![4, 3, 1, 2, 0]);
        // A bigger guarantee is a bigger weight: a at 1 of a guaranteed 8 is below b's 0 + 1
        // ahead of a guaranteed 1.
        let weighted = BTreeMap::from([
            (key("a"), Share { used_milli: 1000, weight_milli: 8000 }),
            (key("b"), Share { used_milli: 0, weight_milli: 1000 }),
        ]);
        assert_eq!(order(&queue, &weighted, Timestamp(5), 10 * MIN), vec![4, 1, 2, 3, 0]);
        let even = BTreeMap::from([(key("a"), Share { used_milli: 1000, weight_milli: 1000 })]);
        assert_eq!(order(&queue, &even, Timestamp(5), 10 * MIN), vec![4, 1, 3, 2, 0], "a and b level");
    }

    #[test]
    fn a_batch_request_passes_fresh_production_work_once_aged() {
        let queue = vec![q(Priority::Production, 30 * MIN, Some("a")), q(Priority::Batch, 0, Some("b"))];
        let shares = BTreeMap::new();
        assert_eq!(order(&queue, &shares, Timestamp(30 * MIN + 1), 10 * MIN), vec![1, 0], "waited 3 agings");
        // Two levels up is level with fresh production work: then the older goes first.
        assert_eq!(order(&queue, &shares, Timestamp(30 * MIN + 1), 15 * MIN), vec![1, 0], "waited 2");
        assert_eq!(order(&queue, &shares, Timestamp(30 * MIN + 1), 16 * MIN), vec![0, 1], "waited 1");
        assert_eq!(order(&queue, &shares, Timestamp(30 * MIN + 1), 0), vec![0, 1], "no aging");
    }

    fn any_queued() -> impl Strategy<Value = Queued> {
        (0..3u32, 0..100_000i64, prop::option::of(0..3u8), 1..4u64).prop_map(|(c, since, p, gpus)| Queued {
            priority: Priority::ALL[c as usize],
            since: Timestamp(since),
            project: p.map(|p| key(["a", "b", "c"][p as usize])),
            milli: gpus * 1000,
        })
    }

    proptest! {
        #[test]
        fn an_order_is_a_permutation_and_nothing_starves(
            queue in prop::collection::vec(any_queued(), 0..40),
            used in prop::collection::vec(0..20_000u64, 3),
            now in 100_000i64..400_000,
            aging in 1_000i64..60_000,
        ) {
            let shares: BTreeMap<ShareKey, Share> = ["a", "b", "c"]
                .iter()
                .zip(&used)
                .map(|(p, u)| (key(p), Share { used_milli: *u, weight_milli: 0 }))
                .collect();
            let o = order(&queue, &shares, Timestamp(now), aging);
            let mut sorted = o.clone();
            sorted.sort();
            prop_assert_eq!(sorted, (0..queue.len()).collect::<Vec<_>>());
            let pos: Vec<usize> = { let mut p = vec![0; o.len()]; for (k, &i) in o.iter().enumerate() { p[i] = k; } p };
            for (i, a) in queue.iter().enumerate() {
                for (j, b) in queue.iter().enumerate() {
                    // The aging bound: waited MAX_BOOST agings, ahead of anything fresher than one.
                    let waited = |x: &Queued| now - x.since.0;
                    if waited(a) >= i64::from(MAX_BOOST) * aging && waited(b) < aging {
                        prop_assert!(pos[i] < pos[j], "{:?} waited {} and is behind fresh {:?}", a, waited(a), b);
                    }
                    // A higher level always goes first; within a project, the older first.
                    let (la, lb) = (level(a, Timestamp(now), aging), level(b, Timestamp(now), aging));
                    if la > lb {
                        prop_assert!(pos[i] < pos[j]);
                    }
                    if la == lb && a.project == b.project && a.since < b.since {
                        prop_assert!(pos[i] < pos[j]);
                    }
                }
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Two projects with endless demand for one-GPU tasks of random lengths on a 40-GPU
        /// fleet: over time each gets GPU-seconds in proportion to its weight, within 5%.
        #[test]
        fn endless_demand_splits_gpu_time_by_weight(weights in (1..4u64, 1..4u64), seed in any::<u64>()) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let projects = [key("a"), key("b")];
            let weight = [weights.0 * 1000, weights.1 * 1000];
            // Project a floods the queue (4 new tasks a tick), b asks for half that: both more
            // than the fleet runs (about 2.3 tasks end a tick).
            let mut queue: Vec<Queued> = Vec::new();
            let mut running: Vec<(usize, i64)> = Vec::new(); // (project, ends at)
            let mut gpu_ticks = [0u64; 2];
            for t in 0..1_500i64 {
                for _ in 0..4 { queue.push(Queued { priority: Priority::Default, since: Timestamp(t), project: Some(projects[0].clone()), milli: 1000 }); }
                for _ in 0..2 { queue.push(Queued { priority: Priority::Default, since: Timestamp(t), project: Some(projects[1].clone()), milli: 1000 }); }
                running.retain(|(_, end)| *end > t);
                let mut shares = BTreeMap::new();
                for (p, k) in projects.iter().enumerate() {
                    let used = running.iter().filter(|(q, _)| *q == p).count() as u64 * 1000;
                    shares.insert(k.clone(), Share { used_milli: used, weight_milli: weight[p] });
                }
                let free = 40 - running.len();
                let picked: Vec<usize> = order(&queue, &shares, Timestamp(t), 50).into_iter().take(free).collect();
                for &i in &picked {
                    let p = usize::from(queue[i].project.as_ref() == Some(&projects[1]));
                    running.push((p, t + rng.random_range(5..30)));
                }
                let mut picked = picked;
                picked.sort_unstable_by(|a, b| b.cmp(a));
                for i in picked { queue.swap_remove(i); }
                // Endless, not unbounded: the oldest beyond a backlog of 200 are dropped.
                if queue.len() > 200 { queue.sort_by_key(|q| std::cmp::Reverse(q.since)); queue.truncate(200); }
                if t >= 300 { for (p, _) in &running { gpu_ticks[*p] += 1; } }
            }
            let total = (gpu_ticks[0] + gpu_ticks[1]) as f64;
            let want = weight[0] as f64 / (weight[0] + weight[1]) as f64;
            let got = gpu_ticks[0] as f64 / total;
            prop_assert!((got - want).abs() < 0.05, "a got {:.3} of GPU time, its weight {:.3}", got, want);
        }
    }
}
