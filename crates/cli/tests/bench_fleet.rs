//! `gpucloud bench fleet` as an operator runs it: a real `serve` under simulated agents, with
//! instances created before measuring, on a fresh SQLite file.

use serde_json::Value;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gpucloud");

fn fleet(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(BIN).args(["--json", "bench", "fleet"]).args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn a_preloaded_fleet_is_measured_with_its_list_and_its_posting() {
    // 4 nodes of 2 GPUs hold 32 quarter-GPU slices: 24 before measuring, 4 while.
    let (ok, out, err) = fleet(&[
        "--nodes",
        "4",
        "--gpus-per-node",
        "2",
        "--share",
        "25",
        "--preload",
        "24",
        "--instances",
        "4",
        "--rate",
        "4",
        "--seconds",
        "3",
        "--interval-ms",
        "500",
        "--posting-period-s",
        "2",
        "--workers",
        "4",
        "--clients",
        "2",
    ]);
    assert!(ok, "{out}\n{err}");
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let row = &rows[0];
    assert_eq!((row["nodes"].as_u64(), row["preloaded"].as_u64()), (Some(4), Some(24)), "{row}");
    assert!(row["running_at_end"].as_i64().unwrap() >= 24, "the preload ran through the window: {row}");
    assert_eq!(row["created"].as_u64(), Some(4), "{row}");
    assert_eq!(row["beat_failures"].as_u64(), Some(0), "{row}");
    assert!(row["list_p50_ms"].as_f64().unwrap() > 0.0, "the list was read: {row}");
    assert!(row["posting_lag_s"].as_f64().is_some(), "28 intervals post within a 2 s period: {row}");

    // More than the fleet holds, or a slice that is no slice, is named before anything starts.
    let (ok, _, err) = fleet(&["--nodes", "4", "--gpus-per-node", "2", "--share", "25", "--preload", "40"]);
    assert!(!ok && err.contains("--preload 40") && err.contains("32 slices"), "{err}");
    let (ok, _, err) = fleet(&["--nodes", "4", "--share", "0"]);
    assert!(!ok && err.contains("--share"), "{err}");
    let (ok, _, err) = fleet(&["--nodes", "4", "--instances", "4", "--server-bin", "/nonexistent/gpucloud"]);
    assert!(!ok && err.contains("/nonexistent/gpucloud"), "{err}");
}
