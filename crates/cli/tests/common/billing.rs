//! The billing checker shared by the crash and HA tests: every charge against the one computed
//! from the recorded state history.

use gpucloud_billing::{EntryKind, charge};
use gpucloud_model::{InstanceState, Money, TenantId, Timestamp};
use std::collections::BTreeMap;

/// A new, empty schema on the PostgreSQL at `base`, and the URL that uses it: tests run side by
/// side on one database.
pub async fn fresh_schema(base: &str, prefix: &str) -> String {
    let schema = format!("{prefix}_{:08x}", rand::random::<u32>());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Waits (up to 20 s) until metering has settled every closed interval: under load a pass can
/// take longer than a fixed sleep.
pub async fn wait_settled(url: &str) {
    let store = gpucloud_store::open(url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let open = store.unsettled_intervals().await.unwrap();
        if open.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "metering never settled: {open:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Zero seconds lost, zero charged twice, books balanced, for the tenant named "default" (or
/// `tenant` when given).
pub async fn verify(url: &str) {
    verify_tenant(url, "default").await
}

pub async fn verify_tenant(url: &str, name: &str) {
    let store = gpucloud_store::open(url).await.unwrap();
    let tenant = store.list_tenants().await.unwrap().into_iter().find(|t| t.name == name).unwrap();
    let tid: TenantId = tenant.id.clone();
    let intervals = store.intervals_of_tenant(&tid).await.unwrap();
    let mut by_instance: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for u in &intervals {
        by_instance.entry(u.instance_id.to_string()).or_default().push(u.clone());
    }
    let mut expected_total = 0i64;
    let mut billed_seconds = 0i64;
    for inst in store.list_instances(Some(&tid)).await.unwrap() {
        // Billable spans from the recorded history.
        let mut spans = Vec::new();
        let mut open: Option<Timestamp> = None;
        for e in store.instance_events(&inst.id).await.unwrap() {
            let was = e.from.is_some_and(InstanceState::is_billable);
            if e.to.is_billable() && !was {
                open = Some(e.at);
            } else if was && !e.to.is_billable() {
                spans.push((open.take().expect("span opened"), e.at));
            }
        }
        assert!(open.is_none(), "{} still billable at the end", inst.id);
        let mine = by_instance.remove(inst.id.as_str()).unwrap_or_default();
        let got: Vec<(Timestamp, Timestamp)> =
            mine.iter().map(|u| (u.started_at, u.ended_at.expect("closed"))).collect();
        assert_eq!(got, spans, "{}: recorded intervals must match the state history exactly", inst.id);
        for u in &mine {
            let prices = store.prices_for(u.model, &u.region, u.tier).await.unwrap();
            let due =
                charge(u.started_at, u.ended_at.unwrap().millis_since(u.started_at), u.milli_gpus, &prices, u.rules);
            assert!(u.settled, "{} not settled", u.id);
            assert_eq!((u.charged, u.charged_seconds), (due.amount, due.seconds), "interval {}", u.id);
            expected_total += due.amount.micros();
            billed_seconds += due.seconds;
        }
    }
    assert!(by_instance.is_empty(), "intervals without instances: {by_instance:?}");
    let lines = store.ledger_lines(&tid, Timestamp(0), Timestamp(i64::MAX)).await.unwrap();
    let charged: i64 = -lines.iter().filter(|l| l.kind == EntryKind::Usage).map(|l| l.amount.micros()).sum::<i64>();
    let charged_seconds: i64 = lines.iter().filter(|l| l.kind == EntryKind::Usage).map(|l| l.seconds).sum();
    assert_eq!(charged, expected_total, "ledger usage equals the charges computed from history");
    assert_eq!(charged_seconds, billed_seconds, "no second lost or billed twice");
    assert_eq!(store.ledger_totals().await.unwrap(), vec![("USD".to_string(), Money::ZERO)], "books balance");
    eprintln!("verified {} intervals, {billed_seconds} billed seconds, {} charged", intervals.len(), Money(charged));
}
