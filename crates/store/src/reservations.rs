//! Persistence of reservations: capacity a tenant holds for a period, what it lends out as spot
//! while idle, and the hourly periods billed for it. Behind its own trait that every `Store` also
//! implements.

use crate::sql::{SqlStore, corrupt, parse, unique_violation};
use crate::{Reservation, Result};
use async_trait::async_trait;
use gpucloud_model::{GpuModel, Money, Region, ReservationId, TenantId, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

const RESERVATION_COLUMNS: &str = "id, tenant_id, gpu_model, region, gpus, starts_at, ends_at, price_micros, \
    lend_share_pct, lent_gpu_ms, lent_revenue_micros, billed_periods, credited_micros, created_at";

fn reservation_from_row(r: &AnyRow) -> Result<Reservation> {
    let t = "reservations";
    Ok(Reservation {
        id: parse(t, &r.try_get::<String, _>(0)?)?,
        tenant_id: parse(t, &r.try_get::<String, _>(1)?)?,
        model: parse(t, &r.try_get::<String, _>(2)?)?,
        region: Region::parse(&r.try_get::<String, _>(3)?).map_err(|e| corrupt(t, e))?,
        gpus: r.try_get::<i64, _>(4)?.max(0) as u32,
        starts_at: Timestamp(r.try_get(5)?),
        ends_at: Timestamp(r.try_get(6)?),
        price: Money(r.try_get(7)?),
        lend_share_pct: r.try_get::<i64, _>(8)?.clamp(0, 100) as u32,
        lent_gpu_ms: r.try_get(9)?,
        lent_revenue: Money(r.try_get(10)?),
        billed_periods: r.try_get(11)?,
        credited: Money(r.try_get(12)?),
        created_at: Timestamp(r.try_get(13)?),
    })
}

#[async_trait]
pub trait ReservationStore: Send + Sync {
    async fn insert_reservation(&self, r: &Reservation) -> Result<()>;
    /// `tenant: None`: all of them. Oldest start first.
    async fn list_reservations(&self, tenant: Option<&TenantId>) -> Result<Vec<Reservation>>;
    /// Reservations of a pool that overlap `[from, to)`.
    async fn reservations_overlapping(
        &self,
        model: GpuModel,
        region: &Region,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Reservation>>;
    /// Adds lent GPU-time and its spot revenue to a reservation's running totals.
    async fn accrue_lending(&self, id: &ReservationId, gpu_ms: i64, revenue: Money) -> Result<()>;
    /// Bills period `period` of a reservation: posts `records` and moves `billed_periods` to
    /// `period + 1` and the credited total to `credited`, in one transaction; false (nothing
    /// written) if the period was billed already.
    async fn bill_reservation_period(
        &self,
        id: &ReservationId,
        period: i64,
        credited: Money,
        records: &[crate::LedgerRecord],
    ) -> Result<bool>;
}

#[async_trait]
impl ReservationStore for SqlStore {
    async fn insert_reservation(&self, r: &Reservation) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(r.id.to_string())
        .bind(r.tenant_id.to_string())
        .bind(r.model.name())
        .bind(r.region.to_string())
        .bind(i64::from(r.gpus))
        .bind(r.starts_at.0)
        .bind(r.ends_at.0)
        .bind(r.price.0)
        .bind(i64::from(r.lend_share_pct))
        .bind(r.lent_gpu_ms)
        .bind(r.lent_revenue.0)
        .bind(r.billed_periods)
        .bind(r.credited.0)
        .bind(r.created_at.0)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_violation(e, &format!("reservation {}", r.id)))?;
        Ok(())
    }

    async fn list_reservations(&self, tenant: Option<&TenantId>) -> Result<Vec<Reservation>> {
        let rows = sqlx::query(&format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE ($1 = '' OR tenant_id = $1) ORDER BY starts_at, id"
        ))
        .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(reservation_from_row).collect()
    }

    async fn reservations_overlapping(
        &self,
        model: GpuModel,
        region: &Region,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Reservation>> {
        let rows = sqlx::query(&format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations \
             WHERE gpu_model = $1 AND region = $2 AND starts_at < $3 AND ends_at > $4 ORDER BY starts_at, id"
        ))
        .bind(model.name())
        .bind(region.to_string())
        .bind(to.0)
        .bind(from.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(reservation_from_row).collect()
    }

    async fn accrue_lending(&self, id: &ReservationId, gpu_ms: i64, revenue: Money) -> Result<()> {
        sqlx::query(
            "UPDATE reservations SET lent_gpu_ms = lent_gpu_ms + $1, lent_revenue_micros = lent_revenue_micros + $2 \
             WHERE id = $3",
        )
        .bind(gpu_ms)
        .bind(revenue.0)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn bill_reservation_period(
        &self,
        id: &ReservationId,
        period: i64,
        credited: Money,
        records: &[crate::LedgerRecord],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE reservations SET billed_periods = $1, credited_micros = $2 WHERE id = $3 AND billed_periods = $4",
        )
        .bind(period + 1)
        .bind(credited.0)
        .bind(id.to_string())
        .bind(period)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        for r in records {
            if !crate::billing_rows::insert_ledger(&mut tx, r).await? {
                // Its key was used: this period was posted by a writer that did not move the
                // counter. Never post twice; leave the counter for the next pass to re-read.
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}
