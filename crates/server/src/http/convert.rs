//! Store records to wire types.

use gpucloud_api as api;
use gpucloud_api::rfc3339;
use gpucloud_store as store;

/// An instance as its tenant sees it; `base` is the server's public URL (proxied ports).
pub fn instance(i: store::Instance, base: &str) -> api::Instance {
    let running = i.state == gpucloud_model::InstanceState::Running;
    // The node's address, from the endpoint the agent reported ("host:port", "[v6]:port").
    let node_host = i.endpoint.as_deref().and_then(|e| e.rsplit_once(':')).map(|(h, _)| h.to_string());
    let ports = i
        .sale
        .ports
        .iter()
        .map(|p| {
            let url = match p.protocol {
                gpucloud_model::PortProtocol::Http => running.then(|| format!("{base}/i/{}/{}/", i.id, p.port)),
                gpucloud_model::PortProtocol::Tcp => {
                    let host_port = i.published.iter().find(|(c, _)| *c == p.port).map(|(_, h)| *h);
                    match (&node_host, host_port) {
                        (Some(h), Some(hp)) if running => Some(format!("tcp://{h}:{hp}")),
                        _ => None,
                    }
                }
            };
            api::InstancePort { port: p.port, protocol: p.protocol.into(), url }
        })
        .collect();
    api::Instance {
        volume: i.sale.volume.as_ref().map(|(_, m)| m.to_string()),
        image: i.sale.image.clone(),
        env: i.sale.env.iter().filter(|(k, _)| !k.starts_with("GPUCLOUD_")).cloned().collect(),
        ports,
        progress: i.progress.clone().filter(|_| i.state == gpucloud_model::InstanceState::Provisioning),
        id: i.id.to_string(),
        name: i.name,
        project: i.sale.project.to_string(),
        priority: i.sale.priority.into(),
        state: i.state.into(),
        stop_target: i.stop_target.map(|t| t.to_string()),
        gpu: i.model.to_string(),
        count: i.count,
        gpu_milli: i.share.as_ref().map_or(1000, |s| s.milli),
        gpu_memory_mib: i.share.as_ref().map(|s| s.memory_mib),
        mig: i.share.and_then(|s| s.mig),
        region: i.ran_region.as_ref().or(i.region.as_ref()).map(|r| r.to_string()),
        requested_region: i.region.map(|r| r.to_string()),
        node: i.node_id.map(|n| n.to_string()),
        gpus: i.gpus,
        command: i.command,
        pending_reason: i.pending_reason,
        exit_code: i.exit_code,
        reason: i.status_reason,
        placed: i.placement_note,
        created_at: rfc3339(i.created_at),
        updated_at: rfc3339(i.updated_at),
        tier: i.sale.tier.into(),
        max_price_per_gpu_hour: i.sale.max_price,
        preemption: i.notice.map(|n| api::PreemptionNotice {
            given_at: rfc3339(n.given_at),
            notice_seconds: n.notice_ms as f64 / 1000.0,
            deadline: n.deadline.map(rfc3339),
            reason: n.reason,
        }),
        checkpoint: i.checkpoint.map(|c| c.path),
        endpoint: i.endpoint.filter(|_| i.state == gpucloud_model::InstanceState::Running),
        ssh: None,
        ssh_host_key: None,
        job: i.sale.job.as_ref().map(|(j, _)| j.to_string()),
        attempt: i.sale.job.map(|(_, a)| a),
    }
}

/// A node with no live readings (just registered, or changed by an operator call).
pub fn node(n: store::Node) -> api::Node {
    node_with(n, None)
}

/// A node with the latest GPU readings its agent sent.
pub fn node_with(n: store::Node, readings: Option<&[crate::app::GpuReading]>) -> api::Node {
    let reading = |index: u32| readings.and_then(|r| r.iter().find(|g| g.index == index)).cloned();
    api::Node {
        id: n.id.to_string(),
        name: n.name,
        region: n.region.to_string(),
        state: n.state.into(),
        health: match n.health {
            gpucloud_model::NodeHealth::Healthy if n.gpus.iter().any(|g| !g.healthy) => api::NodeHealth::Degraded,
            gpucloud_model::NodeHealth::Healthy => api::NodeHealth::Healthy,
            gpucloud_model::NodeHealth::Unhealthy => api::NodeHealth::Unhealthy,
            gpucloud_model::NodeHealth::Lost => api::NodeHealth::Lost,
        },
        driver: n.driver.as_str().to_string(),
        epoch: n.epoch,
        generation: n.generation,
        last_heartbeat: n.last_heartbeat.map(rfc3339),
        drain_deadline: n.drain_deadline.map(rfc3339),
        labels: n.labels.clone(),
        images: n.images.clone(),
        gpus_total: n.gpus.len() as u32,
        // A GPU holding slices counts as allocated: it takes no whole-GPU request.
        gpus_allocated: n.gpus.iter().filter(|g| g.instance.is_some() || !g.slices.is_empty()).count() as u32,
        gpus: n
            .gpus
            .into_iter()
            .map(|g| api::NodeGpu {
                reading: reading(g.index),
                index: g.index,
                model: g.model.to_string(),
                uuid: g.uuid,
                instance: g.instance.map(|i| i.to_string()),
                healthy: g.healthy,
                slices: g
                    .slices
                    .into_iter()
                    .map(|s| api::NodeGpuSlice {
                        instance: s.instance.to_string(),
                        milli: s.milli,
                        memory_mib: s.memory_mib,
                        mig: s.mig,
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub fn tenant(t: store::Tenant) -> api::Tenant {
    api::Tenant {
        id: t.id.to_string(),
        name: t.name,
        role: t.role.into(),
        created_at: rfc3339(t.created_at),
        billing: None,
    }
}

pub fn billing_mode(b: &store::TenantBilling) -> api::BillingMode {
    api::BillingMode {
        mode: if b.prepaid { "prepaid" } else { "postpaid" }.to_string(),
        credit_limit: b.credit_limit.filter(|_| !b.prepaid),
    }
}

pub fn new_key(k: crate::app::NewKey) -> api::ApiKeyCreated {
    api::ApiKeyCreated { id: k.id.to_string(), tenant: tenant(k.tenant), prefix: k.prefix, api_key: k.secret }
}

pub fn ledger_line(l: store::LedgerLine) -> api::LedgerLine {
    api::LedgerLine {
        id: l.id,
        kind: l.kind.as_str().to_string(),
        memo: l.memo,
        instance: l.instance_id.map(|i| i.to_string()),
        gpu: l.model.map(|m| m.to_string()),
        seconds: l.seconds,
        amount: l.amount,
        created_at: rfc3339(l.created_at),
    }
}
