//! Tenants' volumes: storage that outlives instances. A volume is made on the disk of the node
//! its first instance is placed on, and every later instance that mounts it is placed there (its
//! pending reason says so); one live instance holds it at a time. Its storage is billed per
//! GiB-hour from creation to deletion on the same ledger as GPU time, by the same reconciling
//! metering: each pass recomputes the charge from scratch and posts the difference.

use super::{App, AppError, Principal, random_bits};
use gpucloud_billing::{Entry, PricePoint, Rules, charge, price_at};
use gpucloud_model::workload::{check_volume_name, parse_volume_size};
use gpucloud_model::{Money, Region, TenantId, Timestamp, VolumeId, VolumeMount};
use gpucloud_store::{LedgerRecord, VolumeCharge, VolumeRow};
use std::collections::HashMap;

/// A tenant keeps at most this many volumes.
pub const MAX_VOLUMES: usize = 100;

/// Storage is billed for every second it exists: no minimum.
const STORAGE_RULES: Rules = Rules { granularity_s: 1, minimum_s: 0 };

/// The storage price points of a region as the billing crate reads prices: per GiB-hour, so a
/// volume's size in GiB plays the part of a GPU count.
/// Storage prices per region, read once per pass.
#[derive(Default)]
pub(crate) struct StoragePrices(HashMap<Region, Vec<PricePoint>>);

fn points(prices: &[(Region, Timestamp, Money)]) -> Vec<PricePoint> {
    prices.iter().map(|(_, from, p)| PricePoint { effective_from: *from, per_gpu_hour: *p }).collect()
}

/// What a volume's storage owes from its creation to `end`.
fn storage_due(v: &VolumeRow, end: Timestamp, prices: &[PricePoint]) -> gpucloud_billing::Charge {
    charge(v.created_at, end.millis_since(v.created_at), milli(v.size_gib), prices, STORAGE_RULES)
}

fn milli(size_gib: u32) -> u32 {
    size_gib.saturating_mul(1000)
}

impl App {
    pub async fn create_volume(
        &self,
        by: &Principal,
        name: &str,
        size: &str,
        region: &str,
        project: Option<&str>,
    ) -> Result<VolumeRow, AppError> {
        check_volume_name(name).map_err(|e| AppError::invalid("name", e))?;
        let project = self.project_for(by, project).await?;
        let size_gib = parse_volume_size(size).map_err(|e| AppError::invalid("size", e))?;
        let known = self.store.list_regions().await?;
        let region = Region::parse(region).ok().filter(|r| known.contains(r)).ok_or_else(|| {
            let known: Vec<String> = known.iter().map(|r| r.to_string()).collect();
            AppError::invalid("region", format!("unknown region '{region}'; regions: {}", known.join(", ")))
        })?;
        let tenant = &by.tenant.id;
        if self.store.list_volumes(tenant).await?.len() >= MAX_VOLUMES {
            return Err(AppError::Conflict(format!("a tenant keeps at most {MAX_VOLUMES} volumes; delete one first")));
        }
        let row = VolumeRow {
            id: VolumeId::from_random(random_bits()),
            tenant_id: tenant.clone(),
            name: name.to_string(),
            region,
            size_gib,
            node_id: None,
            attached_to: None,
            created_at: self.now(),
            deleted_at: None,
            charged: Money::ZERO,
            charged_seconds: 0,
            project,
        };
        self.store.insert_volume(&row).await.map_err(|e| match e {
            gpucloud_store::StoreError::Conflict(_) => {
                AppError::Conflict(format!("you already have a volume named {name}"))
            }
            other => other.into(),
        })?;
        tracing::info!(tenant = %by.tenant.name, volume = %row.id, name, size_gib, region = %row.region, "volume created");
        Ok(row)
    }

    /// The caller's volumes (a project key: its project's only).
    pub async fn list_volumes(&self, by: &Principal) -> Result<Vec<VolumeRow>, AppError> {
        let mut all = self.store.list_volumes(&by.tenant.id).await?;
        all.retain(|v| by.sees(&v.project));
        Ok(all)
    }

    /// Another tenant's volume, or another project's for a project key, is "not found": names
    /// and ids leak nothing.
    pub async fn get_volume(&self, by: &Principal, name_or_id: &str) -> Result<VolumeRow, AppError> {
        self.store
            .find_volume(&by.tenant.id, name_or_id)
            .await?
            .filter(|v| by.sees(&v.project))
            .ok_or_else(|| AppError::NotFound { kind: "volume", id: name_or_id.to_string() })
    }

    /// Deletes a volume no live instance holds; its data is removed from its node at the node's
    /// next heartbeat, and its storage is billed up to now.
    pub async fn delete_volume(&self, by: &Principal, name_or_id: &str) -> Result<(), AppError> {
        let v = self.get_volume(by, name_or_id).await?;
        if !self.store.delete_volume(&v.id, self.now()).await? {
            let holder = self.store.get_volume(&v.id).await?.and_then(|v| v.attached_to);
            return Err(AppError::Conflict(match holder {
                Some(i) => format!("volume {} is in use by instance {i}: terminate it first", v.name),
                None => format!("volume {} changed meanwhile; try again", v.name),
            }));
        }
        tracing::info!(tenant = %by.tenant.name, volume = %v.id, name = %v.name, "volume deleted");
        Ok(())
    }

    /// Resolves `NAME:/path` for a new instance of `tenant`'s `project` in `region` (any when
    /// `None`). The
    /// store takes the volume in the instance's own insert, so a volume is never held by an
    /// instance that does not exist.
    pub(crate) async fn resolve_volume(
        &self,
        tenant: &TenantId,
        project: &gpucloud_model::ProjectName,
        mount: &str,
        region: Option<&Region>,
    ) -> Result<(VolumeRow, VolumeMount), AppError> {
        let mount: VolumeMount = mount.parse().map_err(|e: String| AppError::invalid("volume", e))?;
        let v = self.store.find_volume(tenant, &mount.volume).await?.ok_or_else(|| {
            AppError::invalid(
                "volume",
                format!("you have no volume named {}; create it with volume create", mount.volume),
            )
        })?;
        // Work mounts its own project's volumes (a project key sees no other's).
        if v.project != *project {
            return Err(AppError::invalid(
                "volume",
                format!("volume {} belongs to project {}, not {project}", v.name, v.project),
            ));
        }
        if let Some(r) = region
            && *r != v.region
        {
            return Err(AppError::invalid(
                "volume",
                format!("volume {} is in region {}, not {r}: an instance runs where its volume is", v.name, v.region),
            ));
        }
        Ok((v, mount))
    }

    /// The answer to a create refused because a live instance holds its volume.
    pub(crate) async fn volume_in_use(&self, volume: &VolumeId) -> AppError {
        let v = self.store.get_volume(volume).await.ok().flatten();
        let name = v.as_ref().map_or_else(|| volume.to_string(), |v| v.name.clone());
        let holder =
            v.and_then(|v| v.attached_to).map_or_else(|| "another instance".to_string(), |i| format!("instance {i}"));
        AppError::Conflict(format!(
            "volume {name} is in use by {holder}: a volume is attached to one instance at a time (terminate it first)"
        ))
    }

    /// What a volume's storage costs per hour at today's price in its region.
    pub async fn volume_price_per_hour(&self, v: &VolumeRow) -> Result<Money, AppError> {
        let prices = points(&self.store.storage_prices(Some(&v.region)).await?);
        let p = price_at(&prices, self.now()).unwrap_or(Money::ZERO);
        Ok(Money(((i128::from(p.micros()) * i128::from(v.size_gib)) as i64).max(0)))
    }

    /// Adds a storage price for a region from now on (operator).
    pub async fn set_storage_price(
        &self,
        by: &Principal,
        region: &str,
        per_gib_hour: &str,
    ) -> Result<(Region, Timestamp, Money), AppError> {
        by.require_operator()?;
        let region = Region::parse(region).map_err(|e| AppError::invalid("region", e.to_string()))?;
        let price: Money = per_gib_hour
            .parse()
            .map_err(|e: gpucloud_model::MoneyError| AppError::invalid("price_per_gib_hour", e.to_string()))?;
        if price < Money::ZERO {
            return Err(AppError::invalid("price_per_gib_hour", "a price cannot be negative"));
        }
        let now = self.now();
        if !self.store.add_storage_price(&region, now, price).await? {
            return Err(AppError::Conflict(format!("a storage price for {region} already starts at this moment")));
        }
        tracing::info!(%region, %price, "storage price set");
        Ok((region, now, price))
    }

    pub async fn storage_prices(&self) -> Result<Vec<(Region, Timestamp, Money)>, AppError> {
        Ok(self.store.storage_prices(None).await?)
    }

    /// One metering pass over volumes: a deleted one is settled to its deletion; a live one is
    /// posted at each posting point (as instances are), its storage accruing in between.
    /// Returns how many charges moved.
    pub(crate) async fn meter_volumes(&self) -> Result<usize, AppError> {
        let now = self.now();
        let point = self.posting_point(now);
        let mut prices: HashMap<Region, Vec<PricePoint>> = HashMap::new();
        let mut charges = Vec::new();
        for v in self.store.unsettled_volumes().await? {
            if !prices.contains_key(&v.region) {
                prices.insert(v.region.clone(), points(&self.store.storage_prices(Some(&v.region)).await?));
            }
            let settled = v.deleted_at.is_some();
            let (end, at) = match v.deleted_at {
                Some(end) => (end.max(v.created_at), now),
                None if point > v.created_at => (point, point.plus_millis(-1)),
                None => continue,
            };
            let due = storage_due(&v, end, &prices[&v.region]);
            if due.amount < v.charged || due.seconds < v.charged_seconds {
                // A price point added in the past can lower it; the ledger never takes money back
                // by itself, so the volume keeps what it was charged and is settled when deleted.
                if settled {
                    charges.push(VolumeCharge {
                        amount: v.charged,
                        seconds: v.charged_seconds,
                        settled,
                        record: None,
                        volume: v,
                    });
                }
                continue;
            }
            if due.amount == v.charged && due.seconds == v.charged_seconds && !settled {
                continue;
            }
            let delta = Money(due.amount.micros() - v.charged.micros());
            let record = (delta != Money::ZERO).then(|| LedgerRecord {
                // Derived from the volume and its new total: a retried pass never posts it twice.
                id: format!("e-{}-{}-{}", v.id, due.seconds, due.amount.micros()),
                entry: Entry::usage(&v.tenant_id, delta),
                memo: format!("volume {} ({} GiB) in {}", v.name, v.size_gib, v.region),
                instance_id: None,
                interval_id: Some(v.id.to_string()),
                model: None,
                seconds: due.seconds - v.charged_seconds,
                idempotency_key: format!("storage:{}:{}:{}", v.id, due.seconds, due.amount.micros()),
                created_at: at,
            });
            charges.push(VolumeCharge { amount: due.amount, seconds: due.seconds, settled, record, volume: v });
        }
        if charges.is_empty() {
            return Ok(0);
        }
        let done = self.store.charge_volumes(&charges).await?;
        Ok(done.into_iter().filter(|ok| *ok).count())
    }

    /// A tenant's storage charged since the last posting, not yet in the ledger.
    pub(crate) async fn accrued_storage(&self, tenant: &TenantId, now: Timestamp) -> Result<Money, AppError> {
        let volumes: Vec<VolumeRow> = self.store.unsettled_volumes_of(tenant).await?;
        self.storage_accrual(&volumes, &mut StoragePrices::default(), now).await
    }

    /// What `volumes` have accrued beyond their postings by `now`.
    pub(crate) async fn storage_accrual(
        &self,
        volumes: &[VolumeRow],
        prices: &mut StoragePrices,
        now: Timestamp,
    ) -> Result<Money, AppError> {
        let mut total = 0;
        for v in volumes {
            if !prices.0.contains_key(&v.region) {
                prices.0.insert(v.region.clone(), points(&self.store.storage_prices(Some(&v.region)).await?));
            }
            let end = v.deleted_at.unwrap_or(now).max(v.created_at);
            let due = storage_due(v, end, &prices.0[&v.region]);
            total += (due.amount.micros() - v.charged.micros()).max(0);
        }
        Ok(Money(total))
    }
}
