//! Clusters and warm pools on the wire: what a tenant asks for (size, schedule, autoscaling,
//! what every member runs in) and what it gets back.

use crate::{ClusterState, Instance, InstanceState, Tier};
use gpucloud_model::{GpuModel, Region};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A cluster: identical members of `gpus_per_node` GPUs each, resized between min and max.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterRequest {
    pub name: String,
    #[schema(value_type = String, example = "A100-40GB")]
    pub gpu: GpuModel,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub region: Option<Region>,
    pub gpus_per_node: u32,
    /// The size to start at.
    pub nodes: u32,
    /// The project its members belong to; the key's project, or `default`, when omitted. A
    /// member that finds the project at its limit waits for room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default)]
    pub min_nodes: Option<u32>,
    #[serde(default)]
    pub max_nodes: Option<u32>,
    pub command: String,
    /// on-demand (default) or spot.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// An active-active replica set: one member in each of these regions (2 to 8), each placed
    /// on its own; the size is the number of regions and does not change.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub replicas_in: Option<Vec<Region>>,
    /// The container image each member runs in, `[REGISTRY/]NAME[:TAG]`; the node's own when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment for each member (`secret:NAME` values are the caller's secrets, read at each start).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Secrets to set as variables of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Ports each member serves on, `8888/http` or `22/tcp`, as on an instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["8888/http"]))]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeClusterRequest {
    pub nodes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterMember {
    pub rank: u32,
    pub instance: String,
    pub state: InstanceState,
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// Set when it is leaving (a scale-down's stop notice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving_at: Option<String>,
    /// While running: where it serves, "host:port" (what `gpucloud gateway --cluster` routes to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    pub id: String,
    pub name: String,
    /// The project its members belong to.
    #[serde(default = "default_project")]
    pub project: String,
    pub gpu: String,
    pub region: Option<String>,
    pub gpus_per_node: u32,
    pub min_nodes: u32,
    pub max_nodes: u32,
    /// The size asked for.
    pub nodes: u32,
    pub tier: Tier,
    /// ready, resizing (members waiting: all start together or none) or degraded.
    pub state: ClusterState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub master_port: u16,
    pub members: Vec<ClusterMember>,
    /// A replica set's regions, member `r` in the `r`-th.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas_in: Vec<String>,
    pub command: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Its utilization policy, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<String>,
    /// The container image each member runs in; null: the node's own.
    #[serde(default)]
    pub image: Option<String>,
    /// Its environment as asked for: secrets appear as `secret:NAME`, never their values.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Ports each member serves on (`8888/http`); each member's proxied URLs are on the instance.
    #[serde(default)]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterList {
    pub clusters: Vec<Cluster>,
}

/// Keep `size` instances of a template started, to hand out in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoolRequest {
    pub name: String,
    #[schema(value_type = String, example = "A100-40GB")]
    pub gpu: GpuModel,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub region: Option<Region>,
    /// GPUs per instance.
    pub count: u32,
    /// What each instance runs from the start (loading a model, say).
    pub command: String,
    pub size: u32,
    /// The container image each instance runs in, `[REGISTRY/]NAME[:TAG]`; the node's own when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment for each instance (`secret:NAME` values are the caller's secrets, read at each start).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Secrets to set as variables of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Ports each instance serves on, `8888/http` or `22/tcp`, as on an instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["8888/http"]))]
    pub ports: Vec<String>,
    /// The project its instances belong to (the key's, or `default`, when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolMember {
    pub instance: String,
    pub state: InstanceState,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WarmPool {
    pub id: String,
    pub name: String,
    /// The project its instances belong to.
    #[serde(default = "default_project")]
    pub project: String,
    pub gpu: String,
    pub region: Option<String>,
    pub count: u32,
    pub command: String,
    pub size: u32,
    /// Members running, ready to be handed out.
    pub ready: u32,
    pub members: Vec<PoolMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The container image each instance runs in; null: the node's own.
    #[serde(default)]
    pub image: Option<String>,
    /// Its environment as asked for: secrets appear as `secret:NAME`, never their values.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Ports each instance serves on (`8888/http`); each member's proxied URLs are on the instance.
    #[serde(default)]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<WarmPool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// A name for the instance handed out.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Claimed {
    /// True: it was already running; false: none was, so a cold one was started.
    pub warm: bool,
    pub instance: Instance,
}

/// A cluster's size schedule, e.g. "08:00-20:00 8 x RTX-6000-Ada, otherwise 4 x A40".
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterScheduleRequest {
    /// None clears it.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The times' UTC offset, e.g. +01:00 (default UTC).
    #[serde(default)]
    pub utc_offset: Option<String>,
}

/// Scale out while the members' GPUs stay above `up_percent` utilization for `for_seconds`, in
/// while below `down_percent`; all fields omitted: stop autoscaling.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterAutoscaleRequest {
    #[serde(default)]
    pub up_percent: Option<u32>,
    #[serde(default)]
    pub down_percent: Option<u32>,
    #[serde(default)]
    pub for_seconds: Option<u32>,
}

/// A warm pool's size, or its size by time of day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PoolSizeRequest {
    #[serde(default)]
    pub size: Option<u32>,
    /// E.g. "09:25-16:00 4 x A100-40GB, otherwise 0 x A100-40GB"; omitted: no schedule.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub utc_offset: Option<String>,
}

fn default_project() -> String {
    "default".to_string()
}
