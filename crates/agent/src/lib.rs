//! The node agent. It discovers the host's GPUs (a fake backend for machines without one), registers
//! the node, and every heartbeat reports what runs and gets back what should: starting what is
//! wanted, stopping what is not (SIGTERM, then SIGKILL after a grace period), shipping output. It
//! keeps the workloads it started in a state file, so a restarted agent adopts them instead of
//! starting them twice or leaving them orphaned.

pub mod docker;
pub use gpucloud_node::gpu;
pub use gpucloud_node::ingress;
pub mod metadata;
pub mod nvml;
pub mod runtime;
pub mod sftp;
pub mod ssh;
pub mod sys;
pub mod volumes;

use gpu::GpuBackend;
use gpucloud_api::{AgentGpu, AgentHeartbeat, Desired, RegisterAgentRequest};
use gpucloud_client::agent_api::{AgentClient as Client, Fenced};
use gpucloud_client::tls;
pub use gpucloud_node::runtime::{FakeRuntime, Reconciler, Runtime};
use runtime::ProcessRuntime;
use std::path::PathBuf;
use std::time::Duration;

pub struct Config {
    pub server: String,
    pub token: String,
    pub name: String,
    pub region: gpucloud_model::Region,
    pub state_dir: PathBuf,
    /// Overrides the interval the server asks for.
    pub interval: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Loopback port of the metadata endpoint (0: any free port).
    pub metadata_port: u16,
    /// Where the server's proxy reaches workloads' HTTP ports (0: any free port).
    pub ingress_port: u16,
    /// Where renters' SSH clients reach their containers (0: any free port). Served only with
    /// the container runtime.
    pub ssh_port: u16,
    /// Where other nodes reach this one (a cluster's MASTER_ADDR); the node name when `None`.
    pub address: Option<String>,
    /// Where workloads' GPUCLOUD_PORT comes from; any free port when `None`.
    pub ports: Option<std::ops::RangeInclusive<u16>>,
    /// Most of a workload's output the node keeps waiting to be shipped, in MiB.
    pub log_keep_mib: u64,
    /// How workloads run: processes, containers, or nothing at all (fake).
    pub runtime: RuntimeChoice,
    /// What the operator changed of how containers are confined (by default: user 1000:1000,
    /// each GPU with its share of this host's CPUs and memory).
    pub confine: docker::Overrides,
    /// What the node is registered with besides its region.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The CA certificates (PEM) a server's certificate must chain to instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Lets the agent call a server on another host over plain HTTP (its key in clear).
    pub allow_plain_http: bool,
}

/// How an agent runs workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Each a process group on the host: no isolation between tenants.
    Process,
    /// Each a confined container of its image, or of this one when it names none.
    Docker { image: String },
    /// Nothing runs: a workload "runs" until it is stopped (dev fleets, control-plane load tests).
    Fake,
}

/// Runs until the node is taken over by another agent (fenced), registration fails, or
/// `shutdown` is set (then its workloads are stopped: SIGTERM, SIGKILL after the grace period).
pub fn run(config: Config, gpus: &mut dyn GpuBackend, shutdown: &std::sync::atomic::AtomicBool) -> Result<(), String> {
    let found = gpus.discover()?;
    tracing::info!(backend = gpus.name(), gpus = found.len(), "GPUs discovered");
    for server in config.server.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        tls::check_server_url(server, config.allow_plain_http)?;
    }
    let tls = tls::client_config(config.ca_file.as_deref())?;
    let client = Client::new(&config.server, &config.token, tls.clone());
    // Real GPUs go to a container through the NVIDIA runtime; fake ones exist only as names.
    let docker = match &config.runtime {
        RuntimeChoice::Docker { image } => {
            let confinement =
                config.confine.apply(docker::Confinement::share_of(host_cpus(), host_memory_mib(), found.len()));
            Some(docker::DockerLauncher::connect(image, gpus.name() != "fake", confinement)?)
        }
        RuntimeChoice::Process => {
            tracing::warn!("runtime: process (no isolation between tenants): use --runtime docker on a shared node");
            None
        }
        RuntimeChoice::Fake => {
            tracing::warn!("runtime: fake (workloads are accepted and reported running, but nothing runs)");
            None
        }
    };
    let metadata = open_metadata(&config, docker.as_ref().map(|d| d.gateway()))?;
    // Workloads call the API through their metadata endpoint, as this agent (first server listed).
    metadata.set_api(config.server.split(',').next().unwrap_or_default().trim(), &config.token, tls);
    if docker.is_some() {
        docker::host_guard(metadata.container_port());
    }
    let mut runtime: Box<dyn Runtime> = match config.runtime {
        RuntimeChoice::Fake => Box::new(FakeRuntime::new()),
        _ => Box::new(
            ProcessRuntime::open_with(&config.state_dir, config.stop_grace, docker)?
                .with_ports(config.ports.clone())
                .with_log_keep(config.log_keep_mib << 20),
        ),
    };
    let ingress = ingress::Ingress::start(config.ingress_port)?;
    let ssh = match runtime.container_user() {
        Some(user) => Some(ssh::SshServer::start(config.ssh_port, &config.state_dir, &user)?),
        None => None,
    };
    let request = RegisterAgentRequest {
        name: config.name.clone(),
        region: config.region.clone(),
        gpus: found.iter().map(|g| AgentGpu { index: g.index, model: g.model, uuid: g.uuid.clone() }).collect(),
        address: config.address.clone(),
        labels: config.labels.clone(),
        runtime: Some(runtime.kind()),
        ingress_port: Some(ingress.port()),
        ssh_port: ssh.as_ref().map(|s| s.port()),
        ssh_host_key: ssh.as_ref().map(|s| s.host_key().to_string()),
    };
    let reg = client.register(&request)?;
    if let Some(secret) = &reg.ingress_secret {
        ingress.set_secret(secret);
    }
    let interval = config.interval.unwrap_or(Duration::from_millis(reg.heartbeat_interval_ms.max(100)));
    // Cut off from every server for this long, the workloads here are stopped: by then the
    // server may run them elsewhere. A server that does not say gets 10 s grace + 30 s.
    let stop_after = Duration::from_millis(reg.stop_after_ms.unwrap_or(40_000));
    // When the last beat that got an answer was sent (it reached the server no later).
    let mut last_answered = std::time::Instant::now();
    // Workloads this agent stopped because no server answered, until that is reported.
    let mut fenced: std::collections::BTreeSet<String> = Default::default();
    let mut cut_off = false;
    tracing::info!(node = %reg.node_id, epoch = reg.epoch, adopted = runtime.len(), "registered");
    let mut last_reading = std::time::Instant::now();
    let mut reconciler = Reconciler::default();
    // Deleted volumes whose data this node removed, said on the next beat.
    let mut purged_volumes: Vec<String> = Vec::new();
    // The images the server last heard of, and when the engine was last asked: sent when they
    // change (a pull, a cleanup), read at most every 30 s.
    let mut images_told: Option<Vec<String>> = None;
    let mut images_read: Option<std::time::Instant> = None;
    // Beats are numbered within this registration: one held up on the way and arriving after a
    // newer one is refused, rather than read as the node's current state.
    let mut beat_seq: i64 = 0;
    loop {
        if shutdown.load(std::sync::atomic::Ordering::SeqCst) {
            runtime.stop_all_gracefully();
            return Ok(());
        }
        let mut instances = reconciler.report(runtime.as_mut());
        ingress.set_targets(runtime.http_targets());
        if let Some(dir) = runtime.dir().map(std::path::Path::to_path_buf) {
            runtime.enforce(&mut |id, pgid| gpus.workload_memory_mib(id, pgid, &dir));
        }
        runtime.bound_logs();
        for (instance, seq, data, file_bytes) in runtime.pending_logs() {
            match client.logs(&reg.node_id, reg.epoch, &instance, seq, &data) {
                Ok(()) => runtime.logs_shipped(&instance, seq, file_bytes),
                Err(e) => tracing::warn!(%instance, error = %e, "shipping logs failed"),
            }
        }
        let readings = gpus.telemetry(&runtime.gpu_load(), last_reading.elapsed());
        last_reading = std::time::Instant::now();
        for r in &mut instances {
            r.checkpoint = metadata.checkpoint(&r.id);
            if fenced.contains(&r.id) && r.reason.is_none() {
                r.reason = Some(format!(
                    "stopped by its node's agent: no control-plane server answered for {} s",
                    stop_after.as_secs()
                ));
            }
        }
        let metrics = metadata.drain_metrics();
        let mut images = None;
        if images_read.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            images_read = Some(std::time::Instant::now());
            images = runtime.images().filter(|now| images_told.as_ref() != Some(now));
        }
        beat_seq += 1;
        let beat = AgentHeartbeat {
            images: images.clone(),
            node_id: reg.node_id.clone(),
            epoch: reg.epoch,
            seq: Some(beat_seq),
            instances,
            gpus: readings,
            metrics,
            purged_volumes: std::mem::take(&mut purged_volumes),
        };
        let sent = std::time::Instant::now();
        match client.heartbeat(&beat) {
            Ok(desired) => {
                last_answered = sent;
                if images.is_some() {
                    images_told = images;
                }
                if cut_off {
                    tracing::warn!("a server answers again");
                    cut_off = false;
                }
                let meta = |w: &gpucloud_api::AgentWorkload| metadata::InstanceMetadata {
                    instance_id: w.id.clone(),
                    node_id: reg.node_id.clone(),
                    gpus: w
                        .gpus
                        .iter()
                        .zip(&w.gpu_uuids)
                        .map(|(i, u)| metadata::GpuRef { index: *i, uuid: u.clone() })
                        .collect(),
                    events: Vec::new(),
                    preemption: w.notice.as_ref().map(|n| metadata::Notice {
                        deadline: n.deadline.clone(),
                        deadline_ms: n.deadline_ms,
                        reason: n.reason.clone(),
                    }),
                    checkpoint: None,
                    cluster: w.cluster.clone(),
                };
                // A workload starts with its metadata endpoint published, and the backend's
                // environment (a container gets only what is built for it).
                let mut start = |runtime: &mut dyn Runtime, w: &gpucloud_api::AgentWorkload| {
                    let peer = if runtime.containers() { metadata::Peer::Pending } else { metadata::Peer::Any };
                    let (url, token) = metadata.publish(meta(w), None, peer);
                    let env = runtime.dir().map(|dir| gpus.workload_env(&w.id, dir)).unwrap_or_default();
                    runtime.start(w, &url, &token, &env);
                    metadata.restrict(&w.id, runtime.metadata_peer(&w.id));
                };
                let applied = reconciler.apply(runtime.as_mut(), &beat.instances, &desired.instances, &mut start);
                for id in applied.forgotten {
                    fenced.remove(&id);
                    metadata.withdraw(&id);
                }
                purged_volumes = runtime.purge_volumes(&desired.purge_volumes);
                if let Some(ssh) = &ssh {
                    let containers = runtime.running_containers();
                    let targets = desired
                        .instances
                        .iter()
                        .filter(|w| w.desired == Desired::Run && !w.ssh_keys.is_empty())
                        .filter_map(|w| {
                            let (container, pid) = containers.get(&w.id)?.clone();
                            Some((w.id.clone(), ssh::Target { container, pid, keys: w.ssh_keys.clone() }))
                        })
                        .collect();
                    ssh.set_targets(targets);
                }
                for w in desired.instances.iter().filter(|w| w.desired == Desired::Run) {
                    metadata.set_notice(&w.id, meta(w).preemption);
                    metadata.set_cluster(&w.id, w.cluster.clone());
                }
                // Workloads adopted after a restart get their metadata back under their old token.
                for w in desired.instances.iter().filter(|w| w.desired == Desired::Run && !metadata.is_published(&w.id))
                {
                    if let Some(token) = runtime.metadata_token(&w.id) {
                        metadata.publish(meta(w), Some(token), runtime.metadata_peer(&w.id));
                    }
                }
            }
            Err(gpucloud_client::agent_api::Error::Fenced(Fenced(msg))) => {
                // Another agent registered this node: what runs here is no longer ours to run.
                runtime.stop_all_now();
                return Err(format!("fenced off: {msg}"));
            }
            Err(e) => {
                metadata.requeue_metrics(beat.metrics);
                purged_volumes = beat.purged_volumes;
                tracing::warn!(error = %e, "heartbeat failed; retrying");
                // Self-fencing: stop in time for everything to be gone by `stop_after`.
                let silent = last_answered.elapsed();
                if !cut_off && silent + config.stop_grace >= stop_after {
                    cut_off = true;
                    let alive: Vec<String> = runtime.actual().into_iter().filter(|a| a.alive).map(|a| a.id).collect();
                    tracing::error!(
                        silent_s = silent.as_secs(),
                        workloads = alive.len(),
                        "no server has answered for too long: stopping this node's workloads, which the cloud may now run elsewhere"
                    );
                    runtime.stop_all_gracefully();
                    fenced.extend(alive);
                }
            }
        }
        std::thread::sleep(interval);
    }
}

/// The metadata endpoint. With no port set (any free one), the port of the previous run is
/// tried first and the one taken is kept in the state directory: workloads adopted after a
/// restart know their endpoint by the URL they were started with.
fn open_metadata(config: &Config, containers: Option<std::net::IpAddr>) -> Result<metadata::MetadataServer, String> {
    if config.metadata_port != 0 {
        return metadata::MetadataServer::start_on(config.metadata_port, containers);
    }
    let kept = config.state_dir.join("metadata.port");
    let before: Option<u16> = std::fs::read_to_string(&kept).ok().and_then(|p| p.trim().parse().ok());
    let server = match before.map(|p| metadata::MetadataServer::start_on(p, containers)) {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the metadata port of the previous run is taken: adopted workloads lose their endpoint");
            metadata::MetadataServer::start_on(0, containers)?
        }
        None => metadata::MetadataServer::start_on(0, containers)?,
    };
    std::fs::create_dir_all(&config.state_dir).map_err(|e| format!("{}: {e}", config.state_dir.display()))?;
    std::fs::write(&kept, server.port().to_string()).map_err(|e| format!("{}: {e}", kept.display()))?;
    Ok(server)
}

/// CPUs this host has (what containers' limits are shares of).
fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// This host's memory in MiB, from /proc/meminfo (1 GiB if unreadable).
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        })
        .map_or(1024, |kib: u64| kib / 1024)
}
