//! Monitoring: GPU telemetry history (sampled from heartbeats, pruned past its retention), the
//! per-instance and fleet views of it, idle detection with opt-in auto-stop, and health alerts
//! (over-temperature, failed GPUs, lost nodes) raised to the operator and the tenants affected.

use super::{App, AppError, GpuReading, Principal};
use gpucloud_model::{InstanceId, InstanceState, NodeId, Role, TenantId, Timestamp, UserAction};
use gpucloud_store::{FleetBucket, GpuBucket, GpuSample, IdlePolicy, LostNode, Node, TenantBilling};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// At most one stored sample per GPU per this interval (heartbeats may come more often).
    pub sample_interval: Duration,
    /// GPU samples older than this are deleted.
    pub retention: Duration,
    /// Business metrics (what workloads push) older than this are deleted.
    pub metrics_retention: Duration,
    /// A GPU at or above this temperature raises an alert.
    pub temperature_alert_c: f64,
    /// How often idle detection and temperature alerts run.
    pub interval: Duration,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            // Six points a minute per GPU: enough for a chart and for idle detection in minutes,
            // ~8,600 rows per GPU per day.
            sample_interval: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            metrics_retention: Duration::from_secs(30 * 24 * 3600),
            // Datacenter GPUs start slowing their clocks in the mid-80s C.
            temperature_alert_c: 85.0,
            interval: Duration::from_secs(10),
        }
    }
}

/// Longest window a telemetry read may cover, and the most buckets it may return: a chart has
/// no use for more, and a read stays bounded.
const MAX_WINDOW_MS: i64 = 31 * 24 * 3600 * 1000;
const MAX_BUCKETS: i64 = 2_000;
/// GPU samples kept in memory while the database refuses them: a minute of a 10,000-node fleet
/// sampled every 10 s (8 GPUs a node), about 100 MiB.
pub(crate) const MAX_BUFFERED_SAMPLES: usize = 480_000;

/// A read window checked: `since_s` seconds back from now in `step_s`-second buckets. A bucket
/// is never finer than the samples (`sample_ms` apart), and is a whole number of them, so each
/// row is one bucket of what was recorded and the step said is the rows' real spacing.
fn window(
    now: Timestamp,
    since_s: Option<i64>,
    step_s: Option<i64>,
    sample_ms: i64,
) -> Result<(Timestamp, i64), AppError> {
    let since_ms = since_s.unwrap_or(3600).saturating_mul(1000);
    if !(1_000..=MAX_WINDOW_MS).contains(&since_ms) {
        return Err(AppError::invalid("since", "since is 1 s to 31 days back, in seconds"));
    }
    let step_ms = match step_s {
        Some(s) => s.saturating_mul(1000),
        // About 120 points whatever the window, rounded to whole seconds.
        None => ((since_ms / 120) / 1000).max(1) * 1000,
    };
    if step_ms < 1_000 || since_ms / step_ms > MAX_BUCKETS {
        return Err(AppError::invalid("step", format!("step is at least 1 s and at most {MAX_BUCKETS} buckets")));
    }
    // A step wider than the longest window is one bucket anyway; capping it keeps the
    // rounding below from overflowing on a step near i64::MAX.
    let sample_ms = sample_ms.max(1_000);
    let step_ms = step_ms.min(MAX_WINDOW_MS);
    let step_ms = ((step_ms + sample_ms - 1) / sample_ms).saturating_mul(sample_ms);
    Ok((now.plus_millis(-since_ms), step_ms))
}

/// An instance's GPU history.
#[derive(Debug, Clone)]
pub struct InstanceTelemetry {
    pub step_ms: i64,
    pub buckets: Vec<GpuBucket>,
}

/// The fleet over time: GPU buckets and revenue booked per bucket.
#[derive(Debug, Clone)]
pub struct FleetHistory {
    pub step_ms: i64,
    pub buckets: Vec<FleetBucket>,
    pub revenue: Vec<(Timestamp, i64)>,
}

impl App {
    /// How far apart GPU samples are recorded, the finest a history can be read at.
    fn sample_ms(&self) -> i64 {
        self.config.monitor.sample_interval.as_millis() as i64
    }

    /// Whether `node`'s last stored sample is `sample_interval` old by `now`.
    pub(crate) fn sample_due(&self, node: &NodeId, now: Timestamp) -> bool {
        let interval = self.config.monitor.sample_interval.as_millis() as i64;
        let last = self.sampled_at.lock().unwrap_or_else(|e| e.into_inner());
        last.get(node).is_none_or(|t| now.millis_since(*t) >= interval)
    }

    /// Called with each heartbeat's readings: stores one sample per GPU (and per holder) when
    /// the node's last stored one is `sample_interval` old. `node` is read with its slices.
    pub(crate) async fn record_gpu_samples(
        &self,
        node: &Node,
        readings: &[GpuReading],
        now: Timestamp,
    ) -> Result<(), AppError> {
        let interval = self.config.monitor.sample_interval.as_millis() as i64;
        {
            let mut last = self.sampled_at.lock().unwrap_or_else(|e| e.into_inner());
            if last.get(&node.id).is_some_and(|t| now.millis_since(*t) < interval) {
                return Ok(());
            }
            last.insert(node.id.clone(), now);
        }
        let mut samples = Vec::new();
        for r in readings {
            let Some(g) = node.gpus.iter().find(|g| g.index == r.index) else { continue };
            let holders: Vec<Option<InstanceId>> = match (&g.instance, g.slices.is_empty()) {
                (Some(i), _) => vec![Some(i.clone())],
                (None, false) => g.slices.iter().map(|s| Some(s.instance.clone())).collect(),
                (None, true) => vec![None],
            };
            for instance in holders {
                samples.push(GpuSample {
                    node_id: node.id.clone(),
                    gpu_index: r.index,
                    at: now,
                    instance,
                    temperature_c: r.temperature_c,
                    power_w: r.power_w,
                    energy_mj: r.energy_mj.min(i64::MAX as u64) as i64,
                    memory_used_mib: r.memory_used_mib.min(i64::MAX as u64) as i64,
                    utilization_pct: r.utilization_pct,
                    xid: r.xid,
                    ecc_uncorrectable: r.ecc_uncorrectable.min(i64::MAX as u64) as i64,
                });
            }
        }
        // Kept until the next flush (every second, and before this replica reads samples): one
        // statement for the whole fleet's samples instead of one per node's beat.
        self.sample_buffer.lock().unwrap_or_else(|e| e.into_inner()).extend(samples);
        Ok(())
    }

    /// Writes the GPU samples kept since the last flush; returns how many. On a failed write
    /// they are kept for the next one.
    pub async fn flush_gpu_samples(&self) -> Result<usize, AppError> {
        let samples = std::mem::take(&mut *self.sample_buffer.lock().unwrap_or_else(|e| e.into_inner()));
        if samples.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.insert_gpu_samples(&samples).await {
            let mut buffer = self.sample_buffer.lock().unwrap_or_else(|e| e.into_inner());
            // A database down for long must not grow the buffer without bound: the oldest go.
            let keep = MAX_BUFFERED_SAMPLES.saturating_sub(buffer.len());
            let skip = samples.len().saturating_sub(keep);
            buffer.splice(0..0, samples.into_iter().skip(skip));
            return Err(e.into());
        }
        Ok(samples.len())
    }

    /// The framework tier: the GPUs an instance held (or its slice's GPU), over time.
    pub async fn instance_telemetry(
        &self,
        by: &Principal,
        id: &str,
        since_s: Option<i64>,
        step_s: Option<i64>,
    ) -> Result<InstanceTelemetry, AppError> {
        let inst = self.get_instance(by, id).await?;
        let (since, step_ms) = window(self.now(), since_s, step_s, self.sample_ms())?;
        self.flush_gpu_samples().await?;
        Ok(InstanceTelemetry { step_ms, buckets: self.store.instance_telemetry(&inst.id, since, step_ms).await? })
    }

    /// Operator: the fleet's utilization, temperature, power and revenue over time.
    pub async fn fleet_history(
        &self,
        by: &Principal,
        since_s: Option<i64>,
        step_s: Option<i64>,
    ) -> Result<FleetHistory, AppError> {
        by.require_operator()?;
        let now = self.now();
        let (since, step_ms) = window(now, since_s, step_s, self.sample_ms())?;
        self.flush_gpu_samples().await?;
        let mut revenue: std::collections::BTreeMap<i64, i64> =
            self.store.revenue_series(since, step_ms).await?.into_iter().map(|(t, v)| (t.0, v)).collect();
        // Running instances earn between postings too: each bucket gets what they accrued in it
        // beyond what the ledger holds.
        let mut prices = super::billing::PriceCache::default();
        for u in self.store.unsettled_intervals().await? {
            let usage = super::billing::usage_of(&u);
            let end = self.accrue_end(&u, now);
            let p = prices.get(self, &u).await?;
            let mut b = since.max(u.started_at).millis().div_euclid(step_ms) * step_ms;
            while b < end.millis() {
                let upto = usage.due(Timestamp(b + step_ms).min(end), p).amount.micros();
                let before = usage.due(Timestamp(b).max(u.started_at), p).amount.micros().max(u.charged.micros());
                if upto > before {
                    *revenue.entry(b).or_default() += upto - before;
                }
                b += step_ms;
            }
        }
        Ok(FleetHistory {
            step_ms,
            buckets: self.store.fleet_telemetry(since, step_ms).await?,
            revenue: revenue.into_iter().map(|(t, v)| (Timestamp(t), v)).collect(),
        })
    }

    /// Operator: all tenants' pending instances, oldest first.
    pub async fn pending_queue(&self, by: &Principal) -> Result<Vec<gpucloud_store::Instance>, AppError> {
        by.require_operator()?;
        Ok(self.store.instances_in_states(&[InstanceState::Pending]).await?)
    }

    pub async fn idle_policy(&self, by: &Principal) -> Result<IdlePolicy, AppError> {
        Ok(self.store.tenant_billing(&by.tenant.id).await?.idle)
    }

    pub async fn set_idle_policy(&self, by: &Principal, policy: IdlePolicy) -> Result<IdlePolicy, AppError> {
        if policy.below_percent > 100 {
            return Err(AppError::invalid("below_percent", "below_percent is a utilization from 0 to 100"));
        }
        if !(1..=7 * 24 * 60).contains(&policy.minutes) {
            return Err(AppError::invalid("minutes", "minutes is 1 to 10080 (a week)"));
        }
        let mut settings = self.store.tenant_billing(&by.tenant.id).await?;
        settings.idle = policy;
        self.store.set_tenant_billing(&settings).await?;
        Ok(policy)
    }

    /// Deletes what is past its retention.
    pub async fn prune_telemetry(&self) -> Result<(u64, u64), AppError> {
        let now = self.now();
        let c = &self.config.monitor;
        Ok(self
            .store
            .prune_telemetry(
                now.plus_millis(-(c.retention.as_millis() as i64)),
                now.plus_millis(-(c.metrics_retention.as_millis() as i64)),
            )
            .await?)
    }

    /// One pass of idle detection and temperature alerts; returns the instances stopped as idle.
    pub async fn monitor_pass(&self) -> Result<usize, AppError> {
        let stopped = self.idle_pass(self.now()).await?;
        self.temperature_alerts(self.now()).await?;
        Ok(stopped)
    }

    /// Flags (and with the tenant's opt-in stops) running instances whose GPUs stayed under the
    /// tenant's idle threshold for its whole window ending at `now`; returns how many stopped.
    pub async fn idle_pass(&self, now: Timestamp) -> Result<usize, AppError> {
        self.flush_gpu_samples().await?;
        let mut stopped = 0;
        let mut settings: HashMap<TenantId, TenantBilling> = HashMap::new();
        // The running ones, not every instance ever made: this runs every monitor interval.
        for inst in self.store.instances_in_states(&[InstanceState::Running]).await? {
            let Some(since) = inst.running_since else { continue };
            if !settings.contains_key(&inst.tenant_id) {
                settings.insert(inst.tenant_id.clone(), self.store.tenant_billing(&inst.tenant_id).await?);
            }
            let b = &settings[&inst.tenant_id];
            let window_ms = i64::from(b.idle.minutes) * 60_000;
            if now.millis_since(since) < window_ms {
                continue;
            }
            let from = now.plus_millis(-window_ms);
            let Some((peak, first)) = self.store.instance_peak_utilization(&inst.id, from).await? else { continue };
            // The samples must cover the window (allowing two sample intervals of slack), or a
            // gap in telemetry would look like idleness.
            let slack = 2 * self.config.monitor.sample_interval.as_millis() as i64;
            if peak >= f64::from(b.idle.below_percent) || first.millis_since(from) > slack {
                continue;
            }
            let what = format!(
                "instance {} ({}) idle: its GPUs stayed under {}% utilization for {} min",
                inst.id, inst.name, b.idle.below_percent, b.idle.minutes
            );
            let key = format!("idle:{}:{}", inst.id, inst.generation);
            if b.idle.auto_stop {
                let id = inst.id.clone();
                self.transition(inst, |i| i.state.on_user(i.stop_target, UserAction::Stop).map_err(AppError::from))
                    .await?;
                self.store.set_status_reason(&id, Some("stopped as idle (the tenant's idle policy)")).await?;
                self.alert(b, "idle_stopped", &format!("{key}:stop"), format!("{what}: stopped")).await?;
                stopped += 1;
            } else {
                self.alert(b, "idle", &key, what).await?;
            }
        }
        Ok(stopped)
    }

    async fn temperature_alerts(&self, now: Timestamp) -> Result<(), AppError> {
        let limit = self.config.monitor.temperature_alert_c;
        let hot: Vec<(NodeId, GpuReading)> = self
            .fleet_readings()
            .await?
            .into_iter()
            .flat_map(|(node, (_, gpus))| gpus.into_iter().map(move |g| (node.clone(), g)))
            .filter(|(_, g)| g.temperature_c >= limit)
            .collect();
        // Once an hour per GPU at most: a hot GPU stays hot for a while.
        let hour = now.0 / 3_600_000;
        for (node, g) in hot {
            let message = format!(
                "GPU {} on node {node} at {:.0} C (alert at {limit:.0} C): check cooling and airflow",
                g.index, g.temperature_c
            );
            self.health_alert(
                &node,
                Some(g.index),
                "gpu_temperature",
                &format!("temp:{node}:{}:{hour}", g.index),
                message,
            )
            .await?;
        }
        Ok(())
    }

    /// A GPU reported a fatal XID or uncorrectable ECC errors and was taken out of service.
    pub(crate) async fn gpu_failed_alert(&self, node: &NodeId, g: &GpuReading) -> Result<(), AppError> {
        let cause = match (g.xid, g.ecc_uncorrectable) {
            (Some(x), _) => format!("XID {x}"),
            (None, n) => format!("{n} uncorrectable ECC errors"),
        };
        let message = format!("GPU {} on node {node} failed ({cause}): it takes no new work", g.index);
        self.health_alert(node, Some(g.index), "gpu_failed", &format!("gpu-failed:{node}:{}", g.index), message).await
    }

    /// Nodes the heartbeat watch gave up on: the operator hears of each, each tenant of its
    /// instances lost with it.
    pub async fn nodes_lost_alerts(&self, lost: &[LostNode]) -> Result<(), AppError> {
        for n in lost {
            let message = format!(
                "node {} lost: no heartbeat since {}; {} instance(s) lost with it",
                n.node,
                gpucloud_api::rfc3339(n.last_heartbeat),
                n.instances.len()
            );
            let key = format!("node-lost:{}:{}", n.node, n.last_heartbeat.0);
            for b in self.operator_settings().await? {
                self.alert(&b, "node_lost", &format!("{key}:{}", b.tenant_id), message.clone()).await?;
            }
            for id in &n.instances {
                let Some(inst) = self.store.get_instance(None, id).await? else { continue };
                let b = self.store.tenant_billing(&inst.tenant_id).await?;
                let m = format!(
                    "instance {} ({}) lost with node {}: its billing ended at the last heartbeat",
                    inst.id, inst.name, n.node
                );
                self.alert(&b, "instance_lost", &format!("lost:{}:{}", inst.id, inst.generation), m).await?;
            }
        }
        Ok(())
    }

    /// Raises a GPU alert to the operators and to the tenant of whatever runs on that GPU.
    async fn health_alert(
        &self,
        node: &NodeId,
        gpu: Option<u32>,
        kind: &str,
        key: &str,
        message: String,
    ) -> Result<(), AppError> {
        // Dedupe keys are global: each recipient gets its own.
        let operators = self.operator_settings().await?;
        for b in &operators {
            self.alert(b, kind, &format!("{key}:{}", b.tenant_id), message.clone()).await?;
        }
        let mut tenants: Vec<TenantId> = self
            .store
            .instances_on_node(node)
            .await?
            .into_iter()
            .filter(|i| i.state.holds_gpus() && gpu.is_none_or(|g| i.gpus.contains(&g)))
            .map(|i| i.tenant_id)
            .collect();
        tenants.sort();
        tenants.dedup();
        for t in tenants.into_iter().filter(|t| !operators.iter().any(|o| o.tenant_id == *t)) {
            let b = self.store.tenant_billing(&t).await?;
            self.alert(&b, kind, &format!("{key}:{t}"), message.clone()).await?;
        }
        Ok(())
    }

    async fn operator_settings(&self) -> Result<Vec<TenantBilling>, AppError> {
        let mut out = Vec::new();
        for t in self.store.list_tenants().await?.into_iter().filter(|t| t.role == Role::Operator) {
            out.push(self.store.tenant_billing(&t.id).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_bounded_and_default_to_about_120_points() {
        let now = Timestamp(10_000_000_000);
        assert_eq!(window(now, None, None, 1_000).unwrap(), (Timestamp(10_000_000_000 - 3_600_000), 30_000));
        assert_eq!(window(now, Some(60), Some(1), 1_000).unwrap().1, 1_000);
        assert!(window(now, Some(0), None, 1_000).is_err());
        assert!(window(now, Some(40 * 24 * 3600), None, 1_000).is_err());
        assert!(window(now, Some(3600), Some(0), 1_000).is_err());
        assert!(window(now, Some(3600), Some(1), 1_000).is_err(), "3,600 buckets is too many");
        assert!(window(now, Some(i64::MAX), None, 1_000).is_err(), "no overflow");
        let (_, step) = window(now, Some(3600), Some(i64::MAX), 10_000).expect("one bucket, no overflow");
        assert_eq!(step, MAX_WINDOW_MS);
    }

    #[test]
    fn a_bucket_is_a_whole_number_of_samples() {
        let now = Timestamp(10_000_000_000);
        // Samples 10 s apart: a 2-minute window's default 1 s step, or a 1 s step asked for,
        // would print rows 10 s apart under a "1-second" header.
        assert_eq!(window(now, Some(120), None, 10_000).unwrap().1, 10_000);
        assert_eq!(window(now, Some(120), Some(1), 10_000).unwrap().1, 10_000);
        assert_eq!(window(now, Some(3600), Some(15), 10_000).unwrap().1, 20_000);
        assert_eq!(window(now, None, None, 10_000).unwrap().1, 30_000);
    }
}
