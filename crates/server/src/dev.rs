//! What `gpucloud dev` puts in a fresh data directory: an operator, a tenant, and a fake fleet.
//! Every step checks what exists first, so a dev server killed half-way through its first start
//! completes the job on the next one.

use crate::app::{App, AppError, NewKey};
use gpucloud_billing::EntryKind;
use gpucloud_model::{GpuModel, Money, Region, Role, Tier, Timestamp};

/// The built-in fake fleet: (name, region, model, GPUs).
pub const DEFAULT_FLEET: &[(&str, &str, GpuModel, u32)] = &[
    ("eu1-a100-01", "eu-1", GpuModel::A100_40GB, 8),
    ("eu1-a100-02", "eu-1", GpuModel::A100_40GB, 4),
    ("eu1-h100-01", "eu-1", GpuModel::H100_80GB, 8),
    ("eu1-t4-01", "eu-1", GpuModel::T4, 4),
    ("us1-a10-01", "us-1", GpuModel::A10, 8),
    ("us1-rtx-01", "us-1", GpuModel::Rtx6000Ada, 2),
    ("us1-a100-01", "us-1", GpuModel::A100_40GB, 2),
    ("us1-t4-01", "us-1", GpuModel::T4, 1),
];

/// On-demand price per GPU-hour in the dev price book, in micro-dollars: in line with what
/// public GPU clouds list in 2026. Spot is 40% of it, reserved 65% and warm (kept started in a
/// pool) 50%.
pub const DEFAULT_PRICES: &[(GpuModel, i64)] = &[
    (GpuModel::T4, 350_000),
    (GpuModel::L4, 800_000),
    (GpuModel::A10, 750_000),
    (GpuModel::A40, 1_100_000),
    (GpuModel::Rtx6000Ada, 1_200_000),
    (GpuModel::A100_40GB, 1_600_000),
    (GpuModel::A100_80GB, 2_200_000),
    (GpuModel::H100_80GB, 2_990_000),
    (GpuModel::H200_141GB, 3_790_000),
];

/// Each tier's price as a percentage of on-demand in the default book.
pub const TIER_PERCENT: &[(Tier, i64)] =
    &[(Tier::OnDemand, 100), (Tier::Spot, 40), (Tier::Reserved, 65), (Tier::Warm, 50)];

/// Prepaid credit the dev tenant starts with.
pub const DEV_CREDIT: Money = Money(100_000_000);

pub const OPERATOR_TENANT: &str = "operator";
pub const DEFAULT_TENANT: &str = "default";

/// Who drives the built-in fleet's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevFleet {
    /// The server adds the nodes and runs in-process fake agents for them (tests).
    InProcess,
    /// Node agents register the nodes themselves over HTTP (`gpucloud dev`).
    Agents,
}

pub struct DevKeys {
    pub operator: NewKey,
    pub tenant: NewKey,
}

/// Makes sure the dev tenants and fleet exist. Returns a fresh key for each of the two tenants
/// when asked (`mint_keys`: the caller has none on record) or when a tenant had to be created
/// (keys on record then belong to a database that is gone).
/// Volume storage per GiB-hour in the default book.
pub const DEV_STORAGE_PRICE: Money = Money(100);

pub async fn bootstrap(app: &App, mint_keys: bool, fleet: DevFleet) -> Result<Option<DevKeys>, AppError> {
    let tenants = app.store().list_tenants().await?;
    let find = |name: &str| tenants.iter().find(|t| t.name == name).cloned();
    let mint_keys = mint_keys || find(OPERATOR_TENANT).is_none() || find(DEFAULT_TENANT).is_none();
    let mut fresh = Vec::new();
    for (name, role) in [(OPERATOR_TENANT, Role::Operator), (DEFAULT_TENANT, Role::Tenant)] {
        let key = match find(name) {
            Some(t) if mint_keys => Some(app.mint_key_for(t).await?),
            Some(_) => None,
            None => Some(app.create_tenant(None, name, role).await?),
        };
        fresh.push(key);
    }
    if fleet == DevFleet::InProcess {
        let existing = app.store().list_nodes().await?;
        for (name, region, model, count) in DEFAULT_FLEET {
            if !existing.iter().any(|n| n.name == *name) {
                let region = Region::parse(region).expect("built-in region is valid");
                app.add_node(None, name, region, &[(*model, *count)]).await?;
            }
        }
    }
    if app.store().list_prices().await?.is_empty() {
        let mut regions = app.store().list_regions().await?;
        for (_, region, _, _) in DEFAULT_FLEET {
            let region = Region::parse(region).expect("built-in region is valid");
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
        for region in &regions {
            for (model, micros) in DEFAULT_PRICES {
                for (tier, percent) in TIER_PERCENT {
                    let price = Money(micros * percent / 100);
                    app.set_price(None, *model, region.clone(), *tier, price, Some(Timestamp(0))).await?;
                }
            }
        }
    }
    // Volume storage at 0.0001 per GiB-hour (about 0.073 per GiB-month, near a cloud's SSD
    // block storage), from the start of time, in every region the dev fleet has.
    if app.store().storage_prices(None).await?.is_empty() {
        for region in app.store().list_regions().await? {
            app.store().add_storage_price(&region, Timestamp(0), DEV_STORAGE_PRICE).await?;
        }
    }
    let tenants = app.store().list_tenants().await?;
    if let Some(t) = tenants.iter().find(|t| t.name == DEFAULT_TENANT) {
        // Keyed, so a restart (or a crash half-way through the first start) grants it once.
        app.add_credit(None, t.id.as_str(), EntryKind::Grant, DEV_CREDIT, "dev welcome credit", Some("dev-welcome"))
            .await?;
        // Prepaid, as a public GPU cloud runs: instances stop before the credit runs out. Set on
        // first start only, so an operator's later choice sticks.
        let mut settings = app.store().tenant_billing(&t.id).await?;
        if mint_keys && !settings.prepaid {
            settings.prepaid = true;
            app.store().set_tenant_billing(&settings).await?;
        }
    }
    let tenant = fresh.pop().flatten();
    let operator = fresh.pop().flatten();
    Ok(match (operator, tenant) {
        (Some(operator), Some(tenant)) if mint_keys => Some(DevKeys { operator, tenant }),
        _ => None,
    })
}

/// The nodes of the fleet now (dev waits for its agents to register).
pub async fn nodes(app: &App) -> Result<Vec<gpucloud_store::Node>, AppError> {
    Ok(app.store().list_nodes().await?)
}

/// On a database with no tenant yet (a first `serve`), the operator's tenant and its key.
pub async fn first_operator(app: &App) -> Result<Option<NewKey>, AppError> {
    if !app.store().list_tenants().await?.is_empty() {
        return Ok(None);
    }
    Ok(Some(app.create_tenant(None, OPERATOR_TENANT, Role::Operator).await?))
}
