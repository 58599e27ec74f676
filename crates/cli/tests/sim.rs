//! `gpucloud sim fgd` on the Alibaba trace in ../shared/data, as a user runs it: the published
//! numbers are reproduced within the seed noise, and the default policy is at least FGD.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gpucloud");

/// The trace the repository ships (data/alibaba-gpu-v2023), or where GPUCLOUD_TRACE_DIR says.
/// It is part of every clone, so a missing file is a failure, never a skip.
fn data() -> PathBuf {
    let dir = std::env::var_os("GPUCLOUD_TRACE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/alibaba-gpu-v2023/csv"));
    assert!(
        dir.join("openb_node_list_gpu_node.csv").exists(),
        "no Alibaba trace in {}: the repository ships it in data/alibaba-gpu-v2023",
        dir.display()
    );
    dir
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(BIN).arg("sim").args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn the_fgd_experiment_reproduces_the_published_results() {
    let dir = data();
    let trace = dir.join("openb_pod_list_default.csv");
    let nodes = dir.join("openb_node_list_gpu_node.csv");
    let svg = std::env::temp_dir().join(format!("gpucloud-fgd-{}.svg", std::process::id()));
    let (ok, out, err) = run(&[
        "fgd",
        "--trace",
        trace.to_str().unwrap(),
        "--nodes",
        nodes.to_str().unwrap(),
        "--policy",
        "fgd,fgd-pack,fgd-cpu,best-fit",
        "--seeds",
        "42..45",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    let at = |policy: &str, k: u64| {
        records
            .iter()
            .find(|r| r["policy"] == policy && r["demand_percent"] == k)
            .and_then(|r| r["allocation_mean"].as_f64())
            .unwrap_or_else(|| panic!("no record for {policy} at {k}%"))
    };
    for policy in ["fgd", "fgd-pack", "fgd-cpu", "best-fit"] {
        for k in 100..=130 {
            at(policy, k);
        }
        assert!(records.iter().all(|r| r["seeds"] == 4 || r["demand_percent"].as_u64() < Some(100)));
    }
    // Published (10 seeds): FGD 95.39, BestFit 93.08; the 4-seed spread is a few tenths.
    let (fgd, pack, bf) = (at("fgd", 130), at("fgd-pack", 130), at("best-fit", 130));
    assert!((fgd - 95.39).abs() < 0.4, "fgd {fgd}");
    assert!((bf - 93.08).abs() < 0.5, "best-fit {bf}");
    assert!(pack >= fgd, "fgd-pack {pack} < fgd {fgd} on the same seeds");
    // Counting the GPUs a node's CPU strands is worth points, not noise (10 seeds: +0.51).
    let cpu = at("fgd-cpu", 130);
    assert!(cpu >= fgd + 0.3, "fgd-cpu {cpu} against fgd {fgd}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("fgd-pack"));
    let _ = std::fs::remove_file(&svg);

    // The table names every policy and the demand columns.
    let (ok, out, err) = run(&[
        "fgd",
        "--trace",
        trace.to_str().unwrap(),
        "--nodes",
        nodes.to_str().unwrap(),
        "--policy",
        "gpu-packing",
        "--seeds",
        "1",
        "--tune",
        "1.0",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("gpu-packing") && out.contains("100%") && !out.contains("105%"), "{out}");
}

#[test]
fn bad_arguments_are_named() {
    let dir = data();
    let trace = dir.join("openb_pod_list_default.csv");
    let nodes = dir.join("openb_node_list_gpu_node.csv");
    let (trace, nodes) = (trace.to_str().unwrap(), nodes.to_str().unwrap());
    for (mut args, want) in [
        (vec!["fgd", "--policy", "smart"], "unknown policy 'smart'"),
        (vec!["fgd", "--seeds", "9..1"], "bad seeds '9..1'"),
        (vec!["fgd", "--tune", "0"], "--tune 0"),
        (vec!["fgd", "--trace", "/nonexistent/trace.csv"], "/nonexistent/trace.csv"),
        (vec!["fgd", "--nodes", "/nonexistent/nodes.csv"], "/nonexistent/nodes.csv"),
        (vec!["replay", "--price", "G2"], "expected MODEL=DOLLARS"),
        (vec!["replay", "--compress", "0.5"], "compress 0.5"),
        (vec!["replay", "--projects", "17"], "at most 16"),
        (vec!["replay", "--fleet", "0"], "--fleet 0"),
        (vec!["replay", "--projects", "2", "--aging-minutes", "0"], "--aging-minutes 0"),
        (vec!["replay", "--prefer", "smartest"], "--prefer 'smartest'"),
        (vec!["fgd", "--power-weight=-1"], "--power-weight -1"),
        (vec!["fgd", "--policy", "best-fit", "--power-weight", "2"], "applies to fgd, fgd-pack and fgd-cpu"),
        (vec!["bound", "--tune", "0"], "--tune 0"),
        (vec!["bound", "--policy", "smart"], "unknown policy 'smart'"),
        (vec!["bound", "--seeds", "9..1"], "bad seeds '9..1'"),
    ] {
        for (flag, path) in [("--trace", trace), ("--nodes", nodes)] {
            if !args.contains(&flag) {
                args.extend([flag, path]);
            }
        }
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_replay_split_into_projects_compares_fifo_with_the_schedulers_order() {
    let dir = data();
    let trace = dir.join("openb_pod_list_default.csv");
    let nodes = dir.join("openb_node_list_gpu_node.csv");
    let args = [
        "replay",
        "--trace",
        trace.to_str().unwrap(),
        "--nodes",
        nodes.to_str().unwrap(),
        "--projects",
        "2",
        "--compress",
        "100",
        "--fleet",
        "100",
        "--json",
    ];
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.iter().map(|r| r["queue"].as_str().unwrap()).collect::<Vec<_>>(), ["fifo", "fair"]);
    for r in &runs {
        let shares: f64 = r["projects"].as_array().unwrap().iter().map(|p| p["share_pct"].as_f64().unwrap()).sum();
        assert!((shares - 100.0).abs() < 0.1, "{shares}");
        let classes: Vec<&str> =
            r["priorities"].as_array().unwrap().iter().map(|p| p["priority"].as_str().unwrap()).collect();
        assert_eq!(classes, ["production", "default", "batch"]);
    }
    // The scheduler's order serves production work sooner than arrival order does.
    let p95 = |r: &Value| r["priorities"][0]["wait_p95_s"].as_i64().unwrap();
    assert!(p95(&runs[1]) < p95(&runs[0]), "fair {} against fifo {}", p95(&runs[1]), p95(&runs[0]));
}

#[test]
fn spot_with_recovery_against_on_demand() {
    let dir = data();
    let trace = dir.join("openb_pod_list_default.csv");
    let (ok, out, err) = run(&["spot", "--trace", trace.to_str().unwrap(), "--rates", "0,0.5,4", "--json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 6, "two checkpoint modes per rate");
    let row = |rate: f64, ckpt: &str| {
        rows.iter()
            .find(|r| r["rate_per_hour"] == rate && r["checkpoint"].as_str().unwrap().starts_with(ckpt))
            .unwrap_or_else(|| panic!("no row for {rate} {ckpt}"))
    };
    let calm = row(0.0, "on notice");
    assert!(calm["savings_pct"].as_f64().unwrap() >= 60.0 && calm["completion_overhead_pct"] == 0.0, "{calm}");
    assert_eq!(row(0.5, "on notice")["holds"], true, "moderate preemption keeps the promise");
    assert_eq!(row(4.0, "every").as_object().unwrap()["holds"], false, "and the report shows where it stops");
    let (ok, _, err) = run(&["spot", "--trace", trace.to_str().unwrap(), "--rates=-1"]);
    assert!(!ok && err.contains("--rates"), "{err}");
}

#[test]
fn the_bound_brackets_what_any_packing_could_reach() {
    let dir = data();
    let trace = dir.join("openb_pod_list_default.csv");
    let nodes = dir.join("openb_node_list_gpu_node.csv");
    let (trace, nodes) = (trace.to_str().unwrap(), nodes.to_str().unwrap());
    let (ok, out, err) = run(&["bound", "--trace", trace, "--nodes", nodes, "--seeds", "42", "--json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let at = |figure: &str| {
        rows.iter()
            .find(|r| r["figure"] == figure)
            .and_then(|r| r["allocation_mean"].as_f64())
            .unwrap_or_else(|| panic!("no {figure} in {out}"))
    };
    let (fgd, pack, cpu, offline, bound) = (at("fgd"), at("fgd-pack"), at("fgd-cpu"), at("offline"), at("bound"));
    // Every packing the policies or the offline packer find is one the bound covers.
    assert!(fgd <= offline && cpu <= offline && pack <= bound && offline <= bound && bound <= 100.0, "{out}");
    // The offline packer, free to leave tasks out, beats FGD on this trace by points, not noise.
    assert!(offline > fgd + 2.0, "{out}");
    let captured = rows.iter().find(|r| r["figure"] == "bound").unwrap()["headroom_captured"].as_f64();
    assert_eq!(captured, Some(100.0));

    let (ok, out, err) = run(&["bound", "--trace", trace, "--nodes", nodes, "--seeds", "42", "--policy", "best-fit"]);
    assert!(ok, "{err}");
    for figure in ["fgd ", "best-fit", "offline", "bound", "of headroom"] {
        assert!(out.contains(figure), "{figure} missing from {out}");
    }
}

#[test]
fn power_and_price_are_weighed_and_reported() {
    let dir = data();
    let trace = dir.join("openb_pod_list_default.csv");
    let nodes = dir.join("openb_node_list_gpu_node.csv");
    let (trace, nodes) = (trace.to_str().unwrap(), nodes.to_str().unwrap());
    // Below saturation every policy places everything; weighing power powers fewer GPUs.
    let args = [
        "fgd",
        "--trace",
        trace,
        "--nodes",
        nodes,
        "--policy",
        "fgd-pack",
        "--seeds",
        "42",
        "--tune",
        "0.7",
        "--power-weight",
        "0,1",
        "--json",
    ];
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    let kw = |policy: &str| {
        records
            .iter()
            .find(|r| r["policy"] == policy && r["demand_percent"] == 70)
            .and_then(|r| r["fleet_kw"].as_f64())
            .unwrap_or_else(|| panic!("no power for {policy}"))
    };
    assert!(kw("fgd-pack w=1") < kw("fgd-pack") * 0.98, "{} against {}", kw("fgd-pack w=1"), kw("fgd-pack"));

    // Cheapest first bills less than the policy's own choice of model, on the same tasks.
    let args =
        ["replay", "--trace", trace, "--nodes", nodes, "--policy", "fgd-pack", "--prefer", "policy,cheapest", "--json"];
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    let bill = |prefer: &str| {
        let r = runs.iter().find(|r| r["prefer"] == prefer).unwrap_or_else(|| panic!("no {prefer} run"));
        r["total_cost"].as_str().unwrap().parse::<f64>().unwrap()
    };
    assert!(bill("cheapest") < bill("policy") * 0.8, "{} against {}", bill("cheapest"), bill("policy"));
}

#[test]
fn a_reader_that_stops_early_gets_no_panic() {
    use std::io::{BufRead, BufReader};
    let dir = data();
    let trace = dir.join("openb_pod_list_default.csv");
    let mut child = Command::new(BIN)
        // Six replays of 1,000 rows each: far more than a pipe's buffer holds.
        .args([
            "sim",
            "replay",
            "--buckets",
            "1000",
            "--prefer",
            "policy,cheapest,fastest",
            "--policy",
            "fgd-pack,best-fit",
        ])
        .args(["--trace", trace.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, as `| head -1` does, and close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("policy fgd-pack"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

/// `sim chaos` as a user runs it: bad arguments are named; a seed with only some of its faults
/// runs and names them in its replay line; a known bug fails the run, and `--shrink` prints a
/// smaller run (fewer faults, then fewer tenants' actions) that still fails, with the command
/// that replays it.
#[test]
fn chaos_arguments_replays_and_shrinking() {
    for (args, want) in [
        (vec!["chaos", "--only-faults", "3,x"], "--only-faults '3,x'"),
        (vec!["chaos", "--only-faults", "0"], "from 1 up"),
        (vec!["chaos", "--only-actions", "2,,3"], "--only-actions '2,,3'"),
        (vec!["chaos", "--inject", "typo"], "unknown bug 'typo' (no-fencing, unnumbered-beats)"),
        (vec!["chaos", "--nodes", "0"], "--nodes must be between 1 and 64"),
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (ok, out, err) = run(&["chaos", "--seeds", "3", "--minutes", "1", "--only-faults", "none", "--verbose"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("faults: \n") || out.contains("faults: \r\n"), "{out}");

    // Agents that never fence themselves run a workload twice on some seed of the first ten.
    let (ok, out, err) = run(&["chaos", "--seeds", "1..10", "--minutes", "5", "--inject", "no-fencing", "--shrink"]);
    assert!(!ok, "{out}");
    assert!(err.contains("invariants broken on seeds"), "{err}");
    let shrunk = out.split("shrunk from").nth(1).unwrap_or_else(|| panic!("no shrunk run: {out}"));
    assert!(
        shrunk.contains("--only-faults") && shrunk.contains("--only-actions") && shrunk.contains("--inject no-fencing"),
        "{shrunk}"
    );
    assert!(shrunk.contains("at once"), "{shrunk}");
}
