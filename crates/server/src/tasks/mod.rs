//! Reconcilers: each re-reads the state and converges it, so running one twice, or after a
//! crash, is the same as running it once.

use crate::app::{AgentApi, App, FakeAgents};
use gpucloud_model::NodeId;
use gpucloud_node::gpu::GpuInfo;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

type Pass = fn(Arc<App>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One background reconciler: a name operators see, a period, and a pass that converges one
/// thing and can be run again at any time.
struct Spec {
    /// Reconcilers of one group run one after another on one task, as they always have: the
    /// money passes, the market passes and the scheduler's never race each other.
    group: &'static str,
    name: &'static str,
    what: &'static str,
    period: Duration,
    /// Whether it runs only on the replica holding the lease (everything that writes does).
    leader_only: bool,
    /// Waits one period before the first pass (what needs the fleet to have reported first).
    delay_first: bool,
    pass: Pass,
}

/// A pass fails with the message operators see in `GET /v1/admin/tasks`.
fn err(e: crate::app::AppError) -> String {
    e.to_string()
}

fn specs(app: &App) -> Vec<Spec> {
    let c = &app.config;
    let market_every = Duration::from_millis(500);
    let grace_quarter = (c.heartbeat_grace / 4).max(Duration::from_millis(50));
    vec![
        Spec {
            group: "schedule",
            name: "schedule",
            what: "places pending instances (also woken by every change it cares about)",
            period: c.schedule_interval,
            leader_only: true,
            delay_first: false,
            pass: |app| {
                Box::pin(async move {
                    let r = app.schedule_pass().await.map_err(|e| e.to_string())?;
                    if r.placed > 0 || r.conflicts > 0 {
                        tracing::debug!(
                            placed = r.placed,
                            unplaced = r.unplaced,
                            conflicts = r.conflicts,
                            "schedule pass"
                        );
                    }
                    Ok(())
                })
            },
        },
        Spec {
            group: "schedule",
            name: "drain",
            what: "moves instances off draining nodes once there is room, stops them at a drain's deadline",
            period: c.schedule_interval,
            leader_only: true,
            delay_first: false,
            pass: |app| {
                Box::pin(async move {
                    let n = app.drain_pass().await.map_err(err)?;
                    if n > 0 {
                        tracing::info!(moved = n, "drain pass");
                        app.wake_scheduler();
                    }
                    Ok(())
                })
            },
        },
        Spec {
            group: "heartbeat",
            name: "heartbeat-watch",
            what: "declares nodes silent for the heartbeat grace lost",
            period: grace_quarter,
            leader_only: true,
            delay_first: true,
            pass: |app| Box::pin(heartbeat_watch_pass(app)),
        },
        Spec {
            group: "money",
            name: "metering",
            what: "accrues and posts usage, settles what ended",
            period: c.metering_interval,
            leader_only: true,
            delay_first: true,
            pass: |app| {
                Box::pin(async move {
                    let r = app.meter().await.map_err(err)?;
                    if r.conflicts > 0 {
                        tracing::debug!(conflicts = r.conflicts, "metering raced another writer");
                    }
                    Ok(())
                })
            },
        },
        Spec {
            group: "money",
            name: "reservations",
            what: "bills reservations and credits their owners' lent GPUs",
            period: c.metering_interval,
            leader_only: true,
            delay_first: true,
            pass: |app| Box::pin(async move { app.bill_reservations().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "money",
            name: "budgets",
            what: "alerts on budgets and stops prepaid tenants out of credit",
            period: c.metering_interval,
            leader_only: true,
            delay_first: true,
            pass: |app| Box::pin(async move { app.enforce_budgets().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "invoicing",
            name: "invoicing",
            what: "closes past months' invoices",
            period: Duration::from_secs(300),
            leader_only: true,
            delay_first: false,
            pass: |app| Box::pin(async move { app.close_past_invoices().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "market",
            name: "notices",
            what: "stops preempted instances at their notice's deadline (kept to within half a second)",
            period: market_every,
            leader_only: true,
            delay_first: false,
            pass: |app| Box::pin(async move { app.enforce_notices().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "market",
            name: "jobs",
            what: "launches managed jobs' next attempts",
            period: market_every,
            leader_only: true,
            delay_first: false,
            pass: |app| Box::pin(async move { app.reconcile_jobs().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "market",
            name: "cluster-schedules",
            what: "resizes clusters on their schedules and from their GPUs' utilization",
            period: market_every,
            leader_only: true,
            delay_first: false,
            pass: |app| {
                Box::pin(async move {
                    if app.config.market.schedules_follow_clock {
                        app.apply_schedules(app.now()).await.map_err(err)?;
                        app.autoscale_from_telemetry().await.map_err(err)?;
                    }
                    Ok(())
                })
            },
        },
        Spec {
            group: "market",
            name: "clusters",
            what: "keeps clusters' members at their size",
            period: market_every,
            leader_only: true,
            delay_first: false,
            pass: |app| Box::pin(async move { app.reconcile_clusters().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "market",
            name: "pool-schedules",
            what: "sizes warm pools on their schedules",
            period: market_every,
            leader_only: true,
            delay_first: false,
            pass: |app| {
                Box::pin(async move {
                    if app.config.market.schedules_follow_clock {
                        app.apply_pool_schedules(app.now()).await.map_err(err)?;
                    }
                    Ok(())
                })
            },
        },
        Spec {
            group: "market",
            name: "pools",
            what: "keeps warm pools filled",
            period: market_every,
            leader_only: true,
            delay_first: false,
            pass: |app| Box::pin(async move { app.reconcile_pools().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "market",
            name: "spot-prices",
            what: "moves spot prices with demand and gives notice where they pass bids",
            period: c.market.price_interval,
            leader_only: true,
            delay_first: false,
            pass: |app| {
                Box::pin(async move {
                    let every = app.config.market.price_interval;
                    // Lending accrues for the time since the previous pass.
                    let dt = match app.reconcilers.previous_started("spot-prices") {
                        Some(prev) => Duration::from_millis(app.now().millis_since(prev).max(0) as u64),
                        None => every,
                    };
                    let r = app.market_pass(dt.clamp(Duration::from_millis(1), every * 10)).await.map_err(err)?;
                    if r.noticed > 0 {
                        tracing::info!(noticed = r.noticed, "spot price passed bids");
                    }
                    Ok(())
                })
            },
        },
        Spec {
            group: "monitor",
            name: "monitor",
            what: "idle detection and health alerts",
            period: c.monitor.interval,
            leader_only: true,
            delay_first: true,
            pass: |app| {
                Box::pin(async move {
                    let n = app.monitor_pass().await.map_err(err)?;
                    if n > 0 {
                        tracing::info!(stopped = n, "idle instances stopped");
                    }
                    Ok(())
                })
            },
        },
        Spec {
            // Every replica keeps the samples of the beats it answered: each flushes its own.
            group: "telemetry",
            name: "telemetry-flush",
            what: "writes the GPU samples of the last second's heartbeats in one statement",
            period: Duration::from_secs(1),
            leader_only: false,
            delay_first: true,
            pass: |app| Box::pin(async move { app.flush_gpu_samples().await.map(|_| ()).map_err(err) }),
        },
        Spec {
            group: "monitor",
            name: "telemetry-retention",
            what: "deletes telemetry past its retention",
            period: Duration::from_secs(60),
            leader_only: true,
            delay_first: false,
            pass: |app| {
                Box::pin(async move {
                    let (samples, metrics) = app.prune_telemetry().await.map_err(err)?;
                    if samples + metrics > 0 {
                        tracing::debug!(samples, metrics, "telemetry past retention deleted");
                    }
                    Ok(())
                })
            },
        },
    ]
}

/// Every reconciler's name and period, in the order a group runs them.
pub fn reconcilers(app: &App) -> Vec<(&'static str, Duration)> {
    specs(app).into_iter().map(|s| (s.name, s.period)).collect()
}

/// Runs one pass of reconciler `name` now, on the caller's task (a simulation drives them on
/// virtual time this way); records it like the driver does.
pub async fn run_pass(app: Arc<App>, name: &str) -> Result<(), String> {
    let spec = specs(&app).into_iter().find(|s| s.name == name).ok_or_else(|| format!("no reconciler {name}"))?;
    app.reconcilers.started(spec.name, app.now());
    let outcome = (spec.pass)(app.clone()).await;
    app.reconcilers.finished(spec.name, Duration::ZERO, outcome.clone().err(), app.now());
    outcome
}

pub fn spawn_all(app: Arc<App>) -> Vec<JoinHandle<()>> {
    let mut groups: Vec<(&'static str, Vec<Spec>)> = Vec::new();
    for spec in specs(&app) {
        match groups.iter_mut().find(|(g, _)| *g == spec.group) {
            Some((_, specs)) => specs.push(spec),
            None => groups.push((spec.group, vec![spec])),
        }
    }
    let mut tasks: Vec<JoinHandle<()>> = groups.into_iter().map(|(_, specs)| drive(app.clone(), specs)).collect();
    if app.config.replica.is_some() {
        tasks.push(tokio::spawn(leadership(app.clone())));
    }
    if let FakeAgents::Every(interval) = app.config.fake_agents {
        tasks.push(tokio::spawn(fake_agent_supervisor(app, interval)));
    }
    tasks
}

/// The one driver of every reconciler: each of a group's passes when its period is up (or when
/// kicked: `POST /v1/admin/tasks/{name}/run`, and the scheduler by every change it cares about),
/// its outcome recorded for `GET /v1/admin/tasks`.
fn drive(app: Arc<App>, specs: Vec<Spec>) -> JoinHandle<()> {
    let wake = Arc::new(tokio::sync::Notify::new());
    for s in &specs {
        app.reconcilers.register(s.name, s.what, s.period, s.leader_only, wake.clone());
    }
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut due: Vec<tokio::time::Instant> =
            specs.iter().map(|s| if s.delay_first { start + s.period } else { start }).collect();
        let schedules = specs.iter().any(|s| s.name == "schedule");
        loop {
            if specs.iter().any(|s| s.leader_only) {
                until_leader(&app).await;
            }
            for (spec, due) in specs.iter().zip(due.iter_mut()) {
                let kicked = app.reconcilers.take_kick(spec.name);
                let now = tokio::time::Instant::now();
                if !kicked && now < *due {
                    continue;
                }
                *due = now + spec.period;
                let started = std::time::Instant::now();
                app.reconcilers.started(spec.name, app.now());
                let outcome = (spec.pass)(app.clone()).await;
                if let Err(e) = &outcome {
                    tracing::error!(task = spec.name, error = %e, "reconciler pass failed");
                }
                app.reconcilers.finished(spec.name, started.elapsed(), outcome.err(), app.now());
            }
            let next =
                due.iter().min().copied().unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = wake.notified() => {}
                // The scheduler runs on every change it cares about, not only on its period.
                _ = app.schedule_wakeup.notified(), if schedules => {
                    app.reconcilers.kick_quietly("schedule");
                }
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    })
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

async fn heartbeat_watch_pass(app: Arc<App>) -> Result<(), String> {
    let grace = app.config.heartbeat_grace;
    let grace_ms = grace.as_millis() as i64;
    let now = app.now();
    // A new leader (a restart, or a replica taking over) gives agents a full grace period
    // first: the control plane being away is not the node being lost.
    let since = app.leader_since().unwrap_or(now).max(app.started_at);
    if now.millis_since(since) < grace_ms {
        return Ok(());
    }
    let lost = app.store().mark_silent_nodes_lost(now.plus_millis(-grace_ms), now).await.map_err(|e| e.to_string())?;
    for n in &lost {
        tracing::warn!(node = %n.node, instances = n.instances.len(), "no heartbeat within {:?}: node lost", grace);
    }
    app.nodes_lost_alerts(&lost).await.map_err(err)
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
