//! Tables for people, JSON for scripts.

use serde::Serialize;

pub use gpucloud_sim::report::table;

pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

pub fn gpu_list(gpus: &[u32]) -> String {
    if gpus.is_empty() { "-".into() } else { gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let t =
            super::table(&["ID", "STATE"], &[vec!["i-1".into(), "running".into()], vec!["i-22".into(), "x".into()]]);
        assert_eq!(t, "ID    STATE\ni-1   running\ni-22  x");
    }
}
