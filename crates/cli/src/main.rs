//! The `gpucloud` binary: the server (`serve`, `dev`), the tenant and operator CLI, and benchmarks.

mod access;
use gpucloud_bench as bench;
mod bill;
mod commands;
use gpucloud_gateway as gateway;
mod market;
mod monitor;
mod output;
mod profile;
mod servers;
mod sim;
mod ssh;
mod volumes;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// The server's hot paths (rows through sqlx, beats, plans) are many small allocations made on
// one thread and freed on another; glibc's malloc spent a quarter of a chaos run on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gpucloud", version, about = "A self-hostable GPU rental cloud", propagate_version = true)]
struct Cli {
    /// API server URL, or several replicas' separated by commas (default: the profile written by
    /// `gpucloud dev`).
    #[arg(long, global = true, env = "GPUCLOUD_URL")]
    url: Option<String>,
    /// API key (default: the profile's key).
    #[arg(long, global = true, env = "GPUCLOUD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// A named profile (written by `gpucloud dev --profile NAME`) instead of the default; with
    /// `dev`, the name its profile is saved under [default: dev, or the data directory's name].
    #[arg(long, global = true, env = "GPUCLOUD_PROFILE")]
    profile: Option<String>,
    /// CA certificates (PEM) an https:// server's certificate must chain to, instead of the
    /// system's trusted roots (a private CA).
    #[arg(long, global = true, env = "GPUCLOUD_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cloud: API server, SQLite store and a fake GPU fleet, no GPU or database needed.
    Dev(servers::DevArgs),
    /// Run the API server (SQLite or PostgreSQL).
    Serve(servers::ServeArgs),
    /// Run the node agent on a GPU host.
    Agent(servers::AgentArgs),
    /// Create and manage GPU instances.
    #[command(subcommand)]
    Instance(commands::InstanceCmd),
    /// Credentials for private container registries (stored encrypted).
    #[command(subcommand, name = "registry-auth")]
    RegistryAuth(commands::RegistryAuthCmd),
    /// Instance templates: image, command, environment, secrets and ports under a name.
    #[command(subcommand)]
    Template(commands::TemplateCmd),
    /// Volumes: storage that outlives instances (`instance create --volume NAME:/path`).
    #[command(subcommand)]
    Volume(volumes::VolumeCmd),
    /// The agent's SFTP helper: serves one file transfer session on stdin/stdout inside a
    /// workload's container (started by the agent's SSH server, not by hand).
    #[command(name = "agent-sftp", hide = true)]
    AgentSftp {
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        user: String,
    },
    /// Your SSH public keys: they open shells in your running instances (`instance ssh`).
    #[command(subcommand, name = "ssh-key")]
    SshKey(ssh::SshKeyCmd),
    /// Secrets for your workloads (stored encrypted; given to a workload with --secret or --env KEY=secret:NAME).
    #[command(subcommand)]
    Secret(commands::SecretCmd),
    /// The fleet: nodes and their GPUs (operator).
    #[command(subcommand)]
    Node(commands::NodeCmd),
    /// Tenants and API keys (operator).
    #[command(subcommand)]
    Tenant(commands::TenantCmd),
    /// Balance, usage and the ledger.
    #[command(subcommand)]
    Bill(bill::BillCmd),
    /// The price book and billing rules.
    #[command(subcommand)]
    Price(bill::PriceCmd),
    /// Free and total GPUs per region and model.
    Capacity,
    /// The GPU models on sale.
    Models,
    /// Who the current API key belongs to.
    Whoami,
    /// What to rent for a workload: GPU model, count, tier and estimated cost, with the reasoning.
    Recommend {
        /// inference-small, training-medium, training-large or rendering.
        #[arg(long)]
        workload: String,
        /// The model's parameters, e.g. 7B.
        #[arg(long, default_value = "1B")]
        model_params: String,
        /// How long it runs on an A100-40GB.
        #[arg(long, default_value_t = 1.0)]
        hours: f64,
    },
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Trace-driven simulations of the placement policies.
    #[command(subcommand)]
    Sim(sim::SimCmd),
    /// The spot market: prices and their history.
    #[command(subcommand)]
    Spot(market::SpotCmd),
    /// Managed jobs that survive preemption.
    #[command(subcommand)]
    Job(market::JobCmd),
    /// Clusters of identical members, resized as a training job grows and shrinks.
    #[command(subcommand)]
    Cluster(market::ClusterCmd),
    /// Warm pools: instances kept started, handed out in milliseconds.
    #[command(subcommand)]
    Pool(market::PoolCmd),
    /// Reserved capacity: sold by the operator, lent out as spot while idle.
    #[command(subcommand)]
    Reservation(market::ReservationCmd),
    /// Operator tools (simulate a preemption).
    #[command(subcommand)]
    Admin(market::AdminCmd),
    /// Inside a workload: its metadata, preemption notice and checkpoints.
    #[command(subcommand)]
    Metadata(market::MetadataCmd),
    /// GPU telemetry history, the fleet over time, alerts, idle policy, the pending queue.
    #[command(subcommand)]
    Monitor(monitor::MonitorCmd),
    /// Your tenant's API keys: members' admin or read-only keys, revocation.
    #[command(subcommand)]
    Key(access::KeyCmd),
    /// Your organization's projects (`--project` on create commands; project-scoped keys).
    #[command(subcommand)]
    Project(access::ProjectCmd),
    /// Projects' GPU quotas: limits per GPU model, use and headroom.
    #[command(subcommand)]
    Quota(access::QuotaCmd),
    /// An HTTP front for a service running in two places: health-checked, warm connections to
    /// both, requests to the first healthy one, safe requests retried on the other at once.
    /// Give the backends (--backend) or a replica set to follow (--cluster).
    Gateway(GatewayArgs),
    /// A trivial backend for `bench failover` (GET /health, anything else its name).
    #[command(hide = true)]
    GatewayEcho {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        name: String,
    },
    /// The audit log of mutating calls (operator).
    Audit {
        /// One tenant's calls (its id).
        #[arg(long)]
        tenant: Option<String>,
        /// How far back, in seconds.
        #[arg(long, default_value_t = 86_400)]
        since: i64,
        #[arg(long, default_value_t = 200)]
        limit: u32,
    },
}

/// `gpucloud instance list | head` closes our stdout early; `println!` then panics. A reader that
/// has seen enough is not an error worth a backtrace: exit as a process killed by SIGPIPE would
/// (128 + 13), quietly, as other command-line tools do.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let ctx = commands::Ctx {
        url: cli.url,
        api_key: cli.api_key,
        json: cli.json,
        profile: cli.profile,
        ca_file: cli.ca_file,
    };
    let result = match cli.command {
        Command::Dev(a) => servers::dev(a, ctx.profile.as_deref()),
        Command::Serve(a) => servers::serve(a),
        Command::Agent(a) => servers::agent(a),
        Command::Instance(c) => commands::instance(&ctx, c),
        Command::Monitor(c) => monitor::monitor(&ctx, c),
        Command::Key(c) => access::key(&ctx, c),
        Command::Project(c) => access::project(&ctx, c),
        Command::Quota(c) => access::quota(&ctx, c),
        Command::Secret(c) => commands::secret(&ctx, c),
        Command::Volume(c) => volumes::volume(&ctx, c),
        Command::SshKey(c) => ssh::ssh_key(&ctx, c),
        // Before any thread starts: entering a mount namespace needs a single-threaded process.
        Command::AgentSftp { pid, user } => gpucloud_agent::sftp::enter(pid, &user).and_then(|()| {
            gpucloud_agent::sftp::serve(&mut std::io::stdin().lock(), &mut std::io::stdout().lock())
                .map_err(|e| format!("sftp: {e}"))
        }),
        Command::Template(c) => commands::template(&ctx, c),
        Command::RegistryAuth(c) => commands::registry_auth(&ctx, c),
        Command::Gateway(a) => run_gateway(&ctx, a),
        Command::GatewayEcho { listen, name } => run_async(async move {
            let l = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("{listen}: {e}"))?;
            gateway::echo(l, name).await
        }),
        Command::Audit { tenant, since, limit } => access::audit(&ctx, tenant, since, limit),
        Command::Node(c) => commands::node(&ctx, c),
        Command::Tenant(c) => commands::tenant(&ctx, c),
        Command::Bill(c) => bill::bill(&ctx, c),
        Command::Price(c) => bill::price(&ctx, c),
        Command::Capacity => commands::capacity(&ctx),
        Command::Models => commands::models(&ctx),
        Command::Whoami => commands::whoami(&ctx),
        Command::Recommend { workload, model_params, hours } => {
            market::recommend(&ctx, &workload, &model_params, hours)
        }
        Command::Bench(c) => bench::run(c, ctx.json),
        Command::Sim(c) => sim::run(c, ctx.json),
        Command::Spot(c) => market::spot(&ctx, c),
        Command::Job(c) => market::job(&ctx, c),
        Command::Admin(c) => market::admin(&ctx, c),
        Command::Reservation(c) => market::reservation(&ctx, c),
        Command::Cluster(c) => market::cluster(&ctx, c),
        Command::Pool(c) => market::pool(&ctx, c),
        Command::Metadata(c) => market::metadata(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
struct GatewayArgs {
    #[arg(long, default_value = "127.0.0.1:9080")]
    listen: String,
    /// A backend URL; give it once per replica, in order of preference.
    #[arg(long = "backend", required_unless_present = "cluster", conflicts_with = "cluster")]
    backends: Vec<String>,
    /// Route to this cluster's running members (their endpoints: node address and
    /// GPUCLOUD_PORT), in rank order, following them as they come and go.
    #[arg(long)]
    cluster: Option<String>,
    /// How often to read the cluster's members.
    #[arg(long, default_value_t = 1000)]
    discover_interval_ms: u64,
    /// The path health checks GET (2xx is healthy).
    #[arg(long, default_value = "/v1/health")]
    health_path: String,
    #[arg(long, default_value_t = 5)]
    health_interval_ms: u64,
    /// A backend slower than this to answer a request is treated as down.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

fn run_async(f: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?.block_on(f)
}

fn run_gateway(ctx: &commands::Ctx, a: GatewayArgs) -> Result<(), String> {
    let GatewayArgs {
        listen,
        backends,
        cluster,
        discover_interval_ms,
        health_path,
        health_interval_ms,
        timeout_ms,
        tls_cert,
        tls_key,
    } = a;
    let follow = cluster.map(|c| (c, discover_interval_ms));
    let tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => Some(gpucloud_tls::acceptor(cert, key)?),
        _ => None,
    };
    if !(1..=60_000).contains(&health_interval_ms) {
        return Err("--health-interval-ms is 1 to 60000".into());
    }
    if follow.as_ref().is_some_and(|(_, ms)| !(50..=60_000).contains(ms)) {
        return Err("--discover-interval-ms is 50 to 60000".into());
    }
    let config = gateway::GatewayConfig {
        backends,
        health_path,
        health_interval: std::time::Duration::from_millis(health_interval_ms),
        request_timeout: std::time::Duration::from_millis(timeout_ms.max(1)),
        connect_timeout: std::time::Duration::from_millis(100),
        tls: gpucloud_client::tls::client_config(ctx.ca_file.as_deref())?,
    };
    let gw = gateway::Gateway::new(&config)?;
    let mut target = config.backends.join(", ");
    if let Some((name, every_ms)) = follow {
        // Read once before serving, so a wrong name or key is an error now, not a log line later.
        let client = ctx.client(commands::As::Tenant)?;
        let c: gpucloud_api::Cluster =
            client.get(&format!("/v1/clusters/{name}")).map_err(|e| format!("cluster {name}: {e}"))?;
        let urls = gateway::member_urls(&c);
        gw.set_backends(&urls, false);
        target = format!(
            "cluster {name} ({})",
            if urls.is_empty() { "no member serving yet".into() } else { urls.join(", ") }
        );
        gw.follow_cluster(client, name, std::time::Duration::from_millis(every_ms));
    }
    run_async(async move {
        let l = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("{listen}: {e}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("gateway on {scheme}://{} -> {target}", l.local_addr().map_err(|e| e.to_string())?);
        gateway::serve(gw, l, tls).await
    })
}
