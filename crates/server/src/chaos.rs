//! `gpucloud sim chaos`: the real `App` on the real store (SQLite in memory), simulated
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
use gpucloud_store::Store as _;
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
    /// Hold some beats up on the way, so that they arrive after beats sent later (the server
    /// refuses them by their number). On by default; off replays seeds as builds before it did.
    pub held_up_beats: bool,
    /// Make the store refuse writes for a while, from the middle of a request on. On by default.
    pub store_faults: bool,
    /// Apply only the faults of these numbers (as a report lists them); the others are drawn and
    /// left out. What a shrunk failure replays with.
    pub only_faults: Option<BTreeSet<u32>>,
    /// Apply only the tenants' actions of these numbers (creates, stops, starts, terminates,
    /// starts of lost instances, as a report lists them); the others are drawn and left out.
    pub only_actions: Option<BTreeSet<u32>>,
}

/// Bugs the checker must catch (its own tests put them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Cut-off agents never stop their workloads (the defect self-fencing fixed).
    NoFencing,
    /// Agents do not number their beats, so the server takes a held-up beat as the node's
    /// current state (the defect beat numbers fixed).
    UnnumberedBeats,
}

impl Injected {
    pub const ALL: [Injected; 2] = [Injected::NoFencing, Injected::UnnumberedBeats];

    pub fn name(self) -> &'static str {
        match self {
            Injected::NoFencing => "no-fencing",
            Injected::UnnumberedBeats => "unnumbered-beats",
        }
    }

    pub fn parse(name: &str) -> Option<Injected> {
        Injected::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl Default for ChaosConfig {
    fn default() -> ChaosConfig {
        ChaosConfig {
            seed: 1,
            minutes: 10,
            nodes: 4,
            settle_s: 60,
            inject: None,
            held_up_beats: true,
            store_faults: true,
            only_faults: None,
            only_actions: None,
        }
    }
}

/// What a run did, and the first invariant it broke (if any).
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub seed: u64,
    /// What replays it: `--minutes` and `--nodes` as given.
    pub minutes: u64,
    pub nodes: u32,
    pub held_up_beats: bool,
    pub store_faults: bool,
    pub only_faults: Option<BTreeSet<u32>>,
    pub only_actions: Option<BTreeSet<u32>>,
    pub inject: Option<Injected>,
    pub steps: u64,
    /// The numbers of the faults this run applied: what a shrinker leaves out.
    pub applied: Vec<u32>,
    /// The numbers of the tenants' actions this run applied: what a shrinker leaves out next.
    pub applied_actions: Vec<u32>,
    pub faults: BTreeMap<&'static str, u32>,
    pub actions: BTreeMap<&'static str, u32>,
    /// Seconds simulated agents ran workloads, and seconds the server billed.
    pub ran_s: i64,
    pub billed_s: i64,
    pub violation: Option<String>,
    /// On a violation, the events that name what it names, and the last few before it.
    pub history: Vec<String>,
}

impl ChaosReport {
    /// The command that runs this again, byte for byte.
    pub fn replay(&self) -> String {
        let mut cmd =
            format!("gpucloud sim chaos --seeds {} --minutes {} --nodes {}", self.seed, self.minutes, self.nodes);
        if !self.held_up_beats {
            cmd.push_str(" --no-held-up-beats");
        }
        if !self.store_faults {
            cmd.push_str(" --no-store-faults");
        }
        if let Some(i) = self.inject {
            let _ = write!(cmd, " --inject {}", i.name());
        }
        for (flag, only) in [("--only-faults", &self.only_faults), ("--only-actions", &self.only_actions)] {
            if let Some(only) = only {
                let list: Vec<String> = only.iter().map(u32::to_string).collect();
                let list = if list.is_empty() { "none".to_string() } else { list.join(",") };
                let _ = write!(cmd, " {flag} {list}");
            }
        }
        cmd
    }

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
                let _ = writeln!(out, "  replay: {}; what bears on it, and the last events:", self.replay());
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
    /// The epoch it beats with, and the number of its last beat (it numbers them, as agents do).
    epoch: i64,
    seq: i64,
    /// The highest-numbered beat of it the server received.
    received_seq: i64,
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
    /// Beats held up on the way (a slow proxy, a retried request): each reaches the server at
    /// its time, after beats sent later, and its answer reaches nobody.
    in_flight: Vec<Delayed>,
}

/// A beat on its way: when it arrives, what it says, and what it says in the checker's terms.
struct Delayed {
    arrives: i64,
    seq: i64,
    report: AgentReport,
    view: View,
}

/// What a beat tells the server, as the checker accounts for it.
#[derive(Clone)]
struct View {
    /// Reported running (and not taken off the node while it was silent).
    running: Vec<InstanceId>,
    /// Reported stopped or exited.
    ended: BTreeSet<InstanceId>,
}

impl SimAgent {
    fn view(&self) -> View {
        View {
            running: self.running.keys().filter(|id| !self.gone.contains(*id)).cloned().collect(),
            ended: self.stopped.iter().chain(self.exited.iter()).cloned().collect(),
        }
    }
}

const BEAT_MS: i64 = 2_000;
/// How long a simulated tenant lets a request wait before it gives up on it.
const PATIENCE_MS: i64 = 5 * 60 * 1000;

pub async fn run(cfg: &ChaosConfig) -> Result<ChaosReport, String> {
    crate::app::seed_this_thread(Some(cfg.seed));
    let result = run_seeded(cfg).await;
    crate::app::seed_this_thread(None);
    result
}

/// Runs every configuration on `jobs` threads and returns the reports in the order given.
pub fn run_many(cfgs: &[ChaosConfig], jobs: usize) -> Result<Vec<ChaosReport>, String> {
    let mut out = Vec::with_capacity(cfgs.len());
    run_each(cfgs, jobs, |r| out.push(r))?;
    Ok(out)
}

/// Runs every configuration on `jobs` threads, handing each report to `each` in the order given,
/// as soon as it and those before it are done.
///
/// Each thread is pinned to one core. The SQLite driver runs each connection on a worker thread
/// of its own, and every statement, and every row, crosses between the two threads. Pinned
/// together, that hand-over costs a switch on one core rather than a wake-up across cores:
/// a seed ran 2.6 times faster so on this 2-vCPU machine (decision 0027). The worker thread
/// inherits the pinning, since it starts when the store opens.
pub fn run_each(cfgs: &[ChaosConfig], jobs: usize, mut each: impl FnMut(ChaosReport)) -> Result<(), String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let cpus = cpu::allowed();
    let jobs = jobs.clamp(1, cfgs.len().max(1));
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<ChaosReport, String>)>();
    std::thread::scope(|scope| {
        for j in 0..jobs {
            let (next, cpus, tx) = (&next, &cpus, tx.clone());
            scope.spawn(move || {
                if !cpus.is_empty() {
                    cpu::pin_this_thread(cpus[j % cpus.len()]);
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send((next.fetch_add(1, Ordering::Relaxed), Err(e.to_string())));
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(cfg) = cfgs.get(i) else { break };
                    if tx.send((i, rt.block_on(run(cfg)))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Reports arrive as seeds finish; they are handed on in the seeds' order.
        let mut waiting: BTreeMap<usize, ChaosReport> = BTreeMap::new();
        let mut due = 0;
        for (i, r) in rx {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    // The other threads stop at their next seed.
                    next.store(cfgs.len(), Ordering::Relaxed);
                    return Err(e);
                }
            };
            waiting.insert(i, r);
            while let Some(r) = waiting.remove(&due) {
                each(r);
                due += 1;
            }
        }
        if due == cfgs.len() { Ok(()) } else { Err("a simulation thread stopped early".to_string()) }
    })
}

/// What a shrunk failure is: the fewest faults, then the fewest tenants' actions, found that
/// still break the same invariant.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The run with only those (its `only_faults` and `only_actions` replay it).
    pub report: ChaosReport,
    /// How many faults and tenants' actions the failing run applied, and how many runs the
    /// search took.
    pub from: usize,
    pub from_actions: usize,
    pub runs: u32,
}

/// What a shrinker leaves out: faults, or tenants' actions.
#[derive(Clone, Copy)]
enum Part {
    Faults,
    Actions,
}

impl Part {
    fn applied(self, r: &ChaosReport) -> &[u32] {
        match self {
            Part::Faults => &r.applied,
            Part::Actions => &r.applied_actions,
        }
    }

    fn only(self, cfg: &ChaosConfig, set: &[u32]) -> ChaosConfig {
        let set = Some(set.iter().copied().collect());
        match self {
            Part::Faults => ChaosConfig { only_faults: set, ..cfg.clone() },
            Part::Actions => ChaosConfig { only_actions: set, ..cfg.clone() },
        }
    }
}

/// Searches for a smaller set of the faults of a failing run that still breaks the same
/// invariant, then, with those faults, for a smaller set of the tenants' actions (delta
/// debugging: leave out halves, then quarters, ... while the failure stays). Faults and
/// actions keep their numbers when others are left out, as each is drawn whether applied or
/// not; what the server does in between may differ, which is why each candidate is run whole.
/// At most `max_runs` runs in all, `jobs` at a time.
pub fn shrink(cfg: &ChaosConfig, failed: &ChaosReport, jobs: usize, max_runs: u32) -> Result<Shrunk, String> {
    let Some(want) = failed.violation.as_deref().map(kind_of) else {
        return Err(format!("seed {} did not fail: nothing to shrink", failed.seed));
    };
    let mut runs = 0u32;
    let by_faults = shrink_part(cfg, failed, Part::Faults, &want, jobs, max_runs, &mut runs)?;
    let cfg = ChaosConfig { only_faults: by_faults.only_faults.clone(), ..cfg.clone() };
    let report = shrink_part(&cfg, &by_faults, Part::Actions, &want, jobs, max_runs, &mut runs)?;
    Ok(Shrunk { report, from: failed.applied.len(), from_actions: failed.applied_actions.len(), runs })
}

fn shrink_part(
    cfg: &ChaosConfig,
    failed: &ChaosReport,
    part: Part,
    want: &str,
    jobs: usize,
    max_runs: u32,
    runs: &mut u32,
) -> Result<ChaosReport, String> {
    let mut best = failed.clone();
    let mut items: Vec<u32> = part.applied(failed).to_vec();
    // Candidates run side by side; the first in order that still fails is taken, so the result
    // does not depend on which finished first.
    let first_failing = |sets: Vec<Vec<u32>>, runs: &mut u32| -> Result<Option<ChaosReport>, String> {
        let cfgs: Vec<ChaosConfig> = sets.iter().map(|s| part.only(cfg, s)).collect();
        *runs += cfgs.len() as u32;
        let reports = run_many(&cfgs, jobs)?;
        Ok(reports.into_iter().find(|r| r.violation.as_deref().map(kind_of).as_deref() == Some(want)))
    };
    if *runs < max_runs
        && let Some(r) = first_failing(vec![Vec::new()], runs)?
    {
        return Ok(r);
    }
    let mut parts = 2usize;
    while items.len() >= 2 && *runs < max_runs {
        let size = items.len().div_ceil(parts);
        let chunks: Vec<Vec<u32>> = items.chunks(size).map(<[u32]>::to_vec).collect();
        // A part alone, then all but a part.
        let mut found = None;
        let complements: Vec<Vec<u32>> = if chunks.len() > 2 {
            (0..chunks.len())
                .map(|i| chunks.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, c)| c.clone()).collect())
                .collect()
        } else {
            // With two parts, all but one is the other.
            Vec::new()
        };
        for candidates in [chunks.clone(), complements] {
            let budget = (max_runs - (*runs).min(max_runs)) as usize;
            let candidates: Vec<Vec<u32>> = candidates.into_iter().take(budget).collect();
            if candidates.is_empty() {
                break;
            }
            if let Some(r) = first_failing(candidates, runs)? {
                found = Some(r);
                break;
            }
        }
        match found {
            Some(r) => {
                // What the smaller run applied is all that can matter to it.
                let kept = part.applied(&r).len();
                parts = if kept < items.len().div_ceil(parts) + 1 { 2 } else { (parts - 1).max(2) };
                items = part.applied(&r).to_vec();
                best = r;
            }
            None if parts >= items.len() => break,
            None => parts = (parts * 2).min(items.len()),
        }
    }
    Ok(best)
}

/// A violation with its particulars (times, ids, amounts) left out: what "the same failure"
/// means to the shrinker.
fn kind_of(violation: &str) -> String {
    violation.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).collect::<Vec<_>>().join(" ")
}

/// Pinning a thread to a core; elsewhere than Linux, nothing is pinned.
#[allow(unsafe_code)]
mod cpu {
    /// The cores this process may run on.
    #[cfg(target_os = "linux")]
    pub fn allowed() -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
        // its size into it, and CPU_ISSET reads it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize).filter(|c| libc::CPU_ISSET(*c, &set)).collect()
        }
    }

    /// Pins the calling thread (threads it starts later inherit it); false when it could not.
    #[cfg(target_os = "linux")]
    pub fn pin_this_thread(cpu: usize) -> bool {
        // SAFETY: as above; pid 0 is the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn allowed() -> Vec<usize> {
        Vec::new()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn pin_this_thread(_cpu: usize) -> bool {
        false
    }
}

async fn run_seeded(cfg: &ChaosConfig) -> Result<ChaosReport, String> {
    // Each source of randomness has a stream of its own and draws the same amounts every step
    // (every beat, for beats), whatever the state: so a fault keeps its number, and the tenants
    // their script, when a shrinker leaves other faults out.
    let mut script = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut fault_rng = StdRng::seed_from_u64(cfg.seed ^ 0x5851_f42d_4c95_7f2d);
    let mut patience = StdRng::seed_from_u64(cfg.seed ^ 0x2545_f491_4f6c_dd1d);
    let mut beat_rng = StdRng::seed_from_u64(cfg.seed ^ 0x1405_7b7e_f767_814f);
    let mut faults = Faults { drawn: 0, only: cfg.only_faults.as_ref(), applied: Vec::new() };
    let mut actions = Faults { drawn: 0, only: cfg.only_actions.as_ref(), applied: Vec::new() };
    // A fixed epoch, so that timestamps (and so the history) do not depend on the day it runs.
    let clock = Clock::virtual_at(Timestamp(1_800_000_000_000));
    let config = Config { clock: clock.clone(), ..Config::default() };
    let stop_after_ms = config.agent_stop_after().as_millis() as i64;
    // In memory: a server restart keeps the store, so what it committed is all that survives,
    // as with a file, without waiting on the disk.
    let sql = Arc::new(gpucloud_store::SqlStore::open("sqlite::memory:").await.map_err(|e| e.to_string())?);
    let store: Arc<dyn gpucloud_store::Store> = sql.clone();
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
            epoch: n.epoch,
            seq: 0,
            received_seq: 0,
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
            in_flight: Vec::new(),
        });
    }

    let mut report = ChaosReport {
        seed: cfg.seed,
        minutes: cfg.minutes,
        nodes: cfg.nodes,
        held_up_beats: cfg.held_up_beats,
        store_faults: cfg.store_faults,
        only_faults: cfg.only_faults.clone(),
        only_actions: cfg.only_actions.clone(),
        inject: cfg.inject,
        ..ChaosReport::default()
    };
    // What the agents ran, per instance (ms): the checker's own record.
    let mut ran: BTreeMap<InstanceId, i64> = BTreeMap::new();
    let mut bounds: BTreeMap<InstanceId, Bound> = BTreeMap::new();
    let mut last_restart: Option<i64> = None;
    let grace_ms = config.heartbeat_grace.as_millis() as i64;
    let mut history: Vec<String> = Vec::new();
    let mut acknowledged: Vec<InstanceId> = Vec::new();
    let mut terminated: BTreeSet<InstanceId> = BTreeSet::new();
    // Instances stopped while provisioning, until started again: not billing a run of theirs
    // is right (and billing it is too, from its first report running).
    let mut cancelled: BTreeSet<InstanceId> = BTreeSet::new();
    let reconcilers: Vec<(&'static str, i64)> =
        crate::tasks::reconcilers(&app).into_iter().map(|(n, p)| (n, p.as_millis().max(1) as i64)).collect();
    let mut due: Vec<i64> = vec![0; reconcilers.len()];
    // A store refusing writes: until when.
    let mut outage: Option<i64> = None;
    let start = clock.now();
    let fault_steps = cfg.minutes * 60;
    let total = fault_steps + cfg.settle_s;

    for step in 0..total {
        let now = clock.now().millis_since(start);
        let faulty = step < fault_steps;
        let mut log = |s: String| {
            history.push(format!("t={:>5}s {s}", now / 1000));
        };

        // This step's draws, all of them whatever happens next.
        let intent = faulty.then(|| Intent::draw(&mut script, tenants.len()).numbered(&mut actions));
        let drawn = faulty.then(|| StepFaults::draw(&mut fault_rng, agents.len(), &mut faults));

        // The store's write fault heals, or starts.
        if outage.is_some_and(|until| until <= now || !faulty) {
            sql.fail_writes_after(None).await.map_err(|e| e.to_string())?;
            outage = None;
            log("the store takes writes again".to_string());
        }
        if let Some((n, rows, for_s)) = drawn.as_ref().and_then(|d| d.outage)
            && cfg.store_faults
            && outage.is_none()
        {
            sql.fail_writes_after(Some(rows)).await.map_err(|e| e.to_string())?;
            outage = Some(now + for_s * 1000);
            faults.applied.push(n);
            *report.faults.entry("store-outage").or_default() += 1;
            log(format!("#{n} store-outage: the store refuses writes after {rows} rows, for {for_s} s"));
        }
        // Writes that failed part-way may have left some of a request done: what the server
        // bills for what it was about is not checked (the other invariants are).
        let storm = outage.is_some();

        // Tenants act.
        if let Some(Intent { create: Some((who, model, count, spot)), numbers: [n, _, _], .. }) = intent {
            actions.applied.push(n);
            let t = &tenants[who];
            let mut req = CreateInstance::whole(model, count, None, "train");
            if spot {
                req.tier = Tier::Spot;
            }
            match app.create_instance(t, req, None).await {
                Ok((i, _)) => {
                    log(format!("a{n} {} creates {} ({} x {model}, {})", t.tenant.name, i.id, count, i.sale.tier));
                    acknowledged.push(i.id);
                    *report.actions.entry("create").or_default() += 1;
                }
                Err(e) => log(format!("a{n} {} create refused: {e}", t.tenant.name)),
            }
        }
        if let Some(Intent { act: Some((pick, action)), numbers: [_, n, _], .. }) = intent
            && !acknowledged.is_empty()
        {
            let id = acknowledged[pick % acknowledged.len()].clone();
            let before = store.get_instance(None, &id).await.map_err(|e| e.to_string())?;
            let owner = before.as_ref().map(|i| i.tenant_id.clone());
            if let Some(t) = tenants.iter().find(|t| Some(&t.tenant.id) == owner.as_ref()) {
                actions.applied.push(n);
                match app.instance_action(t, id.as_str(), action).await {
                    Ok(i) => {
                        log(format!("a{n} {action} {id}: now {}", i.state));
                        // Stopped before the server saw it run: a start called off is not billed,
                        // even if its workload ran until the agent heard of the stop.
                        if action == gpucloud_model::UserAction::Start {
                            cancelled.remove(&id);
                        } else if before.as_ref().is_some_and(|b| b.state == InstanceState::Provisioning) {
                            cancelled.insert(id.clone());
                        }
                        *report.actions.entry(action_name(action)).or_default() += 1;
                        if action == gpucloud_model::UserAction::Terminate {
                            terminated.insert(id);
                        }
                    }
                    Err(e) => {
                        if storm {
                            blur(&mut bounds, [&id]);
                        }
                        log(format!("a{n} {action} {id} refused: {e}"))
                    }
                }
            }
        }

        // A tenant whose instance was lost starts it again, as people (and scripts) do.
        if let Some(Intent { restart_lost: Some(pick), numbers: [_, _, n], .. }) = intent {
            let lost = sql.instances_in_states(&[InstanceState::Lost]).await.map_err(|e| e.to_string())?;
            if !lost.is_empty() {
                let i = &lost[pick % lost.len()];
                if let Some(t) = tenants.iter().find(|t| t.tenant.id == i.tenant_id) {
                    actions.applied.push(n);
                    match app.instance_action(t, i.id.as_str(), gpucloud_model::UserAction::Start).await {
                        Ok(after) => {
                            cancelled.remove(&i.id);
                            log(format!("a{n} start lost {}: now {}", i.id, after.state));
                            *report.actions.entry("start-lost").or_default() += 1;
                        }
                        Err(e) => {
                            if storm {
                                blur(&mut bounds, [&i.id]);
                            }
                            log(format!("a{n} start lost {} refused: {e}", i.id))
                        }
                    }
                }
            }
        }

        // Tenants give up on what waited too long, and clean up what they stopped long ago, as
        // people (and scripts) do: the queue stays as long as a real one, not a backlog that
        // grows for as long as the run. Once a virtual minute, from a stream of its own.
        if faulty && step % 60 == 59 {
            let now_ts = clock.now();
            let stale: Vec<gpucloud_store::Instance> = sql
                .instances_in_states(&[InstanceState::Pending, InstanceState::Stopped])
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|i| {
                    let idle_ms = now_ts.millis_since(i.updated_at);
                    (i.state == InstanceState::Pending && idle_ms > PATIENCE_MS)
                        || (i.state == InstanceState::Stopped && idle_ms > 2 * PATIENCE_MS)
                })
                .collect();
            for i in stale {
                if !patience.random_bool(0.8) {
                    continue;
                }
                let Some(t) = tenants.iter().find(|t| t.tenant.id == i.tenant_id) else { continue };
                match app.instance_action(t, i.id.as_str(), gpucloud_model::UserAction::Terminate).await {
                    Ok(after) => {
                        log(format!("{} gives up on {} ({}): now {}", t.tenant.name, i.id, i.state, after.state));
                        *report.actions.entry("give-up").or_default() += 1;
                        terminated.insert(i.id.clone());
                    }
                    Err(e) => {
                        if storm {
                            blur(&mut bounds, [&i.id]);
                        }
                        log(format!("give up on {} refused: {e}", i.id))
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
        if let Some((n, a, kind, for_s)) = drawn.as_ref().and_then(|d| d.agent) {
            let agent = &mut agents[a];
            if agent.silent_until <= now {
                faults.applied.push(n);
                agent.silent_until = now + for_s * 1000;
                agent.partitioned = kind == "partition";
                if kind == "host-down" {
                    for (id, (since, _)) in std::mem::take(&mut agent.running) {
                        log(format!("{id} dies with node-{a}"));
                        *ran.entry(id).or_default() += now - since;
                    }
                    agent.stopped.clear();
                    agent.exited.clear();
                }
                *report.faults.entry(kind).or_default() += 1;
                log(format!("#{n} {kind}: node-{a} silent for {for_s} s"));
            }
        }
        // A one-way partition: the agent's beats arrive, the answers do not.
        if let Some((n, a, for_s)) = drawn.as_ref().and_then(|d| d.one_way) {
            let agent = &mut agents[a];
            if agent.silent_until <= now && agent.deaf_until <= now {
                faults.applied.push(n);
                agent.deaf_until = now + for_s * 1000;
                *report.faults.entry("one-way").or_default() += 1;
                log(format!("#{n} one-way: node-{a} gets no answers for {for_s} s"));
            }
        }
        if let Some(n) = drawn.as_ref().and_then(|d| d.server_restart) {
            faults.applied.push(n);
            // kill -9 of the server: what it committed is all that is left.
            app = Arc::new(App::new(store.clone(), config.clone()));
            *report.faults.entry("server-restart").or_default() += 1;
            last_restart = Some(now);
            log(format!("#{n} server restarts"));
        }

        // Held-up beats arrive, after the beats their agents sent since.
        for (a, agent) in agents.iter_mut().enumerate() {
            let (due_now, later): (Vec<Delayed>, Vec<Delayed>) =
                std::mem::take(&mut agent.in_flight).into_iter().partition(|d| d.arrives <= now);
            agent.in_flight = later;
            for d in due_now {
                // Refused when a newer beat arrived first; taken (and then it is the newest the
                // server has) when none did.
                match app.heartbeat(d.report).await {
                    Err(e) => {
                        if storm {
                            blur(
                                &mut bounds,
                                agent.spans.keys().chain(d.view.running.iter()).chain(d.view.ended.iter()),
                            );
                        }
                        log(format!("node-{a}'s held-up beat arrives, refused: {e}"))
                    }
                    Ok(_) => {
                        // Taken although a newer beat arrived first: only a bug does that, and
                        // then what it says is stale, whatever the server makes of it.
                        let stale = d.seq < agent.received_seq;
                        agent.received_seq = agent.received_seq.max(d.seq);
                        account(agent, &d.view, stale, now, (grace_ms, last_restart), &cancelled, &mut bounds);
                        log(format!("node-{a}'s held-up beat arrives, taken"));
                    }
                }
            }
        }

        // Agents beat.
        for (a, agent) in agents.iter_mut().enumerate() {
            if now < agent.next_beat {
                continue;
            }
            agent.next_beat = now + BEAT_MS;
            // Every beat's draws, sent or not.
            let beat = faulty.then(|| BeatFaults::draw(&mut beat_rng, &mut faults));
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
                    log(format!("{id} exits on node-{a}"));
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
            let lose_n = beat.and_then(|b| b.lose);
            let duplicate_n = beat.and_then(|b| b.duplicate);
            let lose = lose_n.is_some() || deaf;
            let report_of = |agent: &SimAgent| AgentReport {
                node: agent.node.clone(),
                epoch: Some(agent.epoch),
                seq: (cfg.inject != Some(Injected::UnnumberedBeats)).then_some(agent.seq),
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
            agent.seq += 1;
            // Held up on the way: the agent hears nothing back and beats again on time.
            if let Some((n, delay_s)) = beat.and_then(|b| b.held_up)
                && cfg.held_up_beats
            {
                faults.applied.push(n);
                let arrives = now + delay_s * 1000;
                agent.in_flight.push(Delayed { arrives, seq: agent.seq, report: report_of(agent), view: agent.view() });
                *report.faults.entry("held-up-beat").or_default() += 1;
                log(format!(
                    "#{n} node-{a}'s beat is held up for {} s (running: {}; ended: {})",
                    (arrives - now) / 1000,
                    ids(agent.running.keys()),
                    ids(agent.stopped.iter().chain(agent.exited.iter()))
                ));
                continue;
            }
            // The checker's record of what the server may bill, from what this beat tells it.
            let view = agent.view();
            let about: Vec<InstanceId> = if storm {
                agent.spans.keys().chain(view.running.iter()).chain(view.ended.iter()).cloned().collect()
            } else {
                Vec::new()
            };
            agent.received_seq = agent.seq;
            account(agent, &view, false, now, (grace_ms, last_restart), &cancelled, &mut bounds);
            let answer = app.heartbeat(report_of(agent)).await;
            if let Some(n) = duplicate_n {
                // The same request twice (a retransmission): the second is refused as already
                // taken, and its answer is lost.
                faults.applied.push(n);
                *report.faults.entry("duplicate-beat").or_default() += 1;
                let _ = app.heartbeat(report_of(agent)).await;
            }
            let desired = match answer {
                Ok(d) if !lose => d,
                Ok(_) => {
                    if let Some(n) = lose_n.filter(|_| !deaf) {
                        faults.applied.push(n);
                        *report.faults.entry("lost-answer").or_default() += 1;
                    }
                    continue;
                }
                Err(e) => {
                    // Refused part-way, it may have been taken in part.
                    if storm {
                        blur(&mut bounds, about.iter());
                    }
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
                log(format!("node-{a} stops {id}, as told"));
                *ran.entry(id.clone()).or_default() += now - since;
                agent.stopped.insert(id);
            }
            for id in run {
                // Placed here (again): its reports here count from now on.
                agent.gone.remove(id);
                if !agent.running.contains_key(id) {
                    log(format!("node-{a} starts {id}"));
                    let ends = now + work_s(cfg.seed, id, now) * 1000;
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

        let full = step % 60 == 0 || step + 1 == total;
        match check(&sql, &agents, &acknowledged, &terminated, full).await {
            Err(v) => {
                report.violation = Some(format!("at {} s: {v}", now / 1000));
                break;
            }
            Ok(placed) => {
                // Taken off a node and placed on it again (its agent may never have stopped it):
                // its reports there count again from the next beat, answered or not.
                for agent in agents.iter_mut() {
                    agent.gone.retain(|id| placed.get(id) != Some(&agent.node));
                }
            }
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
            b.lower += if cancelled.contains(id) { 0 } else { last - first };
        }
    }
    let mut billed: BTreeMap<InstanceId, i64> = BTreeMap::new();
    for t in &tenants {
        for u in store.intervals_of_tenant(&t.tenant.id).await.map_err(|e| e.to_string())? {
            *billed.entry(u.instance_id.clone()).or_default() += u.ended_at.unwrap_or(now).millis_since(u.started_at);
        }
    }
    if outage.is_some() {
        sql.fail_writes_after(None).await.map_err(|e| e.to_string())?;
    }
    report.applied = std::mem::take(&mut faults.applied);
    report.applied_actions = std::mem::take(&mut actions.applied);
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
    if let Some(v) = report.violation.clone() {
        // The server's own record of what the violation names, beside the simulation's.
        let at = |t: Timestamp| t.millis_since(start) / 1000;
        for id in named(&v).into_iter().filter_map(|w| InstanceId::parse(w).ok()) {
            for e in store.instance_events(&id).await.map_err(|e| e.to_string())? {
                let from = e.from.map_or("-".to_string(), |f| f.to_string());
                history.push(format!("t={:>5}s server: {id} {from} -> {}", at(e.at), e.to));
            }
            for t in &tenants {
                for u in store.intervals_of_tenant(&t.tenant.id).await.map_err(|e| e.to_string())? {
                    if u.instance_id == id {
                        let end = u.ended_at.map_or("open".to_string(), |e| format!("t={}s", at(e)));
                        history.push(format!("t={:>5}s server: bills {id} until {end}", at(u.started_at)));
                    }
                }
            }
        }
        history.sort_by_key(|h| h.get(2..7).and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0));
        report.history = relevant(&history, &v);
    }
    Ok(report)
}

/// Numbers the faults (or the tenants' actions) a run draws, in the order drawn, and says which
/// of them to apply.
struct Faults<'a> {
    drawn: u32,
    only: Option<&'a BTreeSet<u32>>,
    applied: Vec<u32>,
}

impl Faults<'_> {
    /// A fault was drawn: its number, if it is to be applied.
    fn draw(&mut self) -> Option<u32> {
        self.drawn += 1;
        let n = self.drawn;
        self.only.is_none_or(|o| o.contains(&n)).then_some(n)
    }
}

/// What the tenants mean to do this step (which instance an action picks depends on what they
/// hold: `pick` is taken modulo it).
#[derive(Clone, Copy)]
struct Intent {
    create: Option<(usize, GpuModel, u32, bool)>,
    act: Option<(usize, gpucloud_model::UserAction)>,
    restart_lost: Option<usize>,
    /// The numbers of the create, the action and the start of a lost instance.
    numbers: [u32; 3],
}

impl Intent {
    fn draw(r: &mut StdRng, tenants: usize) -> Intent {
        let create = r.random_bool(0.12);
        let who = r.random_range(0..tenants);
        let big = r.random_bool(0.5);
        let count = r.random_range(1..=4);
        let spot = r.random_bool(0.3);
        let act = r.random_bool(0.15);
        let pick = r.random::<u32>() as usize;
        let action = match r.random_range(0..3) {
            0 => gpucloud_model::UserAction::Stop,
            1 => gpucloud_model::UserAction::Start,
            _ => gpucloud_model::UserAction::Terminate,
        };
        let lost = r.random_bool(0.3);
        let lost_pick = r.random::<u32>() as usize;
        let (model, count) = if big { (GpuModel::A100_40GB, count) } else { (GpuModel::T4, 1) };
        Intent {
            create: create.then_some((who, model, count, spot)),
            act: act.then_some((pick, action)),
            restart_lost: lost.then_some(lost_pick),
            numbers: [0; 3],
        }
    }

    /// Numbers what was drawn, in order, and leaves out what is not to be applied: a number
    /// depends on the script alone, so it stays the same when a shrinker leaves others out.
    fn numbered(mut self, actions: &mut Faults) -> Intent {
        fn number<T>(slot: &mut Option<T>, n: &mut u32, actions: &mut Faults) {
            if slot.is_some() {
                match actions.draw() {
                    Some(drawn) => *n = drawn,
                    None => *slot = None,
                }
            }
        }
        let [a, b, c] = &mut self.numbers;
        number(&mut self.create, a, actions);
        number(&mut self.act, b, actions);
        number(&mut self.restart_lost, c, actions);
        self
    }
}

/// The faults drawn for one step, each with its number (`None`: not drawn, or left out).
struct StepFaults {
    /// An agent restart, a partition or the host going down: which agent, for how long (s).
    agent: Option<(u32, usize, &'static str, i64)>,
    /// A one-way partition: which agent, for how long (s).
    one_way: Option<(u32, usize, i64)>,
    server_restart: Option<u32>,
    /// The store refusing writes: after how many rows, for how long (s).
    outage: Option<(u32, u32, i64)>,
}

impl StepFaults {
    fn draw(r: &mut StdRng, agents: usize, faults: &mut Faults) -> StepFaults {
        let agent = r.random_bool(0.02);
        let a = r.random_range(0..agents);
        let kind = r.random_range(0..3);
        let x = i64::from(r.random::<u32>());
        let (kind, for_s) = match kind {
            0 => ("agent-restart", 1 + x % 8),
            1 => ("partition", 1 + x % 180),
            _ => ("host-down", 2 + x % 119),
        };
        let agent = if agent { faults.draw().map(|n| (n, a, kind, for_s)) } else { None };
        let one_way = r.random_bool(0.01);
        let oa = r.random_range(0..agents);
        let o_for = 5 + i64::from(r.random::<u32>()) % 116;
        let one_way = if one_way { faults.draw().map(|n| (n, oa, o_for)) } else { None };
        let restart = r.random_bool(0.003);
        let server_restart = if restart { faults.draw() } else { None };
        let outage = r.random_bool(0.004);
        let rows = r.random_range(0..=20);
        let s_for = r.random_range(1..=15);
        let outage = if outage { faults.draw().map(|n| (n, rows, s_for)) } else { None };
        StepFaults { agent, one_way, server_restart, outage }
    }
}

/// The faults drawn for one beat slot of one agent, each with its number.
#[derive(Clone, Copy)]
struct BeatFaults {
    /// Its answer is lost.
    lose: Option<u32>,
    /// It is sent twice.
    duplicate: Option<u32>,
    /// It is held up on the way for this many seconds.
    held_up: Option<(u32, i64)>,
}

impl BeatFaults {
    fn draw(r: &mut StdRng, faults: &mut Faults) -> BeatFaults {
        let (l, d, h) = (r.random_bool(0.02), r.random_bool(0.02), r.random_bool(0.01));
        let delay_s = r.random_range(1..=8);
        let lose = if l { faults.draw() } else { None };
        let duplicate = if d { faults.draw() } else { None };
        let held_up = if h { faults.draw().map(|n| (n, delay_s)) } else { None };
        BeatFaults { lose, duplicate, held_up }
    }
}

/// How long a workload started at `now` runs before it ends by itself (30 s to 15 min): a
/// function of the workload, not a draw from a stream, so that it stays the same when a
/// shrinker leaves faults out.
fn work_s(seed: u64, id: &InstanceId, now: i64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in id.as_str().bytes().chain(now.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    30 + (h % 871) as i64
}

/// Billing of these instances is not checked (see `Bound::ambiguous`).
fn blur<'a>(bounds: &mut BTreeMap<InstanceId, Bound>, ids: impl IntoIterator<Item = &'a InstanceId>) {
    for id in ids {
        bounds.entry(id.clone()).or_default().ambiguous = true;
    }
}

/// What the server may bill an instance, by the checker's own account (ms).
#[derive(Debug, Clone, Default)]
struct Bound {
    lower: i64,
    upper: i64,
    /// Its node went silent for about the heartbeat grace, or across a server restart: whether
    /// the server declared it lost then is a race, so its billing is not checked. Nor is it when
    /// a request about it failed part-way in a store outage.
    ambiguous: bool,
}

/// Updates the billing bounds with the beat `agent` sends at `now` (before it is sent: what
/// the report will say is the agent's state now).
fn account(
    agent: &mut SimAgent,
    view: &View,
    stale: bool,
    now: i64,
    (grace_ms, last_restart): (i64, Option<i64>),
    cancelled: &BTreeSet<InstanceId>,
    bounds: &mut BTreeMap<InstanceId, Bound>,
) {
    let lower = |id: &InstanceId, ms: i64| if cancelled.contains(id) { 0 } else { ms };
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
                b.lower += lower(&id, prev - first);
                b.ambiguous |= !surely_lost;
                agent.gone.insert(id);
            }
            // What it started on the answer to its last beat before the silence, and so never
            // reported running: the server declared it lost with its node (and ignores its
            // reports from now on, as those above), or may have.
            for id in &view.running {
                if surely_lost {
                    agent.gone.insert(id.clone());
                } else {
                    bounds.entry(id.clone()).or_default().ambiguous = true;
                }
            }
        }
    }
    agent.last_received = Some(now);
    if stale {
        // Sent before beats that already arrived: a sign of life for what it reports running,
        // and nothing more. What started or ended since is not in it, and its silence about a
        // workload must not end that workload's billing.
        for id in &view.running {
            if let Some(span) = agent.spans.get_mut(id) {
                span.1 = now;
            }
        }
        return;
    }
    let running: Vec<InstanceId> = view.running.iter().filter(|id| !agent.gone.contains(*id)).cloned().collect();
    for (id, (first, last)) in agent.spans.clone() {
        if running.contains(&id) {
            continue;
        }
        agent.spans.remove(&id);
        let b = bounds.entry(id.clone()).or_default();
        if view.ended.contains(&id) {
            // Reported stopped now: billed until this beat.
            b.upper += now - first;
            b.lower += lower(&id, last - first);
        } else {
            // Vanished (its host went down): billed until the last report of it running.
            b.upper += last - first;
            b.lower += lower(&id, last - first);
        }
    }
    for id in running {
        agent.spans.entry(id).or_insert((now, now)).1 = now;
    }
}

/// Whether `line` names `word` ("node-1" is not named by "node-12").
fn mentions(line: &str, word: &str) -> bool {
    named(line).contains(&word)
}

/// The instances and nodes a violation names.
fn named(violation: &str) -> Vec<&str> {
    violation
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| (w.starts_with("i-") || w.starts_with("node-")) && w.len() > 5)
        .collect()
}

fn ids<'a>(ids: impl Iterator<Item = &'a InstanceId>) -> String {
    let all: Vec<&str> = ids.map(|i| i.as_str()).collect();
    if all.is_empty() { "-".to_string() } else { all.join(" ") }
}

/// A failure's history cut down to what bears on it: every event that names an instance or
/// node the violation names, then the last few events of all.
fn relevant(history: &[String], violation: &str) -> Vec<String> {
    let mut named: Vec<String> = named(violation).into_iter().map(str::to_string).collect();
    // The nodes that ran what it names: their faults bear on it too.
    let instances: Vec<String> = named.iter().filter(|w| w.starts_with("i-")).cloned().collect();
    for h in history.iter().filter(|h| instances.iter().any(|w| mentions(h, w))) {
        for w in self::named(h) {
            if w.starts_with("node-") && !named.iter().any(|n| n == w) {
                named.push(w.to_string());
            }
        }
    }
    let tail = history.len().saturating_sub(12);
    history
        .iter()
        .enumerate()
        .filter(|(n, h)| *n >= tail || named.iter().any(|w| mentions(h, w)))
        .map(|(_, h)| h.clone())
        .collect()
}

fn action_name(a: gpucloud_model::UserAction) -> &'static str {
    match a {
        gpucloud_model::UserAction::Stop => "stop",
        gpucloud_model::UserAction::Start => "start",
        gpucloud_model::UserAction::Terminate => "terminate",
        gpucloud_model::UserAction::Evict => "evict",
    }
}

/// The invariants after a step, from the store's rows and the agents' own record; what holds
/// GPUs where, as the store says.
async fn check(
    store: &gpucloud_store::SqlStore,
    agents: &[SimAgent],
    acknowledged: &[InstanceId],
    terminated: &BTreeSet<InstanceId>,
    full: bool,
) -> Result<BTreeMap<InstanceId, NodeId>, String> {
    let nodes = store.list_nodes().await.map_err(|e| e.to_string())?;
    // Every step reads what the nodes hold (few rows); once a virtual minute, and at the end,
    // every instance, the terminated ones included (a run's worth, and growing).
    let all = if full {
        store.list_instances(None).await.map_err(|e| e.to_string())?
    } else {
        store.placed_instances().await.map_err(|e| e.to_string())?
    };
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
    for n in &nodes {
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
            None if full => return Err(format!("{id} was acknowledged and is gone")),
            None => {}
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
    Ok(all.iter().filter(|i| i.state.holds_gpus()).filter_map(|i| Some((i.id.clone(), i.node_id.clone()?))).collect())
}
