//! Persistence for gpucloud: one async [`Store`] trait, with SQLite (the embedded default) and
//! PostgreSQL backends behind it. Both speak the same SQL through sqlx's `Any` driver; each has its
//! own numbered migrations. Every write that can race is guarded here: node generations for
//! placements, instance generations for state changes, `instance_id IS NULL` for GPU allocation.

mod access;
mod billing_rows;
mod groups;
mod lease;
mod ledger;
mod market;
mod migrate;
mod node_rows;
mod projects;
mod reservations;
mod sql;
mod telemetry;
mod types;
mod volume;
mod workload;

pub use access::AccessStore;
pub use billing_rows::year_month;
pub use groups::GroupStore;
pub use lease::LeaseStore;
pub use ledger::LedgerStore;
pub use market::{JobChange, MarketStore};
pub use projects::{Project, ProjectStore, Quota, QuotaRefusal, QuotaUse, gpus};
pub use reservations::ReservationStore;
pub use sql::{PING_IDLE, SqlStore};
pub use telemetry::{FleetBucket, GpuBucket, GpuSample, TelemetryStore};
pub use types::*;
pub use volume::{VolumeCharge, VolumeRow, VolumeStore};
pub use workload::{RegistryAuthRow, SshKeyRow, TemplateRow, WorkloadStore};

use async_trait::async_trait;
use gpucloud_model::{InstanceId, InstanceState, NodeId, NodeState, Region, TenantId, Timestamp};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write (a name already taken, say).
    #[error("{0} already exists")]
    Conflict(String),
    #[error("unsupported database URL '{0}' (expected sqlite://PATH or postgres://...)")]
    BadUrl(String),
    /// A value read back from the database is not what this version wrote.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A live instance holds the volume a new instance asked for (nothing was written).
    #[error("volume {0} is in use by another instance")]
    VolumeInUse(gpucloud_model::VolumeId),
    /// The instance's project is at its GPU limit and it asked to fail (nothing was written).
    #[error("{0}")]
    QuotaExceeded(QuotaRefusal),
    /// What this backend cannot do (a simulated fault asked of PostgreSQL, say).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[async_trait]
pub trait Store:
    LedgerStore
    + MarketStore
    + ReservationStore
    + GroupStore
    + TelemetryStore
    + LeaseStore
    + AccessStore
    + WorkloadStore
    + VolumeStore
    + ProjectStore
    + Send
    + Sync
{
    fn backend(&self) -> Backend;

    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    async fn insert_api_key(&self, key: &ApiKey) -> Result<()>;
    /// The key with this hash and its tenant.
    async fn find_api_key(&self, hash: &str) -> Result<Option<(ApiKey, Tenant)>>;

    async fn insert_node(&self, node: &NewNode) -> Result<()>;
    async fn list_nodes(&self) -> Result<Vec<Node>>;
    /// The node with its GPUs but no GPU's `slices` read (left empty): for a caller that
    /// needs none, such as a heartbeat's key and fencing checks, which run on every beat.
    async fn get_node_bare(&self, id: &NodeId) -> Result<Option<Node>>;
    async fn get_node(&self, id: &NodeId) -> Result<Option<Node>>;
    /// Every node's id and generation: what a cached view of the fleet checks itself against.
    /// Every change to a node as `list_nodes` returns it bumps its generation, except the time
    /// of its last heartbeat.
    async fn node_generations(&self) -> Result<Vec<(NodeId, i64)>>;
    /// The nodes of these ids that exist, ordered by name within each 500 ids.
    async fn nodes_by_id(&self, ids: &[NodeId]) -> Result<Vec<Node>>;
    /// The regions that have at least one node.
    async fn list_regions(&self) -> Result<Vec<Region>>;
    /// Sets the operator state and bumps the generation; false if no such node.
    /// Sets a node's state, with the deadline of a drain (kept only while it drains).
    async fn set_node_state(&self, id: &NodeId, state: NodeState, drain_deadline: Option<Timestamp>) -> Result<bool>;
    /// The public images the node holds, as its agent reports them (sorted, deduplicated).
    async fn set_node_images(&self, id: &NodeId, images: &[String]) -> Result<()>;
    /// Records a heartbeat and marks the node healthy; false if no such node.
    async fn record_heartbeat(&self, id: &NodeId, at: Timestamp) -> Result<bool>;
    /// Registers an agent-driven node, or re-registers it by name: same id, epoch + 1 (so the
    /// previous agent process is fenced off). Its GPUs must match what was registered before.
    async fn register_agent_node(&self, node: &NewNode) -> Result<Node>;
    /// Marks one GPU healthy or not (bumping the node's generation when it changes); false if
    /// there is no such GPU.
    async fn set_gpu_health(&self, node: &NodeId, index: u32, healthy: bool) -> Result<bool>;
    /// A heartbeat from an agent of `epoch`, numbered `seq` within it if the agent numbers its
    /// beats; false if the node is unknown, has a newer epoch, or already took a beat numbered
    /// `seq` or higher (this one arrived late).
    async fn record_agent_heartbeat(&self, id: &NodeId, epoch: i64, seq: Option<i64>, at: Timestamp) -> Result<bool>;
    /// Appends log chunks (a chunk already stored under its seq is skipped, so retries are safe).
    async fn append_logs(&self, instance: &InstanceId, chunks: &[LogChunk]) -> Result<()>;
    /// Chunks after `after_seq`, in order, at most `limit`.
    async fn read_logs(&self, instance: &InstanceId, after_seq: i64, limit: u32) -> Result<Vec<LogChunk>>;
    /// Declares lost every node that has heartbeated before but not since `cutoff`: the node
    /// becomes `lost`, its GPUs are freed, and each instance on it becomes `lost` with its billing
    /// ended at the node's last heartbeat. One transaction per node.
    async fn mark_silent_nodes_lost(&self, cutoff: Timestamp, now: Timestamp) -> Result<Vec<LostNode>>;

    /// Inserts an instance, or with an idempotency key already used by its tenant, returns the
    /// instance that key created. The bool says whether this call created it.
    async fn insert_instance(&self, new: &NewInstance) -> Result<(Instance, bool)>;
    /// Inserts several instances in one transaction (a gang: the scheduler sees all or none);
    /// one bool per instance, false where its idempotency key was used before.
    async fn insert_instances(&self, all: &[NewInstance]) -> Result<Vec<bool>>;
    /// `tenant: None` is the operator's view across tenants.
    async fn get_instance(&self, tenant: Option<&TenantId>, id: &InstanceId) -> Result<Option<Instance>>;
    async fn list_instances(&self, tenant: Option<&TenantId>) -> Result<Vec<Instance>>;
    /// One page of a tenant's instances (of one project when given), oldest first: at most
    /// `limit` created after `after` (its creation time and id). Reads the page, not the rest.
    async fn instances_page(
        &self,
        tenant: &TenantId,
        project: Option<&gpucloud_model::ProjectName>,
        after: Option<(Timestamp, &str)>,
        limit: u32,
    ) -> Result<Vec<Instance>>;
    /// A tenant's instances named `name`, oldest first (terminated ones keep their names).
    async fn instances_named(&self, tenant: &TenantId, name: &str) -> Result<Vec<Instance>>;
    /// Pending instances, oldest first.
    async fn list_pending(&self, limit: u32) -> Result<Vec<Instance>>;
    async fn instances_on_node(&self, node: &NodeId) -> Result<Vec<Instance>>;
    /// Every tenant's instances in one of `states`, oldest first, with their GPUs: what a periodic
    /// pass over the running ones reads, rather than every instance the store ever held.
    async fn instances_in_states(&self, states: &[InstanceState]) -> Result<Vec<Instance>>;
    /// Moves an instance to a new state if its generation is still `expected_generation`;
    /// releases its GPUs in the same transaction when the new state holds none. `None` when
    /// the instance changed meanwhile (re-read and decide again).
    async fn update_instance(
        &self,
        id: &InstanceId,
        expected_generation: i64,
        change: &InstanceChange,
    ) -> Result<Option<Instance>>;
    /// Applies a plan in one transaction. Each node's batch is all or nothing (a savepoint): it
    /// applies only if the node is still at its generation and schedulable, and every GPU is
    /// still free. One outcome per batch, in order.
    async fn apply_plan(&self, batches: &[NodeBatch], at: Timestamp) -> Result<Vec<ApplyOutcome>>;

    /// One node's batch on its own.
    async fn apply_placements(
        &self,
        node: &NodeId,
        node_generation: i64,
        placements: &[NewPlacement],
        at: Timestamp,
    ) -> Result<ApplyOutcome> {
        let batch = NodeBatch { node: node.clone(), node_generation, placements: placements.to_vec() };
        let mut out = self.apply_plan(std::slice::from_ref(&batch), at).await?;
        Ok(out.pop().unwrap_or(ApplyOutcome::Conflict))
    }
    async fn set_pending_reason(&self, id: &InstanceId, reason: Option<&str>) -> Result<()>;
    /// Why an instance ended as it did (not a state change: the generation stays).
    async fn set_status_reason(&self, id: &InstanceId, reason: Option<&str>) -> Result<()>;

    /// Every state change of an instance, oldest first.
    async fn instance_events(&self, id: &InstanceId) -> Result<Vec<InstanceEvent>>;

    /// Claims `key` for a request with this `fingerprint` on behalf of server process `owner`.
    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        owner: &str,
        now: Timestamp,
        staleness: Staleness,
    ) -> Result<IdempotencyBegin>;
    async fn idempotency_finish(&self, scope: &str, key: &str, status: u16, body: &str) -> Result<()>;
    /// Forgets an unfinished record so a retry runs again (after a server-side failure).
    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<()>;
    /// Where a node's peers reach it.
    async fn set_node_address(&self, id: &gpucloud_model::NodeId, address: Option<&str>) -> Result<()>;
    /// What a node's agent says of it; an empty map clears them.
    async fn set_node_labels(
        &self,
        id: &gpucloud_model::NodeId,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<()>;
    /// Where an instance serves ("host:port"), as its agent reported it.
    async fn set_instance_endpoint(&self, id: &InstanceId, endpoint: &str) -> Result<()>;
}

/// Opens `sqlite://PATH` (created if missing) or `postgres://...` and migrates it.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::open(url).await?))
}
