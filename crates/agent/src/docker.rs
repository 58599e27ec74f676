//! Workloads as Docker containers (`gpucloud agent --runtime docker --image IMAGE`), through the
//! Engine API on the local socket (bollard). A container gets what a process would: the command
//! under `/bin/sh -c`, the same environment, the host's network (so the loopback metadata
//! endpoint and `GPUCLOUD_PORT` work as for a process), and, on a node with real GPUs, its GPUs
//! through the NVIDIA container runtime's device requests. Its output goes to the same per-
//! workload log file as a process's, bind-mounted in, so shipping logs and adopting workloads
//! after an agent restart work the same for both. Containers carry labels naming their instance
//! and the agent's state directory: that is how a restarted agent finds its own.

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use std::collections::HashMap;
use std::path::Path;

const LABEL_INSTANCE: &str = "gpucloud.instance";
const LABEL_STATE: &str = "gpucloud.agent-state";
/// Where the workload's log file is mounted inside its container.
const LOG_INSIDE: &str = "/var/log/gpucloud-output.log";

pub struct DockerLauncher {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    image: String,
    /// Ask the NVIDIA container runtime for the workload's GPUs (a node with real GPUs).
    gpu_devices: bool,
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
    /// Connects to the engine (`DOCKER_HOST`, or the local socket) and makes sure `image` is
    /// there, pulling it if not: a node that cannot run its image says so at start.
    pub fn connect(image: &str, gpu_devices: bool) -> Result<DockerLauncher, String> {
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
        tracing::info!(engine = version.version.as_deref().unwrap_or("?"), image, gpu_devices, "docker runtime");
        Ok(DockerLauncher { rt, docker, image: image.to_string(), gpu_devices })
    }

    /// Creates and starts the workload's container; returns its id and the host pid of its init.
    pub fn launch(
        &self,
        instance: &str,
        command: &str,
        env: &[(String, String)],
        gpu_uuids: &[String],
        log: &Path,
        state_dir: &Path,
    ) -> Result<(String, i32), String> {
        // The file must exist before it is mounted, or the engine makes a directory of it.
        std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), instance.to_string()),
            (LABEL_STATE.to_string(), state_dir.display().to_string()),
        ]);
        let devices = (self.gpu_devices && !gpu_uuids.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(gpu_uuids.to_vec()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        });
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), format!("exec >>{LOG_INSIDE} 2>&1\n{command}")]),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("host".into()),
                binds: Some(vec![format!("{}:{LOG_INSIDE}", log.display())]),
                // An init as PID 1 passes SIGTERM on to the workload (PID 1 itself ignores it).
                init: Some(true),
                device_requests: devices,
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
        let pid = self
            .rt
            .block_on(self.docker.inspect_container(&created.id, None))
            .ok()
            .and_then(|c| c.state?.pid)
            .unwrap_or(0);
        Ok((created.id, pid as i32))
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
