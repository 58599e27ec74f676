use crate::FieldError;
use std::fmt;
use std::str::FromStr;

/// The GPU models gpucloud knows how to sell. A closed set: a price book, a scheduler filter and a
/// slice size are only meaningful for a model whose memory is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GpuModel {
    T4,
    L4,
    A10,
    A40,
    Rtx6000Ada,
    A100_40GB,
    A100_80GB,
    H100_80GB,
    H200_141GB,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown GPU model '{0}'; known models: {known}", known = GpuModel::known_names())]
pub struct UnknownGpuModel(pub String);

impl GpuModel {
    pub const ALL: [GpuModel; 9] = [
        GpuModel::T4,
        GpuModel::L4,
        GpuModel::A10,
        GpuModel::A40,
        GpuModel::Rtx6000Ada,
        GpuModel::A100_40GB,
        GpuModel::A100_80GB,
        GpuModel::H100_80GB,
        GpuModel::H200_141GB,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GpuModel::T4 => "T4",
            GpuModel::L4 => "L4",
            GpuModel::A10 => "A10",
            GpuModel::A40 => "A40",
            GpuModel::Rtx6000Ada => "RTX-6000-Ada",
            GpuModel::A100_40GB => "A100-40GB",
            GpuModel::A100_80GB => "A100-80GB",
            GpuModel::H100_80GB => "H100-80GB",
            GpuModel::H200_141GB => "H200-141GB",
        }
    }

    /// Device memory in MiB, as the vendor sells it.
    pub fn memory_mib(self) -> u64 {
        let gib = match self {
            GpuModel::T4 => 16,
            GpuModel::L4 | GpuModel::A10 => 24,
            GpuModel::A40 | GpuModel::Rtx6000Ada => 48,
            GpuModel::A100_40GB => 40,
            GpuModel::A100_80GB | GpuModel::H100_80GB => 80,
            GpuModel::H200_141GB => 141,
        };
        gib * 1024
    }

    /// Estimated draw of one GPU in watts, (idle, busy). Busy is the vendor's maximum board power
    /// (TDP) from its datasheet, for the SXM part where there are SXM and PCIe ones (A100, H100,
    /// H200); idle is an estimate of a powered card with nothing running, about a tenth of that.
    /// The placer weighs these when an operator asks it to (`serve --power-weight`).
    pub fn watts(self) -> (u32, u32) {
        match self {
            GpuModel::T4 => (10, 70),
            GpuModel::L4 => (12, 72),
            GpuModel::A10 => (20, 150),
            GpuModel::A40 => (30, 300),
            GpuModel::Rtx6000Ada => (25, 300),
            GpuModel::A100_40GB => (50, 400),
            GpuModel::A100_80GB => (55, 400),
            GpuModel::H100_80GB => (70, 700),
            GpuModel::H200_141GB => (75, 700),
        }
    }

    pub fn known_names() -> String {
        GpuModel::ALL.map(GpuModel::name).join(", ")
    }
}

impl fmt::Display for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GpuModel {
    type Err = UnknownGpuModel;

    /// Case-insensitive; `_` and spaces count as `-`, so `a100_40gb` names the A100-40GB.
    fn from_str(s: &str) -> Result<Self, UnknownGpuModel> {
        let norm = |x: &str| x.trim().to_ascii_lowercase().replace(['_', ' '], "-");
        let wanted = norm(s);
        GpuModel::ALL.into_iter().find(|m| norm(m.name()) == wanted).ok_or_else(|| UnknownGpuModel(s.to_string()))
    }
}

impl serde::Serialize for GpuModel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for GpuModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_parse_loosely() {
        for m in GpuModel::ALL {
            assert_eq!(m.name().parse::<GpuModel>().unwrap(), m);
        }
        assert_eq!("a100_40gb".parse::<GpuModel>().unwrap(), GpuModel::A100_40GB);
        assert_eq!("rtx 6000 ada".parse::<GpuModel>().unwrap(), GpuModel::Rtx6000Ada);
        let err = "B200".parse::<GpuModel>().unwrap_err().to_string();
        assert!(err.contains("B200") && err.contains("H100-80GB"), "{err}");
    }
}

/// A MIG profile: `compute` sevenths of the GPU's compute and a fixed memory slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigProfile {
    pub name: &'static str,
    pub compute: u8,
    pub memory_mib: u64,
}

const fn mig(name: &'static str, compute: u8, gib: u64) -> MigProfile {
    MigProfile { name, compute, memory_mib: gib * 1024 }
}

const MIG_A100_40: [MigProfile; 5] =
    [mig("1g.5gb", 1, 5), mig("2g.10gb", 2, 10), mig("3g.20gb", 3, 20), mig("4g.20gb", 4, 20), mig("7g.40gb", 7, 40)];
const MIG_80: [MigProfile; 6] = [
    mig("1g.10gb", 1, 10),
    mig("1g.20gb", 1, 20),
    mig("2g.20gb", 2, 20),
    mig("3g.40gb", 3, 40),
    mig("4g.40gb", 4, 40),
    mig("7g.80gb", 7, 80),
];
const MIG_H200: [MigProfile; 6] = [
    mig("1g.18gb", 1, 18),
    mig("1g.35gb", 1, 35),
    mig("2g.35gb", 2, 35),
    mig("3g.71gb", 3, 71),
    mig("4g.71gb", 4, 71),
    mig("7g.141gb", 7, 141),
];

impl GpuModel {
    /// The MIG profiles NVIDIA defines for the model; empty where MIG is not supported.
    pub fn mig_profiles(self) -> &'static [MigProfile] {
        match self {
            GpuModel::A100_40GB => &MIG_A100_40,
            GpuModel::A100_80GB | GpuModel::H100_80GB => &MIG_80,
            GpuModel::H200_141GB => &MIG_H200,
            _ => &[],
        }
    }

    /// Every model can be time-sliced with a memory cap and a compute share (HAMi-core / MPS).
    pub fn sliceable(self) -> bool {
        true
    }
}

/// A fraction of one GPU: compute in thousandths, memory, and the MIG profile when it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuShare {
    pub milli: u32,
    pub memory_mib: u64,
    pub mig: Option<String>,
}

impl GpuShare {
    /// What a request for part of one `model` GPU means: `percent` of its compute, `memory_mib`
    /// of its memory, or a MIG profile. `Ok(None)`: nothing asked, or all of it (a whole GPU).
    /// A share without memory gets the same fraction of memory, and memory without a share the
    /// compute fraction that memory is of the GPU.
    pub fn resolve(
        model: GpuModel,
        percent: Option<u32>,
        memory_mib: Option<u64>,
        mig: Option<&str>,
    ) -> Result<Option<GpuShare>, FieldError> {
        let total = model.memory_mib();
        if let Some(name) = mig {
            if percent.is_some() || memory_mib.is_some() {
                return Err(FieldError::new(
                    "mig",
                    "mig fixes compute and memory: give it without gpu_share or gpu_memory_mib",
                ));
            }
            let profiles = model.mig_profiles();
            if profiles.is_empty() {
                let capable: Vec<&str> =
                    GpuModel::ALL.iter().filter(|m| !m.mig_profiles().is_empty()).map(|m| m.name()).collect();
                return Err(FieldError::new(
                    "mig",
                    format!("{model} does not support MIG (MIG-capable: {})", capable.join(", ")),
                ));
            }
            let Some(p) = profiles.iter().find(|p| p.name == name) else {
                let names: Vec<&str> = profiles.iter().map(|p| p.name).collect();
                return Err(FieldError::new(
                    "mig",
                    format!("{model} has no MIG profile '{name}' (one of: {})", names.join(", ")),
                ));
            };
            let milli = (p.compute as u32 * 1000).div_ceil(7);
            return Ok(Some(GpuShare { milli, memory_mib: p.memory_mib, mig: Some(p.name.to_string()) }));
        }
        if let Some(p) = percent
            && !(1..=100).contains(&p)
        {
            return Err(FieldError::new("gpu_share", format!("gpu_share {p}: expected a percentage from 1 to 100")));
        }
        if let Some(m) = memory_mib
            && !(1..=total).contains(&m)
        {
            return Err(FieldError::new(
                "gpu_memory_mib",
                format!("gpu_memory_mib {m}: expected 1 to the {total} MiB of one {model}"),
            ));
        }
        let (milli, mem) = match (percent, memory_mib) {
            (None, None) => return Ok(None),
            (Some(p), None) => (p * 10, total * p as u64 / 100),
            (None, Some(m)) => ((m * 1000).div_ceil(total) as u32, m),
            (Some(p), Some(m)) => (p * 10, m),
        };
        if milli >= 1000 && mem >= total {
            return Ok(None);
        }
        Ok(Some(GpuShare { milli: milli.min(1000), memory_mib: mem, mig: None }))
    }

    /// "25% / 10240 MiB" or "MIG 1g.10gb".
    pub fn describe(&self) -> String {
        match &self.mig {
            Some(p) => format!("MIG {p}"),
            None => format!("{}% / {} MiB", self.milli as f64 / 10.0, self.memory_mib),
        }
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;

    #[test]
    fn shares_resolve_to_compute_and_memory() {
        let a = GpuModel::A100_40GB;
        let s = GpuShare::resolve(a, Some(25), Some(10240), None).unwrap().unwrap();
        assert_eq!((s.milli, s.memory_mib), (250, 10240));
        let s = GpuShare::resolve(a, Some(25), None, None).unwrap().unwrap();
        assert_eq!((s.milli, s.memory_mib), (250, 10240));
        let s = GpuShare::resolve(a, None, Some(10240), None).unwrap().unwrap();
        assert_eq!((s.milli, s.memory_mib), (250, 10240));
        assert_eq!(GpuShare::resolve(a, None, None, None).unwrap(), None);
        assert_eq!(GpuShare::resolve(a, Some(100), None, None).unwrap(), None, "all of it is a whole GPU");
        let s = GpuShare::resolve(GpuModel::H100_80GB, None, None, Some("1g.10gb")).unwrap().unwrap();
        assert_eq!((s.milli, s.memory_mib, s.mig.as_deref()), (143, 10240, Some("1g.10gb")));
    }

    #[test]
    fn bad_shares_say_what_is_wrong() {
        let a = GpuModel::A100_40GB;
        for (p, m, mig, field, want) in [
            (Some(0), None, None, "gpu_share", "gpu_share 0"),
            (Some(101), None, None, "gpu_share", "gpu_share 101"),
            (None, Some(50_000), None, "gpu_memory_mib", "40960 MiB"),
            (Some(10), None, Some("1g.5gb"), "mig", "without gpu_share"),
            (None, None, Some("1g.10gb"), "mig", "no MIG profile '1g.10gb' (one of: 1g.5gb"),
        ] {
            let e = GpuShare::resolve(a, p, m, mig).unwrap_err();
            assert!(e.message.contains(want) && e.field == field, "{e:?}");
        }
        let e = GpuShare::resolve(GpuModel::T4, None, None, Some("1g.5gb")).unwrap_err();
        assert!(e.message.contains("T4 does not support MIG (MIG-capable: A100-40GB"), "{e}");
    }
}

/// XID errors after which a GPU needs a reset or replacement (NVIDIA's XID catalog): double-bit
/// ECC, page retirement failures, NVLink errors, fallen off the bus, uncontained memory errors,
/// GSP failures. A GPU that reports one gets no new work.
pub const FATAL_XIDS: [u32; 11] = [48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120];

pub fn xid_is_fatal(xid: u32) -> bool {
    FATAL_XIDS.contains(&xid)
}
