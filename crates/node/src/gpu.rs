//! GPU discovery. The fake backend is first-class: dev mode, tests and hosts without a GPU use it.

use gpucloud_model::GpuModel;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub model: GpuModel,
    pub uuid: String,
    pub memory_mib: u64,
}

pub trait GpuBackend {
    fn name(&self) -> &'static str;
    fn discover(&self) -> Result<Vec<GpuInfo>, String>;
    /// Current readings; `busy` lists the GPUs that run a workload now with how hard it works
    /// (0 to 1: the workload's CPU use, which fake GPUs read as their load), `dt` the time since
    /// the last reading (for energy).
    fn telemetry(&mut self, busy: &[(u32, f64)], dt: std::time::Duration) -> Vec<gpucloud_api::GpuTelemetry>;
    /// Extra environment a workload gets from this backend.
    fn workload_env(&self, _instance: &str, _state_dir: &std::path::Path) -> Vec<(String, String)> {
        Vec::new()
    }
    /// GPU memory the workload (process group `pgid`) uses now, in MiB; `None` when unknown.
    /// NVML answers per process; the fake backend reads what the workload declared.
    fn workload_memory_mib(&mut self, _instance: &str, _pgid: i32, _state_dir: &std::path::Path) -> Option<u64> {
        None
    }
}

/// Where a workload on fake GPUs declares the GPU memory it "allocates" (MiB, one number), so
/// slice memory caps are exercised without a GPU: `echo 12000 > $GPUCLOUD_FAKE_GPU_MEMORY_FILE`.
pub const FAKE_MEMORY_ENV: &str = "GPUCLOUD_FAKE_GPU_MEMORY_FILE";

fn fake_memory_file(state_dir: &std::path::Path, instance: &str) -> std::path::PathBuf {
    state_dir.join("fake-gpu-memory").join(instance)
}

/// GPUs described on the command line (`A100-40GB:4,T4:1`), with UUIDs derived from the node
/// name so that a restarted agent finds the same GPUs.
pub struct FakeGpus {
    gpus: Vec<GpuInfo>,
    energy_mj: Vec<u64>,
    tick: u64,
    /// A file `fake-xid-N` in this directory makes GPU N report XID 79 (fallen off the bus), so
    /// tests and demos can exercise hardware-failure handling.
    fault_dir: Option<std::path::PathBuf>,
}

impl FakeGpus {
    pub fn parse(spec: &str, node_name: &str) -> Result<FakeGpus, String> {
        let mut gpus = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (model, count) = part.rsplit_once(':').unwrap_or((part, "1"));
            let model: GpuModel = model.parse().map_err(|e: gpucloud_model::UnknownGpuModel| e.to_string())?;
            let count: u32 = count.parse().map_err(|_| format!("'{part}': expected MODEL:COUNT, e.g. A100-40GB:4"))?;
            for _ in 0..count {
                let index = gpus.len() as u32;
                gpus.push(GpuInfo {
                    index,
                    model,
                    uuid: format!("GPU-fake-{}-{index:02}", fnv(node_name)),
                    memory_mib: model.memory_mib(),
                });
            }
        }
        if gpus.is_empty() || gpus.len() > 16 {
            return Err(format!("'{spec}': a node has 1 to 16 GPUs"));
        }
        let energy_mj = vec![0; gpus.len()];
        Ok(FakeGpus { gpus, energy_mj, tick: 0, fault_dir: None })
    }

    /// Fake GPUs exactly as given (the server's in-process fake agents know their node's GPUs).
    pub fn from_gpus(gpus: Vec<GpuInfo>) -> FakeGpus {
        let energy_mj = vec![0; gpus.len()];
        FakeGpus { gpus, energy_mj, tick: 0, fault_dir: None }
    }

    pub fn with_fault_dir(mut self, dir: std::path::PathBuf) -> FakeGpus {
        self.fault_dir = Some(dir);
        self
    }
}

impl GpuBackend for FakeGpus {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn discover(&self) -> Result<Vec<GpuInfo>, String> {
        Ok(self.gpus.clone())
    }

    fn workload_env(&self, instance: &str, state_dir: &std::path::Path) -> Vec<(String, String)> {
        let file = fake_memory_file(state_dir, instance);
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        vec![(FAKE_MEMORY_ENV.to_string(), file.display().to_string())]
    }

    fn workload_memory_mib(&mut self, instance: &str, _pgid: i32, state_dir: &std::path::Path) -> Option<u64> {
        std::fs::read_to_string(fake_memory_file(state_dir, instance)).ok()?.trim().parse().ok()
    }

    /// Plausible, load-driven readings: an idle GPU sits near 32 C, 15% of a typical board power
    /// and 0% utilization; a workload's GPU follows its CPU use (a process that spins reads ~95%,
    /// one that sleeps ~0%) up to 70 C and 80% of board power, with a little deterministic wobble.
    fn telemetry(&mut self, busy: &[(u32, f64)], dt: std::time::Duration) -> Vec<gpucloud_api::GpuTelemetry> {
        self.tick = self.tick.wrapping_add(1);
        let mut out = Vec::with_capacity(self.gpus.len());
        for (i, g) in self.gpus.iter().enumerate() {
            let wobble = ((self.tick + i as u64 * 7) % 11) as f64 - 5.0;
            let board_w = match g.model {
                GpuModel::T4 => 70.0,
                GpuModel::L4 => 72.0,
                GpuModel::A10 => 150.0,
                GpuModel::A40 | GpuModel::Rtx6000Ada => 300.0,
                GpuModel::A100_40GB | GpuModel::A100_80GB => 400.0,
                GpuModel::H100_80GB | GpuModel::H200_141GB => 700.0,
            };
            // Half a CPU or more reads as a fully busy GPU: a real GPU job keeps one host thread
            // feeding it, and a shared CI machine rarely gives a spinning test process a whole core.
            let load = busy.iter().find(|(i, _)| *i == g.index).map(|(_, l)| (l * 2.0).clamp(0.0, 1.0));
            let (temp, power, util, mem) = match load {
                Some(l) => (
                    32.0 + 38.0 * l + wobble * l,
                    board_w * (0.15 + 0.65 * l) + wobble * 3.0 * l,
                    (95.0 * l + wobble * l).clamp(0.0, 100.0),
                    g.memory_mib * 3 / 4,
                ),
                None => (32.0 + wobble / 2.0, board_w * 0.15, 0.0, 0),
            };
            self.energy_mj[i] += (power * dt.as_secs_f64() * 1000.0) as u64;
            let fault = self.fault_dir.as_ref().is_some_and(|d| d.join(format!("fake-xid-{}", g.index)).exists());
            out.push(gpucloud_api::GpuTelemetry {
                index: g.index,
                temperature_c: temp,
                power_w: power,
                energy_mj: self.energy_mj[i],
                memory_used_mib: mem,
                utilization_pct: util,
                xid: fault.then_some(79),
                ecc_uncorrectable: 0,
            });
        }
        out
    }
}

/// A stable short hash (FNV-1a), so fake UUIDs differ per node and survive restarts.
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_with_stable_uuids() {
        let a = FakeGpus::parse("A100-40GB:2,T4", "host-a").unwrap().discover().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!((a[2].index, a[2].model), (2, GpuModel::T4));
        let again = FakeGpus::parse("A100-40GB:2,T4", "host-a").unwrap().discover().unwrap();
        assert_eq!(a, again);
        let other = FakeGpus::parse("A100-40GB:2,T4", "host-b").unwrap().discover().unwrap();
        assert_ne!(a[0].uuid, other[0].uuid);
        assert!(FakeGpus::parse("B300:1", "h").is_err());
        assert!(FakeGpus::parse("T4:x", "h").is_err());
        assert!(FakeGpus::parse("T4:17", "h").is_err());
    }
}
