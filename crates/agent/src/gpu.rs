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
}

/// GPUs described on the command line (`A100-40GB:4,T4:1`), with UUIDs derived from the node
/// name so that a restarted agent finds the same GPUs.
pub struct FakeGpus {
    gpus: Vec<GpuInfo>,
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
        Ok(FakeGpus { gpus })
    }
}

impl GpuBackend for FakeGpus {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn discover(&self) -> Result<Vec<GpuInfo>, String> {
        Ok(self.gpus.clone())
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
