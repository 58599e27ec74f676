//! Trace-driven simulation of gpucloud's placement policies.
//!
//! [`fgd`] reproduces the FGD paper's packing experiment on the Alibaba GPU-sharing trace through
//! the production placer (`gpucloud_sched::share`); [`svg`] draws its curves; [`replay`] runs a
//! trace in time, with departures, and bills it. Everything here is deterministic for a given seed.

pub mod bound;
pub mod fgd;
pub mod replay;
pub mod report;
pub mod spot;
pub mod svg;
pub mod trace;

use fgd::{Curve, Experiment, Record, RunStats, summarize};
use gpucloud_sched::share::SharePolicy;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// All (policy, seed) runs of one experiment, spread over `threads`; results keep the order of
/// `policies`, then `seeds`.
pub fn run_all(
    exp: &Experiment,
    policies: &[SharePolicy],
    seeds: &[u64],
    threads: usize,
) -> Vec<(SharePolicy, Vec<(Curve, RunStats)>)> {
    let jobs: Vec<(usize, usize)> = (0..policies.len()).flat_map(|p| (0..seeds.len()).map(move |s| (p, s))).collect();
    let mut results = par_map(&jobs, threads, |&(p, s)| exp.run(policies[p], seeds[s])).into_iter();
    policies.iter().map(|&p| (p, (0..seeds.len()).map(|_| results.next().unwrap_or_default()).collect())).collect()
}

/// `f` over `items` on up to `threads` threads, results in the order of `items`.
pub fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1).min(items.len()) {
            scope.spawn(|| {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(j) else { break };
                    let out = f(item);
                    results.lock().unwrap_or_else(|e| e.into_inner())[j] = Some(out);
                }
            });
        }
    });
    // Every slot is filled: a worker that panicked would have taken the scope down with it.
    results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten().collect()
}

/// Per-policy summaries of [`run_all`]'s output.
pub fn records(trace: &str, runs: &[(SharePolicy, Vec<(Curve, RunStats)>)]) -> Vec<Record> {
    runs.iter()
        .flat_map(|(p, rs)| {
            let curves: Vec<Curve> = rs.iter().map(|(c, _)| c.clone()).collect();
            summarize(trace, *p, &curves)
        })
        .collect()
}

/// Parses "42..51" (inclusive), "42" or "1,5,9".
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("bad seeds '{s}': expected N, A..B (inclusive) or a comma list");
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b.trim().trim_start_matches('=').parse().map_err(|_| bad())?;
        if b < a || b - a >= 10_000 {
            return Err(format!("bad seeds '{s}': the range must be ascending and hold at most 10000 seeds"));
        }
        return Ok((a..=b).collect());
    }
    s.split(',').map(|x| x.trim().parse().map_err(|_| bad())).collect()
}

#[cfg(test)]
mod tests;
