//! `gpucloud bench sched`: whole-GPU placements per second of the production `plan()` on a
//! synthetic fleet, beside a baseline measured in the same run: the filter-and-score-every-node
//! loop that kube-scheduler-style schedulers run for each pod.

use crate::output::table;
use clap::Subcommand;
use gpucloud_model::{GpuModel, InstanceId, NodeHealth, NodeId, NodeState, Region, Timestamp};
use gpucloud_sched::{ClusterSnapshot, GpuView, NodeView, Pending, Policy, plan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

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
            let gpus = (0..8).map(|g| GpuView { index: g, model, allocated: rng.random_bool(0.33) }).collect();
            NodeView {
                id: NodeId::parse(&format!("n-{i:08}")).expect("valid id"),
                region: Region::parse(REGIONS[i % REGIONS.len()]).expect("valid region"),
                generation: 1,
                state: NodeState::Ready,
                health: if i % 97 == 0 { NodeHealth::Unhealthy } else { NodeHealth::Healthy },
                gpus,
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
        BenchCmd::Apply { nodes, instances, database, seed } => apply(nodes, instances, database, seed, as_json),
    }
}

fn apply(
    nodes: Vec<usize>,
    instances: usize,
    database: Option<String>,
    seed: u64,
    as_json: bool,
) -> Result<(), String> {
    use gpucloud_server::app::{App, Config, CreateInstance};
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut records = Vec::new();
    for n in nodes {
        let url = match &database {
            Some(u) => u.clone(),
            None => {
                let dir = std::env::temp_dir().join(format!("gpucloud-bench-{n}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                format!("sqlite://{}/bench.db", dir.display())
            }
        };
        let (placed, secs, passes) = rt.block_on(async {
            let store = gpucloud_store::open(&url).await.map_err(|e| e.to_string())?;
            let app = App::new(store, Config::default());
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
            for p in queue(instances, &mut rng) {
                let req = CreateInstance {
                    model: p.model,
                    count: p.count,
                    region: p.region,
                    command: "x".into(),
                    name: None,
                };
                app.create_instance(&who, req, None).await.map_err(e)?;
            }
            let t = Instant::now();
            let (mut placed, mut passes) = (0, 0);
            loop {
                let r = app.schedule_pass().await.map_err(|e| e.to_string())?;
                passes += 1;
                placed += r.placed;
                if r.placed == 0 {
                    break;
                }
            }
            Ok::<_, String>((placed, t.elapsed().as_secs_f64(), passes))
        })?;
        let backend = if url.starts_with("sqlite") { "sqlite" } else { "postgres" };
        rows.push(vec![
            backend.to_string(),
            n.to_string(),
            instances.to_string(),
            placed.to_string(),
            passes.to_string(),
            format!("{:.1}", secs * 1e3),
            format!("{:.0}", placed as f64 / secs),
        ]);
        records.push(serde_json::json!({
            "backend": backend, "nodes": n, "instances": instances, "placed": placed,
            "passes": passes, "ms": secs * 1e3, "placements_per_s": placed as f64 / secs,
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&records).unwrap_or_default());
    } else {
        println!("{}", table(&["STORE", "NODES", "INSTANCES", "PLACED", "PASSES", "MS", "PLACEMENTS/S"], &rows));
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
