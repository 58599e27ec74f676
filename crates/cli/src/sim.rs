//! `gpucloud sim`: replays GPU cluster traces through the production placer.

use crate::output::table;
use clap::Subcommand;
use gpucloud_sched::share::SharePolicy;
use gpucloud_sim::fgd::{Experiment, Record};
use gpucloud_sim::trace::{Models, read_nodes, read_trace};
use std::path::PathBuf;
use std::time::Instant;

/// Where the repository keeps the trace (relative paths below are tried from the working
/// directory first, then from the repository this binary was built in).
const DATA: &str = "data/alibaba-gpu-v2023/csv";

pub use gpucloud_sim::report::data_file;

#[derive(Subcommand)]
pub enum SimCmd {
    /// The FGD paper's packing experiment: shuffle, inflate demand to --tune x capacity, place
    /// one by one with no departures; prints GPU allocation at 100..130% arrived demand.
    Fgd {
        /// Task list(s) (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]); repeat or
        /// comma-separate for several traces.
        #[arg(long, value_delimiter = ',', default_value = "data/alibaba-gpu-v2023/csv/openb_pod_list_default.csv")]
        trace: Vec<PathBuf>,
        /// Node list (sn,cpu_milli,memory_mib,gpu,model); nodes without GPUs are skipped.
        #[arg(long, default_value = "data/alibaba-gpu-v2023/csv/openb_node_list_gpu_node.csv")]
        nodes: PathBuf,
        /// Policies, comma-separated, or "all": random, dot-product, gpu-clustering,
        /// gpu-packing, best-fit, fgd, fgd-pack, fgd-cpu.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        policy: Vec<String>,
        /// Seeds: "42..51" (inclusive), "42" or "1,2,3".
        #[arg(long, default_value = "42..51")]
        seeds: String,
        /// Demand to reach, as a multiple of the fleet's GPU capacity.
        #[arg(long, default_value_t = 1.3)]
        tune: f64,
        /// Write the curves as an SVG chart here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Weigh power against fragmentation in fgd, fgd-pack and fgd-cpu: score points per 100 W a
        /// placement adds (waking a node, lighting an idle GPU). Comma-separate several to draw
        /// the trade-off; each gets its own rows ("fgd-pack w=2").
        #[arg(long, value_delimiter = ',', default_value = "0")]
        power_weight: Vec<f64>,
    },
    /// How far from the best possible packing the policies are: for each trace and seed, the
    /// FGD experiment's arrivals packed by the policies (online, one by one), by an offline packer
    /// that sees them all at once (achievable), and an upper bound from a linear program that no
    /// placement of any subset of them can beat; prints each policy's share of the headroom
    /// between FGD and the bound.
    Bound {
        #[arg(long, value_delimiter = ',', default_value = "data/alibaba-gpu-v2023/csv/openb_pod_list_default.csv")]
        trace: Vec<PathBuf>,
        #[arg(long, default_value = "data/alibaba-gpu-v2023/csv/openb_node_list_gpu_node.csv")]
        nodes: PathBuf,
        /// Online policies to compare (FGD, the baseline, is always run).
        #[arg(long, value_delimiter = ',', default_value = "fgd,fgd-pack,fgd-cpu")]
        policy: Vec<String>,
        #[arg(long, default_value = "42..51")]
        seeds: String,
        #[arg(long, default_value_t = 1.3)]
        tune: f64,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Replays a trace in time (creation_time/deletion_time): tasks wait in a FIFO queue when
    /// nothing fits and depart when done; prints GPU allocation over time and what each qos
    /// class pays under per-second billing.
    Replay {
        #[arg(long, default_value = "data/alibaba-gpu-v2023/csv/openb_pod_list_default.csv")]
        trace: PathBuf,
        #[arg(long, default_value = "data/alibaba-gpu-v2023/csv/openb_node_list_gpu_node.csv")]
        nodes: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "fgd-pack")]
        policy: Vec<String>,
        /// Price per GPU-hour of a model, MODEL=DOLLARS (repeatable); defaults cover the
        /// Alibaba trace's models.
        #[arg(long)]
        price: Vec<String>,
        /// Time buckets in the utilization table.
        #[arg(long, default_value_t = 10)]
        buckets: usize,
        /// Divide arrival times by this (durations kept): 100 packs 149 days of arrivals into
        /// 1.5 days, enough to make tasks queue.
        #[arg(long, default_value_t = 1.0)]
        compress: f64,
        /// Split the trace into this many projects (the first submitting about half, each next
        /// half the one before; qos read as priority: LS production, Burstable default, BE
        /// batch) and replay it twice: first come first served, and in the production
        /// scheduler's order (priority with aging, fair share, age); prints each project's
        /// share of GPU time and the waits per priority class side by side.
        #[arg(long, default_value_t = 0)]
        projects: usize,
        /// With --projects: a waiting task rises a priority level per this many minutes.
        #[arg(long, default_value_t = 10)]
        aging_minutes: i64,
        /// Replay on only the first N nodes of the node list (the whole trace on a smaller
        /// fleet: how to make its tasks contend).
        #[arg(long)]
        fleet: Option<usize>,
        /// Where a task that accepts several GPU models goes, comma-separated to compare:
        /// "policy" (the node the placement policy scores best), "cheapest" (the cheapest model
        /// with room, the policy choosing among its nodes) or "fastest" (the dearest with room).
        #[arg(long, value_delimiter = ',', default_value = "policy")]
        prefer: Vec<String>,
    },
    /// Spot with recovery against on-demand only, on the trace's task durations: cost saved and
    /// completion time added as the preemption rate grows, with and without checkpoints on notice.
    Spot {
        #[arg(long, default_value = "data/alibaba-gpu-v2023/csv/openb_pod_list_default.csv")]
        trace: PathBuf,
        /// Preemptions per hour of a job's running time, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,0.05,0.1,0.25,0.5,1,2,4")]
        rates: Vec<f64>,
        /// Seconds of notice before a preemption.
        #[arg(long, default_value_t = 120)]
        notice: i64,
        /// Without checkpoint-on-notice: minutes between the workload's own checkpoints.
        #[arg(long, default_value_t = 30)]
        checkpoint_every: i64,
        /// Mean seconds until spot capacity comes back after a preemption.
        #[arg(long, default_value_t = 120.0)]
        restart_wait: f64,
        /// Seconds a new attempt spends starting (billed, no progress).
        #[arg(long, default_value_t = 60)]
        startup: i64,
        /// Long-run mean of the spot price, percent of on-demand.
        #[arg(long, default_value_t = 35.0)]
        spot_mean: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// The real control plane (App and the SQLite store) with simulated agents and tenants on
    /// virtual time, under faults drawn from each seed: agent crashes, partitions, lost and
    /// duplicated beats, server restarts, store outages (writes refused part-way through a
    /// request; `--no-store-faults` leaves them out). Checks the invariants after every
    /// virtual second and, once faults heal, that everything settles. Exits non-zero on the
    /// first violation.
    Chaos {
        /// Seeds: "1..200" (inclusive), "7" or "1,2,3"; one seed replays byte for byte.
        #[arg(long, default_value = "1..10")]
        seeds: String,
        /// Virtual minutes of faults per seed (then faults heal).
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 4)]
        nodes: u32,
        /// Print each seed's report, not only failures and the summary.
        #[arg(long)]
        verbose: bool,
        /// Put a known bug in, to see the checker catch it: "no-fencing" (cut-off agents never
        /// stop their workloads) or "unnumbered-beats" (a beat held up on the way is taken as
        /// the node's current state).
        #[arg(long)]
        inject: Option<String>,
        /// Seeds run side by side on this many threads, each pinned to a core (default: one per
        /// core this process may use).
        #[arg(long)]
        jobs: Option<usize>,
        /// Hold no beats up on the way (by default some arrive after later ones, and the server
        /// must refuse them by their number).
        #[arg(long)]
        no_held_up_beats: bool,
        /// Never make the store refuse writes (by default it does, now and then, from the
        /// middle of a request on).
        #[arg(long)]
        no_store_faults: bool,
        /// Apply only the faults of these numbers ("3,17,40", or "none"), as a shrunk failure
        /// lists them; the others are drawn and left out.
        #[arg(long)]
        only_faults: Option<String>,
        /// Apply only the tenants' actions of these numbers ("2,9", or "none"): creates,
        /// stops, starts, terminates and starts of lost instances, numbered as drawn ("a9" in a
        /// history); the others are drawn and left out.
        #[arg(long)]
        only_actions: Option<String>,
        /// On a failure, search for the fewest of its faults, then of its tenants' actions,
        /// that still break the same invariant, and print that run.
        #[arg(long)]
        shrink: bool,
    },
}

pub fn run(cmd: SimCmd, as_json: bool) -> Result<(), String> {
    match cmd {
        SimCmd::Fgd { trace, nodes, policy, seeds, tune, svg, threads, power_weight } => {
            fgd(&trace, &nodes, &policy, &seeds, tune, svg, (threads, &power_weight), as_json)
        }
        SimCmd::Bound { trace, nodes, policy, seeds, tune, threads } => {
            bound(&trace, &nodes, &policy, &seeds, tune, threads, as_json)
        }
        SimCmd::Replay { trace, nodes, policy, price, buckets, compress, projects, aging_minutes, fleet, prefer } => {
            let options = gpucloud_sim::replay::ReplayOptions {
                buckets,
                compress,
                projects,
                queue: gpucloud_sim::replay::Queue::Fifo,
                prefer: gpucloud_sim::replay::Prefer::Policy,
            };
            replay(&trace, &nodes, &policy, &price, options, (aging_minutes, fleet, &prefer), as_json)
        }
        SimCmd::Spot { trace, rates, notice, checkpoint_every, restart_wait, startup, spot_mean, seed } => {
            let base = gpucloud_sim::spot::SpotParams {
                notice_s: notice,
                checkpoint_every_s: checkpoint_every * 60,
                restart_wait_s: restart_wait,
                startup_s: startup,
                spot_mean_pct: spot_mean,
                ..Default::default()
            };
            spot(&trace, &rates, base, seed, as_json)
        }
        SimCmd::Chaos {
            seeds,
            minutes,
            nodes,
            verbose,
            inject,
            jobs,
            no_held_up_beats,
            no_store_faults,
            only_faults,
            only_actions,
            shrink,
        } => {
            use gpucloud_server::chaos::Injected;
            let inject = match inject.as_deref() {
                None => None,
                Some(name) => Some(Injected::parse(name).ok_or_else(|| {
                    let known: Vec<&str> = Injected::ALL.iter().map(|i| i.name()).collect();
                    format!("--inject: unknown bug '{name}' ({})", known.join(", "))
                })?),
            };
            let only_faults = only_faults.as_deref().map(|l| parse_numbers("--only-faults", l)).transpose()?;
            let only_actions = only_actions.as_deref().map(|l| parse_numbers("--only-actions", l)).transpose()?;
            let base = gpucloud_server::chaos::ChaosConfig {
                minutes,
                nodes,
                inject,
                held_up_beats: !no_held_up_beats,
                store_faults: !no_store_faults,
                only_faults,
                only_actions,
                ..Default::default()
            };
            chaos(&seeds, base, verbose, jobs, shrink)
        }
    }
}

/// "3,17,40" or "none".
fn parse_numbers(flag: &str, list: &str) -> Result<std::collections::BTreeSet<u32>, String> {
    if list.trim() == "none" {
        return Ok(Default::default());
    }
    list.split(',')
        .map(|n| {
            n.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag} '{list}': expected numbers from 1 up, as \"3,17,40\", or \"none\""))
        })
        .collect()
}

fn chaos(
    seeds: &str,
    base: gpucloud_server::chaos::ChaosConfig,
    verbose: bool,
    jobs: Option<usize>,
    shrink: bool,
) -> Result<(), String> {
    let seeds = gpucloud_sim::parse_seeds(seeds)?;
    if !(1..=64).contains(&base.nodes) {
        return Err("--nodes must be between 1 and 64".into());
    }
    let jobs = match jobs {
        Some(0) => return Err("--jobs must be at least 1".into()),
        Some(j) => j,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    // Each seed runs on one thread (the simulation is sequential, so one seed is one history);
    // seeds run side by side, and their reports print in the order of the seeds.
    let started = Instant::now();
    let cfgs: Vec<_> =
        seeds.iter().map(|seed| gpucloud_server::chaos::ChaosConfig { seed: *seed, ..base.clone() }).collect();
    let (mut failed, mut virtual_s) = (Vec::new(), 0u64);
    let mut failures = Vec::new();
    gpucloud_server::chaos::run_each(&cfgs, jobs, |r| {
        virtual_s += r.steps;
        if verbose || r.violation.is_some() {
            print!("{}", r.render());
        }
        if r.violation.is_some() {
            failed.push(r.seed);
            failures.push(r);
        }
    })?;
    let real = started.elapsed().as_secs_f64();
    println!(
        "{} seeds, {} failed{}; {virtual_s} virtual s in {real:.1} s: {:.2} seeds/s, {:.0}x real time",
        seeds.len(),
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(" ({failed:?})") },
        seeds.len() as f64 / real.max(1e-9),
        virtual_s as f64 / real.max(1e-9)
    );
    if shrink {
        for r in &failures {
            let cfg = gpucloud_server::chaos::ChaosConfig { seed: r.seed, ..base.clone() };
            let started = Instant::now();
            let s = gpucloud_server::chaos::shrink(&cfg, r, jobs, 300)?;
            println!(
                "seed {} shrunk from {} faults and {} tenants' actions to {} and {} in {} runs ({:.1} s):",
                r.seed,
                s.from,
                s.from_actions,
                s.report.applied.len(),
                s.report.applied_actions.len(),
                s.runs,
                started.elapsed().as_secs_f64()
            );
            print!("{}", s.report.render());
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("invariants broken on seeds {failed:?}")) }
}

fn replay(
    trace: &std::path::Path,
    nodes: &std::path::Path,
    policy: &[String],
    price: &[String],
    options: gpucloud_sim::replay::ReplayOptions,
    (aging_minutes, fleet, prefer): (i64, Option<usize>, &[String]),
    as_json: bool,
) -> Result<(), String> {
    use gpucloud_model::Money;
    use gpucloud_sim::replay::{DEFAULT_PRICES, Prefer, Queue, replay};
    let prefers: Vec<Prefer> = prefer
        .iter()
        .map(|p| Prefer::parse(p.trim()).ok_or_else(|| format!("--prefer '{p}': one of policy, cheapest, fastest")))
        .collect::<Result<_, _>>()?;
    if options.projects > 16 {
        return Err(format!("--projects {}: at most 16", options.projects));
    }
    if !(1..=7 * 24 * 60).contains(&aging_minutes) {
        return Err(format!("--aging-minutes {aging_minutes}: expected 1 to 10080"));
    }
    let mut prices: std::collections::HashMap<String, Money> = DEFAULT_PRICES
        .iter()
        .map(|(m, p)| (m.to_string(), p.parse::<Money>().expect("built-in price is valid")))
        .collect();
    for p in price {
        let (m, v) = p.split_once('=').ok_or_else(|| format!("--price '{p}': expected MODEL=DOLLARS, e.g. G2=1.60"))?;
        let v: Money = v.trim().parse().map_err(|e| format!("--price '{p}': {e}"))?;
        if v.0 < 0 {
            return Err(format!("--price '{p}': a price cannot be negative"));
        }
        prices.insert(m.trim().to_string(), v);
    }
    let policies = parse_policies(policy)?;
    let mut models = Models::default();
    let mut node_rows = read_nodes(&data_file(nodes), &mut models)?;
    if let Some(n) = fleet {
        if n == 0 || n > node_rows.len() {
            return Err(format!("--fleet {n}: the node list has {} nodes", node_rows.len()));
        }
        node_rows.truncate(n);
    }
    let trace = read_trace(&data_file(trace), &mut models)?;
    let mut reports = Vec::new();
    for (p, prefer) in policies.iter().flat_map(|&p| prefers.iter().map(move |&x| (p, x))) {
        let options = gpucloud_sim::replay::ReplayOptions { prefer, ..options };
        reports.push(replay(&node_rows, &trace, &models, p, &prices, options)?);
        if options.projects > 0 {
            let fair =
                gpucloud_sim::replay::ReplayOptions { queue: Queue::Fair { aging_s: aging_minutes * 60 }, ..options };
            reports.push(replay(&node_rows, &trace, &models, p, &prices, fair)?);
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?);
        return Ok(());
    }
    if options.projects > 0 {
        for pair in reports.chunks(2) {
            let [fifo, fair] = pair else { continue };
            projects_table(fifo, fair);
        }
        return Ok(());
    }
    for r in &reports {
        println!(
            "policy {} (prefer {}): {} tasks ({} without times, {} fit no node), arrivals compressed {}x, mean GPU allocation {:.2}%, total ${}",
            r.policy, r.prefer, r.tasks, r.skipped, r.never_fit, r.compress, r.allocation_mean_pct, r.total_cost
        );
        let rows: Vec<Vec<String>> = r
            .buckets
            .iter()
            .map(|b| {
                vec![
                    format!("{:.1}", b.from_s as f64 / 86400.0),
                    format!("{:.1}", b.to_s as f64 / 86400.0),
                    format!("{:.2}", b.allocation_pct),
                    b.max_waiting.to_string(),
                ]
            })
            .collect();
        println!("{}", table(&["FROM DAY", "TO DAY", "GPU ALLOC %", "MAX WAITING"], &rows));
        let rows: Vec<Vec<String>> = r
            .classes
            .iter()
            .map(|c| {
                vec![
                    c.class.clone(),
                    c.tasks.to_string(),
                    c.started.to_string(),
                    c.wait_p50_s.to_string(),
                    c.wait_p99_s.to_string(),
                    format!("{:.2}", c.gpu_hours),
                    format!("${}", c.cost),
                ]
            })
            .collect();
        println!(
            "\n{}\n",
            table(&["CLASS (qos)", "TASKS", "STARTED", "WAIT P50 S", "WAIT P99 S", "GPU-HOURS", "COST"], &rows)
        );
    }
    if reports.len() > 1 {
        // The bill and the allocation side by side: what each way of choosing costs and packs.
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                let hours: f64 = r.classes.iter().map(|c| c.gpu_hours).sum();
                let worst = r.classes.iter().map(|c| c.wait_p99_s).max().unwrap_or(0);
                vec![
                    r.policy.clone(),
                    r.prefer.clone(),
                    format!("{:.2}", r.allocation_mean_pct),
                    format!("{hours:.0}"),
                    format!("${}", r.total_cost),
                    format!("{:.3}", r.total_cost.0 as f64 / 1e6 / hours.max(1e-9)),
                    worst.to_string(),
                ]
            })
            .collect();
        let header = ["POLICY", "PREFER", "GPU ALLOC %", "GPU-HOURS", "BILL", "$/GPU-HOUR", "WORST WAIT P99 S"];
        println!("{}", table(&header, &rows));
    }
    Ok(())
}

/// The same trace split into projects, first come first served against the scheduler's order.
fn projects_table(fifo: &gpucloud_sim::replay::ReplayReport, fair: &gpucloud_sim::replay::ReplayReport) {
    println!(
        "policy {}: {} tasks, arrivals compressed {}x, mean GPU allocation {:.2}% (fifo) and {:.2}% (fair)",
        fifo.policy, fifo.tasks, fifo.compress, fifo.allocation_mean_pct, fair.allocation_mean_pct
    );
    let even = 100.0 / fifo.projects.len().max(1) as f64;
    let rows: Vec<Vec<String>> = fifo
        .projects
        .iter()
        .zip(&fair.projects)
        .map(|(a, b)| {
            vec![
                a.project.clone(),
                format!("{:.1}", a.submitted_pct),
                format!("{even:.1}"),
                format!("{:.1}", a.contended_share_pct),
                format!("{:.1}", b.contended_share_pct),
                a.wait_p95_s.to_string(),
                b.wait_p95_s.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "PROJECT",
                "SUBMITTED %",
                "WEIGHT %",
                "FIFO SHARE CONTENDED %",
                "FAIR SHARE CONTENDED %",
                "FIFO WAIT P95 S",
                "FAIR WAIT P95 S",
            ],
            &rows
        )
    );
    let rows: Vec<Vec<String>> = fifo
        .priorities
        .iter()
        .zip(&fair.priorities)
        .map(|(a, b)| {
            vec![
                a.priority.clone(),
                a.tasks.to_string(),
                format!("{} / {}", a.wait_p50_s, a.wait_p95_s),
                format!("{} / {}", b.wait_p50_s, b.wait_p95_s),
            ]
        })
        .collect();
    println!("{}\n", table(&["PRIORITY", "TASKS", "FIFO WAIT P50 / P95 S", "FAIR WAIT P50 / P95 S"], &rows));
}

pub fn parse_policies(names: &[String]) -> Result<Vec<SharePolicy>, String> {
    if names.iter().any(|n| n == "all") {
        return Ok(SharePolicy::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            SharePolicy::parse(n.trim()).ok_or_else(|| {
                let all: Vec<&str> = SharePolicy::ALL.iter().map(|p| p.name()).collect();
                format!("unknown policy '{n}' (one of: {}, or all)", all.join(", "))
            })
        })
        .collect()
}

/// One line of `sim bound`: a figure at the top of the demand range, over the seeds.
#[derive(serde::Serialize)]
struct BoundRow {
    trace: String,
    figure: String,
    allocation_mean: f64,
    /// Standard error of the mean.
    allocation_se: f64,
    /// (figure - FGD) / (bound - FGD), percent.
    headroom_captured: Option<f64>,
}

fn mean_se(ys: &[f64]) -> (f64, f64) {
    let n = ys.len().max(1) as f64;
    let mean = ys.iter().sum::<f64>() / n;
    if ys.len() < 2 {
        return (mean, 0.0);
    }
    let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn bound(
    traces: &[PathBuf],
    nodes: &std::path::Path,
    policy: &[String],
    seeds: &str,
    tune: f64,
    threads: Option<usize>,
    as_json: bool,
) -> Result<(), String> {
    if !(tune.is_finite() && tune > 0.0 && tune <= 10.0) {
        return Err(format!("--tune {tune}: expected a number in (0, 10]"));
    }
    let mut policies = parse_policies(policy)?;
    if !policies.contains(&SharePolicy::Fgd) {
        policies.insert(0, SharePolicy::Fgd);
    }
    let seeds = gpucloud_sim::parse_seeds(seeds)?;
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let mut models = Models::default();
    let node_rows = read_nodes(&data_file(nodes), &mut models)?;
    let started = Instant::now();
    let mut rows: Vec<BoundRow> = Vec::new();
    for path in traces {
        let trace = read_trace(&data_file(path), &mut models)?;
        let exp = Experiment::new(&node_rows, &trace, tune);
        let pct = exp.capacity_milli() as f64 / 100.0;
        let runs = gpucloud_sim::run_all(&exp, &policies, &seeds, threads);
        let brackets: Vec<_> = gpucloud_sim::par_map(&seeds, threads, |&s| gpucloud_sim::bound::bracket(&exp, s))
            .into_iter()
            .collect::<Result<_, _>>()?;
        // After the last task, as the bound is: within 0.01 of the value at the top percent on the
        // Alibaba trace, and defined on a tiny trace whose arrivals jump past it.
        let mut figures: Vec<(String, Vec<f64>)> = runs
            .iter()
            .map(|(p, rs)| (p.name().to_string(), rs.iter().map(|(_, st)| st.allocated_milli as f64 / pct).collect()))
            .collect();
        figures.push(("offline".into(), brackets.iter().map(|b| b.offline as f64 / pct).collect()));
        figures.push(("bound".into(), brackets.iter().map(|b| b.upper / pct).collect()));
        let fgd = mean_se(&figures[0].1).0;
        let upper = mean_se(&figures[figures.len() - 1].1).0;
        for (figure, ys) in figures {
            let (mean, se) = mean_se(&ys);
            let captured = (upper - fgd > 1e-9).then(|| (mean - fgd) / (upper - fgd) * 100.0);
            rows.push(BoundRow {
                trace: trace.name.clone(),
                figure,
                // + 0.0 turns a rounded -0.0 into 0.0.
                allocation_mean: (mean * 100.0).round() / 100.0 + 0.0,
                allocation_se: (se * 1000.0).round() / 1000.0 + 0.0,
                headroom_captured: captured.map(|c| (c * 10.0).round() / 10.0),
            });
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let top = (tune * 100.0).round() as usize;
    let alloc = format!("alloc@{top}%");
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.trace.clone(),
                r.figure.clone(),
                format!("{:.2}", r.allocation_mean),
                format!("{:.3}", r.allocation_se),
                r.headroom_captured.map(|c| format!("{c:.1}%")).unwrap_or("-".into()),
            ]
        })
        .collect();
    println!("{}", table(&["trace", "figure", &alloc, "se", "of headroom (bound - fgd)"], &body));
    println!(
        "\nGPU allocation, % of {} GPUs, mean of {} seeds; online policies place on arrival, offline sees every \
         arrival at once and may leave tasks out, bound: no placement of any subset does better; {:.1}s",
        node_rows.iter().map(|n| n.gpus as u64).sum::<u64>(),
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fgd(
    traces: &[PathBuf],
    nodes: &std::path::Path,
    policy: &[String],
    seeds: &str,
    tune: f64,
    svg: Option<PathBuf>,
    (threads, weights): (Option<usize>, &[f64]),
    as_json: bool,
) -> Result<(), String> {
    if !(tune.is_finite() && tune > 0.0 && tune <= 10.0) {
        return Err(format!("--tune {tune}: expected a number in (0, 10]"));
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0 && **w <= 1000.0)) {
        return Err(format!("--power-weight {w}: expected points per 100 W in [0, 1000]"));
    }
    let policies = parse_policies(policy)?;
    let weighed = |p: &SharePolicy| matches!(p, SharePolicy::Fgd | SharePolicy::FgdPack | SharePolicy::FgdCpu);
    if weights.iter().any(|w| *w > 0.0) && !policies.iter().any(weighed) {
        return Err("--power-weight applies to fgd, fgd-pack and fgd-cpu; add one of them to --policy".into());
    }
    let seeds = gpucloud_sim::parse_seeds(seeds)?;
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let hint = |e: String| {
        if e.contains("No such file") && !data_file(std::path::Path::new(DATA)).exists() {
            format!("{e} (the Alibaba trace lives in {DATA} in the repository)")
        } else {
            e
        }
    };
    let mut models = Models::default();
    let node_rows = read_nodes(&data_file(nodes), &mut models).map_err(hint)?;
    let mut all: Vec<Record> = Vec::new();
    let started = Instant::now();
    for path in traces {
        let trace = read_trace(&data_file(path), &mut models).map_err(hint)?;
        let power = gpucloud_sim::replay::power_of(&models);
        for &w in weights {
            let exp = Experiment::new(&node_rows, &trace, tune).with_power(power.clone(), w);
            let these: Vec<SharePolicy> = policies.iter().copied().filter(|p| w == 0.0 || weighed(p)).collect();
            let runs = gpucloud_sim::run_all(&exp, &these, &seeds, threads);
            let top = exp.max_percent();
            for mut r in gpucloud_sim::records(&trace.name, &runs) {
                let Some((_, rs)) = runs.iter().find(|(p, _)| p.name() == r.policy) else { continue };
                if r.demand_percent == top {
                    let kw = rs.iter().map(|(_, st)| st.watts).sum::<f64>() / rs.len().max(1) as f64 / 1000.0;
                    r.fleet_kw = Some((kw * 10.0).round() / 10.0);
                }
                if w > 0.0 {
                    r.policy = format!("{} w={w}", r.policy);
                }
                all.push(r);
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(path) = &svg {
        std::fs::write(path, gpucloud_sim::svg::chart(&all, 60)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if as_json {
        // From 100% arrived demand on, or only the top of a run that stops short of it.
        let from = 100.min((tune * 100.0).round() as usize);
        let shown: Vec<&Record> = all.iter().filter(|r| r.demand_percent >= from).collect();
        println!("{}", serde_json::to_string_pretty(&shown).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let top = (tune * 100.0).round() as usize;
    let cols: Vec<usize> = (100..=top).step_by(5).chain((!top.is_multiple_of(5)).then_some(top)).collect();
    let mut header = vec!["trace".to_string(), "policy".to_string()];
    header.extend(cols.iter().map(|c| format!("{c}%")));
    header.push(format!("±sd@{top}"));
    header.push(format!("kW@{top}"));
    let mut rows = Vec::new();
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in &all {
        if !keys.contains(&(r.trace.as_str(), r.policy.as_str())) {
            keys.push((&r.trace, &r.policy));
        }
    }
    for (t, p) in keys {
        let at = |k: usize| all.iter().find(|r| r.trace == t && r.policy == p && r.demand_percent == k);
        let mut row = vec![t.to_string(), p.to_string()];
        row.extend(cols.iter().map(|&k| at(k).map(|r| format!("{:.2}", r.allocation_mean)).unwrap_or("-".into())));
        row.push(at(top).map(|r| format!("{:.2}", r.allocation_std)).unwrap_or("-".into()));
        row.push(at(top).and_then(|r| r.fleet_kw).map(|k| format!("{k:.1}")).unwrap_or("-".into()));
        rows.push(row);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    println!("{}", table(&header, &rows));
    println!(
        "\nGPU allocation (% of {} GPUs on {} nodes) at each arrived demand, mean of {} seeds; kW: the GPUs' \
         estimated draw after the last task (a node with no GPU in use off, idle and busy watts per model); \
         {:.2}s on {} threads",
        node_rows.iter().map(|n| n.gpus as u64).sum::<u64>(),
        node_rows.len(),
        seeds.len(),
        elapsed.as_secs_f64(),
        threads
    );
    if let Some(path) = svg {
        println!("chart: {}", path.display());
    }
    Ok(())
}

fn spot(
    trace: &std::path::Path,
    rates: &[f64],
    base: gpucloud_sim::spot::SpotParams,
    seed: u64,
    as_json: bool,
) -> Result<(), String> {
    use gpucloud_model::Money;
    use gpucloud_sim::spot::{SpotJob, SpotParams, compare, spot_price_series};
    use rand::SeedableRng;
    if rates.iter().any(|r| !r.is_finite() || *r < 0.0 || *r > 1000.0) {
        return Err("--rates are preemptions per hour, 0 to 1000".into());
    }
    if base.notice_s < 0
        || base.startup_s < 0
        || base.checkpoint_every_s <= 0
        || !base.restart_wait_s.is_finite()
        || base.restart_wait_s < 0.0
    {
        return Err(
            "--notice, --startup and --restart-wait cannot be negative; --checkpoint-every is at least 1".into()
        );
    }
    if !(base.floor_pct..=100.0).contains(&base.spot_mean_pct) {
        return Err(format!("--spot-mean is a percentage of on-demand between {} and 100", base.floor_pct));
    }
    let prices: std::collections::HashMap<&str, Money> = gpucloud_sim::replay::DEFAULT_PRICES
        .iter()
        .map(|(m, p)| (*m, p.parse::<Money>().expect("built-in price is valid")))
        .collect();
    let fallback = prices["G2"];
    let mut models = Models::default();
    let t = read_trace(&data_file(trace), &mut models)?;
    let jobs: Vec<SpotJob> = t
        .tasks
        .iter()
        .filter_map(|task| {
            let (c, d) = (task.creation?, task.deletion?);
            let milli = task.ask.num_gpu * task.ask.gpu_milli.min(1000);
            (d > c && c >= 0 && milli > 0).then(|| SpotJob {
                milli_gpus: milli,
                duration_s: d - c,
                arrival_s: c,
                on_demand: task.spec.split('|').find_map(|m| prices.get(m.trim()).copied()).unwrap_or(fallback),
            })
        })
        .collect();
    if jobs.is_empty() {
        return Err(format!("{}: no GPU task with creation and deletion times", trace.display()));
    }
    let horizon = jobs.iter().map(|j| j.arrival_s + j.duration_s * 20 + 86_400).max().unwrap_or(0);
    const STEP: i64 = 600;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let series = spot_price_series(&base, horizon, STEP, &mut rng);
    let started = Instant::now();
    let mut rows = Vec::new();
    for &rate in rates {
        for on_notice in [true, false] {
            let p = SpotParams { rate_per_hour: rate, checkpoint_on_notice: on_notice, ..base };
            rows.push(compare(&jobs, &p, &series, STEP, seed));
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let gpu_hours: f64 = jobs.iter().map(|j| j.milli_gpus as f64 / 1000.0 * j.duration_s as f64 / 3600.0).sum();
    println!(
        "{} GPU jobs from {} ({:.0} GPU-hours); notice {} s, restart wait {} s mean, startup {} s, spot price mean {}% of on-demand (floor {}%), seed {seed}",
        jobs.len(),
        trace.display(),
        gpu_hours,
        base.notice_s,
        base.restart_wait_s,
        base.startup_s,
        base.spot_mean_pct,
        base.floor_pct
    );
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}", r.rate_per_hour),
                r.checkpoint.clone(),
                format!("{:.2}", r.preemptions_per_job),
                format!("${}", r.on_demand_cost),
                format!("${}", r.spot_cost),
                format!("{:.1}%", r.savings_pct),
                format!("+{:.1}%", r.completion_overhead_pct),
                format!("+{:.1}%", r.p95_job_overhead_pct),
                if r.holds { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "PREEMPT/H",
                "CHECKPOINT",
                "PREEMPT/JOB",
                "ON-DEMAND",
                "SPOT",
                "SAVED",
                "TIME",
                "P95 JOB",
                ">=60% & <10%"
            ],
            &table_rows
        )
    );
    println!("({:.2} s)", started.elapsed().as_secs_f64());
    Ok(())
}
