//! `gpucloud bench sched`: whole-GPU placements per second of the production `plan()` on a
//! synthetic fleet, beside a baseline measured in the same run: the filter-and-score-every-node
//! loop that kube-scheduler-style schedulers run for each pod.

use clap::Subcommand;
use gpucloud_model::{GpuModel, InstanceId, NodeHealth, NodeId, NodeState, Region, Timestamp};
use gpucloud_sched::{ClusterSnapshot, GpuView, NodeView, Pending, Policy, plan};
use gpucloud_sim::report::table;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

mod fleet;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Placements per second on synthetic fleets of 8-GPU nodes.
    Sched {
        /// Fleet sizes to run, in nodes.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Placements committed per second end to end: the production scheduling pass over a real
    /// store (plan, then apply with generation checks), as the server runs it.
    Apply {
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        nodes: Vec<usize>,
        /// Instances queued before the clock starts.
        #[arg(long, default_value_t = 2000)]
        instances: usize,
        /// An empty database to use (postgres://...); default: a new SQLite file in a temp dir.
        #[arg(long)]
        database: Option<String>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Placement policies to run, one row each.
        #[arg(long, value_delimiter = ',', default_value = "fgd-pack,best-fit")]
        policy: Vec<String>,
        /// Queue the instances in this many equal batches, one scheduling pass timed per batch:
        /// every other one with the fleet cache emptied first (each node read from the store, as
        /// a new leader's first pass does), the others with the cache the passes keep (which
        /// re-reads the nodes the batch before was placed on).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// The node agent's own CPU and memory at 1 Hz with fake GPUs and a running workload per GPU,
    /// against an in-process server on loopback. With --image, the same again with the workloads
    /// as containers of that image (the Docker runtime), after the process runtime as baseline.
    Agent {
        #[arg(long, default_value_t = 8)]
        gpus: u32,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long)]
        image: Option<String>,
    },
    /// The slice placer on the Alibaba GPU trace (FGD protocol, 130% demand): tasks placed per
    /// second on its 1,213-node fleet and on that fleet repeated (--scale 10: 12,130 nodes).
    Placer {
        #[arg(long, default_value = "data/alibaba-gpu-v2023/csv/openb_pod_list_default.csv")]
        trace: PathBuf,
        #[arg(long, default_value = "data/alibaba-gpu-v2023/csv/openb_node_list_gpu_node.csv")]
        nodes: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1,10")]
        scale: Vec<usize>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Preemption notice lead time: spot workloads on a real agent are preempted and record when
    /// they saw their notice (a long-poll on the metadata endpoint) and when SIGTERM came.
    Notice {
        /// The notice, in seconds.
        #[arg(long, default_value_t = 5)]
        notice: u64,
        /// Spot instances per round (one fake GPU each).
        #[arg(long, default_value_t = 8)]
        instances: u32,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// The agent's heartbeat period (the server asks for 2000).
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
    },
    /// Failover through `gpucloud gateway`: a client at a steady rate through the gateway to two
    /// backend processes; the one answering is killed with SIGKILL each round; the time from the
    /// kill to the first answer from the other, and the longest gap between answers.
    Failover {
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// The gateway's active health-check interval.
        #[arg(long, default_value_t = 5)]
        health_ms: u64,
        /// Client requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
    },
    /// Request to running: an instance claimed from a warm pool against a cold start, through
    /// the HTTP API with a real agent (heartbeat every 2 s, as the server asks).
    Warm {
        #[arg(long, default_value_t = 10)]
        rounds: u32,
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
    },
    /// A real `serve` under N simulated node agents (the real agent protocol over HTTP, the
    /// agent's own beat over the fake runtime) and a tenant creating instances: heartbeats per
    /// second and their latency, create and show latency, create to placed and to running, the
    /// scheduling pass, and the server's CPU, memory and database growth, per fleet size.
    Fleet {
        /// Fleet sizes to run, in nodes (each in a fresh database).
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = 8)]
        gpus_per_node: u32,
        /// 1-GPU instances the tenant creates while measuring.
        #[arg(long, default_value_t = 1000)]
        instances: usize,
        /// Creates per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// How long to measure, after two beats of warm-up.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Each agent's heartbeat period (the server asks for 2000).
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
        /// A PostgreSQL server to use (postgres://...; each fleet size gets a new schema);
        /// default: a new SQLite file per size.
        #[arg(long)]
        database: Option<String>,
        /// Threads the simulated agents share (each beats its nodes in turn).
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Tenants' clients creating in parallel (the rate is shared among them).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Instances created, and running, before measuring (to measure a full fleet).
        #[arg(long, default_value_t = 0)]
        preload: usize,
        /// Creates per second while preloading.
        #[arg(long, default_value_t = 500.0)]
        preload_rate: f64,
        /// Make every instance a slice of this percentage of one GPU (default: whole GPUs).
        #[arg(long)]
        share: Option<u32>,
        /// The server's posting period in seconds; the table shows how long posting a point takes.
        #[arg(long, default_value_t = 60)]
        posting_period_s: u64,
        /// Run this `gpucloud` binary as the server instead of this one (another build, as a
        /// baseline measured by the same bench).
        #[arg(long)]
        server_bin: Option<std::path::PathBuf>,
    },
    /// Accrual with sparse posting for TENANTS x INSTANCES running: posting passes, ledger rows
    /// per instance-hour, accrual lag and balance reads, beside per-second posting as baseline.
    Billing {
        #[arg(long, default_value_t = 1000)]
        tenants: usize,
        /// Running instances per tenant.
        #[arg(long, default_value_t = 100)]
        instances: usize,
        /// Ledger entries in all, most of them the first tenant's history, for the balance read.
        #[arg(long, default_value_t = 1_000_000)]
        ledger_entries: usize,
        /// An empty database to use (postgres://...); default: a new SQLite file in a temp dir.
        #[arg(long)]
        database: Option<String>,
        /// Post the baseline's per-second pass for only this many intervals (default: all). On
        /// PostgreSQL one pass of 100,000 postings to the one revenue account row runs for tens
        /// of minutes (each update of the row in one transaction walks its earlier versions).
        #[arg(long)]
        baseline_intervals: Option<usize>,
    },
}

const MODELS: [GpuModel; 5] =
    [GpuModel::T4, GpuModel::A10, GpuModel::A100_40GB, GpuModel::H100_80GB, GpuModel::Rtx6000Ada];
const REGIONS: [&str; 4] = ["eu-1", "eu-2", "us-1", "ap-1"];

fn fleet(n: usize, rng: &mut StdRng) -> ClusterSnapshot {
    let nodes = (0..n)
        .map(|i| {
            let model = MODELS[i % MODELS.len()];
            // A third of the GPUs are already taken, so the fleet is fragmented as in real life.
            let gpus =
                (0..8).map(|g| GpuView { allocated: rng.random_bool(0.33), ..GpuView::free(g, model) }).collect();
            NodeView {
                id: NodeId::parse(&format!("n-{i:08}")).expect("valid id"),
                region: Region::parse(REGIONS[i % REGIONS.len()]).expect("valid region"),
                generation: 1,
                state: NodeState::Ready,
                health: if i % 97 == 0 { NodeHealth::Unhealthy } else { NodeHealth::Healthy },
                gpus,
                open_time_slicing: false,
                images: Vec::new(),
            }
        })
        .collect();
    ClusterSnapshot { nodes }
}

fn queue(count: usize, rng: &mut StdRng) -> Vec<Pending> {
    (0..count)
        .map(|i| Pending {
            instance: InstanceId::parse(&format!("i-{i:08}")).expect("valid id"),
            model: MODELS[rng.random_range(0..MODELS.len())],
            count: [1, 1, 2, 2, 4, 8][rng.random_range(0..6)],
            share: None,
            tenant: None,
            node: None,
            image: None,
            region: if rng.random_bool(0.25) {
                None
            } else {
                Some(Region::parse(REGIONS[rng.random_range(0..REGIONS.len())]).expect("valid region"))
            },
        })
        .collect()
}

/// The baseline: for every instance, score every node. Same rules and result as best-fit.
fn scan_every_node(snapshot: &ClusterSnapshot, pending: &[Pending]) -> usize {
    let mut free: Vec<u32> =
        snapshot.nodes.iter().map(|n| n.gpus.iter().filter(|g| !g.allocated).count() as u32).collect();
    let mut placed = 0;
    for p in pending {
        let mut best: Option<(u32, &NodeId, usize)> = None;
        for (i, n) in snapshot.nodes.iter().enumerate() {
            let fits = n.state == NodeState::Ready
                && n.health == NodeHealth::Healthy
                && n.gpus.first().is_some_and(|g| g.model == p.model)
                && p.region.as_ref().is_none_or(|r| *r == n.region)
                && free[i] >= p.count;
            if fits {
                let score = (free[i] - p.count, &n.id, i);
                if best.is_none_or(|b| (score.0, score.1) < (b.0, b.1)) {
                    best = Some(score);
                }
            }
        }
        if let Some((_, _, i)) = best {
            free[i] -= p.count;
            placed += 1;
        }
    }
    placed
}

pub fn run(cmd: BenchCmd, as_json: bool) -> Result<(), String> {
    match cmd {
        BenchCmd::Sched { nodes, seed } => sched(nodes, seed, as_json),
        BenchCmd::Apply { nodes, instances, database, seed, policy, rounds } => {
            apply(nodes, instances, database, seed, &policy, rounds, as_json)
        }
        BenchCmd::Billing { tenants, instances, ledger_entries, database, baseline_intervals } => {
            billing(tenants, instances, ledger_entries, database, baseline_intervals, as_json)
        }
        BenchCmd::Agent { gpus, seconds, image } => agent(gpus, seconds, image, as_json),
        BenchCmd::Fleet {
            nodes,
            gpus_per_node,
            instances,
            rate,
            seconds,
            interval_ms,
            database,
            workers,
            clients,
            preload,
            preload_rate,
            share,
            posting_period_s,
            server_bin,
        } => {
            let args = fleet::FleetArgs {
                preload,
                preload_rate,
                share,
                posting_period_s,
                server_bin,
                nodes,
                gpus_per_node,
                instances,
                rate,
                seconds,
                interval_ms,
                database,
                workers,
                clients,
            };
            fleet::fleet(args, as_json)
        }
        BenchCmd::Placer { trace, nodes, scale, seed } => placer(trace, nodes, scale, seed, as_json),
        BenchCmd::Warm { rounds, interval_ms } => warm(rounds, interval_ms, as_json),
        BenchCmd::Failover { rounds, health_ms, rate } => failover(rounds, health_ms, rate, as_json),
        BenchCmd::Notice { notice, instances, rounds, interval_ms } => {
            notice_lead(notice, instances, rounds, interval_ms, as_json)
        }
    }
}

/// (user + system CPU seconds, resident MiB) of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    let hz = 100.0; // USER_HZ is 100 on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some((ticks / hz, rss_kib / 1024.0))
}

fn agent(gpus: u32, seconds: u64, image: Option<String>, as_json: bool) -> Result<(), String> {
    let mut runs = vec![agent_run(gpus, seconds, None)?];
    if let Some(image) = &image {
        runs.push(agent_run(gpus, seconds, Some(image))?);
    }
    if as_json {
        println!("{}", serde_json::Value::Array(runs));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r["runtime"].as_str().unwrap_or("").to_string(),
                r["gpus"].to_string(),
                r["workloads_running"].to_string(),
                format!("{:.0}", r["start_all_ms"].as_f64().unwrap_or(0.0)),
                format!("{:.0}", r["seconds"].as_f64().unwrap_or(0.0)),
                format!("{:.2}%", r["cpu_percent"].as_f64().unwrap_or(0.0)),
                format!("{:.1}", r["rss_mib"].as_f64().unwrap_or(0.0)),
            ]
        })
        .collect();
    let head = ["RUNTIME", "FAKE GPUS", "WORKLOADS", "START ALL MS", "SECONDS", "AGENT CPU", "AGENT RSS MIB"];
    println!("{}", table(&head, &rows));
    println!("(1 Hz heartbeats with telemetry, log shipping and reconcile; CPU = user + system time / wall time;");
    println!(" start all = from creating the instances to all of them running)");
    Ok(())
}

/// One agent, `gpus` workloads, measured for `seconds`; as processes, or containers of `image`.
fn agent_run(gpus: u32, seconds: u64, image: Option<&str>) -> Result<serde_json::Value, String> {
    use gpucloud_model::Role;
    use gpucloud_server::app::{Config, CreateInstance};
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let url = temp_sqlite("agent")?;
    let state = std::env::temp_dir().join(format!("gpucloud-bench-agent-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let (running, op_key) = rt.block_on(async {
        let store = gpucloud_store::open(&url).await.map_err(|e| e.to_string())?;
        let running =
            gpucloud_server::start(store, Config::default(), "127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let key = running.app.create_tenant(None, "operator", Role::Operator).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((running, key.secret))
    })?;
    let server = format!("http://{}", running.addr);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args(["agent", "--server", &server, "--name", "bench-node", "--region", "eu-1"])
        .env("GPUCLOUD_AGENT_TOKEN", &op_key)
        .args([
            "--fake-gpus",
            &format!("A100-40GB:{gpus}"),
            "--interval-ms",
            "1000",
            "--metadata-port",
            "0",
            "--state-dir",
        ])
        .arg(&state)
        .args(image.map(|i| vec!["--runtime", "docker", "--image", i]).unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Registered first, so that the start time is the workloads', not the agent's.
    let registered = Instant::now();
    while rt.block_on(running.app.store().list_nodes()).map_or(0, |n| n.len()) == 0 {
        if registered.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            return Err("the agent never registered (with --image: is dockerd running and the image there?)".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let created = Instant::now();
    // One workload per GPU, so every beat reports, ships and reconciles real work.
    rt.block_on(async {
        let app = &running.app;
        let key = app.create_tenant(None, "bench", Role::Tenant).await.map_err(|e| e.to_string())?;
        let who = app.authenticate(Some(&format!("Bearer {}", key.secret))).await.map_err(|e| e.to_string())?;
        for _ in 0..gpus {
            let req = CreateInstance::whole(GpuModel::A100_40GB, 1, None, "exec sleep 100000");
            app.create_instance(&who, req, None).await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })?;
    let count_running = || {
        rt.block_on(running.app.store().list_instances(None))
            .map(|l| l.iter().filter(|i| i.state == gpucloud_model::InstanceState::Running).count())
            .unwrap_or(0)
    };
    while count_running() < gpus as usize && created.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let start_all_ms = created.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(std::time::Duration::from_secs(2)); // settled
    let pid = child.id();
    let (cpu0, _) = proc_usage(pid).ok_or("cannot read the agent's /proc entry")?;
    let t = Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    let (cpu1, rss) = proc_usage(pid).ok_or("the agent exited")?;
    let wall = t.elapsed().as_secs_f64();
    let running_now = count_running();
    // Stop the workloads through the agent before it goes.
    rt.block_on(async {
        for i in running.app.store().list_instances(None).await.unwrap_or_default() {
            let _ = running
                .app
                .store()
                .update_instance(
                    &i.id,
                    i.generation,
                    &gpucloud_store::InstanceChange {
                        state: gpucloud_model::InstanceState::Stopping,
                        stop_target: Some(gpucloud_model::StopTarget::Terminated),
                        exit_code: None,
                        at: running.app.now(),
                    },
                )
                .await;
        }
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = child.kill();
    let _ = child.wait();
    running.shutdown();
    // Containers the agent had no time to remove.
    if let Some(d) = image.and_then(|i| {
        let c = gpucloud_agent::docker::Confinement::share_of(1, 1024, 1);
        gpucloud_agent::docker::DockerLauncher::connect(i, false, c).ok()
    }) && let Ok(dir) = state.canonicalize()
    {
        for (_, c) in d.own(&dir).unwrap_or_default() {
            d.remove(&c);
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    let cpu_pct = (cpu1 - cpu0) / wall * 100.0;
    Ok(serde_json::json!({"runtime": if image.is_some() { "docker" } else { "process" }, "gpus": gpus,
        "workloads_running": running_now, "start_all_ms": start_all_ms, "seconds": wall,
        "cpu_percent": cpu_pct, "rss_mib": rss}))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn notice_lead(notice: u64, per_round: u32, rounds: u32, interval_ms: u64, as_json: bool) -> Result<(), String> {
    use gpucloud_model::{InstanceState, Role, Tier};
    use gpucloud_server::app::{Config, CreateInstance};
    if notice == 0 || per_round == 0 || per_round > 64 || rounds == 0 {
        return Err("--notice, --instances (at most 64) and --rounds must be at least 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let url = temp_sqlite("notice")?;
    let dir = std::env::temp_dir().join(format!("gpucloud-bench-notice-work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut config = Config::default();
    config.market.notice = std::time::Duration::from_secs(notice);
    config.market.min_notice = config.market.notice;
    let (running, op_key) = rt.block_on(async {
        let store = gpucloud_store::open(&url).await.map_err(|e| e.to_string())?;
        let running = gpucloud_server::start(store, config, "127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let key = running.app.create_tenant(None, "operator", Role::Operator).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((running, key.secret))
    })?;
    let server = format!("http://{}", running.addr);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut agent = std::process::Command::new(&exe)
        .args(["agent", "--server", &server, "--name", "bench-node", "--region", "eu-1"])
        .env("GPUCLOUD_AGENT_TOKEN", &op_key)
        .args(["--fake-gpus", &format!("A100-40GB:{per_round}"), "--metadata-port", "0", "--stop-grace-s", "5"])
        .args(["--interval-ms", &interval_ms.to_string(), "--state-dir"])
        .arg(dir.join("agent"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let app = running.app.clone();
    let (tenant, operator) = rt.block_on(async {
        let t = app.create_tenant(None, "bench", Role::Tenant).await.map_err(|e| e.to_string())?;
        let who = app.authenticate(Some(&format!("Bearer {}", t.secret))).await.map_err(|e| e.to_string())?;
        let op = app.authenticate(Some(&format!("Bearer {op_key}"))).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((who, op))
    })?;
    // The workload: long-poll for the notice, note when it came and when SIGTERM did.
    let command = format!(
        "d={}/$GPUCLOUD_INSTANCE_ID; mkdir -p $d; trap 'date +%s%3N > $d/term; exit 0' TERM; \
         ({} metadata notice --wait 300 > /dev/null && date +%s%3N > $d/seen) & \
         while :; do sleep 1 & wait $!; done",
        dir.display(),
        exe.display()
    );
    let (mut leads, mut lags, mut overshoots) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    for _ in 0..rounds {
        let ids = rt.block_on(async {
            let mut ids = Vec::new();
            for _ in 0..per_round {
                let mut req = CreateInstance::whole(GpuModel::A100_40GB, 1, None, &command);
                req.tier = Tier::Spot;
                ids.push(app.create_instance(&tenant, req, None).await.map_err(|e| e.to_string())?.0.id);
            }
            Ok::<_, String>(ids)
        })?;
        let all_in = |state: InstanceState| {
            rt.block_on(async {
                let mut n = 0;
                for id in &ids {
                    if app.store().get_instance(None, id).await.ok().flatten().is_some_and(|i| i.state == state) {
                        n += 1;
                    }
                }
                n == ids.len()
            })
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while !all_in(InstanceState::Running) {
            if Instant::now() > deadline {
                return Err("the spot workloads never all ran".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Give each long-poll time to be waiting, as a real workload's would be.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        rt.block_on(async {
            for id in &ids {
                app.simulate_preemption(&operator, id.as_str(), None).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })?;
        let deadline = Instant::now() + std::time::Duration::from_secs(notice + 60);
        while !all_in(InstanceState::Stopped) {
            if Instant::now() > deadline {
                return Err("the preempted workloads never all stopped".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for id in &ids {
            let inst = rt.block_on(app.store().get_instance(None, id)).map_err(|e| e.to_string())?;
            let n = inst.and_then(|i| i.notice).ok_or("a preempted instance lost its notice")?;
            let read = |f: &str| -> Option<i64> {
                std::fs::read_to_string(dir.join(id.as_str()).join(f)).ok()?.trim().parse().ok()
            };
            let (Some(seen), Some(term)) = (read("seen"), read("term")) else {
                return Err(format!("{id}: the workload did not record its notice and SIGTERM"));
            };
            leads.push(term - seen);
            lags.push(seen - n.given_at.0);
            overshoots.push(term - n.deadline.map_or(term, |d| d.0));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let _ = agent.kill();
    let _ = agent.wait();
    running.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    for v in [&mut leads, &mut lags, &mut overshoots] {
        v.sort_unstable();
    }
    let stats = |v: &[i64]| (v[0], percentile(v, 0.5), percentile(v, 0.99), v[v.len() - 1]);
    let rows_of = [
        ("lead time (SIGTERM - seen)", stats(&leads)),
        ("decision to seen", stats(&lags)),
        ("SIGTERM - deadline", stats(&overshoots)),
    ];
    let below = leads.iter().filter(|l| **l < notice as i64 * 1000).count();
    if as_json {
        let j: serde_json::Map<String, serde_json::Value> = rows_of
            .iter()
            .map(|(k, (min, p50, p99, max))| {
                (k.to_string(), serde_json::json!({"min_ms": min, "p50_ms": p50, "p99_ms": p99, "max_ms": max}))
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"notice_s": notice, "samples": leads.len(), "below_notice": below, "interval_ms": interval_ms, "stats": j})
        );
    } else {
        let rows: Vec<Vec<String>> = rows_of
            .iter()
            .map(|(k, (min, p50, p99, max))| {
                vec![k.to_string(), min.to_string(), p50.to_string(), p99.to_string(), max.to_string()]
            })
            .collect();
        println!(
            "{} preemptions ({} rounds x {}), notice {} s, agent heartbeat {} ms, {:.0} s; lead times under the notice: {}",
            leads.len(),
            rounds,
            per_round,
            notice,
            interval_ms,
            wall,
            below
        );
        println!("{}", table(&["MS", "MIN", "P50", "P99", "MAX"], &rows));
    }
    Ok(())
}

fn warm(rounds: u32, interval_ms: u64, as_json: bool) -> Result<(), String> {
    use gpucloud_model::Role;
    use gpucloud_server::app::Config;
    if rounds == 0 || rounds > 100 {
        return Err("--rounds is 1 to 100".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let url = temp_sqlite("warm")?;
    let dir = std::env::temp_dir().join(format!("gpucloud-bench-warm-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (running, op_key, key) = rt.block_on(async {
        let store = gpucloud_store::open(&url).await.map_err(|e| e.to_string())?;
        let running =
            gpucloud_server::start(store, Config::default(), "127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let op = running.app.create_tenant(None, "operator", Role::Operator).await.map_err(|e| e.to_string())?;
        let t = running.app.create_tenant(None, "bench", Role::Tenant).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((running, op.secret, t.secret))
    })?;
    let server = format!("http://{}", running.addr);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut agent = std::process::Command::new(&exe)
        .args(["agent", "--server", &server, "--name", "bench-node", "--region", "eu-1"])
        .env("GPUCLOUD_AGENT_TOKEN", &op_key)
        .args(["--fake-gpus", "A100-40GB:8", "--metadata-port", "0", "--interval-ms", &interval_ms.to_string()])
        .arg("--state-dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let http = gpucloud_client::local_agent(std::time::Duration::from_secs(10));
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| -> Result<serde_json::Value, String> {
        let url = format!("{server}{path}");
        let auth = format!("Bearer {key}");
        let resp = match body {
            Some(b) => http
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            None if method == "GET" => http.get(&url).header("Authorization", &auth).call(),
            None => http.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut r = resp.map_err(|e| e.to_string())?;
        let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    };
    let wait = |what: &str, f: &dyn Fn() -> Result<bool, String>| -> Result<(), String> {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while !f()? {
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    };
    let ready = || -> Result<bool, String> {
        let l = call("GET", "/v1/pools", None)?;
        Ok(l["pools"][0]["ready"] == 4)
    };
    call(
        "POST",
        "/v1/pools",
        Some(serde_json::json!({"name": "bench", "gpu": "A100-40GB", "count": 1, "size": 4,
        "command": "exec sleep 100000"})),
    )?;
    wait("the pool to fill", &ready)?;
    let (mut warm_ms, mut cold_ms, mut cold_ids) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let got = call("POST", "/v1/pools/bench/claim", Some(serde_json::json!({})))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if got["warm"] != true || got["instance"]["state"] != "running" {
            return Err(format!("a claim from a full pool was not warm: {got}"));
        }
        warm_ms.push(ms);
        let id = got["instance"]["id"].as_str().unwrap_or_default().to_string();
        call("POST", &format!("/v1/instances/{id}/terminate"), None)?;
        wait("the pool to refill", &ready)?;
        let t = Instant::now();
        let inst = call(
            "POST",
            "/v1/instances",
            Some(serde_json::json!({"gpu": "A100-40GB", "count": 1,
            "command": "exec sleep 100000"})),
        )?;
        let id = inst["id"].as_str().unwrap_or_default().to_string();
        wait("the cold instance", &|| Ok(call("GET", &format!("/v1/instances/{id}"), None)?["state"] == "running"))?;
        cold_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        call("POST", &format!("/v1/instances/{id}/terminate"), None)?;
        cold_ids.push(id);
    }
    let _ = call("POST", "/v1/pools/bench/claim", Some(serde_json::json!({})));
    let _ = agent.kill();
    let _ = agent.wait();
    running.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let (w50, w99, c50, c99) =
        (pct(&mut warm_ms, 0.5), pct(&mut warm_ms, 0.99), pct(&mut cold_ms, 0.5), pct(&mut cold_ms, 0.99));
    if as_json {
        println!(
            "{}",
            serde_json::json!({"rounds": rounds, "interval_ms": interval_ms, "warm_p50_ms": w50, "warm_p99_ms": w99,
            "cold_p50_ms": c50, "cold_p99_ms": c99})
        );
    } else {
        let rows = vec![
            vec!["warm (claim from a pool)".to_string(), format!("{w50:.1}"), format!("{w99:.1}")],
            vec!["cold (create, wait for running)".to_string(), format!("{c50:.1}"), format!("{c99:.1}")],
        ];
        println!(
            "{rounds} rounds, agent heartbeat {interval_ms} ms; warm is {:.0}x faster at the median",
            c50 / w50.max(0.001)
        );
        println!("{}", table(&["REQUEST TO RUNNING, MS", "P50", "P99"], &rows));
    }
    Ok(())
}

fn temp_sqlite(name: &str) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("gpucloud-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(format!("sqlite://{}/bench.db", dir.display()))
}

fn billing(
    tenants: usize,
    per_tenant: usize,
    ledger_entries: usize,
    database: Option<String>,
    baseline_intervals: Option<usize>,
    as_json: bool,
) -> Result<(), String> {
    use gpucloud_billing::Entry;
    use gpucloud_model::{InstanceId, InstanceState, Money, Role, TenantId, Tier};
    use gpucloud_server::app::{App, Config};
    use gpucloud_store::{ChargeItem, InstanceChange, LedgerRecord, NewInstance, NodeBatch, Sale};
    let url = match database {
        Some(u) => u,
        None => temp_sqlite("billing")?,
    };
    let backend = if url.starts_with("sqlite") { "SQLite" } else { "PostgreSQL" };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let e = |e: gpucloud_server::app::AppError| e.to_string();
    let s = |e: gpucloud_store::StoreError| e.to_string();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let rows = rt.block_on(async {
        let store = gpucloud_store::open(&url).await.map_err(s)?;
        let app = App::new(store.clone(), Config::default());
        let total = tenants * per_tenant;
        let region = Region::parse("eu-1").expect("valid region");
        let t0 = Instant::now();
        let mut nodes = Vec::new();
        for n in 0..total.div_ceil(16) {
            let node = app
                .add_node(None, &format!("bill-{n:05}"), region.clone(), &[(GpuModel::A100_40GB, 16)])
                .await
                .map_err(e)?;
            store.record_heartbeat(&node.id, app.now()).await.map_err(s)?;
            nodes.push(store.get_node(&node.id).await.map_err(s)?.ok_or("node vanished")?);
        }
        app.set_price(None, GpuModel::A100_40GB, region.clone(), Tier::OnDemand, Money(1_600_000), Some(Timestamp(0)))
            .await
            .map_err(e)?;
        // Every instance started two hours ago: the last posting point lies inside each one.
        let started = app.now().plus_millis(-2 * 3_600_000);
        let mut who = Vec::new();
        let mut instances: Vec<InstanceId> = Vec::new();
        for t in 0..tenants {
            let key = app.create_tenant(None, &format!("tenant-{t:05}"), Role::Tenant).await.map_err(e)?;
            let tenant: TenantId = key.tenant.id.clone();
            let news: Vec<NewInstance> = (0..per_tenant)
                .map(|_| {
                    let id = InstanceId::from_random(rand::random());
                    NewInstance {
                        name: id.to_string(),
                        id,
                        tenant_id: tenant.clone(),
                        region: None,
                        model: GpuModel::A100_40GB,
                        count: 1,
                        share: None,
                        command: "x".into(),
                        idempotency_key: None,
                        created_at: started.plus_millis(-1000),
                        sale: Sale::default(),
                    }
                })
                .collect();
            store.insert_instances(&news).await.map_err(s)?;
            instances.extend(news.into_iter().map(|n| n.id));
            who.push((app.authenticate(Some(&format!("Bearer {}", key.secret))).await.map_err(e)?, tenant));
        }
        // Placing and starting 100,000 instances one round trip at a time is most of the set-up
        // on PostgreSQL, so eight workers share it (each on its own nodes).
        let workers = 8;
        let per_worker = nodes.len().div_ceil(workers).max(1);
        let mut set = tokio::task::JoinSet::new();
        for (w, worker_nodes) in nodes.chunks(per_worker).enumerate() {
            let store = store.clone();
            let worker_nodes = worker_nodes.to_vec();
            let worker_ids: Vec<InstanceId> =
                instances.iter().skip(w * per_worker * 16).take(worker_nodes.len() * 16).cloned().collect();
            set.spawn(async move {
                let s = |e: gpucloud_store::StoreError| e.to_string();
                for (chunk, batch_nodes) in worker_ids.chunks(16 * 64).zip(worker_nodes.chunks(64)) {
                    let mut batches = Vec::new();
                    for (ids, node) in chunk.chunks(16).zip(batch_nodes) {
                        let mut placements = Vec::new();
                        for (k, id) in ids.iter().enumerate() {
                            let inst = store.get_instance(None, id).await.map_err(s)?.ok_or("instance vanished")?;
                            placements.push(gpucloud_store::NewPlacement {
                                note: None,
                                volume: None,
                                instance: id.clone(),
                                instance_generation: inst.generation,
                                gpus: vec![k as u32],
                                share: None,
                                gpu_memory_mib: 0,
                            });
                        }
                        batches.push(NodeBatch { node: node.id.clone(), node_generation: node.generation, placements });
                    }
                    let outcomes = store.apply_plan(&batches, started.plus_millis(-500)).await.map_err(s)?;
                    if let Some(o) =
                        outcomes.iter().find(|o| !matches!(o, gpucloud_store::ApplyOutcome::Applied { .. }))
                    {
                        return Err(format!("placing the bench instances failed: {o:?}"));
                    }
                }
                for id in &worker_ids {
                    let inst = store.get_instance(None, id).await.map_err(s)?.ok_or("instance vanished")?;
                    let change = InstanceChange {
                        state: InstanceState::Running,
                        stop_target: None,
                        exit_code: None,
                        at: started,
                    };
                    store.update_instance(id, inst.generation, &change).await.map_err(s)?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(done) = set.join_next().await {
            done.map_err(|e| e.to_string())??;
        }
        let setup_s = t0.elapsed().as_secs_f64();
        for n in &nodes {
            store.record_heartbeat(&n.id, app.now()).await.map_err(s)?;
        }

        // This design: a posting point posts every running interval once, a bounded number per
        // pass, over as many passes as it takes...
        let t = Instant::now();
        let (mut passes, mut longest) = (0, 0.0f64);
        loop {
            let p = Instant::now();
            let r = app.meter().await.map_err(e)?;
            longest = longest.max(ms(p.elapsed()));
            passes += 1;
            if r.charged == 0 || passes > 1_000 {
                break;
            }
        }
        let at_point_ms = ms(t.elapsed());
        let after_point = store.ledger_audit().await.map_err(s)?.entries;
        // ...and every other pass of the hour only settles what ended.
        let mut idle = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            app.meter().await.map_err(e)?;
            idle.push(ms(t.elapsed()));
        }
        let idle_ms = pct(&mut idle, 0.5);
        let idle_entries = store.ledger_audit().await.map_err(s)?.entries - after_point;
        // Budget and prepaid enforcement reads every guarded tenant's posted + accrued each pass.
        for (_, tenant) in &who {
            let mut b = store.tenant_billing(tenant).await.map_err(s)?;
            b.monthly_budget = Some(Money(1_000_000_000_000));
            store.set_tenant_billing(&b).await.map_err(s)?;
        }
        let t = Instant::now();
        app.enforce_budgets().await.map_err(e)?;
        let enforce_ms = ms(t.elapsed());

        // The baseline: the previous design posted every running interval's increment on every
        // pass (each second), one entry each, all of a pass in one transaction.
        let prices = store.prices_for(GpuModel::A100_40GB, &region, Tier::OnDemand).await.map_err(s)?;
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        let t = Instant::now();
        let now = app.now();
        let mut items = Vec::new();
        let baseline_of = baseline_intervals.unwrap_or(usize::MAX);
        for u in store.unsettled_intervals().await.map_err(s)?.into_iter().take(baseline_of) {
            let due =
                gpucloud_billing::charge(u.started_at, now.millis_since(u.started_at), u.milli_gpus, &prices, u.rules);
            if due.amount <= u.charged {
                continue;
            }
            let record = LedgerRecord {
                id: format!("e-base-{}-{}", u.id, due.seconds),
                entry: Entry::usage(&u.tenant_id, Money(due.amount.micros() - u.charged.micros())),
                memo: "baseline".into(),
                instance_id: Some(u.instance_id.clone()),
                interval_id: Some(u.id.clone()),
                model: Some(u.model),
                seconds: due.seconds - u.charged_seconds,
                idempotency_key: format!("base:{}:{}", u.id, due.seconds),
                created_at: now,
            };
            items.push(ChargeItem {
                interval: u,
                charge: due,
                settled: false,
                record: Some(record),
                posted_through: None,
            });
        }
        let baseline_posted = store.charge_intervals(&items).await.map_err(s)?.into_iter().filter(|ok| *ok).count();
        let baseline_ms = ms(t.elapsed());

        // A tenant with a long history: its balance, as GET /v1/billing/balance computes it.
        let (principal, rich) = &who[0];
        let have = store.ledger_audit().await.map_err(s)?.entries as usize;
        let mut next = 0usize;
        while have + next < ledger_entries {
            let n = (ledger_entries - have - next).min(10_000);
            let records: Vec<LedgerRecord> = (next..next + n)
                .map(|k| LedgerRecord {
                    id: format!("e-hist-{k}"),
                    entry: if k % 10 == 0 {
                        Entry::top_up(rich, Money(5_000_000))
                    } else {
                        Entry::usage(rich, Money(1_234))
                    },
                    memo: "history".into(),
                    instance_id: None,
                    interval_id: None,
                    model: Some(GpuModel::A100_40GB),
                    seconds: 3,
                    idempotency_key: format!("hist:{k}"),
                    created_at: started.plus_millis(k as i64 % 3_600_000),
                })
                .collect();
            store.post_ledger_batch(&records).await.map_err(s)?;
            next += n;
        }
        let entries = store.ledger_audit().await.map_err(s)?.entries;
        let mut reads = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            app.balance(principal).await.map_err(e)?;
            reads.push(ms(t.elapsed()));
        }
        let (read_p50, read_p99) = (pct(&mut reads, 0.5), pct(&mut reads, 0.99));
        let mut sums = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            store.balance_before(rich, Timestamp(i64::MAX)).await.map_err(s)?;
            sums.push(ms(t.elapsed()));
        }
        let (sum_p50, sum_p99) = (pct(&mut sums, 0.5), pct(&mut sums, 0.99));
        let check = store.ledger_audit().await.map_err(s)?;
        if !check.unbalanced.is_empty() || !check.drift.is_empty() {
            return Err(format!("the ledger does not add up after the run: {check:?}"));
        }
        let per_instance = |n: u64| n as f64 / total as f64;
        // A sampled baseline is scaled up linearly: a lower bound for the whole pass.
        let (base_ms, at_least) = if baseline_posted < total {
            (baseline_ms * total as f64 / baseline_posted.max(1) as f64, "at least ")
        } else {
            (baseline_ms, "")
        };
        let sampled = |posted: usize| {
            if posted < total { format!(" (so {at_least}{base_ms:.0} ms for all {total})") } else { String::new() }
        };
        Ok::<_, String>(vec![
            vec![
                "set-up".into(),
                format!("{total} running instances, {tenants} tenants"),
                format!("{setup_s:.1} s"),
                String::new(),
            ],
            vec![
                "posting point: every running interval posted".into(),
                format!("{after_point} entries ({:.2} per instance), {passes} passes", per_instance(after_point)),
                format!("{at_point_ms:.0} ms, longest pass {longest:.0} ms"),
                format!(
                    "baseline (every second): one pass of {baseline_ms:.0} ms, {baseline_posted} entries{}",
                    sampled(baseline_posted)
                ),
            ],
            vec![
                "metering pass between points (p50 of 5)".into(),
                format!("{idle_entries} entries"),
                format!("{idle_ms:.0} ms"),
                format!("baseline: {at_least}{base_ms:.0} ms"),
            ],
            vec![
                "ledger rows per instance-hour".into(),
                "posting period 1 h".into(),
                format!("{:.2}", per_instance(after_point)),
                "baseline: 3,600 (one per second)".into(),
            ],
            vec![
                "accrual lag (budgets, prepaid), worst".into(),
                format!("1 s period + longest pass + enforcement of {tenants} tenants ({enforce_ms:.0} ms)"),
                format!("{:.1} s", 1.0 + (longest.max(idle_ms) + enforce_ms) / 1e3),
                format!(
                    "baseline: {at_least}{:.1} s (1 s + a posting pass + enforcement)",
                    1.0 + (base_ms + enforce_ms) / 1e3
                ),
            ],
            vec![
                "balance read (posted + accrued + month + burn)".into(),
                format!("{entries} ledger entries, {per_tenant} running"),
                format!("p50 {read_p50:.1} ms, p99 {read_p99:.1} ms"),
                format!("baseline (sum the postings): p50 {sum_p50:.1} ms, p99 {sum_p99:.1} ms"),
            ],
        ])
    })?;
    if as_json {
        let recs: Vec<_> = rows
            .iter()
            .map(|r| serde_json::json!({"store": backend, "step": r[0], "count": r[1], "this_design": r[2], "baseline": r[3]}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&recs).unwrap_or_default());
    } else {
        println!("{backend}: {tenants} tenants x {per_tenant} instances");
        println!("{}", table(&["STEP", "COUNT", "THIS DESIGN", "BASELINE, SAME RUN"], &rows));
    }
    Ok(())
}

fn apply(
    nodes: Vec<usize>,
    instances: usize,
    database: Option<String>,
    seed: u64,
    policies: &[String],
    rounds: usize,
    as_json: bool,
) -> Result<(), String> {
    let policies: Vec<gpucloud_sched::Policy> = policies.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
    if database.is_some() && policies.len() * nodes.len() > 1 {
        return Err("--database takes one empty database: give one --nodes size and one --policy".into());
    }
    if rounds == 0 || rounds > instances.max(1) {
        return Err(format!("--rounds must be from 1 to --instances ({instances})"));
    }
    use gpucloud_server::app::{App, Config, CreateInstance};
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut records = Vec::new();
    let ms = |v: &[f64]| -> String {
        if v.is_empty() {
            return "-".into();
        }
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        format!("{:.1} / {:.1}", v[v.len() / 2], v[v.len() - 1])
    };
    for (n, policy) in nodes.iter().flat_map(|&n| policies.iter().map(move |&p| (n, p))) {
        let url = match &database {
            Some(u) => u.clone(),
            None => {
                let dir = std::env::temp_dir().join(format!("gpucloud-bench-{n}-{policy}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                format!("sqlite://{}/bench.db", dir.display())
            }
        };
        let (placed, secs, passes, cold, warm) = rt.block_on(async {
            let store = gpucloud_store::open(&url).await.map_err(|e| e.to_string())?;
            let app = App::new(store, Config { policy, ..Config::default() });
            let e = |e: gpucloud_server::app::AppError| e.to_string();
            for i in 0..n {
                let region = Region::parse(REGIONS[i % REGIONS.len()]).expect("valid region");
                let node = app
                    .add_node(None, &format!("bench-{i:06}"), region, &[(MODELS[i % MODELS.len()], 8)])
                    .await
                    .map_err(e)?;
                app.store().record_heartbeat(&node.id, app.now()).await.map_err(|e| e.to_string())?;
            }
            let key = app.create_tenant(None, "bench", gpucloud_model::Role::Tenant).await.map_err(e)?;
            let who = app.authenticate(Some(&format!("Bearer {}", key.secret))).await.map_err(e)?;
            let mut rng = StdRng::seed_from_u64(seed);
            let all = queue(instances, &mut rng);
            let batch = instances.div_ceil(rounds);
            let (mut placed, mut passes, mut secs) = (0, 0, 0.0);
            let (mut cold, mut warm) = (Vec::new(), Vec::new());
            for (round, requests) in all.chunks(batch).enumerate() {
                for p in requests {
                    let req = CreateInstance::whole(p.model, p.count, p.region.clone(), "x");
                    app.create_instance(&who, req, None).await.map_err(e)?;
                }
                // A single batch keeps the figure it always had: from a cold start to done.
                let whole_read = rounds > 1 && round % 2 == 0;
                let t = Instant::now();
                let mut first = true;
                loop {
                    if whole_read && first {
                        app.forget_fleet().await;
                    }
                    let p = Instant::now();
                    let r = app.schedule_pass().await.map_err(|e| e.to_string())?;
                    if first && rounds > 1 {
                        let took = p.elapsed().as_secs_f64() * 1e3;
                        if whole_read {
                            cold.push(took)
                        } else {
                            warm.push(took)
                        }
                        first = false;
                    }
                    passes += 1;
                    placed += r.placed;
                    if r.placed == 0 {
                        break;
                    }
                }
                secs += t.elapsed().as_secs_f64();
            }
            Ok::<_, String>((placed, secs, passes, cold, warm))
        })?;
        let backend = if url.starts_with("sqlite") { "sqlite" } else { "postgres" };
        rows.push(vec![
            backend.to_string(),
            policy.to_string(),
            n.to_string(),
            instances.to_string(),
            placed.to_string(),
            passes.to_string(),
            format!("{:.1}", secs * 1e3),
            format!("{:.0}", placed as f64 / secs),
            ms(&cold),
            ms(&warm),
        ]);
        records.push(serde_json::json!({
            "backend": backend, "policy": policy.to_string(), "nodes": n, "instances": instances, "placed": placed,
            "passes": passes, "ms": secs * 1e3, "placements_per_s": placed as f64 / secs, "rounds": rounds,
            "whole_read_pass_ms": cold, "cached_pass_ms": warm,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&records).unwrap_or_default());
    } else {
        println!(
            "{}",
            table(
                &[
                    "STORE",
                    "POLICY",
                    "NODES",
                    "INSTANCES",
                    "PLACED",
                    "PASSES",
                    "MS",
                    "PLACEMENTS/S",
                    "PASS, WHOLE READ P50/MAX MS",
                    "PASS, CACHED P50/MAX MS",
                ],
                &rows
            )
        );
        if rounds > 1 {
            println!(
                "({rounds} batches of up to {} requests; each batch's first pass timed, alternately after emptying the fleet cache)",
                instances.div_ceil(rounds)
            );
        }
    }
    Ok(())
}

fn sched(nodes: Vec<usize>, seed: u64, as_json: bool) -> Result<(), String> {
    let mut rows = Vec::new();
    let mut records = Vec::new();
    for n in nodes {
        let mut rng = StdRng::seed_from_u64(seed);
        let snapshot = fleet(n, &mut rng);
        // Enough demand to fill the free GPUs, so the last placements search a nearly full fleet.
        let pending = queue(n * 8 * 2 / 3 / 3, &mut rng);
        let t = Instant::now();
        let out = plan(&snapshot, &pending, Policy::BestFit, Timestamp(0), &mut StdRng::seed_from_u64(seed));
        let plan_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let base_placed = scan_every_node(&snapshot, &pending);
        let base_s = t.elapsed().as_secs_f64();
        if base_placed != out.placements.len() {
            return Err(format!(
                "baseline placed {base_placed}, plan() placed {}: they should agree",
                out.placements.len()
            ));
        }
        let placed = out.placements.len() as f64;
        let rate = placed / plan_s;
        let base_rate = placed / base_s;
        rows.push(vec![
            n.to_string(),
            pending.len().to_string(),
            out.placements.len().to_string(),
            format!("{:.1}", plan_s * 1e3),
            format!("{rate:.0}"),
            format!("{:.1}", base_s * 1e3),
            format!("{base_rate:.0}"),
            format!("{:.1}x", rate / base_rate),
        ]);
        records.push(serde_json::json!({
            "nodes": n, "instances": pending.len(), "placed": out.placements.len(),
            "plan_ms": plan_s * 1e3, "placements_per_s": rate,
            "baseline_ms": base_s * 1e3, "baseline_placements_per_s": base_rate,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&records).unwrap_or_default());
    } else {
        println!(
            "{}",
            table(
                &["NODES", "INSTANCES", "PLACED", "PLAN MS", "PLACEMENTS/S", "SCAN MS", "SCAN PLACEMENTS/S", "SPEEDUP"],
                &rows
            )
        );
        println!("(plan() = gpucloud's best-fit index; scan = score every node per instance; same placements)");
    }
    Ok(())
}

/// `gpucloud bench placer`: the slice placer on the Alibaba trace's fleet and on that fleet
/// repeated `scale` times, one 130% FGD-protocol run per row. The baseline is the same FGD run
/// with every fragmentation computed from scratch (no memo, no per-node score cache), as a
/// simulator without them computes it; both must place the same tasks.
fn placer(trace: PathBuf, nodes: PathBuf, scales: Vec<usize>, seed: u64, as_json: bool) -> Result<(), String> {
    use gpucloud_sched::share::SharePolicy;
    use gpucloud_sim::fgd::Experiment;
    use gpucloud_sim::trace::{Models, read_nodes, read_trace};
    let mut models = Models::default();
    let base_nodes = read_nodes(&gpucloud_sim::report::data_file(&nodes), &mut models)?;
    let trace = read_trace(&gpucloud_sim::report::data_file(&trace), &mut models)?;
    let mut rows = Vec::new();
    let mut records = Vec::new();
    for scale in scales {
        let fleet: Vec<_> = (0..scale.max(1)).flat_map(|_| base_nodes.iter().cloned()).collect();
        let exp = Experiment::new(&fleet, &trace, 1.3);
        let gpus: u64 = fleet.iter().map(|n| n.gpus as u64).sum();
        let timed = |policy: SharePolicy, caching: bool| {
            let t = Instant::now();
            let (curve, stats) = exp.run_with(policy, seed, caching);
            let secs = t.elapsed().as_secs_f64();
            let alloc = curve.iter().rev().flatten().next().copied().unwrap_or(0.0);
            (secs, stats, alloc)
        };
        let mut runs = vec![
            (SharePolicy::FgdPack, true),
            (SharePolicy::Fgd, true),
            (SharePolicy::FgdCpu, true),
            (SharePolicy::BestFit, true),
        ];
        // The uncached baseline is quadratic-ish in fleet size: measured on the 1x fleet only.
        if scale <= 1 {
            runs.push((SharePolicy::Fgd, false));
        }
        let mut fgd_cached = None;
        for (policy, caching) in runs {
            let (secs, stats, alloc) = timed(policy, caching);
            let rate = stats.tasks as f64 / secs;
            if policy == SharePolicy::Fgd && caching {
                fgd_cached = Some((rate, stats.placed));
            }
            let vs = match (caching, fgd_cached) {
                (false, Some((r, placed))) => {
                    if placed != stats.placed {
                        return Err(format!(
                            "uncached FGD placed {} tasks, cached {placed}: they must agree",
                            stats.placed
                        ));
                    }
                    format!("cached is {:.1}x faster", r / rate)
                }
                (true, Some((r, _))) if policy == SharePolicy::FgdCpu => format!("{:.2}x fgd's time", r / rate),
                _ => String::new(),
            };
            let name = if caching { policy.name().to_string() } else { format!("{} (uncached)", policy.name()) };
            rows.push(vec![
                fleet.len().to_string(),
                gpus.to_string(),
                name.clone(),
                stats.tasks.to_string(),
                format!("{:.3}", secs),
                format!("{rate:.0}"),
                format!("{alloc:.2}"),
                vs,
            ]);
            records.push(serde_json::json!({
                "nodes": fleet.len(), "gpus": gpus, "policy": name, "tasks": stats.tasks, "placed": stats.placed,
                "seconds": secs, "tasks_per_s": rate, "allocation_at_130": alloc,
            }));
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&records).unwrap_or_default());
    } else {
        println!(
            "{}",
            table(&["NODES", "GPUS", "POLICY", "TASKS", "RUN S", "TASKS/S", "ALLOC@130%", "VS BASELINE"], &rows)
        );
        println!("(one seed, 130% demand, placed one by one; a task is scored against every feasible node)");
    }
    Ok(())
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_backend(exe: &std::path::Path, port: u16, name: &str) -> Result<Child, String> {
    std::process::Command::new(exe)
        .args(["gateway-echo", "--listen", &format!("127.0.0.1:{port}"), "--name", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Child)
        .map_err(|e| e.to_string())
}

/// Each answer through the gateway: when, and the backend's name (None: the request failed).
type Answers = Vec<(std::time::Instant, Option<String>)>;

fn failover(rounds: u32, health_ms: u64, rate: u32, as_json: bool) -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    if rounds == 0 || rounds > 200 || !(1..=20_000).contains(&rate) || !(1..=10_000).contains(&health_ms) {
        return Err("--rounds 1-200, --rate 1-20000, --health-ms 1-10000".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let ports = [free_port()?, free_port()?];
    let names = ["a", "b"];
    let mut backends = [echo_backend(&exe, ports[0], names[0])?, echo_backend(&exe, ports[1], names[1])?];
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let config = gpucloud_gateway::GatewayConfig {
        backends: ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
        health_path: "/health".into(),
        health_interval: Duration::from_millis(health_ms),
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(100),
        tls: Default::default(),
    };
    let gw = gpucloud_gateway::Gateway::new(&config)?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).map_err(|e| e.to_string())?;
    let front = format!("http://{}/", listener.local_addr().map_err(|e| e.to_string())?);
    rt.spawn(gpucloud_gateway::serve(gw, listener, None));

    // The client: one request every 1/rate s; each answer's time and which backend gave it.
    let answers: Arc<Mutex<Answers>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (answers, stop, front) = (answers.clone(), stop.clone(), front.clone());
        std::thread::spawn(move || {
            let http = gpucloud_client::local_agent(Duration::from_secs(5));
            let period = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let got = http.get(&front).call().ok().and_then(|mut r| {
                    let ok = r.status().is_success();
                    let body = r.body_mut().read_to_string().ok()?;
                    ok.then_some(body)
                });
                answers.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), got));
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        })
    };
    let last_from = |answers: &Mutex<Answers>| {
        answers.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().find_map(|(_, b)| b.clone())
    };
    let mut switch_ms: Vec<f64> = Vec::new();
    let mut gap_ms: Vec<f64> = Vec::new();
    let mut failed = 0usize;
    for round in 0..rounds {
        // Steady traffic first, both backends up and healthy.
        std::thread::sleep(Duration::from_millis(300));
        let Some(active) = last_from(&answers) else { return Err("no answer through the gateway".into()) };
        let victim = names.iter().position(|n| *n == active).ok_or("unknown backend answered")?;
        let survivor = names[1 - victim];
        let before = answers.lock().unwrap_or_else(|e| e.into_inner()).len();
        backends[victim].0.kill().map_err(|e| e.to_string())?;
        let killed = Instant::now();
        let _ = backends[victim].0.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = loop {
            let found = answers.lock().unwrap_or_else(|e| e.into_inner())[before..]
                .iter()
                .find(|(t, b)| *t >= killed && b.as_deref() == Some(survivor))
                .map(|(t, _)| *t);
            if let Some(t) = found {
                break t;
            }
            if Instant::now() > deadline {
                return Err(format!("round {round}: no answer from {survivor} within 5 s of the kill"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        switch_ms.push(first.duration_since(killed).as_secs_f64() * 1000.0);
        // Bring the victim back and let traffic settle before the next round.
        backends[victim] = echo_backend(&exe, ports[victim], names[victim])?;
        std::thread::sleep(Duration::from_millis(200));
        let all = answers.lock().unwrap_or_else(|e| e.into_inner());
        let window: Vec<&(Instant, Option<String>)> = all[before.saturating_sub(1)..].iter().collect();
        failed += window.iter().filter(|(_, b)| b.is_none()).count();
        let oks: Vec<Instant> = window.iter().filter(|(_, b)| b.is_some()).map(|(t, _)| *t).collect();
        let gap = oks.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0).fold(0.0, f64::max);
        gap_ms.push(gap);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    let total = answers.lock().unwrap_or_else(|e| e.into_inner()).len();
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        (at(0.0), at(0.5), at(0.99), at(1.0))
    };
    let s = stats(&mut switch_ms);
    let g = stats(&mut gap_ms);
    if as_json {
        println!(
            "{}",
            serde_json::json!({"rounds": rounds, "health_ms": health_ms, "rate": rate, "requests": total, "failed_requests": failed,
                "switch_ms": {"min": s.0, "p50": s.1, "p99": s.2, "max": s.3},
                "longest_gap_ms": {"min": g.0, "p50": g.1, "p99": g.2, "max": g.3}})
        );
    } else {
        let row = |name: &str, v: (f64, f64, f64, f64)| {
            vec![
                name.to_string(),
                format!("{:.1}", v.0),
                format!("{:.1}", v.1),
                format!("{:.1}", v.2),
                format!("{:.1}", v.3),
            ]
        };
        println!(
            "{} rounds, health check every {health_ms} ms, {rate} requests/s: {total} requests, {failed} failed\n{}",
            rounds,
            table(&["MS", "MIN", "P50", "P99", "MAX"], &[row("kill to first answer", s), row("longest gap", g)])
        );
    }
    Ok(())
}
