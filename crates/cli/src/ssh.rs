//! `gpucloud ssh-key` (a tenant's public keys) and `gpucloud instance ssh` (OpenSSH's `ssh`
//! into a running instance, with its node's host key checked against what the server says).

use crate::commands::{As, Ctx, show};
use crate::output::table;
use clap::Subcommand;
use gpucloud_api as api;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum SshKeyCmd {
    /// Add a public key (a .pub file, or - for stdin): it opens sessions in your running instances.
    Add {
        /// The public key file, e.g. ~/.ssh/id_ed25519.pub.
        path: PathBuf,
        /// What to call it [default: the key's comment].
        #[arg(long)]
        name: Option<String>,
    },
    /// Your SSH keys.
    List,
    /// Remove a key (by name or SHA256 fingerprint).
    Remove { name: String },
}

fn detail(k: &api::SshKey) -> String {
    [
        format!("name:        {}", k.name),
        format!("fingerprint: {}", k.fingerprint),
        format!("type:        {}", k.algorithm),
        format!("comment:     {}", k.comment),
        format!("added:       {}", k.created_at),
    ]
    .join("\n")
}

pub fn ssh_key(ctx: &Ctx, cmd: SshKeyCmd) -> Result<(), String> {
    let c = ctx.client(As::Tenant)?;
    let err = |e: gpucloud_client::ClientError| e.to_string();
    match cmd {
        SshKeyCmd::Add { path, name } => {
            let text = if path == Path::new("-") {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| format!("stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?
            };
            let body = api::AddSshKeyRequest { public_key: text.trim().to_string(), name };
            let k: api::SshKey = c.post("/v1/ssh-keys", Some(&body), None).map_err(err)?;
            show(ctx, &k, detail);
        }
        SshKeyCmd::List => {
            let l: api::SshKeyList = c.get("/v1/ssh-keys").map_err(err)?;
            show(ctx, &l, |l| {
                let rows: Vec<Vec<String>> = l
                    .ssh_keys
                    .iter()
                    .map(|k| vec![k.name.clone(), k.algorithm.clone(), k.fingerprint.clone(), k.created_at.clone()])
                    .collect();
                table(&["NAME", "TYPE", "FINGERPRINT", "ADDED"], &rows)
            });
        }
        SshKeyCmd::Remove { name } => {
            c.delete(&format!("/v1/ssh-keys/{}", gpucloud_client::encode_query(&name))).map_err(err)?;
            if !ctx.json {
                println!("ssh key {name} removed");
            }
        }
    }
    Ok(())
}

/// `ssh -p PORT USER@HOST` as the server gives it: (port, destination).
fn parse_command(line: &str) -> Option<(String, String)> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["ssh", "-p", port, dest] if port.parse::<u16>().is_ok() && dest.contains('@') => {
            Some((port.to_string(), dest.to_string()))
        }
        _ => None,
    }
}

/// Puts `line` (`[host]:port key`) in `file`, replacing an older key for the same host and
/// port: the server, reached with the caller's API key, is what says which key is the node's.
fn remember_host_key(file: &Path, line: &str) -> Result<(), String> {
    let host = line.split_whitespace().next().unwrap_or_default();
    let old = std::fs::read_to_string(file).unwrap_or_default();
    let mut lines: Vec<&str> = old.lines().filter(|l| l.split_whitespace().next() != Some(host)).collect();
    lines.push(line);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(file, lines.join("\n") + "\n").map_err(|e| format!("{}: {e}", file.display()))
}

/// Runs OpenSSH's `ssh` into instance `id` (a shell, or `command`), replacing this process.
pub fn instance_ssh(ctx: &Ctx, id: &str, identity: Option<PathBuf>, command: Vec<String>) -> Result<(), String> {
    let c = ctx.client(As::Tenant)?;
    let inst: api::Instance =
        c.get(&format!("/v1/instances/{}", gpucloud_client::encode_query(id))).map_err(|e| e.to_string())?;
    let (Some(line), Some(known)) = (&inst.ssh, &inst.ssh_host_key) else {
        return Err(if inst.state != api::InstanceState::Running {
            format!("instance {id} is {}: SSH reaches an instance while it runs", inst.state)
        } else {
            format!(
                "the node of instance {id} serves no SSH: only nodes running workloads as containers do \
                 (gpucloud agent --runtime docker; gpucloud dev with a Docker engine)"
            )
        });
    };
    let (port, dest) = parse_command(line).ok_or_else(|| format!("the server gave an odd ssh line: {line}"))?;
    let known_hosts = crate::profile::config_dir().join("known_hosts");
    remember_host_key(&known_hosts, known)?;
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-o").arg(format!("UserKnownHostsFile={}", known_hosts.display())).args([
        "-o",
        "StrictHostKeyChecking=yes",
        "-p",
        &port,
    ]);
    if let Some(key) = identity {
        ssh.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    ssh.arg(&dest);
    if !command.is_empty() {
        ssh.arg("--").args(&command);
    }
    use std::os::unix::process::CommandExt;
    let e = ssh.exec();
    Err(format!("cannot run ssh ({e}): install OpenSSH's client, or run: {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_ssh_line_gives_the_port_and_destination() {
        assert_eq!(
            parse_command("ssh -p 2222 i-0123@10.0.0.5"),
            Some(("2222".to_string(), "i-0123@10.0.0.5".to_string()))
        );
        assert_eq!(parse_command("ssh i-0123@h"), None);
        assert_eq!(parse_command("ssh -p x i-0123@h"), None);
    }

    #[test]
    fn a_nodes_host_key_replaces_an_older_one_for_the_same_address() {
        let dir = std::env::temp_dir().join(format!("gpucloud-known-{}", std::process::id()));
        let file = dir.join("known_hosts");
        let _ = std::fs::remove_dir_all(&dir);
        remember_host_key(&file, "[10.0.0.5]:2222 ssh-ed25519 AAAAold").unwrap();
        remember_host_key(&file, "[10.0.0.6]:2222 ssh-ed25519 AAAAother").unwrap();
        remember_host_key(&file, "[10.0.0.5]:2222 ssh-ed25519 AAAAnew").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, "[10.0.0.6]:2222 ssh-ed25519 AAAAother\n[10.0.0.5]:2222 ssh-ed25519 AAAAnew\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
