//! Tenants' volumes, and the storage price book. Keys that may act create and delete volumes (the
//! guard refuses read-only and agent keys); each tenant sees only its own, another's is a 404.
//! Storage prices are read by anyone with a key and set by operators only.

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpucloud_api::{
    CreateVolumeRequest, Problem, SetStoragePriceRequest, StoragePrice, StoragePriceList, Volume, VolumeList, rfc3339,
};
use std::sync::Arc;

async fn info(app: &App, v: gpucloud_store::VolumeRow) -> Result<Volume, ApiError> {
    let per_hour = app.volume_price_per_hour(&v).await?;
    Ok(Volume {
        id: v.id.to_string(),
        state: if v.attached_to.is_some() {
            gpucloud_api::VolumeState::InUse
        } else {
            gpucloud_api::VolumeState::Available
        },
        attached_to: v.attached_to.map(|i| i.to_string()),
        placed: v.node_id.is_some(),
        name: v.name,
        project: v.project.to_string(),
        region: v.region.to_string(),
        size_gib: v.size_gib,
        price_per_hour: per_hour.to_string(),
        charged: v.charged.to_string(),
        charged_seconds: v.charged_seconds,
        created_at: rfc3339(v.created_at),
    })
}

/// Creates a volume. Its data is made on the node of the first instance that mounts it
/// (`volume` on `POST /v1/instances`); it is billed per GiB-hour from now until deleted.
#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = CreateVolumeRequest,
    responses((status = 201, body = Volume), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateVolumeRequest>,
) -> Result<(StatusCode, Json<Volume>), ApiError> {
    let v = app.create_volume(&p, &req.name, &req.size, &req.region, req.project.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(info(&app, v).await?)))
}

/// The caller's volumes, by name.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses((status = 200, body = VolumeList)), security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<Json<VolumeList>, ApiError> {
    let mut volumes = Vec::new();
    for v in app.list_volumes(&p).await? {
        volumes.push(info(&app, v).await?);
    }
    Ok(Json(VolumeList { volumes }))
}

/// One volume, by name or id.
#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    let v = app.get_volume(&p, &name).await?;
    Ok(Json(info(&app, v).await?))
}

/// Deletes a volume and its data (refused with 409 while a live instance holds it).
#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_volume(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Storage prices per GiB-hour, per region, with when each took effect.
#[utoipa::path(get, path = "/v1/prices/storage", tag = "billing",
    responses((status = 200, body = StoragePriceList)), security(("bearer" = [])))]
pub async fn storage_prices(State(app): State<Arc<App>>, Auth(_p): Auth) -> Result<Json<StoragePriceList>, ApiError> {
    let prices = app
        .storage_prices()
        .await?
        .into_iter()
        .map(|(region, from, price)| StoragePrice {
            region: region.to_string(),
            price_per_gib_hour: price.to_string(),
            effective_from: rfc3339(from),
        })
        .collect();
    Ok(Json(StoragePriceList { prices }))
}

/// Sets a region's storage price per GiB-hour from now on (operator).
#[utoipa::path(put, path = "/v1/prices/storage/{region}", tag = "billing", params(("region" = String, Path)),
    request_body = SetStoragePriceRequest,
    responses((status = 200, body = StoragePrice), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_storage_price(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(region): Path<String>,
    ApiJson(req): ApiJson<SetStoragePriceRequest>,
) -> Result<Json<StoragePrice>, ApiError> {
    let (region, from, price) = app.set_storage_price(&p, &region, &req.price_per_gib_hour).await?;
    Ok(Json(StoragePrice {
        region: region.to_string(),
        price_per_gib_hour: price.to_string(),
        effective_from: rfc3339(from),
    }))
}
