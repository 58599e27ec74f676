//! The process runtime against real processes.

use gpucloud_agent::Runtime;
use gpucloud_agent::runtime::ProcessRuntime;
use gpucloud_api::{AgentWorkload, WorkloadState};
use std::time::{Duration, Instant};

fn workload(id: &str, command: &str) -> AgentWorkload {
    AgentWorkload {
        id: id.into(),
        desired: gpucloud_api::Desired::Run,
        gpus: vec![0],
        gpu_uuids: vec!["GPU-test-0".into()],
        command: command.into(),
        slice: None,
        env: Default::default(),
        notice: None,
        cluster: None,
        image: None,
        ports: Vec::new(),
        registry_auth: None,
        volume: None,
        ssh_keys: Vec::new(),
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
    rt.start(&workload("i-orphan", "exec sleep 30"), "http://127.0.0.1:1/x", "t", &[]);
    // Let the shell's own exec finish: mid-execve the kernel shows no environment to scan. An agent
    // restart never comes this fast.
    std::thread::sleep(Duration::from_millis(300));
    // A crash between spawning and recording: the state file does not know the workload.
    std::fs::remove_file(dir.join("state.json")).unwrap();
    let mut again = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    let actual = again.actual();
    assert_eq!(actual.len(), 1, "{actual:?}");
    assert!(actual[0].id == "i-orphan" && actual[0].alive);
    assert_eq!(again.report()[0].port, rt.report()[0].port, "its port is read back from its environment");
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
    assert_eq!(again.report()[0].state, WorkloadState::Stopped, "a requested stop is a stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_codes_and_output() {
    let dir = temp_dir();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    rt.start(&workload("i-a", "echo out; echo err >&2; echo $CUDA_VISIBLE_DEVICES; exit 7"), "u", "t", &[]);
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
    assert_eq!((r.state, r.exit_code), (WorkloadState::Failed, Some(7)));
    let logs = rt.pending_logs();
    assert_eq!(logs.len(), 1);
    assert_eq!((logs[0].1, logs[0].2.as_str()), (1, "out\nerr\nGPU-test-0\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slice_gets_its_limits_and_is_stopped_over_its_memory_cap() {
    use gpucloud_agent::gpu::{FakeGpus, GpuBackend};
    let dir = temp_dir();
    let mut gpus = FakeGpus::parse("A100-40GB:1", "n").unwrap();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_millis(300)).unwrap();
    let mut w = workload(
        "i-slice",
        "env | grep -E '^(CUDA_|GPUCLOUD_GPU)' | sort; echo 8000 > $GPUCLOUD_FAKE_GPU_MEMORY_FILE; \
         while [ ! -e go ]; do sleep 0.05; done; echo 12000 > $GPUCLOUD_FAKE_GPU_MEMORY_FILE; exec sleep 30",
    );
    w.slice = Some(gpucloud_api::AgentSlice { milli: 250, memory_mib: 10240, mig: None });
    let env = gpus.workload_env(&w.id, rt.dir().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    w.command = format!("cd {} && {}", cwd.display(), w.command);
    rt.start(&w, "u", "t", &env);
    let root = rt.dir().unwrap().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Under the cap it runs on.
    loop {
        rt.poll();
        rt.enforce(&mut |id, pgid| gpus.workload_memory_mib(id, pgid, &root));
        if gpus.workload_memory_mib("i-slice", 0, &root) == Some(8000) {
            break;
        }
        assert!(Instant::now() < deadline, "the workload never declared its memory");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.enforce(&mut |id, pgid| gpus.workload_memory_mib(id, pgid, &root));
    assert_eq!(rt.report()[0].state, WorkloadState::Running);
    std::fs::write(cwd.join("go"), "").unwrap();
    loop {
        rt.poll();
        rt.enforce(&mut |id, pgid| gpus.workload_memory_mib(id, pgid, &root));
        if !rt.actual()[0].alive {
            break;
        }
        assert!(Instant::now() < deadline, "the workload over its cap was not stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = &rt.report()[0];
    assert_eq!(r.state, WorkloadState::Failed);
    assert_eq!(r.reason.as_deref(), Some("exceeded its GPU memory cap: 12000 MiB used of 10240 MiB"));
    let log = std::fs::read_to_string(dir.join("logs/i-slice.log")).unwrap();
    for want in [
        "CUDA_DEVICE_MEMORY_LIMIT=10240m",
        "CUDA_DEVICE_SM_LIMIT=25",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10240M",
        "CUDA_VISIBLE_DEVICES=GPU-test-0",
        "GPUCLOUD_GPU_MEMORY_MIB=10240",
    ] {
        assert!(log.contains(want), "{want} missing from:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_workload_gets_its_own_port_from_the_range_and_keeps_it_across_a_restart() {
    let dir = temp_dir();
    let range = gpucloud_agent::runtime::parse_port_range("39000-39099").unwrap();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap().with_ports(Some(range.clone()));
    let out = dir.join("port");
    rt.start(&workload("i-a", &format!("echo $GPUCLOUD_PORT > {}; exec sleep 30", out.display())), "u", "t", &[]);
    rt.start(&workload("i-b", "exec sleep 30"), "u", "t", &[]);
    let ports: Vec<u16> = rt.report().iter().map(|r| r.port.expect("a running workload reports its port")).collect();
    assert!(ports.iter().all(|p| range.contains(p)), "{ports:?}");
    assert_ne!(ports[0], ports[1], "two workloads, two ports");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&out).unwrap_or_default().trim().is_empty() {
        assert!(Instant::now() < deadline, "the workload never wrote its port");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        ports[0].to_string(),
        "GPUCLOUD_PORT is the port reported"
    );
    let mut again = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    let adopted: Vec<Option<u16>> = again.report().iter().map(|r| r.port).collect();
    assert_eq!(adopted, vec![Some(ports[0]), Some(ports[1])], "an adopted workload keeps its port");
    again.stop_all_now();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn port_ranges_are_checked() {
    use gpucloud_agent::runtime::parse_port_range;
    assert_eq!(parse_port_range("20000-32000").unwrap(), 20000..=32000);
    assert_eq!(parse_port_range("8000-8000").unwrap(), 8000..=8000);
    for bad in ["", "8000", "80-90", "9000-8000", "20000-70000", "a-b"] {
        assert!(parse_port_range(bad).unwrap_err().contains("LOW-HIGH"), "{bad}");
    }
    // A range with no port free yields none rather than a taken one.
    let held = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let p = held.local_addr().unwrap().port();
    assert_eq!(gpucloud_agent::runtime::free_port(Some(&(p..=p)), &[]), None);
    assert_eq!(gpucloud_agent::runtime::free_port(Some(&(p..=p)), &[p]), None);
}

#[test]
fn a_process_node_refuses_an_image_with_a_reason() {
    let dir = temp_dir();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    let mut w = workload("i-img", "true");
    w.image = Some("nvcr.io/nvidia/pytorch:24.05-py3".into());
    rt.start(&w, "http://127.0.0.1:1/x", "t", &[]);
    let r = rt.report().into_iter().find(|r| r.id == "i-img").unwrap();
    assert_eq!(r.state, WorkloadState::Failed);
    let reason = r.reason.unwrap();
    assert!(reason.contains("nvcr.io/nvidia/pytorch:24.05-py3") && reason.contains("--runtime docker"), "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn ended(rt: &mut ProcessRuntime, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        rt.poll();
        if rt.actual().iter().any(|a| a.id == id && !a.alive) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes the file takes on disk (holes take none).
fn on_disk(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn output_is_shipped_in_bounded_chunks_and_the_node_keeps_little_of_it() {
    let dir = temp_dir();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap().with_log_keep(16 << 20);
    // 6 MiB of numbered lines, printed at once.
    rt.start(&workload("i-big", "seq -w 1 524288 | sed 's/^/line /'"), "u", "t", &[]);
    ended(&mut rt, "i-big");
    let log = dir.join("logs").join("i-big.log");
    let written = std::fs::metadata(&log).unwrap().len();
    assert!(written > 4 << 20, "{written}");
    let mut shipped = String::new();
    loop {
        rt.bound_logs();
        let logs = rt.pending_logs();
        let Some((id, seq, text, bytes)) = logs.into_iter().next() else { break };
        assert!(text.len() <= 64 * 1024, "a chunk is at most 64 KiB: {}", text.len());
        shipped.push_str(&text);
        rt.logs_shipped(&id, seq, bytes);
    }
    assert_eq!(shipped.len() as u64, written, "every byte shipped, none twice");
    assert!(shipped.starts_with("line 000001\n") && shipped.ends_with("line 524288\n"));
    assert!(!shipped.contains("dropped"));
    // Shipped output is given back as it goes; at the end the file holds (almost) nothing.
    assert!(on_disk(&log) <= 64 * 1024, "{} bytes still on disk", on_disk(&log));

    // A server out of reach: only the newest MiB is kept, and the log says what was dropped.
    let mut rt = rt.with_log_keep(1 << 20);
    rt.start(&workload("i-lost", "seq -w 1 524288 | sed 's/^/line /'"), "u", "t", &[]);
    ended(&mut rt, "i-lost");
    rt.bound_logs();
    let log = dir.join("logs").join("i-lost.log");
    assert!(on_disk(&log) <= (1 << 20) + 64 * 1024, "{} bytes kept", on_disk(&log));
    let mut text = String::new();
    loop {
        rt.bound_logs();
        let logs = rt.pending_logs();
        let Some((id, seq, t, bytes)) = logs.into_iter().find(|l| l.0 == "i-lost") else { break };
        text.push_str(&t);
        rt.logs_shipped(&id, seq, bytes);
    }
    let (note, rest) = text.split_once('\n').unwrap();
    assert!(note.starts_with("[gpucloud: ") && note.contains("bytes of output were dropped"), "{note}");
    assert!(rest.starts_with("line ") && rest.ends_with("line 524288\n"), "kept from a line's start to the end");
    let dropped: u64 = note["[gpucloud: ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert_eq!(dropped + rest.len() as u64, written, "what was dropped and what was kept add up");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_spinning_workload_loads_its_fake_gpu_and_a_sleeping_one_does_not() {
    use gpucloud_agent::gpu::GpuBackend;
    let dir = temp_dir();
    let mut rt = ProcessRuntime::open(&dir, Duration::from_secs(1)).unwrap();
    let mut idle = workload("i-idle", "exec sleep 30");
    idle.gpus = vec![0];
    let mut busy = workload("i-busy", "while :; do :; done");
    busy.gpus = vec![1];
    rt.start(&idle, "u", "t", &[]);
    rt.start(&busy, "u", "t", &[]);
    assert!(rt.gpu_load().iter().all(|(_, l)| *l == 0.0), "nothing measured yet");
    std::thread::sleep(Duration::from_millis(1500));
    let load = rt.gpu_load();
    let of = |g: u32| load.iter().find(|(i, _)| *i == g).unwrap().1;
    assert!(of(0) < 0.1, "sleep: {load:?}");
    assert!(of(1) > 0.3, "a busy loop: {load:?}");
    let mut gpus = gpucloud_agent::gpu::FakeGpus::parse("A100-40GB:3", "host").unwrap();
    let readings = gpus.telemetry(&load, Duration::from_secs(1));
    assert!(readings[0].utilization_pct < 10.0, "{readings:?}");
    assert!(readings[1].utilization_pct > 25.0, "{readings:?}");
    assert_eq!(readings[2].utilization_pct, 0.0, "no workload");
    assert!(readings[0].memory_used_mib > 0 && readings[2].memory_used_mib == 0);
    rt.stop_all_gracefully();
    let _ = std::fs::remove_dir_all(&dir);
}
