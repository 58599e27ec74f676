//! What clients send: tenants' and operators' request bodies and the agent protocol's reports.
//! Each is parsed strictly (`deny_unknown_fields`): a misspelt field is a 422 naming it, not a
//! silent default.

use crate::*;
use gpucloud_model::{GpuModel, Money, Region};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceRequest {
    /// GPU model, e.g. `A100-40GB` (see `GET /v1/gpu-models`).
    #[schema(value_type = String, example = "A100-40GB")]
    pub gpu: GpuModel,
    /// Whole GPUs, 1 to 16, all on one node; 1 for a slice.
    #[schema(minimum = 1, maximum = 16, example = 2)]
    pub count: u32,
    /// A slice: this percentage (1-100) of one GPU's compute. Memory defaults to the same share.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100, example = 25)]
    pub gpu_share: Option<u32>,
    /// A slice: this much of one GPU's memory, in MiB. Compute defaults to the same share.
    #[serde(default)]
    #[schema(example = 10240)]
    pub gpu_memory_mib: Option<u64>,
    /// A MIG profile of the model (`GET /v1/gpu-models` lists them), e.g. `1g.10gb`.
    #[serde(default)]
    pub mig: Option<String>,
    /// Region to run in; any region when omitted.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "eu-1")]
    pub region: Option<Region>,
    /// The workload: a shell command line (the template's when omitted with `template`).
    #[serde(default)]
    pub command: String,
    /// A template to start from (`GET /v1/templates`): its image, command, environment, secrets
    /// and ports, each overridden by what this request gives (env and secrets are merged).
    #[serde(default)]
    pub template: Option<String>,
    /// A name for people; defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// on-demand (default); spot: cheaper, and preempted with notice when the spot price rises
    /// above `max_price_per_gpu_hour` or on-demand demand needs the GPUs; reserved: on the
    /// caller's reservation (its region), paid for by it.
    #[serde(default)]
    #[schema(example = "spot")]
    pub tier: Option<Tier>,
    /// A spot bid per GPU-hour (decimal string); the on-demand price when omitted.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "1.20")]
    pub max_price_per_gpu_hour: Option<Money>,
    /// The container image to run in, `[REGISTRY/]NAME[:TAG]`; the node's own when omitted.
    /// Needs nodes that run workloads as containers (`gpucloud agent --runtime docker`).
    #[serde(default)]
    #[schema(example = "nvcr.io/nvidia/pytorch:24.05-py3")]
    pub image: Option<String>,
    /// Environment variables for the workload. A value `secret:NAME` is the caller's secret
    /// NAME, read when the workload starts (`PUT /v1/secrets/{name}`).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Secrets to set as variables of the same name (`["HF_TOKEN"]`: `HF_TOKEN=secret:HF_TOKEN`).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Ports the workload serves on: `8888/http` (through the server's authenticated proxy at
    /// `/i/{id}/8888/`) or `22/tcp` (a raw port on the node).
    #[serde(default)]
    #[schema(example = json!(["8888/http"]))]
    pub ports: Vec<String>,
    /// A volume of the caller's to mount, `NAME:/path` (`POST /v1/volumes`). The instance is
    /// placed on the node where the volume lives, and holds it until terminated.
    #[serde(default)]
    #[schema(example = "data:/workspace")]
    pub volume: Option<String>,
    /// The project it belongs to and counts against (`GET /v1/projects`); the key's project,
    /// or `default`, when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "ml-research")]
    pub project: Option<String>,
    /// When the project is at its GPU limit: `fail` (default: refused with 409
    /// `quota_exceeded`) or `wait` (queued, held back until the project has room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_quota: Option<OnQuota>,
    /// batch, default (when omitted) or production, up to the project's `max_priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuGroup {
    #[schema(value_type = String, example = "H100-80GB")]
    pub model: GpuModel,
    #[schema(minimum = 1, maximum = 16)]
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNodeRequest {
    /// Unique host name.
    pub name: String,
    #[schema(value_type = String, example = "eu-1")]
    pub region: Region,
    pub gpus: Vec<GpuGroup>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 1 to 64 letters, digits, `-` or `_`.
    pub name: String,
    /// prepaid or postpaid (the default).
    #[serde(default)]
    pub billing_mode: Option<String>,
    /// Postpaid only: how much the tenant may owe before creates are refused and its instances
    /// stop; absent is no limit.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "500.00")]
    pub credit_limit: Option<Money>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPriceRequest {
    #[schema(value_type = String, example = "H100-80GB")]
    pub gpu: GpuModel,
    #[schema(value_type = String, example = "eu-1")]
    pub region: Region,
    /// on-demand (default), spot or reserved.
    #[serde(default)]
    pub tier: Option<Tier>,
    #[schema(value_type = String, example = "2.99")]
    pub price_per_gpu_hour: Money,
    /// RFC 3339; now when omitted. Never in the past.
    #[serde(default)]
    pub effective_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BillingRules {
    /// Usage is billed in whole units of this many seconds (1, 60, 600, 3600...).
    pub granularity_seconds: i64,
    /// The least billed for any run, in seconds.
    pub minimum_seconds: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    #[schema(value_type = String, example = "A100-40GB")]
    pub gpu: GpuModel,
    #[schema(minimum = 1, maximum = 16)]
    pub count: u32,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub region: Option<Region>,
    /// How long it would run; one hour when omitted.
    #[serde(default)]
    pub duration_seconds: Option<i64>,
    /// A slice, as in `CreateInstanceRequest`: priced at its share of the GPU.
    #[serde(default)]
    pub gpu_share: Option<u32>,
    #[serde(default)]
    pub gpu_memory_mib: Option<u64>,
    #[serde(default)]
    pub mig: Option<String>,
    /// on-demand (default) or spot: spot quotes the spot price in force now, capped at the bid.
    #[serde(default)]
    #[schema(example = "spot")]
    pub tier: Option<Tier>,
    /// With spot: the bid per GPU-hour; the on-demand price when omitted.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "1.20")]
    pub max_price_per_gpu_hour: Option<Money>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// Decimal string; positive for grant and topup.
    #[schema(value_type = String, example = "100.00")]
    pub amount: Money,
    /// grant (default), topup or adjustment.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub memo: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseMonthRequest {
    /// `YYYY-MM`; must have ended.
    pub month: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    /// A positive decimal string; null or absent removes the budget.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "500.00")]
    pub monthly_limit: Option<Money>,
    /// Default [50, 80, 100].
    #[serde(default)]
    pub thresholds: Option<Vec<u32>>,
    /// notify (default) or checkpoint-and-stop.
    #[serde(default)]
    pub action: Option<BudgetAction>,
    /// Alerts are POSTed here as JSON.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantBillingRequest {
    /// true: prepaid; false: postpaid. Or say it as `billing_mode`.
    #[serde(default)]
    pub prepaid: Option<bool>,
    /// prepaid or postpaid.
    #[serde(default)]
    pub billing_mode: Option<String>,
    /// Postpaid only; absent or null is no limit.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub credit_limit: Option<Money>,
}

/// A GPU as an agent found it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentGpu {
    pub index: u32,
    #[schema(value_type = String, example = "A100-40GB")]
    pub model: GpuModel,
    /// As NVML reports it: `GPU-...`.
    pub uuid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgentRequest {
    /// The host's node name; registering the same name again takes the node over (next epoch).
    pub name: String,
    #[schema(value_type = String, example = "eu-1")]
    pub region: Region,
    pub gpus: Vec<AgentGpu>,
    /// Where other nodes reach this one (a cluster's MASTER_ADDR); the name when omitted.
    #[serde(default)]
    pub address: Option<String>,
    /// What the operator says of the node (rack, interconnect, owner): up to 32, keys of
    /// letters, digits and `._/-`, values of printable characters.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// How the agent runs workloads. A server started with --require-containers refuses all
    /// but `docker` (and an agent that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<AgentRuntime>,
    /// The port its ingress listens on: where the server's proxy reaches workloads' HTTP ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_port: Option<u16>,
    /// Where renters' SSH clients reach this node's containers (container runtime only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// The node's SSH host key (`ssh-ed25519 AAAA...`), for clients' known_hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentInstanceReport {
    pub id: String,
    /// running, stopped (gone, or exited 0) or failed (exited non-zero, or could not start).
    pub state: WorkloadState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the agent ended it, when it did (a slice over its memory cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The latest checkpoint the workload reported to its metadata endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The port the agent gave the workload (GPUCLOUD_PORT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// While it is not started yet: what the agent is doing for it ("pulling image ...: 45%").
    /// The state is then `preparing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Its exposed ports as published on the node: container port and host port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentHeartbeat {
    pub node_id: String,
    pub epoch: i64,
    /// The beat's number within this registration, counting up from 1. A beat numbered no
    /// higher than one already taken arrived late and is refused (409), so what it no longer
    /// mentions is not taken for gone. Agents that leave it out are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub instances: Vec<AgentInstanceReport>,
    #[serde(default)]
    pub gpus: Vec<GpuTelemetry>,
    /// Business metrics workloads pushed since the last beat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<AgentMetric>,
    /// Volumes whose data the node removed, as it was asked to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purged_volumes: Vec<String>,
    /// The public container images the node holds, when that changed (or the agent started):
    /// the scheduler prefers a node holding an instance's image among equally good ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentMetric {
    pub instance: String,
    pub at_ms: i64,
    #[serde(default)]
    pub step: Option<i64>,
    pub name: String,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogChunkIn {
    /// 1, 2, 3... per instance; a resent chunk is stored once.
    pub seq: i64,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentLogs {
    pub node_id: String,
    pub epoch: i64,
    pub instance: String,
    pub chunks: Vec<LogChunkIn>,
}

/// One GPU's readings, sent with each agent heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuTelemetry {
    pub index: u32,
    pub temperature_c: f64,
    pub power_w: f64,
    /// Since the agent started, in millijoules.
    pub energy_mj: u64,
    pub memory_used_mib: u64,
    pub utilization_pct: f64,
    /// The last XID error reported, if any.
    #[serde(default)]
    pub xid: Option<u32>,
    /// Uncorrectable (double-bit) ECC errors, volatile count.
    #[serde(default)]
    pub ecc_uncorrectable: u64,
}

impl GpuTelemetry {
    /// A reading after which the GPU takes no new work: an uncorrectable ECC error or a fatal XID.
    pub fn is_fatal(&self) -> bool {
        self.ecc_uncorrectable > 0 || self.xid.is_some_and(gpucloud_model::xid_is_fatal)
    }
}

/// Preempt an instance as the market would: notice, then stop at the deadline (operator; for
/// testing a workload's checkpoint path).
/// Make a GPU fail as if its agent had reported a fatal XID (operator; for testing a fleet's
/// handling of hardware faults).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct GpuFaultRequest {
    /// A fatal XID (48, 62, 63, 64, 74, 79, 92, 94, 95, 119 or 120); 79 (fallen off the bus)
    /// when omitted.
    #[serde(default)]
    pub xid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PreemptRequest {
    /// At least the operator's minimum notice; the configured notice when omitted.
    #[serde(default)]
    pub notice_seconds: Option<u64>,
}

/// A managed job: run `command` until it succeeds, relaunching it after each preemption or
/// node loss from the latest checkpoint it reported.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    #[serde(default)]
    pub name: Option<String>,
    /// Acceptable GPU models, e.g. ["A100-40GB", "H100-80GB"]: each attempt takes the cheapest
    /// with capacity.
    #[schema(value_type = Vec<String>, example = json!(["A100-40GB"]))]
    pub gpus: Vec<GpuModel>,
    /// GPUs per attempt, on one node.
    #[schema(minimum = 1, maximum = 16)]
    pub count: u32,
    /// Acceptable regions; any when empty.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub regions: Vec<Region>,
    pub command: String,
    /// Run on spot (default true): the point of a managed job is surviving preemption.
    #[serde(default)]
    pub spot: Option<bool>,
    /// The spot bid per GPU-hour; the on-demand price when omitted.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub max_price_per_gpu_hour: Option<Money>,
    /// Where the workload keeps its checkpoints (handed to it as GPUCLOUD_CHECKPOINT_DIR).
    #[serde(default)]
    pub checkpoint_dir: Option<String>,
    /// Relaunches after preemption or node loss before the job is given up (default 10).
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// After a spot attempt has waited this long for capacity, run on-demand instead.
    #[serde(default)]
    pub on_demand_after_seconds: Option<u64>,
    /// The container image every attempt runs in; the node's own when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment for every attempt (`secret:NAME` values are the caller's secrets).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Secrets to set as variables of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// A volume every attempt mounts, `NAME:/path`: checkpoints written there survive
    /// preemption, and each attempt is placed on the volume's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The project its attempts belong to; the key's project, or `default`, when omitted. An
    /// attempt that finds the project at its limit waits for room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Every attempt's priority class (default when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Which allowed model an attempt takes when several have room: `cheapest` (when omitted)
    /// or `fastest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<ModelPreference>,
}

/// Sell a reservation (operator): GPUs of a model in a region, for a period, at a rate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReservationRequest {
    /// The owner: a tenant id or name.
    pub tenant: String,
    #[schema(value_type = String, example = "A100-40GB")]
    pub gpu: GpuModel,
    #[schema(value_type = String, example = "eu-1")]
    pub region: Region,
    pub gpus: u32,
    /// RFC 3339; now when omitted.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// RFC 3339.
    pub ends_at: String,
    /// Per GPU-hour, paid for the whole period; the price book's reserved price when omitted.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "1.04")]
    pub price_per_gpu_hour: Option<Money>,
    /// Percent of what idle reserved GPUs earn as spot that goes back to the owner (default 50).
    #[serde(default)]
    pub lend_share_percent: Option<u32>,
}

/// When an instance counts as idle (every GPU under `below_percent` for `minutes`), and whether
/// idle instances are stopped or only reported (an `idle` alert).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdlePolicy {
    pub below_percent: u32,
    pub minutes: u32,
    pub auto_stop: bool,
}

/// A member's key for the caller's tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Whose key, or what for (1 to 64 characters).
    pub name: String,
    /// admin (default), member (its work, not keys, projects, quotas or billing settings: 403
    /// `key_role`), billing (reads, and the billing settings), read-only (every mutating call is
    /// refused with 403) or agent (operators only: a node agent's key, refused everywhere but
    /// /v1/agent/...).
    #[serde(default)]
    pub scope: Option<KeyScope>,
    /// An agent key's node, by name: it may register, beat and ship logs for that node only.
    /// Without it, the key is bound to the first node it registers (a node that is not
    /// registered yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Scope the key to one project: it creates there, and sees and acts on that project's
    /// instances, jobs and clusters only. The whole organization when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// A new project of the caller's organization (tenant).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// 1 to 40 lowercase letters, digits or '-', starting with a letter.
    #[schema(example = "ml-research")]
    pub name: String,
    /// The highest priority class its work may ask for (default: production).
    #[serde(default)]
    pub max_priority: Option<Priority>,
}

/// A project's monthly budget.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProjectBudgetRequest {
    /// A decimal string; null removes the budget. Once the project's usage this month reaches
    /// it, creates in the project are refused (402) until next month or a higher budget.
    #[schema(value_type = Option<String>, example = "500.00")]
    pub monthly_limit: Option<Money>,
}

/// A project's quota on one GPU model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetQuotaRequest {
    /// At most this many GPUs of the model held or queued at once (slices count for their
    /// share); 0 stops new work of that model.
    #[schema(example = 16)]
    pub limit: u32,
    /// Of the limit, the GPUs the project deserves (0 to `limit`, default 0).
    #[serde(default)]
    #[schema(example = 8)]
    pub guaranteed: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddSshKeyRequest {
    /// One line of a `.pub` file: `ssh-ed25519 AAAA... you@laptop` (ed25519, ECDSA, or RSA of
    /// 2048 bits or more).
    pub public_key: String,
    /// What to call it [default: the key's comment where it makes a name, else `key-` and the
    /// start of its fingerprint].
    #[serde(default)]
    pub name: Option<String>,
}

/// A workload's checkpoint, told to its node's metadata endpoint (`POST .../checkpoint`): a
/// managed job's next attempt resumes from the latest one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportCheckpointRequest {
    /// 1 to 4096 printable characters: a path the next attempt can read (a volume, shared storage).
    pub path: String,
}
