//! `/metrics` in the Prometheus text format. GPU series use the DCGM exporter's names, so existing
//! dashboards and alerts work unchanged; labels add the node, instance and tenant. It needs an API
//! key (Prometheus: `authorization: {credentials: KEY}`): an operator's sees the whole fleet, a
//! tenant's only the GPUs its instances hold and its own counts.

use super::error::ApiError;
use super::extract::Auth;
use crate::app::App;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use gpucloud_model::InstanceState;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

/// Prometheus metrics: per-GPU telemetry (DCGM names) and control-plane gauges.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, body = gpucloud_api::Problem)),
    security(("bearer" = [])))]
pub async fn metrics(State(app): State<Arc<App>>, Auth(p): Auth) -> Result<impl IntoResponse, ApiError> {
    let operator = p.tenant.role == gpucloud_model::Role::Operator;
    let nodes = app.store().list_nodes().await.map_err(crate::app::AppError::from)?;
    let scope = (!operator).then_some(&p.tenant.id);
    let instances = app.store().list_instances(scope).await.map_err(crate::app::AppError::from)?;
    let tenant_of: HashMap<String, String> =
        instances.iter().map(|i| (i.id.to_string(), i.tenant_id.to_string())).collect();
    let readings = app.fleet_readings().await?;

    let series: [(&str, &str, &str); 7] = [
        ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
        ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "counter",
            "Total energy consumption since the agent started (in mJ).",
        ),
        ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
        ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
        ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors."),
    ];
    let mut out = String::new();
    for (i, (name, kind, help)) in series.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for n in &nodes {
            let Some((_, gpus)) = readings.get(&n.id) else { continue };
            for r in gpus {
                let Some(g) = n.gpus.iter().find(|g| g.index == r.index) else { continue };
                // The operator gets one series per GPU (labelled with a whole holder, if any), so
                // sums over the fleet count each GPU once. A tenant gets one per instance of its
                // own on the GPU: a whole one, or each of its slices.
                let holders: Vec<String> = if operator {
                    vec![g.instance.as_ref().map(|i| i.to_string()).unwrap_or_default()]
                } else {
                    g.instance
                        .iter()
                        .chain(g.slices.iter().map(|s| &s.instance))
                        .map(|i| i.to_string())
                        .filter(|i| tenant_of.contains_key(i))
                        .collect()
                };
                let value = match i {
                    0 => r.temperature_c,
                    1 => r.power_w,
                    2 => r.energy_mj as f64,
                    3 => r.memory_used_mib as f64,
                    4 => r.utilization_pct,
                    5 => f64::from(r.xid.unwrap_or(0)),
                    _ => r.ecc_uncorrectable as f64,
                };
                for instance in holders {
                    let tenant = tenant_of.get(&instance).cloned().unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{name}{{gpu=\"{}\",UUID=\"{}\",modelName=\"{}\",Hostname=\"{}\",node=\"{}\",region=\"{}\",instance=\"{instance}\",tenant=\"{tenant}\"}} {value}",
                        r.index, g.uuid, g.model, n.name, n.id, n.region
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "# HELP gpucloud_gpu_healthy 1 if the GPU takes work, 0 after a fatal XID or ECC error.");
    let _ = writeln!(out, "# TYPE gpucloud_gpu_healthy gauge");
    for n in nodes.iter().filter(|_| operator) {
        for g in &n.gpus {
            let _ = writeln!(
                out,
                "gpucloud_gpu_healthy{{gpu=\"{}\",UUID=\"{}\",node=\"{}\",Hostname=\"{}\"}} {}",
                g.index,
                g.uuid,
                n.id,
                n.name,
                u8::from(g.healthy)
            );
        }
    }
    let _ = writeln!(out, "# HELP gpucloud_instances Instances by state.\n# TYPE gpucloud_instances gauge");
    for state in InstanceState::ALL {
        let count = instances.iter().filter(|i| i.state == state).count();
        let _ = writeln!(out, "gpucloud_instances{{state=\"{state}\"}} {count}");
    }
    let _ = writeln!(out, "# HELP gpucloud_nodes Nodes by health.\n# TYPE gpucloud_nodes gauge");
    for health in ["healthy", "unhealthy", "lost"].into_iter().filter(|_| operator) {
        let count = nodes.iter().filter(|n| n.health.as_str() == health).count();
        let _ = writeln!(out, "gpucloud_nodes{{health=\"{health}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP gpucloud_pending_instances Instances waiting for GPUs, by GPU model.\n# TYPE gpucloud_pending_instances gauge"
    );
    let mut pending: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for i in instances.iter().filter(|i| i.state == InstanceState::Pending) {
        *pending.entry(i.model.to_string()).or_default() += 1;
    }
    for (gpu, n) in pending {
        let _ = writeln!(out, "gpucloud_pending_instances{{gpu=\"{gpu}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP gpucloud_spot_price_per_gpu_hour The spot price in force, per GPU model and region.\n# TYPE gpucloud_spot_price_per_gpu_hour gauge"
    );
    let mut pools: Vec<(gpucloud_model::GpuModel, gpucloud_model::Region)> =
        nodes.iter().flat_map(|n| n.gpus.iter().map(|g| (g.model, n.region.clone()))).collect();
    pools.sort();
    pools.dedup();
    for (model, region) in pools {
        if let Some(p) = app.spot_price(model, &region).await? {
            let _ = writeln!(
                out,
                "gpucloud_spot_price_per_gpu_hour{{gpu=\"{model}\",region=\"{region}\"}} {}",
                p.micros() as f64 / 1e6
            );
        }
    }
    // What running instances earn per hour at the prices in force: the fleet's for an operator,
    // the caller's own spend for a tenant.
    let mut tenants: Vec<gpucloud_model::TenantId> =
        instances.iter().filter(|i| i.state.holds_gpus()).map(|i| i.tenant_id.clone()).collect();
    tenants.sort();
    tenants.dedup();
    let mut rate = 0i128;
    for t in &tenants {
        rate += i128::from(app.spend_rate(t).await?.micros());
    }
    let name = if operator { "gpucloud_revenue_rate_per_hour" } else { "gpucloud_spend_rate_per_hour" };
    let _ = writeln!(
        out,
        "# HELP {name} What running instances are billed per hour now, at the prices in force.\n# TYPE {name} gauge\n{name} {}",
        rate as f64 / 1e6
    );
    // The business tier: the latest value of each metric a running workload pushed.
    let name = "gpucloud_workload_metric";
    let _ = writeln!(
        out,
        "# HELP {name} The latest value of each metric a running workload pushed (log_metrics), by name.\n# TYPE {name} gauge"
    );
    for i in instances.iter().filter(|i| i.state == InstanceState::Running) {
        let points = app.store().instance_metrics(&i.id, None, 500).await.map_err(crate::app::AppError::from)?;
        let mut latest: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
        for p in &points {
            latest.insert(p.name.as_str(), p.value);
        }
        for (metric, value) in latest {
            let _ = writeln!(
                out,
                "{name}{{instance=\"{}\",tenant=\"{}\",name=\"{}\"}} {value}",
                i.id,
                i.tenant_id,
                label(metric)
            );
        }
    }
    if operator {
        app.obs.write(&mut out);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out))
}

/// Times every API call for `gpucloud_http_request_duration_seconds`, labelled with the route's
/// template (never the raw path: ids would make a series per instance).
pub async fn track(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    app.obs.observe_request(&method, &route, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// A label value as the text format wants it: backslash, quote and newline escaped (a metric
/// name arrives from an agent; a hostile one must not forge series).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label("loss"), "loss");
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
