//! `gpucloud gateway` in front of two backend processes: each round the backend answering is
//! killed with SIGKILL while a client sends requests through the gateway; every request must
//! still be answered (by the other side), and traffic must move back once the first returns.
//! Speed is `gpucloud bench failover`'s to report, not this test's.

use serde_json::Value;
use std::process::Command;

#[test]
fn killing_a_backend_loses_no_request() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpucloud"))
        .args(["--json", "bench", "failover", "--rounds", "4", "--rate", "200"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(v["rounds"], 4, "{v}");
    assert_eq!(v["failed_requests"], 0, "a request went unanswered across a kill: {v}");
    assert!(v["requests"].as_u64().unwrap() > 100, "{v}");
    // Every round found the survivor answering after the kill.
    assert!(v["switch_ms"]["max"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn the_gateway_refuses_bad_backends() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpucloud"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--backend", "ftp://example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an http:// URL"));
}
