//! A PostgreSQL server that drops the store's idle connections (a restart, a failover, an idle
//! timeout) costs no query: the pool pings a connection idle for `PING_IDLE` before using it
//! (and only then: decision 0021), and replaces one that does not answer.

use gpucloud_store::open;

#[tokio::test]
async fn dropped_connections_are_replaced() {
    let Ok(base) = std::env::var("GPUCLOUD_TEST_PG_URL") else {
        assert!(std::env::var("CI").is_err(), "GPUCLOUD_TEST_PG_URL is not set under CI");
        eprintln!("SKIPPED: set GPUCLOUD_TEST_PG_URL to run it");
        return;
    };
    // A database of its own, so that dropping its connections touches no other test.
    let db = format!("reconnect_{:016x}", rand::random::<u64>());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
    let (head, _) = base.rsplit_once('/').unwrap();
    let store = open(&format!("{head}/{db}")).await.unwrap();
    // Several connections open and idle in the pool.
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.list_tenants().await })
        })
        .collect();
    for r in reads {
        r.await.unwrap().unwrap();
    }
    let kill = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'");
    sqlx::query(&kill).execute(&admin).await.unwrap();
    // What the pool promises is about connections idle this long: wait for that, not longer.
    tokio::time::sleep(gpucloud_store::PING_IDLE + std::time::Duration::from_millis(50)).await;
    let mut failed = 0;
    for _ in 0..40 {
        match store.list_tenants().await {
            Ok(_) => {}
            Err(_) => failed += 1,
        }
    }
    eprintln!("{failed} of 40 queries failed after the connections were dropped");
    let recovered = store.list_tenants().await.is_ok();
    // The database goes before any assertion, so a failing run leaves nothing behind.
    drop(store);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&admin).await.unwrap();
    assert!(recovered, "the store recovers");
    assert_eq!(failed, 0, "dropped connections idle past PING_IDLE are handed out again");
}
