//! The Docker runtime against a real engine. It runs where GPUCLOUD_TEST_DOCKER_IMAGE names a
//! local image with /bin/sh and an engine is reachable (`.ci/run` starts dockerd and imports a
//! busybox image); elsewhere it says why and passes, as the engine is not part of `cargo test`,
//! except under CI, where a missing image is a failure.

use gpucloud_agent::Runtime;
use gpucloud_agent::docker::{Confinement, DockerLauncher};
use gpucloud_agent::runtime::ProcessRuntime;
use gpucloud_api::{AgentWorkload, WorkloadState};
use std::time::{Duration, Instant};

fn image() -> Option<String> {
    let image = std::env::var("GPUCLOUD_TEST_DOCKER_IMAGE").ok().filter(|i| !i.is_empty());
    if image.is_none() {
        assert!(std::env::var("CI").is_err(), "under CI the Docker runtime tests need GPUCLOUD_TEST_DOCKER_IMAGE");
        eprintln!("GPUCLOUD_TEST_DOCKER_IMAGE is not set: the Docker runtime is not exercised here");
    }
    image
}

fn workload(id: &str, command: &str) -> AgentWorkload {
    AgentWorkload {
        id: id.into(),
        desired: gpucloud_api::Desired::Run,
        gpus: vec![1],
        gpu_uuids: vec!["GPU-test-1".into()],
        command: command.into(),
        slice: None,
        env: [("EXTRA".to_string(), "from the server".to_string())].into(),
        notice: None,
        cluster: None,
        image: None,
        ports: Vec::new(),
        registry_auth: None,
        volume: None,
        ssh_keys: Vec::new(),
    }
}

fn state_of(rt: &ProcessRuntime, id: &str) -> (WorkloadState, Option<i32>) {
    let r = rt.report().into_iter().find(|r| r.id == id).unwrap();
    (r.state, r.exit_code)
}

fn wait_for(rt: &mut ProcessRuntime, what: &str, done: impl Fn(&ProcessRuntime) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(rt) {
        assert!(Instant::now() < deadline, "{what}: {:?}", rt.report());
        std::thread::sleep(Duration::from_millis(50));
        rt.poll();
    }
}

/// Everything shipped so far, concatenated per instance.
fn ship(rt: &mut ProcessRuntime, into: &mut std::collections::BTreeMap<String, String>) {
    for (id, seq, text, file_bytes) in rt.pending_logs() {
        rt.logs_shipped(&id, seq, file_bytes);
        into.entry(id).or_default().push_str(&text);
    }
}

#[test]
fn containers_run_exit_stop_and_are_adopted_after_an_agent_restart() {
    let Some(image) = image() else { return };
    let dir = std::env::temp_dir().join(format!("gpucloud-docker-{:016x}", rand::random::<u64>()));
    // A node with 2 GPUs, 2 CPUs and 2 GiB: one GPU comes with 1 CPU and 1 GiB.
    let connect = || {
        DockerLauncher::connect(&image, false, Confinement::share_of(2, 2048, 2))
            .expect("a reachable engine with the test image")
    };
    let mut rt = ProcessRuntime::open_with(&dir, Duration::from_secs(5), Some(connect())).unwrap();
    rt.start(
        &workload(
            "i-exit",
            "echo gpus=$CUDA_VISIBLE_DEVICES id=$GPUCLOUD_INSTANCE_ID extra=\"$EXTRA\" port=$GPUCLOUD_PORT; echo oops >&2; \
             echo uid=$(id -u) home=$HOME; grep -E 'CapEff|NoNewPrivs' /proc/self/status; \
             echo x > /tmp/own && echo tmp=writable; \
             echo mem=$(cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null); \
             echo agent-env=${GPUCLOUD_AGENT_STATE:-none}; exit 3",
        ),
        "http://127.0.0.1:1/v1/instance/t",
        "t",
        &[],
    );
    rt.start(
        &workload("i-long", "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 0.1; done"),
        "http://127.0.0.1:1/v1/instance/u",
        "u",
        &[],
    );
    wait_for(&mut rt, "the first container never exited", |rt| state_of(rt, "i-exit").0 != WorkloadState::Running);
    assert_eq!(state_of(&rt, "i-exit"), (WorkloadState::Failed, Some(3)), "exit 3 is a failure with code 3");
    let mut logs = std::collections::BTreeMap::new();
    ship(&mut rt, &mut logs);
    let port = rt.report().into_iter().find(|r| r.id == "i-long").unwrap().port.expect("a port");
    let out = &logs["i-exit"];
    assert!(out.contains("gpus=GPU-test-1 id=i-exit extra=from the server port="), "{out}");
    assert!(out.contains("oops"), "stderr is in the log too: {out}");
    // Confined: not root, no capabilities, no new privileges, its own /tmp, its share of memory,
    // nothing of the agent's environment.
    for needle in [
        "uid=1000 home=/tmp",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "tmp=writable",
        "mem=1073741824",
        "agent-env=none",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }

    // The agent restarts: the running container is adopted, not started again.
    drop(rt);
    let mut again = ProcessRuntime::open_with(&dir, Duration::from_secs(5), Some(connect())).unwrap();
    let alive: Vec<(String, bool)> = again.actual().into_iter().map(|a| (a.id, a.alive)).collect();
    assert_eq!(alive, vec![("i-exit".to_string(), false), ("i-long".to_string(), true)]);
    let own = connect().own(&dir.canonicalize().unwrap()).unwrap();
    assert_eq!(own.len(), 2, "no container started twice");
    // The GPUs the container asked for (the NVIDIA runtime's device request on a real node) are
    // its own only, as its label records for the fake backend.
    for (_, container) in &own {
        let label = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{index .Config.Labels \"gpucloud.gpus\"}}", container])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "GPU-test-1");
    }
    assert_eq!(again.report().into_iter().find(|r| r.id == "i-long").unwrap().port, Some(port), "it keeps its port");

    // Stop: SIGTERM reaches the workload through the container's init; it ends as stopped.
    again.stop("i-long");
    wait_for(&mut again, "the stopped container never exited", |rt| state_of(rt, "i-long").0 != WorkloadState::Running);
    assert_eq!(state_of(&again, "i-long").0, WorkloadState::Stopped);
    ship(&mut again, &mut logs);
    assert!(logs["i-long"].contains("up") && logs["i-long"].contains("got TERM"), "{:?}", logs["i-long"]);

    // Once the server has heard of both ends, the containers are removed.
    let report = again.report();
    let forgotten = again.reported(&report);
    assert_eq!(forgotten.len(), 2, "{forgotten:?}");
    assert!(connect().own(&dir.canonicalize().unwrap()).unwrap().is_empty(), "containers removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_image_is_an_error_at_start() {
    if image().is_none() {
        return;
    }
    let err = DockerLauncher::connect("gpucloud-no-such-image:never", false, Confinement::share_of(1, 1024, 1))
        .err()
        .unwrap();
    assert!(err.contains("gpucloud-no-such-image:never"), "{err}");
}

/// An image made from the test image with a marker file in it (no registry here: a commit).
fn derived_image(base: &str) -> String {
    let tag = "gpucloud-test-derived:1";
    let name = format!("gpucloud-derive-{:08x}", rand::random::<u32>());
    let run = std::process::Command::new("docker")
        .args(["run", "--name", &name, base, "sh", "-c", "echo derived > /marker"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let commit = std::process::Command::new("docker").args(["commit", &name, tag]).output().unwrap();
    assert!(commit.status.success(), "{}", String::from_utf8_lossy(&commit.stderr));
    let _ = std::process::Command::new("docker").args(["rm", "-f", &name]).output();
    tag.to_string()
}

#[test]
fn a_workload_runs_in_its_own_image_and_a_missing_image_fails_with_a_reason() {
    let Some(image) = image() else { return };
    let derived = derived_image(&image);
    let dir = std::env::temp_dir().join(format!("gpucloud-docker-img-{:016x}", rand::random::<u64>()));
    let launcher = DockerLauncher::connect(&image, false, Confinement::share_of(2, 2048, 2)).unwrap();
    let mut rt = ProcessRuntime::open_with(&dir, Duration::from_secs(5), Some(launcher)).unwrap();

    // Its own image, with a raw TCP port published on the host.
    let mut own = workload(
        "i-own",
        "cat /marker; mkdir -p /tmp/www && echo served > /tmp/www/index.html && httpd -f -p 7000 -h /tmp/www",
    );
    own.image = Some(derived.clone());
    own.ports = vec!["7000/tcp".into()];
    rt.start(&own, "http://127.0.0.1:1/v1/instance/a", "a", &[]);
    assert!(rt.take_preparing().is_empty(), "a local image starts at once");
    let report = rt.report().into_iter().find(|r| r.id == "i-own").unwrap();
    assert_eq!(report.state, WorkloadState::Running, "{report:?}");
    let host_port = report.published.iter().find(|p| p.port == 7000).expect("published").host_port;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", host_port)).ok().and_then(|mut c| {
            use std::io::{Read, Write};
            c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            c.read_to_string(&mut out).ok()?;
            Some(out)
        });
        match got {
            Some(b) if b.contains("served") => break b,
            _ if Instant::now() > deadline => panic!("port 7000/tcp never answered on host port {host_port}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(body.contains("served"));
    let mut logs = std::collections::BTreeMap::new();
    ship(&mut rt, &mut logs);
    assert!(logs.get("i-own").is_some_and(|l| l.contains("derived")), "ran in its own image: {logs:?}");

    // An image no registry has: preparing while the pull is tried, then failed with a reason
    // naming the image; never started.
    let mut missing = workload("i-missing", "true");
    missing.image = Some("gpucloud-test-missing:1".into());
    rt.start(&missing, "http://127.0.0.1:1/v1/instance/b", "b", &[]);
    let preparing = rt.take_preparing();
    assert_eq!(preparing.len(), 1);
    assert_eq!(preparing[0].state, WorkloadState::Preparing);
    assert!(preparing[0].progress.as_deref().unwrap_or("").contains("gpucloud-test-missing:1"), "{preparing:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        assert!(Instant::now() < deadline, "the pull never ended");
        if let Some(r) = rt.report().into_iter().find(|r| r.id == "i-missing") {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
        rt.take_preparing();
        rt.start(&missing, "http://127.0.0.1:1/v1/instance/b", "b", &[]);
    };
    assert_eq!(failed.state, WorkloadState::Failed);
    let reason = failed.reason.unwrap_or_default();
    assert!(reason.contains("gpucloud-test-missing:1") && reason.contains("docker.io"), "{reason}");

    // A workload with credentials for its image's registry does not take the node's copy: the
    // pull is made for it, with its credentials (here the registry cannot be reached, so it
    // fails rather than running an image someone else pulled).
    let mut private = workload("i-private", "cat /marker");
    private.image = Some(derived.clone());
    private.registry_auth =
        Some(gpucloud_api::AgentRegistryAuth { username: "robot".into(), password: "token".into() });
    rt.start(&private, "http://127.0.0.1:1/v1/instance/c", "c", &[]);
    assert_eq!(rt.take_preparing().len(), 1, "pulled for it although the node holds the image");
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        assert!(Instant::now() < deadline, "the pull never ended");
        if let Some(r) = rt.report().into_iter().find(|r| r.id == "i-private") {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
        rt.take_preparing();
        rt.start(&private, "http://127.0.0.1:1/v1/instance/c", "c", &[]);
    };
    assert_eq!(r.state, WorkloadState::Failed, "{r:?}");
    assert!(r.reason.unwrap_or_default().contains(&derived));

    rt.stop_all_now();
    wait_for(&mut rt, "the container never stopped", |rt| state_of(rt, "i-own").0 != WorkloadState::Running);
    let report = rt.report();
    rt.reported(&report);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_volume_keeps_its_data_across_workloads_enforces_its_size_and_is_purged() {
    let Some(image) = image() else { return };
    let dir = std::env::temp_dir().join(format!("gpucloud-docker-vol-{:016x}", rand::random::<u64>()));
    let connect = || {
        DockerLauncher::connect(&image, false, Confinement::share_of(2, 2048, 2))
            .expect("a reachable engine with the test image")
    };
    let mut rt = ProcessRuntime::open_with(&dir, Duration::from_secs(5), Some(connect())).unwrap();
    let vid = gpucloud_model::VolumeId::from_random(rand::random()).to_string();
    let vid = vid.as_str();
    let with_volume = |id: &str, command: &str| AgentWorkload {
        volume: Some(gpucloud_api::AgentVolume { id: vid.into(), size_gib: 1, path: "/workspace".into() }),
        ..workload(id, command)
    };
    // 1 GiB: 900 MiB fit, 200 MiB more do not ("no space left" inside the workload).
    rt.start(
        &with_volume(
            "i-write",
            "echo kept > /workspace/note && dd if=/dev/zero of=/workspace/big bs=1M count=900 2>/dev/null && echo fit=yes; \
             dd if=/dev/zero of=/workspace/more bs=1M count=200 2>&1; rm -f /workspace/more; echo done",
        ),
        "http://127.0.0.1:1/v1/instance/t",
        "t",
        &[],
    );
    wait_for(&mut rt, "the writer never exited", |rt| state_of(rt, "i-write").0 != WorkloadState::Running);
    let mut logs = std::collections::BTreeMap::new();
    ship(&mut rt, &mut logs);
    let out = &logs["i-write"];
    let enforced = connect_enforced(&dir, vid);
    assert!(out.contains("fit=yes") && out.contains("done"), "{out}");
    if enforced {
        assert!(out.contains("No space left on device"), "writes past the size fail: {out}");
    } else {
        assert!(std::env::var("CI").is_err(), "under CI the agent runs as root and enforces volume sizes");
        eprintln!("volume sizes are not enforced here (no loop mounts): the size check is skipped");
    }
    assert_eq!(state_of(&rt, "i-write").0, WorkloadState::Stopped);
    let report = rt.report();
    assert_eq!(rt.reported(&report), vec!["i-write".to_string()]);

    // The next workload finds the data; the volume is unmounted once no workload holds it.
    rt.start(
        &with_volume("i-read", "cat /workspace/note; ls /workspace"),
        "http://127.0.0.1:1/v1/instance/u",
        "u",
        &[],
    );
    wait_for(&mut rt, "the reader never exited", |rt| state_of(rt, "i-read").0 != WorkloadState::Running);
    ship(&mut rt, &mut logs);
    assert!(logs["i-read"].contains("kept") && logs["i-read"].contains("big"), "{:?}", logs["i-read"]);
    // Held, it is not purged; forgotten, it is, and nothing of it is left on the node.
    assert!(rt.purge_volumes(&[vid.to_string()]).is_empty());
    let report = rt.report();
    rt.reported(&report);
    assert_eq!(rt.purge_volumes(&[vid.to_string()]), vec![vid.to_string()]);
    assert!(!dir.join("volumes").join(vid).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir.display().to_string()), "unmounted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the agent made the volume as a size-limited image (it can loop-mount here).
fn connect_enforced(dir: &std::path::Path, id: &str) -> bool {
    gpucloud_agent::volumes::Volumes::new(dir).enforced(id)
}
