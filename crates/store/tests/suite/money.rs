//! The store suite's money half: usage intervals, charges and postings, the ledger and its kept
//! balances, prices, reservations, invoices and alerts, on both backends.

use super::*;

pub(crate) async fn billable_time_is_recorded_with_state_changes(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    s.set_billing_rules(Rules::new(60, 120).unwrap()).await.unwrap();
    let i = running_instance(&s, &t, &n, 100).await;
    let open = s.unsettled_intervals().await.unwrap();
    assert_eq!(open.len(), 1);
    // Running, it is posted at a posting point after its start, not at one before; it has not
    // ended, so metering leaves it to accrual.
    assert_eq!(s.intervals_to_post(ts(5_000), 10).await.unwrap().len(), 1);
    assert!(s.intervals_to_post(ts(50), 10).await.unwrap().is_empty());
    assert!(s.ended_unsettled_intervals().await.unwrap().is_empty());
    let u = &open[0];
    assert_eq!((u.instance_id.clone(), u.started_at, u.ended_at, u.milli_gpus), (i.id.clone(), ts(100), None, 2000));
    assert_eq!((u.region.as_str(), u.tier, u.rules), ("eu-1", Tier::OnDemand, Rules::new(60, 120).unwrap()));
    // Stopping is still billed: the GPUs are held until the workload is gone.
    let stopping = InstanceChange {
        state: InstanceState::Stopping,
        stop_target: Some(StopTarget::Stopped),
        exit_code: None,
        at: ts(200),
    };
    let i = s.update_instance(&i.id, i.generation, &stopping).await.unwrap().unwrap();
    assert_eq!(s.unsettled_intervals().await.unwrap()[0].ended_at, None);
    let stopped = InstanceChange { state: InstanceState::Stopped, stop_target: None, exit_code: None, at: ts(300) };
    s.update_instance(&i.id, i.generation, &stopped).await.unwrap().unwrap();
    let all = s.intervals_of_tenant(&t.id).await.unwrap();
    assert_eq!((all.len(), all[0].ended_at), (1, Some(ts(300))));
    // Ended and unsettled: metering's to settle; no longer a running one a posting point posts.
    let ended: Vec<_> = s.ended_unsettled_intervals().await.unwrap().into_iter().map(|u| u.instance_id).collect();
    assert_eq!(ended, std::slice::from_ref(&i.id));
    assert!(s.intervals_to_post(ts(10_000), 10).await.unwrap().is_empty());
    // The node it ran on stays known after it stopped (the SSH and proxy checks ask).
    assert_eq!(s.instance_ran_on(&i.id).await.unwrap(), Some(n.id.clone()));
    // The history billing is checked against was written with each change.
    let history: Vec<(Option<InstanceState>, InstanceState, Timestamp)> =
        s.instance_events(&i.id).await.unwrap().into_iter().map(|e| (e.from, e.to, e.at)).collect();
    use InstanceState as S;
    assert_eq!(
        history,
        vec![
            (None, S::Pending, ts(10)),
            (Some(S::Pending), S::Provisioning, ts(99)),
            (Some(S::Provisioning), S::Running, ts(100)),
            (Some(S::Running), S::Stopping, ts(200)),
            (Some(S::Stopping), S::Stopped, ts(300)),
        ]
    );
}

pub(crate) fn usage_record(u: &UsageInterval, delta: Money, seconds: i64, key: &str) -> LedgerRecord {
    LedgerRecord {
        id: format!("e-{key}"),
        entry: Entry::usage(&u.tenant_id, delta),
        memo: "usage".into(),
        instance_id: Some(u.instance_id.clone()),
        interval_id: Some(u.id.clone()),
        model: Some(u.model),
        seconds,
        idempotency_key: key.into(),
        created_at: ts(500),
    }
}

pub(crate) async fn a_batch_posts_like_one_entry_at_a_time(s: Arc<dyn Store>) {
    let a = tenant(&s, "a").await;
    let b = tenant(&s, "b").await;
    let rec = |k: usize, t: &Tenant, entry: Entry, at: i64| LedgerRecord {
        id: format!("e-batch-{k}"),
        entry,
        memo: "history".into(),
        instance_id: None,
        interval_id: None,
        model: Some(GpuModel::A100_40GB),
        seconds: 3,
        idempotency_key: format!("batch:{k}:{}", t.id),
        created_at: ts(at),
    };
    let early = rec(0, &a, Entry::grant(&a.id, Money(7)), 1);
    assert!(s.post_ledger(&early).await.unwrap());
    // More rows than one statement takes, a key posted before and a key repeated in the batch.
    let mut batch = vec![early.clone()];
    let mut want_a = 7i64;
    let mut want_b = 0i64;
    for k in 1..2_500 {
        let (t, amount) = if k % 3 == 0 { (&b, 11) } else { (&a, 5) };
        let entry = if k % 10 == 0 { Entry::top_up(&t.id, Money(1_000)) } else { Entry::usage(&t.id, Money(amount)) };
        let delta = if k % 10 == 0 { 1_000 } else { -amount };
        if k % 3 == 0 {
            want_b += delta;
        } else {
            want_a += delta;
        }
        batch.push(rec(k, t, entry, 1 + k as i64 * 1_000));
    }
    batch.push(LedgerRecord { id: "e-batch-again".into(), ..batch[5].clone() });
    assert_eq!(s.post_ledger_batch(&batch).await.unwrap(), 2_499);
    assert_eq!(s.balance(&a.id).await.unwrap(), Money(want_a));
    assert_eq!(s.balance(&b.id).await.unwrap(), Money(want_b));
    assert_eq!(s.balance_before(&a.id, Timestamp(i64::MAX)).await.unwrap(), Money(want_a));
    let usage_b: i64 = (1..2_500).filter(|k| k % 3 == 0 && k % 10 != 0).map(|_| 11).sum();
    assert_eq!(s.usage_in_month(&b.id, year_month(ts(1))).await.unwrap(), Money(usage_b));
    // The whole fleet's totals in one read agree with the per-tenant reads.
    let totals = s.tenant_totals(year_month(ts(1))).await.unwrap();
    assert_eq!(totals.len(), 2, "{totals:?}");
    assert_eq!(totals[&a.id].balance, Money(want_a));
    assert_eq!(totals[&b.id].balance, Money(want_b));
    assert_eq!(totals[&b.id].month_usage, Money(usage_b));
    assert_eq!(totals[&a.id].month_usage, s.usage_in_month(&a.id, year_month(ts(1))).await.unwrap());
    let next_month = s.tenant_totals(year_month(ts(1)) + 1).await.unwrap();
    assert_eq!(next_month[&b.id].month_usage, Money::ZERO, "usage is per month, the balance is not");
    assert_eq!(next_month[&b.id].balance, Money(want_b));
    let audit = s.ledger_audit().await.unwrap();
    assert_eq!(audit.entries, 2_500);
    assert!(audit.unbalanced.is_empty() && audit.drift.is_empty(), "{audit:?}");
    assert_eq!(s.ledger_totals().await.unwrap(), vec![("USD".to_string(), Money(0))]);
    assert_eq!(s.post_ledger_batch(&batch).await.unwrap(), 0, "a replayed batch writes nothing");
    assert_eq!(s.balance(&a.id).await.unwrap(), Money(want_a));
}

pub(crate) async fn charges_move_money_once(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let grant = LedgerRecord {
        id: "e-grant".into(),
        entry: Entry::grant(&t.id, Money(10_000_000)),
        memo: "welcome".into(),
        instance_id: None,
        interval_id: None,
        model: None,
        seconds: 0,
        idempotency_key: "grant-1".into(),
        created_at: ts(1),
    };
    assert!(s.post_ledger(&grant).await.unwrap());
    assert!(!s.post_ledger(&LedgerRecord { id: "e-grant-2".into(), ..grant.clone() }).await.unwrap(), "same key");
    let mut settings = s.tenant_billing(&t.id).await.unwrap();
    assert_eq!(settings.idle, IdlePolicy::default());
    settings.idle = IdlePolicy { below_percent: 10, minutes: 15, auto_stop: true };
    s.set_tenant_billing(&settings).await.unwrap();
    assert_eq!(s.tenant_billing(&t.id).await.unwrap(), settings);
    assert_eq!(s.balance(&t.id).await.unwrap(), Money(10_000_000));

    running_instance(&s, &t, &n, 100).await;
    let u = s.unsettled_intervals().await.unwrap().remove(0);
    let first = Charge { seconds: 60, amount: Money(1_000) };
    assert!(s.charge_interval(&u, first, false, Some(&usage_record(&u, first.amount, 60, "u1"))).await.unwrap());
    // A second writer that read the same interval loses, and posts nothing.
    assert!(!s.charge_interval(&u, first, false, Some(&usage_record(&u, first.amount, 60, "u1b"))).await.unwrap());
    let u = s.unsettled_intervals().await.unwrap().remove(0);
    assert_eq!((u.charged, u.charged_seconds), (Money(1_000), 60));
    let second = Charge { seconds: 90, amount: Money(1_500) };
    assert!(s.charge_interval(&u, second, true, Some(&usage_record(&u, Money(500), 30, "u2"))).await.unwrap());
    assert!(s.unsettled_intervals().await.unwrap().is_empty(), "settled");

    assert_eq!(s.balance(&t.id).await.unwrap(), Money(10_000_000 - 1_500));
    assert_eq!(s.ledger_totals().await.unwrap(), vec![("USD".to_string(), Money(0))]);
    let lines = s.ledger_lines(&t.id, ts(0), ts(1_000)).await.unwrap();
    let usage: Vec<(EntryKind, Money, i64)> = lines.iter().map(|l| (l.kind, l.amount, l.seconds)).collect();
    assert_eq!(
        usage,
        vec![
            (EntryKind::Grant, Money(10_000_000), 0),
            (EntryKind::Usage, Money(-1_000), 60),
            (EntryKind::Usage, Money(-500), 30)
        ]
    );
    assert_eq!(s.ledger_lines(&t.id, ts(2), ts(500)).await.unwrap().len(), 0, "to is exclusive");
    // Revenue over time counts usage, not the grant.
    assert_eq!(s.revenue_series(ts(0), 1_000).await.unwrap(), vec![(ts(0), 1_500)]);
    assert_eq!(s.revenue_series(ts(501), 1_000).await.unwrap(), vec![]);
}

/// A metering pass charges many intervals in one transaction; each moves only from what its
/// caller read, so a pass that lost a race to another writes nothing for those intervals.
pub(crate) async fn a_metering_batch_charges_each_interval_once(s: Arc<dyn Store>) {
    let t = tenant(&s, "batch").await;
    let n = node(&s, "batch-node", GpuModel::A100_40GB, 4).await;
    running_instance(&s, &t, &n, 100).await;
    running_instance(&s, &t, &n, 100).await;
    let read = s.unsettled_intervals_of(&t.id).await.unwrap();
    assert_eq!(read.len(), 2);
    let item = |u: &UsageInterval, seconds: i64, amount: i64, key: &str| ChargeItem {
        interval: u.clone(),
        charge: Charge { seconds, amount: Money(amount) },
        settled: false,
        record: Some(usage_record(u, Money(amount - u.charged.0), seconds - u.charged_seconds, key)),
        posted_through: None,
    };
    let pass = vec![item(&read[0], 60, 1_000, "b1"), item(&read[1], 30, 500, "b2")];
    assert_eq!(s.charge_intervals(&pass).await.unwrap(), vec![true, true]);
    // A second pass that read the same rows (before the first wrote) changes nothing.
    let stale = vec![item(&read[0], 60, 1_000, "b1-again"), item(&read[1], 30, 500, "b2-again")];
    assert_eq!(s.charge_intervals(&stale).await.unwrap(), vec![false, false]);
    assert_eq!(s.balance(&t.id).await.unwrap(), Money(-1_500));
    // One current and one stale item: only the current one moves.
    let now = s.unsettled_intervals_of(&t.id).await.unwrap();
    let current = now.iter().find(|u| u.id == read[0].id).unwrap();
    let mixed = vec![item(current, 120, 2_000, "b3"), item(&read[1], 60, 1_000, "b4")];
    assert_eq!(s.charge_intervals(&mixed).await.unwrap(), vec![true, false]);
    assert_eq!(s.balance(&t.id).await.unwrap(), Money(-2_500));
    let charged: Vec<(i64, Money)> = {
        let mut v: Vec<_> = s
            .unsettled_intervals_of(&t.id)
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.charged_seconds, u.charged))
            .collect();
        v.sort();
        v
    };
    assert_eq!(charged, vec![(30, Money(500)), (120, Money(2_000))]);
    assert_eq!(s.ledger_totals().await.unwrap(), vec![("USD".to_string(), Money(0))], "the ledger balances");
    // An item whose entry's key was posted before does not move its interval; the rest of its
    // batch does, and an interval named twice in one batch moves once.
    let now = s.unsettled_intervals_of(&t.id).await.unwrap();
    let (a, b) = (now.iter().find(|u| u.id == read[0].id).unwrap(), now.iter().find(|u| u.id == read[1].id).unwrap());
    let reused = vec![item(a, 180, 3_000, "b3"), item(b, 90, 1_500, "b5")];
    assert_eq!(s.charge_intervals(&reused).await.unwrap(), vec![false, true]);
    let now = s.unsettled_intervals_of(&t.id).await.unwrap();
    let a = now.iter().find(|u| u.id == read[0].id).unwrap();
    assert_eq!((a.charged_seconds, a.charged), (120, Money(2_000)), "unmoved");
    let twice = vec![item(a, 200, 3_000, "b6"), item(a, 200, 3_000, "b7")];
    assert_eq!(s.charge_intervals(&twice).await.unwrap(), vec![true, false]);
    assert_eq!(s.balance(&t.id).await.unwrap(), Money(-4_500));
    assert_eq!(s.ledger_totals().await.unwrap(), vec![("USD".to_string(), Money(0))], "the ledger balances");
}

pub(crate) async fn prices_and_rules(s: Arc<dyn Store>) {
    assert_eq!(s.billing_rules().await.unwrap(), Rules::default());
    s.set_billing_rules(Rules::new(3600, 0).unwrap()).await.unwrap();
    assert_eq!(s.billing_rules().await.unwrap(), Rules::new(3600, 0).unwrap());
    let eu = Region::parse("eu-1").unwrap();
    let row = |from: i64, micros: i64| PriceRow {
        model: GpuModel::H100_80GB,
        region: eu.clone(),
        tier: Tier::OnDemand,
        point: PricePoint { effective_from: ts(from), per_gpu_hour: Money(micros) },
    };
    assert!(s.add_price(&row(100, 3_000_000), ts(1)).await.unwrap());
    assert!(s.add_price(&row(0, 2_000_000), ts(1)).await.unwrap());
    assert!(!s.add_price(&row(0, 9_000_000), ts(1)).await.unwrap(), "a point is never rewritten");
    let points = s.prices_for(GpuModel::H100_80GB, &eu, Tier::OnDemand).await.unwrap();
    assert_eq!(points.iter().map(|p| p.per_gpu_hour.micros()).collect::<Vec<_>>(), vec![2_000_000, 3_000_000]);
    assert!(s.prices_for(GpuModel::H100_80GB, &eu, Tier::Spot).await.unwrap().is_empty());
    assert_eq!(s.list_prices().await.unwrap().len(), 2);
}

pub(crate) async fn price_history_and_the_price_in_force(s: Arc<dyn Store>) {
    let r = Region::parse("us-1").unwrap();
    for (at, micros) in [(100, 1_000_000), (200, 1_200_000), (300, 1_100_000)] {
        let row = PriceRow {
            model: GpuModel::L4,
            region: r.clone(),
            tier: Tier::Spot,
            point: PricePoint { effective_from: ts(at), per_gpu_hour: Money(micros) },
        };
        s.add_price(&row, ts(at)).await.unwrap();
    }
    assert!(s.price_at(GpuModel::L4, &r, Tier::Spot, ts(99)).await.unwrap().is_none());
    assert_eq!(
        s.price_at(GpuModel::L4, &r, Tier::Spot, ts(250)).await.unwrap().unwrap().per_gpu_hour,
        Money(1_200_000)
    );
    let h = s.price_history(GpuModel::L4, &r, Tier::Spot, ts(150), 10).await.unwrap();
    let got: Vec<i64> = h.iter().map(|p| p.effective_from.0).collect();
    assert_eq!(got, vec![150, 200, 300], "the price in force at the start (dated there), then each change");
    assert_eq!(s.price_history(GpuModel::L4, &r, Tier::Spot, ts(150), 2).await.unwrap().len(), 2);
}

pub(crate) async fn reservations_overlap_and_bill_each_period_once(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let eu = Region::parse("eu-1").unwrap();
    let r = Reservation {
        id: ReservationId::from_random(rand::random()),
        tenant_id: t.id.clone(),
        model: GpuModel::A100_40GB,
        region: eu.clone(),
        gpus: 2,
        starts_at: ts(1_000),
        ends_at: ts(5_000),
        price: Money(1_000_000),
        lend_share_pct: 50,
        lent_gpu_ms: 0,
        lent_revenue: Money::ZERO,
        billed_periods: 0,
        credited: Money::ZERO,
        created_at: ts(1),
    };
    s.insert_reservation(&r).await.unwrap();
    let overlap = |from: i64, to: i64| {
        let s = s.clone();
        let eu = eu.clone();
        async move { s.reservations_overlapping(GpuModel::A100_40GB, &eu, ts(from), ts(to)).await.unwrap().len() }
    };
    assert_eq!(overlap(0, 1_000).await, 0, "ends where it starts: no overlap");
    assert_eq!(overlap(4_999, 9_000).await, 1);
    assert_eq!(overlap(5_000, 9_000).await, 0);
    assert_eq!(s.list_reservations(Some(&tenant(&s, "b").await.id)).await.unwrap().len(), 0);
    s.accrue_lending(&r.id, 1_500, Money(300)).await.unwrap();
    s.accrue_lending(&r.id, 500, Money(100)).await.unwrap();
    let stored = &s.list_reservations(None).await.unwrap()[0];
    assert_eq!((stored.lent_gpu_ms, stored.lent_revenue), (2_000, Money(400)));

    let record = |key: &str, entry: Entry| LedgerRecord {
        id: format!("e-{key}"),
        entry,
        memo: "reservation".into(),
        instance_id: None,
        interval_id: None,
        model: Some(GpuModel::A100_40GB),
        seconds: 1,
        idempotency_key: key.into(),
        created_at: ts(2_000),
    };
    let period0 =
        [record("r0", Entry::usage(&t.id, Money(500))), record("c0", Entry::lending_credit(&t.id, Money(200)))];
    assert!(s.bill_reservation_period(&r.id, 0, Money(200), &period0).await.unwrap());
    assert!(!s.bill_reservation_period(&r.id, 0, Money(200), &period0).await.unwrap(), "a period is billed once");
    assert_eq!(s.balance(&t.id).await.unwrap(), Money(-300));
    let stored = &s.list_reservations(None).await.unwrap()[0];
    assert_eq!((stored.billed_periods, stored.credited), (1, Money(200)));
    // A reused key (a period posted out of turn) writes nothing, the counter included.
    assert!(
        !s.bill_reservation_period(&r.id, 1, Money(200), &[record("r0", Entry::usage(&t.id, Money(9)))]).await.unwrap()
    );
    assert_eq!(s.list_reservations(None).await.unwrap()[0].billed_periods, 1);
    assert_eq!(s.ledger_totals().await.unwrap().iter().map(|(_, m)| m.0).sum::<i64>(), 0, "the books balance");
}

pub(crate) async fn accrual_reads_heartbeats_restarts_run_free_and_balances_are_kept(s: Arc<dyn Store>) {
    let t = tenant(&s, "a").await;
    let n = node(&s, "gpu-1", GpuModel::A100_40GB, 4).await;
    let i = running_instance(&s, &t, &n, 1_000).await;
    // An open interval carries its node's last sign of life, so metering can stop at it.
    s.record_heartbeat(&n.id, ts(5_000)).await.unwrap();
    let u = s.unsettled_intervals_of(&t.id).await.unwrap().remove(0);
    assert_eq!((u.node_heartbeat, u.free_until, u.price_cap), (Some(ts(5_000)), None, None));
    assert!(s.unsettled_intervals_of(&tenant(&s, "b").await.id).await.unwrap().is_empty(), "per tenant");

    // Stopped 9 s in and started again 20 s later: the second run is free until the first's
    // paid minute ends, and has no minimum of its own.
    let stop = |at| InstanceChange { state: InstanceState::Stopped, stop_target: None, exit_code: None, at: ts(at) };
    let i = s.update_instance(&i.id, i.generation, &stop(10_000)).await.unwrap().unwrap();
    let pending = InstanceChange { state: InstanceState::Pending, stop_target: None, exit_code: None, at: ts(29_000) };
    let i = s.update_instance(&i.id, i.generation, &pending).await.unwrap().unwrap();
    let free: Vec<u32> = s.get_node(&n.id).await.unwrap().unwrap().gpus.iter().map(|g| g.index).take(2).collect();
    let node_gen = s.get_node(&n.id).await.unwrap().unwrap().generation;
    s.apply_placements(&n.id, node_gen, &[placement(&i, &free)], ts(29_500)).await.unwrap();
    let i = s.get_instance(None, &i.id).await.unwrap().unwrap();
    let run = InstanceChange { state: InstanceState::Running, stop_target: None, exit_code: None, at: ts(30_000) };
    s.update_instance(&i.id, i.generation, &run).await.unwrap().unwrap();
    let all = s.intervals_of_tenant(&t.id).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[1].free_until, all[1].rules.minimum_s), (Some(ts(61_000)), 0), "{all:?}");

    // Balances are kept with every posting and agree with the postings; the audit sees it.
    let grant = LedgerRecord {
        id: "e-g".into(),
        entry: Entry::grant(&t.id, Money(5_000)),
        memo: String::new(),
        instance_id: None,
        interval_id: None,
        model: None,
        seconds: 0,
        idempotency_key: "g".into(),
        created_at: ts(1),
    };
    assert!(s.post_ledger(&grant).await.unwrap());
    let u = all[0].clone();
    let c = Charge { seconds: 60, amount: Money(1_000) };
    assert!(s.charge_interval(&u, c, true, Some(&usage_record(&u, c.amount, 60, "a1"))).await.unwrap());
    assert_eq!(s.balance(&t.id).await.unwrap(), Money(4_000));
    assert_eq!(s.usage_in_month(&t.id, 197_001).await.unwrap(), Money(1_000), "usage kept per month");
    assert_eq!(s.usage_in_month(&t.id, 197_002).await.unwrap(), Money::ZERO);
    let audit = s.ledger_audit().await.unwrap();
    assert_eq!((audit.unbalanced.len(), audit.drift.len(), audit.entries), (0, 0, 2), "{audit:?}");
    assert_eq!(audit.posted, vec![(u.id.clone(), Money(-1_000), 60)]);
}

pub(crate) async fn invoices_alerts_and_guarded_tenants(s: Arc<dyn Store>) {
    let a = tenant(&s, "inv-a").await;
    let b = tenant(&s, "inv-b").await;
    let invoice = |t: &Tenant, month: &str, total: i64| StoredInvoice {
        tenant_id: t.id.clone(),
        month: month.into(),
        total: Money(total),
        closed_at: ts(100),
        document: format!("{{\"month\":\"{month}\"}}"),
    };
    // A month closes once: the second insert writes nothing and the first stays.
    assert!(s.insert_invoice(&invoice(&a, "2026-11", 1_500_000)).await.unwrap());
    assert!(!s.insert_invoice(&invoice(&a, "2026-11", 9)).await.unwrap());
    assert!(s.insert_invoice(&invoice(&a, "2026-10", 700_000)).await.unwrap());
    assert!(s.insert_invoice(&invoice(&b, "2026-11", 1)).await.unwrap());
    assert_eq!(s.get_invoice(&a.id, "2026-11").await.unwrap(), Some(invoice(&a, "2026-11", 1_500_000)));
    assert_eq!(s.get_invoice(&a.id, "2026-09").await.unwrap(), None);
    let months: Vec<String> = s.list_invoices(&a.id).await.unwrap().into_iter().map(|i| i.month).collect();
    assert_eq!(months, ["2026-10", "2026-11"], "oldest first, only the tenant's own");

    // An alert is raised once per dedupe key (unique across tenants: the server puts the tenant
    // in it), and each tenant sees its own.
    let alert = |t: &Tenant, id: &str, key: &str, at: i64| Alert {
        id: id.into(),
        tenant_id: t.id.clone(),
        kind: "budget".into(),
        message: format!("{key} reached"),
        dedupe_key: format!("budget:{}:{key}", t.id),
        created_at: ts(at),
    };
    assert!(s.raise_alert(&alert(&a, "al-1", "2026-11:50", 10)).await.unwrap());
    assert!(!s.raise_alert(&alert(&a, "al-2", "2026-11:50", 11)).await.unwrap());
    assert!(s.raise_alert(&alert(&a, "al-3", "2026-11:80", 12)).await.unwrap());
    assert!(s.raise_alert(&alert(&b, "al-4", "2026-11:50", 13)).await.unwrap());
    let mine: Vec<String> = s.list_alerts(&a.id).await.unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.contains(&"al-1".to_string()) && mine.contains(&"al-3".to_string()), "{mine:?}");

    // Guarded tenants: those with a budget or a prepaid balance, with their settings as set.
    assert!(s.guarded_tenants().await.unwrap().iter().all(|g| g.tenant_id != a.id && g.tenant_id != b.id));
    let mut budget = s.tenant_billing(&a.id).await.unwrap();
    budget.monthly_budget = Some(Money(50_000_000));
    budget.thresholds = vec![50, 90];
    budget.action = BudgetAction::CheckpointAndStop;
    s.set_tenant_billing(&budget).await.unwrap();
    let mut prepaid = s.tenant_billing(&b.id).await.unwrap();
    prepaid.prepaid = true;
    s.set_tenant_billing(&prepaid).await.unwrap();
    let guarded = s.guarded_tenants().await.unwrap();
    let got_a = guarded.iter().find(|g| g.tenant_id == a.id).expect("a budget guards a tenant");
    assert_eq!(*got_a, budget);
    assert!(guarded.iter().any(|g| g.tenant_id == b.id && g.prepaid), "prepaid guards a tenant");
    assert_eq!(s.tenant_billing(&a.id).await.unwrap(), budget);
}
