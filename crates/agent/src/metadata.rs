//! The per-instance metadata endpoint, on loopback: a workload finds its identity and GPUs at
//! `GPUCLOUD_METADATA_URL` (a random token in the path keeps one workload out of another's), and
//! later the events addressed to it (preemption notices, resizes).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct GpuRef {
    pub index: u32,
    pub uuid: String,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub node_id: String,
    pub gpus: Vec<GpuRef>,
    /// Notices for the workload, oldest first (none are sent yet).
    pub events: Vec<serde_json::Value>,
}

type Table = Arc<Mutex<HashMap<String, InstanceMetadata>>>;

/// The running endpoint: publish an instance's metadata, get back the URL to hand the workload.
pub struct MetadataServer {
    addr: SocketAddr,
    table: Table,
    tokens: Mutex<HashMap<String, String>>,
}

impl MetadataServer {
    /// Serves on 127.0.0.1 at `port` (0: any free port) from a thread of its own.
    pub fn start(port: u16) -> Result<MetadataServer, String> {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("metadata endpoint: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let table: Table = Arc::default();
        let shared = table.clone();
        std::thread::Builder::new()
            .name("metadata".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!(error = %e, "metadata endpoint runtime"),
                };
                rt.block_on(async move {
                    let router =
                        axum::Router::new().route("/v1/instance/{token}", axum::routing::get(get)).with_state(shared);
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            if let Err(e) = axum::serve(l, router).await {
                                tracing::error!(error = %e, "metadata endpoint stopped");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "metadata endpoint"),
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(MetadataServer { addr, table, tokens: Mutex::default() })
    }

    /// Publishes `meta` under `token` (a new random one if `None`) and returns the URL and token.
    /// Keeping the token (and the port) across agent restarts keeps the URL the workload has.
    pub fn publish(&self, meta: InstanceMetadata, token: Option<String>) -> (String, String) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let token = token.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        tokens.insert(meta.instance_id.clone(), token.clone());
        self.table.lock().unwrap_or_else(|e| e.into_inner()).insert(token.clone(), meta);
        (format!("http://{}/v1/instance/{token}", self.addr), token)
    }

    pub fn is_published(&self, instance_id: &str) -> bool {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).contains_key(instance_id)
    }

    pub fn withdraw(&self, instance_id: &str) {
        if let Some(token) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).remove(instance_id) {
            self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
        }
    }
}

async fn get(State(table): State<Table>, Path(token): Path<String>) -> Result<Json<InstanceMetadata>, StatusCode> {
    let table = table.lock().unwrap_or_else(|e| e.into_inner());
    table.get(&token).cloned().map(Json).ok_or(StatusCode::NOT_FOUND)
}
