//! Workloads as Docker containers (`gpucloud agent --runtime docker --image IMAGE`), through the
//! Engine API on the local socket (bollard): the runtime for any node shared by tenants. Each
//! workload gets a container of its own with
//! - its own network namespace on the `gpucloud` bridge, where containers cannot reach one
//!   another (inter-container traffic off) and only its `GPUCLOUD_PORT` is published on the host;
//!   `host_guard` keeps it from the host's own services except the metadata endpoint;
//! - a non-root user, no capabilities, `no-new-privileges`, a process limit, its own writable
//!   layer and `/tmp`, and CPU and memory limits from its share of the node's GPUs;
//! - only what gpucloud and the tenant set in its environment, nothing of the agent's;
//! - no host path but its own log file, bind-mounted in;
//! - on a node with real GPUs, its GPUs alone through the NVIDIA runtime's device request (the
//!   request is also written on the container as a label, which the fake backend's tests read).
//!
//! Containers carry labels naming their instance and the agent's state directory: that is how a
//! restarted agent finds its own.

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, DeviceRequest, HostConfig, NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions, ListImagesOptions,
    RemoveContainerOptions,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

const LABEL_INSTANCE: &str = "gpucloud.instance";
const LABEL_STATE: &str = "gpucloud.agent-state";
/// The GPU UUIDs the container was given (what its device request asks the NVIDIA runtime for).
pub const LABEL_GPUS: &str = "gpucloud.gpus";
/// Where the workload's log file is mounted inside its container.
const LOG_INSIDE: &str = "/var/log/gpucloud-output.log";
/// The Docker network workloads are attached to, and its bridge interface on the host.
pub const NETWORK: &str = "gpucloud";
pub const BRIDGE: &str = "gpucloud0";

/// How workload containers are confined; the agent's flags set it.
#[derive(Debug, Clone, PartialEq)]
pub struct Confinement {
    /// `UID:GID` the workload runs as (never root unless an operator says `0:0`).
    pub user: String,
    /// CPUs a whole GPU comes with (a slice gets its share).
    pub cpus_per_gpu: f64,
    /// Memory a whole GPU comes with, in MiB (a slice gets its share).
    pub memory_mib_per_gpu: u64,
    /// At most this many processes (and threads) in one container.
    pub pids: i64,
    /// The host address workload ports are published on.
    pub publish_ip: String,
}

impl Confinement {
    /// The node's CPUs and memory divided by its GPUs: a 1-GPU instance on a node with 8 GPUs,
    /// 64 cores and 512 GiB gets 8 cores and 64 GiB.
    pub fn share_of(host_cpus: usize, host_memory_mib: u64, gpus: usize) -> Confinement {
        let gpus = gpus.max(1);
        Confinement {
            user: "1000:1000".into(),
            cpus_per_gpu: host_cpus.max(1) as f64 / gpus as f64,
            memory_mib_per_gpu: host_memory_mib / gpus as u64,
            pids: 4096,
            publish_ip: "0.0.0.0".into(),
        }
    }

    /// (nano-CPUs, memory bytes) for a workload holding `milli_gpus` (1000 a whole GPU). At
    /// least a tenth of a CPU and 64 MiB, so a tiny slice can still start.
    pub fn limits(&self, milli_gpus: u32) -> (i64, i64) {
        let share = f64::from(milli_gpus) / 1000.0;
        let nano = (self.cpus_per_gpu * share * 1e9).round().max(1e8) as i64;
        let mib = (self.memory_mib_per_gpu as f64 * share).round().max(64.0) as i64;
        (nano, mib * 1024 * 1024)
    }
}

/// An operator's settings over [`Confinement::share_of`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub user: Option<String>,
    pub cpus_per_gpu: Option<f64>,
    pub memory_mib_per_gpu: Option<u64>,
}

impl Overrides {
    pub fn apply(&self, mut c: Confinement) -> Confinement {
        if let Some(u) = &self.user {
            c.user = u.clone();
        }
        if let Some(n) = self.cpus_per_gpu {
            c.cpus_per_gpu = n;
        }
        if let Some(m) = self.memory_mib_per_gpu {
            c.memory_mib_per_gpu = m;
        }
        c
    }
}

/// `UID:GID`, numbers (the image may know no names).
pub fn parse_user(s: &str) -> Result<String, String> {
    let bad = || format!("workload user '{s}' is UID:GID in numbers, e.g. 1000:1000");
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    u.parse::<u32>().map_err(|_| bad())?;
    g.parse::<u32>().map_err(|_| bad())?;
    Ok(s.to_string())
}

/// Where a workload's image stands on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    Ready,
    /// Being pulled (off the heartbeat loop): how far it got.
    Pulling(String),
    /// The pull failed: why, for the tenant.
    Failed(String),
}

#[derive(Debug, Clone)]
enum Pull {
    Running(String),
    Failed(String),
    /// Pulled for one workload (with its credentials): ready for it once.
    Done,
}

pub struct DockerLauncher {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    image: String,
    /// Pulls in progress or failed since last asked, by image (and workload, for a pull that
    /// must be made with that workload's own credentials).
    pulls: std::sync::Arc<std::sync::Mutex<HashMap<String, Pull>>>,
    /// Images first pulled with a tenant's credentials, one per line in this file: another
    /// workload using one must pull it again with its own (the registry decides), never take
    /// the copy on the node.
    private: std::sync::Arc<std::sync::Mutex<(Option<std::path::PathBuf>, std::collections::BTreeSet<String>)>>,
    /// Ask the NVIDIA container runtime for the workload's GPUs (a node with real GPUs).
    gpu_devices: bool,
    confinement: Confinement,
    /// The `gpucloud` network's gateway: the host as its containers reach it (the metadata
    /// endpoint listens there).
    gateway: IpAddr,
}

/// A started container.
#[derive(Debug, Clone)]
pub struct Launched {
    pub id: String,
    /// Its init's pid on the host.
    pub pid: i32,
    /// Its address on the `gpucloud` network: the only source its metadata token is good from.
    pub ip: Option<IpAddr>,
}

/// What became of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEnd {
    Running,
    /// Its main process's exit code (128 + N for a signal).
    Exited(i64),
    /// Removed behind the agent's back.
    Gone,
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

impl DockerLauncher {
    /// Connects to the engine (`DOCKER_HOST`, or the local socket), makes sure `image` is there
    /// (pulling it if not: a node that cannot run its image says so at start) and that the
    /// `gpucloud` network exists.
    pub fn connect(image: &str, gpu_devices: bool, confinement: Confinement) -> Result<DockerLauncher, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let docker = Docker::connect_with_defaults().map_err(|e| format!("docker: {e}"))?;
        let version = rt
            .block_on(docker.version())
            .map_err(|e| format!("docker: cannot reach the engine ({e}); is dockerd running?"))?;
        if rt.block_on(docker.inspect_image(image)).is_err() {
            tracing::info!(image, "pulling image");
            let pull = docker.create_image(
                Some(CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() }),
                None,
                None,
            );
            let pulled: Result<Vec<_>, _> = rt.block_on(futures_util::TryStreamExt::try_collect(pull));
            pulled.map_err(|e| format!("docker: image {image} is not on this node and cannot be pulled: {e}"))?;
        }
        let gateway = rt.block_on(ensure_network(&docker))?;
        tracing::info!(
            engine = version.version.as_deref().unwrap_or("?"),
            image,
            gpu_devices,
            %gateway,
            user = %confinement.user,
            cpus_per_gpu = confinement.cpus_per_gpu,
            memory_mib_per_gpu = confinement.memory_mib_per_gpu,
            "runtime: docker (a container per workload: own network, non-root, limits)"
        );
        Ok(DockerLauncher {
            rt,
            docker,
            image: image.to_string(),
            pulls: Default::default(),
            private: Default::default(),
            gpu_devices,
            confinement,
            gateway,
        })
    }

    /// The node's own image: what a workload that names none runs in.
    /// The user workloads run as, `UID:GID`.
    pub fn user(&self) -> &str {
        &self.confinement.user
    }

    pub fn default_image(&self) -> &str {
        &self.image
    }

    /// Where the images pulled with credentials are listed (the runtime's state directory),
    /// and those listed there already.
    pub fn keep_private_images_in(&self, path: std::path::PathBuf) {
        let listed = std::fs::read_to_string(&path).unwrap_or_default();
        let mut private = self.private.lock().unwrap_or_else(|e| e.into_inner());
        private.1.extend(listed.lines().filter(|l| !l.is_empty()).map(str::to_string));
        private.0 = Some(path);
    }

    /// Whether `image` is ready for workload `instance`; if not, starts pulling it on a thread
    /// of its own (once) and says how far it got. A failure is said once: asking again pulls
    /// again. With credentials, or for an image first pulled with someone's, the pull is made
    /// for this workload whatever the node holds, so a private image reaches only workloads
    /// whose credentials the registry accepts.
    pub fn image_state(
        &self,
        image: &str,
        instance: &str,
        auth: Option<&gpucloud_api::AgentRegistryAuth>,
    ) -> ImageState {
        let private = self.private.lock().unwrap_or_else(|e| e.into_inner()).1.contains(image);
        let own_pull = auth.is_some() || private;
        let key = if own_pull { format!("{image}\0{instance}") } else { image.to_string() };
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        match pulls.get(&key).cloned() {
            Some(Pull::Running(p)) => return ImageState::Pulling(p),
            Some(Pull::Failed(why)) => {
                pulls.remove(&key);
                return ImageState::Failed(why);
            }
            Some(Pull::Done) => {
                pulls.remove(&key);
                return ImageState::Ready;
            }
            None => {}
        }
        if !own_pull && self.rt.block_on(self.docker.inspect_image(image)).is_ok() {
            return ImageState::Ready;
        }
        let first = format!("pulling image {image}");
        pulls.insert(key.clone(), Pull::Running(first.clone()));
        let (shared, docker, wanted) = (self.pulls.clone(), self.docker.clone(), image.to_string());
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(gpucloud_model::workload::image_registry(image).to_string()),
            ..Default::default()
        });
        let remember = auth.is_some().then(|| self.private.clone());
        let spawned = std::thread::Builder::new().name("image-pull".into()).spawn(move || {
            let image = wanted;
            let outcome = pull(&docker, &image, credentials, |progress| {
                shared.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), Pull::Running(progress));
            });
            let mut pulls = shared.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(()) => {
                    tracing::info!(%image, private = own_pull, "image pulled");
                    if let Some(private) = remember {
                        let mut private = private.lock().unwrap_or_else(|e| e.into_inner());
                        if private.1.insert(image.clone())
                            && let Some(path) = &private.0
                        {
                            let list: String = private.1.iter().map(|i| format!("{i}\n")).collect();
                            if let Err(e) = std::fs::write(path, list) {
                                tracing::warn!(error = %e, "cannot record a private image");
                            }
                        }
                    }
                    if own_pull {
                        pulls.insert(key, Pull::Done);
                    } else {
                        pulls.remove(&key);
                    }
                }
                Err(why) => {
                    tracing::warn!(%image, %why, "image pull failed");
                    pulls.insert(key, Pull::Failed(why));
                }
            }
        });
        if let Err(e) = spawned {
            pulls.remove(&format!("{image}\0{instance}"));
            pulls.remove(image);
            return ImageState::Failed(format!("cannot pull image {image}: {e}"));
        }
        ImageState::Pulling(first)
    }

    /// The host's address on the workloads' network.
    /// The public images the engine holds, by every name a workload may ask for them by
    /// (`ubuntu:latest` is also `ubuntu`), sorted. Private images are left out: they are pulled
    /// again for each workload, so holding one saves nothing, and their names are a tenant's.
    pub fn images(&self) -> Result<Vec<String>, String> {
        let listed = self
            .rt
            .block_on(self.docker.list_images(Some(ListImagesOptions::default())))
            .map_err(|e| format!("docker: {e}"))?;
        let private = self.private.lock().unwrap_or_else(|e| e.into_inner()).1.clone();
        let mut names: Vec<String> = listed
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t != "<none>:<none>" && !private.contains(t))
            .flat_map(|t| {
                let bare = t.strip_suffix(":latest").map(str::to_string);
                std::iter::once(t).chain(bare)
            })
            .filter(|t| gpucloud_model::workload::check_image(t).is_ok())
            .collect();
        names.sort();
        names.dedup();
        names.truncate(512);
        Ok(names)
    }

    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// Creates and starts the workload's container, its `port` published on the host.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        image: &str,
        tcp_ports: &[(u16, u16)],
        mounts: &[(std::path::PathBuf, String)],
        instance: &str,
        command: &str,
        env: &[(String, String)],
        gpu_uuids: &[String],
        milli_gpus: u32,
        port: Option<u16>,
        log: &Path,
        state_dir: &Path,
    ) -> Result<Launched, String> {
        // The file must exist before it is mounted, or the engine makes a directory of it; the
        // workload's user must be able to write it, and nobody else on the host to read it.
        std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
        crate::runtime::private_file(log);
        if let Some((uid, gid)) = self.confinement.user.split_once(':') {
            let (uid, gid) = (uid.parse().ok(), gid.parse().ok());
            if let Err(e) = std::os::unix::fs::chown(log, uid, gid) {
                tracing::debug!(error = %e, "cannot give the log file to the workload's user (agent not root)");
            }
        }
        let mut labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_STATE.to_string(), state_dir.display().to_string()),
            (LABEL_GPUS.to_string(), gpu_uuids.join(",")),
        ]);
        labels.retain(|_, v| !v.is_empty());
        let devices = (self.gpu_devices && !gpu_uuids.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(gpu_uuids.to_vec()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        });
        let (nano_cpus, memory) = self.confinement.limits(milli_gpus);
        let mut vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !env.iter().any(|(k, _)| k == "HOME") {
            // The workload's user has no home in most images; /tmp is its own and writable.
            vars.push("HOME=/tmp".into());
        }
        // GPUCLOUD_PORT on the same number, raw TCP ports on the host ports picked for them.
        let published: Vec<(u16, u16)> = port.map(|p| (p, p)).into_iter().chain(tcp_ports.iter().copied()).collect();
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = published
            .iter()
            .map(|(inside, host)| {
                (
                    format!("{inside}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some(self.confinement.publish_ip.clone()),
                        host_port: Some(host.to_string()),
                    }]),
                )
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), format!("exec >>{LOG_INSIDE} 2>&1\n{command}")]),
            env: Some(vars),
            labels: Some(labels),
            user: Some(self.confinement.user.clone()),
            exposed_ports: (!bindings.is_empty()).then(|| bindings.keys().cloned().collect()),
            host_config: Some(HostConfig {
                network_mode: Some(NETWORK.into()),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                binds: Some(
                    std::iter::once(format!("{}:{LOG_INSIDE}", log.display()))
                        .chain(mounts.iter().map(|(host, inside)| format!("{}:{inside}:rw", host.display())))
                        .collect(),
                ),
                // An init as PID 1 passes SIGTERM on to the workload (PID 1 itself ignores it).
                init: Some(true),
                device_requests: devices,
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                tmpfs: Some(HashMap::from([("/tmp".into(), "rw,nosuid,nodev,mode=1777".into())])),
                pids_limit: Some(self.confinement.pids),
                nano_cpus: Some(nano_cpus),
                memory: Some(memory),
                // No swap beyond the memory limit: the limit is the limit.
                memory_swap: Some(memory),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("gpucloud-{instance}-{:08x}", rand::random::<u32>());
        let created = self
            .rt
            .block_on(
                self.docker
                    .create_container(Some(CreateContainerOptions { name: Some(name), ..Default::default() }), body),
            )
            .map_err(|e| format!("creating the container: {e}"))?;
        if let Err(e) = self.rt.block_on(self.docker.start_container(&created.id, None)) {
            self.remove(&created.id);
            return Err(format!("starting the container: {e}"));
        }
        let (pid, ip) = self.inspect(&created.id);
        Ok(Launched { id: created.id, pid, ip })
    }

    /// A container's init pid on the host and its address on the workloads' network.
    pub fn inspect(&self, container: &str) -> (i32, Option<IpAddr>) {
        let Ok(c) = self.rt.block_on(self.docker.inspect_container(container, None)) else { return (0, None) };
        let pid = c.state.and_then(|s| s.pid).unwrap_or(0) as i32;
        let ip = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(NETWORK))
            .and_then(|e| e.ip_address)
            .and_then(|a| a.parse().ok());
        (pid, ip)
    }

    pub fn state(&self, container: &str) -> ContainerEnd {
        match self.rt.block_on(self.docker.inspect_container(container, None)) {
            Ok(c) => {
                let s = c.state.unwrap_or_default();
                let ended = matches!(s.status, Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD));
                if ended { ContainerEnd::Exited(s.exit_code.unwrap_or(-1)) } else { ContainerEnd::Running }
            }
            Err(e) if not_found(&e) => ContainerEnd::Gone,
            Err(e) => {
                // The engine is down or busy: say nothing changed rather than end a workload.
                tracing::warn!(container, error = %e, "cannot inspect container");
                ContainerEnd::Running
            }
        }
    }

    /// Sends `signal` (SIGTERM, SIGKILL) to the container's init, which passes it on.
    pub fn signal(&self, container: &str, signal: &str) {
        let options = KillContainerOptions { signal: signal.to_string() };
        if let Err(e) = self.rt.block_on(self.docker.kill_container(container, Some(options))) {
            // 409: it is not running any more, which is what was wanted.
            tracing::debug!(container, signal, error = %e, "kill");
        }
    }

    pub fn remove(&self, container: &str) {
        let options = RemoveContainerOptions { force: true, ..Default::default() };
        if let Err(e) = self.rt.block_on(self.docker.remove_container(container, Some(options)))
            && !not_found(&e)
        {
            tracing::warn!(container, error = %e, "cannot remove container");
        }
    }

    /// The containers an agent with this state directory made, as (instance id, container id),
    /// newest first.
    pub fn own(&self, state_dir: &Path) -> Result<Vec<(String, String)>, String> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_STATE}={}", state_dir.display())])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let list = self.rt.block_on(self.docker.list_containers(Some(options))).map_err(|e| format!("docker: {e}"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.labels.and_then(|mut l| l.remove(LABEL_INSTANCE))?, c.id?)))
            .collect())
    }
}

/// Pulls `image`, telling `progress` how far it got ("pulling image X: 45% of 260 MB"), and
/// says why in words a tenant can act on when it cannot.
fn pull(
    docker: &Docker,
    image: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
    mut progress: impl FnMut(String),
) -> Result<(), String> {
    use futures_util::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut stream = docker.create_image(
            Some(CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() }),
            None,
            credentials,
        );
        // Per layer: (bytes done, bytes in all), from the engine's progress messages.
        let mut layers: HashMap<String, (i64, i64)> = HashMap::new();
        let mut last = std::time::Instant::now() - std::time::Duration::from_secs(1);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| pull_failure(image, &e.to_string()))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(pull_failure(image, &e));
            }
            if let (Some(id), Some(detail)) = (info.id, info.progress_detail)
                && let (Some(cur), Some(total)) = (detail.current, detail.total)
                && total > 0
            {
                layers.insert(id, (cur.min(total), total));
            }
            if last.elapsed() >= std::time::Duration::from_millis(500) && !layers.is_empty() {
                let (done, all) = layers.values().fold((0i64, 0i64), |(d, a), (c, t)| (d + c, a + t));
                let percent = if all > 0 { done * 100 / all } else { 0 };
                progress(format!("pulling image {image}: {percent}% of {} MB", all / 1_000_000));
                last = std::time::Instant::now();
            }
        }
        Ok(())
    })
}

fn pull_failure(image: &str, engine: &str) -> String {
    let e = engine.to_ascii_lowercase();
    let registry = gpucloud_model::workload::image_registry(image);
    if e.contains("unauthorized") || e.contains("denied") || e.contains("authentication required") {
        format!("registry {registry} refused image {image}: it does not exist or needs credentials ({engine})")
    } else if e.contains("not found") || e.contains("manifest unknown") || e.contains("does not exist") {
        format!("image {image} was not found in registry {registry} ({engine})")
    } else {
        format!("cannot pull image {image} from registry {registry}: {engine}")
    }
}

/// The `gpucloud` bridge network (created once per host, inter-container traffic off) and its
/// gateway address.
async fn ensure_network(docker: &Docker) -> Result<IpAddr, String> {
    let inspect = |docker: &Docker| {
        let docker = docker.clone();
        async move { docker.inspect_network(NETWORK, None).await }
    };
    let network = match inspect(docker).await {
        Ok(n) => n,
        Err(e) if not_found(&e) => {
            let options = HashMap::from([
                ("com.docker.network.bridge.enable_icc".to_string(), "false".to_string()),
                ("com.docker.network.bridge.name".to_string(), BRIDGE.to_string()),
            ]);
            let request = NetworkCreateRequest {
                name: NETWORK.into(),
                driver: Some("bridge".into()),
                options: Some(options),
                ..Default::default()
            };
            if let Err(e) = docker.create_network(request).await {
                // Another agent on this host may have made it meanwhile: look again.
                tracing::debug!(error = %e, "creating the workload network");
            }
            inspect(docker).await.map_err(|e| format!("docker: the {NETWORK} network: {e}"))?
        }
        Err(e) => return Err(format!("docker: the {NETWORK} network: {e}")),
    };
    if network.options.as_ref().and_then(|o| o.get("com.docker.network.bridge.enable_icc")).map(String::as_str)
        != Some("false")
    {
        return Err(format!(
            "docker: the {NETWORK} network lets containers reach one another; remove it (docker network rm \
             {NETWORK}) and the agent makes it anew"
        ));
    }
    network
        .ipam
        .and_then(|i| i.config)
        .into_iter()
        .flatten()
        .find_map(|c| c.gateway?.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
        .ok_or_else(|| format!("docker: the {NETWORK} network has no IPv4 gateway"))
}

/// Keeps workload containers off the host's own services (the server or anything else listening
/// on the node, other workloads' published ports through the host, the Docker API if it
/// listens on TCP): traffic from the workloads' bridge to the host is dropped, except replies
/// and the metadata endpoint. Needs root and `iptables`; without them the agent says what is
/// left open rather than failing.
pub fn host_guard(metadata_port: u16) {
    let chain = "GPUCLOUD-WORKLOADS";
    let ipt = |args: &[&str]| {
        std::process::Command::new("iptables")
            .args(["-w", "5"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
    };
    // A fresh chain each start: the metadata port may have changed.
    let _ = ipt(&["-N", chain]);
    let port = metadata_port.to_string();
    let steps: [&[&str]; 5] = [
        &["-F", chain],
        &["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        &["-A", chain, "-p", "tcp", "--dport", &port, "-j", "ACCEPT"],
        &["-A", chain, "-j", "DROP"],
        &["-C", "INPUT", "-i", BRIDGE, "-j", chain],
    ];
    for (i, step) in steps.iter().enumerate() {
        match ipt(step) {
            Ok(out) if out.status.success() => {}
            // The jump into the chain is not there yet: add it first in INPUT.
            Ok(_) if i == 4 => {
                if let Ok(out) = ipt(&["-I", "INPUT", "1", "-i", BRIDGE, "-j", chain])
                    && out.status.success()
                {
                    continue;
                }
                return warn_open("cannot add the INPUT rule");
            }
            Ok(out) => return warn_open(String::from_utf8_lossy(&out.stderr).trim()),
            Err(e) => return warn_open(&e.to_string()),
        }
    }
    tracing::info!(
        bridge = BRIDGE,
        metadata_port,
        "workloads cannot reach this host's services but the metadata endpoint"
    );
}

fn warn_open(why: &str) {
    tracing::warn!(
        why,
        "iptables unavailable: workload containers can reach services listening on this host (run the agent as root with iptables)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_gets_its_gpus_share_of_the_node() {
        // 8 GPUs, 64 cores, 512 GiB: one GPU comes with 8 cores and 64 GiB.
        let c = Confinement::share_of(64, 512 * 1024, 8);
        assert_eq!(c.limits(1000), (8_000_000_000, 64 << 30));
        assert_eq!(c.limits(2000), (16_000_000_000, 128 << 30));
        // A quarter slice: 2 cores and 16 GiB.
        assert_eq!(c.limits(250), (2_000_000_000, 16 << 30));
        // Never less than a tenth of a CPU and 64 MiB.
        assert_eq!(Confinement::share_of(1, 100, 8).limits(10), (100_000_000, 64 << 20));
        let o = Overrides { user: Some("2000:2000".into()), cpus_per_gpu: Some(4.0), memory_mib_per_gpu: None };
        let c = o.apply(c);
        assert_eq!((c.user.as_str(), c.limits(1000).0), ("2000:2000", 4_000_000_000));
        assert!(parse_user("1000:1000").is_ok());
        for bad in ["root", "1000", "a:b", ":1"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }
}
