//! `gpucloud sim chaos`: the real `App` on the real store (SQLite in a temp file), simulated
//! agents and tenants, all on one virtual clock, with faults drawn from one seed. Each step is one
//! virtual second: tenants act, faults start and heal, agents beat (through `AgentApi`, as the
//! in-process fake agents do), every reconciler whose period is up runs once, and then the
//! invariants are checked against the simulation's own record of what ran where. One seed gives
//! the same history byte for byte (ids and the scheduler's choices follow it too).
//!
//! The checker shares nothing with the code under test but the store's read methods: who holds
//! which GPU is recomputed from the instances, "ran" is what the simulated agents did, and billed
//! time is read from the usage intervals.

use crate::app::{AgentApi, AgentReport, App, Clock, Config, CreateInstance, Desired, Principal};
use gpucloud_model::{AgentObservation, GpuModel, InstanceId, InstanceState, NodeId, Region, Role, Tier, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    /// Virtual minutes of faults; then faults heal and `settle` more steps check liveness.
    pub minutes: u64,
    pub nodes: u32,
    /// Virtual seconds after faults heal within which everything must settle.
    pub settle_s: u64,
    /// A bug to put in on purpose, to show the checker catches it.
    pub inject: Option<Injected>,
}

/// Bugs the checker must catch (its own tests put them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Cut-off agents never stop their workloads (the defect self-fencing fixed).
    NoFencing,
}

impl Default for ChaosConfig {
    fn default() -> ChaosConfig {
        ChaosConfig { seed: 1, minutes: 10, nodes: 4, settle_s: 60, inject: None }
    }
}

/// What a run did, and the first invariant it broke (if any).
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub seed: u64,
    /// What replays it: `--minutes` and `--nodes` as given.
    pub minutes: u64,
    pub nodes: u32,
    pub steps: u64,
    pub faults: BTreeMap<&'static str, u32>,
    pub actions: BTreeMap<&'static str, u32>,
    /// Seconds simulated agents ran workloads, and seconds the server billed.
    pub ran_s: i64,
    pub billed_s: i64,
    pub violation: Option<String>,
    /// The last events before the end (or the violation).
    pub history: Vec<String>,
}

impl ChaosReport {
    /// The run as text: the same seed prints the same bytes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "seed {}: {} virtual s", self.seed, self.steps);
        let list = |m: &BTreeMap<&str, u32>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "  actions: {}", list(&self.actions));
        let _ = writeln!(out, "  faults: {}", list(&self.faults));
        let _ = writeln!(out, "  agents ran {} s of workloads; billed {} s", self.ran_s, self.billed_s);
        match &self.violation {
            None => {
                let _ = writeln!(out, "  every invariant held");
            }
            Some(v) => {
                let _ = writeln!(out, "  VIOLATION: {v}");
                let _ = writeln!(
                    out,
                    "  replay: gpucloud sim chaos --seeds {} --minutes {} --nodes {}; the last events:",
                    self.seed, self.minutes, self.nodes
                );
                for h in &self.history {
                    let _ = writeln!(out, "    {h}");
                }
            }
        }
        out
    }
}

/// A simulated node agent: what it runs, and whether it can reach the server.
struct SimAgent {
    node: NodeId,
    /// Workloads it runs: since when, and when each ends by itself (virtual ms).
    running: BTreeMap<InstanceId, (i64, i64)>,
    /// Workloads that exited by themselves, to report with exit code 0.
    exited: BTreeSet<InstanceId>,
    /// Stopped workloads it has yet to report.
    stopped: BTreeSet<InstanceId>,
    /// Silent (crashed, or cut off) until this virtual ms.
    silent_until: i64,
    /// Cut off rather than crashed: its workloads keep running, and it fences itself.
    partitioned: bool,
    /// Until this virtual ms its beats reach the server but no answer comes back (a one-way
    /// partition): the server sees a healthy node, the agent a silent server.
    deaf_until: i64,
    /// When a beat of it was last answered.
    last_answered: i64,
    /// Billing as this node's reports show the server: per instance, the first and the latest
    /// beat the server received that reported it running.
    spans: BTreeMap<InstanceId, (i64, i64)>,
    /// When the server last received a beat of it.
    last_received: Option<i64>,
    /// Instances the server took off this node while it was silent: their later reports here
    /// count for nothing, as the server ignores them.
    gone: BTreeSet<InstanceId>,
    next_beat: i64,
}

const BEAT_MS: i64 = 2_000;

pub async fn run(cfg: &ChaosConfig) -> Result<ChaosReport, String> {
    crate::app::seed_this_thread(Some(cfg.seed));
    let dir = std::env::temp_dir().join(format!("gpucloud-chaos-{}-{:x}", cfg.seed, rand::random::<u64>()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = run_in(cfg, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    crate::app::seed_this_thread(None);
    result
}

async fn run_in(cfg: &ChaosConfig, dir: &std::path::Path) -> Result<ChaosReport, String> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    // Faults added later draw from their own stream, so a seed's earlier history stays as it was.
    let mut more_faults = StdRng::seed_from_u64(cfg.seed ^ 0x5851_f42d_4c95_7f2d);
    // A fixed epoch, so that timestamps (and so the history) do not depend on the day it runs.
    let clock = Clock::virtual_at(Timestamp(1_800_000_000_000));
    let config = Config { clock: clock.clone(), ..Config::default() };
    let stop_after_ms = config.agent_stop_after().as_millis() as i64;
    let store =
        gpucloud_store::open(&format!("sqlite://{}/db.sqlite", dir.display())).await.map_err(|e| e.to_string())?;
    let mut app = Arc::new(App::new(store.clone(), config.clone()));
    let err = |e: crate::app::AppError| e.to_string();

    let op_key = app.create_tenant(None, "operator", Role::Operator).await.map_err(err)?;
    let op = app.authenticate(Some(&format!("Bearer {}", op_key.secret))).await.map_err(err)?;
    app.set_billing_rules(&op, 1, 0).await.map_err(err)?;
    let mut tenants: Vec<Principal> = Vec::new();
    for name in ["acme", "lab"] {
        let k = app.create_tenant(Some(&op), name, Role::Tenant).await.map_err(err)?;
        tenants.push(app.authenticate(Some(&format!("Bearer {}", k.secret))).await.map_err(err)?);
    }
    let regions = [Region::parse("eu-1").unwrap(), Region::parse("us-1").unwrap()];
    let mut agents = Vec::new();
    for i in 0..cfg.nodes {
        let gpus = if i % 2 == 0 { (GpuModel::A100_40GB, 4) } else { (GpuModel::T4, 2) };
        let n = app
            .add_node(Some(&op), &format!("node-{i}"), regions[(i as usize / 2) % 2].clone(), &[gpus])
            .await
            .map_err(err)?;
        agents.push(SimAgent {
            node: n.id,
            running: BTreeMap::new(),
            exited: BTreeSet::new(),
            stopped: BTreeSet::new(),
            silent_until: 0,
            partitioned: false,
            deaf_until: 0,
            last_answered: 0,
            spans: BTreeMap::new(),
            last_received: None,
            gone: BTreeSet::new(),
            next_beat: i64::from(i) * 300,
        });
    }

    let mut report = ChaosReport { seed: cfg.seed, minutes: cfg.minutes, nodes: cfg.nodes, ..ChaosReport::default() };
    // What the agents ran, per instance (ms): the checker's own record.
    let mut ran: BTreeMap<InstanceId, i64> = BTreeMap::new();
    let mut bounds: BTreeMap<InstanceId, Bound> = BTreeMap::new();
    let mut last_restart: Option<i64> = None;
    let grace_ms = config.heartbeat_grace.as_millis() as i64;
    let mut history: Vec<String> = Vec::new();
    let mut acknowledged: Vec<InstanceId> = Vec::new();
    let mut terminated: BTreeSet<InstanceId> = BTreeSet::new();
    let reconcilers: Vec<(&'static str, i64)> =
        crate::tasks::reconcilers(&app).into_iter().map(|(n, p)| (n, p.as_millis().max(1) as i64)).collect();
    let mut due: Vec<i64> = vec![0; reconcilers.len()];
    let start = clock.now();
    let fault_steps = cfg.minutes * 60;
    let total = fault_steps + cfg.settle_s;

    for step in 0..total {
        let now = clock.now().millis_since(start);
        let faulty = step < fault_steps;
        let mut log = |s: String| {
            history.push(format!("t={:>5}s {s}", now / 1000));
            if history.len() > 40 {
                history.remove(0);
            }
        };

        // Tenants act.
        if faulty && rng.random_bool(0.12) {
            let t = &tenants[rng.random_range(0..tenants.len())];
            let (model, count) =
                if rng.random_bool(0.5) { (GpuModel::A100_40GB, rng.random_range(1..=4)) } else { (GpuModel::T4, 1) };
            let mut req = CreateInstance::whole(model, count, None, "train");
            if rng.random_bool(0.3) {
                req.tier = Tier::Spot;
            }
            match app.create_instance(t, req, None).await {
                Ok((i, _)) => {
                    log(format!("{} creates {} ({} x {model}, {})", t.tenant.name, i.id, count, i.sale.tier));
                    acknowledged.push(i.id);
                    *report.actions.entry("create").or_default() += 1;
                }
                Err(e) => log(format!("{} create refused: {e}", t.tenant.name)),
            }
        }
        if faulty && rng.random_bool(0.15) && !acknowledged.is_empty() {
            let id = acknowledged[rng.random_range(0..acknowledged.len())].clone();
            let action = match rng.random_range(0..3) {
                0 => gpucloud_model::UserAction::Stop,
                1 => gpucloud_model::UserAction::Start,
                _ => gpucloud_model::UserAction::Terminate,
            };
            let owner = store.get_instance(None, &id).await.map_err(|e| e.to_string())?.map(|i| i.tenant_id);
            if let Some(t) = tenants.iter().find(|t| Some(&t.tenant.id) == owner.as_ref()) {
                match app.instance_action(t, id.as_str(), action).await {
                    Ok(i) => {
                        log(format!("{action} {id}: now {}", i.state));
                        *report.actions.entry(action_name(action)).or_default() += 1;
                        if action == gpucloud_model::UserAction::Terminate {
                            terminated.insert(id);
                        }
                    }
                    Err(e) => log(format!("{action} {id} refused: {e}")),
                }
            }
        }

        // A tenant whose instance was lost starts it again, as people (and scripts) do.
        if faulty && rng.random_bool(0.3) {
            let lost: Vec<gpucloud_store::Instance> = store
                .list_instances(None)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|i| i.state == InstanceState::Lost)
                .collect();
            if !lost.is_empty() {
                let i = &lost[rng.random_range(0..lost.len())];
                if let Some(t) = tenants.iter().find(|t| t.tenant.id == i.tenant_id) {
                    match app.instance_action(t, i.id.as_str(), gpucloud_model::UserAction::Start).await {
                        Ok(after) => {
                            log(format!("start lost {}: now {}", i.id, after.state));
                            *report.actions.entry("start-lost").or_default() += 1;
                        }
                        Err(e) => log(format!("start lost {} refused: {e}", i.id)),
                    }
                }
            }
        }

        // Faults start.
        // An agent restart (its workloads run on and are adopted), a partition (the agent runs
        // on, cut off, and fences itself), or the host going down (its workloads die with it).
        // An agent process frozen for long with its workloads alive is not simulated: nothing
        // on the node could stop them, so no control plane can promise anything then. Nor are
        // jumps of an agent's wall clock: the agent measures silence on the monotonic clock, and
        // the only wall-clock times it sends are its workloads' metric timestamps.
        if faulty && rng.random_bool(0.02) {
            let a = rng.random_range(0..agents.len());
            let (kind, for_s) = match rng.random_range(0..3) {
                0 => ("agent-restart", rng.random_range(1..=8)),
                1 => ("partition", rng.random_range(1..=180)),
                _ => ("host-down", rng.random_range(2..=120)),
            };
            let agent = &mut agents[a];
            if agent.silent_until <= now {
                agent.silent_until = now + for_s * 1000;
                agent.partitioned = kind == "partition";
                if kind == "host-down" {
                    for (id, (since, _)) in std::mem::take(&mut agent.running) {
                        *ran.entry(id).or_default() += now - since;
                    }
                    agent.stopped.clear();
                    agent.exited.clear();
                }
                *report.faults.entry(kind).or_default() += 1;
                log(format!("{kind}: node-{a} silent for {for_s} s"));
            }
        }
        // A one-way partition: the agent's beats arrive, the answers do not.
        if faulty && more_faults.random_bool(0.01) {
            let a = more_faults.random_range(0..agents.len());
            let for_s = more_faults.random_range(5..=120);
            let agent = &mut agents[a];
            if agent.silent_until <= now && agent.deaf_until <= now {
                agent.deaf_until = now + for_s * 1000;
                *report.faults.entry("one-way").or_default() += 1;
                log(format!("one-way: node-{a} gets no answers for {for_s} s"));
            }
        }
        if faulty && rng.random_bool(0.003) {
            // kill -9 of the server: what it committed is all that is left.
            app = Arc::new(App::new(store.clone(), config.clone()));
            *report.faults.entry("server-restart").or_default() += 1;
            last_restart = Some(now);
            log("server restarts".to_string());
        }

        // Agents beat.
        for (a, agent) in agents.iter_mut().enumerate() {
            if now < agent.next_beat {
                continue;
            }
            agent.next_beat = now + BEAT_MS;
            if now < agent.silent_until {
                // Cut off: it fences itself once no server has answered for stop_after.
                if agent.partitioned
                    && cfg.inject != Some(Injected::NoFencing)
                    && now - agent.last_answered >= stop_after_ms
                    && !agent.running.is_empty()
                {
                    for (id, (since, _)) in std::mem::take(&mut agent.running) {
                        *ran.entry(id.clone()).or_default() += now - since;
                        agent.stopped.insert(id);
                    }
                    log(format!("node-{a} fences itself"));
                }
                continue;
            }
            if !agent.partitioned && agent.silent_until > 0 && agent.silent_until <= now {
                // Back from a crash: its workloads survived it (they are adopted).
                agent.silent_until = 0;
            }
            // Workloads whose work is done exit by themselves.
            for (id, (since, ends)) in agent.running.clone() {
                if ends <= now {
                    agent.running.remove(&id);
                    *ran.entry(id.clone()).or_default() += now - since;
                    agent.exited.insert(id);
                }
            }
            // Deaf to the server for stop_after, it fences itself as a cut-off agent does; its
            // beats still arrive, so the server hears the workloads stop.
            let deaf = now < agent.deaf_until;
            if deaf
                && cfg.inject != Some(Injected::NoFencing)
                && now - agent.last_answered >= stop_after_ms
                && !agent.running.is_empty()
            {
                for (id, (since, _)) in std::mem::take(&mut agent.running) {
                    *ran.entry(id.clone()).or_default() += now - since;
                    agent.stopped.insert(id);
                }
                log(format!("node-{a} fences itself (no answers)"));
            }
            let lose = (faulty && rng.random_bool(0.02)) || deaf;
            let duplicate = faulty && rng.random_bool(0.02);
            let report_of = |agent: &SimAgent| AgentReport {
                node: agent.node.clone(),
                epoch: None,
                instances: agent
                    .running
                    .keys()
                    .map(|id| (id.clone(), AgentObservation::Running, None))
                    .chain(
                        agent
                            .stopped
                            .iter()
                            .map(|id| (id.clone(), AgentObservation::Stopped { exit_code: None }, None)),
                    )
                    .chain(
                        agent
                            .exited
                            .iter()
                            .map(|id| (id.clone(), AgentObservation::Stopped { exit_code: Some(0) }, None)),
                    )
                    .collect(),
                gpus: Vec::new(),
                checkpoints: Vec::new(),
                ports: Vec::new(),
                metrics: Vec::new(),
                preparing: Vec::new(),
                published: Vec::new(),
            };
            // The checker's record of what the server may bill, from what this beat tells it.
            account(agent, now, grace_ms, last_restart, &mut bounds);
            let mut answer = app.heartbeat(report_of(agent)).await;
            if duplicate {
                *report.faults.entry("duplicate-beat").or_default() += 1;
                answer = app.heartbeat(report_of(agent)).await;
            }
            let desired = match answer {
                Ok(d) if !lose => d,
                Ok(_) => {
                    if !deaf {
                        *report.faults.entry("lost-answer").or_default() += 1;
                    }
                    continue;
                }
                Err(e) => {
                    log(format!("node-{a} beat refused: {e}"));
                    continue;
                }
            };
            agent.last_answered = now;
            agent.stopped.clear();
            agent.exited.clear();
            let desired = crate::app::typed(&desired);
            let run: BTreeSet<&InstanceId> =
                desired.iter().filter(|(_, d)| d.desired == Desired::Run).map(|(id, _)| id).collect();
            for id in agent.running.keys().filter(|id| !run.contains(id)).cloned().collect::<Vec<_>>() {
                let since = agent.running.remove(&id).map_or(now, |(since, _)| since);
                *ran.entry(id.clone()).or_default() += now - since;
                agent.stopped.insert(id);
            }
            for id in run {
                // Placed here (again): its reports here count from now on.
                agent.gone.remove(id);
                if !agent.running.contains_key(id) {
                    let ends = now + rng.random_range(30..=900) * 1000;
                    agent.running.insert(id.clone(), (now, ends));
                }
            }
            for (id, _) in desired.iter().filter(|(_, d)| d.desired == Desired::Stop) {
                if !agent.running.contains_key(id) {
                    agent.stopped.insert(id.clone());
                }
            }
        }
        for agent in agents.iter_mut().filter(|a| a.partitioned && a.silent_until <= now) {
            agent.partitioned = false;
            agent.silent_until = 0;
        }
        if !faulty {
            for agent in agents.iter_mut() {
                agent.silent_until = agent.silent_until.min(now);
                agent.deaf_until = agent.deaf_until.min(now);
            }
        }

        // Reconcilers whose period is up.
        for ((name, period), due) in reconcilers.iter().zip(due.iter_mut()) {
            if now >= *due {
                *due = now + period;
                if let Err(e) = crate::tasks::run_pass(app.clone(), name).await {
                    log(format!("reconciler {name} failed: {e}"));
                }
            }
        }

        if let Err(v) = check(&store, &agents, &acknowledged, &terminated).await {
            report.violation = Some(format!("at {} s: {v}", now / 1000));
            break;
        }
        report.steps = step + 1;
        clock.advance(Duration::from_secs(1)).map_err(|e| e.to_string())?;
    }

    // Liveness: after faults heal and the settle time passes, nothing is left half-way (a
    // change younger than three beats may still be on its way), and the agents run exactly what
    // the server says runs.
    if report.violation.is_none() {
        let now = clock.now();
        let all = store.list_instances(None).await.map_err(|e| e.to_string())?;
        let on_agent: BTreeMap<&InstanceId, &NodeId> =
            agents.iter().flat_map(|a| a.running.keys().map(move |id| (id, &a.node))).collect();
        for i in &all {
            let settled_for = now.millis_since(i.updated_at);
            let here = on_agent.get(&i.id).copied();
            let problem = if settled_for < 3 * BEAT_MS {
                None
            } else if matches!(i.state, InstanceState::Provisioning | InstanceState::Stopping) {
                Some(format!("still {} {} s after faults healed", i.state, cfg.settle_s))
            } else if i.state == InstanceState::Running && here != i.node_id.as_ref() {
                Some(format!("running at the server on {:?} but on its agent on {here:?}", i.node_id))
            } else if i.state != InstanceState::Running && here.is_some() {
                Some(format!("{} at the server but its agent on {here:?} runs it", i.state))
            } else {
                None
            };
            if let Some(p) = problem {
                report.violation = Some(format!("{}: {p}", i.id));
                break;
            }
        }
    }
    let now = clock.now();
    for a in &agents {
        for (id, (since, _)) in &a.running {
            *ran.entry(id.clone()).or_default() += now.millis_since(start) - since;
        }
    }
    // No second billed twice or lost: per instance, the server's intervals against what the
    // agents' reports entitle it to bill (from the beat that first reports a workload running to
    // the beat that reports it stopped; to the last report when it vanished or its node went
    // silent; to now while it runs).
    for a in &agents {
        for (id, (first, last)) in &a.spans {
            let b = bounds.entry(id.clone()).or_default();
            b.upper += now.millis_since(start) - first;
            b.lower += last - first;
        }
    }
    let mut billed: BTreeMap<InstanceId, i64> = BTreeMap::new();
    for t in &tenants {
        for u in store.intervals_of_tenant(&t.tenant.id).await.map_err(|e| e.to_string())? {
            *billed.entry(u.instance_id.clone()).or_default() += u.ended_at.unwrap_or(now).millis_since(u.started_at);
        }
    }
    report.ran_s = ran.values().sum::<i64>() / 1000;
    report.billed_s = billed.values().sum::<i64>() / 1000;
    let ids: BTreeSet<&InstanceId> = billed.keys().chain(bounds.keys()).collect();
    for id in ids {
        let ms = billed.get(id).copied().unwrap_or(0);
        let b = bounds.get(id).cloned().unwrap_or_default();
        if report.violation.is_none() && !b.ambiguous && (ms > b.upper || ms < b.lower) {
            report.violation = Some(format!(
                "{id} billed {ms} ms; its agents' reports allow {} to {} ms (it ran {} ms)",
                b.lower,
                b.upper,
                ran.get(id).copied().unwrap_or(0)
            ));
        }
    }
    let audit = store.ledger_audit().await.map_err(|e| e.to_string())?;
    if report.violation.is_none() && (!audit.unbalanced.is_empty() || !audit.drift.is_empty()) {
        report.violation = Some(format!("the ledger does not balance: {:?} {:?}", audit.unbalanced, audit.drift));
    }
    report.history = history;
    Ok(report)
}

/// What the server may bill an instance, by the checker's own account (ms).
#[derive(Debug, Clone, Default)]
struct Bound {
    lower: i64,
    upper: i64,
    /// Its node went silent for about the heartbeat grace, or across a server restart: whether
    /// the server declared it lost then is a race, so its billing is not checked.
    ambiguous: bool,
}

/// Updates the billing bounds with the beat `agent` sends at `now` (before it is sent: what
/// the report will say is the agent's state now).
fn account(
    agent: &mut SimAgent,
    now: i64,
    grace_ms: i64,
    last_restart: Option<i64>,
    bounds: &mut BTreeMap<InstanceId, Bound>,
) {
    if let Some(prev) = agent.last_received {
        let gap = now - prev;
        // The server checks for silent nodes every quarter grace, and after a restart waits a
        // grace before it declares any lost.
        let surely_lost = gap > grace_ms + grace_ms / 4 + BEAT_MS && last_restart.is_none_or(|r| r < prev - grace_ms);
        let maybe_lost = gap > grace_ms - BEAT_MS;
        if maybe_lost {
            for (id, (first, _)) in std::mem::take(&mut agent.spans) {
                let b = bounds.entry(id.clone()).or_default();
                b.upper += prev - first;
                b.lower += prev - first;
                b.ambiguous |= !surely_lost;
                agent.gone.insert(id);
            }
        }
    }
    agent.last_received = Some(now);
    let running: Vec<InstanceId> = agent.running.keys().filter(|id| !agent.gone.contains(*id)).cloned().collect();
    for (id, (first, last)) in agent.spans.clone() {
        if running.contains(&id) {
            continue;
        }
        agent.spans.remove(&id);
        let b = bounds.entry(id.clone()).or_default();
        if agent.stopped.contains(&id) || agent.exited.contains(&id) {
            // Reported stopped now: billed until this beat.
            b.upper += now - first;
            b.lower += last - first;
        } else {
            // Vanished (its host went down): billed until the last report of it running.
            b.upper += last - first;
            b.lower += last - first;
        }
    }
    for id in running {
        agent.spans.entry(id).or_insert((now, now)).1 = now;
    }
}

fn action_name(a: gpucloud_model::UserAction) -> &'static str {
    match a {
        gpucloud_model::UserAction::Stop => "stop",
        gpucloud_model::UserAction::Start => "start",
        gpucloud_model::UserAction::Terminate => "terminate",
        gpucloud_model::UserAction::Evict => "evict",
    }
}

/// The invariants after a step, from the store's rows and the agents' own record.
async fn check(
    store: &Arc<dyn gpucloud_store::Store>,
    agents: &[SimAgent],
    acknowledged: &[InstanceId],
    terminated: &BTreeSet<InstanceId>,
) -> Result<(), String> {
    let all = store.list_instances(None).await.map_err(|e| e.to_string())?;
    // A GPU has at most one owner, and a node's GPU row names the instance that holds it.
    let mut owners: BTreeMap<(NodeId, u32), &InstanceId> = BTreeMap::new();
    for i in all.iter().filter(|i| i.state.holds_gpus() && i.share.is_none()) {
        let Some(node) = &i.node_id else { return Err(format!("{} holds GPUs on no node", i.id)) };
        for g in &i.gpus {
            if let Some(other) = owners.insert((node.clone(), *g), &i.id) {
                return Err(format!("GPU {g} of {node} is held by {other} and {}", i.id));
            }
        }
    }
    for n in store.list_nodes().await.map_err(|e| e.to_string())? {
        for g in &n.gpus {
            let want = owners.get(&(n.id.clone(), g.index)).copied();
            if g.instance.as_ref() != want {
                return Err(format!(
                    "GPU {} of {} is recorded held by {:?}, instances say {want:?}",
                    g.index, n.id, g.instance
                ));
            }
        }
    }
    // A workload runs on one node at a time.
    let mut on: BTreeMap<&InstanceId, &NodeId> = BTreeMap::new();
    for a in agents {
        for id in a.running.keys() {
            if let Some(other) = on.insert(id, &a.node) {
                return Err(format!("{id} runs on {other} and {} at once", a.node));
            }
        }
    }
    // Every acknowledged create is there; a terminated instance stays terminated.
    let by_id: BTreeMap<&InstanceId, &gpucloud_store::Instance> = all.iter().map(|i| (&i.id, i)).collect();
    for id in acknowledged {
        match by_id.get(id) {
            None => return Err(format!("{id} was acknowledged and is gone")),
            Some(i)
                if terminated.contains(id)
                    && i.state != InstanceState::Terminated
                    && i.state != InstanceState::Stopping =>
            {
                return Err(format!("{id} was terminated and is {} again", i.state));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
