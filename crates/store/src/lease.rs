//! Leases among server replicas: which one runs the background reconcilers. A lease is a row
//! held until a time; the holder renews it well before, another replica takes it once expired.

use crate::Result;
use crate::sql::SqlStore;
use async_trait::async_trait;
use gpucloud_model::Timestamp;
use sqlx::Row;

#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes or renews the lease `name` for `holder` until `until`: it succeeds when the lease is
    /// free, expired at `now`, or already `holder`'s. Returns the lease's epoch (bumped on each
    /// change of holder), or None while another holder's lease runs.
    async fn try_lease(&self, name: &str, holder: &str, now: Timestamp, until: Timestamp) -> Result<Option<i64>>;
    /// Gives the lease up if `holder` has it (a clean shutdown hands over at once).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
    /// Takes up to `want` tokens from the bucket every replica shares for `key` (refilled at
    /// `per_second`, holding at most `burst`; full the first time): how many it gave, 0 when
    /// empty. Serialized on the bucket's row, so replicas together never exceed the rate.
    async fn take_rate_tokens(&self, key: &str, want: u32, per_second: f64, burst: f64, now: Timestamp) -> Result<u32>;
}

#[async_trait]
impl LeaseStore for SqlStore {
    async fn take_rate_tokens(&self, key: &str, want: u32, per_second: f64, burst: f64, now: Timestamp) -> Result<u32> {
        let burst_milli = (burst * 1000.0).max(1000.0) as i64;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO rate_buckets (key_id, milli, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key)
        .bind(burst_milli)
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        // The row's lock (PostgreSQL) or the write lock (SQLite) for the rest of the transaction.
        sqlx::query("UPDATE rate_buckets SET updated_at = updated_at WHERE key_id = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT milli, updated_at FROM rate_buckets WHERE key_id = $1")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        let (milli, at): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        // A clock that stepped back refills nothing.
        let refill = ((now.0 - at).max(0) as f64 * per_second) as i64;
        let have = (milli + refill).min(burst_milli);
        let granted = (have / 1000).clamp(0, i64::from(want));
        sqlx::query("UPDATE rate_buckets SET milli = $2, updated_at = $3 WHERE key_id = $1")
            .bind(key)
            .bind(have - granted * 1000)
            .bind(now.0.max(at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(granted as u32)
    }

    async fn try_lease(&self, name: &str, holder: &str, now: Timestamp, until: Timestamp) -> Result<Option<i64>> {
        // One statement: the row lock (PostgreSQL) or the write lock (SQLite) makes it atomic, so
        // two replicas racing for an expired lease cannot both win.
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, epoch, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
               epoch = CASE WHEN leases.holder = $2 THEN leases.epoch ELSE leases.epoch + 1 END, \
               holder = $2, expires_at = $3 \
             WHERE leases.holder = $2 OR leases.expires_at < $4 \
             RETURNING epoch",
        )
        .bind(name)
        .bind(holder)
        .bind(until.0)
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some(r.try_get(0)?)),
            None => Ok(None),
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
