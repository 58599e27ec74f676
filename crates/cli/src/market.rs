//! The market from the command line: spot prices, managed jobs, the operator's preemption switch,
//! and `metadata`, which a workload runs to read its notice and report its checkpoints.

use crate::commands::{As, Ctx, show};
use crate::output::{or_dash, table};
use clap::Subcommand;
use gpucloud_api as api;
use std::time::Duration;

type Res = Result<(), String>;

#[derive(Subcommand)]
pub enum SpotCmd {
    /// The spot price of a GPU model in a region: now, its bounds and its history.
    Prices {
        #[arg(long, alias = "model")]
        gpu: String,
        #[arg(long)]
        region: String,
        /// From this time (RFC 3339 or YYYY-MM-DD); default: the last 24 hours.
        #[arg(long)]
        since: Option<String>,
    },
}

pub fn spot(ctx: &Ctx, cmd: SpotCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    match cmd {
        SpotCmd::Prices { gpu, region, since } => {
            let mut path = format!("/v1/spot/prices?gpu={gpu}&region={region}");
            if let Some(s) = since {
                path.push_str(&format!("&since={s}"));
            }
            let h: api::SpotPriceHistory = c.get(&path).map_err(|e| e.to_string())?;
            show(ctx, &h, |h| {
                let rows: Vec<Vec<String>> =
                    h.points.iter().map(|p| vec![p.at.clone(), p.price_per_gpu_hour.to_string()]).collect();
                format!(
                    "{} in {}: spot {} {}/GPU-hour now (floor {}, on-demand {})\n\n{}",
                    h.gpu,
                    h.region,
                    h.current_per_gpu_hour.map_or("-".to_string(), |p| p.to_string()),
                    h.currency,
                    h.floor_per_gpu_hour,
                    h.on_demand_per_gpu_hour,
                    table(&["FROM", "PRICE/GPU-HOUR"], &rows)
                )
            });
        }
    }
    Ok(())
}

// Parsed once per process: the size of its largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum JobCmd {
    /// Run a managed job: relaunched after each preemption or node loss from its latest checkpoint.
    Run {
        /// Acceptable GPU models, cheapest first wins: A100-40GB or A100-40GB|H100-80GB.
        #[arg(long)]
        gpu: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Acceptable regions, comma-separated; any when omitted.
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        #[arg(long)]
        command: String,
        #[arg(long)]
        name: Option<String>,
        /// Run on spot (the default); --on-demand for never-preempted capacity.
        #[arg(long, conflicts_with = "on_demand")]
        spot: bool,
        #[arg(long)]
        on_demand: bool,
        /// The spot bid per GPU-hour; the on-demand price when omitted.
        #[arg(long, value_name = "PRICE")]
        max_price: Option<String>,
        /// Where the workload keeps checkpoints (GPUCLOUD_CHECKPOINT_DIR).
        #[arg(long)]
        checkpoint_dir: Option<String>,
        /// Your volume NAME mounted at PATH in every attempt (keep checkpoints there): each
        /// attempt runs on the volume's node.
        #[arg(long, value_name = "NAME:PATH")]
        volume: Option<String>,
        /// Relaunches after preemption or node loss before giving up [default: 10].
        #[arg(long)]
        max_restarts: Option<u32>,
        /// Run on-demand once a spot attempt has waited this many seconds for capacity.
        #[arg(long, value_name = "SECONDS")]
        on_demand_after: Option<u64>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The project its attempts belong to [default: your key's, or default]; an attempt
        /// that finds the project at its GPU limit waits for room.
        #[arg(long)]
        project: Option<String>,
        /// Every attempt's priority class [default: default].
        #[arg(long, value_parser = crate::commands::one_of!(api::Priority))]
        priority: Option<api::Priority>,
        /// Which of the --gpu models an attempt takes when several have room: cheapest (the
        /// default) or fastest.
        #[arg(long, value_parser = crate::commands::one_of!(api::ModelPreference))]
        prefer: Option<api::ModelPreference>,
    },
    /// Your jobs.
    List,
    /// A job and each of its attempts, with their cost.
    Show { id: String },
    /// Cancel a job (its running attempt is terminated).
    Cancel { id: String },
}

fn job_detail(j: &api::Job) -> String {
    let rows: Vec<Vec<String>> = j
        .history
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                a.instance.clone(),
                a.tier.to_string(),
                a.gpu.clone(),
                or_dash(a.region.as_ref()),
                a.state.to_string(),
                a.billed_seconds.to_string(),
                a.cost.to_string(),
                or_dash(a.resumed_from.as_ref()),
                or_dash(a.reason.as_ref()),
            ]
        })
        .collect();
    format!(
        "id:         {}\nname:       {}\nstate:      {}{}\nattempts:   {} ({} after preemption)\ncheckpoint: {}\ncost:       {}\n\n{}",
        j.id,
        j.name,
        j.state,
        j.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        j.attempts,
        j.restarts,
        or_dash(j.checkpoint.as_ref()),
        j.cost,
        table(&["#", "INSTANCE", "TIER", "GPU", "REGION", "STATE", "BILLED S", "COST", "RESUMED FROM", "WHY"], &rows)
    )
}

pub fn job(ctx: &Ctx, cmd: JobCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        JobCmd::Run {
            gpu,
            count,
            regions,
            command,
            name,
            spot: _,
            on_demand,
            max_price,
            checkpoint_dir,
            volume,
            max_restarts,
            on_demand_after,
            idempotency_key,
            project,
            priority,
            prefer,
        } => {
            let body = api::CreateJobRequest {
                name,
                gpus: gpu
                    .split(['|', ','])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(crate::commands::parse_gpu)
                    .collect::<Result<_, _>>()?,
                count,
                regions: regions
                    .into_iter()
                    .map(|r| crate::commands::parse_region("--region", &r))
                    .collect::<Result<_, _>>()?,
                command,
                spot: Some(!on_demand),
                max_price_per_gpu_hour: max_price
                    .map(|p| crate::commands::parse_money("--max-price", &p))
                    .transpose()?,
                checkpoint_dir,
                max_restarts,
                on_demand_after_seconds: on_demand_after,
                image: None,
                env: Default::default(),
                secrets: Vec::new(),
                volume,
                project,
                priority,
                prefer,
            };
            let j: api::Job = c.post("/v1/jobs", Some(&body), idempotency_key.as_deref()).map_err(err)?;
            show(ctx, &j, job_detail);
        }
        JobCmd::List => {
            let l: api::JobList = c.get("/v1/jobs").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.clone(),
                            j.name.clone(),
                            j.state.to_string(),
                            j.attempts.to_string(),
                            j.cost.to_string(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "STATE", "ATTEMPTS", "COST"], &rows)
            });
        }
        JobCmd::Show { id } => {
            let j: api::Job = c.get(&format!("/v1/jobs/{id}")).map_err(err)?;
            show(ctx, &j, job_detail);
        }
        JobCmd::Cancel { id } => {
            let j: api::Job = c.post::<(), _>(&format!("/v1/jobs/{id}/cancel"), None, None).map_err(err)?;
            show(ctx, &j, job_detail);
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Preempt an instance as the market would: notice now, SIGTERM at the deadline.
    SimulatePreemption {
        id: String,
        /// Seconds of notice (at least the operator's minimum) [default: the configured notice].
        #[arg(long, value_name = "SECONDS")]
        notice: Option<u64>,
    },
    /// Check the whole cloud's billing: every interval recomputed from its instance's state
    /// history and the price book. Exits 1 when anything is wrong.
    CheckBilling,
    /// Make a GPU fail as if its agent had reported a fatal XID, to test how the cloud copes:
    /// it leaves service, the node shows degraded, what runs on it gets a notice and stops at
    /// the deadline. `gpucloud node gpu return` puts it back.
    SimulateGpuFault {
        node: String,
        index: u32,
        /// The XID reported [default: 79, fallen off the bus].
        #[arg(long)]
        xid: Option<u32>,
    },
    /// The control plane's background reconcilers on the replica that answers: period, passes,
    /// the last one's duration and error.
    Tasks,
    /// Run one reconciler now rather than at its next period (see `admin tasks` for names).
    RunTask { name: String },
}

pub fn admin(ctx: &Ctx, cmd: AdminCmd) -> Res {
    let c = ctx.client(As::Operator)?;
    match cmd {
        AdminCmd::SimulatePreemption { id, notice } => {
            let body = api::PreemptRequest { notice_seconds: notice };
            let inst: api::Instance =
                c.post(&format!("/v1/admin/instances/{id}/preempt"), Some(&body), None).map_err(|e| e.to_string())?;
            show(ctx, &inst, |i| {
                let n = i.preemption.as_ref();
                format!(
                    "{}: preemption notice given ({} s){}",
                    i.id,
                    n.map_or(0.0, |n| n.notice_seconds),
                    n.and_then(|n| n.deadline.clone()).map(|d| format!(", deadline {d}")).unwrap_or_default()
                )
            });
        }
        AdminCmd::SimulateGpuFault { node, index, xid } => {
            let body = api::GpuFaultRequest { xid };
            let n: api::Node = c
                .post(&format!("/v1/admin/nodes/{node}/gpus/{index}/fault"), Some(&body), None)
                .map_err(|e| e.to_string())?;
            show(ctx, &n, |n| {
                format!(
                    "GPU {index} of node {} ({}) is out of service; the node is {}. Instances on it got a notice.",
                    n.id, n.name, n.health
                )
            });
        }
        AdminCmd::Tasks => {
            let l: api::TaskList = c.get("/v1/admin/tasks").map_err(|e| e.to_string())?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            format!("{} ms", t.period_ms),
                            t.runs.to_string(),
                            t.failures.to_string(),
                            t.last_duration_ms.map_or("-".into(), |d| format!("{d:.1} ms")),
                            or_dash(t.last_started.as_ref()),
                            t.last_error.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                format!(
                    "replica {} ({})\n{}",
                    l.replica,
                    if l.leader { "leads: runs them all" } else { "does not lead: runs none that write" },
                    table(&["TASK", "PERIOD", "RUNS", "FAILED", "LAST TOOK", "LAST STARTED", "LAST ERROR"], &rows)
                )
            });
        }
        AdminCmd::RunTask { name } => {
            let t: api::TaskStatus = c
                .post(&format!("/v1/admin/tasks/{}/run", gpucloud_client::encode_query(&name)), None::<&()>, None)
                .map_err(|e| e.to_string())?;
            show(ctx, &t, |t| format!("{}: runs now ({} passes so far)", t.name, t.runs));
        }
        AdminCmd::CheckBilling => {
            let r: api::BillingCheck = c.get("/v1/admin/billing/check").map_err(|e| e.to_string())?;
            show(ctx, &r, |r| {
                let mut out = format!(
                    "{} instances, {} intervals, {} ledger entries: {} s billed, {} charged",
                    r.instances, r.intervals, r.ledger_entries, r.billed_seconds, r.charged
                );
                match r.problems.len() {
                    0 => out.push_str("\nno second charged twice or lost, none above a bid, every entry balanced"),
                    n => {
                        out.push_str(&format!("\n{n} problems:"));
                        for p in &r.problems {
                            out.push_str(&format!("\n  {p}"));
                        }
                    }
                }
                out
            });
            if !r.problems.is_empty() {
                return Err(format!("billing check found {} problems", r.problems.len()));
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum MetadataCmd {
    /// This instance's identity, GPUs, notice and events.
    Show,
    /// Print the preemption notice and exit 0; exit 1 when there is none (after waiting).
    Notice {
        /// Wait up to this many seconds for a notice (a long-poll).
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
        wait: f64,
    },
    /// Report a checkpoint: a managed job's next attempt resumes from the latest one.
    Checkpoint { path: String },
}

/// Run inside a workload: talks to the agent's endpoint at $GPUCLOUD_METADATA_URL.
pub fn metadata(cmd: MetadataCmd) -> Res {
    let url = std::env::var("GPUCLOUD_METADATA_URL")
        .map_err(|_| "GPUCLOUD_METADATA_URL is not set: run this inside a gpucloud workload".to_string())?;
    let wait = match &cmd {
        MetadataCmd::Notice { wait } if wait.is_finite() && *wait >= 0.0 => wait.min(300.0),
        MetadataCmd::Notice { wait } => return Err(format!("--wait must be a number of seconds, got {wait}")),
        _ => 0.0,
    };
    let agent = gpucloud_client::local_agent(Duration::from_secs_f64(wait + 10.0));
    let fail = |e: ureq::Error| format!("metadata endpoint {url}: {e}");
    match cmd {
        MetadataCmd::Show => {
            let mut r = agent.get(&url).call().map_err(fail)?;
            println!("{}", r.body_mut().read_to_string().map_err(|e| e.to_string())?);
        }
        MetadataCmd::Notice { .. } => {
            let mut r = agent.get(format!("{url}/notice?wait={wait}")).call().map_err(fail)?;
            match r.status().as_u16() {
                200 => println!("{}", r.body_mut().read_to_string().map_err(|e| e.to_string())?),
                204 => return Err("no preemption notice".into()),
                s => return Err(format!("metadata endpoint answered {s}")),
            }
        }
        MetadataCmd::Checkpoint { path } => {
            let body = serde_json::to_string(&api::ReportCheckpointRequest { path }).map_err(|e| e.to_string())?;
            let r = agent
                .post(format!("{url}/checkpoint"))
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .map_err(fail)?;
            if r.status().as_u16() != 204 {
                return Err(format!("metadata endpoint answered {}", r.status()));
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ReservationCmd {
    /// Sell a reservation to a tenant (operator).
    Create {
        /// The owner: tenant id or name.
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        gpu: String,
        #[arg(long)]
        region: String,
        /// How many GPUs.
        #[arg(long)]
        gpus: u32,
        /// RFC 3339 [default: now].
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        to: String,
        /// Per GPU-hour [default: the price book's reserved price].
        #[arg(long)]
        price: Option<String>,
        /// Percent of what the idle reservation earns as spot credited to the owner [default: 50].
        #[arg(long)]
        lend_share: Option<u32>,
    },
    /// Your reservations (all of them, for an operator).
    List,
}

fn reservation_rows(list: &[api::Reservation]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.tenant.clone(),
                format!("{} x {}", r.gpus, r.gpu),
                r.region.clone(),
                format!("{} .. {}", r.starts_at, r.ends_at),
                r.price_per_gpu_hour.to_string(),
                format!("{:.2}", r.lent_gpu_hours),
                r.credited.to_string(),
            ]
        })
        .collect();
    table(&["ID", "TENANT", "GPUS", "REGION", "PERIOD", "PRICE/GPU-H", "LENT GPU-H", "CREDITED"], &rows)
}

pub fn reservation(ctx: &Ctx, cmd: ReservationCmd) -> Res {
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        ReservationCmd::Create { tenant, gpu, region, gpus, from, to, price, lend_share } => {
            let c = ctx.client(As::Operator)?;
            let body = api::CreateReservationRequest {
                tenant,
                gpu: crate::commands::parse_gpu(&gpu)?,
                region: crate::commands::parse_region("--region", &region)?,
                gpus,
                starts_at: from,
                ends_at: to,
                price_per_gpu_hour: price.map(|p| crate::commands::parse_money("--price", &p)).transpose()?,
                lend_share_percent: lend_share,
            };
            let r: api::Reservation = c.post("/v1/reservations", Some(&body), None).map_err(err)?;
            show(ctx, &r, |r| reservation_rows(std::slice::from_ref(r)));
        }
        ReservationCmd::List => {
            let c = ctx.client(As::Tenant)?;
            let l: api::ReservationList = c.get("/v1/reservations").map_err(err)?;
            show(ctx, &l, |l| reservation_rows(&l.reservations));
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Create a cluster: NODES members of --gpus-per-node GPUs each, resizable between --min and --max.
    Create {
        name: String,
        #[arg(long)]
        gpu: String,
        #[arg(long, default_value_t = 1)]
        gpus_per_node: u32,
        #[arg(long, default_value_t = 1)]
        nodes: u32,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
        #[arg(long)]
        region: Option<String>,
        /// An active-active replica set: one member in each of these regions (comma separated),
        /// each placed on its own; front them with `gpucloud gateway --cluster NAME`.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["region", "nodes", "min", "max"])]
        replicas_in: Vec<String>,
        /// Members on spot capacity.
        #[arg(long)]
        spot: bool,
        #[arg(long)]
        command: String,
        #[command(flatten)]
        workload: crate::commands::MemberWorkloadArgs,
        /// The project its members belong to [default: your key's, or default]; refused when
        /// the project has no room for them.
        #[arg(long)]
        project: Option<String>,
    },
    /// Resize: new members start together or not at all; leaving ones get the stop notice first.
    Resize { name: String, nodes: u32 },
    /// Size by time of day, e.g. "08:00-20:00 8 x RTX-6000-Ada, otherwise 4 x A40" (--clear to stop).
    Schedule {
        name: String,
        schedule: Option<String>,
        /// The times' UTC offset, e.g. +01:00 [default: UTC].
        #[arg(long, allow_hyphen_values = true)]
        utc_offset: Option<String>,
        #[arg(long, conflicts_with = "schedule")]
        clear: bool,
    },
    /// Grow by one member while GPU utilization stays above --up % for --for seconds, shrink
    /// below --down % (--off to stop).
    Autoscale {
        name: String,
        #[arg(long, required_unless_present = "off")]
        up: Option<u32>,
        #[arg(long, required_unless_present = "off")]
        down: Option<u32>,
        #[arg(long = "for", value_name = "SECONDS", default_value_t = 300)]
        for_seconds: u32,
        #[arg(long, conflicts_with_all = ["up", "down"])]
        off: bool,
    },
    /// A cluster and its members by rank.
    Show { name: String },
    /// Your clusters.
    List,
    /// Delete a cluster: every member is terminated.
    Delete { name: String },
}

fn cluster_detail(c: &api::Cluster) -> String {
    let rows: Vec<Vec<String>> = c
        .members
        .iter()
        .map(|m| {
            vec![
                m.rank.to_string(),
                m.instance.clone(),
                m.state.to_string(),
                or_dash(m.node.as_ref()),
                or_dash(m.endpoint.as_ref()),
                m.leaving_at
                    .as_ref()
                    .map(|t| format!("leaving at {t}"))
                    .or(m.pending_reason.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    format!(
        "name:     {} ({})\nstate:    {}{}\nsize:     {} of {}..{} nodes, {} x {} each ({}){}\nport:     {} (MASTER_PORT)\nschedule: {}\nscaling:  {}\ncommand:  {}\n{}\n{}",
        c.name,
        c.id,
        c.state,
        c.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        c.nodes,
        c.min_nodes,
        c.max_nodes,
        c.gpus_per_node,
        c.gpu,
        c.tier,
        match (&c.region, c.replicas_in.is_empty()) {
            (_, false) => format!(", one member in each of {}", c.replicas_in.join(", ")),
            (Some(r), true) => format!(" in {r}"),
            (None, true) => String::new(),
        },
        c.master_port,
        or_dash(c.schedule.as_ref()),
        or_dash(c.autoscale.as_ref()),
        c.command,
        workload_lines(c.image.as_ref(), &c.env, &c.ports),
        table(&["RANK", "INSTANCE", "STATE", "NODE", "ENDPOINT", ""], &rows)
    )
}

/// A cluster's or pool's image, environment and ports, a line each (secrets by name only).
fn workload_lines(
    image: Option<&String>,
    env: &std::collections::BTreeMap<String, String>,
    ports: &[String],
) -> String {
    let mut lines = vec![format!("image:    {}", image.map_or("the node's own", |i| i.as_str()))];
    lines.extend(env.iter().map(|(k, v)| format!("env:      {k}={v}")));
    if !ports.is_empty() {
        lines.push(format!("ports:    {}", ports.join(", ")));
    }
    lines.join("\n") + "\n"
}

pub fn cluster(ctx: &Ctx, cmd: ClusterCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        ClusterCmd::Create {
            name,
            gpu,
            gpus_per_node,
            nodes,
            min,
            max,
            region,
            replicas_in,
            spot,
            command,
            workload,
            project,
        } => {
            let replicas = (!replicas_in.is_empty()).then_some(&replicas_in);
            let nodes = replicas.map_or(nodes, |r| r.len() as u32);
            let w = workload.parts()?;
            let body = api::CreateClusterRequest {
                name,
                gpu: crate::commands::parse_gpu(&gpu)?,
                region: region.as_deref().map(|r| crate::commands::parse_region("--region", r)).transpose()?,
                gpus_per_node,
                nodes,
                min_nodes: min,
                max_nodes: max,
                command,
                tier: Some(if spot { api::Tier::Spot } else { api::Tier::OnDemand }),
                replicas_in: replicas
                    .map(|rs| {
                        rs.iter()
                            .map(|r| crate::commands::parse_region("--replicas-in", r))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?,
                image: w.image,
                env: w.env,
                secrets: w.secrets,
                ports: w.ports,
                project,
            };
            let v: api::Cluster = c.post("/v1/clusters", Some(&body), None).map_err(err)?;
            show(ctx, &v, cluster_detail);
        }
        ClusterCmd::Resize { name, nodes } => {
            let body = api::ResizeClusterRequest { nodes };
            let v: api::Cluster = c.post(&format!("/v1/clusters/{name}/resize"), Some(&body), None).map_err(err)?;
            show(ctx, &v, cluster_detail);
        }
        ClusterCmd::Schedule { name, schedule, utc_offset, clear } => {
            if schedule.is_none() && !clear {
                return Err(
                    "give a schedule, e.g. \"08:00-20:00 8 x RTX-6000-Ada, otherwise 4 x A40\", or --clear".into()
                );
            }
            let body = api::ClusterScheduleRequest { schedule, utc_offset };
            let v: api::Cluster = c.post(&format!("/v1/clusters/{name}/schedule"), Some(&body), None).map_err(err)?;
            show(ctx, &v, cluster_detail);
        }
        ClusterCmd::Autoscale { name, up, down, for_seconds, off } => {
            let body = if off {
                api::ClusterAutoscaleRequest::default()
            } else {
                api::ClusterAutoscaleRequest { up_percent: up, down_percent: down, for_seconds: Some(for_seconds) }
            };
            let v: api::Cluster = c.post(&format!("/v1/clusters/{name}/autoscale"), Some(&body), None).map_err(err)?;
            show(ctx, &v, cluster_detail);
        }
        ClusterCmd::Show { name } => {
            let v: api::Cluster = c.get(&format!("/v1/clusters/{name}")).map_err(err)?;
            show(ctx, &v, cluster_detail);
        }
        ClusterCmd::List => {
            let l: api::ClusterList = c.get("/v1/clusters").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .clusters
                    .iter()
                    .map(|c| {
                        vec![
                            c.name.clone(),
                            c.state.to_string(),
                            format!(
                                "{}/{} ({}..{})",
                                c.members.iter().filter(|m| m.state == api::InstanceState::Running).count(),
                                c.nodes,
                                c.min_nodes,
                                c.max_nodes
                            ),
                            format!("{} x {}", c.gpus_per_node, c.gpu),
                        ]
                    })
                    .collect();
                table(&["NAME", "STATE", "RUNNING/SIZE", "PER NODE"], &rows)
            });
        }
        ClusterCmd::Delete { name } => {
            c.delete(&format!("/v1/clusters/{name}")).map_err(err)?;
            if !ctx.json {
                println!("cluster {name} deleted");
            }
        }
    }
    Ok(())
}

/// `gpucloud recommend`: what to rent for a workload.
pub fn recommend(ctx: &Ctx, workload: &str, params: &str, hours: f64) -> Res {
    let c = ctx.client(As::Tenant)?;
    let q = format!("/v1/recommend?workload={workload}&params={params}&hours={hours}");
    let r: api::Recommendation = c.get(&q).map_err(|e| e.to_string())?;
    show(ctx, &r, |r| {
        let row = |c: &api::RecommendedChoice| {
            vec![
                format!("{} x {}", c.count, c.gpu),
                c.region.clone(),
                c.tier.to_string(),
                c.per_hour.to_string(),
                format!("{:.1}", c.hours),
                c.estimated_cost.to_string(),
                if c.available { "yes" } else { "no" }.to_string(),
            ]
        };
        let mut rows = vec![row(&r.best)];
        rows.extend(r.alternatives.iter().map(row));
        format!(
            "{}\n\n{}",
            r.reasoning.iter().map(|l| format!("- {l}")).collect::<Vec<_>>().join("\n"),
            table(&["GPUS", "REGION", "TIER", "PER HOUR", "HOURS", "ESTIMATE", "FREE NOW"], &rows)
        )
    });
    Ok(())
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Keep SIZE instances of a template started, billed at the warm rate, to hand out at once.
    Create {
        name: String,
        #[arg(long)]
        gpu: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        size: u32,
        /// What each instance runs from the start (load the model, then serve).
        #[arg(long)]
        command: String,
        #[command(flatten)]
        workload: crate::commands::MemberWorkloadArgs,
        /// The project its instances belong to [default: your key's, or default].
        #[arg(long)]
        project: Option<String>,
    },
    /// Your warm pools and how many are ready.
    List,
    /// Take an instance from a pool: a running one at once, or a cold start when none is ready.
    Claim {
        pool: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Set a pool's size, or its size by time of day ("09:25-16:00 4 x A100-40GB, otherwise 0 x A100-40GB").
    Size {
        name: String,
        #[arg(long)]
        size: Option<u32>,
        #[arg(long)]
        schedule: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        utc_offset: Option<String>,
    },
    /// Delete a pool (what it holds is terminated; what it handed out stays).
    Delete { name: String },
}

pub fn pool(ctx: &Ctx, cmd: PoolCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    let rows = |pools: &[api::WarmPool]| {
        let rows: Vec<Vec<String>> = pools
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    format!("{} x {}", p.count, p.gpu),
                    or_dash(p.region.as_ref()),
                    format!("{}/{}", p.ready, p.size),
                    p.command.clone(),
                ]
            })
            .collect();
        table(&["NAME", "GPUS", "REGION", "READY", "COMMAND"], &rows)
    };
    match cmd {
        PoolCmd::Create { name, gpu, count, region, size, command, workload, project } => {
            let w = workload.parts()?;
            let body = api::CreatePoolRequest {
                name,
                gpu: crate::commands::parse_gpu(&gpu)?,
                region: region.as_deref().map(|r| crate::commands::parse_region("--region", r)).transpose()?,
                count,
                command,
                size,
                image: w.image,
                env: w.env,
                secrets: w.secrets,
                ports: w.ports,
                project,
            };
            let p: api::WarmPool = c.post("/v1/pools", Some(&body), None).map_err(err)?;
            show(ctx, &p, |p| rows(std::slice::from_ref(p)));
        }
        PoolCmd::List => {
            let l: api::PoolList = c.get("/v1/pools").map_err(err)?;
            show(ctx, &l, |l| rows(&l.pools));
        }
        PoolCmd::Claim { pool, name } => {
            let started = std::time::Instant::now();
            let body = api::ClaimRequest { name };
            let got: api::Claimed = c.post(&format!("/v1/pools/{pool}/claim"), Some(&body), None).map_err(err)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            show(ctx, &got, |g| {
                format!(
                    "{} {} in {ms:.0} ms: {} ({})",
                    if g.warm { "warm" } else { "cold" },
                    g.instance.id,
                    g.instance.state,
                    if g.warm { "already running" } else { "no warm instance was ready: started from scratch" }
                )
            });
        }
        PoolCmd::Size { name, size, schedule, utc_offset } => {
            let body = api::PoolSizeRequest { size, schedule, utc_offset };
            let p: api::WarmPool = c.post(&format!("/v1/pools/{name}/size"), Some(&body), None).map_err(err)?;
            show(ctx, &p, |p| rows(std::slice::from_ref(p)));
        }
        PoolCmd::Delete { name } => {
            c.delete(&format!("/v1/pools/{name}")).map_err(err)?;
            if !ctx.json {
                println!("pool {name} deleted");
            }
        }
    }
    Ok(())
}
