//! Two tenants' workloads on one node with the container runtime: tenant A's workload tries every
//! attack on tenant B's (its environment, files and logs, the agent's state and key, B's port and
//! metadata endpoint with B's token, B's checkpoint, the host's own services) and each must fail,
//! while A's own metadata still answers. The attempts live in `scripts/isolation-check.sh`, so
//! an operator runs the same check on a real node. Needs root and a Docker engine with iptables
//! (`.ci/run` starts one); under CI a missing image is a failure.

mod common;

use std::process::Command;

#[test]
fn tenants_on_one_node_cannot_reach_each_other() {
    let Some(image) = common::docker_image("the isolation check") else { return };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/isolation-check.sh");
    let out = Command::new("bash").arg(script).arg(&image).env("GPUCLOUD_BIN", common::BIN).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let blocked = text.lines().filter(|l| l.trim_end().ends_with(": blocked")).count();
    assert!(blocked >= 15 && text.contains("all blocked") && !text.contains("SUCCEEDED"), "{text}");
    assert!(text.contains("control: own metadata: ok"), "{text}");
}
