//! The control plane under seeded faults on virtual time (`gpucloud sim chaos`): the real `App`
//! and SQLite store, simulated agents and tenants, the invariants checked after every step.

use gpucloud_server::chaos::{ChaosConfig, ChaosReport, Injected, run_many, shrink};

fn chaos(seeds: std::ops::RangeInclusive<u64>, minutes: u64, inject: Option<Injected>) -> Vec<ChaosReport> {
    let cfgs: Vec<ChaosConfig> =
        seeds.map(|seed| ChaosConfig { seed, minutes, inject, ..ChaosConfig::default() }).collect();
    run_many(&cfgs, 2).unwrap()
}

#[test]
fn a_seed_replays_byte_for_byte() {
    let runs = chaos(7..=8, 4, None);
    let first = runs[0].render();
    assert_eq!(first, chaos(7..=7, 4, None)[0].render());
    assert_ne!(first, runs[1].render(), "another seed, another history");
}

/// Seeds of half a virtual hour each (`gpucloud sim chaos --seeds 1..N --minutes 30`): agent
/// restarts, partitions (both ways, and one-way: beats arrive, answers do not), hosts going
/// down, lost and duplicated beats, server restarts, the store refusing writes from the middle
/// of a request on, tenants giving up on what waits. A few, in the debug build: CI runs seeds
/// 1 to 200 of a virtual hour each on the release binary (`.ci/run`).
fn seeds_hold(seeds: std::ops::RangeInclusive<u64>, minutes: u64) {
    let mut outages = 0;
    for r in chaos(seeds, minutes, None) {
        assert!(r.violation.is_none(), "{}", r.render());
        assert!(r.faults.values().sum::<u32>() > 0 && r.actions.values().sum::<u32>() > 0, "{}", r.render());
        outages += r.faults.get("store-outage").copied().unwrap_or(0);
    }
    assert!(outages > 0, "no store outage in these seeds");
}

#[test]
fn every_invariant_holds_under_faults_seeds_1_to_4() {
    seeds_hold(1..=4, 30);
}

#[test]
fn every_invariant_holds_under_faults_seeds_5_to_8() {
    seeds_hold(5..=8, 30);
}

/// The checker is worth something: with cut-off agents that never stop their workloads (the
/// defect self-fencing fixed), a lost instance started again runs on two nodes at once, and some
/// seed among the first ten shows it.
#[test]
fn the_checker_catches_agents_that_never_fence_themselves() {
    let runs = chaos(1..=10, 5, Some(Injected::NoFencing));
    let caught = runs.iter().find(|r| r.violation.as_deref().is_some_and(|v| v.contains("at once")));
    let r = caught.expect("no seed of ten caught a double run");
    assert!(r.render().contains("replay: gpucloud sim chaos --seeds"), "{}", r.render());
}

/// A failure shrinks to a few of its faults, then a few of its tenants' actions, that still
/// break the same invariant, and the shrunk run replays from the seed and those numbers alone.
#[test]
fn a_failure_shrinks_to_the_faults_and_actions_that_matter() {
    let runs = chaos(1..=10, 5, Some(Injected::NoFencing));
    let r = runs.iter().find(|r| r.violation.as_deref().is_some_and(|v| v.contains("at once"))).unwrap();
    let cfg = ChaosConfig { seed: r.seed, minutes: 5, inject: Some(Injected::NoFencing), ..ChaosConfig::default() };
    let s = shrink(&cfg, r, 2, 200).unwrap();
    let shrunk = &s.report;
    assert!(shrunk.violation.as_deref().is_some_and(|v| v.contains("at once")), "{}", shrunk.render());
    assert!(shrunk.applied.len() * 4 <= r.applied.len(), "{} of {} faults kept", shrunk.applied.len(), r.applied.len());
    // Without a partition nothing runs twice.
    assert!(shrunk.faults.keys().any(|k| ["partition", "one-way"].contains(k)), "{}", shrunk.render());
    let only = shrunk.only_faults.clone();
    assert!(only.as_ref().is_some_and(|o| shrunk.applied.iter().all(|n| o.contains(n))));
    // Then the tenants' actions: a create and a start of the lost instance are what it needs,
    // not the dozens the run made.
    assert!(
        shrunk.applied_actions.len() * 4 <= r.applied_actions.len(),
        "{} of {} actions kept",
        shrunk.applied_actions.len(),
        r.applied_actions.len()
    );
    assert_eq!(s.from_actions, r.applied_actions.len());
    assert!(shrunk.actions.contains_key("create"), "{}", shrunk.render());
    let only_actions = shrunk.only_actions.clone();
    assert!(only_actions.as_ref().is_some_and(|o| shrunk.applied_actions.iter().all(|n| o.contains(n))));
    let replay = shrunk.render();
    assert!(replay.contains("--only-faults") && replay.contains("--only-actions"), "{replay}");
    let again = run_many(&[ChaosConfig { only_faults: only, only_actions, ..cfg.clone() }], 1).unwrap();
    assert_eq!(again[0].render(), replay);
    // A run that held has nothing to shrink.
    let held = chaos(1..=1, 2, None).remove(0);
    assert!(held.violation.is_none());
    assert!(shrink(&ChaosConfig { seed: 1, minutes: 2, ..ChaosConfig::default() }, &held, 1, 10).is_err());
}

/// A beat held up on the way and taken after a newer one makes the server read its silence
/// about a workload started since as that workload vanished, and bill too little. Agents number
/// their beats and the server refuses a late one; with unnumbered beats the checker sees the
/// short billing (seeds 24 and 81 of ten minutes show it), and with numbered ones those seeds hold.
#[test]
fn the_checker_catches_a_late_beat_taken_as_current() {
    let cfg = |seed, inject| ChaosConfig { seed, minutes: 10, inject, ..ChaosConfig::default() };
    let runs = run_many(&[cfg(24, Some(Injected::UnnumberedBeats)), cfg(81, Some(Injected::UnnumberedBeats))], 2);
    let runs = runs.unwrap();
    let r = runs.iter().find(|r| r.violation.as_deref().is_some_and(|v| v.contains("billed")));
    assert!(r.is_some(), "{}", runs.iter().map(ChaosReport::render).collect::<String>());
    for r in run_many(&[cfg(24, None), cfg(81, None)], 2).unwrap() {
        assert!(r.violation.is_none(), "{}", r.render());
        assert!(r.faults.get("held-up-beat").is_some_and(|n| *n > 0), "{}", r.render());
    }
}
