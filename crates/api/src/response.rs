//! What the server answers: resources, lists and reports, and what the agent protocol tells agents.

use crate::*;
use gpucloud_model::Money;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A preemption notice: the workload has until `deadline` (SIGTERM then).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PreemptionNotice {
    pub given_at: String,
    pub notice_seconds: f64,
    /// Set once the node's agent has the notice: that moment plus the notice.
    pub deadline: Option<String>,
    /// Why, and why this instance among the candidates.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    /// The project it belongs to and counts against.
    #[serde(default = "default_project")]
    pub project: String,
    /// Its priority class in the queue.
    #[serde(default)]
    pub priority: Priority,
    /// pending, provisioning, running, stopping, stopped, terminated or failed.
    pub state: InstanceState,
    /// While stopping: where it goes next (stopped, terminated, requeue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_target: Option<String>,
    pub gpu: String,
    pub count: u32,
    /// Thousandths of one GPU's compute held per GPU: 1000 for whole GPUs, less for a slice.
    pub gpu_milli: u32,
    /// A slice's GPU memory cap, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mib: Option<u64>,
    /// A MIG slice's profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<String>,
    /// Where it runs (or last ran) once placed; before that, the region asked for, null for any.
    pub region: Option<String>,
    /// The region asked for at create; null for any.
    #[serde(default)]
    pub requested_region: Option<String>,
    /// The node it runs on, while it holds GPUs: an opaque id, the same one its tenant's
    /// other instances on that node show, never the host's name.
    pub node: Option<String>,
    /// GPU indices on `node`.
    pub gpus: Vec<u32>,
    pub command: String,
    /// Why a pending instance is not running yet, per region.
    pub pending_reason: Option<String>,
    pub exit_code: Option<i32>,
    /// Why it ended as it did, when known ("exceeded its GPU memory cap: ...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it was placed on its node, when more than the scheduling policy chose it
    /// ("image ... was already on the node (no pull)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// on-demand or spot.
    pub tier: Tier,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub max_price_per_gpu_hour: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption: Option<PreemptionNotice>,
    /// The latest checkpoint its workload reported (through its metadata endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// While running: where its workload serves, "host:port" (its node's address and the port
    /// in its GPUCLOUD_PORT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// While running on a node that serves SSH: the command that opens a shell in it
    /// (`ssh -p 2222 i-...@host`), with any key added by `gpucloud ssh-key add`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// With `ssh`: the node's host key as a known_hosts line (`[host]:port ssh-ed25519 AAAA...`),
    /// so a client can check it instead of trusting the first answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
    /// The managed job it is an attempt of, and which attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The container image it runs in; null: its node's own.
    #[serde(default)]
    pub image: Option<String>,
    /// Its environment as asked for: secrets appear as `secret:NAME`, never their values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<InstancePort>,
    /// While provisioning: what its node is doing ("pulling image ...: 45%"). Not billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The volume it mounts, `NAME:/path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
    /// The next page (`limit` and `after` set), or null on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct NodeGpu {
    pub index: u32,
    pub model: String,
    pub uuid: String,
    /// The instance holding it, if any.
    pub instance: Option<String>,
    /// False after a fatal XID or uncorrectable ECC errors: it takes no new work.
    pub healthy: bool,
    /// Slices of it held by instances.
    #[serde(default)]
    pub slices: Vec<NodeGpuSlice>,
    /// Its latest reading from the node's agent, when one came since the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading: Option<GpuTelemetry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct NodeGpuSlice {
    pub instance: String,
    /// Thousandths of the GPU's compute.
    pub milli: u32,
    pub memory_mib: u64,
    pub mig: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub region: String,
    /// ready, cordoned or draining.
    pub state: NodeState,
    /// healthy, degraded (some GPUs out of service after a fault), unhealthy or lost.
    pub health: NodeHealth,
    /// fake (in-process, dev and tests) or agent (a `gpucloud agent` process).
    pub driver: String,
    /// The agent registration in force; a newer one fences older agents.
    pub epoch: i64,
    pub generation: i64,
    pub last_heartbeat: Option<String>,
    pub gpus_total: u32,
    pub gpus_allocated: u32,
    pub gpus: Vec<NodeGpu>,
    /// What its agent registered it with (`--label k=v`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The public container images it holds, as its agent last reported (instances asking
    /// for one of them prefer it among equally good nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// While draining with a deadline: when what still runs on it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// operator or tenant.
    pub role: Role,
    pub created_at: String,
    /// How the tenant pays (shown to operators: tenant create, list and show).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingMode>,
}

/// How a tenant pays: `prepaid` (its instances stop before its balance goes negative, and
/// creates its balance cannot cover are refused) or `postpaid` (invoiced monthly; with a credit
/// limit, the same rules apply at minus that limit).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct BillingMode {
    /// prepaid or postpaid.
    pub mode: String,
    /// Postpaid only: how much the tenant may owe; null is no limit.
    #[schema(value_type = Option<String>)]
    pub credit_limit: Option<Money>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

/// A new API key. The key itself is shown here once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    pub id: String,
    pub tenant: Tenant,
    pub prefix: String,
    pub api_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub tenant: Tenant,
    pub key_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ModelCapacity {
    pub model: String,
    pub nodes: u32,
    pub total: u32,
    /// On schedulable (ready and healthy) nodes.
    pub free: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RegionCapacity {
    pub region: String,
    pub models: Vec<ModelCapacity>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Capacity {
    pub regions: Vec<RegionCapacity>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GpuModelInfo {
    pub name: String,
    pub memory_mib: u64,
    /// Can be rented in slices (`gpu_share` / `gpu_memory_mib`).
    pub sliceable: bool,
    /// MIG profiles on offer (`mig`); empty where the model has no MIG.
    pub mig_profiles: Vec<MigProfileInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigProfileInfo {
    pub name: String,
    /// Sevenths of the GPU's compute.
    pub compute_sevenths: u8,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GpuModelList {
    pub models: Vec<GpuModelInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Price {
    pub gpu: String,
    pub region: String,
    /// on-demand, spot or reserved.
    pub tier: Tier,
    /// Decimal string, in the currency's units per GPU-hour.
    #[schema(value_type = String, example = "2.990000")]
    pub price_per_gpu_hour: Money,
    pub effective_from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PriceList {
    pub currency: String,
    pub prices: Vec<Price>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuoteLine {
    pub region: String,
    pub tier: Tier,
    /// With spot: the bid the price is capped at, and what the market asks now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub max_price_per_gpu_hour: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub market_price_per_gpu_hour: Option<Money>,
    /// What to know about this line ("the spot price is above your bid: it would wait").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[schema(value_type = String)]
    pub price_per_hour: Money,
    pub duration_seconds: i64,
    pub billable_seconds: i64,
    #[schema(value_type = String)]
    pub estimated_cost: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuoteList {
    pub currency: String,
    pub quotes: Vec<QuoteLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct LedgerLine {
    pub id: String,
    /// usage, grant, topup or adjustment.
    pub kind: String,
    pub memo: String,
    pub instance: Option<String>,
    pub gpu: Option<String>,
    pub seconds: i64,
    /// Change to the tenant's balance: negative for usage.
    #[schema(value_type = String)]
    pub amount: Money,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerList {
    pub currency: String,
    pub entries: Vec<LedgerLine>,
    /// The next page, or null on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    pub tenant: String,
    pub currency: String,
    #[schema(value_type = String)]
    pub balance: Money,
    /// Usage charged since the start of this UTC month.
    #[schema(value_type = String)]
    pub month_usage: Money,
    /// What the tenant's running instances cost per hour now.
    #[schema(value_type = String)]
    pub burn_per_hour: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageLine {
    /// The instance id, GPU model or UTC day, per `by`.
    pub key: String,
    pub seconds: i64,
    #[schema(value_type = String)]
    pub amount: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub by: String,
    pub currency: String,
    /// Over every line, not only this page's.
    #[schema(value_type = String)]
    pub total: Money,
    pub lines: Vec<UsageLine>,
    /// The next page, or null on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvoiceSummary {
    pub month: String,
    #[schema(value_type = String)]
    pub usage_total: Money,
    pub closed_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvoiceList {
    /// Closed invoices, oldest first. The running month is a draft: GET it by month.
    pub invoices: Vec<InvoiceSummary>,
    /// The next page, or null on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CloseMonthResult {
    pub month: String,
    /// Invoices closed by this call (the others were already).
    pub closed: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// null: no budget.
    #[schema(value_type = Option<String>)]
    pub monthly_limit: Option<Money>,
    /// Percentages of the budget that raise an alert.
    pub thresholds: Vec<u32>,
    /// notify or checkpoint-and-stop.
    pub action: BudgetAction,
    pub webhook_url: Option<String>,
    /// The tenant's webhook signing secret: every webhook request carries
    /// `Gpucloud-Signature: t=UNIX_SECONDS,v1=HEX`, HEX being HMAC-SHA256 under this secret of
    /// `UNIX_SECONDS.BODY`. Made with the first webhook URL; shown only to the tenant's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Set by the operator: instances stop before the prepaid balance goes negative.
    pub prepaid: bool,
    /// prepaid or postpaid.
    #[serde(default)]
    pub billing_mode: String,
    /// Postpaid: how much may be owed; null is no limit.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub credit_limit: Option<Money>,
    #[schema(value_type = String)]
    pub month_usage: Money,
}

/// One background reconciler on the replica that answered, and how its passes went.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskStatus {
    pub name: String,
    /// What it converges.
    pub what: String,
    pub period_ms: u64,
    /// Runs only on the replica holding the reconcilers' lease (`GET /v1/replica`).
    pub leader_only: bool,
    pub runs: u64,
    pub failures: u64,
    pub last_started: Option<String>,
    pub last_duration_ms: Option<f64>,
    /// The last pass's error; `null` when the last pass went well.
    pub last_error: Option<String>,
    pub last_failed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// The replica these are of: each replica keeps its own record.
    pub replica: String,
    pub leader: bool,
    pub tasks: Vec<TaskStatus>,
}

/// What the billing checker found: every interval recomputed from the instance's state history
/// and the price book against what was charged and what the ledger holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BillingCheck {
    pub instances: usize,
    pub intervals: usize,
    pub ledger_entries: u64,
    /// Seconds billed by settled intervals.
    pub billed_seconds: i64,
    /// What settled intervals were charged.
    #[schema(value_type = String)]
    pub charged: Money,
    /// Each second charged twice or lost, charge above a bid, unbalanced entry or drifted
    /// balance, in words; empty when the books are right.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub id: String,
    /// budget, instance_stopped, ...
    pub kind: String,
    pub message: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
    /// The next page, or null on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentRegistered {
    pub node_id: String,
    /// Send it with every report; a newer registration fences this one.
    pub epoch: i64,
    /// How often the server expects a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// What the server's proxy signs its ingress connections with (hex), when the agent
    /// registered an ingress port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_secret: Option<String>,
    /// An agent that has had no answer from any server for this long has its workloads stopped
    /// by then (it starts stopping them its stop grace earlier): by that time the server may run
    /// them elsewhere, and two copies must never run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PublishedPort {
    pub port: u16,
    pub host_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AgentWorkload {
    pub id: String,
    /// run or stop. A workload the agent runs that is not listed must be stopped too.
    pub desired: Desired,
    pub gpus: Vec<u32>,
    pub gpu_uuids: Vec<String>,
    pub command: String,
    /// For a slice: the limits the agent enforces on its one GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<AgentSlice>,
    /// Extra environment for the workload (a managed job's GPUCLOUD_RESUME_FROM...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// A preemption notice to publish on the workload's metadata endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<AgentNotice>,
    /// For a cluster member: the cluster's size and membership now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<AgentCluster>,
    /// The image to run it in (container runtime); the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Ports to publish on the node (`8888/http`, `22/tcp`); reported back in `published`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The tenant's credentials for the image's registry, when it has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<AgentRegistryAuth>,
    /// A volume to mount: made on the node's disk at its size on first use, kept across runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<AgentVolume>,
    /// The public keys (`ssh-ed25519 AAAA...`) that may open an SSH session in it: its tenant's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentVolume {
    pub id: String,
    pub size_gib: u32,
    /// Where it appears in the workload's container.
    pub path: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentRegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for AgentRegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentRegistryAuth {{ username: {:?}, password: .. }}", self.username)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentCluster {
    pub id: String,
    pub name: String,
    /// Bumped by every resize.
    pub epoch: i64,
    pub size: u32,
    pub rank: u32,
    pub master_addr: String,
    pub master_port: u16,
    pub members: Vec<AgentClusterMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AgentClusterMember {
    pub rank: u32,
    pub instance: String,
    pub state: InstanceState,
    /// Where its node is reached, once placed.
    pub address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AgentNotice {
    /// RFC 3339; the workload is stopped (SIGTERM) then.
    pub deadline: String,
    pub deadline_ms: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AgentSlice {
    /// Thousandths of the GPU's compute.
    pub milli: u32,
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentDesired {
    pub instances: Vec<AgentWorkload>,
    /// Deleted volumes whose data the node should remove (and then list in `purged_volumes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purge_volumes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogChunk {
    pub seq: i64,
    pub at: String,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceLogs {
    pub chunks: Vec<LogChunk>,
    /// Pass as `after` to read on from here.
    pub next_after: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceEvent {
    pub at: String,
    /// null for the creation.
    pub from: Option<String>,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceHistory {
    pub events: Vec<InstanceEvent>,
    /// The next page, or null on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpotPoint {
    pub at: String,
    #[schema(value_type = String)]
    pub price_per_gpu_hour: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpotPriceHistory {
    pub gpu: String,
    pub region: String,
    pub currency: String,
    /// The bounds the spot price moves within.
    #[schema(value_type = String)]
    pub on_demand_per_gpu_hour: Money,
    #[schema(value_type = String)]
    pub floor_per_gpu_hour: Money,
    /// The price now.
    #[schema(value_type = Option<String>)]
    pub current_per_gpu_hour: Option<Money>,
    /// Price changes, oldest first (the first is the one in force at the start of the window).
    pub points: Vec<SpotPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobAttempt {
    pub attempt: u32,
    pub instance: String,
    pub tier: Tier,
    pub gpu: String,
    pub region: Option<String>,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended: a preemption's reason, a failure's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    pub created_at: String,
    /// Charged so far (decimal string).
    #[schema(value_type = String)]
    pub cost: Money,
    pub billed_seconds: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub name: String,
    /// pending (its current attempt waits for GPUs: `reason` says why), running, succeeded,
    /// failed or cancelled.
    pub state: JobState,
    pub attempts: u32,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub spec: CreateJobRequest,
    pub history: Vec<JobAttempt>,
    #[schema(value_type = String)]
    pub cost: Money,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub id: String,
    pub tenant: String,
    pub gpu: String,
    pub region: String,
    pub gpus: u32,
    pub starts_at: String,
    pub ends_at: String,
    pub active: bool,
    #[schema(value_type = String)]
    pub price_per_gpu_hour: Money,
    pub lend_share_percent: u32,
    /// Idle reserved GPU-hours lent out as spot so far, what they earned, and what was credited.
    pub lent_gpu_hours: f64,
    #[schema(value_type = String)]
    pub lending_revenue: Money,
    #[schema(value_type = String)]
    pub credited: Money,
    pub billed_periods: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReservationList {
    pub reservations: Vec<Reservation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecommendedChoice {
    pub gpu: String,
    pub region: String,
    pub count: u32,
    /// on-demand, or spot (run it as a managed job).
    pub tier: Tier,
    #[schema(value_type = String)]
    pub per_hour: Money,
    /// How long it runs on this choice.
    pub hours: f64,
    #[schema(value_type = String)]
    pub estimated_cost: Money,
    /// Enough of them free now.
    pub available: bool,
}

/// What to rent for a workload, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Recommendation {
    pub workload: String,
    pub memory_need_gib: f64,
    pub best: RecommendedChoice,
    pub alternatives: Vec<RecommendedChoice>,
    pub reasoning: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    pub name: String,
    pub value: f64,
}

/// What an instance's workload pushed (loss, samples/s...), oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceMetrics {
    pub points: Vec<MetricPoint>,
}

/// One GPU over one time bucket: means of its samples and the peak temperature.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GpuTelemetryPoint {
    /// The bucket's start.
    pub at: String,
    pub node: String,
    pub gpu: u32,
    pub samples: u32,
    pub utilization_pct: f64,
    pub temperature_c: f64,
    pub max_temperature_c: f64,
    pub power_w: f64,
    pub memory_used_mib: f64,
}

/// The GPUs an instance held, over time (the whole GPU for a slice), oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceTelemetry {
    pub step_s: i64,
    pub points: Vec<GpuTelemetryPoint>,
}

/// The fleet over one time bucket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetPoint {
    pub at: String,
    /// GPUs that reported in the bucket, and of those the ones held by instances.
    pub gpus: u32,
    pub allocated: u32,
    pub utilization_pct: f64,
    pub max_temperature_c: f64,
    pub power_w: f64,
}

/// Net revenue booked in one time bucket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevenuePoint {
    pub at: String,
    /// Decimal string.
    #[schema(value_type = String, example = "12.50")]
    pub amount: Money,
}

/// The fleet's utilization, temperature, power and revenue over time, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetTelemetry {
    pub step_s: i64,
    pub points: Vec<FleetPoint>,
    pub revenue: Vec<RevenuePoint>,
}

/// A pending instance of any tenant, with why it waits (operator).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueuedInstance {
    pub tenant: String,
    pub instance: Instance,
}

/// The pending queue, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Queue {
    pub pending: Vec<QueuedInstance>,
}

/// This server replica, and whether it runs the background reconcilers (the lease holder).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    pub replica: String,
    pub leader: bool,
    /// Since when it leads, and the lease epoch (hand-overs so far + 1), while it leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_epoch: Option<i64>,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub prefix: String,
    pub name: String,
    /// admin, read-only or agent.
    pub scope: KeyScope,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// An agent key's node (by name), once minted for it or bound by its first registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The one project the key acts in; the whole organization when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyInfo>,
}

/// One mutating API call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: String,
    pub tenant: String,
    pub key_prefix: String,
    pub method: String,
    pub path: String,
    /// The HTTP status the call answered with; 0 while it runs, and forever when the server
    /// stopped before it answered (the row is written before the call can change anything).
    pub status: u16,
    /// The caller's address as the server saw it (and a proxy's X-Forwarded-For).
    pub remote: String,
}

/// Newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
    /// The next page, or null on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SshKey {
    pub name: String,
    pub algorithm: String,
    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// The key, without its comment.
    pub public_key: String,
    pub comment: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SshKeyList {
    pub ssh_keys: Vec<SshKey>,
}

/// A project of the caller's organization.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectInfo {
    pub name: String,
    /// The highest priority class its work may ask for.
    pub max_priority: Priority,
    pub created_at: String,
    /// Its monthly budget; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub monthly_budget: Option<Money>,
    /// Its usage this month, posted and accrued (decimal string).
    #[schema(value_type = String)]
    pub month_spend: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectInfo>,
}

/// A project's use of one GPU model, with its quota where it has one. GPU counts are numbers
/// of GPUs; slices make fractions (0.25).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaInfo {
    pub project: String,
    pub gpu: String,
    /// At most this many GPUs held or queued at once; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Of the limit, what the project deserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guaranteed: Option<f64>,
    /// Held or queued now (pending, provisioning, running, stopping).
    pub used: f64,
    /// What may still be added before the limit; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<f64>,
    /// Requests held back until the project has room (`on_quota: wait`), and their GPUs.
    pub waiting: u32,
    pub waiting_gpus: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaList {
    pub quotas: Vec<QuotaInfo>,
}

fn default_project() -> String {
    "default".to_string()
}
