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
}

#[async_trait]
impl LeaseStore for SqlStore {
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
