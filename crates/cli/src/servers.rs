//! `gpucloud dev` and `gpucloud serve`.

use crate::profile::{self, Credentials, Profile};
use clap::Args;
use gpucloud_server::app::{Config, FakeAgents};
use gpucloud_server::dev::{DEFAULT_FLEET, DevFleet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Args)]
pub struct DevArgs {
    /// Address to serve the API on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: String,
    /// Where the SQLite database and credentials.json live [default: ~/.local/share/gpucloud/dev].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use this database (postgres://...) instead of the data directory's SQLite file.
    #[arg(long)]
    database: Option<String>,
    /// Scheduler, fake-agent and metering period in milliseconds (tests use a short one).
    #[arg(long, hide = true)]
    tick_ms: Option<u64>,
    /// How the built-in fleet runs workloads: docker (a confined container each, of --image or
    /// the instance's own, as on a real shared node), process (plain processes), or auto
    /// (docker when an engine answers and --image is there or can be pulled).
    #[arg(long, default_value = "auto", value_parser = ["auto", "docker", "process"])]
    runtime: String,
    /// With the container runtime: the image of workloads that name none.
    #[arg(long, default_value = "ubuntu:24.04")]
    image: String,
    /// How often a running instance's accrued charge is posted to the ledger, in seconds
    /// (default 3600; also at each month start and when it stops).
    #[arg(long, value_name = "SECONDS")]
    posting_period_s: Option<u64>,
    #[command(flatten)]
    market: MarketArgs,
    #[command(flatten)]
    monitor: MonitorArgs,
}

/// Whether dev's agents run containers: (the image, what to say about it).
fn dev_runtime(runtime: &str, image: &str) -> Result<(Option<String>, String), String> {
    if runtime == "process" {
        return Ok((None, "processes (--runtime process): no --image, --volume or SSH".into()));
    }
    let confinement = gpucloud_agent::docker::Confinement::share_of(1, 1024, 1);
    match gpucloud_agent::docker::DockerLauncher::connect(image, false, confinement) {
        Ok(_) => Ok((
            Some(image.to_string()),
            format!("containers of {image} (--image, --volume, SSH, ports and secrets as on a shared node)"),
        )),
        Err(e) if runtime == "docker" => Err(e),
        Err(e) => Ok((
            None,
            format!(
                "processes: no containers ({e}); --image and --volume fail with a reason, no SSH, and web ports reach the process's own port"
            ),
        )),
    }
}

/// The spot market's settings (both `dev` and `serve`).
#[derive(Args)]
pub struct MarketArgs {
    /// Seconds a preempted instance gets between its notice and SIGTERM [default: 120].
    #[arg(long, value_name = "SECONDS")]
    spot_notice: Option<f64>,
    /// No preemption notice is ever shorter, whoever asks [default: 30].
    #[arg(long, value_name = "SECONDS")]
    spot_min_notice: Option<f64>,
    /// A spot instance runs at least this long before on-demand work may take its GPUs [default: 300].
    #[arg(long, value_name = "SECONDS")]
    spot_min_runtime: Option<f64>,
    /// The spot price never falls below this share of the on-demand price [default: 25].
    #[arg(long, value_name = "PERCENT")]
    spot_floor_percent: Option<u32>,
    /// How often the spot price moves [default: 10].
    #[arg(long, value_name = "SECONDS")]
    spot_price_interval: Option<f64>,
}

/// Monitoring's and the API's limits (both `dev` and `serve`).
#[derive(Args)]
pub struct MonitorArgs {
    /// Days GPU telemetry samples are kept [default: 7].
    #[arg(long, value_name = "DAYS")]
    telemetry_retention_days: Option<u32>,
    /// Days the metrics workloads push (loss, samples/s) are kept [default: 30].
    #[arg(long, value_name = "DAYS")]
    metrics_retention_days: Option<u32>,
    /// A GPU at or above this temperature raises an alert [default: 85].
    #[arg(long, value_name = "CELSIUS")]
    gpu_temperature_alert: Option<f64>,
    /// Requests per second each API key may make, per replica, with bursts of twice that;
    /// 0 turns the limit off [default: 100].
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<f64>,
    /// A network tenants' webhooks may reach although it is loopback, private or link-local
    /// (refused otherwise), e.g. 10.1.2.0/24 for an internal alert relay. Repeat it for more.
    #[arg(long, value_name = "CIDR")]
    webhook_allow: Vec<String>,
    /// Refuse node agents that run workloads as plain processes: every workload runs in a
    /// confined container of its own (agent --runtime docker). For a cloud shared by tenants.
    #[arg(long)]
    require_containers: bool,
    /// The key tenants' secrets are sealed with: 64 hex digits in a file only the server reads,
    /// made there if it does not exist. Every replica needs the same file. [default: secrets.key
    /// beside a SQLite database (dev: in its data directory); none for PostgreSQL: no secrets]
    #[arg(long, value_name = "PATH", env = "GPUCLOUD_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// How users reach this server, e.g. https://gpu.example.com: the base of the URLs of
    /// instances' proxied ports [default: http:// and the listen address].
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

impl MonitorArgs {
    fn apply(&self, config: &mut Config) -> Result<(), String> {
        let days = |v: Option<u32>, flag: &str, into: &mut Duration| -> Result<(), String> {
            if let Some(d) = v {
                if !(1..=3660).contains(&d) {
                    return Err(format!("--{flag} must be 1 to 3660 days, got {d}"));
                }
                *into = Duration::from_secs(u64::from(d) * 86_400);
            }
            Ok(())
        };
        let m = &mut config.monitor;
        days(self.telemetry_retention_days, "telemetry-retention-days", &mut m.retention)?;
        days(self.metrics_retention_days, "metrics-retention-days", &mut m.metrics_retention)?;
        if let Some(c) = self.gpu_temperature_alert {
            if !c.is_finite() || !(20.0..=150.0).contains(&c) {
                return Err(format!("--gpu-temperature-alert must be 20 to 150 C, got {c}"));
            }
            m.temperature_alert_c = c;
        }
        config.require_containers |= self.require_containers;
        if let Some(path) = &self.secrets_key_file {
            config.secrets_key = Some(gpucloud_server::app::secrets::SecretsKey::load_or_create(path)?);
        }
        if let Some(u) = &self.public_url {
            let ok = (u.starts_with("http://") || u.starts_with("https://")) && !u.contains(char::is_whitespace);
            if !ok {
                return Err(format!("--public-url must be an http:// or https:// URL, got '{u}'"));
            }
            config.public_url = u.clone();
        }
        for n in &self.webhook_allow {
            config.webhook_allow.push(n.parse().map_err(|e| format!("--webhook-allow: {e}"))?);
        }
        match self.rate_limit {
            None => {}
            Some(0.0) => config.rate_limit = None,
            Some(r) if r.is_finite() && r > 0.0 && r <= 1e6 => {
                config.rate_limit = Some(gpucloud_server::app::ratelimit::RateLimit { per_second: r, burst: 2.0 * r })
            }
            Some(r) => return Err(format!("--rate-limit must be 0 (off) or a rate up to 1000000 per second, got {r}")),
        }
        Ok(())
    }
}

impl MarketArgs {
    fn apply(&self, config: &mut Config) -> Result<(), String> {
        let secs = |v: Option<f64>, flag: &str, into: &mut Duration| -> Result<(), String> {
            if let Some(s) = v {
                if !s.is_finite() || !(0.0..=86_400.0).contains(&s) {
                    return Err(format!("--{flag} must be between 0 and 86400 seconds, got {s}"));
                }
                *into = Duration::from_secs_f64(s);
            }
            Ok(())
        };
        let m = &mut config.market;
        secs(self.spot_notice, "spot-notice", &mut m.notice)?;
        secs(self.spot_min_notice, "spot-min-notice", &mut m.min_notice)?;
        secs(self.spot_min_runtime, "spot-min-runtime", &mut m.min_runtime)?;
        secs(self.spot_price_interval, "spot-price-interval", &mut m.price_interval)?;
        m.price_interval = m.price_interval.max(Duration::from_millis(100));
        if let Some(p) = self.spot_floor_percent {
            m.floor_percent = p;
        }
        m.check()
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: String,
    /// sqlite://PATH or postgres://USER@HOST/DB
    #[arg(long, env = "GPUCLOUD_DATABASE_URL")]
    database: String,
    /// Run an in-process fake agent for every node (until real agents exist on the hosts).
    #[arg(long)]
    fake_agents: bool,
    /// Leave a GPU model without a price when its first node joins (its usage then bills at 0
    /// until you set one) rather than pricing it from the default book (README, "Prices").
    #[arg(long)]
    no_default_prices: bool,
    /// Placement policy: fgd-pack, fgd-cpu, fgd, best-fit, spread, random, dot-product, gpu-clustering or
    /// gpu-packing (docs/decisions/0005).
    #[arg(long, default_value = "fgd-pack")]
    policy: String,
    /// Weigh power against fragmentation (fgd, fgd-pack, fgd-cpu): score points per 100 W a placement
    /// adds by waking a node or lighting an idle GPU (each model's idle and busy watts); 0 leaves
    /// power out. FgdPack's scores span 0 to 201 (docs/benchmarks.md, "Power").
    #[arg(long, value_name = "POINTS", default_value_t = 0.0)]
    power_weight: f64,
    /// Scheduler, fake-agent and metering period in milliseconds (tests use a short one).
    #[arg(long, hide = true)]
    tick_ms: Option<u64>,
    /// A node silent this long is lost (default 10000).
    #[arg(long)]
    heartbeat_grace_ms: Option<u64>,
    /// How long an agent cut off from every server keeps its workloads running before it stops
    /// them itself; a lost node's managed job starts its next attempt only after it, so the two
    /// never overlap. At least the heartbeat grace [default: the grace + 30000].
    #[arg(long)]
    agent_stop_after_ms: Option<u64>,
    /// How often a running instance's accrued charge is posted to the ledger, in seconds
    /// (default 3600; also at each month start and when it stops). Balances, budgets and the
    /// invoice draft read posted + accrued, so they move every second either way.
    #[arg(long, value_name = "SECONDS")]
    posting_period_s: Option<u64>,
    /// With several replicas on one database: how long the reconcilers' lease lasts unrenewed,
    /// the longest a dead leader's work waits for another replica (default 3000).
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// This replica's name among several on one PostgreSQL database [default: HOST:PORT]. It
    /// holds the reconcilers' lease by this name, so keep it stable across restarts.
    #[arg(long)]
    replica_name: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key. Without it the
    /// server speaks plain HTTP, for a TLS-terminating proxy in front (README, "TLS").
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    market: MarketArgs,
    #[command(flatten)]
    monitor: MonitorArgs,
}

fn posting_period(config: &mut Config, seconds: Option<u64>) -> Result<(), String> {
    if let Some(s) = seconds {
        if !(1..=86_400).contains(&s) {
            return Err(format!("--posting-period-s must be 1 to 86400 seconds, got {s}"));
        }
        config.posting_period = Duration::from_secs(s);
    }
    Ok(())
}

fn with_tick(mut config: Config, tick_ms: Option<u64>) -> Config {
    if let Some(ms) = tick_ms {
        let tick = Duration::from_millis(ms.max(10));
        config.schedule_interval = tick;
        config.metering_interval = tick;
        if config.fake_agents != FakeAgents::Off {
            config.fake_agents = FakeAgents::Every(tick);
        }
    }
    config
}

fn init_logging() {
    let level = match std::env::var("GPUCLOUD_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())
}

pub fn dev(args: DevArgs, profile_name: Option<&str>) -> Result<(), String> {
    init_logging();
    let data_dir = args.data_dir.unwrap_or_else(profile::default_data_dir);
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().map_err(|e| e.to_string())?;
    runtime()?.block_on(async move {
        let db = data_dir.join("gpucloud.db");
        let url = args.database.clone().unwrap_or_else(|| format!("sqlite://{}", db.display()));
        let agent_interval = args.tick_ms.map_or(Duration::from_secs(1), |ms| Duration::from_millis(ms.max(10)));
        // Nodes an operator adds by hand (`node add`) get an in-process fake agent; the built-in
        // fleet registers itself through real agents below.
        let config = Config {
            schedule_interval: Duration::from_millis(500),
            fake_agents: FakeAgents::Every(agent_interval),
            ..Config::default()
        };
        let mut config = with_tick(config, args.tick_ms);
        posting_period(&mut config, args.posting_period_s)?;
        args.market.apply(&mut config)?;
        args.monitor.apply(&mut config)?;
        if config.secrets_key.is_none() {
            config.secrets_key = Some(gpucloud_server::app::secrets::SecretsKey::load_or_create(
                &data_dir.join("secrets.key"),
            )?);
        }
        let running = gpucloud_server::start_on(&url, config, &args.listen, None).await?;
        let url = format!("http://{}", running.addr);
        let previous = profile::read_credentials(&data_dir);
        let keys = gpucloud_server::dev::bootstrap(&running.app, previous.is_none(), DevFleet::Agents)
            .await
            .map_err(|e| format!("setting up the dev cloud: {e}"))?;
        let (creds, shown) = match (keys, previous) {
            (Some(k), _) => {
                (Credentials { url: url.clone(), operator_key: k.operator.secret, tenant_key: k.tenant.secret }, true)
            }
            (None, Some(prev)) => (Credentials { url: url.clone(), ..prev }, false),
            (None, None) => return Err("no credentials on record and none minted".to_string()),
        };
        let creds_path = data_dir.join("credentials.json");
        profile::write_private_json(&creds_path, &creds)
            .map_err(|e| format!("writing {}: {e}", creds_path.display()))?;
        let prof = Profile {
            url: url.clone(),
            api_key: Some(creds.tenant_key.clone()),
            operator_key: Some(creds.operator_key.clone()),
            name: None,
            data_dir: None,
        };
        let saved = profile::save_dev_profile(profile_name, prof, &data_dir)?;

        // The fleet: the real node agent, in threads of this process, over HTTP, with fake GPUs.
        // Its own thread: the engine client runs a runtime of its own.
        let (runtime, image) = (args.runtime.clone(), args.image.clone());
        let (docker_image, runtime_said) = std::thread::spawn(move || dev_runtime(&runtime, &image))
            .join()
            .map_err(|_| "probing the Docker engine failed".to_string())??;
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut agents = Vec::new();
        for (name, region, model, count) in DEFAULT_FLEET {
            let config = gpucloud_agent::Config {
                server: url.clone(),
                token: creds.operator_key.clone(),
                name: name.to_string(),
                region: gpucloud_model::Region::parse(region).map_err(|e| e.to_string())?,
                state_dir: data_dir.join("agents").join(name),
                interval: Some(agent_interval),
                stop_grace: Duration::from_secs(5),
                metadata_port: 0,
                ingress_port: 0,
                ssh_port: 0,
                address: Some("127.0.0.1".into()),
                ports: None,
                log_keep_mib: gpucloud_agent::runtime::DEFAULT_LOG_KEEP >> 20,
                runtime: match &docker_image {
                    Some(image) => gpucloud_agent::RuntimeChoice::Docker { image: image.clone() },
                    None => gpucloud_agent::RuntimeChoice::Process,
                },
                confine: Default::default(),
                labels: [("dev".to_string(), "true".to_string())].into(),
                ca_file: None,
                allow_plain_http: false,
            };
            let spec = format!("{}:{count}", model.name());
            let flag = shutdown.clone();
            let thread = std::thread::Builder::new().name(format!("agent-{name}")).spawn(move || {
                let gpus = gpucloud_agent::gpu::FakeGpus::parse(&spec, &config.name);
                let mut gpus = match gpus {
                    Ok(g) => g.with_fault_dir(config.state_dir.clone()),
                    Err(e) => return tracing::error!(error = %e, "dev agent"),
                };
                let name = config.name.clone();
                if let Err(e) = gpucloud_agent::run(config, &mut gpus, &flag) {
                    tracing::error!(node = %name, error = %e, "dev agent stopped");
                }
            });
            agents.push(thread.map_err(|e| e.to_string())?);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let nodes = loop {
            let nodes = gpucloud_server::dev::nodes(&running.app).await.map_err(|e| e.to_string())?;
            let up = nodes.iter().filter(|n| n.health == gpucloud_model::NodeHealth::Healthy).count();
            if up >= DEFAULT_FLEET.len() || std::time::Instant::now() > deadline {
                break nodes;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut regions: Vec<String> = nodes.iter().map(|n| n.region.to_string()).collect();
        regions.sort();
        regions.dedup();
        println!("gpucloud dev is running");
        println!("  API:          {url}   (OpenAPI: {url}/v1/openapi.json)");
        println!("  dashboard:    {url}/ui/   (log in with a key below)");
        match &args.database {
            Some(_) => println!("  data dir:     {}   (database: PostgreSQL from --database)", data_dir.display()),
            None => println!("  data dir:     {}   (SQLite: gpucloud.db)", data_dir.display()),
        }
        println!(
            "  fleet:        {} nodes in {} regions ({}), each a node agent with fake GPUs",
            nodes.len(),
            regions.len(),
            regions.join(", ")
        );
        println!("  workloads:    {runtime_said}");
        if shown {
            println!("  operator key: {}   (shown once; kept in credentials.json)", creds.operator_key);
            println!("  tenant key:   {}", creds.tenant_key);
        } else {
            println!("  keys:         in {} (not shown again)", creds_path.display());
        }
        println!("  credentials:  {}", creds_path.display());
        if saved.default {
            println!("  CLI profile:  {} ({}; the default)", saved.name, saved.path.display());
        } else {
            println!(
                "  CLI profile:  {} ({}; not the default, which another cloud has: use --profile {} or GPUCLOUD_PROFILE={})",
                saved.name,
                saved.path.display(),
                saved.name,
                saved.name
            );
        }
        println!();
        println!(
            "Try: gpucloud instance create --gpu A100-40GB --count 2 --region eu-1 --command 'echo $CUDA_VISIBLE_DEVICES; sleep 600'"
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let app = running.app.clone();
        let result = tokio::select! {
            _ = running.wait() => Err("the API server stopped".to_string()),
            // SIGTERM too (kill, service managers): the workloads stop with dev, never orphaned.
            _ = terminated() => Ok(()),
        };
        // Workloads run as real processes: stopping dev stops them too (they are adopted, or
        // reported stopped, on the next start).
        shutdown.store(true, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(move || agents.into_iter().for_each(|t| drop(t.join()))).await;
        if let Err(e) = app.flush_gpu_samples().await {
            tracing::warn!(error = %e, "GPU samples not written at shutdown");
        }
        result
    })
}

pub fn serve(args: ServeArgs) -> Result<(), String> {
    init_logging();
    let policy = args.policy.parse()?;
    runtime()?.block_on(async move {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(gpucloud_tls::acceptor(cert, key)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let config = Config {
            policy,
            power_weight: gpucloud_sched::PowerWeight::from_points(args.power_weight)
                .map_err(|e| format!("--power-weight: {e}"))?,
            fake_agents: if args.fake_agents { FakeAgents::Every(Duration::from_secs(2)) } else { FakeAgents::Off },
            default_prices: !args.no_default_prices,
            ..Config::default()
        };
        let mut config = with_tick(config, args.tick_ms);
        if let Some(ms) = args.lease_ttl_ms {
            config.lease_ttl = Duration::from_millis(ms.clamp(300, 600_000));
        }
        // Replicas share a PostgreSQL database; a SQLite file has one server, which always leads.
        if args.database.starts_with("postgres") {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            // Port 0 is any port: two such replicas must not share a name (each would think the
            // other's lease its own), so they are told apart by process.
            let port = match args.listen.rsplit(':').next().unwrap_or_default() {
                "0" => format!("0-pid{}", std::process::id()),
                p => p.to_string(),
            };
            config.replica = Some(args.replica_name.clone().unwrap_or_else(|| format!("{host}:{port}")));
        }
        if let Some(ms) = args.heartbeat_grace_ms {
            config.heartbeat_grace = Duration::from_millis(ms.max(100));
        }
        if let Some(ms) = args.agent_stop_after_ms {
            let grace = config.heartbeat_grace.as_millis() as u64;
            if ms < grace || ms > 3_600_000 {
                return Err(format!(
                    "--agent-stop-after-ms must be from the heartbeat grace ({grace}) to 3600000, got {ms}"
                ));
            }
            config.agent_stop_after = Some(Duration::from_millis(ms));
        }
        posting_period(&mut config, args.posting_period_s)?;
        args.market.apply(&mut config)?;
        args.monitor.apply(&mut config)?;
        if config.secrets_key.is_none() {
            match sqlite_file(&args.database) {
                Some(db) => {
                    let path = db.with_file_name("secrets.key");
                    config.secrets_key = Some(gpucloud_server::app::secrets::SecretsKey::load_or_create(&path)?);
                }
                None => tracing::warn!(
                    "no --secrets-key-file: this server keeps no secrets (tenants' secret requests are refused)"
                ),
            }
        }
        let running = gpucloud_server::start_on(&args.database, config, &args.listen, tls).await?;
        if let Some(key) = gpucloud_server::dev::first_operator(&running.app).await.map_err(|e| e.to_string())? {
            println!("operator key: {}   (shown once)", key.secret);
        }
        let free = running.app.zero_prices_in_force().await.map_err(|e| e.to_string())?;
        if !free.is_empty() {
            tracing::warn!(prices = %free.join(", "), "prices of 0 in force: this usage is not billed");
        }
        println!("gpucloud serving on {scheme}://{}", running.addr);
        // Its own line: scripts and tests read the address from the line above.
        println!("dashboard: {scheme}://{}/ui/", running.addr);
        let app = running.app.clone();
        let result = tokio::select! {
            _ = running.wait() => Err("the API server stopped".to_string()),
            _ = terminated() => Ok(()),
        };
        // The last second's GPU samples are written before the process goes.
        if let Err(e) = app.flush_gpu_samples().await {
            tracing::warn!(error = %e, "GPU samples not written at shutdown");
        }
        // Hand the reconcilers to another replica now rather than when the lease lapses.
        app.step_down().await;
        result
    })
}

/// The file of a `sqlite://PATH` database URL (without its `?options`).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Ctrl-C, or SIGTERM (what systemd and container runtimes send).
async fn terminated() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// `gpucloud agent`'s settings. Each can also be given in the `--config` file (TOML, the same
/// names with `_` for `-`, `labels` as a table); a flag wins over the file.
#[derive(Args, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentArgs {
    /// A TOML file with any of these settings, e.g. /etc/gpucloud/agent.toml.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The gpucloud server's URL; several replicas' separated by commas (it fails over between them).
    #[arg(long, env = "GPUCLOUD_URL")]
    server: Option<String>,
    /// A file holding the agent key (`gpucloud key create --scope agent --node NAME`, as the
    /// operator), e.g. /etc/gpucloud/agent.key (mode 0600). Or give the key in
    /// GPUCLOUD_AGENT_TOKEN, or as `token` in the --config file; never on the command line,
    /// where every local user reads it in /proc/PID/cmdline.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The key itself: from GPUCLOUD_AGENT_TOKEN or the --config file only.
    #[arg(skip)]
    token: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    region: Option<String>,
    /// A label for the node, KEY=VALUE (repeat it): rack, interconnect, owner. Shown on the node
    /// and selectable with `node list --label`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    #[serde(skip)]
    label: Vec<String>,
    #[arg(skip)]
    labels: std::collections::BTreeMap<String, String>,
    /// Fake GPUs instead of NVML, e.g. A100-40GB:4 or A100-40GB:2,T4:1.
    #[arg(long)]
    fake_gpus: Option<String>,
    /// Print the GPUs found (NVML or --fake-gpus) and one telemetry reading, then exit.
    #[arg(long)]
    #[serde(skip)]
    probe: bool,
    /// Where the agent keeps its state and workload logs [default: /var/lib/gpucloud-agent].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Heartbeat period in milliseconds (default: what the server asks for).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when stopping a workload [default: 10].
    #[arg(long)]
    stop_grace_s: Option<u64>,
    /// Loopback port of the per-instance metadata endpoint. Keep it fixed so that workloads
    /// adopted after an agent restart keep a working GPUCLOUD_METADATA_URL (0: any free port)
    /// [default: 7081].
    #[arg(long)]
    metadata_port: Option<u16>,
    /// Port the server's proxy reaches workloads' HTTP ports on (every connection signed by the
    /// server); open it to the server replicas only (0: any free port) [default: 7082].
    #[arg(long)]
    ingress_port: Option<u16>,
    /// With --runtime docker: the port renters' SSH clients reach their containers on (keys of
    /// the instance's tenant only; no sshd needed in the image) (0: any free port)
    /// [default: 2222].
    #[arg(long)]
    ssh_port: Option<u16>,
    /// Where other nodes reach this host (a cluster member's MASTER_ADDR, an instance's endpoint)
    /// [default: the node name].
    #[arg(long)]
    address: Option<String>,
    /// Ports workloads are given to serve on (GPUCLOUD_PORT), e.g. 20000-32000: the range a
    /// firewall opens [default: any free port].
    #[arg(long)]
    port_range: Option<String>,
    /// Most of a workload's output kept on this node waiting to be sent to the server, in MiB;
    /// past it the oldest unsent output is dropped and the log says so [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65536))]
    log_keep_mib: Option<u64>,
    /// How workloads run: docker (a confined container of --image each: own network, non-root,
    /// CPU and memory limits, only its GPUs through the NVIDIA container runtime; for any node
    /// shared by tenants), or process (no isolation between tenants: single-user and trusted
    /// hosts), or fake (nothing runs: a workload is reported running until stopped; with
    /// --fake-gpus only, to load-test a control plane) [default: process].
    #[arg(long, value_parser = ["process", "docker", "fake"])]
    runtime: Option<String>,
    /// The image workloads run in with --runtime docker (pulled at start if missing).
    #[arg(long)]
    image: Option<String>,
    /// With --runtime docker: the user workloads run as, UID:GID [default: 1000:1000].
    #[arg(long, value_name = "UID:GID")]
    workload_user: Option<String>,
    /// With --runtime docker: CPUs per GPU a workload may use (a slice gets its share)
    /// [default: this host's CPUs / its GPUs].
    #[arg(long)]
    cpus_per_gpu: Option<f64>,
    /// With --runtime docker: memory per GPU a workload may use, in GiB (a slice gets its share)
    /// [default: this host's memory / its GPUs].
    #[arg(long)]
    memory_per_gpu_gib: Option<f64>,
    /// CA certificates (PEM) the server's certificate must chain to, instead of the system's
    /// trusted roots (a private CA).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Call a server on another host over plain HTTP, the agent key in clear: only on a network
    /// you trust (plain HTTP to localhost is always allowed).
    #[arg(long)]
    #[serde(default)]
    allow_plain_http: bool,
}

impl AgentArgs {
    /// These flags over the `--config` file's settings.
    fn merged(self) -> Result<AgentArgs, String> {
        let mut flag_labels = std::collections::BTreeMap::new();
        for l in &self.label {
            let (k, v) = l.split_once('=').ok_or_else(|| format!("--label '{l}' is KEY=VALUE"))?;
            flag_labels.insert(k.to_string(), v.to_string());
        }
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str::<AgentArgs>(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => AgentArgs::default(),
        };
        let mut labels = file.labels;
        labels.extend(flag_labels);
        Ok(AgentArgs {
            config: self.config,
            server: self.server.or(file.server),
            token_file: self.token_file.or(file.token_file),
            token: self.token.or(file.token),
            name: self.name.or(file.name),
            region: self.region.or(file.region),
            label: Vec::new(),
            labels,
            fake_gpus: self.fake_gpus.or(file.fake_gpus),
            probe: self.probe,
            state_dir: self.state_dir.or(file.state_dir),
            interval_ms: self.interval_ms.or(file.interval_ms),
            stop_grace_s: self.stop_grace_s.or(file.stop_grace_s),
            metadata_port: self.metadata_port.or(file.metadata_port),
            ingress_port: self.ingress_port.or(file.ingress_port),
            ssh_port: self.ssh_port.or(file.ssh_port),
            address: self.address.or(file.address),
            port_range: self.port_range.or(file.port_range),
            log_keep_mib: self.log_keep_mib.or(file.log_keep_mib),
            runtime: self.runtime.or(file.runtime),
            image: self.image.or(file.image),
            workload_user: self.workload_user.or(file.workload_user),
            cpus_per_gpu: self.cpus_per_gpu.or(file.cpus_per_gpu),
            memory_per_gpu_gib: self.memory_per_gpu_gib.or(file.memory_per_gpu_gib),
            ca_file: self.ca_file.or(file.ca_file),
            allow_plain_http: self.allow_plain_http || file.allow_plain_http,
        })
    }
}

fn confine(args: &AgentArgs) -> Result<gpucloud_agent::docker::Overrides, String> {
    let positive = |v: Option<f64>, flag: &str| match v {
        Some(x) if !(x.is_finite() && x > 0.0 && x <= 4096.0) => Err(format!("--{flag} is a positive number, got {x}")),
        _ => Ok(v),
    };
    Ok(gpucloud_agent::docker::Overrides {
        user: args.workload_user.as_deref().map(gpucloud_agent::docker::parse_user).transpose()?,
        cpus_per_gpu: positive(args.cpus_per_gpu, "cpus-per-gpu")?,
        memory_mib_per_gpu: positive(args.memory_per_gpu_gib, "memory-per-gpu-gib")?.map(|g| (g * 1024.0) as u64),
    })
}

/// The agent key: from --token-file, GPUCLOUD_AGENT_TOKEN or the config file, in that order.
/// The variable is removed from the agent's own environment once read, so nothing the agent
/// starts can inherit it.
#[allow(unsafe_code)]
fn agent_token(args: &AgentArgs) -> Result<String, String> {
    let from_env = std::env::var("GPUCLOUD_AGENT_TOKEN").ok().filter(|t| !t.trim().is_empty());
    // SAFETY: called on the main thread before the agent starts any thread of its own.
    unsafe { std::env::remove_var("GPUCLOUD_AGENT_TOKEN") };
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--token-file {}: {e}", path.display()))?,
        None => from_env
            .or_else(|| args.token.clone())
            .ok_or("no agent key: give --token-file PATH, GPUCLOUD_AGENT_TOKEN, or token in --config".to_string())?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err("the agent key is empty".into());
    }
    Ok(token)
}

pub fn agent(args: AgentArgs) -> Result<(), String> {
    init_logging();
    let args = args.merged()?;
    let name = match args.name.clone() {
        Some(n) => n,
        None => {
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "node".into())
        }
    };
    let state_dir = args.state_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/gpucloud-agent"));
    let runtime = match args.runtime.as_deref().unwrap_or("process") {
        "process" => gpucloud_agent::RuntimeChoice::Process,
        "docker" => gpucloud_agent::RuntimeChoice::Docker {
            image: args.image.clone().ok_or("--runtime docker needs --image (or image in the config file)")?,
        },
        "fake" if args.fake_gpus.is_none() => {
            return Err("--runtime fake runs nothing: it goes with --fake-gpus, never with a host's real GPUs".into());
        }
        "fake" => gpucloud_agent::RuntimeChoice::Fake,
        other => return Err(format!("runtime '{other}' is process, docker or fake")),
    };
    let ports = args.port_range.as_deref().map(gpucloud_agent::runtime::parse_port_range).transpose()?;
    let mut gpus: Box<dyn gpucloud_agent::gpu::GpuBackend> = match &args.fake_gpus {
        Some(spec) => Box::new(gpucloud_agent::gpu::FakeGpus::parse(spec, &name)?.with_fault_dir(state_dir.clone())),
        None => {
            let nvml = gpucloud_agent::nvml::NvmlGpus::open()?;
            for d in nvml.details() {
                tracing::info!(gpu = d.index, name = %d.name, pci = %d.pci_bus, mig = ?d.mig_enabled, "NVML GPU");
            }
            Box::new(nvml)
        }
    };
    if args.probe {
        let found = gpus.discover()?;
        let readings = gpus.telemetry(&[], Duration::from_secs(1));
        let rows: Vec<Vec<String>> = found
            .iter()
            .map(|g| {
                let r = readings.iter().find(|r| r.index == g.index);
                vec![
                    g.index.to_string(),
                    g.model.to_string(),
                    g.uuid.clone(),
                    g.memory_mib.to_string(),
                    r.map_or("-".into(), |r| format!("{:.0}", r.temperature_c)),
                    r.map_or("-".into(), |r| format!("{:.1}", r.power_w)),
                    r.map_or("-".into(), |r| r.memory_used_mib.to_string()),
                    r.map_or("-".into(), |r| format!("{:.0}", r.utilization_pct)),
                ]
            })
            .collect();
        println!("backend: {}", gpus.name());
        println!(
            "{}",
            crate::output::table(
                &["IDX", "MODEL", "UUID", "MEMORY MIB", "TEMP C", "POWER W", "USED MIB", "UTIL %"],
                &rows
            )
        );
        return Ok(());
    }
    let missing = |what: &str, flag: &str, env: &str| format!("no {what}: give {flag}{env} or {what} in --config");
    let region = args.region.as_deref().ok_or_else(|| missing("region", "--region", ""))?;
    let config = gpucloud_agent::Config {
        server: args.server.clone().ok_or_else(|| missing("server", "--server", ", GPUCLOUD_URL"))?,
        token: agent_token(&args)?,
        name,
        region: gpucloud_model::Region::parse(region).map_err(|e| e.to_string())?,
        state_dir,
        interval: args.interval_ms.map(Duration::from_millis),
        stop_grace: Duration::from_secs(args.stop_grace_s.unwrap_or(10)),
        metadata_port: args.metadata_port.unwrap_or(7081),
        ingress_port: args.ingress_port.unwrap_or(7082),
        ssh_port: args.ssh_port.unwrap_or(2222),
        address: args.address.clone(),
        ports,
        log_keep_mib: args.log_keep_mib.unwrap_or(gpucloud_agent::runtime::DEFAULT_LOG_KEEP >> 20),
        runtime,
        confine: confine(&args)?,
        labels: args.labels.clone(),
        ca_file: args.ca_file.clone(),
        allow_plain_http: args.allow_plain_http,
    };
    let shutdown = std::sync::atomic::AtomicBool::new(false);
    gpucloud_agent::run(config, gpus.as_mut(), &shutdown)
}
