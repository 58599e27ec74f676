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
