//! Instances' web ports: who may reach them, and the tunnel through the node's agent (see
//! `gpucloud_agent::ingress`) that the HTTP proxy sends their traffic through.

use super::{App, AppError, Principal};
use gpucloud_model::{InstanceState, NodeId, PortProtocol};
use gpucloud_store::KeyScope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a signed tunnel line is good for: enough for the connection to reach the agent.
const TUNNEL_VALIDITY_MS: i64 = 30_000;

impl App {
    /// Records where a (re-)registered node's agent takes proxied connections, with a fresh
    /// signing secret, which is returned for the agent (and only to it).
    pub(crate) async fn set_ingress(&self, node: &NodeId, port: Option<u16>) -> Result<Option<String>, AppError> {
        match port.filter(|p| *p > 0) {
            Some(p) => {
                let secret = gpucloud_model::hex::encode(&rand::random::<[u8; 32]>());
                self.store.set_node_ingress(node, Some(p), Some(&secret)).await?;
                Ok(Some(secret))
            }
            None => {
                self.store.set_node_ingress(node, None, None).await?;
                Ok(None)
            }
        }
    }

    /// A connection to HTTP port `port` of instance `id`, for `by`: a key of the instance's own
    /// tenant that may act (not read-only, not an agent's). Another tenant's instance is "not
    /// found", as everywhere.
    pub async fn open_port(&self, by: &Principal, id: &str, port: u16) -> Result<tokio::net::TcpStream, AppError> {
        if !matches!(by.scope, KeyScope::Admin | KeyScope::Member) {
            return Err(AppError::Forbidden(format!(
                "key {} is {}: opening a workload's port needs a key that may act",
                by.key_prefix,
                by.scope.as_str()
            )));
        }
        let inst = self.get_instance(by, id).await?;
        let exposed = inst.sale.ports.iter().any(|p| p.port == port && p.protocol == PortProtocol::Http);
        if !exposed {
            return Err(AppError::NotFound { kind: "http port", id: format!("{id}/{port}") });
        }
        if inst.state != InstanceState::Running {
            return Err(AppError::Conflict(format!(
                "instance {id} is {}: its ports are reachable while it runs",
                inst.state
            )));
        }
        let unreachable = || AppError::BadGateway(format!("the node of instance {id} takes no proxied connections"));
        let node_id = inst.node_id.clone().ok_or_else(unreachable)?;
        let node = self.store.get_node(&node_id).await?.ok_or_else(unreachable)?;
        let (ingress_port, secret) = self.store.node_ingress(&node_id).await?.ok_or_else(unreachable)?;
        let secret = gpucloud_model::hex::decode(&secret).ok_or_else(unreachable)?;
        let expires = self.now().0 + TUNNEL_VALIDITY_MS;
        let mac = gpucloud_node::ingress::signature(&secret, id, port, expires);
        let host = node.reached_at().trim_start_matches('[').trim_end_matches(']').to_string();
        let gone = |e: std::io::Error| AppError::BadGateway(format!("cannot reach the node of instance {id}: {e}"));
        let connect = tokio::net::TcpStream::connect((host.as_str(), ingress_port));
        let mut conn = tokio::time::timeout(std::time::Duration::from_secs(5), connect)
            .await
            .map_err(|_| AppError::BadGateway(format!("the node of instance {id} did not answer in 5 s")))?
            .map_err(gone)?;
        conn.set_nodelay(true).map_err(gone)?;
        conn.write_all(format!("GPUCLOUD-INGRESS/1 {id} {port} {expires} {mac}\n").as_bytes()).await.map_err(gone)?;
        // The answer line, a byte at a time: what follows it is the workload's.
        let mut answer = Vec::with_capacity(64);
        let read = async {
            loop {
                let b = conn.read_u8().await?;
                if b == b'\n' || answer.len() >= 512 {
                    return Ok::<_, std::io::Error>(());
                }
                answer.push(b);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .map_err(|_| AppError::BadGateway(format!("the node of instance {id} did not answer in 10 s")))?
            .map_err(gone)?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        match answer.strip_prefix("ERR ") {
            None if answer == "OK" => Ok(conn),
            Some(why) => Err(AppError::BadGateway(format!("port {port} of instance {id}: {why}"))),
            None => Err(AppError::BadGateway(format!("the node of instance {id} answered '{answer}'"))),
        }
    }
}
