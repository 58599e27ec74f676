//! `gpucloud bench fleet`: a real `gpucloud serve` (its own process, so its CPU and memory are
//! its alone) under N simulated node agents speaking the real agent protocol over HTTP, and a
//! tenant creating instances at a set rate. Each simulated agent runs the node agent's own beat
//! (`gpucloud_node::runtime::Reconciler`) over the fake runtime and fake GPUs: no workloads run,
//! readings are synthesized, and every decision the server sends is acted on as a real agent
//! would. What it prints is the server's side: heartbeats handled per second and their latency,
//! the API's latency for create and show, from create to placed and to running (the server's own
//! timestamps, from the instances' events), the scheduling pass, and the server's CPU, memory and
//! database growth.

use gpucloud_api as api;
use gpucloud_client::agent_api::AgentClient;
use gpucloud_node::gpu::{FakeGpus, GpuBackend, GpuInfo};
use gpucloud_node::runtime::{FakeRuntime, Reconciler, Runtime};
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct FleetArgs {
    pub nodes: Vec<usize>,
    pub gpus_per_node: u32,
    pub instances: usize,
    pub rate: f64,
    pub seconds: u64,
    pub interval_ms: u64,
    pub database: Option<String>,
    pub workers: usize,
    pub clients: usize,
    /// Instances created and running before the measured window (not in its figures).
    pub preload: usize,
    /// Creates per second while preloading.
    pub preload_rate: f64,
    /// Every instance a slice of this percentage of one GPU; whole GPUs when `None`.
    pub share: Option<u32>,
    /// The server's posting period: the figure is how long posting one point takes.
    pub posting_period_s: u64,
    /// Another build's `gpucloud` to run as the server (a baseline in the same run).
    pub server_bin: Option<std::path::PathBuf>,
}

/// One fleet size's figures.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FleetRow {
    pub nodes: usize,
    pub gpus: usize,
    pub backend: String,
    pub register_s: f64,
    pub beats: u64,
    pub beat_failures: u64,
    pub beats_per_s: f64,
    pub beat_p50_ms: f64,
    pub beat_p99_ms: f64,
    pub created: usize,
    /// Instances created before measuring, and how long creating and running them took.
    pub preloaded: usize,
    pub preload_s: f64,
    pub preload_beat_p99_ms: f64,
    pub preload_beat_max_ms: f64,
    /// Instances running when the window closed, preloaded ones included.
    pub running_at_end: i64,
    pub create_p50_ms: f64,
    pub create_p99_ms: f64,
    pub show_p50_ms: f64,
    pub show_p99_ms: f64,
    /// The first page (100) of the tenant's instances, as a dashboard reads it.
    pub list_p50_ms: f64,
    pub list_p99_ms: f64,
    pub placed_p50_ms: f64,
    pub placed_p99_ms: f64,
    pub running_p50_ms: f64,
    pub running_p99_ms: f64,
    /// Instances of the sample that were running by the end.
    pub sampled_running: usize,
    pub sampled: usize,
    pub sched_pass_ms: f64,
    pub sched_pass_max_ms: f64,
    pub metering_pass_ms: f64,
    pub metering_pass_max_ms: f64,
    /// From the first posting point after measuring began until every running instance's
    /// usage is posted through it; `None` when it was not by the next point.
    pub posting_lag_s: Option<f64>,
    /// Open intervals still unposted through that point when the probe gave up.
    pub posting_left: i64,
    pub server_cpu_percent: f64,
    pub server_rss_mib: f64,
    pub db_growth_mib_per_h: Option<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Where one run keeps its data: a new SQLite file, or a new schema on the PostgreSQL server
/// given (each fleet size starts empty, and the schema is dropped after).
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres { server: String, schema: String },
}

impl Db {
    fn create(base: Option<&str>, nodes: usize) -> Result<(Db, String), String> {
        match base {
            None => {
                let dir = std::env::temp_dir().join(format!("gpucloud-bench-fleet-{}-{nodes}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let file = dir.join("fleet.db");
                let url = format!("sqlite://{}", file.display());
                Ok((Db::Sqlite(file), url))
            }
            Some(url) if url.starts_with("postgres") => {
                let schema = format!("bench_fleet_{}_{nodes}_{:x}", std::process::id(), rand::random::<u32>());
                pg(url, &format!("CREATE SCHEMA {schema}"))?;
                let sep = if url.contains('?') { '&' } else { '?' };
                let with_schema = format!("{url}{sep}options=-c%20search_path%3D{schema}");
                Ok((Db::Postgres { server: url.to_string(), schema }, with_schema))
            }
            Some(other) => Err(format!("--database {other}: give a postgres://... URL (SQLite is the default)")),
        }
    }

    /// Its size on disk in MiB: the SQLite file with its write-ahead log, or the schema's
    /// relations with their indexes and TOAST.
    fn size_mib(&self) -> Option<f64> {
        match self {
            Db::Sqlite(file) => {
                let main = std::fs::metadata(file).ok()?.len();
                let wal = std::fs::metadata(file.with_extension("db-wal")).map_or(0, |m| m.len());
                Some((main + wal) as f64 / (1024.0 * 1024.0))
            }
            Db::Postgres { server, schema } => {
                let sql = format!(
                    "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind = 'r'"
                );
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                let bytes: i64 = rt.block_on(async {
                    let pool = sqlx::AnyPool::connect(server).await.ok()?;
                    let v = sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await.ok();
                    pool.close().await;
                    v
                })?;
                Some(bytes as f64 / (1024.0 * 1024.0))
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        match self {
            Db::Sqlite(file) => {
                if let Some(dir) = file.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Db::Postgres { server, schema } => {
                if let Err(e) = pg(server, &format!("DROP SCHEMA {schema} CASCADE")) {
                    eprintln!("dropping schema {schema}: {e}");
                }
            }
        }
    }
}

/// Counts read straight from the server's database (the bench is its operator): how many
/// instances run, and how much usage is still unposted. One connection, its own runtime.
struct Probe {
    rt: tokio::runtime::Runtime,
    pool: sqlx::AnyPool,
}

impl Probe {
    fn open(url: &str) -> Result<Probe, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        sqlx::any::install_default_drivers();
        let pool = rt
            .block_on(sqlx::any::AnyPoolOptions::new().max_connections(1).connect(url))
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(Probe { rt, pool })
    }

    fn count(&self, sql: &str, bind: Option<i64>) -> Result<i64, String> {
        self.rt.block_on(async {
            let mut q = sqlx::query_scalar::<_, i64>(sql);
            if let Some(b) = bind {
                q = q.bind(b);
            }
            q.fetch_one(&self.pool).await.map_err(|e| format!("{sql}: {e}"))
        })
    }

    fn running(&self) -> Result<i64, String> {
        self.count("SELECT COUNT(*) FROM instances WHERE state = 'running'", None)
    }

    fn not_running(&self) -> Result<i64, String> {
        self.count("SELECT COUNT(*) FROM instances WHERE state <> 'running'", None)
    }

    /// Open intervals that began before `point` (ms) and are not yet posted through it.
    fn unposted(&self, point: i64) -> Result<i64, String> {
        self.count(
            "SELECT COUNT(*) FROM usage_intervals WHERE settled = 0 AND ended_at IS NULL \
             AND started_at < $1 AND posted_through < $1",
            Some(point),
        )
    }
}

/// How long posting one point took: from the point until no open interval begun before it is
/// left unposted through it, checked every time it is called.
struct Posting {
    point: i64,
    lag_s: Option<f64>,
    /// Left unposted at the last check after the point.
    left: i64,
}

impl Posting {
    /// Whether the point is posted (now or at an earlier check).
    fn check(&mut self, probe: &Probe) -> Result<bool, String> {
        let now = now_ms();
        if self.lag_s.is_some() || now < self.point {
            return Ok(self.lag_s.is_some());
        }
        self.left = probe.unposted(self.point)?;
        if self.left == 0 {
            self.lag_s = Some((now - self.point) as f64 / 1000.0);
        }
        Ok(self.lag_s.is_some())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One statement on a PostgreSQL server.
fn pg(url: &str, sql: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.map_err(|e| format!("{url}: {e}"))?;
        sqlx::query(sql).execute(&pool).await.map_err(|e| e.to_string())?;
        pool.close().await;
        Ok(())
    })
}

/// `gpucloud serve` on a free port; its URL, operator key and process.
fn serve(args: &FleetArgs, database: &str) -> Result<(String, String, super::Child), String> {
    let exe = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let interval_ms = args.interval_ms;
    let port = super::free_port()?;
    let mut child = std::process::Command::new(&exe)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database", database])
        .args(["--heartbeat-grace-ms", &(interval_ms * 5).max(10_000).to_string()])
        // One operator key registers every node and one tenant key stands for many tenants:
        // a per-key limit would measure the limiter, not the server.
        .args(["--rate-limit", "0"])
        .args(["--posting-period-s", &args.posting_period_s.to_string()])
        .env("GPUCLOUD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout from serve")?;
    let child = super::Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(k) = line.strip_prefix("operator key: ") {
                let _ = tx.send(k.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let key = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| "serve printed no operator key".to_string())?;
    Ok((format!("http://127.0.0.1:{port}"), key, child))
}

/// One simulated node: its identity, its beat and what it "runs".
struct SimNode {
    node_id: String,
    epoch: i64,
    /// The number of its last beat (agents number them).
    seq: i64,
    gpus: FakeGpus,
    runtime: FakeRuntime,
    reconciler: Reconciler,
    next: Instant,
    last_reading: Instant,
}

/// What the agents saw, shared by the worker threads.
#[derive(Default)]
struct Beats {
    latencies_us: Mutex<Vec<u32>>,
    count: AtomicU64,
    failures: AtomicU64,
    /// Count only while measuring.
    measuring: AtomicBool,
}

impl Beats {
    /// The latencies so far in ms, emptied.
    fn take(&self) -> Vec<f64> {
        let mut l = self.latencies_us.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *l).into_iter().map(|u| f64::from(u) / 1000.0).collect()
    }
}

fn beat(client: &AgentClient, n: &mut SimNode, beats: &Beats) {
    let instances = n.reconciler.report(&mut n.runtime);
    let readings = n.gpus.telemetry(&n.runtime.gpu_load(), n.last_reading.elapsed());
    n.last_reading = Instant::now();
    n.seq += 1;
    let hb = api::AgentHeartbeat {
        node_id: n.node_id.clone(),
        epoch: n.epoch,
        seq: Some(n.seq),
        instances,
        gpus: readings,
        metrics: Vec::new(),
        purged_volumes: Vec::new(),
        images: None,
    };
    let sent = Instant::now();
    let answer = client.heartbeat(&hb);
    let took = sent.elapsed();
    if beats.measuring.load(Ordering::Relaxed) {
        beats.count.fetch_add(1, Ordering::Relaxed);
        beats
            .latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(took.as_micros().min(u32::MAX as u128) as u32);
    }
    match answer {
        Ok(desired) => {
            let mut start = |rt: &mut dyn Runtime, w: &api::AgentWorkload| rt.start(w, "", "", &[]);
            n.reconciler.apply(&mut n.runtime, &hb.instances, &desired.instances, &mut start);
        }
        Err(_) => {
            if beats.measuring.load(Ordering::Relaxed) {
                beats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What one tenant client did: the instances it created, and its latencies (ms).
#[derive(Default)]
struct ClientRun {
    ids: Vec<String>,
    create_ms: Vec<f64>,
    show_ms: Vec<f64>,
    list_ms: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn run_one(args: &FleetArgs, nodes: usize) -> Result<FleetRow, String> {
    let (db, database) = Db::create(args.database.as_deref(), nodes)?;
    let (url, op_key, server) = serve(args, &database)?;
    let probe = Probe::open(&database)?;
    let pid = server.0.id();
    let tls = ureq::tls::TlsConfig::default();
    let op = gpucloud_client::Client::new(&url, Some(op_key.clone()), tls.clone());
    let tenant: api::ApiKeyCreated = op
        .post(
            "/v1/tenants",
            Some(&api::CreateTenantRequest { name: "fleet".into(), billing_mode: None, credit_limit: None }),
            None,
        )
        .map_err(|e| e.to_string())?;
    let tenant_key = tenant.api_key;
    let tenant = gpucloud_client::Client::new(&url, Some(tenant_key.clone()), tls.clone());
    let model = gpucloud_model::GpuModel::H100_80GB;

    // Register every node, spread over the workers.
    let workers = args.workers.clamp(1, 256).min(nodes.max(1));
    let registered = Instant::now();
    let mut groups: Vec<Vec<SimNode>> = Vec::new();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (url, key, tls) = (url.clone(), op_key.clone(), tls.clone());
            let mine: Vec<usize> = (0..nodes).filter(|i| i % workers == w).collect();
            let per_node = args.gpus_per_node;
            std::thread::spawn(move || -> Result<Vec<SimNode>, String> {
                let client = AgentClient::new(&url, &key, tls);
                let mut out = Vec::with_capacity(mine.len());
                for i in mine {
                    let name = format!("fleet-{i:05}");
                    let gpus: Vec<GpuInfo> = (0..per_node)
                        .map(|g| GpuInfo {
                            index: g,
                            model,
                            uuid: format!("GPU-{name}-{g}"),
                            memory_mib: model.memory_mib(),
                        })
                        .collect();
                    let req = api::RegisterAgentRequest {
                        name: name.clone(),
                        region: gpucloud_model::Region::parse("eu-1").map_err(|e| e.to_string())?,
                        gpus: gpus
                            .iter()
                            .map(|g| api::AgentGpu { index: g.index, model, uuid: g.uuid.clone() })
                            .collect(),
                        address: Some("127.0.0.1".into()),
                        labels: Default::default(),
                        runtime: Some(api::AgentRuntime::Fake),
                        ingress_port: None,
                        ssh_port: None,
                        ssh_host_key: None,
                    };
                    let reg = client.register(&req).map_err(|e| format!("registering {name}: {e}"))?;
                    out.push(SimNode {
                        node_id: reg.node_id,
                        epoch: reg.epoch,
                        seq: 0,
                        gpus: FakeGpus::from_gpus(gpus),
                        runtime: FakeRuntime::new(),
                        reconciler: Reconciler::default(),
                        next: Instant::now(),
                        last_reading: Instant::now(),
                    });
                }
                Ok(out)
            })
        })
        .collect();
    for h in handles {
        groups.push(h.join().map_err(|_| "a registering worker panicked".to_string())??);
    }
    let register_s = registered.elapsed().as_secs_f64();

    // Beat: each node every interval, spread evenly over it.
    let interval = Duration::from_millis(args.interval_ms);
    let beats = Arc::new(Beats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let beaters: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            let (url, key, tls, beats, stop) = (url.clone(), op_key.clone(), tls.clone(), beats.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = AgentClient::new(&url, &key, tls);
                let spread = interval.as_secs_f64() / group.len().max(1) as f64;
                let t0 = Instant::now();
                for (k, n) in group.iter_mut().enumerate() {
                    n.next = t0 + Duration::from_secs_f64(spread * k as f64);
                }
                while !stop.load(Ordering::Relaxed) {
                    let Some(n) = group.iter_mut().min_by_key(|n| n.next) else { return };
                    let now = Instant::now();
                    if n.next > now {
                        std::thread::sleep((n.next - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    n.next += interval;
                    // Behind schedule (the server is slow): beat now, never in a burst to catch up.
                    if n.next < now {
                        n.next = now + interval;
                    }
                    beat(&client, n, &beats);
                }
            })
        })
        .collect();

    // Warm up for two beats.
    std::thread::sleep(interval * 2);
    let mut body = serde_json::json!({"gpu": model.to_string(), "count": 1, "command": "serve"});
    if let Some(share) = args.share {
        body["gpu_share"] = share.into();
    }
    let request: api::CreateInstanceRequest = serde_json::from_value(body).map_err(|e| e.to_string())?;

    // The instances already there: created as fast as the server takes them, then waited on
    // until every one runs.
    let preloading = Instant::now();
    // Its beats are timed apart from the window's: a burst of creates must not starve them.
    beats.measuring.store(true, Ordering::Relaxed);
    if args.preload > 0 {
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let loaders = args.clients.clamp(1, 64);
        let loaders: Vec<_> = (0..loaders)
            .map(|_| {
                let tenant = gpucloud_client::Client::new(&url, Some(tenant_key.clone()), tls.clone());
                let (request, made, limit) = (request.clone(), made.clone(), args.preload);
                let period = Duration::from_secs_f64(loaders as f64 / args.preload_rate.max(0.1));
                std::thread::spawn(move || -> Result<(), String> {
                    let mut next = Instant::now();
                    while made.fetch_add(1, Ordering::SeqCst) < limit {
                        tenant.create_instance(&request, None).map_err(|e| format!("preload create refused: {e}"))?;
                        next += period;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    Ok(())
                })
            })
            .collect();
        for l in loaders {
            l.join().map_err(|_| "a preloading client panicked".to_string())??;
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut last_said = Instant::now();
        loop {
            let running = probe.running()?;
            if running >= args.preload as i64 {
                break;
            }
            let lost = probe.count("SELECT COUNT(*) FROM instances WHERE state = 'lost'", None)?;
            if lost > 0 {
                let lat = sorted(beats.take());
                return Err(format!(
                    "preload: {lost} instances lost with their nodes, declared lost while the server \
                     fell behind on heartbeats (beats so far: p99 {:.0} ms, max {:.0} ms, {} failed); \
                     try a lower --preload-rate",
                    percentile(&lat, 99.0),
                    lat.last().copied().unwrap_or(0.0),
                    beats.failures.load(Ordering::Relaxed)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("preload: {running} of {} running after 10 minutes", args.preload));
            }
            if last_said.elapsed() > Duration::from_secs(10) {
                eprintln!("preload: {running} of {} running", args.preload);
                last_said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let preload_s = if args.preload > 0 { preloading.elapsed().as_secs_f64() } else { 0.0 };
    beats.measuring.store(false, Ordering::Relaxed);
    let preload_beats = sorted(beats.take());
    beats.count.store(0, Ordering::Relaxed);
    beats.failures.store(0, Ordering::Relaxed);

    // Measure.
    let db_before = db.size_mib();
    let cpu_before = super::proc_usage(pid).map(|u| u.0).unwrap_or(0.0);
    beats.measuring.store(true, Ordering::Relaxed);
    let measured = Instant::now();
    let period_ms = args.posting_period_s as i64 * 1000;
    // The first posting point after measuring began.
    let point = (now_ms() / period_ms + 1) * period_ms;
    // Tenants' clients: each creates at its share of the rate and shows one instance it made
    // after each create (a client checking on its work), and every fifth create lists its
    // first page, until the count or the time is up.
    let clients = args.clients.clamp(1, 64);
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let window = Duration::from_secs(args.seconds);
    let creators: Vec<_> = (0..clients)
        .map(|_| {
            let tenant = gpucloud_client::Client::new(&url, Some(tenant_key.clone()), tls.clone());
            let (request, made, limit) = (request.clone(), made.clone(), args.instances);
            let period = Duration::from_secs_f64(clients as f64 / args.rate.max(0.1));
            std::thread::spawn(move || -> Result<ClientRun, String> {
                let mut run = ClientRun::default();
                let mut next = Instant::now();
                while measured.elapsed() < window && made.fetch_add(1, Ordering::SeqCst) < limit {
                    let t = Instant::now();
                    let i = tenant.create_instance(&request, None).map_err(|e| format!("create refused: {e}"))?;
                    run.create_ms.push(ms(t.elapsed()));
                    run.ids.push(i.id);
                    let t = Instant::now();
                    tenant.instance(&run.ids[rand::random_range(0..run.ids.len())]).map_err(|e| e.to_string())?;
                    run.show_ms.push(ms(t.elapsed()));
                    if run.ids.len() % 5 == 1 {
                        let t = Instant::now();
                        let page: api::InstanceList =
                            tenant.get("/v1/instances?limit=100").map_err(|e| e.to_string())?;
                        run.list_ms.push(ms(t.elapsed()));
                        if page.instances.is_empty() {
                            return Err("the first page of instances is empty".into());
                        }
                    }
                    next += period;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(run)
            })
        })
        .collect();
    let (mut sched, mut metering) = (Vec::new(), Vec::new());
    let mut posting = Posting { point, lag_s: None, left: 0 };
    while measured.elapsed() < window {
        posting.check(&probe)?;
        let tasks: api::TaskList = op.get("/v1/admin/tasks").map_err(|e| e.to_string())?;
        let last = |name: &str| tasks.tasks.iter().find(|t| t.name == name).and_then(|t| t.last_duration_ms);
        sched.extend(last("schedule"));
        metering.extend(last("metering"));
        std::thread::sleep(Duration::from_millis(500).min(window.saturating_sub(measured.elapsed())));
    }
    let (mut created, mut create_ms, mut show_ms, mut list_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in creators {
        let run = c.join().map_err(|_| "a tenant client panicked".to_string())??;
        created.extend(run.ids.into_iter().map(|id| (id, ())));
        create_ms.extend(run.create_ms);
        show_ms.extend(run.show_ms);
        list_ms.extend(run.list_ms);
    }
    let elapsed = measured.elapsed();
    beats.measuring.store(false, Ordering::Relaxed);
    let usage = super::proc_usage(pid);
    let db_after = db.size_mib();
    let running_at_end = probe.running()?;
    // Those created last get their beats too before they are counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && probe.not_running()? > 0 {
        posting.check(&probe)?;
        std::thread::sleep(Duration::from_millis(250));
    }
    // Posting the point: waited on until the next one, if the window closed first.
    while !posting.check(&probe)? && now_ms() < point + period_ms {
        std::thread::sleep(Duration::from_millis(250));
    }
    let (posting_lag_s, posting_left) = (posting.lag_s, posting.left);

    // From create to placed and to running, by the server's own clock, for a sample.
    let step = (created.len() / 300).max(1);
    let (mut placed, mut running) = (Vec::new(), Vec::new());
    let mut sampled = 0;
    for (id, _) in created.iter().step_by(step) {
        sampled += 1;
        let history: api::InstanceHistory =
            tenant.get(&format!("/v1/instances/{id}/events")).map_err(|e| e.to_string())?;
        let at =
            |to: &str| history.events.iter().find(|e| e.to == to).and_then(|e| api::parse_time(&e.at)).map(|t| t.0);
        let Some(t0) = history.events.first().and_then(|e| api::parse_time(&e.at)).map(|t| t.0) else { continue };
        if let Some(p) = at("provisioning") {
            placed.push((p - t0) as f64);
        }
        if let Some(r) = at("running") {
            running.push((r - t0) as f64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in beaters {
        let _ = b.join();
    }
    drop(server);
    drop(probe);
    drop(db);

    let lat = sorted(beats.take());
    let (create_ms, show_ms, list_ms, placed, running) =
        (sorted(create_ms), sorted(show_ms), sorted(list_ms), sorted(placed), sorted(running));
    let (sched, metering) = (sorted(sched), sorted(metering));
    let count = beats.count.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    Ok(FleetRow {
        nodes,
        gpus: nodes * args.gpus_per_node as usize,
        backend: if args.database.is_some() { "postgres" } else { "sqlite" }.into(),
        register_s,
        beats: count,
        beat_failures: beats.failures.load(Ordering::Relaxed),
        beats_per_s: count as f64 / secs,
        beat_p50_ms: percentile(&lat, 50.0),
        beat_p99_ms: percentile(&lat, 99.0),
        created: created.len(),
        preloaded: args.preload,
        preload_s,
        preload_beat_p99_ms: percentile(&preload_beats, 99.0),
        preload_beat_max_ms: preload_beats.last().copied().unwrap_or(0.0),
        running_at_end,
        create_p50_ms: percentile(&create_ms, 50.0),
        create_p99_ms: percentile(&create_ms, 99.0),
        show_p50_ms: percentile(&show_ms, 50.0),
        show_p99_ms: percentile(&show_ms, 99.0),
        list_p50_ms: percentile(&list_ms, 50.0),
        list_p99_ms: percentile(&list_ms, 99.0),
        placed_p50_ms: percentile(&placed, 50.0),
        placed_p99_ms: percentile(&placed, 99.0),
        running_p50_ms: percentile(&running, 50.0),
        running_p99_ms: percentile(&running, 99.0),
        sampled_running: running.len(),
        sampled,
        sched_pass_ms: percentile(&sched, 50.0),
        sched_pass_max_ms: sched.last().copied().unwrap_or(0.0),
        metering_pass_ms: percentile(&metering, 50.0),
        metering_pass_max_ms: metering.last().copied().unwrap_or(0.0),
        posting_lag_s,
        posting_left,
        server_cpu_percent: usage.map_or(0.0, |u| (u.0 - cpu_before) / secs * 100.0),
        server_rss_mib: usage.map_or(0.0, |u| u.1),
        db_growth_mib_per_h: match (db_before, db_after) {
            (Some(b), Some(a)) => Some((a - b) / secs * 3600.0),
            _ => None,
        },
    })
}

pub fn fleet(args: FleetArgs, as_json: bool) -> Result<(), String> {
    if args.nodes.is_empty() || args.nodes.iter().any(|n| !(1..=20_000).contains(n)) {
        return Err("--nodes: fleet sizes of 1 to 20000 nodes".into());
    }
    if !(1..=16).contains(&args.gpus_per_node) || !(100..=60_000).contains(&args.interval_ms) || args.seconds == 0 {
        return Err("--gpus-per-node 1-16, --interval-ms 100-60000, --seconds at least 1".into());
    }
    if args.share.is_some_and(|s| !(1..=100).contains(&s)) {
        return Err("--share: a slice is 1 to 100 percent of a GPU".into());
    }
    if !(1..=86_400).contains(&args.posting_period_s) {
        return Err("--posting-period-s: 1 to 86400 seconds".into());
    }
    // Slices of one GPU: as many as fit by compute (memory is the same share).
    let per_gpu = args.share.map_or(1, |s| (100 / s) as usize);
    let smallest = args.nodes.iter().min().copied().unwrap_or(0) * args.gpus_per_node as usize * per_gpu;
    if args.instances + args.preload > smallest {
        return Err(format!(
            "--instances {} and --preload {} are more than the smallest fleet holds ({smallest} {})",
            args.instances,
            args.preload,
            if args.share.is_some() { "slices" } else { "GPUs" }
        ));
    }
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let row = run_one(&args, n)?;
        if !as_json {
            eprintln!("{n} nodes: {} beats, {} created", row.beats, row.created);
        }
        rows.push(row);
    }
    if as_json {
        println!("{}", serde_json::to_string(&rows).map_err(|e| e.to_string())?);
    } else {
        let p = |a: f64, b: f64| format!("{a:.1} / {b:.1}");
        let table_rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.nodes.to_string(),
                    r.gpus.to_string(),
                    r.backend.clone(),
                    format!("{:.0}", r.beats_per_s),
                    p(r.beat_p50_ms, r.beat_p99_ms),
                    r.beat_failures.to_string(),
                    r.created.to_string(),
                    p(r.create_p50_ms, r.create_p99_ms),
                    p(r.show_p50_ms, r.show_p99_ms),
                    p(r.list_p50_ms, r.list_p99_ms),
                    format!("{:.0} / {:.0}", r.placed_p50_ms, r.placed_p99_ms),
                    format!("{:.0} / {:.0} ({}/{})", r.running_p50_ms, r.running_p99_ms, r.sampled_running, r.sampled),
                    format!("{:.1} / {:.1}", r.sched_pass_ms, r.sched_pass_max_ms),
                    format!("{:.1} / {:.1}", r.metering_pass_ms, r.metering_pass_max_ms),
                    match r.posting_lag_s {
                        Some(s) => format!("{s:.1}"),
                        None => format!("> {} ({} left)", args.posting_period_s, r.posting_left),
                    },
                    r.running_at_end.to_string(),
                    format!("{:.0}%", r.server_cpu_percent),
                    format!("{:.0}", r.server_rss_mib),
                    r.db_growth_mib_per_h.map_or("-".into(), |g| format!("{g:.0}")),
                ]
            })
            .collect();
        let head = [
            "NODES",
            "GPUS",
            "DB",
            "BEATS/S",
            "BEAT P50/P99 MS",
            "BEAT ERRS",
            "CREATED",
            "CREATE P50/P99 MS",
            "SHOW P50/P99 MS",
            "LIST P50/P99 MS",
            "TO PLACED P50/P99 MS",
            "TO RUNNING P50/P99 MS",
            "SCHED PASS P50/MAX MS",
            "METERING PASS P50/MAX MS",
            "POSTING LAG S",
            "RUNNING",
            "SERVER CPU",
            "SERVER RSS MIB",
            "DB MIB/H",
        ];
        println!("{}", gpucloud_sim::report::table(&head, &table_rows));
        println!(
            "(agents beat every {} ms, {} GPUs a node; the tenant creates {} instances at {}/s up to {}, \
             beside {} created before; posting every {} s, its lag from the point until all is posted; \
             server CPU = its user + system time over the {} s measured, 100% = one core)",
            args.interval_ms,
            args.gpus_per_node,
            args.share.map_or("1-GPU".to_string(), |s| format!("{s}% slice")),
            args.rate,
            args.instances,
            args.preload,
            args.posting_period_s,
            args.seconds
        );
        for r in rows.iter().filter(|r| r.preloaded > 0) {
            println!(
                "({} nodes: {} instances created and running in {:.0} s before measuring; beats meanwhile p99 {:.0} ms, max {:.0} ms)",
                r.nodes, r.preloaded, r.preload_s, r.preload_beat_p99_ms, r.preload_beat_max_ms
            );
        }
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.beat_failures > 0 || r.sampled_running < r.sampled)
        .map(|r| {
            format!(
                "{} nodes: {} failed beats, {}/{} sampled running",
                r.nodes, r.beat_failures, r.sampled_running, r.sampled
            )
        })
        .collect();
    if failed.is_empty() { Ok(()) } else { Err(format!("the control plane fell behind: {}", failed.join("; "))) }
}
