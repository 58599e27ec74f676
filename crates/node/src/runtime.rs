//! What runs a node's workloads, and the agent's side of a heartbeat over it. Every agent runs
//! this same step: the node agent over its process or Docker runtime and an HTTP client, the
//! server's in-process fleet (dev, `serve --fake-agents`, tests) over [`FakeRuntime`] and a direct
//! call. What the server decides is read from the wire's own [`AgentWorkload`], in both.

use gpucloud_api::{AgentInstanceReport, AgentWorkload, Desired, WorkloadState};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// What runs here: a workload's id and whether it is still alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    pub id: String,
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Stop(String),
}

/// Start what is wanted and not known here; stop what is alive and not wanted to run. A workload
/// known here that ended is never started again: its end is reported and the server decides.
pub fn actions(desired: &[AgentWorkload], actual: &[Actual]) -> Vec<Action> {
    let mut out = Vec::new();
    for w in desired.iter().filter(|w| w.desired == Desired::Run) {
        if !actual.iter().any(|a| a.id == w.id) {
            out.push(Action::Start(w.id.clone()));
        }
    }
    for a in actual.iter().filter(|a| a.alive) {
        if !desired.iter().any(|w| w.id == a.id && w.desired == Desired::Run) {
            out.push(Action::Stop(a.id.clone()));
        }
    }
    out
}

/// Where a workload's metadata requests may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Anywhere that reaches the endpoint (a process workload, on loopback).
    Any,
    /// A container not started yet: nothing until its address is known.
    Pending,
    /// This container's address only.
    Only(IpAddr),
}

/// How a node runs workloads: as processes, as containers, or not at all (fake). The agent's
/// loop drives it through this trait alone; what only some runtimes have (output files, ports,
/// containers, volumes, images) has a default that says "none here".
pub trait Runtime: Send {
    /// What the node registers with.
    fn kind(&self) -> gpucloud_api::AgentRuntime;
    /// Starts a workload (or, while its image is pulled, notes it as preparing).
    fn start(&mut self, w: &AgentWorkload, metadata_url: &str, metadata_token: &str, env: &[(String, String)]);
    /// Asks a workload to stop; called again each beat until it has (a runtime may then force it).
    fn stop(&mut self, id: &str);
    /// Stops every workload and waits for them (up to the runtime's grace period).
    fn stop_all_gracefully(&mut self);
    /// Stops every workload at once (this node is no longer ours to run).
    fn stop_all_now(&mut self);
    /// Notices workloads that ended.
    fn poll(&mut self);
    /// What each known workload is, for the heartbeat.
    fn report(&self) -> Vec<AgentInstanceReport>;
    /// Forgets workloads whose end the server has now heard of, and returns their ids.
    fn reported(&mut self, sent: &[AgentInstanceReport]) -> Vec<String>;
    fn actual(&self) -> Vec<Actual>;
    /// Each GPU of a live workload with how hard the workload works (0 to 1).
    fn gpu_load(&mut self) -> Vec<(u32, f64)>;
    /// How many workloads it knows (adopted ones included).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where per-workload files live (none for a runtime that keeps nothing on disk).
    fn dir(&self) -> Option<&Path> {
        None
    }
    /// Workloads waiting for their image, as `preparing` reports; forgotten once taken.
    fn take_preparing(&mut self) -> Vec<AgentInstanceReport> {
        Vec::new()
    }
    /// Stops the workloads over their slice's GPU memory cap, as `used(instance, pgid)` reads it.
    fn enforce(&mut self, _used: &mut dyn FnMut(&str, i32) -> Option<u64>) {}
    /// Keeps the output files waiting to be shipped within bounds.
    fn bound_logs(&mut self) {}
    /// New output per workload: (instance, seq, text, bytes of the file it covers).
    fn pending_logs(&self) -> Vec<(String, i64, String, u64)> {
        Vec::new()
    }
    /// The server has chunk `seq` of a workload's output.
    fn logs_shipped(&mut self, _id: &str, _seq: i64, _file_bytes: u64) {}
    /// Where running workloads' HTTP ports are reached from this host.
    fn http_targets(&self) -> HashMap<(String, u16), SocketAddr> {
        HashMap::new()
    }
    /// The container of each workload running in one, and its init's pid.
    fn running_containers(&self) -> HashMap<String, (String, i32)> {
        HashMap::new()
    }
    /// The user containers' workloads run as (`UID:GID`); `None` without containers.
    fn container_user(&self) -> Option<String> {
        None
    }
    /// Whether each workload has a network namespace of its own.
    fn containers(&self) -> bool {
        false
    }
    /// The public images on the node; `None` where there is no image store.
    fn images(&self) -> Option<Vec<String>> {
        None
    }
    /// Removes the data of deleted volumes no workload here holds; returns those now gone.
    fn purge_volumes(&self, ids: &[String]) -> Vec<String> {
        ids.to_vec()
    }
    /// The metadata token a known workload was started with.
    fn metadata_token(&self, _id: &str) -> Option<String> {
        None
    }
    /// Where a workload's metadata requests may come from.
    fn metadata_peer(&self, _id: &str) -> Peer {
        Peer::Any
    }
}

/// A runtime that runs nothing: a started workload runs until it is stopped, and works its GPUs
/// hard meanwhile. For dev fleets, tests, demos and load tests of the control plane.
#[derive(Default)]
pub struct FakeRuntime {
    /// Each workload's GPUs and whether it still runs.
    workloads: BTreeMap<String, (Vec<u32>, bool)>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> gpucloud_api::AgentRuntime {
        gpucloud_api::AgentRuntime::Fake
    }

    fn start(&mut self, w: &AgentWorkload, _url: &str, _token: &str, _env: &[(String, String)]) {
        self.workloads.entry(w.id.clone()).or_insert_with(|| (w.gpus.clone(), true));
    }

    fn stop(&mut self, id: &str) {
        if let Some((_, alive)) = self.workloads.get_mut(id) {
            *alive = false;
        }
    }

    fn stop_all_gracefully(&mut self) {
        self.stop_all_now();
    }

    fn stop_all_now(&mut self) {
        self.workloads.values_mut().for_each(|(_, alive)| *alive = false);
    }

    fn poll(&mut self) {}

    fn report(&self) -> Vec<AgentInstanceReport> {
        self.workloads
            .iter()
            .map(|(id, (_, alive))| {
                let state = if *alive { WorkloadState::Running } else { WorkloadState::Stopped };
                ended_report(id.clone(), state)
            })
            .collect()
    }

    fn reported(&mut self, sent: &[AgentInstanceReport]) -> Vec<String> {
        let done: Vec<String> = self
            .workloads
            .iter()
            .filter(|(id, (_, alive))| !alive && sent.iter().any(|r| r.id == **id && r.state != WorkloadState::Running))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &done {
            self.workloads.remove(id);
        }
        done
    }

    fn actual(&self) -> Vec<Actual> {
        self.workloads.iter().map(|(id, (_, alive))| Actual { id: id.clone(), alive: *alive }).collect()
    }

    fn gpu_load(&mut self) -> Vec<(u32, f64)> {
        self.workloads
            .values()
            .filter(|(_, alive)| *alive)
            .flat_map(|(gpus, _)| gpus.iter().map(|g| (*g, 0.95)))
            .collect()
    }

    fn len(&self) -> usize {
        self.workloads.len()
    }
}

fn ended_report(id: String, state: WorkloadState) -> AgentInstanceReport {
    AgentInstanceReport {
        id,
        state,
        exit_code: None,
        reason: None,
        checkpoint: None,
        port: None,
        progress: None,
        published: Vec::new(),
    }
}

/// The agent's part of a heartbeat, whatever carries it: what to report, then what to do with
/// the answer.
#[derive(Default)]
pub struct Reconciler {
    /// Workloads the server wants stopped that never ran here (stopped before they started, or
    /// already gone): said so on the next beat, or the server would wait for them forever.
    never_ran: Vec<String>,
}

/// What a beat's answer changed here.
#[derive(Debug, Default)]
pub struct Applied {
    /// Workloads forgotten: the server has heard of their end.
    pub forgotten: Vec<String>,
    /// Whether anything was started or stopped (worth reporting at once).
    pub changed: bool,
}

impl Reconciler {
    /// The workloads to report this beat.
    pub fn report(&mut self, runtime: &mut dyn Runtime) -> Vec<AgentInstanceReport> {
        runtime.poll();
        let mut out = runtime.report();
        out.extend(self.never_ran.drain(..).map(|id| ended_report(id, WorkloadState::Stopped)));
        out.extend(runtime.take_preparing());
        out
    }

    /// The server answered the beat that reported `sent` with `desired`: forget the ends it has
    /// heard of, stop what it does not want run, start what it does through `start` (which
    /// gives the workload what else the node serves it), and note stops of what never ran here.
    pub fn apply(
        &mut self,
        runtime: &mut dyn Runtime,
        sent: &[AgentInstanceReport],
        desired: &[AgentWorkload],
        start: &mut dyn FnMut(&mut dyn Runtime, &AgentWorkload),
    ) -> Applied {
        let forgotten = runtime.reported(sent);
        let acts = actions(desired, &runtime.actual());
        let changed = !acts.is_empty();
        for action in acts {
            match action {
                Action::Start(id) => {
                    if let Some(w) = desired.iter().find(|w| w.id == id) {
                        start(runtime, w);
                    }
                }
                Action::Stop(id) => runtime.stop(&id),
            }
        }
        let known = runtime.actual();
        self.never_ran = desired
            .iter()
            .filter(|w| w.desired == Desired::Stop && !known.iter().any(|a| a.id == w.id))
            .map(|w| w.id.clone())
            .collect();
        Applied { forgotten, changed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: u8) -> String {
        format!("i-{i}")
    }

    fn workload(i: u8, run: bool) -> AgentWorkload {
        serde_json::from_value(serde_json::json!({
            "id": id(i), "desired": if run { "run" } else { "stop" }, "command": "true",
            "gpus": [0], "gpu_uuids": ["GPU-0"],
        }))
        .unwrap()
    }

    #[test]
    fn example() {
        let desired = vec![workload(1, true), workload(2, false), workload(3, true)];
        let actual = vec![
            Actual { id: id(2), alive: true },
            Actual { id: id(3), alive: false },
            Actual { id: id(4), alive: true },
        ];
        assert_eq!(actions(&desired, &actual), vec![Action::Start(id(1)), Action::Stop(id(2)), Action::Stop(id(4))]);
    }

    /// A beat over the fake runtime: started, reported running, stopped when no longer wanted,
    /// reported stopped once, then forgotten; a stop for what never ran is answered too.
    #[test]
    fn a_fake_node_runs_what_is_wanted_and_reports_each_end_once() {
        let (mut rt, mut rec) = (FakeRuntime::new(), Reconciler::default());
        let mut start = |rt: &mut dyn Runtime, w: &AgentWorkload| rt.start(w, "", "", &[]);
        let sent = rec.report(&mut rt);
        assert!(sent.is_empty());
        let applied = rec.apply(&mut rt, &sent, &[workload(1, true), workload(2, false)], &mut start);
        assert!(applied.changed);
        assert_eq!(rt.gpu_load(), vec![(0, 0.95)]);
        let sent = rec.report(&mut rt);
        let states: Vec<_> = sent.iter().map(|r| (r.id.as_str(), r.state)).collect();
        assert_eq!(states, vec![("i-1", WorkloadState::Running), ("i-2", WorkloadState::Stopped)]);
        let applied = rec.apply(&mut rt, &sent, &[workload(1, false)], &mut start);
        assert!(applied.changed && applied.forgotten.is_empty());
        let sent = rec.report(&mut rt);
        assert_eq!(
            sent.iter().map(|r| (r.id.as_str(), r.state)).collect::<Vec<_>>(),
            vec![("i-1", WorkloadState::Stopped)]
        );
        let applied = rec.apply(&mut rt, &sent, &[], &mut start);
        assert_eq!(applied.forgotten, vec![id(1)]);
        assert!(rec.report(&mut rt).is_empty() && rt.is_empty());
    }

    proptest! {
        #[test]
        fn never_starts_twice_and_leaves_no_orphan(
            wanted in proptest::collection::btree_map(0u8..20, any::<bool>(), 0..20),
            actual in proptest::collection::btree_map(0u8..20, any::<bool>(), 0..20),
        ) {
            let desired: Vec<AgentWorkload> = wanted.into_iter().map(|(i, r)| workload(i, r)).collect();
            let actual: Vec<Actual> = actual.into_iter().map(|(i, alive)| Actual { id: id(i), alive }).collect();
            let acts = actions(&desired, &actual);
            for a in &acts {
                if let Action::Start(s) = a {
                    prop_assert!(!actual.iter().any(|x| x.id == *s), "{s} started again");
                }
            }
            for a in actual.iter().filter(|a| a.alive) {
                let keep = desired.iter().any(|w| w.id == a.id && w.desired == Desired::Run);
                prop_assert_eq!(!keep, acts.contains(&Action::Stop(a.id.clone())));
            }
        }
    }
}
