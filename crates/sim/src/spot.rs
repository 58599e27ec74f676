//! Spot with recovery against on-demand only, on a trace's task durations. Each task is a job of
//! `num_gpu x gpu_milli` GPUs running for its recorded duration. On-demand runs it once, at the
//! on-demand price (after the same startup as a spot attempt). Spot runs it as a gpucloud managed job: capacity is reclaimed as a Poisson
//! process (`rate_per_hour`); each reclaim gives `notice_s` of notice, then the attempt stops;
//! capacity comes back after an exponential wait (`restart_wait_s` mean), the next attempt spends
//! `startup_s` getting going (billed, no progress) and resumes from the last checkpoint: the
//! moment of the notice when the workload checkpoints on notice, else its last periodic
//! checkpoint. Spot time is billed with gpucloud's own `billing::charge` at a synthetic spot price
//! (mean-reverting, bounded by the floor and on-demand: `spot_price_series`), with the 60 s
//! minimum per attempt. What it leaves out: a fleet's contention between jobs (the restart wait
//! stands for it) and price-triggered preemption (the bid is the on-demand price).

use gpucloud_billing::{PricePoint, Rules, charge};
use gpucloud_model::{Money, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpotParams {
    pub rate_per_hour: f64,
    pub notice_s: i64,
    /// The workload checkpoints when told (gpucloud's notice), not only periodically.
    pub checkpoint_on_notice: bool,
    pub checkpoint_every_s: i64,
    pub restart_wait_s: f64,
    pub startup_s: i64,
    /// Long-run mean of the spot price, percent of on-demand.
    pub spot_mean_pct: f64,
    pub floor_pct: f64,
}

impl Default for SpotParams {
    fn default() -> SpotParams {
        SpotParams {
            rate_per_hour: 0.1,
            notice_s: 120,
            checkpoint_on_notice: true,
            checkpoint_every_s: 1800,
            restart_wait_s: 120.0,
            startup_s: 60,
            spot_mean_pct: 35.0,
            floor_pct: 25.0,
        }
    }
}

/// One job: GPUs (thousandths), how long it runs, when it arrives (s), its on-demand price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpotJob {
    pub milli_gpus: u32,
    pub duration_s: i64,
    pub arrival_s: i64,
    pub on_demand: Money,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpotRow {
    pub rate_per_hour: f64,
    pub checkpoint: String,
    pub jobs: usize,
    pub on_demand_cost: Money,
    pub spot_cost: Money,
    pub savings_pct: f64,
    /// Total completion time over the on-demand total, minus one (duration-weighted), percent.
    pub completion_overhead_pct: f64,
    /// 95th percentile of the per-job completion overhead, percent.
    pub p95_job_overhead_pct: f64,
    pub preemptions_per_job: f64,
    /// At least 60% saved with under 10% added completion time.
    pub holds: bool,
}

/// The spot price as a fraction of on-demand, one point per `step_s`, over `[0, horizon_s)`:
/// an Ornstein-Uhlenbeck process around `mean_pct` (time constant 6 h, noise that keeps it
/// mostly within +-10 points), clamped to `[floor_pct, 100]`.
pub fn spot_price_series(params: &SpotParams, horizon_s: i64, step_s: i64, rng: &mut StdRng) -> Vec<f64> {
    let n = (horizon_s / step_s.max(1) + 2).max(2) as usize;
    let mean = params.spot_mean_pct / 100.0;
    let floor = params.floor_pct / 100.0;
    let theta = step_s as f64 / (6.0 * 3600.0);
    let sigma = 0.10 * (2.0 * theta).sqrt();
    let mut x = mean;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(x);
        // Box-Muller: one standard normal from two uniforms.
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        x = (x + theta * (mean - x) + sigma * z).clamp(floor, 1.0);
    }
    out
}

fn exp(rng: &mut StdRng, mean: f64) -> f64 {
    -rng.random::<f64>().max(1e-12).ln() * mean
}

/// Runs every job both ways; `series` is the spot multiplier per `step_s` from time 0.
pub fn compare(jobs: &[SpotJob], params: &SpotParams, series: &[f64], step_s: i64, seed: u64) -> SpotRow {
    let mut rng = StdRng::seed_from_u64(seed);
    let rules = Rules::default();
    let (mut od_total, mut spot_total) = (0i128, 0i128);
    let (mut od_time, mut spot_time) = (0f64, 0f64);
    let mut overheads = Vec::with_capacity(jobs.len());
    let mut preemptions = 0usize;
    for j in jobs {
        let od_price = [PricePoint { effective_from: Timestamp(0), per_gpu_hour: j.on_demand }];
        // On-demand starts up too (billed, no progress): the comparison isolates preemption.
        let od_run_s = j.duration_s + params.startup_s;
        od_total +=
            i128::from(charge(Timestamp(j.arrival_s * 1000), od_run_s * 1000, j.milli_gpus, &od_price, rules).amount.0);
        // The spot price around this job's life, as price points.
        let prices_from = |from_s: i64, to_s: i64| -> Vec<PricePoint> {
            let a = (from_s / step_s).max(0) as usize;
            let b = ((to_s / step_s).max(0) as usize + 1).min(series.len().saturating_sub(1));
            (a.min(b)..=b)
                .map(|k| PricePoint {
                    effective_from: Timestamp(k as i64 * step_s * 1000),
                    per_gpu_hour: Money((j.on_demand.0 as f64 * series[k]).round() as i64),
                })
                .collect()
        };
        let mut t = j.arrival_s as f64;
        let mut saved = 0i64;
        let mut cost = 0i128;
        loop {
            let start = t;
            let work_start = start + params.startup_s as f64;
            let finish = work_start + (j.duration_s - saved) as f64;
            let reclaim = if params.rate_per_hour > 0.0 {
                start + exp(&mut rng, 3600.0 / params.rate_per_hour)
            } else {
                f64::INFINITY
            };
            let stop = reclaim + params.notice_s as f64;
            if stop >= finish {
                let ms = ((finish - start) * 1000.0) as i64;
                let p = prices_from(start as i64, finish as i64 + 1);
                cost += i128::from(charge(Timestamp((start * 1000.0) as i64), ms, j.milli_gpus, &p, rules).amount.0);
                t = finish;
                break;
            }
            preemptions += 1;
            let done = (stop - work_start).max(0.0) as i64;
            saved += if params.checkpoint_on_notice {
                done
            } else {
                done / params.checkpoint_every_s.max(1) * params.checkpoint_every_s.max(1)
            };
            saved = saved.min(j.duration_s);
            let ms = ((stop - start) * 1000.0) as i64;
            let p = prices_from(start as i64, stop as i64 + 1);
            cost += i128::from(charge(Timestamp((start * 1000.0) as i64), ms, j.milli_gpus, &p, rules).amount.0);
            t = stop + exp(&mut rng, params.restart_wait_s);
        }
        spot_total += cost;
        let took = t - j.arrival_s as f64;
        od_time += od_run_s as f64;
        spot_time += took;
        overheads.push(took / od_run_s.max(1) as f64 - 1.0);
    }
    overheads.sort_by(|a, b| a.total_cmp(b));
    let p95 = overheads.get(((overheads.len() as f64 * 0.95) as usize).min(overheads.len().saturating_sub(1))).copied();
    let savings = if od_total > 0 { 100.0 * (1.0 - spot_total as f64 / od_total as f64) } else { 0.0 };
    let overhead = if od_time > 0.0 { 100.0 * (spot_time / od_time - 1.0) } else { 0.0 };
    SpotRow {
        rate_per_hour: params.rate_per_hour,
        checkpoint: if params.checkpoint_on_notice {
            "on notice".into()
        } else {
            format!("every {} min", params.checkpoint_every_s / 60)
        },
        jobs: jobs.len(),
        on_demand_cost: Money(od_total as i64),
        spot_cost: Money(spot_total as i64),
        savings_pct: savings,
        completion_overhead_pct: overhead,
        p95_job_overhead_pct: 100.0 * p95.unwrap_or(0.0),
        preemptions_per_job: preemptions as f64 / jobs.len().max(1) as f64,
        holds: savings >= 60.0 && overhead < 10.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Vec<SpotJob> {
        (0..200)
            .map(|i| SpotJob {
                milli_gpus: 1000 * (1 + i % 4),
                duration_s: 600 + 97 * i as i64 * 13 % 20_000,
                arrival_s: i as i64 * 300,
                on_demand: Money(2_000_000),
            })
            .collect()
    }

    fn run(params: SpotParams) -> SpotRow {
        let mut rng = StdRng::seed_from_u64(7);
        let series = spot_price_series(&params, 200 * 300 + 400_000, 600, &mut rng);
        compare(&jobs(), &params, &series, 600, 7)
    }

    #[test]
    fn no_preemption_costs_the_spot_price_and_no_time() {
        let r = run(SpotParams { rate_per_hour: 0.0, ..SpotParams::default() });
        assert_eq!(r.preemptions_per_job, 0.0);
        assert!(r.savings_pct > 55.0 && r.savings_pct < 75.0, "{r:?}");
        assert!(r.completion_overhead_pct.abs() < 1e-9 && r.p95_job_overhead_pct.abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn more_preemption_costs_more_time_and_checkpointing_on_notice_loses_least() {
        let calm = run(SpotParams { rate_per_hour: 0.1, ..SpotParams::default() });
        let rough = run(SpotParams { rate_per_hour: 4.0, ..SpotParams::default() });
        assert!(rough.preemptions_per_job > calm.preemptions_per_job);
        assert!(rough.completion_overhead_pct > calm.completion_overhead_pct);
        assert!(!rough.holds && calm.holds, "{calm:?} {rough:?}");
        let periodic = run(SpotParams { rate_per_hour: 1.0, checkpoint_on_notice: false, ..SpotParams::default() });
        let notice = run(SpotParams { rate_per_hour: 1.0, ..SpotParams::default() });
        assert!(
            periodic.spot_cost > notice.spot_cost && periodic.completion_overhead_pct > notice.completion_overhead_pct
        );
    }

    #[test]
    fn the_price_stays_within_its_bounds() {
        let p = SpotParams::default();
        let mut rng = StdRng::seed_from_u64(1);
        let s = spot_price_series(&p, 3_000_000, 600, &mut rng);
        assert!(s.iter().all(|x| (0.25..=1.0).contains(x)));
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        assert!((mean - 0.35).abs() < 0.05, "{mean}");
    }
}
