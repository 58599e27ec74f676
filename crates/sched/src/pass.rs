//! One whole scheduling pass, pure: the server reads the queue, the fleet and the market, calls
//! [`pass`], and applies what it returns (placements with a generation check, the reason each
//! request waits, notices to spot instances). Everything the pass decides is here: the order
//! requests are served in (priority class with aging, fair share between projects, age:
//! `crate::order`), the market's order of the queue (on-demand before spot, spot steered to the cheapest region its bid covers
//! or held back when priced out), tier by tier planning (reserved on the whole fleet, on-demand on
//! what reservations leave it, spot on everything still free: that is the lending), gangs that
//! start together or not at all, and which spot instances get notice so that waiting reserved or
//! on-demand work can run. Same input and seed, same plan.

use crate::preempt::{Candidate, Eviction, evictions};
use crate::{ClusterSnapshot, Pending, PendingReason, Placement, Plan, Policy};
use gpucloud_model::{
    ClusterId, GpuModel, InstanceId, Money, NodeId, Priority, ProjectName, Region, TenantId, Tier, Timestamp,
};
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// A pending instance as the pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it needs (`pending.node` set when its volume pins it to a node).
    pub pending: Pending,
    pub tier: Tier,
    /// A spot request's maximum price per GPU-hour (`None`: it pays the spot price, whatever).
    pub bid: Option<Money>,
    /// The cluster whose waiting members start in one pass or not at all.
    pub gang: Option<ClusterId>,
    /// The volume that pins it to `pending.node`, named in why it waits.
    pub volume: Option<String>,
    /// Its class, when it started waiting, and its project: the queue's order (`crate::order`).
    pub priority: Priority,
    pub since: Timestamp,
    pub project: Option<ProjectName>,
}

/// A spot instance holding GPUs: what reserved and on-demand work may take back with notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotHolder {
    pub instance: InstanceId,
    pub node: NodeId,
    pub model: GpuModel,
    pub gpus: u32,
    /// Holds part of one GPU: neither taken back nor counted as lent capacity.
    pub slice: bool,
    /// Running (not still provisioning): its minimum runtime counts from `running_since`.
    pub running: bool,
    pub running_since: Option<Timestamp>,
    pub last_checkpoint: Option<Timestamp>,
    /// Already under notice or stopping: its GPUs are on their way back.
    pub leaving: bool,
}

/// The market's state for one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Market {
    /// The spot price in force per pool; a pool missing here has no spot market.
    pub spot_prices: BTreeMap<(GpuModel, Region), Money>,
    /// Reserved GPUs their owners leave idle, per pool: hidden from others' on-demand work.
    pub reserved_idle: BTreeMap<(GpuModel, Region), u32>,
    pub spot_holders: Vec<SpotHolder>,
    /// Spot work inside this much runtime is not taken for on-demand work (a reservation's
    /// owner takes its GPUs back regardless, after the notice).
    pub min_runtime_ms: i64,
    /// Each project's GPUs in use and its weight: fair share within a priority level.
    pub shares: BTreeMap<crate::order::ShareKey, crate::order::Share>,
    /// A waiting request rises one level per this much waiting (0: never).
    pub aging_ms: i64,
    /// Whole GPUs each project holds of a model against what it is guaranteed (projects with a
    /// guarantee, and the projects of their organizations that hold GPUs of that model).
    pub guarantees: BTreeMap<(TenantId, ProjectName, GpuModel), Guarantee>,
    /// Instances holding whole GPUs in those organizations: what a project under its guarantee
    /// may take back from projects above theirs.
    pub borrowed: Vec<Borrowed>,
    /// What the operator lets power weigh in placement.
    pub power: crate::PowerWeight,
}

/// A project's whole GPUs of one model, held and guaranteed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guarantee {
    pub held: u32,
    pub guaranteed: u32,
}

/// An instance of a project, as reclaim sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Borrowed {
    pub holder: SpotHolder,
    pub tenant: TenantId,
    pub project: ProjectName,
}

/// Why a request waits after this pass, in words its tenant can act on (`Display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// No node has room for it now, and why, per region.
    NoRoom(PendingReason),
    /// Its volume's node has no room for it.
    Pinned { node: NodeId, volume: String, why: PendingReason },
    /// A spot request whose bid is under the spot price everywhere it may run.
    PricedOut { model: GpuModel, lowest: Money, bid: Money },
    /// A gang member: its gang does not fit whole yet.
    Gang { members: usize, placed: usize, count: u32, model: GpuModel },
    /// Requests of a higher priority level for the same model wait too, and go first.
    Behind { ahead: usize, model: GpuModel, why: Box<Waiting> },
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::NoRoom(r) => write!(f, "{r}"),
            Waiting::Pinned { node, volume, why } => {
                write!(f, "waiting for node {node}, where volume {volume} is: {why}")
            }
            Waiting::PricedOut { model, lowest, bid } => {
                write!(f, "the spot price of {model} is {lowest}/GPU-hour or more, above your max price {bid}")
            }
            Waiting::Gang { members, placed, count, model } => {
                write!(f, "waiting as a gang: {members} members of {count} x {model} start together, {placed} fit now")
            }
            Waiting::Behind { ahead, model, why } => {
                let s = if *ahead == 1 { "" } else { "s" };
                write!(f, "behind {ahead} higher-priority request{s} for {model}; {why}")
            }
        }
    }
}

/// A spot instance to give notice to, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub eviction: Eviction,
    /// The tier of the request it makes room for (reserved, or on-demand for warm work too).
    pub for_tier: Tier,
    pub for_count: u32,
    pub for_model: GpuModel,
    /// A reclaim: the request's project is under its guarantee, and takes GPUs back from a
    /// project of its organization holding more than its own.
    pub reclaim: Option<Reclaim>,
}

/// Who takes GPUs back from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaim {
    pub for_project: ProjectName,
    pub guaranteed: u32,
    pub from_project: ProjectName,
    pub from_holds: u32,
    pub from_guaranteed: u32,
}

impl fmt::Display for Preemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.eviction;
        if let Some(r) = &self.reclaim {
            return write!(
                f,
                "reclaimed for project {} (under its guarantee of {} x {}): project {} holds {} {} GPUs against a \
                 guarantee of {}, and of its instances on node {} this one loses the least work ({} s since its \
                 last checkpoint)",
                r.for_project,
                r.guaranteed,
                self.for_model,
                r.from_project,
                r.from_holds,
                self.for_model,
                r.from_guaranteed,
                e.node,
                e.lost_work_ms / 1000
            );
        }
        write!(
            f,
            "{} request {} for {} x {} needs the GPUs; of {} spot instance(s) on node {}, this one loses the least \
             work ({} s since its last checkpoint)",
            self.for_tier,
            e.for_instance,
            self.for_count,
            self.for_model,
            e.considered,
            e.node,
            e.lost_work_ms / 1000
        )
    }
}

/// What one pass decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassPlan {
    pub placements: Vec<Placement>,
    /// Every request not placed, in queue order, with why.
    pub waiting: Vec<(InstanceId, Waiting)>,
    pub preemptions: Vec<Preemption>,
}

/// The pools whose spot price the pass reads: where each spot request with a bid may run.
pub fn priced_pools(snapshot: &ClusterSnapshot, requests: &[Request]) -> BTreeSet<(GpuModel, Region)> {
    let mut out = BTreeSet::new();
    for r in requests.iter().filter(|r| r.tier == Tier::Spot && r.bid.is_some()) {
        for region in regions_for(snapshot, &r.pending) {
            out.insert((r.pending.model, region));
        }
    }
    out
}

/// The regions a request may run in: the one it asked for, or each with its model.
fn regions_for(snapshot: &ClusterSnapshot, p: &Pending) -> Vec<Region> {
    let mut regions: Vec<Region> = match &p.region {
        Some(r) => vec![r.clone()],
        None => snapshot
            .nodes
            .iter()
            .filter(|n| n.gpus.iter().any(|g| g.model == p.model))
            .map(|n| n.region.clone())
            .collect(),
    };
    regions.sort();
    regions.dedup();
    regions
}

pub fn pass(
    snapshot: &ClusterSnapshot,
    requests: &[Request],
    market: &Market,
    policy: Policy,
    now: Timestamp,
    rng: &mut dyn RngCore,
) -> PassPlan {
    let by_id: HashMap<&InstanceId, &Request> = requests.iter().map(|r| (&r.pending.instance, r)).collect();
    let (queue, priced_out) = market_queue(snapshot, &served_order(requests, market, now), market);
    let region_of: HashMap<&NodeId, &Region> = snapshot.nodes.iter().map(|n| (&n.id, &n.region)).collect();
    let mut spot_gpus: BTreeMap<(GpuModel, Region), u32> = BTreeMap::new();
    for h in market.spot_holders.iter().filter(|h| !h.slice) {
        if let Some(r) = region_of.get(&h.node) {
            *spot_gpus.entry((h.model, (*r).clone())).or_default() += h.gpus;
        }
    }
    let (mut plan, masked) =
        plan_tiers(snapshot, &queue, &by_id, &market.reserved_idle, &spot_gpus, (policy, market.power), now, rng);
    let unplaced_before_gangs = plan.unplaced.clone();

    // A gang's waiting members all start in this pass, or none does.
    let mut gangs: HashMap<&ClusterId, (usize, usize)> = HashMap::new();
    for r in requests {
        if let Some(g) = &r.gang {
            gangs.entry(g).or_default().0 += 1;
        }
    }
    for p in &plan.placements {
        if let Some(g) = by_id.get(&p.instance).and_then(|r| r.gang.as_ref()) {
            gangs.entry(g).or_default().1 += 1;
        }
    }
    let short: HashMap<&ClusterId, (usize, usize)> =
        gangs.into_iter().filter(|(_, (all, placed))| placed < all).collect();
    let held_back = |id: &InstanceId| by_id.get(id).and_then(|r| r.gang.as_ref()).and_then(|g| short.get(g)).copied();
    plan.placements.retain(|p| held_back(&p.instance).is_none());

    let mut out = PassPlan { placements: plan.placements, ..PassPlan::default() };
    let placed: HashSet<&InstanceId> = out.placements.iter().map(|p| &p.instance).collect();
    let mut reasons: HashMap<&InstanceId, Waiting> = HashMap::new();
    for u in plan.unplaced {
        let r = by_id[&u.instance];
        let why = match (&r.pending.node, &r.volume) {
            (Some(node), Some(volume)) => Waiting::Pinned { node: node.clone(), volume: volume.clone(), why: u.reason },
            _ => Waiting::NoRoom(u.reason),
        };
        reasons.insert(&r.pending.instance, why);
    }
    for (id, why) in priced_out {
        reasons.insert(id, why);
    }
    for r in requests {
        let id = &r.pending.instance;
        if placed.contains(id) {
            continue;
        }
        let why = match held_back(id) {
            Some((members, placed)) => {
                Waiting::Gang { members, placed, count: r.pending.count, model: r.pending.model }
            }
            None => match reasons.remove(id) {
                Some(w) => w,
                None => continue,
            },
        };
        out.waiting.push((id.clone(), why));
    }
    // Say so when work of a higher priority level (aging included) waits for the same model:
    // it goes first, whatever frees.
    let level = |id: &InstanceId| {
        let r = by_id[id];
        let q = crate::order::Queued { priority: r.priority, since: r.since, project: None, milli: 0 };
        crate::order::level(&q, now, market.aging_ms)
    };
    let levels: Vec<(GpuModel, u32)> = out.waiting.iter().map(|(id, _)| (by_id[id].pending.model, level(id))).collect();
    let mut per_level: BTreeMap<(GpuModel, u32), usize> = BTreeMap::new();
    for l in &levels {
        *per_level.entry(*l).or_default() += 1;
    }
    out.waiting = std::mem::take(&mut out.waiting)
        .into_iter()
        .zip(&levels)
        .map(|((id, why), &(model, mine))| {
            let ahead: usize = per_level.range((model, mine + 1)..=(model, u32::MAX)).map(|(_, n)| n).sum();
            let why = if ahead > 0 { Waiting::Behind { ahead, model, why: Box::new(why) } } else { why };
            (id, why)
        })
        .collect();

    // Spot instances make room for what still waits: first for reservations' owners (on the
    // whole fleet, their minimum runtime not protecting them), then for on-demand work (on the
    // fleet it sees, keeping the spot work that backs idle reservations).
    if !unplaced_before_gangs.is_empty() {
        let waiting = |tiers: &[Tier]| -> Vec<Pending> {
            let mut out = Vec::new();
            for tier in tiers {
                out.extend(
                    unplaced_before_gangs
                        .iter()
                        .filter_map(|u| by_id.get(&u.instance))
                        .filter(|r| r.tier == *tier)
                        .filter_map(|r| queue.iter().find(|p| p.instance == r.pending.instance).cloned()),
                );
            }
            out
        };
        let backing: BTreeMap<(GpuModel, Region), u32> = market
            .reserved_idle
            .iter()
            .map(|(k, idle)| (k.clone(), (*idle).min(spot_gpus.get(k).copied().unwrap_or(0))))
            .collect();
        let mut noticed: HashSet<InstanceId> = HashSet::new();
        for (tier, view, wants, min_runtime, backing) in [
            (Tier::Reserved, snapshot, waiting(&[Tier::Reserved]), 0, BTreeMap::new()),
            (Tier::OnDemand, &masked, waiting(&[Tier::OnDemand, Tier::Warm]), market.min_runtime_ms, backing),
        ] {
            if wants.is_empty() {
                continue;
            }
            let candidates = candidates(market, &noticed, &region_of, &backing, min_runtime, now);
            for e in evictions(view, &wants, &candidates) {
                noticed.insert(e.victim.clone());
                let want = &by_id[&e.for_instance].pending;
                out.preemptions.push(Preemption {
                    for_tier: tier,
                    for_count: want.count,
                    for_model: want.model,
                    eviction: e,
                    reclaim: None,
                });
            }
        }
        reclaim(&mut out, &masked, &unplaced_before_gangs, &queue, &by_id, market, now);
    }
    out
}

/// Projects under their guarantee take GPUs back from projects of their organization that hold
/// more than theirs: on-demand requests that fit nowhere and that spot work made no room for;
/// a victim's project never drops below its own guarantee; minimum runtime and least lost work
/// as for spot. A model that had spot work noticed this pass waits for the next (the spot GPUs'
/// room is not counted twice).
fn reclaim(
    out: &mut PassPlan,
    view: &ClusterSnapshot,
    unplaced: &[crate::Unplaced],
    queue: &[Pending],
    by_id: &HashMap<&InstanceId, &Request>,
    market: &Market,
    now: Timestamp,
) {
    if market.guarantees.is_empty() || market.borrowed.is_empty() {
        return;
    }
    let spot_models: HashSet<GpuModel> = out.preemptions.iter().map(|p| p.for_model).collect();
    let noticed: HashSet<InstanceId> = out.preemptions.iter().map(|p| p.eviction.victim.clone()).collect();
    let mut held: BTreeMap<(TenantId, ProjectName, GpuModel), Guarantee> = market.guarantees.clone();
    // Per organization, its requests under their guarantee, in queue order.
    let mut wants: BTreeMap<&TenantId, Vec<Pending>> = BTreeMap::new();
    for u in unplaced {
        let Some(r) = by_id.get(&u.instance) else { continue };
        let (Some(t), Some(p)) = (&r.pending.tenant, &r.project) else { continue };
        if r.tier != Tier::OnDemand || r.pending.share.is_some() || spot_models.contains(&r.pending.model) {
            continue;
        }
        let Some(g) = market.guarantees.get(&(t.clone(), p.clone(), r.pending.model)) else { continue };
        if g.held + r.pending.count > g.guaranteed {
            continue;
        }
        if let Some(q) = queue.iter().find(|q| q.instance == r.pending.instance) {
            wants.entry(t).or_default().push(q.clone());
        }
    }
    for (tenant, wants) in wants {
        let candidates: Vec<Candidate> = market
            .borrowed
            .iter()
            .filter(|b| b.tenant == *tenant && !b.holder.slice && !noticed.contains(&b.holder.instance))
            .filter(|b| {
                held.get(&(b.tenant.clone(), b.project.clone(), b.holder.model)).is_some_and(|g| g.held > g.guaranteed)
            })
            .map(|b| candidate(&b.holder, b.holder.leaving, market.min_runtime_ms, now))
            .collect();
        let project_of: HashMap<&InstanceId, &ProjectName> =
            market.borrowed.iter().map(|b| (&b.holder.instance, &b.project)).collect();
        let mut by_request: Vec<(InstanceId, Vec<Eviction>)> = Vec::new();
        for e in evictions(view, &wants, &candidates) {
            match by_request.iter_mut().find(|(id, _)| *id == e.for_instance) {
                Some((_, list)) => list.push(e),
                None => by_request.push((e.for_instance.clone(), vec![e])),
            }
        }
        for (id, victims) in by_request {
            let r = by_id[&id];
            let project = r.project.clone().expect("only requests with a project want reclaim");
            let model = r.pending.model;
            let mine = (tenant.clone(), project.clone(), model);
            // The request's project must still be under its guarantee, and each victim's project
            // stay at or above its own, counting what this pass already took.
            let fits_mine = held.get(&mine).is_some_and(|g| g.held + r.pending.count <= g.guaranteed);
            let mut take: BTreeMap<&ProjectName, u32> = BTreeMap::new();
            for v in &victims {
                let gpus = candidates.iter().find(|c| c.instance == v.victim).map_or(0, |c| c.gpus);
                *take.entry(project_of[&v.victim]).or_default() += gpus;
            }
            let within = take.iter().all(|(p, n)| {
                held.get(&(tenant.clone(), (*p).clone(), model)).is_some_and(|g| g.held >= g.guaranteed + n)
            });
            if !fits_mine || !within {
                continue;
            }
            for (p, n) in &take {
                if let Some(g) = held.get_mut(&(tenant.clone(), (*p).clone(), model)) {
                    g.held -= n;
                }
            }
            let guaranteed = held.get(&mine).map_or(0, |g| g.guaranteed);
            if let Some(g) = held.get_mut(&mine) {
                g.held += r.pending.count;
            }
            for v in victims {
                let from = project_of[&v.victim].clone();
                let g = market.guarantees.get(&(tenant.clone(), from.clone(), model)).copied().unwrap_or_default();
                out.preemptions.push(Preemption {
                    for_tier: Tier::OnDemand,
                    for_count: r.pending.count,
                    for_model: model,
                    eviction: v,
                    reclaim: Some(Reclaim {
                        for_project: project.clone(),
                        guaranteed,
                        from_project: from,
                        from_holds: g.held,
                        from_guaranteed: g.guaranteed,
                    }),
                });
            }
        }
    }
}

/// The spot holders as preemption candidates: what each would lose, whether it is already
/// leaving, and whether it is protected (inside its minimum runtime, or backing an idle
/// reservation: the spot work that would lose the most is kept first).
fn candidates(
    market: &Market,
    noticed: &HashSet<InstanceId>,
    region_of: &HashMap<&NodeId, &Region>,
    backing: &BTreeMap<(GpuModel, Region), u32>,
    min_runtime_ms: i64,
    now: Timestamp,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = market
        .spot_holders
        .iter()
        .filter(|h| !h.slice)
        .map(|h| candidate(h, h.leaving || noticed.contains(&h.instance), min_runtime_ms, now))
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.lost_work_ms));
    let mut backed: BTreeMap<(GpuModel, Region), u32> = BTreeMap::new();
    for c in out.iter_mut() {
        let Some(region) = region_of.get(&c.node) else { continue };
        let key = (c.model, (*region).clone());
        let need = backing.get(&key).copied().unwrap_or(0);
        let have = backed.entry(key).or_default();
        if *have < need && !c.noticed {
            c.protected = true;
            *have += c.gpus;
        }
    }
    out
}

/// An instance holding GPUs as preemption weighs it: the work it would lose (since its last
/// checkpoint, or its start), and whether it is inside its minimum runtime.
fn candidate(h: &SpotHolder, noticed: bool, min_runtime_ms: i64, now: Timestamp) -> Candidate {
    let since = h.running_since.unwrap_or(now);
    let last_save = h.last_checkpoint.map_or(since, |c| c.max(since));
    Candidate {
        instance: h.instance.clone(),
        node: h.node.clone(),
        model: h.model,
        gpus: h.gpus,
        lost_work_ms: now.millis_since(last_save).max(0),
        noticed,
        protected: h.running && now.millis_since(since) < min_runtime_ms,
    }
}

/// The requests in the order they are served: priority class with aging, fair share between
/// projects, age (`crate::order`).
fn served_order<'a>(requests: &'a [Request], market: &Market, now: Timestamp) -> Vec<&'a Request> {
    let queued: Vec<crate::order::Queued> = requests
        .iter()
        .map(|r| crate::order::Queued {
            priority: r.priority,
            since: r.since,
            project: match (&r.pending.tenant, &r.project) {
                (Some(t), Some(p)) => Some((t.clone(), p.clone())),
                _ => None,
            },
            milli: r.pending.share.as_ref().map_or(u64::from(r.pending.count) * 1000, |s| u64::from(s.milli)),
        })
        .collect();
    crate::order::order(&queued, &market.shares, now, market.aging_ms).into_iter().map(|i| &requests[i]).collect()
}

/// The queue as the market orders it: reserved, on-demand and warm work first (it may preempt
/// spot, so spot must not take its GPUs back), each class in the order given. A spot request
/// whose bid is under the spot price waits (the second list); one for any region is steered to
/// the cheapest region its bid covers.
fn market_queue<'a>(
    snapshot: &ClusterSnapshot,
    requests: &[&'a Request],
    market: &Market,
) -> (Vec<Pending>, Vec<(&'a InstanceId, Waiting)>) {
    let mut queue = Vec::with_capacity(requests.len());
    let mut spot = Vec::new();
    let mut priced_out = Vec::new();
    for &r in requests {
        let mut p = r.pending.clone();
        if r.tier != Tier::Spot {
            queue.push(p);
            continue;
        }
        let Some(bid) = r.bid else {
            spot.push(p);
            continue;
        };
        let mut best: Option<(Money, Region)> = None;
        let mut lowest: Option<Money> = None;
        for region in regions_for(snapshot, &r.pending) {
            let Some(&price) = market.spot_prices.get(&(p.model, region.clone())) else { continue };
            lowest = Some(lowest.map_or(price, |l: Money| l.min(price)));
            if price <= bid && best.as_ref().is_none_or(|(b, _)| price < *b) {
                best = Some((price, region));
            }
        }
        match (best, lowest) {
            (Some((_, region)), _) => {
                if p.region.is_none() {
                    p.region = Some(region);
                }
                spot.push(p);
            }
            (None, Some(lowest)) => {
                priced_out.push((&r.pending.instance, Waiting::PricedOut { model: p.model, lowest, bid }))
            }
            // No spot market for it (no on-demand price): placed like any request.
            (None, None) => spot.push(p),
        }
    }
    queue.extend(spot);
    (queue, priced_out)
}

/// Marks what `placements` take on `snap`.
pub fn occupy(snap: &mut ClusterSnapshot, placements: &[Placement], queue: &[Pending]) {
    for p in placements {
        let want = queue.iter().find(|q| q.instance == p.instance);
        let share = want.and_then(|q| q.share.clone());
        let Some(n) = snap.nodes.iter_mut().find(|n| n.id == p.node) else { continue };
        for g in n.gpus.iter_mut().filter(|g| p.gpus.contains(&g.index)) {
            match &share {
                Some(s) => {
                    g.slice_milli += s.milli;
                    g.slice_mem_mib += s.memory_mib;
                    g.mig |= s.mig.is_some();
                    if s.mig.is_none() && g.slice_tenant.is_none() {
                        g.slice_tenant = want.and_then(|q| q.tenant.clone());
                    }
                }
                None => g.allocated = true,
            }
        }
    }
}

/// The fleet as on-demand work of others sees it: in each pool, the reserved GPUs their owners
/// leave idle are hidden, except as many as spot work holds there (spot can be preempted to give
/// them back). Whole free nodes are hidden first, keeping reserved room together for gangs.
fn mask_reserved(
    snap: &ClusterSnapshot,
    idle: &BTreeMap<(GpuModel, Region), u32>,
    spot_gpus: &BTreeMap<(GpuModel, Region), u32>,
) -> ClusterSnapshot {
    let mut out = snap.clone();
    for ((model, region), reserved) in idle {
        let mut hide = reserved.saturating_sub(spot_gpus.get(&(*model, region.clone())).copied().unwrap_or(0));
        let free = |n: &crate::NodeView| {
            n.gpus.iter().filter(|g| g.model == *model && g.healthy && !g.allocated && g.slice_milli == 0).count()
        };
        let mut order: Vec<usize> = (0..out.nodes.len()).filter(|&i| out.nodes[i].region == *region).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(free(&out.nodes[i])));
        for i in order {
            for g in out.nodes[i].gpus.iter_mut() {
                if hide > 0 && g.model == *model && g.healthy && !g.allocated && g.slice_milli == 0 {
                    g.allocated = true;
                    g.reserved = true;
                    hide -= 1;
                }
            }
        }
    }
    out
}

/// Plans the queue tier by tier: reserved work on the whole fleet, on-demand (and warm) work on
/// what the reservations leave it, then spot on everything still free (idle reserved GPUs
/// included: that is the lending). Returns the plan and the fleet as on-demand work sees it after.
#[allow(clippy::too_many_arguments)]
fn plan_tiers(
    snapshot: &ClusterSnapshot,
    queue: &[Pending],
    by_id: &HashMap<&InstanceId, &Request>,
    idle: &BTreeMap<(GpuModel, Region), u32>,
    spot_gpus: &BTreeMap<(GpuModel, Region), u32>,
    (policy, power): (Policy, crate::PowerWeight),
    now: Timestamp,
    rng: &mut dyn RngCore,
) -> (Plan, ClusterSnapshot) {
    let plan = |fleet: &ClusterSnapshot, queue: &[Pending], rng: &mut dyn RngCore| {
        crate::plan_weighing_power(fleet, queue, policy, power, now, rng)
    };
    if idle.is_empty() {
        return (plan(snapshot, queue, rng), snapshot.clone());
    }
    // Tier by tier, each in queue order: on-demand work before warm pools' fills.
    let of = |tiers: &[Tier]| -> Vec<Pending> {
        let mut out = Vec::new();
        for tier in tiers {
            out.extend(queue.iter().filter(|p| by_id.get(&p.instance).is_some_and(|r| r.tier == *tier)).cloned());
        }
        out
    };
    let mut out = Plan::default();
    let mut fleet = snapshot.clone();
    let reserved = of(&[Tier::Reserved]);
    let first = plan(&fleet, &reserved, rng);
    occupy(&mut fleet, &first.placements, &reserved);
    let mut on_demand_view = mask_reserved(&fleet, idle, spot_gpus);
    let od = of(&[Tier::OnDemand, Tier::Warm]);
    let second = plan(&on_demand_view, &od, rng);
    occupy(&mut fleet, &second.placements, &od);
    occupy(&mut on_demand_view, &second.placements, &od);
    let spot = of(&[Tier::Spot]);
    let third = plan(&fleet, &spot, rng);
    for p in [first, second, third] {
        out.placements.extend(p.placements);
        out.unplaced.extend(p.unplaced);
    }
    (out, on_demand_view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GpuView, NodeView};
    use gpucloud_model::{NodeHealth, NodeState};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const A100: GpuModel = GpuModel::A100_40GB;
    const NOW: Timestamp = Timestamp(10_000_000);

    fn region(s: &str) -> Region {
        Region::parse(s).unwrap()
    }

    fn node(i: u32, r: &str, gpus: u32, used: u32) -> NodeView {
        NodeView {
            id: NodeId::from_random(u128::from(i) + 1),
            region: region(r),
            generation: 3,
            state: NodeState::Ready,
            health: NodeHealth::Healthy,
            gpus: (0..gpus).map(|g| GpuView { allocated: g < used, ..GpuView::free(g, A100) }).collect(),
            open_time_slicing: false,
            images: Vec::new(),
        }
    }

    fn req(i: u128, tier: Tier, count: u32, r: Option<&str>) -> Request {
        Request {
            pending: Pending {
                instance: InstanceId::from_random(1_000 + i),
                model: A100,
                count,
                region: r.map(region),
                share: None,
                tenant: None,
                node: None,
                image: None,
            },
            tier,
            bid: None,
            gang: None,
            volume: None,
            priority: Priority::Default,
            since: Timestamp(0),
            project: None,
        }
    }

    fn holder(i: u128, node: &NodeView, gpus: u32, running_for_ms: i64) -> SpotHolder {
        SpotHolder {
            instance: InstanceId::from_random(i),
            node: node.id.clone(),
            model: A100,
            gpus,
            slice: false,
            running: true,
            running_since: Some(NOW.plus_millis(-running_for_ms)),
            last_checkpoint: None,
            leaving: false,
        }
    }

    fn run(snap: &ClusterSnapshot, requests: &[Request], market: &Market) -> PassPlan {
        pass(snap, requests, market, Policy::FgdPack, NOW, &mut StdRng::seed_from_u64(7))
    }

    fn waiting_for<'a>(plan: &'a PassPlan, r: &Request) -> Option<&'a Waiting> {
        plan.waiting.iter().find(|(id, _)| *id == r.pending.instance).map(|(_, w)| w)
    }

    #[test]
    fn a_project_under_its_guarantee_takes_gpus_back_from_one_above_its_own() {
        let n = node(1, "eu-1", 4, 4);
        let snap = ClusterSnapshot { nodes: vec![n.clone()] };
        let (lab, rival) = (TenantId::from_random(1), TenantId::from_random(2));
        let name = |p: &str| ProjectName::parse(p).unwrap();
        let borrowed = |i: u128, t: &TenantId, p: &str, age_ms: i64| Borrowed {
            holder: holder(i, &n, 2, age_ms),
            tenant: t.clone(),
            project: name(p),
        };
        let mut want = req(9, Tier::OnDemand, 2, None);
        want.pending.tenant = Some(lab.clone());
        want.project = Some(name("prod"));
        let market = |prod: u32, research: u32, who: &TenantId| Market {
            min_runtime_ms: 60_000,
            guarantees: [
                ((lab.clone(), name("prod"), A100), Guarantee { held: 0, guaranteed: prod }),
                ((who.clone(), name("research"), A100), Guarantee { held: 4, guaranteed: research }),
            ]
            .into_iter()
            .collect(),
            // The older instance has lost more work since it started: the younger one goes.
            borrowed: vec![borrowed(1, who, "research", 7_200_000), borrowed(2, who, "research", 3_600_000)],
            ..Market::default()
        };
        let plan = run(&snap, std::slice::from_ref(&want), &market(2, 0, &lab));
        assert_eq!(plan.preemptions.len(), 1, "{plan:?}");
        let p = &plan.preemptions[0];
        assert_eq!(p.eviction.victim, InstanceId::from_random(2));
        let why = p.to_string();
        assert!(
            why.starts_with(
                "reclaimed for project prod (under its guarantee of 2 x A100-40GB): project research holds 4"
            ),
            "{why}"
        );
        // research keeps its own guarantee of 2: one instance may go, not two.
        assert_eq!(run(&snap, std::slice::from_ref(&want), &market(2, 2, &lab)).preemptions.len(), 1);
        let mut four = want.clone();
        four.pending.count = 4;
        assert!(run(&snap, &[four], &market(4, 2, &lab)).preemptions.is_empty(), "research would fall below 2");
        // Nothing is taken from within a guarantee, past one's own, from another tenant, or
        // inside the minimum runtime.
        assert!(run(&snap, std::slice::from_ref(&want), &market(2, 4, &lab)).preemptions.is_empty());
        assert!(run(&snap, std::slice::from_ref(&want), &market(1, 0, &lab)).preemptions.is_empty());
        assert!(run(&snap, std::slice::from_ref(&want), &market(2, 0, &rival)).preemptions.is_empty());
        let young = Market {
            borrowed: vec![borrowed(1, &lab, "research", 1_000), borrowed(2, &lab, "research", 2_000)],
            ..market(2, 0, &lab)
        };
        assert!(run(&snap, std::slice::from_ref(&want), &young).preemptions.is_empty());
        // Spot work does not reclaim: a guarantee is for on-demand work.
        let spot = Request { tier: Tier::Spot, ..want.clone() };
        assert!(run(&snap, &[spot], &market(2, 0, &lab)).preemptions.is_empty());
    }

    #[test]
    fn waiting_work_says_when_higher_priority_work_waits_ahead_of_it() {
        let n = node(1, "eu-1", 4, 4);
        let snap = ClusterSnapshot { nodes: vec![n] };
        let batch = Request { priority: Priority::Batch, ..req(1, Tier::OnDemand, 1, None) };
        let prod = Request { priority: Priority::Production, ..req(2, Tier::OnDemand, 1, None) };
        let also = Request { priority: Priority::Production, ..req(3, Tier::OnDemand, 2, None) };
        let plan = run(&snap, &[batch.clone(), prod.clone(), also], &Market::default());
        let why = waiting_for(&plan, &batch).unwrap().to_string();
        assert!(why.starts_with("behind 2 higher-priority requests for A100-40GB; "), "{why}");
        let why = waiting_for(&plan, &prod).unwrap().to_string();
        assert!(!why.contains("behind"), "{why}");
        // Aged three levels, the batch request is above fresh production work: nothing is ahead.
        let market = Market { aging_ms: 1, ..Market::default() };
        let fresh = Request { since: NOW, ..prod };
        let plan = run(&snap, &[batch.clone(), fresh.clone()], &market);
        assert!(!waiting_for(&plan, &batch).unwrap().to_string().contains("behind"));
        assert!(waiting_for(&plan, &fresh).unwrap().to_string().starts_with("behind 1 higher-priority request for"));
    }

    #[test]
    fn spot_goes_to_the_cheapest_region_its_bid_covers_or_waits_priced_out() {
        let snap = ClusterSnapshot { nodes: vec![node(1, "eu-1", 4, 0), node(2, "us-1", 4, 0)] };
        let mut market = Market::default();
        market.spot_prices.insert((A100, region("eu-1")), Money(900_000));
        market.spot_prices.insert((A100, region("us-1")), Money(700_000));
        let cheap = Request { bid: Some(Money(800_000)), ..req(1, Tier::Spot, 1, None) };
        let low = Request { bid: Some(Money(500_000)), ..req(2, Tier::Spot, 1, None) };
        assert_eq!(
            priced_pools(&snap, &[cheap.clone(), low.clone()]).into_iter().collect::<Vec<_>>(),
            vec![(A100, region("eu-1")), (A100, region("us-1"))]
        );
        let plan = run(&snap, &[cheap.clone(), low.clone()], &market);
        assert_eq!(plan.placements.len(), 1);
        assert_eq!(plan.placements[0].node, snap.nodes[1].id, "us-1 is the cheaper region");
        assert_eq!(
            waiting_for(&plan, &low).unwrap().to_string(),
            "the spot price of A100-40GB is 0.700000/GPU-hour or more, above your max price 0.500000"
        );
    }

    #[test]
    fn a_gang_starts_whole_or_waits_whole() {
        let snap = ClusterSnapshot { nodes: vec![node(1, "eu-1", 8, 0)] };
        let gang = ClusterId::from_random(9);
        let members: Vec<Request> =
            (0..3).map(|i| Request { gang: Some(gang.clone()), ..req(i, Tier::OnDemand, 4, None) }).collect();
        let plan = run(&snap, &members, &Market::default());
        assert!(plan.placements.is_empty(), "two of three fit: none starts");
        for m in &members {
            let w = waiting_for(&plan, m).unwrap();
            assert_eq!(w.to_string(), "waiting as a gang: 3 members of 4 x A100-40GB start together, 2 fit now");
        }
        assert_eq!(run(&snap, &members[..2], &Market::default()).placements.len(), 2);
    }

    #[test]
    fn a_reservations_owner_takes_back_lent_gpus_at_once_others_only_after_the_minimum_runtime() {
        let n = node(1, "eu-1", 4, 4);
        let snap = ClusterSnapshot { nodes: vec![n.clone()] };
        let young = holder(1, &n, 4, 1_000);
        let market = Market {
            spot_holders: vec![young.clone()],
            min_runtime_ms: 60_000,
            reserved_idle: [((A100, region("eu-1")), 4)].into_iter().collect(),
            ..Market::default()
        };
        let owner = req(1, Tier::Reserved, 2, Some("eu-1"));
        let plan = run(&snap, std::slice::from_ref(&owner), &market);
        assert_eq!(plan.preemptions.len(), 1);
        assert_eq!(
            (&plan.preemptions[0].eviction.victim, plan.preemptions[0].for_tier),
            (&young.instance, Tier::Reserved)
        );
        assert!(plan.preemptions[0].to_string().starts_with(&format!("reserved request {}", owner.pending.instance)));

        // Another tenant's on-demand work neither takes idle reserved GPUs nor the spot work on them.
        let other = req(2, Tier::OnDemand, 2, Some("eu-1"));
        let plan = run(&snap, std::slice::from_ref(&other), &market);
        assert!(plan.preemptions.is_empty() && plan.placements.is_empty(), "{plan:?}");
        // Without a reservation, it preempts spot work past its minimum runtime only.
        let open = Market { reserved_idle: BTreeMap::new(), ..market.clone() };
        assert!(run(&snap, std::slice::from_ref(&other), &open).preemptions.is_empty(), "inside the minimum");
        let old = Market { spot_holders: vec![holder(1, &n, 4, 120_000)], ..open };
        let plan = run(&snap, std::slice::from_ref(&other), &old);
        assert_eq!(plan.preemptions.len(), 1);
        assert!(plan.preemptions[0].to_string().starts_with("on-demand request"));
    }

    #[test]
    fn spot_work_borrows_idle_reserved_gpus_that_on_demand_work_cannot_see() {
        let snap = ClusterSnapshot { nodes: vec![node(1, "eu-1", 4, 0)] };
        let market = Market { reserved_idle: [((A100, region("eu-1")), 4)].into_iter().collect(), ..Market::default() };
        let od = req(1, Tier::OnDemand, 1, None);
        let spot = req(2, Tier::Spot, 2, None);
        let plan = run(&snap, &[od.clone(), spot.clone()], &market);
        assert_eq!(plan.placements.iter().map(|p| &p.instance).collect::<Vec<_>>(), vec![&spot.pending.instance]);
        assert!(waiting_for(&plan, &od).unwrap().to_string().contains("1 reserved"), "{plan:?}");
    }

    proptest! {
        /// One organization's projects on full nodes, with random guarantees and holdings: a
        /// reclaim never takes a project below its guarantee, is only made for a project that
        /// stays within its own, never takes another tenant's work or work inside its minimum
        /// runtime.
        #[test]
        fn reclaim_never_takes_a_project_below_its_guarantee(
            holdings in proptest::collection::vec((0usize..3, 1u32..5, any::<bool>(), 0i64..200_000), 1..8),
            guaranteed in proptest::collection::vec(0u32..8, 3),
            asks in proptest::collection::vec((0usize..3, 1u32..5), 1..5),
        ) {
            let (lab, rival) = (TenantId::from_random(1), TenantId::from_random(2));
            let names = ["a", "b", "c"].map(|p| ProjectName::parse(p).unwrap());
            let mut snap = ClusterSnapshot::default();
            let mut market = Market { min_runtime_ms: 50_000, ..Market::default() };
            let mut held = [0u32; 3];
            for (i, (p, gpus, theirs, ran)) in holdings.iter().enumerate() {
                let n = node(i as u32, "eu-1", *gpus, *gpus);
                let tenant = if *theirs { rival.clone() } else { lab.clone() };
                if !*theirs {
                    held[*p] += gpus;
                }
                market.borrowed.push(Borrowed { holder: holder(100 + i as u128, &n, *gpus, *ran), tenant, project: names[*p].clone() });
                snap.nodes.push(n);
            }
            for p in 0..3 {
                market.guarantees.insert((lab.clone(), names[p].clone(), A100), Guarantee { held: held[p], guaranteed: guaranteed[p] });
            }
            let requests: Vec<Request> = asks
                .iter()
                .enumerate()
                .map(|(i, (p, count))| {
                    let mut r = req(i as u128, Tier::OnDemand, *count, None);
                    r.pending.tenant = Some(lab.clone());
                    r.project = Some(names[*p].clone());
                    r
                })
                .collect();
            let plan = pass(&snap, &requests, &market, Policy::FgdPack, NOW, &mut StdRng::seed_from_u64(1));
            let mut taken = [0u32; 3];
            let mut given = [0u32; 3];
            let mut helped: HashSet<&InstanceId> = HashSet::new();
            for pre in &plan.preemptions {
                let b = market.borrowed.iter().find(|b| b.holder.instance == pre.eviction.victim).unwrap();
                prop_assert!(pre.reclaim.is_some());
                prop_assert_eq!(&b.tenant, &lab, "another tenant's work was taken");
                prop_assert!(NOW.millis_since(b.holder.running_since.unwrap()) >= 50_000, "inside its minimum runtime");
                let p = names.iter().position(|n| *n == b.project).unwrap();
                taken[p] += b.holder.gpus;
                if helped.insert(&pre.eviction.for_instance) {
                    let r = requests.iter().find(|r| r.pending.instance == pre.eviction.for_instance).unwrap();
                    let q = names.iter().position(|n| Some(n) == r.project.as_ref()).unwrap();
                    given[q] += r.pending.count;
                }
            }
            for p in 0..3 {
                if taken[p] > 0 {
                    prop_assert!(held[p] - taken[p] >= guaranteed[p], "project {} held {} of a guaranteed {}, lost {}", p, held[p], guaranteed[p], taken[p]);
                }
                if given[p] > 0 {
                    prop_assert!(held[p] + given[p] <= guaranteed[p], "project {} went past its guarantee", p);
                }
            }
        }
    }

    /// A random fleet of one model in two regions, some GPUs held by spot work.
    fn world() -> impl Strategy<Value = (ClusterSnapshot, Market, Vec<Request>)> {
        let nodes =
            proptest::collection::vec((0u32..2, 1u32..9, 0u32..9, any::<bool>(), 0i64..200_000, any::<bool>()), 1..5);
        let requests =
            proptest::collection::vec((0u8..4, 1u32..6, 0u8..3, 0u8..3, proptest::option::of(1i64..2_000_000)), 0..10);
        let idle = proptest::collection::vec(0u32..6, 2);
        let prices = proptest::collection::vec(proptest::option::of(1i64..2_000_000), 2);
        (nodes, requests, idle, prices, 0i64..100_000).prop_map(|(nodes, requests, idle, prices, min_runtime_ms)| {
            let regions = ["eu-1", "us-1"];
            let mut snap = ClusterSnapshot::default();
            let mut market = Market { min_runtime_ms, ..Market::default() };
            for (i, (r, gpus, used, spot, ran, leaving)) in nodes.into_iter().enumerate() {
                let n = node(i as u32, regions[r as usize], gpus, used.min(gpus));
                if spot && used.min(gpus) > 0 {
                    market
                        .spot_holders
                        .push(SpotHolder { leaving, ..holder(100 + i as u128, &n, used.min(gpus), ran) });
                }
                snap.nodes.push(n);
            }
            for (r, (idle, price)) in regions.iter().zip(idle.into_iter().zip(prices)) {
                if idle > 0 {
                    market.reserved_idle.insert((A100, region(r)), idle);
                }
                if let Some(p) = price {
                    market.spot_prices.insert((A100, region(r)), Money(p));
                }
            }
            let requests = requests
                .into_iter()
                .enumerate()
                .map(|(i, (tier, count, r, gang, bid))| {
                    let tier = [Tier::OnDemand, Tier::Spot, Tier::Reserved, Tier::Warm][tier as usize];
                    let r = [None, Some("eu-1"), Some("us-1")][r as usize];
                    Request {
                        gang: (gang > 0).then(|| ClusterId::from_random(u128::from(gang))),
                        bid: bid.filter(|_| tier == Tier::Spot).map(Money),
                        ..req(i as u128, tier, count, r)
                    }
                })
                .collect();
            (snap, market, requests)
        })
    }

    proptest! {
        #[test]
        fn passes_keep_their_promises((snap, market, requests) in world(), seed in any::<u64>()) {
            let plan = pass(&snap, &requests, &market, Policy::FgdPack, NOW, &mut StdRng::seed_from_u64(seed));
            let again = pass(&snap, &requests, &market, Policy::FgdPack, NOW, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(&plan, &again, "one seed, one plan");

            // Every request is placed or says why, once.
            let placed: HashSet<&InstanceId> = plan.placements.iter().map(|p| &p.instance).collect();
            for r in &requests {
                let why = plan.waiting.iter().filter(|(id, _)| *id == r.pending.instance).count();
                prop_assert_eq!(usize::from(placed.contains(&r.pending.instance)) + why, 1);
            }
            // No GPU is taken twice, nor one already held.
            let mut taken = HashSet::new();
            for p in &plan.placements {
                let n = snap.nodes.iter().find(|n| n.id == p.node).unwrap();
                for g in &p.gpus {
                    prop_assert!(!n.gpus[*g as usize].allocated);
                    prop_assert!(taken.insert((p.node.clone(), *g)));
                }
            }
            // A gang starts whole or not at all.
            let mut gangs: HashMap<&ClusterId, (usize, usize)> = HashMap::new();
            for r in requests.iter().filter(|r| r.gang.is_some()) {
                let e = gangs.entry(r.gang.as_ref().unwrap()).or_default();
                e.0 += 1;
                e.1 += usize::from(placed.contains(&r.pending.instance));
            }
            for (all, started) in gangs.values() {
                prop_assert!(*started == 0 || started == all);
            }
            // Notices go only to spot work that is not leaving already, each once; on-demand work
            // never takes spot work inside its minimum runtime.
            let mut victims = HashSet::new();
            for p in &plan.preemptions {
                let h = market.spot_holders.iter().find(|h| h.instance == p.eviction.victim);
                prop_assert!(h.is_some_and(|h| !h.leaving && !h.slice), "{p:?}");
                prop_assert!(victims.insert(p.eviction.victim.clone()));
                let ran = NOW.millis_since(h.unwrap().running_since.unwrap());
                prop_assert!(p.for_tier == Tier::Reserved || ran >= market.min_runtime_ms, "{p:?}");
                let want = requests.iter().find(|r| r.pending.instance == p.eviction.for_instance).unwrap();
                prop_assert!(!placed.contains(&want.pending.instance) && want.tier != Tier::Spot);
            }
            // Without owners asking, others' work leaves each pool at least its idle reserved GPUs
            // free or lent to spot work (which gives them back).
            if requests.iter().all(|r| r.tier != Tier::Reserved) {
                for ((_, r), idle) in &market.reserved_idle {
                    let in_pool = |id: &NodeId| snap.nodes.iter().any(|n| n.id == *id && n.region == *r);
                    let free_before: u32 = snap.nodes.iter().filter(|n| n.region == *r)
                        .map(|n| n.gpus.iter().filter(|g| !g.allocated).count() as u32).sum();
                    let lent: u32 = market.spot_holders.iter().filter(|h| in_pool(&h.node)).map(|h| h.gpus).sum();
                    if free_before + lent < *idle {
                        continue;
                    }
                    let to_others: u32 = plan.placements.iter()
                        .filter(|p| in_pool(&p.node))
                        .filter(|p| requests.iter().any(|r| r.pending.instance == p.instance && r.tier != Tier::Spot))
                        .map(|p| p.gpus.len() as u32).sum();
                    prop_assert!(free_before + lent - to_others >= *idle, "pool {r}: {plan:?}");
                }
            }
        }
    }
}
