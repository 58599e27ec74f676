//! Monitoring from the command line: an instance's GPU history, the fleet over time, alerts,
//! the idle policy, and the pending queue (operator).

use crate::commands::{As, Ctx, show};
use crate::output::{or_dash, table};
use clap::Subcommand;
use gpucloud_api as api;

type Res = Result<(), String>;

#[derive(Subcommand)]
pub enum MonitorCmd {
    /// An instance's GPUs over time: utilization, temperature, power, memory.
    Telemetry {
        id: String,
        /// How far back, in seconds.
        #[arg(long, default_value_t = 3600)]
        since: i64,
        /// Bucket width in seconds [default: about 120 buckets].
        #[arg(long)]
        step: Option<i64>,
    },
    /// The fleet over time: GPUs reporting and allocated, utilization, peak temperature, revenue
    /// (operator).
    Fleet {
        #[arg(long, default_value_t = 3600)]
        since: i64,
        #[arg(long)]
        step: Option<i64>,
    },
    /// Alerts raised for you: budgets, idle instances, hot or failed GPUs, lost nodes.
    Alerts,
    /// When your instances count as idle, and whether idle ones are stopped. With no flag, shows it.
    Idle {
        /// Idle means every GPU under this utilization (%).
        #[arg(long)]
        below: Option<u32>,
        /// ... for this many minutes.
        #[arg(long)]
        minutes: Option<u32>,
        /// Stop idle instances (on), or only raise an alert (off).
        #[arg(long, value_parser = ["on", "off"])]
        auto_stop: Option<String>,
    },
    /// Every tenant's pending instances and why each waits (operator).
    Queue,
}

fn window(since: i64, step: Option<i64>) -> String {
    match step {
        Some(s) => format!("since={since}&step={s}"),
        None => format!("since={since}"),
    }
}

pub fn monitor(ctx: &Ctx, cmd: MonitorCmd) -> Res {
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        MonitorCmd::Telemetry { id, since, step } => {
            let c = ctx.client(As::Tenant)?;
            let t: api::InstanceTelemetry =
                c.get(&format!("/v1/instances/{id}/telemetry?{}", window(since, step))).map_err(err)?;
            show(ctx, &t, |t| {
                let rows: Vec<Vec<String>> = t
                    .points
                    .iter()
                    .map(|p| {
                        vec![
                            p.at.clone(),
                            format!("{}/{}", p.node, p.gpu),
                            format!("{:.0}", p.utilization_pct),
                            format!("{:.0}", p.max_temperature_c),
                            format!("{:.0}", p.power_w),
                            format!("{:.0}", p.memory_used_mib),
                        ]
                    })
                    .collect();
                format!(
                    "{}-second buckets\n{}",
                    t.step_s,
                    table(&["FROM", "NODE/GPU", "UTIL %", "MAX TEMP C", "POWER W", "MEMORY MIB"], &rows)
                )
            });
        }
        MonitorCmd::Fleet { since, step } => {
            let c = ctx.client(As::Operator)?;
            let f: api::FleetTelemetry = c.get(&format!("/v1/fleet/telemetry?{}", window(since, step))).map_err(err)?;
            show(ctx, &f, |f| {
                let revenue: std::collections::HashMap<&str, String> =
                    f.revenue.iter().map(|r| (r.at.as_str(), r.amount.to_string())).collect();
                let rows: Vec<Vec<String>> = f
                    .points
                    .iter()
                    .map(|p| {
                        vec![
                            p.at.clone(),
                            format!("{}/{}", p.allocated, p.gpus),
                            format!("{:.0}", p.utilization_pct),
                            format!("{:.0}", p.max_temperature_c),
                            format!("{:.0}", p.power_w),
                            revenue.get(p.at.as_str()).cloned().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                format!(
                    "{}-second buckets\n{}",
                    f.step_s,
                    table(&["FROM", "ALLOCATED", "UTIL %", "MAX TEMP C", "MEAN POWER W", "REVENUE"], &rows)
                )
            });
        }
        MonitorCmd::Alerts => {
            let c = ctx.client(As::Tenant)?;
            let a: api::AlertList = c.get_all("/v1/alerts", "alerts").map_err(err)?;
            show(ctx, &a, |a| {
                let rows: Vec<Vec<String>> =
                    a.alerts.iter().map(|a| vec![a.created_at.clone(), a.kind.clone(), a.message.clone()]).collect();
                table(&["TIME", "KIND", "MESSAGE"], &rows)
            });
        }
        MonitorCmd::Idle { below, minutes, auto_stop } => {
            let c = ctx.client(As::Tenant)?;
            let mut p: api::IdlePolicy = c.get("/v1/idle-policy").map_err(err)?;
            if below.is_some() || minutes.is_some() || auto_stop.is_some() {
                p.below_percent = below.unwrap_or(p.below_percent);
                p.minutes = minutes.unwrap_or(p.minutes);
                p.auto_stop = auto_stop.map_or(p.auto_stop, |a| a == "on");
                p = c.put("/v1/idle-policy", &p).map_err(err)?;
            }
            show(ctx, &p, |p| {
                format!(
                    "idle: every GPU under {}% utilization for {} min; then {}",
                    p.below_percent,
                    p.minutes,
                    if p.auto_stop { "stopped (auto-stop on)" } else { "an alert only (auto-stop off)" }
                )
            });
        }
        MonitorCmd::Queue => {
            let c = ctx.client(As::Operator)?;
            let q: api::Queue = c.get("/v1/queue").map_err(err)?;
            show(ctx, &q, |q| {
                let rows: Vec<Vec<String>> = q
                    .pending
                    .iter()
                    .map(|p| {
                        let i = &p.instance;
                        vec![
                            i.updated_at.clone(),
                            p.tenant.clone(),
                            i.id.clone(),
                            format!("{} x {}", i.count, i.gpu),
                            or_dash(i.region.as_ref()),
                            or_dash(i.pending_reason.as_ref()),
                        ]
                    })
                    .collect();
                table(&["PENDING SINCE", "TENANT", "INSTANCE", "GPUS", "REGION", "WHY"], &rows)
            });
        }
    }
    Ok(())
}
