//! Members' API keys and the audit log from the command line.

use crate::commands::{As, Ctx, show};
use crate::output::{or_dash, table};
use clap::Subcommand;
use gpucloud_api as api;

type Res = Result<(), String>;

#[derive(Subcommand)]
pub enum KeyCmd {
    /// A new key for your tenant (a member's), printed once.
    Create {
        /// Whose key, or what it is for.
        #[arg(long)]
        name: String,
        /// admin (may change everything), member (runs work: instances, jobs, clusters, volumes,
        /// secrets; not keys, projects, quotas or billing settings), billing (reads, and sets the
        /// budget), read-only (may only read) or agent (an operator's key for `gpucloud agent` in
        /// GPUCLOUD_AGENT_TOKEN or --token-file: the agent protocol only, for one node).
        #[arg(long, default_value = "admin", value_parser = crate::commands::one_of!(api::KeyScope))]
        scope: api::KeyScope,
        /// With --scope agent: the node (by name) the key speaks for. Without it, the first node
        /// the key registers (one not registered yet) becomes its node.
        #[arg(long)]
        node: Option<String>,
        /// Scope the key to one project: it creates there and sees only that project's
        /// instances, jobs and clusters (`gpucloud project list`).
        #[arg(long)]
        project: Option<String>,
    },
    /// Your tenant's keys (never their secrets).
    List,
    /// Revoke a key: refused by every server replica from its next request.
    Revoke { id: String },
}

pub fn key(ctx: &Ctx, cmd: KeyCmd) -> Res {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        KeyCmd::Create { name, scope, node, project } => {
            let body = api::CreateKeyRequest { name, scope: Some(scope), node, project };
            let k: api::ApiKeyCreated = c.post("/v1/keys", Some(&body), None).map_err(err)?;
            show(ctx, &k, |k| format!("id:      {}\napi key: {}   (shown once)", k.id, k.api_key));
        }
        KeyCmd::List => {
            let l: api::ApiKeyList = c.get("/v1/keys").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.id.clone(),
                            k.prefix.clone(),
                            or_dash((!k.name.is_empty()).then_some(&k.name)),
                            k.scope.to_string(),
                            or_dash(k.node.as_ref()),
                            or_dash(k.project.as_ref()),
                            k.created_at.clone(),
                            or_dash(k.revoked_at.as_ref()),
                        ]
                    })
                    .collect();
                table(&["ID", "PREFIX", "NAME", "SCOPE", "NODE", "PROJECT", "CREATED", "REVOKED"], &rows)
            });
        }
        KeyCmd::Revoke { id } => {
            let k: api::ApiKeyInfo = c.post::<(), _>(&format!("/v1/keys/{id}/revoke"), None, None).map_err(err)?;
            show(ctx, &k, |k| format!("revoked {} ({})", k.id, k.prefix));
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ProjectCmd {
    /// Make a project (needs an organization-wide admin key).
    Create {
        /// 1 to 40 lowercase letters, digits or '-', starting with a letter.
        name: String,
        /// The highest priority class its work may ask for [default: production].
        #[arg(long, value_parser = crate::commands::one_of!(api::Priority))]
        max_priority: Option<api::Priority>,
    },
    /// Set a project's monthly budget (creates in it are refused once its month's usage reaches
    /// it), or remove it with --none.
    Budget {
        name: String,
        /// Dollars a month, e.g. 500.00.
        #[arg(long, required_unless_present = "none", conflicts_with = "none")]
        monthly: Option<String>,
        #[arg(long)]
        none: bool,
        /// Operators: another tenant's project (its id or name).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Your organization's projects.
    List {
        /// Operators: another tenant's (its id or name).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// A project's GPUs per model: limit, guarantee, in use or queued, headroom, waiting.
    Show {
        #[arg(long, default_value = "default")]
        project: String,
        /// Operators: another tenant's project (its id or name).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Limit what a project may hold or queue of one GPU model at once (an organization-wide
    /// admin key, or an operator with --tenant).
    Set {
        #[arg(long)]
        project: String,
        /// The GPU model, e.g. A100-80GB (`gpucloud models`).
        #[arg(long)]
        gpu: String,
        /// At most this many GPUs held or queued at once.
        #[arg(long)]
        limit: u32,
        /// Of the limit, what the project deserves.
        #[arg(long)]
        guaranteed: Option<u32>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a project's limit on one GPU model.
    Remove {
        #[arg(long)]
        project: String,
        #[arg(long)]
        gpu: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn with_tenant(path: String, tenant: &Option<String>) -> String {
    match tenant {
        Some(t) => format!("{path}?tenant={t}"),
        None => path,
    }
}

fn as_of(tenant: &Option<String>) -> As {
    if tenant.is_some() { As::Operator } else { As::Tenant }
}

fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn quota_rows(l: &[api::QuotaInfo]) -> String {
    let rows: Vec<Vec<String>> = l
        .iter()
        .map(|q| {
            vec![
                q.project.clone(),
                q.gpu.clone(),
                q.limit.map_or("-".into(), num),
                q.guaranteed.map_or("-".into(), num),
                num(q.used),
                q.headroom.map_or("-".into(), num),
                if q.waiting == 0 { "0".into() } else { format!("{} ({} GPUs)", q.waiting, num(q.waiting_gpus)) },
            ]
        })
        .collect();
    table(&["PROJECT", "GPU", "LIMIT", "GUARANTEED", "USED", "HEADROOM", "WAITING"], &rows)
}

pub fn project(ctx: &Ctx, cmd: ProjectCmd) -> Res {
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        ProjectCmd::Create { name, max_priority } => {
            let c = ctx.client(As::Tenant)?;
            let body = api::CreateProjectRequest { name, max_priority };
            let p: api::ProjectInfo = c.post("/v1/projects", Some(&body), None).map_err(err)?;
            show(ctx, &p, |p| format!("project {} created", p.name));
        }
        ProjectCmd::Budget { name, monthly, none: _, tenant } => {
            let c = ctx.client(as_of(&tenant))?;
            let monthly_limit = monthly
                .map(|m| m.parse::<gpucloud_model::Money>().map_err(|e| format!("--monthly '{m}': {e}")))
                .transpose()?;
            let body = api::ProjectBudgetRequest { monthly_limit };
            let p: api::ProjectInfo =
                c.put(&with_tenant(format!("/v1/projects/{name}/budget"), &tenant), &body).map_err(err)?;
            show(ctx, &p, |p| match p.monthly_budget {
                Some(b) => format!("project {} may spend {b} a month ({} so far this month)", p.name, p.month_spend),
                None => format!("project {} has no budget ({} so far this month)", p.name, p.month_spend),
            });
        }
        ProjectCmd::List { tenant } => {
            let c = ctx.client(as_of(&tenant))?;
            let l: api::ProjectList = c.get(&with_tenant("/v1/projects".into(), &tenant)).map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .projects
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.max_priority.to_string(),
                            p.monthly_budget.map_or("-".into(), |b| b.to_string()),
                            p.month_spend.to_string(),
                            p.created_at.clone(),
                        ]
                    })
                    .collect();
                table(&["PROJECT", "MAX PRIORITY", "MONTHLY BUDGET", "SPENT THIS MONTH", "CREATED"], &rows)
            });
        }
    }
    Ok(())
}

pub fn quota(ctx: &Ctx, cmd: QuotaCmd) -> Res {
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        QuotaCmd::Show { project, tenant } => {
            let c = ctx.client(as_of(&tenant))?;
            let l: api::QuotaList =
                c.get(&with_tenant(format!("/v1/projects/{project}/quotas"), &tenant)).map_err(err)?;
            show(ctx, &l, |l| {
                if l.quotas.is_empty() {
                    format!("project {project} holds no GPUs and has no quota")
                } else {
                    quota_rows(&l.quotas)
                }
            });
        }
        QuotaCmd::Set { project, gpu, limit, guaranteed, tenant } => {
            let c = ctx.client(as_of(&tenant))?;
            let body = api::SetQuotaRequest { limit, guaranteed };
            let q: api::QuotaInfo =
                c.put(&with_tenant(format!("/v1/projects/{project}/quotas/{gpu}"), &tenant), &body).map_err(err)?;
            show(ctx, &q, |q| quota_rows(std::slice::from_ref(q)));
        }
        QuotaCmd::Remove { project, gpu, tenant } => {
            let c = ctx.client(as_of(&tenant))?;
            c.delete(&with_tenant(format!("/v1/projects/{project}/quotas/{gpu}"), &tenant)).map_err(err)?;
            if !ctx.json {
                println!("project {project} has no {gpu} limit now");
            }
        }
    }
    Ok(())
}

/// Operator: the audit log, newest first.
pub fn audit(ctx: &Ctx, tenant: Option<String>, since: i64, limit: u32) -> Res {
    let c = ctx.client(As::Operator)?;
    let mut path = format!("/v1/audit?since={since}&limit={limit}");
    if let Some(t) = tenant {
        path.push_str(&format!("&tenant={t}"));
    }
    let log: api::AuditLog = c.get(&path).map_err(|e| e.to_string())?;
    show(ctx, &log, |l| {
        let rows: Vec<Vec<String>> = l
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.at.clone(),
                    e.tenant.clone(),
                    e.key_prefix.clone(),
                    format!("{} {}", e.method, e.path),
                    if e.status == 0 { "unknown".into() } else { e.status.to_string() },
                    e.remote.clone(),
                ]
            })
            .collect();
        table(&["TIME", "TENANT", "KEY", "CALL", "STATUS", "FROM"], &rows)
    });
    Ok(())
}
