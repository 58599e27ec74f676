//! The process and Docker runtimes (`gpucloud_node::runtime::Runtime`). Each workload runs
//! `sh -c COMMAND` in its own process group with its GPUs in the environment, output appended
//! to a log file. What runs is written to `state.json`, so a
//! restarted agent adopts live processes rather than starting them again. With a Docker
//! launcher (`crate::docker`) each workload is a container instead; logs, ports, reports and
//! adoption stay the same.

use gpucloud_api::{AgentInstanceReport, AgentWorkload, WorkloadState};
use gpucloud_node::runtime::{Actual, Peer, Runtime};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Largest piece of output shipped per workload per beat (the server takes 1 MiB a call: even
/// escaped six-fold as JSON this fits).
const LOG_CHUNK: u64 = 64 * 1024;
/// How much of a workload's output a node keeps waiting to be shipped, by default.
pub const DEFAULT_LOG_KEEP: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    /// Killed by a signal: ours (a requested stop) or someone else's.
    Signal(i32),
    /// An adopted process ended; its status went to its new parent.
    Unknown,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Saved {
    pid: i32,
    /// GPU indices the workload was given.
    #[serde(default)]
    gpus: Vec<u32>,
    log: PathBuf,
    log_offset: u64,
    next_seq: i64,
    /// The log file's head up to here (shipped) has been given back to the file system.
    #[serde(default)]
    log_released: u64,
    /// Output dropped unshipped since it was last said so in the log.
    #[serde(default)]
    log_dropped: u64,
    /// The metadata token in the workload's GPUCLOUD_METADATA_URL.
    #[serde(default)]
    metadata_token: Option<String>,
    /// A slice's GPU memory cap, enforced by [`ProcessRuntime::enforce`].
    #[serde(default)]
    memory_cap_mib: Option<u64>,
    /// Why the agent ended it itself (over its memory cap); reported with its end.
    #[serde(default)]
    ended_for: Option<String>,
    /// The port it was given to serve on (GPUCLOUD_PORT).
    #[serde(default)]
    port: Option<u16>,
    /// Its container, when it runs in one (then `pid` is the container's init on the host).
    #[serde(default)]
    container: Option<String>,
    /// The container's address on the workloads' network (its metadata token is good from there).
    #[serde(default)]
    ip: Option<std::net::IpAddr>,
    /// Its exposed ports: (port inside, port on the host) for raw TCP, (port, 0) for HTTP
    /// (reached through the agent's ingress, never published).
    #[serde(default)]
    published: Vec<(u16, u16)>,
    /// The volume mounted into it, unmounted once no workload here uses it.
    #[serde(default)]
    volume: Option<String>,
}

impl Saved {
    /// A workload's record before anything is known of it but where its output goes: no
    /// process yet, nothing shipped, the next chunk the first.
    fn new(log: PathBuf) -> Saved {
        Saved {
            pid: 0,
            gpus: Vec::new(),
            log,
            log_offset: 0,
            log_released: 0,
            log_dropped: 0,
            next_seq: 1,
            metadata_token: None,
            memory_cap_mib: None,
            ended_for: None,
            port: None,
            container: None,
            ip: None,
            published: Vec::new(),
            volume: None,
        }
    }
}

struct Workload {
    saved: Saved,
    child: Option<Child>,
    stop_sent: Option<Instant>,
    exit: Option<Exit>,
}

pub struct ProcessRuntime {
    dir: PathBuf,
    grace: Duration,
    workloads: BTreeMap<String, Workload>,
    /// Where workload ports come from: `None` lets the OS pick a free one.
    ports: Option<std::ops::RangeInclusive<u16>>,
    /// Containers instead of processes.
    docker: Option<crate::docker::DockerLauncher>,
    /// Workloads waiting for their image this beat, and how far its pull got.
    preparing: BTreeMap<String, String>,
    volumes: crate::volumes::Volumes,
    /// Most output kept on the node per workload waiting to be shipped.
    log_keep: u64,
    /// Each live workload's CPU time (clock ticks) and when it was read, for its load.
    cpu_seen: BTreeMap<String, (u64, Instant)>,
}

/// `LOW-HIGH`, both 1024 to 65535.
pub fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("port range '{s}' is LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, e.g. 20000-32000");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo < 1024 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

/// A port free on every interface now, from `range` (tried from a random point, skipping
/// `taken`) or, without one, any the OS picks. It is free when chosen, not reserved: a workload
/// that binds late may lose it to another process, as with any dynamic port.
pub fn free_port(range: Option<&std::ops::RangeInclusive<u16>>, taken: &[u16]) -> Option<u16> {
    let bindable = |p: u16| std::net::TcpListener::bind(("0.0.0.0", p)).ok()?.local_addr().ok().map(|a| a.port());
    let Some(range) = range else { return bindable(0) };
    let (lo, hi) = (*range.start() as u32, *range.end() as u32);
    let len = hi.checked_sub(lo)? + 1;
    let start = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()),
    ) % len;
    (0..len).map(|k| (lo + (start + k) % len) as u16).filter(|p| !taken.contains(p)).find_map(bindable)
}

/// The limits a slice's workload gets, in the variables HAMi-core (`CUDA_DEVICE_MEMORY_LIMIT`,
/// `CUDA_DEVICE_SM_LIMIT`) and CUDA MPS (`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`,
/// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`) read. Device 0 is the slice's GPU: CUDA_VISIBLE_DEVICES
/// shows it alone.
pub fn slice_env(s: &gpucloud_api::AgentSlice) -> Vec<(String, String)> {
    let percent = s.milli.div_ceil(10).clamp(1, 100);
    let mut env = vec![
        ("CUDA_DEVICE_MEMORY_LIMIT".to_string(), format!("{}m", s.memory_mib)),
        ("CUDA_DEVICE_SM_LIMIT".to_string(), percent.to_string()),
        ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".to_string(), format!("0={}M", s.memory_mib)),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".to_string(), percent.to_string()),
        ("GPUCLOUD_GPU_MEMORY_MIB".to_string(), s.memory_mib.to_string()),
        ("GPUCLOUD_GPU_MILLI".to_string(), s.milli.to_string()),
    ];
    if let Some(p) = &s.mig {
        env.push(("GPUCLOUD_MIG_PROFILE".to_string(), p.clone()));
    }
    env
}

/// Live workload leaders started by an agent with this state directory: instance id -> (pid,
/// its GPUCLOUD_PORT).
fn own_processes(dir: &Path) -> BTreeMap<String, (i32, Option<u16>)> {
    let marker = format!("GPUCLOUD_AGENT_STATE={}", dir.display());
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        // Only the leader of a workload's process group: its children carry the same environment.
        if crate::sys::process_group(pid) != pid {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if !vars.contains(&marker.as_bytes()) {
            continue;
        }
        let var =
            |name: &[u8]| vars.iter().find_map(|v| v.strip_prefix(name)).and_then(|v| std::str::from_utf8(v).ok());
        let port = var(b"GPUCLOUD_PORT=").and_then(|p| p.parse().ok());
        if let Some(id) = var(b"GPUCLOUD_INSTANCE_ID=") {
            out.insert(id.to_string(), (pid, port));
        }
    }
    out
}

/// Only the owner reads or writes it (0600).
pub(crate) fn private_file(path: &Path) {
    owner_only(path, 0o600);
}

/// Only the owner lists or enters it (0700).
fn private_dir(path: &Path) {
    owner_only(path, 0o700);
}

fn owner_only(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot make it private");
    }
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence and permission without sending anything; a zombie exists but
    // has ended (its exit status belongs to its parent, not to us).
    let exists = crate::sys::signal(pid, 0);
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

fn signal_group(pid: i32, sig: i32) {
    // The workload leads its own process group: signal it and everything it started.
    crate::sys::signal(-pid, sig);
}

/// Signals a workload: its process group, or its container's init.
fn signal(docker: Option<&crate::docker::DockerLauncher>, s: &Saved, sig: i32) {
    match (docker, &s.container) {
        (Some(d), Some(c)) => d.signal(c, if sig == libc::SIGKILL { "SIGKILL" } else { "SIGTERM" }),
        _ if s.pid > 0 => signal_group(s.pid, sig),
        _ => {}
    }
}

/// A workload's environment, later entries winning: the GPU backend's, the slice's limits, the
/// server's, its port, then what identifies it and its GPUs.
fn workload_vars(
    w: &AgentWorkload,
    env: &[(String, String)],
    port: Option<u16>,
    metadata_url: &str,
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = env.to_vec();
    vars.extend(w.slice.as_ref().map(slice_env).unwrap_or_default());
    vars.extend(w.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.extend(port.map(|p| ("GPUCLOUD_PORT".to_string(), p.to_string())));
    let devices = w.gpu_uuids.join(",");
    vars.extend([
        ("CUDA_VISIBLE_DEVICES".to_string(), devices.clone()),
        ("NVIDIA_VISIBLE_DEVICES".to_string(), devices),
        ("GPUCLOUD_INSTANCE_ID".to_string(), w.id.clone()),
        // The path its HTTP ports are proxied under: a server that must know its base path
        // (Jupyter's --ServerApp.base_url) serves at ${GPUCLOUD_PROXY_PATH}PORT/.
        ("GPUCLOUD_PROXY_PATH".to_string(), format!("/i/{}/", w.id)),
        ("GPUCLOUD_METADATA_URL".to_string(), metadata_url.to_string()),
        ("GPUCLOUD_GPU_INDICES".to_string(), w.gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
    ]);
    vars
}

/// `sh -c COMMAND` in a process group of its own, output appended to `log`. The state directory
/// in its environment marks it as this agent's (see `own_processes`).
fn spawn_process(command: &str, vars: &[(String, String)], state_dir: &Path, log: &Path) -> std::io::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    private_file(log);
    let err = out.try_clone()?;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .env("GPUCLOUD_AGENT_STATE", state_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
}

impl ProcessRuntime {
    /// Opens the state directory and adopts the workloads a previous agent left running.
    pub fn open(dir: &Path, grace: Duration) -> Result<ProcessRuntime, String> {
        ProcessRuntime::open_with(dir, grace, None)
    }

    /// [`ProcessRuntime::open`], starting workloads as containers when `docker` is given (and
    /// adopting the containers a previous agent left).
    pub fn open_with(
        dir: &Path,
        grace: Duration,
        docker: Option<crate::docker::DockerLauncher>,
    ) -> Result<ProcessRuntime, String> {
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
        // Workloads' tokens, output and ports are the agent's to read, nobody else's on the host.
        private_dir(&dir);
        private_dir(&dir.join("logs"));
        let containers = docker.as_ref().map(|d| d.own(&dir)).transpose()?.unwrap_or_default();
        if let Some(d) = &docker {
            d.keep_private_images_in(dir.join("private-images"));
        }
        let mut rt = ProcessRuntime {
            dir: dir.clone(),
            grace,
            workloads: BTreeMap::new(),
            ports: None,
            docker,
            preparing: BTreeMap::new(),
            volumes: crate::volumes::Volumes::new(&dir),
            log_keep: DEFAULT_LOG_KEEP,
            cpu_seen: BTreeMap::new(),
        };
        let mut ours = own_processes(&dir);
        if let Ok(text) = std::fs::read_to_string(rt.state_file()) {
            let saved: BTreeMap<String, Saved> = serde_json::from_str(&text).map_err(|e| format!("state.json: {e}"))?;
            // A process in the middle of an exec shows no environment for a moment: look again
            // before calling a live recorded pid gone (it would run on, orphaned).
            let unseen = saved.iter().any(|(id, s)| s.container.is_none() && !ours.contains_key(id) && alive(s.pid));
            if unseen {
                std::thread::sleep(Duration::from_millis(200));
                ours = own_processes(&dir);
            }
            for (id, s) in saved {
                // Alive and still ours: a recycled pid would not carry our instance id.
                let live = match (&rt.docker, &s.container) {
                    (Some(d), Some(c)) => d.state(c) == crate::docker::ContainerEnd::Running,
                    _ => ours.get(&id).map(|(pid, _)| *pid) == Some(s.pid),
                };
                let exit = if live { None } else { Some(Exit::Unknown) };
                tracing::info!(instance = %id, pid = s.pid, alive = live, "adopted workload");
                rt.workloads.insert(id, Workload { saved: s, child: None, stop_sent: None, exit });
            }
        }
        // A workload started just before a crash, before state.json recorded it: found by the
        // marker in its environment, so it is adopted rather than started a second time.
        for (id, (pid, port)) in ours {
            if let std::collections::btree_map::Entry::Vacant(slot) = rt.workloads.entry(id) {
                tracing::warn!(instance = %slot.key(), pid, "adopted a workload missing from state.json");
                let log = dir.join("logs").join(format!("{}.log", slot.key()));
                let saved = Saved { pid, port, ..Saved::new(log) };
                slot.insert(Workload { saved, child: None, stop_sent: None, exit: None });
            }
        }
        // Likewise a container created just before a crash; older containers of an instance
        // that has a newer one, or that the state file forgot, are leftovers.
        let docker = rt.docker.as_ref();
        for (id, container) in containers {
            let Some(d) = docker else { break };
            if rt.workloads.get(&id).is_some_and(|w| w.saved.container.as_ref() == Some(&container)) {
                continue;
            }
            if rt.workloads.contains_key(&id) || d.state(&container) != crate::docker::ContainerEnd::Running {
                d.remove(&container);
                continue;
            }
            tracing::warn!(instance = %id, %container, "adopted a container missing from state.json");
            let saved = Saved {
                ip: d.inspect(&container).1,
                container: Some(container),
                ..Saved::new(dir.join("logs").join(format!("{id}.log")))
            };
            rt.workloads.insert(id, Workload { saved, child: None, stop_sent: None, exit: None });
        }
        rt.save();
        Ok(rt)
    }

    /// Workload ports from `range` (an operator's firewall opening) rather than any free one.
    pub fn with_ports(mut self, range: Option<std::ops::RangeInclusive<u16>>) -> ProcessRuntime {
        self.ports = range;
        self
    }

    /// Keep at most `bytes` of each workload's output on the node waiting to be shipped
    /// (at least one shipping chunk).
    pub fn with_log_keep(mut self, bytes: u64) -> ProcessRuntime {
        self.log_keep = bytes.max(LOG_CHUNK);
        self
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn save(&self) {
        let saved: BTreeMap<&String, &Saved> = self.workloads.iter().map(|(k, w)| (k, &w.saved)).collect();
        let tmp = self.dir.join("state.json.tmp");
        let write = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
                f.write_all(&b)
            })
            .and_then(|_| std::fs::rename(&tmp, self.state_file()));
        if let Err(e) = write {
            tracing::error!(error = %e, "cannot save agent state");
        }
    }

    /// Records a workload that could not start, and why (reported with its failure).
    fn failed_to_start(&mut self, w: &AgentWorkload, why: String) {
        tracing::warn!(instance = %w.id, %why, "workload cannot start");
        let saved = Saved { ended_for: Some(why), ..Saved::new(self.dir.join("logs").join(format!("{}.log", w.id))) };
        self.workloads
            .insert(w.id.clone(), Workload { saved, child: None, stop_sent: None, exit: Some(Exit::Code(127)) });
        self.save();
    }

    /// Unmounts the volumes of this node no workload here holds any more.
    fn release_unused_volumes(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("volumes")) else { return };
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_string) else { continue };
            if !self.workloads.values().any(|w| w.saved.volume.as_deref() == Some(id.as_str())) {
                self.volumes.release(&id);
            }
        }
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> gpucloud_api::AgentRuntime {
        if self.docker.is_some() { gpucloud_api::AgentRuntime::Docker } else { gpucloud_api::AgentRuntime::Process }
    }

    fn len(&self) -> usize {
        self.workloads.len()
    }

    /// The state directory (backends keep per-workload files under it).
    fn dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    /// Whether workloads run as containers (each in a network namespace of its own).
    fn containers(&self) -> bool {
        self.docker.is_some()
    }

    /// The user containers' workloads run as (`UID:GID`); `None` with the process runtime.
    /// The public images on the node (containers only; `None` where there is no engine).
    fn images(&self) -> Option<Vec<String>> {
        let d = self.docker.as_ref()?;
        match d.images() {
            Ok(images) => Some(images),
            Err(e) => {
                tracing::debug!(error = %e, "listing images");
                None
            }
        }
    }

    fn container_user(&self) -> Option<String> {
        self.docker.as_ref().map(|d| d.user().to_string())
    }

    /// The container of each workload running in one now, and its init's pid, by instance.
    fn running_containers(&self) -> std::collections::HashMap<String, (String, i32)> {
        self.workloads
            .iter()
            .filter(|(_, w)| w.exit.is_none() && w.stop_sent.is_none())
            .filter_map(|(id, w)| Some((id.clone(), (w.saved.container.clone()?, w.saved.pid))))
            .collect()
    }

    /// Where a workload's metadata requests may come from.
    fn metadata_peer(&self, id: &str) -> Peer {
        match self.workloads.get(id) {
            Some(w) if w.saved.container.is_some() => w.saved.ip.map_or(Peer::Pending, Peer::Only),
            _ => Peer::Any,
        }
    }

    /// Starts a workload. A container gets only the environment built here (not the agent's
    /// nor the backend's host paths); a process inherits the agent's, as on a trusted host. A
    /// workload whose image is not on the node yet waits for it (pulled off this loop): it is
    /// reported `preparing` until then, and started by a later call.
    fn start(&mut self, w: &AgentWorkload, metadata_url: &str, metadata_token: &str, env: &[(String, String)]) {
        let image = match (&self.docker, &w.image) {
            (Some(d), image) => {
                let image = image.clone().unwrap_or_else(|| d.default_image().to_string());
                match d.image_state(&image, &w.id, w.registry_auth.as_ref()) {
                    crate::docker::ImageState::Ready => Some(image),
                    crate::docker::ImageState::Pulling(progress) => {
                        self.preparing.insert(w.id.clone(), progress);
                        return;
                    }
                    crate::docker::ImageState::Failed(why) => return self.failed_to_start(w, why),
                }
            }
            (None, Some(image)) => {
                let why = format!(
                    "this node runs workloads as processes and cannot run image {image} (its agent needs --runtime docker)"
                );
                return self.failed_to_start(w, why);
            }
            (None, None) => None,
        };
        let mut mounts = Vec::new();
        if let Some(v) = &w.volume {
            let Some(d) = &self.docker else {
                let why = "this node runs workloads as processes and cannot mount a volume (its agent needs --runtime docker)";
                return self.failed_to_start(w, why.to_string());
            };
            match self.volumes.prepare(&v.id, v.size_gib, Some(d.user())) {
                Ok(host) => mounts.push((host, v.path.clone())),
                Err(why) => return self.failed_to_start(w, format!("cannot mount volume {}: {why}", v.id)),
            }
        }
        let ports: Vec<gpucloud_model::PortSpec> = w.ports.iter().filter_map(|p| p.parse().ok()).collect();
        let log = self.dir.join("logs").join(format!("{}.log", w.id));
        // A new run starts a new file: an earlier run's output here was shipped already.
        let _ = std::fs::remove_file(&log);
        let mut taken: Vec<u16> = self
            .workloads
            .values()
            .flat_map(|w| w.saved.port.into_iter().chain(w.saved.published.iter().map(|p| p.1)))
            .collect();
        let port = free_port(self.ports.as_ref(), &taken);
        taken.extend(port);
        // Raw TCP ports get a host port of their own (a process binds its port on the host
        // itself); HTTP ports are not published: the agent's ingress reaches them.
        let mut published = Vec::with_capacity(ports.len());
        for p in &ports {
            let host = match (p.protocol, self.docker.is_some()) {
                (gpucloud_model::PortProtocol::Http, _) => 0,
                (gpucloud_model::PortProtocol::Tcp, false) => p.port,
                (gpucloud_model::PortProtocol::Tcp, true) => match free_port(self.ports.as_ref(), &taken) {
                    Some(h) => h,
                    None => return self.failed_to_start(w, format!("no free host port for its port {p}")),
                },
            };
            taken.push(host);
            published.push((p.port, host));
        }
        let backend_env: &[(String, String)] = if self.docker.is_some() { &[] } else { env };
        let vars = workload_vars(w, backend_env, port, metadata_url);
        let mut saved = Saved {
            gpus: w.gpus.clone(),
            metadata_token: Some(metadata_token.to_string()),
            memory_cap_mib: w.slice.as_ref().map(|s| s.memory_mib),
            port,
            published,
            volume: w.volume.as_ref().map(|v| v.id.clone()),
            ..Saved::new(log)
        };
        let started = match (&self.docker, image) {
            (Some(d), Some(image)) => {
                let milli = w.slice.as_ref().map_or(1000 * w.gpus.len().max(1) as u32, |s| s.milli);
                let tcp: Vec<(u16, u16)> = saved.published.iter().copied().filter(|(_, h)| *h != 0).collect();
                d.launch(&image, &tcp, &mounts, &w.id, &w.command, &vars, &w.gpu_uuids, milli, port, &saved.log, &self.dir).map(
                    |c| {
                        tracing::info!(instance = %w.id, container = %c.id, pid = c.pid, ip = ?c.ip, %image, "started workload container");
                        saved.container = Some(c.id);
                        saved.pid = c.pid;
                        saved.ip = c.ip;
                        None
                    },
                )
            }
            _ => spawn_process(&w.command, &vars, &self.dir, &saved.log).map_err(|e| e.to_string()).map(|child| {
                tracing::info!(instance = %w.id, pid = child.id(), "started workload");
                saved.pid = child.id() as i32;
                Some(child)
            }),
        };
        let (child, exit) = match started {
            Ok(child) => (child, None),
            Err(e) => {
                tracing::error!(instance = %w.id, error = %e, "cannot start workload");
                (None, Some(Exit::Code(127)))
            }
        };
        self.workloads.insert(w.id.clone(), Workload { saved, child, stop_sent: None, exit });
        self.save();
    }

    /// Workloads waiting for their image, as reports (`preparing`, with how far the pull got).
    /// Forgotten once said: a workload still wanted is asked to start again, which adds it back.
    fn take_preparing(&mut self) -> Vec<AgentInstanceReport> {
        std::mem::take(&mut self.preparing)
            .into_iter()
            .map(|(id, progress)| AgentInstanceReport {
                id,
                state: WorkloadState::Preparing,
                exit_code: None,
                reason: None,
                checkpoint: None,
                port: None,
                progress: Some(progress),
                published: Vec::new(),
            })
            .collect()
    }

    /// Where running workloads' HTTP ports are reached from this host: their container's
    /// address, or this host for a process.
    fn http_targets(&self) -> std::collections::HashMap<(String, u16), std::net::SocketAddr> {
        let mut out = std::collections::HashMap::new();
        for (id, w) in self.workloads.iter().filter(|(_, w)| w.exit.is_none()) {
            let ip = match (&w.saved.container, w.saved.ip) {
                (Some(_), Some(ip)) => ip,
                (Some(_), None) => continue,
                (None, _) => std::net::IpAddr::from([127, 0, 0, 1]),
            };
            for (port, _) in w.saved.published.iter().filter(|(_, h)| *h == 0) {
                out.insert((id.clone(), *port), std::net::SocketAddr::new(ip, *port));
            }
        }
        out
    }

    /// SIGTERM now; SIGKILL once the grace period has passed.
    fn stop(&mut self, id: &str) {
        let grace = self.grace;
        let Some(w) = self.workloads.get_mut(id) else { return };
        if w.exit.is_some() || (w.saved.pid <= 0 && w.saved.container.is_none()) {
            return;
        }
        match w.stop_sent {
            None => {
                tracing::info!(instance = %id, pid = w.saved.pid, "stopping workload (SIGTERM)");
                signal(self.docker.as_ref(), &w.saved, libc::SIGTERM);
                w.stop_sent = Some(Instant::now());
            }
            Some(at) if at.elapsed() >= grace => {
                tracing::warn!(instance = %id, pid = w.saved.pid, "grace period over (SIGKILL)");
                signal(self.docker.as_ref(), &w.saved, libc::SIGKILL);
            }
            Some(_) => {}
        }
    }

    /// SIGTERM to every live workload, SIGKILL to those still alive after the grace period.
    fn stop_all_gracefully(&mut self) {
        let ids: Vec<String> = self.workloads.keys().cloned().collect();
        let deadline = Instant::now() + self.grace;
        loop {
            self.poll();
            for id in &ids {
                self.stop(id);
            }
            if self.workloads.values().all(|w| w.exit.is_some()) {
                self.volumes.release_all();
                return;
            }
            if Instant::now() >= deadline {
                self.stop_all_now();
                self.volumes.release_all();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_all_now(&mut self) {
        for w in self.workloads.values().filter(|w| w.exit.is_none()) {
            signal(self.docker.as_ref(), &w.saved, libc::SIGKILL);
        }
    }

    /// Notices workloads that ended.
    fn poll(&mut self) {
        for w in self.workloads.values_mut() {
            if w.exit.is_some() {
                continue;
            }
            if let (Some(d), Some(c)) = (&self.docker, &w.saved.container) {
                w.exit = match d.state(c) {
                    crate::docker::ContainerEnd::Running => None,
                    // The engine reports a death by signal N as 128 + N, like a shell.
                    crate::docker::ContainerEnd::Exited(code) if (129..=192).contains(&code) => {
                        Some(Exit::Signal(code as i32 - 128))
                    }
                    crate::docker::ContainerEnd::Exited(code) => Some(Exit::Code(code as i32)),
                    crate::docker::ContainerEnd::Gone => Some(Exit::Unknown),
                };
                continue;
            }
            match &mut w.child {
                Some(child) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        w.exit = Some(match (status.code(), status.signal()) {
                            (Some(code), _) => Exit::Code(code),
                            (None, Some(sig)) => Exit::Signal(sig),
                            _ => Exit::Unknown,
                        });
                    }
                }
                None if !alive(w.saved.pid) => w.exit = Some(Exit::Unknown),
                None => {}
            }
        }
    }

    /// What each workload is, for the heartbeat.
    fn report(&self) -> Vec<AgentInstanceReport> {
        self.workloads
            .iter()
            .map(|(id, w)| {
                if let (Some(reason), Some(exit)) = (&w.saved.ended_for, w.exit) {
                    let code = match exit {
                        Exit::Code(c) => Some(c),
                        Exit::Signal(sig) => Some(128 + sig),
                        Exit::Unknown => None,
                    };
                    return AgentInstanceReport {
                        id: id.clone(),
                        state: WorkloadState::Failed,
                        exit_code: code,
                        reason: Some(reason.clone()),
                        checkpoint: None,
                        port: None,
                        progress: None,
                        published: Vec::new(),
                    };
                }
                let (state, exit_code) = match w.exit {
                    None => (WorkloadState::Running, None),
                    Some(Exit::Code(0)) => (WorkloadState::Stopped, Some(0)),
                    // Gone without a status we could read (adopted after an agent restart, or
                    // its container removed): no code is better than a made-up 0.
                    Some(Exit::Unknown) => (WorkloadState::Stopped, None),
                    // A stop we asked for ends the way we asked: stopped, not failed.
                    Some(Exit::Signal(_)) if w.stop_sent.is_some() => (WorkloadState::Stopped, None),
                    Some(Exit::Signal(sig)) => (WorkloadState::Failed, Some(128 + sig)),
                    Some(Exit::Code(code)) => (WorkloadState::Failed, Some(code)),
                };
                AgentInstanceReport {
                    id: id.clone(),
                    state,
                    exit_code,
                    reason: None,
                    checkpoint: None,
                    port: w.saved.port.filter(|_| w.exit.is_none()),
                    progress: None,
                    published: if w.exit.is_none() {
                        w.saved
                            .published
                            .iter()
                            .filter(|(_, h)| *h != 0)
                            .map(|(p, h)| gpucloud_api::PublishedPort { port: *p, host_port: *h })
                            .collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect()
    }

    /// Forgets workloads whose end the server has now heard of (their output is shipped first),
    /// and returns their ids.
    fn reported(&mut self, sent: &[AgentInstanceReport]) -> Vec<String> {
        let mut forgotten = Vec::new();
        self.workloads.retain(|id, w| {
            let done = w.exit.is_some() && sent.iter().any(|r| r.id == *id && r.state != WorkloadState::Running);
            let shipped = std::fs::metadata(&w.saved.log).map_or(true, |m| m.len() <= w.saved.log_offset);
            if done && shipped {
                forgotten.push(id.clone());
                let _ = std::fs::remove_file(&w.saved.log);
                if let (Some(d), Some(c)) = (&self.docker, &w.saved.container) {
                    d.remove(c);
                }
            }
            !(done && shipped)
        });
        if !forgotten.is_empty() {
            self.save();
            self.release_unused_volumes();
        }
        forgotten
    }

    /// Removes the data of deleted volumes no workload here holds; returns those now gone.
    fn purge_volumes(&self, ids: &[String]) -> Vec<String> {
        ids.iter()
            .filter(|id| !self.workloads.values().any(|w| w.saved.volume.as_deref() == Some(id.as_str())))
            .filter(|id| self.volumes.purge(id))
            .cloned()
            .collect()
    }

    /// Stops (SIGTERM, then SIGKILL after the grace period) every live workload whose GPU memory,
    /// as `used(instance, pgid)` reads it, is over its slice's cap, and records why.
    fn enforce(&mut self, used: &mut dyn FnMut(&str, i32) -> Option<u64>) {
        let mut over = Vec::new();
        for (id, w) in &mut self.workloads {
            if w.exit.is_some() || w.saved.pid <= 0 {
                continue;
            }
            if w.saved.ended_for.is_some() {
                over.push(id.clone());
                continue;
            }
            let (Some(cap), Some(now)) = (w.saved.memory_cap_mib, used(id, w.saved.pid)) else { continue };
            if now > cap {
                let reason = format!("exceeded its GPU memory cap: {now} MiB used of {cap} MiB");
                tracing::warn!(instance = %id, %reason, "stopping workload");
                w.saved.ended_for = Some(reason);
                over.push(id.clone());
            }
        }
        if !over.is_empty() {
            self.save();
        }
        for id in over {
            self.stop(&id);
        }
    }

    /// Each GPU of a live workload with the workload's CPU use since the last call (0 to 1; the
    /// first call after a start reads 0), which fake GPUs read as their load: a workload that
    /// spins looks busy, one that sleeps idle, as idle detection and autoscaling need to see.
    fn gpu_load(&mut self) -> Vec<(u32, f64)> {
        let procs = proc_table();
        let now = Instant::now();
        let ticks_per_s = clock_ticks();
        let mut out = Vec::new();
        for (id, w) in &self.workloads {
            if w.exit.is_some() {
                continue;
            }
            let ticks = tree_cpu_ticks(&procs, w.saved.pid);
            let load = match self.cpu_seen.get(id) {
                Some((before, at)) if now > *at => {
                    let secs = now.duration_since(*at).as_secs_f64();
                    (ticks.saturating_sub(*before) as f64 / ticks_per_s / secs).clamp(0.0, 1.0)
                }
                _ => 0.0,
            };
            self.cpu_seen.insert(id.clone(), (ticks, now));
            out.extend(w.saved.gpus.iter().map(|g| (*g, load)));
        }
        self.cpu_seen.retain(|id, _| self.workloads.get(id).is_some_and(|w| w.exit.is_none()));
        out
    }

    /// The metadata token a known workload was started with.
    fn metadata_token(&self, id: &str) -> Option<String> {
        self.workloads.get(id).and_then(|w| w.saved.metadata_token.clone())
    }

    fn actual(&self) -> Vec<Actual> {
        self.workloads.iter().map(|(id, w)| Actual { id: id.clone(), alive: w.exit.is_none() }).collect()
    }

    /// New output per workload: (instance, seq, text, bytes of the log file it covers).
    fn pending_logs(&self) -> Vec<(String, i64, String, u64)> {
        let mut out = Vec::new();
        for (id, w) in &self.workloads {
            let Ok(mut f) = std::fs::File::open(&w.saved.log) else { continue };
            if f.seek(SeekFrom::Start(w.saved.log_offset)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if f.take(LOG_CHUNK).read_to_end(&mut buf).is_err() || (buf.is_empty() && w.saved.log_dropped == 0) {
                continue;
            }
            // Ship whole characters; a split one waits for its other half (unless the process ended).
            let (text, used) = match std::str::from_utf8(&buf) {
                Ok(t) => (t.to_string(), buf.len()),
                Err(e) if e.valid_up_to() > 0 && w.exit.is_none() => {
                    (String::from_utf8_lossy(&buf[..e.valid_up_to()]).into_owned(), e.valid_up_to())
                }
                Err(_) => (String::from_utf8_lossy(&buf).into_owned(), buf.len()),
            };
            let text = match w.saved.log_dropped {
                0 => text,
                n => format!(
                    "[gpucloud: {n} bytes of output were dropped here: more than {} MiB waited to be sent]\n{text}",
                    self.log_keep >> 20
                ),
            };
            out.push((id.clone(), w.saved.next_seq, text, used as u64));
        }
        out
    }

    /// The server has chunk `seq`, which covered `file_bytes` of the log file.
    fn logs_shipped(&mut self, id: &str, seq: i64, file_bytes: u64) {
        if let Some(w) = self.workloads.get_mut(id)
            && w.saved.next_seq == seq
        {
            let len = std::fs::metadata(&w.saved.log).map(|m| m.len()).unwrap_or(0);
            w.saved.log_offset = (w.saved.log_offset + file_bytes).min(len);
            w.saved.next_seq += 1;
            w.saved.log_dropped = 0;
        }
        self.save();
    }

    /// Keeps each workload's log file small on the node: shipped output is given back to the
    /// file system (a hole punched over it: the writer appends on, offsets stay valid), and
    /// unshipped output past the keep limit (a server out of reach) is dropped from its oldest
    /// end, which the next chunk then says.
    fn bound_logs(&mut self) {
        let keep = self.log_keep;
        let mut changed = false;
        for w in self.workloads.values_mut() {
            let Ok(f) = OpenOptions::new().write(true).open(&w.saved.log) else { continue };
            let Ok(len) = f.metadata().map(|m| m.len()) else { continue };
            let waiting = len.saturating_sub(w.saved.log_offset);
            if waiting > keep {
                // Start again at a line's start inside what is kept, so no character is cut.
                let mut from = len - keep;
                let mut head = Vec::new();
                if let Ok(mut r) = std::fs::File::open(&w.saved.log)
                    && r.seek(SeekFrom::Start(from)).is_ok()
                    && r.take(4096).read_to_end(&mut head).is_ok()
                    && let Some(nl) = head.iter().position(|b| *b == b'\n')
                {
                    from += nl as u64 + 1;
                }
                w.saved.log_dropped += from - w.saved.log_offset;
                w.saved.log_offset = from;
                changed = true;
            }
            // Whole pages only: a partly shipped page stays until the rest of it is.
            let done = w.saved.log_offset / 4096 * 4096;
            if done > w.saved.log_released {
                if punch_hole(&f, w.saved.log_released, done - w.saved.log_released) {
                    w.saved.log_released = done;
                } else if w.saved.log_offset == len && len > keep {
                    // No holes on this file system: start the file again once all of it is
                    // shipped. What the workload writes in the instant between the two is lost.
                    if f.set_len(0).is_ok() {
                        w.saved.log_offset = 0;
                        w.saved.log_released = 0;
                    }
                }
                changed = true;
            }
        }
        if changed {
            self.save();
        }
    }
}

/// Gives `len` bytes from `offset` of `f` back to the file system, keeping its size.
fn punch_hole(f: &std::fs::File, offset: u64, len: u64) -> bool {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return false };
    crate::sys::punch_hole(f, offset, len)
}

/// Every process: pid -> (parent pid, CPU time in clock ticks), from `/proc/PID/stat`.
fn proc_table() -> std::collections::HashMap<i32, (i32, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let (Some(ppid), Some(utime), Some(stime)) = (f.get(1), f.get(11), f.get(12)) else { continue };
        let (Ok(ppid), Ok(utime), Ok(stime)) = (ppid.parse(), utime.parse::<u64>(), stime.parse::<u64>()) else {
            continue;
        };
        out.insert(pid, (ppid, utime + stime));
    }
    out
}

/// CPU ticks of `root` and every process under it.
fn tree_cpu_ticks(procs: &std::collections::HashMap<i32, (i32, u64)>, root: i32) -> u64 {
    if root <= 1 {
        return 0;
    }
    let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
    for (pid, (ppid, _)) in procs {
        children.entry(*ppid).or_default().push(*pid);
    }
    let (mut total, mut todo) = (0, vec![root]);
    while let Some(p) = todo.pop() {
        total += procs.get(&p).map_or(0, |(_, t)| *t);
        todo.extend(children.get(&p).into_iter().flatten().copied());
    }
    total
}

fn clock_ticks() -> f64 {
    let t = crate::sys::clock_ticks();
    if t > 0 { t as f64 } else { 100.0 }
}
