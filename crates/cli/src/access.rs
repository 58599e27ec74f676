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
        /// admin (may change things), read-only (may only read) or agent (an operator's key for
        /// `gpucloud agent` in GPUCLOUD_AGENT_TOKEN or --token-file: the agent protocol only, for
        /// one node).
        #[arg(long, default_value = "admin", value_parser = crate::commands::one_of!(api::KeyScope))]
        scope: api::KeyScope,
        /// With --scope agent: the node (by name) the key speaks for. Without it, the first node
        /// the key registers (one not registered yet) becomes its node.
        #[arg(long)]
        node: Option<String>,
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
        KeyCmd::Create { name, scope, node } => {
            let body = api::CreateKeyRequest { name, scope: Some(scope), node };
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
                            k.created_at.clone(),
                            or_dash(k.revoked_at.as_ref()),
                        ]
                    })
                    .collect();
                table(&["ID", "PREFIX", "NAME", "SCOPE", "NODE", "CREATED", "REVOKED"], &rows)
            });
        }
        KeyCmd::Revoke { id } => {
            let k: api::ApiKeyInfo = c.post::<(), _>(&format!("/v1/keys/{id}/revoke"), None, None).map_err(err)?;
            show(ctx, &k, |k| format!("revoked {} ({})", k.id, k.prefix));
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
