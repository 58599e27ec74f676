//! What to rent for a workload: the GPU model, count and tier that meet its memory need at the
//! lowest estimated cost, from the price book and what is free now. Pure; the server supplies
//! the offers.
//!
//! Memory need, from the model's parameter count (billions):
//! - inference: fp16 weights (2 bytes a parameter) plus 20% for the KV cache and activations;
//! - training (full fine-tuning with mixed-precision Adam): 16 bytes a parameter (fp16 weights
//!   and gradients, fp32 master weights and two moments) plus 20% for activations;
//! - rendering: at least 24 GiB of VRAM on a GPU with RT cores (the parameter count is unused).
//!
//! Only 90% of a GPU's memory is counted as usable. Time: `hours` is the run's length on an
//! A100-40GB; training and rendering finish sooner on faster GPUs (scaled by a rough relative
//! throughput), inference serving lasts as long whatever the GPU.

use gpucloud_model::{FieldError, GpuModel, Money, Tier};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    InferenceSmall,
    TrainingMedium,
    TrainingLarge,
    Rendering,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Workload, String> {
        Ok(match s {
            "inference-small" | "inference" => Workload::InferenceSmall,
            "training-medium" => Workload::TrainingMedium,
            "training-large" => Workload::TrainingLarge,
            "rendering" => Workload::Rendering,
            other => {
                return Err(format!(
                    "unknown workload '{other}': inference-small, training-medium, training-large or rendering"
                ));
            }
        })
    }
}

/// One GPU model in one region: its prices and how many are free now.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub model: GpuModel,
    pub region: String,
    pub on_demand: Money,
    pub spot: Option<Money>,
    /// Free for the asker now: not held, and not kept for someone else's reservation.
    pub free: u32,
    /// GPUs of the model in the region, and the most on one node (an instance is on one node;
    /// only large training spans nodes, as a cluster).
    pub total: u32,
    pub largest_node: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub gpu: String,
    pub region: String,
    pub count: u32,
    /// on-demand, or spot (as a managed job that checkpoints).
    pub tier: Tier,
    pub per_hour: Money,
    /// How long it runs on this choice.
    pub hours: f64,
    pub estimated_cost: Money,
    /// Enough free GPUs now.
    pub available: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub workload: Workload,
    pub memory_need_gib: f64,
    pub best: Choice,
    pub alternatives: Vec<Choice>,
    pub reasoning: Vec<String>,
}

/// Training throughput relative to an A100-40GB, rough, from public LLM training comparisons:
/// for ranking choices, not a promise of speed.
fn relative_speed(m: GpuModel) -> f64 {
    match m {
        GpuModel::T4 => 0.15,
        GpuModel::L4 => 0.3,
        GpuModel::A10 => 0.35,
        GpuModel::A40 => 0.5,
        GpuModel::Rtx6000Ada => 0.75,
        GpuModel::A100_40GB | GpuModel::A100_80GB => 1.0,
        GpuModel::H100_80GB => 2.0,
        GpuModel::H200_141GB => 2.3,
    }
}

fn has_rt_cores(m: GpuModel) -> bool {
    matches!(m, GpuModel::T4 | GpuModel::L4 | GpuModel::A10 | GpuModel::A40 | GpuModel::Rtx6000Ada)
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

pub fn memory_need_gib(workload: Workload, params_billion: f64) -> f64 {
    let params = params_billion * 1e9;
    match workload {
        Workload::InferenceSmall => params * 2.0 * 1.2 / GIB,
        Workload::TrainingMedium | Workload::TrainingLarge => params * 16.0 * 1.2 / GIB,
        Workload::Rendering => 24.0,
    }
}

pub fn recommend(
    workload: Workload,
    params_billion: f64,
    hours: f64,
    offers: &[Offer],
) -> Result<Recommendation, FieldError> {
    if !(params_billion.is_finite() && params_billion > 0.0 && params_billion <= 10_000.0) {
        return Err(FieldError::new("params", "model parameters must be between 0 and 10000 billion"));
    }
    if !(hours.is_finite() && hours > 0.0 && hours <= 24.0 * 366.0) {
        return Err(FieldError::new("hours", "hours must be more than 0 and at most a year"));
    }
    let need = memory_need_gib(workload, params_billion);
    // One node holds 8 GPUs; only large training spans nodes (up to 8 of them).
    let max_count = if workload == Workload::TrainingLarge { 64 } else { 8 };
    let mut reasoning = vec![match workload {
        Workload::InferenceSmall => format!(
            "{params_billion}B parameters served in fp16 need about {need:.1} GiB (2 bytes a parameter + 20% KV cache)"
        ),
        Workload::TrainingMedium | Workload::TrainingLarge => format!(
            "{params_billion}B parameters trained with mixed-precision Adam need about {need:.0} GiB (16 bytes a parameter + 20% activations)"
        ),
        Workload::Rendering => "rendering needs RT cores and at least 24 GiB on one GPU".to_string(),
    }];
    let mut choices = Vec::new();
    let mut left_out = Vec::new();
    for o in offers {
        if workload == Workload::Rendering && !has_rt_cores(o.model) {
            continue;
        }
        let usable = o.model.memory_mib() as f64 / 1024.0 * 0.9;
        let count = if workload == Workload::Rendering {
            if usable < need { continue } else { 1 }
        } else {
            (need / usable).ceil().max(1.0) as u32
        };
        if count > max_count {
            continue;
        }
        // Only what the fleet can place: one instance is on one node (and at most 16 GPUs);
        // large training spans nodes as a cluster, within what the region has.
        let room = if workload == Workload::TrainingLarge {
            o.total
        } else {
            o.largest_node.min(gpucloud_model::MAX_GPUS_PER_INSTANCE)
        };
        if count > room {
            let place = if workload == Workload::TrainingLarge { "the region has" } else { "one node has" };
            left_out.push(format!("{count} x {} in {} (at most {room}: {place} no more)", o.model, o.region));
            continue;
        }
        // Spot suits work that checkpoints (training, frames); a served model should not be
        // preempted.
        let (tier, price) = match (workload, o.spot) {
            (Workload::InferenceSmall, _) | (_, None) => (Tier::OnDemand, o.on_demand),
            (_, Some(s)) => (Tier::Spot, s),
        };
        let run_hours = if workload == Workload::InferenceSmall { hours } else { hours / relative_speed(o.model) };
        let per_hour = Money(price.0 * i64::from(count));
        let cost = Money((per_hour.0 as f64 * run_hours).round() as i64);
        choices.push(Choice {
            gpu: o.model.to_string(),
            region: o.region.clone(),
            count,
            tier,
            per_hour,
            hours: run_hours,
            estimated_cost: cost,
            available: o.free >= count,
        });
    }
    if choices.is_empty() {
        let why = if left_out.is_empty() {
            String::new()
        } else {
            format!(" that this fleet can place ({})", left_out.join("; "))
        };
        return Err(FieldError::new(
            "params",
            format!("no GPU model on sale can hold {need:.0} GiB in at most {max_count} GPUs{why}"),
        ));
    }
    // Available now first, then the cheapest, then the fastest.
    choices.sort_by(|a, b| {
        (!a.available, a.estimated_cost)
            .cmp(&(!b.available, b.estimated_cost))
            .then(a.hours.total_cmp(&b.hours))
            .then(a.gpu.cmp(&b.gpu))
    });
    let best = choices.remove(0);
    reasoning.push(format!(
        "{} x {} ({} GiB each) holds it; {} at {}/hour for {:.1} h = {}",
        best.count,
        best.gpu,
        offers.iter().find(|o| o.model.to_string() == best.gpu).map_or(0, |o| o.model.memory_mib() / 1024),
        best.tier,
        best.per_hour,
        best.hours,
        best.estimated_cost
    ));
    if !best.available {
        reasoning.push("nothing that fits is free right now: it would wait in the queue".into());
    }
    if best.tier == Tier::Spot {
        reasoning
            .push("spot, as a managed job (`gpucloud job run`): it resumes from its checkpoint if preempted".into());
    }
    if !left_out.is_empty() {
        left_out.truncate(3);
        reasoning.push(format!("left out, more than the fleet can place: {}", left_out.join("; ")));
    }
    if let Some(next) = choices.first() {
        reasoning.push(format!(
            "next best: {} x {} {} at {} ({:.1} h)",
            next.count, next.gpu, next.tier, next.estimated_cost, next.hours
        ));
    }
    choices.truncate(4);
    Ok(Recommendation { workload, memory_need_gib: need, best, alternatives: choices, reasoning })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn book() -> Vec<Offer> {
        [
            (GpuModel::T4, 350_000),
            (GpuModel::L4, 800_000),
            (GpuModel::A10, 750_000),
            (GpuModel::A40, 1_100_000),
            (GpuModel::Rtx6000Ada, 1_200_000),
            (GpuModel::A100_40GB, 1_600_000),
            (GpuModel::A100_80GB, 2_200_000),
            (GpuModel::H100_80GB, 2_990_000),
        ]
        .into_iter()
        .map(|(m, p)| Offer {
            model: m,
            region: "eu-1".into(),
            on_demand: Money(p),
            spot: Some(Money(p * 2 / 5)),
            free: 8,
            total: 64,
            largest_node: 8,
        })
        .collect()
    }

    #[test]
    fn follows_memory_and_price() {
        let r = recommend(Workload::InferenceSmall, 7.0, 10.0, &book()).unwrap();
        assert!((r.memory_need_gib - 15.6).abs() < 0.1, "{r:?}");
        assert_eq!((r.best.gpu.as_str(), r.best.count, r.best.tier), ("T4", 2, Tier::OnDemand), "{r:?}");
        let r = recommend(Workload::Rendering, 1.0, 10.0, &book()).unwrap();
        assert!(["A40", "RTX-6000-Ada"].contains(&r.best.gpu.as_str()), "{r:?}");
        let r = recommend(Workload::TrainingLarge, 70.0, 100.0, &book()).unwrap();
        assert_eq!((r.best.gpu.as_str(), r.best.tier), ("H100-80GB", Tier::Spot), "{r:?}");
        assert!(r.best.count > 8, "70B needs more than a node: {r:?}");
        // Nothing free: the cheapest that is free wins over a cheaper one that would wait.
        let mut scarce = book();
        for o in scarce.iter_mut().filter(|o| o.model == GpuModel::T4) {
            o.free = 1;
        }
        assert_eq!(recommend(Workload::InferenceSmall, 7.0, 10.0, &scarce).unwrap().best.gpu, "A10");
        assert!(recommend(Workload::TrainingMedium, 5000.0, 1.0, &book()).is_err());
        // 13B training where every model but H100 has two GPUs a node: only H100 can hold it (4 of
        // them), busy or not; six RTX cards are never proposed.
        let small: Vec<Offer> = book()
            .into_iter()
            .map(|o| {
                if o.model == GpuModel::H100_80GB {
                    Offer { free: 0, total: 8, largest_node: 8, ..o }
                } else {
                    Offer { free: 2, total: 2, largest_node: 2, ..o }
                }
            })
            .collect();
        let r = recommend(Workload::TrainingMedium, 13.0, 10.0, &small).unwrap();
        assert_eq!((r.best.gpu.as_str(), r.best.available), ("H100-80GB", false), "{r:?}");
        assert!(r.alternatives.iter().all(|a| a.count <= 8), "{r:?}");
        assert!(r.reasoning.iter().any(|l| l.contains("left out")), "{r:?}");
        assert!(recommend(Workload::InferenceSmall, 7.0, -1.0, &book()).is_err());
    }

    proptest! {
        /// The choice always holds the memory need, and nothing available is cheaper.
        #[test]
        fn the_choice_fits_and_is_cheapest(params in 0.1f64..300.0, hours in 0.1f64..1000.0, w in 0usize..3) {
            let workload = [Workload::InferenceSmall, Workload::TrainingMedium, Workload::TrainingLarge][w];
            let offers = book();
            if let Ok(r) = recommend(workload, params, hours, &offers) {
                let model = offers.iter().find(|o| o.model.to_string() == r.best.gpu).unwrap().model;
                prop_assert!(f64::from(r.best.count) * model.memory_mib() as f64 / 1024.0 * 0.9 >= r.memory_need_gib);
                let o = offers.iter().find(|o| o.model.to_string() == r.best.gpu).unwrap();
                let room = if workload == Workload::TrainingLarge { o.total } else { o.largest_node };
                prop_assert!(r.best.count <= room, "{} GPUs, room for {}", r.best.count, room);
                for a in r.alternatives.iter().filter(|a| a.available) {
                    prop_assert!(a.estimated_cost >= r.best.estimated_cost);
                }
            }
        }
    }
}
