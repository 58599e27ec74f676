//! NVIDIA GPUs through NVML. `libnvidia-ml.so` is loaded at run time, so the same binary runs on
//! hosts without a driver (and says so when asked for real GPUs there).

use crate::gpu::{GpuBackend, GpuInfo};
use gpucloud_model::GpuModel;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};

const MIB: u64 = 1024 * 1024;

/// The catalog model an NVML device name and memory size are, if gpucloud sells it.
pub fn model_of(name: &str, memory_mib: u64) -> Option<GpuModel> {
    let n = name.to_ascii_uppercase();
    let gib = memory_mib / 1024;
    if n.contains("H200") {
        return Some(GpuModel::H200_141GB);
    }
    if n.contains("H100") {
        // H100 NVL (94 GB) and the 64/96 GB variants are other products.
        return (75..90).contains(&gib).then_some(GpuModel::H100_80GB);
    }
    if n.contains("A100") {
        return match gib {
            38..=41 => Some(GpuModel::A100_40GB),
            78..=81 => Some(GpuModel::A100_80GB),
            _ => None,
        };
    }
    if n.contains("RTX 6000 ADA") {
        return Some(GpuModel::Rtx6000Ada);
    }
    if n.contains("A40") {
        return Some(GpuModel::A40);
    }
    // After A100: "A100" contains "A10".
    if n.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "A10") {
        return Some(GpuModel::A10);
    }
    if n.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "L4") {
        return Some(GpuModel::L4);
    }
    if n.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "T4") {
        return Some(GpuModel::T4);
    }
    None
}

/// What discovery saw beyond what the server needs: logged once at start.
#[derive(Debug, Clone)]
pub struct DeviceDetail {
    pub index: u32,
    pub name: String,
    pub pci_bus: String,
    /// MIG mode currently enabled, if the GPU supports MIG.
    pub mig_enabled: Option<bool>,
}

pub struct NvmlGpus {
    /// Leaked on purpose: the event set borrows it, and the backend lives as long as the agent.
    nvml: &'static Nvml,
    /// Critical XID events of every GPU, when the driver delivers them.
    events: Option<EventSet<'static>>,
    gpus: Vec<GpuInfo>,
    details: Vec<DeviceDetail>,
    /// Energy counter at the first reading, per GPU: readings report energy since the agent started.
    energy_base: Vec<Option<u64>>,
}

impl NvmlGpus {
    pub fn open() -> Result<NvmlGpus, String> {
        let nvml: &'static Nvml = Box::leak(Box::new(Nvml::init().map_err(|e| {
            format!("NVML is not available ({e}): is the NVIDIA driver installed? Without one, run with --fake-gpus MODEL:COUNT")
        })?));
        let count = nvml.device_count().map_err(|e| format!("NVML device count: {e}"))?;
        let mut gpus = Vec::new();
        let mut details = Vec::new();
        for index in 0..count {
            let d = nvml.device_by_index(index).map_err(|e| format!("NVML GPU {index}: {e}"))?;
            let name = d.name().map_err(|e| format!("NVML GPU {index} name: {e}"))?;
            let memory_mib = d.memory_info().map_err(|e| format!("NVML GPU {index} memory: {e}"))?.total / MIB;
            let uuid = d.uuid().map_err(|e| format!("NVML GPU {index} UUID: {e}"))?;
            let model = model_of(&name, memory_mib).ok_or_else(|| {
                format!(
                    "GPU {index} is a {name} with {memory_mib} MiB, which is not in gpucloud's catalog ({})",
                    GpuModel::known_names()
                )
            })?;
            let pci_bus = d.pci_info().map(|p| p.bus_id).unwrap_or_default();
            let mig_enabled = d.mig_mode().ok().map(|m| m.current == 1);
            gpus.push(GpuInfo { index, model, uuid, memory_mib });
            details.push(DeviceDetail { index, name, pci_bus, mig_enabled });
        }
        let energy_base = vec![None; gpus.len()];
        let events = xid_events(nvml, count);
        Ok(NvmlGpus { nvml, events, gpus, details, energy_base })
    }

    pub fn details(&self) -> &[DeviceDetail] {
        &self.details
    }

    /// The last critical XID of each GPU since the previous call (without waiting).
    fn drain_xids(&mut self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let Some(set) = &self.events else { return out };
        loop {
            match set.wait(0) {
                Ok(e) => {
                    let xid = match e.event_data {
                        Some(XidError::Value(v)) => u32::try_from(v).unwrap_or(u32::MAX),
                        // NVML's own code for an XID it could not read.
                        Some(XidError::Unknown) => 999,
                        None => continue,
                    };
                    match e.device.index() {
                        Ok(index) => out.push((index, xid)),
                        Err(err) => tracing::warn!(xid, error = %err, "XID event from an unknown GPU"),
                    }
                }
                Err(NvmlError::Timeout) => return out,
                Err(err) => {
                    tracing::warn!(error = %err, "reading NVML events");
                    return out;
                }
            }
        }
    }
}

/// Whether `root` is `pid` or one of its ancestors, from /proc (a process that exits meanwhile
/// belongs to nobody).
pub fn descends_from(mut pid: i32, root: i32) -> bool {
    for _ in 0..64 {
        if pid == root {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        // After the command name in parentheses: state, then the parent's pid.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        match parent {
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// One event set with every GPU's critical XID errors, or none if the driver will not give one
/// (then XIDs go unseen, and uncorrectable ECC counts still mark a GPU unhealthy).
fn xid_events(nvml: &'static Nvml, count: u32) -> Option<EventSet<'static>> {
    let mut set = match nvml.create_event_set() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "NVML events unavailable: XID errors will not be seen");
            return None;
        }
    };
    for index in 0..count {
        let device = nvml.device_by_index(index).ok()?;
        set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(gpu = index, error = %e, "NVML XID events unavailable: XID errors will not be seen");
                return None;
            }
        };
    }
    Some(set)
}

impl GpuBackend for NvmlGpus {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn discover(&self) -> Result<Vec<GpuInfo>, String> {
        Ok(self.gpus.clone())
    }

    /// Readings a field at a time: a field the GPU does not support reads as 0, never fails the
    /// whole beat.
    fn telemetry(&mut self, _busy: &[(u32, f64)], _dt: std::time::Duration) -> Vec<gpucloud_api::GpuTelemetry> {
        let xids = self.drain_xids();
        let mut out = Vec::with_capacity(self.gpus.len());
        for (i, g) in self.gpus.iter().enumerate() {
            let Ok(d) = self.nvml.device_by_index(g.index) else { continue };
            let energy = d.total_energy_consumption().ok();
            let base = *self.energy_base[i].get_or_insert(energy.unwrap_or(0));
            out.push(gpucloud_api::GpuTelemetry {
                index: g.index,
                temperature_c: d.temperature(TemperatureSensor::Gpu).map_or(0.0, f64::from),
                power_w: d.power_usage().map_or(0.0, |mw| f64::from(mw) / 1000.0),
                energy_mj: energy.map_or(0, |e| e.saturating_sub(base)),
                memory_used_mib: d.memory_info().map_or(0, |m| m.used / MIB),
                utilization_pct: d.utilization_rates().map_or(0.0, |u| f64::from(u.gpu)),
                // One per reading: a fatal one if any came, else the latest.
                xid: xids
                    .iter()
                    .filter(|(i, _)| *i == g.index)
                    .map(|(_, x)| *x)
                    .reduce(|kept, x| if gpucloud_model::xid_is_fatal(kept) { kept } else { x }),
                ecc_uncorrectable: d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile).unwrap_or(0),
            });
        }
        out
    }

    /// GPU memory of the workload's compute processes, over all GPUs: those in its process group
    /// or below its leader (a container's processes sit below its init, in groups of their own).
    fn workload_memory_mib(&mut self, _instance: &str, pgid: i32, _state_dir: &std::path::Path) -> Option<u64> {
        let mut total = 0u64;
        for g in &self.gpus {
            let d = self.nvml.device_by_index(g.index).ok()?;
            for p in d.running_compute_processes().ok()? {
                let pid = p.pid as libc::pid_t;
                let group = crate::sys::process_group(pid);
                if (group == pgid || descends_from(pid, pgid))
                    && let UsedGpuMemory::Used(bytes) = p.used_gpu_memory
                {
                    total += bytes / MIB;
                }
            }
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_names_map_to_the_catalog() {
        for (name, mib, want) in [
            ("NVIDIA H100 80GB HBM3", 81_559, Some(GpuModel::H100_80GB)),
            ("NVIDIA H100 PCIe", 81_559, Some(GpuModel::H100_80GB)),
            ("NVIDIA H100 NVL", 95_830, None),
            ("NVIDIA H200", 143_771, Some(GpuModel::H200_141GB)),
            ("NVIDIA A100-SXM4-40GB", 40_960, Some(GpuModel::A100_40GB)),
            ("NVIDIA A100-SXM4-80GB", 81_920, Some(GpuModel::A100_80GB)),
            ("NVIDIA A100 80GB PCIe", 81_920, Some(GpuModel::A100_80GB)),
            ("NVIDIA A10", 23_028, Some(GpuModel::A10)),
            ("NVIDIA A40", 46_068, Some(GpuModel::A40)),
            ("NVIDIA L4", 23_034, Some(GpuModel::L4)),
            ("Tesla T4", 15_360, Some(GpuModel::T4)),
            ("NVIDIA RTX 6000 Ada Generation", 49_140, Some(GpuModel::Rtx6000Ada)),
            ("NVIDIA L40S", 46_068, None),
            ("NVIDIA GeForce RTX 4090", 24_564, None),
        ] {
            assert_eq!(model_of(name, mib), want, "{name}");
        }
    }

    #[test]
    fn a_process_belongs_to_the_workloads_above_it() {
        // A grandchild in a session (and process group) of its own still descends from us.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "setsid sleep 5 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let me = std::process::id() as i32;
        assert!(descends_from(grandchild, child.id() as i32));
        assert!(descends_from(grandchild, me));
        assert!(!descends_from(me, child.id() as i32), "a parent is not below its child");
        assert!(!descends_from(i32::MAX, me), "no such process");
        crate::sys::signal(grandchild, libc::SIGKILL);
        let _ = child.wait();
    }

    #[test]
    fn without_a_driver_it_says_what_to_do() {
        // Hosts that do have the driver skip this: there NVML opens.
        if let Err(e) = NvmlGpus::open() {
            assert!(e.contains("--fake-gpus"), "{e}");
        }
    }
}
