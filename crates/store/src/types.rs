use gpucloud_model::{
    ApiKeyId, ClusterId, GpuModel, GpuShare, InstanceId, InstanceState, JobId, Money, NodeHealth, NodeId, NodeState,
    Region, Role, StopTarget, TenantId, Tier, Timestamp,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
}

/// An API key as stored: only its SHA-256 hash, and a short prefix to recognise it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub prefix: String,
    pub hash: String,
    pub created_at: Timestamp,
    /// For people: whose key it is, what it is for.
    pub name: String,
    pub scope: KeyScope,
    /// A revoked key authenticates nothing, on every replica, from the next request.
    pub revoked_at: Option<Timestamp>,
    /// An agent key's node (by name): the only node it may register, beat and ship logs for.
    pub node: Option<String>,
    /// The one project the key acts in; `None`: the whole organization (its tenant).
    pub project: Option<gpucloud_model::ProjectName>,
}

/// What a key may do within its tenant's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// Everything the tenant may do.
    Admin,
    /// Its work (instances, jobs, clusters, pools, volumes, secrets, templates, SSH keys), not
    /// the organization's settings: keys, projects and quotas, billing, the idle policy.
    Member,
    /// Reads, and the billing settings (budget, alerts' webhook): a finance team's key.
    Billing,
    /// Reads only: every mutating call is refused (403).
    ReadOnly,
    /// A node agent's (operators only): the agent protocol and nothing else, so a GPU host
    /// holds no key that could create tenants or move money.
    Agent,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Admin => "admin",
            KeyScope::Member => "member",
            KeyScope::Billing => "billing",
            KeyScope::ReadOnly => "read-only",
            KeyScope::Agent => "agent",
        }
    }
}

impl std::str::FromStr for KeyScope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<KeyScope, String> {
        match s {
            "admin" => Ok(KeyScope::Admin),
            "member" => Ok(KeyScope::Member),
            "billing" => Ok(KeyScope::Billing),
            "read-only" => Ok(KeyScope::ReadOnly),
            "agent" => Ok(KeyScope::Agent),
            other => Err(format!("unknown key scope '{other}': admin, member, billing, read-only or agent")),
        }
    }
}

/// One mutating API call, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: String,
    pub at: Timestamp,
    pub tenant_id: TenantId,
    pub key_prefix: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The caller's address as the server saw it.
    pub remote: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGpu {
    pub index: u32,
    pub model: GpuModel,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub id: NodeId,
    pub name: String,
    pub region: Region,
    pub gpus: Vec<NewGpu>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub model: GpuModel,
    pub uuid: String,
    pub instance: Option<InstanceId>,
    /// False after a fatal XID or uncorrectable ECC errors: it takes no new work.
    pub healthy: bool,
    /// Slices held on it (none when `instance` holds it whole).
    pub slices: Vec<GpuSlice>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSlice {
    pub instance: InstanceId,
    /// Whose instance it is: time-sliced GPUs are not shared across tenants unless allowed.
    pub tenant: TenantId,
    pub milli: u32,
    pub memory_mib: u64,
    pub mig: bool,
}

/// What drives a node: an in-process fake agent, or a `gpucloud agent` process over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeDriver {
    Fake,
    Agent,
}

impl NodeDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeDriver::Fake => "fake",
            NodeDriver::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub driver: NodeDriver,
    /// Bumped by every agent registration; reports from older epochs are refused.
    pub epoch: i64,
    pub name: String,
    pub region: Region,
    pub state: NodeState,
    pub health: NodeHealth,
    pub generation: i64,
    pub last_heartbeat: Option<Timestamp>,
    pub created_at: Timestamp,
    /// Where its peers reach it (the agent's `--address`); `None`: its name.
    pub address: Option<String>,
    /// What its agent says of it (`--label k=v`): rack, interconnect, owner...
    pub labels: std::collections::BTreeMap<String, String>,
    pub gpus: Vec<Gpu>,
    /// While draining: when what still runs on it is stopped, room elsewhere or not.
    pub drain_deadline: Option<Timestamp>,
    /// The public container images it holds, as its agent last reported.
    pub images: Vec<String>,
}

impl Node {
    /// Where peers and clients reach it: its `--address`, else its name.
    pub fn reached_at(&self) -> &str {
        self.address.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInstance {
    pub id: InstanceId,
    pub tenant_id: TenantId,
    pub name: String,
    pub region: Option<Region>,
    pub model: GpuModel,
    pub count: u32,
    /// Part of one GPU (`count` is 1); `None`: whole GPUs.
    pub share: Option<GpuShare>,
    pub command: String,
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
    pub sale: Sale,
}

/// How an instance is sold, and what a managed job adds to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sale {
    pub tier: Tier,
    /// A spot instance's bid per GPU-hour.
    pub max_price: Option<Money>,
    /// Extra environment for the workload (names are checked by the caller; values hold no
    /// newline or NUL).
    pub env: Vec<(String, String)>,
    /// The managed job this instance is an attempt of, and which attempt (1, 2, ...).
    pub job: Option<(JobId, u32)>,
    /// The cluster this instance is a member of, and its rank.
    pub cluster: Option<(ClusterId, u32)>,
    /// The warm pool holding it, until it is handed out.
    pub pool: Option<gpucloud_model::PoolId>,
    /// The container image it runs in; `None`: the node's own.
    pub image: Option<String>,
    /// The ports it exposes.
    pub ports: Vec<gpucloud_model::PortSpec>,
    /// The volume it mounts, and where in its container.
    pub volume: Option<(gpucloud_model::VolumeId, gpucloud_model::VolumeMount)>,
    /// The project it belongs to (its GPUs count against that project's quota).
    pub project: gpucloud_model::ProjectName,
    /// Written: what to do when the project is at its limit. Read back: `Wait` while it is
    /// held back for quota (not scheduled, not counted), `Fail` otherwise.
    pub on_quota: gpucloud_model::OnQuota,
    /// Its priority class in the scheduler's queue.
    pub priority: gpucloud_model::Priority,
}

/// A preemption notice given to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub given_at: Timestamp,
    pub notice_ms: i64,
    pub reason: String,
    /// Set when an agent carried the notice to the node: `notice_ms` after that.
    pub deadline: Option<Timestamp>,
}

/// The latest checkpoint a workload reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub path: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: InstanceId,
    pub tenant_id: TenantId,
    pub name: String,
    pub region: Option<Region>,
    pub model: GpuModel,
    pub count: u32,
    pub share: Option<GpuShare>,
    pub command: String,
    pub state: InstanceState,
    pub stop_target: Option<StopTarget>,
    pub node_id: Option<NodeId>,
    /// Indices of the GPUs it holds on `node_id`, ascending; empty unless the state holds GPUs.
    pub gpus: Vec<u32>,
    pub generation: i64,
    pub pending_reason: Option<String>,
    pub status_reason: Option<String>,
    /// Why it went to its node, when more than the policy chose it ("image ... already there").
    pub placement_note: Option<String>,
    pub exit_code: Option<i32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub sale: Sale,
    /// When the current run became billable (cleared when it leaves holding GPUs).
    pub running_since: Option<Timestamp>,
    pub notice: Option<Notice>,
    pub checkpoint: Option<Checkpoint>,
    /// Where it serves ("host:port": its node's address and its GPUCLOUD_PORT), once its agent
    /// reported the port.
    pub endpoint: Option<String>,
    /// What its agent says while preparing it ("pulling image ...: 45%"), until it runs.
    pub progress: Option<String>,
    /// Where its exposed ports are published on its node: (container port, host port).
    pub published: Vec<(u16, u16)>,
    /// The region of the node it runs on, or last ran on; None before it was ever placed.
    pub ran_region: Option<Region>,
    /// The node it runs on, or last ran on; None before it was ever placed.
    pub ran_node: Option<NodeId>,
}

/// A tenant's secret as stored: sealed, never the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub tenant_id: TenantId,
    pub name: String,
    pub sealed: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceChange {
    pub state: InstanceState,
    pub stop_target: Option<StopTarget>,
    pub exit_code: Option<i32>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPlacement {
    pub instance: InstanceId,
    /// The instance generation the scheduler saw it pending at.
    pub instance_generation: i64,
    pub gpus: Vec<u32>,
    /// A slice of `gpus[0]`; `gpu_memory_mib` is that GPU's memory, the cap slices add up to.
    pub share: Option<GpuShare>,
    pub gpu_memory_mib: u64,
    /// The volume it mounts: bound to this node by the placement if it lives nowhere yet.
    pub volume: Option<gpucloud_model::VolumeId>,
    /// Why this node, when more than the policy chose it (kept on the instance).
    pub note: Option<String>,
}

/// The placements a plan makes on one node, and the node generation the plan saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBatch {
    pub node: NodeId,
    pub node_generation: i64,
    pub placements: Vec<NewPlacement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Committed. `placed` lists the instances now provisioning; the others had left pending
    /// meanwhile (stopped, terminated) and were skipped.
    Applied { placed: Vec<InstanceId> },
    /// The node changed since the snapshot, or a GPU was taken: nothing was written; re-plan.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use of the key: run the request, then finish or abandon.
    Started,
    /// The key finished before: return this response again.
    Replay { status: u16, body: String },
    /// The key was used with a different request.
    Mismatch,
    /// A request with this key is running now.
    InProgress,
}

/// A stretch of billable time of one instance, and what the ledger already holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageInterval {
    pub id: String,
    pub instance_id: InstanceId,
    pub tenant_id: TenantId,
    pub model: GpuModel,
    pub region: Region,
    pub tier: gpucloud_model::Tier,
    pub milli_gpus: u32,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub rules: gpucloud_billing::Rules,
    pub charged: gpucloud_model::Money,
    pub charged_seconds: i64,
    pub settled: bool,
    /// A spot bid: no second is priced above it.
    pub price_cap: Option<gpucloud_model::Money>,
    /// Time paid for by the instance's previous run: not billed again.
    pub free_until: Option<Timestamp>,
    /// The last heartbeat of the node it runs on, where read with it (unsettled intervals).
    pub node_heartbeat: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRow {
    pub model: GpuModel,
    pub region: Region,
    pub tier: gpucloud_model::Tier,
    pub point: gpucloud_billing::PricePoint,
}

/// A ledger entry as stored: a balanced entry and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecord {
    pub id: String,
    pub entry: gpucloud_billing::Entry,
    pub memo: String,
    pub instance_id: Option<InstanceId>,
    pub interval_id: Option<String>,
    pub model: Option<GpuModel>,
    /// Billable seconds this entry charges (usage entries).
    pub seconds: i64,
    pub idempotency_key: String,
    pub created_at: Timestamp,
}

/// One stored ledger entry as read back, from the tenant's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerLine {
    pub id: String,
    pub kind: gpucloud_billing::EntryKind,
    pub memo: String,
    pub instance_id: Option<InstanceId>,
    pub model: Option<GpuModel>,
    pub seconds: i64,
    /// Change to the tenant's credit: negative for usage.
    pub amount: gpucloud_model::Money,
    pub created_at: Timestamp,
}

/// One state change of an instance, as recorded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEvent {
    pub generation: i64,
    pub at: Timestamp,
    pub from: Option<InstanceState>,
    pub to: InstanceState,
}

/// A closed invoice as issued: its JSON document is the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInvoice {
    pub tenant_id: TenantId,
    pub month: String,
    pub total: gpucloud_model::Money,
    pub closed_at: Timestamp,
    pub document: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetAction {
    /// Alerts only.
    Notify,
    /// At the cap, running instances get their stop notice and are stopped; nothing is deleted.
    CheckpointAndStop,
}

impl BudgetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetAction::Notify => "notify",
            BudgetAction::CheckpointAndStop => "checkpoint-and-stop",
        }
    }
}

impl std::str::FromStr for BudgetAction {
    type Err = String;
    fn from_str(s: &str) -> Result<BudgetAction, String> {
        match s {
            "notify" => Ok(BudgetAction::Notify),
            "checkpoint-and-stop" => Ok(BudgetAction::CheckpointAndStop),
            other => Err(format!("unknown budget action '{other}'")),
        }
    }
}

/// A tenant's money settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantBilling {
    pub tenant_id: TenantId,
    pub prepaid: bool,
    pub monthly_budget: Option<gpucloud_model::Money>,
    /// Percentages of the budget that raise an alert, ascending.
    pub thresholds: Vec<u32>,
    pub action: BudgetAction,
    pub webhook_url: Option<String>,
    pub idle: IdlePolicy,
    /// Signs each webhook request (HMAC-SHA256) so the receiver can tell it came from here.
    pub webhook_secret: Option<String>,
    /// Postpaid: how much the tenant may owe before creates are refused and instances stop;
    /// `None` is no limit.
    pub credit_limit: Option<gpucloud_model::Money>,
}

/// When an instance counts as idle: every GPU it holds under `below_percent` utilization for
/// `minutes`. Idle instances raise an alert; with `auto_stop` they are stopped too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    pub below_percent: u32,
    pub minutes: u32,
    pub auto_stop: bool,
}

impl Default for IdlePolicy {
    fn default() -> IdlePolicy {
        // Under 5% for half an hour: a notebook left open over lunch, not a job between epochs.
        IdlePolicy { below_percent: 5, minutes: 30, auto_stop: false }
    }
}

impl TenantBilling {
    pub fn default_for(tenant_id: TenantId) -> TenantBilling {
        TenantBilling {
            tenant_id,
            prepaid: false,
            monthly_budget: None,
            thresholds: vec![50, 80, 100],
            action: BudgetAction::Notify,
            webhook_url: None,
            idle: IdlePolicy::default(),
            webhook_secret: None,
            credit_limit: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub id: String,
    pub tenant_id: TenantId,
    pub kind: String,
    pub message: String,
    pub dedupe_key: String,
    pub created_at: Timestamp,
}

/// One interval's new charge, and the ledger entry for the money it moves (none if none moves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeItem {
    pub interval: UsageInterval,
    pub charge: gpucloud_billing::Charge,
    pub settled: bool,
    pub record: Option<LedgerRecord>,
    /// The posting point this charge brings the interval to, if it is a posting.
    pub posted_through: Option<Timestamp>,
}

/// A piece of a workload's output, in the order the agent read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub seq: i64,
    pub at: Timestamp,
    pub data: String,
}

/// A node declared lost, and the instances lost with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostNode {
    pub node: NodeId,
    pub last_heartbeat: Timestamp,
    pub instances: Vec<InstanceId>,
}

/// When an unfinished idempotency record may be taken over by a retry: after `own_ms` if the
/// same server process holds it, after `foreign_ms` if another one does (0 where only one
/// process can use the database, as with SQLite: the other one is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    pub own_ms: i64,
    pub foreign_ms: i64,
}

/// A managed job as stored. `spec` is the request as the API received it (JSON), kept whole so
/// each relaunch follows exactly what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub name: String,
    pub spec: String,
    pub state: JobState,
    /// Attempts launched so far.
    pub attempts: u32,
    /// The latest checkpoint any attempt reported: where the next one resumes.
    pub checkpoint: Option<String>,
    /// Why it ended as it did.
    pub reason: Option<String>,
    pub generation: i64,
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<JobState, String> {
        Ok(match s {
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => return Err(format!("unknown job state '{other}'")),
        })
    }
}

/// Reserved capacity sold to one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: gpucloud_model::ReservationId,
    pub tenant_id: TenantId,
    pub model: GpuModel,
    pub region: Region,
    pub gpus: u32,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    /// Per GPU-hour, for the whole period, used or not.
    pub price: Money,
    /// Percent of the lending revenue credited to the owner.
    pub lend_share_pct: u32,
    /// GPU-time lent out as spot so far, and what it earned at spot prices.
    pub lent_gpu_ms: i64,
    pub lent_revenue: Money,
    /// Billing periods charged so far, and the lending credit posted so far.
    pub billed_periods: i64,
    pub credited: Money,
    pub created_at: Timestamp,
}

impl Reservation {
    pub fn active_at(&self, t: Timestamp) -> bool {
        self.starts_at <= t && t < self.ends_at
    }
}

/// A tenant's resizable group of identical members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub id: ClusterId,
    pub tenant_id: TenantId,
    pub name: String,
    pub model: GpuModel,
    pub region: Option<Region>,
    pub gpus_per_node: u32,
    pub min_nodes: u32,
    pub max_nodes: u32,
    /// The size asked for last.
    pub target_nodes: u32,
    pub command: String,
    pub tier: Tier,
    pub active: bool,
    /// Bumped by every resize.
    pub epoch: i64,
    pub generation: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// A size schedule, and the UTC offset (minutes) its times are in.
    pub schedule: Option<String>,
    pub utc_offset_min: i32,
    /// Scale out above `up_pct` GPU utilization held for `for_s`, in below `down_pct`.
    pub autoscale: Option<Autoscale>,
    /// An active-active replica set: member `r` runs in `replicas_in[r]`, each placed on its own.
    /// Empty for an ordinary cluster.
    pub replicas_in: Vec<Region>,
    /// What each member runs in besides its command.
    pub workload: MemberWorkload,
    /// The project its members belong to (and count against).
    pub project: gpucloud_model::ProjectName,
}

/// What every member of a cluster or warm pool runs in besides its command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberWorkload {
    /// The container image; `None`: the node's own.
    pub image: Option<String>,
    /// Environment, secrets as `secret:NAME` references (read when each member starts).
    pub env: Vec<(String, String)>,
    pub ports: Vec<gpucloud_model::PortSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscale {
    pub up_pct: u32,
    pub down_pct: u32,
    pub for_s: u32,
}

/// A tenant's warm pool: `size` started instances of a template, ready to be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPool {
    pub id: gpucloud_model::PoolId,
    pub tenant_id: TenantId,
    pub name: String,
    pub model: GpuModel,
    pub region: Option<Region>,
    pub count: u32,
    pub command: String,
    pub size: u32,
    pub created_at: Timestamp,
    /// Size by time of day, and the UTC offset (minutes) of its times.
    pub schedule: Option<String>,
    pub utc_offset_min: i32,
    /// What each instance runs in besides its command.
    pub workload: MemberWorkload,
    /// The project its instances belong to.
    pub project: gpucloud_model::ProjectName,
}

/// One business metric a workload pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub instance: InstanceId,
    pub at: Timestamp,
    pub step: Option<i64>,
    pub name: String,
    pub value: f64,
}

/// A tenant's posted balance and one month's posted usage (a positive amount).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantTotals {
    pub balance: gpucloud_model::Money,
    pub month_usage: gpucloud_model::Money,
}

/// The ledger seen whole, for the billing checker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerAudit {
    /// Entries whose postings do not sum to zero.
    pub unbalanced: Vec<String>,
    /// Accounts whose kept balance differs from the sum of their postings: (account, kept, summed).
    pub drift: Vec<(String, gpucloud_model::Money, gpucloud_model::Money)>,
    /// Per interval (or volume) id: usage posted to the tenant (negative) and its seconds.
    pub posted: Vec<(String, gpucloud_model::Money, i64)>,
    pub entries: u64,
}
