//! The spot price: a pure function of supply and demand, bounded by a floor and the on-demand
//! price, moved smoothly toward its target so a burst of requests does not whipsaw tenants.
//!
//! With `u` = (GPUs in use + GPUs asked for by the queue) / healthy GPUs, capped at 1:
//!
//! ```text
//! target(u) = floor + (on_demand - floor) * u^2
//! next      = price + (target - price) * min(1, dt / tau)
//! ```
//!
//! The square keeps spot cheap while there is slack (at half the fleet busy the price has moved a
//! quarter of the way from the floor) and brings it to the on-demand price as the last GPUs are
//! taken: spot is then no bargain, which is the signal to move work elsewhere. `tau` is the time
//! constant of the smoothing (an exponential moving average in continuous time).

use gpucloud_model::Money;

/// How full a pool is: `used_milli` (held, plus asked for by the queue) of `capacity_milli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub used_milli: u64,
    pub capacity_milli: u64,
}

/// The floor for an on-demand price: `percent` of it, rounded down to whole micro-units.
pub fn floor(on_demand: Money, percent: u32) -> Money {
    Money((i128::from(on_demand.0) * i128::from(percent.min(100)) / 100) as i64)
}

/// Where the price would settle if demand stayed as it is.
pub fn target(on_demand: Money, floor: Money, demand: Demand) -> Money {
    let floor = floor.0.min(on_demand.0);
    if demand.capacity_milli == 0 {
        return Money(on_demand.0);
    }
    let cap = i128::from(demand.capacity_milli);
    let used = i128::from(demand.used_milli).min(cap);
    let span = i128::from(on_demand.0 - floor);
    Money(floor + (span * used * used / (cap * cap)) as i64)
}

/// One step of `dt_ms` toward `target` with time constant `tau_ms`, kept within the bounds.
pub fn step(price: Money, target: Money, floor: Money, on_demand: Money, dt_ms: i64, tau_ms: i64) -> Money {
    let floor = floor.0.min(on_demand.0);
    let moved = if tau_ms <= 0 || dt_ms >= tau_ms {
        target.0
    } else {
        let dt = i128::from(dt_ms.max(0));
        price.0 + (i128::from(target.0 - price.0) * dt / i128::from(tau_ms)) as i64
    };
    Money(moved.clamp(floor, on_demand.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let od = Money(4_000_000);
        let f = floor(od, 25);
        assert_eq!(f, Money(1_000_000));
        let at = |used| target(od, f, Demand { used_milli: used, capacity_milli: 8000 });
        assert_eq!(at(0), f);
        assert_eq!(at(4000), Money(1_750_000));
        assert_eq!(at(8000), od);
        assert_eq!(at(20_000), od, "a queue beyond the fleet still caps at on-demand");
        // Halfway there in one step of tau/2.
        assert_eq!(step(f, od, f, od, 30_000, 60_000), Money(2_500_000));
        assert_eq!(step(f, od, f, od, 90_000, 60_000), od);
    }

    proptest! {
        #[test]
        fn bounded_monotone_and_never_overshooting(
            od in 1i64..100_000_000, pct in 0u32..=100, cap in 1u64..1_000_000,
            a in 0u64..2_000_000, b in 0u64..2_000_000, price in 0i64..200_000_000,
            dt in 0i64..1_000_000, tau in 1i64..1_000_000,
        ) {
            let od = Money(od);
            let f = floor(od, pct);
            let (lo, hi) = (a.min(b), a.max(b));
            let t_lo = target(od, f, Demand { used_milli: lo, capacity_milli: cap });
            let t_hi = target(od, f, Demand { used_milli: hi, capacity_milli: cap });
            prop_assert!(f <= t_lo && t_lo <= t_hi && t_hi <= od);
            let p = Money(price).max(f).min(od);
            let next = step(p, t_hi, f, od, dt, tau);
            prop_assert!(f <= next && next <= od);
            // Moves toward the target and never past it.
            prop_assert!((p <= t_hi && p <= next && next <= t_hi) || (p >= t_hi && p >= next && next >= t_hi));
        }
    }
}
