//! Pure billing. Usage is an interval of GPU time; a charge is a number of billable seconds and an
//! exact amount of money. Charges are always computed from the whole interval, never summed from
//! rounded pieces, so charging a running instance every second and charging it once at the end
//! give the same total: no second is billed twice or lost.

mod invoice;
mod ledger;
pub mod recommend;
pub mod spot;

pub use invoice::{Invoice, InvoiceLine};
pub use ledger::{Account, Entry, EntryKind, Posting};

use gpucloud_model::{Money, Timestamp};

/// The one currency of a deployment for now; the ledger records it on every posting.
pub const CURRENCY: &str = "USD";

/// How usage turns into billable seconds: whole `granularity_s` units, at least `minimum_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub granularity_s: i64,
    pub minimum_s: i64,
}

impl Default for Rules {
    /// Per-second billing with a 60 s minimum, as EC2 does for Linux instances.
    fn default() -> Rules {
        Rules { granularity_s: 1, minimum_s: 60 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("granularity must be between 1 and 86400 seconds, got {0}")]
    Granularity(i64),
    #[error("minimum charge must be between 0 and 86400 seconds, got {0}")]
    Minimum(i64),
}

impl Rules {
    pub fn new(granularity_s: i64, minimum_s: i64) -> Result<Rules, RulesError> {
        if !(1..=86_400).contains(&granularity_s) {
            return Err(RulesError::Granularity(granularity_s));
        }
        if !(0..=86_400).contains(&minimum_s) {
            return Err(RulesError::Minimum(minimum_s));
        }
        Ok(Rules { granularity_s, minimum_s })
    }

    /// Seconds billed for `duration_ms` of use: started seconds count whole, then the minimum,
    /// then the last unit rounds up. Zero use bills nothing.
    pub fn billable_seconds(self, duration_ms: i64) -> i64 {
        if duration_ms <= 0 {
            return 0;
        }
        let used = (duration_ms + 999) / 1000;
        let at_least = used.max(self.minimum_s);
        (at_least + self.granularity_s - 1) / self.granularity_s * self.granularity_s
    }
}

/// A price per GPU-hour that applies from `effective_from` until the next point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricePoint {
    pub effective_from: Timestamp,
    pub per_gpu_hour: Money,
}

/// The price in effect at `t`; `None` before the first point (such time is free: a price set
/// later never reaches back).
pub fn price_at(prices: &[PricePoint], t: Timestamp) -> Option<Money> {
    prices.iter().filter(|p| p.effective_from <= t).max_by_key(|p| p.effective_from).map(|p| p.per_gpu_hour)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charge {
    pub seconds: i64,
    pub amount: Money,
}

/// What `gpus` GPUs (in thousandths, so a quarter GPU is 250) used from `start` for
/// `duration_ms` cost. The billed window is `[start, start + billable seconds)`; each part of
/// it is priced at the price in effect then.
pub fn charge(start: Timestamp, duration_ms: i64, milli_gpus: u32, prices: &[PricePoint], rules: Rules) -> Charge {
    let seconds = rules.billable_seconds(duration_ms);
    if seconds == 0 {
        return Charge::default();
    }
    let end = start.plus_millis(seconds * 1000);
    let mut points: Vec<PricePoint> = prices.to_vec();
    points.sort_by_key(|p| p.effective_from);
    // micro-units x milli-GPUs x milliseconds; divided by 1000 (milli-GPU) x 3,600,000 (ms/hour).
    // One walk over the sorted points: long histories (a spot price moves often) stay linear.
    let mut numerator: i128 = 0;
    let first = points.partition_point(|p| p.effective_from <= start);
    let mut current = first.checked_sub(1).map(|i| points[i].per_gpu_hour);
    let mut cursor = start;
    let mut add = |price: Option<Money>, from: Timestamp, to: Timestamp| {
        if let Some(price) = price {
            let ms = i128::from(to.millis() - from.millis());
            numerator += i128::from(price.micros()) * i128::from(milli_gpus) * ms;
        }
    };
    for p in points[first..].iter().take_while(|p| p.effective_from < end) {
        add(current, cursor, p.effective_from);
        cursor = p.effective_from;
        current = Some(p.per_gpu_hour);
    }
    add(current, cursor, end);
    const DIVISOR: i128 = 1000 * 3_600_000;
    let amount = (numerator + DIVISOR / 2) / DIVISOR;
    Charge { seconds, amount: Money(amount as i64) }
}

/// The hourly price and the cost of `duration_s` seconds, for a quote.
pub fn quote(price_per_gpu_hour: Money, milli_gpus: u32, duration_s: i64, rules: Rules) -> (Money, Charge) {
    let point = [PricePoint { effective_from: Timestamp(0), per_gpu_hour: price_per_gpu_hour }];
    let hourly = Money(((i128::from(price_per_gpu_hour.micros()) * i128::from(milli_gpus) + 500) / 1000) as i64);
    (hourly, charge(Timestamp(0), duration_s.saturating_mul(1000), milli_gpus, &point, rules))
}

#[cfg(test)]
mod tests;

/// One stretch of billable use as metering sees it: where it starts, what of it an earlier run
/// already paid for, and what caps its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub started_at: Timestamp,
    /// Wall-clock time up to here was paid for by the previous run's minimum: it is not billed
    /// again, and this run has no minimum of its own (its rules say so).
    pub free_until: Option<Timestamp>,
    pub milli_gpus: u32,
    pub rules: Rules,
    /// A spot bid: no second is priced above it.
    pub price_cap: Option<Money>,
}

impl Usage {
    fn billed_from(&self) -> Timestamp {
        self.free_until.map_or(self.started_at, |f| f.max(self.started_at))
    }

    /// What this use owes if it runs until `end`.
    pub fn due(&self, end: Timestamp, prices: &[PricePoint]) -> Charge {
        let from = self.billed_from();
        if end <= from {
            return Charge::default();
        }
        match self.price_cap {
            Some(cap) => {
                let capped: Vec<PricePoint> =
                    prices.iter().map(|p| PricePoint { per_gpu_hour: p.per_gpu_hour.min(cap), ..*p }).collect();
                charge(from, end.millis_since(from), self.milli_gpus, &capped, self.rules)
            }
            None => charge(from, end.millis_since(from), self.milli_gpus, prices, self.rules),
        }
    }

    /// The wall-clock time paid for if this use ends at `end`: the minimum and the rounding
    /// buy time past the end, and a start before then runs free until it.
    pub fn paid_until(&self, end: Timestamp) -> Timestamp {
        let from = self.billed_from();
        if end <= from {
            return from;
        }
        from.plus_millis(self.rules.billable_seconds(end.millis_since(from)) * 1000)
    }
}
