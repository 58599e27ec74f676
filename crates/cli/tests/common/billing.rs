//! The billing checker shared by the crash and HA tests: every charge against the one computed
//! from the recorded state history.

use gpucloud_model::{Money, Timestamp};

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
    let intervals = store.intervals_of_tenant(&tenant.id).await.unwrap();
    for u in &intervals {
        assert!(u.settled, "{} not settled", u.id);
    }
    let now = Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64);
    let report = gpucloud_server::app::billing_check::check_billing(store.as_ref(), now).await.unwrap();
    assert!(report.problems.is_empty(), "the billing checker found: {:#?}", report.problems);
    assert_eq!(store.ledger_totals().await.unwrap(), vec![("USD".to_string(), Money::ZERO)], "books balance");
    eprintln!(
        "verified {} intervals, {} billed seconds, {} charged",
        report.intervals, report.billed_seconds, report.charged
    );
}
