//! HTTP: routes (one file per resource), extractors, the problem mapping and the idempotency
//! layer. Handlers parse, authenticate and call the app layer; they hold no SQL and no policy.

mod access;
mod agents;
mod billing;
mod clusters;
mod convert;
pub mod error;
mod extract;
mod guard;
mod idempotency;
mod instances;
mod market;
mod meta;
mod metrics;
mod monitoring;
mod nodes;
pub mod page;
mod pools;
mod projects;
mod proxy;
mod secrets;
mod ssh_keys;
mod tasks;
mod templates;
mod tenants;
mod ui;
mod volumes;

use crate::app::App;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use error::ApiError;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body accepted. The biggest legitimate body (an instance with a long command)
/// is well under this.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "gpucloud", description = "Rent whole GPUs by the second on a self-hosted GPU cloud."),
    modifiers(&BearerAuth),
    tags(
        (name = "instances", description = "GPU instances of the calling tenant"),
        (name = "nodes", description = "The fleet (operator)"),
        (name = "tenants", description = "Tenants and API keys (operator)"),
        (name = "projects", description = "An organization's projects and their GPU quotas"),
        (name = "agents", description = "The node agent's protocol"),
        (name = "billing", description = "Prices, quotes, credit, balance, usage and the ledger"),
        (name = "market", description = "Spot prices, preemption and managed jobs"),
        (name = "clusters", description = "Resizable groups of identical members"),
        (name = "pools", description = "Warm pools: instances kept started, handed out in milliseconds"),
        (name = "monitoring", description = "GPU telemetry history, the fleet over time, idle policy, alerts"),
        (name = "volumes", description = "Storage that outlives instances, billed per GiB-hour"),
        (name = "ssh", description = "Renters' SSH keys: a shell in their instances with a stock OpenSSH client"),
        (name = "secrets", description = "Tenants' secrets, stored encrypted, given to workloads at start"),
        (name = "meta", description = "Catalog, capacity, identity, health"),
        (name = "admin", description = "The control plane itself: its background reconcilers (operator)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("gpc_...").build()),
        );
    }
}

/// The API's routes and their OpenAPI document, built from the same list so they cannot drift.
pub fn api() -> (Router<Arc<App>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(instances::create, instances::list))
        .routes(routes!(instances::show))
        .routes(routes!(instances::stop))
        .routes(routes!(instances::start))
        .routes(routes!(instances::terminate))
        .routes(routes!(instances::events))
        .routes(routes!(instances::metrics))
        .routes(routes!(nodes::list, nodes::add))
        .routes(routes!(nodes::show))
        .routes(routes!(nodes::cordon))
        .routes(routes!(nodes::uncordon))
        .routes(routes!(nodes::drain))
        .routes(routes!(nodes::return_gpu))
        .routes(routes!(nodes::simulate_gpu_fault))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::create_key))
        .routes(routes!(access::create, access::list))
        .routes(routes!(access::revoke))
        .routes(routes!(access::audit))
        .routes(routes!(projects::create, projects::list))
        .routes(routes!(projects::quotas))
        .routes(routes!(projects::set_quota, projects::delete_quota))
        .routes(routes!(projects::set_budget))
        .routes(routes!(meta::whoami))
        .routes(routes!(meta::gpu_models))
        .routes(routes!(meta::capacity))
        .routes(routes!(meta::recommend))
        .routes(routes!(meta::health))
        .routes(routes!(meta::replica))
        .routes(routes!(meta::openapi))
        .routes(routes!(billing::list_prices, billing::set_price))
        .routes(routes!(billing::rules, billing::set_rules))
        .routes(routes!(billing::quote))
        .routes(routes!(billing::credit))
        .routes(routes!(billing::balance))
        .routes(routes!(billing::usage))
        .routes(routes!(billing::ledger))
        .routes(routes!(billing::invoices))
        .routes(routes!(billing::close_month))
        .routes(routes!(billing::invoice))
        .routes(routes!(billing::get_budget, billing::set_budget))
        .routes(routes!(billing::set_tenant_billing))
        .routes(routes!(billing::check_billing))
        .routes(routes!(tasks::list))
        .routes(routes!(tasks::run))
        .routes(routes!(tenants::show))
        .routes(routes!(billing::alerts))
        .routes(routes!(market::spot_prices))
        .routes(routes!(market::preempt))
        .routes(routes!(market::create_job, market::list_jobs))
        .routes(routes!(market::show_job))
        .routes(routes!(market::cancel_job))
        .routes(routes!(market::create_reservation, market::list_reservations))
        .routes(routes!(clusters::create, clusters::list))
        .routes(routes!(clusters::show, clusters::delete))
        .routes(routes!(clusters::resize))
        .routes(routes!(clusters::schedule))
        .routes(routes!(clusters::autoscale))
        .routes(routes!(pools::create, pools::list))
        .routes(routes!(pools::delete))
        .routes(routes!(pools::claim))
        .routes(routes!(pools::size))
        .routes(routes!(agents::register))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(agents::logs))
        .routes(routes!(agents::instance_logs))
        .routes(routes!(metrics::metrics))
        .routes(routes!(monitoring::instance))
        .routes(routes!(monitoring::fleet))
        .routes(routes!(monitoring::get_idle, monitoring::set_idle))
        .routes(routes!(monitoring::queue))
        .routes(routes!(secrets::list))
        .routes(routes!(secrets::put, secrets::delete))
        .routes(routes!(secrets::list_registry_auths))
        .routes(routes!(secrets::put_registry_auth, secrets::delete_registry_auth))
        .routes(routes!(ssh_keys::add, ssh_keys::list))
        .routes(routes!(ssh_keys::delete))
        .routes(routes!(proxy::login, proxy::logout))
        .routes(routes!(templates::create, templates::list))
        .routes(routes!(templates::show, templates::delete))
        .routes(routes!(volumes::create, volumes::list))
        .routes(routes!(volumes::show, volumes::delete))
        .routes(routes!(volumes::storage_prices))
        .routes(routes!(volumes::set_storage_price))
        .split_for_parts()
}

pub fn router(app: Arc<App>) -> Router {
    let (routes, doc) = api();
    let mut doc: serde_json::Value = serde_json::to_value(&doc).unwrap_or_default();
    unique_operation_ids(&mut doc);
    let _ = meta::OPENAPI.set(doc.to_string());
    routes
        .merge(ui::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                gpucloud_api::ProblemCode::RouteNotFound,
                "no such route; see /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                gpucloud_api::ProblemCode::MethodNotAllowed,
                "this route does not accept this method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), idempotency::layer))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard::layer))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app.clone())
        // The proxy to workloads' ports: its own authentication, no body limit, no idempotency
        // replay (the workload's requests are its business).
        .merge(proxy::routes(app))
}

/// utoipa names each operation after its handler, and handlers in different modules share names
/// (`list`, `show`...): a name used more than once gets its path's words in front (`nodes_list`,
/// `instances_metrics`), so every
/// operationId is unique, as OpenAPI requires and client generators rely on.
fn unique_operation_ids(doc: &mut serde_json::Value) {
    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    let mut uses: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for item in paths.values() {
        for m in METHODS {
            if let Some(id) = item.get(m).and_then(|o| o.get("operationId")).and_then(|v| v.as_str()) {
                *uses.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    for (path, item) in paths.iter_mut() {
        // The path's words (`/v1/instances/{id}/metrics` -> instances, metrics), then the name.
        let words: Vec<String> = path
            .split('/')
            .filter(|seg| !seg.is_empty() && *seg != "v1" && !seg.starts_with('{'))
            .map(|seg| seg.replace('-', "_"))
            .collect();
        for m in METHODS {
            let Some(op) = item.get_mut(m).and_then(|o| o.as_object_mut()) else { continue };
            let Some(id) = op.get("operationId").and_then(|v| v.as_str()).map(str::to_string) else { continue };
            if uses.get(&id).copied().unwrap_or(0) > 1 {
                let mut name = words.clone();
                if name.last() != Some(&id) {
                    name.push(id);
                }
                op.insert("operationId".into(), serde_json::Value::String(name.join("_")));
            }
        }
    }
}
