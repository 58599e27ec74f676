use super::*;
use gpucloud_model::TenantId;
use proptest::prelude::*;

fn at(ms: i64) -> Timestamp {
    Timestamp(ms)
}

fn flat(price: &str) -> Vec<PricePoint> {
    vec![PricePoint { effective_from: at(0), per_gpu_hour: price.parse().unwrap() }]
}

#[test]
fn examples() {
    let r = Rules::default();
    assert_eq!(r.billable_seconds(0), 0);
    assert_eq!(r.billable_seconds(1), 60, "the minimum");
    assert_eq!(r.billable_seconds(60_001), 61, "a started second counts");
    let hourly = Rules::new(3600, 60).unwrap();
    assert_eq!(hourly.billable_seconds(3_600_001), 7200);
    // 2 GPUs at 2.00/h for 90 s = 0.10
    assert_eq!(charge(at(0), 90_000, 2000, &flat("2"), r), Charge { seconds: 90, amount: Money(100_000) });
    // Price doubles 30 s in: 30 s at 1.00 and 60 s at 2.00 for one GPU.
    let prices = vec![
        PricePoint { effective_from: at(0), per_gpu_hour: "1".parse().unwrap() },
        PricePoint { effective_from: at(30_000), per_gpu_hour: "2".parse().unwrap() },
    ];
    let c = charge(at(0), 90_000, 1000, &prices, r);
    assert_eq!(c.amount, Money((30 * 1_000_000 + 60 * 2_000_000 + 1800) / 3600), "rounded half up");
    // Time before any price is free; a price set later never reaches back.
    let later = vec![PricePoint { effective_from: at(60_000), per_gpu_hour: "3.6".parse().unwrap() }];
    assert_eq!(charge(at(0), 120_000, 1000, &later, r).amount, Money(60_000));
    let (hourly, c) = quote("2.5".parse().unwrap(), 4000, 3600, r);
    assert_eq!((hourly, c.amount), (Money(10_000_000), Money(10_000_000)));
    assert!(Rules::new(0, 60).is_err() && Rules::new(60, -1).is_err());
}

fn rules() -> impl Strategy<Value = Rules> {
    (proptest::sample::select(vec![1i64, 60, 600, 3600]), proptest::sample::select(vec![0i64, 1, 60, 300]))
        .prop_map(|(g, m)| Rules::new(g, m).unwrap())
}

fn prices() -> impl Strategy<Value = Vec<PricePoint>> {
    proptest::collection::vec((0i64..10_000_000, 0i64..50_000_000), 1..5).prop_map(|v| {
        v.into_iter().map(|(t, p)| PricePoint { effective_from: at(t), per_gpu_hour: Money(p) }).collect()
    })
}

proptest! {
    /// Billable seconds are the used seconds rounded by the rules: never fewer, at least the
    /// minimum, whole units, and less than one unit more than needed.
    #[test]
    fn billable_seconds_follow_the_rules(ms in 1i64..100_000_000, r in rules()) {
        let s = r.billable_seconds(ms);
        let used = (ms + 999) / 1000;
        prop_assert!(s >= used && s >= r.minimum_s);
        prop_assert_eq!(s % r.granularity_s, 0);
        prop_assert!(s - used.max(r.minimum_s) < r.granularity_s);
    }

    /// Charging a running instance at any checkpoints, each time the difference between the
    /// charge so far and what was already charged, adds up to charging it once at the end; no
    /// increment is negative.
    #[test]
    fn cumulative_charging_is_exact(
        mut cuts in proptest::collection::vec(0i64..20_000_000, 0..20),
        end in 1i64..20_000_000,
        start in 0i64..5_000_000,
        milli in 1u32..16_000,
        p in prices(),
        r in rules(),
    ) {
        cuts.push(end);
        cuts.retain(|c| *c <= end);
        cuts.sort();
        let mut charged = Money::ZERO;
        let mut seconds = 0;
        for c in cuts {
            let now = charge(at(start), c, milli, &p, r);
            prop_assert!(now.amount >= charged, "charge went down: {:?} < {:?}", now.amount, charged);
            prop_assert!(now.seconds >= seconds);
            charged = now.amount;
            seconds = now.seconds;
        }
        let once = charge(at(start), end, milli, &p, r);
        prop_assert_eq!(charged, once.amount);
        prop_assert_eq!(seconds, r.billable_seconds(end));
    }

    /// With one price, the amount is price x GPUs x billable hours, to the micro-unit.
    #[test]
    fn flat_price_amount(ms in 1i64..100_000_000, milli in 1u32..16_000, price in 0i64..100_000_000, r in rules()) {
        let p = [PricePoint { effective_from: at(0), per_gpu_hour: Money(price) }];
        let c = charge(at(0), ms, milli, &p, r);
        let exact = i128::from(price) * i128::from(milli) * i128::from(c.seconds) * 1000;
        let div = 1000i128 * 3_600_000;
        prop_assert!((i128::from(c.amount.micros()) * div - exact).abs() * 2 <= div);
        prop_assert!(c.amount >= Money::ZERO);
    }

    #[test]
    fn entries_balance(amount in -1_000_000_000_000i64..1_000_000_000_000, kind in 0..4u8) {
        let t = TenantId::parse("t-abc").unwrap();
        let e = match kind { 0 => Entry::usage(&t, Money(amount)), 1 => Entry::grant(&t, Money(amount)),
            2 => Entry::top_up(&t, Money(amount)), _ => Entry::adjustment(&t, Money(amount)) };
        prop_assert!(e.is_balanced());
        for p in e.postings() {
            prop_assert_eq!(p.account.to_string().parse::<Account>().unwrap(), p.account.clone());
        }
    }
}

fn line(amount: i64) -> InvoiceLine {
    InvoiceLine { description: "x, \"y\"".into(), instance: None, gpu: None, seconds: 1, amount: Money(amount) }
}

proptest! {
    /// Totals are the sums of their lines, and the closing balance follows from them.
    #[test]
    fn invoice_totals_equal_their_lines(
        usage in proptest::collection::vec(0i64..1_000_000_000, 0..20),
        credits in proptest::collection::vec(-1_000_000i64..1_000_000_000, 0..5),
        opening in -1_000_000_000i64..1_000_000_000,
    ) {
        let mut inv = Invoice {
            tenant: "t-a".into(), tenant_name: "a".into(), month: "2026-11".into(), status: "closed".into(),
            currency: "USD".into(), opening_balance: Money(opening),
            lines: usage.iter().map(|a| line(*a)).collect(), credits: credits.iter().map(|a| line(*a)).collect(),
            usage_total: Money(0), credits_total: Money(0), closing_balance: Money(0),
        };
        inv.finish();
        prop_assert_eq!(inv.usage_total.micros(), usage.iter().sum::<i64>());
        prop_assert_eq!(inv.credits_total.micros(), credits.iter().sum::<i64>());
        prop_assert_eq!(inv.closing_balance.micros(), opening + credits.iter().sum::<i64>() - usage.iter().sum::<i64>());
        let csv = inv.to_csv();
        prop_assert_eq!(csv.lines().count(), 1 + usage.len() + credits.len() + 3);
        prop_assert!(inv.to_html().contains(&inv.closing_balance.to_string()));
    }
}

/// The definition, segment by segment: each stretch between price changes at the price in force.
fn charge_by_definition(start: Timestamp, seconds: i64, milli: u32, prices: &[PricePoint]) -> Money {
    let end = start.plus_millis(seconds * 1000);
    let mut cuts: Vec<Timestamp> = prices.iter().map(|p| p.effective_from).filter(|t| *t > start && *t < end).collect();
    cuts.push(end);
    cuts.sort();
    let mut numerator: i128 = 0;
    let mut cursor = start;
    for cut in cuts {
        if let Some(p) = price_at(prices, cursor) {
            numerator += i128::from(p.micros()) * i128::from(milli) * i128::from(cut.millis() - cursor.millis());
        }
        cursor = cut;
    }
    Money(((numerator + 1_800_000_000) / 3_600_000_000) as i64)
}

proptest! {
    /// Across any number of price changes (unordered, repeated times), the charge is the sum of
    /// each stretch at the price in force.
    #[test]
    fn charge_follows_every_price_change(
        start in 0i64..10_000_000,
        ms in 0i64..20_000_000,
        milli in 1u32..16_000,
        points in proptest::collection::vec((0i64..40_000_000, 0i64..50_000_000), 0..40),
    ) {
        let prices: Vec<PricePoint> = points
            .iter()
            .map(|(t, p)| PricePoint { effective_from: Timestamp(*t), per_gpu_hour: Money(*p) })
            .collect();
        let rules = Rules::default();
        let c = charge(Timestamp(start), ms, milli, &prices, rules);
        // Points at the same instant: the definition takes the last one listed after sorting.
        let mut sorted = prices.clone();
        sorted.sort_by_key(|p| p.effective_from);
        let mut dedup: Vec<PricePoint> = Vec::new();
        for p in sorted {
            match dedup.last_mut() {
                Some(l) if l.effective_from == p.effective_from => *l = p,
                _ => dedup.push(p),
            }
        }
        prop_assert_eq!(c.amount, charge_by_definition(Timestamp(start), c.seconds, milli, &dedup));
    }
}

proptest! {
    /// A spot bid is a ceiling: whatever the market does, a second never costs more than the bid,
    /// and a market under the bid is paid as is.
    #[test]
    fn a_capped_use_never_pays_above_its_cap(
        ms in 1i64..20_000_000,
        milli in 1u32..16_000,
        p in prices(),
        cap in 0i64..50_000_000,
    ) {
        let exact = Rules::new(1, 0).unwrap();
        let u = Usage { started_at: at(0), free_until: None, milli_gpus: milli, rules: exact, price_cap: Some(Money(cap)) };
        let c = u.due(at(ms), &p);
        let ceiling = [PricePoint { effective_from: at(0), per_gpu_hour: Money(cap) }];
        prop_assert!(c.amount <= charge(at(0), ms, milli, &ceiling, exact).amount);
        prop_assert!(c.amount <= charge(at(0), ms, milli, &p, exact).amount);
        let uncapped = Usage { price_cap: None, ..u };
        prop_assert_eq!(uncapped.due(at(ms), &p), charge(at(0), ms, milli, &p, exact));
        let high = Usage { price_cap: Some(Money(i64::MAX)), ..u };
        prop_assert_eq!(high.due(at(ms), &p), uncapped.due(at(ms), &p));
    }

    /// Two runs of one instance, the second starting while time paid by the first is left, never
    /// pay a wall-clock second twice, and pay every second either of them ran.
    #[test]
    fn a_quick_restart_pays_no_second_twice(run1 in 1i64..120_000, gap in 0i64..120_000, run2 in 1i64..200_000) {
        let r = Rules::default();
        let p = [PricePoint { effective_from: at(0), per_gpu_hour: Money(3_600_000) }];
        let first = Usage { started_at: at(0), free_until: None, milli_gpus: 1000, rules: r, price_cap: None };
        let end1 = at(run1);
        let paid = first.paid_until(end1);
        let start2 = end1.plus_millis(gap);
        let second = if paid > start2 {
            Usage { started_at: start2, free_until: Some(paid), rules: Rules::new(1, 0).unwrap(), ..first }
        } else {
            Usage { started_at: start2, ..first }
        };
        let end2 = start2.plus_millis(run2);
        let total = first.due(end1, &p).seconds + second.due(end2, &p).seconds;
        // Every millisecond that ran is paid for, and never more than billing each run alone.
        prop_assert!(total * 1000 >= run1 + run2);
        let alone = Usage { started_at: start2, ..first };
        prop_assert!(total <= first.due(end1, &p).seconds + alone.due(end2, &p).seconds);
        if paid > start2 {
            // The second run pays only what lies past the first run's paid time.
            let past = (end2.millis() - paid.millis()).max(0);
            prop_assert_eq!(second.due(end2, &p).seconds, (past + 999) / 1000);
        }
    }
}

#[test]
fn a_restart_within_the_minimum_pays_the_minimum_once() {
    let r = Rules::default();
    let p = [PricePoint { effective_from: at(0), per_gpu_hour: Money(3_600_000) }];
    let first = Usage { started_at: at(0), free_until: None, milli_gpus: 1000, rules: r, price_cap: None };
    // 5 s, stopped, started again at 20 s for 4 s: one minute billed, not two.
    assert_eq!(first.due(at(5_000), &p).seconds, 60);
    let paid = first.paid_until(at(5_000));
    assert_eq!(paid, at(60_000));
    let second = Usage { started_at: at(20_000), free_until: Some(paid), rules: Rules::new(1, 0).unwrap(), ..first };
    assert_eq!(second.due(at(24_000), &p), Charge::default());
    // Running on past the paid minute bills the seconds after it.
    assert_eq!(second.due(at(90_000), &p).seconds, 30);
    assert_eq!(second.paid_until(at(24_000)), at(60_000));
}
