//! The process runtime against real processes.

use gpucloud_agent::runtime::ProcessRuntime;
use gpucloud_api::AgentWorkload;
use std::time::{Duration, Instant};

fn workload(id: &str, command: &str) -> AgentWorkload {
    AgentWorkload {
        id: id.into(),
        desired: "run".into(),
        gpus: vec![0],
        gpu_uuids: vec!["GPU-test-0".into()],
        command: command.into(),
    }
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gpucloud-runtime-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_workload_missing_from_the_state_file_is_adopted_not_started_twice() {
    let dir = temp_dir();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    rt.start(&workload("i-orphan", "exec sleep 30"), "http://127.0.0.1:1/x", "t");
    // A crash between spawning and recording: the state file does not know the workload.
    std::fs::remove_file(dir.join("state.json")).unwrap();
    let mut again = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    let actual = again.actual();
    assert_eq!(actual.len(), 1, "{actual:?}");
    assert!(actual[0].id == "i-orphan" && actual[0].alive);
    again.stop("i-orphan");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        again.poll();
        if !again.actual()[0].alive {
            break;
        }
        assert!(Instant::now() < deadline, "the adopted workload did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(again.report()[0].state, "stopped", "a requested stop is a stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_codes_and_output() {
    let dir = temp_dir();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    rt.start(&workload("i-a", "echo out; echo err >&2; echo $CUDA_VISIBLE_DEVICES; exit 7"), "u", "t");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        rt.poll();
        if !rt.actual()[0].alive {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = &rt.report()[0];
    assert_eq!((r.state.as_str(), r.exit_code), ("failed", Some(7)));
    let logs = rt.pending_logs();
    assert_eq!(logs.len(), 1);
    assert_eq!((logs[0].1, logs[0].2.as_str()), (1, "out\nerr\nGPU-test-0\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
