//! `gpucloud volume`: storage that outlives instances.

use crate::commands::{As, Ctx, show};
use crate::output::table;
use clap::Subcommand;
use gpucloud_api as api;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume; it lives on the node of the first instance that mounts it.
    Create {
        name: String,
        /// 100GiB, 2TiB, or a number of GiB.
        #[arg(long)]
        size: String,
        #[arg(long)]
        region: String,
        /// The project it belongs to [default: your key's, or default]: only that project's
        /// instances and jobs mount it.
        #[arg(long)]
        project: Option<String>,
    },
    /// Your volumes.
    List,
    /// One volume, by name or id.
    Show { name: String },
    /// Delete a volume and its data (not while an instance holds it).
    Delete { name: String },
}

fn detail(v: &api::Volume) -> String {
    [
        format!("id:        {}", v.id),
        format!("name:      {}", v.name),
        format!("region:    {}", v.region),
        format!("size:      {} GiB", v.size_gib),
        format!(
            "state:     {}{}",
            v.state,
            v.attached_to.as_ref().map(|i| format!(" (by instance {i})")).unwrap_or_default()
        ),
        format!(
            "placed:    {}",
            if v.placed { "on the node of its first instance" } else { "not yet: with its first instance" }
        ),
        format!("price:     {}/hour", v.price_per_hour),
        format!("charged:   {} for {} s", v.charged, v.charged_seconds),
        format!("created:   {}", v.created_at),
    ]
    .join("\n")
}

pub fn volume(ctx: &Ctx, cmd: VolumeCmd) -> Result<(), String> {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    let path = |name: &str| format!("/v1/volumes/{}", gpucloud_client::encode_query(name));
    match cmd {
        VolumeCmd::Create { name, size, region, project } => {
            let body = api::CreateVolumeRequest { name, size, region, project };
            let v: api::Volume = c.post("/v1/volumes", Some(&body), None).map_err(err)?;
            show(ctx, &v, detail);
        }
        VolumeCmd::List => {
            let l: api::VolumeList = c.get("/v1/volumes").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .volumes
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.region.clone(),
                            format!("{} GiB", v.size_gib),
                            v.state.to_string(),
                            v.attached_to.clone().unwrap_or_else(|| "-".into()),
                            v.price_per_hour.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "REGION", "SIZE", "STATE", "INSTANCE", "PER HOUR"], &rows)
            });
        }
        VolumeCmd::Show { name } => {
            let v: api::Volume = c.get(&path(&name)).map_err(err)?;
            show(ctx, &v, detail);
        }
        VolumeCmd::Delete { name } => {
            c.delete(&path(&name)).map_err(err)?;
            if !ctx.json {
                println!("volume {name} deleted");
            }
        }
    }
    Ok(())
}
