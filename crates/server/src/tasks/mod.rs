//! Reconcilers: each re-reads the state and converges it, so running one twice, or after a
//! crash, is the same as running it once.

use crate::app::{AgentApi, App, FakeAgents};
use gpucloud_agent::gpu::GpuInfo;
use gpucloud_model::NodeId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub fn spawn_all(app: Arc<App>) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(schedule_loop(app.clone())),
        tokio::spawn(heartbeat_watch(app.clone())),
        tokio::spawn(metering(app.clone())),
        tokio::spawn(invoicing(app.clone())),
        tokio::spawn(market(app.clone())),
        tokio::spawn(monitor(app.clone())),
    ];
    if app.config.replica.is_some() {
        tasks.push(tokio::spawn(leadership(app.clone())));
    }
    if let FakeAgents::Every(interval) = app.config.fake_agents {
        tasks.push(tokio::spawn(fake_agent_supervisor(app, interval)));
    }
    tasks
}

/// Renews (or tries to take) the reconcilers' lease; the loops below act only while it holds.
async fn leadership(app: Arc<App>) {
    let every = crate::app::leader::renew_every(app.config.lease_ttl);
    loop {
        if let Err(e) = app.renew_leadership().await {
            tracing::error!(error = %e, "lease renewal failed");
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until this replica leads; true at once when it does.
async fn until_leader(app: &App) {
    while !app.is_leader() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn schedule_loop(app: Arc<App>) {
    loop {
        until_leader(&app).await;
        match app.schedule_pass().await {
            Ok(r) if r.placed > 0 || r.conflicts > 0 => {
                tracing::debug!(placed = r.placed, unplaced = r.unplaced, conflicts = r.conflicts, "schedule pass");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "schedule pass failed"),
        }
        match app.drain_pass().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(moved = n, "drain pass");
                app.wake_scheduler();
            }
            Err(e) => tracing::error!(error = %e, "drain pass failed"),
        }
        tokio::select! {
            _ = app.schedule_wakeup.notified() => {}
            _ = tokio::time::sleep(app.config.schedule_interval) => {}
        }
    }
}

async fn metering(app: Arc<App>) {
    loop {
        tokio::time::sleep(app.config.metering_interval).await;
        until_leader(&app).await;
        match app.meter().await {
            Ok(r) if r.conflicts > 0 => tracing::debug!(conflicts = r.conflicts, "metering raced another writer"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "metering pass failed"),
        }
        if let Err(e) = app.bill_reservations().await {
            tracing::error!(error = %e, "reservation billing failed");
        }
        if let Err(e) = app.enforce_budgets().await {
            tracing::error!(error = %e, "budget pass failed");
        }
    }
}

/// The spot market and managed jobs: deadlines and job relaunches twice a second (a notice's
/// deadline is kept to within half a second), prices every `price_interval`.
async fn market(app: Arc<App>) {
    let mut last_price = std::time::Instant::now() - app.config.market.price_interval;
    loop {
        until_leader(&app).await;
        if let Err(e) = app.enforce_notices().await {
            tracing::error!(error = %e, "preemption deadlines failed");
        }
        if let Err(e) = app.reconcile_jobs().await {
            tracing::error!(error = %e, "job pass failed");
        }
        if app.config.market.schedules_follow_clock
            && let Err(e) = app.apply_schedules(app.now()).await
        {
            tracing::error!(error = %e, "cluster schedules failed");
        }
        if app.config.market.schedules_follow_clock
            && let Err(e) = app.autoscale_from_telemetry().await
        {
            tracing::error!(error = %e, "cluster autoscaling failed");
        }
        if let Err(e) = app.reconcile_clusters().await {
            tracing::error!(error = %e, "cluster pass failed");
        }
        if app.config.market.schedules_follow_clock
            && let Err(e) = app.apply_pool_schedules(app.now()).await
        {
            tracing::error!(error = %e, "warm pool schedules failed");
        }
        if let Err(e) = app.reconcile_pools().await {
            tracing::error!(error = %e, "warm pool pass failed");
        }
        if last_price.elapsed() >= app.config.market.price_interval {
            let dt = last_price.elapsed().min(app.config.market.price_interval * 10);
            last_price = std::time::Instant::now();
            match app.market_pass(dt).await {
                Ok(r) if r.noticed > 0 => tracing::info!(noticed = r.noticed, "spot price passed bids"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "market pass failed"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Idle detection and health alerts every `monitor.interval`; retention once a minute.
async fn monitor(app: Arc<App>) {
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(app.config.monitor.interval).await;
        until_leader(&app).await;
        match app.monitor_pass().await {
            Ok(n) if n > 0 => tracing::info!(stopped = n, "idle instances stopped"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "monitor pass failed"),
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_prune = Some(std::time::Instant::now());
            match app.prune_telemetry().await {
                Ok((s, m)) if s + m > 0 => {
                    tracing::debug!(samples = s, metrics = m, "telemetry past retention deleted")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "telemetry retention failed"),
            }
        }
    }
}

async fn invoicing(app: Arc<App>) {
    loop {
        until_leader(&app).await;
        if let Err(e) = app.close_past_invoices().await {
            tracing::error!(error = %e, "closing invoices failed");
        }
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
}

async fn heartbeat_watch(app: Arc<App>) {
    let grace = app.config.heartbeat_grace;
    let grace_ms = grace.as_millis() as i64;
    let period = (grace / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(period).await;
        until_leader(&app).await;
        let now = app.now();
        // A new leader (a restart, or a replica taking over) gives agents a full grace period
        // first: the control plane being away is not the node being lost.
        let since = app.leader_since().unwrap_or(now).max(app.started_at);
        if now.millis_since(since) < grace_ms {
            continue;
        }
        match app.store().mark_silent_nodes_lost(now.plus_millis(-grace_ms), now).await {
            Ok(lost) => {
                for n in &lost {
                    tracing::warn!(node = %n.node, instances = n.instances.len(), "no heartbeat within {:?}: node lost", grace);
                }
                if let Err(e) = app.nodes_lost_alerts(&lost).await {
                    tracing::error!(error = %e, "node-lost alerts failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "heartbeat watch failed"),
        }
    }
}

/// Aborts the agents it holds when the supervisor itself is stopped.
struct Agents(HashMap<NodeId, JoinHandle<()>>);

impl Drop for Agents {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

/// Keeps one fake agent running per node.
async fn fake_agent_supervisor(app: Arc<App>, interval: Duration) {
    let mut agents = Agents(HashMap::new());
    let agents = &mut agents.0;
    loop {
        match app.store().list_nodes().await {
            Ok(nodes) => {
                for n in nodes.into_iter().filter(|n| n.driver == gpucloud_store::NodeDriver::Fake) {
                    let alive = agents.get(&n.id).is_some_and(|h| !h.is_finished());
                    if !alive {
                        let api: Arc<dyn AgentApi> = app.clone();
                        let gpus = n
                            .gpus
                            .iter()
                            .map(|g| GpuInfo {
                                index: g.index,
                                model: g.model,
                                uuid: g.uuid.clone(),
                                memory_mib: g.model.memory_mib(),
                            })
                            .collect();
                        agents.insert(n.id.clone(), tokio::spawn(crate::fake_agent::run(api, n.id, gpus, interval)));
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "fake agent supervisor cannot list nodes"),
        }
        tokio::select! {
            _ = app.nodes_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
